/* Quant plugins f32, f16, bf16, q8_0, q4_0 and <strata/fp16.h>.
 *
 * - fp16/bf16 conversions: specials, every half and bf16 value, every
 *   rounding midpoint (ties to even), and agreement with F16C hardware;
 * - dequantize: hand-built blocks give exact floats;
 * - quantize: hand-picked inputs give exact bytes (expected values worked out
 *   by hand from llama.cpp's reference formulas), and random rows match a
 *   transcription of those formulas bit for bit;
 * - round trips on random data stay inside the format's error bound;
 * - vec_dot: exact on integer-valued data (any summation order is exact
 *   there), within a stated worst-case bound of a double-precision reference
 *   on random data, and every SIMD path agrees with the scalar one.
 *
 * Every plugin is loaded once per SIMD path: STRATA_CPU_FEATURES caps the
 * path a plugin picks when it is loaded, so the test loads a private copy of
 * the .so (a new file is a new dlopen) with the variable set. Paths the CPU
 * lacks fall back to the next lower one, so the test passes everywhere and
 * checks whatever the machine can run.
 *
 * Loops count mismatches and assert once: Check's per-assertion bookkeeping
 * is far too slow for the exhaustive loops.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <strata/fp16.h>
#include <strata/plugin.h>
#include <strata/quant.h>

#include "plugin_loader.h"
#include "testutil.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- formats and paths --------------------------------------------------- */
enum { F_F32, F_F16, F_BF16, F_Q8_0, F_Q4_0, N_FMT };

struct fmt {
  const char *name;
  uint32_t type, block, bytes, act; /* act: the activation format index */
};

static const struct fmt fmts[N_FMT] = {
    [F_F32] = {"f32", STRATA_TYPE_F32, 1, 4, F_F32},
    [F_F16] = {"f16", STRATA_TYPE_F16, 1, 2, F_F16},
    [F_BF16] = {"bf16", STRATA_TYPE_BF16, 1, 2, F_BF16},
    [F_Q8_0] = {"q8_0", STRATA_TYPE_Q8_0, 32, 34, F_Q8_0},
    [F_Q4_0] = {"q4_0", STRATA_TYPE_Q4_0, 32, 18, F_Q8_0},
};

/* Values of STRATA_CPU_FEATURES; NULL: left alone (the best path). */
enum { P_DEFAULT, P_SCALAR, P_AVX2, P_AVX512, N_PATH };
static const char *const path_names[N_PATH] = {NULL, "scalar", "avx2",
                                               "avx512"};

static const struct strata_quant_vtable *loaded[N_FMT][N_PATH];

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  ck_assert_msg(in != NULL, "cannot open %s", from);
  FILE *out = fopen(to, "wb");
  ck_assert_msg(out != NULL, "cannot create %s", to);
  char buf[65536];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, in)) > 0)
    ck_assert_uint_eq(fwrite(buf, 1, got, out), got);
  fclose(in);
  ck_assert_int_eq(fclose(out), 0);
}

static const struct strata_quant_vtable *quant(int f, int p) {
  if (loaded[f][p]) return loaded[f][p];
  const char *name = fmts[f].name;
  char so[4096], dir[] = "/tmp/strata-quant-XXXXXX", copy[4200] = "";
  snprintf(so, sizeof so, "%s/plugins/quant/%s/.libs/quant_%s.so",
           test_builddir(), name, name);
  const char *path = so;
  char *saved = NULL;
  if (path_names[p]) {
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(copy, sizeof copy, "%s/quant_%s-%s.so", dir, name, path_names[p]);
    copy_file(so, copy);
    const char *old = getenv("STRATA_CPU_FEATURES");
    saved = old ? strdup(old) : NULL;
    setenv("STRATA_CPU_FEATURES", path_names[p], 1);
    path = copy;
  }
  struct strata_plugin pl;
  char err[1024] = "";
  int rc = strata_plugin_load_file(path, &pl, err, sizeof err);
  if (path_names[p]) {
    if (saved)
      setenv("STRATA_CPU_FEATURES", saved, 1);
    else
      unsetenv("STRATA_CPU_FEATURES");
    free(saved);
    unlink(copy); /* the mapping stays */
    rmdir(dir);
  }
  ck_assert_msg(rc == 0, "%s", err);
  ck_assert_int_eq(pl.desc->kind, STRATA_PLUGIN_QUANT);
  ck_assert_str_eq(pl.desc->name, name);
  free(pl.path);
  loaded[f][p] = pl.desc->vt.quant;
  return loaded[f][p];
}

/* ---- random data --------------------------------------------------------- */
static uint64_t rng_state;

static void rng_seed(uint64_t s) {
  rng_state = s;
}

static uint64_t rng_next(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int rng_int(int lo, int hi) { /* inclusive */
  return lo + (int)(rng_next() % (uint64_t)(hi - lo + 1));
}

static float rng_unit(void) { /* (-1, 1), never 0 */
  return (float)(((double)(rng_next() >> 11) + 0.5) / 9007199254740992.0 * 2.0 -
                 1.0);
}

/* Random floats, a different magnitude (2^-6 .. 2^9) for every group of 32
 * so that blocks with small and large scales both occur; never all zero. */
static void fill_random(float *x, int64_t n) {
  float scale = 1.0f;
  for (int64_t i = 0; i < n; i++) {
    if (i % 32 == 0) scale = ldexpf(1.0f, rng_int(-6, 9));
    x[i] = rng_unit() * scale;
  }
}

static uint16_t load16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static void store16(uint8_t *p, uint16_t v) {
  memcpy(p, &v, sizeof v);
}

/* ---- the test's own decoder and reference quantizers --------------------- */
/* Element i of a row, decoded exactly (every format's value is a double). */
static double decode(int f, const uint8_t *row, int64_t i) {
  switch (f) {
  case F_F32: {
    float v;
    memcpy(&v, row + 4 * i, sizeof v);
    return v;
  }
  case F_F16:
    return strata_fp16_to_fp32(load16(row + 2 * i));
  case F_BF16:
    return strata_bf16_to_fp32(load16(row + 2 * i));
  case F_Q8_0: {
    const uint8_t *b = row + 34 * (i / 32);
    return (double)strata_fp16_to_fp32(load16(b)) * (int8_t)b[2 + i % 32];
  }
  default: { /* q4_0 */
    const uint8_t *b = row + 18 * (i / 32);
    int j = (int)(i % 32);
    int nib = j < 16 ? (b[2 + j] & 0x0f) : (b[2 + j - 16] >> 4);
    return (double)strata_fp16_to_fp32(load16(b)) * (nib - 8);
  }
  }
}

/* llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref, transcribed
 * from their formulas, for the bit-for-bit comparison on random rows. */
static void ref_quantize_q8_0(const float *x, uint8_t *out, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, x += 32, out += 34) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
      amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    store16(out, strata_fp32_to_fp16(d));
    for (int j = 0; j < 32; j++) {
      float v = x[j] * id;
      out[2 + j] = (uint8_t)(int8_t)roundf(v);
    }
  }
}

