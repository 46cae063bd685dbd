/* The CPU emulation of the CUDA runtime and of kernel launches (see
 * cuda_emu.h and cuda_emu_runtime.h). */
#include "cuda_emu.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <vector>

thread_local dim3 threadIdx;
dim3 blockIdx, blockDim, gridDim;
alignas(64) unsigned char emu_dyn_smem[64 * 1024]; /* AMD's LDS; CUDA's default is 48 KiB */

/* A block's threads are coroutines on the calling thread, run round-robin:
 * each runs until it waits at a barrier (__syncthreads, or a warp's for a
 * shuffle) or returns. OS threads with real barriers cost a futex and a
 * reschedule per wait: minutes for what this does in seconds.
 *
 * On x86-64 a switch is emu_swap below: the callee-saved registers pushed,
 * the stack pointer exchanged, the registers popped (what Boost.Context
 * does; a C11 test cannot take Boost). swapcontext instead saves the
 * signal mask, a system call per switch, and _longjmp to another stack is
 * a no-return call to AddressSanitizer, which then clears the shadow of
 * the rest of the stack and asks sigaltstack: a test of five seconds took
 * minutes. AddressSanitizer is told of each switch through its fiber
 * annotations (EMU_LEAVING, EMU_ARRIVED). Elsewhere, and under
 * ThreadSanitizer (whose fibers want their own annotations), every switch
 * is a swapcontext. */
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define EMU_SWAP 1
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#undef EMU_SWAP
#define EMU_SWAP 0
#endif
#endif
#else
#define EMU_SWAP 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#if EMU_SWAP && defined(EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
/* Before leaving a stack for another: the other's bounds, and where to
 * keep this one's fake stack; on arriving: that keeping, and where to
 * learn the bounds of the stack just left. */
#define EMU_LEAVING(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define EMU_ARRIVED(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define EMU_LEAVING(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define EMU_ARRIVED(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#endif

#if EMU_SWAP
/* emu_swap(&from_sp, to_sp): saves the callee-saved registers of the
 * System V ABI (with MXCSR and the x87 control word) on this stack, stores
 * the stack pointer in *from_sp, and resumes the stack to_sp, which an
 * emu_swap left, or which run_block laid out the same way. */
extern "C" void emu_swap(void **from_sp, void *to_sp);
asm(".text\n"
    ".p2align 4\n"
    ".type emu_swap, @function\n"
    "emu_swap:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size emu_swap, .-emu_swap\n");
#endif

