/* bad_words: words the model must not generate (vLLM's `bad_words`, with the
 * semantics of vLLM issue #13058).
 *
 * Request field `bad_words`: an array of strings. Each word is left-stripped
 * and tokenized twice without special tokens: bare ("Lily") and with one
 * leading space (" Lily"). The bare form is always banned; the spaced form
 * too when its first token differs from the bare form's first token and
 * both have the same number of tokens (the tokenizer then has a separate
 * "word start" token, as byte-level BPE does). For a banned sequence of L
 * tokens, its last token gets logit -inf whenever the last L-1 generated
 * tokens equal its first L-1 (L == 1: always). Only generated tokens count,
 * not the prompt.
 *
 * Limits (plugins.logits.bad_words): max_words words per request, each at
 * most max_word_bytes bytes and max_word_tokens tokens; an empty word (after
 * stripping) is an error. Each choice of an n > 1 request keeps its own
 * history, since the state is per slot. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <strata/logits.h>
#include <strata/plugin.h>

#include "../slots.h"

/* Banned sequences back to back: seq i is toks[off[i] .. off[i + 1]). */
struct params {
  uint32_t n_seqs;
  uint32_t *off;
  int32_t *toks;
};


struct state {
  struct lp_slots slots; /* first: lp_entry_update */
  const struct strata_logits_model *m;
  int64_t max_words, max_word_bytes, max_word_tokens;
};


static int bw_create(const strata_config_node_t *cfg, const struct strata_logits_model *m,
                     void **out, char *err, size_t errlen) {
  struct state *st = calloc(1, sizeof *st);
  if (!st) return lp_errf(err, errlen, "out of memory");
  st->m = m;
  st->max_words = host->config_int(cfg, "max_words");
  st->max_word_bytes = host->config_int(cfg, "max_word_bytes");
  st->max_word_tokens = host->config_int(cfg, "max_word_tokens");
  st->slots.elem = sizeof(struct lp_entry);
  *out = st;
  return 0;
}

static void bw_destroy(void *state) {
  struct state *st = state;
  lp_slots_free(&st->slots, &lp_entry_ops, st);
  free(st);
}

static const char *const bw_fields[] = {"bad_words", NULL};

static void params_free(struct params *p) {
  if (!p) return;
  free(p->off);
  free(p->toks);
  free(p);
}

/* Appends a tokenization of text[0..len) as a new sequence; returns its
 * token count, 0 if empty, -1 on error (err set). */
static int64_t push_seq(struct state *st, struct params *p, size_t *cap_toks, const char *text,
                        size_t len, size_t word, char *err, size_t errlen) {
  size_t at = p->off[p->n_seqs];
  size_t want = at + (size_t)st->max_word_tokens;
  if (want > *cap_toks) {
    size_t c = *cap_toks ? *cap_toks : 64;
    while (c < want) c *= 2;
    int32_t *t = realloc(p->toks, sizeof *t * c);
    if (!t) return lp_errf(err, errlen, "out of memory");
    p->toks = t;
    *cap_toks = c;
  }
  int64_t n = st->m->tokenize(st->m, text, len, p->toks + at, (size_t)st->max_word_tokens);
  if (n < 0) return lp_errf(err, errlen, "bad_words[%zu] is not valid UTF-8", word);
  if (n > st->max_word_tokens)
    return lp_errf(err, errlen, "bad_words[%zu] is %lld tokens long; at most %lld", word,
                   (long long)n, (long long)st->max_word_tokens);
  if (n == 0) return 0;
  p->n_seqs++;
  p->off[p->n_seqs] = (uint32_t)(at + (size_t)n);
  return n;
}

