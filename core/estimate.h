/* Memory estimation before loading (the problem of vLLM issue #16118): the
 * bytes a model will take for the configured context length and KV cache,
 * computed from the GGUF header alone, checked against a limit, with one
 * message that says what to change when it does not fit. */
#ifndef STRATA_ESTIMATE_H
#define STRATA_ESTIMATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

struct strata_registry;

struct strata_mem_estimate {
  struct strata_model_plan plan;
  uint64_t weights;   /* in their final types (after requantization) */
  uint64_t kv_cache;  /* every layer's K and V for all blocks */
  uint64_t workspace; /* activations for a step of max_tokens */
  uint64_t scratch;   /* the backend's per-op scratch (see estimate.c) */
  uint64_t overhead;  /* the process itself: code, libraries, plugins */
  uint64_t total;
  uint64_t available; /* the limit checked against; 0: unknown */
  const char *available_from; /* "engine.memory_limit", "the backend's free memory" */
  /* the largest context length for which one full-length request fits
   * next to the weights (a multiple of the block size, at most the
   * model's); 0: not even the weights fit */
  int32_t max_context;
  /* full-length requests the KV cache holds at once */
  int64_t full_requests;
};

/* Plans the model with these options (strata_model_plan) and adds the
 * scratch and process overhead. available: the limit (0: none). 0, or -1
 * with err (an unreadable or unsupported model). */
int strata_estimate(const char *model_path, const struct strata_model_opts *mo,
                    const struct strata_registry *reg, uint64_t available,
                    const char *available_from, struct strata_mem_estimate *out, char *err,
                    size_t errlen);

/* 1 when the total fits the limit (or there is none). */
int strata_estimate_fits(const struct strata_mem_estimate *e);

/* The one-paragraph refusal: every part's bytes, the limit, the largest
 * context length that fits and which setting to change. */
void strata_estimate_refusal(const struct strata_mem_estimate *e, char *buf, size_t cap);

/* The breakdown as `strata estimate` prints it. */
void strata_estimate_print(FILE *f, const struct strata_mem_estimate *e);

/* Bytes as "1.23 GiB" / "456.0 MiB" into buf. */
const char *strata_fmt_bytes(uint64_t b, char *buf, size_t cap);

#endif
