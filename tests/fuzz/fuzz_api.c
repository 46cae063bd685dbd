/* The HTTP request parsers of every engine endpoint on arbitrary bodies:
 * the first byte picks the endpoint (mod 7: completions, chat, tokenize,
 * cache stats twice, detokenize, cache hints), the rest is the body. Each answers 0
 * or an OpenAI-style error (status, message), never a crash. */
#include "config.h"

#include <string.h>

#include "fuzz.h"
#include "http_api.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static void check_error(int rc, const struct strata_api_error *e) {
  if (rc != 0 && (e->status < 400 || e->status > 599 || !e->message[0])) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const int which = data[0] % 7;
  const char *body = (const char *)data + 1;
  const size_t len = size - 1;
  struct strata_api_error e;
  memset(&e, 0, sizeof e);
  const struct strata_api_limits lim = {.max_metadata_bytes = 4096, .n_vocab = 32000};
  int rc;
  switch (which) {
  case 0:
  case 1: {
    struct strata_api_request r;
    rc = strata_api_parse_request(which ? STRATA_API_CHAT : STRATA_API_COMPLETIONS, body, len,
                                  &lim, &r, &e);
    check_error(rc, &e);
    if (rc == 0) strata_api_request_free(&r);
    break;
  }
  case 2: {
    struct strata_api_tokenize t;
    rc = strata_api_parse_tokenize(body, len, &t, &e);
    check_error(rc, &e);
    if (rc == 0) strata_api_tokenize_free(&t);
    break;
  }
  case 3:
  case 4: { /* the two cache-stats parsers must agree */
    struct strata_api_tokenize a, b;
    struct strata_api_error e2;
    memset(&e2, 0, sizeof e2);
    const int ra = strata_api_parse_cache_stats(body, len, 32000, &a, &e);
    const int rb = strata_api_parse_cache_stats_tree(body, len, 32000, &b, &e2);
    check_error(ra, &e);
    check_error(rb, &e2);
    if ((ra == 0) != (rb == 0)) abort();
    if (ra == 0) {
      if (a.n_prompt_ids != b.n_prompt_ids ||
          (a.n_prompt_ids &&
           memcmp(a.prompt_ids, b.prompt_ids, a.n_prompt_ids * sizeof *a.prompt_ids) != 0))
        abort();
      strata_api_tokenize_free(&a);
      strata_api_tokenize_free(&b);
    }
    break;
  }
  case 6: { /* POST /v1/cache/hints: a refusal, or a hint that keeps the rules */
    struct strata_api_cache_hint h;
    rc = strata_api_parse_cache_hint(body, len, 32000, &h, &e);
    check_error(rc, &e);
    if (rc == 0) {
      if (h.action == 1 ? !(h.ttl > 0 && h.ttl <= 86400) || h.force
                        : h.action != 2 || h.ttl != 0 || h.prefill)
        abort();
      if (!h.t.messages && !h.t.prompt && !h.t.n_prompt_ids) abort();
      for (size_t i = 0; i < h.t.n_prompt_ids; i++)
        if (h.t.prompt_ids[i] < 0 || h.t.prompt_ids[i] >= 32000) abort();
      strata_api_cache_hint_free(&h);
    }
    break;
  }
  default: {
    struct strata_api_detokenize d;
    rc = strata_api_parse_detokenize(body, len, 32000, &d, &e);
    check_error(rc, &e);
    if (rc == 0) strata_api_detokenize_free(&d);
    break;
  }
  }
  return 0;
}
