/* Logits processors (strata/logits.h and the seven built-in plugins) on the
 * serving engine with stories260K and greedy decoding:
 *   - bad_words: banning a word of the unconstrained answer removes every
 *     occurrence, an unrelated ban changes nothing, multi-token bans, n > 1
 *     (each choice equals its own n = 1 run with the same seed);
 *   - logit_bias -100 removes a token, +100 forces it; allowed_token_ids;
 *   - min_tokens delays the end (and stop strings);
 *   - each penalty's exact arithmetic on a logits row, and its effect on
 *     repetition in generated text;
 *   - the slot table (removed/added/moved) keeps every sequence's state;
 *   - validation: every bad value is an error naming its field, hostile
 *     values never crash, a disabled processor's field is refused. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "engine_util.h"
#include "logits_batch.h"
#include "runtime.h"
#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

static int32_t *tokenize(const char *text, int bos, size_t *n) {
  int32_t *t = NULL;
  char err[256];
  ck_assert_msg(strata_tokenize(rt.tok, text, strlen(text), bos, 0, &t, n, err, sizeof err) == 0,
                "%s", err);
  return t;
}

/* Compiles body with the running engine: the return code, the field. */
static int compile(const char *body, void ***out, const char **field, char *err, size_t errlen) {
  json_error_t je;
  json_t *o = json_loads(body, JSON_ALLOW_NUL, &je);
  ck_assert_msg(o != NULL, "bad test JSON %s: %s", body, je.text);
  int rc = strata_engine_logits_compile(eng, (const strata_json_t *)o, out, field, err, errlen);
  json_decref(o);
  return rc;
}

/* Runs prompt (with BOS) under body's processors: n choices, greedy when
 * temperature is 0. */
static void run(const char *prompt, const char *body, int max_tokens, int n, float temperature,
                uint64_t seed, struct coll *c) {
  size_t np;
  int32_t *pt = tokenize(prompt, 1, &np);
  struct strata_request_params p = greedy_params(pt, (int)np, max_tokens);
  p.n = n;
  p.sampling.temperature = temperature;
  p.sampling.seed = seed;
  const char *field = NULL;
  char err[512];
  ck_assert_msg(compile(body, &p.logits, &field, err, sizeof err) == 0, "%s: %s", body, err);
  json_t *o = json_loads(body, 0, NULL);
  p.min_tokens = (int32_t)json_integer_value(json_object_get(o, "min_tokens"));
  json_decref(o);
  coll_init(c);
  submit(&p, c);
  finish(c);
  free(pt);
}

static int contains_seq(const int32_t *t, int n, const int32_t *s, int len) {
  for (int i = 0; i + len <= n; i++)
    if (memcmp(t + i, s, sizeof *s * (size_t)len) == 0) return 1;
  return 0;
}

static const char *STORY = "Once upon a time";

START_TEST(bad_words_single_token) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static struct coll base, ban, other;
  run(STORY, "{}", 80, 1, 0, 0, &base);
  ck_assert_msg(strstr(base.text[0], "Lily"), "the base answer has no Lily: %s", base.text[0]);
  run(STORY, "{\"bad_words\": [\"  Lily\"]}", 80, 1, 0, 0, &ban);
  ck_assert_msg(!strstr(ban.text[0], "Lily"), "Lily survived the ban: %s", ban.text[0]);
  /* the banned forms never occur as tokens */
  size_t nb, ns;
  int32_t *bare = tokenize("Lily", 0, &nb), *spaced = tokenize(" Lily", 0, &ns);
  ck_assert(!contains_seq(ban.toks[0], ban.n_toks[0], bare, (int)nb));
  ck_assert(strcmp(ban.text[0], base.text[0]) != 0);
  free(bare);
  free(spaced);
  /* an unrelated word changes nothing */
  ck_assert(!strstr(base.text[0], "elephant"));
  run(STORY, "{\"bad_words\": [\"elephant\", \"zebra\"]}", 80, 1, 0, 0, &other);
  ck_assert_int_eq(other.n_toks[0], base.n_toks[0]);
  ck_assert(memcmp(other.toks[0], base.toks[0], sizeof(int32_t) * (size_t)base.n_toks[0]) == 0);
  check_no_leak();
  stop();
}
END_TEST

