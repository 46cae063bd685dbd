/* The HTTP API layer without sockets (core/http_api.c): request parsing and
 * validation with hostile input (malformed JSON, invalid UTF-8, wrong types,
 * out-of-range values, oversized fields, random mutations), the error
 * shape, response and chunk shapes, and the /metrics text. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "http_api.h"
#include "testutil.h"

static const struct strata_api_limits lim = {.max_metadata_bytes = 256,
                                             .n_vocab = 512};

/* Parses body as kind; returns the status (200 when accepted). */
static int status_of(enum strata_api_kind kind, const char *body, size_t len,
                     struct strata_api_error *e) {
  struct strata_api_request r;
  memset(e, 0, sizeof *e);
  if (strata_api_parse_request(kind, body, len, &lim, &r, e) == 0) {
    strata_api_request_free(&r);
    return 200;
  }
  ck_assert_int_ge(e->status, 400);
  ck_assert(e->message[0]);
  ck_assert_ptr_nonnull(e->type);
  return e->status;
}

static int cmpl(const char *body, struct strata_api_error *e) {
  return status_of(STRATA_API_COMPLETIONS, body, strlen(body), e);
}
static int chat(const char *body, struct strata_api_error *e) {
  return status_of(STRATA_API_CHAT, body, strlen(body), e);
}

/* cmpl must fail with 400 and name param (NULL: param is null). */
static void want_400(const char *body, const char *param) {
  struct strata_api_error e;
  int st = cmpl(body, &e);
  ck_assert_msg(st == 400, "%s: status %d", body, st);
  if (param)
    ck_assert_msg(strcmp(e.param, param) == 0, "%s: param '%s', want '%s' (%s)",
                  body, e.param, param, e.message);
}

/* server.max_n and server.max_stop tighten the built-in limits, and the
 * defaults (0) are the built-in ones. */
START_TEST(configured_limits) {
  const struct strata_api_limits tight = {.max_metadata_bytes = 256, .n_vocab = 512,
                                          .max_n = 4, .max_stop = 2};
  struct strata_api_request r;
  struct strata_api_error e;
  const char *ok = "{\"prompt\":\"x\",\"n\":4,\"stop\":[\"a\",\"b\"]}";
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, ok, strlen(ok), &tight, &r, &e), 0);
  strata_api_request_free(&r);
  const char *n5 = "{\"prompt\":\"x\",\"n\":5}";
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, n5, strlen(n5), &tight, &r, &e), -1);
  ck_assert_int_eq(e.status, 400);
  ck_assert_str_eq(e.param, "n");
  const char *b5 = "{\"prompt\":\"x\",\"n\":4,\"best_of\":5}";
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, b5, strlen(b5), &tight, &r, &e), -1);
  ck_assert_str_eq(e.param, "best_of");
  const char *s3 = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\"]}";
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_CHAT, s3, strlen(s3), &tight, &r, &e), -1);
  ck_assert_str_eq(e.param, "stop");
  ck_assert_ptr_nonnull(strstr(e.message, "server.max_stop"));
  /* the defaults: 128 and 16 */
  char body[512];
  snprintf(body, sizeof body, "{\"prompt\":\"x\",\"n\":128,\"stop\":[%s\"p\"]}",
           "\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",");
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, body, strlen(body), &lim, &r, &e), 0);
  strata_api_request_free(&r);
  snprintf(body, sizeof body, "{\"prompt\":\"x\",\"n\":129}");
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, body, strlen(body), &lim, &r, &e), -1);
  snprintf(body, sizeof body, "{\"prompt\":\"x\",\"stop\":[%s\"p\",\"q\"]}",
           "\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",");
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, body, strlen(body), &lim, &r, &e), -1);
  ck_assert_str_eq(e.param, "stop");
  /* a max_stop above the built-in default is honoured */
  const struct strata_api_limits wide = {.max_metadata_bytes = 256, .n_vocab = 512, .max_stop = 20};
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, body, strlen(body), &wide, &r, &e), 0);
  strata_api_request_free(&r);
}
END_TEST

START_TEST(valid_completion_fields) {
  const char *body = "{\"model\":\"m\",\"prompt\":\"Once "
                     "upon\",\"max_tokens\":7,\"n\":3,\"temperature\":0.5,"
                     "\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,\"seed\":-1,"
                     "\"priority\":-3,\"ignore_eos\":true,"
                     "\"cache_salt\":\"s\",\"stop\":[\"a\",\"bb\"],\"stop_"
                     "token_ids\":[2],\"stream\":true,"
                     "\"stream_options\":{\"include_usage\":true},\"metadata\":"
                     "{\"k\":\"v\"},\"echo\":false,"
                     "\"presence_penalty\":0,\"frequency_penalty\":0.0,\"logit_"
                     "bias\":{},\"user\":\"u\","
                     "\"some_future_field\":{\"x\":[1,2]}}";
  struct strata_api_request r;
  struct strata_api_error e;
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, body,
                                            strlen(body), &lim, &r, &e),
                   0);
  ck_assert_str_eq(r.model, "m");
  ck_assert_uint_eq(r.prompt_len, 9);
  ck_assert(memcmp(r.prompt, "Once upon", 9) == 0);
  ck_assert_int_eq(r.max_tokens, 7);
  ck_assert_int_eq(r.n, 3);
  ck_assert(r.sampling.temperature == 0.5f);
  ck_assert(r.sampling.top_p == 0.9f);
  ck_assert_int_eq(r.sampling.top_k, 40);
  ck_assert(r.sampling.min_p == 0.05f);
  ck_assert(r.has_seed);
  ck_assert(r.sampling.seed == UINT64_MAX);
  ck_assert_int_eq(r.priority, -3);
  ck_assert(r.ignore_eos);
  ck_assert_str_eq(r.cache_salt, "s");
  ck_assert_uint_eq(r.n_stop, 2);
  ck_assert_str_eq(r.stop[1], "bb");
  ck_assert_uint_eq(r.n_stop_token_ids, 1);
  ck_assert(r.stream && r.include_usage);
  ck_assert_str_eq(r.metadata_text, "{\"k\":\"v\"}");
  ck_assert_str_eq(r.user, "u");
  strata_api_request_free(&r);

  /* defaults; nulls count as absent */
  const char *b2 = "{\"prompt\":[1,2,3],\"max_tokens\":null,\"stop\":null,"
                   "\"n\":null,\"model\":null}";
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, b2,
                                            strlen(b2), &lim, &r, &e),
                   0);
  ck_assert_ptr_null(r.model);
  ck_assert_uint_eq(r.n_prompt_ids, 3);
  ck_assert_int_eq(r.prompt_ids[2], 3);
  ck_assert_int_eq(r.max_tokens, 0);
  ck_assert_int_eq(r.n, 1);
  ck_assert(r.sampling.temperature == 1.0f);
  ck_assert(!r.has_seed && !r.stream && r.add_special_tokens);
  strata_api_request_free(&r);

  /* a batch: strings and token-id arrays, each its own prompt */
  const char *b3 = "{\"prompt\":[\"Once\",[5,6,7],\"upon\"],\"n\":2}";
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, b3, strlen(b3), &lim, &r, &e),
                   0);
  ck_assert_uint_eq(r.n_prompts, 3);
  ck_assert(r.prompts[0].text && r.prompts[0].len == 4 && !r.prompts[0].ids);
  ck_assert(!r.prompts[1].text && r.prompts[1].n_ids == 3 && r.prompts[1].ids[2] == 7);
  ck_assert(r.prompts[2].text && memcmp(r.prompts[2].text, "upon", 4) == 0);
  strata_api_request_free(&r);

  /* a batch of one prompt, string or ids */
  ck_assert_int_eq(cmpl("{\"prompt\":[\"x\"]}", &e), 200);
  ck_assert_int_eq(cmpl("{\"prompt\":[[5,6]]}", &e), 200);
  ck_assert_int_eq(cmpl("{\"prompt\":\"\"}", &e),
                   200); /* BOS alone may remain */
  ck_assert_int_eq(cmpl("{\"prompt\":\"x\",\"stop\":\"end\"}", &e), 200);
  ck_assert_int_eq(cmpl("{\"prompt\":\"x\",\"top_k\":-1}", &e), 200);
}
END_TEST

