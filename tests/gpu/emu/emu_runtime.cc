/* The CPU emulation of the CUDA runtime and of kernel launches (see
 * cuda_emu.h and cuda_emu_runtime.h). */
/* the coroutines' _longjmp goes to another stack, which the fortified
 * longjmp refuses */
#undef _FORTIFY_SOURCE
#include "cuda_emu.h"

#include <setjmp.h>
#include <stdlib.h>
#include <ucontext.h>

#include <vector>

thread_local dim3 threadIdx;
dim3 blockIdx, blockDim, gridDim;
alignas(64) unsigned char emu_dyn_smem[64 * 1024]; /* AMD's LDS; CUDA's default is 48 KiB */

/* A block's threads are coroutines (ucontext) on the calling thread, run
 * round-robin: each runs until it waits at a barrier (__syncthreads, or a
 * warp's for a shuffle) or returns. OS threads with real barriers cost a
 * futex and a reschedule per wait: minutes for what this does in seconds.
 * swapcontext also saves the signal mask, a system call per switch (half
 * the time); without sanitizers a coroutine is entered once by
 * swapcontext and switched afterwards by _setjmp/_longjmp. The sanitizers
 * follow swapcontext (they intercept it), not a longjmp to another stack. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EMU_FAST 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define EMU_FAST 0
#endif
#endif
#ifndef EMU_FAST
#define EMU_FAST 1
#endif

namespace {

cudaError_t last_error = cudaSuccess;

struct cbarrier {
  int alive = 0, waiting = 0;
  unsigned long gen = 0;
};

struct coro {
  ucontext_t ctx;
  jmp_buf jb;      /* EMU_FAST: where it yielded (or finished, to run again) */
  int started = 0; /* EMU_FAST: its context made and entered, once for good */
  char *stack = nullptr;
  int done = 0;
  const cbarrier *bar = nullptr; /* waiting at, or null */
  unsigned long gen = 0;         /* bar's generation when it arrived */
};

const size_t STACK = 256 * 1024;
std::vector<coro> th;
ucontext_t sched;
jmp_buf sched_jb;
int cur;
cbarrier block_bar, warp_bar[32];
uint64_t xbuf[32][32]; /* a shuffle's values, per warp and lane */
void (*g_body)(void *);
void *g_ctx;

void arrive(cbarrier &b) {
  if (++b.waiting >= b.alive) { /* the last: everyone goes on */
    b.waiting = 0;
    b.gen++;
    return;
  }
  coro &c = th[(size_t)cur];
  c.bar = &b;
  c.gen = b.gen;
#if EMU_FAST
  if (!_setjmp(c.jb)) _longjmp(sched_jb, 1);
#else
  swapcontext(&c.ctx, &sched);
#endif
}

void leave(cbarrier &b) {
  b.alive--;
  if (b.waiting > 0 && b.waiting >= b.alive) {
    b.waiting = 0;
    b.gen++;
  }
}

#if EMU_FAST
/* Runs thread id of every block from now on: making a context costs a
 * system call (getcontext), so each is made once and loops. */
void trampoline(int id) {
  for (;;) {
    g_body(g_ctx);
    leave(block_bar);
    leave(warp_bar[id >> 5]);
    th[(size_t)id].done = 1;
    if (!_setjmp(th[(size_t)id].jb)) _longjmp(sched_jb, 1);
  }
}
#else
void trampoline(int id) {
  g_body(g_ctx);
  leave(block_bar);
  leave(warp_bar[id >> 5]);
  th[(size_t)id].done = 1;
} /* back to the scheduler through uc_link */
#endif

/* Runs c until it yields or returns. Its own frame: nothing of the
 * scheduler's is live across the _setjmp. */
__attribute__((noinline)) void enter(coro *c) {
#if EMU_FAST
  if (!_setjmp(sched_jb)) {
    if (!c->started) {
      c->started = 1;
      swapcontext(&sched, &c->ctx);
    } else {
      _longjmp(c->jb, 1);
    }
  }
#else
  swapcontext(&sched, &c->ctx);
#endif
}

void run_block(int n) {
  while (th.size() < (size_t)n) {
    th.emplace_back();
    th.back().stack = static_cast<char *>(malloc(STACK));
    if (!th.back().stack) {
      fprintf(stderr, "emu: out of memory for thread stacks\n");
      abort();
    }
  }
  block_bar = cbarrier{n, 0, 0};
  for (int w = 0; w * 32 < n; w++) warp_bar[w] = cbarrier{n - w * 32 < 32 ? n - w * 32 : 32, 0, 0};
  for (int t = 0; t < n; t++) {
    coro &c = th[(size_t)t];
    if (!EMU_FAST || !c.started) {
      getcontext(&c.ctx);
      c.ctx.uc_stack.ss_sp = c.stack;
      c.ctx.uc_stack.ss_size = STACK;
      c.ctx.uc_link = &sched;
      makecontext(&c.ctx, (void (*)())trampoline, 1, t);
    }
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
  *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
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

} // extern "C"
