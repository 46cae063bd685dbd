/* strata bench: raw model-step throughput on one backend.
 *
 * Prints prefill tokens/s, decode tokens/s at one sequence and at B
 * sequences decoding together, and the decode roofline: the bytes of weights
 * one decode step reads over this machine's read bandwidth, which the
 * benchmark measures itself in the same run with the same thread count. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "membw.h"
#include "runtime.h"
#include "sampler.h"
#include "util.h"

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) v = strtol(line + 6, NULL, 10);
  fclose(f);
  return v;
}

/* ---- the benchmark ---------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The read bandwidth measured between decode steps (see decode_steps). */
struct bw_probe {
  const uint64_t *buf;
  size_t bytes;
  int threads;
  double *pass; /* bytes/s of the pass after each step */
  double *step; /* that step's seconds */
};

/* The median of v[0..n) (n > 0), which it sorts. */
static double median_of(double *v, long n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Decodes `steps` tokens for n_seqs sequences that already hold `ctx`
 * tokens each; returns the seconds the steps took, and the median step's
 * seconds in *median (when not NULL): on a shared machine a neighbour's
 * burst stretches a few steps, which the mean carries and the median does
 * not. With probe, one read-bandwidth pass follows each step (not counted
 * in its time), so that every step has a bandwidth measured next to it:
 * this VM's bandwidth drifts by up to 2x within minutes, which made a
 * roofline measured once, before or after, a coin toss. */
static double decode_steps(struct strata_model *m, int n_seqs, int ctx, int steps, int32_t *bt, int per,
                           float *logits, double *median, struct bw_probe *probe, char *err,
                           size_t errlen) {
  int bs = m->opts.block_size;
  int32_t *tok = malloc(sizeof *tok * n_seqs), *pos = malloc(sizeof *pos * n_seqs),
          *slots = malloc(sizeof *slots * n_seqs), *start = malloc(sizeof *start * (n_seqs + 1)),
          *lens = malloc(sizeof *lens * n_seqs), *outr = malloc(sizeof *outr * n_seqs);
  double *st = malloc(sizeof *st * (size_t)steps);
  double dt = -1, sum = 0, ts = strata_now();
  for (int s = 0; s < n_seqs; s++) tok[s] = 1 + s;
  for (int step = 0; step < steps; step++) {
    for (int s = 0; s < n_seqs; s++) {
      int p = ctx + step;
      pos[s] = p;
      slots[s] = bt[s * per + p / bs] * bs + p % bs;
      start[s] = s;
      lens[s] = p + 1;
      outr[s] = s;
    }
    start[n_seqs] = n_seqs;
    struct strata_batch b = {.size = sizeof b, .n_tokens = n_seqs, .tokens = tok, .positions = pos,
                             .slots = slots, .n_seqs = n_seqs, .seq_start = start, .seq_len = lens,
                             .block_tables = bt, .max_blocks = per, .block_size = bs, .n_out = n_seqs,
                             .out_rows = outr};
    if (strata_model_forward(m, &b, logits, err, errlen) != 0) goto out;
    for (int s = 0; s < n_seqs; s++) tok[s] = strata_argmax(logits + (size_t)s * m->hp.n_vocab, m->hp.n_vocab);
    const double te = strata_now();
    st[step] = te - ts;
    sum += st[step];
    if (probe) {
      probe->step[step] = st[step];
      /* first let the backend's idle threads stop spinning (libgomp spins a
       * few ms after a parallel region): two spinners on two cores halved
       * the pass (30 vs 55 GB/s here), flattering the decode */
      usleep(30000);
      probe->pass[step] = strata_read_bandwidth_of(probe->buf, probe->bytes, probe->threads, 1, 1);
    }
    ts = strata_now();
  }
  dt = sum;
  if (median) {
    *median = median_of(st, steps);
  }
out:
  free(st);
  free(tok);
  free(pos);
  free(slots);
  free(start);
  free(lens);
  free(outr);
  return dt;
}

/* Prefills n_seqs sequences of n tokens (chunked by the workspace). */
static double prefill(struct strata_model *m, int n_seqs, int n, int32_t *bt, int per, float *logits, char *err,
                      size_t errlen) {
  int bs = m->opts.block_size, T = m->opts.max_tokens;
  int32_t *tok = malloc(sizeof *tok * T), *pos = malloc(sizeof *pos * T), *slots = malloc(sizeof *slots * T);
  double t0 = strata_now(), dt = -1;
  for (int s = 0; s < n_seqs; s++) {
    for (int done = 0; done < n;) {
      int c = n - done < T ? n - done : T;
      for (int i = 0; i < c; i++) {
        int p = done + i;
        tok[i] = 1 + (int32_t)((p * 31 + s * 17) % (m->hp.n_vocab - 1));
        pos[i] = p;
        slots[i] = bt[s * per + p / bs] * bs + p % bs;
      }
      int32_t start[2] = {0, c}, len = done + c, outr = c - 1;
      struct strata_batch b = {.size = sizeof b, .n_tokens = c, .tokens = tok, .positions = pos, .slots = slots,
                               .n_seqs = 1, .seq_start = start, .seq_len = &len, .block_tables = bt + s * per,
                               .max_blocks = per, .block_size = bs, .n_out = 1, .out_rows = &outr};
      if (strata_model_forward(m, &b, logits, err, errlen) != 0) goto out;
      done += c;
    }
  }
  dt = strata_now() - t0;
out:
  free(tok);
  free(pos);
  free(slots);
  return dt;
}

int strata_cmd_bench(int argc, char **argv) {
  struct strata_runtime_opts ro = {0};
  long n_prompt = 512, n_gen = 32, batch = 16, batch_ctx = 16, v;
  int logits_mode = 0, set_p = 0, set_g = 0, set_b = 0, set_bc = 0;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},  {"prompt-tokens", required_argument, 0, 'p'},
      {"gen-tokens", required_argument, 0, 'g'}, {"threads", required_argument, 0, 't'},
      {"batch", required_argument, 0, 'B'},  {"batch-context", required_argument, 0, 'C'},
      {"quant", required_argument, 0, 'q'},
      {"backend", required_argument, 0, 'b'}, {"config", required_argument, 0, 'c'},
      {"logits", no_argument, 0, 'L'},       {"help", no_argument, 0, 'h'},
      {"kv-f16", no_argument, 0, 'F'},
      {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "m:p:g:t:B:C:q:b:c:LFh", opts, NULL)) != -1) {
    switch (c) {
    case 'm': ro.model_path = optarg; break;
    case 'p':
      if (strata_cli_parse_long("bench", "--prompt-tokens", optarg, 1, 1 << 20, &n_prompt)) return 2;
      set_p = 1;
      break;
    case 'g':
      if (strata_cli_parse_long("bench", "--gen-tokens", optarg, 1, 1 << 20, &n_gen)) return 2;
      set_g = 1;
      break;
    case 't':
      if (strata_cli_parse_long("bench", "--threads", optarg, 1, 1024, &v)) return 2;
      ro.threads = (int)v;
      break;
    case 'B':
      if (strata_cli_parse_long("bench", "--batch", optarg, 1, 4096, &batch)) return 2;
      set_b = 1;
      break;
    case 'C':
      if (strata_cli_parse_long("bench", "--batch-context", optarg, 1, 1 << 20, &batch_ctx)) return 2;
      set_bc = 1;
      break;
    case 'L': logits_mode = 1; break;
    case 'F': ro.model.kv_f16 = 1; break;
    case 'q': ro.quant = optarg; break;
    case 'b': ro.backend = optarg; break;
    case 'c': ro.config_path = optarg; break;
    case 'h':
      printf("usage: strata bench --model FILE [--prompt-tokens N] [--gen-tokens N] [--threads N]\n"
             "         [--batch B] [--batch-context N] [--quant Q] [--backend NAME]\n"
             "         [--config FILE] [--kv-f16] [--logits]\n"
             "Measures prefill of N tokens, decode at 1 sequence after them and at B\n"
             "sequences of --batch-context tokens each (default 16, at most N), and the\n"
             "decode roofline from this machine's measured read bandwidth.\n"
             "--kv-f16: the KV cache in f16 instead of f32.\n"
             "--logits: instead, the serving engine's step time with and without logits\n"
             "processors over B requests (defaults: B 64, prompt 32, 16 generated).\n");
      return 0;
    default: return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "strata: bench: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (set_bc && batch_ctx > n_prompt) {
    fprintf(stderr, "strata: bench: --batch-context %ld is more than --prompt-tokens %ld\n", batch_ctx,
            n_prompt);
    return 2;
  }
  if (logits_mode)
    return strata_bench_logits(&ro, set_b ? (int)batch : 64, set_p ? (int)n_prompt : 32,
                               set_g ? (int)n_gen : 16);
  long rss0 = rss_kib();
  /* Every sequence gets room for its prompt and generated tokens. */
  int ctx = (int)(n_prompt + n_gen + 1);
  ro.context_length = ctx;
  ro.model.block_size = 16;
  int per = (ctx + 15) / 16;
  ro.model.n_blocks = per * (int)batch;
  ro.model.max_tokens = n_prompt < 512 ? (int)n_prompt : 512;
  if (ro.model.max_tokens < batch) ro.model.max_tokens = (int)batch;
  /* logits rows: one per sequence (a prefill wants its last row only); the
   * default, one per workspace token, held 64 MiB of logits nobody reads */
  ro.model.max_out = (int)batch;
  struct strata_runtime rt;
  int rc = strata_runtime_open(&rt, &ro);
  if (rc != 0) return rc;
  struct strata_model *m = rt.model;
  if (ctx > m->hp.ctx_len)
    fprintf(stderr, "strata: bench: note: %d tokens exceed the model's trained context %d\n", ctx, m->hp.ctx_len);
  int32_t *bt = malloc(sizeof *bt * (size_t)per * batch);
  for (int i = 0; i < per * batch; i++) bt[i] = i;
  float *logits = malloc(sizeof(float) * (size_t)batch * m->hp.n_vocab);
  char err[512];
  rc = 1;
  struct stat st;
  double file_mb = stat(rt.model_path, &st) == 0 ? st.st_size / 1e6 : 0;
  printf("model: %s (%s, %d layers, dim %d, ffn %d, vocab %d), %.1f MB\n", rt.model_path, m->hp.arch,
         m->hp.n_layers, m->hp.dim, m->hp.ffn_dim, m->hp.n_vocab, file_mb);
  printf("backend: %s, threads %d\n", rt.device.name, ro.threads);

  /* warm-up: faults in the mmapped weights */
  if (decode_steps(m, 1, 0, 2, bt, per, logits, NULL, NULL, err, sizeof err) < 0) goto fail;
  double tp = prefill(m, 1, (int)n_prompt, bt, per, logits, err, sizeof err);
  if (tp < 0) goto fail;
  int threads = ro.threads > 0 ? ro.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  /* 512 MiB: far past any last-level cache, ~10-20 ms a pass */
  struct bw_probe probe = {.bytes = (size_t)512 << 20, .threads = threads};
  uint64_t *bwbuf = NULL;
  if (posix_memalign((void **)&bwbuf, 64, probe.bytes) != 0) bwbuf = NULL;
  double *pass = malloc(sizeof *pass * (size_t)n_gen), *stepv = malloc(sizeof *stepv * (size_t)n_gen);
  if (!bwbuf || !pass || !stepv) {
    free(bwbuf);
    free(pass);
    free(stepv);
    snprintf(err, sizeof err, "out of memory for the bandwidth probe");
    goto fail;
  }
  for (size_t i = 0; i < probe.bytes / sizeof *bwbuf; i++) bwbuf[i] = i; /* touch every page */
  probe.buf = bwbuf;
  probe.pass = pass;
  probe.step = stepv;
  double med1 = 0;
  double td1 = decode_steps(m, 1, (int)n_prompt, (int)n_gen, bt, per, logits, &med1, &probe, err, sizeof err);
  free(bwbuf);
  if (td1 < 0) {
    free(pass);
    free(stepv);
    goto fail;
  }
  double pf = n_prompt / tp, d1 = n_gen / td1;
  printf("prefill:  %ld tokens in %.3f s: %.1f tokens/s (%.2f ms/token)\n", n_prompt, tp, pf, 1e3 / pf);
  printf("decode:   1 sequence, %ld tokens in %.3f s: %.2f tokens/s (%.1f ms/token; median step %.1f ms)\n",
         n_gen, td1, d1, 1e3 / d1, 1e3 * med1);
  printf("prefill/decode per-token speed: %.1fx\n", pf / d1);
  double dB = 0;
  if (batch > 1) {
    /* B sequences of batch_ctx tokens each (a short context by default),
     * decoding together */
    double tpb = prefill(m, (int)batch, (int)batch_ctx, bt, per, logits, err, sizeof err);
    if (tpb < 0) goto fail;
    double medB = 0;
    double tdb =
        decode_steps(m, (int)batch, (int)batch_ctx, (int)n_gen, bt, per, logits, &medB, NULL, err, sizeof err);
    if (tdb < 0) {
      free(pass);
      free(stepv);
      goto fail;
    }
    dB = batch * n_gen / tdb;
    printf("decode:   %ld sequences at %ld positions, %ld steps in %.3f s: %.2f tokens/s aggregate "
           "(%.1fx one sequence; %.1f ms/step; median step %.1f ms, %.1fx one sequence's)\n",
           batch, batch_ctx, n_gen, tdb, dB, dB / d1, 1e3 * tdb / n_gen, 1e3 * medB, batch * med1 / medB);
  }
  /* The roofline: the median of the passes made between the 1-sequence
   * decode steps; and each step against the pass right after it. */
  /* the weights one decode step reads: all but the embedding table, of
   * which it reads one row (unless the table is the output matrix too) */
  double bytes_step = (double)m->weight_bytes;
  if (!m->hp.tied_output)
    bytes_step -= (double)m->embd_bytes - (double)m->embd_bytes / (double)m->hp.n_vocab;
  double *ratio = malloc(sizeof *ratio * (size_t)n_gen);
  if (!ratio) {
    free(pass);
    free(stepv);
    snprintf(err, sizeof err, "out of memory");
    goto fail;
  }
  for (long i = 0; i < n_gen; i++) ratio[i] = stepv[i] > 0 && pass[i] > 0 ? bytes_step / stepv[i] / pass[i] : 0;
  const double bw = median_of(pass, n_gen), rmed = median_of(ratio, n_gen); /* both sorted */
  const double roof = bw / bytes_step;
  printf("roofline: %.1f MB of weights per decode step, read bandwidth %.2f GB/s (%d threads; median of %ld "
         "passes, one after each 1-sequence decode step; %.1f-%.1f GB/s): %.2f tokens/s max\n",
         bytes_step / 1e6, bw / 1e9, threads, n_gen, pass[0] / 1e9, pass[n_gen - 1] / 1e9, roof);
  printf("decode at 1 sequence reaches %.0f%% of the roofline (%.0f%% at the median step); each step against "
         "the pass after it: median %.0f%% (%.0f-%.0f%%)\n",
         100.0 * d1 / roof, 100.0 / med1 / roof, 100.0 * rmed, 100.0 * ratio[0], 100.0 * ratio[n_gen - 1]);
  free(ratio);
  free(pass);
  free(stepv);
  long rss = rss_kib();
  double file_mib = file_mb * 1e6 / 1048576.0, kv_mib = m->kv_bytes / 1048576.0;
  printf("memory: resident %.1f MiB; model file %.1f MiB + KV cache %.1f MiB = %.1f MiB (%.1f%% over); at start %.1f MiB\n",
         rss / 1024.0, file_mib, kv_mib, file_mib + kv_mib, 100.0 * (rss / 1024.0 / (file_mib + kv_mib) - 1), rss0 / 1024.0);
  rc = 0;
  goto done;
fail:
  fprintf(stderr, "strata: bench: %s\n", err);
done:
  free(bt);
  free(logits);
  strata_runtime_close(&rt);
  return rc;
}
