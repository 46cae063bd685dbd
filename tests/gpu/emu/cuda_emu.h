/* The CUDA the kernels of kernels-cuda/kernels.cu use, emulated on the CPU,
 * so that the tests run every kernel, through the cuda plugin's own code,
 * on machines without a GPU (tests/gpu/test_backend_emu: the GPU op tests
 * against the cpu backend). It checks the kernels' indexing, tiling,
 * synchronization and arithmetic, not their speed, nor anything a real
 * device adds (memory model, occupancy, the compiler's code).
 *
 * A launch runs its blocks one after another; a block is blockDim.x
 * threads (std::thread), so __syncthreads() is a real barrier and
 * __shfl_xor_sync a real exchange among the 32 lanes of a warp. A thread
 * that returns early leaves the barriers (as on a device, where the
 * remaining threads' barriers then count only them). __shared__ variables
 * are statics (blocks never overlap); dynamic shared memory is one buffer.
 * Device memory is host memory (emu_runtime.cc). Compiled as C++17 by the
 * host compiler, kernels.cu included by kernels_emu.cc. */
#ifndef STRATA_CUDA_EMU_H
#define STRATA_CUDA_EMU_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <strata/fp16.h>

#include "cuda_emu_runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct int4 {
  int x, y, z, w;
};
struct float2 {
  float x, y;
};
static inline float2 make_float2(float a, float b) { return float2{a, b}; }

/* the running thread's indices; the launch's shape */
extern thread_local dim3 threadIdx;
extern dim3 blockIdx, blockDim, gridDim;
extern unsigned char emu_dyn_smem[];

void emu_syncthreads(void);
/* this lane's n bytes at v; src_lane's (of the same warp) into out */
void emu_shfl(const void *v, void *out, size_t n, int src_lane);

#define __syncthreads() emu_syncthreads()

template <typename T> static inline T emu_shfl_xor(T v, int o) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  T r;
  emu_shfl(&v, &r, sizeof v, (int)(threadIdx.x & 31) ^ o);
  return r;
}
#define __shfl_xor_sync(mask, v, o) emu_shfl_xor((v), (o))

template <typename T> static inline T __ldg(const T *p) { return *p; }

static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

static inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
}

struct __half {
  unsigned short x;
};
static inline float __half2float(__half h) { return strata_fp16_to_fp32(h.x); }
static inline __half __float2half_rn(float f) { return __half{strata_fp32_to_fp16(f)}; }
static inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
static inline unsigned short __half_as_ushort(__half h) { return h.x; }
static inline float __uint_as_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* One launch, run to completion: blocks in order, each as blockDim.x
 * threads calling the kernel. */
void emu_run(dim3 grid, dim3 block, size_t smem, void (*body)(void *), void *ctx);

template <typename... KA, typename... A>
static void emu_launch(dim3 grid, dim3 block, size_t smem, void (*kernel)(KA...), A... args) {
  auto fn = [=]() { kernel(args...); };
  using F = decltype(fn);
  emu_run(grid, block, smem, [](void *p) { (*static_cast<F *>(p))(); }, &fn);
}

#define KC_LAUNCH(grid, block, smem, stream, ...)                                         \
  [&](auto... emu_args_) {                                                                  \
    (void)(stream);                                                                         \
    emu_launch(dim3(grid), dim3(block), (size_t)(smem), __VA_ARGS__, emu_args_...);         \
  }
#define KC_DYN_SMEM(type, name) type *name = (type *)(void *)emu_dyn_smem

#endif
