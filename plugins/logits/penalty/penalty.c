/* The three repetition penalties, as vLLM and OpenAI define them. One source
 * built as three plugins (PENALTY selects which), so that each can be
 * enabled and ordered on its own in engine.logits:
 *
 *   repetition_penalty (vLLM; > 0, neutral 1): every token that occurs in the
 *     prompt or in the output so far has its logit divided by the penalty
 *     when positive and multiplied by it when negative (CTRL's rule).
 *   frequency_penalty (OpenAI; [-2, 2], neutral 0): logit -= penalty * the
 *     number of times the token occurs in the output so far.
 *   presence_penalty (OpenAI; [-2, 2], neutral 0): logit -= penalty once for
 *     every token that occurs in the output so far.
 *
 * Cost per row is the number of distinct tokens seen, never the vocabulary:
 * each sequence keeps a small hash map token -> count that is brought up to
 * date with the new output tokens at apply time, and apply walks the map. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <strata/logits.h>
#include <strata/plugin.h>

#include "../slots.h"

#define PEN_REPETITION 1
#define PEN_FREQUENCY 2
#define PEN_PRESENCE 3

#if PENALTY == PEN_REPETITION
#define PEN_NAME "repetition_penalty"
#define PEN_LO 0.0
#define PEN_LO_OPEN 1
#define PEN_HI 100.0
#define PEN_NEUTRAL 1.0
#define PEN_DESC "repetition_penalty: scale the logits of tokens seen in the prompt or output"
#elif PENALTY == PEN_FREQUENCY
#define PEN_NAME "frequency_penalty"
#define PEN_LO -2.0
#define PEN_LO_OPEN 0
#define PEN_HI 2.0
#define PEN_NEUTRAL 0.0
#define PEN_DESC "frequency_penalty: subtract penalty x count of each output token"
#elif PENALTY == PEN_PRESENCE
#define PEN_NAME "presence_penalty"
#define PEN_LO -2.0
#define PEN_LO_OPEN 0
#define PEN_HI 2.0
#define PEN_NEUTRAL 0.0
#define PEN_DESC "presence_penalty: subtract penalty once from each output token"
#else
#error "PENALTY must be 1, 2 or 3"
#endif

struct params {
  float penalty;
};

/* token -> count of a sequence: open addressing, linear probing */
struct seq_state {
  const struct params *p;
  const int32_t *output;
  const int32_t *n_output;
  int32_t seen;     /* output tokens counted so far */
  int32_t *keys;    /* [cap], -1 empty */
  int32_t *counts;  /* [cap] output occurrences (0: prompt only) */
  uint32_t n, cap;
};

struct state {
  int32_t n_vocab;
  struct lp_slots slots;
};

static int map_grow(struct seq_state *s) {
  uint32_t cap = s->cap ? s->cap * 2 : 64;
  int32_t *keys = malloc(sizeof *keys * cap), *counts = malloc(sizeof *counts * cap);
  if (!keys || !counts) {
    free(keys);
    free(counts);
    return -1;
  }
  memset(keys, 0xff, sizeof *keys * cap);
  for (uint32_t i = 0; i < s->cap; i++) {
    if (s->keys[i] < 0) continue;
    uint32_t h = ((uint32_t)s->keys[i] * 2654435761u) & (cap - 1);
    while (keys[h] >= 0) h = (h + 1) & (cap - 1);
    keys[h] = s->keys[i];
    counts[h] = s->counts[i];
  }
  free(s->keys);
  free(s->counts);
  s->keys = keys;
  s->counts = counts;
  s->cap = cap;
  return 0;
}

/* Adds inc to tok's count (inserting it); -1 when out of memory. */
static int map_add(struct seq_state *s, int32_t tok, int32_t inc) {
  if ((s->n + 1) * 2 > s->cap && map_grow(s) != 0) return -1;
  uint32_t h = ((uint32_t)tok * 2654435761u) & (s->cap - 1);
  while (s->keys[h] >= 0 && s->keys[h] != tok) h = (h + 1) & (s->cap - 1);
  if (s->keys[h] < 0) {
    s->keys[h] = tok;
    s->counts[h] = 0;
    s->n++;
  }
  s->counts[h] += inc;
  return 0;
}

