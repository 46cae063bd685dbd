/* The serving engine driven from a test: start/stop over stories260K, an
 * event collector per request, greedy parameters, and the leak check. Used
 * by test_engine.c and test_logits.c. */
#ifndef STRATA_TEST_ENGINE_UTIL_H
#define STRATA_TEST_ENGINE_UTIL_H

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "runtime.h"
#include "testutil.h"

/* ---- engine setup
 * ------------------------------------------------------------------ */

static struct strata_runtime rt;
static strata_engine_t *eng;
static int start_threads = 2; /* backend threads of start() */

static inline void start(const struct strata_engine_config *c) {
  char *model = test_shared_path("models/stories260K.gguf");
  struct strata_runtime_opts o = {
      .model_path = model, .backend = "cpu", .threads = start_threads};
  char err[512];
  ck_assert_msg(
      strata_engine_model_opts(c, model, 0, &o.model, err, sizeof err) == 0,
      "%s", err);
  ck_assert_int_eq(strata_runtime_open(&rt, &o), 0);
  ck_assert_msg(strata_engine_start(&rt, c, &eng, err, sizeof err) == 0, "%s",
                err);
  free(model);
}

static inline void stop(void) {
  strata_engine_stop(eng);
  eng = NULL;
  strata_runtime_close(&rt);
}

static inline struct strata_engine_config defaults(void) {
  struct strata_engine_config c;
  strata_engine_config_from(NULL, &c);
  return c;
}

/* ---- collecting events
 * --------------------------------------------------------------- */

#define MAXC 4
struct coll {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int32_t toks[MAXC][1024];
  int n_toks[MAXC];
  char text[MAXC][16384];
  size_t n_text[MAXC];
  enum strata_finish fin[MAXC];
  int done, after_done;
  int32_t prompt_tokens, completion_tokens, cached_tokens;
  strata_engine_req_t *req;
  int cancel_after; /* cancel from the callback once choice 0 has this many */
};

static inline void coll_init(struct coll *c) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
}

static inline void on_event(void *ud, const struct strata_engine_event *ev) {
  struct coll *c = ud;
  pthread_mutex_lock(&c->mu);
  if (c->done) c->after_done++;
  int i = ev->index;
  if (i >= 0 && i < MAXC) {
    for (int32_t t = 0; t < ev->n_tokens && c->n_toks[i] < 1024; t++)
      c->toks[i][c->n_toks[i]++] = ev->tokens[t];
    if (c->n_text[i] + ev->text_len < sizeof c->text[i]) {
      memcpy(c->text[i] + c->n_text[i], ev->text, ev->text_len);
      c->n_text[i] += ev->text_len;
      c->text[i][c->n_text[i]] = 0;
    }
    if (ev->finish != STRATA_FINISH_NONE) c->fin[i] = ev->finish;
  }
  if (ev->done) {
    c->done = 1;
    c->prompt_tokens = ev->prompt_tokens;
    c->completion_tokens = ev->completion_tokens;
    c->cached_tokens = ev->cached_tokens;
    pthread_cond_broadcast(&c->cv);
  }
  if (c->cancel_after && c->req && c->n_toks[0] >= c->cancel_after)
    strata_engine_cancel(c->req);
  pthread_mutex_unlock(&c->mu);
}

static inline void wait_done(struct coll *c) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 100;
  pthread_mutex_lock(&c->mu);
  while (!c->done)
    ck_assert_msg(pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0,
                  "request timed out");
  pthread_mutex_unlock(&c->mu);
}

static inline struct strata_request_params
greedy_params(const int32_t *prompt, int n_prompt, int max_tokens) {
  struct strata_request_params p = {.prompt = prompt,
                                    .n_prompt = n_prompt,
                                    .max_tokens = max_tokens,
                                    .n = 1,
                                    .sampling = STRATA_SAMPLING_DEFAULTS,
                                    .has_seed = 1};
  p.sampling.temperature = 0;
  return p;
}

static inline void submit(const struct strata_request_params *p, struct coll *c) {
  char err[512];
  strata_engine_req_t *r;
  int rc = strata_engine_submit(eng, p, on_event, c, &r, err, sizeof err);
  ck_assert_msg(rc == 0, "submit: %d %s", rc, err);
  pthread_mutex_lock(&c->mu);
  c->req = r;
  pthread_mutex_unlock(&c->mu);
}

static inline void finish(struct coll *c) {
  wait_done(c);
  strata_engine_release(c->req);
  c->req = NULL;
  ck_assert_int_eq(c->after_done, 0);
}

/* Every block back once nothing runs. */
static inline void check_no_leak(void) {
  struct strata_engine_metrics m;
  for (int i = 0; i < 2000; i++) {
    strata_engine_get_metrics(eng, &m);
    if (m.num_running == 0 && m.num_waiting == 0 && m.kv.n_used == 0) break;
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  ck_assert_int_eq(m.num_running, 0);
  ck_assert_int_eq(m.num_waiting, 0);
  ck_assert_int_eq(m.kv.n_used, 0);
}

#endif
