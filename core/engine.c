/* The serving engine: one thread running continuous batching over the
 * paged KV cache. See engine.h for the contract and docs/architecture.md
 * for the step loop.
 *
 * Ownership: the engine thread owns every request it has accepted (its
 * lists, sequences, samplers, detokenizers); submitters only touch the
 * incoming queue, the metrics and the cancel/release flags, under e->mu. A
 * request is freed by whoever drops the last of its two references (the
 * caller's handle and the engine's). */
#include "config.h"

#include "engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <strata/quant.h>
#include <strata/scheduler.h>

#include "conf.h"
#include "gguf.h"
#include "log.h"
#include "logits_batch.h"
#include "model.h"
#include "plugin_loader.h"
#include "runtime.h"
#include "tokenizer.h"
#include "util.h"

/* ---- config
 * ------------------------------------------------------------------ */

void strata_engine_config_defaults(struct strata_engine_config *c) {
  *c = (struct strata_engine_config){.max_batch_tokens = 2048,
                                     .max_running = 64,
                                     .max_waiting = 1024,
                                     .block_size = 16,
                                     .kv_memory = 0,
                                     .kv_tokens = 0,
                                     .prefix_caching = 1,
                                     .group_ttl = 0,
                                     .scheduler = "fcfs"};
  c->n_logits = (int32_t)strata_config_strlist(strata_config_defaults("engine"), "logits",
                                               c->logits, STRATA_ENGINE_MAX_LOGITS);
  c->logits_required = 0;
}

int strata_engine_config_from(struct strata_config *cfg,
                              struct strata_engine_config *out) {
  strata_engine_config_defaults(out);
  const strata_config_node_t *eng = cfg ? strata_config_group(cfg, "engine")
                                        : strata_config_defaults("engine");
  const strata_config_node_t *kvc =
      cfg ? strata_config_group(cfg, "engine.kv_cache")
          : strata_config_defaults("engine.kv_cache");
  if (eng) {
    const char *s = strata_config_string(eng, "scheduler");
    if (s) out->scheduler = s;
    out->max_batch_tokens = (int32_t)strata_config_int(eng, "max_batch_tokens");
    out->max_running = (int32_t)strata_config_int(eng, "max_running");
    out->max_waiting = (int32_t)strata_config_int(eng, "max_waiting");
    size_t nl = strata_config_strlist(eng, "logits", out->logits, STRATA_ENGINE_MAX_LOGITS);
    out->n_logits = (int32_t)(nl < STRATA_ENGINE_MAX_LOGITS ? nl : STRATA_ENGINE_MAX_LOGITS);
    /* an explicit list must be installed; the default skips what is not */
    out->logits_required = strata_config_is_set(eng, "logits");
  }
  if (kvc) {
    out->block_size = (int32_t)strata_config_int(kvc, "block_size");
    out->kv_memory = (uint64_t)strata_config_int(kvc, "memory");
    out->kv_tokens = strata_config_int(kvc, "tokens");
    out->prefix_caching = strata_config_bool(kvc, "prefix_caching");
    out->group_ttl = strata_config_float(kvc, "group_ttl");
    const char *dt = strata_config_string(kvc, "dtype");
    out->kv_f16 = dt && strcmp(dt, "f16") == 0;
  }
  return 0;
}

int strata_engine_model_opts(const struct strata_engine_config *c,
                             const char *model_path, int32_t context_length,
                             struct strata_model_opts *mo, char *err,
                             size_t errlen) {
  if (c->max_batch_tokens < 1 || c->block_size < 1)
    return strata_errf(err, errlen,
                       "max_batch_tokens and block_size must be positive");
  strata_gguf_t *g = NULL;
  char gerr[512];
  if (strata_gguf_open(model_path, &g, gerr, sizeof gerr) != 0)
    return strata_errf(err, errlen, "%s", gerr);
  struct strata_hparams hp;
  memset(&hp, 0, sizeof hp);
  int rc = strata_model_read_hparams(g, &hp, gerr, sizeof gerr);
  strata_gguf_close(g);
  if (rc != 0) return strata_errf(err, errlen, "%s: %s", model_path, gerr);
  int32_t ctx = context_length > 0 ? context_length : hp.ctx_len;
  if (c->kv_f16) mo->kv_f16 = 1;
  uint64_t bpt = strata_kv_bytes_per_token(hp.n_layers, hp.n_kv_heads,
                                           hp.head_dim, mo->kv_f16 ? 2 : 4);
  if (!bpt)
    return strata_errf(err, errlen, "%s: cannot size the KV cache", model_path);
  int32_t bs = c->block_size, nb;
  int32_t one_ctx = strata_kv_blocks_for_tokens(ctx, bs);
  if (c->kv_memory) {
    nb = strata_kv_blocks_for_bytes(c->kv_memory, bpt, bs);
    if (nb <= 0)
      return strata_errf(
          err, errlen,
          "engine.kv_cache.memory: %llu bytes hold no block of %d tokens "
          "(%llu bytes per token)",
          (unsigned long long)c->kv_memory, bs, (unsigned long long)bpt);
  } else if (c->kv_tokens > 0) {
    nb = strata_kv_blocks_for_tokens(c->kv_tokens, bs);
  } else {
    int64_t want = (int64_t)(c->max_running > 0 ? c->max_running : 1) * one_ctx;
    int32_t cap = strata_kv_blocks_for_bytes((uint64_t)1 << 30, bpt, bs);
    if (cap < one_ctx) cap = one_ctx;
    nb = want > cap ? cap : (int32_t)want;
  }
  if (nb <= 0)
    return strata_errf(err, errlen, "the KV cache would have no block");
  mo->max_tokens = c->max_batch_tokens;
  mo->max_out = c->max_batch_tokens;
  mo->block_size = bs;
  mo->n_blocks = nb;
  return 0;
}

const char *strata_finish_name(enum strata_finish f) {
  switch (f) {
  case STRATA_FINISH_STOP:
    return "stop";
  case STRATA_FINISH_LENGTH:
    return "length";
  case STRATA_FINISH_ABORT:
    return "abort";
  case STRATA_FINISH_ERROR:
    return "error";
  default:
    return "none";
  }
}

/* ---- histograms (vLLM's bucket bounds)
 * --------------------------------------- */

static const double ttft_bounds[] = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                    0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                    7.5,  10.0,  20.0, 40.0,  80.0};
static const double latency_bounds[] = {
    0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static void hist_init(struct strata_histogram *h, const double *b, int n) {
  memset(h, 0, sizeof *h);
  h->bounds = b;
  h->n_bounds = n;
}

static void hist_observe(struct strata_histogram *h, double v) {
  int i = 0;
  while (i < h->n_bounds && v > h->bounds[i])
    i++;
  h->counts[i]++;
  h->count++;
  h->sum += v;
}

/* ---- requests
 * ----------------------------------------------------------------- */

enum choice_state { CH_PENDING, CH_ACTIVE, CH_DONE };

struct choice {
  int32_t index;
  enum choice_state state; /* PENDING: n > 1, waits for the prompt's fork */
  enum strata_finish finish;
  struct strata_kv_seq seq;
  int32_t *toks;   /* [n_prompt + max_tokens]: prompt, then generated */
  int32_t n_known; /* prompt + generated */
  int32_t n_gen;
  struct strata_sampler smp;
  int32_t lslot; /* logits batch slot, -1: none (-2: joining) */
  struct strata_detok_stream ds;
  char *hold; /* decoded text not yet emitted (could start a stop string) */
  size_t n_hold, cap_hold;
  /* this step */
  int32_t k;       /* tokens computed */
  int32_t out_row; /* logits row to sample from, -1: none */
  int started_now;
  /* this step's event */
  int has_ev;
  char *ev; /* text */
  size_t n_ev, cap_ev;
  int32_t ev_n_tokens;
};

struct strata_engine_req {
  strata_engine_t *e;
  uint64_t id;
  atomic_int refs; /* the caller's handle + the engine's */
  atomic_int cancel, released, finished;
  strata_engine_cb cb;
  void *ud;
  /* parameters */
  int32_t *prompt, n_prompt, max_tokens, n;
  struct strata_sampling sampling;
  char **stop;
  size_t *stop_len, n_stop, max_stop_len;
  int32_t *stop_ids;
  size_t n_stop_ids;
  int ignore_eos;
  int32_t priority;
  char *salt;
  uint64_t group;
  struct strata_kv_hash *ph; /* chain hashes of the prompt's full blocks */
  int32_t n_ph;               /* -1: not computed yet */
  void **lparams; /* logits processor parameters, NULL: none */
  uint32_t lmask;
  int32_t min_tokens;
  int affinity;
  double keep_ttl; /* > 0: protect the blocks that long when finished */
  /* engine thread state */
  struct choice *ch;
  int32_t n_live; /* choices not done */
  int running;    /* holds blocks */
  int forked;
  int started_once;
  int gone; /* finished; to be dropped from the lists */
  int error;
  int32_t cached_tokens, completion_tokens;
  double t_arrival, t_last_token;
  int got_first;
  /* this step */
  int decided, scheduled;
  int32_t view_cached;
  int32_t view_idle; /* of the cached prefix blocks, those only the cache holds */
};

struct strata_engine {
  struct strata_runtime *rt;
  /* simulation (strata sim): no model, no thread, a virtual clock */
  int simulated;
  struct strata_engine_sim sim;
  /* STRATA_FAILPOINT=step:A[-B] (tests): model steps number A to B - 1
   * (0-based; no B: all from A on) fail as a backend error would; A = -1:
   * off */
  int64_t failpoint_step, failpoint_end, n_forward;
  int step_failed;
  char step_err[256];
  /* STRATA_STEP_LOG=FILE: one JSON line per arrival and per step (research:
   * compare `strata sim` with the real engine decision by decision) */
  FILE *step_log;
  int64_t step_P, step_D; /* this step: prefill tokens, decoding sequences */
  double step_pos;        /* sum over its tokens of the context before each */
  double sim_now, sim_step;
  struct strata_model *m;
  const strata_tokenizer_t *tok;
  struct strata_engine_config cfg;
  int32_t ctx_len, n_vocab, bs, n_blocks;

  strata_kv_t *kv;
  strata_kv_events_t *kv_log; /* for GET /v1/cache/events; NULL when caching is off */
  const struct strata_scheduler_vtable *sv;
  void *sstate;
  pthread_t th;
  pthread_mutex_t mu, cb_mu;
  pthread_cond_t cv;
  /* under mu */
  struct strata_engine_req **incoming;
  size_t n_incoming, cap_incoming;
  int stopping;
  uint64_t next_id;
  int32_t n_queued; /* waiting in the engine, as of the last step */
  struct strata_engine_metrics met;
  /* engine thread */
  struct strata_engine_req **running, **waiting, **started;
  size_t n_running, n_waiting, n_started, cap_lists;
  struct strata_sched_req *vreqs;
  int32_t *v_inflight;
  uint64_t *v_next;
  uint64_t *inflight; /* open-addressing set of in-flight block hashes (lo) */
  size_t cap_inflight;
  struct strata_engine_req **vmap;
  struct strata_sched_decision *dec;
  struct strata_engine_req **sched;
  size_t n_sched, cap_view;
  int32_t *b_tok, *b_pos, *b_slot, *b_out;
  size_t cap_tok;
  int32_t *b_start, *b_len;
  size_t cap_seq;
  int32_t *b_bt;
  size_t cap_bt;
  float *logits;
  size_t cap_logits;
  strata_lbatch_t *lb; /* logits processors */
  struct strata_lbatch_row *lrows;
  size_t cap_lrows;
  int32_t n_rows; /* logits rows of this step (extra rows: n > 1 forks) */
  int32_t *smp_idx; /* sampling scratch shared by every choice [n_vocab] */
  float *smp_prob;
  void *rowbuf;
  size_t cap_rowbuf;
};

/* The engine's clock: monotonic seconds, or the simulation's virtual time. */
static double enow(const strata_engine_t *e) { return e->simulated ? e->sim_now : strata_now(); }
/* The same for the KV cache (group protections lapse on it: in a
 * simulation, on the virtual clock). */
static double kv_clock(void *ud) { return enow(ud); }

static void choice_free(struct choice *c) {
  strata_kv_seq_clear(&c->seq);
  free(c->toks);
  strata_sampler_free(&c->smp);
  free(c->hold);
  free(c->ev);
}

static void req_free(struct strata_engine_req *r) {
  if (!r) return;
  for (int32_t i = 0; r->ch && i < r->n; i++)
    choice_free(&r->ch[i]);
  free(r->ch);
  free(r->prompt);
  for (size_t i = 0; i < r->n_stop; i++)
    free(r->stop[i]);
  free(r->stop);
  free(r->stop_len);
  free(r->stop_ids);
  free(r->salt);
  free(r->ph);
  /* set only when submit failed (the engine is alive then); a request that
   * reached the engine had them retired at its done event */
  if (r->lparams) strata_lbatch_free_params(r->e->lb, r->lparams);
  free(r);
}

static void req_unref(struct strata_engine_req *r) {
  if (atomic_fetch_sub(&r->refs, 1) == 1) req_free(r);
}

/* Grows a buffer of elements to hold n (doubling). */
static int grow(void **p, size_t *cap, size_t n, size_t elem) {
  if (n <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < n)
    c *= 2;
  void *q = strata_reallocarray(*p, c, elem);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

/* Grows n parallel arrays sharing one capacity to hold need elements. */
static int grow_all(void **ptrs[], const size_t *elems, int n, size_t *cap,
                    size_t need) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < need)
    c *= 2;
  for (int i = 0; i < n; i++) {
    void *q = strata_reallocarray(*ptrs[i], c, elems[i]);
    if (!q) return -1; /* the ones grown so far stay valid, just larger */
    *ptrs[i] = q;
  }
  *cap = c;
  return 0;
}