START_TEST(bad_words_multi_token) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static struct coll base, ban;
  run(STORY, "{}", 80, 1, 0, 0, &base);
  /* a word the base answer spells with several tokens */
  const char *word = "girl";
  size_t nw;
  int32_t *w = tokenize(word, 0, &nw);
  ck_assert_msg(nw >= 2, "'%s' is %zu token(s)", word, nw);
  ck_assert_msg(contains_seq(base.toks[0], base.n_toks[0], w, (int)nw),
                "the base answer lacks the token sequence of '%s': %s", word, base.text[0]);
  run(STORY, "{\"bad_words\": [\"girl\"]}", 80, 1, 0, 0, &ban);
  ck_assert_msg(!contains_seq(ban.toks[0], ban.n_toks[0], w, (int)nw), "still there: %s",
                ban.text[0]);
  /* identical up to the first place where the ban bit */
  int first = 0;
  while (first + (int)nw <= base.n_toks[0] &&
         memcmp(base.toks[0] + first, w, sizeof *w * nw) != 0)
    first++;
  for (int i = 0; i < first + (int)nw - 1; i++) ck_assert_int_eq(ban.toks[0][i], base.toks[0][i]);
  ck_assert_int_ne(ban.toks[0][first + (int)nw - 1], w[nw - 1]);
  free(w);
  check_no_leak();
  stop();
}
END_TEST

START_TEST(bad_words_n_choices_and_stream_state) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static struct coll multi, solo[3];
  const char *body = "{\"bad_words\": [\"Lily\", \"girl\", \"park\"]}";
  run(STORY, body, 60, 3, 0.9f, 42, &multi);
  size_t nb;
  int32_t *bare = tokenize("Lily", 0, &nb);
  for (int i = 0; i < 3; i++) {
    ck_assert_msg(!strstr(multi.text[i], "Lily") && !strstr(multi.text[i], "park"),
                  "choice %d: %s", i, multi.text[i]);
    /* choice i is the n = 1 request with seed + i */
    run(STORY, body, 60, 1, 0.9f, 42 + (uint64_t)i, &solo[i]);
    ck_assert_int_eq(solo[i].n_toks[0], multi.n_toks[i]);
    ck_assert_msg(strcmp(solo[i].text[0], multi.text[i]) == 0, "choice %d:\n%s\nvs\n%s", i,
                  multi.text[i], solo[i].text[0]);
  }
  free(bare);
  check_no_leak();
  stop();
}
END_TEST

START_TEST(logit_bias_and_allowed) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static struct coll base, minus, plus, allowed;
  run(STORY, "{}", 40, 1, 0, 0, &base);
  int32_t t0 = base.toks[0][0];
  char body[256];
  snprintf(body, sizeof body, "{\"logit_bias\": {\"%d\": -100}}", t0);
  run(STORY, body, 40, 1, 0, 0, &minus);
  for (int i = 0; i < minus.n_toks[0]; i++) ck_assert_int_ne(minus.toks[0][i], t0);
  size_t nl;
  int32_t *lily = tokenize("Lily", 0, &nl);
  snprintf(body, sizeof body, "{\"logit_bias\": {\"%d\": 100}}", lily[0]);
  run(STORY, body, 20, 1, 0, 0, &plus);
  ck_assert_int_eq(plus.n_toks[0], 20);
  for (int i = 0; i < plus.n_toks[0]; i++) ck_assert_int_eq(plus.toks[0][i], lily[0]);
  /* allowed_token_ids: only those, even when sampling at temperature 1 */
  snprintf(body, sizeof body, "{\"allowed_token_ids\": [%d, %d, %d]}", lily[0], t0, t0);
  run(STORY, body, 30, 1, 1.0f, 7, &allowed);
  ck_assert_int_eq(allowed.n_toks[0], 30);
  for (int i = 0; i < allowed.n_toks[0]; i++)
    ck_assert(allowed.toks[0][i] == lily[0] || allowed.toks[0][i] == t0);
  free(lily);
  check_no_leak();
  stop();
}
END_TEST

