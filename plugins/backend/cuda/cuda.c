/* cuda: the backend on an NVIDIA GPU, with the kernels of kernels-cuda/.
 * Built a second time with STRATA_HIP as `hip`, for AMD GPUs: the same
 * source through kernels-hip/hip_compat.h, which maps the CUDA runtime's
 * names to HIP's (the kernels likewise, compiled by hipcc).
 *
 * Registry: one device per GPU the CUDA runtime sees, scored 100 (above the
 * CPU's 10) so that `backend = "auto"` picks it. Without a driver or a GPU,
 * one pseudo-device scores 0 and says why (the runtime's own message): the
 * plugin loads everywhere; it just is not chosen. The runtime is linked
 * statically, so the plugin needs no CUDA library on the machine, only the
 * driver where a GPU is used.
 *
 * An instance owns one stream; ops queue on it and run asynchronously until
 * synchronize() or a download. The runtime's current device is per thread,
 * so every entry point makes the instance's device current first (the engine
 * opens the backend on one thread and steps on another).
 *
 * The step's batch arrays are copied to device memory by set_batch (one
 * buffer, grown as needed), with the token -> sequence map the attention
 * kernel reads.
 *
 * Weights: prepare_weight puts q8_0/q4_0 matrices into a split layout (all
 * quants, 16-byte aligned rows, then all fp16 scales; kernels.h) that the
 * integer matmul reads in 16-byte pieces; its activations are quantized to
 * q8_0 per step into a workspace of the instance's. Small matrices (under
 * CU_SPLIT_MIN elements, as the cpu backend's q8_activations_min) stay in
 * the GGUF layout on the float path: there the activations' rounding only
 * adds error (stories260K's logits, dim 64: twice the f32 path's, on the
 * cpu backend).
 *
 * GEMMs: a matmul of at least gemm_min_tokens tokens goes through cuBLAS's
 * GEMM (tensor cores): f32 weights as they are, f16/bf16 weights with the
 * activations rounded to their type, split q8_0/q4_0 dequantized to f16 a
 * slice of rows at a time (as llama.cpp does for large batches). cuBLAS is
 * opened at run time (libcublas.so.13 or .12, on the first GEMM), so the
 * plugin still needs nothing but the driver; where it is missing, every
 * matmul takes the kernels. The HIP build has no BLAS (hipBLAS is not
 * packaged in Debian 12): its matmuls are the kernels. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(STRATA_EMU) /* tests only: the kernels emulated on the CPU (tests/gpu/emu/) */
#include "../../../tests/gpu/emu/cuda_emu_runtime.h"
#define CU_NAME "emu"
#elif defined(STRATA_HIP)
#include "../../../kernels-hip/hip_compat.h"
#define CU_NAME "hip"
#else
#ifndef STRATA_CUDA_NO_BLAS /* configure: the toolkit has no cuBLAS header */
#include <cublas_api.h>
#include <dlfcn.h>
#endif
#include <cuda_runtime_api.h>
#define CU_NAME "cuda"
#ifndef STRATA_CUDA_DIR
#define STRATA_CUDA_DIR "/usr/local/cuda"
#endif
#endif
#if defined(STRATA_HIP) || defined(STRATA_CUDA_NO_BLAS)
#define CU_HAVE_BLAS 0
#else
#define CU_HAVE_BLAS 1
#endif
#include <pthread.h>

#include <strata/backend.h>
#include <strata/plugin.h>
#include <strata/quant.h>

#include "../../../kernels-cuda/kernels.h"

static const struct strata_host_api *cu_host;

/* The split layout of q8_0/q4_0 (prepare_weight): a backend-private type */
#define CU_SPLIT(t) (STRATA_TYPE_BACKEND_PRIVATE | (t))
#define CU_SPLIT_MIN 65536

struct strata_buf {
  void *dev;
  uint64_t size;
};

struct strata_backend {
  int device;
  cudaStream_t stream;
  char err[512];
  int have_batch;
  struct strata_batch batch;     /* the host's arrays, valid until the next set_batch */
  int32_t *d_ints;               /* the batch arrays on the device */
  size_t d_cap;                  /* ints */
  int32_t *h_ints;               /* staging on the host */
  size_t h_cap;
  int32_t *d_tokens, *d_positions, *d_slots, *d_seq_of, *d_block_tables, *d_out_rows, *d_tiles;
  int32_t n_tiles, max_tile; /* attention's query tiles (kernels.h) */
  void *d_ws; /* the integer matmul's quantized activations */
  size_t ws_cap;
  void *d_attn_ws; /* attention's split partials (floats) */
  size_t attn_ws_cap;
#if CU_HAVE_BLAS
  cublasHandle_t blas; /* made on the first GEMM, on the instance's stream */
  int blas_tried;
#endif
  void *d_gx; /* the GEMM path's activations in f16/bf16 */
  size_t gx_cap;
  void *d_gw; /* its slice of dequantized weights */
  size_t gw_cap;
  int sm_count;     /* multiprocessors: how many blocks fill the device */
};

__attribute__((format(printf, 2, 3))) static int cu_fail(struct strata_backend *b,
                                                         const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->err, sizeof b->err, fmt, ap);
  va_end(ap);
  return -1;
}

/* A runtime call's error as the op's: "what: message (cuda.c:LINE)". */
#define CU_CHECK(b, call, what)                                                                \
  do {                                                                                         \
    const cudaError_t cu_e_ = (call);                                                          \
    if (cu_e_ != cudaSuccess)                                                                  \
      return cu_fail((b), "%s: %s (cuda.c:%d)", (what), cudaGetErrorString(cu_e_), __LINE__); \
  } while (0)

/* Grows *p (device memory, *cap bytes) to at least need bytes. */
static int cu_grow(struct strata_backend *b, void **p, size_t *cap, size_t need, const char *what) {
  if (need <= *cap) return 0;
  cudaFree(*p); /* waits for the work that may still read it */
  *p = NULL;
  *cap = 0;
  const size_t c = need + need / 4;
  CU_CHECK(b, cudaMalloc(p, c), what);
  *cap = c;
  return 0;
}

static int cu_enter(struct strata_backend *b) {
  CU_CHECK(b, cudaSetDevice(b->device), "cudaSetDevice");
  return 0;
}

static const char *cu_type_name(uint32_t t) {
  switch (t) {
  case STRATA_TYPE_F32: return "f32";
  case STRATA_TYPE_F16: return "f16";
  case STRATA_TYPE_BF16: return "bf16";
  case STRATA_TYPE_Q8_0: return "q8_0";
  case STRATA_TYPE_Q4_0: return "q4_0";
  case CU_SPLIT(STRATA_TYPE_Q8_0): return "q8_0 (split)";
  case CU_SPLIT(STRATA_TYPE_Q4_0): return "q4_0 (split)";
  default: return "(other)";
  }
}

/* Bytes of a row of ne0 elements, 0 for a type the kernels do not read or a
 * row that is not whole blocks. */
