/* backend plugin "cpu": the host's own cores, with OpenMP.
 *
 * Buffers are plain host memory (64-byte aligned); weights can be used in
 * place from the mmapped GGUF (buf_wrap_host), or packed once at load
 * (prepare_weight; the host then drops the file's pages), so a model is
 * never held twice in RAM. Ops run synchronously; each one checks its views and
 * returns -1 with a reason in last_error() instead of touching memory it was
 * not given.
 *
 * matmul is the hot path. Activations are quantized once per call into the
 * weight's vec_dot_type (q8_0 for q8_0 and q4_0 weights) and then:
 *   - q8_0 / q4_0 on AVX2 or AVX-512 VNNI: packed at load (prepare_weight),
 *     cpu_kern.h's tile kernel for every token count (one int32 vector dots 8
 *     blocks at once, 16 with AVX-512; decode streams the packed rows near
 *     the read bandwidth); left in the GGUF layout, its direct kernel for 1..3
 *     tokens and the tile kernel (packing 4 rows at a time) for more;
 *   - f32 / f16 / bf16 on AVX2: register-tiled FMA on f32 activations;
 *   - anything else, or STRATA_CPU_FEATURES=scalar: the quant plugin's
 *     vec_dot per (row, token), blocked so a row block stays in cache.
 * Work is split over output rows, so every output element is computed by the
 * same code whatever the thread count (results do not depend on it).
 *
 * State: the config (threads) read at init and the host API pointer; all
 * else lives in the instance.
 */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <strata/backend.h>
#include <strata/cpu.h>
#include <strata/fp16.h>
#include <strata/plugin.h>
#include <strata/quant.h>

#if defined(_OPENMP)
#include <omp.h>
#define CPU_OMP(x) _Pragma(#x)
static int cpu_tid(void) { return omp_get_thread_num(); }
static int cpu_nthreads(void) { return omp_get_num_threads(); }
static int cpu_nprocs(void) { return omp_get_num_procs(); }
#else
#define CPU_OMP(x)
static int cpu_tid(void) { return 0; }
static int cpu_nthreads(void) { return 1; }
static int cpu_nprocs(void) { return 1; }
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define CPU_INLINE static inline __attribute__((always_inline))
/* The microkernels' loops over rows and tokens must unroll so that their
 * accumulator arrays live in registers; -O2 alone leaves them in memory. */
#define CPU_UNROLL _Pragma("GCC unroll 8")

/* ---- init config (the only file-scope state) ------------------------------- */

static const struct strata_host_api *cpu_host;
static int cpu_cfg_threads;
static int64_t cpu_cfg_qact_min;
static int cpu_cfg_pack = 1;

static const struct strata_param cpu_params[] = {
    {.name = "threads", .type = STRATA_PARAM_INT, .required = 0, .defval = "0", .min = 0,
     .max = 1024, .help = "threads for each op; 0: all cores (the engine's --threads wins)"},
    {.name = "q8_activations_min", .type = STRATA_PARAM_INT, .required = 0, .defval = "65536",
     .min = 0, .max = 1e15,
     .help = "q8_0/q4_0 matmuls quantize activations to 8 bits from this many weights up; "
             "smaller matrices dequantize to f32 (0: always quantize)"},
    {.name = "pack_weights", .type = STRATA_PARAM_BOOL, .required = 0, .defval = "true",
     .help = "repack q8_0/q4_0 matrices at load for the kernels (faster decode; RAM holds the "
             "packed copy) instead of reading the mmapped file in place (shared by processes)"},
    {.name = NULL, .type = STRATA_PARAM_END},
};

/* ---- types ---------------------------------------------------------------------- */

struct strata_buf {
  uint8_t *data;
  uint64_t size;
  int owned; /* 0: wraps host memory (the mmapped model), read-only; 1: host
              * alloc; 2: its own mmap (prepare_weight) */
};

enum { CPU_SCALAR = 0, CPU_AVX2 = 1, CPU_VNNI = 2 };

/* Quantized weight modes of cpu_kern.h (see there). */
enum { CPU_QM_Q4 = 0, CPU_QM_Q8_XOR = 1, CPU_QM_Q8_SIGN = 2 };
#define CPU_QR 4 /* weight rows per quantized microkernel */
#define CPU_FR 4 /* weight rows per float microkernel */
#define CPU_QDIRECT_MAX 3 /* up to this many tokens use the direct kernel */
#define CPU_MAXN 4        /* weights of one matmul_n */
#define CPU_MAXS 64       /* position ranges of one decode attention (threads) */

/* Packed weights (prepare_weight, and the tile kernel's run-time repack): a
 * q8_0 or q4_0 matrix as row groups of CPU_QR rows (the last padded by
 * repeating its last row), each a run of chunks of CPU_PG blocks: the 4
 * rows' quants (CPU_PQ8 or CPU_PQ4 bytes each, the lane layout of
 * cpu_kern.h's qpack_rg) then their 4 x CPU_PG fp16 scales. Bytes per block
 * are those of the GGUF (34 or 18); a row group is one contiguous stream. The
 * rows are padded to whole chunks with zero blocks. */
#define CPU_PG 16   /* blocks per chunk: one int32 lane each in a zmm */
#define CPU_PQ8 512 /* q8_0 quant bytes of one row in a chunk */
#define CPU_PQ4 256 /* q4_0: two 4-bit quants per byte */
/* How far ahead (bytes) the tile kernel prefetches packed rows. The hardware
 * prefetcher alone kept a decode matvec at about 60% of the read bandwidth;
 * tinyllama-1.1b q8_0 decode, 2 threads (Zen 5 VM), alternating runs: no
 * prefetch 28.9-37.3 ms/token, 3 KiB 25.0-32.0, 6 KiB 24.8-28.4, 8.5 KiB
 * 26.6-28.6, 12 KiB 26.9-29.6, 17 KiB and more slower again.
 * CPU_PF_L2: a second prefetch, into L2 only, that much further on (one
 * token). The L1 prefetches alone are bounded by L1's few outstanding
 * misses; L2 keeps more in flight. bench_matmul's packed q8_0 2048 -> 5632
 * matvec, 2 threads, alternating: 26.4 -> 43.3 GB/s (measured bandwidth
 * 52); tinyllama q8_0 decode, five alternations, median step 56.2 -> 42.3
 * ms (24 KiB: 47.1); q4_0 unchanged (22.1 vs 22.1 ms over eight), and with
 * several tokens a further L2 prefetch of the row group after next gained
 * nothing (q8_0 80.2 vs 79.1 ms at 16 sequences, q4_0 69.1 vs 73.0). */
#define CPU_PF_DIST 6144
#define CPU_PF_L2 12288
/* Backend-private tensor types of packed matrices (STRATA_TYPE_BACKEND_PRIVATE
 * + the GGUF type). */
#define CPU_TYPE_Q8_0_PACKED (STRATA_TYPE_BACKEND_PRIVATE + STRATA_TYPE_Q8_0)
#define CPU_TYPE_Q4_0_PACKED (STRATA_TYPE_BACKEND_PRIVATE + STRATA_TYPE_Q4_0)

/* The GGUF type of a packed tensor type, 0 for any other type. */
static inline uint32_t cpu_packed_base(uint32_t type) {
  return type == CPU_TYPE_Q8_0_PACKED || type == CPU_TYPE_Q4_0_PACKED
             ? type - STRATA_TYPE_BACKEND_PRIVATE
             : 0;
}

/* A matmul's activations, quantized to q8_0 and unpacked. Per token t:
 * q[t * qstride ..] the int8 quants, laid out for the kernel (CPU_QL_*); da[t *
 * nbp + b] block scales and cf[t * nbp + b] = m * da * sum(quants of block b),
 * both 0 in the padding up to nbp (nb rounded up to lane_group, CPU_PG
 * blocks, the tile kernel's chunk); for the 512-bit q4_0 direct kernel also
 * corr[t * nbp * 4 ..], per int32 lane of its dot, -8 * (sum of the quants
 * that lane multiplies). */
struct cpu_qact {
  int64_t nb, nbp, lane_group;
  size_t qstride;
  int8_t *q;
  float *da, *cf;
  int32_t *corr;
};

/* Activation layouts: element order (ymm direct kernel), the tile kernel's
 * lanes, and the 512-bit q4_0 direct kernel's (see cpu_kern.h). */
enum { CPU_QL_ELEM = 0, CPU_QL_LANES = 1, CPU_QL_Z4 = 2 };

/* What attention needs to find cached rows. */
struct cpu_attn {
  const uint8_t *k, *v; /* cache data at the tensors' offsets */
  size_t krow, vrow;    /* bytes per cache row */
  uint32_t ktype, vtype;
  int head_dim;
  int32_t block_size;
  float scale;
};

struct cpu_kernels {
  void (*q_direct_rows)(int mode, const uint8_t *wbase, size_t row_bytes, int64_t nb, size_t bbytes,
                        int64_t r0, int64_t r1, const struct cpu_qact *A, int64_t T, float *out,
                        int64_t ldo);
  void (*q_tile_rows)(int mode, const uint8_t *wbase, size_t row_bytes, int64_t nb, size_t bbytes,
                      int64_t r0, int64_t r1, const struct cpu_qact *A, int64_t t0, int64_t t1,
                      float *out, int64_t ldo, uint8_t *scratch, int packed);
  void (*q_pack_rows)(int mode, const uint8_t *wbase, size_t row_bytes, int64_t nb, size_t bbytes,
                      int64_t r0, int64_t r1, uint8_t *dst);
  void (*f_rows)(uint32_t type, const uint8_t *wbase, size_t row_bytes, int64_t n, int64_t r0,
                 int64_t r1, const float *x, int64_t ldx, int64_t t0, int64_t t1, float *out,
                 int64_t ldo);
  void (*attn_one)(const struct cpu_attn *c, const int32_t *bt, const float *q, int kvh,
                   int32_t npos, float *sc, float *out);
  /* one q8_0 block, bit for bit the reference quantizer; NULL: use the plugin */
  int (*q8_block)(const float *x, int8_t *qs, uint16_t *h, int *sum);
  /* the G <= 8 heads of one kv head at once (head_dim a multiple of 8;
   * sc: npos x 8 floats); NULL: attn_one per head */
  void (*attn_group)(const struct cpu_attn *c, const int32_t *bt, const float *q, int G, int kvh,
                     int32_t p0, int32_t p1, float *sc, float *out, float *ml);
  void (*swiglu)(const float *g, const float *u, float *o, int64_t n);
  double (*sumsq)(const float *x, int64_t n); /* in double */
};