static void ref_quantize_q4_0(const float *x, uint8_t *out, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, x += 32, out += 18) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++)
      if (fabsf(x[j]) > amax) {
        amax = fabsf(x[j]);
        max = x[j];
      }
    float d = max / -8.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    store16(out, strata_fp32_to_fp16(d));
    for (int j = 0; j < 16; j++) {
      float v0 = x[j] * id, v1 = x[j + 16] * id;
      int q0 = (int8_t)(v0 + 8.5f), q1 = (int8_t)(v1 + 8.5f);
      if (q0 > 15) q0 = 15;
      if (q1 > 15) q1 = 15;
      out[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

/* ---- fp16.h -------------------------------------------------------------- */
static uint16_t h_of(float f) {
  return strata_fp32_to_fp16(f);
}

START_TEST(fp16_specials) {
  ck_assert_uint_eq(h_of(0.0f), 0x0000);
  ck_assert_uint_eq(h_of(-0.0f), 0x8000);
  ck_assert_uint_eq(h_of(1.0f), 0x3c00);
  ck_assert_uint_eq(h_of(-2.0f), 0xc000);
  ck_assert_uint_eq(h_of(INFINITY), 0x7c00);
  ck_assert_uint_eq(h_of(-INFINITY), 0xfc00);
  ck_assert_uint_eq(h_of(65504.0f), 0x7bff); /* largest half */
  ck_assert_uint_eq(h_of(65519.996f), 0x7bff);
  ck_assert_uint_eq(h_of(65520.0f), 0x7c00); /* tie: 0x7bff is odd -> inf */
  ck_assert_uint_eq(h_of(1e10f), 0x7c00);
  ck_assert_uint_eq(h_of(0x1p-24f), 0x0001); /* smallest subnormal */
  ck_assert_uint_eq(h_of(-0x1p-24f), 0x8001);
  ck_assert_uint_eq(h_of(0x1p-25f), 0x0000);        /* tie with 0: even */
  ck_assert_uint_eq(h_of(0x1.000002p-25f), 0x0001); /* just past the tie */
  ck_assert_uint_eq(h_of(0x1.8p-24f), 0x0002);      /* 1.5 ulp: tie -> even 2 */
  ck_assert_uint_eq(h_of(0x1.4p-23f), 0x0002);      /* 2.5 ulp: tie -> even 2 */
  ck_assert_uint_eq(h_of(0x1p-14f), 0x0400);        /* smallest normal */
  ck_assert_uint_eq(h_of(0x1.ff8p-15f), 0x03ff);    /* largest subnormal */
  ck_assert_uint_eq(h_of(0x1.ffcp-15f),
                    0x0400); /* 1023.5 ulp: tie -> even 1024 */
  ck_assert_uint_eq(h_of(1.0f + 0x1p-11f), 0x3c00); /* tie -> even */
  ck_assert_uint_eq(h_of(1.0f + 0x3p-11f), 0x3c02); /* tie -> even */
  ck_assert_uint_eq(h_of(strata_fp32_from_bits(0x3f801001u)),
                    0x3c01); /* just past */
  ck_assert_uint_eq(h_of(1e-10f), 0x0000);
  ck_assert_uint_eq(h_of(0.1f), 0x2e66);

  uint16_t qnan = h_of(NAN);
  ck_assert_uint_eq(qnan & 0x7c00, 0x7c00);
  ck_assert_uint_ne(qnan & 0x0200, 0); /* quiet */
  /* a signalling NaN whose payload sits below the kept bits stays a NaN */
  uint16_t snan = h_of(strata_fp32_from_bits(0x7f800001u));
  ck_assert_uint_eq(snan, 0x7e00);
  ck_assert_uint_eq(h_of(strata_fp32_from_bits(0xffc02000u)), 0xfe01);

  ck_assert(strata_fp16_to_fp32(0x0000) == 0.0f &&
            !signbit(strata_fp16_to_fp32(0x0000)));
  ck_assert(strata_fp16_to_fp32(0x8000) == 0.0f &&
            signbit(strata_fp16_to_fp32(0x8000)));
  ck_assert(strata_fp16_to_fp32(0x0001) == 0x1p-24f);
  ck_assert(strata_fp16_to_fp32(0x03ff) == 1023 * 0x1p-24f);
  ck_assert(strata_fp16_to_fp32(0x0400) == 0x1p-14f);
  ck_assert(strata_fp16_to_fp32(0x3c00) == 1.0f);
  ck_assert(strata_fp16_to_fp32(0x7bff) == 65504.0f);
  ck_assert(strata_fp16_to_fp32(0x7c00) == INFINITY);
  ck_assert(strata_fp16_to_fp32(0xfc00) == -INFINITY);
  ck_assert(isnan(strata_fp16_to_fp32(0x7e00)));
  /* a signalling half NaN comes out a quiet float NaN, payload kept */
  ck_assert_uint_eq(strata_fp32_bits(strata_fp16_to_fp32(0x7c01)), 0x7fc02000u);
  ck_assert_uint_eq(strata_fp32_bits(strata_fp16_to_fp32(0xfe01)), 0xffc02000u);
}
END_TEST

/* Every half survives half -> float -> half; NaNs come back quiet. */
START_TEST(fp16_all_values_roundtrip) {
  int bad = 0, first = -1;
  for (uint32_t h = 0; h < 0x10000; h++) {
    float f = strata_fp16_to_fp32((uint16_t)h);
    uint16_t back = strata_fp32_to_fp16(f);
    int is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x03ff);
    int ok = is_nan ? (isnan(f) && back == (h | 0x0200)) : back == h;
    if (!ok && !bad++) first = (int)h;
  }
  ck_assert_msg(bad == 0, "%d halves fail the round trip, first 0x%04x", bad,
                first);
}
END_TEST

/* Around every midpoint between neighbouring halves: just below rounds down,
 * just above rounds up, the midpoint itself to the even one. The midpoints
 * need 12 significant bits, so they are exact floats. */
START_TEST(fp16_rounding_every_midpoint) {
  int bad = 0;
  char what[128] = "";
  for (uint32_t h = 0; h < 0x7c00; h++) {
    double lo = strata_fp16_to_fp32((uint16_t)h);
    double hi = h == 0x7bff ? 65536.0 : strata_fp16_to_fp32((uint16_t)(h + 1));
    float mid = (float)((lo + hi) / 2);
    uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
    for (int s = 0; s < 2; s++) {
      float m = s ? -mid : mid;
      uint16_t sign = s ? 0x8000 : 0;
      uint16_t want[3] = {(uint16_t)(h | sign), (uint16_t)(even | sign),
                          (uint16_t)((h + 1) | sign)};
      float in[3] = {nextafterf(m, 0.0f), m,
                     nextafterf(m, s ? -INFINITY : INFINITY)};
      for (int k = 0; k < 3; k++) {
        uint16_t got = strata_fp32_to_fp16(in[k]);
        if (got != want[k] && !bad++)
          snprintf(what, sizeof what, "%a -> 0x%04x, want 0x%04x",
                   (double)in[k], got, want[k]);
      }
    }
  }
  ck_assert_msg(bad == 0, "%d wrong roundings, first %s", bad, what);
}
END_TEST

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_fp32_to_fp16(float f) {
  return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("f16c"))) static float hw_fp16_to_fp32(uint16_t h) {
  return _cvtsh_ss(h);
}
#endif

