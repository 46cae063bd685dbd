/* prefix-aware: a request goes to the instance that was sent the longest
 * prefix of its prompt, whose prefix cache most likely still holds it.
 *
 * The router does not see the instances' caches (kv-aware does); it keeps
 * an approximate index of what it sent each one. A prompt (a completion's
 * `prompt`, or a chat's messages as role and content) is cut into chunks
 * of `chunk_bytes`; chunk i's key is a hash chained over chunks 0..i, so a
 * key stands for the whole prefix up to it. The index maps each key to the
 * set of instances it was sent to (one bit per instance id, the first 64
 * ids) and the request number that last used it; it holds at most
 * `max_entries` keys, and when full drops the older half of them (least
 * recently used first, in bulk: each entry costs no list upkeep).
 *
 * Choice: the longest match among the eligible instances (ties: the less
 * loaded). Below `min_match_bytes` the prefix is not worth a detour and the
 * least loaded instance takes the request. Balance: when the best match's
 * instance carries more than `max_imbalance` requests above the least
 * loaded one, the least loaded takes it instead. That is what keeps one
 * system prompt shared by every request from pinning all traffic to the
 * instance that saw it first (the production-stack #957 problem): once that
 * instance runs ahead, requests spill to others, which then hold the
 * system prompt too, and ties go by load from there on. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include <strata/plugin.h>
#include <strata/router.h>

#include "../load.h"

static const struct strata_host_api *host;

#define PX_MAX_IDS 64

struct entry {
  uint64_t key; /* 0: empty */
  uint64_t ids; /* bit i: sent to instance i */
  uint64_t used;
};

struct prefix {
  size_t chunk, min_match, max_entries;
  int64_t max_imbalance;
  struct entry *tab;
  size_t cap, n; /* cap a power of two, >= 2 max_entries */
  uint64_t clock;
  /* scratch for one request */
  char *text;
  size_t text_len, text_cap;
  uint64_t *keys;
  size_t keys_cap;
};

static int prefix_init(const struct strata_host_api *h, const strata_config_node_t *cfg,
                       char *err, size_t errlen) {
  (void)cfg;
  (void)err;
  (void)errlen;
  host = h;
  return 0;
}

static int prefix_create(const strata_config_node_t *cfg, void **state, char *err,
                         size_t errlen) {
  struct prefix *p = calloc(1, sizeof *p);
  if (!p) return -1;
  p->chunk = (size_t)host->config_int(cfg, "chunk_bytes");
  p->min_match = (size_t)host->config_int(cfg, "min_match_bytes");
  p->max_entries = (size_t)host->config_int(cfg, "max_entries");
  p->max_imbalance = host->config_int(cfg, "max_imbalance");
  p->cap = 16;
  while (p->cap < 2 * p->max_entries) p->cap *= 2;
  p->tab = calloc(p->cap, sizeof *p->tab);
  if (!p->tab) {
    snprintf(err, errlen, "out of memory for %zu index entries", p->max_entries);
    free(p);
    return -1;
  }
  *state = p;
  return 0;
}

static void prefix_destroy(void *state) {
  struct prefix *p = state;
  free(p->tab);
  free(p->text);
  free(p->keys);
  free(p);
}

static int append(struct prefix *p, const char *s, size_t n) {
  if (p->text_len + n + 1 > p->text_cap) {
    size_t cap = p->text_cap ? p->text_cap : 1024;
    while (cap < p->text_len + n + 1) cap *= 2;
    char *t = realloc(p->text, cap);
    if (!t) return -1;
    p->text = t;
    p->text_cap = cap;
  }
  memcpy(p->text + p->text_len, s, n);
  p->text_len += n;
  p->text[p->text_len] = 0;
  return 0;
}

/* Text of a message's content: a string, or an array of parts whose text
 * parts count. */
static int append_content(struct prefix *p, const strata_json_t *c) {
  size_t n;
  if (host->json_type(c) == STRATA_JSON_STRING) {
    const char *s = host->json_string(c, &n);
    return s ? append(p, s, n) : 0;
  }
  for (size_t i = 0; i < host->json_size(c) && host->json_type(c) == STRATA_JSON_ARRAY; i++) {
    const char *s = host->json_string(host->json_get(host->json_at(c, i), "text"), &n);
    if (s && append(p, s, n) != 0) return -1;
  }
  return 0;
}

/* The request's prompt as bytes in p->text: the completion prompt (text, or
 * token ids as their binary values), or the chat messages. */
static int prompt_of(struct prefix *p, const struct strata_route_request *req) {
  p->text_len = 0;
  const strata_json_t *pr = host->json_get(req->body, "prompt");
  size_t n;
  if (host->json_type(pr) == STRATA_JSON_ARRAY && host->json_size(pr) > 0) {
    const strata_json_t *first = host->json_at(pr, 0);
    if (host->json_type(first) == STRATA_JSON_STRING) {
      pr = first; /* a batch of prompts: the first one routes it */
    } else {
      for (size_t i = 0; i < host->json_size(pr); i++) {
        const int64_t t = host->json_integer(host->json_at(pr, i));
        if (append(p, (const char *)&t, sizeof t) != 0) return -1;
      }
      return 0;
    }
  }
  if (host->json_type(pr) == STRATA_JSON_STRING) {
    const char *s = host->json_string(pr, &n);
    return s ? append(p, s, n) : 0;
  }
  const strata_json_t *msgs = host->json_get(req->body, "messages");
  for (size_t i = 0; i < host->json_size(msgs) && host->json_type(msgs) == STRATA_JSON_ARRAY; i++) {
    const strata_json_t *m = host->json_at(msgs, i);
    const char *role = host->json_string(host->json_get(m, "role"), &n);
    if (role && append(p, role, n + 1) != 0) return -1; /* with its NUL */
    if (append_content(p, host->json_get(m, "content")) != 0 || append(p, "\n", 1) != 0) return -1;
  }
  return 0;
}

