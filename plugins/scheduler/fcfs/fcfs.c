/* fcfs: first come, first served, with chunked prefill and recompute
 * preemption (vLLM's default policy).
 *
 * Each step, within the token budget:
 *   1. running requests that decode get 1 token each, in the order they
 *      started;
 *   2. running requests still prefilling get their next chunk;
 *   3. waiting requests start in (priority, arrival) order while the budget,
 *      max_running and the free blocks allow; a prompt longer than the
 *      budget left gets a chunk, but only once the blocks of all of it are
 *      free (admit_whole_prompt). The first one that cannot start stops the pass, so
 *      a later request never overtakes an earlier one. Admission leaves a
 *      reserve free: the blocks for `ratio` of the tokens the running
 *      requests (and those started before in the step) may still generate,
 *      with the ratio adapting as SGLang's new-token ratio (up after a step
 *      that preempted for blocks, decaying otherwise). Without it a prompt
 *      started into the last free blocks is preempted a step later when the
 *      decoders need them, its prefill wasted (seen on the multi-agent
 *      trace replayed on the real engine: the same prompt recomputed three
 *      times).
 * When a running request cannot get the blocks of its next tokens, the
 * running request with the lowest priority that started last (not yet
 * scheduled this step) is preempted, repeatedly; when that is the request
 * itself, it steps back. A step that preempted starts no waiting request
 * (as vLLM V1: under memory pressure, admitting more only preempts more;
 * on the multi-agent trace this halved fcfs's mean TTFT in `strata sim`).
 *
 * With priority_preemption, before anything else runs, a waiting request
 * that cannot start (max_running reached or not enough free blocks) while a
 * running request has a lower priority (a larger value) preempts such
 * requests, lowest priority and latest started first.
 *
 * Built a second time with SCHED_PREFIX_AWARE as the `prefix-aware`
 * scheduler (the problem of vLLM issue #7883): the same passes, but the
 * waiting queue is served longest cached prefix first (within a priority),
 * a request waiting longer than max_wait seconds goes before every luckier
 * one (aging: by arrival), and a waiting request whose next uncached prompt
 * blocks are being computed right now by a running request, or by one
 * started earlier in this step, waits for them instead of computing them a
 * second time (it does not hold back the requests behind it). Admission
 * charges only uncached blocks and tokens in every build (blocks_for counts
 * cached prefix blocks other requests hold as free to attach, only the ones
 * it takes out of the evictable pool as used, and a waiting request's RUN
 * tokens are the ones beyond its cached prefix).
 *
 * Built a third time with SCHED_AFFINITY as `affinity-group`: requests carry
 * a group key (the request's group_id). Within a priority, waiting requests
 * of a group that already has running members go first, and when one
 * request of a group starts, the other waiting requests of its group start
 * right after it, in arrival order, while the budget, max_running and the
 * blocks allow. Its group_ttl (vtable slot) tells the core to keep a
 * finished group request's cached blocks last in line for eviction for that
 * long (renewed by every finish in the group), so an active group's
 * context survives memory pressure and an idle group's protection lapses.
 * (Under other schedulers engine.kv_cache.group_ttl, default off, does the
 * same.) */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <strata/plugin.h>
#include <strata/scheduler.h>

static const struct strata_host_api *host;

/* admission reserve defaults (the params table repeats them as text) */
#define RESERVE_RATIO 0.7
#define RESERVE_MIN_RATIO 0.1
#define RESERVE_DECAY 0.001
#define RESERVE_MAX_TOKENS 256

#if defined(SCHED_PREFIX_AWARE)
#define SCHED_NAME "prefix-aware"
#elif defined(SCHED_AFFINITY)
#define SCHED_NAME "affinity-group"
#else
#define SCHED_NAME "fcfs"
#endif

