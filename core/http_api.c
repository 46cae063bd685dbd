/* The OpenAI-compatible HTTP API without the sockets; see http_api.h. */
#include "config.h"

#include "http_api.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "tokenizer.h"
#include "util.h"

/* ---- errors ------------------------------------------------------------- */

const char *strata_api_status_reason(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 413:
    return "Payload Too Large";
  case 429:
    return "Too Many Requests";
  case 500:
    return "Internal Server Error";
  case 503:
    return "Service Unavailable";
  default:
    return "Error";
  }
}

static const char *status_type(int status) {
  switch (status) {
  case 401:
    return "authentication_error";
  case 404:
    return "not_found_error";
  case 429:
    return "rate_limit_error";
  case 503:
    return "service_unavailable";
  default:
    return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

int strata_api_errorf(struct strata_api_error *e, int status, const char *type,
                      const char *code, const char *param, const char *fmt,
                      ...) {
  e->status = status;
  e->type = type ? type : status_type(status);
  e->code = code;
  snprintf(e->param, sizeof e->param, "%s", param ? param : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
  return -1;
}

json_t *strata_api_string(const char *text, size_t len) {
  if (!text) return json_string("");
  json_t *s = json_stringn(text, len);
  if (s) return s;
  const unsigned char *u = (const unsigned char *)text;
  size_t n = strata_utf8_sanitize(u, len, 1, NULL, NULL);
  char *clean = malloc(n + 1);
  if (!clean) return NULL;
  strata_utf8_sanitize(u, len, 1, clean, NULL);
  s = json_stringn(clean, n);
  free(clean);
  return s;
}

static char *dump_compact(const json_t *j) {
  return json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
}

char *strata_api_error_json(const struct strata_api_error *e) {
  json_t *o =
      json_pack("{s:{s:o,s:s,s:o,s:o}}", "error", "message",
                strata_api_string(e->message, strlen(e->message)), "type",
                e->type ? e->type : status_type(e->status), "param",
                e->param[0] ? json_string(e->param) : json_null(), "code",
                e->code ? json_string(e->code) : json_null());
  if (!o) return NULL;
  char *s = dump_compact(o);
  json_decref(o);
  return s;
}

/* ---- request parsing ------------------------------------------------------
 */

static int bad(struct strata_api_error *e, const char *param, const char *fmt,
               ...) __attribute__((format(printf, 3, 4)));
static int bad(struct strata_api_error *e, const char *param, const char *fmt,
               ...) {
  char msg[sizeof e->message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return strata_api_errorf(e, 400, NULL, NULL, param, "%s", msg);
}

static int unsupported(struct strata_api_error *e, const char *param,
                       const char *what) {
  return strata_api_errorf(e, 400, NULL, "unsupported_parameter", param,
                           "'%s' %s is not supported by this server", param,
                           what);
}

static const char *json_kind(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT:
    return "an object";
  case JSON_ARRAY:
    return "an array";
  case JSON_STRING:
    return "a string";
  case JSON_INTEGER:
    return "an integer";
  case JSON_REAL:
    return "a number";
  case JSON_TRUE:
  case JSON_FALSE:
    return "a boolean";
  case JSON_NULL:
    return "null";
  }
  return "?";
}

/* The member key of o, or NULL when absent or JSON null. */
static json_t *opt(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  return v && !json_is_null(v) ? v : NULL;
}

static int get_bool(json_t *o, const char *key, int *out,
                    struct strata_api_error *e) {
  json_t *v = opt(o, key);
  if (!v) return 0;
  if (!json_is_boolean(v))
    return bad(e, key, "'%s' must be a boolean, got %s", key, json_kind(v));
  *out = json_is_true(v);
  return 0;
}

static int get_int(json_t *o, const char *key, int64_t lo, int64_t hi,
                   int64_t *out, int *present, struct strata_api_error *e) {
  json_t *v = opt(o, key);
  if (present) *present = v != NULL;
  if (!v) return 0;
  if (!json_is_integer(v))
    return bad(e, key, "'%s' must be an integer, got %s", key, json_kind(v));
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi)
    return bad(e, key,
               "'%s' must be in [%" PRId64 ", %" PRId64
               "], got %" JSON_INTEGER_FORMAT,
               key, lo, hi, x);
  *out = x;
  return 0;
}

/* A number in [lo, hi] (lo_open: lo excluded). */
static int get_num(json_t *o, const char *key, double lo, int lo_open,
                   double hi, double *out, int *present,
                   struct strata_api_error *e) {
  json_t *v = opt(o, key);
  if (present) *present = v != NULL;
  if (!v) return 0;
  if (!json_is_number(v))
    return bad(e, key, "'%s' must be a number, got %s", key, json_kind(v));
  double x = json_number_value(v);
  if (!isfinite(x) || x < lo || (lo_open && x == lo) || x > hi)
    return bad(e, key, "'%s' must be in %c%g, %g], got %g", key,
               lo_open ? '(' : '[', lo, hi, x);
  *out = x;
  return 0;
}

static int get_str(json_t *o, const char *key, const char **out, size_t *len,
                   struct strata_api_error *e) {
  json_t *v = opt(o, key);
  if (!v) return 0;
  if (!json_is_string(v))
    return bad(e, key, "'%s' must be a string, got %s", key, json_kind(v));
  *out = json_string_value(v);
  if (len) *len = json_string_length(v);
  return 0;
}

/* An array of token ids in [0, n_vocab); empty is an error. */
/* Token id x at param[i] in [0, n_vocab), or a 400 naming it. */
static int check_id(const char *param, size_t i, json_int_t x, int32_t n_vocab,
                    struct strata_api_error *e) {
  if (x >= 0 && x < n_vocab) return 0;
  return bad(e, param,
             "'%s[%zu]': token id %" JSON_INTEGER_FORMAT " is out of the vocabulary [0, %d)",
             param, i, x, n_vocab);
}

#define MAX_IDS ((size_t)16 << 20) /* token ids in one field */

/* A count of len token ids in param: neither none nor more than max. */
static int check_n_ids(const char *param, size_t len, size_t max, struct strata_api_error *e) {
  if (len == 0) return bad(e, param, "'%s' must not be empty", param);
  if (len > max)
    return bad(e, param, "'%s' has %zu entries, at most %zu allowed", param, len, max);
  return 0;
}

static int get_ids(json_t *arr, const char *param, int32_t n_vocab, size_t max,
                   int32_t **out, size_t *n, struct strata_api_error *e) {
  size_t len = json_array_size(arr);
  if (check_n_ids(param, len, max, e)) return -1;
  int32_t *ids = malloc(len * sizeof *ids);
  if (!ids) return strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
  for (size_t i = 0; i < len; i++) {
    json_t *v = json_array_get(arr, i);
    if (!json_is_integer(v)) {
      free(ids);
      return bad(e, param, "'%s[%zu]' must be an integer token id, got %s",
                 param, i, json_kind(v));
    }
    json_int_t x = json_integer_value(v);
    if (check_id(param, i, x, n_vocab, e)) {
      free(ids);
      return -1;
    }
    ids[i] = (int32_t)x;
  }
  *out = ids;
  *n = len;
  return 0;
}

static json_t *load_object(const char *body, size_t len,
                           struct strata_api_error *e) {
  json_error_t je;
  json_t *root = json_loadb(body, len, 0, &je);
  if (!root) {
    if (json_error_code(&je) == json_error_invalid_utf8)
      strata_api_errorf(e, 400, NULL, "invalid_utf8", NULL,
                        "the request body is not valid UTF-8 (byte %d)",
                        je.position);
    else
      strata_api_errorf(
          e, 400, NULL, "invalid_json", NULL,
          "the request body is not valid JSON: %s (line %d, column %d)",
          je.text, je.line, je.column);
    return NULL;
  }
  if (!json_is_object(root)) {
    strata_api_errorf(e, 400, NULL, "invalid_json", NULL,
                      "the request body must be a JSON object, got %s",
                      json_kind(root));
    json_decref(root);
    return NULL;
  }
  return root;
}

/* Fields this server knows but cannot honour: fine at their neutral value,
 * a 400 naming the field otherwise. */
static int check_unsupported(json_t *o, enum strata_api_kind kind, int32_t n, int32_t max_n,
                             struct strata_api_error *e) {
  int present;
  int64_t i;
  if (get_int(o, "best_of", 1, max_n, &i, &present, e)) return -1;
  if (present && i != n) return unsupported(e, "best_of", "other than n");
  json_t *v;
  if (kind == STRATA_API_COMPLETIONS) {
    if ((v = opt(o, "logprobs"))) {
      if (!json_is_integer(v))
        return bad(e, "logprobs", "'logprobs' must be an integer, got %s",
                   json_kind(v));
      return unsupported(e, "logprobs", "(log probabilities)");
    }
    const char *suffix = NULL;
    if (get_str(o, "suffix", &suffix, NULL, e)) return -1;
    if (suffix && *suffix) return unsupported(e, "suffix", "(insertion)");
  } else {
    int lp = 0;
    if (get_bool(o, "logprobs", &lp, e)) return -1;
    if (lp) return unsupported(e, "logprobs", "(log probabilities)");
    if (get_int(o, "top_logprobs", 0, 20, &i, &present, e)) return -1;
    if (present && i)
      return unsupported(e, "top_logprobs", "(log probabilities)");
    if ((v = opt(o, "tools"))) {
      if (!json_is_array(v))
        return bad(e, "tools", "'tools' must be an array, got %s",
                   json_kind(v));
      if (json_array_size(v)) return unsupported(e, "tools", "(tool calling)");
    }
    if ((v = opt(o, "tool_choice"))) {
      if (!json_is_string(v) || (strcmp(json_string_value(v), "none") &&
                                 strcmp(json_string_value(v), "auto")))
        return unsupported(e, "tool_choice", "other than \"none\" or \"auto\"");
    }
    if ((v = opt(o, "response_format"))) {
      if (!json_is_object(v))
        return bad(e, "response_format",
                   "'response_format' must be an object, got %s", json_kind(v));
      json_t *t = json_object_get(v, "type");
      if (!json_is_string(t) || strcmp(json_string_value(t), "text") != 0)
        return unsupported(e, "response_format",
                           "other than {\"type\": \"text\"}");
    }
  }
  return 0;
}

/* group_id and affinity_hint, from the body or else from metadata. */
static int parse_group(json_t *o, struct strata_api_request *r, struct strata_api_error *e) {
  json_t *md = opt(o, "metadata");
  if (!json_is_object(md)) md = NULL;
  json_t *g = opt(o, "group_id");
  const char *gparam = "group_id";
  static const char *const keys[] = {"group_id", "group", "affinity"};
  for (size_t i = 0; !g && md && i < 3; i++)
    if ((g = opt(md, keys[i]))) gparam = "metadata";
  if (g) {
    if (!json_is_string(g) || json_string_length(g) == 0 || json_string_length(g) > 256)
      return bad(e, gparam, "'group_id' must be a non-empty string of at most 256 bytes, got %s",
                 json_is_string(g) ? "an empty or longer string" : json_kind(g));
    r->group_id = json_string_value(g);
  }
  json_t *h = opt(o, "affinity_hint");
  const char *hparam = "affinity_hint";
  if (!h && md && (h = opt(md, "affinity_hint"))) hparam = "metadata";
  if (h) {
    const char *v = json_is_string(h) ? json_string_value(h) : NULL;
    if (v && strcmp(v, "none") == 0)
      r->affinity_hint = 0;
    else if (v && strcmp(v, "keep") == 0)
      r->affinity_hint = 1;
    else if (v && strcmp(v, "release") == 0)
      r->affinity_hint = 2;
    else
      return bad(e, hparam, "'affinity_hint' must be \"keep\", \"release\" or \"none\"");
  }
  return 0;
}

/* One prompt p (a string or token ids) into q; param names it. */
static int parse_one_prompt(json_t *p, const char *param, const struct strata_api_limits *lim,
                            struct strata_api_prompt *q, struct strata_api_error *e) {
  if (json_is_string(p)) {
    q->text = json_string_value(p);
    q->len = json_string_length(p);
    return 0;
  }
  if (!json_is_array(p))
    return bad(e, "prompt", "'%s' must be a string or an array of token ids, got %s", param,
               json_kind(p));
  return get_ids(p, param, lim->n_vocab, MAX_IDS, &q->ids, &q->n_ids, e);
}

static int parse_prompt(json_t *o, const struct strata_api_limits *lim,
                        struct strata_api_request *r,
                        struct strata_api_error *e) {
  json_t *p = json_object_get(o, "prompt");
  if (!p || json_is_null(p)) return bad(e, "prompt", "'prompt' is required");
  if (json_is_array(p) && json_array_size(p) == 0)
    return bad(e, "prompt", "'prompt' must not be empty");
  json_t *first = json_is_array(p) ? json_array_get(p, 0) : NULL;
  /* a batch: an array of strings or of token-id arrays */
  size_t n = first && (json_is_string(first) || json_is_array(first)) ? json_array_size(p) : 1;
  if (n > STRATA_API_MAX_PROMPTS)
    return bad(e, "prompt", "'prompt' holds %zu prompts, at most %d allowed", n,
               STRATA_API_MAX_PROMPTS);
  r->prompts = calloc(n, sizeof *r->prompts);
  if (!r->prompts) return strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
  r->n_prompts = n;
  if (n == 1 && !(first && (json_is_string(first) || json_is_array(first)))) {
    if (parse_one_prompt(p, "prompt", lim, &r->prompts[0], e)) return -1;
  } else {
    for (size_t i = 0; i < n; i++) {
      char param[32];
      snprintf(param, sizeof param, "prompt[%zu]", i);
      json_t *pi = json_array_get(p, i);
      if (!json_is_string(pi) && !json_is_array(pi))
        return bad(e, "prompt", "'%s' must be a string or an array of token ids, got %s", param,
                   json_kind(pi));
      if (json_is_array(pi) && json_array_size(pi) == 0)
        return bad(e, "prompt", "'%s' must not be empty", param);
      if (parse_one_prompt(pi, param, lim, &r->prompts[i], e)) return -1;
    }
  }
  r->prompt = r->prompts[0].text;
  r->prompt_len = r->prompts[0].len;
  r->prompt_ids = r->prompts[0].ids;
  r->n_prompt_ids = r->prompts[0].n_ids;
  return 0;
}

static int parse_stop(json_t *o, int32_t max_stop, struct strata_api_request *r,
                      struct strata_api_error *e) {
  json_t *s = opt(o, "stop");
  if (!s) return 0;
  size_t n = json_is_string(s)  ? 1
             : json_is_array(s) ? json_array_size(s)
                                : (size_t)-1;
  if (n == (size_t)-1)
    return bad(e, "stop",
               "'stop' must be a string or an array of strings, got %s",
               json_kind(s));
  if (n > (size_t)max_stop)
    return bad(e, "stop", "'stop' has %zu strings, at most %d allowed (server.max_stop)", n,
               max_stop);
  if (n == 0) return 0;
  r->stop = calloc(n, sizeof *r->stop);
  if (!r->stop)
    return strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
  for (size_t i = 0; i < n; i++) {
    json_t *v = json_is_string(s) ? s : json_array_get(s, i);
    if (!json_is_string(v))
      return bad(e, "stop", "'stop[%zu]' must be a string, got %s", i,
                 json_kind(v));
    if (json_string_length(v) == 0)
      return bad(e, "stop", "'stop' strings must not be empty");
    if (json_string_length(v) > 1024)
      return bad(e, "stop", "'stop' strings must be at most 1024 bytes");
    if (strlen(json_string_value(v)) != json_string_length(v))
      return bad(e, "stop", "'stop' strings must not contain NUL");
    r->stop[i] = json_string_value(v);
  }
  r->n_stop = n;
  return 0;
}

static int parse_metadata(json_t *o, const struct strata_api_limits *lim,
                          struct strata_api_request *r,
                          struct strata_api_error *e) {
  json_t *m = opt(o, "metadata");
  if (!m) return 0;
  if (!json_is_object(m))
    return bad(e, "metadata",
               "'metadata' must be an object of string values, got %s",
               json_kind(m));
  const char *k;
  json_t *v;
  json_object_foreach(m, k, v) {
    if (!json_is_string(v))
      return bad(e, "metadata", "'metadata.%.64s' must be a string, got %s", k,
                 json_kind(v));
  }
  r->metadata_text = dump_compact(m);
  if (!r->metadata_text)
    return strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
  size_t len = strlen(r->metadata_text);
  if (len > lim->max_metadata_bytes)
    return bad(e, "metadata",
               "'metadata' is %zu bytes as JSON; at most %zu allowed", len,
               lim->max_metadata_bytes);
  r->metadata = m;
  return 0;
}

int strata_api_parse_request(enum strata_api_kind kind, const char *body,
                             size_t len, const struct strata_api_limits *lim,
                             struct strata_api_request *r,
                             struct strata_api_error *e) {
  memset(r, 0, sizeof *r);
  const int32_t max_n = lim->max_n > 0 && lim->max_n < STRATA_API_MAX_N ? lim->max_n
                                                                         : STRATA_API_MAX_N;
  const int32_t max_stop = lim->max_stop > 0 && lim->max_stop < STRATA_API_MAX_STOP_LIMIT
                               ? lim->max_stop
                               : lim->max_stop > 0 ? STRATA_API_MAX_STOP_LIMIT
                                                   : STRATA_API_MAX_STOP;
  r->kind = kind;
  r->n = 1;
  r->sampling = STRATA_SAMPLING_DEFAULTS;
  r->add_special_tokens = 1;
  r->add_generation_prompt = 1;
  json_t *o = r->root = load_object(body, len, e);
  if (!o) return -1;
  int64_t i;
  double x;
  int present;
  if (get_str(o, "model", &r->model, NULL, e)) goto fail;
  if (kind == STRATA_API_COMPLETIONS) {
    if (parse_prompt(o, lim, r, e)) goto fail;
    if (get_bool(o, "echo", &r->echo, e)) goto fail;
    if (get_bool(o, "add_special_tokens", &r->add_special_tokens, e)) goto fail;
  } else {
    json_t *m = json_object_get(o, "messages");
    if (!m || json_is_null(m)) {
      bad(e, "messages", "'messages' is required");
      goto fail;
    }
    if (!json_is_array(m)) {
      bad(e, "messages", "'messages' must be an array, got %s", json_kind(m));
      goto fail;
    }
    if (json_array_size(m) == 0) {
      bad(e, "messages", "'messages' must not be empty");
      goto fail;
    }
    r->messages = m;
    if (get_bool(o, "add_generation_prompt", &r->add_generation_prompt, e))
      goto fail;
  }
  if (get_bool(o, "stream", &r->stream, e)) goto fail;
  json_t *so = opt(o, "stream_options");
  if (so) {
    if (!json_is_object(so)) {
      bad(e, "stream_options", "'stream_options' must be an object, got %s",
          json_kind(so));
      goto fail;
    }
    if (!r->stream) {
      bad(e, "stream_options",
          "'stream_options' is only allowed with \"stream\": true");
      goto fail;
    }
    if (get_bool(so, "include_usage", &r->include_usage, e)) {
      snprintf(e->param, sizeof e->param, "stream_options.include_usage");
      goto fail;
    }
  }
  if (get_int(o, "max_tokens", 1, INT32_MAX, &i, &present, e)) goto fail;
  if (present) r->max_tokens = (int32_t)i;
  if (kind == STRATA_API_CHAT) {
    if (get_int(o, "max_completion_tokens", 1, INT32_MAX, &i, &present, e))
      goto fail;
    if (present) r->max_tokens = (int32_t)i;
  }
  if (get_int(o, "n", 1, max_n, &i, &present, e)) goto fail;
  if (present) r->n = (int32_t)i;
  if (r->n_prompts * (size_t)r->n > STRATA_API_MAX_CHOICES) {
    bad(e, "n", "%zu prompts with n = %d make %zu choices, at most %d allowed", r->n_prompts,
        r->n, r->n_prompts * (size_t)r->n, STRATA_API_MAX_CHOICES);
    goto fail;
  }
  if (get_num(o, "temperature", 0, 0, 2, &x, &present, e)) goto fail;
  if (present) r->sampling.temperature = (float)x;
  if (get_num(o, "top_p", 0, 1, 1, &x, &present, e)) goto fail;
  if (present) r->sampling.top_p = (float)x;
  if (get_int(o, "top_k", -1, INT32_MAX, &i, &present, e)) goto fail;
  if (present) r->sampling.top_k = i < 0 ? 0 : (int32_t)i;
  if (get_num(o, "min_p", 0, 0, 1, &x, &present, e)) goto fail;
  if (present) r->sampling.min_p = (float)x;
  if (get_int(o, "seed", INT64_MIN, INT64_MAX, &i, &r->has_seed, e)) goto fail;
  if (r->has_seed) r->sampling.seed = (uint64_t)i;
  if (get_int(o, "priority", INT32_MIN, INT32_MAX, &i, &present, e)) goto fail;
  if (present) r->priority = (int32_t)i;
  if (get_bool(o, "ignore_eos", &r->ignore_eos, e)) goto fail;
  if (parse_group(o, r, e)) goto fail;
  {
    int64_t mt = 0;
    int had = 0;
    if (get_int(o, "min_tokens", 0, INT32_MAX, &mt, &had, e)) goto fail;
    r->min_tokens = (int32_t)mt;
  }
  size_t salt_len = 0;
  if (get_str(o, "cache_salt", &r->cache_salt, &salt_len, e)) goto fail;
  if (r->cache_salt && (salt_len == 0 || strlen(r->cache_salt) != salt_len)) {
    bad(e, "cache_salt", "'cache_salt' must be a non-empty string without NUL");
    goto fail;
  }
  if (get_str(o, "user", &r->user, NULL, e)) goto fail;
  if (parse_stop(o, max_stop, r, e)) goto fail;
  json_t *st = opt(o, "stop_token_ids");
  if (st) {
    if (!json_is_array(st)) {
      bad(e, "stop_token_ids",
          "'stop_token_ids' must be an array of token ids, got %s",
          json_kind(st));
      goto fail;
    }
    if (json_array_size(st) &&
        get_ids(st, "stop_token_ids", lim->n_vocab, 256, &r->stop_token_ids,
                &r->n_stop_token_ids, e))
      goto fail;
  }
  if (parse_metadata(o, lim, r, e)) goto fail;
  if (check_unsupported(o, kind, r->n, max_n, e)) goto fail;
  char serr[256];
  if (strata_sampling_check(&r->sampling, serr, sizeof serr) != 0) {
    bad(e, NULL, "%s", serr);
    goto fail;
  }
  return 0;
fail:
  strata_api_request_free(r);
  return -1;
}

void strata_api_request_free(struct strata_api_request *r) {
  for (size_t i = 0; i < r->n_prompts; i++) free(r->prompts[i].ids);
  free(r->prompts);
  free(r->stop);
  free(r->stop_token_ids);
  free(r->metadata_text);
  json_decref(r->root);
  memset(r, 0, sizeof *r);
}

/* /tokenize and /v1/cache/stats: n_vocab > 0 also takes token-id prompts
 * and a cache_salt (cache stats). */
/* ---- token-id arrays without a tree ----------------------------------------
 * jansson builds a node (a malloc) per array element: a 4,096-id prompt took
 * about 0.4 ms to parse on a 2-core VM, half of the 1 ms that
 * /v1/cache/stats may take. split_ids() reads the integers of the top-level
 * "prompt" member itself and gives jansson the rest of the body, with that
 * array cut down to []. It is deliberately narrow: it declines (and jansson
 * parses the whole body as before, with its own error messages) on anything
 * but a plain, well-formed object whose "prompt" is an array of JSON
 * integers of at most 18 digits: a key with an escape, a second "prompt", a
 * fraction or exponent, a leading zero, an empty array, a value it cannot
 * skip. What it accepts, jansson would accept with the same integers (the
 * unit tests compare both on hostile bodies). */
struct split_ids {
  char *rest; /* the body with the array replaced by [] (malloc'd) */
  size_t rest_len;
  int64_t *ids; /* as written, range not checked (malloc'd) */
  size_t n;
};

static const char *ws_skip(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* Past a JSON string starting at p ('"'), or NULL. */
static const char *str_skip(const char *p, const char *end) {
  for (p++; p < end; p++) {
    if (*p == '"') return p + 1;
    if (*p == '\\' && ++p >= end) return NULL;
  }
  return NULL;
}

/* Past the value starting at p, or NULL; jansson validates it later. */
static const char *value_skip(const char *p, const char *end) {
  if (p >= end) return NULL;
  if (*p == '"') return str_skip(p, end);
  int depth = 0;
  for (; p < end; p++) {
    if (*p == '"') {
      if (!(p = str_skip(p, end))) return NULL;
      p--;
    } else if (*p == '[' || *p == '{') {
      depth++;
    } else if (*p == ']' || *p == '}') {
      if (depth == 0) return p;
      if (--depth == 0) return p + 1;
    } else if (*p == ',' && depth == 0) {
      return p;
    }
  }
  return depth == 0 ? p : NULL;
}

/* 1: split (free with split_ids_free), 0: declined, -1: out of memory. */
static int split_ids(const char *body, size_t len, struct split_ids *s) {
  memset(s, 0, sizeof *s);
  const char *p = body, *end = body + len, *a0 = NULL, *a1 = NULL;
  p = ws_skip(p, end);
  if (p >= end || *p++ != '{') return 0;
  for (int first = 1;; first = 0) {
    p = ws_skip(p, end);
    if (first && p < end && *p == '}') goto decline; /* no prompt */
    if (p >= end || *p != '"') goto decline;
    const char *k = ++p;
    while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) p++;
    if (p >= end || *p != '"') goto decline;
    int is_prompt = p - k == 6 && memcmp(k, "prompt", 6) == 0;
    p = ws_skip(p + 1, end);
    if (p >= end || *p++ != ':') goto decline;
    p = ws_skip(p, end);
    if (is_prompt) {
      if (a0 || p >= end || *p != '[') goto decline;
      a0 = p;
      size_t cap = 0;
      for (p++;;) {
        p = ws_skip(p, end);
        const char *d = p;
        int neg = p < end && *p == '-';
        if (neg) d = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        size_t nd = (size_t)(p - d);
        if (nd == 0 || nd > 18 || (nd > 1 && *d == '0')) goto decline;
        if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) goto decline;
        int64_t v = 0;
        for (; d < p; d++) v = v * 10 + (*d - '0');
        if (s->n == cap) {
          cap = cap ? 2 * cap : 1024;
          int64_t *g = realloc(s->ids, cap * sizeof *g);
          if (!g) goto oom;
          s->ids = g;
        }
        s->ids[s->n++] = neg ? -v : v;
        p = ws_skip(p, end);
        if (p < end && *p == ',') {
          p++;
          continue;
        }
        if (p < end && *p == ']') break;
        goto decline;
      }
      a1 = ++p;
    } else if (!(p = value_skip(p, end))) {
      goto decline;
    }
    p = ws_skip(p, end);
    if (p < end && *p == ',') {
      p++;
      continue;
    }
    if (p < end && *p == '}') break;
    goto decline;
  }
  if (!a0 || ws_skip(p + 1, end) != end) goto decline;
  s->rest_len = (size_t)(a0 - body) + 2 + (size_t)(end - a1);
  s->rest = malloc(s->rest_len);
  if (!s->rest) goto oom;
  memcpy(s->rest, body, (size_t)(a0 - body));
  memcpy(s->rest + (a0 - body), "[]", 2);
  memcpy(s->rest + (a0 - body) + 2, a1, (size_t)(end - a1));
  return 1;
decline:
  free(s->ids);
  memset(s, 0, sizeof *s);
  return 0;
oom:
  free(s->ids);
  memset(s, 0, sizeof *s);
  return -1;
}

static int parse_tokenize_like(const char *body, size_t len, int32_t n_vocab, int fast,
                               struct strata_api_tokenize *t, struct strata_api_error *e) {
  memset(t, 0, sizeof *t);
  struct split_ids sp = {0};
  int r = fast && n_vocab > 0 ? split_ids(body, len, &sp) : 0;
  if (r < 0) return strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
  json_t *o = t->root = r ? load_object(sp.rest, sp.rest_len, e) : load_object(body, len, e);
  free(sp.rest);
  if (!o && r) /* the error's line and column are the whole body's */
    o = t->root = load_object(body, len, e);
  if (!o) {
    free(sp.ids);
    return -1;
  }
  if (get_str(o, "model", &t->model, NULL, e)) goto fail;
  json_t *m = opt(o, "messages");
  json_t *p = opt(o, "prompt");
  if (m && p) {
    bad(e, "prompt", "give either 'prompt' or 'messages', not both");
    goto fail;
  }
  if (m) {
    if (!json_is_array(m) || json_array_size(m) == 0) {
      bad(e, "messages", "'messages' must be a non-empty array, got %s",
          json_kind(m));
      goto fail;
    }
    t->messages = m;
    t->add_special_tokens =
        0; /* the template writes BOS when the model wants it */
    t->add_generation_prompt = 1;
    if (get_bool(o, "add_generation_prompt", &t->add_generation_prompt, e))
      goto fail;
  } else {
    if (!p) {
      bad(e, "prompt", "'prompt' (or 'messages') is required");
      goto fail;
    }
    if (n_vocab > 0 && json_is_array(p) && sp.ids) {
      /* split_ids read them (and jansson sees []) */
      if (check_n_ids("prompt", sp.n, MAX_IDS, e)) goto fail;
      if (!(t->prompt_ids = malloc(sp.n * sizeof *t->prompt_ids))) {
        strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
        goto fail;
      }
      for (size_t i = 0; i < sp.n; i++) {
        if (check_id("prompt", i, (json_int_t)sp.ids[i], n_vocab, e)) goto fail;
        t->prompt_ids[i] = (int32_t)sp.ids[i];
      }
      t->n_prompt_ids = sp.n;
    } else if (n_vocab > 0 && json_is_array(p)) {
      if (get_ids(p, "prompt", n_vocab, MAX_IDS, &t->prompt_ids, &t->n_prompt_ids, e))
        goto fail;
    } else if (!json_is_string(p)) {
      bad(e, "prompt", "'prompt' must be a string%s, got %s",
          n_vocab > 0 ? " or an array of token ids" : "", json_kind(p));
      goto fail;
    } else {
      t->prompt = json_string_value(p);
      t->prompt_len = json_string_length(p);
    }
    t->add_special_tokens = 1;
  }
  if (get_bool(o, "add_special_tokens", &t->add_special_tokens, e)) goto fail;
  if (n_vocab > 0) {
    if (get_str(o, "cache_salt", &t->cache_salt, NULL, e)) goto fail;
    if (t->cache_salt && !t->cache_salt[0]) {
      bad(e, "cache_salt", "'cache_salt' must not be empty");
      goto fail;
    }
  }
  free(sp.ids);
  return 0;
fail:
  free(sp.ids);
  strata_api_tokenize_free(t);
  return -1;
}

int strata_api_parse_tokenize(const char *body, size_t len, struct strata_api_tokenize *t,
                              struct strata_api_error *e) {
  return parse_tokenize_like(body, len, 0, 0, t, e);
}

int strata_api_parse_cache_stats(const char *body, size_t len, int32_t n_vocab,
                                 struct strata_api_tokenize *t, struct strata_api_error *e) {
  return parse_tokenize_like(body, len, n_vocab > 0 ? n_vocab : 1, 1, t, e);
}

int strata_api_parse_cache_stats_tree(const char *body, size_t len, int32_t n_vocab,
                                      struct strata_api_tokenize *t, struct strata_api_error *e) {
  return parse_tokenize_like(body, len, n_vocab > 0 ? n_vocab : 1, 0, t, e);
}

void strata_api_tokenize_free(struct strata_api_tokenize *t) {
  json_decref(t->root);
  free(t->prompt_ids);
  memset(t, 0, sizeof *t);
}

int strata_api_parse_cache_hint(const char *body, size_t len, int32_t n_vocab,
                                struct strata_api_cache_hint *h, struct strata_api_error *e) {
  memset(h, 0, sizeof *h);
  if (parse_tokenize_like(body, len, n_vocab > 0 ? n_vocab : 1, 1, &h->t, e) != 0) return -1;
  json_t *o = h->t.root;
  json_t *a = opt(o, "action");
  if (!a) {
    bad(e, "action", "'action' is required: \"keep\" or \"release\"");
    goto fail;
  }
  if (!json_is_string(a)) {
    bad(e, "action", "'action' must be \"keep\" or \"release\", got %s", json_kind(a));
    goto fail;
  }
  const char *as = json_string_value(a);
  size_t al = json_string_length(a);
  if (al == 4 && memcmp(as, "keep", 4) == 0) {
    h->action = 1;
  } else if (al == 7 && memcmp(as, "release", 7) == 0) {
    h->action = 2;
  } else {
    /* the value may hold anything: quote it through the JSON encoder */
    char *q = json_dumps(a, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
    bad(e, "action", "'action' must be \"keep\" or \"release\", got %.64s%s",
        q ? q : "?", q && strlen(q) > 64 ? "..." : "");
    free(q);
    goto fail;
  }
  int has_ttl = 0;
  h->ttl = STRATA_API_HINT_TTL_DEFAULT;
  if (get_num(o, "ttl", 0, 1, STRATA_API_HINT_TTL_MAX, &h->ttl, &has_ttl, e)) goto fail;
  if (get_bool(o, "prefill", &h->prefill, e) || get_bool(o, "force", &h->force, e)) goto fail;
  int64_t pr = 0;
  if (get_int(o, "priority", INT32_MIN, INT32_MAX, &pr, NULL, e)) goto fail;
  h->priority = (int32_t)pr;
  if (h->action == 2) {
    if (has_ttl) {
      bad(e, "ttl", "'ttl' applies to action \"keep\" only");
      goto fail;
    }
    h->ttl = 0;
    if (h->prefill) {
      bad(e, "prefill", "'prefill' applies to action \"keep\" only");
      goto fail;
    }
  } else if (h->force) {
    bad(e, "force", "'force' applies to action \"release\" only");
    goto fail;
  }
  return 0;
fail:
  strata_api_cache_hint_free(h);
  return -1;
}

void strata_api_cache_hint_free(struct strata_api_cache_hint *h) {
  strata_api_tokenize_free(&h->t);
  memset(h, 0, sizeof *h);
}

int strata_api_parse_detokenize(const char *body, size_t len, int32_t n_vocab,
                                struct strata_api_detokenize *d,
                                struct strata_api_error *e) {
  memset(d, 0, sizeof *d);
  json_t *o = d->root = load_object(body, len, e);
  if (!o) return -1;
  if (get_str(o, "model", &d->model, NULL, e)) goto fail;
  json_t *t = opt(o, "tokens");
  if (!t) {
    bad(e, "tokens", "'tokens' is required");
    goto fail;
  }
  if (!json_is_array(t)) {
    bad(e, "tokens", "'tokens' must be an array of token ids, got %s",
        json_kind(t));
    goto fail;
  }
  if (json_array_size(t) && get_ids(t, "tokens", n_vocab, MAX_IDS,
                                    &d->tokens, &d->n_tokens, e))
    goto fail;
  return 0;
fail:
  strata_api_detokenize_free(d);
  return -1;
}

void strata_api_detokenize_free(struct strata_api_detokenize *d) {
  free(d->tokens);
  json_decref(d->root);
  memset(d, 0, sizeof *d);
}

/* ---- responses -------------------------------------------------------------
 */

json_t *strata_api_usage_json(const struct strata_api_usage *u) {
  return json_pack(
      "{s:i,s:i,s:I,s:{s:i}}", "prompt_tokens", (int)u->prompt_tokens,
      "completion_tokens", (int)u->completion_tokens, "total_tokens",
      (json_int_t)u->prompt_tokens + u->completion_tokens,
      "prompt_tokens_details", "cached_tokens", (int)u->cached_tokens);
}

static json_t *finish_json(const char *finish) {
  return finish ? json_string(finish) : json_null();
}

static char *dump_and_free(json_t *o) {
  if (!o) return NULL;
  char *s = dump_compact(o);
  json_decref(o);
  return s;
}

char *strata_api_response_json(enum strata_api_kind kind, const char *id,
                               int64_t created, const char *model,
                               const struct strata_api_choice *choices,
                               size_t n_choices,
                               const struct strata_api_usage *usage,
                               const json_t *metadata) {
  json_t *arr = json_array();
  if (!arr) return NULL;
  for (size_t i = 0; i < n_choices; i++) {
    json_t *text = strata_api_string(choices[i].text, choices[i].text_len);
    json_t *c = kind == STRATA_API_CHAT
                    ? json_pack("{s:I,s:{s:s,s:o},s:n,s:o}", "index",
                                (json_int_t)i, "message", "role", "assistant",
                                "content", text, "logprobs", "finish_reason",
                                finish_json(choices[i].finish))
                    : json_pack("{s:I,s:o,s:n,s:o}", "index", (json_int_t)i,
                                "text", text, "logprobs", "finish_reason",
                                finish_json(choices[i].finish));
    if (!c || json_array_append_new(arr, c)) {
      json_decref(arr);
      return NULL;
    }
  }
  json_t *o =
      json_pack("{s:s,s:s,s:I,s:s,s:o,s:o}", "id", id, "object",
                kind == STRATA_API_CHAT ? "chat.completion" : "text_completion",
                "created", (json_int_t)created, "model", model, "choices", arr,
                "usage", strata_api_usage_json(usage));
  if (o && metadata) json_object_set(o, "metadata", (json_t *)metadata);
  return dump_and_free(o);
}

char *strata_api_chunk_json(enum strata_api_kind kind, const char *id,
                            int64_t created, const char *model, int32_t index,
                            int role, const char *text, size_t text_len,
                            const char *finish, int with_usage_null) {
  json_t *c;
  if (kind == STRATA_API_CHAT) {
    json_t *delta = json_object();
    if (!delta) return NULL;
    if (role) json_object_set_new(delta, "role", json_string("assistant"));
    if (role || text_len)
      json_object_set_new(delta, "content", strata_api_string(text, text_len));
    c = json_pack("{s:i,s:o,s:n,s:o}", "index", (int)index, "delta", delta,
                  "logprobs", "finish_reason", finish_json(finish));
  } else {
    c = json_pack("{s:i,s:o,s:n,s:o}", "index", (int)index, "text",
                  strata_api_string(text, text_len), "logprobs",
                  "finish_reason", finish_json(finish));
  }
  json_t *o = json_pack(
      "{s:s,s:s,s:I,s:s,s:[o]}", "id", id, "object",
      kind == STRATA_API_CHAT ? "chat.completion.chunk" : "text_completion",
      "created", (json_int_t)created, "model", model, "choices", c);
  if (o && with_usage_null) json_object_set_new(o, "usage", json_null());
  return dump_and_free(o);
}

char *strata_api_usage_chunk_json(enum strata_api_kind kind, const char *id,
                                  int64_t created, const char *model,
                                  const struct strata_api_usage *usage) {
  return dump_and_free(json_pack(
      "{s:s,s:s,s:I,s:s,s:[],s:o}", "id", id, "object",
      kind == STRATA_API_CHAT ? "chat.completion.chunk" : "text_completion",
      "created", (json_int_t)created, "model", model, "choices", "usage",
      strata_api_usage_json(usage)));
}

/* ---- /metrics
 * ---------------------------------------------------------------- */

/* A Prometheus label value: backslash, quote and newline escaped. */
static void label_escape(const char *s, char *out, size_t cap) {
  size_t j = 0;
  for (; *s && j + 3 < cap; s++) {
    if (*s == '\\' || *s == '"') {
      out[j++] = '\\';
      out[j++] = *s;
    } else if (*s == '\n') {
      out[j++] = '\\';
      out[j++] = 'n';
    } else {
      out[j++] = *s;
    }
  }
  out[j] = 0;
}

static void metric_head(FILE *f, const char *name, const char *type,
                        const char *help) {
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(FILE *f, const char *name, const char *lbl, double v,
                  const char *help) {
  metric_head(f, name, "gauge", help);
  fprintf(f, "%s{model_name=\"%s\"} %.17g\n", name, lbl, v);
}

static void counter(FILE *f, const char *name, const char *lbl, uint64_t v,
                    const char *help) {
  metric_head(f, name, "counter", help);
  fprintf(f, "%s{model_name=\"%s\"} %" PRIu64 "\n", name, lbl, v);
}

static void counter_f(FILE *f, const char *name, const char *lbl, double v, const char *help) {
  metric_head(f, name, "counter", help);
  fprintf(f, "%s{model_name=\"%s\"} %.9g\n", name, lbl, v);
}

static void histogram(FILE *f, const char *name, const char *lbl,
                      const struct strata_histogram *h, const char *help) {
  metric_head(f, name, "histogram", help);
  uint64_t cum = 0;
  int nb = h->bounds ? h->n_bounds : 0;
  if (nb > STRATA_HIST_MAX_BUCKETS) nb = STRATA_HIST_MAX_BUCKETS;
  for (int i = 0; i < nb; i++) {
    cum += h->counts[i];
    fprintf(f, "%s_bucket{model_name=\"%s\",le=\"%g\"} %" PRIu64 "\n", name,
            lbl, h->bounds[i], cum);
  }
  fprintf(f, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", name,
          lbl, h->count);
  fprintf(f, "%s_sum{model_name=\"%s\"} %.17g\n", name, lbl, h->sum);
  fprintf(f, "%s_count{model_name=\"%s\"} %" PRIu64 "\n", name, lbl, h->count);
}

char *strata_api_metrics_text(const struct strata_engine_metrics *m,
                              const char *model_name,
                              const struct strata_server_stats *s) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return NULL;
  char lbl[512];
  label_escape(model_name, lbl, sizeof lbl);
  gauge(f, "vllm:num_requests_running", lbl, m->num_running,
        "Number of requests in model execution batches.");
  gauge(f, "vllm:num_requests_waiting", lbl, m->num_waiting,
        "Number of requests waiting to be processed.");
  gauge(f, "vllm:gpu_cache_usage_perc", lbl, m->kv.usage,
        "KV-cache usage. 1 means 100 percent usage (the name is vLLM's, kept "
        "for dashboards).");
  gauge(f, "vllm:kv_cache_usage_perc", lbl, m->kv.usage,
        "KV-cache usage. 1 means 100 percent usage.");
  counter(f, "vllm:prefix_cache_queries_total", lbl, m->kv.queries,
          "Prefix cache queries, in terms of number of queried tokens.");
  counter(f, "vllm:prefix_cache_hits_total", lbl, m->kv.hits,
          "Prefix cache hits, in terms of number of cached tokens.");
  counter(f, "vllm:prompt_tokens_total", lbl, m->prompt_tokens_total,
          "Number of prefill tokens processed.");
  counter(f, "vllm:generation_tokens_total", lbl, m->generation_tokens_total,
          "Number of generation tokens processed.");
  counter(f, "vllm:num_preemptions_total", lbl, m->preemptions_total,
          "Cumulative number of preemptions from the engine.");
  metric_head(f, "vllm:request_success_total", "counter",
              "Count of successfully processed requests.");
  static const char *const reasons[] = {NULL, "stop", "length", "abort",
                                        "error"};
  for (int i = 1; i < 5; i++)
    fprintf(f,
            "vllm:request_success_total{model_name=\"%s\",finished_reason=\"%"
            "s\"} %" PRIu64 "\n",
            lbl, reasons[i], m->requests_finished[i]);
  histogram(f, "vllm:time_to_first_token_seconds", lbl, &m->ttft,
            "Histogram of time to first token in seconds.");
  histogram(f, "vllm:inter_token_latency_seconds", lbl, &m->itl,
            "Histogram of inter-token latency in seconds.");
  histogram(f, "vllm:e2e_request_latency_seconds", lbl, &m->e2e,
            "Histogram of end to end request latency in seconds.");
  histogram(f, "vllm:request_queue_time_seconds", lbl, &m->queue,
            "Histogram of time spent in the waiting queue in seconds.");
  gauge(f, "strata:kv_blocks_total", lbl, m->kv.n_blocks,
        "KV cache blocks in the pool.");
  gauge(f, "strata:kv_blocks_used", lbl, m->kv.n_used,
        "KV cache blocks referenced by some request.");
  gauge(f, "strata:kv_blocks_free", lbl, m->kv.n_free,
        "KV cache blocks on the free list.");
  gauge(f, "strata:kv_blocks_cached", lbl, m->kv.n_evictable,
        "KV cache blocks held by the prefix cache only (evictable).");
  gauge(f, "strata:prefix_cache_blocks", lbl, m->kv.n_cached,
        "KV cache blocks in the prefix cache (reusable by a new request: referenced or "
        "evictable); what GET /v1/cache/events subscribers hold.");
  gauge(f, "strata:kv_block_size", lbl, m->kv.block_size,
        "Tokens per KV cache block.");
  gauge(f, "strata:kv_blocks_protected", lbl, m->kv.n_protected,
        "Evictable KV blocks under a keep protection (evicted last).");
  gauge(f, "strata:kv_blocks_hinted", lbl, m->kv.n_hinted,
        "Evictable KV blocks under a release hint (evicted first).");
  counter(f, "strata:prefix_cache_evictions_total", lbl, m->kv.evictions,
          "Cached KV blocks evicted to make room.");
  counter(f, "strata:engine_steps_total", lbl, m->steps_total,
          "Engine steps (batched model passes).");
  counter(f, "strata:scheduler_refusals_total", lbl,
          m->scheduler_refusals_total,
          "Scheduler decisions the engine core refused.");
  counter_f(f, "strata:engine_step_seconds_total", lbl, m->step_seconds_total,
            "Seconds in model steps (forward pass, logits processors, sampling).");
  counter_f(f, "strata:logits_processing_seconds_total", lbl, m->logits_seconds_total,
            "Seconds of those in logits processors.");
  counter(f, "strata:engine_failed_steps_total", lbl, m->failed_steps_total,
          "Engine steps whose model pass failed (their requests ended with an error).");
  if (s) {
    metric_head(f, "strata:http_requests_total", "counter",
                "HTTP requests answered, by status class.");
    for (int c = 2; c <= 5; c++)
      fprintf(
          f,
          "strata:http_requests_total{model_name=\"%s\",code=\"%dxx\"} %" PRIu64
          "\n",
          lbl, c, s->http_requests[c]);
    counter(f, "strata:requests_rejected_queue_full_total", lbl,
            s->rejected_full,
            "Requests answered 429 because the engine queue was full.");
    counter(f, "strata:client_disconnects_total", lbl, s->client_disconnects,
            "Requests cancelled because the client went away.");
    gauge(f, "strata:server_open_requests", lbl, s->open_requests,
          "Engine requests the HTTP server holds.");
    metric_head(f, "strata:cache_hints_total", "counter",
                "POST /v1/cache/hints answered 200, by action.");
    static const char *const actions[] = {NULL, "keep", "release"};
    for (int i = 1; i <= 2; i++)
      fprintf(f, "strata:cache_hints_total{model_name=\"%s\",action=\"%s\"} %" PRIu64 "\n",
              lbl, actions[i], s->cache_hints[i]);
  }
  if (fclose(f) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}
