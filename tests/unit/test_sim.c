/* strata sim: the trace parser with hostile input, shared segments, and the
 * simulated engine against the real one on stories260K: the same requests
 * take the same tokens from the prefix cache (per request and in total),
 * and with a cost model calibrated on the real engine the simulated
 * latencies are within a factor of 2 of the measured ones (the fastest of
 * three runs each, since a busy machine only slows the real engine). */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "engine_util.h"
#include "sim_trace.h"
#include "testutil.h"
#include "util.h"

START_TEST(trace_parsing) {
  struct strata_sim_trace tr;
  char err[512];
  const char *ok_text =
      "# comment\n"
      "\n"
      "{\"t\": 2.0, \"segments\": [{\"shared\": \"sys\", \"tokens\": 40}, {\"tokens\": 5}], "
      "\"output\": 3, \"group_id\": \"g\"}\n"
      "{\"t\": 1.0, \"segments\": [{\"shared\": \"sys\", \"tokens\": 20}, {\"tokens\": 5}], "
      "\"output\": 4, \"priority\": -2}\r\n"
      "{\"t\": 1.0, \"prompt\": [5, 6, 7], \"output\": 1}\n";
  ck_assert_int_eq(
      strata_sim_trace_parse(ok_text, strlen(ok_text), "x.jsonl", 512, 500, &tr, err, sizeof err),
      0);
  ck_assert_uint_eq(tr.n, 3);
  /* sorted by arrival, then line */
  ck_assert(tr.reqs[0].t == 1.0 && tr.reqs[0].line == 4);
  ck_assert(tr.reqs[1].t == 1.0 && tr.reqs[1].line == 5);
  ck_assert(tr.reqs[2].t == 2.0 && tr.reqs[2].group != 0);
  ck_assert_int_eq(tr.reqs[0].priority, -2);
  ck_assert_int_eq(tr.reqs[1].n_prompt, 3);
  ck_assert_int_eq(tr.reqs[1].prompt[2], 7);
  /* a shared segment is the same prefix; unnamed ones differ */
  ck_assert_int_eq(tr.reqs[2].n_prompt, 45);
  ck_assert(memcmp(tr.reqs[0].prompt, tr.reqs[2].prompt, 20 * sizeof(int32_t)) == 0);
  ck_assert(memcmp(tr.reqs[0].prompt + 20, tr.reqs[2].prompt + 40, 5 * sizeof(int32_t)) != 0);
  for (int i = 0; i < 45; i++) ck_assert(tr.reqs[2].prompt[i] >= 3 && tr.reqs[2].prompt[i] < 512);
  strata_sim_trace_free(&tr);

  static const struct {
    const char *text, *want;
  } bad[] = {
      {"{\"t\": 0, \"prompt\": [1], \"output\": 1}\nnot json\n", "x.jsonl:2: column"},
      {"[1, 2]\n", "x.jsonl:1: a request must be a JSON object"},
      {"{\"prompt\": [1], \"output\": 1}\n", "x.jsonl:1: t:"},
      {"{\"t\": -1, \"prompt\": [1], \"output\": 1}\n", "t:"},
      {"{\"t\": \"now\", \"prompt\": [1], \"output\": 1}\n", "t:"},
      {"{\"t\": 0, \"prompt\": [1]}\n", "output:"},
      {"{\"t\": 0, \"prompt\": [1], \"output\": 0}\n", "output:"},
      {"{\"t\": 0, \"prompt\": [1], \"output\": 1.5}\n", "output:"},
      {"{\"t\": 0, \"output\": 1}\n", "give either prompt"},
      {"{\"t\": 0, \"prompt\": [1], \"segments\": [{\"tokens\": 1}], \"output\": 1}\n",
       "give either prompt"},
      {"{\"t\": 0, \"prompt\": [], \"output\": 1}\n", "prompt: must be a non-empty"},
      {"{\"t\": 0, \"prompt\": [512], \"output\": 1}\n", "prompt[0]: must be a token id"},
      {"{\"t\": 0, \"prompt\": [-1], \"output\": 1}\n", "prompt[0]"},
      {"{\"t\": 0, \"prompt\": [\"a\"], \"output\": 1}\n", "prompt[0]"},
      {"{\"t\": 0, \"segments\": [], \"output\": 1}\n", "segments: must be"},
      {"{\"t\": 0, \"segments\": [{\"tokens\": 0}], \"output\": 1}\n", "segments[0]"},
      {"{\"t\": 0, \"segments\": [5], \"output\": 1}\n", "segments[0]"},
      {"{\"t\": 0, \"segments\": [{\"tokens\": 3, \"shared\": \"\"}], \"output\": 1}\n",
       "segments[0].shared"},
      {"{\"t\": 0, \"segments\": [{\"tokens\": 400}, {\"tokens\": 200}], \"output\": 1}\n",
       "the prompt has 600 tokens"},
      {"{\"t\": 0, \"segments\": [{\"tokens\": 450}], \"output\": 100}\n", "exceeds the context"},
      {"{\"t\": 0, \"prompt\": [1], \"output\": 1, \"group_id\": 3}\n", "group_id:"},
      {"{\"t\": 0, \"prompt\": [1], \"output\": 1, \"priority\": 1e20}\n", "priority:"},
      {"{\"t\": 0, \"t\": 1, \"prompt\": [1], \"output\": 1}\n", "duplicate"},
      {"# only a comment\n", "no requests"},
      {"", "no requests"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err[0] = 0;
    ck_assert_msg(strata_sim_trace_parse(bad[i].text, strlen(bad[i].text), "x.jsonl", 512, 500, &tr,
                                         err, sizeof err) == -1,
                  "accepted: %s", bad[i].text);
    ck_assert_msg(strstr(err, bad[i].want), "'%s': got '%s'", bad[i].text, err);
    ck_assert_ptr_null(tr.reqs);
  }
  /* random bytes and mutations never crash */
  uint64_t x = 99;
  char buf[256];
  const char *seed = "{\"t\": 0.5, \"segments\": [{\"shared\": \"s\", \"tokens\": 9}], \"output\": 2}\n";
  for (int it = 0; it < 5000; it++) {
    size_t len = strlen(seed);
    memcpy(buf, seed, len);
    for (int k = 0; k < 1 + it % 5; k++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      buf[(x >> 33) % len] = "{}[]\":,0123456789.-e tnulsx\n\x00\xff"[(x >> 13) % 31];
    }
    int rc = strata_sim_trace_parse(buf, len, "m", 512, 500, &tr, err, sizeof err);
    ck_assert(rc == 0 || rc == -1);
    if (rc == 0) strata_sim_trace_free(&tr);
  }
}
END_TEST

/* ---- the simulation against the real engine ---- */

struct rec {
  pthread_mutex_t mu;
  double t_first, t_done;
  int32_t cached, tokens;
  int done;
};

static double clock_of(strata_engine_t *sim) { return sim ? strata_engine_sim_time(sim) : strata_now(); }

static strata_engine_t *sim_eng;

static void rec_event(void *ud, const struct strata_engine_event *ev) {
  struct rec *r = ud;
  pthread_mutex_lock(&r->mu);
  double now = clock_of(sim_eng);
  if (ev->n_tokens && !r->tokens) r->t_first = now;
  r->tokens += ev->n_tokens;
  if (ev->done) {
    r->done = 1;
    r->t_done = now;
    r->cached = ev->cached_tokens;
  }
  pthread_mutex_unlock(&r->mu);
}

/* Requests one after the other on the real engine: each one's e2e. */
static void run_real(const struct strata_sim_trace *tr, struct rec *out) {
  char err[256];
  for (size_t i = 0; i < tr->n; i++) {
    pthread_mutex_init(&out[i].mu, NULL);
    struct strata_request_params p;
    strata_sim_request(&tr->reqs[i], &p);
    strata_engine_req_t *h;
    double t0 = strata_now();
    ck_assert_msg(strata_engine_submit(eng, &p, rec_event, &out[i], &h, err, sizeof err) == 0, "%s",
                  err);
    for (;;) {
      pthread_mutex_lock(&out[i].mu);
      int d = out[i].done;
      pthread_mutex_unlock(&out[i].mu);
      if (d) break;
      struct timespec ts = {0, 200000};
      nanosleep(&ts, NULL);
    }
    out[i].t_first -= t0;
    out[i].t_done -= t0;
    strata_engine_release(h);
  }
}

static void run_sim(const struct strata_sim_trace *tr, const struct strata_engine_sim *sim,
                    struct rec *out) {
  struct strata_engine_config cfg = defaults();
  cfg.n_logits = 0;
  char err[256];
  ck_assert_msg(strata_engine_start_sim(&rt.reg, NULL, &cfg, sim, &sim_eng, err, sizeof err) == 0,
                "%s", err);
  for (size_t i = 0; i < tr->n; i++) {
    pthread_mutex_init(&out[i].mu, NULL);
    struct strata_request_params p;
    strata_sim_request(&tr->reqs[i], &p);
    strata_engine_req_t *h;
    double t0 = strata_engine_sim_time(sim_eng);
    ck_assert_int_eq(strata_engine_submit(sim_eng, &p, rec_event, &out[i], &h, err, sizeof err), 0);
    for (int k = 0; k < 100000 && !out[i].done; k++) strata_engine_sim_step(sim_eng);
    ck_assert(out[i].done);
    out[i].t_first -= t0;
    out[i].t_done -= t0;
    strata_engine_release(h);
  }
  struct strata_engine_metrics m;
  strata_engine_get_metrics(sim_eng, &m);
  ck_assert_int_eq(m.kv.n_used, 0);
  strata_engine_stop(sim_eng);
  sim_eng = NULL;
}

START_TEST(sim_matches_engine) {
  struct strata_engine_config cfg = defaults();
  start_threads = 1; /* no thread barriers for a loaded machine to stretch */
  /* calibration on the real engine: a long prefill, then pure decode */
  static const char *cal =
      "{\"t\": 0, \"segments\": [{\"tokens\": 480}], \"output\": 1}\n"
      "{\"t\": 0, \"segments\": [{\"tokens\": 4}], \"output\": 200}\n";
  /* the trace: turns of two conversations sharing a system prompt, and a
   * document read twice */
  static const char *text =
      "{\"t\": 0, \"segments\": [{\"shared\": \"sys\", \"tokens\": 100}, {\"shared\": \"a1\", \"tokens\": 30}], \"output\": 20}\n"
      "{\"t\": 1, \"segments\": [{\"shared\": \"sys\", \"tokens\": 100}, {\"shared\": \"b1\", \"tokens\": 25}], \"output\": 30}\n"
      "{\"t\": 2, \"segments\": [{\"shared\": \"sys\", \"tokens\": 100}, {\"shared\": \"a1\", \"tokens\": 30}, {\"tokens\": 40}], \"output\": 25}\n"
      "{\"t\": 3, \"segments\": [{\"shared\": \"doc\", \"tokens\": 300}, {\"tokens\": 10}], \"output\": 10}\n"
      "{\"t\": 4, \"segments\": [{\"tokens\": 200}], \"output\": 40}\n"
      "{\"t\": 5, \"segments\": [{\"shared\": \"doc\", \"tokens\": 300}, {\"tokens\": 12}], \"output\": 15}\n"
      "{\"t\": 6, \"segments\": [{\"shared\": \"sys\", \"tokens\": 100}, {\"shared\": \"b1\", \"tokens\": 25}, {\"tokens\": 33}], \"output\": 20}\n";
  struct strata_sim_trace ct, tr;
  char err[512];
  ck_assert_int_eq(strata_sim_trace_parse(cal, strlen(cal), "cal", 512, 511, &ct, err, sizeof err), 0);
  ck_assert_int_eq(strata_sim_trace_parse(text, strlen(text), "t", 512, 511, &tr, err, sizeof err), 0);
  /* Timings on a shared machine only ever get slower than the engine's own
   * speed: three fresh engines, the fastest of each measurement. */
  struct strata_engine_sim sim = {.n_vocab = 512, .ctx_len = 512, .step_s = 0};
  double e_real = INFINITY;
  static struct rec cr[2], real[16], sim_r[16];
  for (int rep = 0; rep < 3; rep++) {
    start(&cfg);
    memset(cr, 0, sizeof cr);
    run_real(&ct, cr);
    double pf = cr[0].t_done / 480.0, dc = (cr[1].t_done - cr[1].t_first) / 199.0;
    if (rep == 0 || pf < sim.prefill_s_per_token) sim.prefill_s_per_token = pf;
    if (rep == 0 || dc < sim.decode_s_per_seq) sim.decode_s_per_seq = dc;
    stop();
    start(&cfg); /* an empty cache for the trace */
    memset(real, 0, sizeof real);
    run_real(&tr, real);
    stop();
    double e = 0;
    for (size_t i = 0; i < tr.n; i++) e += real[i].t_done;
    if (e < e_real) e_real = e;
  }
  fprintf(stderr, "calibrated: %.3f ms per prefill token, %.3f ms per decode step\n",
          sim.prefill_s_per_token * 1e3, sim.decode_s_per_seq * 1e3);
  start(&cfg); /* the simulation gets the registry from a runtime */
  memset(sim_r, 0, sizeof sim_r);
  run_sim(&tr, &sim, sim_r);
  stop();
  double e_sim = 0;
  int32_t c_real = 0, c_sim = 0;
  for (size_t i = 0; i < tr.n; i++) {
    ck_assert_int_eq(real[i].tokens, tr.reqs[i].output);
    ck_assert_int_eq(sim_r[i].tokens, tr.reqs[i].output);
    ck_assert_msg(real[i].cached == sim_r[i].cached, "request %zu: cached %d real, %d simulated", i,
                  real[i].cached, sim_r[i].cached);
    c_real += real[i].cached;
    c_sim += sim_r[i].cached;
    e_sim += sim_r[i].t_done;
  }
  ck_assert_int_gt(c_real, 0);
  ck_assert_int_eq(c_real, c_sim);
  fprintf(stderr, "end-to-end latency, all requests: %.1f ms real (fastest of 3), %.1f ms simulated\n",
          e_real * 1e3, e_sim * 1e3);
  ck_assert_msg(e_sim < 2 * e_real && e_real < 2 * e_sim, "simulated %.4f s vs real %.4f s", e_sim,
                e_real);
  strata_sim_trace_free(&ct);
  strata_sim_trace_free(&tr);
}
END_TEST

int main(void) {
  char *model = test_shared_path("models/stories260K.gguf");
  FILE *f = fopen(model, "rb");
  free(model);
  Suite *s = suite_create("sim");
  TCase *tc = tcase_create("sim");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, trace_parsing);
  if (f) {
    fclose(f);
    tcase_add_test(tc, sim_matches_engine);
  } else {
    fprintf(stderr, "stories260K missing: the engine comparison is skipped\n");
  }
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
