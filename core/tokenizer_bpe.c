/* Byte-level BPE (tokenizer.ggml.model = "gpt2"): the pre-tokenizer split by
 * the regexes tokenizer.ggml.pre names (PCRE2 with Unicode properties), the
 * GPT-2 byte-to-unicode mapping, and merge ranks keyed on pairs of interned
 * ids so that a lookup in the merge loop is one hash probe. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "util.h"

/* ---- pre-tokenizers
 * ---------------------------------------------------------- */

/* The patterns are those of the models' tokenizer.json files, with the
 * case-insensitive contractions spelled out as classes so that PCRE2's
 * Unicode case folding (which maps U+017F to 's') cannot differ from the
 * reference. The default list and the multi-pattern entries split
 * sequentially, each pattern applied to the pieces of the previous one, with
 * unmatched text kept as pieces of its own (as llama.cpp does). */
#define RE_GPT2                                                                \
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"         \
  "\\s+(?!\\S)|\\s+"
#define RE_CONTRACTIONS                                                        \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                              \
  RE_CONTRACTIONS                                                              \
      "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "                           \
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                               \
  RE_CONTRACTIONS                                                              \
      "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "                                \
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_GPT4O                                                               \
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"                \
  "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+" RE_CONTRACTIONS                             \
  "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"              \
  "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" RE_CONTRACTIONS                             \
  "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|"   \
  "\\s+"

static const struct pre_def {
  const char *names; /* space-separated tokenizer.ggml.pre values */
  const char *re[STRATA_TOK_MAX_REGEX];
  int ignore_merges; /* a piece that is itself a token skips the merges */
  int add_bos;       /* default of tokenizer.ggml.add_bos_token */
} pre_defs[] = {
    {"default",
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"},
     0,
     0},
    {"gpt-2 phi-2 mpt olmo roberta-bpe jina-es jina-de jina-v1-en jina-v2-es "
     "jina-v2-de jina-v2-code gigachat exaone4 mellum",
     {RE_GPT2},
     0,
     0},
    {"llama3 llama-v3 llama-bpe falcon3 pixtral", {RE_LLAMA3}, 1, 1},
    {"dbrx smaug-bpe", {RE_LLAMA3}, 0, 0},
    {"qwen2 deepseek-r1-qwen stablelm2 megrez hunyuan", {RE_QWEN2}, 0, 0},
    {"starcoder refact command-r smollm codeshell exaone minerva-7b",
     {"\\p{N}", RE_GPT2},
     0,
     0},
    {"falcon",
     {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"},
     0,
     0},
    {"deepseek-coder",
     {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+",
      "[\\x{4e00}-\\x{9fa5}\\x{0800}-\\x{4e00}\\x{ac00}-\\x{d7ff}]+", "\\p{N}"},
     0,
     0},
    {"gpt-4o llama4", {RE_GPT4O}, 0, 0},
    {"bloom gpt3-finnish poro-chat",
     {" ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{ff0c}\\x{3001}\\x{0964}\\x{06d4}"
      "\\x{060c})]+"},
     0,
     0},
};

static const struct pre_def *find_pre(const char *pre, size_t len) {
  for (size_t i = 0; i < STRATA_ARRAY_LEN(pre_defs); i++) {
    const char *p = pre_defs[i].names;
    while (*p) {
      size_t n = strcspn(p, " ");
      if (n == len && memcmp(p, pre, len) == 0) return &pre_defs[i];
      p += n;
      while (*p == ' ')
        p++;
    }
  }
  return NULL;
}

/* ---- loading
 * --------------------------------------------------------------------- */

static uint64_t pair_hash(uint64_t k) { /* murmur3 finalizer */
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}

int32_t strata_tok_bpe_rank(const strata_tokenizer_t *t, int32_t a, int32_t b) {
  if (!t->pair_key) return -1;
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t i = (size_t)pair_hash(key) & t->pair_mask;
  while (t->pair_key[i] != UINT64_MAX) {
    if (t->pair_key[i] == key) return t->pair_rank[i];
    i = (i + 1) & t->pair_mask;
  }
  return -1;
}

static void build_byte_map(strata_tokenizer_t *t) {
  /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
   * the others are moved to U+0100 upwards so that every byte is a visible
   * character. */
  int extra = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) ||
                    (b >= 174 && b <= 255);
    int cp = printable ? b : 256 + extra++;
    if (cp < 0x80) {
      t->byte_enc[b][0] = (unsigned char)cp;
      t->byte_enc_len[b] = 1;
    } else {
      t->byte_enc[b][0] = (unsigned char)(0xC0 | cp >> 6);
      t->byte_enc[b][1] = (unsigned char)(0x80 | (cp & 0x3F));
      t->byte_enc_len[b] = 2;
    }
    t->cp_to_byte[cp] = (int16_t)b;
  }
}

