/* Memory read bandwidth of this machine, measured: the roofline of a
 * memory-bound decode step (`strata bench`, tests/bench/bench_matmul). */
#ifndef STRATA_MEMBW_H
#define STRATA_MEMBW_H

#include <stddef.h>
#include <stdint.h>

/* Best of `passes` passes of `threads` threads summing buf[0 .. bytes)
 * (64-byte aligned, pages already touched), in bytes/s. simd = 0: a plain C
 * loop; 1: 256-bit loads where the CPU has AVX2 (a core keeps more misses in
 * flight that way, as a SIMD matvec does). */
double strata_read_bandwidth_of(const uint64_t *buf, size_t bytes, int threads, int simd, int passes);

/* The roofline bandwidth: the larger of both loops over a fresh buffer of
 * `bytes` (0 when it cannot be allocated). */
double strata_read_bandwidth(size_t bytes, int threads);

#endif
