/* The tokenizers on arbitrary bytes: SentencePiece (the default model's)
 * and byte-level BPE (GPT-2, Llama 3); special tokens parsed or not. Every
 * id is in the vocabulary, and decoding the ids gives back text. */
#include "config.h"

#include <string.h>

#include "fuzz.h"
#include "gguf.h"
#include "tokenizer.h"

static const char *const files[] = {"models/stories260K.gguf", "vocab/ggml-vocab-gpt-2.gguf",
                                    "vocab/ggml-vocab-llama-bpe.gguf"};
#define N_TOK (sizeof files / sizeof files[0])
static strata_gguf_t *gg[N_TOK];
static strata_tokenizer_t *tk[N_TOK];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  for (size_t i = 0; i < N_TOK; i++) {
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_shared(), files[i]);
    if (strata_gguf_open(path, &gg[i], err, sizeof err) != 0 ||
        strata_tokenizer_load(gg[i], &tk[i], err, sizeof err) != 0) {
      fprintf(stderr, "fuzz_tokenizer: %s: %s (set STRATA_SHARED)\n", path, err);
      abort();
    }
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const strata_tokenizer_t *t = tk[data[0] % N_TOK];
  const int special = data[0] >> 7, add = (data[0] >> 6) & 1;
  int32_t *ids = NULL;
  size_t n = 0;
  char err[256];
  if (strata_tokenize(t, (const char *)data + 1, size - 1, add, special, &ids, &n, err,
                      sizeof err) == 0) {
    const int32_t nv = strata_tokenizer_n_vocab(t);
    for (size_t i = 0; i < n; i++) {
      if (ids[i] < 0 || ids[i] >= nv) abort();
      (void)strata_tokenizer_token_text(t, ids[i]);
    }
    size_t len = 0;
    char *text = strata_detokenize_len(t, ids, n, special, 1, &len);
    if (!text) abort();
    free(text);
    struct strata_detok_stream ds;
    strata_detok_stream_init(&ds, t, special, 1);
    char buf[256];
    for (size_t i = 0; i < n; i++) (void)strata_detok_stream_push(&ds, ids[i], buf, sizeof buf);
    (void)strata_detok_stream_flush(&ds, buf, sizeof buf);
    free(ids);
  }
  return 0;
}
