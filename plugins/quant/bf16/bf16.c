/* quant plugin "bf16": bfloat16 weights (GGUF type 30).
 *
 * The dot product takes bf16 activations (vec_dot_type BF16), as llama.cpp
 * does. bf16 -> fp32 is a 16-bit shift, so the SIMD loops widen in registers:
 * shifting each 32-bit lane left by 16 yields the even elements as floats and
 * masking off the low half yields the odd ones; weights and activations pair
 * up the same way, so no shuffles are needed. Paths: portable C, AVX2+FMA,
 * AVX-512F. (AVX512-BF16's VDPBF16PS is left out on purpose: it flushes
 * subnormal inputs, so its results would depend on the CPU.)
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
static inline float bf16_load(const uint8_t *p) {
  uint16_t b;
  memcpy(&b, p, sizeof b);
  return strata_bf16_to_fp32(b);
}

static void bf16_dequantize_row(const void *src, float *dst, int64_t n) {
  const uint8_t *s = src;
  for (int64_t i = 0; i < n; i++)
    dst[i] = bf16_load(s + 2 * i);
}

static void bf16_quantize_row(const float *src, void *dst, int64_t n) {
  uint8_t *d = dst;
  for (int64_t i = 0; i < n; i++) {
    uint16_t b = strata_fp32_to_bf16(src[i]);
    memcpy(d + 2 * i, &b, sizeof b);
  }
}

static void bf16_vec_dot_scalar(int64_t n, float *out, const void *w,
                                const void *a) {
  const uint8_t *x = w, *y = a;
  float s[8] = {0}; /* independent sums hide the add latency */
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++)
      s[k] += bf16_load(x + 2 * (i + k)) * bf16_load(y + 2 * (i + k));
  for (; i < n; i++)
    s[0] += bf16_load(x + 2 * i) * bf16_load(y + 2 * i);
  *out = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* ---- x86 ----------------------------------------------------------------- */
#if defined(__x86_64__)
#define BF16_AVX2 __attribute__((target("avx2,fma")))
#define BF16_AVX512 __attribute__((target("avx512f")))

BF16_AVX2 static inline float bf16_hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* acc += even products + odd products of 16 bf16 pairs. */
BF16_AVX2 static inline __m256 bf16_fma16(const uint8_t *x, const uint8_t *y,
                                          __m256 acc) {
  const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
  __m256i vx = _mm256_loadu_si256((const __m256i *)x);
  __m256i vy = _mm256_loadu_si256((const __m256i *)y);
  acc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(vx, 16)),
                        _mm256_castsi256_ps(_mm256_slli_epi32(vy, 16)), acc);
  return _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(vx, hi)),
                         _mm256_castsi256_ps(_mm256_and_si256(vy, hi)), acc);
}

BF16_AVX2 static void bf16_vec_dot_avx2(int64_t n, float *out, const void *w,
                                        const void *a) {
  const uint8_t *x = w, *y = a;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = bf16_fma16(x + 2 * i, y + 2 * i, acc0);
    acc1 = bf16_fma16(x + 2 * i + 32, y + 2 * i + 32, acc1);
    acc2 = bf16_fma16(x + 2 * i + 64, y + 2 * i + 64, acc2);
    acc3 = bf16_fma16(x + 2 * i + 96, y + 2 * i + 96, acc3);
  }
  for (; i + 16 <= n; i += 16)
    acc0 = bf16_fma16(x + 2 * i, y + 2 * i, acc0);
  float s = bf16_hsum256(
      _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < n; i++)
    s += bf16_load(x + 2 * i) * bf16_load(y + 2 * i);
  *out = s;
}

/* acc += even products + odd products of 32 bf16 pairs. */
BF16_AVX512 static inline __m512 bf16_fma32(const uint8_t *x, const uint8_t *y,
                                            __m512 acc) {
  const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
  __m512i vx = _mm512_loadu_si512((const void *)x);
  __m512i vy = _mm512_loadu_si512((const void *)y);
  acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(vx, 16)),
                        _mm512_castsi512_ps(_mm512_slli_epi32(vy, 16)), acc);
  return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(vx, hi)),
                         _mm512_castsi512_ps(_mm512_and_si512(vy, hi)), acc);
}

BF16_AVX512 static void bf16_vec_dot_avx512(int64_t n, float *out,
                                            const void *w, const void *a) {
  const uint8_t *x = w, *y = a;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    acc0 = bf16_fma32(x + 2 * i, y + 2 * i, acc0);
    acc1 = bf16_fma32(x + 2 * i + 64, y + 2 * i + 64, acc1);
    acc2 = bf16_fma32(x + 2 * i + 128, y + 2 * i + 128, acc2);
    acc3 = bf16_fma32(x + 2 * i + 192, y + 2 * i + 192, acc3);
  }
  for (; i + 32 <= n; i += 32)
    acc0 = bf16_fma32(x + 2 * i, y + 2 * i, acc0);
  float s = _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
  for (; i < n; i++)
    s += bf16_load(x + 2 * i) * bf16_load(y + 2 * i);
  *out = s;
}
#endif

/* ---- dispatch ------------------------------------------------------------ */
static void (*bf16_vec_dot_impl)(int64_t, float *, const void *,
                                 const void *) = bf16_vec_dot_scalar;

/* Runs when the plugin is loaded, before any call can race with it. */
__attribute__((constructor)) static void bf16_select(void) {
  struct strata_cpu_features c = strata_cpu_detect();
  (void)c;
#if defined(__x86_64__)
  if (c.avx512)
    bf16_vec_dot_impl = bf16_vec_dot_avx512;
  else if (c.avx2)
    bf16_vec_dot_impl = bf16_vec_dot_avx2;
#endif
}

static void bf16_vec_dot(int64_t n, float *out, const void *w, const void *a) {
  bf16_vec_dot_impl(n, out, w, a);
}

static const struct strata_quant_vtable bf16_vtable = {
    .size = sizeof(struct strata_quant_vtable),
    .type = STRATA_TYPE_BF16,
    .block_size = 1,
    .type_size = 2,
    .dequantize_row = bf16_dequantize_row,
    .quantize_row = bf16_quantize_row,
    .vec_dot_type = STRATA_TYPE_BF16,
    .vec_dot = bf16_vec_dot,
};

static const struct strata_plugin_desc bf16_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_QUANT,
    .name = "bf16",
    .version = "1.0",
    .license = "MIT",
    .description = "bfloat16 weights; dot with bf16 activations",
    .params = NULL,
    .init = NULL,
    .fini = NULL,
    .vt.quant = &bf16_vtable,
};

STRATA_PLUGIN_DEFINE(bf16_desc)