static int text_append(char **buf, size_t *n, size_t *cap, const char *s,
                       size_t len) {
  if (grow((void **)buf, cap, *n + len + 1, 1) != 0) return -1;
  memcpy(*buf + *n, s, len);
  *n += len;
  (*buf)[*n] = 0;
  return 0;
}

/* ---- submit / cancel / release
 * ----------------------------------------------- */

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int submit_fail(struct strata_engine_req *r, int code) {
  req_free(r);
  return code;
}

static int submit(strata_engine_t *e, const struct strata_request_params *p, void ***lp,
                  strata_engine_cb cb, void *ud, strata_engine_req_t **out, char *err,
                  size_t errlen);

int strata_engine_submit(strata_engine_t *e,
                         const struct strata_request_params *p,
                         strata_engine_cb cb, void *ud,
                         strata_engine_req_t **out, char *err, size_t errlen) {
  void **lp = p ? p->logits : NULL;
  int rc = submit(e, p, &lp, cb, ud, out, err, errlen);
  if (lp) strata_lbatch_free_params(e->lb, lp); /* not taken over */
  return rc;
}

static int submit(strata_engine_t *e, const struct strata_request_params *p, void ***lp,
                  strata_engine_cb cb, void *ud, strata_engine_req_t **out, char *err,
                  size_t errlen) {
  *out = NULL;
  if (!p || !cb) {
    strata_errf(err, errlen, "no parameters or callback");
    return STRATA_ENGINE_EINVAL;
  }
  if (p->n_prompt < 1 || !p->prompt) {
    strata_errf(err, errlen, "the prompt is empty");
    return STRATA_ENGINE_EINVAL;
  }
  for (int32_t i = 0; i < p->n_prompt; i++)
    if (p->prompt[i] < 0 || p->prompt[i] >= e->n_vocab) {
      strata_errf(
          err, errlen,
          "prompt token %d at position %d is outside the vocabulary [0, %d)",
          p->prompt[i], i, e->n_vocab);
      return STRATA_ENGINE_EINVAL;
    }
  if (p->max_tokens < 1) {
    strata_errf(err, errlen, "max_tokens must be at least 1, got %d",
                p->max_tokens);
    return STRATA_ENGINE_EINVAL;
  }
  if (p->min_tokens < 0 || p->min_tokens > p->max_tokens) {
    strata_errf(err, errlen, "min_tokens (%d) must be in [0, max_tokens (%d)]", p->min_tokens,
                p->max_tokens);
    return STRATA_ENGINE_EINVAL;
  }
  if ((int64_t)p->n_prompt + p->max_tokens > e->ctx_len) {
    strata_errf(err, errlen,
                "the prompt (%d tokens) plus max_tokens (%d) is %lld tokens, "
                "more than the "
                "context length %d",
                p->n_prompt, p->max_tokens,
                (long long)p->n_prompt + p->max_tokens, e->ctx_len);
    return STRATA_ENGINE_EINVAL;
  }
  if (p->n < 1 || p->n > 128) {
    strata_errf(err, errlen, "n must be in [1, 128], got %d", p->n);
    return STRATA_ENGINE_EINVAL;
  }
  /* every choice decodes in the same step: n tokens a step must fit the
   * step's budget, or the request could never be scheduled again */
  if (p->n > e->cfg.max_batch_tokens) {
    strata_errf(err, errlen, "n (%d) is more than the engine's max_batch_tokens (%d)", p->n,
                e->cfg.max_batch_tokens);
    return STRATA_ENGINE_EINVAL;
  }
  if (strata_sampling_check(&p->sampling, err, errlen) != 0)
    return STRATA_ENGINE_EINVAL;
  if (!isfinite(p->keep_ttl) || p->keep_ttl < 0) {
    strata_errf(err, errlen, "keep_ttl must be a finite number >= 0, got %g", p->keep_ttl);
    return STRATA_ENGINE_EINVAL;
  }
  int64_t need =
      (int64_t)p->n *
      strata_kv_blocks_for_tokens((int64_t)p->n_prompt + p->max_tokens, e->bs);
  if (need > e->n_blocks) {
    strata_errf(err, errlen,
                "the request needs %lld KV cache blocks (n %d x (prompt %d + "
                "max_tokens %d) "
                "tokens), the cache has %d",
                (long long)need, p->n, p->n_prompt, p->max_tokens, e->n_blocks);
    return STRATA_ENGINE_EINVAL;
  }
  if (p->n_stop && !p->stop) {
    strata_errf(err, errlen, "stop: no strings");
    return STRATA_ENGINE_EINVAL;
  }
  for (size_t i = 0; i < p->n_stop; i++)
    if (!p->stop[i] || !p->stop[i][0] ||
        ((unsigned char)p->stop[i][0] & 0xC0) == 0x80) {
      strata_errf(err, errlen, "stop[%zu]: must be a non-empty UTF-8 string",
                  i);
      return STRATA_ENGINE_EINVAL;
    }
  if (p->n_stop_token_ids && !p->stop_token_ids) {
    strata_errf(err, errlen, "stop_token_ids: no ids");
    return STRATA_ENGINE_EINVAL;
  }
  for (size_t i = 0; i < p->n_stop_token_ids; i++)
    if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= e->n_vocab) {
      strata_errf(err, errlen,
                  "stop_token_ids[%zu] = %d is outside the vocabulary [0, %d)",
                  i, p->stop_token_ids[i], e->n_vocab);
      return STRATA_ENGINE_EINVAL;
    }

  struct strata_engine_req *r = strata_calloc(1, sizeof *r);
  if (!r) {
    strata_errf(err, errlen, "out of memory");
    return STRATA_ENGINE_ESTOP;
  }
  r->e = e;
  r->lparams = *lp;
  r->lmask = strata_lbatch_mask(e->lb, *lp);
  *lp = NULL;
  r->min_tokens = p->min_tokens;
  r->affinity = p->affinity;
  r->keep_ttl = p->keep_ttl;
  r->n_ph = -1;
  atomic_init(&r->refs, 2);
  atomic_init(&r->cancel, 0);
  atomic_init(&r->released, 0);
  atomic_init(&r->finished, 0);
  r->cb = cb;
  r->ud = ud;
  r->n_prompt = p->n_prompt;
  r->max_tokens = p->max_tokens;
  r->n = p->n;
  r->sampling = p->sampling;
  r->ignore_eos = p->ignore_eos;
  r->priority = p->priority;
  r->group = p->group;
  r->prompt = strata_calloc((size_t)p->n_prompt, sizeof *r->prompt);
  r->ch = strata_calloc((size_t)p->n, sizeof *r->ch);
  int oom = !r->prompt || !r->ch;
  if (!oom)
    memcpy(r->prompt, p->prompt, sizeof *r->prompt * (size_t)p->n_prompt);
  if (!oom && p->n_stop) {
    r->stop = strata_calloc(p->n_stop, sizeof *r->stop);
    r->stop_len = strata_calloc(p->n_stop, sizeof *r->stop_len);
    oom = !r->stop || !r->stop_len;
    for (size_t i = 0; !oom && i < p->n_stop; i++) {
      r->stop[i] = strata_strdup(p->stop[i]);
      oom = !r->stop[i];
      r->n_stop = i + 1;
      if (!oom) {
        r->stop_len[i] = strlen(r->stop[i]);
        if (r->stop_len[i] > r->max_stop_len) r->max_stop_len = r->stop_len[i];
      }
    }
  }
  if (!oom && p->n_stop_token_ids) {
    r->stop_ids = strata_calloc(p->n_stop_token_ids, sizeof *r->stop_ids);
    oom = !r->stop_ids;
    if (!oom) {
      memcpy(r->stop_ids, p->stop_token_ids,
             sizeof *r->stop_ids * p->n_stop_token_ids);
      r->n_stop_ids = p->n_stop_token_ids;
    }
  }
  if (!oom && p->cache_salt && p->cache_salt[0])
    oom = !(r->salt = strata_strdup(p->cache_salt));
  uint64_t seed = p->sampling.seed;
  if (!p->has_seed) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                 (uint64_t)(uintptr_t)r);
  }
  for (int32_t i = 0; !oom && i < p->n; i++) {
    struct choice *c = &r->ch[i];
    c->index = i;
    c->lslot = -1;
    c->state = i == 0 ? CH_ACTIVE : CH_PENDING;
    strata_kv_seq_init(&c->seq);
    c->toks = strata_calloc((size_t)p->n_prompt + (size_t)p->max_tokens,
                            sizeof *c->toks);
    struct strata_sampling sp = p->sampling;
    sp.seed = seed + (uint64_t)i;
    if (!c->toks) {
      oom = 1;
      break;
    }
    strata_sampler_init_shared(&c->smp, &sp, e->n_vocab);
    memcpy(c->toks, p->prompt, sizeof *c->toks * (size_t)p->n_prompt);
    c->n_known = p->n_prompt;
    strata_detok_stream_init(&c->ds, e->tok, 0, 0);
  }
  if (oom) {
    strata_errf(err, errlen, "out of memory");
    return submit_fail(r, STRATA_ENGINE_ESTOP);
  }
  r->n_live = p->n;
  r->forked = p->n == 1;
  r->t_arrival = enow(e);

  pthread_mutex_lock(&e->mu);
  if (e->stopping) {
    pthread_mutex_unlock(&e->mu);
    strata_errf(err, errlen, "the engine is stopping");
    return submit_fail(r, STRATA_ENGINE_ESTOP);
  }
  if ((int64_t)e->n_incoming + e->n_queued >= e->cfg.max_waiting) {
    int32_t q = (int32_t)e->n_incoming + e->n_queued;
    pthread_mutex_unlock(&e->mu);
    strata_errf(
        err, errlen,
        "the queue is full (%d requests waiting, engine.max_waiting %d)", q,
        e->cfg.max_waiting);
    return submit_fail(r, STRATA_ENGINE_EFULL);
  }
  if (grow((void **)&e->incoming, &e->cap_incoming, e->n_incoming + 1,
           sizeof *e->incoming) != 0) {
    pthread_mutex_unlock(&e->mu);
    strata_errf(err, errlen, "out of memory");
    return submit_fail(r, STRATA_ENGINE_ESTOP);
  }
  r->id = ++e->next_id;
  e->incoming[e->n_incoming++] = r;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  *out = r;
  return 0;
}