/* The portable code gives the bits F16C gives, NaN payloads included. */
START_TEST(fp16_matches_f16c) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("f16c")) return;
  int bad = 0;
  uint32_t first = 0;
  for (uint32_t h = 0; h < 0x10000; h++) {
    float a = strata_fp16_to_fp32((uint16_t)h),
          b = hw_fp16_to_fp32((uint16_t)h);
    if (strata_fp32_bits(a) != strata_fp32_bits(b) && !bad++) first = h;
  }
  ck_assert_msg(bad == 0, "half->float: %d differ, first 0x%04x", bad, first);
  rng_seed(16);
  for (int i = 0; i < 2000000; i++) {
    /* half of them inside the half range, where the rounding happens */
    uint32_t u = (uint32_t)rng_next();
    if (i & 1)
      u = (u & 0x80000000u) | (0x33000000u + u % (0x47800000u - 0x33000000u));
    float f = strata_fp32_from_bits(u);
    if (strata_fp32_to_fp16(f) != hw_fp32_to_fp16(f) && !bad++) first = u;
  }
  ck_assert_msg(bad == 0, "float->half: %d differ, first 0x%08x", bad, first);
#endif
}
END_TEST

START_TEST(bf16_conversions) {
  ck_assert_uint_eq(strata_fp32_to_bf16(0.0f), 0x0000);
  ck_assert_uint_eq(strata_fp32_to_bf16(-0.0f), 0x8000);
  ck_assert_uint_eq(strata_fp32_to_bf16(1.0f), 0x3f80);
  ck_assert_uint_eq(strata_fp32_to_bf16(-2.0f), 0xc000);
  ck_assert_uint_eq(strata_fp32_to_bf16(0.1f),
                    0x3dcd); /* 0x3dcccccd rounds up */
  ck_assert_uint_eq(strata_fp32_to_bf16(INFINITY), 0x7f80);
  ck_assert_uint_eq(strata_fp32_to_bf16(-INFINITY), 0xff80);
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x7f7fffffu)),
                    0x7f80); /* FLT_MAX */
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x7f7f7fffu)),
                    0x7f7f);
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x3f808000u)),
                    0x3f80); /* tie */
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x3f818000u)),
                    0x3f82); /* tie */
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x3f808001u)),
                    0x3f81);
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x00000001u)),
                    0x0000);
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x00018000u)),
                    0x0002);
  ck_assert_uint_eq(strata_fp32_to_bf16(NAN) & 0x7fc0, 0x7fc0);
  /* signalling NaNs whose payload would truncate to inf stay NaN, quiet */
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0x7f800001u)),
                    0x7fc0);
  ck_assert_uint_eq(strata_fp32_to_bf16(strata_fp32_from_bits(0xff810000u)),
                    0xffc1);

  ck_assert(strata_bf16_to_fp32(0x3f80) == 1.0f);
  ck_assert(strata_bf16_to_fp32(0x4049) == 3.140625f);
  ck_assert(strata_bf16_to_fp32(0x0001) == 0x1p-133f);
  ck_assert(strata_bf16_to_fp32(0xff80) == -INFINITY);

  int bad = 0, first = -1;
  for (uint32_t b = 0; b < 0x10000; b++) {
    float f = strata_bf16_to_fp32((uint16_t)b);
    int is_nan = (b & 0x7f80) == 0x7f80 && (b & 0x7f);
    uint16_t back = strata_fp32_to_bf16(f);
    int ok = is_nan ? back == (b | 0x40) : back == b;
    /* and the midpoint to the next value rounds to the even neighbour */
    if (!is_nan && (b & 0x7fff) < 0x7f7f) {
      float mid = strata_fp32_from_bits(((uint32_t)b << 16) | 0x8000u);
      uint16_t even = (b & 1) ? (uint16_t)(b + 1) : (uint16_t)b;
      ok = ok && strata_fp32_to_bf16(mid) == even;
    }
    if (!ok && !bad++) first = (int)b;
  }
  ck_assert_msg(bad == 0, "%d bf16 values fail, first 0x%04x", bad, first);
}
END_TEST