START_TEST(valid_chat_fields) {
  const char *body =
      "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":5,"
      "\"max_completion_tokens\":9,\"logprobs\":false,\"tools\":[],\"tool_"
      "choice\":\"none\","
      "\"response_format\":{\"type\":\"text\"}}";
  struct strata_api_request r;
  struct strata_api_error e;
  ck_assert_int_eq(strata_api_parse_request(STRATA_API_CHAT, body, strlen(body),
                                            &lim, &r, &e),
                   0);
  ck_assert_int_eq(r.max_tokens, 9); /* max_completion_tokens wins */
  ck_assert_uint_eq(json_array_size(r.messages), 1);
  ck_assert(r.add_generation_prompt);
  strata_api_request_free(&r);
  ck_assert_int_eq(chat("{\"messages\":{}}", &e), 400);
  ck_assert_str_eq(e.param, "messages");
  ck_assert_int_eq(chat("{\"messages\":[]}", &e), 400);
  ck_assert_int_eq(chat("{\"prompt\":\"x\"}", &e), 400);
  ck_assert_str_eq(e.param, "messages");
  ck_assert_int_eq(chat("{\"messages\":[{}],\"logprobs\":true}", &e), 400);
  ck_assert_str_eq(e.param, "logprobs");
  ck_assert_int_eq(
      chat("{\"messages\":[{}],\"tools\":[{\"type\":\"function\"}]}", &e), 400);
  ck_assert_str_eq(e.param, "tools");
  ck_assert_int_eq(
      chat("{\"messages\":[{}],\"response_format\":{\"type\":\"json_object\"}}",
           &e),
      400);
  ck_assert_int_eq(chat("{\"messages\":[{}],\"max_completion_tokens\":0}", &e),
                   400);
  ck_assert_str_eq(e.param, "max_completion_tokens");
}
END_TEST

START_TEST(malformed_json) {
  static const char *const bodies[] = {
      "",
      " ",
      "{",
      "}",
      "[]",
      "null",
      "123",
      "\"str\"",
      "{\"prompt\":}",
      "{\"prompt\":\"x\",}",
      "{prompt:\"x\"}",
      "{\"prompt\":\"x\"} trailing",
      "{\"prompt\":'x'}",
      "{\"prompt\":\"\\x\"}",
      "{\"prompt\":\"x\",\"n\":1e999}",
      "{\"prompt\":\"\\ud800\"}",
      "{\"prompt\":\"a\\u0000b\"}",
      "{\"prompt\":\"x\",\"n\":99999999999999999999999}",
      "{\"a\":1,\"a\":2",
  };
  struct strata_api_error e;
  for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
    int st = cmpl(bodies[i], &e);
    ck_assert_msg(st == 400, "'%s': %d", bodies[i], st);
    ck_assert_str_eq(e.type, "invalid_request_error");
  }
  /* nesting far deeper than any parser stack */
  size_t n = 200000;
  char *deep = malloc(n + 1);
  memset(deep, '[', n);
  deep[n] = 0;
  ck_assert_int_eq(status_of(STRATA_API_COMPLETIONS, deep, n, &e), 400);
  memset(deep, '{', 1);
  for (size_t i = 1; i < n; i++)
    deep[i] = i % 2 ? '"' : ':';
  ck_assert_int_eq(status_of(STRATA_API_COMPLETIONS, deep, n, &e), 400);
  free(deep);
  /* embedded NUL in the body */
  ck_assert_int_eq(
      status_of(STRATA_API_COMPLETIONS, "{\"prompt\":\"a\0\"}", 14, &e), 400);
}
END_TEST

START_TEST(invalid_utf8) {
  static const char *const bodies[] = {
      "{\"prompt\":\"\xff\"}",         "{\"prompt\":\"\xc0\xaf\"}",
      "{\"prompt\":\"\xed\xa0\x80\"}", "{\"prompt\":\"\xf4\x90\x80\x80\"}",
      "{\"prompt\":\"\xe2\x82\"}",     "{\"\xfe\":1,\"prompt\":\"x\"}",
  };
  struct strata_api_error e;
  for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
    ck_assert_int_eq(cmpl(bodies[i], &e), 400);
    ck_assert_msg(strstr(e.message, "UTF-8") != NULL, "%s", e.message);
    ck_assert_str_eq(e.code, "invalid_utf8");
  }
  ck_assert_int_eq(cmpl("{\"prompt\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"}", &e),
                   200);
}
END_TEST