/* A thread's remaining work items [lo, hi), lo in the low 32 bits: the
 * owner takes from lo, a thief splits off the upper half. One cache line
 * each. */
struct cpu_range {
  _Atomic uint64_t v;
  char pad[64 - sizeof(uint64_t)];
};

struct strata_backend {
  const struct strata_host_api *host;
  int threads;
  int tier;
  struct cpu_kernels kern;
  struct strata_batch batch; /* a copy of the struct; the arrays are the host's */
  int have_batch;
  int32_t max_ctx; /* longest seq_len of the batch */
  void *ws;        /* grow-only scratch, used by one op at a time */
  struct cpu_range *ranges; /* [threads]: the row ranges of one decode matmul */
  size_t ws_cap;
  /* rope's cos/sin per token of the batch (T x n_dims floats), for the key
   * below; every layer rotates q and k by the same angles, which cost 44
   * rounds of pow, cos and sin per token and step */
  float *rope_cs;
  size_t rope_cap;
  int rope_valid; /* cleared by set_batch */
  float rope_theta, rope_fs;
  int rope_nd;
  char err[512];
};

/* ---- small helpers -------------------------------------------------------------- */

static inline int cpu_rd16(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, sizeof h);
  return h;
}

static inline float cpu_fload1(uint32_t type, const uint8_t *p) {
  uint16_t h;
  if (type == STRATA_TYPE_F32) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
  }
  memcpy(&h, p, sizeof h);
  return type == STRATA_TYPE_F16 ? strata_fp16_to_fp32(h) : strata_bf16_to_fp32(h);
}

__attribute__((format(printf, 2, 3))) static int cpu_fail(struct strata_backend *b,
                                                          const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->err, sizeof b->err, fmt, ap);
  va_end(ap);
  return -1;
}

static const char *cpu_type_name(uint32_t t) {
  switch (t) {
  case STRATA_TYPE_F32: return "f32";
  case STRATA_TYPE_F16: return "f16";
  case STRATA_TYPE_BF16: return "bf16";
  case STRATA_TYPE_Q8_0: return "q8_0";
  case STRATA_TYPE_Q4_0: return "q4_0";
  case CPU_TYPE_Q8_0_PACKED: return "q8_0 (packed)";
  case CPU_TYPE_Q4_0_PACKED: return "q4_0 (packed)";
  default: return "(other)";
  }
}

static const struct strata_quant_vtable *cpu_quant(const struct strata_backend *b, uint32_t type) {
  return b->host->quant_find ? b->host->quant_find(type) : NULL;
}

/* The scratch for one op: at least `bytes`, 64-byte aligned. */
static void *cpu_ws(struct strata_backend *b, size_t bytes) {
  if (bytes <= b->ws_cap) return b->ws;
  b->host->free(b->ws);
  size_t cap = bytes + bytes / 4 + 4096; /* headroom: shapes grow a little per step */
  b->ws = b->host->alloc(cap);
  b->ws_cap = b->ws ? cap : 0;
  if (!b->ws) cpu_fail(b, "out of memory for %zu bytes of scratch", bytes);
  return b->ws;
}

static size_t cpu_align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Threads for an op of about `work` element operations: small ops stay on
 * the calling thread, where waking the team would cost more than the op. */
static int cpu_nt(const struct strata_backend *b, double work) {
  return work < 32768.0 ? 1 : b->threads;
}

/* ---- views --------------------------------------------------------------------- */

/* Bytes of one row of ne0 elements of `type`, or 0 (with the error set) when
 * the type is unknown or ne0 is not whole blocks. */
static size_t cpu_row_bytes(struct strata_backend *b, uint32_t type, int64_t ne0, const char *what) {
  if (type == STRATA_TYPE_F32) return (size_t)ne0 * 4;
  if (cpu_packed_base(type)) {
    if (ne0 % 32 != 0) {
      cpu_fail(b, "%s: packed row of %lld elements is not whole blocks", what, (long long)ne0);
      return 0;
    }
    /* per row, its share of a row group: whole chunks of the GGUF's bytes */
    const int64_t nbp = (ne0 / 32 + CPU_PG - 1) / CPU_PG * CPU_PG;
    return (size_t)nbp * (type == CPU_TYPE_Q8_0_PACKED ? 34 : 18);
  }
  if (type == STRATA_TYPE_F16 || type == STRATA_TYPE_BF16) return (size_t)ne0 * 2;
  const struct strata_quant_vtable *q = cpu_quant(b, type);
  if (!q || q->block_size == 0) {
    cpu_fail(b, "%s: tensor type %u has no quant plugin", what, type);
    return 0;
  }
  if (ne0 % q->block_size != 0) {
    cpu_fail(b, "%s: row of %lld elements is not whole %s blocks of %u", what, (long long)ne0,
             cpu_type_name(type), q->block_size);
    return 0;
  }
  return (size_t)(ne0 / q->block_size) * q->type_size;
}

/* Bytes of a view of rows of row_bytes. */
static uint64_t cpu_view_bytes(const struct strata_tensor *t, size_t row_bytes) {
  if (cpu_packed_base(t->type)) /* whole row groups */
    return (uint64_t)row_bytes * (uint64_t)((t->ne[1] + CPU_QR - 1) / CPU_QR * CPU_QR);
  return (uint64_t)row_bytes * (uint64_t)t->ne[1];
}

/* Checks a view (buffer, shape, bounds, alignment, writability) and returns
 * its first byte, or NULL with the error set. */
static uint8_t *cpu_view(struct strata_backend *b, const struct strata_tensor *t, const char *what,
                         int write, size_t *row_bytes) {
  if (!t) {
    cpu_fail(b, "%s: no tensor", what);
    return NULL;
  }
  if (!t->buf) {
    cpu_fail(b, "%s: no buffer", what);
    return NULL;
  }
  if (t->ne[0] <= 0 || t->ne[1] < 0 || t->ne[0] > (INT64_C(1) << 40) ||
      t->ne[1] > (INT64_C(1) << 40)) {
    cpu_fail(b, "%s: bad shape [%lld, %lld]", what, (long long)t->ne[0], (long long)t->ne[1]);
    return NULL;
  }
  size_t rb = cpu_row_bytes(b, t->type, t->ne[0], what);
  if (!rb) return NULL;
  const uint64_t bytes = cpu_view_bytes(t, rb);
  if (t->offset > t->buf->size || bytes > t->buf->size - t->offset) {
    cpu_fail(b, "%s: view of %llu bytes at offset %llu is outside its buffer of %llu bytes", what,
             (unsigned long long)bytes, (unsigned long long)t->offset,
             (unsigned long long)t->buf->size);
    return NULL;
  }
  if (write && !t->buf->owned) {
    cpu_fail(b, "%s: the buffer wraps read-only host memory", what);
    return NULL;
  }
  uint8_t *p = t->buf->data + t->offset;
  const size_t align = t->type == STRATA_TYPE_F32 ? 4 : (t->type == STRATA_TYPE_F16 || t->type == STRATA_TYPE_BF16) ? 2 : 1;
  if ((uintptr_t)p % align != 0) {
    cpu_fail(b, "%s: %s data at offset %llu is not %zu-byte aligned", what, cpu_type_name(t->type),
             (unsigned long long)t->offset, align);
    return NULL;
  }
  if (row_bytes) *row_bytes = rb;
  return p;
}

/* An f32 view of exactly [ne0, ne1] (-1: any). */
static float *cpu_f32(struct strata_backend *b, const struct strata_tensor *t, const char *what,
                      int write, int64_t ne0, int64_t ne1) {
  uint8_t *p = cpu_view(b, t, what, write, NULL);
  if (!p) return NULL;
  if (t->type != STRATA_TYPE_F32) {
    cpu_fail(b, "%s: type %s, expected f32", what, cpu_type_name(t->type));
    return NULL;
  }
  if ((ne0 >= 0 && t->ne[0] != ne0) || (ne1 >= 0 && t->ne[1] != ne1)) {
    cpu_fail(b, "%s: shape [%lld, %lld], expected [%lld, %lld]", what, (long long)t->ne[0],
             (long long)t->ne[1], (long long)ne0, (long long)ne1);
    return NULL;
  }
  return (float *)(void *)p;
}

/* Whether two checked views share any byte. */
static int cpu_overlap(const struct strata_tensor *a, size_t arb, const struct strata_tensor *c,
                       size_t crb) {
  if (a->buf != c->buf) return 0;
  const uint64_t a0 = a->offset, a1 = a0 + cpu_view_bytes(a, arb);
  const uint64_t c0 = c->offset, c1 = c0 + cpu_view_bytes(c, crb);
  return a0 < c1 && c0 < a1 && a1 > a0 && c1 > c0;
}

static int cpu_need_batch(struct strata_backend *b, const char *op) {
  if (!b->have_batch) return cpu_fail(b, "%s: no batch (call set_batch first)", op);
  return 0;
}

/* ---- SIMD tiers ------------------------------------------------------------------- */

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define CPU_TIER 1
#define K(x) x##_avx2
#include "cpu_kern.h"
#undef K
#undef CPU_TIER
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define CPU_TIER 2
#define K(x) x##_vnni
#include "cpu_kern.h"
#undef K
#undef CPU_TIER
#pragma GCC pop_options
#endif

/* ---- portable kernels ------------------------------------------------------------- */

static void cpu_attn_one_scalar(const struct cpu_attn *c, const int32_t *bt, const float *q,
                                int kvh, int32_t npos, float *sc, float *out) {
  const int hd = c->head_dim;
  const size_t kes = c->ktype == STRATA_TYPE_F32 ? 4 : 2, ves = c->vtype == STRATA_TYPE_F32 ? 4 : 2;
  float mx = -INFINITY;
  for (int32_t p = 0; p < npos; p++) {
    const int64_t slot = (int64_t)bt[p / c->block_size] * c->block_size + p % c->block_size;
    const uint8_t *k = c->k + (size_t)slot * c->krow + (size_t)kvh * hd * kes;
    float s = 0.0f;
    for (int i = 0; i < hd; i++) s += q[i] * cpu_fload1(c->ktype, k + i * kes);
    s *= c->scale;
    sc[p] = s;
    mx = s > mx ? s : mx;
  }
  float sum = 0.0f;
  for (int32_t p = 0; p < npos; p++) {
    sc[p] = expf(sc[p] - mx);
    sum += sc[p];
  }
  for (int i = 0; i < hd; i++) out[i] = 0.0f;
  for (int32_t p = 0; p < npos; p++) {
    const int64_t slot = (int64_t)bt[p / c->block_size] * c->block_size + p % c->block_size;
    const uint8_t *v = c->v + (size_t)slot * c->vrow + (size_t)kvh * hd * ves;
    for (int i = 0; i < hd; i++) out[i] += sc[p] * cpu_fload1(c->vtype, v + i * ves);
  }
  const float inv = 1.0f / sum;
  for (int i = 0; i < hd; i++) out[i] *= inv;
}

