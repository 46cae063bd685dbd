/* Tokenizers from GGUF metadata: loading, the SentencePiece ("llama") path,
 * the merge loop shared with byte-level BPE, special-token splitting and
 * detokenizing. The byte-level BPE specifics live in tokenizer_bpe.c.
 *
 * Why hand-written: no Debian 12 package offers SentencePiece or byte-level
 * BPE tokenization driven by GGUF metadata for C (libsentencepiece wants its
 * own protobuf model files and has no byte-level BPE); PCRE2 does the one
 * part a library fits, the pre-tokenizer regexes. The behaviour follows
 * llama.cpp's tokenizers, which the ../shared/vocab test vectors check. */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "util.h"

/* ---- UTF-8 ----------------------------------------------------------------
 */

int strata_tok_utf8_next(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  int need;
  unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c == 0xE0) {
    need = 3, lo = 0xA0; /* no overlongs */
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    need = 3;
  } else if (c == 0xED) {
    need = 3, hi = 0x9F; /* no surrogates */
  } else if (c == 0xF0) {
    need = 4, lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    need = 4;
  } else if (c == 0xF4) {
    need = 4, hi = 0x8F; /* nothing above U+10FFFF */
  } else {
    return -1; /* continuation byte, C0/C1 overlong lead, F5..FF */
  }
  for (int i = 1; i < need; i++) {
    if ((size_t)i >= n) return 0;
    unsigned b = s[i];
    if (b < lo || b > hi) return -i;
    lo = 0x80, hi = 0xBF;
  }
  return need;
}

size_t strata_utf8_sanitize(const unsigned char *in, size_t n, int final, char *out,
                            size_t *consumed) {
  size_t i = 0, o = 0;
  while (i < n) {
    int r = strata_tok_utf8_next(in + i, n - i);
    if (r > 0) {
      if (out) memcpy(out + o, in + i, (size_t)r);
      o += (size_t)r;
      i += (size_t)r;
      continue;
    }
    if (r == 0 && !final) break;
    if (out) memcpy(out + o, "\xEF\xBF\xBD", 3);
    o += 3;
    i += r == 0 ? n - i : (size_t)-r;
  }
  if (consumed) *consumed = i;
  return o;
}

/* ---- interned strings ------------------------------------------------------
 */

static uint32_t str_hash(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 0x100000001b3ull;
  }
  return (uint32_t)(h ^ (h >> 32));
}

static int32_t tab_find_h(const strata_tokenizer_t *t, const char *s, size_t n,
                          uint32_t h, size_t *slot_out) {
  const struct strata_tok_strtab *tab = &t->tab;
  size_t i = h & tab->mask;
  for (;;) {
    int32_t id = tab->slot[i];
    if (id < 0) break;
    if (tab->hash[i] == h && t->str_len[id] == n &&
        memcmp(t->arena + t->str_off[id], s, n) == 0) {
      if (slot_out) *slot_out = i;
      return id;
    }
    i = (i + 1) & tab->mask;
  }
  if (slot_out) *slot_out = i;
  return -1;
}

int32_t strata_tok_find(const strata_tokenizer_t *t, const char *s, size_t n) {
  if (!t->tab.slot) return -1;
  return tab_find_h(t, s, n, str_hash(s, n), NULL);
}

static int tab_grow(strata_tokenizer_t *t, size_t want_entries) {
  size_t cap = 16;
  while (cap < want_entries * 2)
    cap *= 2;
  if (cap - 1 <= t->tab.mask && t->tab.slot) return 0;
  int32_t *slot = malloc(cap * sizeof *slot);
  uint32_t *hash = malloc(cap * sizeof *hash);
  if (!slot || !hash) {
    free(slot);
    free(hash);
    return -1;
  }
  memset(slot, 0xff, cap * sizeof *slot);
  size_t mask = cap - 1;
  if (t->tab.slot) {
    for (size_t i = 0; i <= t->tab.mask; i++) {
      if (t->tab.slot[i] < 0) continue;
      size_t j = t->tab.hash[i] & mask;
      while (slot[j] >= 0)
        j = (j + 1) & mask;
      slot[j] = t->tab.slot[i];
      hash[j] = t->tab.hash[i];
    }
  }
  free(t->tab.slot);
  free(t->tab.hash);
  t->tab.slot = slot;
  t->tab.hash = hash;
  t->tab.mask = mask;
  return 0;
}

