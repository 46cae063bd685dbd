/* The serving engine: continuous batching of many requests over one model,
 * on its own thread.
 *
 * Requests join and leave between steps. Each step the scheduler plugin
 * (strata/scheduler.h) picks which running sequences decode and which
 * waiting requests prefill (chunked: a long prompt is split over steps
 * within max_batch_tokens, so running decodes never stall), the engine runs
 * ONE batched forward pass over all of them on the paged KV cache
 * (kv_cache.h, with automatic prefix caching), samples, detokenizes, checks
 * stop strings and EOS, and reports new text through each request's
 * callback.
 *
 * A request with n > 1 choices prefills its prompt once; the choices then
 * fork from it and share the prompt's blocks.
 *
 * Threads: strata_engine_submit, _cancel, _release and _get_metrics may be
 * called from any thread. Callbacks run on the engine thread and must not
 * block or call back into the engine except strata_engine_cancel. */
#ifndef STRATA_ENGINE_H
#define STRATA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include <strata/plugin.h>

#include "kv_cache.h"
#include "kv_events.h"
#include "sampler.h"

struct strata_runtime;
struct strata_config;
struct strata_registry;
struct strata_model_opts;

typedef struct strata_engine strata_engine_t;
typedef struct strata_engine_req strata_engine_req_t;

#define STRATA_ENGINE_MAX_LOGITS 32

struct strata_engine_config {
  int32_t max_batch_tokens; /* tokens per step (prefill chunks + decodes) */
  int32_t max_running;      /* requests holding KV blocks at once */
  int32_t max_waiting;      /* queued requests; beyond: STRATA_ENGINE_EFULL */
  int32_t block_size;       /* KV block size in tokens */
  uint64_t kv_memory;       /* KV cache bytes; 0: kv_tokens decides */
  int64_t kv_tokens;        /* KV cache size in tokens when kv_memory is 0;
                               0: max_running full contexts, capped */
  int prefix_caching;       /* automatic prefix caching on/off */
  int kv_f16;               /* engine.kv_cache.dtype = "f16" */
  double group_ttl;         /* seconds a finished grouped request's blocks
                               stay protected from eviction; 0: off */
  const char *scheduler;    /* scheduler plugin name ("fcfs") */
  /* logits processor plugins enabled, in the order they apply */
  const char *logits[STRATA_ENGINE_MAX_LOGITS];
  int32_t n_logits;
  int logits_required; /* 1: a listed processor that is not installed is
                          an error (set in config); 0: skipped */
};

/* Defaults: 2048 tokens per step, 64 running, 1024 waiting, blocks of 16,
 * prefix caching on, fcfs, every built-in logits processor (allowed_token_ids,
 * bad_words, min_tokens, logit_bias, repetition_penalty, frequency_penalty,
 * presence_penalty; those not installed are skipped with a warning). */
void strata_engine_config_defaults(struct strata_engine_config *c);

/* Reads engine.{scheduler, max_batch_tokens, max_running, max_waiting, logits} and
 * engine.kv_cache.{block_size, memory, tokens, prefix_caching, group_ttl} from a
 * validated config (NULL: the defaults). Strings point into the config. */
int strata_engine_config_from(struct strata_config *cfg, struct strata_engine_config *out);

/* The model options the runtime must be opened with for this engine config
 * (the model's workspace and KV cache are allocated at load): max_tokens and
 * max_out = max_batch_tokens, block_size, and n_blocks sized from kv_memory,
 * else kv_tokens, else max_running full contexts capped at 1 GiB (but at
 * least one full context). Reads the model's hyperparameters from the GGUF
 * file; context_length as given to the runtime (0: the model's). Other
 * fields of *mo are kept (kv_f16, or c->kv_f16, sets the element size). 0 or -1
 * with err. */
int strata_engine_model_opts(const struct strata_engine_config *c, const char *model_path,
                             int32_t context_length, struct strata_model_opts *mo, char *err,
                             size_t errlen);

