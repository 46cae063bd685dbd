/* strata plugin SDK: run-time CPU feature selection for plugins that carry
 * SIMD code (quant kernels, the cpu backend).
 *
 * strata's SIMD code comes in three tiers: portable C, AVX2 (with FMA and
 * F16C, which every AVX2 CPU has) and AVX-512 (F, BW and VL; VNNI reported
 * on its own). A plugin picks its tier once, when it is loaded, from what
 * the CPU offers, capped by the environment variable STRATA_CPU_FEATURES:
 * "scalar", "avx2" or "avx512" (unset or anything else: no cap). The cap lets
 * tests run every path on one machine and forces portable code wherever that
 * is wanted (valgrind hides AVX-512 anyway). */
#ifndef STRATA_CPU_H
#define STRATA_CPU_H

#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__clang__)
#include <cpuid.h>
#endif

struct strata_cpu_features {
  int avx2;        /* AVX2 + FMA + F16C */
  int avx512;      /* AVX-512 F + BW + VL (implies avx2) */
  int avx512_vnni; /* AVX-512 VNNI (implies avx512) */
};

/* What this CPU offers, capped by STRATA_CPU_FEATURES. */
static inline struct strata_cpu_features strata_cpu_detect(void) {
  struct strata_cpu_features f = {0, 0, 0};
#if defined(__x86_64__)
  __builtin_cpu_init(); /* constructors may run before libgcc's own */
#if defined(__clang__)
  /* clang's __builtin_cpu_supports has no "f16c": CPUID leaf 1, ECX bit 29 */
  unsigned a = 0, b = 0, c = 0, d = 0;
  const int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
#else
  const int f16c = __builtin_cpu_supports("f16c");
#endif
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
  f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
#endif
  const char *cap = getenv("STRATA_CPU_FEATURES");
  if (cap && (strcmp(cap, "scalar") == 0 || strcmp(cap, "avx2") == 0)) {
    f.avx512 = f.avx512_vnni = 0;
    if (strcmp(cap, "scalar") == 0) f.avx2 = 0;
  }
  return f;
}

#endif
