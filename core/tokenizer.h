/* Tokenizers built from GGUF metadata:
 *  - tokenizer.ggml.model = "llama": SentencePiece-style BPE with scores and
 *    byte fallback;
 *  - tokenizer.ggml.model = "gpt2": byte-level BPE with merges, split first by
 *    the pre-tokenizer pattern of tokenizer.ggml.pre (gpt-2, llama-bpe, qwen2,
 *    ...), matched with PCRE2 and Unicode properties. */
#ifndef STRATA_TOKENIZER_H
#define STRATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct strata_tokenizer strata_tokenizer_t;

enum strata_token_attr {
  STRATA_TOKEN_NORMAL = 1,
  STRATA_TOKEN_UNKNOWN = 2,
  STRATA_TOKEN_CONTROL = 3,
  STRATA_TOKEN_USER_DEFINED = 4,
  STRATA_TOKEN_UNUSED = 5,
  STRATA_TOKEN_BYTE = 6,
};

/* Builds a tokenizer from the file's tokenizer.ggml.* metadata. The result
 * does not reference g after return. */
int strata_tokenizer_load(const strata_gguf_t *g, strata_tokenizer_t **out,
                          char *err, size_t errlen);
void strata_tokenizer_free(strata_tokenizer_t *t);

int32_t strata_tokenizer_n_vocab(const strata_tokenizer_t *t);
int32_t strata_tokenizer_bos(const strata_tokenizer_t *t); /* -1 if none */
int32_t strata_tokenizer_eos(const strata_tokenizer_t *t); /* -1 if none */
int strata_tokenizer_add_bos(const strata_tokenizer_t *t);
int strata_tokenizer_add_eos(const strata_tokenizer_t *t);
/* Copies in[0..n) to out replacing each maximal invalid UTF-8 subpart (RFC
 * 3629: no overlongs, no surrogates, at most U+10FFFF) by U+FFFD. Unless
 * final, an unfinished character at the end is left unconsumed. out may be
 * NULL to measure (at most 3 * n). Returns the bytes produced. */
size_t strata_utf8_sanitize(const unsigned char *in, size_t n, int final, char *out,
                            size_t *consumed);
/* Whether generating this token ends the text: EOS, BOS or any control
 * token (small models such as stories260K end a story with BOS). */
int strata_tokenizer_is_end(const strata_tokenizer_t *t, int32_t id);
/* The raw vocabulary entry of a token (NULL when out of range). */
const char *strata_tokenizer_token_text(const strata_tokenizer_t *t,
                                        int32_t id);
enum strata_token_attr strata_tokenizer_token_attr(const strata_tokenizer_t *t,
                                                   int32_t id);
/* Text -> id for an exact vocabulary entry; -1 when absent. */
int32_t strata_tokenizer_lookup(const strata_tokenizer_t *t, const char *text,
                                size_t len);

/* Encodes len bytes of UTF-8 text. add_special: add BOS/EOS as the model's
 * metadata says. parse_special: text matching a control token becomes that
 * token (otherwise it is tokenized as plain text). User-defined tokens are
 * always matched, as llama.cpp and Hugging Face do.
 * Invalid UTF-8 is an error naming the byte offset.
 * On success *tokens is malloc'd (caller frees) and *n_tokens set. */
int strata_tokenize(const strata_tokenizer_t *t, const char *text, size_t len,
                    int add_special, int parse_special, int32_t **tokens,
                    size_t *n_tokens, char *err, size_t errlen);

/* The bytes a token contributes to the output text. Byte tokens (<0xNN>)
 * give their single byte; SentencePiece's U+2581 becomes a space; byte-level
 * BPE tokens are mapped back to raw bytes. Control tokens give "" unless
 * render_special. Returns the number of bytes written (at most cap; the
 * needed length is returned if larger, like snprintf, without NUL). */
size_t strata_token_to_piece(const strata_tokenizer_t *t, int32_t id,
                             int render_special, char *buf, size_t cap);

/* Detokenizes a whole sequence into a malloc'd NUL-terminated string.
 * skip_leading_space: drop the space SentencePiece adds in front of the
 * first token (when the model adds a space prefix). Invalid UTF-8 that byte
 * tokens produce is replaced by U+FFFD. */
char *strata_detokenize(const strata_tokenizer_t *t, const int32_t *tokens,
                        size_t n, int render_special, int skip_leading_space);

/* Streaming detokenizer: feed tokens one at a time and get back only
 * complete UTF-8 characters; a multi-byte character split across byte tokens
 * is held until complete (or replaced by U+FFFD if it can never complete). */
struct strata_detok_stream {
  const strata_tokenizer_t *t;
  int render_special;
  int skip_leading_space; /* consumed after the first piece */
  int n_seen;
  unsigned char pending[8];
  int n_pending;
};
void strata_detok_stream_init(struct strata_detok_stream *s,
                              const strata_tokenizer_t *t, int render_special,
                              int skip_leading_space);
/* Appends the newly completed text to out (cap bytes); returns bytes written
 * or the needed size if larger than cap (nothing written then). */
size_t strata_detok_stream_push(struct strata_detok_stream *s, int32_t id,
                                char *out, size_t cap);
/* Flushes held bytes at the end of a sequence (as U+FFFD). */
size_t strata_detok_stream_flush(struct strata_detok_stream *s, char *out,
                                 size_t cap);

/* Same as strata_detokenize, also giving the length through *out_len (when
 * not NULL): byte tokens can put NUL bytes into the text. */
char *strata_detokenize_len(const strata_tokenizer_t *t, const int32_t *tokens,
                            size_t n, int render_special,
                            int skip_leading_space, size_t *out_len);

#endif
