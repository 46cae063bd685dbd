/* Trace files for strata sim: see sim_trace.h. JSON through jansson. */
#include "config.h"

#include "sim_trace.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "engine.h"
#include "util.h"

#define MAX_LINES 1000000

void strata_sim_request(const struct strata_sim_req *q, struct strata_request_params *out) {
  *out = (struct strata_request_params){.prompt = q->prompt,
                                        .n_prompt = q->n_prompt,
                                        .max_tokens = q->output,
                                        .n = 1,
                                        .sampling = STRATA_SAMPLING_DEFAULTS,
                                        .has_seed = 1,
                                        .ignore_eos = 1,
                                        .priority = q->priority,
                                        .group = q->group};
  out->sampling.temperature = 0;
}

void strata_sim_trace_free(struct strata_sim_trace *t) {
  for (size_t i = 0; t->reqs && i < t->n; i++) {
    free(t->reqs[i].prompt);
    free(t->reqs[i].group_id);
  }
  free(t->reqs);
  memset(t, 0, sizeof *t);
}

/* Token i of the sequence named seed: a fixed pseudo-random id. */
static int32_t seg_token(uint64_t seed, int64_t i, int32_t n_vocab) {
  uint64_t z = seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  /* ids 0..2 are BOS/EOS/UNK in most vocabularies: keep clear of them */
  return 3 + (int32_t)(z % (uint64_t)(n_vocab - 3));
}

static int cmp_req(const void *a, const void *b) {
  const struct strata_sim_req *x = a, *y = b;
  if (x->t != y->t) return x->t < y->t ? -1 : 1;
  return (x->line > y->line) - (x->line < y->line);
}

