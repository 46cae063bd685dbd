/* The engine's side of the logits plugin kind (strata/logits.h): the
 * enabled processors in config order, request compilation, the dense batch
 * slot table with its removed/added/moved bookkeeping, and one apply per
 * processor per step.
 *
 * Every sequence that uses at least one processor holds a slot from the
 * first step it samples until it finishes. The engine calls add() when a
 * sequence first samples, remove() when it finishes, then flush() once per
 * step before apply(): flush assigns slots to the added sequences (filling
 * holes first), compacts the table so slots stay 0..n-1, and hands each
 * processor the part of the update that concerns it.
 *
 * Threads: compile/free_params on any thread; the rest on the engine
 * thread. */
#ifndef STRATA_LOGITS_BATCH_H
#define STRATA_LOGITS_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include <strata/logits.h>

struct strata_registry;
struct strata_config;
typedef struct strata_tokenizer strata_tokenizer_t;

typedef struct strata_lbatch strata_lbatch_t;

/* Creates the processors named in names[0..n) (in that order; a name with
 * no installed plugin is an error if required, else skipped with a
 * warning) plus, for validation only, every other installed logits plugin.
 * n_vocab and tok describe the model. */
int strata_lbatch_create(const struct strata_registry *reg, struct strata_config *cfg,
                         const char *const *names, int32_t n, int required,
                         const strata_tokenizer_t *tok, int32_t n_vocab, strata_lbatch_t **out,
                         char *err, size_t errlen);
void strata_lbatch_destroy(strata_lbatch_t *lb);

/* Number of enabled processors (the length of a params array). */
int32_t strata_lbatch_count(const strata_lbatch_t *lb);

/* See strata_engine_logits_compile. */
int strata_lbatch_compile(strata_lbatch_t *lb, const strata_json_t *body, void ***out,
                          const char **field, char *err, size_t errlen);
void strata_lbatch_free_params(strata_lbatch_t *lb, void **params);
/* Engine thread: the request using params finished; they are released once
 * the next flush has removed its slots (or at destroy). */
void strata_lbatch_retire(strata_lbatch_t *lb, void **params);
/* Bit k set: enabled processor k has parameters in params. */
uint32_t strata_lbatch_mask(const strata_lbatch_t *lb, void *const *params);

/* A sequence joins at the next flush; *slot (stable storage, -1 now) gets
 * its slot and follows its moves. The token arrays follow
 * strata_logits_seq's rules. */
int strata_lbatch_add(strata_lbatch_t *lb, int32_t *slot, void *const *params, uint32_t mask,
                      const int32_t *prompt, int32_t n_prompt, const int32_t *output,
                      const int32_t *n_output);
/* The sequence leaves (a no-op when *slot is -1 and it is not pending);
 * sets *slot to -1. */
void strata_lbatch_remove(strata_lbatch_t *lb, int32_t *slot);
/* Sends the pending changes. Returns a mask of processors whose update
 * failed (0: all fine); their requests must be failed by the caller. */
uint32_t strata_lbatch_flush(strata_lbatch_t *lb, char *err, size_t errlen);

/* One row to process this step. */
struct strata_lbatch_row {
  int32_t slot;
  uint32_t row;
  uint32_t mask;
};
/* Runs every enabled processor over the rows that use it, in order. */
int strata_lbatch_apply(strata_lbatch_t *lb, float *logits, const struct strata_lbatch_row *rows,
                        uint32_t n_rows);

#endif
