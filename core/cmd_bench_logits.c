/* strata bench --logits: what logits processors cost the serving engine.
 *
 * Runs the real engine twice over B concurrent requests (random prompts,
 * ignore_eos, so every request decodes exactly --gen-tokens tokens): first
 * without processors, then with each request carrying 10 bad words and the
 * three penalties. Over the steps where every request is decoding it prints
 * the mean step time of both runs and, for the second, the share of the
 * step spent in the processors (the engine times update + apply itself:
 * strata:logits_processing_seconds_total). */
#include "config.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "engine.h"
#include "runtime.h"
#include "util.h"

struct bl_req {
  atomic_int got, done;
};

static void bl_cb(void *ud, const struct strata_engine_event *ev) {
  struct bl_req *r = ud;
  if (ev->n_tokens > 0) atomic_store(&r->got, 1);
  if (ev->done) atomic_store(&r->done, 1);
}

static void nap(void) {
  struct timespec ts = {0, 1000000};
  nanosleep(&ts, NULL);
}

struct bl_phase {
  double step_s, logits_s;
  uint64_t steps;
};

/* One run of n requests; fills the decode-phase numbers. */
static int bl_run(strata_engine_t *e, int n, const int32_t *prompts, int n_prompt, int n_gen,
                  const char *body, struct bl_phase *out) {
  struct bl_req *rs = calloc((size_t)n, sizeof *rs);
  strata_engine_req_t **hs = calloc((size_t)n, sizeof *hs);
  json_t *jb = body ? json_loads(body, 0, NULL) : NULL;
  int rc = -1;
  if (!rs || !hs || (body && !jb)) goto out;
  char err[512];
  for (int i = 0; i < n; i++) {
    struct strata_request_params p = {.prompt = prompts + (size_t)i * n_prompt,
                                      .n_prompt = n_prompt,
                                      .max_tokens = n_gen,
                                      .n = 1,
                                      .sampling = STRATA_SAMPLING_DEFAULTS,
                                      .has_seed = 1,
                                      .ignore_eos = 1};
    p.sampling.temperature = 0;
    const char *field;
    if (jb && strata_engine_logits_compile(e, (const strata_json_t *)jb, &p.logits, &field, err,
                                           sizeof err) != 0) {
      fprintf(stderr, "strata: bench: %s: %s\n", field ? field : "?", err);
      goto out;
    }
    if (strata_engine_submit(e, &p, bl_cb, &rs[i], &hs[i], err, sizeof err) != 0) {
      fprintf(stderr, "strata: bench: submit: %s\n", err);
      goto out;
    }
  }
  /* the decode phase starts once every request has its first token */
  for (int i = 0; i < n; i++)
    while (!atomic_load(&rs[i].got)) nap();
  struct strata_engine_metrics m0, m1;
  strata_engine_get_metrics(e, &m0);
  for (int i = 0; i < n; i++)
    while (!atomic_load(&rs[i].done)) nap();
  strata_engine_get_metrics(e, &m1);
  out->step_s = m1.step_seconds_total - m0.step_seconds_total;
  out->logits_s = m1.logits_seconds_total - m0.logits_seconds_total;
  out->steps = m1.steps_total - m0.steps_total;
  rc = 0;
out:
  for (int i = 0; hs && i < n; i++)
    if (hs[i]) strata_engine_release(hs[i]);
  json_decref(jb);
  free(rs);
  free(hs);
  return rc;
}

static double median3(const double *v) {
  double lo = v[0] < v[1] ? v[0] : v[1], hi = v[0] < v[1] ? v[1] : v[0];
  return v[2] < lo ? lo : v[2] > hi ? hi : v[2];
}

int strata_bench_logits(struct strata_runtime_opts *ro, int n_req, int n_prompt, int n_gen) {
  struct strata_engine_config ec;
  strata_engine_config_defaults(&ec);
  ec.max_running = n_req;
  ec.max_batch_tokens = n_req * n_prompt < 2048 ? 2048 : n_req * n_prompt;
  if (ec.max_batch_tokens > 8192) ec.max_batch_tokens = 8192;
  ec.kv_tokens = (int64_t)n_req * (n_prompt + n_gen + 16);
  char err[512];
  if (strata_engine_model_opts(&ec, ro->model_path, 0, &ro->model, err, sizeof err) != 0) {
    fprintf(stderr, "strata: bench: %s\n", err);
    return 1;
  }
  struct strata_runtime rt;
  int rc = strata_runtime_open(&rt, ro);
  if (rc != 0) return rc;
  strata_engine_t *e = NULL;
  int32_t *prompts = NULL;
  rc = 1;
  if (strata_engine_start(&rt, &ec, &e, err, sizeof err) != 0) {
    fprintf(stderr, "strata: bench: %s\n", err);
    goto done;
  }
  int32_t V = rt.model->hp.n_vocab;
  prompts = malloc(sizeof *prompts * (size_t)n_req * (size_t)n_prompt);
  if (!prompts) goto done;
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < (size_t)n_req * (size_t)n_prompt; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    prompts[i] = 3 + (int32_t)((s >> 33) % (uint64_t)(V - 3));
  }
  static const char *body =
      "{\"bad_words\": [\"elephant\", \"purple\", \"dragon\", \"castle\", \"wizard\", "
      "\"thunder\", \"mountain\", \"river\", \"forest\", \"ocean\"], "
      "\"repetition_penalty\": 1.1, \"frequency_penalty\": 0.5, \"presence_penalty\": 0.5}";
  printf("model: %s, vocab %d; %d requests, prompt %d, %d generated tokens each\n", rt.model_path,
         V, n_req, n_prompt, n_gen);
  /* warm-up: faults the mmapped weights in and fills the prefix cache, so
   * every measured run starts alike; then plain and processed runs
   * alternate, and the medians are compared */
  enum { ROUNDS = 3 };
  struct bl_phase warm, plain[ROUNDS], proc[ROUNDS];
  if (bl_run(e, n_req, prompts, n_prompt, 2, NULL, &warm) != 0) goto done;
  for (int k = 0; k < ROUNDS; k++)
    if (bl_run(e, n_req, prompts, n_prompt, n_gen, NULL, &plain[k]) != 0 ||
        bl_run(e, n_req, prompts, n_prompt, n_gen, body, &proc[k]) != 0)
      goto done;
  double tp[ROUNDS], tq[ROUNDS], share[ROUNDS];
  for (int k = 0; k < ROUNDS; k++) {
    if (!plain[k].steps || !proc[k].steps) {
      fprintf(stderr, "strata: bench: no decode steps measured (raise --gen-tokens)\n");
      goto done;
    }
    tp[k] = plain[k].step_s / (double)plain[k].steps;
    tq[k] = proc[k].step_s / (double)proc[k].steps;
    share[k] = proc[k].logits_s / proc[k].step_s;
    printf("round %d: decode step %.2f ms plain, %.2f ms with processors (%.3f ms of it in them)\n",
           k + 1, 1e3 * tp[k], 1e3 * tq[k], 1e3 * proc[k].logits_s / (double)proc[k].steps);
  }
  double t0 = median3(tp), t1 = median3(tq);
  printf("logits processing (10 bad words + 3 penalties per request): %.3f%% of the decode step "
         "time, measured inside the step (median of %d)\n",
         100.0 * median3(share), ROUNDS);
  printf("median decode step: %.2f ms plain, %.2f ms with processors: ratio %.3f\n", 1e3 * t0,
         1e3 * t1, t1 / t0);
  rc = 0;
done:
  if (e) strata_engine_stop(e);
  free(prompts);
  strata_runtime_close(&rt);
  return rc;
}