/* One line's request. 0, or -1 with err. */
static int parse_line(json_t *o, const char *name, int line, int32_t n_vocab, int32_t max_prompt,
                      struct strata_sim_req *r, char *err, size_t errlen) {
  memset(r, 0, sizeof *r);
  r->line = line;
#define BAD(...)                                                                           \
  do {                                                                                     \
    char m_[256];                                                                          \
    snprintf(m_, sizeof m_, __VA_ARGS__);                                                  \
    strata_errf(err, errlen, "%s:%d: %s", name, line, m_);                                 \
    return -1;                                                                             \
  } while (0)
  if (!json_is_object(o)) BAD("a request must be a JSON object");
  json_t *t = json_object_get(o, "t");
  if (!json_is_number(t) || !isfinite(json_number_value(t)) || json_number_value(t) < 0 ||
      json_number_value(t) > 1e9)
    BAD("t: the arrival time must be a number of seconds in [0, 1e9]");
  r->t = json_number_value(t);
  json_t *out = json_object_get(o, "output");
  if (!json_is_integer(out) || json_integer_value(out) < 1 ||
      json_integer_value(out) > 16777216)
    BAD("output: the tokens to generate must be an integer in [1, 16777216]");
  r->output = (int32_t)json_integer_value(out);
  json_t *pr = json_object_get(o, "priority");
  if (pr && !json_is_null(pr)) {
    if (!json_is_integer(pr) || json_integer_value(pr) < INT32_MIN ||
        json_integer_value(pr) > INT32_MAX)
      BAD("priority: must be a 32-bit integer");
    r->priority = (int32_t)json_integer_value(pr);
  }
  json_t *g = json_object_get(o, "group_id");
  if (g && !json_is_null(g)) {
    if (!json_is_string(g) || json_string_length(g) == 0 || json_string_length(g) > 256)
      BAD("group_id: must be a non-empty string of at most 256 bytes");
    r->group = XXH3_64bits(json_string_value(g), json_string_length(g)) | 1;
    if (!(r->group_id = strata_strdup(json_string_value(g)))) BAD("out of memory");
  }
  json_t *p = json_object_get(o, "prompt"), *segs = json_object_get(o, "segments");
  if ((p != NULL) == (segs != NULL)) BAD("give either prompt (token ids) or segments");
  int64_t n = 0;
  if (p) {
    if (!json_is_array(p) || json_array_size(p) == 0)
      BAD("prompt: must be a non-empty array of token ids");
    n = (int64_t)json_array_size(p);
  } else {
    if (!json_is_array(segs) || json_array_size(segs) == 0)
      BAD("segments: must be a non-empty array");
    for (size_t i = 0; i < json_array_size(segs); i++) {
      json_t *s = json_array_get(segs, i), *k = json_object_get(s, "tokens");
      json_t *sh = json_object_get(s, "shared");
      if (!json_is_object(s) || !json_is_integer(k) || json_integer_value(k) < 1 ||
          json_integer_value(k) > 16777216)
        BAD("segments[%zu]: must be an object with tokens (an integer in [1, 16777216])", i);
      if (sh && (!json_is_string(sh) || json_string_length(sh) == 0))
        BAD("segments[%zu].shared: must be a non-empty string", i);
      n += json_integer_value(k);
    }
  }
  if (n > max_prompt)
    BAD("the prompt has %lld tokens; at most %d fit the context with room to generate",
        (long long)n, max_prompt);
  r->prompt = malloc(sizeof *r->prompt * (size_t)n);
  if (!r->prompt) BAD("out of memory");
  r->n_prompt = (int32_t)n;
  if (p) {
    for (size_t i = 0; i < (size_t)n; i++) {
      json_t *v = json_array_get(p, i);
      if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= n_vocab) {
        free(r->prompt);
        r->prompt = NULL;
        BAD("prompt[%zu]: must be a token id in [0, %d)", i, n_vocab);
      }
      r->prompt[i] = (int32_t)json_integer_value(v);
    }
  } else {
    int64_t at = 0;
    for (size_t i = 0; i < json_array_size(segs); i++) {
      json_t *s = json_array_get(segs, i), *sh = json_object_get(s, "shared");
      int64_t k = json_integer_value(json_object_get(s, "tokens"));
      /* a shared segment is named; an unnamed one is unique to this line */
      uint64_t seed = sh ? XXH3_64bits(json_string_value(sh), json_string_length(sh))
                         : ((uint64_t)line << 20) ^ (uint64_t)i ^ 0x5bd1e995ull;
      for (int64_t j = 0; j < k; j++) r->prompt[at++] = seg_token(seed, j, n_vocab);
    }
  }
  if (r->n_prompt + (int64_t)r->output > (int64_t)max_prompt + 1) {
    free(r->prompt);
    r->prompt = NULL;
    BAD("the prompt (%d tokens) plus output (%d) exceeds the context", r->n_prompt, r->output);
  }
#undef BAD
  return 0;
}

/* The next line of text from *pos that is not blank or a '#' comment,
 * trimmed: [*a, *b). 0 at the end; *line counts every line. */
static int next_line(const char *text, size_t len, size_t *pos, int *line, size_t *a,
                     size_t *b) {
  while (*pos < len) {
    size_t end = *pos;
    while (end < len && text[end] != '\n') end++;
    ++*line;
    *a = *pos;
    *b = end;
    *pos = end + 1;
    while (*a < *b && (text[*a] == ' ' || text[*a] == '\t' || text[*a] == '\r')) ++*a;
    while (*b > *a && (text[*b - 1] == ' ' || text[*b - 1] == '\t' || text[*b - 1] == '\r'))
      --*b;
    if (*a < *b && text[*a] != '#') return 1;
  }
  return 0;
}