int strata_tok_bpe_load(strata_tokenizer_t *t, const strata_gguf_t *g,
                        const char *pre, size_t pre_len, int *add_bos_default,
                        char *err, size_t errlen) {
  if (!pre)
    pre = "default", pre_len = 7; /* llama.cpp's choice, with a warning */
  const struct pre_def *d = find_pre(pre, pre_len);
  if (!d)
    return strata_errf(
        err, errlen,
        "unknown pre-tokenizer tokenizer.ggml.pre = '%.*s' (known: "
        "default, gpt-2, llama-bpe, qwen2, starcoder, falcon, "
        "deepseek-coder, gpt-4o, bloom and aliases)",
        (int)(pre_len > 64 ? 64 : pre_len), pre);
  snprintf(t->pre, sizeof t->pre, "%.*s", (int)pre_len, pre);
  t->ignore_merges = d->ignore_merges;
  *add_bos_default = d->add_bos;
  for (int i = 0; i < STRATA_TOK_MAX_REGEX && d->re[i]; i++) {
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)d->re[i], PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    if (!re) {
      PCRE2_UCHAR msg[128];
      pcre2_get_error_message(code, msg, sizeof msg);
      return strata_errf(err, errlen,
                         "pre-tokenizer '%s': pattern %d: %s at offset %zu",
                         t->pre, i, (const char *)msg, (size_t)off);
    }
    /* JIT is several times faster; without it the interpreter runs */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    t->re[t->n_re++] = re;
  }
  build_byte_map(t);

  const struct strata_gguf_value *m =
      strata_gguf_get(g, "tokenizer.ggml.merges");
  if (!m) return strata_errf(err, errlen, "tokenizer.ggml.merges is missing");
  if (m->type != STRATA_GGUF_ARRAY || m->v.arr.type != STRATA_GGUF_STRING)
    return strata_errf(err, errlen,
                       "tokenizer.ggml.merges is not an array of strings");
  uint64_t n = m->v.arr.n;
  if (n > INT32_MAX / 4)
    return strata_errf(err, errlen,
                       "tokenizer.ggml.merges has too many entries (%llu)",
                       (unsigned long long)n);
  size_t cap = 16;
  while (cap < 2 * (size_t)n)
    cap *= 2;
  t->pair_key = malloc(cap * sizeof *t->pair_key);
  t->pair_rank = malloc(cap * sizeof *t->pair_rank);
  t->merge_result = strata_calloc((size_t)n, sizeof *t->merge_result);
  if (!t->pair_key || !t->pair_rank || !t->merge_result)
    return strata_errf(err, errlen, "out of memory loading %llu merges",
                       (unsigned long long)n);
  memset(t->pair_key, 0xff, cap * sizeof *t->pair_key);
  t->pair_mask = cap - 1;
  t->n_merges = (size_t)n;
  char *joined = NULL;
  size_t joined_cap = 0;
  for (uint64_t i = 0; i < n; i++) {
    const struct strata_gguf_str *s = &m->v.arr.strs[i];
    size_t len = (size_t)s->len;
    t->merge_result[i] = -1;
    /* "left right", split at the first space after the first byte (a left
     * half cannot be empty) */
    const char *sp = len > 1 ? memchr(s->ptr + 1, ' ', len - 1) : NULL;
    if (!sp || sp == s->ptr + len - 1) continue; /* malformed: never applies */
    size_t ll = (size_t)(sp - s->ptr), rl = len - ll - 1;
    if (ll + rl > joined_cap) {
      char *j = realloc(joined, ll + rl);
      if (!j) {
        free(joined);
        return strata_errf(err, errlen, "out of memory");
      }
      joined = j;
      joined_cap = ll + rl;
    }
    memcpy(joined, s->ptr, ll);
    memcpy(joined + ll, sp + 1, rl);
    int32_t a = strata_tok_intern(t, s->ptr, ll);
    int32_t b = a < 0 ? -1 : strata_tok_intern(t, sp + 1, rl);
    int32_t r = b < 0 ? -1 : strata_tok_intern(t, joined, ll + rl);
    if (r < 0) {
      free(joined);
      return strata_errf(err, errlen, "out of memory");
    }
    t->merge_result[i] = r;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t h = (size_t)pair_hash(key) & t->pair_mask;
    while (t->pair_key[h] != UINT64_MAX && t->pair_key[h] != key)
      h = (h + 1) & t->pair_mask;
    if (t->pair_key[h] ==
        UINT64_MAX) { /* a repeated pair keeps its first rank */
      t->pair_key[h] = key;
      t->pair_rank[h] = (int32_t)i;
    }
  }
  free(joined);
  return 0;
}