static size_t cu_row_bytes(uint32_t type, int64_t ne0) {
  switch (type) {
  case STRATA_TYPE_F32: return (size_t)ne0 * 4;
  case STRATA_TYPE_F16:
  case STRATA_TYPE_BF16: return (size_t)ne0 * 2;
  case STRATA_TYPE_Q8_0: return ne0 % 32 ? 0 : (size_t)(ne0 / 32) * 34;
  case STRATA_TYPE_Q4_0: return ne0 % 32 ? 0 : (size_t)(ne0 / 32) * 18;
  default: return 0;
  }
}

/* Checks a view (buffer, shape, bounds) and returns its device address, or
 * NULL with the error set. split: a split q8_0/q4_0 matrix is accepted too
 * (row_bytes then its GGUF rows', which it has in all). */
static void *cu_view_of(struct strata_backend *b, const struct strata_tensor *t, const char *what,
                        size_t *row_bytes, int split) {
  if (!t || !t->buf) {
    cu_fail(b, "%s: no tensor or no buffer", what);
    return NULL;
  }
  if (t->ne[0] <= 0 || t->ne[1] < 0 || t->ne[0] > (INT64_C(1) << 40) ||
      t->ne[1] > (INT64_C(1) << 40)) {
    cu_fail(b, "%s: bad shape [%lld, %lld]", what, (long long)t->ne[0], (long long)t->ne[1]);
    return NULL;
  }
  const int is_split = split && (t->type == CU_SPLIT(STRATA_TYPE_Q8_0) ||
                                 t->type == CU_SPLIT(STRATA_TYPE_Q4_0));
  const size_t rb =
      cu_row_bytes(is_split ? t->type & ~STRATA_TYPE_BACKEND_PRIVATE : t->type, t->ne[0]);
  if (!rb) {
    cu_fail(b, "%s: %s rows of %lld elements are not a layout this backend reads", what,
            cu_type_name(t->type), (long long)t->ne[0]);
    return NULL;
  }
  const uint64_t bytes = (uint64_t)rb * (uint64_t)t->ne[1];
  if (t->offset > t->buf->size || bytes > t->buf->size - t->offset) {
    cu_fail(b, "%s: view of %llu bytes at offset %llu is outside its buffer of %llu bytes", what,
            (unsigned long long)bytes, (unsigned long long)t->offset,
            (unsigned long long)t->buf->size);
    return NULL;
  }
  /* f32 elements; f16/bf16 elements and the q8_0/q4_0 blocks' fp16 scales;
   * split rows are read 16 bytes at a time */
  const size_t align = is_split ? 16 : t->type == STRATA_TYPE_F32 ? 4 : 2;
  if (t->offset % align != 0) {
    cu_fail(b, "%s: %s data at offset %llu is not %zu-byte aligned", what,
            cu_type_name(t->type), (unsigned long long)t->offset, align);
    return NULL;
  }
  if (row_bytes) *row_bytes = rb;
  return (uint8_t *)t->buf->dev + t->offset;
}

static void *cu_view(struct strata_backend *b, const struct strata_tensor *t, const char *what,
                     size_t *row_bytes) {
  return cu_view_of(b, t, what, row_bytes, 0);
}

/* An f32 view of exactly [ne0, ne1] (-1: any). */
static float *cu_f32(struct strata_backend *b, const struct strata_tensor *t, const char *what,
                     int64_t ne0, int64_t ne1) {
  void *p = cu_view(b, t, what, NULL);
  if (!p) return NULL;
  if (t->type != STRATA_TYPE_F32) {
    cu_fail(b, "%s: type %s, expected f32", what, cu_type_name(t->type));
    return NULL;
  }
  if ((ne0 >= 0 && t->ne[0] != ne0) || (ne1 >= 0 && t->ne[1] != ne1)) {
    cu_fail(b, "%s: shape [%lld, %lld], expected [%lld, %lld]", what, (long long)t->ne[0],
            (long long)t->ne[1], (long long)ne0, (long long)ne1);
    return NULL;
  }
  return p;
}

static int cu_need_batch(struct strata_backend *b, const char *op) {
  if (!b->have_batch) return cu_fail(b, "%s: no batch (call set_batch first)", op);
  return 0;
}

/* ---- GEMM through cuBLAS (see the top) ---- */

static int64_t cu_cfg_gemm_min = 32;
static int64_t cu_cfg_gemm_slice = (int64_t)1 << 24; /* weights dequantized at a time */

#if CU_HAVE_BLAS
/* The cuBLAS entry points the GEMM path calls (the C API's). */
static struct {
  cublasStatus_t (*create)(cublasHandle_t *);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void *, const void *, cudaDataType, int, const void *,
                            cudaDataType, int, const void *, void *, cudaDataType, int,
                            cublasComputeType_t, cublasGemmAlgo_t);
} cu_blas;
static int cu_blas_ok;
static pthread_once_t cu_blas_once = PTHREAD_ONCE_INIT;

/* Opens cuBLAS once for the process (kept open: handles may live until
 * exit). The emulator brings its own, on the CPU. */
static void cu_blas_load(void) {
  char why[300] = "";
#if defined(STRATA_EMU)
  cu_blas.create = cublasCreate_v2;
  cu_blas.destroy = cublasDestroy_v2;
  cu_blas.set_stream = cublasSetStream_v2;
  cu_blas.gemm_ex = cublasGemmEx;
  cu_blas_ok = 1;
#else
  /* by name (the loader's path), then in the toolkits' lib64 folders, which
   * a tarball install leaves off the loader's path: $CUDA_HOME, the one
   * this was built against, /usr/local/cuda */
  /* the build's major version first: a newer cuBLAS may want a newer
   * driver, or have dropped this GPU */
  char own[32];
  snprintf(own, sizeof own, "libcublas.so.%d", CUDART_VERSION / 1000);
  const char *const names[] = {own, "libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  const char *env = getenv("CUDA_HOME");
  const char *dirs[] = {NULL, env && *env ? env : NULL, STRATA_CUDA_DIR, "/usr/local/cuda"};
  void *lib = NULL;
  for (size_t d = 0; d < sizeof dirs / sizeof *dirs && !lib; d++) {
    if (d > 0 && !dirs[d]) continue;
    for (size_t i = 0; i < sizeof names / sizeof *names && !lib; i++) {
      char path[600];
      if (d == 0)
        snprintf(path, sizeof path, "%s", names[i]);
      else
        snprintf(path, sizeof path, "%.500s/lib64/%s", dirs[d], names[i]);
      lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
      if (!lib && d == 0 && i == 0) snprintf(why, sizeof why, "%s (and in the toolkits' lib64)", dlerror());
    }
  }
  if (lib) {
    /* POSIX: a function pointer through a void * (dlsym's documented use) */
    *(void **)&cu_blas.create = dlsym(lib, "cublasCreate_v2");
    *(void **)&cu_blas.destroy = dlsym(lib, "cublasDestroy_v2");
    *(void **)&cu_blas.set_stream = dlsym(lib, "cublasSetStream_v2");
    *(void **)&cu_blas.gemm_ex = dlsym(lib, "cublasGemmEx");
    cu_blas_ok = cu_blas.create && cu_blas.destroy && cu_blas.set_stream && cu_blas.gemm_ex;
    if (!cu_blas_ok) snprintf(why, sizeof why, "libcublas lacks cublasGemmEx and friends");
  }
#endif
  if (cu_host && cu_host->log) {
    if (cu_blas_ok)
      cu_host->log(STRATA_LOG_INFO, CU_NAME, "matmuls of %lld tokens and more through cuBLAS",
                   (long long)cu_cfg_gemm_min);
    else
      cu_host->log(STRATA_LOG_WARN, CU_NAME, "no cuBLAS (%s): every matmul takes the kernels",
                   why);
  }
}
#endif

/* ---- registry -------------------------------------------------------------------- */

static int cu_n_devices(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) return 1; /* the pseudo-device */
  return n;
}

