/* Request traces for `strata sim` (JSONL, one request per line):
 *
 *   {"t": 0.25, "segments": [{"shared": "system", "tokens": 512},
 *                            {"tokens": 40}],
 *    "output": 64, "group_id": "wf-3", "priority": 0}
 *   {"t": 1.0, "prompt": [1, 307, 42], "output": 16}
 *
 * t: arrival in seconds (non-decreasing is not required; requests are
 * replayed in arrival order). The prompt is token ids, or segments: a
 * `shared` segment of N tokens is the first N tokens of a fixed sequence
 * named by that string (two requests naming the same segment share a
 * prefix as long as the shorter one); an unnamed segment is tokens no
 * other request has. output: tokens to generate (>= 1). group_id and
 * priority as in the HTTP API. Errors name FILE:LINE and the field. */
#ifndef STRATA_SIM_TRACE_H
#define STRATA_SIM_TRACE_H

#include <stddef.h>
#include <stdint.h>

struct strata_sim_req {
  double t;
  int32_t *prompt;
  int32_t n_prompt;
  int32_t output;
  uint64_t group;   /* 0: none */
  char *group_id;   /* the trace's string, NULL: none */
  int32_t priority;
  int line;
};

struct strata_sim_trace {
  struct strata_sim_req *reqs; /* sorted by t, then line */
  size_t n;
};

/* Loads path with token ids in [0, n_vocab) and prompts of at most
 * max_prompt tokens. 0, or -1 with "FILE:LINE: field: problem" in err. */
int strata_sim_trace_load(const char *path, int32_t n_vocab, int32_t max_prompt,
                          struct strata_sim_trace *out, char *err, size_t errlen);
/* The same from a buffer (name is used in messages). */
int strata_sim_trace_parse(const char *text, size_t len, const char *name, int32_t n_vocab,
                           int32_t max_prompt, struct strata_sim_trace *out, char *err,
                           size_t errlen);
void strata_sim_trace_free(struct strata_sim_trace *t);

/* How a trace request is submitted, by strata sim and by the test that
 * compares it with the real engine: greedy, ignore_eos (the trace says how
 * many tokens), its priority and group. Points into q. */
struct strata_request_params;
void strata_sim_request(const struct strata_sim_req *q, struct strata_request_params *out);

/* ---- cost model calibration (strata sim --calibrate) ----
 * A step log (STRATA_STEP_LOG, written by the engine: one JSON object per
 * step with "dur", "prefill", "decode" and "pos", and per arrival with
 * "arrive") gives the cost model's four coefficients by least squares over
 * the steps that ran: dur = step + prefill x P + decode x D + attn x pos.
 * A coefficient the fit makes negative is dropped (0) and the rest fitted
 * again. Parses text (name in messages); 0, or -1 with "NAME:LINE: ..." in
 * err (a malformed line, a field missing or out of range, fewer than 8
 * steps). */
struct strata_sim_fit {
  double step_s, prefill_s_per_token, decode_s_per_seq, attn_s_per_pos;
  size_t n_steps;
  double measured_s, predicted_s; /* sums over the steps */
  double r2;                      /* of the fit over step durations */
};
int strata_sim_calibrate_parse(const char *text, size_t len, const char *name,
                               struct strata_sim_fit *out, char *err, size_t errlen);
int strata_sim_calibrate_load(const char *path, struct strata_sim_fit *out, char *err,
                              size_t errlen);

#endif
