/* min_tokens (vLLM): request field `min_tokens`, an integer >= 0. Until a
 * sequence has generated that many tokens, the tokens that would end it get
 * logit -inf: the model's end tokens (EOS, and the BOS/control tokens the
 * engine stops at) unless the request sets ignore_eos, and every id in the
 * request's stop_token_ids. (The engine itself holds stop strings back
 * until then; see docs/logits-processors.md.) 0 or absent: off. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <strata/logits.h>
#include <strata/plugin.h>

#include "../slots.h"

struct params {
  int32_t min_tokens;
  uint32_t n;
  int32_t ids[]; /* tokens held back */
};

struct state {
  struct lp_slots slots; /* first: lp_entry_update */
  const struct strata_logits_model *m;
};

static int mt_create(const strata_config_node_t *cfg, const struct strata_logits_model *m,
                     void **out, char *err, size_t errlen) {
  (void)cfg;
  struct state *st = calloc(1, sizeof *st);
  if (!st) return lp_errf(err, errlen, "out of memory");
  st->m = m;
  st->slots.elem = sizeof(struct lp_entry);
  *out = st;
  return 0;
}

static void mt_destroy(void *state) {
  struct state *st = state;
  lp_slots_free(&st->slots, &lp_entry_ops, st);
  free(st);
}

static const char *const mt_fields[] = {"min_tokens", NULL};

static int mt_compile(void *state, const strata_json_t *body, void **out, const char **field,
                      char *err, size_t errlen) {
  struct state *st = state;
  *field = "min_tokens";
  const strata_json_t *v = lp_field(host, body, "min_tokens");
  if (!v) return 0;
  if (host->json_type(v) != STRATA_JSON_INTEGER)
    return lp_errf(err, errlen, "'min_tokens' must be an integer, got %s", lp_kind(host, v));
  int64_t mt = host->json_integer(v);
  if (mt < 0 || mt > INT32_MAX)
    return lp_errf(err, errlen, "'min_tokens' must be in [0, %d], got %lld", INT32_MAX,
                   (long long)mt);
  if (mt == 0) return 0;
  const strata_json_t *stop = lp_field(host, body, "stop_token_ids");
  size_t n_stop = host->json_type(stop) == STRATA_JSON_ARRAY ? host->json_size(stop) : 0;
  int ignore_eos = host->json_bool(host->json_get(body, "ignore_eos"));
  size_t n_end = ignore_eos ? 0 : st->m->n_end_tokens;
  struct params *p = malloc(sizeof *p + sizeof p->ids[0] * (n_end + n_stop));
  if (!p) return lp_errf(err, errlen, "out of memory");
  p->min_tokens = (int32_t)mt;
  p->n = 0;
  for (size_t i = 0; i < n_end; i++) p->ids[p->n++] = st->m->end_tokens[i];
  for (size_t i = 0; i < n_stop; i++) {
    const strata_json_t *e = host->json_at(stop, i);
    int64_t id = host->json_integer(e);
    /* the server validates stop_token_ids; out-of-range ids are skipped */
    if (host->json_type(e) == STRATA_JSON_INTEGER && id >= 0 && id < st->m->n_vocab)
      p->ids[p->n++] = (int32_t)id;
  }
  *out = p;
  return 1;
}

static void mt_apply(void *state, float *logits, const struct strata_logits_row *rows,
                     uint32_t n_rows) {
  struct state *st = state;
  for (uint32_t i = 0; i < n_rows; i++) {
    const struct lp_entry *s = lp_slot(&st->slots, rows[i].slot);
    if (!s) continue;
    const struct params *p = s->params;
    if (*s->n_output >= p->min_tokens) continue;
    float *row = logits + (size_t)rows[i].row * (size_t)st->m->n_vocab;
    for (uint32_t j = 0; j < p->n; j++) row[p->ids[j]] = -INFINITY;
  }
}

static const struct strata_logits_vtable mt_vtable = {
    .size = sizeof(struct strata_logits_vtable),
    .fields = mt_fields,
    .create = mt_create,
    .destroy = mt_destroy,
    .compile = mt_compile,
    .release = lp_release_free,
    .update = lp_entry_update,
    .apply = mt_apply,
};

static const struct strata_plugin_desc mt_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_LOGITS,
    .name = "min_tokens",
    .version = "1.0",
    .license = "MIT",
    .description = "min_tokens: hold back end and stop tokens until this many are generated",
    .params = NULL,
    .init = lp_init,
    .fini = NULL,
    .vt.logits = &mt_vtable,
};

STRATA_PLUGIN_DEFINE(mt_desc)