static int cu_device_info(int index, struct strata_backend_device *out) {
  if (!out || index < 0) return -1;
  struct strata_backend_device d;
  memset(&d, 0, sizeof d);
  d.size = sizeof d;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n <= 0) {
    if (index != 0) return -1;
    snprintf(d.name, sizeof d.name, CU_NAME " (no device)");
    snprintf(d.why, sizeof d.why, "no usable GPU: %s",
             e != cudaSuccess ? cudaGetErrorString(e) : "the CUDA runtime sees no device");
  } else {
    if (index >= n) return -1;
    struct cudaDeviceProp p;
    int drv = 0;
    cudaDriverGetVersion(&drv);
    if (cudaGetDeviceProperties(&p, index) != cudaSuccess) {
      snprintf(d.name, sizeof d.name, CU_NAME ":%d", index);
      snprintf(d.why, sizeof d.why, "cannot read the device's properties");
    } else {
      snprintf(d.name, sizeof d.name, CU_NAME ":%d %.40s", index % 1000, p.name);
      size_t fr = 0, tot = 0;
      if (cudaSetDevice(index) == cudaSuccess && cudaMemGetInfo(&fr, &tot) == cudaSuccess) {
        d.memory_total = tot;
        d.memory_free = fr;
      } else {
        d.memory_total = p.totalGlobalMem;
      }
#if defined(STRATA_EMU)
      /* above 0, so the tests run on it; below the cpu's 10, so that
       * `auto` never takes it */
      d.score = 1;
      snprintf(d.why, sizeof d.why, "the cuda kernels emulated on the CPU (tests only)");
      (void)drv;
#elif defined(STRATA_HIP)
      /* the kernels run on the targets hipcc built them for (STRATA_HIP_ARCHS) */
      char arch[80];
      snprintf(arch, sizeof arch, " %.60s", p.gcnArchName);
      arch[strcspn(arch, ":")] = 0; /* "gfx90a:sramecc+:xnack-" -> "gfx90a" */
      const size_t al = strlen(arch);
      const char *built = " " STRATA_HIP_ARCHS " ", *hit = strstr(built, arch);
      const int usable = hit && hit[al] == ' ';
      if (!usable) {
        snprintf(d.why, sizeof d.why, "%.60s: the kernels are built for %s only", arch + 1,
                 STRATA_HIP_ARCHS);
      } else {
        d.score = 100;
        snprintf(d.why, sizeof d.why, "%.100s, %s, %.1f GiB, driver %d", p.name, arch + 1,
                 (double)p.totalGlobalMem / (1024.0 * 1024 * 1024), drv);
      }
#else
      if (p.major < 8) {
        snprintf(d.why, sizeof d.why, "compute capability %d.%d: the kernels are built for 8.0 "
                                      "and up", p.major, p.minor);
      } else {
        d.score = 100;
        snprintf(d.why, sizeof d.why, "%.100s, sm_%d%d, %.1f GiB, driver %d.%d", p.name,
                 p.major % 100, p.minor % 100, (double)p.totalGlobalMem / (1024.0 * 1024 * 1024),
                 drv / 1000 % 1000, drv % 1000 / 10);
      }
#endif
    }
  }
  return strata_backend_device_fill(out, &d);
}

/* ---- instance -------------------------------------------------------------------- */

static int cu_open(int index, const struct strata_backend_params *params,
                   strata_backend_t **out, char *err, size_t errlen) {
  (void)params;
  if (!out) return -1;
  *out = NULL;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n <= 0) {
    snprintf(err, errlen, CU_NAME " backend: no usable GPU: %s",
             e != cudaSuccess ? cudaGetErrorString(e) : "no device");
    return -1;
  }
  if (index < 0 || index >= n) {
    snprintf(err, errlen, CU_NAME " backend: no device %d (there are %d)", index, n);
    return -1;
  }
  struct strata_backend *b = calloc(1, sizeof *b);
  if (!b) {
    snprintf(err, errlen, CU_NAME " backend: out of memory");
    return -1;
  }
  b->device = index;
  cudaError_t c = cudaSetDevice(index);
  if (c == cudaSuccess) c = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking);
  if (c != cudaSuccess) {
    snprintf(err, errlen, CU_NAME " backend: device %d: %s", index, cudaGetErrorString(c));
    free(b);
    return -1;
  }
  struct cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, index) == cudaSuccess) {
    b->sm_count = p.multiProcessorCount;
    if (cu_host && cu_host->log)
      cu_host->log(STRATA_LOG_INFO, CU_NAME, "device %d: %s, %d.%d, %d multiprocessors", index,
                   p.name, p.major, p.minor, p.multiProcessorCount);
  }
  *out = b;
  return 0;
}

static void cu_close(strata_backend_t *b) {
  if (!b) return;
  cudaSetDevice(b->device);
  cudaStreamSynchronize(b->stream);
  cudaFree(b->d_ints);
  cudaFree(b->d_ws);
  cudaFree(b->d_attn_ws);
  cudaFree(b->d_gx);
  cudaFree(b->d_gw);
#if CU_HAVE_BLAS
  if (b->blas) cu_blas.destroy(b->blas);
#endif
  cudaStreamDestroy(b->stream);
  free(b->h_ints);
  free(b);
}

static const char *cu_last_error(strata_backend_t *b) { return b ? b->err : "no backend"; }

static int cu_supports_type(strata_backend_t *b, uint32_t type) {
  return b && kc_type_ok(type);
}

/* ---- memory ---------------------------------------------------------------------- */

static strata_buf_t *cu_buf_alloc(strata_backend_t *b, uint64_t bytes) {
  if (!b || cu_enter(b)) return NULL;
  struct strata_buf *buf = calloc(1, sizeof *buf);
  if (!buf) {
    cu_fail(b, "out of host memory");
    return NULL;
  }
  const cudaError_t e = cudaMalloc(&buf->dev, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    cu_fail(b, "cudaMalloc of %llu bytes: %s", (unsigned long long)bytes, cudaGetErrorString(e));
    free(buf);
    return NULL;
  }
  buf->size = bytes;
  return buf;
}