START_TEST(min_tokens_delays_end) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static struct coll base, held, early, stopped, stop_held;
  const char *prompt = "Once upon a time, there was a cat";
  run(prompt, "{}", 400, 1, 0, 0, &base);
  ck_assert_msg(base.fin[0] == STRATA_FINISH_STOP, "the base answer does not end by itself");
  int end = base.n_toks[0]; /* the end token is the last one */
  char body[128];
  snprintf(body, sizeof body, "{\"min_tokens\": %d}", end + 10);
  run(prompt, body, 400, 1, 0, 0, &held);
  ck_assert_int_ge(held.n_toks[0], end + 10);
  for (int i = 0; i < end - 1; i++) ck_assert_int_eq(held.toks[0][i], base.toks[0][i]);
  ck_assert_int_ne(held.toks[0][end - 1], base.toks[0][end - 1]);
  for (int i = 0; i < end + 9; i++) ck_assert(!strata_tokenizer_is_end(rt.tok, held.toks[0][i]));
  /* below the natural length: no change */
  snprintf(body, sizeof body, "{\"min_tokens\": %d}", end / 2);
  run(prompt, body, 400, 1, 0, 0, &early);
  ck_assert_int_eq(early.n_toks[0], end);
  ck_assert_str_eq(early.text[0], base.text[0]);
  /* stop strings wait for min_tokens too */
  size_t np;
  int32_t *pt = tokenize(prompt, 1, &np);
  const char *dot[] = {"."};
  struct strata_request_params p = greedy_params(pt, (int)np, 40);
  p.stop = dot;
  p.n_stop = 1;
  coll_init(&stopped);
  submit(&p, &stopped);
  finish(&stopped);
  p.min_tokens = 15;
  const char *field;
  char err[256];
  ck_assert_int_eq(compile("{\"min_tokens\": 15}", &p.logits, &field, err, sizeof err), 0);
  coll_init(&stop_held);
  submit(&p, &stop_held);
  finish(&stop_held);
  ck_assert(!strchr(stopped.text[0], '.'));
  ck_assert_int_lt(stopped.n_toks[0], 15);
  ck_assert_int_ge(stop_held.n_toks[0], 15);
  ck_assert_int_eq(stop_held.fin[0], STRATA_FINISH_STOP);
  ck_assert(strlen(stop_held.text[0]) > strlen(stopped.text[0]));
  free(pt);
  check_no_leak();
  stop();
}
END_TEST

/* repeated tokens: generated tokens minus distinct generated tokens */
static int repeats(const struct coll *c) {
  int rep = 0;
  for (int i = 0; i < c->n_toks[0]; i++)
    for (int j = 0; j < i; j++)
      if (c->toks[0][j] == c->toks[0][i]) {
        rep++;
        break;
      }
  return rep;
}

START_TEST(penalties_reduce_repetition) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static struct coll base, c;
  run(STORY, "{}", 120, 1, 0, 0, &base);
  int r0 = repeats(&base);
  const char *bodies[] = {"{\"frequency_penalty\": 1.5}", "{\"presence_penalty\": 1.5}",
                          "{\"repetition_penalty\": 1.8}"};
  for (size_t i = 0; i < 3; i++) {
    run(STORY, bodies[i], 120, 1, 0, 0, &c);
    int r = repeats(&c);
    ck_assert_msg(r < r0, "%s: %d repeated tokens, %d without", bodies[i], r, r0);
  }
  /* a negative frequency penalty makes it repeat more */
  run(STORY, "{\"frequency_penalty\": -1.0}", 120, 1, 0, 0, &c);
  ck_assert_int_gt(repeats(&c), r0);
  check_no_leak();
  stop();
}
END_TEST