/* ---- registry -------------------------------------------------------------------- */

static int cpu_n_devices(void) { return 1; }

/* MemTotal and MemAvailable from /proc/meminfo, in bytes (0 when unknown). */
static void cpu_meminfo(uint64_t *total, uint64_t *avail) {
  *total = *avail = 0;
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    unsigned long long kib;
    if (sscanf(line, "MemTotal: %llu kB", &kib) == 1) *total = (uint64_t)kib * 1024;
    else if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) *avail = (uint64_t)kib * 1024;
  }
  fclose(f);
}

static const char *cpu_tier_name(int tier) {
  return tier == CPU_VNNI ? "avx512-vnni" : tier == CPU_AVX2 ? "avx2" : "scalar";
}

static int cpu_detect_tier(void) {
  const struct strata_cpu_features f = strata_cpu_detect();
#if defined(__x86_64__)
  if (f.avx512_vnni) return CPU_VNNI;
  if (f.avx2) return CPU_AVX2;
#endif
  (void)f;
  return CPU_SCALAR;
}

static int cpu_device_info(int index, struct strata_backend_device *out) {
  if (!out || index != 0) return -1;
  struct strata_backend_device d;
  memset(&d, 0, sizeof d);
  d.size = sizeof d;
  snprintf(d.name, sizeof d.name, "cpu");
  cpu_meminfo(&d.memory_total, &d.memory_free);
  d.score = 10;
  snprintf(d.why, sizeof d.why, "always available (%d cores, %s kernels)", cpu_nprocs(),
           cpu_tier_name(cpu_detect_tier()));
  return strata_backend_device_fill(out, &d);
}

/* ---- instance -------------------------------------------------------------------- */

static int cpu_open(int index, const struct strata_backend_params *params, strata_backend_t **out,
                    char *err, size_t errlen) {
  if (!out) return -1;
  *out = NULL;
  if (!cpu_host) {
    snprintf(err, errlen, "cpu backend: init() was not called (no host API)");
    return -1;
  }
  if (index != 0) {
    snprintf(err, errlen, "cpu backend: no device %d (there is one, device 0)", index);
    return -1;
  }
  struct strata_backend *b = calloc(1, sizeof *b);
  if (!b) {
    snprintf(err, errlen, "cpu backend: out of memory");
    return -1;
  }
  b->host = cpu_host;
  int threads = 0;
  if (params && params->size >= offsetof(struct strata_backend_params, threads) + sizeof(int))
    threads = params->threads;
  if (threads <= 0) threads = cpu_cfg_threads;
  if (threads <= 0) threads = cpu_nprocs();
  if (threads > 1024) threads = 1024;
  b->threads = threads;
  b->tier = cpu_detect_tier();
  b->ranges = aligned_alloc(64, sizeof *b->ranges * (size_t)threads);
  if (!b->ranges) {
    free(b);
    snprintf(err, errlen, "cpu backend: out of memory");
    return -1;
  }
  b->kern.attn_one = cpu_attn_one_scalar;
#if defined(__x86_64__)
  if (b->tier == CPU_VNNI) {
    b->kern = (struct cpu_kernels){q_direct_rows_vnni, q_tile_rows_vnni, q_pack_rows_vnni,
                                   f_rows_vnni,        attn_one_vnni,    q8_block_vnni,
                                   attn_group_vnni,    swiglu_vnni,      sumsq_vnni};
  } else if (b->tier == CPU_AVX2) {
    b->kern = (struct cpu_kernels){q_direct_rows_avx2, q_tile_rows_avx2, q_pack_rows_avx2,
                                   f_rows_avx2,        attn_one_avx2,    q8_block_avx2,
                                   attn_group_avx2,    swiglu_avx2,      sumsq_avx2};
  }
#endif
  if (b->host->log)
    b->host->log(STRATA_LOG_INFO, "cpu", "%d threads, %s kernels", b->threads,
                 cpu_tier_name(b->tier));
  *out = b;
  return 0;
}

static void cpu_close(strata_backend_t *b) {
  if (!b) return;
  free(b->ranges);
  free(b->rope_cs);
  b->host->free(b->ws);
  free(b);
}

static const char *cpu_last_error(strata_backend_t *b) { return b ? b->err : "no backend"; }

static int cpu_supports_type(strata_backend_t *b, uint32_t type) {
  if (!b) return 0;
  if (type == STRATA_TYPE_F32) return 1;
  const struct strata_quant_vtable *q = cpu_quant(b, type);
  return q && q->block_size > 0 && q->dequantize_row != NULL;
}

/* ---- memory ---------------------------------------------------------------------- */

static strata_buf_t *cpu_buf_alloc(strata_backend_t *b, uint64_t bytes) {
  if (!b) return NULL;
  if (bytes > SIZE_MAX - 64) {
    cpu_fail(b, "buf_alloc: %llu bytes is too large", (unsigned long long)bytes);
    return NULL;
  }
  strata_buf_t *buf = calloc(1, sizeof *buf);
  if (!buf) return NULL;
  buf->data = b->host->alloc(bytes ? (size_t)bytes : 1); /* 64-byte aligned */
  if (!buf->data) {
    free(buf);
    cpu_fail(b, "buf_alloc: out of memory for %llu bytes", (unsigned long long)bytes);
    return NULL;
  }
  /* Touch every page now: the memory the estimator promised is held from
   * the start (a KV cache that does not fit fails at load, not under load
   * hours later), and nothing reads stale bytes. */
  memset(buf->data, 0, bytes ? (size_t)bytes : 1);
  buf->size = bytes;
  buf->owned = 1;
  return buf;
}

static strata_buf_t *cpu_buf_wrap_host(strata_backend_t *b, const void *host, uint64_t bytes) {
  if (!b || !host) return NULL;
  strata_buf_t *buf = calloc(1, sizeof *buf);
  if (!buf) return NULL;
  buf->data = (uint8_t *)(uintptr_t)host; /* never written: owned = 0 */
  buf->size = bytes;
  buf->owned = 0;
  return buf;
}

static void cpu_buf_free(strata_backend_t *b, strata_buf_t *buf) {
  if (!b || !buf) return;
  if (buf->owned == 2)
    munmap(buf->data, (size_t)buf->size);
  else if (buf->owned)
    b->host->free(buf->data);
  free(buf);
}

static int cpu_upload(strata_backend_t *b, strata_buf_t *dst, uint64_t offset, const void *src,
                      uint64_t bytes) {
  if (!b) return -1;
  if (!dst) return cpu_fail(b, "upload: no buffer");
  if (!dst->owned) return cpu_fail(b, "upload: the buffer wraps read-only host memory");
  if (offset > dst->size || bytes > dst->size - offset)
    return cpu_fail(b, "upload: %llu bytes at offset %llu overrun the buffer of %llu bytes",
                    (unsigned long long)bytes, (unsigned long long)offset,
                    (unsigned long long)dst->size);
  if (bytes && !src) return cpu_fail(b, "upload: no source");
  if (bytes) memcpy(dst->data + offset, src, (size_t)bytes);
  return 0;
}

static int cpu_download(strata_backend_t *b, const strata_buf_t *src, uint64_t offset, void *dst,
                        uint64_t bytes) {
  if (!b) return -1;
  if (!src) return cpu_fail(b, "download: no buffer");
  if (offset > src->size || bytes > src->size - offset)
    return cpu_fail(b, "download: %llu bytes at offset %llu overrun the buffer of %llu bytes",
                    (unsigned long long)bytes, (unsigned long long)offset,
                    (unsigned long long)src->size);
  if (bytes && !dst) return cpu_fail(b, "download: no destination");
  if (bytes) memcpy(dst, src->data + offset, (size_t)bytes);
  return 0;
}

static int cpu_synchronize(strata_backend_t *b) { return b ? 0 : -1; }

/* ---- the step -------------------------------------------------------------------- */

static int cpu_set_batch(strata_backend_t *b, const struct strata_batch *batch) {
  if (!b) return -1;
  b->have_batch = 0;
  b->rope_valid = 0;
  if (!batch) return cpu_fail(b, "set_batch: no batch");
  const size_t need = offsetof(struct strata_batch, out_rows) + sizeof batch->out_rows;
  if (batch->size < need)
    return cpu_fail(b, "set_batch: batch struct of %u bytes is older than this backend (%zu)",
                    batch->size, need);
  memset(&b->batch, 0, sizeof b->batch);
  memcpy(&b->batch, batch, batch->size < sizeof b->batch ? batch->size : sizeof b->batch);
  const struct strata_batch *B = &b->batch;
  if (strata_batch_check(B, b->err, sizeof b->err) != 0) return -1;
  b->max_ctx = 0;
  for (int32_t s = 0; s < B->n_seqs; s++)
    if (B->seq_len[s] > b->max_ctx) b->max_ctx = B->seq_len[s];
  b->have_batch = 1;
  return 0;
}

/* ---- ops ------------------------------------------------------------------------- */