static void cu_buf_free(strata_backend_t *b, strata_buf_t *buf) {
  if (!b || !buf) return;
  cudaSetDevice(b->device);
  cudaFree(buf->dev); /* waits for the work queued on it */
  free(buf);
}

static int cu_span(struct strata_backend *b, const strata_buf_t *buf, uint64_t offset,
                   uint64_t bytes, const char *what) {
  if (!buf) return cu_fail(b, "%s: no buffer", what);
  if (offset > buf->size || bytes > buf->size - offset)
    return cu_fail(b, "%s: %llu bytes at offset %llu are outside the buffer of %llu", what,
                   (unsigned long long)bytes, (unsigned long long)offset,
                   (unsigned long long)buf->size);
  return 0;
}

static int cu_upload(strata_backend_t *b, strata_buf_t *dst, uint64_t offset, const void *src,
                     uint64_t bytes) {
  if (!b || cu_enter(b) || cu_span(b, dst, offset, bytes, "upload")) return -1;
  if (!bytes) return 0;
  /* from pageable memory the call returns once src is staged: the caller
   * may reuse it at once */
  CU_CHECK(b, cudaMemcpyAsync((uint8_t *)dst->dev + offset, src, bytes, cudaMemcpyHostToDevice,
                              b->stream),
           "upload");
  return 0;
}

static int cu_download(strata_backend_t *b, const strata_buf_t *src, uint64_t offset, void *dst,
                       uint64_t bytes) {
  if (!b || cu_enter(b) || cu_span(b, src, offset, bytes, "download")) return -1;
  if (!bytes) return 0;
  CU_CHECK(b, cudaMemcpyAsync(dst, (const uint8_t *)src->dev + offset, bytes,
                              cudaMemcpyDeviceToHost, b->stream),
           "download");
  CU_CHECK(b, cudaStreamSynchronize(b->stream), "download");
  return 0;
}

static int cu_synchronize(strata_backend_t *b) {
  if (!b || cu_enter(b)) return -1;
  CU_CHECK(b, cudaStreamSynchronize(b->stream), "synchronize");
  return 0;
}

/* ---- the step -------------------------------------------------------------------- */

static int cu_set_batch(strata_backend_t *b, const struct strata_batch *batch) {
  if (!b) return -1;
  b->have_batch = 0;
  if (cu_enter(b)) return -1;
  if (!batch) return cu_fail(b, "set_batch: no batch");
  const size_t need = offsetof(struct strata_batch, out_rows) + sizeof batch->out_rows;
  if (batch->size < need)
    return cu_fail(b, "set_batch: batch struct of %u bytes is older than this backend (%zu)",
                   batch->size, need);
  memset(&b->batch, 0, sizeof b->batch);
  memcpy(&b->batch, batch, batch->size < sizeof b->batch ? batch->size : sizeof b->batch);
  const struct strata_batch *B = &b->batch;
  if (strata_batch_check(B, b->err, sizeof b->err) != 0) return -1;
  const int32_t T = B->n_tokens, S = B->n_seqs, O = B->n_out;
  for (int32_t s = 0; s < S; s++) {
    /* attention reads every block a position below seq_len maps to */
    const int32_t used = (B->seq_len[s] + B->block_size - 1) / B->block_size;
    for (int32_t k = 0; k < used; k++)
      if (B->block_tables[(int64_t)s * B->max_blocks + k] < 0)
        return cu_fail(b, "set_batch: sequence %d's block %d is %d", s, k,
                       B->block_tables[(int64_t)s * B->max_blocks + k]);
  }
  /* tokens, positions, slots, seq_of: T each; block tables; out rows;
   * attention's query tiles: at most T pairs */
  const size_t nbt = S > 0 ? (size_t)S * (size_t)B->max_blocks : 0;
  const size_t total = 4 * (size_t)T + nbt + (size_t)O + 2 * (size_t)T;
  if (total > b->h_cap) {
    int32_t *h = realloc(b->h_ints, (total + total / 4 + 64) * sizeof *h);
    if (!h) return cu_fail(b, "set_batch: out of host memory");
    b->h_ints = h;
    b->h_cap = total + total / 4 + 64;
  }
  if (total > b->d_cap) {
    cudaFree(b->d_ints);
    b->d_ints = NULL;
    b->d_cap = 0;
    CU_CHECK(b, cudaMalloc((void **)&b->d_ints, b->h_cap * sizeof(int32_t)), "set_batch");
    b->d_cap = b->h_cap;
  }
  int32_t *h = b->h_ints;
  if (T > 0) {
    const int32_t *src[3] = {B->tokens, B->positions, B->slots};
    for (int k = 0; k < 3; k++)
      if (src[k])
        memcpy(h + k * (size_t)T, src[k], (size_t)T * sizeof *h);
      else
        memset(h + k * (size_t)T, 0xff, (size_t)T * sizeof *h); /* -1: never read */
  }
  int32_t *seq_of = h + 3 * (size_t)T;
  for (int32_t i = 0; i < T; i++) seq_of[i] = -1;
  for (int32_t s = 0; s < S; s++)
    for (int32_t i = B->seq_start[s]; i < B->seq_start[s + 1]; i++) seq_of[i] = s;
  if (nbt) memcpy(h + 4 * (size_t)T, B->block_tables, nbt * sizeof *h);
  if (O > 0) memcpy(h + 4 * (size_t)T + nbt, B->out_rows, (size_t)O * sizeof *h);
  int32_t *tiles = h + 4 * (size_t)T + nbt + (size_t)O, nt = 0, mt = 0;
  for (int32_t s = 0; s < S; s++)
    for (int32_t i = B->seq_start[s]; i < B->seq_start[s + 1]; i += KC_FA_Q) {
      tiles[2 * nt] = i;
      tiles[2 * nt + 1] = B->seq_start[s + 1] - i < KC_FA_Q ? B->seq_start[s + 1] - i : KC_FA_Q;
      mt = tiles[2 * nt + 1] > mt ? tiles[2 * nt + 1] : mt;
      nt++;
    }
  const size_t used = total - 2 * (size_t)T + 2 * (size_t)nt;
  if (used)
    CU_CHECK(b, cudaMemcpyAsync(b->d_ints, h, used * sizeof *h, cudaMemcpyHostToDevice,
                                b->stream),
             "set_batch");
  int32_t *d = b->d_ints;
  b->d_tokens = d;
  b->d_positions = d + T;
  b->d_slots = d + 2 * (size_t)T;
  b->d_seq_of = d + 3 * (size_t)T;
  b->d_block_tables = d + 4 * (size_t)T;
  b->d_out_rows = d + 4 * (size_t)T + nbt;
  b->d_tiles = d + 4 * (size_t)T + nbt + (size_t)O;
  b->n_tiles = nt;
  b->max_tile = mt;
  b->have_batch = 1;
  return 0;
}