static void seq_clear(void *entry, void *ud) {
  (void)ud;
  struct seq_state *s = entry;
  free(s->keys);
  free(s->counts);
}

static int seq_add(void *entry, const struct strata_logits_seq *q, void *ud) {
  (void)ud;
  struct seq_state *s = entry;
  s->p = q->params;
  s->output = q->output;
  s->n_output = q->n_output;
  if (map_grow(s) != 0) return -1;
#if PENALTY == PEN_REPETITION
  for (int32_t i = 0; i < q->n_prompt; i++)
    if (map_add(s, q->prompt[i], 0) != 0) return -1;
#endif
  return 0;
}

static const struct lp_slot_ops ops = {.add = seq_add, .clear = seq_clear};

static int pen_create(const strata_config_node_t *cfg, const struct strata_logits_model *m,
                      void **out, char *err, size_t errlen) {
  (void)cfg;
  struct state *st = calloc(1, sizeof *st);
  if (!st) return lp_errf(err, errlen, "out of memory");
  st->n_vocab = m->n_vocab;
  st->slots.elem = sizeof(struct seq_state);
  *out = st;
  return 0;
}

static void pen_destroy(void *state) {
  struct state *st = state;
  lp_slots_free(&st->slots, &ops, st);
  free(st);
}

static const char *const pen_fields[] = {PEN_NAME, NULL};

static int pen_compile(void *state, const strata_json_t *body, void **out, const char **field,
                       char *err, size_t errlen) {
  (void)state;
  *field = PEN_NAME;
  double x;
  if (lp_number(host, body, PEN_NAME, PEN_LO, PEN_HI, PEN_LO_OPEN, PEN_NEUTRAL, &x, err,
                errlen) != 0)
    return -1;
  if (x == PEN_NEUTRAL) return 0;
  struct params *p = malloc(sizeof *p);
  if (!p) return lp_errf(err, errlen, "out of memory");
  p->penalty = (float)x;
  *out = p;
  return 1;
}

static int pen_update(void *state, const struct strata_logits_update *u, char *err,
                      size_t errlen) {
  struct state *st = state;
  return lp_slots_update(&st->slots, &ops, u, st, err, errlen);
}

static void pen_apply(void *state, float *logits, const struct strata_logits_row *rows,
                      uint32_t n_rows) {
  struct state *st = state;
  for (uint32_t i = 0; i < n_rows; i++) {
    struct seq_state *s = lp_slot(&st->slots, rows[i].slot);
    if (!s) continue;
    /* count the output tokens generated since the last step */
    int32_t n = *s->n_output;
    for (; s->seen < n; s->seen++)
      if (map_add(s, s->output[s->seen], 1) != 0) break; /* out of memory: fewer counted */
    float *row = logits + (size_t)rows[i].row * (size_t)st->n_vocab;
    const float pen = s->p->penalty;
    for (uint32_t h = 0; h < s->cap; h++) {
      int32_t tok = s->keys[h];
      if (tok < 0 || tok >= st->n_vocab) continue;
#if PENALTY == PEN_REPETITION
      row[tok] = row[tok] > 0 ? row[tok] / pen : row[tok] * pen;
#elif PENALTY == PEN_FREQUENCY
      row[tok] -= pen * (float)s->counts[h];
#else
      if (s->counts[h] > 0) row[tok] -= pen;
#endif
    }
  }
}

static const struct strata_logits_vtable pen_vtable = {
    .size = sizeof(struct strata_logits_vtable),
    .fields = pen_fields,
    .create = pen_create,
    .destroy = pen_destroy,
    .compile = pen_compile,
    .release = lp_release_free,
    .update = pen_update,
    .apply = pen_apply,
};

static const struct strata_plugin_desc pen_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_LOGITS,
    .name = PEN_NAME,
    .version = "1.0",
    .license = "MIT",
    .description = PEN_DESC,
    .params = NULL,
    .init = lp_init,
    .fini = NULL,
    .vt.logits = &pen_vtable,
};

STRATA_PLUGIN_DEFINE(pen_desc)
