#include "config.h"

#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int strata_sampling_check(const struct strata_sampling *s, char *err, size_t errlen) {
  if (!(s->temperature >= 0.0f) || s->temperature > 100.0f)
    return strata_errf(err, errlen, "temperature: must be in [0, 100], got %g", s->temperature);
  if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
    return strata_errf(err, errlen, "top_p: must be in (0, 1], got %g", s->top_p);
  if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
    return strata_errf(err, errlen, "min_p: must be in [0, 1], got %g", s->min_p);
  if (s->top_k < -1)
    return strata_errf(err, errlen, "top_k: must be -1, 0 (off) or positive, got %d", s->top_k);
  return 0;
}

/* xoshiro256** seeded through splitmix64: small, fast and reproducible
 * across platforms (rand() is neither). */
static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void strata_rng_seed(struct strata_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t strata_rng_next(struct strata_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double strata_rng_uniform(struct strata_rng *r) { return (double)(strata_rng_next(r) >> 11) * 0x1.0p-53; }

void strata_sampler_init_shared(struct strata_sampler *s, const struct strata_sampling *params,
                                int32_t n_vocab) {
  memset(s, 0, sizeof *s);
  s->params = *params;
  s->n_vocab = n_vocab;
  strata_rng_seed(&s->rng, params->seed);
}

int strata_sampler_init(struct strata_sampler *s, const struct strata_sampling *params, int32_t n_vocab) {
  strata_sampler_init_shared(s, params, n_vocab);
  s->idx = strata_calloc((size_t)n_vocab, sizeof *s->idx);
  s->prob = strata_calloc((size_t)n_vocab, sizeof *s->prob);
  if (!s->idx || !s->prob) {
    strata_sampler_free(s);
    return -1;
  }
  return 0;
}

void strata_sampler_free(struct strata_sampler *s) {
  free(s->idx);
  free(s->prob);
  s->idx = NULL;
  s->prob = NULL;
}

int32_t strata_argmax(const float *logits, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (logits[i] > logits[best]) best = i;
  return best;
}

static const float *g_sort_keys;
static int by_desc(const void *a, const void *b) {
  float x = g_sort_keys[*(const int32_t *)a], y = g_sort_keys[*(const int32_t *)b];
  if (x > y) return -1;
  if (x < y) return 1;
  return *(const int32_t *)a < *(const int32_t *)b ? -1 : 1;
}

/* Moves the k largest (by key) indices to the front, in descending order. */
static void top_k_sort(int32_t *idx, int32_t n, int32_t k, const float *keys) {
  /* Quickselect-style partial partition keeps this O(n) for small k on a
   * 150k vocabulary; the selected prefix is then sorted. */
  int32_t lo = 0, hi = n - 1;
  while (k < n && lo < hi) {
    float pivot = keys[idx[(lo + hi) / 2]];
    int32_t i = lo, j = hi;
    while (i <= j) {
      while (keys[idx[i]] > pivot) i++;
      while (keys[idx[j]] < pivot) j--;
      if (i <= j) {
        int32_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
        i++;
        j--;
      }
    }
    if (k - 1 <= j) hi = j;
    else if (k - 1 >= i) lo = i;
    else break;
  }
  g_sort_keys = keys; /* the sampler is used by one thread at a time */
  qsort(idx, (size_t)k, sizeof *idx, by_desc);
}

int32_t strata_sampler_sample(struct strata_sampler *s, const float *logits) {
  return strata_sampler_sample_with(s, logits, s->idx, s->prob);
}

int32_t strata_sampler_sample_with(struct strata_sampler *s, const float *logits, int32_t *idx,
                                   float *prob) {
  const struct strata_sampling *p = &s->params;
  int32_t n = s->n_vocab;
  if (p->temperature == 0.0f) return strata_argmax(logits, n);
  int32_t k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
  for (int32_t i = 0; i < n; i++) idx[i] = i;
  top_k_sort(idx, n, k, logits);
  /* softmax over the k candidates at this temperature */
  float mx = logits[idx[0]];
  /* every candidate forbidden (logits processors set -inf): no
   * distribution to draw from; answer as greedy does */
  if (!(mx > -INFINITY)) return strata_argmax(logits, n);
  double sum = 0;
  for (int32_t i = 0; i < k; i++) {
    float e = expf((logits[idx[i]] - mx) / p->temperature);
    prob[i] = e;
    sum += e;
  }
  int32_t keep = k;
  if (p->top_p < 1.0f) {
    double c = 0;
    for (int32_t i = 0; i < k; i++) {
      c += prob[i] / sum;
      if (c >= p->top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p->min_p > 0.0f) {
    float floor_p = p->min_p * prob[0];
    int32_t j = 1;
    while (j < keep && prob[j] >= floor_p) j++;
    keep = j;
  }
  double total = 0;
  for (int32_t i = 0; i < keep; i++) total += prob[i];
  double r = strata_rng_uniform(&s->rng) * total, c = 0;
  for (int32_t i = 0; i < keep; i++) {
    c += prob[i];
    if (r < c) return idx[i];
  }
  return idx[keep - 1];
}
