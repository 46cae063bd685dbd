/* Tokenizer tests: llama.cpp's test vectors for four real vocabularies, the
 * stories260K reference prompts, hostile input, round trips and the
 * streaming detokenizer. */
#include "config.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

enum { V_SPM, V_LLAMA3, V_QWEN2, V_GPT2, V_STORIES, N_VOCABS };

static const char *const vocab_file[N_VOCABS] = {
    "vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-llama-bpe.gguf",
    "vocab/ggml-vocab-qwen2.gguf", "vocab/ggml-vocab-gpt-2.gguf",
    "models/stories260K.gguf"};

/* Loaded once in main: the forked test processes share them. */
static strata_tokenizer_t *tk[N_VOCABS];
static double load_seconds[N_VOCABS];

static strata_tokenizer_t *load_vocab(const char *rel, double *secs) {
  char err[512];
  char *path = test_shared_path(rel);
  strata_gguf_t *g = NULL;
  strata_tokenizer_t *t = NULL;
  if (strata_gguf_open(path, &g, err, sizeof err) != 0) {
    fprintf(stderr, "%s: %s\n", path, err);
    free(path);
    return NULL;
  }
  double t0 = strata_now();
  if (strata_tokenizer_load(g, &t, err, sizeof err) != 0)
    fprintf(stderr, "%s: %s\n", path, err);
  *secs = strata_now() - t0;
  strata_gguf_close(g);
  free(path);
  return t;
}

/* ---- helpers
 * ---------------------------------------------------------------------- */

static size_t tokenize(const strata_tokenizer_t *t, const char *s, size_t len,
                       int add_special, int parse_special, int32_t **ids) {
  char err[256];
  size_t n = 0;
  int rc = strata_tokenize(t, s, len, add_special, parse_special, ids, &n, err,
                           sizeof err);
  ck_assert_msg(rc == 0, "tokenize failed: %s", err);
  return n;
}

static void print_ids(FILE *f, const int32_t *ids, size_t n) {
  for (size_t i = 0; i < n; i++)
    fprintf(f, " %d", ids[i]);
}

