/* bench_matmul: the cpu backend's matmul against this machine's memory.
 *
 * Prints, for 1 and 2 threads (or the counts given with -t):
 *   - memory read bandwidth: the best of several passes summing 1 GiB, with a
 *     plain C loop (as `strata bench` does) and with 256-bit loads; the
 *     larger is the roofline;
 *   - decode matvec (1 token) on TinyLlama's FFN shapes, 2048 -> 5632 and
 *     5632 -> 2048, in q8_0 and q4_0: GB/s of weights read, cycling through
 *     enough copies of the matrix (>= 1 GiB) that they come from DRAM and not
 *     from the last-level cache, and the same as a fraction of the bandwidth;
 *   - 16 tokens at once (16 sequences decoding together): microseconds, and
 *     tokens/s relative to 16 single-token matvecs;
 *   - prefill, 512 tokens through 2048 -> 5632: GFLOP/s (2 * K * N * T);
 * every time the median call's (this machine's neighbours stretch a few);
 * each with the rows as they lie in the GGUF and packed by the backend's
 * prepare_weight (what a loaded model uses).
 *
 * Not built by `make check`. From a configured build tree:
 *   ./libtool --mode=link gcc -O2 -I. -Icore/include -Icore \
 *     -DSTRATA_BUILDDIR="\"$PWD\"" -DSTRATA_SRCDIR="\"$PWD\"" \
 *     -DSTRATA_SHARED_DIR='"../shared"' -DSTRATA_PKGLIBDIR='"/nonexistent"' \
 *     -o bench_matmul tests/bench/bench_matmul.c core/libstrata.la -lpthread
 *   ./bench_matmul [-t 1,2] [-s seconds]
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <strata/backend.h>
#include <strata/quant.h>

#include "membw.h"
#include "plugin_loader.h"


static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- memory read bandwidth --------------------------------------------------- */

/* ---- setup ------------------------------------------------------------------ */

static struct strata_registry reg;
static const struct strata_backend_vtable *be;

static void die(const char *what, const char *why) {
  fprintf(stderr, "bench_matmul: %s: %s\n", what, why);
  exit(1);
}

static const struct strata_quant_vtable *quant(uint32_t type) {
  const struct strata_plugin *p = strata_registry_find_quant(&reg, type);
  if (!p) die("quant plugin missing", "build the tree first");
  return p->desc->vt.quant;
}

static uint64_t rng = 12345;
static float frand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) * 0x1p-23 - 1.0);
}

struct mat {
  uint32_t type;
  int64_t K, N;
  size_t bytes;   /* one copy */
  int copies;     /* enough for >= 1 GiB */
  uint8_t *host;  /* copies back to back */
  strata_buf_t *buf;
  struct strata_tensor packed; /* all copies, prepared as one matrix; buf NULL: none */
  size_t pbytes;               /* bytes of one packed copy */
};