namespace {

cudaError_t last_error = cudaSuccess;

struct cbarrier {
  int alive = 0, waiting = 0;
  unsigned long gen = 0;
};

struct coro {
#if EMU_SWAP
  void *sp = nullptr; /* where it left off: see emu_swap */
#else
  ucontext_t ctx;
#endif
  int started = 0; /* EMU_SWAP: its stack laid out, the loop entered */
  char *stack = nullptr;
  int done = 0;
  const cbarrier *bar = nullptr; /* waiting at, or null */
  unsigned long gen = 0;         /* bar's generation when it arrived */
};

const size_t STACK = 256 * 1024;
std::vector<coro> th;
#if EMU_SWAP
void *sched_sp;
const void *sched_bottom; /* the scheduler's stack, for EMU_LEAVING */
size_t sched_size;
#else
ucontext_t sched;
#endif
int cur;
cbarrier block_bar, warp_bar[32];
uint64_t xbuf[32][32]; /* a shuffle's values, per warp and lane */
void (*g_body)(void *);
void *g_ctx;

/* From coroutine c back to the scheduler, until it enters c again. */
void yield(coro &c) {
#if EMU_SWAP
  void *fake = nullptr;
  EMU_LEAVING(&fake, sched_bottom, sched_size);
  emu_swap(&c.sp, sched_sp);
  EMU_ARRIVED(fake, &sched_bottom, &sched_size);
#else
  swapcontext(&c.ctx, &sched);
#endif
}

void arrive(cbarrier &b) {
  if (++b.waiting >= b.alive) { /* the last: everyone goes on */
    b.waiting = 0;
    b.gen++;
    return;
  }
  coro &c = th[(size_t)cur];
  c.bar = &b;
  c.gen = b.gen;
  yield(c);
}

void leave(cbarrier &b) {
  b.alive--;
  if (b.waiting > 0 && b.waiting >= b.alive) {
    b.waiting = 0;
    b.gen++;
  }
}

void finish(int id) {
  leave(block_bar);
  leave(warp_bar[id >> 5]);
  th[(size_t)id].done = 1;
}

#if EMU_SWAP
/* The first entry into a coroutine (its id in cur): runs thread id of
 * every block from then on, so that a stack is laid out once. */
[[noreturn]] void coro_main(void) {
  const int id = cur;
  EMU_ARRIVED(nullptr, &sched_bottom, &sched_size);
  for (;;) {
    g_body(g_ctx);
    finish(id);
    yield(th[(size_t)id]);
  }
}

/* A stack that emu_swap resumes into coro_main: the register slots (MXCSR
 * and x87 control word at their defaults), coro_main's address for the
 * ret, and an empty return address, so that coro_main starts with the
 * stack aligned as after a call. */
void *lay_out(char *stack) {
  uintptr_t top = ((uintptr_t)(stack + STACK)) & ~(uintptr_t)15;
  void **sp = reinterpret_cast<void **>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void *>(&coro_main);
  for (int r = 0; r < 6; r++) *--sp = nullptr; /* rbp rbx r12 r13 r14 r15 */
  const uint64_t csr = 0x1f80u | ((uint64_t)0x037fu << 32);
  *--sp = reinterpret_cast<void *>(csr);
  return sp;
}
#else
void trampoline(int id) {
  g_body(g_ctx);
  finish(id);
} /* back to the scheduler through uc_link */
#endif

/* Runs c until it yields or returns. */
void enter(coro *c) {
#if EMU_SWAP
  void *fake = nullptr;
  EMU_LEAVING(&fake, c->stack, STACK);
  emu_swap(&sched_sp, c->sp);
  EMU_ARRIVED(fake, nullptr, nullptr);
#else
  swapcontext(&sched, &c->ctx);
#endif
}

void run_block(int n) {
  while (th.size() < (size_t)n) {
    th.emplace_back();
    /* mapped, not malloc'd: kept for the process's life, and LeakSanitizer
     * (which scans neither these stacks nor swapped-out contexts well) need
     * not see them */
    void *st = mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                    -1, 0);
    if (st == MAP_FAILED) {
      fprintf(stderr, "emu: out of memory for thread stacks\n");
      abort();
    }
    th.back().stack = static_cast<char *>(st);
  }
  block_bar = cbarrier{n, 0, 0};
  for (int w = 0; w * 32 < n; w++) warp_bar[w] = cbarrier{n - w * 32 < 32 ? n - w * 32 : 32, 0, 0};
  for (int t = 0; t < n; t++) {
    coro &c = th[(size_t)t];
#if EMU_SWAP
    if (!c.started) {
      c.sp = lay_out(c.stack);
      c.started = 1;
    }
#else
    getcontext(&c.ctx);
    c.ctx.uc_stack.ss_sp = c.stack;
    c.ctx.uc_stack.ss_size = STACK;
    c.ctx.uc_link = &sched;
    makecontext(&c.ctx, (void (*)())trampoline, 1, t);
#endif
    c.done = 0;
    c.bar = nullptr;
  }
  for (int left = n; left > 0;) {
    int ran = 0;
    for (int t = 0; t < n; t++) {
      coro &c = th[(size_t)t];
      if (c.done || (c.bar && c.bar->gen == c.gen)) continue;
      c.bar = nullptr;
      cur = t;
      threadIdx = dim3((unsigned)t); /* one OS thread runs them all */
      enter(&c);
      ran = 1;
      if (c.done) left--;
    }
    if (!ran) {
      fprintf(stderr, "emu: block (%u, %u, %u): every thread waits at a barrier the others "
                      "never reach (a kernel bug)\n", blockIdx.x, blockIdx.y, blockIdx.z);
      abort();
    }
  }
}

} // namespace

void emu_syncthreads(void) { arrive(block_bar); }