/* Appends a string to the arena and string arrays (no hashing). */
static int32_t str_add(strata_tokenizer_t *t, const char *s, size_t n) {
  if (t->n_strs == t->cap_strs) {
    if (t->cap_strs > INT32_MAX / 2) return -1;
    int32_t cap = t->cap_strs ? t->cap_strs * 2 : 64;
    size_t *off = strata_reallocarray(t->str_off, (size_t)cap, sizeof *off);
    if (!off) return -1;
    t->str_off = off;
    uint32_t *len = strata_reallocarray(t->str_len, (size_t)cap, sizeof *len);
    if (!len) return -1;
    t->str_len = len;
    t->cap_strs = cap;
  }
  if (t->arena_len + n + 1 > t->arena_cap) {
    size_t cap = t->arena_cap ? t->arena_cap : 4096;
    while (cap < t->arena_len + n + 1)
      cap *= 2;
    char *a = realloc(t->arena, cap);
    if (!a) return -1;
    t->arena = a;
    t->arena_cap = cap;
  }
  memcpy(t->arena + t->arena_len, s, n);
  t->arena[t->arena_len + n] = '\0';
  t->str_off[t->n_strs] = t->arena_len;
  t->str_len[t->n_strs] = (uint32_t)n;
  t->arena_len += n + 1;
  return t->n_strs++;
}

int32_t strata_tok_intern(strata_tokenizer_t *t, const char *s, size_t n) {
  uint32_t h = str_hash(s, n);
  int32_t id = tab_find_h(t, s, n, h, NULL);
  if (id >= 0) return id;
  if ((t->tab.used + 1) * 2 > t->tab.mask + 1 &&
      tab_grow(t, t->tab.used + 1) != 0)
    return -1;
  id = str_add(t, s, n);
  if (id < 0) return -1;
  size_t slot;
  tab_find_h(t, s, n, h, &slot);
  t->tab.slot[slot] = id;
  t->tab.hash[slot] = h;
  t->tab.used++;
  return id;
}

/* ---- loading
 * ----------------------------------------------------------------- */

/* *out is NULL when the key is absent; -1 when it has the wrong type. */
static int get_array(const strata_gguf_t *g, const char *key, int want_string,
                     const struct strata_gguf_value **out, char *err,
                     size_t errlen) {
  const struct strata_gguf_value *v = strata_gguf_get(g, key);
  *out = NULL;
  if (!v) return 0;
  int is_string =
      v->type == STRATA_GGUF_ARRAY && v->v.arr.type == STRATA_GGUF_STRING;
  int is_number = v->type == STRATA_GGUF_ARRAY &&
                  v->v.arr.type != STRATA_GGUF_STRING &&
                  v->v.arr.type != STRATA_GGUF_ARRAY;
  if (want_string ? !is_string : !is_number)
    return strata_errf(err, errlen, "%s is not an array of %s", key,
                       want_string ? "strings" : "numbers");
  *out = v;
  return 0;
}

static int is_special_attr(uint8_t a) {
  return a == STRATA_TOKEN_CONTROL || a == STRATA_TOKEN_USER_DEFINED ||
         a == STRATA_TOKEN_UNKNOWN;
}

struct len_id {
  uint32_t len;
  int32_t id;
};

static int cmp_len_desc(const void *pa, const void *pb) {
  const struct len_id *a = pa, *b = pb;
  if (a->len != b->len) return a->len > b->len ? -1 : 1;
  return a->id < b->id ? -1 : a->id > b->id;
}

