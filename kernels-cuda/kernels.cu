/* CUDA kernels of the backend ops and their launchers (kernels.h).
 *
 * Plain first versions, one thread block per row / token / (token, head),
 * written to be checked against the CPU backend op by op
 * (tests/gpu/test_backend_cuda.c): quantized weights are dequantized on the
 * fly, attention is an online softmax over the paged cache (FlashAttention's
 * running max and sum), a chunk of 128 positions at a time. */
#ifdef __HIPCC__ /* the HIP build of this same source (kernels-hip/) */
#include "../kernels-hip/hip_compat.h"
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <math.h>
#include <stdio.h>

#include "kernels.h"

/* enum strata_ggml_type's codes (strata/quant.h; not included: C++ here) */
#define T_F32 0u
#define T_F16 1u
#define T_Q4_0 2u
#define T_Q8_0 8u
#define T_BF16 30u

#define KC_THREADS 256

/* Checks the launch just queued (and any earlier asynchronous error). */
#define KC_LAUNCHED() kc_check(cudaGetLastError(), __LINE__, err, errlen)

static int kc_check(cudaError_t e, int line, char *err, size_t errlen) {
  if (e == cudaSuccess) return 0;
  if (err && errlen) snprintf(err, errlen, "kernels.cu:%d: %s", line, cudaGetErrorString(e));
  return -1;
}

static int kc_fail(int line, char *err, size_t errlen, const char *what) {
  if (err && errlen) snprintf(err, errlen, "kernels.cu:%d: %s", line, what);
  return -1;
}

static unsigned kc_blocks(int64_t n, int per) {
  int64_t b = (n + per - 1) / per;
  return (unsigned)(b < 1 ? 1 : b > 65535 * 16 ? 65535 * 16 : b);
}

extern "C" int kc_type_ok(uint32_t type) {
  return type == T_F32 || type == T_F16 || type == T_BF16 || type == T_Q8_0 || type == T_Q4_0;
}

/* ---- element loads -------------------------------------------------------------- */

__device__ __forceinline__ float kc_h2f(const uint8_t *p) {
  return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

/* Element i of a row of the given type. */
__device__ __forceinline__ float kc_load(uint32_t type, const uint8_t *row, int64_t i) {
  switch (type) {
  case T_F32:
    return ((const float *)row)[i];
  case T_F16:
    return __half2float(__ushort_as_half(((const unsigned short *)row)[i]));
  case T_BF16:
    return __uint_as_float((uint32_t)((const unsigned short *)row)[i] << 16);
  case T_Q8_0: {
    const uint8_t *b = row + (i / 32) * 34;
    return kc_h2f(b) * (float)(int8_t)b[2 + i % 32];
  }
  default: { /* T_Q4_0: low nibbles are elements 0..15 of the block, high 16..31 */
    const uint8_t *b = row + (i / 32) * 18;
    const int j = (int)(i % 32);
    const uint8_t q = b[2 + (j & 15)];
    return kc_h2f(b) * (float)((j < 16 ? (q & 15) : (q >> 4)) - 8);
  }
  }
}

__device__ __forceinline__ float kc_cache_load(uint32_t type, const void *cache, int64_t i) {
  return type == T_F32 ? ((const float *)cache)[i]
                       : __half2float(((const __half *)cache)[i]);
}

/* Sum (or max) over the block; every thread gets the result. blockDim.x is
 * a multiple of 32, at most 1024. */
__device__ float kc_block_reduce(float v, int is_max) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads(); /* part[] may still be read from a previous call */
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < nw ? part[lane] : (is_max ? -INFINITY : 0.0f);
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  return v;
}

/* ---- row-wise ops --------------------------------------------------------------- */

__global__ void kc_embed_k(uint32_t type, const uint8_t *table, size_t row_bytes, int64_t dim,
                           const int32_t *tokens, float *out) {
  const int t = blockIdx.x;
  const uint8_t *row = table + (size_t)tokens[t] * row_bytes;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[t * dim + i] = kc_load(type, row, i);
}

