/* allowed_token_ids (vLLM): request field `allowed_token_ids`, a non-empty
 * array of token ids; every other token gets logit -inf, so sampling only
 * ever picks one of them. Ids must be in the vocabulary; duplicates are
 * harmless. An empty array is a 400 (it would forbid everything). */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <strata/logits.h>
#include <strata/plugin.h>

#include "../slots.h"

struct params {
  uint32_t n;
  int32_t ids[]; /* sorted, unique */
};

struct state {
  struct lp_slots slots; /* first: lp_entry_update */
  int32_t n_vocab;
  float *save; /* [n_vocab]: the allowed logits while the row is reset */
};

static int at_create(const strata_config_node_t *cfg, const struct strata_logits_model *m,
                     void **out, char *err, size_t errlen) {
  (void)cfg;
  struct state *st = calloc(1, sizeof *st);
  if (st) st->save = malloc(sizeof *st->save * (size_t)m->n_vocab);
  if (!st || !st->save) {
    free(st);
    return lp_errf(err, errlen, "out of memory");
  }
  st->n_vocab = m->n_vocab;
  st->slots.elem = sizeof(struct lp_entry);
  *out = st;
  return 0;
}

static void at_destroy(void *state) {
  struct state *st = state;
  lp_slots_free(&st->slots, &lp_entry_ops, st);
  free(st->save);
  free(st);
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

static const char *const at_fields[] = {"allowed_token_ids", NULL};

static int at_compile(void *state, const strata_json_t *body, void **out, const char **field,
                      char *err, size_t errlen) {
  struct state *st = state;
  *field = "allowed_token_ids";
  const strata_json_t *v = lp_field(host, body, "allowed_token_ids");
  if (!v) return 0;
  if (host->json_type(v) != STRATA_JSON_ARRAY)
    return lp_errf(err, errlen, "'allowed_token_ids' must be an array of token ids, got %s",
                   lp_kind(host, v));
  size_t n = host->json_size(v);
  if (n == 0) return lp_errf(err, errlen, "'allowed_token_ids' is empty (it would allow nothing)");
  if (n > (size_t)st->n_vocab * 4)
    return lp_errf(err, errlen, "'allowed_token_ids' has %zu entries; the vocabulary has %d", n,
                   st->n_vocab);
  struct params *p = malloc(sizeof *p + sizeof p->ids[0] * n);
  if (!p) return lp_errf(err, errlen, "out of memory");
  for (size_t i = 0; i < n; i++) {
    const strata_json_t *e = host->json_at(v, i);
    if (host->json_type(e) != STRATA_JSON_INTEGER) {
      free(p);
      return lp_errf(err, errlen, "allowed_token_ids[%zu] must be an integer, got %s", i,
                     lp_kind(host, e));
    }
    int64_t id = host->json_integer(e);
    if (id < 0 || id >= st->n_vocab) {
      free(p);
      return lp_errf(err, errlen,
                     "allowed_token_ids[%zu] = %lld is outside the vocabulary [0, %d)", i,
                     (long long)id, st->n_vocab);
    }
    p->ids[i] = (int32_t)id;
  }
  qsort(p->ids, n, sizeof p->ids[0], cmp_i32);
  size_t u = 0;
  for (size_t i = 0; i < n; i++)
    if (u == 0 || p->ids[u - 1] != p->ids[i]) p->ids[u++] = p->ids[i];
  p->n = (uint32_t)u;
  *out = p;
  return 1;
}

static void at_apply(void *state, float *logits, const struct strata_logits_row *rows,
                     uint32_t n_rows) {
  struct state *st = state;
  for (uint32_t i = 0; i < n_rows; i++) {
    const struct lp_entry *s = lp_slot(&st->slots, rows[i].slot);
    if (!s) continue;
    const struct params *p = s->params;
    float *row = logits + (size_t)rows[i].row * (size_t)st->n_vocab;
    for (uint32_t j = 0; j < p->n; j++) st->save[j] = row[p->ids[j]];
    for (int32_t t = 0; t < st->n_vocab; t++) row[t] = -INFINITY;
    for (uint32_t j = 0; j < p->n; j++) row[p->ids[j]] = st->save[j];
  }
}

static const struct strata_logits_vtable at_vtable = {
    .size = sizeof(struct strata_logits_vtable),
    .fields = at_fields,
    .create = at_create,
    .destroy = at_destroy,
    .compile = at_compile,
    .release = lp_release_free,
    .update = lp_entry_update,
    .apply = at_apply,
};

static const struct strata_plugin_desc at_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_LOGITS,
    .name = "allowed_token_ids",
    .version = "1.0",
    .license = "MIT",
    .description = "allowed_token_ids: sample only from the given token ids (vLLM)",
    .params = NULL,
    .init = lp_init,
    .fini = NULL,
    .vt.logits = &at_vtable,
};

STRATA_PLUGIN_DEFINE(at_desc)