static int cpu_embed(strata_backend_t *b, const struct strata_tensor *table,
                     struct strata_tensor *out) {
  if (!b) return -1;
  if (cpu_need_batch(b, "embed")) return -1;
  const struct strata_batch *B = &b->batch;
  size_t trb;
  const uint8_t *tab = cpu_view(b, table, "embed table", 0, &trb);
  if (!tab) return -1;
  const int64_t dim = table->ne[0], vocab = table->ne[1];
  float *o = cpu_f32(b, out, "embed out", 1, dim, B->n_tokens);
  if (!o) return -1;
  if (B->n_tokens > 0 && !B->tokens) return cpu_fail(b, "embed: the batch has no tokens");
  for (int32_t t = 0; t < B->n_tokens; t++)
    if (B->tokens[t] < 0 || B->tokens[t] >= vocab)
      return cpu_fail(b, "embed: token %d is %d, outside the table's %lld rows", t, B->tokens[t],
                      (long long)vocab);
  const struct strata_quant_vtable *q = NULL;
  if (table->type != STRATA_TYPE_F32) {
    q = cpu_quant(b, table->type);
    if (!q || !q->dequantize_row)
      return cpu_fail(b, "embed: no dequantizer for %s", cpu_type_name(table->type));
  }
  const int nt = cpu_nt(b, (double)B->n_tokens * dim);
  const int32_t n = B->n_tokens;
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int32_t t = 0; t < n; t++) {
    const uint8_t *row = tab + (size_t)B->tokens[t] * trb;
    if (q)
      q->dequantize_row(row, o + (size_t)t * dim, dim);
    else
      memcpy(o + (size_t)t * dim, row, (size_t)dim * sizeof(float));
  }
  return 0;
}

static int cpu_rmsnorm(strata_backend_t *b, const struct strata_tensor *x,
                       const struct strata_tensor *w, float eps, struct strata_tensor *out) {
  if (!b) return -1;
  const float *xd = cpu_f32(b, x, "rmsnorm x", 0, -1, -1);
  if (!xd) return -1;
  const int64_t dim = x->ne[0], T = x->ne[1];
  const float *wd = cpu_f32(b, w, "rmsnorm weight", 0, dim, 1);
  float *od = wd ? cpu_f32(b, out, "rmsnorm out", 1, dim, T) : NULL;
  if (!od) return -1;
  if (!(eps >= 0.0f)) return cpu_fail(b, "rmsnorm: eps %g", (double)eps);
  const int nt = cpu_nt(b, (double)dim * T);
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int64_t t = 0; t < T; t++) {
    const float *xr = xd + t * dim;
    float *orow = od + t * dim;
    double ss = 0.0; /* double: the sum of squares of a long row loses bits in float */
    if (b->kern.sumsq)
      ss = b->kern.sumsq(xr, dim);
    else
      for (int64_t i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    for (int64_t i = 0; i < dim; i++) orow[i] = xr[i] * scale * wd[i];
  }
  return 0;
}

static int cpu_add_bias(strata_backend_t *b, struct strata_tensor *x,
                        const struct strata_tensor *bias) {
  if (!b) return -1;
  float *xd = cpu_f32(b, x, "add_bias x", 1, -1, -1);
  if (!xd) return -1;
  const int64_t n = x->ne[0], T = x->ne[1];
  const float *bd = cpu_f32(b, bias, "add_bias bias", 0, n, 1);
  if (!bd) return -1;
  const int nt = cpu_nt(b, (double)n * T);
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < n; i++) xd[t * n + i] += bd[i];
  return 0;
}

static int cpu_add(strata_backend_t *b, const struct strata_tensor *a, const struct strata_tensor *c,
                   struct strata_tensor *out) {
  if (!b) return -1;
  const float *ad = cpu_f32(b, a, "add a", 0, -1, -1);
  if (!ad) return -1;
  const float *cd = cpu_f32(b, c, "add c", 0, a->ne[0], a->ne[1]);
  float *od = cd ? cpu_f32(b, out, "add out", 1, a->ne[0], a->ne[1]) : NULL;
  if (!od) return -1;
  const int64_t n = a->ne[0] * a->ne[1];
  const int nt = cpu_nt(b, (double)n);
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int64_t i = 0; i < n; i++) od[i] = ad[i] + cd[i];
  return 0;
}

static int cpu_swiglu(strata_backend_t *b, const struct strata_tensor *gate,
                      const struct strata_tensor *up, struct strata_tensor *out) {
  if (!b) return -1;
  const float *gd = cpu_f32(b, gate, "swiglu gate", 0, -1, -1);
  if (!gd) return -1;
  const float *ud = cpu_f32(b, up, "swiglu up", 0, gate->ne[0], gate->ne[1]);
  float *od = ud ? cpu_f32(b, out, "swiglu out", 1, gate->ne[0], gate->ne[1]) : NULL;
  if (!od) return -1;
  const int64_t n = gate->ne[0] * gate->ne[1];
  const int nt = cpu_nt(b, (double)n * 8);
  if (b->kern.swiglu) {
    /* whole vectors per thread */
    const int64_t per = (n / nt + 7) / 8 * 8;
    CPU_OMP(omp parallel for num_threads(nt) schedule(static))
    for (int t = 0; t < nt; t++) {
      const int64_t i0 = (int64_t)t * per, i1 = i0 + per < n ? i0 + per : n;
      if (i0 < i1) b->kern.swiglu(gd + i0, ud + i0, od + i0, i1 - i0);
    }
    return 0;
  }
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int64_t i = 0; i < n; i++) {
    const float g = gd[i];
    od[i] = g / (1.0f + expf(-g)) * ud[i];
  }
  return 0;
}

static int cpu_get_rows(strata_backend_t *b, const struct strata_tensor *x,
                        struct strata_tensor *out) {
  if (!b) return -1;
  if (cpu_need_batch(b, "get_rows")) return -1;
  const struct strata_batch *B = &b->batch;
  const float *xd = cpu_f32(b, x, "get_rows x", 0, -1, -1);
  if (!xd) return -1;
  const int64_t dim = x->ne[0];
  float *od = cpu_f32(b, out, "get_rows out", 1, dim, B->n_out);
  if (!od) return -1;
  if (cpu_overlap(x, (size_t)dim * 4, out, (size_t)dim * 4))
    return cpu_fail(b, "get_rows: out overlaps x");
  for (int32_t j = 0; j < B->n_out; j++)
    if (B->out_rows[j] >= x->ne[1])
      return cpu_fail(b, "get_rows: out_rows[%d] = %d, x has %lld rows", j, B->out_rows[j],
                      (long long)x->ne[1]);
  for (int32_t j = 0; j < B->n_out; j++)
    memcpy(od + (size_t)j * dim, xd + (size_t)B->out_rows[j] * dim, (size_t)dim * sizeof(float));
  return 0;
}

static int cpu_rope(strata_backend_t *b, struct strata_tensor *x, int n_heads, int head_dim,
                    const struct strata_rope *r) {
  if (!b) return -1;
  if (cpu_need_batch(b, "rope")) return -1;
  const struct strata_batch *B = &b->batch;
  if (!r) return cpu_fail(b, "rope: no parameters");
  if (n_heads <= 0 || head_dim <= 0)
    return cpu_fail(b, "rope: %d heads of %d", n_heads, head_dim);
  if (r->n_dims <= 0 || r->n_dims > head_dim || r->n_dims % 2 != 0)
    return cpu_fail(b, "rope: n_dims %d (must be even, 2..head_dim %d)", r->n_dims, head_dim);
  if (!(r->theta > 0.0f) || !isfinite(r->freq_scale))
    return cpu_fail(b, "rope: theta %g, freq_scale %g", (double)r->theta, (double)r->freq_scale);
  float *xd = cpu_f32(b, x, "rope x", 1, (int64_t)n_heads * head_dim, B->n_tokens);
  if (!xd) return -1;
  if (B->n_tokens > 0 && !B->positions) return cpu_fail(b, "rope: the batch has no positions");
  const int half = r->n_dims / 2;
  const int64_t T = B->n_tokens, dim = (int64_t)n_heads * head_dim;
  const int nt = cpu_nt(b, (double)T * dim * 4);
  if (!b->rope_valid || b->rope_theta != r->theta || b->rope_fs != r->freq_scale ||
      b->rope_nd != r->n_dims) {
    const size_t need = (size_t)T * (size_t)r->n_dims * sizeof(float);
    if (need > b->rope_cap) {
      float *p = realloc(b->rope_cs, need);
      if (!p) return cpu_fail(b, "rope: out of memory");
      b->rope_cs = p;
      b->rope_cap = need;
    }
    CPU_OMP(omp parallel for num_threads(cpu_nt(b, (double)T * half * 64)) schedule(static))
    for (int64_t t = 0; t < T; t++) {
      float *c = b->rope_cs + (size_t)t * 2 * half, *s = c + half;
      /* angles in double: at position 10^4 a float angle is off by ~1e-3 rad */
      for (int i = 0; i < half; i++) {
        const double ang = (double)B->positions[t] * r->freq_scale *
                           pow((double)r->theta, -2.0 * i / (double)r->n_dims);
        c[i] = (float)cos(ang);
        s[i] = (float)sin(ang);
      }
    }
    b->rope_valid = 1;
    b->rope_theta = r->theta;
    b->rope_fs = r->freq_scale;
    b->rope_nd = r->n_dims;
  }
  const float *cs = b->rope_cs;
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int64_t t = 0; t < T; t++) {
    const float *c = cs + (size_t)t * 2 * half, *s = c + half;
    for (int h = 0; h < n_heads; h++) {
      float *v = xd + t * dim + (int64_t)h * head_dim;
      const int stride = r->neox ? half : 1; /* neox pairs i with i + n_dims/2 */
      for (int i = 0; i < half; i++) {
        const int i0 = r->neox ? i : 2 * i, i1 = i0 + stride;
        const float x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * c[i] - x1 * s[i];
        v[i1] = x0 * s[i] + x1 * c[i];
      }
    }
  }
  return 0;
}