/* ---- the processors on a logits row, through strata_lbatch ---- */

static strata_lbatch_t *lbatch(const char *const *names, int32_t n) {
  strata_lbatch_t *lb = NULL;
  char err[512];
  ck_assert_msg(strata_lbatch_create(&rt.reg, NULL, names, n, 1, rt.tok, 512, &lb, err,
                                     sizeof err) == 0,
                "%s", err);
  return lb;
}

static void **lcompile(strata_lbatch_t *lb, const char *body) {
  json_t *o = json_loads(body, 0, NULL);
  ck_assert(o);
  void **p = NULL;
  const char *field = NULL;
  char err[512];
  ck_assert_msg(strata_lbatch_compile(lb, (const strata_json_t *)o, &p, &field, err,
                                      sizeof err) == 0,
                "%s", err);
  json_decref(o);
  return p;
}

START_TEST(penalty_arithmetic) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  const char *names[] = {"repetition_penalty", "frequency_penalty", "presence_penalty"};
  strata_lbatch_t *lb = lbatch(names, 3);
  void **p = lcompile(
      lb, "{\"repetition_penalty\": 2, \"frequency_penalty\": 0.5, \"presence_penalty\": 0.25}");
  ck_assert_uint_eq(strata_lbatch_mask(lb, p), 7);
  const int32_t prompt[] = {1, 2};
  int32_t out[8] = {3, 3, 4};
  int32_t n_out = 3;
  int32_t slot = -1;
  ck_assert_int_eq(strata_lbatch_add(lb, &slot, p, 7, prompt, 2, out, &n_out), 0);
  char err[256];
  ck_assert_uint_eq(strata_lbatch_flush(lb, err, sizeof err), 0);
  ck_assert_int_eq(slot, 0);
  float row[512];
  for (int i = 0; i < 512; i++) row[i] = (i % 2 ? 1.0f : -1.0f) * (float)(i % 7 + 1);
  float want[512];
  memcpy(want, row, sizeof row);
  /* repetition (prompt and output), then frequency and presence (output) */
  for (int t = 1; t <= 4; t++) want[t] = want[t] > 0 ? want[t] / 2 : want[t] * 2;
  want[3] -= 0.5f * 2 + 0.25f;
  want[4] -= 0.5f * 1 + 0.25f;
  struct strata_lbatch_row r = {.slot = slot, .row = 0, .mask = 7};
  ck_assert_int_eq(strata_lbatch_apply(lb, row, &r, 1), 0);
  for (int i = 0; i < 512; i++) ck_assert_msg(fabsf(row[i] - want[i]) < 1e-6f, "token %d: %g vs %g", i, row[i], want[i]);
  /* one more output token is counted at the next apply */
  out[3] = 4;
  n_out = 4;
  for (int i = 0; i < 512; i++) row[i] = 1.0f;
  ck_assert_int_eq(strata_lbatch_apply(lb, row, &r, 1), 0);
  ck_assert(fabsf(row[4] - (0.5f - 1.0f - 0.25f)) < 1e-6f);
  ck_assert(fabsf(row[1] - 0.5f) < 1e-6f && row[5] == 1.0f);
  strata_lbatch_remove(lb, &slot);
  ck_assert_uint_eq(strata_lbatch_flush(lb, err, sizeof err), 0);
  strata_lbatch_free_params(lb, p);
  strata_lbatch_destroy(lb);
  stop();
}
END_TEST