/* What happens to a request's cached blocks when it finishes. */
enum strata_affinity {
  STRATA_AFFINITY_DEFAULT = 0, /* protected for group_ttl if it has a group */
  STRATA_AFFINITY_KEEP = 1,    /* protected for group_ttl (group or not) */
  STRATA_AFFINITY_RELEASE = 2, /* evicted before anything else (a finished
                                  workflow) */
};

/* Return codes of submit. */
#define STRATA_ENGINE_EINVAL (-1) /* bad parameters (message in err): HTTP 400 */
#define STRATA_ENGINE_EFULL (-2)  /* queue full: HTTP 429 */
#define STRATA_ENGINE_ESTOP (-3)  /* engine stopping or failed: HTTP 503 */

enum strata_finish {
  STRATA_FINISH_NONE = 0,
  STRATA_FINISH_STOP,   /* EOS or a stop string/token ("stop") */
  STRATA_FINISH_LENGTH, /* max_tokens or the context is full ("length") */
  STRATA_FINISH_ABORT,  /* cancelled */
  STRATA_FINISH_ERROR,  /* the model step failed (message in text) */
};
const char *strata_finish_name(enum strata_finish f); /* "stop", "length", ... */

struct strata_request_params {
  const int32_t *prompt; /* copied by submit */
  int32_t n_prompt;      /* >= 1 */
  int32_t max_tokens;    /* >= 1; prompt + max_tokens <= context, else EINVAL */
  int32_t n;             /* choices, 1..128; n * ceil((prompt + max_tokens) /
                            block_size) must fit in the KV cache, else EINVAL */
  struct strata_sampling sampling; /* per choice i the seed is seed + i */
  int has_seed;          /* 0: a random seed per request */
  const char *const *stop; /* stop strings (copied), not included in the text */
  size_t n_stop;
  const int32_t *stop_token_ids; /* extra stop tokens (copied) */
  size_t n_stop_token_ids;
  int ignore_eos;        /* 0: stop at EOS, BOS or any control token (as
                            `strata generate`); stop_token_ids always stop */
  int32_t priority;      /* lower first */
  const char *cache_salt; /* NULL: none */
  uint64_t group;        /* affinity key for the scheduler; 0: none */
  /* From strata_engine_logits_compile (NULL: no logits processor). submit
   * takes it over, on failure too. */
  void **logits;
  int affinity;          /* enum strata_affinity */
  int32_t min_tokens;    /* stop strings are not looked for before this many
                            tokens (the min_tokens processor holds back EOS
                            and stop tokens) */
  /* > 0: when the request finishes (stop or length, not abort or error) its
   * cached blocks are protected for this many seconds, whatever affinity
   * and group say (POST /v1/cache/hints with prefill); 0: off. Finite,
   * >= 0, else EINVAL. */
  double keep_ttl;
};

/* Compiles the logits-processor parameters of a request body (a JSON
 * object, borrowed for the call) with every enabled processor. 0 with *out
 * set (NULL when the request uses none), or -1 with err and *field naming
 * the request field at fault (a processor's own error, a field of a
 * processor that is installed but not enabled, or of a built-in one that
 * is not installed). Any thread. */
int strata_engine_logits_compile(strata_engine_t *e, const strata_json_t *body, void ***out,
                                 const char **field, char *err, size_t errlen);
/* Frees what strata_engine_logits_compile returned and submit did not take. */
void strata_engine_logits_free(strata_engine_t *e, void **params);

/* One event of a request, delivered on the engine thread. */
struct strata_engine_event {
  int32_t index;        /* choice index */
  const char *text;     /* new text of that choice since its last event */
  size_t text_len;      /* (may be 0; never splits a UTF-8 character) */
  const int32_t *tokens; /* the tokens that produced it (a stop token is
                            included here but gives no text) */
  int32_t n_tokens;
  enum strata_finish finish; /* != NONE: this choice is finished */
  /* Set on the request's last event (every choice finished): after it the
   * callback is never called again. */
  int done;
  int32_t prompt_tokens;      /* usage, valid when done */
  int32_t completion_tokens;  /* all choices */
  int32_t cached_tokens;      /* prompt tokens from the prefix cache */
};
typedef void (*strata_engine_cb)(void *ud, const struct strata_engine_event *ev);

