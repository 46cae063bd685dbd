/* strata generate: one prompt, one sequence, streamed to stdout. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "runtime.h"
#include "sampler.h"
#include "util.h"

static void generate_usage(FILE *f) {
  fprintf(f,
          "usage: strata generate [--model FILE] --prompt TEXT [-n N] [--temperature T]\n"
          "         [--top-k K] [--top-p P] [--min-p P] [--seed S] [--quant Q] [--threads N]\n"
          "         [--backend NAME] [--config FILE] [--context-length N] [--block-size N]\n"
          "         [--kv-f16] [--dump-logits FILE] [--no-bos]\n"
          "Prints the continuation of TEXT (not the prompt) as it is generated;\n"
          "statistics go to stderr. --temperature 0 is greedy. --prompt - reads stdin.\n"
          "--dump-logits writes one line of logits per position (prompt and generated).\n");
}

static int parse_float(const char *opt, const char *s, double lo, double hi, float *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi)) {
    fprintf(stderr, "strata: generate: %s must be a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
    return -1;
  }
  *out = (float)v;
  return 0;
}

static int dump_rows(FILE *f, const float *logits, int32_t rows, int32_t n_vocab) {
  for (int32_t r = 0; r < rows; r++) {
    const float *l = logits + (size_t)r * n_vocab;
    for (int32_t i = 0; i < n_vocab; i++) fprintf(f, i ? " %.9g" : "%.9g", l[i]);
    fputc('\n', f);
  }
  return ferror(f) ? -1 : 0;
}

int strata_cmd_generate(int argc, char **argv) {
  struct strata_runtime_opts ro = {0};
  struct strata_sampling sp = STRATA_SAMPLING_DEFAULTS;
  const char *prompt = NULL, *dump_path = NULL;
  long n_gen = 128, v;
  int add_bos = 1;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
      {"temperature", required_argument, 0, 't'}, {"top-k", required_argument, 0, 'k'},
      {"top-p", required_argument, 0, 'P'},   {"min-p", required_argument, 0, 'M'},
      {"seed", required_argument, 0, 's'},    {"quant", required_argument, 0, 'q'},
      {"threads", required_argument, 0, 'T'}, {"backend", required_argument, 0, 'b'},
      {"config", required_argument, 0, 'c'},  {"context-length", required_argument, 0, 'C'},
      {"block-size", required_argument, 0, 'B'}, {"kv-f16", no_argument, 0, 'F'},
      {"dump-logits", required_argument, 0, 'D'}, {"no-bos", no_argument, 0, 'N'},
      {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "m:p:n:t:k:s:q:T:b:c:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': ro.model_path = optarg; break;
    case 'p': prompt = optarg; break;
    case 'n':
      if (strata_cli_parse_long("generate", "-n", optarg, 1, INT_MAX, &n_gen)) return 2;
      break;
    case 't':
      if (parse_float("--temperature", optarg, 0, 100, &sp.temperature)) return 2;
      break;
    case 'k':
      if (strata_cli_parse_long("generate", "--top-k", optarg, 0, INT_MAX, &v)) return 2;
      sp.top_k = (int32_t)v;
      break;
    case 'P':
      if (parse_float("--top-p", optarg, 1e-9, 1, &sp.top_p)) return 2;
      break;
    case 'M':
      if (parse_float("--min-p", optarg, 0, 1, &sp.min_p)) return 2;
      break;
    case 's': {
      char *end;
      errno = 0;
      unsigned long long s = strtoull(optarg, &end, 10);
      if (errno || end == optarg || *end || optarg[0] == '-') {
        fprintf(stderr, "strata: generate: --seed must be a non-negative integer, got '%s'\n", optarg);
        return 2;
      }
      sp.seed = s;
      break;
    }
    case 'q': ro.quant = optarg; break;
    case 'T':
      if (strata_cli_parse_long("generate", "--threads", optarg, 1, 1024, &v)) return 2;
      ro.threads = (int)v;
      break;
    case 'b': ro.backend = optarg; break;
    case 'c': ro.config_path = optarg; break;
    case 'C':
      if (strata_cli_parse_long("generate", "--context-length", optarg, 1, 1 << 24, &v)) return 2;
      ro.context_length = (int32_t)v;
      break;
    case 'B':
      if (strata_cli_parse_long("generate", "--block-size", optarg, 1, 1024, &v)) return 2;
      ro.model.block_size = (int32_t)v;
      break;
    case 'F': ro.model.kv_f16 = 1; break;
    case 'D': dump_path = optarg; break;
    case 'N': add_bos = 0; break;
    case 'h': generate_usage(stdout); return 0;
    default: generate_usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "strata: generate: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (!prompt) {
    fprintf(stderr, "strata: generate: --prompt TEXT is required\n");
    return 2;
  }
  char *stdin_text = NULL;
  size_t prompt_len = strlen(prompt);
  if (strcmp(prompt, "-") == 0) {
    char err[256];
    if (strata_read_file("/dev/stdin", &stdin_text, &prompt_len, err, sizeof err) != 0) {
      fprintf(stderr, "strata: generate: %s\n", err);
      return 1;
    }
    prompt = stdin_text;
  }
  ro.model.max_tokens = 512;
  struct strata_runtime rt;
  int rc = strata_runtime_open(&rt, &ro);
  if (rc != 0) {
    free(stdin_text);
    return rc;
  }
  struct strata_model *m = rt.model;
  int32_t n_vocab = m->hp.n_vocab;
  int32_t *toks = NULL;
  size_t n_prompt = 0;
  char err[1024];
  FILE *dump = NULL;
  float *logits = NULL;
  int32_t *bt = NULL, *pos = NULL, *slots = NULL, *out_rows = NULL, *ids = NULL;
  struct strata_sampler smp = {0};
  rc = 1;
  if (strata_tokenize(rt.tok, prompt, prompt_len, add_bos, 0, &toks, &n_prompt, err, sizeof err) != 0) {
    fprintf(stderr, "strata: generate: prompt: %s\n", err);
    goto done;
  }
  if (n_prompt == 0) {
    fprintf(stderr, "strata: generate: the prompt is empty (and no BOS is added)\n");
    goto done;
  }
  if ((int64_t)n_prompt >= m->ctx_len) {
    fprintf(stderr, "strata: generate: the prompt has %zu tokens; the context holds %d, leaving no room to generate\n",
            n_prompt, m->ctx_len);
    goto done;
  }
  if (dump_path && !(dump = fopen(dump_path, "w"))) {
    fprintf(stderr, "strata: generate: %s: %s\n", dump_path, strerror(errno));
    goto done;
  }
  int32_t T = m->opts.max_tokens, bs = m->opts.block_size, nb = strata_model_kv_blocks(m);
  logits = malloc((size_t)T * n_vocab * sizeof *logits);
  bt = malloc((size_t)nb * sizeof *bt);
  pos = malloc((size_t)T * sizeof *pos);
  slots = malloc((size_t)T * sizeof *slots);
  out_rows = malloc((size_t)T * sizeof *out_rows);
  ids = malloc((size_t)T * sizeof *ids);
  if (!logits || !bt || !pos || !slots || !out_rows || !ids ||
      strata_sampler_init(&smp, &sp, n_vocab) != 0) {
    fprintf(stderr, "strata: generate: out of memory\n");
    goto done;
  }
  /* The blocks are handed out in reverse order so that even a single
   * sequence runs the paged path the serving engine uses. */
  for (int32_t i = 0; i < nb; i++) bt[i] = nb - 1 - i;

  struct strata_detok_stream ds;
  strata_detok_stream_init(&ds, rt.tok, 0, 0);
  double t0 = strata_now(), t_prefill = 0;
  int32_t n_past = 0, next = -1;
  long n_done = 0;
  int stopped_by_ctx = 0;
  /* prefill, in chunks of the workspace size */
  while (n_past < (int32_t)n_prompt) {
    int32_t n = (int32_t)n_prompt - n_past < T ? (int32_t)n_prompt - n_past : T;
    for (int32_t i = 0; i < n; i++) {
      ids[i] = toks[n_past + i];
      pos[i] = n_past + i;
      slots[i] = bt[pos[i] / bs] * bs + pos[i] % bs;
      out_rows[i] = i;
    }
    int32_t start[2] = {0, n}, len = n_past + n;
    int last = n_past + n == (int32_t)n_prompt;
    struct strata_batch b = {.size = sizeof b, .n_tokens = n, .tokens = ids, .positions = pos,
                             .slots = slots, .n_seqs = 1, .seq_start = start, .seq_len = &len,
                             .block_tables = bt, .max_blocks = nb, .block_size = bs,
                             .n_out = dump ? n : (last ? 1 : 0), .out_rows = dump ? out_rows : &out_rows[n - 1]};
    if (strata_model_forward(m, &b, logits, err, sizeof err) != 0) {
      fprintf(stderr, "strata: generate: %s\n", err);
      goto done;
    }
    if (dump && dump_rows(dump, logits, n, n_vocab) != 0) goto dump_failed;
    n_past += n;
    if (last) next = strata_sampler_sample(&smp, dump ? logits + (size_t)(n - 1) * n_vocab : logits);
  }
  t_prefill = strata_now() - t0;
  double t1 = strata_now();
  char piece[256];
  while (n_done < n_gen) {
    n_done++;
    if (strata_tokenizer_is_end(rt.tok, next)) break;
    size_t w = strata_detok_stream_push(&ds, next, piece, sizeof piece - 1);
    if (w && w < sizeof piece) {
      fwrite(piece, 1, w, stdout);
      fflush(stdout);
    }
    if (n_done >= n_gen) break;
    if (n_past >= m->ctx_len) {
      stopped_by_ctx = 1;
      break;
    }
    ids[0] = next;
    pos[0] = n_past;
    slots[0] = bt[n_past / bs] * bs + n_past % bs;
    out_rows[0] = 0;
    int32_t start[2] = {0, 1}, len = n_past + 1;
    struct strata_batch b = {.size = sizeof b, .n_tokens = 1, .tokens = ids, .positions = pos,
                             .slots = slots, .n_seqs = 1, .seq_start = start, .seq_len = &len,
                             .block_tables = bt, .max_blocks = nb, .block_size = bs, .n_out = 1,
                             .out_rows = out_rows};
    if (strata_model_forward(m, &b, logits, err, sizeof err) != 0) {
      fprintf(stderr, "\nstrata: generate: %s\n", err);
      goto done;
    }
    if (dump && dump_rows(dump, logits, 1, n_vocab) != 0) goto dump_failed;
    n_past++;
    next = strata_sampler_sample(&smp, logits);
  }
  size_t w = strata_detok_stream_flush(&ds, piece, sizeof piece);
  if (w && w < sizeof piece) fwrite(piece, 1, w, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  double t_dec = strata_now() - t1;
  if (stopped_by_ctx) fprintf(stderr, "strata: generate: stopped at the context length %d\n", m->ctx_len);
  fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tok/s); generated: %ld tokens in %.3f s (%.1f tok/s); backend %s\n",
          n_prompt, t_prefill, t_prefill > 0 ? n_prompt / t_prefill : 0.0, n_done, t_dec,
          t_dec > 0 ? (n_done > 1 ? (n_done - 1) / t_dec : 0.0) : 0.0, rt.device.name);
  rc = 0;
  goto done;
dump_failed:
  fprintf(stderr, "strata: generate: writing %s failed\n", dump_path);
done:
  if (dump && fclose(dump) != 0 && rc == 0) {
    fprintf(stderr, "strata: generate: writing %s failed\n", dump_path);
    rc = 1;
  }
  strata_sampler_free(&smp);
  free(logits);
  free(bt);
  free(pos);
  free(slots);
  free(out_rows);
  free(ids);
  free(toks);
  free(stdin_text);
  strata_runtime_close(&rt);
  return rc;
}
