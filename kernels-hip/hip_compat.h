/* The CUDA names kernels-cuda/ and plugins/backend/cuda use, mapped to
 * HIP's, so that one source builds for both: hipcc compiles
 * kernels-cuda/kernels.cu with this header, gcc the plugin. Only what those
 * sources use is here.
 *
 * Wavefronts: the kernels reduce in groups of 32 lanes (a CUDA warp). On a
 * 64-lane wavefront (gfx9 data-centre parts) __shfl_xor with width 32 keeps
 * each reduction inside its half, which is what the kernels' indexing
 * (lane = threadIdx.x & 31, group = threadIdx.x >> 5) assumes; on 32-lane
 * RDNA parts the two agree. */
#ifndef STRATA_HIP_COMPAT_H
#define STRATA_HIP_COMPAT_H

#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__ 1
#endif
#ifdef __HIPCC__
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
/* CUDA's masked shuffle: every lane of the 32-lane group takes part */
#define __shfl_xor_sync(mask, v, o) __shfl_xor((v), (o), 32)
#else
#include <hip/hip_runtime_api.h>
#endif

#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaStream_t hipStream_t
#define cudaGetLastError hipGetLastError
#define cudaGetErrorString hipGetErrorString
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaDeviceProp hipDeviceProp_t
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDriverGetVersion hipDriverGetVersion
#define cudaSetDevice hipSetDevice
#define cudaMemGetInfo hipMemGetInfo
#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaStreamCreateWithFlags hipStreamCreateWithFlags
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaStreamDestroy hipStreamDestroy

#endif
