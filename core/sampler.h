/* Token sampling from one row of logits: greedy, temperature, top-k, top-p,
 * min-p, with a per-request seeded generator (same seed, same text).
 *
 * Order (as vLLM): temperature scales the logits, then top-k, top-p and min-p
 * truncate the distribution, then one token is drawn. temperature == 0 is
 * greedy (argmax; ties go to the lowest id). */
#ifndef STRATA_SAMPLER_H
#define STRATA_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct strata_sampling {
  float temperature; /* 0: greedy */
  int32_t top_k;     /* 0 or <0: off */
  float top_p;       /* 1: off; (0, 1] */
  float min_p;       /* 0: off; [0, 1] */
  uint64_t seed;
};

#define STRATA_SAMPLING_DEFAULTS \
  ((struct strata_sampling){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .seed = 0})

/* Validates ranges; writes "field: reason" on error. */
int strata_sampling_check(const struct strata_sampling *s, char *err, size_t errlen);

struct strata_rng {
  uint64_t s[4];
};
void strata_rng_seed(struct strata_rng *r, uint64_t seed);
uint64_t strata_rng_next(struct strata_rng *r);
/* Uniform in [0, 1). */
double strata_rng_uniform(struct strata_rng *r);

struct strata_sampler {
  struct strata_sampling params;
  struct strata_rng rng;
  /* scratch sized to the vocabulary */
  int32_t n_vocab;
  int32_t *idx;
  float *prob;
};

int strata_sampler_init(struct strata_sampler *s, const struct strata_sampling *params,
                        int32_t n_vocab);
void strata_sampler_free(struct strata_sampler *s);
/* The same without scratch of its own (nothing to free): for many samplers
 * used by one thread, which passes one shared scratch to sample_with. A
 * per-sampler scratch of 8 bytes per vocabulary entry would cost 1.2 MB per
 * choice on a 152k vocabulary. */
void strata_sampler_init_shared(struct strata_sampler *s, const struct strata_sampling *params,
                                int32_t n_vocab);
/* strata_sampler_sample with caller-provided scratch of n_vocab entries
 * each (not used for greedy). */
int32_t strata_sampler_sample_with(struct strata_sampler *s, const float *logits, int32_t *idx,
                                   float *prob);
/* Picks a token from logits[n_vocab] (not modified). */
int32_t strata_sampler_sample(struct strata_sampler *s, const float *logits);
int32_t strata_argmax(const float *logits, int32_t n);

#endif