/* Parses "<0xAB>"; -1 when the text is not of that form. */
static int parse_byte_token(const char *s, size_t n) {
  if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; i++) {
    char c = s[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                   : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

static int build_pieces(strata_tokenizer_t *t) {
  t->piece_arena = malloc(t->arena_len ? t->arena_len : 1);
  t->piece_off = strata_calloc((size_t)t->n_vocab, sizeof *t->piece_off);
  t->piece_len = strata_calloc((size_t)t->n_vocab, sizeof *t->piece_len);
  if (!t->piece_arena || !t->piece_off || !t->piece_len) return -1;
  size_t o = 0;
  for (int32_t id = 0; id < t->n_vocab; id++) {
    const char *s = t->arena + t->str_off[id];
    size_t n = t->str_len[id];
    char *p = t->piece_arena + o;
    size_t m = 0;
    int b;
    switch (t->attr[id]) {
    case STRATA_TOKEN_UNUSED:
      break;
    case STRATA_TOKEN_BYTE:
      if ((b = parse_byte_token(s, n)) >= 0) {
        p[m++] = (char)b;
        break;
      }
      memcpy(p, s, n), m = n;
      break;
    case STRATA_TOKEN_NORMAL:
      if (t->kind == STRATA_TOK_BPE) {
        m = strata_tok_bpe_decode(t, s, n, p);
        break;
      }
      for (size_t i = 0; i < n;
           i++) { /* U+2581 is how SentencePiece spells a space */
        if (i + 2 < n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
          p[m++] = ' ';
          i += 2;
        } else {
          p[m++] = s[i];
        }
      }
      break;
    default: /* control, unknown, user-defined: their text as is */
      memcpy(p, s, n), m = n;
      break;
    }
    t->piece_off[id] = o;
    t->piece_len[id] = (uint32_t)m;
    o += m;
  }
  return 0;
}

/* Reads an id key; keeps *id when absent or out of range (llama.cpp does the
 * same: converters write 0xFFFFFFFF for "none"). */
static void get_token_id(const strata_gguf_t *g, const char *key, int32_t n,
                         int32_t *id) {
  int64_t v;
  if (strata_gguf_get_int(g, key, &v) == 0 && v >= 0 && v < n) *id = (int32_t)v;
}

int strata_tokenizer_load(const strata_gguf_t *g, strata_tokenizer_t **out,
                          char *err, size_t errlen) {
  *out = NULL;
  const char *model = NULL;
  size_t model_len = 0;
  if (!strata_gguf_get(g, "tokenizer.ggml.model"))
    return strata_errf(err, errlen,
                       "no tokenizer: tokenizer.ggml.model is missing");
  if (strata_gguf_get_string(g, "tokenizer.ggml.model", &model, &model_len) !=
      0)
    return strata_errf(err, errlen, "tokenizer.ggml.model is not a string");
  enum strata_tok_kind kind;
  if (model_len == 5 && memcmp(model, "llama", 5) == 0) {
    kind = STRATA_TOK_SPM;
  } else if (model_len == 4 && memcmp(model, "gpt2", 4) == 0) {
    kind = STRATA_TOK_BPE;
  } else {
    return strata_errf(err, errlen,
                       "unsupported tokenizer.ggml.model '%.*s' (supported: "
                       "llama, gpt2)",
                       (int)(model_len > 64 ? 64 : model_len), model);
  }

  const struct strata_gguf_value *toks, *scores, *types;
  if (get_array(g, "tokenizer.ggml.tokens", 1, &toks, err, errlen) != 0 ||
      get_array(g, "tokenizer.ggml.scores", 0, &scores, err, errlen) != 0 ||
      get_array(g, "tokenizer.ggml.token_type", 0, &types, err, errlen) != 0)
    return -1;
  if (!toks)
    return strata_errf(err, errlen, "tokenizer.ggml.tokens is missing");
  uint64_t n = toks->v.arr.n;
  if (n == 0) return strata_errf(err, errlen, "tokenizer.ggml.tokens is empty");
  if (n > INT32_MAX / 4)
    return strata_errf(err, errlen,
                       "tokenizer.ggml.tokens has too many entries (%llu)",
                       (unsigned long long)n);
  if (scores && scores->v.arr.n < n)
    return strata_errf(
        err, errlen, "tokenizer.ggml.scores has %llu entries for %llu tokens",
        (unsigned long long)scores->v.arr.n, (unsigned long long)n);
  if (types && types->v.arr.n < n)
    return strata_errf(
        err, errlen,
        "tokenizer.ggml.token_type has %llu entries for %llu tokens",
        (unsigned long long)types->v.arr.n, (unsigned long long)n);

  strata_tokenizer_t *t = calloc(1, sizeof *t);
  if (!t) return strata_errf(err, errlen, "out of memory");
  t->kind = kind;
  t->n_vocab = (int32_t)n;
  t->bos = t->eos = t->unk = -1;
  memset(t->byte_tok, 0xff, sizeof t->byte_tok);
  memset(t->cp_to_byte, 0xff, sizeof t->cp_to_byte);

  /* one arena for all texts: size it up front */
  size_t total = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t len = toks->v.arr.strs[i].len;
    if (len > (1u << 20)) {
      strata_errf(err, errlen, "token %llu is %llu bytes long",
                  (unsigned long long)i, (unsigned long long)len);
      goto fail;
    }
    total += (size_t)len + 1;
  }
  t->arena_cap = total + 1;
  t->arena = malloc(t->arena_cap);
  t->cap_strs = (int32_t)n;
  t->str_off = strata_calloc((size_t)n, sizeof *t->str_off);
  t->str_len = strata_calloc((size_t)n, sizeof *t->str_len);
  t->score = strata_calloc((size_t)n, sizeof *t->score);
  t->attr = strata_calloc((size_t)n, sizeof *t->attr);
  if (!t->arena || !t->str_off || !t->str_len || !t->score || !t->attr ||
      tab_grow(t, (size_t)n) != 0) {
    strata_errf(err, errlen, "out of memory loading %llu tokens",
                (unsigned long long)n);
    goto fail;
  }
  for (uint64_t i = 0; i < n; i++) {
    const struct strata_gguf_str *s = &toks->v.arr.strs[i];
    size_t len = (size_t)s->len;
    uint32_t h = str_hash(s->ptr, len);
    size_t slot;
    int32_t dup = len ? tab_find_h(t, s->ptr, len, h, &slot) : -1;
    if (dup >= 0) {
      strata_errf(err, errlen,
                  "duplicate token in vocabulary: '%.*s' has ids %d and %llu",
                  (int)(len > 64 ? 64 : len), s->ptr, dup,
                  (unsigned long long)i);
      goto fail;
    }
    int32_t id = str_add(t, s->ptr, len);
    if (id < 0) {
      strata_errf(err, errlen, "out of memory");
      goto fail;
    }
    if (len) { /* an empty token can never be matched; keep it unhashed */
      t->tab.slot[slot] = id;
      t->tab.hash[slot] = h;
      t->tab.used++;
    }
    double sc = scores ? strata_gguf_arr_f64(scores, i) : 0.0;
    t->score[i] = isnan(sc) ? -FLT_MAX : (float)sc;
    int64_t ty = types ? strata_gguf_arr_i64(types, i) : STRATA_TOKEN_NORMAL;
    /* undefined types (0, or anything unknown) behave as normal text */
    t->attr[i] = ty >= STRATA_TOKEN_NORMAL && ty <= STRATA_TOKEN_BYTE
                     ? (uint8_t)ty
                     : (uint8_t)STRATA_TOKEN_NORMAL;
  }

  int add_bos = 0, add_eos = 0;
  if (kind == STRATA_TOK_SPM) {
    t->bos = 1 < t->n_vocab ? 1 : -1;
    t->eos = 2 < t->n_vocab ? 2 : -1;
    t->unk = 0;
    add_bos = 1;
    t->add_space_prefix = 1;
  } else {
    const char *pre = NULL;
    size_t pre_len = 0;
    if (strata_gguf_get(g, "tokenizer.ggml.pre") &&
        strata_gguf_get_string(g, "tokenizer.ggml.pre", &pre, &pre_len) != 0) {
      strata_errf(err, errlen, "tokenizer.ggml.pre is not a string");
      goto fail;
    }
    if (strata_tok_bpe_load(t, g, pre, pre_len, &add_bos, err, errlen) != 0)
      goto fail;
  }
  get_token_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos);
  get_token_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos);
  get_token_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk);
  int b;
  if (strata_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == 0)
    add_bos = b;
  if (strata_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b) == 0)
    add_eos = b;
  /* only SentencePiece adds a space prefix; for byte-level BPE the key (which
   * some converters write) would make detokenizing drop a real space */
  if (kind == STRATA_TOK_SPM &&
      strata_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b) == 0)
    t->add_space_prefix = b;
  if (add_bos && t->bos < 0) {
    strata_errf(err, errlen,
                "the tokenizer adds a BOS token but "
                "tokenizer.ggml.bos_token_id is not set");
    goto fail;
  }
  if (add_eos && t->eos < 0) {
    strata_errf(err, errlen,
                "the tokenizer adds an EOS token but "
                "tokenizer.ggml.eos_token_id is not set");
    goto fail;
  }
  t->add_bos = add_bos;
  t->add_eos = add_eos;

  if (kind == STRATA_TOK_SPM) {
    for (int c = 0; c < 256; c++) {
      char name[8];
      snprintf(name, sizeof name, "<0x%02X>", c);
      int32_t id = strata_tok_find(t, name, 6);
      if (id < 0) {
        char one = (char)c;
        id = strata_tok_find(t, &one, 1);
      }
      t->byte_tok[c] = id >= 0 ? id : t->unk;
    }
  }

  size_t n_special = 0;
  for (int32_t i = 0; i < t->n_vocab; i++)
    if (is_special_attr(t->attr[i]) && t->str_len[i] > 0) n_special++;
  if (n_special) {
    struct len_id *tmp = strata_calloc(n_special, sizeof *tmp);
    t->special = strata_calloc(n_special, sizeof *t->special);
    if (!tmp || !t->special) {
      free(tmp);
      strata_errf(err, errlen, "out of memory");
      goto fail;
    }
    size_t k = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
      if (is_special_attr(t->attr[i]) && t->str_len[i] > 0)
        tmp[k++] = (struct len_id){t->str_len[i], i};
    qsort(tmp, n_special, sizeof *tmp, cmp_len_desc);
    for (k = 0; k < n_special; k++)
      t->special[k] = tmp[k].id;
    free(tmp);
    t->n_special = n_special;
  }

  if (build_pieces(t) != 0) {
    strata_errf(err, errlen, "out of memory");
    goto fail;
  }
  *out = t;
  return 0;