static int bw_compile(void *state, const strata_json_t *body, void **out, const char **field,
                      char *err, size_t errlen) {
  struct state *st = state;
  *field = "bad_words";
  const strata_json_t *v = lp_field(host, body, "bad_words");
  if (!v) return 0;
  if (host->json_type(v) != STRATA_JSON_ARRAY)
    return lp_errf(err, errlen, "'bad_words' must be an array of strings, got %s",
                   lp_kind(host, v));
  size_t n = host->json_size(v);
  if (n == 0) return 0;
  if ((int64_t)n > st->max_words)
    return lp_errf(err, errlen, "'bad_words' has %zu words; at most %lld", n,
                   (long long)st->max_words);
  struct params *p = calloc(1, sizeof *p);
  if (p) p->off = calloc(2 * n + 1, sizeof *p->off);
  if (!p || !p->off) {
    params_free(p);
    return lp_errf(err, errlen, "out of memory");
  }
  size_t cap_toks = 0;
  char *spaced = malloc((size_t)st->max_word_bytes + 2);
  if (!spaced) {
    params_free(p);
    return lp_errf(err, errlen, "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    const strata_json_t *w = host->json_at(v, i);
    size_t len = 0;
    const char *s = host->json_string(w, &len);
    if (!s) {
      free(spaced);
      params_free(p);
      return lp_errf(err, errlen, "bad_words[%zu] must be a string, got %s", i,
                     lp_kind(host, w));
    }
    if ((int64_t)len > st->max_word_bytes) {
      free(spaced);
      params_free(p);
      return lp_errf(err, errlen, "bad_words[%zu] is %zu bytes long; at most %lld", i, len,
                     (long long)st->max_word_bytes);
    }
    /* left-strip (Python's str.lstrip: ASCII whitespace is what matters) */
    while (len && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\f' ||
                   *s == '\v')) {
      s++;
      len--;
    }
    if (len == 0 || memchr(s, 0, len)) {
      free(spaced);
      params_free(p);
      return lp_errf(err, errlen, "bad_words[%zu] is %s", i,
                     len ? "not text (it contains NUL)" : "empty");
    }
    uint32_t bare_at = p->off[p->n_seqs];
    int64_t nb = push_seq(st, p, &cap_toks, s, len, i, err, errlen);
    if (nb < 0) {
      free(spaced);
      params_free(p);
      return -1;
    }
    spaced[0] = ' ';
    memcpy(spaced + 1, s, len);
    uint32_t sp_at = p->off[p->n_seqs];
    int64_t ns = push_seq(st, p, &cap_toks, spaced, len + 1, i, err, errlen);
    if (ns < 0) {
      free(spaced);
      params_free(p);
      return -1;
    }
    /* keep the spaced form only when it is a different word-start token of
     * the same length */
    if (ns > 0 && (nb == 0 || ns != nb || p->toks[sp_at] == p->toks[bare_at])) p->n_seqs--;
  }
  free(spaced);
  if (p->n_seqs == 0) {
    params_free(p);
    return 0;
  }
  *out = p;
  return 1;
}

static void bw_release(void *state, void *params) {
  (void)state;
  params_free(params);
}

static void bw_apply(void *state, float *logits, const struct strata_logits_row *rows,
                     uint32_t n_rows) {
  struct state *st = state;
  const int32_t V = st->m->n_vocab;
  for (uint32_t i = 0; i < n_rows; i++) {
    const struct lp_entry *s = lp_slot(&st->slots, rows[i].slot);
    if (!s) continue;
    float *row = logits + (size_t)rows[i].row * (size_t)V;
    const int32_t n = *s->n_output;
    const struct params *p = s->params;
    for (uint32_t q = 0; q < p->n_seqs; q++) {
      const int32_t *t = p->toks + p->off[q];
      int32_t L = (int32_t)(p->off[q + 1] - p->off[q]);
      if (L - 1 > n) continue;
      if (L > 1 && memcmp(s->output + n - (L - 1), t, sizeof *t * (size_t)(L - 1)) != 0) continue;
      if (t[L - 1] >= 0 && t[L - 1] < V) row[t[L - 1]] = -INFINITY;
    }
  }
}

static const struct strata_param bw_params[] = {
    {"max_words", STRATA_PARAM_INT, 0, "128", 1, 65536, "most bad words in one request"},
    {"max_word_bytes", STRATA_PARAM_INT, 0, "256", 1, 65536, "longest bad word, in bytes"},
    {"max_word_tokens", STRATA_PARAM_INT, 0, "32", 1, 4096, "longest bad word, in tokens"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_logits_vtable bw_vtable = {
    .size = sizeof(struct strata_logits_vtable),
    .fields = bw_fields,
    .create = bw_create,
    .destroy = bw_destroy,
    .compile = bw_compile,
    .release = bw_release,
    .update = lp_entry_update,
    .apply = bw_apply,
};

static const struct strata_plugin_desc bw_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_LOGITS,
    .name = "bad_words",
    .version = "1.0",
    .license = "MIT",
    .description = "bad_words: never generate the given words (vLLM semantics)",
    .params = bw_params,
    .init = lp_init,
    .fini = NULL,
    .vt.logits = &bw_vtable,
};

STRATA_PLUGIN_DEFINE(bw_desc)