/* ---- descriptors --------------------------------------------------------- */
START_TEST(descriptors) {
  for (int f = 0; f < N_FMT; f++) {
    const struct strata_quant_vtable *q = quant(f, P_DEFAULT);
    ck_assert_uint_eq(q->size, sizeof(struct strata_quant_vtable));
    ck_assert_uint_eq(q->type, fmts[f].type);
    ck_assert_uint_eq(q->block_size, fmts[f].block);
    ck_assert_uint_eq(q->type_size, fmts[f].bytes);
    ck_assert_uint_eq(q->vec_dot_type, fmts[fmts[f].act].type);
    ck_assert_ptr_nonnull(q->dequantize_row);
    ck_assert_ptr_nonnull(q->quantize_row);
    ck_assert_ptr_nonnull(q->vec_dot);
  }
}
END_TEST

/* ---- dequantize: hand-built bytes -> exact floats ------------------------ */
static void check_floats(const float *got, const float *want, int n,
                         const char *what) {
  for (int i = 0; i < n; i++)
    ck_assert_msg(strata_fp32_bits(got[i]) == strata_fp32_bits(want[i]),
                  "%s: element %d is %a, want %a", what, i, (double)got[i],
                  (double)want[i]);
}

START_TEST(dequantize_hand_built) {
  for (int p = 0; p < N_PATH; p++) {
    float out[96];
    {
      const uint8_t b[] = {0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00,
                           0x80, 0xbf, 0x01, 0x00, 0x00, 0x00};
      const float want[] = {1.5f, -1.0f, 0x1p-149f};
      quant(F_F32, p)->dequantize_row(b, out, 3);
      check_floats(out, want, 3, "f32");
    }
    {
      const uint8_t b[] = {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00,
                           0xff, 0x03, 0x00, 0x04, 0xff, 0x7b,
                           0x00, 0x7c, 0x00, 0x80, 0x55, 0x35};
      const float want[] = {1.0f,           -2.0f,    0x1p-24f, 1023 * 0x1p-24f,
                            0x1p-14f,       65504.0f, INFINITY, -0.0f,
                            0.333251953125f};
      quant(F_F16, p)->dequantize_row(b, out, 9);
      check_floats(out, want, 9, "f16");
    }
    {
      const uint8_t b[] = {0x80, 0x3f, 0x49, 0x40, 0x80,
                           0xbf, 0x80, 0x7f, 0x01, 0x00};
      const float want[] = {1.0f, 3.140625f, -1.0f, INFINITY, 0x1p-133f};
      quant(F_BF16, p)->dequantize_row(b, out, 5);
      check_floats(out, want, 5, "bf16");
    }
    {
      /* d = 0.5; d = -1; d = 2^-24 (the smallest subnormal scale) */
      uint8_t b[3 * 34] = {0};
      const int8_t qs[8] = {1, -1, 127, -127, 0, -128, 2, 3};
      b[0] = 0x00, b[1] = 0x38;
      memcpy(b + 2, qs, sizeof qs);
      b[34] = 0x00, b[35] = 0xbc, b[36] = 5;
      b[68] = 0x01, b[69] = 0x00, b[70] = 100;
      float want[96] = {0.5f, -0.5f, 63.5f, -63.5f, 0.0f, -64.0f, 1.0f, 1.5f};
      want[32] = -5.0f;
      for (int j = 33; j < 64; j++)
        want[j] = -0.0f; /* 0 * -1 */
      want[64] = 100 * 0x1p-24f;
      quant(F_Q8_0, p)->dequantize_row(b, out, 96);
      check_floats(out, want, 96, "q8_0");
    }
    {
      /* d = 2: byte j holds element j (low nibble) and j + 16 (high);
       * d = -0.5 in the second block */
      uint8_t b[2 * 18];
      memset(b, 0x88, sizeof b); /* every nibble 8: value 0 */
      b[0] = 0x00, b[1] = 0x40;
      b[2] = 0x0f, b[3] = 0x98, b[4] = 0x7a;
      b[18] = 0x00, b[19] = 0xb8;
      b[20] = 0x10;
      float want[64] = {0};
      want[0] = 14, want[16] = -16, want[1] = 0, want[17] = 2, want[2] = 4,
      want[18] = -2;
      for (int j = 32; j < 64; j++)
        want[j] = -0.0f;
      want[32] = 4.0f, want[48] = 3.5f;
      quant(F_Q4_0, p)->dequantize_row(b, out, 64);
      check_floats(out, want, 64, "q4_0");
    }
  }
}
END_TEST

/* ---- quantize: hand-picked floats -> exact bytes ------------------------- */
static void check_bytes(const uint8_t *got, const uint8_t *want, size_t n,
                        const char *what) {
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(got[i] == want[i], "%s: byte %zu is 0x%02x, want 0x%02x",
                  what, i, got[i], want[i]);
}

