/* CUDA kernels of the backend ops (plugins/backend/cuda), as C-callable
 * launchers. Every pointer is device memory; every launcher queues its work
 * on `stream` (a cudaStream_t) and returns 0, or -1 after writing
 * "kernels.cu:LINE: reason" into err (errlen bytes).
 *
 * Layouts are the backend kind's (strata/backend.h): row-major, activations
 * f32; weights and embedding tables f32, f16, bf16, q8_0 or q4_0 rows of
 * row_bytes bytes (llama.cpp's block layouts); the paged KV cache f32 or
 * f16 rows of n_kv_heads * head_dim, row `slot` = block * block_size +
 * offset. Type codes are enum strata_ggml_type's. */
#ifndef STRATA_KERNELS_CUDA_H
#define STRATA_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Whether a weight/table type is one the kernels read. */
int kc_type_ok(uint32_t type);

/* out[t, :] = table[tokens[t], :]  (out: [dim, n_tokens] f32) */
int kc_embed(void *stream, uint32_t type, const void *table, size_t row_bytes, int64_t dim,
             const int32_t *tokens, int32_t n_tokens, float *out, char *err, size_t errlen);

/* out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w  (x, out: [dim, rows]) */
int kc_rmsnorm(void *stream, const float *x, const float *w, float eps, int64_t dim,
               int64_t rows, float *out, char *err, size_t errlen);

/* out = a + c (n elements; out may be a or c) */
int kc_add(void *stream, const float *a, const float *c, float *out, int64_t n, char *err,
           size_t errlen);
/* x[r, i] += bias[i]  (x: [n, rows]) */
int kc_add_bias(void *stream, float *x, const float *bias, int64_t n, int64_t rows, char *err,
                size_t errlen);
/* out = silu(gate) * up (n elements; out may alias either) */
int kc_swiglu(void *stream, const float *gate, const float *up, float *out, int64_t n,
              char *err, size_t errlen);

/* out[j, :] = x[rows[j], :]  (x: [dim, *], out: [dim, n_out]) */
int kc_get_rows(void *stream, const float *x, int64_t dim, const int32_t *rows, int32_t n_out,
                float *out, char *err, size_t errlen);

/* Rotates x ([n_heads * head_dim, n_tokens]) in place at positions[t]: the
 * first n_dims of each head, pairs (2i, 2i+1) or, neox, (i, i + n_dims/2),
 * by angle pos * freq_scale * theta^(-2i/n_dims). */
int kc_rope(void *stream, float *x, const int32_t *positions, int32_t n_tokens, int n_heads,
            int head_dim, float theta, float freq_scale, int neox, int n_dims, char *err,
            size_t errlen);

/* k_cache[slots[t], :] = k[t, :], v_cache likewise (kvd = n_kv_heads *
 * head_dim; cache types f32 or f16). */
int kc_kv_store(void *stream, const float *k, const float *v, int64_t kvd,
                const int32_t *slots, int32_t n_tokens, void *k_cache, uint32_t ktype,
                void *v_cache, uint32_t vtype, char *err, size_t errlen);

/* The batch as the attention kernel reads it. */
struct kc_batch {
  int32_t n_tokens;
  const int32_t *positions;    /* [n_tokens] */
  const int32_t *seq_of;       /* [n_tokens] the token's sequence */
  const int32_t *block_tables; /* [n_seqs * max_blocks] */
  int32_t max_blocks, block_size;
  /* the query tiles of the prefill kernel: (first token, tokens) pairs, up
   * to KC_FA_Q consecutive tokens of one sequence each */
  const int32_t *tiles;        /* [2 * n_tiles] */
  int32_t n_tiles;
  int32_t max_tile;            /* the most queries in a tile */
  int32_t max_len;             /* the longest sequence's positions (host-known) */
};

/* Query tokens per tile of the attention kernel. */
#define KC_FA_Q 16