/* Starts the engine thread over an open runtime (model, tokenizer,
 * registry with the scheduler plugin); the runtime must outlive the engine.
 * Open the runtime with strata_engine_model_opts(): the KV block manager
 * takes the model's block size and block count, and max_batch_tokens is
 * clamped to the model's workspace (max_tokens, max_out). */
int strata_engine_start(struct strata_runtime *rt, const struct strata_engine_config *cfg,
                        strata_engine_t **out, char *err, size_t errlen);
/* ---- simulation (strata sim) ----
 * The same engine core (scheduler plugin, KV block manager with prefix
 * caching, budgets and invariants) without a model or a thread: each step
 * runs on the caller's thread, costs step_s + prefill tokens x
 * prefill_s_per_token + decoding sequences x decode_s_per_seq of virtual
 * time, and produces ordinary tokens (requests end by max_tokens; give
 * ignore_eos). Callbacks carry no text. */
struct strata_engine_sim {
  double step_s, prefill_s_per_token, decode_s_per_seq;
  int32_t n_vocab, ctx_len;
  /* attention: seconds per computed token per token of context before it
   * (a prefill chunk at a long context costs more than one at the start;
   * 0: off) */
  double attn_s_per_pos;
};
/* KV cache: cfg->kv_tokens (else max_running full contexts), in blocks of
 * cfg->block_size. reg holds the scheduler plugin; cfgfile its settings
 * (NULL: defaults). */
int strata_engine_start_sim(const struct strata_registry *reg, struct strata_config *cfgfile,
                            const struct strata_engine_config *cfg,
                            const struct strata_engine_sim *sim, strata_engine_t **out, char *err,
                            size_t errlen);
/* One engine step; 1 when anything ran or changed. */
int strata_engine_sim_step(strata_engine_t *e);
double strata_engine_sim_time(const strata_engine_t *e);
/* Moves the virtual clock forward to t (an idle engine waiting for the next
 * arrival). */
void strata_engine_sim_set_time(strata_engine_t *e, double t);
/* 1 when no request is queued or running. */
int strata_engine_sim_idle(strata_engine_t *e);

/* Stops the thread: every pending request finishes with ABORT first, then
 * the engine is freed. Handles not yet released stay valid for
 * strata_engine_release (and a no-op strata_engine_cancel); neither may run
 * concurrently with stop. */
void strata_engine_stop(strata_engine_t *e);

/* Queues a request. On success *out is a handle owned by the caller (free it
 * with strata_engine_release, after the done event or at any time: releasing
 * early cancels). Returns 0 or a STRATA_ENGINE_E* code with err set. */
int strata_engine_submit(strata_engine_t *e, const struct strata_request_params *p,
                         strata_engine_cb cb, void *ud, strata_engine_req_t **out, char *err,
                         size_t errlen);
/* Asks the engine to drop the request at its next step (its blocks come
 * back; the done event carries ABORT). Idempotent; any thread. */
void strata_engine_cancel(strata_engine_req_t *r);
/* Drops the caller's handle; cancels the request if it is not done. After
 * this the callback is not called again (even if it had not been done). */
void strata_engine_release(strata_engine_req_t *r);

/* Prefix-cache statistics for a prompt (see struct strata_cache_stats in
 * strata/plugin.h): no model work, a hash lookup per block under the KV
 * manager's mutex; any thread, while the engine runs. salt: the request's
 * cache_salt or NULL. out->size: how much of the struct to fill (0: all).
 * 0, or -1 on bad arguments. */
int strata_cache_stats(strata_engine_t *e, const int32_t *tokens, size_t n,
                       struct strata_cache_stats *out);
int strata_cache_stats_salt(strata_engine_t *e, const int32_t *tokens, size_t n, const char *salt,
                            struct strata_cache_stats *out);