START_TEST(wrong_types) {
  want_400("{\"prompt\":5}", "prompt");
  want_400("{\"prompt\":{}}", "prompt");
  want_400("{\"prompt\":true}", "prompt");
  want_400("{\"prompt\":[1,\"a\"]}", "prompt");
  want_400("{\"prompt\":[1.5]}", "prompt");
  want_400("{\"prompt\":\"x\",\"model\":1}", "model");
  want_400("{\"prompt\":\"x\",\"max_tokens\":\"5\"}", "max_tokens");
  want_400("{\"prompt\":\"x\",\"max_tokens\":5.5}", "max_tokens");
  want_400("{\"prompt\":\"x\",\"n\":true}", "n");
  want_400("{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature");
  want_400("{\"prompt\":\"x\",\"top_p\":[]}", "top_p");
  want_400("{\"prompt\":\"x\",\"top_k\":1.5}", "top_k");
  want_400("{\"prompt\":\"x\",\"min_p\":{}}", "min_p");
  want_400("{\"prompt\":\"x\",\"seed\":\"1\"}", "seed");
  want_400("{\"prompt\":\"x\",\"seed\":1.0}", "seed");
  want_400("{\"prompt\":\"x\",\"stream\":\"yes\"}", "stream");
  want_400("{\"prompt\":\"x\",\"stream\":1}", "stream");
  want_400("{\"prompt\":\"x\",\"stream\":true,\"stream_options\":[]}",
           "stream_options");
  want_400("{\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"include_"
           "usage\":1}}",
           "stream_options.include_usage");
  want_400("{\"prompt\":\"x\",\"stop\":5}", "stop");
  want_400("{\"prompt\":\"x\",\"stop\":[5]}", "stop");
  want_400("{\"prompt\":\"x\",\"stop\":[\"a\",null]}", "stop");
  want_400("{\"prompt\":\"x\",\"stop_token_ids\":\"1\"}", "stop_token_ids");
  want_400("{\"prompt\":\"x\",\"stop_token_ids\":[\"1\"]}", "stop_token_ids");
  want_400("{\"prompt\":\"x\",\"ignore_eos\":\"true\"}", "ignore_eos");
  want_400("{\"prompt\":\"x\",\"priority\":0.5}", "priority");
  want_400("{\"prompt\":\"x\",\"cache_salt\":7}", "cache_salt");
  want_400("{\"prompt\":\"x\",\"metadata\":\"k=v\"}", "metadata");
  want_400("{\"prompt\":\"x\",\"metadata\":[]}", "metadata");
  want_400("{\"prompt\":\"x\",\"metadata\":{\"k\":1}}", "metadata");
  want_400("{\"prompt\":\"x\",\"metadata\":{\"k\":{\"nested\":\"v\"}}}",
           "metadata");
  want_400("{\"prompt\":\"x\",\"echo\":0}", "echo");
  want_400("{\"prompt\":\"x\",\"user\":5}", "user");
  want_400("{\"prompt\":\"x\",\"add_special_tokens\":\"no\"}",
           "add_special_tokens");
}
END_TEST

START_TEST(out_of_range) {
  want_400("{\"prompt\":\"x\",\"n\":0}", "n");
  want_400("{\"prompt\":\"x\",\"n\":129}", "n");
  want_400("{\"prompt\":\"x\",\"n\":-1}", "n");
  want_400("{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens");
  want_400("{\"prompt\":\"x\",\"max_tokens\":-5}", "max_tokens");
  want_400("{\"prompt\":\"x\",\"max_tokens\":2147483648}", "max_tokens");
  want_400("{\"prompt\":\"x\",\"temperature\":-0.1}", "temperature");
  want_400("{\"prompt\":\"x\",\"temperature\":2.5}", "temperature");
  want_400("{\"prompt\":\"x\",\"top_p\":0}", "top_p");
  want_400("{\"prompt\":\"x\",\"top_p\":1.01}", "top_p");
  want_400("{\"prompt\":\"x\",\"top_k\":-2}", "top_k");
  want_400("{\"prompt\":\"x\",\"min_p\":1.5}", "min_p");
  want_400("{\"prompt\":\"x\",\"min_p\":-0.5}", "min_p");
  want_400("{\"prompt\":\"x\",\"priority\":4294967296}", "priority");
  want_400("{\"prompt\":[-1]}", "prompt");
  want_400("{\"prompt\":[512]}", "prompt");
  want_400("{\"prompt\":[]}", "prompt");
  want_400("{\"prompt\":[[]]}", "prompt");
  want_400("{\"prompt\":[\"a\",7]}", "prompt");
  want_400("{\"prompt\":[\"a\",[]]}", "prompt");
  want_400("{\"prompt\":[[1],[1,512]]}", "prompt[1]");
  want_400("{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"],\"n\":128}", "n");
  want_400("{}", "prompt");
  want_400("{\"prompt\":null}", "prompt");
  want_400("{\"prompt\":\"x\",\"stop\":[\"\"]}", "stop");
  want_400("{\"prompt\":\"x\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\","
           "\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
           "\"13\",\"14\",\"15\",\"16\",\"17\"]}",
           "stop");
  want_400("{\"prompt\":\"x\",\"stop\":\"a\\u0000b\"}",
           NULL); /* jansson refuses NUL */
  want_400("{\"prompt\":\"x\",\"stop_token_ids\":[600]}", "stop_token_ids");
  want_400("{\"prompt\":\"x\",\"cache_salt\":\"\"}", "cache_salt");
  want_400("{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}",
           "stream_options");
  /* neutral values of unsupported features pass; others are named */
  /* (logits-processor fields are checked by the processors: test_logits) */
  want_400("{\"prompt\":\"x\",\"group_id\":5}", "group_id");
  want_400("{\"prompt\":\"x\",\"group_id\":\"\"}", "group_id");
  want_400("{\"prompt\":\"x\",\"affinity_hint\":\"forever\"}", "affinity_hint");
  want_400("{\"prompt\":\"x\",\"metadata\":{\"affinity_hint\":\"x\"}}", "metadata");
  {
    struct strata_api_request rq;
    struct strata_api_error er;
    struct strata_api_limits lim2 = {.max_metadata_bytes = 4096, .n_vocab = 512};
    const char *b = "{\"prompt\":\"x\",\"metadata\":{\"group\":\"wf-1\",\"affinity_hint\":\"keep\"}}";
    ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, b, strlen(b), &lim2, &rq, &er), 0);
    ck_assert_str_eq(rq.group_id, "wf-1");
    ck_assert_int_eq(rq.affinity_hint, 1);
    strata_api_request_free(&rq);
    b = "{\"prompt\":\"x\",\"group_id\":\"g\",\"affinity_hint\":\"release\",\"metadata\":{\"group\":\"m\"}}";
    ck_assert_int_eq(strata_api_parse_request(STRATA_API_COMPLETIONS, b, strlen(b), &lim2, &rq, &er), 0);
    ck_assert_str_eq(rq.group_id, "g"); /* the body wins */
    ck_assert_int_eq(rq.affinity_hint, 2);
    strata_api_request_free(&rq);
  }
  want_400("{\"prompt\":\"x\",\"logprobs\":1}", "logprobs");
  want_400("{\"prompt\":\"x\",\"best_of\":2}", "best_of");
  want_400("{\"prompt\":\"x\",\"min_tokens\":-3}", "min_tokens");
  want_400("{\"prompt\":\"x\",\"suffix\":\"end\"}", "suffix");
  struct strata_api_error e;
  ck_assert_int_eq(cmpl("{\"prompt\":\"x\",\"repetition_penalty\":1,\"best_"
                        "of\":1,\"min_tokens\":0,"
                        "\"suffix\":\"\",\"logprobs\":null,\"bad_words\":[]}",
                        &e),
                   200);
  /* metadata limit: 256 bytes as compact JSON */
  char big[600];
  snprintf(big, sizeof big,
           "{\"prompt\":\"x\",\"metadata\":{\"k\":\"%0300d\"}}", 0);
  want_400(big, "metadata");
  snprintf(big, sizeof big,
           "{\"prompt\":\"x\",\"metadata\":{\"k\":\"%0200d\"}}", 0);
  ck_assert_int_eq(cmpl(big, &e), 200);
}
END_TEST