fail:
  strata_tokenizer_free(t);
  return -1;
}

void strata_tokenizer_free(strata_tokenizer_t *t) {
  if (!t) return;
  strata_tok_bpe_free(t);
  free(t->arena);
  free(t->str_off);
  free(t->str_len);
  free(t->tab.slot);
  free(t->tab.hash);
  free(t->score);
  free(t->attr);
  free(t->piece_arena);
  free(t->piece_off);
  free(t->piece_len);
  free(t->special);
  free(t);
}

/* ---- accessors
 * ------------------------------------------------------------------ */

int32_t strata_tokenizer_n_vocab(const strata_tokenizer_t *t) {
  return t->n_vocab;
}
int32_t strata_tokenizer_bos(const strata_tokenizer_t *t) {
  return t->bos;
}
int32_t strata_tokenizer_eos(const strata_tokenizer_t *t) {
  return t->eos;
}
int strata_tokenizer_is_end(const strata_tokenizer_t *t, int32_t id) {
  return id == strata_tokenizer_eos(t) || id == strata_tokenizer_bos(t) ||
         strata_tokenizer_token_attr(t, id) == STRATA_TOKEN_CONTROL;
}

int strata_tokenizer_add_bos(const strata_tokenizer_t *t) {
  return t->add_bos;
}
int strata_tokenizer_add_eos(const strata_tokenizer_t *t) {
  return t->add_eos;
}