START_TEST(quantize_float_formats_hand_picked) {
  const float x[] = {1.0f,     -2.0f, 65504.0f, 65520.0f,  1e-8f,
                     0x1p-24f, 0.1f,  NAN,      -INFINITY, 1.0f + 0x1p-11f};
  const uint16_t want16[] = {0x3c00, 0xc000, 0x7bff, 0x7c00, 0x0000,
                             0x0001, 0x2e66, 0x7e00, 0xfc00, 0x3c00};
  const float y[] = {1.0f,
                     0.1f,
                     -2.0f,
                     NAN,
                     INFINITY,
                     strata_fp32_from_bits(0x7f7fffffu),
                     strata_fp32_from_bits(0x3f808000u),
                     strata_fp32_from_bits(0x3f818000u),
                     strata_fp32_from_bits(0x3f808001u),
                     strata_fp32_from_bits(0x7f800001u)};
  const uint16_t wantb[] = {0x3f80, 0x3dcd, 0xc000, 0x7fc0, 0x7f80,
                            0x7f80, 0x3f80, 0x3f82, 0x3f81, 0x7fc0};
  for (int p = 0; p < N_PATH; p++) {
    uint8_t out[64], want[64];
    /* 10 values: the F16C path converts 8 at a time, the scalar tail 2 */
    quant(F_F16, p)->quantize_row(x, out, 10);
    for (int i = 0; i < 10; i++)
      store16(want + 2 * i, want16[i]);
    check_bytes(out, want, 20, "f16");
    quant(F_BF16, p)->quantize_row(y, out, 10);
    for (int i = 0; i < 10; i++)
      store16(want + 2 * i, wantb[i]);
    check_bytes(out, want, 20, "bf16");
    quant(F_F32, p)->quantize_row(x, out, 3);
    check_bytes(out, (const uint8_t *)x, 12, "f32");
  }
}
END_TEST

START_TEST(quantize_q8_0_hand_picked) {
  float x[4 * 32] = {0};
  uint8_t want[4 * 34] = {0};
  /* block 0: amax 127 -> d = 1 (0x3c00), q = x */
  for (int j = 0; j < 32; j++)
    x[j] = (float)(j - 16);
  x[5] = 127.0f;
  want[0] = 0x00, want[1] = 0x3c;
  for (int j = 0; j < 32; j++)
    want[2 + j] = (uint8_t)(int8_t)(j - 16);
  want[2 + 5] = 127;
  /* block 1: amax 63.5 -> d = 0.5 (0x3800), id = 2; roundf takes ties away
   * from zero: 0.5 -> 1, -0.5 -> -1, 2.5 -> 3, -2.5 -> -3 */
  const float x1[] = {63.5f,  0.25f, -0.25f, 0.75f,  1.25f,
                      -1.25f, 0.2f,  0.0f,   -63.5f, 10.1f};
  const int8_t q1[] = {127, 1, -1, 2, 3, -3, 0, 0, -127, 20};
  memcpy(x + 32, x1, sizeof x1);
  want[34] = 0x00, want[35] = 0x38;
  memcpy(want + 36, q1, sizeof q1);
  /* block 2: all zero -> d = 0, q = 0 (bytes already zero) */
  /* block 3: amax 1 -> d = 1/127 = 0x1.020408p-7f, fp16 0x2008; id = 127 */
  x[96] = 1.0f, x[97] = -1.0f, x[98] = 0.25f, x[99] = 0.5f;
  want[102] = 0x08, want[103] = 0x20;
  want[104] = 127, want[105] = (uint8_t)-127, want[106] = 32 /* 31.75 */,
  want[107] = 64;
  for (int p = 0; p < N_PATH; p++) {
    uint8_t out[4 * 34];
    memset(out, 0xa5, sizeof out);
    quant(F_Q8_0, p)->quantize_row(x, out, 128);
    check_bytes(out, want, sizeof want, "q8_0");
  }
}
END_TEST

START_TEST(quantize_q4_0_hand_picked) {
  float x[4 * 32] = {0};
  uint8_t want[4 * 18];
  memset(want, 0x88, sizeof want); /* zeros quantize to nibble 8 */
  /* block 0: max = -8 -> d = 1 (0x3c00), id = 1, q = min(15, (int)(x + 8.5)) */
  const float x0[] = {-8, 7, 7.4f, 7.6f, 0, -0.5f, 0.5f, -7.5f, -7.6f, 3.2f};
  memcpy(x, x0, sizeof x0);
  x[16] = 1, x[17] = -1, x[18] = 2.49f, x[19] = -2.5f;
  const uint8_t q0[] = {0x90, 0x7f, 0xaf, 0x6f, 0x88,
                        0x88, 0x89, 0x81, 0x80, 0x8b};
  want[0] = 0x00, want[1] = 0x3c;
  memcpy(want + 2, q0, sizeof q0);
  /* block 1: +8 comes before -8, so max = +8: d = -1 (0xbc00), id = -1;
   * -8 -> 16.5 -> clamped to 15 */
  x[32 + 3] = 8, x[32 + 20] = -8, x[32 + 0] = 4, x[32 + 16] = -4;
  want[18] = 0x00, want[19] = 0xbc;
  want[20] = 0xc4, want[23] = 0x80, want[24] = 0xf8;
  /* block 2: |-4| == |4|, the first wins: d = 0.5 (0x3800), id = 2 */
  x[64 + 1] = -4, x[64 + 3] = 4;
  want[36] = 0x00, want[37] = 0x38;
  want[39] = 0x80, want[41] = 0x8f;
  /* block 3: all zero: max stays 0.0f and 0.0f / -8 is -0.0f (0x8000) */
  want[54] = 0x00, want[55] = 0x80;
  for (int p = 0; p < N_PATH; p++) {
    uint8_t out[4 * 18];
    memset(out, 0xa5, sizeof out);
    quant(F_Q4_0, p)->quantize_row(x, out, 128);
    check_bytes(out, want, sizeof want, "q4_0");
  }
}
END_TEST