START_TEST(error_json_shape) {
  struct strata_api_error e;
  strata_api_errorf(&e, 400, NULL, NULL, "n", "'n' must be in [1, 128], got %d",
                    0);
  char *s = strata_api_error_json(&e);
  json_error_t je;
  json_t *o = json_loads(s, 0, &je);
  ck_assert_ptr_nonnull(o);
  json_t *err = json_object_get(o, "error");
  ck_assert_str_eq(json_string_value(json_object_get(err, "message")),
                   "'n' must be in [1, 128], got 0");
  ck_assert_str_eq(json_string_value(json_object_get(err, "type")),
                   "invalid_request_error");
  ck_assert_str_eq(json_string_value(json_object_get(err, "param")), "n");
  ck_assert(json_is_null(json_object_get(err, "code")));
  json_decref(o);
  free(s);
  strata_api_errorf(&e, 429, NULL, "queue_full", NULL, "busy \xff");
  s = strata_api_error_json(&e);
  o = json_loads(s, 0, &je);
  ck_assert_ptr_nonnull(o);
  err = json_object_get(o, "error");
  ck_assert(json_is_null(json_object_get(err, "param")));
  ck_assert_str_eq(json_string_value(json_object_get(err, "code")),
                   "queue_full");
  ck_assert_str_eq(json_string_value(json_object_get(err, "type")),
                   "rate_limit_error");
  ck_assert_str_eq(json_string_value(json_object_get(err, "message")),
                   "busy \xef\xbf\xbd");
  json_decref(o);
  free(s);
  ck_assert_str_eq(strata_api_status_reason(413), "Payload Too Large");
}
END_TEST