extern "C" int kc_embed(void *stream, uint32_t type, const void *table, size_t row_bytes,
                        int64_t dim, const int32_t *tokens, int32_t n_tokens, float *out,
                        char *err, size_t errlen) {
  if (!kc_type_ok(type)) return kc_fail(__LINE__, err, errlen, "embed: unsupported table type");
  if (n_tokens <= 0) return 0;
  kc_embed_k<<<n_tokens, KC_THREADS, 0, (cudaStream_t)stream>>>(type, (const uint8_t *)table,
                                                                row_bytes, dim, tokens, out);
  return KC_LAUNCHED();
}

__global__ void kc_rmsnorm_k(const float *x, const float *w, float eps, int64_t dim, float *out) {
  const float *xr = x + blockIdx.x * dim;
  float *o = out + blockIdx.x * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = kc_block_reduce(ss, 0);
  const float scale = rsqrtf(ss / (float)dim + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = xr[i] * scale * w[i];
}

extern "C" int kc_rmsnorm(void *stream, const float *x, const float *w, float eps, int64_t dim,
                          int64_t rows, float *out, char *err, size_t errlen) {
  if (rows <= 0) return 0;
  if (rows > 0x7fffffff) return kc_fail(__LINE__, err, errlen, "rmsnorm: too many rows");
  kc_rmsnorm_k<<<(unsigned)rows, KC_THREADS, 0, (cudaStream_t)stream>>>(x, w, eps, dim, out);
  return KC_LAUNCHED();
}

__global__ void kc_add_k(const float *a, const float *c, float *out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = a[i] + c[i];
}

extern "C" int kc_add(void *stream, const float *a, const float *c, float *out, int64_t n,
                      char *err, size_t errlen) {
  if (n <= 0) return 0;
  kc_add_k<<<kc_blocks(n, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream>>>(a, c, out, n);
  return KC_LAUNCHED();
}

__global__ void kc_add_bias_k(float *x, const float *bias, int64_t n, int64_t total) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] += bias[i % n];
}

extern "C" int kc_add_bias(void *stream, float *x, const float *bias, int64_t n, int64_t rows,
                           char *err, size_t errlen) {
  const int64_t total = n * rows;
  if (total <= 0) return 0;
  kc_add_bias_k<<<kc_blocks(total, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream>>>(
      x, bias, n, total);
  return KC_LAUNCHED();
}

__global__ void kc_swiglu_k(const float *g, const float *u, float *out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float x = g[i];
    out[i] = x / (1.0f + expf(-x)) * u[i];
  }
}

extern "C" int kc_swiglu(void *stream, const float *gate, const float *up, float *out,
                         int64_t n, char *err, size_t errlen) {
  if (n <= 0) return 0;
  kc_swiglu_k<<<kc_blocks(n, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream>>>(gate, up, out,
                                                                                   n);
  return KC_LAUNCHED();
}

__global__ void kc_get_rows_k(const float *x, int64_t dim, const int32_t *rows, float *out) {
  const float *src = x + (int64_t)rows[blockIdx.x] * dim;
  float *dst = out + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
}

extern "C" int kc_get_rows(void *stream, const float *x, int64_t dim, const int32_t *rows,
                           int32_t n_out, float *out, char *err, size_t errlen) {
  if (n_out <= 0) return 0;
  kc_get_rows_k<<<n_out, KC_THREADS, 0, (cudaStream_t)stream>>>(x, dim, rows, out);
  return KC_LAUNCHED();
}

/* One block per (token, head); thread i rotates pair i. The angle in double
 * as the CPU backend computes it (a float angle at position 10^4 is off by
 * ~1e-3 rad). */
__global__ void kc_rope_k(float *x, const int32_t *positions, int n_heads, int head_dim,
                          float theta, float freq_scale, int neox, int n_dims) {
  const int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads, half = n_dims / 2;
  float *v = x + ((int64_t)t * n_heads + h) * head_dim;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double ang =
        (double)positions[t] * freq_scale * pow((double)theta, -2.0 * i / (double)n_dims);
    const float c = (float)cos(ang), s = (float)sin(ang);
    const int i0 = neox ? i : 2 * i, i1 = i0 + (neox ? half : 1);
    const float x0 = v[i0], x1 = v[i1];
    v[i0] = x0 * c - x1 * s;
    v[i1] = x0 * s + x1 * c;
  }
}

