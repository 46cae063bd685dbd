/* Shared by strata's logits plugins (compiled into each; not part of the
 * SDK): a table of per-slot entries that follows the engine's batch updates
 * (strata/logits.h), and the JSON helpers the plugins use to read their
 * request fields. */
#ifndef STRATA_LOGITS_SLOTS_H
#define STRATA_LOGITS_SLOTS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <strata/logits.h>

/* Entries of `elem` bytes; an empty slot is all zero bytes plus used == 0. */
struct lp_slots {
  unsigned char *data;
  unsigned char *used;
  size_t elem;
  uint32_t cap;
};

/* What a plugin does when a slot's sequence arrives or leaves. */
struct lp_slot_ops {
  /* fills the zeroed entry for seq; 0 or -1 (out of memory) */
  int (*add)(void *entry, const struct strata_logits_seq *seq, void *ud);
  void (*clear)(void *entry, void *ud); /* frees what add made */
};

static inline void *lp_slot(struct lp_slots *t, uint32_t slot) {
  return slot < t->cap && t->used[slot] ? t->data + (size_t)slot * t->elem : NULL;
}

static inline int lp_slots_reserve(struct lp_slots *t, uint32_t n) {
  if (n <= t->cap) return 0;
  uint32_t c = t->cap ? t->cap : 16;
  while (c < n) c *= 2;
  unsigned char *d = realloc(t->data, (size_t)c * t->elem);
  if (!d) return -1;
  t->data = d;
  unsigned char *u = realloc(t->used, c);
  if (!u) return -1;
  t->used = u;
  memset(t->data + (size_t)t->cap * t->elem, 0, (size_t)(c - t->cap) * t->elem);
  memset(t->used + t->cap, 0, c - t->cap);
  t->cap = c;
  return 0;
}

static inline void lp_slot_clear(struct lp_slots *t, const struct lp_slot_ops *ops, uint32_t s,
                                 void *ud) {
  if (s >= t->cap || !t->used[s]) return;
  ops->clear(t->data + (size_t)s * t->elem, ud);
  memset(t->data + (size_t)s * t->elem, 0, t->elem);
  t->used[s] = 0;
}

/* Applies an update: removed, then added, then moved. */
static inline int lp_slots_update(struct lp_slots *t, const struct lp_slot_ops *ops,
                                  const struct strata_logits_update *u, void *ud, char *err,
                                  size_t errlen) {
  for (uint32_t i = 0; i < u->n_removed; i++) lp_slot_clear(t, ops, u->removed[i], ud);
  for (uint32_t i = 0; i < u->n_added; i++) {
    const struct strata_logits_seq *s = &u->added[i];
    if (lp_slots_reserve(t, s->slot + 1) != 0) goto oom;
    lp_slot_clear(t, ops, s->slot, ud);
    if (ops->add(t->data + (size_t)s->slot * t->elem, s, ud) != 0) {
      lp_slot_clear(t, ops, s->slot, ud);
      goto oom;
    }
    t->used[s->slot] = 1;
  }
  for (uint32_t i = 0; i < u->n_moved; i++) {
    uint32_t from = u->moved[i].from, to = u->moved[i].to;
    if (from >= t->cap || !t->used[from] || from == to) continue;
    if (lp_slots_reserve(t, to + 1) != 0) goto oom;
    lp_slot_clear(t, ops, to, ud);
    memcpy(t->data + (size_t)to * t->elem, t->data + (size_t)from * t->elem, t->elem);
    memset(t->data + (size_t)from * t->elem, 0, t->elem);
    t->used[to] = 1;
    t->used[from] = 0;
  }
  return 0;
oom:
  snprintf(err, errlen, "out of memory");
  return -1;
}

static inline void lp_slots_free(struct lp_slots *t, const struct lp_slot_ops *ops, void *ud) {
  for (uint32_t s = 0; s < t->cap; s++) lp_slot_clear(t, ops, s, ud);
  free(t->data);
  free(t->used);
  t->data = t->used = NULL;
  t->cap = 0;
}

/* The per-sequence entry of processors that need nothing but the
 * parameters and the live output (bad_words, logit_bias, ...). */
struct lp_entry {
  const void *params;
  const int32_t *output;
  const int32_t *n_output;
};

static inline int lp_entry_add(void *entry, const struct strata_logits_seq *q, void *ud) {
  (void)ud;
  struct lp_entry *e = entry;
  e->params = q->params;
  e->output = q->output;
  e->n_output = q->n_output;
  return 0;
}

static inline void lp_entry_clear(void *entry, void *ud) {
  (void)entry;
  (void)ud;
}

static const struct lp_slot_ops lp_entry_ops = {.add = lp_entry_add, .clear = lp_entry_clear};

/* update() and release() of processors whose state starts with its
 * struct lp_slots of lp_entry entries and whose parameters are one malloc'd
 * block. */
static inline int lp_entry_update(void *state, const struct strata_logits_update *u, char *err,
                                  size_t errlen) {
  return lp_slots_update((struct lp_slots *)state, &lp_entry_ops, u, state, err, errlen);
}

static inline void lp_release_free(void *state, void *params) {
  (void)state;
  free(params);
}

/* The host API of the plugin that includes this header, kept by lp_init
 * (the descriptor's init), which also checks the JSON accessors are there. */
static const struct strata_host_api *host;

static inline int lp_init(const struct strata_host_api *h, const strata_config_node_t *cfg,
                          char *err, size_t errlen) {
  (void)cfg;
  if (h->size < offsetof(struct strata_host_api, json_string) + sizeof h->json_string) {
    snprintf(err, errlen, "the host is too old (no JSON access)");
    return -1;
  }
  host = h;
  return 0;
}

/* ---- request fields ---- */

static inline int lp_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline int lp_errf(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

/* The field, or NULL when absent or JSON null. */
static inline const strata_json_t *lp_field(const struct strata_host_api *h,
                                            const strata_json_t *body, const char *name) {
  const strata_json_t *v = h->json_get(body, name);
  enum strata_json_type t = h->json_type(v);
  return t == STRATA_JSON_ABSENT || t == STRATA_JSON_NULL ? NULL : v;
}

static inline const char *lp_kind(const struct strata_host_api *h, const strata_json_t *v) {
  switch (h->json_type(v)) {
  case STRATA_JSON_BOOL: return "a boolean";
  case STRATA_JSON_INTEGER: return "an integer";
  case STRATA_JSON_REAL: return "a number";
  case STRATA_JSON_STRING: return "a string";
  case STRATA_JSON_ARRAY: return "an array";
  case STRATA_JSON_OBJECT: return "an object";
  default: return "null";
  }
}

/* A number field in [lo, hi] (neutral when absent): 0, or -1 with err. */
static inline int lp_number(const struct strata_host_api *h, const strata_json_t *body,
                            const char *name, double lo, double hi, int lo_open, double neutral,
                            double *out, char *err, size_t errlen) {
  const strata_json_t *v = lp_field(h, body, name);
  *out = neutral;
  if (!v) return 0;
  enum strata_json_type t = h->json_type(v);
  if (t != STRATA_JSON_INTEGER && t != STRATA_JSON_REAL)
    return lp_errf(err, errlen, "'%s' must be a number, got %s", name, lp_kind(h, v));
  double x = h->json_number(v);
  if (!(x >= lo && x <= hi) || (lo_open && x == lo))
    return lp_errf(err, errlen, "'%s' must be in %s%g, %g], got %g", name, lo_open ? "(" : "[",
                   lo, hi, x);
  *out = x;
  return 0;
}

#endif
