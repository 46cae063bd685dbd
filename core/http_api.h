/* The OpenAI-compatible HTTP API without the sockets: request parsing and
 * validation, response and stream-chunk building, error bodies and the
 * Prometheus text of /metrics. Pure functions over bytes and JSON (no
 * libevent, no engine thread), so every parser is unit-tested with hostile
 * input (tests/unit/test_server.c); core/server.c does the network and the
 * engine. docs/http-api.md describes the fields and errors.
 *
 * Unknown request fields are ignored, as OpenAI and vLLM do (clients send
 * fields of newer API versions); known fields are type- and range-checked,
 * and the known fields this server cannot honour (logprobs, tools, ...) are
 * a 400 naming the field when set to anything but their neutral value,
 * rather than silently ignored. The fields of logits processors (bad_words,
 * logit_bias, penalties, ...) are checked by the processors themselves
 * (strata_engine_logits_compile). */
#ifndef STRATA_HTTP_API_H
#define STRATA_HTTP_API_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sampler.h"

struct strata_engine_metrics;

/* An error answer: HTTP status and the OpenAI error object. */
struct strata_api_error {
  int status;       /* 400, 401, 404, 405, 413, 429, 500, 503 */
  const char *type; /* "invalid_request_error", "authentication_error", ... */
  const char *code; /* NULL (JSON null) or e.g. "model_not_found" */
  char param[64];   /* "" gives JSON null */
  char message[512];
};

/* Fills e; returns -1 so that parsers can `return strata_api_errorf(...)`.
 * type NULL picks the type of the status. */
