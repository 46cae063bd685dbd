/* quant plugin "f16": IEEE binary16 weights (GGUF type 1).
 *
 * The dot product takes f16 activations (vec_dot_type F16), as llama.cpp
 * does: converting the activation row once per matmul halves the bytes the
 * hot loop reads. Paths: portable C, AVX2+FMA+F16C, AVX-512F; row conversion
 * uses F16C when present (bit-identical to <strata/fp16.h>: both round to
 * nearest-even and quiet NaNs the same way).
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

#include <strata/fp16.h>
#include <strata/cpu.h>
#include <strata/plugin.h>
#include <strata/quant.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- portable ------------------------------------------------------------ */
/* Rows are byte pointers plus memcpy: nothing promises 2-byte alignment. */
static inline uint16_t f16_load(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, sizeof h);
  return h;
}

/* The portable conversion takes about ten instructions, which makes the
 * scalar dot product conversion-bound; a 256 KiB table of every half's
 * value turns each into one load. It is filled only when the scalar path is
 * chosen, so CPUs with F16C never touch it. */
static float f16_table[1 << 16];

static inline float f16_value(const uint8_t *p) {
  return f16_table[f16_load(p)];
}

static void f16_dequantize_row_scalar(const void *src, float *dst, int64_t n) {
  const uint8_t *s = src;
  for (int64_t i = 0; i < n; i++)
    dst[i] = f16_value(s + 2 * i);
}

static void f16_quantize_row_scalar(const float *src, void *dst, int64_t n) {
  uint8_t *d = dst;
  for (int64_t i = 0; i < n; i++) {
    uint16_t h = strata_fp32_to_fp16(src[i]);
    memcpy(d + 2 * i, &h, sizeof h);
  }
}

static void f16_vec_dot_scalar(int64_t n, float *out, const void *w,
                               const void *a) {
  const uint8_t *x = w, *y = a;
  /* independent sums hide the add latency; named, not an array, so that
   * they live in registers */
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += f16_value(x + 2 * i) * f16_value(y + 2 * i);
    s1 += f16_value(x + 2 * i + 2) * f16_value(y + 2 * i + 2);
    s2 += f16_value(x + 2 * i + 4) * f16_value(y + 2 * i + 4);
    s3 += f16_value(x + 2 * i + 6) * f16_value(y + 2 * i + 6);
  }
  for (; i < n; i++)
    s0 += f16_value(x + 2 * i) * f16_value(y + 2 * i);
  *out = (s0 + s1) + (s2 + s3);
}

/* ---- x86 ----------------------------------------------------------------- */
#if defined(__x86_64__)
#define F16_AVX2 __attribute__((target("avx2,fma,f16c")))
#define F16_AVX512 __attribute__((target("avx512f")))

F16_AVX2 static void f16_dequantize_row_f16c(const void *src, float *dst,
                                             int64_t n) {
  const uint8_t *s = src;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                  (const __m128i *)(s + 2 * i))));
  for (; i < n; i++)
    dst[i] = strata_fp16_to_fp32(f16_load(s + 2 * i));
}

F16_AVX2 static void f16_quantize_row_f16c(const float *src, void *dst,
                                           int64_t n) {
  uint8_t *d = dst;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(
        (__m128i *)(d + 2 * i),
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) {
    uint16_t h = strata_fp32_to_fp16(src[i]);
    memcpy(d + 2 * i, &h, sizeof h);
  }
}

F16_AVX2 static inline float f16_hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