struct fcfs {
  int32_t max_prefill_chunk; /* 0: no limit */
  int priority_preemption;
  double max_wait; /* prefix-aware: aging bound in seconds */
  double group_ttl; /* affinity-group: protection of a finished group's blocks */
  int wait_for_inflight; /* prefix-aware */
  int whole_prompt;      /* admission needs room for the whole prompt */
  /* admission reserve (SGLang's new-token ratio): a waiting request starts
   * only if the blocks left afterwards cover `ratio` of what the running
   * requests will still generate; the ratio decays by ratio_decay a step
   * toward min_ratio, and a step that preempts for blocks raises it by
   * ratio_step (up to 1) */
  double ratio, init_ratio, min_ratio, ratio_decay, ratio_step;
  int32_t reserve_max_tokens; /* the estimate per request is clipped here */
  /* scratch, grown as needed */
  uint32_t cap;
  uint32_t *order;
  unsigned char *mark; /* 1: scheduled, 2: preempted */
  uint64_t *started_next; /* prefix-aware: next_block of requests started this step */
  int32_t *got;            /* running requests: tokens scheduled this step */
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
  if (host && cfg) {
    f->max_prefill_chunk = (int32_t)host->config_int(cfg, "max_prefill_chunk");
    f->priority_preemption = host->config_bool(cfg, "priority_preemption");
    f->whole_prompt = host->config_bool(cfg, "admit_whole_prompt");
#ifdef SCHED_PREFIX_AWARE
    f->max_wait = host->config_float(cfg, "max_wait");
    f->wait_for_inflight = host->config_bool(cfg, "wait_for_inflight");
#endif
#ifdef SCHED_AFFINITY
    f->group_ttl = host->config_float(cfg, "group_ttl");
#endif
    f->init_ratio = host->config_float(cfg, "reserve_ratio");
    f->min_ratio = host->config_float(cfg, "reserve_min_ratio");
    f->ratio_decay = host->config_float(cfg, "reserve_decay");
    f->reserve_max_tokens = (int32_t)host->config_int(cfg, "reserve_max_tokens");
  } else {
    f->whole_prompt = 1;
    f->max_wait = 15.0;
    f->wait_for_inflight = 1;
    f->group_ttl = 120.0;
    f->init_ratio = RESERVE_RATIO;
    f->min_ratio = RESERVE_MIN_RATIO;
    f->ratio_decay = RESERVE_DECAY;
    f->reserve_max_tokens = RESERVE_MAX_TOKENS;
  }
  if (f->min_ratio > f->init_ratio) f->min_ratio = f->init_ratio;
  f->ratio = f->init_ratio;
  f->ratio_step = f->init_ratio > 0 ? 0.1 : 0; /* reserve_ratio 0: off for good */
  *state = f;
  return 0;
}

static void fcfs_destroy(void *state) {
  struct fcfs *f = state;
  if (!f) return;
  free(f->order);
  free(f->mark);
  free(f->started_next);
  free(f->got);
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
  uint64_t *sn = realloc(f->started_next, sizeof *sn * n);
  if (!sn) return -1;
  f->started_next = sn;
  int32_t *g = realloc(f->got, sizeof *g * n);
  if (!g) return -1;
  f->got = g;
  f->cap = n;
  return 0;
}

struct ctx {
  const struct strata_sched_view *v;
  struct fcfs *f;
  struct strata_sched_decision *out;
  uint32_t n_out, cap;
  int32_t budget, free_blocks, n_running;
  uint32_t preempted; /* running requests preempted for lack of blocks */
  int32_t reserve;    /* blocks admission leaves for running requests to grow */
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
  c->preempted++;
  c->f->mark[j] = 2;
  c->free_blocks += c->v->reqs[j].blocks_held;
  c->n_running--;
}

