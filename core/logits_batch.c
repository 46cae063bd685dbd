/* Logits processors on the engine's batch: see logits_batch.h. */
#include "config.h"

#include "logits_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "log.h"
#include "plugin_loader.h"
#include "tokenizer.h"
#include "util.h"

/* The request fields of strata's own processors: a request that sets one
 * while no installed plugin owns it gets a 400 instead of being ignored. */
static const char *const builtin_fields[] = {
    "bad_words",          "logit_bias",        "allowed_token_ids", "min_tokens",
    "repetition_penalty", "frequency_penalty", "presence_penalty",
};

struct proc {
  const struct strata_plugin_desc *d;
  const struct strata_logits_vtable *v;
  void *state;
  /* this flush's part of the update, and this step's rows */
  uint32_t *rm;
  struct strata_logits_seq *add;
  struct strata_logits_move *mv;
  struct strata_logits_row *rows;
  size_t n_rm, n_add, n_mv, n_rows, cap;
};

struct pending_add {
  int32_t *slot;
  uint32_t mask;
  struct strata_logits_seq seq;
};

struct strata_lbatch {
  struct strata_logits_model model;
  const strata_tokenizer_t *tok;
  int32_t *end_tokens;
  struct proc *p;
  int32_t n_enabled, n_all; /* p[0..n_enabled) run; the rest only validate */
  /* the slot table */
  struct owner {
    int32_t *slot; /* the sequence's slot variable, NULL: empty */
    uint32_t mask;
  } *own;
  uint32_t n_slots;
  size_t cap_slots;
  /* since the last flush */
  struct removal {
    uint32_t slot, mask;
  } *rms;
  size_t n_rm, cap_rm;
  struct pending_add *adds;
  size_t n_adds, cap_adds;
  struct move {
    struct strata_logits_move mv;
    uint32_t mask;
  } *moves;
  size_t n_moves, cap_moves;
  /* parameters of finished requests, released after the next flush has
   * told the processors their slots are gone */
  void ***retired;
  size_t n_retired, cap_retired;
};

static int64_t lb_tokenize(const struct strata_logits_model *m, const char *text, size_t len,
                           int32_t *out, size_t cap) {
  const struct strata_lbatch *lb = m->host_ud;
  int32_t *toks = NULL;
  size_t n = 0;
  char err[128];
  if (strata_tokenize(lb->tok, text, len, 0, 0, &toks, &n, err, sizeof err) != 0) return -1;
  memcpy(out, toks, sizeof *out * (n < cap ? n : cap));
  free(toks);
  return (int64_t)n;
}