/* Sequences come and go; each keeps its own ban through the moves. */
START_TEST(slot_table_moves) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  const char *names[] = {"logit_bias"};
  strata_lbatch_t *lb = lbatch(names, 1);
  enum { N = 12 };
  void **p[N];
  int32_t slot[N], n_out[N] = {0};
  int live[N] = {0};
  const int32_t none[1] = {0};
  char err[256], body[64];
  for (int i = 0; i < N; i++) {
    snprintf(body, sizeof body, "{\"logit_bias\": {\"%d\": -100}}", 10 + i);
    p[i] = lcompile(lb, body);
    slot[i] = -1;
  }
  unsigned seed = 1;
  for (int round = 0; round < 200; round++) {
    for (int k = 0; k < 3; k++) {
      seed = seed * 1103515245u + 12345u;
      int i = (int)((seed >> 16) % N);
      if (live[i])
        strata_lbatch_remove(lb, &slot[i]);
      else
        ck_assert_int_eq(strata_lbatch_add(lb, &slot[i], p[i], 1, none, 1, none, &n_out[i]), 0);
      live[i] = !live[i];
    }
    ck_assert_uint_eq(strata_lbatch_flush(lb, err, sizeof err), 0);
    /* slots dense, distinct */
    int n_live = 0, seen[N] = {0};
    for (int i = 0; i < N; i++)
      if (live[i]) {
        ck_assert_int_ge(slot[i], 0);
        ck_assert_int_lt(slot[i], N);
        ck_assert_int_eq(seen[slot[i]], 0);
        seen[slot[i]] = 1;
        n_live++;
      } else {
        ck_assert_int_eq(slot[i], -1);
      }
    for (int s = 0; s < n_live; s++) ck_assert_int_eq(seen[s], 1);
    /* every live sequence's row gets its own ban */
    static float rows[N][512];
    struct strata_lbatch_row rr[N];
    int k = 0;
    for (int i = 0; i < N; i++)
      if (live[i]) {
        for (int t = 0; t < 512; t++) rows[k][t] = 0;
        rr[k] = (struct strata_lbatch_row){.slot = slot[i], .row = (uint32_t)k, .mask = 1};
        k++;
      }
    ck_assert_int_eq(strata_lbatch_apply(lb, &rows[0][0], rr, (uint32_t)k), 0);
    k = 0;
    for (int i = 0; i < N; i++)
      if (live[i]) {
        for (int t = 0; t < 512; t++) ck_assert(rows[k][t] == (t == 10 + i ? -100.0f : 0.0f));
        k++;
      }
  }
  for (int i = 0; i < N; i++) {
    if (live[i]) strata_lbatch_remove(lb, &slot[i]);
    strata_lbatch_free_params(lb, p[i]);
  }
  strata_lbatch_flush(lb, err, sizeof err);
  strata_lbatch_destroy(lb);
  stop();
}
END_TEST

