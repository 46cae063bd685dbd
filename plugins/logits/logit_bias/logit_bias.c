/* logit_bias (OpenAI): request field `logit_bias`, an object mapping token
 * ids (as strings, "50256") to a bias in [-100, 100] that is added to that
 * token's logit before sampling. -100 in effect bans a token and +100
 * forces it (as OpenAI documents); values between nudge. An id outside the
 * vocabulary, a key that is not a decimal integer, a bias out of range or
 * more than max_entries entries is a 400. */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <strata/logits.h>
#include <strata/plugin.h>

#include "../slots.h"

struct params {
  uint32_t n;
  int32_t *ids;
  float *bias;
};


struct state {
  struct lp_slots slots; /* first: lp_entry_update */
  int32_t n_vocab;
  int64_t max_entries;
};


static int lb_create(const strata_config_node_t *cfg, const struct strata_logits_model *m,
                     void **out, char *err, size_t errlen) {
  struct state *st = calloc(1, sizeof *st);
  if (!st) return lp_errf(err, errlen, "out of memory");
  st->n_vocab = m->n_vocab;
  st->max_entries = host->config_int(cfg, "max_entries");
  st->slots.elem = sizeof(struct lp_entry);
  *out = st;
  return 0;
}

static void lb_destroy(void *state) {
  struct state *st = state;
  lp_slots_free(&st->slots, &lp_entry_ops, st);
  free(st);
}

static void params_free(struct params *p) {
  if (!p) return;
  free(p->ids);
  free(p->bias);
  free(p);
}

struct fill {
  struct params *p;
  int32_t n_vocab;
  char *err;
  size_t errlen;
};

static int fill_one(void *ud, const char *key, const strata_json_t *v) {
  struct fill *f = ud;
  char *end = NULL;
  errno = 0;
  long long id = strtoll(key, &end, 10);
  if (!key[0] || *end || errno || (key[0] < '0' || key[0] > '9'))
    return lp_errf(f->err, f->errlen, "logit_bias key \"%.40s\" is not a token id", key);
  if (id < 0 || id >= f->n_vocab)
    return lp_errf(f->err, f->errlen, "logit_bias token id %lld is outside the vocabulary [0, %d)",
                   id, f->n_vocab);
  enum strata_json_type t = host->json_type(v);
  if (t != STRATA_JSON_INTEGER && t != STRATA_JSON_REAL)
    return lp_errf(f->err, f->errlen, "logit_bias[\"%s\"] must be a number, got %s", key,
                   lp_kind(host, v));
  double b = host->json_number(v);
  if (!(b >= -100 && b <= 100))
    return lp_errf(f->err, f->errlen, "logit_bias[\"%s\"] = %g is outside [-100, 100]", key, b);
  f->p->ids[f->p->n] = (int32_t)id;
  f->p->bias[f->p->n] = (float)b;
  f->p->n++;
  return 0;
}

static const char *const lb_fields[] = {"logit_bias", NULL};

static int lb_compile(void *state, const strata_json_t *body, void **out, const char **field,
                      char *err, size_t errlen) {
  struct state *st = state;
  *field = "logit_bias";
  const strata_json_t *v = lp_field(host, body, "logit_bias");
  if (!v) return 0;
  if (host->json_type(v) != STRATA_JSON_OBJECT)
    return lp_errf(err, errlen, "'logit_bias' must be an object of token id -> bias, got %s",
                   lp_kind(host, v));
  size_t n = host->json_size(v);
  if (n == 0) return 0;
  if ((int64_t)n > st->max_entries)
    return lp_errf(err, errlen, "'logit_bias' has %zu entries; at most %lld", n,
                   (long long)st->max_entries);
  struct params *p = calloc(1, sizeof *p);
  if (p) {
    p->ids = malloc(sizeof *p->ids * n);
    p->bias = malloc(sizeof *p->bias * n);
  }
  if (!p || !p->ids || !p->bias) {
    params_free(p);
    return lp_errf(err, errlen, "out of memory");
  }
  struct fill f = {.p = p, .n_vocab = st->n_vocab, .err = err, .errlen = errlen};
  if (host->json_foreach(v, fill_one, &f) != 0) {
    params_free(p);
    return -1;
  }
  *out = p;
  return 1;
}

static void lb_release(void *state, void *params) {
  (void)state;
  params_free(params);
}

static void lb_apply(void *state, float *logits, const struct strata_logits_row *rows,
                     uint32_t n_rows) {
  struct state *st = state;
  for (uint32_t i = 0; i < n_rows; i++) {
    const struct lp_entry *s = lp_slot(&st->slots, rows[i].slot);
    if (!s) continue;
    const struct params *p = s->params;
    float *row = logits + (size_t)rows[i].row * (size_t)st->n_vocab;
    for (uint32_t j = 0; j < p->n; j++) row[p->ids[j]] += p->bias[j];
  }
}

static const struct strata_param lb_params[] = {
    {"max_entries", STRATA_PARAM_INT, 0, "1024", 1, 16777216,
     "most logit_bias entries in one request"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_logits_vtable lb_vtable = {
    .size = sizeof(struct strata_logits_vtable),
    .fields = lb_fields,
    .create = lb_create,
    .destroy = lb_destroy,
    .compile = lb_compile,
    .release = lb_release,
    .update = lp_entry_update,
    .apply = lb_apply,
};

static const struct strata_plugin_desc lb_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_LOGITS,
    .name = "logit_bias",
    .version = "1.0",
    .license = "MIT",
    .description = "logit_bias: add a bias in [-100, 100] to given token ids (OpenAI)",
    .params = lb_params,
    .init = lp_init,
    .fini = NULL,
    .vt.logits = &lb_vtable,
};

STRATA_PLUGIN_DEFINE(lb_desc)
