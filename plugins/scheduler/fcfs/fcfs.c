/* fcfs: first come, first served, with chunked prefill and recompute
 * preemption (vLLM's default policy).
 *
 * Each step, within the token budget:
 *   1. running requests that decode get 1 token each, in the order they
 *      started;
 *   2. running requests still prefilling get their next chunk;
 *   3. waiting requests start in (priority, arrival) order while the budget,
 *      max_running and the free blocks allow; a prompt longer than what is
 *      left gets a chunk. The first one that cannot start stops the pass, so
 *      a later request never overtakes an earlier one.
 * When a running request cannot get the blocks of its next tokens, the
 * running request with the lowest priority that started last (not yet
 * scheduled this step) is preempted, repeatedly; when that is the request
 * itself, it steps back. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <strata/plugin.h>
#include <strata/scheduler.h>

static const struct strata_host_api *host;

struct fcfs {
  int32_t max_prefill_chunk; /* 0: no limit */
  /* scratch, grown as needed */
  uint32_t cap;
  uint32_t *order;
  unsigned char *mark; /* 1: scheduled, 2: preempted */
};

static int fcfs_init(const struct strata_host_api *h,
                     const strata_config_node_t *cfg, char *err,
                     size_t errlen) {
  (void)cfg;
  (void)err;
  (void)errlen;
  host = h;
  return 0;
}

static int fcfs_create(const strata_config_node_t *cfg, void **state, char *err,
                       size_t errlen) {
  struct fcfs *f = calloc(1, sizeof *f);
  if (!f) {
    if (errlen) strncpy(err, "out of memory", errlen - 1), err[errlen - 1] = 0;
    return -1;
  }
  if (host && cfg)
    f->max_prefill_chunk = (int32_t)host->config_int(cfg, "max_prefill_chunk");
  *state = f;
  return 0;
}

static void fcfs_destroy(void *state) {
  struct fcfs *f = state;
  if (!f) return;
  free(f->order);
  free(f->mark);
  free(f);
}

static int grow(struct fcfs *f, uint32_t n) {
  if (n <= f->cap) return 0;
  uint32_t *o = realloc(f->order, sizeof *o * n);
  if (!o) return -1;
  f->order = o;
  unsigned char *m = realloc(f->mark, n);
  if (!m) return -1;
  f->mark = m;
  f->cap = n;
  return 0;
}

struct ctx {
  const struct strata_sched_view *v;
  struct fcfs *f;
  struct strata_sched_decision *out;
  uint32_t n_out, cap;
  int32_t budget, free_blocks, n_running;
};

static void emit(struct ctx *c, uint32_t i, enum strata_sched_action a,
                 int32_t n) {
  if (c->n_out < c->cap)
    c->out[c->n_out++] =
        (struct strata_sched_decision){.index = i, .action = a, .n_tokens = n};
}

/* The running request to preempt so that `self` can run: the lowest
 * priority (largest value), latest started, among those not scheduled yet
 * this step, self included (vLLM's rule: when self is that request, it
 * steps back itself). -1: none. */
static int64_t pick_victim(struct ctx *c) {
  int64_t best = -1;
  for (uint32_t j = 0; j < c->v->n_running; j++) {
    if (c->f->mark[j]) continue;
    if (best < 0 || c->v->reqs[j].priority >= c->v->reqs[best].priority)
      best = j;
  }
  return best;
}

static void preempt(struct ctx *c, uint32_t j) {
  emit(c, j, STRATA_SCHED_PREEMPT, 0);
  c->f->mark[j] = 2;
  c->free_blocks += c->v->reqs[j].blocks_held;
  c->n_running--;
}