static struct entry *slot(struct prefix *p, uint64_t key) {
  size_t i = (size_t)(key * 0x9e3779b97f4a7c15ull) & (p->cap - 1);
  while (p->tab[i].key && p->tab[i].key != key) i = (i + 1) & (p->cap - 1);
  return &p->tab[i];
}

/* Drops the older half of the index (by last use), rebuilding the table. */
static void shrink(struct prefix *p) {
  uint64_t oldest = UINT64_MAX;
  for (size_t i = 0; i < p->cap; i++)
    if (p->tab[i].key && p->tab[i].used < oldest) oldest = p->tab[i].used;
  const uint64_t cut = oldest + (p->clock - oldest) / 2 + 1;
  struct entry *old = p->tab;
  struct entry *t = calloc(p->cap, sizeof *t);
  if (!t) { /* keep going with a full table: clear it */
    memset(p->tab, 0, p->cap * sizeof *p->tab);
    p->n = 0;
    return;
  }
  p->tab = t;
  p->n = 0;
  for (size_t i = 0; i < p->cap; i++)
    if (old[i].key && old[i].used >= cut) {
      *slot(p, old[i].key) = old[i];
      p->n++;
    }
  free(old);
}

static int prefix_route(void *state, const struct strata_route_request *req,
                        const struct strata_route_backend *b, size_t n,
                        struct strata_route_choice *out) {
  struct prefix *p = state;
  p->clock++;
  size_t nk = 0;
  p->text_len = 0;
  if (req->body && prompt_of(p, req) == 0) {
    nk = p->text_len / p->chunk;
    if (nk > p->keys_cap) {
      uint64_t *k = realloc(p->keys, nk * sizeof *k);
      if (!k) nk = 0;
      else {
        p->keys = k;
        p->keys_cap = nk;
      }
    }
    uint64_t h = 0x5354524154415058ull; /* any fixed seed */
    for (size_t i = 0; i < nk; i++) {
      h = XXH3_64bits_withSeed(p->text + i * p->chunk, p->chunk, h);
      p->keys[i] = h ? h : 1; /* 0 marks an empty slot */
    }
  }
  /* the instances that were sent every chunk up to best_len, for the
   * longest such best_len */
  uint64_t alive = 0;
  for (size_t j = 0; j < n; j++)
    if (b[j].id < PX_MAX_IDS) alive |= 1ull << b[j].id;
  size_t best_len = 0;
  for (size_t i = 0; i < nk; i++) {
    const struct entry *e = slot(p, p->keys[i]);
    const uint64_t m = alive & (e->key ? e->ids : 0);
    if (!m) break;
    alive = m;
    best_len = i + 1;
  }
  const size_t least = router_least_loaded(b, n);
  size_t best = least;
  int found = 0;
  for (size_t j = 0; best_len && j < n; j++)
    if (b[j].id < PX_MAX_IDS && (alive >> b[j].id & 1) &&
        (!found || router_less_loaded(&b[j], &b[best]))) {
      best = j;
      found = 1;
    }
  size_t pick;
  if (!found || best_len * p->chunk < p->min_match) {
    pick = least;
    out->reason = p->text_len ? "no_prefix_match" : "no_prompt";
  } else if (router_load(&b[best]) - router_load(&b[least]) > p->max_imbalance) {
    pick = least;
    out->reason = "prefix_overloaded";
  } else {
    pick = best;
    out->reason = "prefix_match";
  }
  out->id = b[pick].id;
  /* what the chosen instance now holds */
  if (b[pick].id < PX_MAX_IDS)
    for (size_t i = 0; i < nk; i++) {
      if (p->n >= p->max_entries) shrink(p);
      struct entry *e = slot(p, p->keys[i]);
      if (!e->key) {
        e->key = p->keys[i];
        e->ids = 0;
        p->n++;
      }
      e->ids |= 1ull << b[pick].id;
      e->used = p->clock;
    }
  return 0;
}

static const struct strata_param prefix_params[] = {
    {"chunk_bytes", STRATA_PARAM_INT, 0, "64", 1, 65536,
     "bytes of prompt per index key (a shorter trailing part is not indexed)"},
    {"min_match_bytes", STRATA_PARAM_INT, 0, "256", 0, 1 << 30,
     "shortest matched prefix worth routing by; below it the least loaded instance"},
    {"max_imbalance", STRATA_PARAM_INT, 0, "8", 0, 1 << 30,
     "requests the best match may carry above the least loaded instance before the least "
     "loaded takes the request instead"},
    {"max_entries", STRATA_PARAM_INT, 0, "262144", 64, 1 << 28,
     "index keys kept (24 bytes each, twice over); when full the older half goes"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_router_vtable prefix_vtable = {
    .size = sizeof(struct strata_router_vtable),
    .create = prefix_create,
    .destroy = prefix_destroy,
    .route = prefix_route,
    .on_done = NULL,
};

static const struct strata_plugin_desc prefix_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_ROUTER,
    .name = "prefix-aware",
    .version = "1.0",
    .license = "MIT",
    .description = "longest prompt prefix sent before, within a load-imbalance bound",
    .params = prefix_params,
    .init = prefix_init,
    .fini = NULL,
    .vt.router = &prefix_vtable,
};

STRATA_PLUGIN_DEFINE(prefix_desc)