/* Random rows: the plugins' output is bit-identical to the reference. */
START_TEST(quantize_matches_reference) {
  const int64_t n = 32 * 512;
  float *x = malloc((size_t)n * sizeof *x);
  uint8_t *got = malloc((size_t)n * 4), *want = malloc((size_t)n * 4);
  rng_seed(42);
  fill_random(x, n);
  /* some exact ties for roundf and a few all-zero blocks */
  for (int64_t i = 0; i < n; i += 97)
    x[i] = (float)rng_int(-64, 64) * 0.5f;
  for (int64_t i = 64; i < 96; i++)
    x[i] = 0.0f;
  for (int p = 0; p < N_PATH; p++) {
    quant(F_Q8_0, p)->quantize_row(x, got, n);
    ref_quantize_q8_0(x, want, n);
    ck_assert_msg(memcmp(got, want, (size_t)n / 32 * 34) == 0,
                  "q8_0 differs from reference");
    quant(F_Q4_0, p)->quantize_row(x, got, n);
    ref_quantize_q4_0(x, want, n);
    ck_assert_msg(memcmp(got, want, (size_t)n / 32 * 18) == 0,
                  "q4_0 differs from reference");
    quant(F_F16, p)->quantize_row(x, got, n);
    for (int64_t i = 0; i < n; i++)
      store16(want + 2 * i, strata_fp32_to_fp16(x[i]));
    ck_assert_msg(memcmp(got, want, (size_t)n * 2) == 0,
                  "f16 differs from fp16.h");
    quant(F_BF16, p)->quantize_row(x, got, n);
    for (int64_t i = 0; i < n; i++)
      store16(want + 2 * i, strata_fp32_to_bf16(x[i]));
    ck_assert_msg(memcmp(got, want, (size_t)n * 2) == 0,
                  "bf16 differs from fp16.h");
  }
  free(x);
  free(got);
  free(want);
}
END_TEST

/* ---- round trips --------------------------------------------------------- */
START_TEST(roundtrip_error_bounds) {
  const int64_t n = 32 * 1024;
  float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  uint8_t *q = malloc((size_t)n * 4);
  rng_seed(7);
  fill_random(x, n);
  for (int p = 0; p < N_PATH; p++) {
    char what[128] = "";
    int bad = 0;
    /* f32: exact */
    quant(F_F32, p)->quantize_row(x, q, n);
    quant(F_F32, p)->dequantize_row(q, y, n);
    ck_assert_msg(memcmp(x, y, (size_t)n * sizeof *x) == 0,
                  "f32 round trip not exact");
    /* f16: half an ulp, 2^-11 relative; 2^-25 absolute among subnormals */
    quant(F_F16, p)->quantize_row(x, q, n);
    quant(F_F16, p)->dequantize_row(q, y, n);
    for (int64_t i = 0; i < n; i++) {
      double e = fabs((double)x[i] - y[i]),
             lim = fmax(fabs((double)x[i]) * 0x1p-11, 0x1p-25);
      if (e > lim && !bad++)
        snprintf(what, sizeof what, "f16 %a -> %a", (double)x[i], (double)y[i]);
    }
    /* bf16: 2^-8 relative */
    quant(F_BF16, p)->quantize_row(x, q, n);
    quant(F_BF16, p)->dequantize_row(q, y, n);
    for (int64_t i = 0; i < n; i++)
      if (fabs((double)x[i] - y[i]) > fabs((double)x[i]) * 0x1p-8 && !bad++)
        snprintf(what, sizeof what, "bf16 %a -> %a", (double)x[i],
                 (double)y[i]);
    /* q8_0: |x - q*d16| <= d/2 (rounding to the nearest step) plus
     * |q| * |d - d16| <= 127 * 2^-11 * d (the scale's own fp16 rounding),
     * so with d ~ d16: 0.5 + 0.062 steps; the random magnitudes keep d16
     * normal. Stated bound: 0.57 * |d16|. */
    quant(F_Q8_0, p)->quantize_row(x, q, n);
    quant(F_Q8_0, p)->dequantize_row(q, y, n);
    for (int64_t i = 0; i < n; i++) {
      double d16 = strata_fp16_to_fp32(load16(q + 34 * (i / 32)));
      if (fabs((double)x[i] - y[i]) > 0.57 * fabs(d16) && !bad++)
        snprintf(what, sizeof what, "q8_0 %a -> %a (d %a)", (double)x[i],
                 (double)y[i], d16);
    }
    /* q4_0: d = max / -8 maps the block onto [-8, 8]; values that land
     * at most 7.5 steps up round to the nearest of the 16 levels (d/2),
     * those above 7.5 are clamped to level 7 (error < d); plus 8 * 2^-11 * d
     * for the scale's fp16 rounding. Stated bounds: 0.51 and 1.01 * |d16|. */
    quant(F_Q4_0, p)->quantize_row(x, q, n);
    quant(F_Q4_0, p)->dequantize_row(q, y, n);
    for (int64_t i = 0; i < n; i++) {
      double d16 = strata_fp16_to_fp32(load16(q + 18 * (i / 32)));
      double steps = (double)x[i] / d16;
      double lim = (steps > 7.5 ? 1.01 : 0.51) * fabs(d16);
      if (fabs((double)x[i] - y[i]) > lim && !bad++)
        snprintf(what, sizeof what, "q4_0 %a -> %a (d %a)", (double)x[i],
                 (double)y[i], d16);
    }
    ck_assert_msg(bad == 0, "path %s: %d values outside the bound, first %s",
                  path_names[p] ? path_names[p] : "default", bad, what);
  }
  free(x);
  free(y);
  free(q);
}
END_TEST

/* ---- vec_dot ------------------------------------------------------------- */
static const int64_t float_lengths[] = {
    0,  1,   7,   15,  16,  17,  31,  32,   33,   63,   64,
    65, 100, 127, 128, 129, 255, 256, 1000, 2048, 4095, 8192};
static const int64_t block_lengths[] = {32,  64,   96,   128,  160, 192,
                                        256, 1024, 2048, 4096, 8192};

/* Random bytes of a row. With `ints`, every value is an integer-valued
 * multiple of a power of two small enough that every partial sum of the dot
 * product is exact in float, in whatever order a path adds: the scalar and
 * SIMD results must then equal the exact one. */