extern "C" int kc_rope(void *stream, float *x, const int32_t *positions, int32_t n_tokens,
                       int n_heads, int head_dim, float theta, float freq_scale, int neox,
                       int n_dims, char *err, size_t errlen) {
  if (n_tokens <= 0) return 0;
  if ((int64_t)n_tokens * n_heads > 0x7fffffff)
    return kc_fail(__LINE__, err, errlen, "rope: too many rows");
  kc_rope_k<<<n_tokens * n_heads, 128, 0, (cudaStream_t)stream>>>(
      x, positions, n_heads, head_dim, theta, freq_scale, neox, n_dims);
  return KC_LAUNCHED();
}

__global__ void kc_kv_store_k(const float *k, const float *v, int64_t kvd, const int32_t *slots,
                              void *kc, uint32_t ktype, void *vc, uint32_t vtype) {
  const int t = blockIdx.x;
  const int64_t dst = (int64_t)slots[t] * kvd;
  for (int64_t i = threadIdx.x; i < kvd; i += blockDim.x) {
    const float kv = k[t * kvd + i], vv = v[t * kvd + i];
    if (ktype == T_F32)
      ((float *)kc)[dst + i] = kv;
    else
      ((__half *)kc)[dst + i] = __float2half_rn(kv);
    if (vtype == T_F32)
      ((float *)vc)[dst + i] = vv;
    else
      ((__half *)vc)[dst + i] = __float2half_rn(vv);
  }
}

extern "C" int kc_kv_store(void *stream, const float *k, const float *v, int64_t kvd,
                           const int32_t *slots, int32_t n_tokens, void *k_cache, uint32_t ktype,
                           void *v_cache, uint32_t vtype, char *err, size_t errlen) {
  if ((ktype != T_F32 && ktype != T_F16) || (vtype != T_F32 && vtype != T_F16))
    return kc_fail(__LINE__, err, errlen, "kv_store: cache type not f32 or f16");
  if (n_tokens <= 0) return 0;
  kc_kv_store_k<<<n_tokens, KC_THREADS, 0, (cudaStream_t)stream>>>(k, v, kvd, slots, k_cache,
                                                                   ktype, v_cache, vtype);
  return KC_LAUNCHED();
}

/* ---- attention ------------------------------------------------------------------ */

#define KC_ATT_THREADS 128
#define KC_ATT_MAX_HD 256

/* One block per (token, head). Each chunk of KC_ATT_THREADS positions: a
 * thread scores one position (q . k, whole head), the block rescales its
 * running sum and output by the new maximum, then each thread accumulates
 * its output dimensions over the chunk's weights. */