const char *strata_tokenizer_token_text(const strata_tokenizer_t *t,
                                        int32_t id) {
  if (id < 0 || id >= t->n_vocab) return NULL;
  return t->arena + t->str_off[id];
}

enum strata_token_attr strata_tokenizer_token_attr(const strata_tokenizer_t *t,
                                                   int32_t id) {
  if (id < 0 || id >= t->n_vocab) return STRATA_TOKEN_UNUSED;
  return (enum strata_token_attr)t->attr[id];
}

int32_t strata_tokenizer_lookup(const strata_tokenizer_t *t, const char *text,
                                size_t len) {
  if (!text || !len) return -1;
  int32_t id = strata_tok_find(t, text, len);
  return id < t->n_vocab ? id : -1;
}

/* ---- scratch space
 * ------------------------------------------------------------------ */

/* Returns the array p, moved if need be, with room for want elements; NULL
 * on OOM (p is then still valid and still owned by the caller). */
static void *grow(void *p, size_t *cap, size_t want, size_t elem) {
  if (want <= *cap) return p;
  size_t c = *cap ? *cap : 64;
  while (c < want) {
    if (c > SIZE_MAX / 2) return NULL;
    c *= 2;
  }
  void *q = strata_reallocarray(p, c, elem);
  if (q) *cap = c;
  return q;
}

static int grow_into(void *slot, void *q) {
  if (!q) return -1;
  memcpy(slot, &q, sizeof q); /* stores the pointer without aliasing casts */
  return 0;
}

/* GROW(array, cap, want): 0, or -1 on OOM. */
#define GROW(a, cap, want)                                                     \
  grow_into(&(a), grow((a), &(cap), (want), sizeof *(a)))

int strata_tok_push(struct strata_tok_work *w, int32_t id) {
  if (GROW(w->out, w->cap_out, w->n_out + 1) != 0) return -1;
  w->out[w->n_out++] = id;
  return 0;
}

int strata_tok_reserve_buf(struct strata_tok_work *w, size_t n) {
  return GROW(w->buf, w->cap_buf, n);
}

int strata_tok_reserve_sym(struct strata_tok_work *w, size_t n) {
  return GROW(w->sym, w->cap_sym, n);
}

static void work_free(struct strata_tok_work *w) {
  free(w->out);
  free(w->sym);
  free(w->heap);
  free(w->buf);
  free(w->span);
  free(w->span2);
  if (w->md) pcre2_match_data_free(w->md);
}

/* ---- the merge loop
 * ---------------------------------------------------------------- */

static int bigram_better(const struct strata_tok_bigram *a,
                         const struct strata_tok_bigram *b) {
  return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static int heap_push(struct strata_tok_work *w,
                     const struct strata_tok_bigram *b) {
  if (GROW(w->heap, w->cap_heap, w->n_heap + 1) != 0) return -1;
  size_t i = w->n_heap++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!bigram_better(b, &w->heap[parent])) break;
    w->heap[i] = w->heap[parent];
    i = parent;
  }
  w->heap[i] = *b;
  return 0;
}

static void heap_pop(struct strata_tok_work *w, struct strata_tok_bigram *top) {
  *top = w->heap[0];
  struct strata_tok_bigram last = w->heap[--w->n_heap];
  size_t n = w->n_heap, i = 0;
  if (n == 0) return;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && bigram_better(&w->heap[c + 1], &w->heap[c])) c++;
    if (!bigram_better(&w->heap[c], &last)) break;
    w->heap[i] = w->heap[c];
    i = c;
  }
  w->heap[i] = last;
}

static int try_pair(const strata_tokenizer_t *t, struct strata_tok_work *w,
                    const char *text, int32_t left, int32_t right) {
  if (left < 0 || right < 0) return 0;
  const struct strata_tok_sym *l = &w->sym[left], *r = &w->sym[right];
  struct strata_tok_bigram b;
  if (t->kind == STRATA_TOK_SPM) {
    int32_t id = strata_tok_find(t, text + l->off, (size_t)l->n + r->n);
    if (id < 0 || id >= t->n_vocab) return 0;
    b.prio = t->score[id];
    b.merged = id;
  } else {
    if (l->id < 0 || r->id < 0) return 0;
    int32_t rank = strata_tok_bpe_rank(t, l->id, r->id);
    if (rank < 0) return 0;
    b.prio = -(double)rank;
    b.merged = t->merge_result[rank];
  }
  b.left = left;
  b.right = right;
  b.size = l->n + r->n;
  return heap_push(w, &b);
}