void strata_tok_bpe_free(strata_tokenizer_t *t) {
  for (int i = 0; i < t->n_re; i++)
    pcre2_code_free(t->re[i]);
  t->n_re = 0;
  free(t->pair_key);
  free(t->pair_rank);
  free(t->merge_result);
}

size_t strata_tok_bpe_decode(const strata_tokenizer_t *t, const char *text,
                             size_t len, char *out) {
  const unsigned char *s = (const unsigned char *)text;
  size_t o = 0;
  for (size_t i = 0; i < len;) {
    int r = strata_tok_utf8_next(s + i, len - i);
    if (r <= 0) { /* a broken vocabulary entry: pass its bytes through */
      out[o++] = (char)s[i++];
      continue;
    }
    unsigned cp = r == 1   ? s[i]
                  : r == 2 ? (s[i] & 0x1Fu) << 6 | (s[i + 1] & 0x3Fu)
                           : STRATA_TOK_BYTE_CPS;
    if (cp < STRATA_TOK_BYTE_CPS && t->cp_to_byte[cp] >= 0) {
      out[o++] = (char)t->cp_to_byte[cp];
    } else { /* not a byte character: keep it as it is */
      memcpy(out + o, s + i, (size_t)r);
      o += (size_t)r;
    }
    i += (size_t)r;
  }
  return o;
}

/* ---- encoding
 * ---------------------------------------------------------------------- */

static int span_push(size_t **v, size_t *n, size_t *cap, size_t off,
                     size_t len) {
  if (*n + 2 > *cap) {
    size_t c = *cap ? *cap * 2 : 64;
    size_t *q = strata_reallocarray(*v, c, sizeof *q);
    if (!q) return -1;
    *v = q;
    *cap = c;
  }
  (*v)[(*n)++] = off;
  (*v)[(*n)++] = len;
  return 0;
}

/* Splits text[off, off+len) by one pattern, appending the pieces (matches
 * and the unmatched text between them) to w->span2. */