int strata_sim_trace_parse(const char *text, size_t len, const char *name, int32_t n_vocab,
                           int32_t max_prompt, struct strata_sim_trace *out, char *err,
                           size_t errlen) {
  memset(out, 0, sizeof *out);
  if (n_vocab < 4) return strata_errf(err, errlen, "%s: the vocabulary is too small", name);
  size_t cap = 0, pos = 0, a, b;
  int line = 0;
  while (next_line(text, len, &pos, &line, &a, &b)) {
    if (out->n >= MAX_LINES) {
      strata_sim_trace_free(out);
      return strata_errf(err, errlen, "%s:%d: more than %d requests", name, line, MAX_LINES);
    }
    json_error_t je;
    json_t *o = json_loadb(text + a, b - a, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
      strata_sim_trace_free(out);
      return strata_errf(err, errlen, "%s:%d: column %d: %s", name, line, je.column, je.text);
    }
    if (out->n == cap) {
      size_t c = cap ? cap * 2 : 64;
      struct strata_sim_req *nr = strata_reallocarray(out->reqs, c, sizeof *nr);
      if (!nr) {
        json_decref(o);
        strata_sim_trace_free(out);
        return strata_errf(err, errlen, "%s: out of memory", name);
      }
      out->reqs = nr;
      cap = c;
    }
    int rc = parse_line(o, name, line, n_vocab, max_prompt, &out->reqs[out->n], err, errlen);
    json_decref(o);
    if (rc != 0) {
      free(out->reqs[out->n].prompt);
      free(out->reqs[out->n].group_id);
      strata_sim_trace_free(out);
      return -1;
    }
    out->n++;
  }
  if (out->n == 0) return strata_errf(err, errlen, "%s: no requests", name);
  qsort(out->reqs, out->n, sizeof *out->reqs, cmp_req);
  return 0;
}

int strata_sim_trace_load(const char *path, int32_t n_vocab, int32_t max_prompt,
                          struct strata_sim_trace *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  char *buf;
  size_t n;
  if (strata_read_file(path, &buf, &n, err, errlen) != 0) return -1;
  int rc = strata_sim_trace_parse(buf, n, path, n_vocab, max_prompt, out, err, errlen);
  free(buf);
  return rc;
}

/* ---- cost model calibration ---- */

#define FIT_K 4 /* step, prefill tokens, decoding sequences, positions */

/* Solves the normal equations restricted to the columns in use (Gaussian
 * elimination with partial pivoting; 4 unknowns need no library). 0, or
 * 1 + the column that depends on the ones before it (singular). */
static int solve(const double A[FIT_K][FIT_K], const double y[FIT_K], const int use[FIT_K],
                 double c[FIT_K]) {
  int idx[FIT_K], k = 0;
  for (int i = 0; i < FIT_K; i++)
    if (use[i]) idx[k++] = i;
  double M[FIT_K][FIT_K + 1];
  for (int i = 0; i < k; i++) {
    for (int j = 0; j < k; j++) M[i][j] = A[idx[i]][idx[j]];
    M[i][k] = y[idx[i]];
  }
  for (int col = 0; col < k; col++) {
    int p = col;
    for (int r = col + 1; r < k; r++)
      if (fabs(M[r][col]) > fabs(M[p][col])) p = r;
    if (!(fabs(M[p][col]) > 1e-9 * (fabs(A[idx[col]][idx[col]]) + 1e-300))) return 1 + idx[col];
    for (int j = 0; j <= k; j++) {
      double t = M[col][j];
      M[col][j] = M[p][j];
      M[p][j] = t;
    }
    for (int r = 0; r < k; r++) {
      if (r == col) continue;
      double f = M[r][col] / M[col][col];
      for (int j = col; j <= k; j++) M[r][j] -= f * M[col][j];
    }
  }
  for (int i = 0; i < FIT_K; i++) c[i] = 0;
  for (int i = 0; i < k; i++) c[idx[i]] = M[i][k] / M[i][i];
  return 0;
}

/* A non-negative number field of a step line (integer when whole). */
static int step_num(json_t *o, const char *key, int whole, double *out) {
  json_t *v = json_object_get(o, key);
  if (whole ? !json_is_integer(v) : !json_is_number(v)) return -1;
  double x = json_number_value(v);
  if (!isfinite(x) || x < 0 || x > 1e15) return -1;
  *out = x;
  return 0;
}