int strata_tok_merge(const strata_tokenizer_t *t, struct strata_tok_work *w,
                     const char *text, size_t n) {
  w->n_heap = 0;
  for (size_t i = 1; i < n; i++)
    if (try_pair(t, w, text, (int32_t)i - 1, (int32_t)i) != 0) return -1;
  while (w->n_heap) {
    struct strata_tok_bigram b;
    heap_pop(w, &b);
    struct strata_tok_sym *l = &w->sym[b.left], *r = &w->sym[b.right];
    /* stale: one side was merged elsewhere since this pair was queued */
    if (l->n == 0 || r->n == 0 || l->next != b.right || l->n + r->n != b.size)
      continue;
    l->n += r->n;
    l->id = b.merged;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0) w->sym[r->next].prev = b.left;
    if (try_pair(t, w, text, l->prev, b.left) != 0 ||
        try_pair(t, w, text, b.left, l->next) != 0)
      return -1;
  }
  return 0;
}

/* ---- SentencePiece
 * ---------------------------------------------------------------- */

static int spm_encode(const strata_tokenizer_t *t, struct strata_tok_work *w,
                      const char *text, size_t len, int add_prefix, char *err,
                      size_t errlen) {
  size_t n_space = (size_t)add_prefix;
  for (size_t i = 0; i < len; i++)
    n_space += text[i] == ' ';
  size_t esc_len = len + (size_t)add_prefix + 2 * n_space;
  if (strata_tok_reserve_buf(w, esc_len + 1) != 0)
    return strata_errf(err, errlen, "out of memory");
  char *b = w->buf;
  size_t o = 0;
  if (add_prefix) memcpy(b, "\xE2\x96\x81", 3), o = 3;
  for (size_t i = 0; i < len; i++) {
    if (text[i] == ' ') {
      memcpy(b + o, "\xE2\x96\x81", 3);
      o += 3;
    } else {
      b[o++] = text[i];
    }
  }
  size_t n_sym = 0;
  for (size_t i = 0; i < esc_len;) {
    int r = strata_tok_utf8_next((const unsigned char *)b + i, esc_len - i);
    i += r > 0 ? (size_t)r : 1; /* the input was validated */
    n_sym++;
  }
  if (strata_tok_reserve_sym(w, n_sym) != 0)
    return strata_errf(err, errlen, "out of memory");
  size_t k = 0;
  for (size_t i = 0; i < esc_len; k++) {
    int r = strata_tok_utf8_next((const unsigned char *)b + i, esc_len - i);
    size_t cl = r > 0 ? (size_t)r : 1;
    struct strata_tok_sym *s = &w->sym[k];
    s->prev = (int32_t)k - 1;
    s->next = k + 1 < n_sym ? (int32_t)k + 1 : -1;
    s->off = (uint32_t)i;
    s->n = (uint32_t)cl;
    s->id = strata_tok_find(t, b + i, cl);
    i += cl;
  }
  if (n_sym == 0) return 0;
  if (strata_tok_merge(t, w, b, n_sym) != 0)
    return strata_errf(err, errlen, "out of memory");
  for (int32_t i = 0; i != -1; i = w->sym[i].next) {
    const struct strata_tok_sym *s = &w->sym[i];
    if (s->id >= 0 && s->id < t->n_vocab) {
      if (strata_tok_push(w, s->id) != 0)
        return strata_errf(err, errlen, "out of memory");
      continue;
    }
    /* not a token: spell it with byte tokens */
    for (uint32_t j = 0; j < s->n; j++) {
      unsigned char c = (unsigned char)b[s->off + j];
      if (t->byte_tok[c] < 0)
        return strata_errf(
            err, errlen,
            "no token for byte 0x%02X (the vocabulary has neither "
            "<0x%02X> nor <unk>)",
            c, c);
      if (strata_tok_push(w, t->byte_tok[c]) != 0)
        return strata_errf(err, errlen, "out of memory");
    }
  }
  return 0;
}

/* ---- special tokens
 * ----------------------------------------------------------------- */

struct frag {
  size_t off, len;
  int32_t tok; /* >= 0: a special token; -1: text */
};

static int cmp_frag_off(const void *pa, const void *pb) {
  const struct frag *a = pa, *b = pb;
  return a->off < b->off ? -1 : a->off > b->off;
}

/* Cuts special tokens out of the text the way llama.cpp does: each token in
 * turn, longest first, takes its leftmost non-overlapping occurrences in the
 * text not yet taken. User-defined tokens are always cut out (as Hugging Face
 * does for added non-special tokens); control and unknown tokens only when
 * parse_special. Fills *frags with text and token pieces in order. */