static void make_mat(strata_backend_t *b, struct mat *m, uint32_t type, int64_t K, int64_t N,
                     size_t total) {
  const struct strata_quant_vtable *q = quant(type);
  const size_t rb = (size_t)(K / q->block_size) * q->type_size;
  m->type = type;
  m->K = K;
  m->N = N;
  m->bytes = rb * N;
  m->copies = (int)((total + m->bytes - 1) / m->bytes);
  if (m->copies < 1) m->copies = 1;
  m->host = aligned_alloc(64, (m->bytes * m->copies + 63) & ~(size_t)63);
  float *row = malloc(K * sizeof *row);
  for (int64_t r = 0; r < N; r++) {
    for (int64_t i = 0; i < K; i++) row[i] = frand();
    q->quantize_row(row, m->host + r * rb, K);
  }
  free(row);
  for (int c = 1; c < m->copies; c++) memcpy(m->host + c * m->bytes, m->host, m->bytes);
  m->buf = be->buf_wrap_host(b, m->host, m->bytes * m->copies);
  /* the copies as one matrix of N * copies rows: copy c's rows are whole
   * row groups (N is a multiple of 4), one copy's share of the bytes each */
  const struct strata_tensor all = {.buf = m->buf, .type = type, .ne = {K, N * m->copies}};
  memset(&m->packed, 0, sizeof m->packed);
  if (be->prepare_weight && be->prepare_weight(b, &all, &m->packed) != 1) m->packed.buf = NULL;
  const int64_t nbp = (K / 32 + 15) / 16 * 16;
  m->pbytes = (size_t)nbp * q->type_size * (size_t)N;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median seconds per matmul of T tokens, cycling through the copies (cold) or on
 * copy 0 only (hot). */
static double time_matmul(strata_backend_t *b, struct mat *m, int64_t T, int cold, double secs,
                          int packed) {
  float *x = malloc(T * m->K * sizeof *x);
  for (int64_t i = 0; i < T * m->K; i++) x[i] = frand();
  strata_buf_t *xb = be->buf_alloc(b, T * m->K * 4), *ob = be->buf_alloc(b, T * m->N * 4);
  be->upload(b, xb, 0, x, T * m->K * 4);
  struct strata_tensor tx = {.buf = xb, .type = STRATA_TYPE_F32, .ne = {m->K, T}};
  struct strata_tensor to = {.buf = ob, .type = STRATA_TYPE_F32, .ne = {m->N, T}};
  struct strata_tensor tw = {.buf = m->buf, .type = m->type, .ne = {m->K, m->N}};
  const size_t stride = packed ? m->pbytes : m->bytes;
  if (packed) {
    tw = m->packed;
    tw.ne[1] = m->N;
  }
  /* warm up (page faults, thread pool) */
  for (int c = 0; c < m->copies; c++) {
    tw.offset = (uint64_t)c * stride;
    if (be->matmul(b, &tw, &tx, &to) != 0) die("matmul", be->last_error(b));
    if (!cold) break;
  }
  /* the median call: a noisy neighbour's burst stretches a few calls,
   * which a mean carries */
  size_t n = 0, cap = 1024;
  double *ts = malloc(cap * sizeof *ts);
  int c = 0;
  double t0 = now(), dt, tc = t0;
  do {
    tw.offset = cold ? (uint64_t)c * stride : 0;
    c = (c + 1) % m->copies;
    be->matmul(b, &tw, &tx, &to);
    const double t = now();
    if (n == cap) ts = realloc(ts, (cap *= 2) * sizeof *ts);
    ts[n++] = t - tc;
    tc = t;
    dt = t - t0;
  } while (dt < secs || (cold && c != 0));
  qsort(ts, n, sizeof *ts, cmp_double);
  const double med = ts[n / 2];
  free(ts);
  be->buf_free(b, xb);
  be->buf_free(b, ob);
  free(x);
  return med;
}

int main(int argc, char **argv) {
  int threads[8] = {1, 2}, nthreads = 2;
  double secs = 1.0;
  int opt;
  while ((opt = getopt(argc, argv, "t:s:")) != -1) {
    if (opt == 't') {
      nthreads = 0;
      for (char *p = strtok(optarg, ","); p && nthreads < 8; p = strtok(NULL, ","))
        threads[nthreads++] = atoi(p);
    } else if (opt == 's') {
      secs = atof(optarg);
    } else {
      fprintf(stderr, "usage: bench_matmul [-t 1,2] [-s seconds]\n");
      return 2;
    }
  }
  char dir[4096];
  const char *bd = getenv("STRATA_BUILDDIR");
  snprintf(dir, sizeof dir, "%s/plugins", bd && *bd ? bd : STRATA_BUILDDIR);
  const char *dirs[] = {dir};
  strata_registry_scan(&reg, dirs, 1);
  strata_host_set_registry(&reg);
  char err[1024];
  for (size_t i = 0; i < reg.n_plugins; i++)
    if (strata_plugin_init(&reg.plugins[i], NULL, err, sizeof err) != 0) die("init", err);
  const struct strata_plugin *cpu = strata_registry_find(&reg, STRATA_PLUGIN_BACKEND, "cpu");
  if (!cpu) die(dir, "no cpu backend plugin");
  be = cpu->desc->vt.backend;

  const size_t bw_bytes = (size_t)1 << 30;
  uint64_t *bwbuf = aligned_alloc(64, bw_bytes);
  for (size_t i = 0; i < bw_bytes / 8; i++) bwbuf[i] = i;

  for (int ti = 0; ti < nthreads; ti++) {
    const int nt = threads[ti];
    struct strata_backend_params p = {.size = sizeof p, .threads = nt};
    strata_backend_t *b;
    if (be->open(0, &p, &b, err, sizeof err) != 0) die("open", err);
    const double bw_plain = strata_read_bandwidth_of(bwbuf, bw_bytes, nt, 0, 5);
    const double bw_simd = strata_read_bandwidth_of(bwbuf, bw_bytes, nt, 1, 5);
    const double bw = bw_simd > bw_plain ? bw_simd : bw_plain;
    printf("threads %d: memory read bandwidth %.1f GB/s (plain C loop %.1f GB/s, 256-bit loads "
           "%.1f GB/s)\n", nt, bw / 1e9, bw_plain / 1e9, bw_simd / 1e9);
    const uint32_t types[] = {STRATA_TYPE_Q8_0, STRATA_TYPE_Q4_0};
    const int64_t shapes[][2] = {{2048, 5632}, {5632, 2048}};
    for (int k = 0; k < 2; k++)
      for (int s = 0; s < 2; s++) {
        struct mat m;
        make_mat(b, &m, types[k], shapes[s][0], shapes[s][1], (size_t)1 << 30);
        for (int pk = 0; pk < 1 + (m.packed.buf != NULL); pk++) {
          const char *lay = pk ? "packed" : "gguf  ";
          const double cold = time_matmul(b, &m, 1, 1, secs, pk);
          const double hot = time_matmul(b, &m, 1, 0, secs, pk);
          const double t16 = time_matmul(b, &m, 16, 1, secs, pk);
          printf("  %s %5lld -> %5lld %s matvec: %6.1f GB/s from DRAM (%3.0f%% of bandwidth), "
                 "%6.1f GB/s from cache; 16 tokens: %.0f us, %.1fx the tokens/s of 1\n",
                 k ? "q4_0" : "q8_0", (long long)m.K, (long long)m.N, lay, m.bytes / cold / 1e9,
                 100.0 * m.bytes / cold / bw, m.bytes / hot / 1e9, t16 * 1e6, 16.0 * cold / t16);
          if (s == 0) {
            const double tp = time_matmul(b, &m, 512, 0, secs, pk);
            printf("  %s %5lld -> %5lld %s prefill 512 tokens: %6.1f GFLOP/s, %.1fx the tokens/s "
                   "of decode\n",
                   k ? "q4_0" : "q8_0", (long long)m.K, (long long)m.N, lay,
                   2.0 * m.K * m.N * 512 / tp / 1e9, 512.0 * cold / tp);
          }
        }
        if (m.packed.buf) be->buf_free(b, m.packed.buf);
        be->buf_free(b, m.buf);
        free(m.host);
      }
    be->close(b);
  }
  free(bwbuf);
  strata_registry_free(&reg);
  return 0;
}
