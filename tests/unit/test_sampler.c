/* Sampler: greedy, determinism by seed, and that top-k / top-p / min-p /
 * temperature shape the distribution as documented. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "testutil.h"

#define NV 1000

static float logits[NV];

static void fill(void) {
  /* A smooth, strictly decreasing distribution over token ids 0..NV-1, the
   * ids shuffled so the sampler cannot rely on sorted input. */
  for (int i = 0; i < NV; i++) logits[(i * 7) % NV] = -0.01f * (float)i;
}

/* Draws n samples and returns the counts per id. */
static int *histogram(struct strata_sampling p, int n) {
  struct strata_sampler s;
  ck_assert_int_eq(strata_sampler_init(&s, &p, NV), 0);
  int *h = calloc(NV, sizeof *h);
  for (int i = 0; i < n; i++) h[strata_sampler_sample(&s, logits)]++;
  strata_sampler_free(&s);
  return h;
}

static int n_distinct(const int *h) {
  int d = 0;
  for (int i = 0; i < NV; i++) d += h[i] > 0;
  return d;
}

START_TEST(greedy_is_argmax) {
  fill();
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.temperature = 0;
  int *h = histogram(p, 50);
  ck_assert_int_eq(h[0], 50);
  free(h);
  float tie[4] = {1, 3, 3, 2};
  ck_assert_int_eq(strata_argmax(tie, 4), 1);
}
END_TEST

START_TEST(same_seed_same_tokens) {
  fill();
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.seed = 1234;
  struct strata_sampler a, b, c;
  strata_sampler_init(&a, &p, NV);
  strata_sampler_init(&b, &p, NV);
  p.seed = 1235;
  strata_sampler_init(&c, &p, NV);
  int differ = 0;
  for (int i = 0; i < 200; i++) {
    int32_t x = strata_sampler_sample(&a, logits), y = strata_sampler_sample(&b, logits);
    ck_assert_int_eq(x, y);
    differ |= strata_sampler_sample(&c, logits) != x;
  }
  ck_assert(differ);
  strata_sampler_free(&a);
  strata_sampler_free(&b);
  strata_sampler_free(&c);
}
END_TEST

/* Samplers sharing one scratch (as the engine's choices do) draw exactly
 * what samplers with their own scratch draw, interleaved or not. */
START_TEST(shared_scratch_same_tokens) {
  fill();
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.top_p = 0.9f;
  p.top_k = 40;
  struct strata_sampler own[3], shared[3];
  for (int k = 0; k < 3; k++) {
    p.seed = 77 + (uint64_t)k;
    ck_assert_int_eq(strata_sampler_init(&own[k], &p, NV), 0);
    strata_sampler_init_shared(&shared[k], &p, NV);
  }
  int32_t *idx = malloc(NV * sizeof *idx);
  float *prob = malloc(NV * sizeof *prob);
  for (int i = 0; i < 100; i++)
    for (int k = 0; k < 3; k++)
      ck_assert_int_eq(strata_sampler_sample_with(&shared[k], logits, idx, prob),
                       strata_sampler_sample(&own[k], logits));
  for (int k = 0; k < 3; k++) {
    strata_sampler_free(&own[k]);
    strata_sampler_free(&shared[k]);
  }
  free(idx);
  free(prob);
}
END_TEST

START_TEST(top_k_limits_support) {
  fill();
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.top_k = 5;
  int *h = histogram(p, 5000);
  ck_assert_int_eq(n_distinct(h), 5);
  for (int r = 0; r < 5; r++) ck_assert_int_gt(h[(r * 7) % NV], 0); /* the 5 best ids */
  free(h);
}
END_TEST

START_TEST(top_p_limits_support) {
  /* probabilities 0.5, 0.25, 0.125, ...: top_p 0.7 keeps exactly two */
  for (int i = 0; i < NV; i++) logits[i] = -(float)i * logf(2.0f);
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.top_p = 0.7f;
  int *h = histogram(p, 6000);
  ck_assert_int_eq(n_distinct(h), 2);
  /* renormalized: 2/3 and 1/3 */
  ck_assert(fabs(h[0] / 6000.0 - 2.0 / 3.0) < 0.03);
  free(h);
}
END_TEST

START_TEST(min_p_limits_support) {
  for (int i = 0; i < NV; i++) logits[i] = -(float)i * logf(2.0f);
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.min_p = 0.2f; /* keeps p >= 0.2 * p_max: ids 0, 1, 2 (ratios 1, .5, .25) */
  int *h = histogram(p, 6000);
  ck_assert_int_eq(n_distinct(h), 3);
  free(h);
}
END_TEST

START_TEST(temperature_sharpens_and_flattens) {
  fill();
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.top_k = 50;
  p.temperature = 0.05f;
  int *cold = histogram(p, 4000);
  p.temperature = 5.0f;
  int *hot = histogram(p, 4000);
  ck_assert_int_gt(cold[0], hot[0]);
  ck_assert_int_gt(n_distinct(hot), n_distinct(cold));
  free(cold);
  free(hot);
}
END_TEST

START_TEST(frequencies_follow_softmax) {
  float l[3] = {0.0f, logf(2.0f), logf(7.0f)}; /* probabilities 0.1, 0.2, 0.7 */
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  struct strata_sampler s;
  strata_sampler_init(&s, &p, 3);
  int h[3] = {0};
  for (int i = 0; i < 20000; i++) h[strata_sampler_sample(&s, l)]++;
  strata_sampler_free(&s);
  ck_assert(fabs(h[0] / 20000.0 - 0.1) < 0.015);
  ck_assert(fabs(h[1] / 20000.0 - 0.2) < 0.015);
  ck_assert(fabs(h[2] / 20000.0 - 0.7) < 0.015);
}
END_TEST

START_TEST(invalid_params_named) {
  char err[128];
  struct strata_sampling p = STRATA_SAMPLING_DEFAULTS;
  p.top_p = 0;
  ck_assert_int_ne(strata_sampling_check(&p, err, sizeof err), 0);
  ck_assert_ptr_nonnull(strstr(err, "top_p"));
  p = STRATA_SAMPLING_DEFAULTS;
  p.temperature = -1;
  ck_assert_int_ne(strata_sampling_check(&p, err, sizeof err), 0);
  ck_assert_ptr_nonnull(strstr(err, "temperature"));
  p = STRATA_SAMPLING_DEFAULTS;
  p.min_p = NAN;
  ck_assert_int_ne(strata_sampling_check(&p, err, sizeof err), 0);
  ck_assert_ptr_nonnull(strstr(err, "min_p"));
  p = STRATA_SAMPLING_DEFAULTS;
  ck_assert_int_eq(strata_sampling_check(&p, err, sizeof err), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("sampler");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, greedy_is_argmax);
  tcase_add_test(tc, same_seed_same_tokens);
  tcase_add_test(tc, shared_scratch_same_tokens);
  tcase_add_test(tc, top_k_limits_support);
  tcase_add_test(tc, top_p_limits_support);
  tcase_add_test(tc, min_p_limits_support);
  tcase_add_test(tc, temperature_sharpens_and_flattens);
  tcase_add_test(tc, frequencies_follow_softmax);
  tcase_add_test(tc, invalid_params_named);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