static void make_row(int f, int act, uint8_t *row, int64_t n, int ints) {
  switch (f) {
  case F_F32:
  case F_F16:
  case F_BF16:
    for (int64_t i = 0; i < n; i++) {
      float v = ints ? (float)rng_int(-8, 8)
                     : rng_unit() * ldexpf(1.0f, rng_int(-4, 4));
      if (f == F_F32)
        memcpy(row + 4 * i, &v, sizeof v);
      else
        store16(row + 2 * i,
                f == F_F16 ? strata_fp32_to_fp16(v) : strata_fp32_to_bf16(v));
    }
    break;
  case F_Q8_0:
    for (int64_t b = 0; b < n / 32; b++) {
      uint8_t *blk = row + 34 * b;
      float d = ints ? (act ? ldexpf(1.0f, rng_int(-2, -1))
                            : ldexpf(1.0f, rng_int(-1, 0)))
                     : rng_unit() * ldexpf(1.0f, rng_int(-12, 2));
      if (act) d = fabsf(d); /* the quantizer's activation scales are >= 0 */
      store16(blk, strata_fp32_to_fp16(d));
      /* weights use the full int8 range, -128 included; activations are
       * [-127, 127] as quantize_row writes them */
      for (int j = 0; j < 32; j++)
        blk[2 + j] =
            (uint8_t)(int8_t)(act ? (ints ? rng_int(-3, 3) : rng_int(-127, 127))
                                  : rng_int(-128, 127));
    }
    break;
  default: /* q4_0 weights */
    for (int64_t b = 0; b < n / 32; b++) {
      uint8_t *blk = row + 18 * b;
      float d =
          ints ? (rng_int(0, 1) ? -1.0f : 1.0f) * ldexpf(1.0f, rng_int(-1, 0))
               : rng_unit() * ldexpf(1.0f, rng_int(-12, 2));
      store16(blk, strata_fp32_to_fp16(d));
      for (int j = 0; j < 16; j++)
        blk[2 + j] = (uint8_t)rng_int(0, 255);
    }
    break;
  }
}

/* In the integer case q4_0 needs activations in [-60, 60] for exactness;
 * q8_0 weights pair with activations in [-3, 3]. */
static void make_act_for_q4(uint8_t *row, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    uint8_t *blk = row + 34 * b;
    store16(blk, strata_fp32_to_fp16(ldexpf(1.0f, rng_int(-2, -1))));
    for (int j = 0; j < 32; j++)
      blk[2 + j] = (uint8_t)(int8_t)rng_int(-60, 60);
  }
}

/* Dot product and sum |w_i a_i| in double: exact for the integer data,
 * and error-free next to the float tolerance otherwise. */
static void reference_dot(int f, const uint8_t *w, const uint8_t *a, int64_t n,
                          double *dot, double *abs_sum) {
  int fa = fmts[f].act;
  double s = 0, sa = 0;
  for (int64_t i = 0; i < n; i++) {
    double p = decode(f, w, i) * decode(fa, a, i);
    s += p;
    sa += fabs(p);
  }
  *dot = s;
  *abs_sum = sa;
}

/* Worst-case float error of any path: the longest chain of float additions
 * is n/4 terms (the scalar f16 loop keeps 4 partial sums; the others keep
 * more, and the block formats add once per 32 elements), each rounding by
 * at most 2^-24 of the sum of |terms| so far; plus a few roundings for the
 * products, scales and the final reduction. */
static double dot_tolerance(int64_t n, double abs_sum) {
  return ((double)n / 4 + 16) * 0x1p-24 * abs_sum;
}

static size_t row_bytes(int f, int64_t n) {
  return (size_t)(n / fmts[f].block * fmts[f].bytes);
}

static void vec_dot_check(int f, int ints) {
  const int64_t *lens = fmts[f].block == 1 ? float_lengths : block_lengths;
  size_t nlens = fmts[f].block == 1
                     ? sizeof float_lengths / sizeof *float_lengths
                     : sizeof block_lengths / sizeof *block_lengths;
  int fa = fmts[f].act;
  rng_seed(1000 + (uint64_t)f * 10 + (uint64_t)ints);
  for (size_t li = 0; li < nlens; li++) {
    int64_t n = lens[li];
    /* one spare byte: the rows start at an odd address, as blocks do */
    uint8_t *wbuf = malloc(row_bytes(f, n) + 1),
            *abuf = malloc(row_bytes(fa, n) + 1);
    uint8_t *w = wbuf + 1, *a = abuf + 1;
    for (int rep = 0; rep < 3; rep++) {
      make_row(f, 0, w, n, ints);
      if (f == F_Q4_0 && ints)
        make_act_for_q4(a, n);
      else
        make_row(fa, 1, a, n, ints);
      double want, abs_sum;
      reference_dot(f, w, a, n, &want, &abs_sum);
      double tol = ints ? 0.0 : dot_tolerance(n, abs_sum);
      float scalar = 0;
      quant(f, P_SCALAR)->vec_dot(n, &scalar, w, a);
      for (int p = 0; p < N_PATH; p++) {
        float got = -12345.0f;
        quant(f, p)->vec_dot(n, &got, w, a);
        const char *pn = path_names[p] ? path_names[p] : "default";
        ck_assert_msg(fabs((double)got - want) <= tol,
                      "%s path %s n=%lld: got %.9g, want %.9g (tolerance %.3g)",
                      fmts[f].name, pn, (long long)n, (double)got, want, tol);
        /* SIMD and scalar each within tol of the truth: within 2 tol of each
         * other */
        ck_assert_msg(fabs((double)got - scalar) <= 2 * tol,
                      "%s path %s n=%lld: %.9g, scalar path %.9g", fmts[f].name,
                      pn, (long long)n, (double)got, (double)scalar);
      }
    }
    free(wbuf);
    free(abuf);
  }
}

START_TEST(vec_dot_exact_on_integers) {
  vec_dot_check(_i, 1);
}
END_TEST

START_TEST(vec_dot_random_vs_double) {
  vec_dot_check(_i, 0);
}
END_TEST

/* The corner the SIMD sign trick must get right: a -128 weight times
 * activations of either sign and full magnitude. */