int strata_api_errorf(struct strata_api_error *e, int status, const char *type,
                      const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* {"error": {"message", "type", "param", "code"}} as malloc'd compact JSON. */
char *strata_api_error_json(const struct strata_api_error *e);
/* The reason phrase of a status ("Bad Request"). */
const char *strata_api_status_reason(int status);

enum strata_api_kind {
  STRATA_API_COMPLETIONS, /* POST /v1/completions */
  STRATA_API_CHAT,        /* POST /v1/chat/completions */
};

struct strata_api_limits {
  size_t max_metadata_bytes; /* metadata as compact JSON text */
  int32_t n_vocab;           /* token ids must be in [0, n_vocab) */
  int32_t max_n;             /* n and best_of; 0: STRATA_API_MAX_N */
  int32_t max_stop;          /* stop strings; 0: STRATA_API_MAX_STOP */
};

/* A parsed and validated completion or chat request. Strings point into
 * root (alive until strata_api_request_free). */
/* One prompt of a completions request: text, or token ids. */
struct strata_api_prompt {
  const char *text; /* points into the body; NULL when ids */
  size_t len;
  int32_t *ids; /* malloc'd */
  size_t n_ids;
};

struct strata_api_request {
  enum strata_api_kind kind;
  json_t *root;      /* the body (owned) */
  const char *model; /* NULL: absent or null */
  /* completions: the prompts (OpenAI: a string, token ids, or an array of
   * either), each answered with n choices, prompt i's with indexes
   * i * n .. i * n + n - 1; malloc'd */
  struct strata_api_prompt *prompts;
  size_t n_prompts;
  /* prompts[0] again, for one-prompt callers (not owned) */
  const char *prompt;
  size_t prompt_len;
  int32_t *prompt_ids;
  size_t n_prompt_ids;
  int add_special_tokens; /* completions: add BOS as the model says (default 1)
                           */
  int echo;               /* completions: prepend the prompt to each choice */
  /* chat */
  json_t *messages;          /* borrowed from root */
  int add_generation_prompt; /* default 1 */
  int stream, include_usage;
  int32_t max_tokens; /* 0: absent (completions then default to 16, chat to
                         the rest of the context, as vLLM) */
  int32_t n;          /* 1..128 */
  struct strata_sampling sampling;
  int has_seed;
  const char **stop; /* malloc'd array; strings point into root */
  size_t n_stop;
  int32_t *stop_token_ids; /* malloc'd */
  size_t n_stop_token_ids;
  int ignore_eos;
  int32_t min_tokens; /* 0: absent (the min_tokens logits processor owns it;
                         the engine holds stop strings back until then) */
  int32_t priority;
  const char *cache_salt; /* NULL: none */
  json_t *metadata;       /* NULL: none; borrowed from root */
  char *metadata_text;    /* its compact JSON for the request log; malloc'd */
  const char *user;       /* NULL: absent (logged only) */
  /* scheduling group: body `group_id`, else metadata group_id / group /
   * affinity (a string); NULL: none */
  const char *group_id;
  /* body or metadata `affinity_hint`: 0 none (default), 1 "keep", 2
   * "release" (enum strata_affinity in engine.h) */
  int affinity_hint;
};

#define STRATA_API_MAX_N 128
#define STRATA_API_MAX_PROMPTS 256 /* prompts of one completions request */
#define STRATA_API_MAX_CHOICES 1024 /* prompts x n */
#define STRATA_API_MAX_STOP 16 /* the default of server.max_stop */
#define STRATA_API_MAX_STOP_LIMIT 1024 /* the most server.max_stop may allow */

/* Parses body[0..len) as a request of kind. 0, or -1 with err filled (400,
 * or 500 when out of memory). On -1 nothing needs freeing. */
int strata_api_parse_request(enum strata_api_kind kind, const char *body,
                             size_t len, const struct strata_api_limits *lim,
                             struct strata_api_request *out,
                             struct strata_api_error *err);
void strata_api_request_free(struct strata_api_request *r);

/* POST /tokenize (vLLM): {"prompt": TEXT, "add_special_tokens": true} or
 * {"messages": [...], "add_generation_prompt": true, "add_special_tokens":
 * false}, with an optional "model". */
struct strata_api_tokenize {
  json_t *root;
  const char *model;
  const char *prompt; /* NULL when messages or prompt_ids */
  size_t prompt_len;
  int32_t *prompt_ids; /* cache stats: a token-id prompt (malloc'd) */
  size_t n_prompt_ids;
  const char *cache_salt; /* cache stats: NULL or non-empty */
  json_t *messages; /* borrowed */
  int add_special_tokens;
  int add_generation_prompt;
};
int strata_api_parse_tokenize(const char *body, size_t len,
                              struct strata_api_tokenize *out,
                              struct strata_api_error *err);
void strata_api_tokenize_free(struct strata_api_tokenize *t);
/* POST /v1/cache/stats: as /tokenize, and `prompt` may also be token ids
 * (each in [0, n_vocab)), with an optional non-empty `cache_salt`. */
int strata_api_parse_cache_stats(const char *body, size_t len, int32_t n_vocab,
                                 struct strata_api_tokenize *out, struct strata_api_error *err);
/* The same, with jansson parsing all of the body: the cache stats parser
 * reads a token-id `prompt` itself (jansson's node per element costs ~0.1 us
 * each); tests compare the two. */
int strata_api_parse_cache_stats_tree(const char *body, size_t len, int32_t n_vocab,
                                      struct strata_api_tokenize *out,
                                      struct strata_api_error *err);

/* POST /v1/cache/hints: the prompt as /v1/cache/stats takes it (prompt
 * text or token ids, or messages; model; cache_salt), and `action` "keep"
 * or "release" (required); keep: `ttl` seconds in (0, 86400] (default 300)
 * and `prefill` (bool); release: `force` (bool). `ttl` and `prefill: true`
 * with release, `force: true` with keep are 400s naming the field (false is
 * accepted either way). `priority` (int32) is used by the prefill. */
#define STRATA_API_HINT_TTL_DEFAULT 300.0
#define STRATA_API_HINT_TTL_MAX 86400.0
struct strata_api_cache_hint {
  struct strata_api_tokenize t; /* prompt, model, cache_salt (root owned here) */
  int action;                   /* 1 keep, 2 release (enum strata_cache_hint_action) */
  double ttl;                   /* keep only */
  int prefill, force;
  int32_t priority;
};
int strata_api_parse_cache_hint(const char *body, size_t len, int32_t n_vocab,
                                struct strata_api_cache_hint *out, struct strata_api_error *err);
void strata_api_cache_hint_free(struct strata_api_cache_hint *h);

/* POST /detokenize (vLLM): {"tokens": [ids], "model"?}. */
struct strata_api_detokenize {
  json_t *root;
  const char *model;
  int32_t *tokens; /* malloc'd */
  size_t n_tokens;
};
int strata_api_parse_detokenize(const char *body, size_t len, int32_t n_vocab,
                                struct strata_api_detokenize *out,
                                struct strata_api_error *err);
void strata_api_detokenize_free(struct strata_api_detokenize *d);

/* The JSON string of len bytes of text, with bytes that are not valid UTF-8
 * replaced by U+FFFD (engine text is valid already; this is the guard). */
json_t *strata_api_string(const char *text, size_t len);

/* One choice of a finished request. */
struct strata_api_choice {
  const char *text;
  size_t text_len;
  const char *finish; /* "stop", "length", "abort", ... */
};

struct strata_api_usage {
  int32_t prompt_tokens, completion_tokens, cached_tokens;
};

/* The non-streaming response object (text_completion or chat.completion),
 * as malloc'd compact JSON. metadata may be NULL. */
char *strata_api_response_json(enum strata_api_kind kind, const char *id,
                               int64_t created, const char *model,
                               const struct strata_api_choice *choices,
                               size_t n_choices,
                               const struct strata_api_usage *usage,
                               const json_t *metadata);

/* One streaming chunk (text_completion or chat.completion.chunk) for choice
 * index: with role (chat: {"role":"assistant","content":""} as the first
 * delta), text and/or finish (NULL: JSON null). with_usage_null adds
 * "usage": null (stream_options.include_usage). Malloc'd compact JSON. */
char *strata_api_chunk_json(enum strata_api_kind kind, const char *id,
                            int64_t created, const char *model, int32_t index,
                            int role, const char *text, size_t text_len,
                            const char *finish, int with_usage_null);
/* The final usage chunk: "choices": [] and "usage". */
char *strata_api_usage_chunk_json(enum strata_api_kind kind, const char *id,
                                  int64_t created, const char *model,
                                  const struct strata_api_usage *usage);

/* The usage object. */
json_t *strata_api_usage_json(const struct strata_api_usage *u);

/* Counters the HTTP layer keeps besides the engine's. */
struct strata_server_stats {
  uint64_t http_requests[6]; /* by status class: [2] 2xx, [4] 4xx, [5] 5xx */
  uint64_t rejected_full;    /* 429 */
  uint64_t client_disconnects;
  int32_t open_requests; /* engine requests the server holds */
  uint64_t cache_hints[3]; /* POST /v1/cache/hints answered 200: [1] keep, [2] release */
};

/* /metrics: Prometheus text exposition (version 0.0.4) with vLLM's metric
 * names labelled model_name, plus strata's own. Malloc'd, NUL-terminated. */
char *strata_api_metrics_text(const struct strata_engine_metrics *m,
                              const char *model_name,
                              const struct strata_server_stats *s);

#endif