static int cpu_kv_store(strata_backend_t *b, const struct strata_tensor *k,
                        const struct strata_tensor *v, struct strata_tensor *k_cache,
                        struct strata_tensor *v_cache) {
  if (!b) return -1;
  if (cpu_need_batch(b, "kv_store")) return -1;
  const struct strata_batch *B = &b->batch;
  const float *kd = cpu_f32(b, k, "kv_store k", 0, -1, B->n_tokens);
  if (!kd) return -1;
  const int64_t kvd = k->ne[0];
  const float *vd = cpu_f32(b, v, "kv_store v", 0, kvd, B->n_tokens);
  if (!vd) return -1;
  size_t krb, vrb;
  uint8_t *kc = cpu_view(b, k_cache, "kv_store k_cache", 1, &krb);
  uint8_t *vc = kc ? cpu_view(b, v_cache, "kv_store v_cache", 1, &vrb) : NULL;
  if (!vc) return -1;
  const struct strata_tensor *caches[2] = {k_cache, v_cache};
  for (int i = 0; i < 2; i++) {
    if (caches[i]->type != STRATA_TYPE_F32 && caches[i]->type != STRATA_TYPE_F16)
      return cpu_fail(b, "kv_store: cache type %s (f32 or f16 only)",
                      cpu_type_name(caches[i]->type));
    if (caches[i]->ne[0] != kvd)
      return cpu_fail(b, "kv_store: cache rows of %lld, k/v rows of %lld",
                      (long long)caches[i]->ne[0], (long long)kvd);
  }
  if (B->n_tokens > 0 && !B->slots) return cpu_fail(b, "kv_store: the batch has no slots");
  for (int32_t t = 0; t < B->n_tokens; t++)
    if (B->slots[t] < 0 || B->slots[t] >= k_cache->ne[1] || B->slots[t] >= v_cache->ne[1])
      return cpu_fail(b, "kv_store: token %d has slot %d, the cache has %lld rows", t,
                      B->slots[t], (long long)k_cache->ne[1]);
  const int32_t T = B->n_tokens;
  const int nt = cpu_nt(b, (double)T * kvd * 2);
  /* The rows are scattered over a cache that the weights' stream has long
   * evicted: each store missed in turn (1.6 ms of an 80 ms step at 16
   * sequences). A thread fetches all its rows at once, then writes them. */
  CPU_OMP(omp parallel num_threads(nt))
  {
    const int tid = cpu_tid(), n = cpu_nthreads();
    const int32_t t0 = (int32_t)((int64_t)T * tid / n), t1 = (int32_t)((int64_t)T * (tid + 1) / n);
    for (int pass = 0; pass < 2; pass++)
      for (int32_t t = t0; t < t1; t++)
        for (int i = 0; i < 2; i++) {
          const float *src = (i ? vd : kd) + (size_t)t * kvd;
          uint8_t *dst = (i ? vc : kc) + (size_t)B->slots[t] * (i ? vrb : krb);
          const int f32 = caches[i]->type == STRATA_TYPE_F32;
          if (pass == 0) {
            for (size_t l = 0; l < (size_t)kvd * (f32 ? 4 : 2); l += 64)
              __builtin_prefetch(dst + l, 1, 3);
          } else if (f32) {
            memcpy(dst, src, (size_t)kvd * sizeof(float));
          } else {
            uint16_t *h = (uint16_t *)(void *)dst;
            for (int64_t j = 0; j < kvd; j++) h[j] = strata_fp32_to_fp16(src[j]);
          }
        }
  }
  return 0;
}

static int cpu_attention(strata_backend_t *b, const struct strata_tensor *q,
                         const struct strata_tensor *k_cache, const struct strata_tensor *v_cache,
                         const struct strata_attention *a, struct strata_tensor *out) {
  if (!b) return -1;
  if (cpu_need_batch(b, "attention")) return -1;
  const struct strata_batch *B = &b->batch;
  if (!a) return cpu_fail(b, "attention: no parameters");
  if (a->n_heads <= 0 || a->n_kv_heads <= 0 || a->head_dim <= 0 ||
      a->n_heads % a->n_kv_heads != 0)
    return cpu_fail(b, "attention: %d heads, %d kv heads of %d (heads must be a multiple of kv "
                       "heads)", a->n_heads, a->n_kv_heads, a->head_dim);
  if (!isfinite(a->scale)) return cpu_fail(b, "attention: scale %g", (double)a->scale);
  const int64_t qd = (int64_t)a->n_heads * a->head_dim, kvd = (int64_t)a->n_kv_heads * a->head_dim;
  const float *qp = cpu_f32(b, q, "attention q", 0, qd, B->n_tokens);
  if (!qp) return -1;
  float *op = cpu_f32(b, out, "attention out", 1, qd, B->n_tokens);
  if (!op) return -1;
  size_t krb, vrb;
  const uint8_t *kc = cpu_view(b, k_cache, "attention k_cache", 0, &krb);
  const uint8_t *vc = kc ? cpu_view(b, v_cache, "attention v_cache", 0, &vrb) : NULL;
  if (!vc) return -1;
  const struct strata_tensor *caches[2] = {k_cache, v_cache};
  for (int i = 0; i < 2; i++) {
    if (caches[i]->type != STRATA_TYPE_F32 && caches[i]->type != STRATA_TYPE_F16)
      return cpu_fail(b, "attention: cache type %s (f32 or f16 only)",
                      cpu_type_name(caches[i]->type));
    if (caches[i]->ne[0] != kvd)
      return cpu_fail(b, "attention: cache rows of %lld, expected %d kv heads x %d = %lld",
                      (long long)caches[i]->ne[0], a->n_kv_heads, a->head_dim, (long long)kvd);
  }
  if (cpu_overlap(q, (size_t)qd * 4, out, (size_t)qd * 4))
    return cpu_fail(b, "attention: out overlaps q");
  if (B->n_tokens == 0) return 0;
  if (B->n_seqs <= 0 || !B->positions)
    return cpu_fail(b, "attention: the batch has no sequences or positions");
  /* every block a query can reach must lie inside both caches */
  const int64_t rows = k_cache->ne[1] < v_cache->ne[1] ? k_cache->ne[1] : v_cache->ne[1];
  const int32_t bs = B->block_size;
  for (int32_t s = 0; s < B->n_seqs; s++) {
    const int32_t nblk = (B->seq_len[s] + bs - 1) / bs;
    for (int32_t p = 0; p < nblk; p++) {
      const int32_t blk = B->block_tables[(size_t)s * B->max_blocks + p];
      if (blk < 0 || ((int64_t)blk + 1) * bs > rows)
        return cpu_fail(b, "attention: sequence %d block %d is %d, the cache holds %lld blocks "
                           "of %d", s, p, blk, (long long)(rows / bs), bs);
    }
  }
  const int64_t T = B->n_tokens, H = a->n_heads;
  const int group = a->n_heads / a->n_kv_heads;
  const int nt = cpu_nt(b, (double)T * H * a->head_dim * (b->max_ctx > 0 ? b->max_ctx : 1));
  const int grouped = b->kern.attn_group && a->head_dim % 8 == 0;
  const int64_t KVH = a->n_kv_heads, nsub = (group + 7) / 8, per = KVH * nsub;
  /* Few queries over a long context (decode): each thread takes one range
   * of positions of every (query, kv head) instead of whole kv heads, so it
   * reads its part of the cache rows once, whole (one kv head's part of a
   * row is a few of its lines: thread by kv head, every thread fetched every
   * row), and the ranges' softmaxes are merged after. */
  const int S = grouped && nt > 1 && T * per <= 4 * nt && b->max_ctx >= 256
                    ? (nt < CPU_MAXS ? nt : CPU_MAXS)
                    : 1;
  const size_t part = (size_t)8 * a->head_dim + 16; /* floats: out of 8 heads, max, sum */
  /* scores: a position's 8 lanes for the grouped kernel, 1 for the other */
  const size_t sc_bytes =
      cpu_align64((size_t)(b->max_ctx > 0 ? b->max_ctx : 1) * 8 * sizeof(float));
  const size_t p_bytes = S > 1 ? cpu_align64((size_t)T * per * S * part * sizeof(float)) : 0;
  uint8_t *ws = cpu_ws(b, (size_t)nt * sc_bytes + p_bytes + cpu_align64((size_t)T * sizeof(int32_t)));
  if (!ws) return -1;
  float *parts = (float *)(void *)(ws + (size_t)nt * sc_bytes);
  int32_t *tok_seq = (int32_t *)(void *)(ws + (size_t)nt * sc_bytes + p_bytes);
  for (int32_t s = 0; s < B->n_seqs; s++)
    for (int32_t i = B->seq_start[s]; i < B->seq_start[s + 1]; i++) tok_seq[i] = s;
  const struct cpu_attn c = {.k = kc, .v = vc, .krow = krb, .vrow = vrb,
                             .ktype = k_cache->type, .vtype = v_cache->type,
                             .head_dim = a->head_dim, .block_size = bs, .scale = a->scale};
  if (grouped) {
    /* the heads of one kv head together, in subgroups of up to 8: each
     * K/V row is read and converted once per subgroup. Causal rows differ
     * in length, hence the dynamic schedule; split-major order in chunks of
     * a whole range, so that a thread takes one range of every row. */
    const int hd = a->head_dim;
    const int64_t chunk = S > 1 ? T * per : 1;
    CPU_OMP(omp parallel for num_threads(nt) schedule(dynamic, chunk))
    for (int64_t it = 0; it < S * T * per; it++) {
      const int64_t sp = it / (T * per), i = it % (T * per) / per, w = it % per;
      const int kvh = (int)(w / nsub), sub = (int)(w % nsub);
      const int h0 = kvh * group + sub * 8, G = group - sub * 8 < 8 ? group - sub * 8 : 8;
      const int32_t s = tok_seq[i], npos = B->positions[i] + 1;
      float *sc = (float *)(void *)(ws + (size_t)cpu_tid() * sc_bytes);
      const int32_t *bt = B->block_tables + (size_t)s * B->max_blocks;
      const float *qi = qp + i * qd + (int64_t)h0 * hd;
      if (S == 1) {
        b->kern.attn_group(&c, bt, qi, G, kvh, 0, npos, sc, op + i * qd + (int64_t)h0 * hd, NULL);
      } else {
        float *pt = parts + ((size_t)(i * per + w) * S + (size_t)sp) * part;
        const int32_t p0 = (int32_t)((int64_t)npos * sp / S), p1 = (int32_t)((int64_t)npos * (sp + 1) / S);
        b->kern.attn_group(&c, bt, qi, G, kvh, p0, p1, sc, pt, pt + (size_t)8 * hd);
      }
    }
    if (S > 1) {
      /* out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s per head */
      for (int64_t i = 0; i < T; i++)
        for (int64_t w = 0; w < per; w++) {
          const int kvh = (int)(w / nsub), sub = (int)(w % nsub);
          const int h0 = kvh * group + sub * 8, G = group - sub * 8 < 8 ? group - sub * 8 : 8;
          const float *pt = parts + (size_t)(i * per + w) * S * part;
          for (int g = 0; g < G; g++) {
            float M = -INFINITY, L = 0.0f, f[CPU_MAXS];
            for (int sp = 0; sp < S; sp++) {
              const float m = pt[(size_t)sp * part + (size_t)8 * hd + g];
              M = m > M ? m : M;
            }
            for (int sp = 0; sp < S; sp++) {
              const float *ml = pt + (size_t)sp * part + (size_t)8 * hd;
              f[sp] = ml[g] == -INFINITY ? 0.0f : expf(ml[g] - M);
              L += f[sp] * ml[8 + g];
            }
            float *o = op + i * qd + (int64_t)(h0 + g) * hd;
            for (int d = 0; d < hd; d++) {
              float acc = 0.0f;
              for (int sp = 0; sp < S; sp++) acc += f[sp] * pt[(size_t)sp * part + (size_t)g * hd + d];
              o[d] = acc / L;
            }
          }
        }
    }
    return 0;
  }
  void (*one)(const struct cpu_attn *, const int32_t *, const float *, int, int32_t, float *,
              float *) = b->kern.attn_one;
  /* heads of one kv group are adjacent in the loop, so a cached K/V row is
   * read from memory once and then from cache; causal rows differ in length,
   * hence the dynamic schedule */
  CPU_OMP(omp parallel for num_threads(nt) schedule(dynamic, 4))
  for (int64_t it = 0; it < T * H; it++) {
    const int64_t i = it / H;
    const int h = (int)(it % H);
    const int32_t s = tok_seq[i];
    float *sc = (float *)(void *)(ws + (size_t)cpu_tid() * sc_bytes);
    one(&c, B->block_tables + (size_t)s * B->max_blocks, qp + i * qd + (int64_t)h * a->head_dim,
        h / group, B->positions[i] + 1, sc, op + i * qd + (int64_t)h * a->head_dim);
  }
  return 0;
}