/* ---- ops ------------------------------------------------------------------------- */

static int cu_embed(strata_backend_t *b, const struct strata_tensor *table,
                    struct strata_tensor *out) {
  if (!b || cu_enter(b) || cu_need_batch(b, "embed")) return -1;
  const struct strata_batch *B = &b->batch;
  size_t rb;
  const void *tab = cu_view(b, table, "embed table", &rb);
  if (!tab) return -1;
  float *o = cu_f32(b, out, "embed out", table->ne[0], B->n_tokens);
  if (!o) return -1;
  if (B->n_tokens > 0 && !B->tokens) return cu_fail(b, "embed: the batch has no tokens");
  for (int32_t t = 0; t < B->n_tokens; t++)
    if (B->tokens[t] < 0 || B->tokens[t] >= table->ne[1])
      return cu_fail(b, "embed: token %d is %d, outside the table's %lld rows", t, B->tokens[t],
                     (long long)table->ne[1]);
  return kc_embed(b->stream, table->type, tab, rb, table->ne[0], b->d_tokens, B->n_tokens, o,
                  b->err, sizeof b->err);
}

static int cu_rmsnorm(strata_backend_t *b, const struct strata_tensor *x,
                      const struct strata_tensor *w, float eps, struct strata_tensor *out) {
  if (!b || cu_enter(b)) return -1;
  const float *xd = cu_f32(b, x, "rmsnorm x", -1, -1);
  const float *wd = xd ? cu_f32(b, w, "rmsnorm weight", x->ne[0], 1) : NULL;
  float *od = wd ? cu_f32(b, out, "rmsnorm out", x->ne[0], x->ne[1]) : NULL;
  if (!od) return -1;
  if (!(eps >= 0.0f)) return cu_fail(b, "rmsnorm: eps %g", (double)eps);
  return kc_rmsnorm(b->stream, xd, wd, eps, x->ne[0], x->ne[1], od, b->err, sizeof b->err);
}

/* The integer matmul's workspace: x quantized, then its block scales. */
/* What one matmul call has made of its activations, for the next weight
 * of a matmul_n (the same x): quantized to q8_0 in d_ws, rounded to
 * f16 (1) or bf16 (2) in d_gx. */
struct cu_xdone {
  int q8, half;
};

static int cu_matmul_split(struct strata_backend *b, const struct strata_tensor *w,
                           const void *wd, const float *xd, int64_t T, float *od,
                           struct cu_xdone *done) {
  const int64_t K = w->ne[0];
  const size_t q_bytes = ((size_t)K * (size_t)T + 255) & ~(size_t)255;
  const size_t need = q_bytes + (size_t)(K / 32) * (size_t)T * 2 * sizeof(float);
  int8_t *xq = b->d_ws;
  float *xs = (float *)(void *)((uint8_t *)b->d_ws + q_bytes);
  if (!done->q8) {
    if (cu_grow(b, &b->d_ws, &b->ws_cap, need, "matmul workspace")) return -1;
    xq = b->d_ws;
    xs = (float *)(void *)((uint8_t *)b->d_ws + q_bytes);
    if (kc_quant_act(b->stream, xd, K, T, xq, xs, b->err, sizeof b->err) != 0) return -1;
    done->q8 = 1;
  }
  const uint32_t base = w->type & ~STRATA_TYPE_BACKEND_PRIVATE;
  return kc_matmul_q(b->stream, base, wd, K, w->ne[1], xq, xs, T, od, b->err, sizeof b->err);
}

/* out = x W^T through cuBLAS: 0 done (queued), -1 error, 1 not a matrix
 * cuBLAS takes here (the kernels do it). Column-major, as cuBLAS sees
 * them: W is k x n_out (lda = its row length), x k x T, out n_out x T. */