START_TEST(string_sanitizing) {
  static const struct {
    const char *in;
    size_t len;
    const char *out;
  } cases[] = {
      {"abc", 3, "abc"},
      {"a\xff"
       "b",
       3,
       "a\xef\xbf\xbd"
       "b"},
      {"\xc3\xa9", 2, "\xc3\xa9"},
      {"\xc3", 1, "\xef\xbf\xbd"},
      {"\xe2\x82\xac", 3, "\xe2\x82\xac"},
      {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
      {"\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"},
      {"\xf5\x80", 2, "\xef\xbf\xbd\xef\xbf\xbd"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    json_t *s = strata_api_string(cases[i].in, cases[i].len);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(json_string_value(s), cases[i].out);
    json_decref(s);
  }
  json_t *s = strata_api_string(
      "a\0b", 3); /* NUL from byte tokens survives as \u0000 */
  ck_assert_uint_eq(json_string_length(s), 3);
  json_decref(s);
}
END_TEST

START_TEST(response_shapes) {
  struct strata_api_choice ch[2] = {{"hello", 5, "stop"},
                                    {"wor\xffld", 6, "length"}};
  struct strata_api_usage u = {
      .prompt_tokens = 4, .completion_tokens = 9, .cached_tokens = 0};
  json_t *md = json_pack("{s:s}", "team", "a");
  char *s = strata_api_response_json(STRATA_API_COMPLETIONS, "cmpl-1",
                                     1700000000, "stories", ch, 2, &u, md);
  json_error_t je;
  json_t *o = json_loads(s, 0, &je);
  ck_assert_ptr_nonnull(o);
  ck_assert_str_eq(json_string_value(json_object_get(o, "object")),
                   "text_completion");
  ck_assert_str_eq(json_string_value(json_object_get(o, "model")), "stories");
  json_t *c1 = json_array_get(json_object_get(o, "choices"), 1);
  ck_assert_int_eq(json_integer_value(json_object_get(c1, "index")), 1);
  ck_assert_str_eq(json_string_value(json_object_get(c1, "text")),
                   "wor\xef\xbf\xbdld");
  ck_assert_str_eq(json_string_value(json_object_get(c1, "finish_reason")),
                   "length");
  json_t *us = json_object_get(o, "usage");
  ck_assert_int_eq(json_integer_value(json_object_get(us, "total_tokens")), 13);
  ck_assert_str_eq(json_string_value(
                       json_object_get(json_object_get(o, "metadata"), "team")),
                   "a");
  json_decref(o);
  free(s);

  s = strata_api_response_json(STRATA_API_CHAT, "chatcmpl-1", 1, "m", ch, 1, &u,
                               NULL);
  o = json_loads(s, 0, &je);
  json_t *msg = json_object_get(
      json_array_get(json_object_get(o, "choices"), 0), "message");
  ck_assert_str_eq(json_string_value(json_object_get(msg, "role")),
                   "assistant");
  ck_assert_str_eq(json_string_value(json_object_get(msg, "content")), "hello");
  ck_assert_ptr_null(json_object_get(o, "metadata"));
  json_decref(o);
  free(s);
  json_decref(md);

  s = strata_api_chunk_json(STRATA_API_CHAT, "c", 1, "m", 0, 1, NULL, 0, NULL,
                            1);
  o = json_loads(s, 0, &je);
  ck_assert_str_eq(json_string_value(json_object_get(o, "object")),
                   "chat.completion.chunk");
  json_t *d = json_object_get(json_array_get(json_object_get(o, "choices"), 0),
                              "delta");
  ck_assert_str_eq(json_string_value(json_object_get(d, "role")), "assistant");
  ck_assert_str_eq(json_string_value(json_object_get(d, "content")), "");
  ck_assert(json_is_null(json_object_get(o, "usage")));
  json_decref(o);
  free(s);
  s = strata_api_chunk_json(STRATA_API_CHAT, "c", 1, "m", 2, 0, NULL, 0, "stop",
                            0);
  o = json_loads(s, 0, &je);
  json_t *c = json_array_get(json_object_get(o, "choices"), 0);
  ck_assert_int_eq(json_object_size(json_object_get(c, "delta")), 0);
  ck_assert_int_eq(json_integer_value(json_object_get(c, "index")), 2);
  ck_assert_str_eq(json_string_value(json_object_get(c, "finish_reason")),
                   "stop");
  ck_assert_ptr_null(json_object_get(o, "usage"));
  json_decref(o);
  free(s);
  s = strata_api_chunk_json(STRATA_API_COMPLETIONS, "c", 1, "m", 0, 0, "tok", 3,
                            NULL, 0);
  o = json_loads(s, 0, &je);
  c = json_array_get(json_object_get(o, "choices"), 0);
  ck_assert_str_eq(json_string_value(json_object_get(c, "text")), "tok");
  ck_assert(json_is_null(json_object_get(c, "finish_reason")));
  json_decref(o);
  free(s);
  s = strata_api_usage_chunk_json(STRATA_API_COMPLETIONS, "c", 1, "m", &u);
  o = json_loads(s, 0, &je);
  ck_assert_uint_eq(json_array_size(json_object_get(o, "choices")), 0);
  ck_assert_int_eq(json_integer_value(json_object_get(
                       json_object_get(o, "usage"), "completion_tokens")),
                   9);
  json_decref(o);
  free(s);
}
END_TEST

START_TEST(metrics_text) {
  static const double bounds[] = {0.01, 0.1, 1};
  struct strata_engine_metrics m;
  memset(&m, 0, sizeof m);
  m.num_running = 2;
  m.num_waiting = 5;
  m.kv.n_blocks = 100;
  m.kv.n_used = 25;
  m.kv.n_free = 70;
  m.kv.usage = 0.25;
  m.kv.queries = 1000;
  m.kv.hits = 640;
  m.kv.n_protected = 11;
  m.kv.n_hinted = 4;
  m.prompt_tokens_total = 77;
  m.generation_tokens_total = 88;
  m.ttft.bounds = bounds;
  m.ttft.n_bounds = 3;
  m.ttft.counts[0] = 1;
  m.ttft.counts[1] = 2;
  m.ttft.counts[3] = 4; /* above every bound */
  m.ttft.count = 7;
  m.ttft.sum = 9.5;
  struct strata_server_stats st = {.client_disconnects = 3, .cache_hints = {0, 12, 5}};
  char *t = strata_api_metrics_text(&m, "we\"ird\\name", &st);
  ck_assert_ptr_nonnull(t);
  const char *want[] = {
      "# TYPE vllm:num_requests_running gauge\n",
      "vllm:num_requests_running{model_name=\"we\\\"ird\\\\name\"} 2\n",
      "vllm:num_requests_waiting{model_name=\"we\\\"ird\\\\name\"} 5\n",
      "vllm:gpu_cache_usage_perc{model_name=\"we\\\"ird\\\\name\"} 0.25\n",
      "vllm:kv_cache_usage_perc{model_name=\"we\\\"ird\\\\name\"} 0.25\n",
      "vllm:prefix_cache_queries_total{model_name=\"we\\\"ird\\\\name\"} "
      "1000\n",
      "vllm:prefix_cache_hits_total{model_name=\"we\\\"ird\\\\name\"} 640\n",
      "vllm:prompt_tokens_total{model_name=\"we\\\"ird\\\\name\"} 77\n",
      "vllm:generation_tokens_total{model_name=\"we\\\"ird\\\\name\"} 88\n",
      "# TYPE vllm:time_to_first_token_seconds histogram\n",
      "vllm:time_to_first_token_seconds_bucket{model_name="
      "\"we\\\"ird\\\\name\",le=\"0.01\"} 1\n",
      "vllm:time_to_first_token_seconds_bucket{model_name="
      "\"we\\\"ird\\\\name\",le=\"0.1\"} 3\n",
      "vllm:time_to_first_token_seconds_bucket{model_name="
      "\"we\\\"ird\\\\name\",le=\"1\"} 3\n",
      "vllm:time_to_first_token_seconds_bucket{model_name="
      "\"we\\\"ird\\\\name\",le=\"+Inf\"} 7\n",
      "vllm:time_to_first_token_seconds_sum{model_name=\"we\\\"ird\\\\name\"} "
      "9.5\n",
      "vllm:time_to_first_token_seconds_count{model_name=\"we\\\"ird\\\\name\"}"
      " 7\n",
      "vllm:inter_token_latency_seconds_count{",
      "vllm:e2e_request_latency_seconds_bucket{model_name="
      "\"we\\\"ird\\\\name\",le=\"+Inf\"} 0\n",
      "strata:kv_blocks_used{model_name=\"we\\\"ird\\\\name\"} 25\n",
      "strata:kv_blocks_free{model_name=\"we\\\"ird\\\\name\"} 70\n",
      "strata:client_disconnects_total{model_name=\"we\\\"ird\\\\name\"} 3\n",
      "strata:kv_blocks_protected{model_name=\"we\\\"ird\\\\name\"} 11\n",
      "strata:kv_blocks_hinted{model_name=\"we\\\"ird\\\\name\"} 4\n",
      "# TYPE strata:cache_hints_total counter\n",
      "strata:cache_hints_total{model_name=\"we\\\"ird\\\\name\",action=\"keep\"} 12\n",
      "strata:cache_hints_total{model_name=\"we\\\"ird\\\\name\",action=\"release\"} 5\n",
  };
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    ck_assert_msg(strstr(t, want[i]) != NULL, "missing: %s", want[i]);
  free(t);
}
END_TEST

START_TEST(tokenize_bodies) {
  struct strata_api_tokenize t;
  struct strata_api_error e;
  const char *b = "{\"prompt\":\"hi\"}";
  ck_assert_int_eq(strata_api_parse_tokenize(b, strlen(b), &t, &e), 0);
  ck_assert(t.add_special_tokens && t.prompt && !t.messages);
  strata_api_tokenize_free(&t);
  b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"add_generation_"
      "prompt\":false}";
  ck_assert_int_eq(strata_api_parse_tokenize(b, strlen(b), &t, &e), 0);
  ck_assert(!t.add_special_tokens && t.messages && !t.add_generation_prompt);
  strata_api_tokenize_free(&t);
  static const char *const badt[] = {
      "{}",
      "{\"prompt\":1}",
      "{\"prompt\":\"x\",\"messages\":[{}]}",
      "{\"messages\":[]}",
      "{\"prompt\":\"x\",\"add_special_tokens\":1}",
      "[",
      "{\"prompt\":\"\xff\"}"};
  for (size_t i = 0; i < sizeof badt / sizeof *badt; i++) {
    ck_assert_int_eq(
        strata_api_parse_tokenize(badt[i], strlen(badt[i]), &t, &e), -1);
    ck_assert_int_eq(e.status, 400);
  }
  struct strata_api_detokenize d;
  b = "{\"tokens\":[1,2,511]}";
  ck_assert_int_eq(strata_api_parse_detokenize(b, strlen(b), 512, &d, &e), 0);
  ck_assert_uint_eq(d.n_tokens, 3);
  strata_api_detokenize_free(&d);
  b = "{\"tokens\":[]}";
  ck_assert_int_eq(strata_api_parse_detokenize(b, strlen(b), 512, &d, &e), 0);
  ck_assert_uint_eq(d.n_tokens, 0);
  strata_api_detokenize_free(&d);
  static const char *const badd[] = {"{}",
                                     "{\"tokens\":\"1 2\"}",
                                     "{\"tokens\":[512]}",
                                     "{\"tokens\":[-1]}",
                                     "{\"tokens\":[1.0]}",
                                     "{\"tokens\":[1],\"model\":[]}"};
  for (size_t i = 0; i < sizeof badd / sizeof *badd; i++) {
    ck_assert_int_eq(
        strata_api_parse_detokenize(badd[i], strlen(badd[i]), 512, &d, &e), -1);
    ck_assert_int_eq(e.status, 400);
  }
}
END_TEST

START_TEST(cache_stats_bodies) {
  struct strata_api_tokenize t;
  struct strata_api_error e;
  const char *b = "{\"prompt\":[1,2,511],\"cache_salt\":\"s\"}";
  ck_assert_int_eq(strata_api_parse_cache_stats(b, strlen(b), 512, &t, &e), 0);
  ck_assert_uint_eq(t.n_prompt_ids, 3);
  ck_assert_int_eq(t.prompt_ids[2], 511);
  ck_assert_str_eq(t.cache_salt, "s");
  strata_api_tokenize_free(&t);
  b = "{\"prompt\":\"hi\",\"add_special_tokens\":false}";
  ck_assert_int_eq(strata_api_parse_cache_stats(b, strlen(b), 512, &t, &e), 0);
  ck_assert(t.prompt && !t.add_special_tokens && !t.prompt_ids && !t.cache_salt);
  strata_api_tokenize_free(&t);
  /* /tokenize itself still takes text only */
  b = "{\"prompt\":[1,2]}";
  ck_assert_int_eq(strata_api_parse_tokenize(b, strlen(b), &t, &e), -1);
  static const struct {
    const char *body, *param;
  } bad[] = {
      {"{}", "prompt"},
      {"{\"prompt\":[]}", "prompt"},
      {"{\"prompt\":[512]}", "prompt"},
      {"{\"prompt\":[1.5]}", "prompt"},
      {"{\"prompt\":[\"a\"]}", "prompt"},
      {"{\"prompt\":{}}", "prompt"},
      {"{\"prompt\":\"x\",\"cache_salt\":\"\"}", "cache_salt"},
      {"{\"prompt\":\"x\",\"cache_salt\":[]}", "cache_salt"},
      {"{\"prompt\":\"x\",\"messages\":[{}]}", "prompt"},
      {"{\"messages\":{}}", "messages"},
      {"{\"prompt\":\"x\",\"model\":7}", "model"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ck_assert_msg(
        strata_api_parse_cache_stats(bad[i].body, strlen(bad[i].body), 512, &t, &e) == -1,
        "accepted %s", bad[i].body);
    ck_assert_int_eq(e.status, 400);
    ck_assert_msg(strcmp(e.param, bad[i].param) == 0, "%s: param %s", bad[i].body, e.param);
  }
}
END_TEST

START_TEST(cache_hint_bodies) {
  struct strata_api_cache_hint h;
  struct strata_api_error e;
  /* keep: defaults, then every field */
  const char *b = "{\"prompt\":[1,2,511],\"action\":\"keep\"}";
  ck_assert_int_eq(strata_api_parse_cache_hint(b, strlen(b), 512, &h, &e), 0);
  ck_assert_int_eq(h.action, 1);
  ck_assert(h.ttl == 300.0);
  ck_assert(!h.prefill && !h.force && h.priority == 0);
  ck_assert_uint_eq(h.t.n_prompt_ids, 3);
  ck_assert_int_eq(h.t.prompt_ids[2], 511);
  strata_api_cache_hint_free(&h);
  ck_assert_ptr_null(h.t.root);
  b = "{\"model\":\"m\",\"prompt\":\"hi\",\"cache_salt\":\"s\",\"action\":\"keep\","
      "\"ttl\":86400,\"prefill\":true,\"priority\":-7,\"force\":false,\"x\":[1]}";
  ck_assert_int_eq(strata_api_parse_cache_hint(b, strlen(b), 512, &h, &e), 0);
  ck_assert(h.action == 1 && h.ttl == 86400.0 && h.prefill && !h.force);
  ck_assert_int_eq(h.priority, -7);
  ck_assert_str_eq(h.t.model, "m");
  ck_assert_str_eq(h.t.cache_salt, "s");
  ck_assert(h.t.prompt && h.t.add_special_tokens);
  strata_api_cache_hint_free(&h);
  b = "{\"action\":\"keep\",\"ttl\":0.25,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
      "\"add_generation_prompt\":false,\"ttl\":0.5}"; /* jansson: the last duplicate wins */
  ck_assert_int_eq(strata_api_parse_cache_hint(b, strlen(b), 512, &h, &e), 0);
  ck_assert(h.t.messages && !h.t.add_generation_prompt && h.ttl == 0.5);
  strata_api_cache_hint_free(&h);
  /* release: force; ttl is 0; prefill false and a priority are fine */
  b = "{\"prompt\":[5],\"action\":\"release\",\"force\":true,\"prefill\":false,"
      "\"priority\":3,\"ttl\":null}";
  ck_assert_int_eq(strata_api_parse_cache_hint(b, strlen(b), 512, &h, &e), 0);
  ck_assert(h.action == 2 && h.force && !h.prefill && h.ttl == 0);
  strata_api_cache_hint_free(&h);
  static const struct {
    const char *body, *param;
  } bad[] = {
      {"{\"prompt\":\"x\"}", "action"},
      {"{\"prompt\":\"x\",\"action\":null}", "action"},
      {"{\"prompt\":\"x\",\"action\":\"\"}", "action"},
      {"{\"prompt\":\"x\",\"action\":\"KEEP\"}", "action"},
      {"{\"prompt\":\"x\",\"action\":\"keep \"}", "action"},
      {"{\"prompt\":\"x\",\"action\":1}", "action"},
      {"{\"prompt\":\"x\",\"action\":[\"keep\"]}", "action"},
      {"{\"prompt\":\"x\",\"action\":{\"keep\":true}}", "action"},
      {"{\"prompt\":\"x\",\"action\":true}", "action"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":0}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":-1}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":-0.0}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":86400.001}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":1e300}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":9223372036854775807}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":\"300\"}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":\"NaN\"}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":true}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":[300]}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"release\",\"ttl\":300}", "ttl"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"prefill\":1}", "prefill"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"prefill\":\"true\"}", "prefill"},
      {"{\"prompt\":\"x\",\"action\":\"release\",\"prefill\":true}", "prefill"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"force\":true}", "force"},
      {"{\"prompt\":\"x\",\"action\":\"release\",\"force\":0}", "force"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"priority\":2147483648}", "priority"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"priority\":-2147483649}", "priority"},
      {"{\"prompt\":\"x\",\"action\":\"keep\",\"priority\":1.5}", "priority"},
      {"{\"action\":\"keep\"}", "prompt"},
      {"{\"prompt\":[],\"action\":\"keep\"}", "prompt"},
      {"{\"prompt\":[512],\"action\":\"keep\"}", "prompt"},
      {"{\"prompt\":[-1],\"action\":\"keep\"}", "prompt"},
      {"{\"prompt\":7,\"action\":\"keep\"}", "prompt"},
      {"{\"prompt\":\"x\",\"messages\":[{}],\"action\":\"keep\"}", "prompt"},
      {"{\"messages\":[],\"action\":\"keep\"}", "messages"},
      {"{\"prompt\":\"x\",\"cache_salt\":\"\",\"action\":\"keep\"}", "cache_salt"},
      {"{\"prompt\":\"x\",\"model\":false,\"action\":\"keep\"}", "model"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    memset(&e, 0, sizeof e);
    ck_assert_msg(strata_api_parse_cache_hint(bad[i].body, strlen(bad[i].body), 512, &h, &e) == -1,
                  "accepted %s", bad[i].body);
    ck_assert_int_eq(e.status, 400);
    ck_assert_msg(strcmp(e.param, bad[i].param) == 0, "%s: param %s", bad[i].body, e.param);
    ck_assert_msg(strstr(e.message, bad[i].param) != NULL, "%s: message %s", bad[i].body,
                  e.message);
    ck_assert_ptr_null(h.t.root);
  }
  /* not JSON at all, or not an object: invalid_json, no param */
  static const char *const junk[] = {"", "{", "[]", "\"keep\"", "{\"ttl\":NaN}",
                                     "{\"ttl\":Infinity,\"action\":\"keep\",\"prompt\":\"x\"}",
                                     "{\"prompt\":\"x\",\"action\":\"keep\",\"ttl\":1e999}",
                                     "{\"prompt\":[1],\"action\":\"keep\"} x",
                                     /* NUL inside a string (jansson refuses it) */
                                     "{\"prompt\":\"x\",\"action\":\"keep\\u0000\"}"};
  for (size_t i = 0; i < sizeof junk / sizeof *junk; i++) {
    memset(&e, 0, sizeof e);
    ck_assert_msg(strata_api_parse_cache_hint(junk[i], strlen(junk[i]), 512, &h, &e) == -1,
                  "accepted %s", junk[i]);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.code, "invalid_json");
  }
  /* an unknown action is quoted, cut and ASCII-escaped in the message */
  char big[600];
  int k = snprintf(big, sizeof big, "{\"prompt\":\"x\",\"action\":\"");
  for (int i = 0; i < 200; i++) big[k++] = 'a';
  snprintf(big + k, sizeof big - (size_t)k, "\\n\xc3\xa9\"}");
  ck_assert_int_eq(strata_api_parse_cache_hint(big, strlen(big), 512, &h, &e), -1);
  ck_assert_str_eq(e.param, "action");
  ck_assert_ptr_nonnull(strstr(e.message, "\"aaaa"));
  ck_assert_ptr_nonnull(strstr(e.message, "..."));
  ck_assert_ptr_null(strchr(e.message, '\n'));
}
END_TEST