static int split_special(const strata_tokenizer_t *t, const char *text,
                         size_t len, int parse_special, struct frag **frags,
                         size_t *n_frags) {
  struct frag *hit = NULL;
  size_t n_hit = 0, cap_hit = 0;
  unsigned char *taken = NULL;
  *frags = NULL;
  *n_frags = 0;
  if (len == 0) return 0;
  if (t->n_special) {
    /* which bytes and byte pairs occur: most special tokens cannot occur at
     * all, and this spares a scan of the text for each */
    static const size_t pair_words = 65536 / 64;
    uint64_t *pairs = calloc(pair_words + 4, sizeof *pairs);
    if (!pairs) return -1;
    uint64_t *bytes = pairs + pair_words;
    for (size_t i = 0; i < len; i++) {
      unsigned c = (unsigned char)text[i];
      bytes[c >> 6] |= 1ull << (c & 63);
      if (i + 1 < len) {
        unsigned p = c << 8 | (unsigned char)text[i + 1];
        pairs[p >> 6] |= 1ull << (p & 63);
      }
    }
    for (size_t k = 0; k < t->n_special; k++) {
      int32_t id = t->special[k];
      if (!parse_special && t->attr[id] != STRATA_TOKEN_USER_DEFINED) continue;
      const char *s = t->arena + t->str_off[id];
      size_t sl = t->str_len[id];
      if (sl > len) continue;
      unsigned c0 = (unsigned char)s[0];
      unsigned p = sl == 1 ? c0 : c0 << 8 | (unsigned char)s[1];
      const uint64_t *set = sl == 1 ? bytes : pairs;
      if (!(set[p >> 6] >> (p & 63) & 1)) continue;
      size_t pos = 0;
      while (pos + sl <= len) {
        const char *m = memmem(text + pos, len - pos, s, sl);
        if (!m) break;
        size_t at = (size_t)(m - text);
        if (!taken && !(taken = calloc(len, 1))) {
          free(pairs);
          free(hit);
          return -1;
        }
        size_t j = 0;
        while (j < sl && !taken[at + j])
          j++;
        if (j < sl) { /* overlaps a longer token already cut out */
          pos = at + 1;
          continue;
        }
        memset(taken + at, 1, sl);
        if (GROW(hit, cap_hit, n_hit + 1) != 0) {
          free(pairs);
          free(hit);
          free(taken);
          return -1;
        }
        hit[n_hit++] = (struct frag){at, sl, id};
        pos = at + sl;
      }
    }
    free(pairs);
    free(taken);
  }
  struct frag *f = strata_calloc(2 * n_hit + 1, sizeof *f);
  if (!f) {
    free(hit);
    return -1;
  }
  if (n_hit > 1) qsort(hit, n_hit, sizeof *hit, cmp_frag_off);
  size_t n = 0, pos = 0;
  for (size_t i = 0; i < n_hit; i++) {
    if (hit[i].off > pos) f[n++] = (struct frag){pos, hit[i].off - pos, -1};
    f[n++] = hit[i];
    pos = hit[i].off + hit[i].len;
  }
  if (pos < len) f[n++] = (struct frag){pos, len - pos, -1};
  free(hit);
  *frags = f;
  *n_frags = n;
  return 0;
}

/* ---- tokenize
 * ------------------------------------------------------------------------ */

/* Invalid UTF-8 is refused rather than repaired: silently substituting
 * U+FFFD would make the model see text the client never sent, and the byte
 * offset lets the client find the fault. */
int strata_tokenize(const strata_tokenizer_t *t, const char *text, size_t len,
                    int add_special, int parse_special, int32_t **tokens,
                    size_t *n_tokens, char *err, size_t errlen) {
  if (!tokens || !n_tokens) return strata_errf(err, errlen, "no output given");
  *tokens = NULL;
  *n_tokens = 0;
  if (len && !text) return strata_errf(err, errlen, "no text given");
  if (len > STRATA_TOK_MAX_TEXT)
    return strata_errf(err, errlen,
                       "text too long (%zu bytes; the limit is %zu)", len,
                       STRATA_TOK_MAX_TEXT);
  for (size_t i = 0; i < len;) {
    if ((unsigned char)text[i] < 0x80) { /* fast path for ASCII */
      i++;
      continue;
    }
    int r = strata_tok_utf8_next((const unsigned char *)text + i, len - i);
    if (r <= 0)
      return strata_errf(
          err, errlen, "invalid UTF-8 at byte offset %zu (byte 0x%02X%s)", i,
          (unsigned char)text[i], r == 0 ? ", truncated sequence" : "");
    i += (size_t)r;
  }

  struct strata_tok_work w = {0};
  struct frag *frags = NULL;
  size_t n_frags = 0;
  int rc = -1;
  if (strata_tok_reserve_buf(&w, 16) != 0 || GROW(w.out, w.cap_out, 16) != 0) {
    strata_errf(err, errlen, "out of memory");
    goto done;
  }
  if (add_special && t->add_bos && strata_tok_push(&w, t->bos) != 0) {
    strata_errf(err, errlen, "out of memory");
    goto done;
  }
  if (split_special(t, text, len, parse_special, &frags, &n_frags) != 0) {
    strata_errf(err, errlen, "out of memory");
    goto done;
  }
  int prev_special = 1; /* SentencePiece prefixes a space at the start */
  for (size_t i = 0; i < n_frags; i++) {
    const struct frag *f = &frags[i];
    if (f->tok >= 0) {
      if (strata_tok_push(&w, f->tok) != 0) {
        strata_errf(err, errlen, "out of memory");
        goto done;
      }
      prev_special = 1;
      continue;
    }
    int r =
        t->kind == STRATA_TOK_SPM
            ? spm_encode(t, &w, text + f->off, f->len,
                         t->add_space_prefix && prev_special, err, errlen)
            : strata_tok_bpe_encode(t, &w, text + f->off, f->len, err, errlen);
    if (r != 0) goto done;
    prev_special = 0;
  }
  if (add_special && t->add_eos && strata_tok_push(&w, t->eos) != 0) {
    strata_errf(err, errlen, "out of memory");
    goto done;
  }
  *tokens = w.out;
  *n_tokens = w.n_out;
  w.out = NULL;
  rc = 0;
done:
  free(frags);
  work_free(&w);
  return rc;
}

