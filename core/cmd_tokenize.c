/* strata tokenize: text to token ids with a model's tokenizer, or back with
 * --detokenize. Only the tokenizer metadata of the file is used. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "tokenizer.h"
#include "util.h"

static const char usage_text[] =
    "usage: strata tokenize --model FILE [--no-bos] [--special] TEXT\n"
    "       strata tokenize --model FILE --detokenize [--special] "
    "[--keep-space] ID...\n"
    "Prints the token ids of TEXT space-separated on one line. TEXT '-' reads\n"
    "the text from standard input, all of it, byte for byte.\n"
    "  -m, --model FILE   GGUF file whose tokenizer.ggml.* metadata to use\n"
    "      --no-bos       add no BOS/EOS even where the model's metadata asks\n"
    "      --special      parse special-token text such as <|im_start|> into\n"
    "                     its token (with --detokenize: render control "
    "tokens)\n"
    "  -d, --detokenize   print the text of the ids given as arguments "
    "(spaces\n"
    "                     or commas between them; '-' reads them from "
    "standard\n"
    "                     input) exactly, with no newline added\n"
    "      --keep-space   keep the space SentencePiece puts before the first "
    "word\n";

/* Usage errors: one line, exit status 2. */
static int fail_usage(const char *fmt, const char *arg) {
  fprintf(stderr, "strata: tokenize: ");
  fprintf(stderr, fmt, arg);
  fputc('\n', stderr);
  return 2;
}

static int read_stdin(char **data, size_t *len) {
  size_t cap = 65536, n = 0;
  char *buf = malloc(cap);
  if (!buf) return -1;
  for (;;) {
    if (n == cap) {
      char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        return -1;
      }
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n, stdin);
    n += r;
    if (r == 0) break;
  }
  if (ferror(stdin)) {
    free(buf);
    return -1;
  }
  *data = buf;
  *len = n;
  return 0;
}

/* Appends the ids in text (separated by spaces, tabs, newlines or commas).
 * Returns 0, or -1 with the offending word in bad[]. */
static int parse_ids(const char *text, size_t len, int32_t **ids, size_t *n,
                     size_t *cap, char *bad, size_t badlen) {
  size_t i = 0;
  while (i < len) {
    while (i < len && strchr(" \t\r\n,", text[i]) && text[i])
      i++;
    if (i >= len) break;
    size_t j = i;
    while (j < len && !(strchr(" \t\r\n,", text[j]) && text[j]))
      j++;
    long long v = 0;
    int ok = j - i <= 10;
    for (size_t k = i; k < j && ok; k++) {
      if (text[k] < '0' || text[k] > '9')
        ok = 0;
      else
        v = v * 10 + (text[k] - '0');
    }
    if (!ok || v > INT32_MAX) {
      snprintf(bad, badlen, "%.*s", (int)(j - i > 40 ? 40 : j - i), text + i);
      return -1;
    }
    if (*n == *cap) {
      size_t c = *cap ? *cap * 2 : 64;
      int32_t *q = strata_reallocarray(*ids, c, sizeof *q);
      if (!q) {
        snprintf(bad, badlen, "(out of memory)");
        return -1;
      }
      *ids = q;
      *cap = c;
    }
    (*ids)[(*n)++] = (int32_t)v;
    i = j;
  }
  return 0;
}

static int finish_stdout(void) {
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "strata: tokenize: writing the output: %s\n",
            strerror(errno));
    return 1;
  }
  return 0;
}