F16_AVX2 static inline __m256 f16_load8(const uint8_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

F16_AVX2 static void f16_vec_dot_avx2(int64_t n, float *out, const void *w,
                                      const void *a) {
  const uint8_t *x = w, *y = a;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(f16_load8(x + 2 * i), f16_load8(y + 2 * i), acc0);
    acc1 = _mm256_fmadd_ps(f16_load8(x + 2 * i + 16), f16_load8(y + 2 * i + 16),
                           acc1);
    acc2 = _mm256_fmadd_ps(f16_load8(x + 2 * i + 32), f16_load8(y + 2 * i + 32),
                           acc2);
    acc3 = _mm256_fmadd_ps(f16_load8(x + 2 * i + 48), f16_load8(y + 2 * i + 48),
                           acc3);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(f16_load8(x + 2 * i), f16_load8(y + 2 * i), acc0);
  float s = f16_hsum256(
      _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < n; i++)
    s += strata_fp16_to_fp32(f16_load(x + 2 * i)) *
         strata_fp16_to_fp32(f16_load(y + 2 * i));
  *out = s;
}

F16_AVX512 static inline __m512 f16_load16(const uint8_t *p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

F16_AVX512 static void f16_vec_dot_avx512(int64_t n, float *out, const void *w,
                                          const void *a) {
  const uint8_t *x = w, *y = a;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_fmadd_ps(f16_load16(x + 2 * i), f16_load16(y + 2 * i), acc0);
    acc1 = _mm512_fmadd_ps(f16_load16(x + 2 * i + 32),
                           f16_load16(y + 2 * i + 32), acc1);
    acc2 = _mm512_fmadd_ps(f16_load16(x + 2 * i + 64),
                           f16_load16(y + 2 * i + 64), acc2);
    acc3 = _mm512_fmadd_ps(f16_load16(x + 2 * i + 96),
                           f16_load16(y + 2 * i + 96), acc3);
  }
  for (; i + 16 <= n; i += 16)
    acc0 = _mm512_fmadd_ps(f16_load16(x + 2 * i), f16_load16(y + 2 * i), acc0);
  float s = _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
  for (; i < n; i++)
    s += strata_fp16_to_fp32(f16_load(x + 2 * i)) *
         strata_fp16_to_fp32(f16_load(y + 2 * i));
  *out = s;
}
#endif

/* ---- dispatch ------------------------------------------------------------ */
static void (*f16_dequantize_row_impl)(const void *, float *,
                                       int64_t) = f16_dequantize_row_scalar;
static void (*f16_quantize_row_impl)(const float *, void *,
                                     int64_t) = f16_quantize_row_scalar;
static void (*f16_vec_dot_impl)(int64_t, float *, const void *,
                                const void *) = f16_vec_dot_scalar;

/* Runs when the plugin is loaded, before any call can race with it. */
__attribute__((constructor)) static void f16_select(void) {
  struct strata_cpu_features c = strata_cpu_detect();
  (void)c;
  /* The scalar code needs the table; it is also the fallback for the
   * dequantize and quantize slots on CPUs without F16C. */
  int need_table = 1;
#if defined(__x86_64__)
  if (c.avx2) {
    f16_dequantize_row_impl = f16_dequantize_row_f16c;
    f16_quantize_row_impl = f16_quantize_row_f16c;
    f16_vec_dot_impl = f16_vec_dot_avx2;
    need_table = 0;
  }
  if (c.avx512) f16_vec_dot_impl = f16_vec_dot_avx512;
#endif
  if (need_table)
    for (uint32_t h = 0; h < (1u << 16); h++)
      f16_table[h] = strata_fp16_to_fp32((uint16_t)h);
}

static void f16_dequantize_row(const void *src, float *dst, int64_t n) {
  f16_dequantize_row_impl(src, dst, n);
}

static void f16_quantize_row(const float *src, void *dst, int64_t n) {
  f16_quantize_row_impl(src, dst, n);
}

static void f16_vec_dot(int64_t n, float *out, const void *w, const void *a) {
  f16_vec_dot_impl(n, out, w, a);
}

static const struct strata_quant_vtable f16_vtable = {
    .size = sizeof(struct strata_quant_vtable),
    .type = STRATA_TYPE_F16,
    .block_size = 1,
    .type_size = 2,
    .dequantize_row = f16_dequantize_row,
    .quantize_row = f16_quantize_row,
    .vec_dot_type = STRATA_TYPE_F16,
    .vec_dot = f16_vec_dot,
};

static const struct strata_plugin_desc f16_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_QUANT,
    .name = "f16",
    .version = "1.0",
    .license = "MIT",
    .description = "IEEE binary16 weights; dot with f16 activations",
    .params = NULL,
    .init = NULL,
    .fini = NULL,
    .vt.quant = &f16_vtable,
};

STRATA_PLUGIN_DEFINE(f16_desc)