START_TEST(invalid_values_name_their_field) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static const struct {
    const char *body, *field;
  } bad[] = {
      {"{\"bad_words\": \"Lily\"}", "bad_words"},
      {"{\"bad_words\": [\"\"]}", "bad_words"},
      {"{\"bad_words\": [\"   \"]}", "bad_words"},
      {"{\"bad_words\": [5]}", "bad_words"},
      {"{\"bad_words\": [\"a\\u0000b\"]}", "bad_words"},
      {"{\"logit_bias\": []}", "logit_bias"},
      {"{\"logit_bias\": {\"x\": 1}}", "logit_bias"},
      {"{\"logit_bias\": {\"-3\": 1}}", "logit_bias"},
      {"{\"logit_bias\": {\"512\": 1}}", "logit_bias"},
      {"{\"logit_bias\": {\"5\": 101}}", "logit_bias"},
      {"{\"logit_bias\": {\"5\": \"1\"}}", "logit_bias"},
      {"{\"logit_bias\": {\"99999999999999999999\": 1}}", "logit_bias"},
      {"{\"allowed_token_ids\": []}", "allowed_token_ids"},
      {"{\"allowed_token_ids\": [1, -1]}", "allowed_token_ids"},
      {"{\"allowed_token_ids\": [1.5]}", "allowed_token_ids"},
      {"{\"allowed_token_ids\": {}}", "allowed_token_ids"},
      {"{\"min_tokens\": -1}", "min_tokens"},
      {"{\"min_tokens\": 1.5}", "min_tokens"},
      {"{\"repetition_penalty\": 0}", "repetition_penalty"},
      {"{\"repetition_penalty\": -1}", "repetition_penalty"},
      {"{\"repetition_penalty\": \"2\"}", "repetition_penalty"},
      {"{\"frequency_penalty\": 2.5}", "frequency_penalty"},
      {"{\"presence_penalty\": -2.01}", "presence_penalty"},
      {"{\"presence_penalty\": true}", "presence_penalty"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    void **p = NULL;
    const char *field = NULL;
    char err[512] = "";
    ck_assert_msg(compile(bad[i].body, &p, &field, err, sizeof err) == -1, "accepted %s",
                  bad[i].body);
    ck_assert_ptr_null(p);
    ck_assert_msg(field && strcmp(field, bad[i].field) == 0, "%s: field %s", bad[i].body,
                  field ? field : "(null)");
    ck_assert_msg(err[0], "%s: no message", bad[i].body);
  }
  /* neutral values use nothing */
  const char *neutral[] = {
      "{}", "{\"bad_words\": []}", "{\"logit_bias\": {}}", "{\"min_tokens\": 0}",
      "{\"repetition_penalty\": 1, \"frequency_penalty\": 0, \"presence_penalty\": 0.0}",
      "{\"bad_words\": null, \"logit_bias\": null}"};
  for (size_t i = 0; i < sizeof neutral / sizeof neutral[0]; i++) {
    void **p = (void **)1;
    const char *field;
    char err[256];
    ck_assert_int_eq(compile(neutral[i], &p, &field, err, sizeof err), 0);
    ck_assert_ptr_null(p);
  }
  /* limits */
  char big[8192];
  size_t o = (size_t)snprintf(big, sizeof big, "{\"bad_words\": [");
  for (int i = 0; i < 129; i++) o += (size_t)snprintf(big + o, sizeof big - o, "%s\"w%d\"", i ? "," : "", i);
  snprintf(big + o, sizeof big - o, "]}");
  void **p;
  const char *field;
  char err[256];
  ck_assert_int_eq(compile(big, &p, &field, err, sizeof err), -1);
  ck_assert_str_eq(field, "bad_words");
  /* hostile values of every field never crash */
  const char *vals[] = {"null", "true", "0", "-1", "1e308", "-1e308", "\"\"", "\"x\"", "[]",
                        "{}", "[null]", "[[1]]", "{\"1\": null}", "[1e30]", "[\"\\u00ff\"]",
                        "{\"1\": 1e308}", "[-2147483649]", "2147483648"};
  const char *fields[] = {"bad_words", "logit_bias", "allowed_token_ids", "min_tokens",
                          "repetition_penalty", "frequency_penalty", "presence_penalty"};
  for (size_t f = 0; f < 7; f++)
    for (size_t v = 0; v < sizeof vals / sizeof vals[0]; v++) {
      char body[256];
      snprintf(body, sizeof body, "{\"%s\": %s}", fields[f], vals[v]);
      p = NULL;
      int rc = compile(body, &p, &field, err, sizeof err);
      ck_assert(rc == 0 || rc == -1);
      if (rc == -1) ck_assert_str_eq(field, fields[f]);
      strata_engine_logits_free(eng, p);
    }
  stop();
}
END_TEST