/* Randomly mutated hint bodies: a 400 naming a field (or invalid JSON), or
 * a hint that keeps every rule (the mutate() helper is below). */
static void mutate(char *buf, size_t *len, size_t cap, const char *alphabet, size_t n_alpha,
                   uint64_t *rng);
START_TEST(cache_hint_mutations) {
  static const char *const seeds[] = {
      "{\"prompt\":[1,2,3],\"action\":\"keep\",\"ttl\":30,\"prefill\":true,\"priority\":2}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"action\":\"release\","
      "\"force\":false,\"cache_salt\":\"s\"}",
  };
  static const char alphabet[] = "{}[]\":,0123456789.-eE\\u tnfalsrx\xff";
  uint64_t rng = 0x243f6a8885a308d3ull;
  char buf[512];
  int ok[3] = {0, 0, 0};
  for (int iter = 0; iter < 20000; iter++) {
    const char *seed = seeds[iter % 2];
    size_t len = strlen(seed);
    memcpy(buf, seed, len);
    for (int k = 0; k < 1 + iter % 3; k++)
      mutate(buf, &len, sizeof buf, alphabet, sizeof alphabet, &rng);
    struct strata_api_cache_hint h;
    struct strata_api_error e;
    memset(&e, 0, sizeof e);
    if (strata_api_parse_cache_hint(buf, len, 512, &h, &e) != 0) {
      ck_assert_int_eq(e.status, 400);
      ck_assert(e.param[0] || (e.code && (strcmp(e.code, "invalid_json") == 0 ||
                                          strcmp(e.code, "invalid_utf8") == 0)));
      continue;
    }
    ck_assert(h.action == 1 || h.action == 2);
    if (h.action == 1) {
      ck_assert(h.ttl > 0 && h.ttl <= 86400 && !h.force);
    } else {
      ck_assert(h.ttl == 0 && !h.prefill);
    }
    ck_assert(h.t.messages || h.t.prompt || h.t.n_prompt_ids > 0);
    for (size_t i = 0; i < h.t.n_prompt_ids; i++)
      ck_assert(h.t.prompt_ids[i] >= 0 && h.t.prompt_ids[i] < 512);
    ok[h.action]++;
    strata_api_cache_hint_free(&h);
  }
  ck_assert_int_gt(ok[1], 0);
  ck_assert_int_gt(ok[2], 0);
}
END_TEST