__global__ void kc_attention_k(struct kc_batch b, const float *q, const void *kc, uint32_t ktype,
                               const void *vc, uint32_t vtype, int n_heads, int n_kv_heads,
                               int head_dim, float scale, float *out) {
  __shared__ float qs[KC_ATT_MAX_HD];
  __shared__ float wt[KC_ATT_THREADS];
  __shared__ int64_t rows[KC_ATT_THREADS];
  const int t = blockIdx.x, h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
  const int64_t qdim = (int64_t)n_heads * head_dim, kvd = (int64_t)n_kv_heads * head_dim;
  const float *qr = q + t * qdim + (int64_t)h * head_dim;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) qs[i] = qr[i];
  const int32_t npos = b.positions[t] + 1;
  const int32_t *bt = b.block_tables + (int64_t)b.seq_of[t] * b.max_blocks;
  float m = -INFINITY, l = 0.0f;
  float acc[KC_ATT_MAX_HD / KC_ATT_THREADS] = {0.0f, 0.0f};
  __syncthreads();
  for (int32_t p0 = 0; p0 < npos; p0 += KC_ATT_THREADS) {
    const int32_t p = p0 + (int32_t)threadIdx.x;
    float s = -INFINITY;
    if (p < npos) {
      const int64_t slot = (int64_t)bt[p / b.block_size] * b.block_size + p % b.block_size;
      const int64_t base = slot * kvd + (int64_t)kvh * head_dim;
      float d = 0.0f;
      for (int i = 0; i < head_dim; i++) d += qs[i] * kc_cache_load(ktype, kc, base + i);
      s = d * scale;
      rows[threadIdx.x] = base;
    }
    const float mc = kc_block_reduce(s, 1);
    const float mn = fmaxf(m, mc);
    const float w = p < npos ? expf(s - mn) : 0.0f;
    const float lc = kc_block_reduce(w, 0);
    const float corr = m == -INFINITY ? 0.0f : expf(m - mn);
    l = l * corr + lc;
    wt[threadIdx.x] = w;
    __syncthreads();
    const int n = npos - p0 < KC_ATT_THREADS ? npos - p0 : KC_ATT_THREADS;
    for (int j = 0; j * KC_ATT_THREADS + (int)threadIdx.x < head_dim; j++) {
      const int d = j * KC_ATT_THREADS + (int)threadIdx.x;
      float a = acc[j] * corr;
      for (int k = 0; k < n; k++) a += wt[k] * kc_cache_load(vtype, vc, rows[k] + d);
      acc[j] = a;
    }
    m = mn;
    __syncthreads(); /* wt and rows are rewritten by the next chunk */
  }
  float *o = out + t * qdim + (int64_t)h * head_dim;
  for (int j = 0; j * KC_ATT_THREADS + (int)threadIdx.x < head_dim; j++)
    o[j * KC_ATT_THREADS + threadIdx.x] = acc[j] / l;
}

extern "C" int kc_attention(void *stream, const struct kc_batch *b, const float *q,
                            const void *k_cache, uint32_t ktype, const void *v_cache,
                            uint32_t vtype, int n_heads, int n_kv_heads, int head_dim,
                            float scale, float *out, char *err, size_t errlen) {
  if (head_dim <= 0 || head_dim > KC_ATT_MAX_HD)
    return kc_fail(__LINE__, err, errlen, "attention: head_dim must be 1..256");
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    return kc_fail(__LINE__, err, errlen, "attention: n_heads is not a multiple of n_kv_heads");
  if ((ktype != T_F32 && ktype != T_F16) || (vtype != T_F32 && vtype != T_F16))
    return kc_fail(__LINE__, err, errlen, "attention: cache type not f32 or f16");
  if (b->n_tokens <= 0) return 0;
  if (n_heads > 65535) return kc_fail(__LINE__, err, errlen, "attention: too many heads");
  const dim3 grid((unsigned)b->n_tokens, (unsigned)n_heads);
  kc_attention_k<<<grid, KC_ATT_THREADS, 0, (cudaStream_t)stream>>>(
      *b, q, k_cache, ktype, v_cache, vtype, n_heads, n_kv_heads, head_dim, scale, out);
  return KC_LAUNCHED();
}

/* ---- matmul --------------------------------------------------------------------- */

#define KC_MM_WARPS 8 /* output rows per block: one warp each */
#define KC_MM_TOK 4   /* tokens per pass over a weight row */

/* One warp per output row; the row is read once per KC_MM_TOK tokens. For
 * block types each lane takes whole blocks of 32 (one scale load each). */
__global__ void kc_matmul_k(uint32_t type, const uint8_t *w, size_t row_bytes, int64_t n_in,
                            int64_t n_out, const float *x, int64_t n_tokens, float *out) {
  const int lane = threadIdx.x & 31;
  const int64_t o = (int64_t)blockIdx.x * KC_MM_WARPS + (threadIdx.x >> 5);
  if (o >= n_out) return;
  const uint8_t *row = w + (size_t)o * row_bytes;
  const int blocky = type == T_Q8_0 || type == T_Q4_0;
  for (int64_t t0 = 0; t0 < n_tokens; t0 += KC_MM_TOK) {
    const int nt = n_tokens - t0 < KC_MM_TOK ? (int)(n_tokens - t0) : KC_MM_TOK;
    float acc[KC_MM_TOK] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (blocky) {
      for (int64_t blk = lane; blk < n_in / 32; blk += 32)
        for (int i = 0; i < 32; i++) {
          const int64_t e = blk * 32 + i;
          const float wv = kc_load(type, row, e);
          for (int tt = 0; tt < nt; tt++) acc[tt] += wv * x[(t0 + tt) * n_in + e];
        }
    } else {
      for (int64_t e = lane; e < n_in; e += 32) {
        const float wv = kc_load(type, row, e);
        for (int tt = 0; tt < nt; tt++) acc[tt] += wv * x[(t0 + tt) * n_in + e];
      }
    }
    for (int tt = 0; tt < nt; tt++) {
      float v = acc[tt];
      for (int s = 16; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffffu, v, s);
      if (lane == 0) out[(t0 + tt) * n_out + o] = v;
    }
  }
}