/* ---- detokenize
 * ------------------------------------------------------------------------ */

size_t strata_token_to_piece(const strata_tokenizer_t *t, int32_t id,
                             int render_special, char *buf, size_t cap) {
  if (id < 0 || id >= t->n_vocab) return 0;
  uint8_t a = t->attr[id];
  if (!render_special &&
      (a == STRATA_TOKEN_CONTROL || a == STRATA_TOKEN_UNKNOWN))
    return 0;
  size_t n = t->piece_len[id];
  if (n <= cap && n) memcpy(buf, t->piece_arena + t->piece_off[id], n);
  return n;
}

char *strata_detokenize_len(const strata_tokenizer_t *t, const int32_t *tokens,
                            size_t n, int render_special,
                            int skip_leading_space, size_t *out_len) {
  size_t raw_len = 0;
  for (size_t i = 0; i < n; i++)
    raw_len += strata_token_to_piece(t, tokens[i], render_special, NULL, 0);
  unsigned char *raw = malloc(raw_len + 1);
  if (!raw) return NULL;
  int strip = skip_leading_space && t->add_space_prefix;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    size_t m = strata_token_to_piece(t, tokens[i], render_special,
                                     (char *)raw + o, raw_len - o);
    if (m && strip) { /* the first piece carries the space tokenizing added */
      strip = 0;
      if (raw[o] == ' ') memmove(raw + o, raw + o + 1, --m);
    }
    o += m;
  }
  size_t need = strata_utf8_sanitize(raw, o, 1, NULL, NULL);
  char *text = malloc(need + 1);
  if (!text) {
    free(raw);
    return NULL;
  }
  strata_utf8_sanitize(raw, o, 1, text, NULL);
  text[need] = '\0';
  free(raw);
  if (out_len) *out_len = need;
  return text;
}

char *strata_detokenize(const strata_tokenizer_t *t, const int32_t *tokens,
                        size_t n, int render_special, int skip_leading_space) {
  return strata_detokenize_len(t, tokens, n, render_special, skip_leading_space,
                               NULL);
}

void strata_detok_stream_init(struct strata_detok_stream *s,
                              const strata_tokenizer_t *t, int render_special,
                              int skip_leading_space) {
  memset(s, 0, sizeof *s);
  s->t = t;
  s->render_special = render_special;
  s->skip_leading_space = skip_leading_space;
}

size_t strata_detok_stream_push(struct strata_detok_stream *s, int32_t id,
                                char *out, size_t cap) {
  const strata_tokenizer_t *t = s->t;
  size_t plen = strata_token_to_piece(t, id, s->render_special, NULL, 0);
  unsigned char local[256], *buf = local;
  size_t np = (size_t)s->n_pending;
  if (np + plen > sizeof local && !(buf = malloc(np + plen))) return 0;
  memcpy(buf, s->pending, np);
  strata_token_to_piece(t, id, s->render_special, (char *)buf + np, plen);
  int consume_skip = 0;
  if (plen && s->skip_leading_space) { /* same rule as strata_detokenize */
    consume_skip = 1;
    if (t->add_space_prefix && buf[np] == ' ')
      memmove(buf + np, buf + np + 1, --plen);
  }
  size_t total = np + plen, used;
  size_t need = strata_utf8_sanitize(buf, total, 0, NULL, &used);
  if (need <= cap) {
    strata_utf8_sanitize(buf, total, 0, out, &used);
    s->n_pending = (int)(total - used); /* at most 3: an unfinished character */
    memcpy(s->pending, buf + used, total - used);
    s->n_seen++;
    if (consume_skip) s->skip_leading_space = 0;
  }
  if (buf != local) free(buf);
  return need;
}

size_t strata_detok_stream_flush(struct strata_detok_stream *s, char *out,
                                 size_t cap) {
  if (s->n_pending == 0) return 0;
  /* what is held is a valid but unfinished prefix: one maximal subpart */
  if (cap < 3) return 3;
  memcpy(out, "\xEF\xBF\xBD", 3);
  s->n_pending = 0;
  return 3;
}
