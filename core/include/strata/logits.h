/* Logits processor plugins (kind STRATA_PLUGIN_LOGITS): change the logits
 * of a batch of sequences before sampling (bad words, logit_bias, penalties,
 * ...). Batch-level, as vLLM V1's LogitsProcessor:
 *
 *  1. compile(): the server hands the request body over; the processor
 *     validates the fields it owns and builds an immutable parameter object
 *     (or says the request does not use it). Runs on the HTTP thread, at any
 *     time, concurrently with update/apply: it may only read state that
 *     create() set up.
 *  2. update(): between steps the engine tells it which batch slots were
 *     removed, which were added (with their parameters and live token
 *     arrays) and which moved, in that order. Slots are dense: after an
 *     update the engine's sequences that use any processor occupy slots
 *     0..n-1. A processor only hears about the sequences whose request it
 *     compiled parameters for.
 *  3. apply(): once per step, with the logits rows being sampled this step
 *     for the slots it tracks, in one call. It changes them in place.
 *
 * Each choice of an n > 1 request is its own sequence (its own slot); the
 * choices share the one parameter object, so per-sequence state (counts,
 * positions) lives in the processor's slot table, never in the parameters.
 *
 * The engine applies the enabled processors in the order of the config's
 * `engine.logits` list, then the sampler (temperature, top-k, top-p, min-p)
 * runs on the result. A processor may set logits to -INFINITY; a row with
 * every entry -INFINITY samples token 0.
 *
 * Threads: create/destroy on the thread that starts/stops the engine;
 * compile/release on any thread; update/apply on the engine thread only. */
#ifndef STRATA_LOGITS_H
#define STRATA_LOGITS_H

#include <stddef.h>
#include <stdint.h>

#include <strata/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What a processor may know about the model (valid until destroy). */
struct strata_logits_model {
  uint32_t size; /* sizeof(struct strata_logits_model) as the host knows it */
  int32_t n_vocab;
  /* Tokenizes UTF-8 text without BOS/EOS and without parsing special
   * tokens (as Hugging Face's encode(text, add_special_tokens=False)).
   * Writes up to cap ids into out and returns the number of tokens (more
   * than cap: only cap were written), or -1 for invalid UTF-8. Thread-safe. */
  int64_t (*tokenize)(const struct strata_logits_model *m, const char *text, size_t len,
                      int32_t *out, size_t cap);
  /* Tokens that end generation unless the request sets ignore_eos (EOS,
   * BOS and control tokens, as the engine's stop rule). */
  const int32_t *end_tokens;
  size_t n_end_tokens;
  void *host_ud; /* for tokenize */
};

/* A sequence that joins the batch. */
struct strata_logits_seq {
  uint32_t slot;
  const void *params; /* from compile(); shared by the request's choices */
  const int32_t *prompt;
  int32_t n_prompt;
  /* Generated tokens: output[0 .. *n_output). Both pointers stay valid and
   * the array only grows until the slot is removed (read at apply time). */
  const int32_t *output;
  const int32_t *n_output;
};

struct strata_logits_move {
  uint32_t from, to; /* the sequence at `from` is now at `to` (was empty) */
};

struct strata_logits_update {
  uint32_t size; /* sizeof(struct strata_logits_update) */
  /* slots whose sequences left the batch (after a failed update this may
   * name a slot the processor was never given: ignore those) */
  const uint32_t *removed;
  uint32_t n_removed;
  const struct strata_logits_seq *added;
  uint32_t n_added;
  const struct strata_logits_move *moved;
  uint32_t n_moved;
};

/* One logits row to process: logits + row * n_vocab belongs to slot. */
struct strata_logits_row {
  uint32_t slot;
  uint32_t row;
};

struct strata_logits_vtable {
  uint32_t size; /* sizeof(struct strata_logits_vtable) */
  /* The request fields this processor owns, NULL-terminated. A request
   * that sets one of them (to anything but null) while the processor is
   * not enabled in engine.logits gets HTTP 400 saying so, unless compile()
   * says the value is neutral. */
  const char *const *fields;
  int (*create)(const strata_config_node_t *cfg, const struct strata_logits_model *model,
                void **state, char *err, size_t errlen);
  void (*destroy)(void *state);
  /* Reads the request body (a JSON object). Returns 1 with *params set when
   * the request uses this processor, 0 when it does not (fields absent,
   * null or neutral), or -1 after writing a message into err and pointing
   * *field at the offending entry of `fields` (the server's 400 names it).
   * Any thread; must not modify state. */
  int (*compile)(void *state, const strata_json_t *body, void **params, const char **field,
                 char *err, size_t errlen);
  /* Frees what compile() returned (after every slot using it is removed). */
  void (*release)(void *state, void *params);
  /* Batch changes since the last call: removed, then added, then moved.
   * 0, or -1 after writing err (out of memory): the engine then fails the
   * added sequences' requests rather than sampling them unprocessed. */
  int (*update)(void *state, const struct strata_logits_update *u, char *err, size_t errlen);
  /* Changes rows[i].row of logits (n_vocab floats each) for the sequence
   * at rows[i].slot. Only slots this processor tracks appear. */
  void (*apply)(void *state, float *logits, const struct strata_logits_row *rows,
                uint32_t n_rows);
};

#ifdef __cplusplus
}
#endif

#endif