extern "C" int kc_matmul(void *stream, uint32_t type, const void *w, size_t row_bytes,
                         int64_t n_in, int64_t n_out, const float *x, int64_t n_tokens,
                         float *out, char *err, size_t errlen) {
  if (!kc_type_ok(type)) return kc_fail(__LINE__, err, errlen, "matmul: unsupported weight type");
  if ((type == T_Q8_0 || type == T_Q4_0) && n_in % 32 != 0)
    return kc_fail(__LINE__, err, errlen, "matmul: a q8_0/q4_0 row is whole blocks of 32");
  if (n_tokens <= 0 || n_out <= 0) return 0;
  const int64_t blocks = (n_out + KC_MM_WARPS - 1) / KC_MM_WARPS;
  if (blocks > 0x7fffffff) return kc_fail(__LINE__, err, errlen, "matmul: too many rows");
  kc_matmul_k<<<(unsigned)blocks, KC_MM_WARPS * 32, 0, (cudaStream_t)stream>>>(
      type, (const uint8_t *)w, row_bytes, n_in, n_out, x, n_tokens, out);
  return KC_LAUNCHED();
}

/* ---- integer matmul on split weights ---------------------------------------------- */

/* a . b over four signed bytes, plus c */
__device__ __forceinline__ int kc_dp4a(int a, int b, int c) {
#ifdef __HIPCC__
  /* byte by byte: the HIP targets' dot instructions differ (and HIP has no
   * __dp4a); the AMD path is not tuned yet */
  for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
#else
  return __dp4a(a, b, c);
#endif
}

/* One thread per block of 32 weights. */
__global__ void kc_split_q_k(int q4, const uint8_t *w, size_t row_bytes, int64_t k, int64_t n_out,
                             uint8_t *dst) {
  const int64_t nb = k / 32, total = nb * n_out;
  const int qbytes = q4 ? 16 : 32;
  unsigned short *scales = (unsigned short *)(dst + (size_t)total * qbytes);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / nb, blk = i % nb;
    const uint8_t *src = w + (size_t)r * row_bytes + (size_t)blk * (q4 ? 18 : 34);
    uint8_t *dq = dst + (size_t)i * qbytes;
    for (int j = 0; j < qbytes; j++) dq[j] = src[2 + j];
    scales[i] = (unsigned short)(src[0] | (src[1] << 8));
  }
}

extern "C" int kc_split_q(void *stream, uint32_t type, const void *w, size_t row_bytes, int64_t k,
                          int64_t n_out, void *dst, char *err, size_t errlen) {
  if (type != T_Q8_0 && type != T_Q4_0)
    return kc_fail(__LINE__, err, errlen, "split: weights not q8_0 or q4_0");
  if (k <= 0 || k % 32 != 0) return kc_fail(__LINE__, err, errlen, "split: rows are not whole blocks");
  if ((size_t)(k / 32) * (type == T_Q4_0 ? 18 : 34) != row_bytes)
    return kc_fail(__LINE__, err, errlen, "split: row bytes do not match the row length");
  if (n_out <= 0) return 0;
  kc_split_q_k<<<kc_blocks((k / 32) * n_out, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream>>>(
      type == T_Q4_0, (const uint8_t *)w, row_bytes, k, n_out, (uint8_t *)dst);
  return KC_LAUNCHED();
}

/* One 32-lane group per block of 32 activations; the same operations as
 * the q8_0 quant plugin's reference quantizer, so that the result is its,
 * bit for bit. */
__global__ void kc_quant_act_k(const float *x, int64_t n_blocks, int8_t *xq, float2 *xs) {
  const int64_t blk = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (blk >= n_blocks) return; /* the whole group: blk is the same for its 32 lanes */
  const float v = x[blk * 32 + lane];
  float a = fabsf(v);
  for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  const float d = a / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const int q = (int)roundf(v * id);
  xq[blk * 32 + lane] = (int8_t)q;
  int s = q;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) {
    const float dh = __half2float(__float2half_rn(d));
    xs[blk] = make_float2(dh, dh * (float)s);
  }
}