static int split_piece(const strata_tokenizer_t *t, struct strata_tok_work *w,
                       const pcre2_code *re, const char *text, size_t off,
                       size_t len, size_t *n2, char *err, size_t errlen) {
  PCRE2_SPTR subj = (PCRE2_SPTR)text + off;
  size_t gap = 0, pos = 0;
  while (pos < len) {
    int rc = pcre2_match(re, subj, len, pos, PCRE2_NO_UTF_CHECK, w->md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its frames on
                                             the heap */
      rc = pcre2_match(re, subj, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       w->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[128];
      pcre2_get_error_message(rc, msg, sizeof msg);
      return strata_errf(err, errlen,
                         "pre-tokenizer '%s' failed at byte offset %zu: %s",
                         t->pre, off + pos, (const char *)msg);
    }
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
    size_t s = (size_t)ov[0], e = (size_t)ov[1];
    if (s < pos || e > len) break; /* cannot happen with these patterns */
    if (e <= s) {                  /* empty match: step over one character */
      if (s >= len) break;
      int r = strata_tok_utf8_next(subj + s, len - s);
      pos = s + (r > 0 ? (size_t)r : 1);
      continue;
    }
    if (s > gap &&
        span_push(&w->span2, n2, &w->cap_span2, off + gap, s - gap) != 0)
      return strata_errf(err, errlen, "out of memory");
    if (span_push(&w->span2, n2, &w->cap_span2, off + s, e - s) != 0)
      return strata_errf(err, errlen, "out of memory");
    gap = pos = e;
  }
  if (gap < len &&
      span_push(&w->span2, n2, &w->cap_span2, off + gap, len - gap) != 0)
    return strata_errf(err, errlen, "out of memory");
  return 0;
}

static int encode_word(const strata_tokenizer_t *t, struct strata_tok_work *w,
                       const unsigned char *word, size_t len, char *err,
                       size_t errlen) {
  if (strata_tok_reserve_buf(w, 2 * len) != 0 ||
      strata_tok_reserve_sym(w, len) != 0)
    return strata_errf(err, errlen, "out of memory");
  char *b = w->buf;
  size_t o = 0;
  for (size_t i = 0; i < len; i++) { /* one symbol per byte */
    unsigned char c = word[i];
    struct strata_tok_sym *s = &w->sym[i];
    s->prev = (int32_t)i - 1;
    s->next = i + 1 < len ? (int32_t)i + 1 : -1;
    s->off = (uint32_t)o;
    s->n = t->byte_enc_len[c];
    memcpy(b + o, t->byte_enc[c], s->n);
    o += s->n;
  }
  if (t->ignore_merges) {
    int32_t id = strata_tok_find(t, b, o);
    if (id >= 0 && id < t->n_vocab)
      return strata_tok_push(w, id) == 0
                 ? 0
                 : strata_errf(err, errlen, "out of memory");
  }
  for (size_t i = 0; i < len; i++)
    w->sym[i].id = strata_tok_find(t, b + w->sym[i].off, w->sym[i].n);
  if (strata_tok_merge(t, w, b, len) != 0)
    return strata_errf(err, errlen, "out of memory");
  for (int32_t i = 0; i != -1; i = w->sym[i].next) {
    const struct strata_tok_sym *s = &w->sym[i];
    if (s->id >= 0 && s->id < t->n_vocab) {
      if (strata_tok_push(w, s->id) != 0)
        return strata_errf(err, errlen, "out of memory");
      continue;
    }
    /* a merge produced a string that is not a token (a broken vocabulary):
     * spell it with the tokens of its byte characters, dropping bytes that
     * have none, as llama.cpp drops them */
    for (uint32_t j = 0; j < s->n;) {
      const char *c = b + s->off + j;
      int r = strata_tok_utf8_next((const unsigned char *)c, s->n - j);
      size_t cl = r > 0 ? (size_t)r : 1;
      int32_t id = strata_tok_find(t, c, cl);
      if (id >= 0 && id < t->n_vocab && strata_tok_push(w, id) != 0)
        return strata_errf(err, errlen, "out of memory");
      j += (uint32_t)cl;
    }
  }
  return 0;
}

int strata_tok_bpe_encode(const strata_tokenizer_t *t,
                          struct strata_tok_work *w, const char *text,
                          size_t len, char *err, size_t errlen) {
  if (len == 0) return 0;
  if (!w->md && !(w->md = pcre2_match_data_create(1, NULL)))
    return strata_errf(err, errlen, "out of memory");
  w->n_span = 0;
  if (span_push(&w->span, &w->n_span, &w->cap_span, 0, len) != 0)
    return strata_errf(err, errlen, "out of memory");
  for (int r = 0; r < t->n_re; r++) {
    size_t n2 = 0;
    for (size_t i = 0; i < w->n_span; i += 2)
      if (split_piece(t, w, t->re[r], text, w->span[i], w->span[i + 1], &n2,
                      err, errlen) != 0)
        return -1;
    size_t *tmp = w->span;
    size_t tcap = w->cap_span;
    w->span = w->span2;
    w->cap_span = w->cap_span2;
    w->n_span = n2;
    w->span2 = tmp;
    w->cap_span2 = tcap;
  }
  for (size_t i = 0; i < w->n_span; i += 2)
    if (encode_word(t, w, (const unsigned char *)text + w->span[i],
                    w->span[i + 1], err, errlen) != 0)
      return -1;
  return 0;
}