static void print_escaped(FILE *f, const char *s, size_t n) {
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\n')
      fputs("\\n", f);
    else if (c == '\t')
      fputs("\\t", f);
    else if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\x%02x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

/* Detokenizes through the streaming API, one token at a time. */
static char *stream_detok(const strata_tokenizer_t *t, const int32_t *ids,
                          size_t n, int skip, size_t *out_len) {
  struct strata_detok_stream s;
  strata_detok_stream_init(&s, t, 0, skip);
  size_t cap = 64, len = 0;
  char *out = malloc(cap);
  for (size_t i = 0; i <= n; i++) {
    char piece[8];
    size_t need =
        i < n ? strata_detok_stream_push(&s, ids[i], piece, sizeof piece)
              : strata_detok_stream_flush(&s, piece, sizeof piece);
    if (need > sizeof piece) { /* too small: state unchanged, retry bigger */
      char *big = malloc(need);
      size_t got = i < n ? strata_detok_stream_push(&s, ids[i], big, need)
                         : strata_detok_stream_flush(&s, big, need);
      ck_assert_uint_eq(got, need);
      while (len + need > cap)
        out = realloc(out, cap *= 2);
      memcpy(out + len, big, need);
      free(big);
    } else {
      while (len + need > cap)
        out = realloc(out, cap *= 2);
      memcpy(out + len, piece, need);
    }
    len += need;
  }
  *out_len = len;
  return out;
}

/* detokenize(tokenize(x)) == x, also through the streaming detokenizer. */
static int round_trips(const strata_tokenizer_t *t, const char *s, size_t len) {
  int32_t *ids = NULL;
  size_t n = tokenize(t, s, len, 0, 0, &ids);
  size_t back_len = 0, st_len = 0;
  char *back = strata_detokenize_len(t, ids, n, 0, 1, &back_len);
  char *st = stream_detok(t, ids, n, 1, &st_len);
  int ok = back && back_len == len && memcmp(back, s, len) == 0 &&
           st_len == len && memcmp(st, s, len) == 0;
  if (!ok) {
    fprintf(stderr, "round trip failed for ");
    print_escaped(stderr, s, len);
    fprintf(stderr, "\n  ids:");
    print_ids(stderr, ids, n);
    fprintf(stderr, "\n  got ");
    print_escaped(stderr, back ? back : "", back ? back_len : 0);
    fprintf(stderr, "\n  stream ");
    print_escaped(stderr, st, st_len);
    fputc('\n', stderr);
  }
  free(back);
  free(st);
  free(ids);
  return ok;
}

/* ---- llama.cpp test vectors
 * ---------------------------------------------------------- */

static const char *const vector_name[4] = {"llama-spm", "llama-bpe", "qwen2",
                                           "gpt-2"};

/* NAME.gguf.inp holds the inputs, each followed by "\n__ggml_vocab_test__\n"
 * (so the text after the last separator is empty and is no input); line k
 * of NAME.gguf.out holds the ids of input k, without BOS. This is how
 * llama.cpp's test-tokenizer-0 splits them. */
START_TEST(test_vectors) {
  static const char sep[] = "\n__ggml_vocab_test__\n";
  char err[256], rel[128];
  char *inp = NULL, *outp = NULL;
  size_t inp_len = 0, out_len = 0;
  snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.inp", vector_name[_i]);
  char *path = test_shared_path(rel);
  ck_assert_msg(strata_read_file(path, &inp, &inp_len, err, sizeof err) == 0,
                "%s", err);
  free(path);
  snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.out", vector_name[_i]);
  path = test_shared_path(rel);
  ck_assert_msg(strata_read_file(path, &outp, &out_len, err, sizeof err) == 0,
                "%s", err);
  free(path);
  const strata_tokenizer_t *t = tk[_i];
  ck_assert_ptr_nonnull(t);

  size_t n_inputs = 0, n_failed = 0, pos = 0;
  const char *line = outp;
  while (pos < inp_len) {
    const char *end = memmem(inp + pos, inp_len - pos, sep, sizeof sep - 1);
    ck_assert_msg(end != NULL, "%s: text after the last separator",
                  vector_name[_i]);
    size_t len = (size_t)(end - (inp + pos));
    const char *text = inp + pos;
    pos += len + sizeof sep - 1;
    n_inputs++;

    ck_assert_msg(line < outp + out_len, "%s: .out has fewer lines than inputs",
                  vector_name[_i]);
    const char *eol = memchr(line, '\n', (size_t)(outp + out_len - line));
    if (!eol) eol = outp + out_len;
    int32_t want[4096];
    size_t n_want = 0;
    for (const char *p = line; p < eol;) {
      char *q;
      long v = strtol(p, &q, 10);
      if (q == p) break;
      ck_assert_uint_lt(n_want, 4096);
      want[n_want++] = (int32_t)v;
      p = q;
    }
    line = eol + 1;

    int32_t *got = NULL;
    size_t n_got = tokenize(t, text, len, 0, 0, &got);
    if (n_got != n_want || memcmp(got, want, n_want * sizeof *want) != 0) {
      n_failed++;
      fprintf(stderr, "%s vector %zu: input ", vector_name[_i], n_inputs);
      print_escaped(stderr, text, len);
      fprintf(stderr, "\n  expected:");
      print_ids(stderr, want, n_want);
      fprintf(stderr, "\n  got:     ");
      print_ids(stderr, got, n_got);
      fputc('\n', stderr);
    }
    /* every vector also round-trips (SentencePiece's leading space aside) */
    ck_assert_msg(round_trips(t, text, len),
                  "%s vector %zu does not round-trip", vector_name[_i],
                  n_inputs);
    free(got);
  }
  ck_assert_msg(line >= outp + out_len,
                "%s: .out has more lines than the %zu inputs", vector_name[_i],
                n_inputs);
  fprintf(stderr, "%s: %zu of %zu vectors pass\n", vector_name[_i],
          n_inputs - n_failed, n_inputs);
  ck_assert_uint_eq(n_inputs, 46);
  ck_assert_msg(n_failed == 0, "%s: %zu of %zu vectors failed (listed above)",
                vector_name[_i], n_failed, n_inputs);
  free(inp);
  free(outp);
}
END_TEST

/* ---- stories260K reference
 * ----------------------------------------------------------- */

START_TEST(test_stories_reference) {
  const strata_tokenizer_t *t = tk[V_STORIES];
  ck_assert_ptr_nonnull(t);
  char *path = test_shared_path("reference/stories260K.jsonl");
  char err[256];
  char *data = NULL;
  size_t len = 0;
  ck_assert_msg(strata_read_file(path, &data, &len, err, sizeof err) == 0, "%s",
                err);
  free(path);
  int n_lines = 0;
  for (char *line = data; line < data + len;) {
    char *eol = memchr(line, '\n', (size_t)(data + len - line));
    size_t ll = eol ? (size_t)(eol - line) : (size_t)(data + len - line);
    if (ll == 0) {
      line += 1;
      continue;
    }
    json_error_t jerr;
    json_t *o = json_loadb(line, ll, 0, &jerr);
    ck_assert_msg(o != NULL, "line %d: %s", n_lines + 1, jerr.text);
    const char *prompt = json_string_value(json_object_get(o, "prompt"));
    json_t *pt = json_object_get(o, "prompt_tokens");
    json_t *gt = json_object_get(o, "greedy_tokens");
    const char *gtext = json_string_value(json_object_get(o, "greedy_text"));
    ck_assert(prompt && json_is_array(pt) && json_is_array(gt) && gtext);

    int32_t *ids = NULL;
    size_t n = tokenize(t, prompt, strlen(prompt), 1, 0, &ids);
    ck_assert_uint_eq(n, json_array_size(pt));
    for (size_t i = 0; i < n; i++)
      ck_assert_int_eq(ids[i], json_integer_value(json_array_get(pt, i)));
    char *back =
        strata_detokenize(t, ids, n, 0, 1); /* BOS renders as nothing */
    ck_assert_str_eq(back, prompt);
    free(back);
    free(ids);

    /* greedy_text is the plain concatenation of the pieces of greedy_tokens
     * without the BOS/EOS that ended them: no leading space is dropped (the
     * continuation of "Lily wanted to" starts with " go") */
    size_t ng = json_array_size(gt);
    int32_t *g = calloc(ng + 1, sizeof *g);
    for (size_t i = 0; i < ng; i++)
      g[i] = (int32_t)json_integer_value(json_array_get(gt, i));
    while (ng && (g[ng - 1] == strata_tokenizer_bos(t) ||
                  g[ng - 1] == strata_tokenizer_eos(t)))
      ng--;
    char *text = strata_detokenize(t, g, ng, 0, 0);
    ck_assert_str_eq(text, gtext);
    size_t st_len;
    char *st = stream_detok(t, g, ng, 0, &st_len);
    ck_assert_uint_eq(st_len, strlen(gtext));
    ck_assert(memcmp(st, gtext, st_len) == 0);
    free(st);
    free(text);
    free(g);
    json_decref(o);
    n_lines++;
    line += ll + 1;
  }
  ck_assert_int_eq(n_lines, 4);
  free(data);
}
END_TEST

/* ---- metadata and pieces
 * ---------------------------------------------------------------- */

START_TEST(test_metadata) {
  ck_assert_int_eq(strata_tokenizer_n_vocab(tk[V_SPM]), 32000);
  ck_assert_int_eq(strata_tokenizer_bos(tk[V_SPM]), 1);
  ck_assert_int_eq(strata_tokenizer_eos(tk[V_SPM]), 2);
  ck_assert_int_eq(strata_tokenizer_add_bos(tk[V_SPM]), 1);
  ck_assert_int_eq(strata_tokenizer_add_eos(tk[V_SPM]), 0);
  ck_assert_int_eq(strata_tokenizer_n_vocab(tk[V_LLAMA3]), 128256);
  ck_assert_int_eq(strata_tokenizer_bos(tk[V_LLAMA3]), 128000);
  ck_assert_int_eq(strata_tokenizer_add_bos(tk[V_LLAMA3]),
                   1); /* llama-bpe default */
  ck_assert_int_eq(strata_tokenizer_n_vocab(tk[V_QWEN2]), 151936);
  ck_assert_int_eq(strata_tokenizer_add_bos(tk[V_QWEN2]), 0);
  ck_assert_int_eq(strata_tokenizer_eos(tk[V_QWEN2]), 151643);
  ck_assert_int_eq(strata_tokenizer_add_bos(tk[V_GPT2]), 0);
  ck_assert_int_eq(strata_tokenizer_eos(tk[V_GPT2]), 50256);
  ck_assert_int_eq(strata_tokenizer_n_vocab(tk[V_STORIES]), 512);

  ck_assert_str_eq(strata_tokenizer_token_text(tk[V_SPM], 1), "<s>");
  ck_assert_ptr_null(strata_tokenizer_token_text(tk[V_SPM], 32000));
  ck_assert_ptr_null(strata_tokenizer_token_text(tk[V_SPM], -1));
  ck_assert_int_eq(strata_tokenizer_token_attr(tk[V_SPM], 0),
                   STRATA_TOKEN_UNKNOWN);
  ck_assert_int_eq(strata_tokenizer_token_attr(tk[V_SPM], 1),
                   STRATA_TOKEN_CONTROL);
  ck_assert_int_eq(strata_tokenizer_token_attr(tk[V_SPM], 13),
                   STRATA_TOKEN_BYTE);
  ck_assert_int_eq(strata_tokenizer_token_attr(tk[V_SPM], 15043),
                   STRATA_TOKEN_NORMAL);
  ck_assert_int_eq(strata_tokenizer_token_attr(tk[V_QWEN2], 151646),
                   STRATA_TOKEN_USER_DEFINED);
  ck_assert_int_eq(strata_tokenizer_lookup(tk[V_SPM], "\xE2\x96\x81Hello", 8),
                   15043);
  ck_assert_int_eq(strata_tokenizer_lookup(tk[V_SPM], "no-such-token-here", 18),
                   -1);
  ck_assert_int_eq(strata_tokenizer_lookup(tk[V_LLAMA3], "<|eot_id|>", 10),
                   128009);
  ck_assert_int_eq(strata_tokenizer_lookup(tk[V_GPT2], "\xC4\xA0the", 5), 262);
}
END_TEST

START_TEST(test_pieces) {
  const strata_tokenizer_t *t = tk[V_SPM];
  char buf[16];
  ck_assert_uint_eq(strata_token_to_piece(t, 15043, 0, buf, sizeof buf), 6);
  ck_assert(memcmp(buf, " Hello", 6) == 0);
  ck_assert_uint_eq(strata_token_to_piece(t, 13, 0, buf, sizeof buf),
                    1); /* <0x0A> */
  ck_assert_int_eq(buf[0], '\n');
  ck_assert_uint_eq(strata_token_to_piece(t, 1, 0, buf, sizeof buf),
                    0); /* <s> hidden */
  ck_assert_uint_eq(strata_token_to_piece(t, 1, 1, buf, sizeof buf), 3);
  ck_assert(memcmp(buf, "<s>", 3) == 0);
  ck_assert_uint_eq(strata_token_to_piece(t, -5, 1, buf, sizeof buf), 0);
  ck_assert_uint_eq(strata_token_to_piece(t, 99999, 1, buf, sizeof buf), 0);
  memset(buf, 'x',
         sizeof buf); /* too small: the needed size, nothing written */
  ck_assert_uint_eq(strata_token_to_piece(t, 15043, 0, buf, 3), 6);
  ck_assert_int_eq(buf[0], 'x');
  /* byte-level BPE maps its characters back to bytes: "Ġthe" -> " the" */
  ck_assert_uint_eq(strata_token_to_piece(tk[V_GPT2], 262, 0, buf, sizeof buf),
                    4);
  ck_assert(memcmp(buf, " the", 4) == 0);
  /* user-defined tokens always render, control tokens only when asked */
  ck_assert_uint_eq(
      strata_token_to_piece(tk[V_QWEN2], 151646, 0, buf, sizeof buf), 11);
  ck_assert_uint_eq(
      strata_token_to_piece(tk[V_QWEN2], 151644, 0, buf, sizeof buf), 0);
  ck_assert_uint_eq(
      strata_token_to_piece(tk[V_QWEN2], 151644, 1, buf, sizeof buf), 12);
  ck_assert(memcmp(buf, "<|im_start|>", 12) == 0);
}
END_TEST

/* ---- special tokens
 * ------------------------------------------------------------------------- */

START_TEST(test_special_tokens) {
  int32_t *ids = NULL, *mid = NULL;
  size_t n;

  /* SentencePiece: a space prefix is added after a special token too */
  n = tokenize(tk[V_SPM], "<s>Hello", 8, 0, 1, &ids);
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(ids[0], 1);
  ck_assert_int_eq(ids[1], 15043);
  free(ids);
  n = tokenize(tk[V_SPM], "<s>Hello", 8, 0, 0, &ids); /* plain text */
  for (size_t i = 0; i < n; i++)
    ck_assert_int_ne(ids[i], 1);
  free(ids);

  n = tokenize(tk[V_LLAMA3], "<|begin_of_text|>Hello", 22, 0, 1, &ids);
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(ids[0], 128000);
  ck_assert_int_eq(ids[1], 9906);
  free(ids);
  n = tokenize(tk[V_LLAMA3], "<|begin_of_text|>Hello", 22, 1, 1, &ids);
  ck_assert_uint_eq(n, 3); /* the BOS the model adds, then the parsed one */
  ck_assert_int_eq(ids[0], 128000);
  ck_assert_int_eq(ids[1], 128000);
  free(ids);
  n = tokenize(tk[V_LLAMA3], "<|begin_of_text|>Hello", 22, 0, 0, &ids);
  ck_assert_uint_gt(n, 2);
  for (size_t i = 0; i < n; i++)
    ck_assert_int_ne(ids[i], 128000);
  free(ids);

  /* qwen2 chat markup: the text between the markers tokenizes on its own */
  static const char chat[] = "<|im_start|>user\nHello there<|im_end|>\n";
  n = tokenize(tk[V_QWEN2], chat, sizeof chat - 1, 0, 1, &ids);
  size_t nm = tokenize(tk[V_QWEN2], "user\nHello there", 16, 0, 0, &mid);
  ck_assert_uint_eq(n, nm + 3);
  ck_assert_int_eq(ids[0], 151644);
  ck_assert(memcmp(ids + 1, mid, nm * sizeof *mid) == 0);
  ck_assert_int_eq(ids[nm + 1], 151645);
  ck_assert_int_eq(ids[nm + 2], 198); /* "\n" */
  free(ids);
  free(mid);
  char *text =
      strata_detokenize(tk[V_QWEN2], (int32_t[]){151644, 872, 151645}, 3, 1, 0);
  ck_assert_str_eq(text, "<|im_start|>user<|im_end|>");
  free(text);

  /* user-defined tokens are cut out even without parse_special (as Hugging
   * Face does for added tokens that are not special) */
  n = tokenize(tk[V_QWEN2], "a[PAD151646]b", 13, 0, 0, &ids);
  ck_assert_uint_eq(n, 3);
  ck_assert_int_eq(ids[1], 151646);
  free(ids);

  /* longest first: "<|im_start|>" wins over any shorter token inside it, and
   * two markers back to back both match */
  n = tokenize(tk[V_QWEN2], "<|im_end|><|im_end|>", 20, 0, 1, &ids);
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(ids[0], 151645);
  ck_assert_int_eq(ids[1], 151645);
  free(ids);
}
END_TEST

/* ---- hostile input
 * ------------------------------------------------------------------------- */

START_TEST(test_invalid_utf8) {
  static const struct {
    const char *s;
    size_t len, offset;
  } cases[] = {
      {"abc\x80", 4, 3},              /* lone continuation byte */
      {"\xBF", 1, 0},                 /* lone continuation byte */
      {"\xC0\xAF", 2, 0},             /* overlong '/' */
      {"\xC1\xBF", 2, 0},             /* overlong */
      {"ok \xE0\x80\xAF", 6, 3},      /* overlong 3-byte */
      {"\xF0\x80\x80\xAF", 4, 0},     /* overlong 4-byte */
      {"\xED\xA0\x80", 3, 0},         /* UTF-16 surrogate U+D800 */
      {"a\xED\xBF\xBF", 4, 1},        /* surrogate U+DFFF */
      {"x\xF0\x9F\x98", 4, 1},        /* truncated at the end */
      {"\xF0\x9F\x98x", 4, 0},        /* truncated before ASCII */
      {"\xE2\x82", 2, 0},             /* truncated 3-byte */
      {"\xFF", 1, 0},                 /* never valid */
      {"hi \xFE", 4, 3},              /* never valid */
      {"\xF4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
      {"\xF8\x88\x80\x80\x80", 5, 0}, /* 5-byte form */
      {"h\xC3\xA9llo\xC3", 7, 6},     /* truncated after valid text */
      {"\xE2\x96\x81\x80", 4, 3},     /* continuation after a complete char */
  };
  for (int v = 0; v < N_VOCABS; v++) {
    for (size_t i = 0; i < STRATA_ARRAY_LEN(cases); i++) {
      char err[256] = "", want[64];
      int32_t *ids = (int32_t *)&err; /* must be reset to NULL */
      size_t n = 99;
      int rc = strata_tokenize(tk[v], cases[i].s, cases[i].len, 1, 1, &ids, &n,
                               err, sizeof err);
      ck_assert_msg(rc == -1, "case %zu accepted", i);
      ck_assert_ptr_null(ids);
      ck_assert_uint_eq(n, 0);
      snprintf(want, sizeof want, "byte offset %zu", cases[i].offset);
      ck_assert_msg(strstr(err, want) != NULL, "case %zu: '%s' lacks '%s'", i,
                    err, want);
    }
  }
}
END_TEST

START_TEST(test_random_bytes) {
  /* arbitrary bytes: either an error naming an offset or tokens that
   * round-trip; never a crash (ASan/UBSan builds check the rest) */
  srand(1234);
  for (int v = 0; v < N_VOCABS; v++) {
    for (int k = 0; k < 300; k++) {
      char s[64], err[256];
      size_t len = (size_t)(rand() % 64);
      for (size_t i = 0; i < len; i++)
        s[i] = (char)(k % 2 ? rand() % 256
                            : "a \n\x80\xC3\xA9\xF0\x9F"[rand() % 8]);
      int32_t *ids = NULL;
      size_t n = 0;
      if (strata_tokenize(tk[v], s, len, 0, 1, &ids, &n, err, sizeof err) !=
          0) {
        ck_assert_msg(strstr(err, "byte offset") != NULL, "%s", err);
        continue;
      }
      char *back = strata_detokenize(tk[v], ids, n, 1, 0);
      ck_assert_ptr_nonnull(back);
      free(back);
      free(ids);
    }
  }
}
END_TEST

START_TEST(test_empty) {
  for (int v = 0; v < N_VOCABS; v++) {
    int32_t *ids = NULL;
    size_t n = tokenize(tk[v], "", 0, 0, 1, &ids);
    ck_assert_uint_eq(n, 0);
    free(ids);
    ids = NULL;
    n = tokenize(tk[v], NULL, 0, 1, 1, &ids); /* NULL is fine when empty */
    ck_assert_uint_eq(n, strata_tokenizer_add_bos(tk[v]) ? 1 : 0);
    if (n) ck_assert_int_eq(ids[0], strata_tokenizer_bos(tk[v]));
    free(ids);
    char *s = strata_detokenize(tk[v], NULL, 0, 0, 1);
    ck_assert_str_eq(s, "");
    free(s);
  }
}
END_TEST

START_TEST(test_nul_bytes) {
  static const char s[] = "a\0b\0\0 c\0";
  for (int v = 0; v < N_VOCABS; v++)
    ck_assert(round_trips(tk[v], s, sizeof s - 1));
  int32_t *ids = NULL;
  size_t n = tokenize(tk[V_SPM], "\0", 1, 0, 0, &ids);
  ck_assert_uint_eq(n, 2); /* "▁" then <0x00> */
  ck_assert_int_eq(ids[1], 3);
  free(ids);
}
END_TEST

START_TEST(test_long_input) {
  /* 1 MB of prose, of one letter (a single pre-tokenizer piece for BPE and
   * one symbol run for SentencePiece), and of spaces */
  size_t len = 1 << 20;
  char *s = malloc(len);
  static const char words[] =
      "The quick brown fox, 1234 jumps; over the lazy dog.\n"
      "Ünïcödé façade 日本語 🚀 ";
  for (size_t i = 0; i < len; i++)
    s[i] = words[i % (sizeof words - 1)];
  while (len && ((unsigned char)s[len - 1] & 0xC0) == 0x80)
    len--; /* whole chars */
  if (len && (unsigned char)s[len - 1] >= 0xC0) len--;
  for (int v = 0; v < N_VOCABS; v++) {
    double t0 = strata_now();
    int32_t *ids = NULL;
    size_t n = tokenize(tk[v], s, len, 1, 1, &ids);
    double t1 = strata_now();
    ck_assert_uint_gt(n, len / 16);
    size_t back_len = 0;
    char *back = strata_detokenize_len(tk[v], ids, n, 0, 1, &back_len);
    ck_assert_uint_eq(back_len, len);
    ck_assert(memcmp(back, s, len) == 0);
    fprintf(stderr, "%s: 1 MB prose -> %zu tokens in %.3f s\n", vocab_file[v],
            n, t1 - t0);
    free(back);
    free(ids);
  }
  for (int pass = 0; pass < 2; pass++) {
    memset(s, pass ? ' ' : 'a', 1 << 20);
    for (int v = 0; v < N_VOCABS; v++) {
      double t0 = strata_now();
      int32_t *ids = NULL;
      size_t n = tokenize(tk[v], s, 1 << 20, 0, 0, &ids);
      ck_assert_uint_gt(n, 0);
      fprintf(stderr, "%s: 1 MB of '%c' -> %zu tokens in %.3f s\n",
              vocab_file[v], pass ? ' ' : 'a', n, strata_now() - t0);
      free(ids);
    }
  }
  free(s);
}
END_TEST

/* ---- round trips
 * ----------------------------------------------------------------------------
 */

START_TEST(test_round_trip) {
  static const char *const strs[] = {
      "Hello world",
      " Hello world",
      "  two leading spaces",
      "trailing spaces  ",
      "tabs\tand\nnew\n\nlines\r\n",
      "emoji 🚀🦙👩‍👩‍👧 and CJK 日本語の文章",
      "Ünïcödé façade naïve Zürich",
      "numbers 1 12 123 1234 12345 3.14159",
      "punctuation!?... \"quotes\" 'single' (parens) [brackets] {braces}",
      "<s> </s> <unk> <|endoftext|> <|im_start|> text that looks special",
      "don't I'LL we've THEY'RE it's",
      "\xC2\xA0non-breaking\xE2\x80\x83spaces\xE3\x80\x80ideographic",
      "Привет мир, Γειά σου Κόσμε, مرحبا بالعالم, नमस्ते दुनिया",
      "\x01\x02\x1F\x7F control bytes",
      "x",
      " ",
      "\n",
  };
  for (int v = 0; v < N_VOCABS; v++)
    for (size_t i = 0; i < STRATA_ARRAY_LEN(strs); i++)
      ck_assert_msg(round_trips(tk[v], strs[i], strlen(strs[i])),
                    "vocab %d string %zu", v, i);
  /* U+2581 typed literally comes back as a space from SentencePiece (it is
   * how SentencePiece spells a space); byte-level BPE keeps it */
  for (int v = V_LLAMA3; v <= V_GPT2; v++)
    ck_assert(round_trips(tk[v], "a\xE2\x96\x81 b", 5));
}
END_TEST

static size_t random_utf8(char *s, size_t cap) {
  size_t o = 0;
  int n = rand() % 24;
  for (int i = 0; i < n && o + 4 <= cap; i++) {
    uint32_t cp;
    switch (rand() % 6) {
    case 0:
      cp = (uint32_t)(rand() % 128);
      break;
    case 1:
      cp = " \n\t"[rand() % 3];
      break;
    case 2:
      cp = 0x80 + (uint32_t)(rand() % 0x780);
      break;
    case 3:
      cp = 0x3000 + (uint32_t)(rand() % 0x6000);
      break;
    case 4:
      cp = 0x1F300 + (uint32_t)(rand() % 0x300);
      break;
    default:
      cp = (uint32_t)(rand() % 0x110000);
      break;
    }
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp == 0x2581) cp = 'z';
    if (cp < 0x80) {
      s[o++] = (char)cp;
    } else if (cp < 0x800) {
      s[o++] = (char)(0xC0 | cp >> 6);
      s[o++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s[o++] = (char)(0xE0 | cp >> 12);
      s[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
      s[o++] = (char)(0x80 | (cp & 0x3F));
    } else {
      s[o++] = (char)(0xF0 | cp >> 18);
      s[o++] = (char)(0x80 | (cp >> 12 & 0x3F));
      s[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
      s[o++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  return o;
}

START_TEST(test_round_trip_random) {
  srand(42);
  for (int v = 0; v < N_VOCABS; v++) {
    for (int k = 0; k < 300; k++) {
      char s[128];
      size_t len = random_utf8(s, sizeof s);
      ck_assert_msg(round_trips(tk[v], s, len), "vocab %d random string %d", v,
                    k);
    }
  }
}
END_TEST

/* ---- streaming detokenizer
 * ------------------------------------------------------------------- */

START_TEST(test_stream_emoji) {
  const strata_tokenizer_t *t = tk[V_SPM];
  /* "🚀" is "▁" then the byte tokens <0xF0> <0x9F> <0x9A> <0x80> */
  int32_t *ids = NULL;
  size_t n = tokenize(t, "\xF0\x9F\x9A\x80", 4, 0, 0, &ids);
  ck_assert_uint_eq(n, 5);
  ck_assert_int_eq(ids[0], 29871);
  ck_assert_int_eq(ids[1], 243);
  ck_assert_int_eq(ids[4], 131);
  struct strata_detok_stream s;
  strata_detok_stream_init(&s, t, 0, 1);
  char out[16];
  ck_assert_uint_eq(strata_detok_stream_push(&s, ids[0], out, sizeof out),
                    0); /* space dropped */
  for (int i = 1; i <= 3; i++)
    ck_assert_uint_eq(strata_detok_stream_push(&s, ids[i], out, sizeof out), 0);
  ck_assert_int_eq(s.n_pending, 3);
  /* too small a buffer: the size needed, and the state stays as it was */
  ck_assert_uint_eq(strata_detok_stream_push(&s, ids[4], out, 2), 4);
  ck_assert_int_eq(s.n_pending, 3);
  ck_assert_uint_eq(strata_detok_stream_push(&s, ids[4], out, sizeof out), 4);
  ck_assert(memcmp(out, "\xF0\x9F\x9A\x80", 4) == 0);
  ck_assert_int_eq(s.n_pending, 0);
  ck_assert_uint_eq(strata_detok_stream_flush(&s, out, sizeof out), 0);
  ck_assert_int_eq(s.n_seen, 5);

  /* a character that can never complete becomes U+FFFD, then text goes on */
  strata_detok_stream_init(&s, t, 0, 0);
  ck_assert_uint_eq(strata_detok_stream_push(&s, 243, out, sizeof out), 0);
  ck_assert_uint_eq(strata_detok_stream_push(&s, 162, out, sizeof out), 0);
  ck_assert_uint_eq(strata_detok_stream_push(&s, 15043, out, sizeof out), 9);
  ck_assert(memcmp(out, "\xEF\xBF\xBD Hello", 9) == 0);
  /* an unfinished character at the end is flushed as U+FFFD */
  ck_assert_uint_eq(strata_detok_stream_push(&s, 243, out, sizeof out), 0);
  ck_assert_uint_eq(strata_detok_stream_flush(&s, out, 2), 3);
  ck_assert_uint_eq(strata_detok_stream_flush(&s, out, sizeof out), 3);
  ck_assert(memcmp(out, "\xEF\xBF\xBD", 3) == 0);
  ck_assert_uint_eq(strata_detok_stream_flush(&s, out, sizeof out), 0);
  /* a stray continuation byte is U+FFFD at once */
  ck_assert_uint_eq(strata_detok_stream_push(&s, 131, out, sizeof out), 3);
  char *text = strata_detokenize(t, (int32_t[]){243, 162, 29871, 131}, 4, 0, 0);
  ck_assert_str_eq(text, "\xEF\xBF\xBD \xEF\xBF\xBD");
  free(text);
  free(ids);

  /* byte-level BPE splits emoji across tokens too */
  const char *emo = "🚀🦙 ok";
  n = tokenize(tk[V_GPT2], emo, strlen(emo), 0, 0, &ids);
  ck_assert_uint_gt(n, 2);
  strata_detok_stream_init(&s, tk[V_GPT2], 0, 0);
  for (size_t i = 0; i < n; i++) {
    char piece[64];
    size_t m = strata_detok_stream_push(&s, ids[i], piece, sizeof piece);
    for (size_t j = 0; j < m;) { /* only whole characters come out */
      char tmp[8] = {0};
      int32_t *x = NULL;
      size_t nx = 0, cl = 1;
      while (j + cl < m && ((unsigned char)piece[j + cl] & 0xC0) == 0x80)
        cl++;
      memcpy(tmp, piece + j, cl);
      ck_assert_int_eq(
          strata_tokenize(tk[V_GPT2], tmp, cl, 0, 0, &x, &nx, NULL, 0), 0);
      free(x);
      j += cl;
    }
  }
  free(ids);
}
END_TEST

/* ---- synthetic vocabularies
 * -------------------------------------------------------------------- */

struct gb {
  unsigned char *p;
  size_t n, cap;
  uint64_t n_kv;
};

static void gb_put(struct gb *b, const void *d, size_t n) {
  while (b->n + n > b->cap)
    b->p = realloc(b->p, b->cap = b->cap ? b->cap * 2 : 256);
  memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void gb_u32(struct gb *b, uint32_t v) {
  gb_put(b, &v, 4);
}
static void gb_u64(struct gb *b, uint64_t v) {
  gb_put(b, &v, 8);
}
static void gb_str(struct gb *b, const char *s) {
  gb_u64(b, strlen(s));
  gb_put(b, s, strlen(s));
}
static void gb_key(struct gb *b, const char *k, uint32_t type) {
  gb_str(b, k);
  gb_u32(b, type);
  b->n_kv++;
}
static void gb_kv_str(struct gb *b, const char *k, const char *v) {
  gb_key(b, k, STRATA_GGUF_STRING);
  gb_str(b, v);
}
static void gb_kv_strs(struct gb *b, const char *k, const char *const *v,
                       size_t n) {
  gb_key(b, k, STRATA_GGUF_ARRAY);
  gb_u32(b, STRATA_GGUF_STRING);
  gb_u64(b, n);
  for (size_t i = 0; i < n; i++)
    gb_str(b, v[i]);
}
static void gb_kv_f32s(struct gb *b, const char *k, const float *v, size_t n) {
  gb_key(b, k, STRATA_GGUF_ARRAY);
  gb_u32(b, STRATA_GGUF_FLOAT32);
  gb_u64(b, n);
  gb_put(b, v, 4 * n);
}
static void gb_kv_i32s(struct gb *b, const char *k, const int32_t *v,
                       size_t n) {
  gb_key(b, k, STRATA_GGUF_ARRAY);
  gb_u32(b, STRATA_GGUF_INT32);
  gb_u64(b, n);
  gb_put(b, v, 4 * n);
}

/* Wraps the key/values into a GGUF v3 file with no tensors, loads its
 * tokenizer: 0 and *out, or -1 and the message in err. */
static int load_synthetic(struct gb *kv, strata_tokenizer_t **out, char *err,
                          size_t errlen) {
  struct gb f = {0};
  gb_put(&f, "GGUF", 4);
  gb_u32(&f, 3);
  gb_u64(&f, 0);
  gb_u64(&f, kv->n_kv);
  gb_put(&f, kv->p, kv->n);
  while (f.n % 32)
    gb_put(&f, "", 1);
  strata_gguf_t *g = NULL;
  int rc = strata_gguf_open_memory(f.p, f.n, &g, err, errlen);
  ck_assert_msg(rc == 0, "synthetic GGUF rejected: %s", err);
  rc = strata_tokenizer_load(g, out, err, errlen);
  strata_gguf_close(g);
  free(f.p);
  free(kv->p);
  memset(kv, 0, sizeof *kv);
  return rc;
}

static const char *const tiny_toks[] = {
    "<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\342\226\201ab", "ab"};
static const float tiny_scores[] = {0, 0, 0, -3, -3, -3, -0.5f, -1};
static const int32_t tiny_types[] = {2, 3, 3, 1, 1, 1, 1, 1};

START_TEST(test_synthetic_spm) {
  struct gb kv = {0};
  char err[256];
  strata_tokenizer_t *t = NULL;
  gb_kv_str(&kv, "tokenizer.ggml.model", "llama");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", tiny_toks, 8);
  gb_kv_f32s(&kv, "tokenizer.ggml.scores", tiny_scores, 8);
  gb_kv_i32s(&kv, "tokenizer.ggml.token_type", tiny_types, 8);
  ck_assert_msg(load_synthetic(&kv, &t, err, sizeof err) == 0, "%s", err);
  ck_assert_int_eq(strata_tokenizer_add_bos(t), 1); /* llama defaults */
  ck_assert_int_eq(strata_tokenizer_bos(t), 1);
  int32_t *ids = NULL;
  size_t n = tokenize(t, "ab ab", 5, 1, 0, &ids);
  ck_assert_uint_eq(n, 3); /* BOS "▁ab" "▁ab": highest score merges first */
  ck_assert_int_eq(ids[0], 1);
  ck_assert_int_eq(ids[1], 6);
  ck_assert_int_eq(ids[2], 6);
  free(ids);
  /* no byte tokens: a character outside the vocabulary becomes <unk> */
  n = tokenize(t, "c", 1, 0, 0, &ids);
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(ids[0], 3);
  ck_assert_int_eq(ids[1], 0);
  free(ids);
  strata_tokenizer_free(t);

  /* add_space_prefix = false */
  gb_kv_str(&kv, "tokenizer.ggml.model", "llama");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", tiny_toks, 8);
  gb_kv_f32s(&kv, "tokenizer.ggml.scores", tiny_scores, 8);
  gb_kv_i32s(&kv, "tokenizer.ggml.token_type", tiny_types, 8);
  gb_key(&kv, "tokenizer.ggml.add_space_prefix", STRATA_GGUF_BOOL);
  gb_put(&kv, "\0", 1);
  ck_assert_msg(load_synthetic(&kv, &t, err, sizeof err) == 0, "%s", err);
  n = tokenize(t, "ab", 2, 0, 0, &ids);
  ck_assert_uint_eq(n, 1);
  ck_assert_int_eq(ids[0], 7);
  free(ids);
  strata_tokenizer_free(t);
}
END_TEST

START_TEST(test_bad_metadata) {
  struct gb kv = {0};
  char err[256];
  strata_tokenizer_t *t = NULL;
  static const char *const toks[] = {"a", "b", "ab", "<|endoftext|>"};
  static const char *const merges[] = {"a b"};

  gb_kv_str(&kv, "tokenizer.ggml.model", "gpt2");
  gb_kv_str(&kv, "tokenizer.ggml.pre", "no-such-pre-tokenizer");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", toks, 4);
  gb_kv_strs(&kv, "tokenizer.ggml.merges", merges, 1);
  ck_assert_int_eq(load_synthetic(&kv, &t, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "no-such-pre-tokenizer") != NULL, "%s", err);
  ck_assert_ptr_null(t);

  gb_kv_str(&kv, "tokenizer.ggml.model", "bert");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", toks, 4);
  ck_assert_int_eq(load_synthetic(&kv, &t, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "bert") != NULL, "%s", err);

  gb_kv_str(&kv, "general.name", "no tokenizer");
  ck_assert_int_eq(load_synthetic(&kv, &t, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "tokenizer.ggml.model") != NULL, "%s", err);

  gb_kv_str(&kv, "tokenizer.ggml.model", "gpt2");
  gb_kv_str(&kv, "tokenizer.ggml.pre", "gpt-2");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", toks, 4);
  ck_assert_int_eq(load_synthetic(&kv, &t, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "merges") != NULL, "%s", err);

  static const char *const dup[] = {"a", "b", "a"};
  gb_kv_str(&kv, "tokenizer.ggml.model", "llama");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", dup, 3);
  ck_assert_int_eq(load_synthetic(&kv, &t, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "duplicate") != NULL, "%s", err);

  gb_kv_str(&kv, "tokenizer.ggml.model", "llama");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", tiny_toks, 8);
  gb_kv_f32s(&kv, "tokenizer.ggml.scores", tiny_scores, 3); /* too few */
  ck_assert_int_eq(load_synthetic(&kv, &t, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "scores") != NULL, "%s", err);

  gb_kv_str(&kv, "tokenizer.ggml.model", "llama");
  gb_kv_str(&kv, "tokenizer.ggml.tokens", "not an array");
  ck_assert_int_eq(load_synthetic(&kv, &t, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "tokenizer.ggml.tokens") != NULL, "%s", err);

  /* a tiny working byte-level BPE: "ab" merges, the rest are its bytes */
  static const char *const btoks[] = {"a", "b", "ab", "\xC4\xA0", "c"};
  gb_kv_str(&kv, "tokenizer.ggml.model", "gpt2");
  gb_kv_str(&kv, "tokenizer.ggml.pre", "gpt-2");
  gb_kv_strs(&kv, "tokenizer.ggml.tokens", btoks, 5);
  gb_kv_strs(&kv, "tokenizer.ggml.merges", merges, 1);
  ck_assert_msg(load_synthetic(&kv, &t, err, sizeof err) == 0, "%s", err);
  ck_assert_int_eq(strata_tokenizer_add_bos(t), 0);
  ck_assert_int_eq(strata_tokenizer_bos(t), -1);
  int32_t *ids = NULL;
  size_t n = tokenize(t, "ab abc", 6, 1, 0, &ids);
  ck_assert_uint_eq(n, 4); /* "ab" "Ġ" "ab" "c" */
  ck_assert_int_eq(ids[0], 2);
  ck_assert_int_eq(ids[1], 3);
  ck_assert_int_eq(ids[2], 2);
  ck_assert_int_eq(ids[3], 4);
  free(ids);
  strata_tokenizer_free(t);
}
END_TEST

START_TEST(test_load_time) {
  for (int v = 0; v < N_VOCABS; v++)
    fprintf(stderr, "%s: loaded in %.3f s\n", vocab_file[v], load_seconds[v]);
    /* the largest vocabularies load in well under 0.1 s; the limit leaves room
     * for slow machines, sanitizers and STRATA_TEST_TIME_SCALE (valgrind) */
#if defined(__SANITIZE_ADDRESS__)
  double limit = 3.0;
#else
  double limit = 1.0;
#endif
  const char *scale = getenv("STRATA_TEST_TIME_SCALE");
  if (scale && atof(scale) > 0) limit *= atof(scale);
  for (int v = 0; v < N_VOCABS; v++)
    ck_assert_msg(load_seconds[v] < limit, "%s took %.3f s to load",
                  vocab_file[v], load_seconds[v]);
}
END_TEST

static Suite *tokenizer_suite(void) {
  Suite *s = suite_create("tokenizer");
  TCase *tc = tcase_create("vectors");
  tcase_set_timeout(tc, 600);
  tcase_add_loop_test(tc, test_vectors, 0, 4);
  tcase_add_test(tc, test_stories_reference);
  suite_add_tcase(s, tc);
  tc = tcase_create("api");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_metadata);
  tcase_add_test(tc, test_pieces);
  tcase_add_test(tc, test_special_tokens);
  tcase_add_test(tc, test_load_time);
  tcase_add_test(tc, test_synthetic_spm);
  tcase_add_test(tc, test_bad_metadata);
  suite_add_tcase(s, tc);
  tc = tcase_create("hostile");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_invalid_utf8);
  tcase_add_test(tc, test_random_bytes);
  tcase_add_test(tc, test_empty);
  tcase_add_test(tc, test_nul_bytes);
  tcase_add_test(tc, test_long_input);
  suite_add_tcase(s, tc);
  tc = tcase_create("detokenize");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_round_trip);
  tcase_add_test(tc, test_round_trip_random);
  tcase_add_test(tc, test_stream_emoji);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  if (access(test_shared_dir(), R_OK) != 0) {
    fprintf(stderr, "skip: shared directory %s not found\n", test_shared_dir());
    return 77;
  }
  for (int v = 0; v < N_VOCABS; v++) {
    tk[v] = load_vocab(vocab_file[v], &load_seconds[v]);
    if (!tk[v]) return 1;
  }
  int rc = test_run_suite(tokenizer_suite());
  for (int v = 0; v < N_VOCABS; v++)
    strata_tokenizer_free(tk[v]);
  return rc;
}