START_TEST(disabled_processor_is_refused) {
  struct strata_engine_config cfg = defaults();
  cfg.logits[0] = "bad_words";
  cfg.n_logits = 1;
  start(&cfg);
  void **p = NULL;
  const char *field = NULL;
  char err[512];
  ck_assert_int_eq(compile("{\"logit_bias\": {\"5\": 1}}", &p, &field, err, sizeof err), -1);
  ck_assert_str_eq(field, "logit_bias");
  ck_assert_msg(strstr(err, "not enabled"), "%s", err);
  ck_assert_int_eq(compile("{\"presence_penalty\": 0.5}", &p, &field, err, sizeof err), -1);
  ck_assert_str_eq(field, "presence_penalty");
  /* neutral values of disabled ones are fine; the enabled one works */
  ck_assert_int_eq(compile("{\"presence_penalty\": 0, \"logit_bias\": {}}", &p, &field, err,
                           sizeof err),
                   0);
  ck_assert_ptr_null(p);
  ck_assert_int_eq(compile("{\"bad_words\": [\"Lily\"]}", &p, &field, err, sizeof err), 0);
  ck_assert_ptr_nonnull(p);
  strata_engine_logits_free(eng, p);
  stop();
  /* an explicit list naming something not installed does not start */
  cfg.logits[0] = "no_such_processor";
  cfg.logits_required = 1;
  char *model = test_shared_path("models/stories260K.gguf");
  struct strata_runtime_opts o = {.model_path = model, .backend = "cpu", .threads = 1};
  ck_assert_int_eq(strata_engine_model_opts(&cfg, model, 0, &o.model, err, sizeof err), 0);
  ck_assert_int_eq(strata_runtime_open(&rt, &o), 0);
  ck_assert_int_ne(strata_engine_start(&rt, &cfg, &eng, err, sizeof err), 0);
  ck_assert_msg(strstr(err, "no_such_processor"), "%s", err);
  strata_runtime_close(&rt);
  free(model);
}
END_TEST

/* Handles outlive the engine: requests holding processor parameters are
 * aborted by stop and released afterwards, after some ran and some waited. */
START_TEST(stop_with_processors_pending) {
  struct strata_engine_config cfg = defaults();
  cfg.max_running = 2;
  start(&cfg);
  static struct coll c[4];
  size_t np;
  int32_t *pt = tokenize(STORY, 1, &np);
  for (int i = 0; i < 4; i++) {
    struct strata_request_params p = greedy_params(pt, (int)np, 400);
    p.ignore_eos = 1;
    const char *field;
    char err[256];
    ck_assert_int_eq(compile("{\"bad_words\": [\"Lily\"], \"frequency_penalty\": 0.5}", &p.logits,
                             &field, err, sizeof err),
                     0);
    coll_init(&c[i]);
    submit(&p, &c[i]);
  }
  /* let the first ones sample a little */
  for (int w = 0; w < 2000 && c[0].n_toks[0] < 5; w++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  strata_engine_stop(eng);
  eng = NULL;
  for (int i = 0; i < 4; i++) {
    ck_assert(c[i].done);
    ck_assert_int_eq(c[i].fin[0], STRATA_FINISH_ABORT);
    strata_engine_release(c[i].req);
  }
  strata_runtime_close(&rt);
  free(pt);
}
END_TEST

int main(void) {
  char *model = test_shared_path("models/stories260K.gguf");
  FILE *f = fopen(model, "rb");
  if (!f) {
    fprintf(stderr, "%s missing: skipping\n", model);
    return 77;
  }
  fclose(f);
  free(model);
  Suite *s = suite_create("logits");
  TCase *tc = tcase_create("logits");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, bad_words_single_token);
  tcase_add_test(tc, bad_words_multi_token);
  tcase_add_test(tc, bad_words_n_choices_and_stream_state);
  tcase_add_test(tc, logit_bias_and_allowed);
  tcase_add_test(tc, min_tokens_delays_end);
  tcase_add_test(tc, penalties_reduce_repetition);
  tcase_add_test(tc, penalty_arithmetic);
  tcase_add_test(tc, slot_table_moves);
  tcase_add_test(tc, invalid_values_name_their_field);
  tcase_add_test(tc, disabled_processor_is_refused);
  tcase_add_test(tc, stop_with_processors_pending);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
