/* quant plugin "q8_0": GGUF type 8, llama.cpp's block layout.
 *
 * A block holds 32 elements in 34 bytes: an fp16 scale d, then 32 int8
 * quants; element j is qs[j] * d. Blocks sit back to back with no padding,
 * so a block (and its scale) is only byte-aligned: every multi-byte field is
 * read with memcpy.
 *
 * quantize_row is llama.cpp's reference quantizer, operation for operation
 * (d = amax / 127, q = roundf(x * (1/d))), so its output is bit-identical.
 *
 * vec_dot takes q8_0 activations: per block an exact int32 dot of the quants,
 * scaled by d_w * d_a. The SIMD paths multiply |w| (unsigned) by a with the
 * sign of w moved onto a; that is exact as long as the activations hold no
 * -128, which quantize_row never writes (|x * id| <= 127).
 * Paths: portable C; AVX2 (+FMA, F16C: maddubs/madd); AVX-512 VNNI with
 * AVX-512VL (vpdpbusd on 256-bit vectors: one block per instruction).
 *
 * SIMD dispatch: the path is chosen once, when the plugin is loaded: the best
 * the CPU offers, capped by the environment variable STRATA_CPU_FEATURES
 * ("scalar", "avx2" or "avx512"; unset or anything else: no cap). The cap lets
 * the tests run every path on one machine, and forces the portable code
 * wherever that is wanted (valgrind, say, or a suspected SIMD bug).
 */
#include "config.h"

#include <math.h>
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

#define QK8_0 32
#define Q8_0_BYTES 34 /* sizeof(uint16_t) + QK8_0 */

static inline float q8_0_scale(const uint8_t *block) {
  uint16_t h;
  memcpy(&h, block, sizeof h);
  return strata_fp16_to_fp32(h);
}

/* ---- portable ------------------------------------------------------------ */
static void q8_0_dequantize_row(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / QK8_0; i++, b += Q8_0_BYTES, dst += QK8_0) {
    const float d = q8_0_scale(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < QK8_0; j++)
      dst[j] = qs[j] * d;
  }
}

/* roundf (halfway cases away from zero) for |v| < 2^31, inline: libm's
 * call per element made quantizing activations several times slower.
 * v - trunc(v) is exact in float, so the comparison with 0.5 is too. */
static inline int32_t q8_0_round(float v) {
  int32_t i = (int32_t)v;
  const float frac = v - (float)i;
  if (frac >= 0.5f)
    i++;
  else if (frac <= -0.5f)
    i--;
  return i;
}

/* llama.cpp's quantize_row_q8_0_ref. The MAX-style comparison (not fmaxf)
 * and roundf (ties away from zero, not to even) are part of the contract. */
static void q8_0_quantize_row(const float *src, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / QK8_0; i++, b += Q8_0_BYTES, src += QK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; j++) {
      const float v = fabsf(src[j]);
      amax = amax > v ? amax : v;
    }
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    const uint16_t h = strata_fp32_to_fp16(d);
    memcpy(b, &h, sizeof h);
    int8_t *qs = (int8_t *)(b + 2);
    for (int j = 0; j < QK8_0; j++)
      qs[j] = (int8_t)q8_0_round(src[j] * id);
  }
}

static void q8_0_vec_dot_scalar(int64_t n, float *out, const void *w,
                                const void *a) {
  const uint8_t *bw = w, *ba = a;
  float sum = 0.0f;
  for (int64_t i = 0; i < n / QK8_0; i++, bw += Q8_0_BYTES, ba += Q8_0_BYTES) {
    const int8_t *x = (const int8_t *)(bw + 2), *y = (const int8_t *)(ba + 2);
    int32_t isum = 0;
    for (int j = 0; j < QK8_0; j++)
      isum += x[j] * y[j];
    sum += (float)isum * (q8_0_scale(bw) * q8_0_scale(ba));
  }
  *out = sum;
}

/* ---- x86 ----------------------------------------------------------------- */
#if defined(__x86_64__)
#define Q8_AVX2 __attribute__((target("avx2,fma,f16c")))
#define Q8_VNNI                                                                \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,"             \
                        "avx512vnni")))

Q8_AVX2 static inline float q8_0_hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline int16_t q8_0_half(const uint8_t *p) {
  int16_t h;
  memcpy(&h, p, sizeof h);
  return h;
}

/* d_w * d_a for one block, broadcast (the tail of a row). */
Q8_AVX2 static inline __m256 q8_0_dd1(const uint8_t *bw, const uint8_t *ba) {
  return _mm256_set1_ps(_cvtsh_ss((uint16_t)q8_0_half(bw)) *
                        _cvtsh_ss((uint16_t)q8_0_half(ba)));
}

/* d_w * d_a for 8 consecutive blocks, one per lane: converting eight scales
 * with one vcvtph2ps costs far less than eight scalar conversions. */
