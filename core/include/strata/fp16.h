/* strata plugin SDK: scalar conversions between fp32 and the two 16-bit float
 * formats GGUF stores, IEEE binary16 ("f16") and bfloat16 ("bf16").
 *
 * Portable C (no F16C or other ISA extension needed) so that every plugin and
 * every architecture gets the same bits; plugins that convert whole rows may
 * use hardware conversion behind a run-time check, which gives the same
 * results. Both directions round to nearest, ties to even, handle subnormals,
 * infinities and NaN (a NaN stays a NaN, made quiet, with its sign and the
 * top of its payload kept), and never trap.
 *
 * Values are carried as uint16_t bit patterns, not as a half-float type,
 * because C11 has none and the bits are what GGUF files hold.
 */
#ifndef STRATA_FP16_H
#define STRATA_FP16_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Type punning through memcpy: defined behaviour, and compilers turn it into
 * a plain register move. */
static inline uint32_t strata_fp32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float strata_fp32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* binary16 -> fp32. Exact: every half value is a float. */
static inline float strata_fp16_to_fp32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu; /* exponent and mantissa */
  uint32_t bits;
  if (em > 0x7c00u) {
    /* NaN: the payload moves to the top of the float mantissa and the NaN
     * comes out quiet, as F16C's vcvtph2ps does. */
    bits = 0x7fc00000u | ((em & 0x03ffu) << 13);
  } else if (em == 0x7c00u) {
    bits = 0x7f800000u; /* inf */
  } else if (em >= 0x0400u) {
    /* normal: rebias the exponent from 15 to 127 (112 = 127 - 15) */
    bits = (em << 13) + (112u << 23);
  } else {
    /* zero or subnormal: em * 2^-24, exact in float arithmetic */
    bits = strata_fp32_bits((float)em * 0x1p-24f);
  }
  return strata_fp32_from_bits(bits | sign);
}

/* fp32 -> binary16, round to nearest, ties to even. */
static inline uint16_t strata_fp32_to_fp16(float f) {
  uint32_t x = strata_fp32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) /* NaN: keep the top payload bits, set the quiet bit */
    return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x03ffu));
  if (ax >=
      0x477ff000u) /* >= 65520 (half-way past 65504, tie goes to even inf) */
    return (uint16_t)(sign | 0x7c00u);
  if (ax >= 0x38800000u) { /* >= 2^-14: a normal half */
    /* Adding 0xfff plus the lowest kept bit rounds the 13 dropped bits to
     * nearest-even; a carry into the exponent is the right answer too. */
    ax += 0x0fffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | ((ax - (112u << 23)) >> 13));
  }
  if (ax < 0x33000000u) /* < 2^-25: rounds to zero */
    return (uint16_t)sign;
  /* Subnormal half: the result is round(f * 2^24). With the implicit bit
   * restored, f = m * 2^(e - 150), so f * 2^24 = m >> (126 - e). */
  uint32_t e = ax >> 23; /* 102 .. 112 */
  uint32_t m = (ax & 0x007fffffu) | 0x00800000u;
  uint32_t shift = 126u - e; /* 14 .. 24 */
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u)))
    q++; /* may carry into 0x0400: fine */
  return (uint16_t)(sign | q);
}

/* bfloat16 -> fp32. Exact: bf16 is the top half of an fp32. */
static inline float strata_bf16_to_fp32(uint16_t b) {
  return strata_fp32_from_bits((uint32_t)b << 16);
}

/* fp32 -> bfloat16, round to nearest, ties to even; values past the largest
 * bf16 round to infinity. */
static inline uint16_t strata_fp32_to_bf16(float f) {
  uint32_t x = strata_fp32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncating could give inf */
    return (uint16_t)((x >> 16) | 0x0040u);
  x += 0x7fffu + ((x >> 16) & 1u); /* no overflow: x <= 0xff800000 here */
  return (uint16_t)(x >> 16);
}

#ifdef __cplusplus
}
#endif
#endif
