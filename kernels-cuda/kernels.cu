/* CUDA kernels of the backend ops and their launchers (kernels.h), checked
 * against the CPU backend op by op (tests/gpu/test_backend_cuda.c): row ops
 * one thread block per row or token; attention over the paged cache by
 * query tiles through shared memory with an online softmax (FlashAttention's
 * running maximum and sum), split over the positions where the tiles are
 * too few (flash-decoding); q8_0/q4_0 matmul on a split layout with 8-bit
 * activations and dp4a; f32/f16/bf16 matmul dequantizing on the fly. */
#if defined(STRATA_KERNELS_EMU) /* run on the CPU by the tests (tests/gpu/emu/) */
#include "../tests/gpu/emu/cuda_emu.h"
#elif defined(__HIPCC__) /* the HIP build of this same source (kernels-hip/) */
#include "../kernels-hip/hip_compat.h"
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

/* A launch: KC_LAUNCH(grid, block, shared bytes, stream, kernel)(args). The
 * kernel comes last so that a template's arguments may hold commas. The
 * emulator (tests/gpu/emu/cuda_emu.h) defines its own. */
#ifndef KC_LAUNCH
#define KC_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define KC_DYN_SMEM(type, name) extern __shared__ type name[]
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
  KC_LAUNCH(n_tokens, KC_THREADS, 0, (cudaStream_t)stream, kc_embed_k)(type, (const uint8_t *)table,
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
  KC_LAUNCH((unsigned)rows, KC_THREADS, 0, (cudaStream_t)stream, kc_rmsnorm_k)(x, w, eps, dim, out);
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
  KC_LAUNCH(kc_blocks(n, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream, kc_add_k)(a, c, out, n);
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
  KC_LAUNCH(kc_blocks(total, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream, kc_add_bias_k)(
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
  KC_LAUNCH(kc_blocks(n, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream, kc_swiglu_k)(gate, up, out,
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
  KC_LAUNCH(n_out, KC_THREADS, 0, (cudaStream_t)stream, kc_get_rows_k)(x, dim, rows, out);
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
  KC_LAUNCH(n_tokens * n_heads, 128, 0, (cudaStream_t)stream, kc_rope_k)(
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
  KC_LAUNCH(n_tokens, KC_THREADS, 0, (cudaStream_t)stream, kc_kv_store_k)(k, v, kvd, slots, k_cache,
                                                                   ktype, v_cache, vtype);
  return KC_LAUNCHED();
}

/* ---- attention ------------------------------------------------------------------ */

#define KC_ATT_THREADS 128 /* the merge kernel's */
#define KC_ATT_MAX_HD 256

#define KC_FA_THREADS 128
#define KC_FA_OUT (KC_FA_Q * KC_ATT_MAX_HD / KC_FA_THREADS) /* outputs per thread, at most */

/* Positions per K/V chunk for head_dim hd: shared memory holds the tile's
 * queries [KC_FA_Q][hd], K [C][hd + 1] (padded: threads of a warp read
 * different rows), V [C][hd], the scores [KC_FA_Q][C] and three floats per
 * query; C is the largest of 64, 32, 16, 8 that keeps it within 48 KiB (the
 * static limit on both vendors; AMD's LDS is 64 KiB). */
static int kc_fa_chunk(int hd) {
  for (int c = 64; c > 8; c /= 2)
    if ((size_t)(KC_FA_Q * hd + c * (hd + 1) + c * hd + KC_FA_Q * c + 3 * KC_FA_Q) * 4 <=
        48 * 1024 - 256) /* the kernel's static shared memory too */
      return c;
  return 8;
}

static size_t kc_fa_smem(int hd, int c) {
  return (size_t)(KC_FA_Q * hd + c * (hd + 1) + c * hd + KC_FA_Q * c + 3 * KC_FA_Q) * sizeof(float);
}

/* Query heads per block: the most heads of one KV head's group (a divisor
 * of the group) whose rows, with the largest tile's queries, fit KC_FA_Q:
 * GQA's heads then share each K/V chunk loaded (a decode step: the whole
 * group in one block). */
static int kc_attention_gb(const struct kc_batch *b, int n_heads, int n_kv_heads) {
  const int g = n_heads / n_kv_heads, mt = b->max_tile > 0 ? b->max_tile : KC_FA_Q;
  int gb = 1;
  for (int d = 1; d <= g; d++)
    if (g % d == 0 && d * mt <= KC_FA_Q) gb = d;
  return gb;
}

/* Splits of the positions per (tile, head group): one where those give
 * every multiprocessor two blocks; else enough to, at most one per chunk of
 * the longest sequence and 32 in all. */
static int kc_attention_splits(const struct kc_batch *b, int n_heads, int n_kv_heads, int hd,
                               int sm_count) {
  const int64_t blocks = (int64_t)b->n_tiles * (n_heads / kc_attention_gb(b, n_heads, n_kv_heads));
  const int64_t target = 2 * (int64_t)(sm_count > 0 ? sm_count : 1);
  if (blocks >= target) return 1;
  const int64_t chunks = ((int64_t)b->max_len + kc_fa_chunk(hd) - 1) / kc_fa_chunk(hd);
  int64_t n = (target + blocks - 1) / blocks;
  if (n > chunks) n = chunks;
  if (n > 32) n = 32;
  return n < 1 ? 1 : (int)n;
}

/* One block per (tile, group of gb heads of one KV head, split): its rows
 * are the (query, head) pairs, query-major; their queries (pre-scaled) stay
 * in shared memory; each chunk of C positions of the block's share of the
 * positions up to the tile's last one is loaded once (K and V rows through
 * the block table, f16 widened), scored against every query (masked past
 * the query's own position), folded into each query's running maximum and
 * sum, and its weighted V rows added to the outputs, which each thread
 * keeps for its (query, dimension) pairs. With one split the block writes
 * the outputs; with several (flash-decoding: too few tiles to fill the
 * GPU), each writes its maximum, sum and unnormalized outputs to part and
 * kc_attention_merge_k combines them. */
__global__ void kc_attention_fa_k(struct kc_batch b, const float *q, const void *kc, uint32_t ktype,
                                  const void *vc, uint32_t vtype, int n_heads, int n_kv_heads,
                                  int hd, float scale, int C, int gb, float *out, float *part) {
  KC_DYN_SMEM(float, fa_smem);
  float *qs = fa_smem, *ks = qs + KC_FA_Q * hd, *vs = ks + C * (hd + 1), *ss = vs + C * hd;
  float *rm = ss + KC_FA_Q * C, *rl = rm + KC_FA_Q, *rc = rl + KC_FA_Q;
  __shared__ int32_t qpos[KC_FA_Q];
  __shared__ int32_t last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t t0 = b.tiles[2 * blockIdx.x], nr = b.tiles[2 * blockIdx.x + 1] * gb;
  const int h0 = blockIdx.y * gb, kvh = h0 / (n_heads / n_kv_heads);
  const int split = blockIdx.z, n_split = gridDim.z;
  const int64_t qdim = (int64_t)n_heads * hd, kvd = (int64_t)n_kv_heads * hd;
  const int32_t *bt = b.block_tables + (int64_t)b.seq_of[t0] * b.max_blocks;
  for (int i = tid; i < nr * hd; i += KC_FA_THREADS) {
    const int r = i / hd, d = i % hd;
    qs[i] = q[(t0 + r / gb) * qdim + (int64_t)(h0 + r % gb) * hd + d] * scale;
  }
  if (tid < KC_FA_Q) {
    qpos[tid] = tid < nr ? b.positions[t0 + tid / gb] : -1;
    rm[tid] = -INFINITY;
    rl[tid] = 0.0f;
  }
  __syncthreads();
  if (tid == 0) {
    int32_t mx = 0;
    for (int i = 0; i < nr; i++) mx = qpos[i] > mx ? qpos[i] : mx;
    last = mx;
  }
  float acc[KC_FA_OUT];
#pragma unroll
  for (int k = 0; k < KC_FA_OUT; k++) acc[k] = 0.0f;
  __syncthreads();
  /* this split's chunks */
  const int32_t npos = last + 1, nch = (npos + C - 1) / C, per = (nch + n_split - 1) / n_split;
  const int32_t p_begin = split * per * C;
  const int32_t p_end = (split + 1) * per * C < npos ? (split + 1) * per * C : npos;
  for (int32_t p0 = p_begin; p0 < p_end; p0 += C) {
    const int n = p_end - p0 < C ? p_end - p0 : C;
    for (int i = tid; i < n * hd; i += KC_FA_THREADS) {
      const int j = i / hd, d = i % hd;
      const int32_t p = p0 + j;
      const int64_t slot = (int64_t)bt[p / b.block_size] * b.block_size + p % b.block_size;
      const int64_t base = slot * kvd + (int64_t)kvh * hd + d;
      ks[j * (hd + 1) + d] = kc_cache_load(ktype, kc, base);
      vs[j * hd + d] = kc_cache_load(vtype, vc, base);
    }
    __syncthreads();
    for (int i = tid; i < nr * n; i += KC_FA_THREADS) {
      const int qi = i / n, j = i % n;
      float sc = -INFINITY;
      if (p0 + j <= qpos[qi]) {
        const float *qr = qs + qi * hd, *kr = ks + j * (hd + 1);
        float d = 0.0f;
        for (int e = 0; e < hd; e++) d += qr[e] * kr[e];
        sc = d;
      }
      ss[qi * C + j] = sc;
    }
    __syncthreads();
    /* each warp folds its queries' rows: new maximum, weights, sum */
    for (int qi = warp; qi < nr; qi += KC_FA_THREADS / 32) {
      float mc = -INFINITY;
      for (int j = lane; j < n; j += 32) mc = fmaxf(mc, ss[qi * C + j]);
      for (int o = 16; o > 0; o >>= 1) mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, o));
      const float mo = rm[qi], mn = fmaxf(mo, mc);
      float lc = 0.0f;
      for (int j = lane; j < n; j += 32) {
        /* a query with nothing unmasked yet keeps 0 */
        const float w = mn == -INFINITY ? 0.0f : expf(ss[qi * C + j] - mn);
        ss[qi * C + j] = w;
        lc += w;
      }
      for (int o = 16; o > 0; o >>= 1) lc += __shfl_xor_sync(0xffffffffu, lc, o);
      if (lane == 0) {
        const float corr = mo == -INFINITY ? 0.0f : expf(mo - mn);
        rc[qi] = corr;
        rl[qi] = rl[qi] * corr + lc;
        rm[qi] = mn;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < KC_FA_OUT; k++) {
      const int i = tid + k * KC_FA_THREADS;
      if (i < nr * hd) {
        const int qi = i / hd, d = i % hd;
        const float *w = ss + qi * C;
        float a = acc[k] * rc[qi];
        for (int j = 0; j < n; j++) a += w[j] * vs[j * hd + d];
        acc[k] = a;
      }
    }
    __syncthreads(); /* ks, vs and ss are rewritten by the next chunk */
  }
  if (n_split == 1) {
#pragma unroll
    for (int k = 0; k < KC_FA_OUT; k++) {
      const int i = tid + k * KC_FA_THREADS;
      if (i < nr * hd) {
        const int r = i / hd;
        out[(t0 + r / gb) * qdim + (int64_t)(h0 + r % gb) * hd + i % hd] = acc[k] / rl[r];
      }
    }
    return;
  }
  /* part: per (tile, head, split) the maxima, the sums, then [KC_FA_Q][hd] */
  float *pp = part + (((size_t)blockIdx.x * gridDim.y + blockIdx.y) * n_split + split) *
                         (size_t)(2 * KC_FA_Q + KC_FA_Q * hd);
  if (tid < KC_FA_Q) {
    pp[tid] = rm[tid]; /* -inf for a split with no position of a query's */
    pp[KC_FA_Q + tid] = rl[tid];
  }
#pragma unroll
  for (int k = 0; k < KC_FA_OUT; k++) {
    const int i = tid + k * KC_FA_THREADS;
    if (i < nr * hd) pp[2 * KC_FA_Q + i] = acc[k];
  }
}

/* One block per (tile, head group): each output is its splits'
 * unnormalized outputs, each scaled by e^(its maximum - the overall
 * maximum), over the splits' sums scaled alike. */
__global__ void kc_attention_merge_k(struct kc_batch b, int n_heads, int hd, int gb, int n_split,
                                     const float *part, float *out) {
  const int32_t t0 = b.tiles[2 * blockIdx.x], nr = b.tiles[2 * blockIdx.x + 1] * gb;
  const int h0 = blockIdx.y * gb;
  const int64_t qdim = (int64_t)n_heads * hd;
  const size_t stride = (size_t)(2 * KC_FA_Q + KC_FA_Q * hd);
  const float *pp = part + ((size_t)blockIdx.x * gridDim.y + blockIdx.y) * n_split * stride;
  for (int i = threadIdx.x; i < nr * hd; i += blockDim.x) {
    const int qi = i / hd; /* the row */
    float m = -INFINITY;
    for (int s = 0; s < n_split; s++) m = fmaxf(m, pp[s * stride + qi]);
    float l = 0.0f, o = 0.0f;
    for (int s = 0; s < n_split; s++) {
      const float ms = pp[s * stride + qi];
      if (ms == -INFINITY) continue; /* that split saw none of this query's positions */
      const float w = expf(ms - m);
      l += pp[s * stride + KC_FA_Q + qi] * w;
      o += pp[s * stride + 2 * KC_FA_Q + i] * w;
    }
    out[(t0 + qi / gb) * qdim + (int64_t)(h0 + qi % gb) * hd + i % hd] = o / l;
  }
}

extern "C" size_t kc_attention_workspace(const struct kc_batch *b, int n_heads, int n_kv_heads,
                                         int head_dim, int sm_count) {
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || head_dim <= 0) return 0;
  const int n = kc_attention_splits(b, n_heads, n_kv_heads, head_dim, sm_count);
  const int groups = n_heads / kc_attention_gb(b, n_heads, n_kv_heads);
  return n > 1 ? (size_t)b->n_tiles * groups * n * (2 * KC_FA_Q + KC_FA_Q * head_dim) * sizeof(float)
               : 0;
}

extern "C" int kc_attention(void *stream, const struct kc_batch *b, const float *q,
                            const void *k_cache, uint32_t ktype, const void *v_cache,
                            uint32_t vtype, int n_heads, int n_kv_heads, int head_dim,
                            float scale, int sm_count, float *part, float *out, char *err,
                            size_t errlen) {
  if (head_dim <= 0 || head_dim > KC_ATT_MAX_HD)
    return kc_fail(__LINE__, err, errlen, "attention: head_dim must be 1..256");
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    return kc_fail(__LINE__, err, errlen, "attention: n_heads is not a multiple of n_kv_heads");
  if ((ktype != T_F32 && ktype != T_F16) || (vtype != T_F32 && vtype != T_F16))
    return kc_fail(__LINE__, err, errlen, "attention: cache type not f32 or f16");
  if (b->n_tokens <= 0) return 0;
  if (n_heads > 65535) return kc_fail(__LINE__, err, errlen, "attention: too many heads");
  if (b->n_tiles <= 0 || b->n_tiles > b->n_tokens)
    return kc_fail(__LINE__, err, errlen, "attention: no query tiles");
  if (b->max_tile < 1 || b->max_tile > KC_FA_Q)
    return kc_fail(__LINE__, err, errlen, "attention: tiles of 1..16 queries");
  const int c = kc_fa_chunk(head_dim), gb = kc_attention_gb(b, n_heads, n_kv_heads);
  const int n_split = kc_attention_splits(b, n_heads, n_kv_heads, head_dim, sm_count);
  if (n_split > 1 && !part) return kc_fail(__LINE__, err, errlen, "attention: no split workspace");
  const dim3 grid((unsigned)b->n_tiles, (unsigned)(n_heads / gb), (unsigned)n_split);
  KC_LAUNCH(grid, KC_FA_THREADS, kc_fa_smem(head_dim, c), (cudaStream_t)stream, kc_attention_fa_k)(
      *b, q, k_cache, ktype, v_cache, vtype, n_heads, n_kv_heads, head_dim, scale, c, gb, out,
      part);
  if (KC_LAUNCHED() != 0) return -1;
  if (n_split == 1) return 0;
  const dim3 mgrid((unsigned)b->n_tiles, (unsigned)(n_heads / gb));
  KC_LAUNCH(mgrid, KC_ATT_THREADS, 0, (cudaStream_t)stream, kc_attention_merge_k)(
      *b, n_heads, head_dim, gb, n_split, part, out);
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
  KC_LAUNCH((unsigned)blocks, KC_MM_WARPS * 32, 0, (cudaStream_t)stream, kc_matmul_k)(
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
  KC_LAUNCH(kc_blocks((k / 32) * n_out, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream, kc_split_q_k)(
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
  KC_LAUNCH((unsigned)grid, KC_THREADS, 0, (cudaStream_t)stream, kc_quant_act_k)(x, n_blocks, xq,
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
  KC_LAUNCH(grid, KC_MQ_WARPS * 32, 0, st, kc_matmul_q_k<Q4, TT>)(wq, ws, k, n_out, xq,
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

/* ---- the GEMM path's conversions ---- */

__global__ void kc_to_half_k(const float *x, int64_t n, int bf16, unsigned short *dst) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float v = x[i];
    if (bf16) {
      uint32_t u;
      memcpy(&u, &v, sizeof u);
      if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN stays NaN */
        dst[i] = (unsigned short)((u >> 16) | 0x40u);
      } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        dst[i] = (unsigned short)(u >> 16);
      }
    } else { /* past f16's range: its largest value, not infinity (NaN stays) */
      const float c = v > 65504.0f ? 65504.0f : v < -65504.0f ? -65504.0f : v;
      dst[i] = __half_as_ushort(__float2half_rn(c));
    }
  }
}

extern "C" int kc_to_half(void *stream, const float *x, int64_t n, int bf16, void *dst, char *err,
                          size_t errlen) {
  if (n <= 0) return 0;
  KC_LAUNCH(kc_blocks(n, KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream, kc_to_half_k)(
      x, n, bf16, (unsigned short *)dst);
  return KC_LAUNCHED();
}

/* One thread per pair of weights: q8_0 two consecutive quants, q4_0 a byte
 * (its low nibble is element j, its high one j + 16 of the block). */
__global__ void kc_split_to_f16_k(int q4, const uint8_t *wq, const unsigned short *ws, int64_t k,
                                  int64_t r0, int64_t rows, unsigned short *dst) {
  const int64_t half_k = k / 2, total = rows * half_k;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = r0 + i / half_k, p = i % half_k; /* row, byte pair / byte */
    unsigned short *drow = dst + (size_t)(r - r0) * (size_t)k;
    if (q4) {
      const int64_t blk = p / 16, j = p % 16;
      const float d = __half2float(__ushort_as_half(ws[(size_t)r * (size_t)(k / 32) + blk]));
      const int b = wq[(size_t)r * (size_t)half_k + p];
      drow[blk * 32 + j] = __half_as_ushort(__float2half_rn(d * (float)((b & 15) - 8)));
      drow[blk * 32 + j + 16] = __half_as_ushort(__float2half_rn(d * (float)((b >> 4) - 8)));
    } else {
      const int64_t c = 2 * p;
      const float d = __half2float(__ushort_as_half(ws[(size_t)r * (size_t)(k / 32) + c / 32]));
      const int8_t *q = (const int8_t *)wq + (size_t)r * (size_t)k + c;
      drow[c] = __half_as_ushort(__float2half_rn(d * (float)q[0]));
      drow[c + 1] = __half_as_ushort(__float2half_rn(d * (float)q[1]));
    }
  }
}

extern "C" int kc_split_to_f16(void *stream, uint32_t type, const void *wsplit, int64_t k,
                               int64_t n_out, int64_t r0, int64_t rows, void *dst, char *err,
                               size_t errlen) {
  if (type != T_Q8_0 && type != T_Q4_0)
    return kc_fail(__LINE__, err, errlen, "split_to_f16: weights not q8_0 or q4_0");
  if (k <= 0 || k % 32 != 0) return kc_fail(__LINE__, err, errlen, "split_to_f16: rows are not whole blocks");
  if (r0 < 0 || rows < 0 || r0 + rows > n_out)
    return kc_fail(__LINE__, err, errlen, "split_to_f16: rows past the matrix");
  if (rows == 0) return 0;
  const int q4 = type == T_Q4_0;
  const uint8_t *wq = (const uint8_t *)wsplit;
  const unsigned short *ws =
      (const unsigned short *)(wq + (size_t)n_out * (size_t)(q4 ? k / 2 : k));
  KC_LAUNCH(kc_blocks(rows * (k / 2), KC_THREADS), KC_THREADS, 0, (cudaStream_t)stream,
            kc_split_to_f16_k)(q4, wq, ws, k, r0, rows, (unsigned short *)dst);
  return KC_LAUNCHED();
}