/* ---- matmul ------------------------------------------------------------------------- */

/* Tokens per tile: the tile's packed activations should take about 1 MiB, a
 * half of a modern L2, so they stay there while every row block passes. */
static int64_t cpu_token_tile(size_t bytes_per_token, int64_t T, int64_t step) {
  int64_t tt = (int64_t)((size_t)1 << 20) / (int64_t)(bytes_per_token ? bytes_per_token : 1);
  if (tt < 4 * step) tt = 4 * step;
  tt -= tt % step;
  return tt < T ? tt : T;
}

/* The general path: activations into the weight's vec_dot_type, then the
 * quant plugin's vec_dot per (row, token); or, for a type without vec_dot,
 * each row dequantized to f32. Row blocks of 16 stay in L1/L2 while the
 * tokens pass. */
static int cpu_matmul_generic(struct strata_backend *b, const struct strata_tensor *w,
                              const uint8_t *wd, size_t wrb, const float *xd, int64_t T,
                              float *od) {
  const int64_t K = w->ne[0], N = w->ne[1];
  const struct strata_quant_vtable *q = cpu_quant(b, w->type), *vq = NULL;
  if (q && q->vec_dot) {
    vq = cpu_quant(b, q->vec_dot_type);
    if (vq && (!vq->quantize_row || vq->block_size == 0 || K % vq->block_size != 0)) vq = NULL;
  }
  const int nt = cpu_nt(b, (double)N * K * T);
  enum { RB = 16 };
  const int64_t nrb = (N + RB - 1) / RB;
  if (vq) {
    const size_t arb = (size_t)(K / vq->block_size) * vq->type_size;
    uint8_t *act = cpu_ws(b, arb * (size_t)T);
    if (!act) return -1;
    CPU_OMP(omp parallel num_threads(nt))
    {
      CPU_OMP(omp for schedule(static))
      for (int64_t t = 0; t < T; t++) vq->quantize_row(xd + t * K, act + (size_t)t * arb, K);
      CPU_OMP(omp for schedule(static))
      for (int64_t rb = 0; rb < nrb; rb++) {
        const int64_t r1 = rb * RB + RB < N ? rb * RB + RB : N;
        for (int64_t t = 0; t < T; t++)
          for (int64_t r = rb * RB; r < r1; r++)
            q->vec_dot(K, od + t * N + r, wd + (size_t)r * wrb, act + (size_t)t * arb);
      }
    }
    return 0;
  }
  if (w->type != STRATA_TYPE_F32 && (!q || !q->dequantize_row))
    return cpu_fail(b, "matmul: no kernel for %s weights", cpu_type_name(w->type));
  const size_t rowf = cpu_align64((size_t)K * sizeof(float));
  uint8_t *ws = cpu_ws(b, (size_t)nt * RB * rowf);
  if (!ws) return -1;
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int64_t rb = 0; rb < nrb; rb++) {
    const int64_t r0 = rb * RB, r1 = r0 + RB < N ? r0 + RB : N;
    const float *rows[RB];
    for (int64_t r = r0; r < r1; r++) {
      if (w->type == STRATA_TYPE_F32) {
        rows[r - r0] = (const float *)(const void *)(wd + (size_t)r * wrb);
      } else {
        float *f = (float *)(void *)(ws + ((size_t)cpu_tid() * RB + (size_t)(r - r0)) * rowf);
        q->dequantize_row(wd + (size_t)r * wrb, f, K);
        rows[r - r0] = f;
      }
    }
    for (int64_t t = 0; t < T; t++) {
      const float *xr = xd + t * K;
      for (int64_t r = r0; r < r1; r++) {
        float s = 0.0f;
        for (int64_t i = 0; i < K; i++) s += rows[r - r0][i] * xr[i];
        od[t * N + r] = s;
      }
    }
  }
  return 0;
}

/* Blocks [b0, b1) of token t of x (a row of nb blocks): quantized to q8_0
 * with the quant plugin's reference bits (as vec_dot sees them), by the
 * tier's q8_block where there is one, else by the plugin itself; q8_0 blocks
 * are quantized independently, so any block range gives the same bits. Then
 * unpacked for the kernels in `layout`. Blocks from nb to nbp are padding
 * (zeros). */
static void cpu_qpack(const struct strata_backend *b, const struct strata_quant_vtable *q8,
                      const float *x, uint8_t *tmp, const struct cpu_qact *A, int64_t t, float m,
                      int layout, int64_t b0, int64_t b1) {
  /* the SIMD quantizer when there is one (the reference quantizer was the
   * larger part of prefill's packing time), else the plugin's */
  int (*qb)(const float *, int8_t *, uint16_t *, int *) = b->kern.q8_block;
  if (!qb && b0 < A->nb) q8->quantize_row(x + b0 * 32, tmp, ((b1 < A->nb ? b1 : A->nb) - b0) * 32);
  int8_t *q = A->q + (size_t)t * A->qstride;
  float *da = A->da + t * A->nbp, *cf = A->cf + t * A->nbp;
  int32_t *corr = A->corr ? A->corr + t * A->nbp * 4 : NULL;
  for (int64_t bi = b0; bi < b1; bi++) {
    int8_t qs[32];
    float d = 0.0f;
    int sum = 0;
    uint16_t h;
    if (bi < A->nb && qb && qb(x + bi * 32, qs, &h, &sum)) {
      d = strata_fp16_to_fp32(h);
    } else if (bi < A->nb) {
      uint8_t *blk = tmp + (size_t)(bi - b0) * 34;
      if (qb) q8->quantize_row(x + bi * 32, blk, 32); /* a NaN or inf: the reference's way */
      d = strata_fp16_to_fp32((uint16_t)cpu_rd16(blk));
      memcpy(qs, blk + 2, 32);
      for (int j = 0; j < 32; j++) sum += qs[j];
    } else {
      memset(qs, 0, sizeof qs);
    }
    da[bi] = d;
    cf[bi] = m * d * (float)sum;
    if (layout == CPU_QL_LANES) {
      /* lane bi % G of step s of the group of G blocks holds quants
       * 4s..4s+3 (G = CPU_PG; see qtile) */
      const int64_t G = A->lane_group;
      int8_t *grp = q + (size_t)(bi - bi % G) * 32 + (size_t)(bi % G) * 4;
      for (int s = 0; s < 8; s++) memcpy(grp + s * G * 4, qs + 4 * s, 4);
    } else if (layout == CPU_QL_Z4) {
      /* a quad of blocks: their elements 0..15 (the low nibbles), then
       * 16..31; lane 4k + i of the dot takes elements 4i.. and 16 + 4i.. of
       * block k */
      const int64_t k = bi % 4;
      int8_t *quad = q + (size_t)(bi - k) * 32;
      memcpy(quad + k * 16, qs, 16);
      memcpy(quad + 64 + k * 16, qs + 16, 16);
      for (int i = 0; i < 4; i++) {
        int ls = 0;
        for (int j = 0; j < 4; j++) ls += qs[4 * i + j] + qs[16 + 4 * i + j];
        corr[(bi - k) * 4 + k * 4 + i] = -(int32_t)m * ls;
      }
    } else {
      memcpy(q + (size_t)bi * 32, qs, 32);
    }
  }
}

/* Whether cpu_matmul_q's kernels take this q8_0/q4_0 weight (the quant
 * plugins have llama.cpp's block layouts; anything else is generic). */
static int cpu_q_kernels(struct strata_backend *b, uint32_t type) {
  if (b->tier == CPU_SCALAR || (type != STRATA_TYPE_Q8_0 && type != STRATA_TYPE_Q4_0)) return 0;
  const struct strata_quant_vtable *q8 = cpu_quant(b, STRATA_TYPE_Q8_0), *qw = cpu_quant(b, type);
  return q8 && q8->quantize_row && q8->block_size == 32 && q8->type_size == 34 && qw &&
         qw->block_size == 32 && qw->type_size == (type == STRATA_TYPE_Q4_0 ? 18u : 34u);
}

/* Work stealing over items [0, n) for nt threads: each starts on its own
 * contiguous share (one ascending stream of rows, which the prefetches
 * follow); a thread out of work splits off the upper half of the largest
 * share left and goes on ascending there. With a static split the faster
 * thread of a decode matmul waited at the barrier for the slower one (the
 * two rarely get the same share of the memory bandwidth). */
static void cpu_ranges_init(struct strata_backend *b, int nt, int64_t n) {
  for (int t = 0; t < nt; t++) {
    const uint64_t lo = (uint64_t)(n * t / nt), hi = (uint64_t)(n * (t + 1) / nt);
    atomic_store_explicit(&b->ranges[t].v, lo | hi << 32, memory_order_relaxed);
  }
}