/* Eviction hints for a prompt's cached blocks (POST /v1/cache/hints), any
 * thread, while the engine runs; no model work. The prompt's full blocks
 * are hashed with the engine's block size and salt (NULL: none). */
enum strata_cache_hint_action {
  STRATA_CACHE_HINT_KEEP = 1,    /* protect for ttl seconds (strata_kv_protect) */
  STRATA_CACHE_HINT_RELEASE = 2, /* evict first (strata_kv_release_hint); without
                                    force, blocks under an unexpired protection
                                    keep it (strata_kv_release_unprotected) */
};
struct strata_cache_hint_result {
  int32_t prompt_tokens;
  int32_t cached_tokens; /* after the hint, as strata_cache_stats counts them */
  int32_t blocks;        /* cached blocks protected (keep) or hinted (release) */
  int32_t kept_blocks;   /* release without force: protected blocks left alone */
};
/* 0, -1 on bad arguments (no tokens, a prompt longer than the context, ttl
 * not in (0, 86400] for keep), -2 when prefix caching is off, -3 out of
 * memory. */
int strata_engine_cache_hint(strata_engine_t *e, const int32_t *tokens, size_t n,
                             const char *salt, enum strata_cache_hint_action action,
                             double ttl, int force, struct strata_cache_hint_result *out);
/* 1 when engine.kv_cache.prefix_caching is on. */
int strata_engine_prefix_caching(const strata_engine_t *e);

/* Prefix-cache events (GET /v1/cache/events), any thread. The snapshot:
 * the hashes of every block cached now (malloc'd, *n of them) and the
 * sequence number of the first event after it, so that snapshot + events
 * from *seq on is exact. -1 when prefix caching is off, -2 out of memory.
 * Events: as strata_kv_events_read (-1: `from` fell out of the log). */
int strata_engine_cache_snapshot(strata_engine_t *e, struct strata_kv_hash **hashes, int32_t *n,
                                 uint64_t *seq);
long strata_engine_cache_events(strata_engine_t *e, uint64_t from, struct strata_kv_evrec *out,
                                size_t max);
int32_t strata_engine_block_size(const strata_engine_t *e);

/* Context length, vocabulary and such for validation by the server. */
int32_t strata_engine_context_length(const strata_engine_t *e);

/* Prometheus histogram with fixed upper bounds (seconds). */
#define STRATA_HIST_MAX_BUCKETS 32
struct strata_histogram {
  const double *bounds; /* n_bounds upper bounds, ascending; +Inf implied */
  int n_bounds;
  uint64_t counts[STRATA_HIST_MAX_BUCKETS + 1]; /* per bucket, NOT cumulative */
  uint64_t count;
  double sum;
};

struct strata_engine_metrics {
  int32_t num_running;  /* requests holding blocks */
  int32_t num_waiting;  /* queued (including preempted) */
  struct strata_kv_stats kv;
  uint64_t prompt_tokens_total;     /* prompt tokens of finished + running requests */
  uint64_t generation_tokens_total; /* generated tokens */
  uint64_t requests_finished[5];    /* by enum strata_finish (index 0 unused) */
  uint64_t preemptions_total;
  uint64_t steps_total;
  uint64_t scheduler_refusals_total; /* decisions the core refused */
  struct strata_histogram ttft;    /* vllm:time_to_first_token_seconds */
  struct strata_histogram itl;     /* vllm:inter_token_latency_seconds */
  struct strata_histogram e2e;     /* vllm:e2e_request_latency_seconds */
  struct strata_histogram queue;   /* vllm:request_queue_time_seconds */
  double step_seconds_total;   /* model steps: forward pass, logits processors, sampling */
  double logits_seconds_total; /* of which in logits processors (update + apply) */
  uint64_t failed_steps_total; /* steps whose model pass failed (their requests got errors) */
  uint32_t failing_steps;      /* failed steps in a row, 0 after a step that worked */
  char last_step_error[256];   /* why the last failed step failed */
};
void strata_engine_get_metrics(strata_engine_t *e, struct strata_engine_metrics *out);

#endif