Q8_AVX2 static inline __m256 q8_0_dd8(const uint8_t *bw, const uint8_t *ba) {
  const __m128i hw = _mm_setr_epi16(
      q8_0_half(bw), q8_0_half(bw + Q8_0_BYTES), q8_0_half(bw + 2 * Q8_0_BYTES),
      q8_0_half(bw + 3 * Q8_0_BYTES), q8_0_half(bw + 4 * Q8_0_BYTES),
      q8_0_half(bw + 5 * Q8_0_BYTES), q8_0_half(bw + 6 * Q8_0_BYTES),
      q8_0_half(bw + 7 * Q8_0_BYTES));
  const __m128i ha = _mm_setr_epi16(
      q8_0_half(ba), q8_0_half(ba + Q8_0_BYTES), q8_0_half(ba + 2 * Q8_0_BYTES),
      q8_0_half(ba + 3 * Q8_0_BYTES), q8_0_half(ba + 4 * Q8_0_BYTES),
      q8_0_half(ba + 5 * Q8_0_BYTES), q8_0_half(ba + 6 * Q8_0_BYTES),
      q8_0_half(ba + 7 * Q8_0_BYTES));
  return _mm256_mul_ps(_mm256_cvtph_ps(hw), _mm256_cvtph_ps(ha));
}

/* sum(w * a) of one block as 8 int32 partial sums: |w| times a with w's
 * sign, so pairs of products stay inside int16. */
Q8_AVX2 static inline __m256i q8_0_isum_avx2(const uint8_t *bw,
                                             const uint8_t *ba) {
  const __m256i x = _mm256_loadu_si256((const __m256i *)(bw + 2));
  const __m256i y = _mm256_loadu_si256((const __m256i *)(ba + 2));
  const __m256i p16 =
      _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

Q8_VNNI static inline __m256i q8_0_isum_vnni(const uint8_t *bw,
                                             const uint8_t *ba) {
  const __m256i x = _mm256_loadu_si256((const __m256i *)(bw + 2));
  const __m256i y = _mm256_loadu_si256((const __m256i *)(ba + 2));
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(x),
                             _mm256_sign_epi8(y, x));
}

/* acc += scale * isum, with the scale taken from lane k of dd. */
#define Q8_0_STEP(acc, isum, k)                                                \
  acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dd, _mm256_set1_epi32(k)),    \
                        _mm256_cvtepi32_ps(isum), acc)

/* The row in groups of 8 blocks (scales converted together), then the
 * remaining blocks one by one; two accumulators for the FMA latency. */
#define Q8_0_VEC_DOT_BODY(isum_fn)                                             \
  const uint8_t *bw = w, *ba = a;                                              \
  const int64_t nb = n / QK8_0;                                                \
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();               \
  int64_t i = 0;                                                               \
  for (; i + 8 <= nb; i += 8, bw += 8 * Q8_0_BYTES, ba += 8 * Q8_0_BYTES) {    \
    const __m256 dd = q8_0_dd8(bw, ba);                                        \
    _Pragma("GCC unroll 4") for (int k = 0; k < 8; k += 2) {                   \
      Q8_0_STEP(acc0, isum_fn(bw + k * Q8_0_BYTES, ba + k * Q8_0_BYTES), k);   \
      Q8_0_STEP(acc1,                                                          \
                isum_fn(bw + (k + 1) * Q8_0_BYTES, ba + (k + 1) * Q8_0_BYTES), \
                k + 1);                                                        \
    }                                                                          \
  }                                                                            \
  for (; i < nb; i++, bw += Q8_0_BYTES, ba += Q8_0_BYTES)                      \
    acc0 = _mm256_fmadd_ps(q8_0_dd1(bw, ba),                                   \
                           _mm256_cvtepi32_ps(isum_fn(bw, ba)), acc0);         \
  *out = q8_0_hsum256(_mm256_add_ps(acc0, acc1))

Q8_AVX2 static void q8_0_vec_dot_avx2(int64_t n, float *out, const void *w,
                                      const void *a) {
  Q8_0_VEC_DOT_BODY(q8_0_isum_avx2);
}

Q8_VNNI static void q8_0_vec_dot_vnni(int64_t n, float *out, const void *w,
                                      const void *a) {
  Q8_0_VEC_DOT_BODY(q8_0_isum_vnni);
}
#endif

/* ---- dispatch ------------------------------------------------------------ */
static void (*q8_0_vec_dot_impl)(int64_t, float *, const void *,
                                 const void *) = q8_0_vec_dot_scalar;

/* Runs when the plugin is loaded, before any call can race with it. */
__attribute__((constructor)) static void q8_0_select(void) {
  struct strata_cpu_features c = strata_cpu_detect();
  (void)c;
#if defined(__x86_64__)
  if (c.avx512_vnni)
    q8_0_vec_dot_impl = q8_0_vec_dot_vnni;
  else if (c.avx2)
    q8_0_vec_dot_impl = q8_0_vec_dot_avx2;
#endif
}

static void q8_0_vec_dot(int64_t n, float *out, const void *w, const void *a) {
  q8_0_vec_dot_impl(n, out, w, a);
}

static const struct strata_quant_vtable q8_0_vtable = {
    .size = sizeof(struct strata_quant_vtable),
    .type = STRATA_TYPE_Q8_0,
    .block_size = QK8_0,
    .type_size = Q8_0_BYTES,
    .dequantize_row = q8_0_dequantize_row,
    .quantize_row = q8_0_quantize_row,
    .vec_dot_type = STRATA_TYPE_Q8_0,
    .vec_dot = q8_0_vec_dot,
};

static const struct strata_plugin_desc q8_0_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_QUANT,
    .name = "q8_0",
    .version = "1.0",
    .license = "MIT",
    .description =
        "GGUF Q8_0: 32 int8 + fp16 scale per block; dot with q8_0 activations",
    .params = NULL,
    .init = NULL,
    .fini = NULL,
    .vt.quant = &q8_0_vtable,
};

STRATA_PLUGIN_DEFINE(q8_0_desc)