static int run_detokenize(const strata_tokenizer_t *t, int n_args, char **args,
                          int special, int keep_space) {
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  char bad[64];
  if (n_args == 1 && strcmp(args[0], "-") == 0) {
    char *in = NULL;
    size_t in_len = 0;
    if (read_stdin(&in, &in_len) != 0) {
      fprintf(stderr, "strata: tokenize: reading standard input failed\n");
      return 1;
    }
    int r = parse_ids(in, in_len, &ids, &n, &cap, bad, sizeof bad);
    free(in);
    if (r != 0) {
      fprintf(stderr, "strata: tokenize: bad token id '%s' on standard input\n",
              bad);
      free(ids);
      return 1;
    }
  } else {
    for (int i = 0; i < n_args; i++) {
      if (parse_ids(args[i], strlen(args[i]), &ids, &n, &cap, bad,
                    sizeof bad) != 0) {
        free(ids);
        return fail_usage("bad token id '%s'", bad);
      }
    }
  }
  int32_t n_vocab = strata_tokenizer_n_vocab(t);
  for (size_t i = 0; i < n; i++) {
    if (ids[i] >= n_vocab) {
      fprintf(stderr,
              "strata: tokenize: token id %d is out of range (the vocabulary "
              "has %d "
              "tokens)\n",
              ids[i], n_vocab);
      free(ids);
      return 1;
    }
  }
  size_t len = 0;
  char *text = strata_detokenize_len(t, ids, n, special, !keep_space, &len);
  free(ids);
  if (!text) {
    fprintf(stderr, "strata: tokenize: out of memory\n");
    return 1;
  }
  fwrite(text, 1, len, stdout);
  free(text);
  return finish_stdout();
}

int strata_cmd_tokenize(int argc, char **argv) {
  const char *model = NULL;
  int no_bos = 0, special = 0, detok = 0, keep_space = 0, opts_done = 0;
  char **pos = calloc((size_t)argc + 1, sizeof *pos);
  int n_pos = 0;
  if (!pos) {
    fprintf(stderr, "strata: tokenize: out of memory\n");
    return 1;
  }
  int status = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (opts_done || a[0] != '-' || strcmp(a, "-") == 0) {
      pos[n_pos++] = argv[i];
    } else if (strcmp(a, "--") == 0) {
      opts_done = 1;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage_text, stdout);
      free(pos);
      return 0;
    } else if (strcmp(a, "--model") == 0 || strcmp(a, "-m") == 0) {
      if (i + 1 >= argc) {
        status = fail_usage("%s needs a FILE", a);
        goto out;
      }
      model = argv[++i];
    } else if (strncmp(a, "--model=", 8) == 0) {
      model = a + 8;
    } else if (strcmp(a, "--no-bos") == 0) {
      no_bos = 1;
    } else if (strcmp(a, "--special") == 0) {
      special = 1;
    } else if (strcmp(a, "--detokenize") == 0 || strcmp(a, "-d") == 0) {
      detok = 1;
    } else if (strcmp(a, "--keep-space") == 0) {
      keep_space = 1;
    } else {
      status = fail_usage("unknown option '%s'", a);
      goto out;
    }
  }
  if (!model || !*model) {
    status = fail_usage("%s", "--model FILE is required");
    goto out;
  }
  if (detok ? n_pos == 0 : n_pos != 1) {
    status = fail_usage(
        "%s", detok ? "--detokenize needs token ids (or - to read them)"
                    : "give exactly one TEXT (or - to read standard input)");
    goto out;
  }

  char err[512];
  strata_gguf_t *g = NULL;
  strata_tokenizer_t *t = NULL;
  status = 1;
  if (strata_gguf_open(model, &g, err, sizeof err) != 0) {
    fprintf(stderr, "strata: tokenize: %s\n", err);
    goto out;
  }
  if (strata_tokenizer_load(g, &t, err, sizeof err) != 0) {
    fprintf(stderr, "strata: tokenize: %s: %s\n", model, err);
    strata_gguf_close(g);
    goto out;
  }
  strata_gguf_close(g); /* the tokenizer keeps no reference to the file */

  if (detok) {
    status = run_detokenize(t, n_pos, pos, special, keep_space);
    strata_tokenizer_free(t);
    goto out;
  }
  char *text = pos[0];
  size_t len = strlen(text);
  char *owned = NULL;
  if (strcmp(text, "-") == 0) {
    if (read_stdin(&owned, &len) != 0) {
      fprintf(stderr, "strata: tokenize: reading standard input failed\n");
      strata_tokenizer_free(t);
      goto out;
    }
    text = owned;
  }
  int32_t *ids = NULL;
  size_t n = 0;
  if (strata_tokenize(t, text, len, !no_bos, special, &ids, &n, err,
                      sizeof err) != 0) {
    fprintf(stderr, "strata: tokenize: %s\n", err);
  } else {
    for (size_t i = 0; i < n; i++)
      printf(i ? " %d" : "%d", ids[i]);
    putchar('\n');
    status = finish_stdout();
  }
  free(ids);
  free(owned);
  strata_tokenizer_free(t);
out:
  free(pos);
  return status;
}