/* out[t, h*head_dim ..] = softmax(q_h . K / scale) V over the cached
 * positions 0..positions[t] of t's sequence (causal), GQA: head h reads KV
 * head h / (n_heads / n_kv_heads). head_dim at most 256. One block per
 * (query tile, group of heads sharing a KV head, as many as fit 16 rows
 * with the largest tile) loads each chunk of K and V into shared memory
 * once for all its (query, head) rows (FlashAttention's tiling and online
 * softmax; a decode step's tiles are single queries, so a block takes a
 * whole GQA group). Where those blocks would leave multiprocessors idle
 * (sm_count of them), each is split over the positions and a second kernel
 * merges the splits (flash-decoding), with kc_attention_workspace(...)
 * bytes of device memory at part. */
size_t kc_attention_workspace(const struct kc_batch *b, int n_heads, int n_kv_heads, int head_dim,
                              int sm_count);
int kc_attention(void *stream, const struct kc_batch *b, const float *q, const void *k_cache,
                 uint32_t ktype, const void *v_cache, uint32_t vtype, int n_heads,
                 int n_kv_heads, int head_dim, float scale, int sm_count, float *part,
                 float *out, char *err, size_t errlen);

/* out[t, o] = sum_i x[t, i] * w[o, i]  (w: n_out rows of n_in in its type,
 * row_bytes each; x: [n_in, n_tokens]; out: [n_out, n_tokens]) */
int kc_matmul(void *stream, uint32_t type, const void *w, size_t row_bytes, int64_t n_in,
              int64_t n_out, const float *x, int64_t n_tokens, float *out, char *err,
              size_t errlen);

/* ---- integer matmul (q8_0 / q4_0 weights, 8-bit activations) ---- */

/* q8_0/q4_0 weights (n_out rows of row_bytes, GGUF blocks) into the split
 * layout kc_matmul_q reads, at dst (row_bytes * n_out bytes, 16-byte
 * aligned): first every row's quants, row r at r * k bytes (q8_0) or
 * r * k / 2 (q4_0; each block's 16 bytes as in the GGUF: element j < 16 the
 * low nibble of byte j, j + 16 the high one), then every block's fp16
 * scale, row r's block i at index r * k / 32 + i. k: a multiple of 32. */
int kc_split_q(void *stream, uint32_t type, const void *w, size_t row_bytes, int64_t k,
               int64_t n_out, void *dst, char *err, size_t errlen);

/* x ([k, n_tokens] f32, k a multiple of 32) quantized per block of 32 as
 * llama.cpp's reference q8_0 does it (d = amax / 127, q = round(x / d) half
 * away from zero, d kept as fp16): xq [n_tokens][k] int8 (16-byte aligned),
 * xs [n_tokens][k / 32] pairs (d as the float of its fp16, d * sum(q)). */
int kc_quant_act(void *stream, const float *x, int64_t k, int64_t n_tokens, int8_t *xq,
                 float *xs, char *err, size_t errlen);

/* out[t, o] = sum_i w[o, i] * x[t, i] for split weights (kc_split_q) and
 * quantized activations (kc_quant_act): per block of 32 an exact integer
 * dot, times both scales. */
int kc_matmul_q(void *stream, uint32_t type, const void *wsplit, int64_t k, int64_t n_out,
                const int8_t *xq, const float *xs, int64_t n_tokens, float *out, char *err,
                size_t errlen);

/* ---- the GEMM path's conversions (cuBLAS multiplies in f16/bf16) ---- */

/* dst[i] = x[i] rounded to f16 (bf16 = 0) or bf16 (bf16 = 1), to nearest
 * even, as 16-bit patterns (n elements); f16 saturates at +-65504 (an
 * activation past it would otherwise be infinite, and the logits NaN). */
int kc_to_half(void *stream, const float *x, int64_t n, int bf16, void *dst, char *err,
               size_t errlen);

/* Rows r0 .. r0 + rows - 1 of a split q8_0/q4_0 matrix (kc_split_q; k
 * columns, n_out rows in all) dequantized to f16: dst[(r - r0) * k + i] =
 * d * q rounded to nearest even. */
int kc_split_to_f16(void *stream, uint32_t type, const void *wsplit, int64_t k, int64_t n_out,
                    int64_t r0, int64_t rows, void *dst, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