/* Largest chunk <= want whose blocks fit in `avail` blocks (0: none). */
static int32_t fit_chunk(struct ctx *c, uint32_t i, int32_t base, int32_t want,
                         int32_t avail) {
  if (c->v->blocks_for(c->v, i, base + want) <= avail) return want;
  int32_t lo = 0, hi = want; /* lo fits, hi does not */
  while (hi - lo > 1) {
    int32_t mid = lo + (hi - lo) / 2;
    if (c->v->blocks_for(c->v, i, base + mid) <= avail)
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

#ifdef SCHED_AFFINITY
/* Whether a running request belongs to group g (0: no group). */
static int group_running(const struct strata_sched_view *v, uint64_t g) {
  for (uint32_t j = 0; g && j < v->n_running; j++)
    if (v->reqs[j].group == g) return 1;
  return 0;
}
#endif

/* The reserve for request i once it holds n_held tokens: the blocks of
 * ratio x the tokens it may still generate (each choice, at most
 * reserve_max_tokens), clamped to the context, beyond the blocks of its
 * known tokens (blocks_for counts only known tokens; this counts the ones
 * still to come). */
static int32_t grow_blocks(struct ctx *c, uint32_t i, int32_t n_held) {
  const struct strata_sched_req *r = &c->v->reqs[i];
  const int64_t bs = c->v->block_size > 0 ? c->v->block_size : 1;
  if (c->f->ratio <= 0) return 0;
  int64_t per = r->n_choices > 0 ? r->n_choices : 1;
  int64_t left = (int64_t)r->max_tokens - r->n_generated / per;
  /* a chat request without max_tokens may generate up to the context but
   * rarely does: its estimate is clipped (as SGLang clips its own) */
  if (left > c->f->reserve_max_tokens) left = c->f->reserve_max_tokens;
  if (left <= 0) return 0;
  int64_t more = (int64_t)(c->f->ratio * (double)left + 0.999);
  int64_t room = (int64_t)c->v->total_blocks * bs - r->n_prompt;
  if (more > room) more = room;
  if (more <= 0) return 0;
  /* the known tokens not held yet are charged when they are scheduled */
  int64_t from = r->n_prompt > n_held ? r->n_prompt : n_held;
  int64_t b = ((from + more + bs - 1) / bs - (from + bs - 1) / bs) * per;
  return b > c->v->total_blocks ? c->v->total_blocks : (int32_t)b;
}

/* Starts waiting request i with as many tokens as fit: 1 if it started. */
static int try_start(struct ctx *c, uint32_t i) {
  const struct strata_sched_req *r = &c->v->reqs[i];
  int32_t k = chunk_limit(c, r, r->n_prompt - r->n_cached);
  if (k <= 0) return 0;
  /* The whole prompt must fit beside the reserve before any chunk of it
   * starts (SGLang's admission rule), unless nothing runs (nothing to make
   * room for). A long prompt started in chunks into the last free blocks
   * is preempted as soon as the running requests grow, its chunk wasted,
   * and the next waiting prompt does the same: in `strata sim` on the
   * multi-agent trace at 5,500 KV tokens prefix-aware alternated two
   * prompts so ten times (mean TTFT 17.0 s against fcfs's 5.3 s). */
  if (c->f->whole_prompt && c->n_running > 0 &&
      c->v->blocks_for(c->v, i, r->n_prompt) > c->free_blocks - c->reserve)
    return 0;
  /* what the running requests will need stays free: the reserve */
  k = fit_chunk(c, i, r->n_cached, k, c->free_blocks - c->reserve);
  if (k <= 0) return 0;
  int32_t need = c->v->blocks_for(c->v, i, r->n_cached + k);
  emit(c, i, STRATA_SCHED_RUN, k);
  c->f->mark[i] = 1;
  c->budget -= k * (r->n_choices > 0 ? r->n_choices : 1);
  c->free_blocks -= need;
  c->n_running++;
  c->reserve += grow_blocks(c, i, r->n_cached + k);
  return 1;
}

/* Admission order of waiting requests a and b (< 0: a first). */
static int cmp_waiting(const struct strata_sched_view *v, const struct fcfs *f, uint32_t a,
                       uint32_t b) {
  const struct strata_sched_req *x = &v->reqs[a], *y = &v->reqs[b];
  if (x->priority != y->priority) return x->priority < y->priority ? -1 : 1;
#ifdef SCHED_PREFIX_AWARE
  /* aged requests first, among them the oldest; then the longest cached
   * prefix */
  int ax = v->now - x->arrival > f->max_wait, ay = v->now - y->arrival > f->max_wait;
  if (ax != ay) return ax ? -1 : 1;
  if (!ax && x->n_cached != y->n_cached) return x->n_cached > y->n_cached ? -1 : 1;
#elif defined(SCHED_AFFINITY)
  (void)f;
  int gx = group_running(v, x->group), gy = group_running(v, y->group);
  if (gx != gy) return gx ? -1 : 1;
#else
  (void)f;
#endif
  if (x->arrival != y->arrival) return x->arrival < y->arrival ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* The running request a higher-priority waiting one may preempt: the
 * largest priority value above prio, latest started, not scheduled. */
static int64_t pick_lower(struct ctx *c, int32_t prio) {
  int64_t best = -1;
  for (uint32_t j = 0; j < c->v->n_running; j++) {
    if (c->f->mark[j] || c->v->reqs[j].priority <= prio) continue;
    if (best < 0 || c->v->reqs[j].priority >= c->v->reqs[best].priority) best = j;
  }
  return best;
}

/* priority_preemption: waiting requests (in admission order) that could
 * not start preempt lower-priority running ones. */
static void priority_pass(struct ctx *c, uint32_t nw) {
  int32_t n_running = c->n_running, free_blocks = c->free_blocks;
  for (uint32_t w = 0; w < nw; w++) {
    uint32_t i = c->f->order[w];
    const struct strata_sched_req *r = &c->v->reqs[i];
    int32_t k = r->n_prompt - r->n_cached;
    int32_t per = r->n_choices > 0 ? r->n_choices : 1;
    if (k > c->v->max_batch_tokens / per) k = c->v->max_batch_tokens / per;
    if (k < 1) k = 1;
    int32_t need = c->v->blocks_for(c->v, i, r->n_cached + k);
    while (n_running >= c->v->max_running || need > free_blocks) {
      int64_t j = pick_lower(c, r->priority);
      if (j < 0) break;
      preempt(c, (uint32_t)j);
      n_running--;
      free_blocks += c->v->reqs[j].blocks_held;
    }
    if (n_running >= c->v->max_running || need > free_blocks) return;
    n_running++; /* a seat held for it in this simulation only */
    free_blocks -= need;
  }
}

static int fcfs_schedule(void *state, const struct strata_sched_view *v,
                         struct strata_sched_decision *out, uint32_t cap,
                         char *err, size_t errlen) {
  struct fcfs *f = state;
  uint32_t n = v->n_running + v->n_waiting;
  if (grow(f, n ? n : 1) != 0) {
    if (errlen)
      strncpy(err, SCHED_NAME ": out of memory", errlen - 1), err[errlen - 1] = 0;
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

  /* waiting requests in admission order */
  uint32_t nw = 0;
  for (uint32_t i = v->n_running; i < n; i++) {
    uint32_t j = nw++;
    while (j > 0 && cmp_waiting(v, f, f->order[j - 1], i) > 0) {
      f->order[j] = f->order[j - 1];
      j--;
    }
    f->order[j] = i;
  }
  if (f->priority_preemption) priority_pass(&c, nw);
  c.preempted = 0; /* those made room for waiting requests */

  /* 1 and 2: running requests, decodes first, then prefill chunks */
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t i = 0; i < v->n_running; i++) {
      const struct strata_sched_req *r = &v->reqs[i];
      if (f->mark[i]) continue;
      int32_t remaining = r->n_prompt - r->n_computed;
      if ((remaining == 1) != (pass == 0) || remaining < 1) continue;
      int32_t k = chunk_limit(&c, r, remaining);
      if (k <= 0) continue;
      int32_t got = fit_chunk(&c, i, r->n_computed, k, c.free_blocks);
      while (got == 0) {
        int64_t victim = pick_victim(&c);
        if (victim < 0) break;
        preempt(&c, (uint32_t)victim);
        if (victim == i) break;
        got = fit_chunk(&c, i, r->n_computed, k, c.free_blocks);
      }
      if (got == 0) continue;
      int32_t need = v->blocks_for(v, i, r->n_computed + got);
      emit(&c, i, STRATA_SCHED_RUN, got);
      f->mark[i] = 1;
      f->got[i] = got;
      c.budget -= got * (r->n_choices > 0 ? r->n_choices : 1);
      c.free_blocks -= need;
    }
  }

  /* the reserve: blocks the running requests will grow into */
  c.reserve = 0;
  for (uint32_t i = 0; i < v->n_running; i++)
    if (f->mark[i] != 2)
      c.reserve += grow_blocks(&c, i, v->reqs[i].n_computed + (f->mark[i] ? f->got[i] : 0));

  /* 3: waiting requests in admission order, unless a running request had
   * to be preempted for blocks this step (vLLM V1's rule: admitting more
   * would only preempt more next step) */
  uint32_t n_started = 0;
  for (uint32_t w = 0; w < nw && !c.preempted; w++) {
    uint32_t i = f->order[w];
    if (f->mark[i]) continue; /* started with its group */
    if (c.n_running >= v->max_running) break;
#ifdef SCHED_PREFIX_AWARE
    int aged = v->now - v->reqs[i].arrival > f->max_wait;
    if (f->wait_for_inflight && !aged && v->size >= sizeof *v && v->n_inflight) {
      if (v->n_inflight[i] > 0) continue; /* its next blocks are being computed */
      int dup = 0;
      for (uint32_t s2 = 0; s2 < n_started && v->next_block[i]; s2++)
        dup |= f->started_next[s2] == v->next_block[i];
      if (dup) continue; /* a request started this step computes them */
    }
#endif
    if (!try_start(&c, i)) break;
    f->started_next[n_started++] =
        v->size >= sizeof *v && v->next_block ? v->next_block[i] : 0;
#ifdef SCHED_AFFINITY
    /* the rest of its group comes along where it fits */
    const uint64_t g = v->reqs[i].group;
    for (uint32_t w2 = w + 1; g && w2 < nw && c.n_running < v->max_running; w2++) {
      uint32_t i2 = f->order[w2];
      if (!f->mark[i2] && v->reqs[i2].group == g) try_start(&c, i2);
    }
#endif
  }
  /* the reserve adapts: up after a step that ran out of blocks, slowly
   * down while none does */
  if (c.preempted)
    f->ratio = f->ratio + f->ratio_step < 1 ? f->ratio + f->ratio_step : 1;
  else if (v->n_running)
    f->ratio = f->ratio - f->ratio_decay > f->min_ratio ? f->ratio - f->ratio_decay : f->min_ratio;
  return (int)c.n_out;
}

static const struct strata_param fcfs_params[] = {
    {"max_prefill_chunk", STRATA_PARAM_INT, 0, "0", 0, 16777216,
     "most tokens one request prefills in a step; 0: up to the step's budget"},
    {"priority_preemption", STRATA_PARAM_BOOL, 0, "false", 1, 0,
     "a waiting request that cannot start preempts running requests of lower priority"},
    {"admit_whole_prompt", STRATA_PARAM_BOOL, 0, "true", 1, 0,
     "a waiting request starts only when its whole uncached prompt fits beside the reserve "
     "(while any request runs), not a first chunk into the last free blocks"},
    {"reserve_ratio", STRATA_PARAM_FLOAT, 0, "0.7", 0, 1,
     "share of the tokens running requests may still generate whose blocks admission keeps "
     "free (the starting value; it adapts: SGLang's new-token ratio); 0: no reserve"},
    {"reserve_max_tokens", STRATA_PARAM_INT, 0, "256", 0, 16777216,
     "the reserve counts at most this many more tokens per request (one without max_tokens "
     "may run to the context but rarely does)"},
    {"reserve_min_ratio", STRATA_PARAM_FLOAT, 0, "0.1", 0, 1,
     "the reserve ratio decays to this while no step runs out of blocks"},
    {"reserve_decay", STRATA_PARAM_FLOAT, 0, "0.001", 0, 1,
     "the reserve ratio's decay per step; a step that preempts for blocks adds 0.1"},
#ifdef SCHED_PREFIX_AWARE
    {"max_wait", STRATA_PARAM_FLOAT, 0, "15", 0, 86400,
     "seconds after which a waiting request goes before every luckier one (aging)"},
    {"wait_for_inflight", STRATA_PARAM_BOOL, 0, "true", 1, 0,
     "a request whose next prompt blocks are being computed waits for them"},
#endif
#ifdef SCHED_AFFINITY
    {"group_ttl", STRATA_PARAM_FLOAT, 0, "120", 0, 86400,
     "seconds a finished group request's cached blocks are evicted last (renewed by each "
     "finish of the group); 0: engine.kv_cache.group_ttl"},
#endif
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

#ifdef SCHED_AFFINITY
static double fcfs_group_ttl(void *state) { return ((struct fcfs *)state)->group_ttl; }
#endif

static const struct strata_scheduler_vtable fcfs_vtable = {
    .size = sizeof(struct strata_scheduler_vtable),
    .create = fcfs_create,
    .destroy = fcfs_destroy,
    .schedule = fcfs_schedule,
    .on_finish = NULL,
#ifdef SCHED_AFFINITY
    .group_ttl = fcfs_group_ttl,
#endif
};

static const struct strata_plugin_desc fcfs_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_SCHEDULER,
    .name = SCHED_NAME,
    .version = "1.0",
    .license = "MIT",
#if defined(SCHED_PREFIX_AWARE)
    .description = "longest cached prefix first with aging; waits for prefixes being computed",
#elif defined(SCHED_AFFINITY)
    .description = "admits the requests of a group together, running groups first",
#else
    .description = "first come, first served; decodes first, chunked prefill, "
                   "recompute preemption",
#endif
    .params = fcfs_params,
    .init = fcfs_init,
    .fini = NULL,
    .vt.scheduler = &fcfs_vtable,
};

STRATA_PLUGIN_DEFINE(fcfs_desc)
