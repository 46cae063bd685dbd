/* strata plugin SDK: the quant kind. A quant plugin owns one weight format:
 * its GGUF block layout, quantize/dequantize of rows, and CPU dot kernels. */
#ifndef STRATA_QUANT_H
#define STRATA_QUANT_H

#include <strata/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* GGUF / ggml tensor type ids (the numbers stored in GGUF files). */
enum strata_ggml_type {
  STRATA_TYPE_F32 = 0,
  STRATA_TYPE_F16 = 1,
  STRATA_TYPE_Q4_0 = 2,
  STRATA_TYPE_Q4_1 = 3,
  STRATA_TYPE_Q5_0 = 6,
  STRATA_TYPE_Q5_1 = 7,
  STRATA_TYPE_Q8_0 = 8,
  STRATA_TYPE_Q8_1 = 9,
  STRATA_TYPE_Q2_K = 10,
  STRATA_TYPE_Q3_K = 11,
  STRATA_TYPE_Q4_K = 12,
  STRATA_TYPE_Q5_K = 13,
  STRATA_TYPE_Q6_K = 14,
  STRATA_TYPE_Q8_K = 15,
  STRATA_TYPE_I8 = 24,
  STRATA_TYPE_I16 = 25,
  STRATA_TYPE_I32 = 26,
  STRATA_TYPE_I64 = 27,
  STRATA_TYPE_F64 = 28,
  STRATA_TYPE_BF16 = 30,
};

struct strata_quant_vtable {
  uint32_t size; /* sizeof(struct strata_quant_vtable) */

  uint32_t type;        /* enum strata_ggml_type this plugin implements */
  uint32_t block_size;  /* elements per block (1 for plain float types) */
  uint32_t type_size;   /* bytes per block */

  /* Rows are whole blocks: n is a multiple of block_size. */
  void (*dequantize_row)(const void *src, float *dst, int64_t n);
  /* Round-to-nearest, bit-compatible with llama.cpp's reference quantizer. */
  void (*quantize_row)(const float *src, void *dst, int64_t n);

  /* (optional) dot product of a weight row in this format with an activation
   * row already converted to `vec_dot_type` (e.g. q4_0 weights dot q8_0
   * activations, as llama.cpp does). n is a multiple of both block sizes.
   * The host falls back to dequantize + float dot when NULL. */
  uint32_t vec_dot_type;
  void (*vec_dot)(int64_t n, float *out, const void *w, const void *a);
};

#ifdef __cplusplus
}
#endif
#endif