extern "C" int kc_quant_act(void *stream, const float *x, int64_t k, int64_t n_tokens, int8_t *xq,
                            float *xs, char *err, size_t errlen) {
  if (k <= 0 || k % 32 != 0) return kc_fail(__LINE__, err, errlen, "quant_act: rows are not whole blocks");
  if (n_tokens <= 0) return 0;
  const int64_t n_blocks = k / 32 * n_tokens;
  const int per = KC_THREADS / 32;
  const int64_t grid = (n_blocks + per - 1) / per;
  if (grid > 0x7fffffff) return kc_fail(__LINE__, err, errlen, "quant_act: too many blocks");
  kc_quant_act_k<<<(unsigned)grid, KC_THREADS, 0, (cudaStream_t)stream>>>(x, n_blocks, xq,
                                                                          (float2 *)xs);
  return KC_LAUNCHED();
}

#define KC_MQ_WARPS 4 /* output rows per block: one 32-lane group each */

/* One 32-lane group per output row and TT tokens. Each lane reads 16 bytes
 * of the row at a time (the group: 512 consecutive bytes), i.e. half a
 * q8_0 block or a whole q4_0 block, and takes its integer dot with each
 * token's activations (dp4a), scaled by the weight's and the activation
 * block's fp16 scales; q4_0's nibbles are (value + 8), so 8 * d * sum(q)
 * comes off per block. */