/* The next item for thread tid, or -1 when no work is left anywhere. */
static int64_t cpu_ranges_next(struct strata_backend *b, int nt, int tid) {
  _Atomic uint64_t *own = &b->ranges[tid].v;
  for (;;) {
    uint64_t v = atomic_load_explicit(own, memory_order_relaxed);
    while ((uint32_t)v < (uint32_t)(v >> 32))
      if (atomic_compare_exchange_weak_explicit(own, &v, v + 1, memory_order_relaxed,
                                                memory_order_relaxed))
        return (int64_t)(uint32_t)v;
    /* own share done: steal the upper half of the largest */
    int victim = -1;
    uint32_t most = 1;
    for (int t = 0; t < nt; t++) {
      const uint64_t u = atomic_load_explicit(&b->ranges[t].v, memory_order_relaxed);
      const uint32_t left = (uint32_t)(u >> 32) - (uint32_t)u;
      if ((uint32_t)u < (uint32_t)(u >> 32) && left > most) {
        most = left;
        victim = t;
      }
    }
    if (victim < 0) {
      /* one item left somewhere (or none): take it whole */
      for (int t = 0; t < nt; t++) {
        _Atomic uint64_t *r = &b->ranges[t].v;
        uint64_t u = atomic_load_explicit(r, memory_order_relaxed);
        while ((uint32_t)u < (uint32_t)(u >> 32))
          if (atomic_compare_exchange_weak_explicit(r, &u, u + 1, memory_order_relaxed,
                                                    memory_order_relaxed))
            return (int64_t)(uint32_t)u;
      }
      return -1;
    }
    _Atomic uint64_t *r = &b->ranges[victim].v;
    uint64_t u = atomic_load_explicit(r, memory_order_relaxed);
    const uint32_t lo = (uint32_t)u, hi = (uint32_t)(u >> 32);
    if (lo >= hi || hi - lo < 2) continue;
    const uint32_t mid = lo + (hi - lo + 1) / 2;
    if (atomic_compare_exchange_strong_explicit(r, &u, (uint64_t)lo | (uint64_t)mid << 32,
                                                memory_order_relaxed, memory_order_relaxed))
      atomic_store_explicit(own, (uint64_t)mid | (uint64_t)hi << 32, memory_order_relaxed);
  }
}

/* q8_0 / q4_0 weights w[0..n) of one row length and type (type: the GGUF
 * type; packed: wd[i] are cpu-packed; wrb: their row bytes): the activations
 * are quantized once, then one parallel loop runs over the row groups of all
 * of them (Q, K and V, or gate and up, as one stream). */
static int cpu_matmul_q(struct strata_backend *b, int n, const struct strata_tensor *const *w,
                        uint32_t type, int packed, const uint8_t *const *wd, size_t wrb,
                        const float *xd, int64_t T, float *const *od) {
  const int64_t K = w[0]->ne[0];
  int64_t Ntot = 0, nrb[CPU_MAXN], nrb_all = 0;
  for (int i = 0; i < n; i++) {
    Ntot += w[i]->ne[1];
    nrb[i] = (w[i]->ne[1] + CPU_QR - 1) / CPU_QR;
    nrb_all += nrb[i];
  }
  const struct strata_quant_vtable *q8 = cpu_quant(b, STRATA_TYPE_Q8_0);
  const int64_t lg = CPU_PG;
  const int64_t nb = K / 32, nbp = (nb + lg - 1) / lg * lg;
  const size_t kp = (size_t)nbp * 32, bbytes = type == STRATA_TYPE_Q4_0 ? 18 : 34;
  const int mode = type == STRATA_TYPE_Q4_0 ? CPU_QM_Q4
                   : b->tier == CPU_VNNI   ? CPU_QM_Q8_XOR
                                           : CPU_QM_Q8_SIGN;
  const float m = mode == CPU_QM_Q4 ? 8.0f : mode == CPU_QM_Q8_XOR ? 128.0f : 0.0f;
  /* packed rows need no repack, so the tile kernel serves every T */
  const int tile = packed || T > CPU_QDIRECT_MAX;
  const int nt = cpu_nt(b, (double)Ntot * K * T);
  const size_t q_bytes = cpu_align64(kp * (size_t)T);
  const size_t s_bytes = cpu_align64((size_t)nbp * (size_t)T * sizeof(float));
  const size_t tmp_bytes = cpu_align64((size_t)nb * 34);
  const size_t scr_bytes = tile && !packed ? cpu_align64((size_t)nbp * CPU_QR * bbytes) : 0;
  const int layout = tile                                      ? CPU_QL_LANES
                     : b->tier == CPU_VNNI && mode == CPU_QM_Q4 ? CPU_QL_Z4
                                                                : CPU_QL_ELEM;
  const size_t c_bytes = layout == CPU_QL_Z4 ? cpu_align64((size_t)nbp * 4 * sizeof(int32_t) * (size_t)T) : 0;
  uint8_t *ws = cpu_ws(b, q_bytes + 2 * s_bytes + c_bytes + (size_t)nt * (tmp_bytes + scr_bytes));
  if (!ws) return -1;
  const struct cpu_qact A = {.nb = nb, .nbp = nbp, .lane_group = lg, .qstride = kp, .q = (int8_t *)ws,
                             .da = (float *)(void *)(ws + q_bytes),
                             .cf = (float *)(void *)(ws + q_bytes + s_bytes),
                             .corr = c_bytes ? (int32_t *)(void *)(ws + q_bytes + 2 * s_bytes) : NULL};
  uint8_t *tmp0 = ws + q_bytes + 2 * s_bytes + c_bytes, *scr0 = tmp0 + (size_t)nt * tmp_bytes;
  const int64_t TT = cpu_token_tile(kp + 2 * (size_t)nbp * sizeof(float), T, 3);
  /* With fewer tokens than threads (decode), each token's blocks are split
   * between the threads, in whole lane groups, instead of leaving all but
   * one waiting at the barrier. */
  const int64_t nch = T < nt ? nt : 1, chb = (nbp / lg + nch - 1) / nch * lg;
  /* decode: the row groups by work stealing (the threads meet at the
   * qpack barrier first, so the ranges are set before anyone takes) */
  const int steal = nt > 1 && T <= CPU_QDIRECT_MAX && T <= TT;
  if (steal) cpu_ranges_init(b, nt, nrb_all);
  CPU_OMP(omp parallel num_threads(nt))
  {
    const int tid = cpu_tid();
    CPU_OMP(omp for schedule(static))
    for (int64_t it = 0; it < T * nch; it++) {
      const int64_t t = it / nch, b0 = it % nch * chb, b1 = b0 + chb < nbp ? b0 + chb : nbp;
      if (b0 < b1)
        cpu_qpack(b, q8, xd + t * K, tmp0 + (size_t)tid * tmp_bytes, &A, t, m, layout, b0, b1);
    }
    uint8_t *scr = scr0 + (size_t)tid * scr_bytes;
/* row group `it` of all the weights, tokens [t0, t1) */
#define CPU_QROWS(it, t0, t1)                                                                    \
  do {                                                                                           \
    int i = 0;                                                                                   \
    int64_t rb = (it);                                                                           \
    while (rb >= nrb[i]) rb -= nrb[i++];                                                         \
    const int64_t N = w[i]->ne[1], r0 = rb * CPU_QR, r1 = r0 + CPU_QR < N ? r0 + CPU_QR : N;     \
    if (tile)                                                                                    \
      b->kern.q_tile_rows(mode, wd[i], wrb, nb, bbytes, r0, r1, &A, t0, t1, od[i], N, scr,       \
                          packed);                                                               \
    else                                                                                         \
      b->kern.q_direct_rows(mode, wd[i], wrb, nb, bbytes, r0, r1, &A, T, od[i], N);              \
  } while (0)
    if (steal) { /* one pass over every token (T <= TT) */
      for (int64_t it; (it = cpu_ranges_next(b, nt, tid)) >= 0;) CPU_QROWS(it, 0, T);
    } else {
      for (int64_t t0 = 0; t0 < T; t0 += tile ? TT : T) {
        const int64_t t1 = !tile || t0 + TT >= T ? T : t0 + TT;
        CPU_OMP(omp for schedule(static) nowait)
        for (int64_t it = 0; it < nrb_all; it++) CPU_QROWS(it, t0, t1);
      }
    }
#undef CPU_QROWS
  }
  return 0;
}

static int cpu_matmul_f(struct strata_backend *b, const struct strata_tensor *w, const uint8_t *wd,
                        size_t wrb, const float *xd, int64_t T, float *od) {
  const int64_t K = w->ne[0], N = w->ne[1];
  const int nt = cpu_nt(b, (double)N * K * T);
  const int64_t nrb = (N + CPU_FR - 1) / CPU_FR;
  const int64_t TT = cpu_token_tile((size_t)K * sizeof(float), T, 4);
  CPU_OMP(omp parallel num_threads(nt))
  for (int64_t t0 = 0; t0 < T; t0 += TT) {
    const int64_t t1 = t0 + TT < T ? t0 + TT : T;
    CPU_OMP(omp for schedule(static) nowait)
    for (int64_t rb = 0; rb < nrb; rb++) {
      const int64_t r0 = rb * CPU_FR, r1 = r0 + CPU_FR < N ? r0 + CPU_FR : N;
      b->kern.f_rows(w->type, wd, wrb, K, r0, r1, xd, K, t0, t1, od, N);
    }
  }
  return 0;
}

/* A small q8_0/q4_0 matrix: the rows dequantized to f32 in the scratch, then
 * the float kernels with f32 activations. Quantizing the activations to 8
 * bits saves memory traffic, which only pays on matrices too large for the
 * caches; on small ones its error is all cost (on stories260K, dim 64, it
 * doubles the logits' error against f32). */
