/* Scheduler plugins (kind STRATA_PLUGIN_SCHEDULER): each engine step, choose
 * which running sequences decode, which waiting requests (re)start prefill
 * and with how many prompt tokens, and whom to preempt when KV blocks run
 * out.
 *
 * The plugin only decides; the core enforces. Before calling schedule() the
 * engine fills a strata_sched_view: the budgets of this step and every
 * request it holds, running ones first. The plugin writes one decision per
 * request it wants to touch. The core then applies the decisions in order,
 * and checks each against the invariants it owns:
 *   - the sum of scheduled tokens stays within max_batch_tokens, and the
 *     running set within max_running;
 *   - a running request gets at most its remaining prompt tokens (chunked
 *     prefill) or exactly 1 (decode);
 *   - a request starts only if its blocks can be allocated (after the
 *     preemptions listed before it), else it stays waiting;
 *   - a preempted request loses its blocks and goes back to the waiting
 *     queue to be recomputed (its generated tokens are kept and re-prefilled
 *     with the prompt, as vLLM's recompute preemption).
 * A decision the core refuses is dropped (and counted), never half-applied;
 * a plugin bug cannot corrupt the cache or lose a request. A running request
 * the plugin leaves out simply skips this step.
 *
 * Requests carry what prefix-aware and group-aware policies need: the
 * number of prompt tokens already in the prefix cache (for waiting
 * requests, computed by the core before the call), a priority, the arrival
 * time, and an opaque group key (the request's `metadata` "group" /
 * affinity value hashed by the core, 0 when absent).
 *
 * Threads: schedule() runs on the engine thread only, one call at a time
 * per state; create/destroy on the thread that starts/stops the engine. */
#ifndef STRATA_SCHEDULER_H
#define STRATA_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include <strata/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

enum strata_sched_state {
  STRATA_SCHED_WAITING = 0, /* queued: never started, or preempted */
  STRATA_SCHED_RUNNING = 1, /* holds KV blocks: prefilling or decoding */
};

/* One request as the scheduler sees it (read-only for the plugin).
 *
 * Token counts unify prefill and decode: a request's sequences hold
 * n_prompt known tokens (its prompt, plus every token sampled so far), of
 * which n_computed have their K/V in the cache. remaining = n_prompt -
 * n_computed is always >= 1 (the last sampled token is not in the cache
 * yet); remaining == 1 means the request is decoding. */
struct strata_sched_req {
  uint64_t id;       /* unique, increasing in arrival order */
  enum strata_sched_state state;
  int32_t priority;  /* lower runs first (vLLM's convention); default 0 */
  double arrival;    /* seconds, monotonic clock */
  uint64_t group;    /* affinity key, 0: none */
  int32_t n_prompt;  /* known tokens to hold: the prompt plus the tokens
                        generated so far (re-prefilled after a preemption);
                        the largest over its sequences */
  int32_t n_computed; /* running: of those, already in the KV cache (the
                         smallest over its sequences); waiting: 0 */
  int32_t n_cached;  /* waiting: tokens the prefix cache would supply, a
                        multiple of block_size, at most n_prompt - 1 */
  int32_t n_generated; /* tokens generated so far (all choices) */
  int32_t max_tokens; /* generation limit (per choice) */
  int32_t n_choices;  /* sequences run together when it is scheduled: 1
                         until an n > 1 request's prompt is prefilled and
                         forked, then its unfinished choices */
  int32_t blocks_held; /* running: KV blocks it holds (all its sequences) */
  /* Blocks it needs to get n more prompt tokens (waiting: to start with n
   * tokens, counting the cached prefix as free) is computed by the core:
   * see strata_sched_view.blocks_for. */
};

enum strata_sched_action {
  STRATA_SCHED_RUN = 1,     /* schedule n_tokens of it this step */
  STRATA_SCHED_PREEMPT = 2, /* running -> waiting, blocks freed */
};

/* RUN n_tokens: a running request gets 1..(n_prompt - n_computed); a
 * waiting one 1..(n_prompt - n_cached), the tokens to compute beyond its
 * cached prefix. Each of its sequences computes min(n_tokens, its own
 * remaining tokens), so the step's cost is at most n_tokens * n_choices
 * (the core charges the exact sum against max_batch_tokens). A request
 * appears in at most one decision per step; PREEMPT only for a running one
 * that has no RUN decision before it. */
struct strata_sched_decision {
  uint32_t index;  /* into view->reqs */
  enum strata_sched_action action;
  int32_t n_tokens; /* RUN: tokens to compute (1 while decoding) */
};

struct strata_sched_view {
  uint32_t size; /* sizeof(struct strata_sched_view) as the host knows it */
  double now;
  int32_t max_batch_tokens; /* token budget of the step */
  int32_t max_running;      /* requests holding blocks at once */
  int32_t block_size;
  int32_t free_blocks;      /* free + evictable blocks right now */
  int32_t total_blocks;
  /* running requests first (in the order they started), then waiting ones
   * in arrival order */
  const struct strata_sched_req *reqs;
  uint32_t n_running, n_waiting;
  /* KV blocks request i needs so that each of its sequences holds n_total
   * tokens (n_computed + n_tokens, or n_cached + n_tokens when waiting),
   * beyond what it holds now, counted against free_blocks: cached prefix
   * blocks that running requests hold are free to attach, cached blocks
   * that only the cache holds count (attaching them takes them out of the
   * evictable pool that free_blocks includes), and the prompt's fork into n
   * choices is included. A pure function of the core's state (an estimate:
   * the core's allocation decides). */
  int32_t (*blocks_for)(const struct strata_sched_view *v, uint32_t i, int32_t n_total);
  void *host_ud; /* for blocks_for */
  /* ---- appended: check size before use ---- */
  void *engine; /* for host->cache_stats */
  /* Per request, indexed like reqs (NULL when prefix caching is off).
   * n_inflight[i] (waiting requests): tokens of its prompt right after its
   * cached prefix whose blocks a running request is computing now (same
   * chain hash, not yet in the cache): starting it now would compute them
   * twice, waiting a step or two makes them cache hits. A multiple of
   * block_size; 0 for running requests. */
  const int32_t *n_inflight;
  /* next_block[i] (waiting requests): identity of the first full prompt
   * block after its cached prefix (0: none): two waiting requests with the
   * same non-zero value share an uncached block. */
  const uint64_t *next_block;
};

struct strata_scheduler_vtable {
  uint32_t size; /* sizeof(struct strata_scheduler_vtable) */
  /* A policy state for one engine (cfg: the plugin's validated config). */
  int (*create)(const strata_config_node_t *cfg, void **state, char *err, size_t errlen);
  void (*destroy)(void *state);
  /* Writes at most cap decisions into out and returns how many (0..cap),
   * or -1 after writing a message into err (the engine logs it and falls
   * back to running nothing new this step). cap >= n_running + n_waiting. */
  int (*schedule)(void *state, const struct strata_sched_view *view,
                  struct strata_sched_decision *out, uint32_t cap, char *err, size_t errlen);
  /* (optional) a request left the engine (finished, cancelled, failed). */
  void (*on_finish)(void *state, uint64_t id);
  /* ---- appended: check size before use ---- */
  /* (optional) seconds the cached blocks of a finished request with a group
   * stay last in line for eviction (the policy keeps group contexts warm);
   * NULL or <= 0: engine.kv_cache.group_ttl decides. */
  double (*group_ttl)(void *state);
};

#ifdef __cplusplus
}
#endif

#endif