/* Largest chunk <= want whose blocks fit in the free blocks (0: none). */
static int32_t fit_chunk(struct ctx *c, uint32_t i, int32_t base,
                         int32_t want) {
  if (c->v->blocks_for(c->v, i, base + want) <= c->free_blocks) return want;
  int32_t lo = 0, hi = want; /* lo fits, hi does not */
  while (hi - lo > 1) {
    int32_t mid = lo + (hi - lo) / 2;
    if (c->v->blocks_for(c->v, i, base + mid) <= c->free_blocks)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

static int32_t chunk_limit(struct ctx *c, const struct strata_sched_req *r,
                           int32_t remaining) {
  int32_t per = r->n_choices > 0 ? r->n_choices : 1;
  int32_t n = remaining;
  if (c->f->max_prefill_chunk > 0 && n > c->f->max_prefill_chunk)
    n = c->f->max_prefill_chunk;
  if (n > c->budget / per) n = c->budget / per;
  return n;
}

static int cmp_ctx_prio(const struct strata_sched_view *v, uint32_t a,
                        uint32_t b) {
  const struct strata_sched_req *x = &v->reqs[a], *y = &v->reqs[b];
  if (x->priority != y->priority) return x->priority < y->priority ? -1 : 1;
  if (x->arrival != y->arrival) return x->arrival < y->arrival ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static int fcfs_schedule(void *state, const struct strata_sched_view *v,
                         struct strata_sched_decision *out, uint32_t cap,
                         char *err, size_t errlen) {
  struct fcfs *f = state;
  uint32_t n = v->n_running + v->n_waiting;
  if (grow(f, n ? n : 1) != 0) {
    if (errlen)
      strncpy(err, "fcfs: out of memory", errlen - 1), err[errlen - 1] = 0;
    return -1;
  }
  memset(f->mark, 0, n);
  struct ctx c = {.v = v,
                  .f = f,
                  .out = out,
                  .cap = cap,
                  .budget = v->max_batch_tokens,
                  .free_blocks = v->free_blocks,
                  .n_running = (int32_t)v->n_running};

  /* 1 and 2: running requests, decodes first, then prefill chunks */
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t i = 0; i < v->n_running; i++) {
      const struct strata_sched_req *r = &v->reqs[i];
      if (f->mark[i]) continue;
      int32_t remaining = r->n_prompt - r->n_computed;
      if ((remaining == 1) != (pass == 0) || remaining < 1) continue;
      int32_t k = chunk_limit(&c, r, remaining);
      if (k <= 0) continue;
      int32_t got = fit_chunk(&c, i, r->n_computed, k);
      while (got == 0) {
        int64_t victim = pick_victim(&c);
        if (victim < 0) break;
        preempt(&c, (uint32_t)victim);
        if (victim == i) break;
        got = fit_chunk(&c, i, r->n_computed, k);
      }
      if (got == 0) continue;
      int32_t need = v->blocks_for(v, i, r->n_computed + got);
      emit(&c, i, STRATA_SCHED_RUN, got);
      f->mark[i] = 1;
      c.budget -= got * (r->n_choices > 0 ? r->n_choices : 1);
      c.free_blocks -= need;
    }
  }

  /* 3: waiting requests in (priority, arrival) order */
  uint32_t nw = 0;
  for (uint32_t i = v->n_running; i < n; i++) {
    uint32_t j = nw++;
    while (j > 0 && cmp_ctx_prio(v, f->order[j - 1], i) > 0) {
      f->order[j] = f->order[j - 1];
      j--;
    }
    f->order[j] = i;
  }
  for (uint32_t w = 0; w < nw; w++) {
    uint32_t i = f->order[w];
    const struct strata_sched_req *r = &v->reqs[i];
    if (c.n_running >= v->max_running) break;
    int32_t k = chunk_limit(&c, r, r->n_prompt - r->n_cached);
    if (k <= 0) break;
    k = fit_chunk(&c, i, r->n_cached, k);
    if (k <= 0) break;
    int32_t need = v->blocks_for(v, i, r->n_cached + k);
    emit(&c, i, STRATA_SCHED_RUN, k);
    f->mark[i] = 1;
    c.budget -= k * (r->n_choices > 0 ? r->n_choices : 1);
    c.free_blocks -= need;
    c.n_running++;
  }
  return (int)c.n_out;
}

static const struct strata_param fcfs_params[] = {
    {"max_prefill_chunk", STRATA_PARAM_INT, 0, "0", 0, 16777216,
     "most tokens one request prefills in a step; 0: up to the step's budget"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_scheduler_vtable fcfs_vtable = {
    .size = sizeof(struct strata_scheduler_vtable),
    .create = fcfs_create,
    .destroy = fcfs_destroy,
    .schedule = fcfs_schedule,
    .on_finish = NULL,
};

static const struct strata_plugin_desc fcfs_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_SCHEDULER,
    .name = "fcfs",
    .version = "1.0",
    .license = "MIT",
    .description = "first come, first served; decodes first, chunked prefill, "
                   "recompute preemption",
    .params = fcfs_params,
    .init = fcfs_init,
    .fini = NULL,
    .vt.scheduler = &fcfs_vtable,
};

STRATA_PLUGIN_DEFINE(fcfs_desc)
