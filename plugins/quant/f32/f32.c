/* quant plugin "f32": plain IEEE fp32 weights (GGUF type 0).
 *
 * Rows are copied as they are; the dot product (weights f32 . activations
 * f32) is the hot loop of every f32 matmul on the CPU, so it has AVX2+FMA and
 * AVX-512 versions besides the portable one.
 *
 * SIMD dispatch: the path is chosen once, when the plugin is loaded: the best
 * the CPU offers, capped by the environment variable STRATA_CPU_FEATURES
 * ("scalar", "avx2" or "avx512"; unset or anything else: no cap). The cap lets
 * the tests run every path on one machine, and forces the portable code
 * wherever that is wanted (valgrind, say, or a suspected SIMD bug).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <strata/cpu.h>
#include <strata/plugin.h>
#include <strata/quant.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* The n > 0 checks keep empty rows with NULL pointers defined behaviour. */
static void f32_dequantize_row(const void *src, float *dst, int64_t n) {
  if (n > 0) memcpy(dst, src, (size_t)n * sizeof(float));
}

static void f32_quantize_row(const float *src, void *dst, int64_t n) {
  if (n > 0) memcpy(dst, src, (size_t)n * sizeof(float));
}

/* Element i of a row. Rows come as void pointers and nothing promises
 * 4-byte alignment (a row may sit anywhere in a mapped file), so loads go
 * through memcpy, which compiles to a plain load. */
static inline float f32_at(const void *row, int64_t i) {
  float v;
  memcpy(&v, (const char *)row + 4 * i, sizeof v);
  return v;
}

/* Eight independent partial sums: the loop is latency-bound otherwise, and
 * the compiler may not reorder float additions itself. */
static void f32_vec_dot_scalar(int64_t n, float *out, const void *w,
                               const void *a) {
  float s[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++)
      s[k] += f32_at(w, i + k) * f32_at(a, i + k);
  for (; i < n; i++)
    s[0] += f32_at(w, i) * f32_at(a, i);
  *out = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static inline float f32_hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* Four accumulators cover the FMA latency (4 cycles, 2 per cycle would want
 * 8, but loads limit us to 2 vectors per cycle anyway). */
__attribute__((target("avx2,fma"))) static void
f32_vec_dot_avx2(int64_t n, float *out, const void *w, const void *a) {
  const float *x = w, *y = a;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 =
        _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8),
                           _mm256_loadu_ps(y + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16),
                           _mm256_loadu_ps(y + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24),
                           _mm256_loadu_ps(y + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8)
    acc0 =
        _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
  float s = f32_hsum256(
      _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < n; i++)
    s += f32_at(x, i) * f32_at(y, i);
  *out = s;
}

__attribute__((target("avx512f"))) static void
f32_vec_dot_avx512(int64_t n, float *out, const void *w, const void *a) {
  const float *x = w, *y = a;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 =
        _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16),
                           _mm512_loadu_ps(y + i + 16), acc1);
    acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32),
                           _mm512_loadu_ps(y + i + 32), acc2);
    acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48),
                           _mm512_loadu_ps(y + i + 48), acc3);
  }
  for (; i + 16 <= n; i += 16)
    acc0 =
        _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
  float s = _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
  for (; i < n; i++)
    s += f32_at(x, i) * f32_at(y, i);
  *out = s;
}
#endif

/* ---- dispatch ------------------------------------------------------------ */
static void (*f32_vec_dot_impl)(int64_t, float *, const void *,
                                const void *) = f32_vec_dot_scalar;

/* Runs when the plugin is loaded, before any call can race with it. */
__attribute__((constructor)) static void f32_select(void) {
  struct strata_cpu_features c = strata_cpu_detect();
  (void)c;
#if defined(__x86_64__)
  if (c.avx512)
    f32_vec_dot_impl = f32_vec_dot_avx512;
  else if (c.avx2)
    f32_vec_dot_impl = f32_vec_dot_avx2;
#endif
}

static void f32_vec_dot(int64_t n, float *out, const void *w, const void *a) {
  f32_vec_dot_impl(n, out, w, a);
}

static const struct strata_quant_vtable f32_vtable = {
    .size = sizeof(struct strata_quant_vtable),
    .type = STRATA_TYPE_F32,
    .block_size = 1,
    .type_size = 4,
    .dequantize_row = f32_dequantize_row,
    .quantize_row = f32_quantize_row,
    .vec_dot_type = STRATA_TYPE_F32,
    .vec_dot = f32_vec_dot,
};

static const struct strata_plugin_desc f32_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_QUANT,
    .name = "f32",
    .version = "1.0",
    .license = "MIT",
    .description = "IEEE fp32 weights; dot with f32 activations",
    .params = NULL,
    .init = NULL,
    .fini = NULL,
    .vt.quant = &f32_vtable,
};

STRATA_PLUGIN_DEFINE(f32_desc)