static int cpu_matmul_deq(struct strata_backend *b, const struct strata_tensor *w,
                          const uint8_t *wd, size_t wrb, const float *xd, int64_t T, float *od) {
  const int64_t K = w->ne[0], N = w->ne[1];
  const struct strata_quant_vtable *q = cpu_quant(b, w->type);
  float *wf = cpu_ws(b, (size_t)N * (size_t)K * sizeof(float));
  if (!wf) return -1;
  const int nt = cpu_nt(b, (double)N * K);
  CPU_OMP(omp parallel for num_threads(nt) schedule(static))
  for (int64_t r = 0; r < N; r++) q->dequantize_row(wd + (size_t)r * wrb, wf + r * K, K);
  struct strata_tensor wf32 = *w;
  wf32.type = STRATA_TYPE_F32;
  const size_t frb = (size_t)K * sizeof(float);
  if (b->tier != CPU_SCALAR) return cpu_matmul_f(b, &wf32, (const uint8_t *)wf, frb, xd, T, od);
  for (int64_t t = 0; t < T; t++)
    for (int64_t r = 0; r < N; r++) {
      float s = 0.0f;
      for (int64_t i = 0; i < K; i++) s += wf[r * K + i] * xd[t * K + i];
      od[t * N + r] = s;
    }
  return 0;
}

/* One weight, its views checked. */
static int cpu_matmul_one(struct strata_backend *b, const struct strata_tensor *w,
                          const uint8_t *wd, size_t wrb, const float *xd, int64_t T, float *od) {
  const int64_t K = w->ne[0], N = w->ne[1];
  if (T == 0 || N == 0) return 0;
  if (cpu_packed_base(w->type)) {
    if (b->tier == CPU_SCALAR) return cpu_fail(b, "matmul: packed weights on the scalar tier");
    return cpu_matmul_q(b, 1, &w, cpu_packed_base(w->type), 1, &wd, wrb, xd, T, &od);
  }
  if ((w->type == STRATA_TYPE_Q8_0 || w->type == STRATA_TYPE_Q4_0) && N * K < cpu_cfg_qact_min) {
    const struct strata_quant_vtable *qw = cpu_quant(b, w->type);
    if (qw && qw->dequantize_row) return cpu_matmul_deq(b, w, wd, wrb, xd, T, od);
  }
  if (cpu_q_kernels(b, w->type)) return cpu_matmul_q(b, 1, &w, w->type, 0, &wd, wrb, xd, T, &od);
  if (b->tier != CPU_SCALAR) {
    if (w->type == STRATA_TYPE_F32 || w->type == STRATA_TYPE_F16 || w->type == STRATA_TYPE_BF16)
      return cpu_matmul_f(b, w, wd, wrb, xd, T, od);
  }
  return cpu_matmul_generic(b, w, wd, wrb, xd, T, od);
}

static int cpu_matmul_n(strata_backend_t *b, int n, const struct strata_tensor *const *w,
                        const struct strata_tensor *x, struct strata_tensor *const *out) {
  if (!b) return -1;
  if (n < 1 || n > CPU_MAXN || !w || !out)
    return cpu_fail(b, "matmul: %d weights (1 to %d)", n, CPU_MAXN);
  const uint8_t *wd[CPU_MAXN];
  size_t wrb[CPU_MAXN];
  float *od[CPU_MAXN];
  for (int i = 0; i < n; i++) {
    wd[i] = cpu_view(b, w[i], "matmul weight", 0, &wrb[i]);
    if (!wd[i]) return -1;
    if (w[i]->ne[0] != w[0]->ne[0])
      return cpu_fail(b, "matmul: weight %d has rows of %lld, weight 0 of %lld", i,
                      (long long)w[i]->ne[0], (long long)w[0]->ne[0]);
  }
  const int64_t K = w[0]->ne[0];
  const float *xd = cpu_f32(b, x, "matmul x", 0, K, -1);
  if (!xd) return -1;
  const int64_t T = x->ne[1];
  int same = 1;
  for (int i = 0; i < n; i++) {
    const int64_t N = w[i]->ne[1];
    od[i] = cpu_f32(b, out[i], "matmul out", 1, N, T);
    if (!od[i]) return -1;
    if (cpu_overlap(out[i], (size_t)N * 4, x, (size_t)K * 4) ||
        cpu_overlap(out[i], (size_t)N * 4, w[i], wrb[i]))
      return cpu_fail(b, "matmul: out overlaps an input");
    for (int j = 0; j < i; j++)
      if (cpu_overlap(out[i], (size_t)N * 4, out[j], (size_t)w[j]->ne[1] * 4))
        return cpu_fail(b, "matmul: outputs %d and %d overlap", j, i);
    same = same && w[i]->type == w[0]->type && w[i]->ne[1] * K >= cpu_cfg_qact_min;
  }
  if (T == 0) return 0;
  /* one pass when every weight takes the same quantized kernel */
  const uint32_t ty = w[0]->type;
  if (n > 1 && same && cpu_packed_base(ty) && b->tier != CPU_SCALAR)
    return cpu_matmul_q(b, n, w, cpu_packed_base(ty), 1, wd, wrb[0], xd, T, od);
  if (n > 1 && same && cpu_q_kernels(b, ty))
    return cpu_matmul_q(b, n, w, ty, 0, wd, wrb[0], xd, T, od);
  for (int i = 0; i < n; i++)
    if (cpu_matmul_one(b, w[i], wd[i], wrb[i], xd, T, od[i]) != 0) return -1;
  return 0;
}

static int cpu_matmul(strata_backend_t *b, const struct strata_tensor *w,
                      const struct strata_tensor *x, struct strata_tensor *out) {
  return cpu_matmul_n(b, 1, &w, x, &out);
}

/* q8_0 and q4_0 matrices that the quantized kernels take are packed (see
 * CPU_PG): the tile kernel then reads them as they are for every token
 * count, one stream per row group, with one float conversion per 16 blocks
 * (the direct kernel converts per block and reads four scattered rows; at one
 * token it reached about 60% of the read bandwidth). Small matrices (the
 * dequantizing path) and every other type stay as they are. */
static int cpu_prepare_weight(strata_backend_t *b, const struct strata_tensor *w,
                              struct strata_tensor *out) {
  if (!b) return -1;
  if (!w || !out) return cpu_fail(b, "prepare_weight: no tensor");
  if (!cpu_cfg_pack || !cpu_q_kernels(b, w->type)) return 0;
  size_t wrb;
  const uint8_t *wd = cpu_view(b, w, "prepare_weight", 0, &wrb);
  if (!wd) return -1;
  const int64_t K = w->ne[0], N = w->ne[1];
  if (N == 0 || N * K < cpu_cfg_qact_min) return 0;
  struct strata_tensor p = *w;
  p.type = w->type + STRATA_TYPE_BACKEND_PRIVATE;
  p.offset = 0;
  const size_t prb = cpu_row_bytes(b, p.type, K, "prepare_weight");
  if (!prb) return -1;
  const uint64_t bytes = cpu_view_bytes(&p, prb);
  if (bytes > SIZE_MAX - 64) return cpu_fail(b, "prepare_weight: %llu bytes is too large",
                                            (unsigned long long)bytes);
  strata_buf_t *buf = calloc(1, sizeof *buf);
  if (!buf) return cpu_fail(b, "prepare_weight: out of memory");
  /* Pages of its own, asked to be huge: a decode step streams every weight
   * once, and with 4 KiB pages it walked the page tables every 4 KiB (the
   * software prefetches ahead of the kernel need the translation too). */
  void *mem = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    free(buf);
    return cpu_fail(b, "prepare_weight: out of memory for %llu bytes", (unsigned long long)bytes);
  }
#ifdef MADV_HUGEPAGE
  (void)madvise(mem, (size_t)bytes, MADV_HUGEPAGE); /* advice: without it, 4 KiB pages */
#endif
  buf->data = mem; /* every byte is written below */
  buf->size = bytes;
  buf->owned = 2;
  const int mode = w->type == STRATA_TYPE_Q4_0 ? CPU_QM_Q4 : CPU_QM_Q8_XOR; /* the tier picks q8's */
  const int64_t nrg = (N + CPU_QR - 1) / CPU_QR, nb = K / 32;
  const size_t rgb = (size_t)(bytes / (uint64_t)nrg);
  const size_t bbytes = w->type == STRATA_TYPE_Q4_0 ? 18 : 34;
  CPU_OMP(omp parallel for num_threads(b->threads) schedule(static))
  for (int64_t g = 0; g < nrg; g++) {
    const int64_t r0 = g * CPU_QR, r1 = r0 + CPU_QR < N ? r0 + CPU_QR : N;
    b->kern.q_pack_rows(mode, wd, wrb, nb, bbytes, r0, r1, buf->data + (size_t)g * rgb);
  }
  p.buf = buf;
  *out = p;
  return 1;
}

/* ---- the plugin ------------------------------------------------------------------ */


static const struct strata_backend_vtable cpu_vtable = {
    .size = sizeof(struct strata_backend_vtable),
    .n_devices = cpu_n_devices,
    .device_info = cpu_device_info,
    .open = cpu_open,
    .close = cpu_close,
    .last_error = cpu_last_error,
    .supports_type = cpu_supports_type,
    .buf_alloc = cpu_buf_alloc,
    .buf_wrap_host = cpu_buf_wrap_host,
    .buf_free = cpu_buf_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .synchronize = cpu_synchronize,
    .set_batch = cpu_set_batch,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .add_bias = cpu_add_bias,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .get_rows = cpu_get_rows,
    .prepare_weight = cpu_prepare_weight,
    .matmul_n = cpu_matmul_n,
};

static int cpu_init(const struct strata_host_api *host, const strata_config_node_t *cfg, char *err,
                    size_t errlen) {
  const size_t need = offsetof(struct strata_host_api, quant_find) + sizeof host->quant_find;
  if (!host || host->size < need || !host->alloc || !host->free || !host->quant_find) {
    snprintf(err, errlen, "the host API lacks alloc/free/quant_find (size %u, need %zu)",
             host ? host->size : 0, need);
    return -1;
  }
  cpu_host = host;
  cpu_cfg_threads = cfg && host->config_int ? (int)host->config_int(cfg, "threads") : 0;
  cpu_cfg_qact_min = cfg && host->config_int ? host->config_int(cfg, "q8_activations_min") : 65536;
  cpu_cfg_pack = cfg && host->config_bool ? host->config_bool(cfg, "pack_weights") : 1;
  return 0;
}

static const struct strata_plugin_desc cpu_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_BACKEND,
    .name = "cpu",
    .version = "1.0",
    .license = "MIT",
    .description = "host CPU with OpenMP; AVX2 / AVX-512 VNNI matmul kernels for q8_0, q4_0, "
                   "f16, bf16, f32",
    .params = cpu_params,
    .init = cpu_init,
    .fini = NULL,
    .vt.backend = &cpu_vtable,
};

STRATA_PLUGIN_DEFINE(cpu_desc)