/* One random edit of buf[0..*len) (capacity cap): a byte replaced,
 * inserted or deleted, the byte drawn from alphabet[0..n_alpha). */
static void mutate(char *buf, size_t *len, size_t cap, const char *alphabet, size_t n_alpha,
                   uint64_t *rng) {
  *rng ^= *rng << 13;
  *rng ^= *rng >> 7;
  *rng ^= *rng << 17;
  size_t pos = *rng % *len;
  int op = (int)((*rng >> 20) % 3);
  char ch = alphabet[(*rng >> 32) % n_alpha];
  if (op == 0) {
    buf[pos] = ch;
  } else if (op == 1 && *len + 1 < cap) {
    memmove(buf + pos + 1, buf + pos, *len - pos);
    buf[pos] = ch;
    (*len)++;
  } else if (*len > 1) {
    memmove(buf + pos, buf + pos + 1, *len - pos - 1);
    (*len)--;
  }
}

/* The cache stats parser reads token-id prompts itself: on valid, hostile
 * and randomly mutated bodies it must give exactly what jansson's tree
 * gives (the ids, model and salt, or the same status, param and message). */
static void same_as_tree(const char *b, size_t len, int *fast_ok) {
  struct strata_api_tokenize t1, t2;
  struct strata_api_error e1, e2;
  memset(&e1, 0, sizeof e1);
  memset(&e2, 0, sizeof e2);
  int r1 = strata_api_parse_cache_stats(b, len, 512, &t1, &e1);
  int r2 = strata_api_parse_cache_stats_tree(b, len, 512, &t2, &e2);
  ck_assert_msg(r1 == r2, "%.*s: %d vs %d", (int)len, b, r1, r2);
  if (r1 == 0) {
    ck_assert_uint_eq(t1.n_prompt_ids, t2.n_prompt_ids);
    if (t1.n_prompt_ids)
      ck_assert(memcmp(t1.prompt_ids, t2.prompt_ids, t1.n_prompt_ids * sizeof(int32_t)) == 0);
    ck_assert((t1.model == NULL) == (t2.model == NULL));
    if (t1.model) ck_assert_str_eq(t1.model, t2.model);
    ck_assert((t1.cache_salt == NULL) == (t2.cache_salt == NULL));
    if (t1.cache_salt) ck_assert_str_eq(t1.cache_salt, t2.cache_salt);
    ck_assert((t1.prompt == NULL) == (t2.prompt == NULL));
    *fast_ok += t1.n_prompt_ids > 0;
    strata_api_tokenize_free(&t1);
    strata_api_tokenize_free(&t2);
  } else {
    ck_assert_int_eq(e1.status, e2.status);
    ck_assert_str_eq(e1.param, e2.param);
    ck_assert_msg(strcmp(e1.message, e2.message) == 0, "%.*s: '%s' vs '%s'", (int)len, b,
                  e1.message, e2.message);
  }
}