static int grow(void **p, size_t *cap, size_t n, size_t elem) {
  if (n <= *cap) return 0;
  size_t c = *cap ? *cap * 2 : 16;
  while (c < n) c *= 2;
  void *q = strata_reallocarray(*p, c, elem);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

static int proc_reserve(struct proc *p, size_t n) {
  if (n <= p->cap) return 0;
  size_t c = p->cap ? p->cap : 16;
  while (c < n) c *= 2;
  uint32_t *rm = strata_reallocarray(p->rm, c, sizeof *rm);
  if (rm) p->rm = rm;
  struct strata_logits_seq *add = strata_reallocarray(p->add, c, sizeof *add);
  if (add) p->add = add;
  struct strata_logits_move *mv = strata_reallocarray(p->mv, c, sizeof *mv);
  if (mv) p->mv = mv;
  struct strata_logits_row *rows = strata_reallocarray(p->rows, c, sizeof *rows);
  if (rows) p->rows = rows;
  if (!rm || !add || !mv || !rows) return -1;
  p->cap = c;
  return 0;
}

static int proc_create(strata_lbatch_t *lb, const struct strata_registry *reg,
                       struct strata_config *cfg, struct strata_plugin *pl, char *err,
                       size_t errlen) {
  char ierr[512];
  if (strata_plugin_init(pl, cfg, ierr, sizeof ierr) != 0)
    return strata_errf(err, errlen, "%s", ierr);
  (void)reg;
  struct proc *p = &lb->p[lb->n_all];
  memset(p, 0, sizeof *p);
  p->d = pl->desc;
  p->v = pl->desc->vt.logits;
  char cerr[512] = "";
  if (p->v->create(strata_config_plugin_node(cfg, pl), &lb->model, &p->state, cerr,
                   sizeof cerr) != 0)
    return strata_errf(err, errlen, "logits plugin '%s': %s", p->d->name,
                       cerr[0] ? cerr : "create failed");
  lb->n_all++;
  return 0;
}

int strata_lbatch_create(const struct strata_registry *reg, struct strata_config *cfg,
                         const char *const *names, int32_t n, int required,
                         const strata_tokenizer_t *tok, int32_t n_vocab, strata_lbatch_t **out,
                         char *err, size_t errlen) {
  *out = NULL;
  if (n > 32) return strata_errf(err, errlen, "engine.logits: at most 32 processors");
  strata_lbatch_t *lb = strata_calloc(1, sizeof *lb);
  if (!lb) return strata_errf(err, errlen, "out of memory");
  lb->tok = tok;
  size_t n_plugins = 0;
  for (size_t i = 0; i < reg->n_plugins; i++)
    n_plugins += reg->plugins[i].desc->kind == STRATA_PLUGIN_LOGITS;
  lb->p = strata_calloc(n_plugins + 1, sizeof *lb->p);
  size_t n_end = 0;
  for (int32_t t = 0; t < n_vocab; t++) n_end += strata_tokenizer_is_end(tok, t) != 0;
  lb->end_tokens = strata_calloc(n_end + 1, sizeof *lb->end_tokens);
  if (!lb->p || !lb->end_tokens) {
    strata_lbatch_destroy(lb);
    return strata_errf(err, errlen, "out of memory");
  }
  n_end = 0;
  for (int32_t t = 0; t < n_vocab; t++)
    if (strata_tokenizer_is_end(tok, t)) lb->end_tokens[n_end++] = t;
  lb->model = (struct strata_logits_model){.size = sizeof lb->model,
                                           .n_vocab = n_vocab,
                                           .tokenize = lb_tokenize,
                                           .end_tokens = lb->end_tokens,
                                           .n_end_tokens = n_end,
                                           .host_ud = lb};
  /* the enabled ones, in config order */
  for (int32_t i = 0; i < n; i++) {
    struct strata_plugin *pl = NULL;
    for (size_t j = 0; j < reg->n_plugins; j++)
      if (reg->plugins[j].desc->kind == STRATA_PLUGIN_LOGITS &&
          strcmp(reg->plugins[j].desc->name, names[i]) == 0)
        pl = &reg->plugins[j];
    int dup = 0;
    for (int32_t j = 0; pl && j < lb->n_all; j++) dup |= lb->p[j].d == pl->desc;
    if (dup) continue;
    if (!pl) {
      if (required) {
        strata_lbatch_destroy(lb);
        return strata_errf(err, errlen, "engine.logits: unknown logits plugin '%s' (see "
                                        "`strata plugins`)", names[i]);
      }
      strata_log(STRATA_LOG_WARN, "engine", "logits processor '%s' is not installed; skipped",
                 names[i]);
      continue;
    }
    if (proc_create(lb, reg, cfg, pl, err, errlen) != 0) {
      strata_lbatch_destroy(lb);
      return -1;
    }
  }
  lb->n_enabled = lb->n_all;
  /* the others: their compile() tells a neutral value from a real use */
  for (size_t j = 0; j < reg->n_plugins; j++) {
    struct strata_plugin *pl = &reg->plugins[j];
    if (pl->desc->kind != STRATA_PLUGIN_LOGITS) continue;
    int seen = 0;
    for (int32_t k = 0; k < lb->n_all; k++) seen |= lb->p[k].d == pl->desc;
    if (!seen && proc_create(lb, reg, cfg, pl, err, errlen) != 0) {
      strata_lbatch_destroy(lb);
      return -1;
    }
  }
  *out = lb;
  return 0;
}

static void release_retired(strata_lbatch_t *lb) {
  for (size_t i = 0; i < lb->n_retired; i++) strata_lbatch_free_params(lb, lb->retired[i]);
  lb->n_retired = 0;
}

void strata_lbatch_retire(strata_lbatch_t *lb, void **params) {
  if (!params) return;
  if (grow((void **)&lb->retired, &lb->cap_retired, lb->n_retired + 1, sizeof *lb->retired) == 0) {
    lb->retired[lb->n_retired++] = params;
    return;
  }
  /* out of memory: release now; the shipped processors never read the
   * parameters of a slot that is being removed */
  strata_lbatch_free_params(lb, params);
}

void strata_lbatch_destroy(strata_lbatch_t *lb) {
  if (!lb) return;
  release_retired(lb);
  free(lb->retired);
  for (int32_t i = 0; lb->p && i < lb->n_all; i++) {
    struct proc *p = &lb->p[i];
    if (p->state) p->v->destroy(p->state);
    free(p->rm);
    free(p->add);
    free(p->mv);
    free(p->rows);
  }
  free(lb->p);
  free(lb->end_tokens);
  free(lb->own);
  free(lb->rms);
  free(lb->adds);
  free(lb->moves);
  free(lb);
}

int32_t strata_lbatch_count(const strata_lbatch_t *lb) { return lb ? lb->n_enabled : 0; }

/* ---- compile ------------------------------------------------------------------- */

static int field_set(const strata_json_t *body, const char *name) {
  const struct strata_host_api *h = strata_host_api();
  enum strata_json_type t = h->json_type(h->json_get(body, name));
  return t != STRATA_JSON_ABSENT && t != STRATA_JSON_NULL;
}

static int owns_field(const struct proc *p, const char *name) {
  for (size_t i = 0; p->v->fields[i]; i++)
    if (strcmp(p->v->fields[i], name) == 0) return 1;
  return 0;
}

void strata_lbatch_free_params(strata_lbatch_t *lb, void **params) {
  if (!params) return;
  for (int32_t k = 0; lb && k < lb->n_enabled; k++)
    if (params[k]) lb->p[k].v->release(lb->p[k].state, params[k]);
  free(params);
}

int strata_lbatch_compile(strata_lbatch_t *lb, const strata_json_t *body, void ***out,
                          const char **field, char *err, size_t errlen) {
  *out = NULL;
  *field = NULL;
  void **params = strata_calloc((size_t)(lb ? lb->n_enabled : 0) + 1, sizeof *params);
  if (!params) return strata_errf(err, errlen, "out of memory");
  int used = 0;
  for (int32_t k = 0; lb && k < lb->n_all; k++) {
    struct proc *p = &lb->p[k];
    /* a processor that is not enabled only checks the fields it would use
     * that no enabled processor owns */
    const char *orphan = NULL;
    if (k >= lb->n_enabled) {
      for (size_t i = 0; p->v->fields[i] && !orphan; i++) {
        if (!field_set(body, p->v->fields[i])) continue;
        int handled = 0;
        for (int32_t j = 0; j < lb->n_enabled; j++)
          handled |= owns_field(&lb->p[j], p->v->fields[i]);
        if (!handled) orphan = p->v->fields[i];
      }
      if (!orphan) continue;
    }
    void *pp = NULL;
    const char *f = NULL;
    char perr[400] = "";
    int rc = p->v->compile(p->state, body, &pp, &f, perr, sizeof perr);
    if (rc < 0) {
      *field = f ? f : p->v->fields[0];
      strata_errf(err, errlen, "%s", perr[0] ? perr : "invalid value");
      strata_lbatch_free_params(lb, params);
      return -1;
    }
    if (rc == 0) continue;
    if (k < lb->n_enabled) {
      params[k] = pp;
      used = 1;
      continue;
    }
    p->v->release(p->state, pp);
    *field = orphan;
    strata_errf(err, errlen,
                "'%s' needs the '%s' logits processor, which is not enabled on this server "
                "(engine.logits)",
                orphan, p->d->name);
    strata_lbatch_free_params(lb, params);
    return -1;
  }
  for (size_t i = 0; i < STRATA_ARRAY_LEN(builtin_fields); i++) {
    if (!field_set(body, builtin_fields[i])) continue;
    int owned = 0;
    for (int32_t k = 0; lb && k < lb->n_all; k++) owned |= owns_field(&lb->p[k], builtin_fields[i]);
    if (owned) continue;
    *field = builtin_fields[i];
    strata_errf(err, errlen,
                "'%s' is not supported by this server: no logits plugin that handles it is "
                "installed",
                builtin_fields[i]);
    strata_lbatch_free_params(lb, params);
    return -1;
  }
  if (!used) {
    free(params);
    return 0;
  }
  *out = params;
  return 0;
}

uint32_t strata_lbatch_mask(const strata_lbatch_t *lb, void *const *params) {
  uint32_t m = 0;
  for (int32_t k = 0; params && lb && k < lb->n_enabled; k++)
    if (params[k]) m |= 1u << k;
  return m;
}

/* ---- the slot table ------------------------------------------------------------- */

int strata_lbatch_add(strata_lbatch_t *lb, int32_t *slot, void *const *params, uint32_t mask,
                      const int32_t *prompt, int32_t n_prompt, const int32_t *output,
                      const int32_t *n_output) {
  if (grow((void **)&lb->adds, &lb->cap_adds, lb->n_adds + 1, sizeof *lb->adds) != 0) return -1;
  struct pending_add *a = &lb->adds[lb->n_adds++];
  a->slot = slot;
  a->mask = mask;
  /* params is the per-processor array; each processor gets its own entry */
  a->seq = (struct strata_logits_seq){.slot = 0,
                                      .params = params,
                                      .prompt = prompt,
                                      .n_prompt = n_prompt,
                                      .output = output,
                                      .n_output = n_output};
  *slot = -2; /* pending */
  return 0;
}

void strata_lbatch_remove(strata_lbatch_t *lb, int32_t *slot) {
  if (!lb) {
    *slot = -1;
    return;
  }
  if (*slot == -2) {
    for (size_t i = 0; i < lb->n_adds; i++)
      if (lb->adds[i].slot == slot) {
        lb->adds[i] = lb->adds[--lb->n_adds];
        break;
      }
    *slot = -1;
    return;
  }
  if (*slot < 0 || (uint32_t)*slot >= lb->n_slots || lb->own[*slot].slot != slot) {
    *slot = -1;
    return;
  }
  uint32_t s = (uint32_t)*slot;
  if (grow((void **)&lb->rms, &lb->cap_rm, lb->n_rm + 1, sizeof *lb->rms) == 0)
    lb->rms[lb->n_rm++] = (struct removal){.slot = s, .mask = lb->own[s].mask};
  else /* the processors keep stale state in a slot the next add replaces */
    strata_log(STRATA_LOG_WARN, "engine", "logits: out of memory recording a removal");
  lb->own[s] = (struct owner){0};
  *slot = -1;
}

static int record_move(strata_lbatch_t *lb, uint32_t from, uint32_t to, uint32_t mask) {
  if (grow((void **)&lb->moves, &lb->cap_moves, lb->n_moves + 1, sizeof *lb->moves) != 0)
    return -1;
  lb->moves[lb->n_moves++] =
      (struct move){.mv = {.from = from, .to = to}, .mask = mask};
  return 0;
}

uint32_t strata_lbatch_flush(strata_lbatch_t *lb, char *err, size_t errlen) {
  if (!lb) return 0;
  if (lb->n_rm == 0 && lb->n_adds == 0) {
    release_retired(lb);
    return 0;
  }
  uint32_t failed = 0;
  if (grow((void **)&lb->own, &lb->cap_slots, lb->n_slots + lb->n_adds, sizeof *lb->own) != 0) {
    strata_errf(err, errlen, "out of memory");
    lb->n_rm = lb->n_adds = 0; /* the caller fails every processed request */
    return ~0u;
  }
  /* adds fill the lowest holes first */
  uint32_t hole = 0;
  for (size_t i = 0; i < lb->n_adds; i++) {
    while (hole < lb->n_slots && lb->own[hole].slot) hole++;
    uint32_t s = hole < lb->n_slots ? hole : lb->n_slots++;
    lb->own[s] = (struct owner){.slot = lb->adds[i].slot, .mask = lb->adds[i].mask};
    *lb->adds[i].slot = (int32_t)s;
    lb->adds[i].seq.slot = s;
  }
  /* compaction: the highest sequence moves into the lowest hole */
  lb->n_moves = 0;
  for (;;) {
    while (lb->n_slots > 0 && !lb->own[lb->n_slots - 1].slot) lb->n_slots--;
    while (hole < lb->n_slots && lb->own[hole].slot) hole++;
    if (hole >= lb->n_slots) break;
    uint32_t top = lb->n_slots - 1;
    if (record_move(lb, top, hole, lb->own[top].mask) != 0) {
      strata_errf(err, errlen, "out of memory");
      lb->n_rm = lb->n_adds = lb->n_moves = 0;
      return ~0u;
    }
    lb->own[hole] = lb->own[top];
    *lb->own[hole].slot = (int32_t)hole;
    lb->own[top] = (struct owner){0};
    lb->n_slots--;
  }
  for (int32_t k = 0; k < lb->n_enabled; k++) {
    struct proc *p = &lb->p[k];
    uint32_t bit = 1u << k;
    if (proc_reserve(p, lb->n_rm + lb->n_adds + lb->n_moves + 1) != 0) {
      failed |= bit;
      strata_errf(err, errlen, "out of memory");
      continue;
    }
    p->n_rm = p->n_add = p->n_mv = 0;
    for (size_t i = 0; i < lb->n_rm; i++)
      if (lb->rms[i].mask & bit) p->rm[p->n_rm++] = lb->rms[i].slot;
    for (size_t i = 0; i < lb->n_adds; i++)
      if (lb->adds[i].mask & bit) {
        p->add[p->n_add] = lb->adds[i].seq;
        p->add[p->n_add].params = ((void *const *)lb->adds[i].seq.params)[k];
        p->n_add++;
      }
    for (size_t i = 0; i < lb->n_moves; i++)
      if (lb->moves[i].mask & bit) p->mv[p->n_mv++] = lb->moves[i].mv;
    if (!p->n_rm && !p->n_add && !p->n_mv) continue;
    struct strata_logits_update u = {.size = sizeof u,
                                     .removed = p->rm,
                                     .n_removed = (uint32_t)p->n_rm,
                                     .added = p->add,
                                     .n_added = (uint32_t)p->n_add,
                                     .moved = p->mv,
                                     .n_moved = (uint32_t)p->n_mv};
    char uerr[256] = "";
    if (p->v->update(p->state, &u, uerr, sizeof uerr) != 0) {
      failed |= bit;
      strata_errf(err, errlen, "logits processor '%s': %s", p->d->name,
                  uerr[0] ? uerr : "update failed");
    }
  }
  lb->n_rm = 0;
  lb->n_adds = 0;
  lb->n_moves = 0;
  release_retired(lb);
  return failed;
}

int strata_lbatch_apply(strata_lbatch_t *lb, float *logits, const struct strata_lbatch_row *rows,
                        uint32_t n_rows) {
  for (int32_t k = 0; lb && k < lb->n_enabled; k++) {
    struct proc *p = &lb->p[k];
    uint32_t bit = 1u << k;
    if (proc_reserve(p, (size_t)n_rows + 1) != 0) return -1;
    p->n_rows = 0;
    for (uint32_t i = 0; i < n_rows; i++)
      if ((rows[i].mask & bit) && rows[i].slot >= 0)
        p->rows[p->n_rows++] =
            (struct strata_logits_row){.slot = (uint32_t)rows[i].slot, .row = rows[i].row};
    if (p->n_rows) p->v->apply(p->state, logits, p->rows, (uint32_t)p->n_rows);
  }
  return 0;
}