void strata_engine_cancel(strata_engine_req_t *r) {
  if (!r || atomic_load(&r->finished)) return;
  atomic_store(&r->cancel, 1);
  strata_engine_t *e = r->e;
  pthread_mutex_lock(&e->mu);
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

void strata_engine_release(strata_engine_req_t *r) {
  if (!r) return;
  atomic_store(&r->released, 1);
  if (!atomic_load(&r->finished)) {
    strata_engine_t *e = r->e;
    strata_engine_cancel(r);
    /* Wait out a callback in flight (unless we are inside one). */
    if (!pthread_equal(pthread_self(), e->th)) {
      pthread_mutex_lock(&e->cb_mu);
      pthread_mutex_unlock(&e->cb_mu);
    }
  }
  req_unref(r);
}

int strata_engine_logits_compile(strata_engine_t *e, const strata_json_t *body, void ***out,
                                 const char **field, char *err, size_t errlen) {
  return strata_lbatch_compile(e->lb, body, out, field, err, errlen);
}

void strata_engine_logits_free(strata_engine_t *e, void **params) {
  strata_lbatch_free_params(e->lb, params);
}

int strata_cache_stats_salt(strata_engine_t *e, const int32_t *tokens, size_t n, const char *salt,
                            struct strata_cache_stats *out) {
  if (!e || !out || (n && !tokens) || n > INT32_MAX) return -1;
  struct strata_kv_stats st;
  strata_kv_get_stats(e->kv, &st);
  int32_t cached = n ? strata_kv_cached_tokens(e->kv, tokens, (int32_t)n, salt) : 0;
  /* a request computes at least its last token */
  int32_t cap = n ? (int32_t)((n - 1) / (size_t)e->bs) * e->bs : 0;
  if (cached > cap) cached = cap;
  struct strata_cache_stats r = {
      .size = sizeof *out,
      .block_size = e->bs,
      .prompt_tokens = (int32_t)n,
      .cached_tokens = cached,
      .cached_blocks = cached / e->bs,
      .total_blocks = st.n_blocks,
      .free_blocks = st.n_free,
      .used_blocks = st.n_used,
      .evictable_blocks = st.n_evictable,
      .queries = st.queries,
      .hits = st.hits,
      .hit_rate = st.queries ? (double)st.hits / (double)st.queries : 0,
  };
  /* a caller built against an older, shorter struct gets its part only */
  size_t sz = out->size && out->size < sizeof r ? out->size : sizeof r;
  r.size = (uint32_t)sz;
  memcpy(out, &r, sz);
  return 0;
}

int strata_cache_stats(strata_engine_t *e, const int32_t *tokens, size_t n,
                       struct strata_cache_stats *out) {
  return strata_cache_stats_salt(e, tokens, n, NULL, out);
}

int strata_engine_prefix_caching(const strata_engine_t *e) {
  return e && e->cfg.prefix_caching;
}

int strata_engine_cache_hint(strata_engine_t *e, const int32_t *tokens, size_t n,
                             const char *salt, enum strata_cache_hint_action action,
                             double ttl, int force, struct strata_cache_hint_result *out) {
  if (!e || !out || !tokens || n == 0 || n > (size_t)e->ctx_len) return -1;
  if (action != STRATA_CACHE_HINT_KEEP && action != STRATA_CACHE_HINT_RELEASE) return -1;
  if (action == STRATA_CACHE_HINT_KEEP && !(ttl > 0 && ttl <= 86400)) return -1;
  if (!e->cfg.prefix_caching) return -2;
  int32_t nb = (int32_t)(n / (size_t)e->bs);
  struct strata_kv_hash *h = NULL;
  if (nb > 0) {
    if (!(h = strata_calloc((size_t)nb, sizeof *h))) return -3;
    strata_kv_hash_chain(tokens, (int32_t)n, e->bs, salt, h);
  }
  int32_t kept = 0, blocks = 0;
  if (action == STRATA_CACHE_HINT_KEEP)
    blocks = strata_kv_protect(e->kv, h, nb, ttl);
  else if (force)
    blocks = strata_kv_release_hint(e->kv, h, nb);
  else
    blocks = strata_kv_release_unprotected(e->kv, h, nb, &kept);
  int32_t cached = nb ? strata_kv_cached_blocks(e->kv, h, nb) * e->bs : 0;
  free(h);
  /* a request computes at least its last token (as strata_cache_stats) */
  int32_t cap = (int32_t)((n - 1) / (size_t)e->bs) * e->bs;
  *out = (struct strata_cache_hint_result){
      .prompt_tokens = (int32_t)n,
      .cached_tokens = cached < cap ? cached : cap,
      .blocks = blocks,
      .kept_blocks = kept,
  };
  return 0;
}

int32_t strata_engine_context_length(const strata_engine_t *e) {
  return e->ctx_len;
}

void strata_engine_get_metrics(strata_engine_t *e,
                               struct strata_engine_metrics *out) {
  pthread_mutex_lock(&e->mu);
  *out = e->met;
  pthread_mutex_unlock(&e->mu);
  strata_kv_get_stats(e->kv, &out->kv);
}

/* ---- the engine thread
 * --------------------------------------------------------- */

static void deliver(strata_engine_t *e, struct strata_engine_req *r,
                    const struct strata_engine_event *ev) {
  pthread_mutex_lock(&e->cb_mu);
  if (!atomic_load(&r->released)) r->cb(r->ud, ev);
  pthread_mutex_unlock(&e->cb_mu);
}

static void free_seqs(strata_engine_t *e, struct strata_engine_req *r) {
  for (int32_t i = 0; i < r->n; i++)
    strata_kv_free_seq(e->kv, &r->ch[i].seq);
}

static enum strata_finish req_finish(const struct strata_engine_req *r) {
  enum strata_finish f = STRATA_FINISH_STOP;
  for (int32_t i = 0; i < r->n; i++) {
    enum strata_finish c = r->ch[i].finish;
    if (c == STRATA_FINISH_ERROR) return c;
    if (c == STRATA_FINISH_ABORT)
      f = c;
    else if (c == STRATA_FINISH_LENGTH && f == STRATA_FINISH_STOP)
      f = c;
  }
  return f;
}

/* Sends this step's events of r (the last one carries done when every
 * choice is finished) and retires a finished request. */
static void flush_events(strata_engine_t *e, struct strata_engine_req *r) {
  int32_t last = -1;
  for (int32_t i = 0; i < r->n; i++)
    if (r->ch[i].has_ev) last = i;
  int done = r->n_live == 0;
  for (int32_t i = 0; i < r->n; i++) {
    struct choice *c = &r->ch[i];
    if (!c->has_ev) continue;
    struct strata_engine_event ev = {
        .index = c->index,
        .text = c->ev ? c->ev : "",
        .text_len = c->n_ev,
        .tokens = c->ev_n_tokens ? c->toks + c->n_known - c->ev_n_tokens : NULL,
        .n_tokens = c->ev_n_tokens,
        .finish = c->state == CH_DONE ? c->finish : STRATA_FINISH_NONE,
        .done = done && i == last,
    };
    if (ev.done) {
      ev.prompt_tokens = r->n_prompt;
      ev.completion_tokens = r->completion_tokens;
      ev.cached_tokens = r->cached_tokens;
    }
    deliver(e, r, &ev);
    c->has_ev = 0;
    c->n_ev = 0;
    c->ev_n_tokens = 0;
  }
  if (!done) return;
  free_seqs(e, r);
  /* the processors may still hold its slots until the next flush; the
   * engine (not the caller's handle, which can outlive it) lets go */
  strata_lbatch_retire(e->lb, r->lparams);
  r->lparams = NULL;
  r->gone = 1;
  double now = enow(e);
  pthread_mutex_lock(&e->mu);
  e->met.requests_finished[req_finish(r)]++;
  hist_observe(&e->met.e2e, now - r->t_arrival);
  pthread_mutex_unlock(&e->mu);
  if (e->sv->on_finish &&
      e->sv->size >= offsetof(struct strata_scheduler_vtable, on_finish) +
                         sizeof e->sv->on_finish)
    e->sv->on_finish(e->sstate, r->id);
  atomic_store(&r->finished, 1); /* the engine's reference goes in compact() */
}

static void finish_choice(strata_engine_t *e, struct choice *c,
                          struct strata_engine_req *r, enum strata_finish f) {
  c->state = CH_DONE;
  c->finish = f;
  c->has_ev = 1;
  strata_lbatch_remove(e->lb, &c->lslot);
  /* a group's context outlives the request for group_ttl (or goes first
   * when the client says the workflow is over) */
  if (e->cfg.prefix_caching && r->keep_ttl > 0) {
    /* a cache hint's prefill: its context is ready and kept, unless it
     * never got there */
    if (f == STRATA_FINISH_STOP || f == STRATA_FINISH_LENGTH)
      strata_kv_protect(e->kv, c->seq.hashes, c->seq.n_hashes, r->keep_ttl);
  } else if (e->cfg.prefix_caching && r->affinity == STRATA_AFFINITY_RELEASE)
    strata_kv_release_hint(e->kv, c->seq.hashes, c->seq.n_hashes);
  else if (e->cfg.prefix_caching && (r->group || r->affinity == STRATA_AFFINITY_KEEP)) {
    double ttl = e->cfg.group_ttl;
    if (e->sv->size >= offsetof(struct strata_scheduler_vtable, group_ttl) + sizeof e->sv->group_ttl &&
        e->sv->group_ttl) {
      double st = e->sv->group_ttl(e->sstate);
      if (st > 0) ttl = st;
    }
    if (ttl > 0) strata_kv_protect(e->kv, c->seq.hashes, c->seq.n_hashes, ttl);
  }
  strata_kv_free_seq(e->kv, &c->seq);
  r->n_live--;
}

/* Finishes every unfinished choice with f (text: msg) and sends the events. */
static void end_request(strata_engine_t *e, struct strata_engine_req *r,
                        enum strata_finish f, const char *msg) {
  for (int32_t i = 0; i < r->n; i++) {
    struct choice *c = &r->ch[i];
    if (c->state == CH_DONE) continue;
    if (msg) text_append(&c->ev, &c->n_ev, &c->cap_ev, msg, strlen(msg));
    finish_choice(e, c, r, f);
  }
  r->running = 0;
  flush_events(e, r);
}

/* Length of the longest suffix of the held text that is a proper prefix of
 * some stop string (it must wait for the next token). */
static size_t stop_prefix_len(const struct strata_engine_req *r, const char *s,
                              size_t n) {
  size_t max = r->max_stop_len ? r->max_stop_len - 1 : 0;
  if (max > n) max = n;
  for (size_t l = max; l > 0; l--)
    for (size_t i = 0; i < r->n_stop; i++)
      if (r->stop_len[i] > l && memcmp(s + n - l, r->stop[i], l) == 0) return l;
  return 0;
}

static void emit_text(struct choice *c, size_t n) {
  text_append(&c->ev, &c->n_ev, &c->cap_ev, c->hold, n);
  memmove(c->hold, c->hold + n, c->n_hold - n);
  c->n_hold -= n;
}

static void flush_detok(struct choice *c) {
  if (!c->ds.t) return; /* simulated: no text */
  char buf[64];
  size_t w = strata_detok_stream_flush(&c->ds, buf, sizeof buf);
  if (w <= sizeof buf) text_append(&c->hold, &c->n_hold, &c->cap_hold, buf, w);
}

/* A new token for choice c: text, stop conditions, event. */
static void handle_token(strata_engine_t *e, struct strata_engine_req *r,
                         struct choice *c, int32_t tok) {
  c->toks[c->n_known++] = tok;
  c->n_gen++;
  c->has_ev = 1;
  c->ev_n_tokens = 1;
  r->completion_tokens++;
  int stop_tok = !r->ignore_eos && e->tok && strata_tokenizer_is_end(e->tok, tok);
  for (size_t i = 0; !stop_tok && i < r->n_stop_ids; i++)
    stop_tok = tok == r->stop_ids[i];
  if (stop_tok) {
    flush_detok(c);
    emit_text(c, c->n_hold);
    finish_choice(e, c, r, STRATA_FINISH_STOP);
    return;
  }
  char buf[4096];
  size_t w = e->tok ? strata_detok_stream_push(&c->ds, tok, buf, sizeof buf) : 0;
  if (w <= sizeof buf) text_append(&c->hold, &c->n_hold, &c->cap_hold, buf, w);
  if (r->n_stop && c->n_hold && c->n_gen >= r->min_tokens) {
    const char *best = NULL;
    for (size_t i = 0; i < r->n_stop; i++) {
      const char *p = memmem(c->hold, c->n_hold, r->stop[i], r->stop_len[i]);
      if (p && (!best || p < best)) best = p;
    }
    if (best) {
      size_t n = (size_t)(best - c->hold);
      emit_text(c, n);
      c->n_hold = 0;
      finish_choice(e, c, r, STRATA_FINISH_STOP);
      return;
    }
  }
  if (c->n_gen >= r->max_tokens || c->n_known >= e->ctx_len) {
    flush_detok(c);
    emit_text(c, c->n_hold);
    finish_choice(e, c, r, STRATA_FINISH_LENGTH);
    return;
  }
  emit_text(c, c->n_hold - stop_prefix_len(r, c->hold, c->n_hold));
}

/* Copies rows [0, n_rows) of block src into block dst in every layer's K
 * and V (the partial block of an n > 1 fork). */
static int copy_kv_rows(strata_engine_t *e, const struct strata_kv_copy *cp,
                        char *err, size_t errlen) {
  struct strata_model *m = e->m;
  for (int32_t l = 0; l < m->hp.n_layers; l++) {
    struct strata_tensor *ts[2] = {&m->layers[l].k_cache,
                                   &m->layers[l].v_cache};
    for (int t = 0; t < 2; t++) {
      const struct strata_tensor *T = ts[t];
      uint64_t es = T->type == STRATA_TYPE_F16 ? 2 : 4;
      uint64_t row = (uint64_t)T->ne[0] * es,
               bytes = row * (uint64_t)cp->n_rows;
      if (grow(&e->rowbuf, &e->cap_rowbuf, bytes, 1) != 0)
        return strata_errf(err, errlen, "out of memory");
      uint64_t src = T->offset + (uint64_t)cp->src * (uint64_t)e->bs * row;
      uint64_t dst = T->offset + (uint64_t)cp->dst * (uint64_t)e->bs * row;
      if (e->m->be->download(m->bk, T->buf, src, e->rowbuf, bytes) != 0 ||
          e->m->be->upload(m->bk, T->buf, dst, e->rowbuf, bytes) != 0)
        return strata_errf(err, errlen, "KV copy: %s",
                           e->m->be->last_error(m->bk));
    }
  }
  return 0;
}

/* Forks choice 0's prompt into the pending choices. A child that gets no
 * block keeps an empty sequence and is recomputed (prefix cache helps). */
static int fork_choices(strata_engine_t *e, struct strata_engine_req *r,
                        char *err, size_t errlen) {
  struct choice *p = &r->ch[0];
  for (int32_t i = 1; i < r->n; i++) {
    struct choice *c = &r->ch[i];
    if (c->state != CH_PENDING) continue;
    struct strata_kv_copy cp = {0};
    if (strata_kv_fork(e->kv, &p->seq, &c->seq, &cp) == 0 && cp.n_rows > 0 && !e->simulated &&
        copy_kv_rows(e, &cp, err, errlen) != 0)
      return -1;
    c->state = CH_ACTIVE;
    c->out_row = p->out_row;
  }
  r->forked = 1;
  return 0;
}

/* ---- one step
 * ---------------------------------------------------------------------- */

/* Inserts into the waiting list by id (arrival order). */
static void waiting_insert(strata_engine_t *e, struct strata_engine_req *r) {
  size_t i = e->n_waiting;
  while (i > 0 && e->waiting[i - 1]->id > r->id) {
    e->waiting[i] = e->waiting[i - 1];
    i--;
  }
  e->waiting[i] = r;
  e->n_waiting++;
}

/* Drops finished requests from a list, with the engine's reference. */
static void compact(struct strata_engine_req **l, size_t *n) {
  size_t j = 0;
  for (size_t i = 0; i < *n; i++)
    if (!l[i]->gone)
      l[j++] = l[i];
    else
      req_unref(l[i]);
  *n = j;
}

/* Hashes the prompt's full blocks once (prefix caching on): 0, or -1. */
static int prompt_hashes(strata_engine_t *e, struct strata_engine_req *r) {
  if (r->n_ph >= 0) return 0;
  if (!e->cfg.prefix_caching) return -1;
  int32_t nb = r->n_prompt / e->bs;
  r->ph = strata_calloc((size_t)nb + 1, sizeof *r->ph);
  if (!r->ph) return -1;
  r->n_ph = strata_kv_hash_chain(r->prompt, nb * e->bs, e->bs, r->salt, r->ph);
  return 0;
}

/* The in-flight set: prompt blocks that running requests are still
 * prefilling (keyed by the hash's low word, 0 marks an empty entry). */
static uint64_t hkey(struct strata_kv_hash h) { return h.lo ? h.lo : 1; }

static void inflight_build(strata_engine_t *e, uint32_t nr) {
  size_t want = 0;
  for (uint32_t i = 0; i < nr; i++) {
    struct strata_engine_req *r = e->vmap[i];
    const struct choice *c = &r->ch[0];
    if (c->state == CH_ACTIVE && c->seq.started && c->seq.n_computed < r->n_prompt &&
        prompt_hashes(e, r) == 0)
      want += (size_t)(r->n_ph - c->seq.n_computed / e->bs);
  }
  size_t cap = 16;
  while (cap < 2 * want + 1) cap *= 2;
  if (grow((void **)&e->inflight, &e->cap_inflight, cap, sizeof *e->inflight) != 0) {
    if (e->cap_inflight) memset(e->inflight, 0, sizeof *e->inflight * e->cap_inflight);
    return; /* out of memory: an empty set, nothing is deferred */
  }
  cap = e->cap_inflight;
  memset(e->inflight, 0, sizeof *e->inflight * cap);
  for (uint32_t i = 0; want && i < nr; i++) {
    struct strata_engine_req *r = e->vmap[i];
    const struct choice *c = &r->ch[0];
    if (!(c->state == CH_ACTIVE && c->seq.started && c->seq.n_computed < r->n_prompt) ||
        r->n_ph < 0)
      continue;
    for (int32_t b = c->seq.n_computed / e->bs; b < r->n_ph; b++) {
      uint64_t k = hkey(r->ph[b]);
      size_t h = (size_t)(k * 0x9e3779b97f4a7c15ull) & (cap - 1);
      while (e->inflight[h] && e->inflight[h] != k) h = (h + 1) & (cap - 1);
      e->inflight[h] = k;
    }
  }
}

static int inflight_has(const strata_engine_t *e, struct strata_kv_hash hash) {
  if (!e->cap_inflight) return 0;
  uint64_t k = hkey(hash);
  size_t cap = e->cap_inflight, h = (size_t)(k * 0x9e3779b97f4a7c15ull) & (cap - 1);
  while (e->inflight[h]) {
    if (e->inflight[h] == k) return 1;
    h = (h + 1) & (cap - 1);
  }
  return 0;
}

/* The request's numbers as the scheduler sees them. */
static void req_view(strata_engine_t *e, struct strata_engine_req *r,
                     struct strata_sched_req *v) {
  int32_t maxk = 0, minc = INT32_MAX, n_act = 0, blocks = 0, gen = 0,
          mink = INT32_MAX;
  int any_unstarted = 0;
  const struct choice *shortest = NULL;
  for (int32_t i = 0; i < r->n; i++) {
    const struct choice *c = &r->ch[i];
    gen += c->n_gen;
    if (c->state != CH_ACTIVE) continue;
    n_act++;
    if (c->n_known > maxk) maxk = c->n_known;
    if (c->n_known < mink) {
      mink = c->n_known;
      shortest = c;
    }
    int32_t comp = c->seq.started ? c->seq.n_computed : 0;
    if (comp < minc) minc = comp;
    blocks += c->seq.n_blocks;
    any_unstarted |= !c->seq.started;
  }
  r->view_cached = 0;
  r->view_idle = 0;
  if (any_unstarted && shortest) {
    /* the prompt's chain is hashed once; only a preempted request that
     * holds generated tokens too is hashed again (its idle blocks are then
     * not counted: a slight undercharge the core's allocation catches).
     * The lookup also keeps the cached prefix off the evicting end: blocks
     * a queued request will reuse are not least recently used (in strata
     * sim on the multi-agent traces: equal or better TTFT and hit rate for
     * fcfs and prefix-aware in 20 of 20 configurations) */
    int32_t cap = (shortest->n_known - 1) / e->bs * e->bs;
    int32_t cached = shortest->n_known == r->n_prompt && prompt_hashes(e, r) == 0
                         ? strata_kv_keep_prefix(e->kv, r->ph, r->n_ph, cap / e->bs,
                                                 &r->view_idle) * e->bs
                         : strata_kv_cached_tokens(e->kv, shortest->toks, shortest->n_known,
                                                   r->salt);
    r->view_cached = cached < cap ? cached : cap;
  }
  *v = (struct strata_sched_req){
      .id = r->id,
      .state = r->running ? STRATA_SCHED_RUNNING : STRATA_SCHED_WAITING,
      .priority = r->priority,
      .arrival = r->t_arrival,
      .group = r->group,
      .n_prompt = maxk,
      .n_computed = r->running ? minc : 0,
      .n_cached = r->running ? 0 : r->view_cached,
      .n_generated = gen,
      .max_tokens = r->max_tokens,
      .n_choices = n_act,
      .blocks_held = blocks,
  };
}

static int32_t view_blocks_for(const struct strata_sched_view *v, uint32_t i,
                               int32_t n_total) {
  strata_engine_t *e = v->host_ud;
  if (i >= v->n_running + v->n_waiting) return INT32_MAX;
  const struct strata_engine_req *r = e->vmap[i];
  int64_t need = 0;
  int any_unstarted = 0;
  for (int32_t j = 0; j < r->n; j++) {
    const struct choice *c = &r->ch[j];
    if (c->state != CH_ACTIVE) continue;
    int32_t target = n_total < c->n_known ? n_total : c->n_known;
    int32_t want = strata_kv_blocks_for_tokens(target, e->bs);
    int32_t have = c->seq.started ? c->seq.n_blocks : r->view_cached / e->bs;
    if (want > have) need += want - have;
    any_unstarted |= !c->seq.started;
  }
  /* cached blocks only the cache holds are part of free_blocks: attaching
   * them uses them up (blocks other requests hold are free to share) */
  if (any_unstarted) need += r->view_idle;
  if (!r->forked && r->n > 1 && n_total >= r->ch[0].n_known &&
      r->n_prompt % e->bs)
    need += r->n - 1;
  return need > INT32_MAX ? INT32_MAX : (int32_t)need;
}

/* Applies one RUN decision; 1 if it ran, 0 if its blocks could not be
 * allocated or it broke a rule (refused: *refused set). */
static int apply_run(strata_engine_t *e, struct strata_engine_req *r,
                     const struct strata_sched_req *v, int32_t k,
                     int32_t *budget, int32_t *n_run, int *refused) {
  int waiting = !r->running;
  int32_t lim =
      waiting ? v->n_prompt - v->n_cached : v->n_prompt - v->n_computed;
  if (k < 1 || k > lim || (waiting && *n_run >= e->cfg.max_running)) {
    *refused = 1;
    return 0;
  }
  int32_t cost = 0;
  int ok = 1;
  for (int32_t j = 0; j < r->n; j++) {
    struct choice *c = &r->ch[j];
    c->k = 0;
    c->started_now = 0;
    c->out_row = -1;
  }
  for (int32_t j = 0; ok && j < r->n; j++) {
    struct choice *c = &r->ch[j];
    if (c->state != CH_ACTIVE) continue;
    if (!c->seq.started) {
      int32_t got = strata_kv_alloc_prefix(e->kv, &c->seq, c->toks, c->n_known,
                                           r->salt, k);
      if (got < 0) {
        ok = 0;
        break;
      }
      c->started_now = 1;
      c->k = c->seq.n_slots - c->seq.n_computed;
    } else {
      int32_t kc = c->n_known - c->seq.n_computed;
      if (kc > k) kc = k;
      if (kc <= 0) continue;
      int32_t want = c->seq.n_computed + kc;
      if (c->seq.n_slots < want &&
          strata_kv_append_slots(e->kv, &c->seq, want - c->seq.n_slots) != 0) {
        ok = 0;
        break;
      }
      c->k = kc;
    }
    cost += c->k;
  }
  if (ok && cost > *budget) {
    ok = 0;
    *refused = 1;
  }
  if (!ok) {
    for (int32_t j = 0; j < r->n; j++) {
      struct choice *c = &r->ch[j];
      if (c->started_now) strata_kv_free_seq(e->kv, &c->seq);
      c->k = 0;
      c->started_now = 0;
    }
    return 0;
  }
  *budget -= cost;
  if (waiting) {
    r->running = 1;
    (*n_run)++;
    e->started[e->n_started++] = r;
    if (!r->started_once) {
      r->started_once = 1;
      r->cached_tokens = r->ch[0].seq.n_cached;
      double now = enow(e);
      pthread_mutex_lock(&e->mu);
      hist_observe(&e->met.queue, now - r->t_arrival);
      e->met.prompt_tokens_total += (uint64_t)r->n_prompt;
      pthread_mutex_unlock(&e->mu);
    }
  }
  return 1;
}

static int ensure_caps(strata_engine_t *e, size_t n_reqs) {
  void **vp[] = {(void **)&e->vreqs, (void **)&e->vmap,     (void **)&e->dec,
                 (void **)&e->sched, (void **)&e->started, (void **)&e->v_inflight,
                 (void **)&e->v_next};
  const size_t ve[] = {sizeof *e->vreqs, sizeof *e->vmap,       sizeof *e->dec,
                       sizeof *e->sched, sizeof *e->started,    sizeof *e->v_inflight,
                       sizeof *e->v_next};
  void **lp[] = {(void **)&e->running, (void **)&e->waiting};
  const size_t le[] = {sizeof *e->running, sizeof *e->waiting};
  return grow_all(vp, ve, 7, &e->cap_view, n_reqs) ||
         grow_all(lp, le, 2, &e->cap_lists, n_reqs);
}

/* Gives choice c of r a logits row of its own (the choices of an n > 1
 * request share the prompt's row on the step they fork, and processors
 * change rows in place). */
static int own_row(strata_engine_t *e, struct choice *c) {
  if (grow((void **)&e->logits, &e->cap_logits, (size_t)(e->n_rows + 1) * (size_t)e->n_vocab,
           sizeof(float)) != 0)
    return -1;
  memcpy(e->logits + (size_t)e->n_rows * e->n_vocab, e->logits + (size_t)c->out_row * e->n_vocab,
         sizeof(float) * (size_t)e->n_vocab);
  c->out_row = e->n_rows++;
  return 0;
}

/* Runs the enabled logits processors over the rows about to be sampled. */
static void logits_pass(strata_engine_t *e) {
  if (!e->lb || strata_lbatch_count(e->lb) == 0) return;
  double t0 = strata_now();
  size_t n_rows = 0;
  for (size_t q = 0; q < e->n_sched; q++) {
    struct strata_engine_req *r = e->sched[q];
    if (r->gone || !r->lmask) continue;
    const char *fail = NULL;
    for (int32_t j = 0; !fail && j < r->n; j++) {
      struct choice *c = &r->ch[j];
      if (c->state != CH_ACTIVE || c->out_row < 0) continue;
      for (int32_t i = 0; i < j; i++)
        if (r->ch[i].state == CH_ACTIVE && r->ch[i].out_row == c->out_row) {
          if (own_row(e, c) != 0) fail = "out of memory";
          break;
        }
      if (!fail && c->lslot == -1 &&
          strata_lbatch_add(e->lb, &c->lslot, r->lparams, r->lmask, r->prompt, r->n_prompt,
                            c->toks + r->n_prompt, &c->n_gen) != 0)
        fail = "out of memory";
      n_rows++;
    }
    if (fail) end_request(e, r, STRATA_FINISH_ERROR, fail);
  }
  char err[300] = "";
  uint32_t failed = strata_lbatch_flush(e->lb, err, sizeof err);
  if (failed) {
    strata_log(STRATA_LOG_ERROR, "engine", "%s", err);
    for (size_t q = 0; q < e->n_sched; q++) {
      struct strata_engine_req *r = e->sched[q];
      if (!r->gone && (r->lmask & failed)) end_request(e, r, STRATA_FINISH_ERROR, err);
    }
  }
  if (n_rows && grow((void **)&e->lrows, &e->cap_lrows, n_rows, sizeof *e->lrows) != 0) {
    for (size_t q = 0; q < e->n_sched; q++)
      if (!e->sched[q]->gone && e->sched[q]->lmask)
        end_request(e, e->sched[q], STRATA_FINISH_ERROR, "out of memory");
    return;
  }
  uint32_t k = 0;
  for (size_t q = 0; q < e->n_sched; q++) {
    struct strata_engine_req *r = e->sched[q];
    if (r->gone || !r->lmask) continue;
    for (int32_t j = 0; j < r->n; j++) {
      struct choice *c = &r->ch[j];
      if (c->state != CH_ACTIVE || c->out_row < 0 || c->lslot < 0 || k >= n_rows) continue;
      e->lrows[k++] = (struct strata_lbatch_row){
          .slot = c->lslot, .row = (uint32_t)c->out_row, .mask = r->lmask};
    }
  }
  if (k) strata_lbatch_apply(e->lb, e->logits, e->lrows, k);
  double dt = strata_now() - t0;
  pthread_mutex_lock(&e->mu);
  e->met.logits_seconds_total += dt;
  pthread_mutex_unlock(&e->mu);
}

/* Runs the step's forward pass over every scheduled sequence, then samples.
 * Returns the number of tokens computed. */
static int32_t run_batch(strata_engine_t *e) {
  int32_t T = 0, n_seqs = 0, max_blocks = 1, n_out = 0;
  for (size_t s = 0; s < e->n_sched; s++) {
    struct strata_engine_req *r = e->sched[s];
    for (int32_t j = 0; j < r->n; j++) {
      struct choice *c = &r->ch[j];
      if (c->state != CH_ACTIVE || c->k <= 0) continue;
      T += c->k;
      n_seqs++;
      if (c->seq.n_blocks > max_blocks) max_blocks = c->seq.n_blocks;
    }
  }
  if (T == 0) return 0;
  char err[512];
  {
    void **tp[] = {(void **)&e->b_tok, (void **)&e->b_pos, (void **)&e->b_slot,
                   (void **)&e->b_out};
    const size_t te[] = {sizeof(int32_t), sizeof(int32_t), sizeof(int32_t),
                         sizeof(int32_t)};
    void **sp[] = {(void **)&e->b_start, (void **)&e->b_len};
    const size_t se[] = {sizeof(int32_t), sizeof(int32_t)};
    if (grow_all(tp, te, 4, &e->cap_tok, (size_t)T) != 0 ||
        grow_all(sp, se, 2, &e->cap_seq, (size_t)n_seqs + 1) != 0 ||
        grow((void **)&e->b_bt, &e->cap_bt, (size_t)n_seqs * (size_t)max_blocks,
             sizeof(int32_t)) != 0)
      goto oom;
  }
  int32_t t = 0, s = 0;
  for (size_t q = 0; q < e->n_sched; q++) {
    struct strata_engine_req *r = e->sched[q];
    for (int32_t j = 0; j < r->n; j++) {
      struct choice *c = &r->ch[j];
      if (c->state != CH_ACTIVE || c->k <= 0) continue;
      e->b_start[s] = t;
      for (int32_t i = 0; i < c->k; i++) {
        int32_t p = c->seq.n_computed + i;
        e->b_tok[t] = c->toks[p];
        e->b_pos[t] = p;
        e->b_slot[t] = strata_kv_slot(&c->seq, e->bs, p);
        t++;
      }
      e->b_len[s] = c->seq.n_computed + c->k;
      int32_t *bt = e->b_bt + (size_t)s * max_blocks;
      for (int32_t b = 0; b < max_blocks; b++)
        bt[b] = b < c->seq.n_blocks ? c->seq.blocks[b] : 0;
      if (c->seq.n_computed + c->k == c->n_known) {
        e->b_out[n_out] = t - 1;
        c->out_row = n_out++;
      }
      s++;
    }
  }
  e->b_start[s] = t;
  if (grow((void **)&e->logits, &e->cap_logits,
           (size_t)(n_out ? n_out : 1) * (size_t)e->n_vocab,
           sizeof(float)) != 0)
    goto oom;
  struct strata_batch b = {.size = sizeof b,
                           .n_tokens = T,
                           .tokens = e->b_tok,
                           .positions = e->b_pos,
                           .slots = e->b_slot,
                           .n_seqs = n_seqs,
                           .seq_start = e->b_start,
                           .seq_len = e->b_len,
                           .block_tables = e->b_bt,
                           .max_blocks = max_blocks,
                           .block_size = e->bs,
                           .n_out = n_out,
                           .out_rows = e->b_out};
  {
    /* the step's shape: the cost model's inputs, and the step log's */
    int64_t P = 0, D = 0;
    double pos = 0; /* sum over computed tokens of the context before each */
    for (size_t q = 0; q < e->n_sched; q++)
      for (int32_t j = 0; j < e->sched[q]->n; j++) {
        const struct choice *c = &e->sched[q]->ch[j];
        if (c->state != CH_ACTIVE || c->k <= 0) continue;
        if (c->k == 1)
          D++;
        else
          P += c->k;
        pos += (double)c->k * c->seq.n_computed + (double)c->k * (c->k - 1) / 2;
      }
    e->step_P = P;
    e->step_D = D;
    e->step_pos = pos;
  }
  if (e->simulated) {
    /* the cost model instead of the model: a fixed part per step, prefill
     * tokens, decoding sequences, attention over the context */
    e->sim_step = e->sim.step_s + (double)e->step_P * e->sim.prefill_s_per_token +
                  (double)e->step_D * e->sim.decode_s_per_seq +
                  e->step_pos * e->sim.attn_s_per_pos;
    e->sim_now += e->sim_step;
  } else if (e->failpoint_step >= 0 && e->n_forward >= e->failpoint_step &&
             (e->failpoint_end < 0 || e->n_forward < e->failpoint_end)) {
    snprintf(err, sizeof err, "failpoint STRATA_FAILPOINT: model step %lld",
             (long long)e->n_forward++);
    goto fail;
  } else if (e->n_forward++, strata_model_forward(e->m, &b, e->logits, err, sizeof err) != 0) {
    goto fail;
  }

  /* commit, fork */
  e->n_rows = n_out;
  for (size_t q = 0; q < e->n_sched; q++) {
    struct strata_engine_req *r = e->sched[q];
    int bad = 0;
    for (int32_t j = 0; j < r->n; j++) {
      struct choice *c = &r->ch[j];
      if (c->state != CH_ACTIVE || c->k <= 0) continue;
      if (strata_kv_commit(e->kv, &c->seq, c->toks, c->seq.n_computed + c->k) !=
          0)
        bad = 1;
    }
    char ferr[256];
    if (bad) {
      end_request(e, r, STRATA_FINISH_ERROR, "KV cache commit failed");
      continue;
    }
    if (!r->forked && r->ch[0].out_row >= 0 &&
        fork_choices(e, r, ferr, sizeof ferr) != 0) {
      end_request(e, r, STRATA_FINISH_ERROR, ferr);
      continue;
    }
  }
  logits_pass(e);
  /* sample */
  for (size_t q = 0; q < e->n_sched; q++) {
    struct strata_engine_req *r = e->sched[q];
    if (r->gone) continue;
    int produced = 0;
    for (int32_t j = 0; j < r->n; j++) {
      struct choice *c = &r->ch[j];
      if (c->state != CH_ACTIVE || c->out_row < 0) continue;
      /* simulated: any ordinary token (the trace says when to stop) */
      int32_t tok = e->simulated
                        ? 3 + (int32_t)(((uint32_t)c->n_gen * 7u + (uint32_t)c->index) %
                                        (uint32_t)(e->n_vocab - 3))
                        : strata_sampler_sample_with(&c->smp,
                                                     e->logits + (size_t)c->out_row * e->n_vocab,
                                                     e->smp_idx, e->smp_prob);
      c->out_row = -1;
      handle_token(e, r, c, tok);
      produced++;
    }
    if (produced) {
      double now = enow(e);
      pthread_mutex_lock(&e->mu);
      e->met.generation_tokens_total += (uint64_t)produced;
      if (!r->got_first)
        hist_observe(&e->met.ttft, now - r->t_arrival);
      else
        hist_observe(&e->met.itl, now - r->t_last_token);
      pthread_mutex_unlock(&e->mu);
      r->got_first = 1;
      r->t_last_token = now;
    }
    if (r->n_live == 0) r->running = 0;
    flush_events(e, r);
  }
  return T;

oom:
  snprintf(err, sizeof err, "out of memory building the batch");
fail:
  strata_log(STRATA_LOG_ERROR, "engine", "step failed: %s", err);
  e->step_failed = 1;
  size_t el = strlen(err) < sizeof e->step_err - 1 ? strlen(err) : sizeof e->step_err - 1;
  memcpy(e->step_err, err, el);
  e->step_err[el] = 0;
  for (size_t q = 0; q < e->n_sched; q++)
    end_request(e, e->sched[q], STRATA_FINISH_ERROR, err);
  return T;
}

/* CPU seconds this process has used, all threads. */
static double process_cpu(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* STRATA_STEP_LOG lines. An arrival: its id, time, prompt length, a hash
 * of the prompt (to pair requests of two runs), group key and priority. */
static void step_log_arrival(strata_engine_t *e, const struct strata_engine_req *r) {
  uint64_t h = 0;
  for (int32_t i = 0; i < r->n_prompt; i++) h = mix64(h ^ (uint32_t)r->prompt[i]);
  fprintf(e->step_log,
          "{\"arrive\":%llu,\"t\":%.6f,\"n\":%d,\"hash\":\"%016llx\",\"group\":\"%016llx\","
          "\"priority\":%d}\n",
          (unsigned long long)r->id, r->t_arrival, r->n_prompt, (unsigned long long)h,
          (unsigned long long)r->group, r->priority);
}

/* A step: its start, duration (0: nothing ran), the process CPU seconds it
 * took (cpu / dur well under the backend's threads: other processes took
 * the CPU), shape, the view's budgets and every decision as [id,
 * "run"|"preempt", tokens, cached, inflight]. */
static void step_log_step(strata_engine_t *e, const struct strata_sched_view *v, int nd,
                          double dur, double cpu) {
  fprintf(e->step_log,
          "{\"t\":%.6f,\"dur\":%.9f,\"cpu\":%.6f,\"prefill\":%lld,\"decode\":%lld,"
          "\"pos\":%.0f,\"free\":%d,\"running\":%u,\"waiting\":%u,\"d\":[",
          v->now, dur, cpu, (long long)e->step_P, (long long)e->step_D, e->step_pos,
          v->free_blocks, v->n_running, v->n_waiting);
  for (int d = 0, k = 0; d < nd; d++) {
    const struct strata_sched_decision *dc = &e->dec[d];
    if (dc->index >= v->n_running + v->n_waiting) continue;
    const struct strata_sched_req *q = &v->reqs[dc->index];
    fprintf(e->step_log, "%s[%llu,\"%s\",%d,%d,%d]", k++ ? "," : "", (unsigned long long)q->id,
            dc->action == STRATA_SCHED_PREEMPT ? "preempt" : "run", dc->n_tokens, q->n_cached,
            v->n_inflight ? v->n_inflight[dc->index] : 0);
  }
  fputs("]}\n", e->step_log);
}

/* One engine step. Returns nonzero when anything happened. */
static int engine_step(strata_engine_t *e) {
  int progress = 0;
  /* intake */
  pthread_mutex_lock(&e->mu);
  size_t total = e->n_running + e->n_waiting + e->n_incoming;
  if (ensure_caps(e, total ? total : 1) != 0) {
    pthread_mutex_unlock(&e->mu);
    strata_log(STRATA_LOG_ERROR, "engine", "out of memory");
    return 0;
  }
  for (size_t i = 0; i < e->n_incoming; i++) {
    waiting_insert(e, e->incoming[i]);
    if (e->step_log) step_log_arrival(e, e->incoming[i]);
  }
  progress |= e->n_incoming > 0;
  e->n_incoming = 0;
  pthread_mutex_unlock(&e->mu);

  /* cancellations */
  for (size_t i = 0; i < e->n_running + e->n_waiting; i++) {
    struct strata_engine_req *r =
        i < e->n_running ? e->running[i] : e->waiting[i - e->n_running];
    if (!r->gone && atomic_load(&r->cancel)) {
      end_request(e, r, STRATA_FINISH_ABORT, NULL);
      progress = 1;
    }
  }
  compact(e->running, &e->n_running);
  compact(e->waiting, &e->n_waiting);
  if (e->n_running + e->n_waiting == 0) goto out;

  /* the scheduler's view */
  uint32_t nr = (uint32_t)e->n_running, nw = (uint32_t)e->n_waiting,
           n = nr + nw;
  for (uint32_t i = 0; i < n; i++) {
    struct strata_engine_req *r = i < nr ? e->running[i] : e->waiting[i - nr];
    e->vmap[i] = r;
    r->decided = 0;
    r->scheduled = 0;
    req_view(e, r, &e->vreqs[i]);
  }
  /* shared uncached prefixes: what waiting requests would compute twice */
  int hints = e->cfg.prefix_caching && nw > 0;
  if (hints) inflight_build(e, nr);
  for (uint32_t i = 0; i < n; i++) {
    struct strata_engine_req *r = e->vmap[i];
    e->v_inflight[i] = 0;
    e->v_next[i] = 0;
    if (!hints || i < nr || r->n_ph < 0 || r->ch[0].n_known != r->n_prompt) continue;
    int32_t b = r->view_cached / e->bs;
    if (b < r->n_ph) e->v_next[i] = hkey(r->ph[b]);
    int32_t k = b;
    while (k < r->n_ph && inflight_has(e, r->ph[k])) k++;
    e->v_inflight[i] = (k - b) * e->bs;
  }
  struct strata_kv_stats st;
  strata_kv_get_stats(e->kv, &st);
  struct strata_sched_view view = {.size = sizeof view,
                                   .now = enow(e),
                                   .max_batch_tokens = e->cfg.max_batch_tokens,
                                   .max_running = e->cfg.max_running,
                                   .block_size = e->bs,
                                   .free_blocks = st.n_free + st.n_evictable,
                                   .total_blocks = st.n_blocks,
                                   .reqs = e->vreqs,
                                   .n_running = nr,
                                   .n_waiting = nw,
                                   .blocks_for = view_blocks_for,
                                   .host_ud = e,
                                   .engine = e,
                                   .n_inflight = e->cfg.prefix_caching ? e->v_inflight : NULL,
                                   .next_block = e->cfg.prefix_caching ? e->v_next : NULL};
  char err[512] = "";
  int nd = e->sv->schedule(e->sstate, &view, e->dec, n, err, sizeof err);
  if (nd < 0) {
    strata_log(STRATA_LOG_WARN, "engine", "scheduler '%s' failed: %s",
               e->cfg.scheduler, err[0] ? err : "(no reason given)");
    nd = 0;
  }
  if ((uint32_t)nd > n) nd = (int)n;

  /* apply the decisions, enforcing the core's invariants */
  int32_t budget = e->cfg.max_batch_tokens, n_run = (int32_t)nr;
  uint64_t refusals = 0, preemptions = 0;
  e->n_sched = 0;
  e->n_started = 0;
  for (int d = 0; d < nd; d++) {
    const struct strata_sched_decision *dc = &e->dec[d];
    if (dc->index >= n) {
      refusals++;
      continue;
    }
    struct strata_engine_req *r = e->vmap[dc->index];
    if (r->decided) {
      refusals++;
      continue;
    }
    if (dc->action == STRATA_SCHED_PREEMPT) {
      if (!r->running) {
        refusals++;
        continue;
      }
      r->decided = 1;
      free_seqs(e, r);
      r->running = 0;
      n_run--;
      preemptions++;
      progress = 1;
      continue;
    }
    if (dc->action != STRATA_SCHED_RUN) {
      refusals++;
      continue;
    }
    int refused = 0;
    if (apply_run(e, r, &e->vreqs[dc->index], dc->n_tokens, &budget, &n_run,
                  &refused)) {
      r->decided = 1;
      r->scheduled = 1;
      e->sched[e->n_sched++] = r;
    } else if (refused) {
      refusals++;
    }
  }
  /* new lists: running in start order, waiting in arrival order */
  {
    size_t j = 0;
    for (size_t i = 0; i < e->n_running; i++) {
      struct strata_engine_req *r = e->running[i];
      if (r->running)
        e->running[j++] = r;
      else
        waiting_insert(e, r); /* preempted */
    }
    e->n_running = j;
    size_t w = 0;
    for (size_t i = 0; i < e->n_waiting; i++)
      if (!e->waiting[i]->running) e->waiting[w++] = e->waiting[i];
    e->n_waiting = w;
    for (size_t i = 0; i < e->n_started; i++)
      e->running[e->n_running++] = e->started[i];
  }

  /* the forward pass, sampling, events */
  double t_step = strata_now(), c_step = e->step_log ? process_cpu() : 0;
  e->step_failed = 0;
  int32_t T = run_batch(e);
  t_step = e->simulated ? e->sim_step : strata_now() - t_step;
  if (e->step_log)
    step_log_step(e, &view, nd, T > 0 ? t_step : 0,
                  T > 0 && !e->simulated ? process_cpu() - c_step : 0);
  progress |= T > 0;
  compact(e->running, &e->n_running);
  compact(e->waiting, &e->n_waiting);
  pthread_mutex_lock(&e->mu);
  e->met.steps_total += T > 0;
  if (T > 0) e->met.step_seconds_total += t_step;
  if (e->step_failed) {
    e->met.failed_steps_total++;
    e->met.failing_steps++;
    memcpy(e->met.last_step_error, e->step_err, sizeof e->met.last_step_error);
  } else if (T > 0) {
    e->met.failing_steps = 0;
  }
  e->met.scheduler_refusals_total += refusals;
  e->met.preemptions_total += preemptions;
  pthread_mutex_unlock(&e->mu);
  if (refusals)
    strata_log(STRATA_LOG_DEBUG, "engine", "refused %llu scheduler decisions",
               (unsigned long long)refusals);
out:
  pthread_mutex_lock(&e->mu);
  e->met.num_running = (int32_t)e->n_running;
  e->met.num_waiting = (int32_t)e->n_waiting;
  e->n_queued = (int32_t)e->n_waiting;
  pthread_mutex_unlock(&e->mu);
  return progress;
}

/* Stopping: aborts everything still here (no submit gets in any more). */
static void abort_all(strata_engine_t *e) {
  pthread_mutex_lock(&e->mu);
  size_t n_in = e->n_incoming;
  e->n_incoming = 0;
  pthread_mutex_unlock(&e->mu);
  for (size_t i = 0; i < n_in; i++) {
    end_request(e, e->incoming[i], STRATA_FINISH_ABORT, NULL);
    req_unref(e->incoming[i]);
  }
  for (size_t i = 0; i < e->n_running; i++)
    end_request(e, e->running[i], STRATA_FINISH_ABORT, NULL);
  for (size_t i = 0; i < e->n_waiting; i++)
    end_request(e, e->waiting[i], STRATA_FINISH_ABORT, NULL);
  compact(e->running, &e->n_running);
  compact(e->waiting, &e->n_waiting);
  pthread_mutex_lock(&e->mu);
  e->met.num_running = e->met.num_waiting = 0;
  e->n_queued = 0;
  pthread_mutex_unlock(&e->mu);
}

static void *engine_main(void *arg) {
  strata_engine_t *e = arg;
  pthread_mutex_lock(&e->mu);
  for (;;) {
    while (!e->stopping && e->n_incoming == 0 && e->n_running == 0 &&
           e->n_waiting == 0)
      pthread_cond_wait(&e->cv, &e->mu);
    if (e->stopping) break;
    pthread_mutex_unlock(&e->mu);
    int progress = engine_step(e);
    pthread_mutex_lock(&e->mu);
    if (!progress && !e->stopping && e->n_incoming == 0) {
      /* Nothing could run (blocks or a stuck scheduler): wait for a change
       * instead of spinning. */
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 2000000;
      if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
      }
      pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    }
  }
  pthread_mutex_unlock(&e->mu);
  abort_all(e);
  return NULL;
}

/* ---- start / stop
 * ------------------------------------------------------------------ */

static void engine_free(strata_engine_t *e) {
  if (e->sv && e->sstate) e->sv->destroy(e->sstate);
  strata_lbatch_destroy(e->lb);
  free(e->lrows);
  strata_kv_destroy(e->kv);
  strata_kv_events_destroy(e->kv_log);
  pthread_mutex_destroy(&e->mu);
  pthread_mutex_destroy(&e->cb_mu);
  pthread_cond_destroy(&e->cv);
  free(e->incoming);
  free(e->running);
  free(e->waiting);
  free(e->started);
  free(e->vreqs);
  free(e->v_inflight);
  free(e->v_next);
  free(e->inflight);
  free(e->vmap);
  free(e->dec);
  free(e->sched);
  free(e->b_tok);
  free(e->b_pos);
  free(e->b_slot);
  free(e->b_out);
  free(e->b_start);
  free(e->b_len);
  free(e->b_bt);
  free(e->logits);
  free(e->smp_idx);
  free(e->smp_prob);
  free(e->rowbuf);
  if (e->step_log) fclose(e->step_log);
  free(e);
}

/* What both kinds of engine share: the scheduler, the KV manager, the
 * logits processors (real engines only). m and tok are NULL when simulated. */
static int engine_create(const struct strata_registry *reg, struct strata_config *cfgfile,
                         const struct strata_engine_config *c, struct strata_model *m,
                         const strata_tokenizer_t *tok, int32_t n_vocab, int32_t ctx_len,
                         int32_t bs, int32_t n_blocks, strata_engine_t **out, char *err,
                         size_t errlen) {
  *out = NULL;
  struct strata_plugin *sp = NULL;
  for (size_t i = 0; i < reg->n_plugins; i++)
    if (reg->plugins[i].desc->kind == STRATA_PLUGIN_SCHEDULER &&
        strcmp(reg->plugins[i].desc->name, c->scheduler) == 0)
      sp = &reg->plugins[i];
  if (!sp)
    return strata_errf(err, errlen, "unknown scheduler '%s' (see `strata plugins`)",
                       c->scheduler);
  char ierr[512];
  if (strata_plugin_init(sp, cfgfile, ierr, sizeof ierr) != 0)
    return strata_errf(err, errlen, "%s", ierr);

  strata_engine_t *e = strata_calloc(1, sizeof *e);
  if (!e) return strata_errf(err, errlen, "out of memory");
  e->m = m;
  e->tok = tok;
  e->cfg = *c;
  e->failpoint_step = -1;
  e->failpoint_end = -1;
  const char *sl = getenv("STRATA_STEP_LOG");
  if (sl && *sl) {
    e->step_log = fopen(sl, "w");
    if (!e->step_log) {
      int en = errno;
      free(e);
      return strata_errf(err, errlen, "STRATA_STEP_LOG=%s: %s", sl, strerror(en));
    }
    setvbuf(e->step_log, NULL, _IOLBF, 0); /* whole lines: it can be followed live */
  }
  e->ctx_len = ctx_len;
  e->n_vocab = n_vocab;
  e->bs = bs;
  e->n_blocks = n_blocks;
  e->sv = sp->desc->vt.scheduler;
  pthread_mutex_init(&e->mu, NULL);
  pthread_mutex_init(&e->cb_mu, NULL);
  pthread_cond_init(&e->cv, NULL);
  hist_init(&e->met.ttft, ttft_bounds, (int)STRATA_ARRAY_LEN(ttft_bounds));
  hist_init(&e->met.itl, itl_bounds, (int)STRATA_ARRAY_LEN(itl_bounds));
  hist_init(&e->met.e2e, latency_bounds, (int)STRATA_ARRAY_LEN(latency_bounds));
  hist_init(&e->met.queue, latency_bounds, (int)STRATA_ARRAY_LEN(latency_bounds));

  struct strata_kv_config kc = STRATA_KV_CONFIG_DEFAULTS;
  kc.block_size = e->bs;
  kc.n_blocks = e->n_blocks;
  kc.prefix_caching = c->prefix_caching;
  kc.clock = kv_clock;
  kc.clock_ud = e;
  if (m) {
    e->smp_idx = strata_calloc((size_t)e->n_vocab, sizeof *e->smp_idx);
    e->smp_prob = strata_calloc((size_t)e->n_vocab, sizeof *e->smp_prob);
    if (!e->smp_idx || !e->smp_prob) {
      engine_free(e);
      return strata_errf(err, errlen, "out of memory");
    }
  }
  if (kc.prefix_caching) {
    /* room for a few full turnovers of the pool between two reads */
    e->kv_log = strata_kv_events_create(4 * (size_t)e->n_blocks > 16384 ? 4 * (size_t)e->n_blocks
                                                                        : 16384);
    if (!e->kv_log) {
      engine_free(e);
      return strata_errf(err, errlen, "out of memory");
    }
    kc.on_event = strata_kv_events_append;
    kc.event_ud = e->kv_log;
  }
  char kerr[256];
  if (strata_kv_create(&kc, &e->kv, kerr, sizeof kerr) != 0) {
    engine_free(e);
    return strata_errf(err, errlen, "KV cache: %s", kerr);
  }
  const strata_config_node_t *node = strata_config_plugin_node(cfgfile, sp);
  char cerr[512] = "";
  if (e->sv->create(node, &e->sstate, cerr, sizeof cerr) != 0) {
    e->sstate = NULL;
    engine_free(e);
    return strata_errf(err, errlen, "scheduler '%s': %s", c->scheduler,
                       cerr[0] ? cerr : "create failed");
  }
  if (tok && strata_lbatch_create(reg, cfgfile, c->logits, c->n_logits, c->logits_required, tok,
                                  e->n_vocab, &e->lb, err, errlen) != 0) {
    engine_free(e);
    return -1;
  }
  *out = e;
  return 0;
}

static int check_config(struct strata_engine_config *c, const struct strata_engine_config *cfg,
                        char *err, size_t errlen) {
  if (cfg)
    *c = *cfg;
  else
    strata_engine_config_defaults(c);
  if (!c->scheduler) c->scheduler = "fcfs";
  if (c->max_batch_tokens < 1 || c->max_running < 1 || c->max_waiting < 0)
    return strata_errf(err, errlen,
                       "engine: max_batch_tokens and max_running must be positive and "
                       "max_waiting not negative");
  return 0;
}

int strata_engine_start(struct strata_runtime *rt, const struct strata_engine_config *cfg,
                        strata_engine_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (!rt || !rt->model || !rt->tok) return strata_errf(err, errlen, "engine: no model loaded");
  struct strata_engine_config c;
  if (check_config(&c, cfg, err, errlen) != 0) return -1;
  struct strata_model *m = rt->model;
  int32_t ws = m->opts.max_tokens < m->opts.max_out ? m->opts.max_tokens : m->opts.max_out;
  if (c.max_batch_tokens > ws) {
    strata_log(STRATA_LOG_INFO, "engine",
               "max_batch_tokens %d exceeds the model's workspace; using %d (open the runtime "
               "with strata_engine_model_opts)",
               c.max_batch_tokens, ws);
    c.max_batch_tokens = ws;
  }
  if (c.block_size != m->opts.block_size) c.block_size = m->opts.block_size;
  strata_engine_t *e;
  if (engine_create(&rt->reg, rt->cfg, &c, m, rt->tok, m->hp.n_vocab, m->ctx_len,
                    m->opts.block_size, strata_model_kv_blocks(m), &e, err, errlen) != 0)
    return -1;
  e->rt = rt;
  const char *fp = getenv("STRATA_FAILPOINT");
  if (fp && *fp) {
    char *endp = NULL;
    long long a = -1, b = -1;
    if (strncmp(fp, "step:", 5) == 0) a = strtoll(fp + 5, &endp, 10);
    if (endp && *endp == '-') b = strtoll(endp + 1, &endp, 10);
    if (!endp || *endp || a < 0 || (b >= 0 && b <= a) || (b < 0 && strchr(fp, '-'))) {
      engine_free(e);
      return strata_errf(err, errlen, "STRATA_FAILPOINT='%s': expected step:A or step:A-B (0 <= A < B)",
                         fp);
    }
    if (b < 0)
      strata_log(STRATA_LOG_WARN, "engine", "failpoint: model steps from %lld on fail", a);
    else
      strata_log(STRATA_LOG_WARN, "engine", "failpoint: model steps %lld to %lld fail", a, b - 1);
    e->failpoint_step = a;
    e->failpoint_end = b;
  }
  int rc = pthread_create(&e->th, NULL, engine_main, e);
  if (rc != 0) {
    engine_free(e);
    return strata_errf(err, errlen, "engine thread: %s", strerror(rc));
  }
  strata_log(STRATA_LOG_INFO, "engine",
             "started: scheduler %s, %d KV blocks of %d tokens, %d tokens per step, %d running, "
             "prefix caching %s",
             c.scheduler, e->n_blocks, e->bs, c.max_batch_tokens, c.max_running,
             c.prefix_caching ? "on" : "off");
  *out = e;
  return 0;
}

int strata_engine_start_sim(const struct strata_registry *reg, struct strata_config *cfgfile,
                            const struct strata_engine_config *cfg,
                            const struct strata_engine_sim *sim, strata_engine_t **out, char *err,
                            size_t errlen) {
  *out = NULL;
  struct strata_engine_config c;
  if (check_config(&c, cfg, err, errlen) != 0) return -1;
  if (!sim || sim->n_vocab < 4 || sim->ctx_len < 1 || c.block_size < 1)
    return strata_errf(err, errlen, "simulation: vocabulary, context and block size needed");
  int64_t tokens = c.kv_tokens > 0 ? c.kv_tokens : (int64_t)c.max_running * sim->ctx_len;
  int32_t n_blocks = strata_kv_blocks_for_tokens(tokens, c.block_size);
  strata_engine_t *e;
  if (engine_create(reg, cfgfile, &c, NULL, NULL, sim->n_vocab, sim->ctx_len, c.block_size,
                    n_blocks, &e, err, errlen) != 0)
    return -1;
  e->simulated = 1;
  e->sim = *sim;
  *out = e;
  return 0;
}

int strata_engine_sim_step(strata_engine_t *e) {
  if (!e || !e->simulated) return 0;
  return engine_step(e);
}

double strata_engine_sim_time(const strata_engine_t *e) { return e ? e->sim_now : 0; }

void strata_engine_sim_set_time(strata_engine_t *e, double t) {
  if (e && e->simulated && t > e->sim_now) e->sim_now = t;
}

int strata_engine_sim_idle(strata_engine_t *e) {
  pthread_mutex_lock(&e->mu);
  int idle = e->n_incoming == 0 && e->n_running == 0 && e->n_waiting == 0;
  pthread_mutex_unlock(&e->mu);
  return idle;
}

void strata_engine_stop(strata_engine_t *e) {
  if (!e) return;
  if (e->simulated) {
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_mutex_unlock(&e->mu);
    abort_all(e);
    engine_free(e);
    return;
  }
  pthread_mutex_lock(&e->mu);
  e->stopping = 1;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  pthread_join(e->th, NULL);
  engine_free(e);
}

/* ---- prefix-cache events -------------------------------------------------- */

int32_t strata_engine_block_size(const strata_engine_t *e) { return e->bs; }

struct snap_seq {
  strata_kv_events_t *log;
  uint64_t seq;
};

static void read_seq(void *ud) {
  struct snap_seq *s = ud;
  s->seq = strata_kv_events_next(s->log);
}

int strata_engine_cache_snapshot(strata_engine_t *e, struct strata_kv_hash **hashes, int32_t *n,
                                 uint64_t *seq) {
  *hashes = NULL;
  *n = 0;
  if (!e->kv_log) return -1;
  struct strata_kv_hash *h = malloc((size_t)e->n_blocks * sizeof *h);
  if (!h) return -2;
  struct snap_seq ss = {e->kv_log, 0};
  *n = strata_kv_list_cached(e->kv, h, e->n_blocks, read_seq, &ss);
  *hashes = h;
  *seq = ss.seq;
  return 0;
}

long strata_engine_cache_events(strata_engine_t *e, uint64_t from, struct strata_kv_evrec *out,
                                size_t max) {
  return e->kv_log ? strata_kv_events_read(e->kv_log, from, out, max) : -1;
}