template <int Q4, int TT>
__global__ void kc_matmul_q_k(const uint8_t *wq, const unsigned short *ws, int64_t k,
                              int64_t n_out, const int8_t *xq, const float2 *xs,
                              int64_t n_tokens, float *out) {
  const int lane = threadIdx.x & 31;
  const int64_t o = (int64_t)blockIdx.x * KC_MQ_WARPS + (threadIdx.x >> 5);
  if (o >= n_out) return;
  const int64_t t0 = (int64_t)blockIdx.y * TT;
  const int nt = n_tokens - t0 < TT ? (int)(n_tokens - t0) : TT;
  const int64_t nb = k / 32;
  const int nch = (int)(Q4 ? nb : 2 * nb); /* 16-byte pieces of the row (k < 2^31, checked) */
  const int4 *wr = (const int4 *)(wq + (size_t)o * (size_t)(Q4 ? k / 2 : k));
  const unsigned short *wsr = ws + (size_t)o * (size_t)nb;
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; t++) acc[t] = 0.0f;
#pragma unroll 4
  for (int c = lane; c < nch; c += 32) {
    const int4 wv = __ldg(&wr[c]); /* read once: past L1 */
    const int blk = Q4 ? c : c >> 1;
    const float dw = __half2float(__ushort_as_half(wsr[blk]));
    if (Q4) {
      const int l0 = wv.x & 0x0f0f0f0f, l1 = wv.y & 0x0f0f0f0f, l2 = wv.z & 0x0f0f0f0f,
                l3 = wv.w & 0x0f0f0f0f;
      const int h0 = (wv.x >> 4) & 0x0f0f0f0f, h1 = (wv.y >> 4) & 0x0f0f0f0f,
                h2 = (wv.z >> 4) & 0x0f0f0f0f, h3 = (wv.w >> 4) & 0x0f0f0f0f;
#pragma unroll
      for (int t = 0; t < TT; t++) {
        if (t < nt) {
        const int4 *xa = (const int4 *)(xq + (size_t)(t0 + t) * (size_t)k + (size_t)blk * 32);
        const int4 a0 = xa[0], a1 = xa[1];
        int s = kc_dp4a(l0, a0.x, 0);
        s = kc_dp4a(l1, a0.y, s);
        s = kc_dp4a(l2, a0.z, s);
        s = kc_dp4a(l3, a0.w, s);
        s = kc_dp4a(h0, a1.x, s);
        s = kc_dp4a(h1, a1.y, s);
        s = kc_dp4a(h2, a1.z, s);
        s = kc_dp4a(h3, a1.w, s);
        const float2 d = xs[(t0 + t) * nb + blk];
        acc[t] += dw * (d.x * (float)s - 8.0f * d.y);
        }
      }
    } else {
#pragma unroll
      for (int t = 0; t < TT; t++) {
        if (t < nt) {
        const int4 a = *(const int4 *)(xq + (size_t)(t0 + t) * (size_t)k + (size_t)c * 16);
        int s = kc_dp4a(wv.x, a.x, 0);
        s = kc_dp4a(wv.y, a.y, s);
        s = kc_dp4a(wv.z, a.z, s);
        s = kc_dp4a(wv.w, a.w, s);
        acc[t] += dw * (xs[(t0 + t) * nb + blk].x * (float)s);
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < TT; t++) {
    float v = acc[t];
    for (int s = 16; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffffu, v, s);
    if (lane == 0 && t < nt) out[(t0 + t) * n_out + o] = v;
  }
}

template <int Q4, int TT>
static void kc_matmul_q_launch(dim3 grid, cudaStream_t st, const void *wsplit, int64_t k,
                               int64_t n_out, const int8_t *xq, const float *xs, int64_t n_tokens,
                               float *out) {
  const uint8_t *wq = (const uint8_t *)wsplit;
  const unsigned short *ws =
      (const unsigned short *)(wq + (size_t)n_out * (size_t)(Q4 ? k / 2 : k));
  kc_matmul_q_k<Q4, TT><<<grid, KC_MQ_WARPS * 32, 0, st>>>(wq, ws, k, n_out, xq,
                                                           (const float2 *)xs, n_tokens, out);
}

extern "C" int kc_matmul_q(void *stream, uint32_t type, const void *wsplit, int64_t k,
                           int64_t n_out, const int8_t *xq, const float *xs, int64_t n_tokens,
                           float *out, char *err, size_t errlen) {
  if (type != T_Q8_0 && type != T_Q4_0)
    return kc_fail(__LINE__, err, errlen, "matmul_q: weights not q8_0 or q4_0");
  if (k <= 0 || k % 32 != 0 || k > 0x3fffffff)
    return kc_fail(__LINE__, err, errlen, "matmul_q: rows are not whole blocks (or too long)");
  if (n_tokens <= 0 || n_out <= 0) return 0;
  /* tokens per pass over a row: all of a small batch, 8 at a time beyond */
  const int tt = n_tokens == 1 ? 1 : n_tokens == 2 ? 2 : n_tokens <= 4 ? 4 : 8;
  const int64_t gx = (n_out + KC_MQ_WARPS - 1) / KC_MQ_WARPS, gy = (n_tokens + tt - 1) / tt;
  if (gx > 0x7fffffff || gy > 65535) return kc_fail(__LINE__, err, errlen, "matmul_q: too large");
  const dim3 grid((unsigned)gx, (unsigned)gy);
  cudaStream_t st = (cudaStream_t)stream;
  const int q4 = type == T_Q4_0;
#define KC_MQ(TT)                                                                          \
  (q4 ? kc_matmul_q_launch<1, TT>(grid, st, wsplit, k, n_out, xq, xs, n_tokens, out)       \
      : kc_matmul_q_launch<0, TT>(grid, st, wsplit, k, n_out, xq, xs, n_tokens, out))
  switch (tt) {
  case 1: KC_MQ(1); break;
  case 2: KC_MQ(2); break;
  case 4: KC_MQ(4); break;
  default: KC_MQ(8); break;
  }
#undef KC_MQ
  return KC_LAUNCHED();
}