START_TEST(vec_dot_q8_0_extremes) {
  uint8_t w[2 * 34], a[2 * 34];
  for (int b = 0; b < 2; b++) {
    store16(w + 34 * b, 0x3c00);
    store16(a + 34 * b, 0x3c00);
    for (int j = 0; j < 32; j++) {
      w[34 * b + 2 + j] = (uint8_t)(int8_t)(j % 2 ? -128 : 127);
      a[34 * b + 2 + j] = (uint8_t)(int8_t)(j % 4 < 2 ? -127 : 127);
    }
  }
  double want, abs_sum;
  reference_dot(F_Q8_0, w, a, 64, &want, &abs_sum);
  for (int p = 0; p < N_PATH; p++) {
    float got = 0;
    quant(F_Q8_0, p)->vec_dot(64, &got, w, a);
    ck_assert_msg((double)got == want, "path %d: %.9g, want %.9g", p,
                  (double)got, want);
  }
  /* q4_0: every nibble 0 (value -8) and 15 (value 7) against +-127 */
  uint8_t w4[2 * 18];
  for (int b = 0; b < 2; b++) {
    store16(w4 + 18 * b, 0x3c00);
    for (int j = 0; j < 16; j++)
      w4[18 * b + 2 + j] = j % 2 ? 0xf0 : 0x0f;
  }
  reference_dot(F_Q4_0, w4, a, 64, &want, &abs_sum);
  for (int p = 0; p < N_PATH; p++) {
    float got = 0;
    quant(F_Q4_0, p)->vec_dot(64, &got, w4, a);
    ck_assert_msg((double)got == want, "path %d: %.9g, want %.9g", p,
                  (double)got, want);
  }
}
END_TEST

/* The activations q8_0's quantizer writes, dotted with q4_0 weights, come
 * close to the float dot product of the unquantized rows. */
START_TEST(q4_0_with_quantized_activations) {
  const int64_t n = 4096;
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y),
        *xd = malloc(n * sizeof *xd), *yd = malloc(n * sizeof *yd);
  uint8_t *w = malloc(n), *a = malloc(n / 32 * 34);
  rng_seed(99);
  for (int64_t i = 0; i < n; i++)
    x[i] = rng_unit(), y[i] = rng_unit();
  quant(F_Q4_0, P_DEFAULT)->quantize_row(x, w, n);
  quant(F_Q8_0, P_DEFAULT)->quantize_row(y, a, n);
  quant(F_Q4_0, P_DEFAULT)->dequantize_row(w, xd, n);
  quant(F_Q8_0, P_DEFAULT)->dequantize_row(a, yd, n);
  double want = 0, abs_sum = 0;
  for (int64_t i = 0; i < n; i++) {
    want += (double)xd[i] * yd[i];
    abs_sum += fabs((double)xd[i] * yd[i]);
  }
  for (int p = 0; p < N_PATH; p++) {
    float got = 0;
    quant(F_Q4_0, p)->vec_dot(n, &got, w, a);
    ck_assert_msg(fabs((double)got - want) <= dot_tolerance(n, abs_sum),
                  "path %d: %.9g vs %.9g", p, (double)got, want);
  }
  free(x);
  free(y);
  free(xd);
  free(yd);
  free(w);
  free(a);
}
END_TEST

/* Rows at odd addresses, as blocks of 34 and 18 bytes are: the sanitizer
 * build catches any misaligned access. */
START_TEST(unaligned_rows) {
  const int64_t n = 256;
  float x[256], y[256];
  rng_seed(5);
  fill_random(x, n);
  for (int f = 0; f < N_FMT; f++)
    for (int p = 0; p < N_PATH; p++) {
      const struct strata_quant_vtable *q = quant(f, p);
      uint8_t *buf = malloc(row_bytes(f, n) + 1),
              *act = malloc(row_bytes(fmts[f].act, n) + 1);
      q->quantize_row(x, buf + 1, n);
      q->dequantize_row(buf + 1, y, n);
      quant(fmts[f].act, p)->quantize_row(x, act + 1, n);
      float dot = 0;
      q->vec_dot(n, &dot, buf + 1, act + 1);
      ck_assert(isfinite(dot) &&
                dot > 0); /* a row dotted with itself, roughly */
      free(buf);
      free(act);
    }
}
END_TEST

static void report_cpu(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  fprintf(stderr,
          "test_quant: cpu avx2+fma+f16c=%d avx512f=%d avx512vnni+vl+bw=%d; "
          "STRATA_CPU_FEATURES=%s\n",
          __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c"),
          __builtin_cpu_supports("avx512f") != 0,
          __builtin_cpu_supports("avx512vnni") &&
              __builtin_cpu_supports("avx512vl") &&
              __builtin_cpu_supports("avx512bw"),
          getenv("STRATA_CPU_FEATURES") ? getenv("STRATA_CPU_FEATURES")
                                        : "(unset)");
#endif
}

static Suite *quant_suite(void) {
  Suite *s = suite_create("quant");
  TCase *tc = tcase_create("fp16");
  tcase_add_test(tc, fp16_specials);
  tcase_add_test(tc, fp16_all_values_roundtrip);
  tcase_add_test(tc, fp16_rounding_every_midpoint);
  tcase_add_test(tc, fp16_matches_f16c);
  tcase_add_test(tc, bf16_conversions);
  suite_add_tcase(s, tc);

  tc = tcase_create("plugins");
  tcase_add_test(tc, descriptors);
  tcase_add_test(tc, dequantize_hand_built);
  tcase_add_test(tc, quantize_float_formats_hand_picked);
  tcase_add_test(tc, quantize_q8_0_hand_picked);
  tcase_add_test(tc, quantize_q4_0_hand_picked);
  tcase_add_test(tc, quantize_matches_reference);
  tcase_add_test(tc, roundtrip_error_bounds);
  tcase_add_loop_test(tc, vec_dot_exact_on_integers, 0, N_FMT);
  tcase_add_loop_test(tc, vec_dot_random_vs_double, 0, N_FMT);
  tcase_add_test(tc, vec_dot_q8_0_extremes);
  tcase_add_test(tc, q4_0_with_quantized_activations);
  tcase_add_test(tc, unaligned_rows);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  report_cpu();
  return test_run_suite(quant_suite());
}
