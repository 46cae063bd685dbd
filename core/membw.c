/* Memory read bandwidth: see membw.h. */
#include "config.h"

#include "membw.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "util.h"

struct bw_arg {
  const uint64_t *p;
  size_t n;
  uint64_t sum;
};

static void *bw_worker(void *a) {
  struct bw_arg *w = a;
  /* eight independent accumulators: the compiler vectorizes what it can */
  uint64_t s[8] = {0};
  size_t i = 0;
  for (; i + 8 <= w->n; i += 8)
    for (int k = 0; k < 8; k++) s[k] += w->p[i + k];
  w->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
  for (; i < w->n; i++) w->sum += w->p[i];
  return NULL;
}

#if defined(__x86_64__)
/* Four cache lines per iteration in 256-bit loads. */
__attribute__((target("avx2"))) static void *bw_worker_avx2(void *a) {
  struct bw_arg *w = a;
  __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                  _mm256_setzero_si256()};
  size_t i = 0;
  for (; i + 32 <= w->n; i += 32)
    for (int k = 0; k < 4; k++)
      s[k] = _mm256_add_epi64(
          s[k], _mm256_add_epi64(_mm256_load_si256((const __m256i *)(w->p + i + 8 * k)),
                                 _mm256_load_si256((const __m256i *)(w->p + i + 8 * k + 4))));
  uint64_t v[4];
  _mm256_storeu_si256((__m256i *)v,
                      _mm256_add_epi64(_mm256_add_epi64(s[0], s[1]), _mm256_add_epi64(s[2], s[3])));
  w->sum = v[0] + v[1] + v[2] + v[3];
  for (; i < w->n; i++) w->sum += w->p[i];
  return NULL;
}
#endif

double strata_read_bandwidth_of(const uint64_t *buf, size_t bytes, int threads, int simd, int passes) {
  void *(*worker)(void *) = bw_worker;
#if defined(__x86_64__)
  if (simd && __builtin_cpu_supports("avx2")) worker = bw_worker_avx2;
#endif
  (void)simd;
  if (threads < 1) threads = 1;
  if (threads > 256) threads = 256;
  pthread_t th[256];
  struct bw_arg args[256];
  const size_t n = bytes / sizeof *buf;
  double best = 0;
  for (int rep = 0; rep < passes; rep++) {
    double t0 = strata_now();
    int started = 0;
    for (int t = 0; t < threads; t++) {
      /* each thread's slice starts on a 32-byte boundary */
      size_t lo = (n / threads * t) & ~(size_t)3;
      size_t hi = t == threads - 1 ? n : (n / threads * (t + 1)) & ~(size_t)3;
      args[t] = (struct bw_arg){.p = buf + lo, .n = hi - lo};
      if (pthread_create(&th[t], NULL, worker, &args[t]) != 0) break;
      started++;
    }
    uint64_t sink = 0;
    for (int t = 0; t < started; t++) {
      pthread_join(th[t], NULL);
      sink += args[t].sum;
    }
    if (started < threads) return 0;
    double dt = strata_now() - t0;
    if (sink == 42) fputc(' ', stderr); /* keeps the sums alive */
    if (dt > 0 && bytes / dt > best) best = bytes / dt;
  }
  return best;
}

double strata_read_bandwidth(size_t bytes, int threads) {
  uint64_t *buf = NULL;
  if (posix_memalign((void **)&buf, 64, bytes) != 0) return 0;
  for (size_t i = 0; i < bytes / sizeof *buf; i++) buf[i] = i; /* touch every page */
  double a = strata_read_bandwidth_of(buf, bytes, threads, 0, 5);
  double b = strata_read_bandwidth_of(buf, bytes, threads, 1, 5);
  free(buf);
  return a > b ? a : b;
}