static int cu_matmul_gemm(struct strata_backend *b, const struct strata_tensor *w,
                          const void *wd, size_t rb, const float *xd, int64_t T, float *od,
                          struct cu_xdone *done) {
#if !CU_HAVE_BLAS
  (void)b, (void)w, (void)wd, (void)rb, (void)xd, (void)T, (void)od, (void)done;
  return 1;
#else
  const int64_t K = w->ne[0], N = w->ne[1];
  if (K > 0x7fffffff || N > 0x7fffffff || T > 0x7fffffff) return 1;
  const uint32_t t = w->type;
  const int split = t == CU_SPLIT(STRATA_TYPE_Q8_0) || t == CU_SPLIT(STRATA_TYPE_Q4_0);
  if (t != STRATA_TYPE_F32 && t != STRATA_TYPE_F16 && t != STRATA_TYPE_BF16 && !split) return 1;
  if (!b->blas_tried) {
    b->blas_tried = 1;
    pthread_once(&cu_blas_once, cu_blas_load);
    if (cu_blas_ok) {
      if (cu_blas.create(&b->blas) != CUBLAS_STATUS_SUCCESS) {
        b->blas = NULL;
        if (cu_host && cu_host->log)
          cu_host->log(STRATA_LOG_WARN, CU_NAME, "cublasCreate failed: matmuls take the kernels");
      } else if (cu_blas.set_stream(b->blas, b->stream) != CUBLAS_STATUS_SUCCESS) {
        cu_blas.destroy(b->blas);
        b->blas = NULL;
      }
    }
  }
  if (!b->blas) return 1;
  const float one = 1.0f, zero = 0.0f;
  const int k = (int)K, n = (int)N, nt = (int)T;
  cublasStatus_t st;
  if (t == STRATA_TYPE_F32) {
    if (rb % 4) return 1;
    st = cu_blas.gemm_ex(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, nt, k, &one, wd, CUDA_R_32F,
                         (int)(rb / 4), xd, CUDA_R_32F, k, &zero, od, CUDA_R_32F, n,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  } else {
    if (rb % 2) return 1;
    const int bf = t == STRATA_TYPE_BF16;
    const cudaDataType dt = bf ? CUDA_R_16BF : CUDA_R_16F;
    if (done->half != 1 + bf) {
      if (cu_grow(b, &b->d_gx, &b->gx_cap, (size_t)K * (size_t)T * 2, "gemm activations") ||
          kc_to_half(b->stream, xd, K * T, bf, b->d_gx, b->err, sizeof b->err))
        return -1;
      done->half = 1 + bf;
    }
    if (!split) {
      st = cu_blas.gemm_ex(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, nt, k, &one, wd, dt,
                           (int)(rb / 2), b->d_gx, dt, k, &zero, od, CUDA_R_32F, n,
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    } else {
      /* slices of gemm_slice_weights (16 Mi: 32 MiB of f16) */
      int64_t slice = cu_cfg_gemm_slice / K;
      if (slice >= 64) slice &= ~(int64_t)63; /* out + r0 stays aligned for cuBLAS */
      if (slice < 1) slice = 1;
      if (slice > N) slice = N;
      if (cu_grow(b, &b->d_gw, &b->gw_cap, (size_t)slice * (size_t)K * 2, "gemm weights"))
        return -1;
      const uint32_t base = t & ~STRATA_TYPE_BACKEND_PRIVATE;
      st = CUBLAS_STATUS_SUCCESS;
      for (int64_t r0 = 0; r0 < N && st == CUBLAS_STATUS_SUCCESS; r0 += slice) {
        const int64_t rows = N - r0 < slice ? N - r0 : slice;
        if (kc_split_to_f16(b->stream, base, wd, K, N, r0, rows, b->d_gw, b->err, sizeof b->err))
          return -1;
        st = cu_blas.gemm_ex(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, nt, k, &one, b->d_gw,
                             CUDA_R_16F, k, b->d_gx, CUDA_R_16F, k, &zero, od + r0, CUDA_R_32F,
                             n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      }
    }
  }
  if (st != CUBLAS_STATUS_SUCCESS) {
    /* e.g. a cuBLAS that has dropped this GPU: the kernels take this
     * instance's matmuls from now on (this one's output is rewritten) */
    if (cu_host && cu_host->log)
      cu_host->log(STRATA_LOG_WARN, CU_NAME,
                   "cublasGemmEx (%s [%lld, %lld], %lld tokens): status %d: matmuls take the "
                   "kernels from now on",
                   cu_type_name(t), (long long)K, (long long)N, (long long)T, (int)st);
    cu_blas.destroy(b->blas);
    b->blas = NULL;
    return 1;
  }
  return 0;
#endif
}

/* One weight's product, its views checked (cu_matmul, cu_matmul_n). */
static int cu_matmul_one(struct strata_backend *b, const struct strata_tensor *w, const void *wd,
                         size_t rb, const float *xd, int64_t T, float *od,
                         struct cu_xdone *done) {
  if (cu_cfg_gemm_min > 0 && T >= cu_cfg_gemm_min) {
    const int r = cu_matmul_gemm(b, w, wd, rb, xd, T, od, done);
    if (r <= 0) return r; /* 1: not for cuBLAS, the kernels take it */
  }
  if (w->type & STRATA_TYPE_BACKEND_PRIVATE) return cu_matmul_split(b, w, wd, xd, T, od, done);
  return kc_matmul(b->stream, w->type, wd, rb, w->ne[0], w->ne[1], xd, T, od, b->err,
                   sizeof b->err);
}

/* Whether byte ranges [a0, a0 + an) of buffer ab and [c0, c0 + cn) of cb meet. */
static int cu_meet(const strata_buf_t *ab, uint64_t a0, uint64_t an, const strata_buf_t *cb,
                   uint64_t c0, uint64_t cn) {
  return ab == cb && a0 < c0 + cn && c0 < a0 + an;
}

/* Whether the bytes of f32 tensors a and c meet. */
static int cu_f32_meet(const struct strata_tensor *a, const struct strata_tensor *c) {
  return cu_meet(a->buf, a->offset, (uint64_t)a->ne[0] * a->ne[1] * 4, c->buf, c->offset,
                 (uint64_t)c->ne[0] * c->ne[1] * 4);
}

/* Checks weight w, x and out of one product (out apart from both). */
static int cu_matmul_views(struct strata_backend *b, const struct strata_tensor *w,
                           const struct strata_tensor *x, struct strata_tensor *out,
                           const void **wd, size_t *rb, const float **xd, float **od) {
  *wd = cu_view_of(b, w, "matmul weight", rb, 1);
  *xd = *wd ? cu_f32(b, x, "matmul x", w->ne[0], -1) : NULL;
  *od = *xd ? cu_f32(b, out, "matmul out", w->ne[1], x->ne[1]) : NULL;
  if (!*od) return -1;
  if (cu_f32_meet(out, x) ||
      cu_meet(out->buf, out->offset, (uint64_t)out->ne[0] * out->ne[1] * 4, w->buf, w->offset,
              (uint64_t)*rb * w->ne[1]))
    return cu_fail(b, "matmul: out overlaps an input");
  return 0;
}

static int cu_matmul(strata_backend_t *b, const struct strata_tensor *w,
                     const struct strata_tensor *x, struct strata_tensor *out) {
  if (!b || cu_enter(b)) return -1;
  const void *wd;
  size_t rb;
  const float *xd;
  float *od;
  if (cu_matmul_views(b, w, x, out, &wd, &rb, &xd, &od)) return -1;
  struct cu_xdone done = {0, 0};
  return cu_matmul_one(b, w, wd, rb, xd, x->ne[1], od, &done);
}

/* Up to 4 weights on one x: its quantization (or rounding for cuBLAS) is
 * made once for all of them (Q, K and V; gate and up). */
static int cu_matmul_n(strata_backend_t *b, int n, const struct strata_tensor *const *w,
                       const struct strata_tensor *x, struct strata_tensor *const *out) {
  if (!b || cu_enter(b)) return -1;
  if (n < 1 || n > 4 || !w || !out) return cu_fail(b, "matmul: %d weights (1 to 4)", n);
  const void *wd[4];
  size_t rb[4];
  const float *xd = NULL;
  float *od[4];
  for (int i = 0; i < n; i++) {
    if (!w[i] || !out[i]) return cu_fail(b, "matmul: weight or output %d missing", i);
    if (w[i]->ne[0] != w[0]->ne[0])
      return cu_fail(b, "matmul: weight %d has rows of %lld, weight 0 of %lld", i,
                     (long long)w[i]->ne[0], (long long)w[0]->ne[0]);
    if (cu_matmul_views(b, w[i], x, out[i], &wd[i], &rb[i], &xd, &od[i])) return -1;
    for (int j = 0; j < i; j++)
      if (cu_f32_meet(out[i], out[j])) return cu_fail(b, "matmul: outputs %d and %d overlap", j, i);
  }
  /* an output written before a later weight is read must not be that weight */
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++)
      if (cu_meet(out[i]->buf, out[i]->offset, (uint64_t)out[i]->ne[0] * out[i]->ne[1] * 4,
                  w[j]->buf, w[j]->offset, (uint64_t)rb[j] * w[j]->ne[1]))
        return cu_fail(b, "matmul: output %d overlaps weight %d", i, j);
  struct cu_xdone done = {0, 0};
  for (int i = 0; i < n; i++)
    if (cu_matmul_one(b, w[i], wd[i], rb[i], xd, x->ne[1], od[i], &done)) return -1;
  return 0;
}

/* q8_0/q4_0 matrices of CU_SPLIT_MIN elements and more into the split
 * layout, in a buffer of their own (the same bytes in all). */
static int cu_prepare_weight(strata_backend_t *b, const struct strata_tensor *w,
                             struct strata_tensor *out) {
  if (!b || cu_enter(b)) return -1;
  if (!w || !out) return cu_fail(b, "prepare_weight: no tensor");
  if ((w->type != STRATA_TYPE_Q8_0 && w->type != STRATA_TYPE_Q4_0) ||
      w->ne[0] * w->ne[1] < CU_SPLIT_MIN)
    return 0;
  size_t rb;
  const void *wd = cu_view(b, w, "prepare_weight", &rb);
  if (!wd) return -1;
  if (w->ne[0] > 0x3fffffff) return cu_fail(b, "prepare_weight: rows of %lld", (long long)w->ne[0]);
  strata_buf_t *buf = cu_buf_alloc(b, (uint64_t)rb * (uint64_t)w->ne[1]);
  if (!buf) return -1;
  if (kc_split_q(b->stream, w->type, wd, rb, w->ne[0], w->ne[1], buf->dev, b->err,
                 sizeof b->err) != 0) {
    cu_buf_free(b, buf);
    return -1;
  }
  *out = (struct strata_tensor){.buf = buf, .offset = 0, .type = CU_SPLIT(w->type),
                                .ne = {w->ne[0], w->ne[1]}};
  return 1;
}

static int cu_add_bias(strata_backend_t *b, struct strata_tensor *x,
                       const struct strata_tensor *bias) {
  if (!b || cu_enter(b)) return -1;
  float *xd = cu_f32(b, x, "add_bias x", -1, -1);
  const float *bd = xd ? cu_f32(b, bias, "add_bias bias", x->ne[0], 1) : NULL;
  if (!bd) return -1;
  return kc_add_bias(b->stream, xd, bd, x->ne[0], x->ne[1], b->err, sizeof b->err);
}

static int cu_rope(strata_backend_t *b, struct strata_tensor *x, int n_heads, int head_dim,
                   const struct strata_rope *r) {
  if (!b || cu_enter(b) || cu_need_batch(b, "rope")) return -1;
  if (!r) return cu_fail(b, "rope: no parameters");
  if (n_heads <= 0 || head_dim <= 0) return cu_fail(b, "rope: %d heads of %d", n_heads, head_dim);
  if (r->n_dims <= 0 || r->n_dims > head_dim || r->n_dims % 2 != 0)
    return cu_fail(b, "rope: n_dims %d (must be even, 2..head_dim %d)", r->n_dims, head_dim);
  if (!(r->theta > 0.0f) || !(r->freq_scale == r->freq_scale))
    return cu_fail(b, "rope: theta %g, freq_scale %g", (double)r->theta, (double)r->freq_scale);
  float *xd = cu_f32(b, x, "rope x", (int64_t)n_heads * head_dim, b->batch.n_tokens);
  if (!xd) return -1;
  if (b->batch.n_tokens > 0 && !b->batch.positions)
    return cu_fail(b, "rope: the batch has no positions");
  return kc_rope(b->stream, xd, b->d_positions, b->batch.n_tokens, n_heads, head_dim, r->theta,
                 r->freq_scale, r->neox, r->n_dims, b->err, sizeof b->err);
}

static int cu_kv_store(strata_backend_t *b, const struct strata_tensor *k,
                       const struct strata_tensor *v, struct strata_tensor *k_cache,
                       struct strata_tensor *v_cache) {
  if (!b || cu_enter(b) || cu_need_batch(b, "kv_store")) return -1;
  const struct strata_batch *B = &b->batch;
  const float *kd = cu_f32(b, k, "kv_store k", -1, B->n_tokens);
  const float *vd = kd ? cu_f32(b, v, "kv_store v", k->ne[0], B->n_tokens) : NULL;
  void *kc = vd ? cu_view(b, k_cache, "kv_store k_cache", NULL) : NULL;
  void *vc = kc ? cu_view(b, v_cache, "kv_store v_cache", NULL) : NULL;
  if (!vc) return -1;
  const struct strata_tensor *caches[2] = {k_cache, v_cache};
  for (int i = 0; i < 2; i++) {
    if (caches[i]->type != STRATA_TYPE_F32 && caches[i]->type != STRATA_TYPE_F16)
      return cu_fail(b, "kv_store: cache type %s (f32 or f16 only)",
                     cu_type_name(caches[i]->type));
    if (caches[i]->ne[0] != k->ne[0])
      return cu_fail(b, "kv_store: cache rows of %lld, k/v rows of %lld",
                     (long long)caches[i]->ne[0], (long long)k->ne[0]);
  }
  if (B->n_tokens > 0 && !B->slots) return cu_fail(b, "kv_store: the batch has no slots");
  for (int32_t t = 0; t < B->n_tokens; t++)
    if (B->slots[t] < 0 || B->slots[t] >= k_cache->ne[1] || B->slots[t] >= v_cache->ne[1])
      return cu_fail(b, "kv_store: token %d has slot %d, the cache has %lld rows", t,
                     B->slots[t], (long long)k_cache->ne[1]);
  return kc_kv_store(b->stream, kd, vd, k->ne[0], b->d_slots, B->n_tokens, kc, k_cache->type,
                     vc, v_cache->type, b->err, sizeof b->err);
}

static int cu_attention(strata_backend_t *b, const struct strata_tensor *q,
                        const struct strata_tensor *k_cache, const struct strata_tensor *v_cache,
                        const struct strata_attention *a, struct strata_tensor *out) {
  if (!b || cu_enter(b) || cu_need_batch(b, "attention")) return -1;
  const struct strata_batch *B = &b->batch;
  if (!a) return cu_fail(b, "attention: no parameters");
  if (a->n_heads <= 0 || a->n_kv_heads <= 0 || a->head_dim <= 0 ||
      a->n_heads % a->n_kv_heads != 0)
    return cu_fail(b, "attention: %d heads, %d kv heads of %d", a->n_heads, a->n_kv_heads,
                   a->head_dim);
  const int64_t qd = (int64_t)a->n_heads * a->head_dim, kvd = (int64_t)a->n_kv_heads * a->head_dim;
  const float *qp = cu_f32(b, q, "attention q", qd, B->n_tokens);
  const void *kc = qp ? cu_view(b, k_cache, "attention k_cache", NULL) : NULL;
  const void *vc = kc ? cu_view(b, v_cache, "attention v_cache", NULL) : NULL;
  float *op = vc ? cu_f32(b, out, "attention out", qd, B->n_tokens) : NULL;
  if (!op) return -1;
  if (k_cache->ne[0] != kvd || v_cache->ne[0] != kvd)
    return cu_fail(b, "attention: cache rows of %lld/%lld, expected %lld",
                   (long long)k_cache->ne[0], (long long)v_cache->ne[0], (long long)kvd);
  if (B->n_tokens > 0 && B->n_seqs <= 0)
    return cu_fail(b, "attention: the batch has tokens but no sequences");
  if (B->n_tokens > 0 && !B->positions)
    return cu_fail(b, "attention: the batch has no positions");
  /* every block a sequence's positions map to must be a row range of both caches */
  const int64_t rows = k_cache->ne[1] < v_cache->ne[1] ? k_cache->ne[1] : v_cache->ne[1];
  for (int32_t s = 0; s < B->n_seqs; s++) {
    const int32_t used = (B->seq_len[s] + B->block_size - 1) / B->block_size;
    for (int32_t k = 0; k < used; k++)
      if (((int64_t)B->block_tables[(int64_t)s * B->max_blocks + k] + 1) * B->block_size > rows)
        return cu_fail(b, "attention: sequence %d's block %d is past the cache's %lld rows", s,
                       k, (long long)rows);
  }
  int32_t max_len = 0;
  for (int32_t s = 0; s < B->n_seqs; s++) max_len = B->seq_len[s] > max_len ? B->seq_len[s] : max_len;
  const struct kc_batch kb = {B->n_tokens,   b->d_positions, b->d_seq_of, b->d_block_tables,
                              B->max_blocks, B->block_size,  b->d_tiles,  b->n_tiles,
                              b->max_tile,   max_len};
  const size_t ws = kc_attention_workspace(&kb, a->n_heads, a->n_kv_heads, a->head_dim, b->sm_count);
  if (cu_grow(b, &b->d_attn_ws, &b->attn_ws_cap, ws, "attention workspace")) return -1;
  return kc_attention(b->stream, &kb, qp, kc, k_cache->type, vc, v_cache->type, a->n_heads,
                      a->n_kv_heads, a->head_dim, a->scale, b->sm_count, b->d_attn_ws, op, b->err,
                      sizeof b->err);
}

static int cu_swiglu(strata_backend_t *b, const struct strata_tensor *gate,
                     const struct strata_tensor *up, struct strata_tensor *out) {
  if (!b || cu_enter(b)) return -1;
  const float *gd = cu_f32(b, gate, "swiglu gate", -1, -1);
  const float *ud = gd ? cu_f32(b, up, "swiglu up", gate->ne[0], gate->ne[1]) : NULL;
  float *od = ud ? cu_f32(b, out, "swiglu out", gate->ne[0], gate->ne[1]) : NULL;
  if (!od) return -1;
  return kc_swiglu(b->stream, gd, ud, od, gate->ne[0] * gate->ne[1], b->err, sizeof b->err);
}

static int cu_add(strata_backend_t *b, const struct strata_tensor *a,
                  const struct strata_tensor *c, struct strata_tensor *out) {
  if (!b || cu_enter(b)) return -1;
  const float *ad = cu_f32(b, a, "add a", -1, -1);
  const float *cd = ad ? cu_f32(b, c, "add c", a->ne[0], a->ne[1]) : NULL;
  float *od = cd ? cu_f32(b, out, "add out", a->ne[0], a->ne[1]) : NULL;
  if (!od) return -1;
  return kc_add(b->stream, ad, cd, od, a->ne[0] * a->ne[1], b->err, sizeof b->err);
}

static int cu_get_rows(strata_backend_t *b, const struct strata_tensor *x,
                       struct strata_tensor *out) {
  if (!b || cu_enter(b) || cu_need_batch(b, "get_rows")) return -1;
  const struct strata_batch *B = &b->batch;
  const float *xd = cu_f32(b, x, "get_rows x", -1, -1);
  float *od = xd ? cu_f32(b, out, "get_rows out", x->ne[0], B->n_out) : NULL;
  if (!od) return -1;
  for (int32_t j = 0; j < B->n_out; j++)
    if (B->out_rows[j] >= x->ne[1])
      return cu_fail(b, "get_rows: out_rows[%d] = %d, x has %lld rows", j, B->out_rows[j],
                     (long long)x->ne[1]);
  if (cu_f32_meet(x, out)) return cu_fail(b, "get_rows: out overlaps x");
  return kc_get_rows(b->stream, xd, x->ne[0], b->d_out_rows, B->n_out, od, b->err,
                     sizeof b->err);
}

static const struct strata_backend_vtable cu_vtable = {
    .size = sizeof(struct strata_backend_vtable),
    .n_devices = cu_n_devices,
    .device_info = cu_device_info,
    .open = cu_open,
    .close = cu_close,
    .last_error = cu_last_error,
    .supports_type = cu_supports_type,
    .buf_alloc = cu_buf_alloc,
    .buf_wrap_host = NULL,
    .buf_free = cu_buf_free,
    .upload = cu_upload,
    .download = cu_download,
    .synchronize = cu_synchronize,
    .set_batch = cu_set_batch,
    .embed = cu_embed,
    .rmsnorm = cu_rmsnorm,
    .matmul = cu_matmul,
    .add_bias = cu_add_bias,
    .rope = cu_rope,
    .kv_store = cu_kv_store,
    .attention = cu_attention,
    .swiglu = cu_swiglu,
    .add = cu_add,
    .get_rows = cu_get_rows,
    .prepare_weight = cu_prepare_weight,
    .matmul_n = cu_matmul_n,
};

static int cu_init(const struct strata_host_api *host, const strata_config_node_t *cfg,
                   char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  cu_host = host;
  const int cfgd = cfg && host && host->config_int;
  cu_cfg_gemm_min = cfgd ? host->config_int(cfg, "gemm_min_tokens") : 32;
  cu_cfg_gemm_slice = cfgd ? host->config_int(cfg, "gemm_slice_weights") : (int64_t)1 << 24;
  return 0;
}

static const struct strata_param cu_params[] = {
    {.name = "gemm_min_tokens", .type = STRATA_PARAM_INT, .required = 0, .defval = "32",
     .min = 0, .max = 1 << 30,
     .help = "matmuls of this many tokens and more go through cuBLAS (f16 tensor cores; q8_0/"
             "q4_0 dequantized to f16), fewer through the kernels; 0: never cuBLAS"},
    {.name = "gemm_slice_weights", .type = STRATA_PARAM_INT, .required = 0,
     .defval = "16777216", .min = 1, .max = (double)((int64_t)1 << 34),
     .help = "a q8_0/q4_0 GEMM dequantizes this many weights at a time (f16: twice as many "
             "bytes of device memory), then multiplies them"},
    {.name = NULL, .type = STRATA_PARAM_END},
};

static const struct strata_plugin_desc cu_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_BACKEND,
    .name = CU_NAME,
    .version = "0.1",
    .license = "MIT",
#if defined(STRATA_EMU)
    .description = "tests only: the cuda backend with its kernels emulated on the CPU",
#elif defined(STRATA_HIP)
    .description = "AMD GPU (HIP, " STRATA_HIP_ARCHS "): the cuda backend's kernels built by "
                   "hipcc",
#else
    .description = "NVIDIA GPU (CUDA, sm_80 and up): paged attention, q8_0/q4_0 integer "
                   "matmul on 8-bit activations, f16/bf16/f32 matmul",
#endif
    .params = cu_params,
    .init = cu_init,
    .fini = NULL,
    .vt.backend = &cu_vtable,
};

STRATA_PLUGIN_DEFINE(cu_desc)