void emu_shfl(const void *v, void *out, size_t n, int src_lane) {
  const int lane = (int)(threadIdx.x & 31), w = (int)(threadIdx.x >> 5);
  memcpy(&xbuf[w][lane], v, n);
  arrive(warp_bar[w]);
  memcpy(out, &xbuf[w][src_lane & 31], n);
  arrive(warp_bar[w]);
}

void emu_run(dim3 grid, dim3 block, size_t smem, void (*body)(void *), void *ctx) {
  if (smem > sizeof emu_dyn_smem || block.x < 1 || block.x > 1024 || block.y != 1 ||
      block.z != 1 || grid.x < 1 || grid.y < 1 || grid.z < 1) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  gridDim = grid;
  blockDim = block;
  g_body = body;
  g_ctx = ctx;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        blockIdx = dim3(x, y, z);
        run_block((int)block.x);
      }
}

/* ---- the runtime ---- */

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
  case cudaSuccess: return "no error";
  case cudaErrorInvalidConfiguration: return "invalid launch configuration (emulator)";
  case cudaErrorMemoryAllocation: return "out of memory (emulator)";
  default: return "unknown error (emulator)";
  }
}

cudaError_t cudaGetDeviceCount(int *n) {
  *n = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int device) {
  if (device != 0) return cudaErrorInvalidConfiguration;
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "CPU emulation");
  p->major = 9;
  p->minor = 0;
  p->totalGlobalMem = (size_t)4 << 30;
  p->multiProcessorCount = 4;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version) {
  *version = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
  *free_bytes = *total_bytes = (size_t)4 << 30;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
  /* exactly the bytes asked for, so that AddressSanitizer sees a kernel
   * that reads or writes past them (a GPU would round up to 256 bytes and
   * say nothing) */
  if (posix_memalign(p, 256, bytes ? bytes : 1)) *p = nullptr;
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void *p) {
  free(p);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  (void)kind;
  (void)stream;
  memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
  (void)flags;
  static int the_stream;
  *stream = &the_stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  (void)stream;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  (void)stream;
  return cudaSuccess;
}

/* cuBLAS's GEMM in plain loops (column-major, as cuBLAS): C = alpha
 * op(A) op(B) + beta C, float sums. */
struct emu_cublas {
  int unused;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle) {
  *handle = static_cast<cublasHandle_t>(calloc(1, sizeof(emu_cublas)));
  return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  free(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  (void)handle;
  (void)stream;
  return CUBLAS_STATUS_SUCCESS;
}

static float emu_elem(const void *p, cudaDataType t, size_t i) {
  switch (t) {
  case CUDA_R_32F: return static_cast<const float *>(p)[i];
  case CUDA_R_16F: return strata_fp16_to_fp32(static_cast<const uint16_t *>(p)[i]);
  default: return strata_bf16_to_fp32(static_cast<const uint16_t *>(p)[i]);
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha,
                            const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo) {
  (void)algo;
  const auto known = [](cudaDataType t) {
    return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF;
  };
  if (!handle || Atype != Btype || !known(Atype) || Ctype != CUDA_R_32F ||
      computeType != CUBLAS_COMPUTE_32F || m < 0 || n < 0 || k < 0 ||
      lda < (transa == CUBLAS_OP_N ? m : k) || ldb < (transb == CUBLAS_OP_N ? k : n) || ldc < m)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const float al = *static_cast<const float *>(alpha), be = *static_cast<const float *>(beta);
  float *c = static_cast<float *>(C);
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      float s = 0.0f;
      for (int l = 0; l < k; l++) {
        const size_t ai = transa == CUBLAS_OP_N ? (size_t)l * (size_t)lda + (size_t)i
                                                : (size_t)i * (size_t)lda + (size_t)l;
        const size_t bi = transb == CUBLAS_OP_N ? (size_t)j * (size_t)ldb + (size_t)l
                                                : (size_t)l * (size_t)ldb + (size_t)j;
        s += emu_elem(A, Atype, ai) * emu_elem(B, Btype, bi);
      }
      float &o = c[(size_t)j * (size_t)ldc + (size_t)i];
      o = al * s + (be != 0.0f ? be * o : 0.0f);
    }
  return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