START_TEST(cache_stats_fast_ids) {
  static const char *const bodies[] = {
      "{\"prompt\":[1,2,511]}",
      " {\r\n\"model\" : \"m\\\"x\" , \"prompt\" :\t[ 0 , -0,7 ] ,\"cache_salt\":\"s\"} \n",
      "{\"x\":{\"prompt\":[1]},\"prompt\":[3,4],\"y\":[[\"]\"],{}],\"z\":null}",
      "{\"prompt\":[1,2],\"prompt\":[3]}",
      "{\"pro\\u006dpt\":[1,2]}",
      "{\"prompt\":[01]}",
      "{\"prompt\":[1e2]}",
      "{\"prompt\":[1.0]}",
      "{\"prompt\":[512]}",
      "{\"prompt\":[-1]}",
      "{\"prompt\":[99999999999999999999999]}",
      "{\"prompt\":[123456789012345678]}",
      "{\"prompt\":[1,,2]}",
      "{\"prompt\":[1,2,]}",
      "{\"prompt\":[1 2]}",
      "{\"prompt\":[]}",
      "{\"prompt\":[1],\"x\":[1,,2]}",
      "{\"prompt\":[1],\"x\":\"\xff\"}",
      "{\"prompt\":[1]}garbage",
      "{\"prompt\":[1],}",
      "{\"prompt\":[1],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
      "{\"prompt\":[1],\"cache_salt\":\"\"}",
      "{\"prompt\":[1],\"model\":7}",
      "[1,2]",
      "{\"prompt\":[1]",
      "{\"prompt\":[1],\"x\":\"unterminated}",
  };
  int fast_ok = 0;
  for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++)
    same_as_tree(bodies[i], strlen(bodies[i]), &fast_ok);
  ck_assert_int_ge(fast_ok, 3);
  /* random mutations of a body with a long id array and other members */
  char seed[4096];
  int n = snprintf(seed, sizeof seed, "{\"model\":\"m\",\"x\":[{\"a\":\"]\\\"\"},2],\"prompt\":[");
  for (int i = 0; i < 300; i++) n += snprintf(seed + n, sizeof seed - (size_t)n, "%s%d", i ? "," : "", (i * 37) % 500);
  n += snprintf(seed + n, sizeof seed - (size_t)n, "],\"cache_salt\":\"salt\"}");
  static const char alphabet[] = "{}[]\":,0123456789.-eE\\ \t\nabc\xff";
  uint64_t rng = 0x2545f4914f6cdd1dull;
  char buf[4200];
  for (int iter = 0; iter < 5000; iter++) {
    size_t len = (size_t)n;
    memcpy(buf, seed, len);
    for (int k = 0; k < 1 + iter % 3; k++)
      mutate(buf, &len, sizeof buf, alphabet, sizeof alphabet - 1, &rng);
    same_as_tree(buf, len, &fast_ok);
  }
  ck_assert_int_gt(fast_ok, 100);
}
END_TEST

/* Random byte mutations of valid bodies: every result is accepted or a 4xx,
 * never a crash or a leak (run under ASan in CI). */
START_TEST(mutation_fuzz) {
  static const char *const seeds[] = {
      "{\"model\":\"m\",\"prompt\":\"Once upon a "
      "time\",\"max_tokens\":7,\"n\":2,\"temperature\":0.5,"
      "\"stop\":[\"a\",\"b\"],\"metadata\":{\"k\":\"v\"},\"stream\":true,"
      "\"stream_options\":{\"include_usage\":true}}",
      "{\"prompt\":[1,2,3,4],\"stop_token_ids\":[5],\"seed\":42,\"top_k\":5,"
      "\"min_p\":0.1,\"priority\":1}",
  };
  static const char alphabet[] =
      "{}[]\":,0123456789.-eE\\u tnfalsrx\xff\xc3\xa9";
  const size_t n_alpha =
      sizeof alphabet; /* with the final NUL: embedded NULs too */
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  char buf[512];
  int accepted = 0;
  for (int iter = 0; iter < 20000; iter++) {
    const char *seed = seeds[iter % 2];
    size_t len = strlen(seed);
    memcpy(buf, seed, len);
    int muts = 1 + iter % 4;
    for (int k = 0; k < muts; k++) mutate(buf, &len, sizeof buf, alphabet, n_alpha, &rng);
    struct strata_api_error e;
    int st = status_of(iter % 3 ? STRATA_API_COMPLETIONS : STRATA_API_CHAT, buf,
                       len, &e);
    ck_assert(st == 200 || st == 400);
    accepted += st == 200;
  }
  ck_assert_int_gt(accepted, 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("server");
  TCase *tc = tcase_create("api");
  tcase_add_test(tc, valid_completion_fields);
  tcase_add_test(tc, configured_limits);
  tcase_add_test(tc, valid_chat_fields);
  tcase_add_test(tc, malformed_json);
  tcase_add_test(tc, invalid_utf8);
  tcase_add_test(tc, wrong_types);
  tcase_add_test(tc, out_of_range);
  tcase_add_test(tc, error_json_shape);
  tcase_add_test(tc, string_sanitizing);
  tcase_add_test(tc, response_shapes);
  tcase_add_test(tc, metrics_text);
  tcase_add_test(tc, tokenize_bodies);
  tcase_add_test(tc, cache_stats_bodies);
  tcase_add_test(tc, cache_hint_bodies);
  tcase_add_test(tc, cache_hint_mutations);
  tcase_add_test(tc, cache_stats_fast_ids);
  tcase_add_test(tc, mutation_fuzz);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
