/* Private parts of the tokenizers, shared by tokenizer.c (loading, the
 * SentencePiece path, the merge loop, detokenizing) and tokenizer_bpe.c
 * (pre-tokenizer regexes, byte-level mapping, merge ranks). */
#ifndef STRATA_TOKENIZER_IMPL_H
#define STRATA_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

enum strata_tok_kind { STRATA_TOK_SPM, STRATA_TOK_BPE };

#define STRATA_TOK_MAX_REGEX 6
/* Inputs are indexed with 32-bit offsets; the escaped text can grow 3x. */
#define STRATA_TOK_MAX_TEXT ((size_t)1 << 30)
/* Characters of the GPT-2 byte-to-unicode map lie below U+0144. */
#define STRATA_TOK_BYTE_CPS 324

/* Open-addressing hash table of interned strings: slot holds an id into the
 * tokenizer's string arrays, or -1. */
struct strata_tok_strtab {
  int32_t *slot;
  uint32_t *hash;
  size_t mask;
  size_t used;
};

struct strata_tokenizer {
  enum strata_tok_kind kind;
  int32_t n_vocab;

  /* Interned strings: ids [0, n_vocab) are the vocabulary; ids above are
   * merge halves/results that are not tokens (byte-level BPE only), kept so
   * that merging works on strings exactly as the reference does. */
  int32_t n_strs, cap_strs;
  char *arena; /* every string followed by a NUL */
  size_t arena_len, arena_cap;
  size_t *str_off;
  uint32_t *str_len;
  struct strata_tok_strtab tab;

  float *score;  /* [n_vocab] */
  uint8_t *attr; /* [n_vocab] enum strata_token_attr */

  /* What each token renders as (raw text for control tokens); built once so
   * that detokenizing is a copy. */
  char *piece_arena;
  size_t *piece_off;   /* [n_vocab] */
  uint32_t *piece_len; /* [n_vocab] */

  int32_t bos, eos, unk;
  int add_bos, add_eos, add_space_prefix;

  int32_t byte_tok[256]; /* SentencePiece byte fallback, -1 when missing */

  /* Control, user-defined and unknown tokens, longest text first: the order
   * in which they are cut out of the input. */
  int32_t *special;
  size_t n_special;

  /* byte-level BPE */
  char pre[64];
  pcre2_code *re[STRATA_TOK_MAX_REGEX];
  int n_re;
  int ignore_merges;
  uint64_t *pair_key; /* (left id << 32 | right id), UINT64_MAX empty */
  int32_t *pair_rank;
  size_t pair_mask;
  int32_t *merge_result; /* [n_merges] interned id of left+right */
  size_t n_merges;
  unsigned char byte_enc[256][2];
  uint8_t byte_enc_len[256];
  int16_t cp_to_byte[STRATA_TOK_BYTE_CPS]; /* -1: not a byte character */
};

/* One symbol of the merge loop: a run of text[off, off+n) (n == 0 once
 * merged into its left neighbour) and its interned id (-1 if none). */
struct strata_tok_sym {
  int32_t prev, next;
  uint32_t off, n;
  int32_t id;
};

struct strata_tok_bigram {
  double prio; /* higher merges first */
  int32_t left, right, merged;
  uint32_t size;
};

/* Scratch space of one strata_tokenize call (the tokenizer is shared
 * read-only between threads, so nothing mutable lives in it). */
struct strata_tok_work {
  int32_t *out;
  size_t n_out, cap_out;
  struct strata_tok_sym *sym;
  size_t cap_sym;
  struct strata_tok_bigram *heap;
  size_t n_heap, cap_heap;
  char *buf; /* escaped or byte-encoded text */
  size_t cap_buf;
  size_t *span; /* pre-tokenizer pieces: (offset, length) pairs */
  size_t n_span, cap_span;
  size_t *span2;
  size_t cap_span2;
  pcre2_match_data *md;
};

/* UTF-8 (RFC 3629: no overlongs, surrogates or values above U+10FFFF).
 * Returns the length (1-4) of the complete character at s[0..n), 0 when the
 * bytes are a valid but unfinished prefix, or -k when the first k bytes are
 * a maximal invalid subpart (Unicode's rule for placing U+FFFD). n >= 1. */
int strata_tok_utf8_next(const unsigned char *s, size_t n);

int32_t strata_tok_find(const strata_tokenizer_t *t, const char *s, size_t n);
/* Finds or adds a string (adds ids past the vocabulary); -1 on OOM. */
int32_t strata_tok_intern(strata_tokenizer_t *t, const char *s, size_t n);

int strata_tok_push(struct strata_tok_work *w, int32_t id);
int strata_tok_reserve_buf(struct strata_tok_work *w, size_t n);
int strata_tok_reserve_sym(struct strata_tok_work *w, size_t n);
/* Runs the greedy merge loop over w->sym[0..n) (linked in order) on text:
 * SentencePiece merges the adjacent pair whose joined text is the token with
 * the highest score, byte-level BPE the pair with the lowest merge rank; ties
 * go to the leftmost pair. -1 on OOM. */
int strata_tok_merge(const strata_tokenizer_t *t, struct strata_tok_work *w,
                     const char *text, size_t n);

/* tokenizer_bpe.c */
int strata_tok_bpe_load(strata_tokenizer_t *t, const strata_gguf_t *g,
                        const char *pre, size_t pre_len, int *add_bos_default,
                        char *err, size_t errlen);
void strata_tok_bpe_free(strata_tokenizer_t *t);
int32_t strata_tok_bpe_rank(const strata_tokenizer_t *t, int32_t a, int32_t b);
int strata_tok_bpe_encode(const strata_tokenizer_t *t,
                          struct strata_tok_work *w, const char *text,
                          size_t len, char *err, size_t errlen);
/* Maps a byte-level token text back to raw bytes into out (which has room
 * for len bytes: decoding never grows the text); returns the length. */
size_t strata_tok_bpe_decode(const strata_tokenizer_t *t, const char *text,
                             size_t len, char *out);

#endif