int strata_sim_calibrate_parse(const char *text, size_t len, const char *name,
                               struct strata_sim_fit *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  double A[FIT_K][FIT_K] = {{0}}, xy[FIT_K] = {0}, sx[FIT_K] = {0}, sy = 0, syy = 0;
  size_t pos = 0, a, b, n = 0;
  int line = 0;
  static const char *const keys[] = {"dur", "prefill", "decode", "pos"};
  while (next_line(text, len, &pos, &line, &a, &b)) {
    json_error_t je;
    json_t *o = json_loadb(text + a, b - a, JSON_REJECT_DUPLICATES, &je);
    if (!o) return strata_errf(err, errlen, "%s:%d: column %d: %s", name, line, je.column, je.text);
    if (!json_is_object(o)) {
      json_decref(o);
      return strata_errf(err, errlen, "%s:%d: a step log line must be a JSON object", name, line);
    }
    if (json_object_get(o, "arrive")) { /* an arrival, not a step */
      json_decref(o);
      continue;
    }
    double v[FIT_K];
    for (int i = 0; i < FIT_K; i++)
      if (step_num(o, keys[i], i == 1 || i == 2, &v[i]) != 0) {
        json_decref(o);
        return strata_errf(err, errlen, "%s:%d: %s: expected a %s >= 0", name, line, keys[i],
                           i == 1 || i == 2 ? "whole number" : "number");
      }
    json_decref(o);
    if (v[0] <= 0) continue; /* nothing ran */
    double x[FIT_K] = {1, v[1], v[2], v[3] / 1000}; /* positions in thousands */
    for (int i = 0; i < FIT_K; i++) {
      for (int j = 0; j < FIT_K; j++) A[i][j] += x[i] * x[j];
      xy[i] += x[i] * v[0];
      sx[i] += x[i];
    }
    sy += v[0];
    syy += v[0] * v[0];
    n++;
  }
  if (n < 8)
    return strata_errf(err, errlen, "%s: %zu steps that ran; a fit needs at least 8", name, n);
  /* least squares; a negative coefficient (noise, or a term the log does
   * not exercise) is dropped and the rest fitted again */
  int use[FIT_K] = {1, 1, 1, 1};
  double c[FIT_K];
  for (;;) {
    int dep = solve(A, xy, use, c);
    if (dep) {
      /* a term the steps do not tell apart from the ones before it (no
       * prefill at all, or attention exactly proportional to decoding
       * sequences): drop it and retry */
      if (dep == 1) return strata_errf(err, errlen, "%s: the steps do not determine a fit", name);
      use[dep - 1] = 0;
      continue;
    }
    int worst = -1;
    for (int i = 0; i < FIT_K; i++)
      if (use[i] && c[i] < 0 && (worst < 0 || c[i] < c[worst])) worst = i;
    if (worst < 0) break;
    use[worst] = 0;
  }
  /* residual sum of squares from the normal equations' sums */
  double rss = syy, pred = 0;
  for (int i = 0; i < FIT_K; i++) {
    rss -= 2 * c[i] * xy[i];
    pred += c[i] * sx[i];
    for (int j = 0; j < FIT_K; j++) rss += c[i] * A[i][j] * c[j];
  }
  double tss = syy - sy * sy / (double)n;
  out->step_s = c[0];
  out->prefill_s_per_token = c[1];
  out->decode_s_per_seq = c[2];
  out->attn_s_per_pos = c[3] / 1000;
  out->n_steps = n;
  out->measured_s = sy;
  out->predicted_s = pred;
  out->r2 = tss > 0 ? 1 - (rss > 0 ? rss : 0) / tss : 1;
  return 0;
}

int strata_sim_calibrate_load(const char *path, struct strata_sim_fit *out, char *err,
                              size_t errlen) {
  char *buf;
  size_t n;
  if (strata_read_file(path, &buf, &n, err, errlen) != 0) return -1;
  int rc = strata_sim_calibrate_parse(buf, n, path, out, err, errlen);
  free(buf);
  return rc;
}
