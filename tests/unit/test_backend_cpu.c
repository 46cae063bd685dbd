/* Backend plugin "cpu": every op against a plain double-precision reference
 * written here, on seeded random inputs (never all zeros).
 *
 * The quant plugins and the backend are loaded through the loader from the
 * build tree, as the engine does. Output buffers are filled with NaN before
 * each op, so an element the op forgot to write shows up as NaN.
 *
 * Each numerical test runs on every SIMD tier the machine has: the backend
 * picks its kernels when an instance is opened, capped by
 * STRATA_CPU_FEATURES, so the test opens one instance per value ("scalar",
 * "avx2", unset = best). A tier the CPU lacks falls back to the next lower
 * one, so the test passes everywhere and checks what the machine can run.
 *
 * Error bounds (relative L2 norm of the whole output unless stated; for
 * matmul the norm is max(|ref|, m) with m^2 = sum over outputs of
 * |w_row|^2 |x_tok|^2 / K, the expected |ref|^2 of random data, so that an
 * output of a few dots that happen to cancel does not make the bound moot):
 * - matmul f32 weights: 1e-5.
 * - matmul f16/bf16 weights: 1e-5 on the SIMD tiers (f32 activations); the
 *   scalar tier goes through the quant plugin's vec_dot, which takes f16/bf16
 *   activations: 2e-3 (f16, 11-bit mantissa) and 1e-2 (bf16, 8-bit).
 * - matmul q8_0/q4_0 weights: 1e-5 against a reference that uses the same
 *   q8_0-quantized activations (the kernels' integer dots are exact; only the
 *   float scaling rounds), and 1e-2 against f32 activations (the activation
 *   quantization error, ~0.5% per element for uniform data).
 * - rmsnorm, rope, add, add_bias, swiglu, attention: 1e-5 (max relative or
 *   absolute per element where stated); embed, get_rows, kv_store: exact.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <strata/backend.h>
#include <strata/fp16.h>
#include <strata/plugin.h>
#include <strata/quant.h>

#include <unistd.h>

#include "conf.h"
#include "plugin_loader.h"
#include "testutil.h"

/* ---- setup ------------------------------------------------------------------ */

static struct strata_registry g_reg;
static const struct strata_plugin *g_cpu;
static const struct strata_backend_vtable *be;

/* The cpu plugin's q8_activations_min as the tests set it: 0 (every q8_0 and
 * q4_0 matmul quantizes its activations, so the int8 kernels see every
 * shape) unless a test re-initializes the plugin with its default. */
static int64_t g_qact_min;

/* A config holding `plugins.backend.cpu.q8_activations_min = v` (v < 0: an
 * empty config, the defaults). */
static strata_config_t *cpu_config(int64_t v) {
  char path[] = "/tmp/strata-test-cpu-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  FILE *f = fdopen(fd, "w");
  if (v >= 0) fprintf(f, "plugins: { backend: { cpu: { q8_activations_min = %lld; }; }; };\n", (long long)v);
  fclose(f);
  struct strata_errlist errs = {0};
  strata_config_t *cfg = strata_config_load(path, &errs);
  unlink(path);
  ck_assert_msg(cfg != NULL, "test config did not load");
  strata_errlist_free(&errs);
  return cfg;
}

/* (Re)initializes every plugin with q8_activations_min = v. */
static void init_plugins(int64_t v) {
  strata_config_t *cfg = cpu_config(v);
  for (size_t i = 0; i < g_reg.n_plugins; i++) {
    char err[1024] = "";
    g_reg.plugins[i].initialized = 0;
    ck_assert_msg(strata_plugin_init(&g_reg.plugins[i], cfg, err, sizeof err) == 0, "%s", err);
  }
  strata_config_free(cfg);
  g_qact_min = v < 0 ? 65536 : v;
}

static void load_plugins(void) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/plugins", test_builddir());
  const char *dirs[] = {dir};
  strata_registry_scan(&g_reg, dirs, 1);
  strata_host_set_registry(&g_reg);
  init_plugins(0);
  g_cpu = strata_registry_find(&g_reg, STRATA_PLUGIN_BACKEND, "cpu");
  ck_assert_msg(g_cpu != NULL, "backend plugin cpu not found under %s", dir);
  be = g_cpu->desc->vt.backend;
}

static void unload_plugins(void) { strata_registry_free(&g_reg); }

static const struct strata_quant_vtable *quant(uint32_t type) {
  const struct strata_plugin *p = strata_registry_find_quant(&g_reg, type);
  ck_assert_msg(p != NULL, "no quant plugin for type %u", type);
  return p->desc->vt.quant;
}

/* The tiers each numerical test runs on. */
static const char *const tiers[] = {"scalar", "avx2", NULL};
#define N_TIERS 3

static const char *tier_name(const char *t) { return t ? t : "best"; }

static strata_backend_t *open_backend(const char *tier, int threads) {
  if (tier)
    setenv("STRATA_CPU_FEATURES", tier, 1);
  else
    unsetenv("STRATA_CPU_FEATURES");
  struct strata_backend_params p = {.size = sizeof p, .threads = threads};
  strata_backend_t *b = NULL;
  char err[512] = "";
  ck_assert_msg(be->open(0, &p, &b, err, sizeof err) == 0, "open: %s", err);
  unsetenv("STRATA_CPU_FEATURES");
  return b;
}

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static float frand(uint64_t *s) { return (float)((rng_next(s) >> 40) * 0x1p-23 - 1.0); }

static float *rand_floats(uint64_t *s, size_t n, float scale) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = frand(s) * scale;
  return v;
}

static strata_buf_t *mkbuf(strata_backend_t *b, const void *data, size_t bytes) {
  strata_buf_t *buf = be->buf_alloc(b, bytes);
  ck_assert_ptr_nonnull(buf);
  if (data) ck_assert_int_eq(be->upload(b, buf, 0, data, bytes), 0);
  return buf;
}

static struct strata_tensor tensor(strata_buf_t *buf, uint32_t type, int64_t ne0, int64_t ne1) {
  return (struct strata_tensor){.buf = buf, .offset = 0, .type = type, .ne = {ne0, ne1}};
}

/* An f32 buffer of n NaNs. */
static strata_buf_t *nan_buf(strata_backend_t *b, size_t n) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = NAN;
  strata_buf_t *buf = mkbuf(b, v, n * sizeof *v);
  free(v);
  return buf;
}

static float *fetch(strata_backend_t *b, strata_buf_t *buf, size_t n) {
  float *v = malloc(n * sizeof *v);
  ck_assert_int_eq(be->download(b, buf, 0, v, n * sizeof *v), 0);
  return v;
}

static size_t count_nan(const float *v, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += isnan(v[i]) != 0;
  return k;
}

static double rel_l2(const float *got, const double *ref, size_t n) {
  double e = 0, r = 0;
  for (size_t i = 0; i < n; i++) {
    e += (got[i] - ref[i]) * (got[i] - ref[i]);
    r += ref[i] * ref[i];
  }
  return r > 0 ? sqrt(e / r) : sqrt(e);
}

static double max_abs_err(const float *got, const double *ref, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs(got[i] - ref[i]);
    if (!(e <= m)) m = e; /* NaN propagates */
  }
  return m;
}

static size_t row_bytes(uint32_t type, int64_t n) {
  const struct strata_quant_vtable *q = quant(type);
  return (size_t)(n / q->block_size) * q->type_size;
}

/* A batch of T tokens, one sequence per token and no KV (for the row ops). */
struct simple_batch {
  int32_t tokens[512], positions[512], slots[512], out_rows[512];
  struct strata_batch b;
};

static void simple_batch(struct simple_batch *sb, int T) {
  memset(sb, 0, sizeof *sb);
  for (int i = 0; i < T; i++) sb->positions[i] = i;
  sb->b = (struct strata_batch){.size = sizeof sb->b, .n_tokens = T, .tokens = sb->tokens,
                                .positions = sb->positions, .slots = sb->slots,
                                .out_rows = sb->out_rows};
}

/* ---- registry and buffers ------------------------------------------------------- */

START_TEST(descriptor_and_device) {
  const struct strata_plugin_desc *d = g_cpu->desc;
  ck_assert_int_eq(d->kind, STRATA_PLUGIN_BACKEND);
  ck_assert_str_eq(d->name, "cpu");
  ck_assert_ptr_nonnull(d->params);
  ck_assert_str_eq(d->params[0].name, "threads");
  ck_assert_int_eq(d->params[0].type, STRATA_PARAM_INT);
  ck_assert_str_eq(d->params[0].defval, "0");
  ck_assert(d->params[0].min == 0 && d->params[0].max == 1024);
  ck_assert_str_eq(d->params[1].name, "q8_activations_min");
  ck_assert_int_eq(d->params[1].type, STRATA_PARAM_INT);
  ck_assert_str_eq(d->params[1].defval, "65536");
  ck_assert(d->params[1].min == 0);
  ck_assert_str_eq(d->params[2].name, "pack_weights");
  ck_assert_int_eq(d->params[2].type, STRATA_PARAM_BOOL);
  ck_assert_str_eq(d->params[2].defval, "true");
  ck_assert_int_eq(d->params[3].type, STRATA_PARAM_END);

  ck_assert_int_eq(be->n_devices(), 1);
  struct strata_backend_device info = {.size = sizeof info};
  ck_assert_int_eq(be->device_info(0, &info), 0);
  ck_assert_str_eq(info.name, "cpu");
  ck_assert_int_eq(info.score, 10);
  ck_assert_uint_gt(info.memory_total, 0);
  ck_assert_uint_gt(info.memory_free, 0);
  ck_assert_uint_le(info.memory_free, info.memory_total);
  ck_assert_ptr_nonnull(strstr(info.why, "always available"));
  ck_assert_int_ne(be->device_info(1, &info), 0);

  strata_backend_t *b = NULL;
  char err[256] = "";
  ck_assert_int_ne(be->open(1, NULL, &b, err, sizeof err), 0);
  ck_assert_ptr_nonnull(strstr(err, "device 1"));
  ck_assert_ptr_null(b);
  /* params may be NULL: config threads, else all cores */
  ck_assert_int_eq(be->open(0, NULL, &b, err, sizeof err), 0);
  ck_assert_int_eq(be->synchronize(b), 0);
  const uint32_t types[] = {STRATA_TYPE_F32, STRATA_TYPE_F16, STRATA_TYPE_BF16, STRATA_TYPE_Q8_0,
                            STRATA_TYPE_Q4_0};
  for (size_t i = 0; i < 5; i++) ck_assert_int_eq(be->supports_type(b, types[i]), 1);
  ck_assert_int_eq(be->supports_type(b, 9999), 0);
  be->close(b);
}
END_TEST

START_TEST(buffers) {
  strata_backend_t *b = open_backend(NULL, 2);
  strata_buf_t *buf = be->buf_alloc(b, 1000);
  ck_assert_ptr_nonnull(buf);
  uint8_t src[1000], dst[1000];
  for (int i = 0; i < 1000; i++) src[i] = (uint8_t)(i * 7 + 1);
  ck_assert_int_eq(be->upload(b, buf, 0, src, 1000), 0);
  ck_assert_int_eq(be->upload(b, buf, 990, src, 10), 0);
  memset(dst, 0, sizeof dst);
  ck_assert_int_eq(be->download(b, buf, 0, dst, 990), 0);
  ck_assert_int_eq(memcmp(dst, src, 990), 0);
  ck_assert_int_eq(be->download(b, buf, 990, dst, 10), 0);
  ck_assert_int_eq(memcmp(dst, src, 10), 0);
  /* bounds */
  ck_assert_int_eq(be->upload(b, buf, 991, src, 10), -1);
  ck_assert_ptr_nonnull(strstr(be->last_error(b), "upload"));
  ck_assert_int_eq(be->upload(b, buf, 1001, src, 0), -1);
  ck_assert_int_eq(be->upload(b, buf, UINT64_MAX, src, 2), -1);
  ck_assert_int_eq(be->download(b, buf, 500, dst, 501), -1);
  ck_assert_ptr_nonnull(strstr(be->last_error(b), "download"));
  ck_assert_int_eq(be->upload(b, NULL, 0, src, 1), -1);
  be->buf_free(b, buf);
  be->buf_free(b, NULL);

  /* zero bytes still gives a buffer */
  buf = be->buf_alloc(b, 0);
  ck_assert_ptr_nonnull(buf);
  ck_assert_int_eq(be->upload(b, buf, 0, src, 0), 0);
  be->buf_free(b, buf);

  /* wrapped host memory: read in place, never written */
  float host[64];
  for (int i = 0; i < 64; i++) host[i] = (float)i;
  strata_buf_t *w = be->buf_wrap_host(b, host, sizeof host);
  ck_assert_ptr_nonnull(w);
  float back[64];
  ck_assert_int_eq(be->download(b, w, 0, back, sizeof back), 0);
  ck_assert_int_eq(memcmp(back, host, sizeof host), 0);
  host[5] = 42.0f; /* no copy: the change is visible */
  ck_assert_int_eq(be->download(b, w, 20, back, 4), 0);
  ck_assert_float_eq(back[0], 42.0f);
  ck_assert_int_eq(be->upload(b, w, 0, src, 4), -1);
  ck_assert_ptr_nonnull(strstr(be->last_error(b), "read-only"));
  be->buf_free(b, w);
  be->close(b);
}
END_TEST

/* ---- matmul ------------------------------------------------------------------------- */

/* |got - ref| / max(|ref|, sqrt(m2)) */
static double mm_err(const float *got, const double *ref, size_t n, double m2) {
  double e = 0, r = 0;
  for (size_t i = 0; i < n; i++) {
    e += (got[i] - ref[i]) * (got[i] - ref[i]);
    r += ref[i] * ref[i];
  }
  return sqrt(e / (r > m2 ? r : m2));
}

struct mm_case {
  uint32_t type;
  int64_t K, N, T;
};

/* Runs one matmul and checks it; returns nothing, asserts with the case in
 * the message. The weights live in a wrapped host buffer for odd seeds, in a
 * device buffer for even ones (both must work). */
static void check_matmul(strata_backend_t *b, const char *tier, struct mm_case c, uint64_t seed) {
  const struct strata_quant_vtable *q = quant(c.type);
  const size_t wrb = row_bytes(c.type, c.K);
  uint64_t s = seed;
  float *wf = rand_floats(&s, (size_t)c.N * c.K, 1.0f);
  float *x = rand_floats(&s, (size_t)c.T * c.K, 1.0f);
  uint8_t *wq = malloc(wrb * c.N);
  float *wdq = malloc((size_t)c.N * c.K * sizeof *wdq);
  for (int64_t r = 0; r < c.N; r++) {
    q->quantize_row(wf + r * c.K, wq + r * wrb, c.K);
    q->dequantize_row(wq + r * wrb, wdq + r * c.K, c.K);
  }
  /* the activations as the kernels see them */
  const int qact =
      (c.type == STRATA_TYPE_Q8_0 || c.type == STRATA_TYPE_Q4_0) && c.K * c.N >= g_qact_min;
  float *xa = malloc((size_t)c.T * c.K * sizeof *xa);
  if (qact) {
    const struct strata_quant_vtable *q8 = quant(STRATA_TYPE_Q8_0);
    uint8_t *tmp = malloc(row_bytes(STRATA_TYPE_Q8_0, c.K));
    for (int64_t t = 0; t < c.T; t++) {
      q8->quantize_row(x + t * c.K, tmp, c.K);
      q8->dequantize_row(tmp, xa + t * c.K, c.K);
    }
    free(tmp);
  } else {
    memcpy(xa, x, (size_t)c.T * c.K * sizeof *xa);
  }
  double *ref = malloc((size_t)c.T * c.N * sizeof *ref);
  double *ref_x = malloc((size_t)c.T * c.N * sizeof *ref_x);
  for (int64_t t = 0; t < c.T; t++)
    for (int64_t r = 0; r < c.N; r++) {
      double a = 0, e = 0;
      for (int64_t i = 0; i < c.K; i++) {
        a += (double)wdq[r * c.K + i] * xa[t * c.K + i];
        e += (double)wdq[r * c.K + i] * x[t * c.K + i];
      }
      ref[t * c.N + r] = a;
      ref_x[t * c.N + r] = e;
    }

  strata_buf_t *wb = (seed & 1) ? be->buf_wrap_host(b, wq, wrb * c.N) : mkbuf(b, wq, wrb * c.N);
  ck_assert_ptr_nonnull(wb);
  strata_buf_t *xb = mkbuf(b, x, (size_t)c.T * c.K * sizeof(float));
  strata_buf_t *ob = nan_buf(b, (size_t)c.T * c.N);
  struct strata_tensor tw = tensor(wb, c.type, c.K, c.N), tx = tensor(xb, STRATA_TYPE_F32, c.K, c.T),
                       to = tensor(ob, STRATA_TYPE_F32, c.N, c.T);
  ck_assert_msg(be->matmul(b, &tw, &tx, &to) == 0, "%s", be->last_error(b));
  float *o = fetch(b, ob, (size_t)c.T * c.N);

  const size_t n = (size_t)c.T * c.N;
  double m2 = 0; /* see the header: the expected |ref|^2 */
  for (int64_t t = 0; t < c.T; t++)
    for (int64_t r = 0; r < c.N; r++) {
      double ww = 0, xx = 0;
      for (int64_t i = 0; i < c.K; i++) {
        ww += (double)wdq[r * c.K + i] * wdq[r * c.K + i];
        xx += (double)x[t * c.K + i] * x[t * c.K + i];
      }
      m2 += ww * xx / (double)c.K;
    }
  const int scalar = tier && strcmp(tier, "scalar") == 0;
  double bound = 1e-5, bound_x = 1e-2;
  if (c.type == STRATA_TYPE_F32 || !qact) bound_x = 1e-5;
  if (c.type == STRATA_TYPE_F16) bound_x = bound = scalar ? 2e-3 : 1e-5;
  if (c.type == STRATA_TYPE_BF16) bound_x = bound = scalar ? 1e-2 : 1e-5;
  /* the weights as given, then in the backend's own layout: the SIMD tiers
   * pack exactly the matrices that take 8-bit activations */
  struct strata_tensor tp;
  const int prep = be->prepare_weight(b, &tw, &tp);
  ck_assert_msg(prep == (!scalar && qact), "type %u tier %s K=%lld N=%lld: prepare_weight %d (%s)",
                c.type, tier_name(tier), (long long)c.K, (long long)c.N, prep, be->last_error(b));
  for (int pass = 0; pass < 1 + prep; pass++) {
    if (pass) {
      float *o0 = o;
      be->buf_free(b, ob);
      ob = nan_buf(b, n);
      to = tensor(ob, STRATA_TYPE_F32, c.N, c.T);
      ck_assert_int_eq(tp.ne[0], c.K);
      ck_assert_int_eq(tp.ne[1], c.N);
      ck_assert_msg(be->matmul(b, &tp, &tx, &to) == 0, "%s", be->last_error(b));
      o = fetch(b, ob, n);
      /* more tokens than the direct kernel takes: both ran the tile kernel
       * on the same packed rows */
      if (c.T > 3)
        ck_assert_msg(memcmp(o, o0, n * sizeof *o) == 0,
                      "type %u tier %s K=%lld N=%lld T=%lld: packed weights give other bits",
                      c.type, tier_name(tier), (long long)c.K, (long long)c.N, (long long)c.T);
      free(o0);
    }
    const double e = mm_err(o, ref, n, m2), ex = mm_err(o, ref_x, n, m2);
    ck_assert_msg(count_nan(o, n) == 0,
                  "type %u tier %s K=%lld N=%lld T=%lld%s: %zu outputs unwritten", c.type,
                  tier_name(tier), (long long)c.K, (long long)c.N, (long long)c.T,
                  pass ? " packed" : "", count_nan(o, n));
    ck_assert_msg(e <= bound && ex <= bound_x,
                  "type %u tier %s K=%lld N=%lld T=%lld%s: rel L2 error %.3g (bound %.1g), vs f32 "
                  "activations %.3g (bound %.1g)",
                  c.type, tier_name(tier), (long long)c.K, (long long)c.N, (long long)c.T,
                  pass ? " packed" : "", e, bound, ex, bound_x);
  }
  if (prep) be->buf_free(b, tp.buf);
  be->buf_free(b, wb);
  be->buf_free(b, xb);
  be->buf_free(b, ob);
  free(o);
  free(ref);
  free(ref_x);
  free(xa);
  free(wdq);
  free(wq);
  free(x);
  free(wf);
}

static const uint32_t all_types[] = {STRATA_TYPE_F32, STRATA_TYPE_F16, STRATA_TYPE_BF16,
                                     STRATA_TYPE_Q8_0, STRATA_TYPE_Q4_0};
static const int64_t token_counts[] = {1, 2, 3, 7, 16, 64, 130};

/* _i is the tier (loop test). */
START_TEST(matmul_all_types_and_token_counts) {
  const char *tier = tiers[_i];
  strata_backend_t *b = open_backend(tier, 2);
  uint64_t seed = 1000 + (uint64_t)_i;
  for (size_t ti = 0; ti < 5; ti++) {
    const uint32_t type = all_types[ti];
    const int blocky = type == STRATA_TYPE_Q8_0 || type == STRATA_TYPE_Q4_0;
    /* K: 3 blocks, 9 blocks (a ragged group of 8), 16 blocks; floats also
     * get a K that is not a multiple of 8 (the scalar tail) */
    const int64_t Ks[] = {96, 288, 512, blocky ? 64 : 172};
    const int64_t Ns[] = {37, 5, 67, 1};
    for (size_t ki = 0; ki < 4; ki++)
      for (size_t tc = 0; tc < sizeof token_counts / sizeof *token_counts; tc++) {
        struct mm_case c = {type, Ks[ki], Ns[(ki + tc) % 4], token_counts[tc]};
        check_matmul(b, tier, c, seed++);
      }
  }
  be->close(b);
}
END_TEST

/* The kernels quantize activations themselves (SIMD) where they can; the
 * quants must be the quant plugin's, bit for bit. With q8_0 weights that
 * select one element each (row r: the block of element r has scale 1.0 and
 * quant 1 at r, all else 0), every kernel's output is quant * d_a of element
 * r up to the float rounding of its offset correction (m * d_a * sum of the
 * block's quants, m <= 128: below d_a / 16), so a bound of d_a / 4 catches
 * any quant that differs from the plugin's by one or more. The activations
 * include ties (x.5 after scaling, both signs), zeros, tiny blocks (subnormal
 * fp16 scales) and one NaN block (the reference's own handling); T = 1..3
 * take the direct kernel, 4+ the tile kernel, and the packed weights
 * (prepare_weight, SIMD tiers) the tile kernel for every T. */
START_TEST(matmul_activation_quants_exact) {
  const char *tier = tiers[_i];
  strata_backend_t *b = open_backend(tier, 2);
  const struct strata_quant_vtable *q8 = quant(STRATA_TYPE_Q8_0);
  enum { NB = 9, K = NB * 32, NAN_BLOCK = 7 };
  const size_t wrb = row_bytes(STRATA_TYPE_Q8_0, K);
  uint8_t *wq = calloc(K, wrb);
  for (int r = 0; r < K; r++)
    for (int bi = 0; bi < NB; bi++) {
      uint8_t *blk = wq + (size_t)r * wrb + (size_t)bi * 34;
      if (bi != r / 32) continue; /* scale 0: contributes exactly 0 */
      const uint16_t one = strata_fp32_to_fp16(1.0f);
      memcpy(blk, &one, 2);
      blk[2 + r % 32] = 1;
    }
  const int64_t Ts[] = {1, 2, 3, 4, 16};
  uint64_t s = 4242;
  for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
    const int64_t T = Ts[ti];
    float *x = rand_floats(&s, (size_t)T * K, 3.0f);
    for (int64_t t = 0; t < T; t++) {
      float *xt = x + t * K;
      /* amax 127 (d = 1): halves are exact ties */
      for (int j = 0; j < 32; j++) xt[j] = (float)((j % 2 ? -1 : 1) * (j * 4 % 127)) + (j % 3 ? 0.5f : 0.0f);
      xt[5] = 127.0f;
      for (int j = 32; j < 64; j++) xt[j] = 0.0f;                   /* all-zero block */
      for (int j = 64; j < 96; j++) xt[j] *= 1e-6f;                  /* subnormal fp16 d */
      for (int j = 96; j < 128; j++) xt[j] = (float)(j - 112) * 0.25f; /* more ties */
      if (t == 1) xt[NAN_BLOCK * 32 + 3] = NAN;
    }
    const size_t arb = row_bytes(STRATA_TYPE_Q8_0, K);
    uint8_t *xq = malloc(arb);
    strata_buf_t *wb = mkbuf(b, wq, wrb * K), *xb = mkbuf(b, x, (size_t)T * K * sizeof(float));
    strata_buf_t *ob = nan_buf(b, (size_t)T * K);
    struct strata_tensor tw = tensor(wb, STRATA_TYPE_Q8_0, K, K),
                         tx = tensor(xb, STRATA_TYPE_F32, K, T), to = tensor(ob, STRATA_TYPE_F32, K, T);
    struct strata_tensor tp;
    const int prep = be->prepare_weight(b, &tw, &tp);
    ck_assert_int_eq(prep, strcmp(tier_name(tier), "scalar") != 0);
    for (int pass = 0; pass < 1 + prep; pass++) {
      ck_assert_msg(be->matmul(b, pass ? &tp : &tw, &tx, &to) == 0, "%s", be->last_error(b));
      float *o = fetch(b, ob, (size_t)T * K);
      for (int64_t t = 0; t < T; t++) {
        q8->quantize_row(x + t * K, xq, K);
        for (int r = 0; r < K; r++) {
          const uint8_t *blk = xq + (size_t)(r / 32) * 34;
          uint16_t h;
          memcpy(&h, blk, 2);
          const float da = strata_fp16_to_fp32(h);
          const float want = (float)(int8_t)blk[2 + r % 32] * da;
          const float got = o[t * K + r];
          if (t == 1 && r / 32 == NAN_BLOCK) continue; /* NaN poisons the block's dot */
          ck_assert_msg(fabsf(got - want) <= 0.25f * da,
                        "tier %s T=%lld%s token %lld element %d: %.9g, the plugin's quants give %.9g",
                        tier_name(tier), (long long)T, pass ? " packed" : "", (long long)t, r,
                        (double)got, (double)want);
        }
      }
      free(o);
    }
    if (prep) be->buf_free(b, tp.buf);
    be->buf_free(b, wb);
    be->buf_free(b, xb);
    be->buf_free(b, ob);
    free(xq);
    free(x);
  }
  free(wq);
  be->close(b);
}
END_TEST

/* Long rows and more tokens than one L2 tile holds. */
START_TEST(matmul_large) {
  const char *tier = tiers[_i];
  strata_backend_t *b = open_backend(tier, 2);
  const struct mm_case cases[] = {
      {STRATA_TYPE_Q8_0, 4096, 13, 300}, {STRATA_TYPE_Q4_0, 4096, 11, 300},
      {STRATA_TYPE_Q8_0, 2048, 67, 1},   {STRATA_TYPE_Q4_0, 5632, 33, 2},
      {STRATA_TYPE_F16, 2048, 9, 300},   {STRATA_TYPE_F32, 2048, 7, 270},
      {STRATA_TYPE_BF16, 1024, 6, 9},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_matmul(b, tier, cases[i], 77 + i);
  be->close(b);
}
END_TEST

/* With the plugin's default q8_activations_min (65536 weights), a small
 * quantized matrix takes f32 activations (the bound against them is 1e-5)
 * and a large one 8-bit activations (1e-5 against the quantized reference,
 * and within 1e-2 of the f32 one), on every tier. */
START_TEST(matmul_activation_policy) {
  init_plugins(-1);
  ck_assert_int_eq(g_qact_min, 65536);
  for (int tier = 0; tier < N_TIERS; tier++) {
    strata_backend_t *b = open_backend(tiers[tier], 2);
    const struct mm_case cases[] = {
        {STRATA_TYPE_Q8_0, 64, 512, 7},  {STRATA_TYPE_Q4_0, 64, 172, 1},
        {STRATA_TYPE_Q8_0, 172 - 12, 64, 130}, {STRATA_TYPE_Q8_0, 512, 203, 3},
        {STRATA_TYPE_Q4_0, 256, 257, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
      check_matmul(b, tiers[tier], cases[i], 500 + i);
    be->close(b);
  }
}
END_TEST

/* The work is split over output rows, so the thread count must not change a
 * single bit. */
START_TEST(matmul_threads_agree) {
  /* 3 and 5 threads split the work unevenly, and decode (1..3 tokens) hands
   * out row groups by work stealing: every row must still be computed once,
   * the same way */
  enum { NB = 4 };
  const int threads[NB] = {1, 2, 3, 5};
  strata_backend_t *bs[NB];
  for (int k = 0; k < NB; k++) bs[k] = open_backend(NULL, threads[k]);
  const struct mm_case cases[] = {
      {STRATA_TYPE_Q8_0, 512, 203, 1}, {STRATA_TYPE_Q4_0, 512, 203, 64},
      {STRATA_TYPE_F16, 256, 203, 2},  {STRATA_TYPE_F32, 300, 203, 33},
      {STRATA_TYPE_Q4_0, 2048, 259, 3}, {STRATA_TYPE_Q8_0, 1024, 1001, 2},
  };
  uint64_t s = 5;
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const struct mm_case c = cases[i];
    const size_t wrb = row_bytes(c.type, c.K), n = (size_t)c.T * c.N;
    float *wf = rand_floats(&s, (size_t)c.N * c.K, 1.0f);
    float *x = rand_floats(&s, (size_t)c.T * c.K, 1.0f);
    uint8_t *wq = malloc(wrb * c.N);
    for (int64_t r = 0; r < c.N; r++) quant(c.type)->quantize_row(wf + r * c.K, wq + r * wrb, c.K);
    for (int pk = 0; pk < 2; pk++) {
      float *o[NB];
      for (int k = 0; k < NB; k++) {
        strata_buf_t *wb = mkbuf(bs[k], wq, wrb * c.N);
        strata_buf_t *xb = mkbuf(bs[k], x, (size_t)c.T * c.K * 4);
        strata_buf_t *ob = nan_buf(bs[k], n);
        struct strata_tensor tw = tensor(wb, c.type, c.K, c.N), tx = tensor(xb, STRATA_TYPE_F32, c.K, c.T),
                             to = tensor(ob, STRATA_TYPE_F32, c.N, c.T), tp;
        const int prep = pk ? be->prepare_weight(bs[k], &tw, &tp) : 0;
        ck_assert_int_ge(prep, 0);
        ck_assert_int_eq(be->matmul(bs[k], prep ? &tp : &tw, &tx, &to), 0);
        o[k] = fetch(bs[k], ob, n);
        ck_assert_msg(count_nan(o[k], n) == 0, "case %zu%s, %d threads: rows unwritten", i,
                      pk ? " packed" : "", threads[k]);
        if (prep) be->buf_free(bs[k], tp.buf);
        be->buf_free(bs[k], wb);
        be->buf_free(bs[k], xb);
        be->buf_free(bs[k], ob);
      }
      for (int k = 1; k < NB; k++)
        ck_assert_msg(memcmp(o[0], o[k], n * 4) == 0, "case %zu%s: %d threads differ from 1", i,
                      pk ? " packed" : "", threads[k]);
      for (int k = 0; k < NB; k++) free(o[k]);
    }
    free(wq);
    free(x);
    free(wf);
  }
  for (int k = 0; k < NB; k++) be->close(bs[k]);
}
END_TEST

/* Views at an offset inside a larger buffer; wrapped weights used in place. */
START_TEST(matmul_offsets_and_wrapped_in_place) {
  strata_backend_t *b = open_backend(NULL, 2);
  const int64_t K = 64, N = 6, T = 2;
  uint64_t s = 9;
  float *w = rand_floats(&s, (size_t)N * K, 1.0f), *x = rand_floats(&s, (size_t)T * K + 16, 1.0f);
  strata_buf_t *wb = be->buf_wrap_host(b, w, (size_t)N * K * 4);
  strata_buf_t *xb = mkbuf(b, x, ((size_t)T * K + 16) * 4);
  strata_buf_t *ob = nan_buf(b, (size_t)T * N + 8);
  struct strata_tensor tw = tensor(wb, STRATA_TYPE_F32, K, N);
  struct strata_tensor tx = {.buf = xb, .offset = 64, .type = STRATA_TYPE_F32, .ne = {K, T}};
  struct strata_tensor to = {.buf = ob, .offset = 32, .type = STRATA_TYPE_F32, .ne = {N, T}};
  for (int round = 0; round < 2; round++) {
    ck_assert_int_eq(be->matmul(b, &tw, &tx, &to), 0);
    float *o = fetch(b, ob, (size_t)T * N + 8);
    for (int i = 0; i < 8; i++) ck_assert(isnan(o[i])); /* before the view: untouched */
    for (int64_t t = 0; t < T; t++)
      for (int64_t r = 0; r < N; r++) {
        double ref = 0;
        for (int64_t i = 0; i < K; i++) ref += (double)w[r * K + i] * x[16 + t * K + i];
        ck_assert_double_eq_tol(o[8 + t * N + r], ref, 1e-5);
      }
    free(o);
    w[3] += 1.0f; /* in place: the next round must see the change */
  }
  be->buf_free(b, wb);
  be->buf_free(b, xb);
  be->buf_free(b, ob);
  free(w);
  free(x);
  be->close(b);
}
END_TEST

/* ---- embed, get_rows ----------------------------------------------------------------- */

START_TEST(embed_all_types) {
  strata_backend_t *b = open_backend(NULL, 2);
  const int64_t dim = 64, vocab = 50;
  const int T = 9;
  struct simple_batch sb;
  simple_batch(&sb, T);
  const int32_t toks[] = {0, 49, 7, 7, 23, 1, 48, 0, 30};
  memcpy(sb.tokens, toks, sizeof toks);
  ck_assert_int_eq(be->set_batch(b, &sb.b), 0);
  uint64_t s = 11;
  for (size_t ti = 0; ti < 5; ti++) {
    const uint32_t type = all_types[ti];
    const struct strata_quant_vtable *q = quant(type);
    const size_t rb = row_bytes(type, dim);
    float *tf = rand_floats(&s, (size_t)dim * vocab, 2.0f);
    uint8_t *tq = malloc(rb * vocab);
    for (int64_t r = 0; r < vocab; r++) q->quantize_row(tf + r * dim, tq + r * rb, dim);
    strata_buf_t *tb = mkbuf(b, tq, rb * vocab), *ob = nan_buf(b, (size_t)dim * T);
    struct strata_tensor tt = tensor(tb, type, dim, vocab), to = tensor(ob, STRATA_TYPE_F32, dim, T);
    ck_assert_msg(be->embed(b, &tt, &to) == 0, "%s", be->last_error(b));
    float *o = fetch(b, ob, (size_t)dim * T), ref[64];
    for (int t = 0; t < T; t++) {
      q->dequantize_row(tq + (size_t)toks[t] * rb, ref, dim);
      ck_assert_msg(memcmp(ref, o + t * dim, sizeof ref) == 0, "type %u token %d", type, t);
    }
    free(o);
    be->buf_free(b, tb);
    be->buf_free(b, ob);
    free(tq);
    free(tf);
  }
  be->close(b);
}
END_TEST

START_TEST(get_rows_selects) {
  strata_backend_t *b = open_backend(NULL, 2);
  const int64_t dim = 40;
  const int T = 7;
  struct simple_batch sb;
  simple_batch(&sb, T);
  const int32_t rows[] = {6, 0, 3, 3};
  memcpy(sb.out_rows, rows, sizeof rows);
  sb.b.n_out = 4;
  ck_assert_int_eq(be->set_batch(b, &sb.b), 0);
  uint64_t s = 12;
  float *x = rand_floats(&s, (size_t)dim * T, 1.0f);
  strata_buf_t *xb = mkbuf(b, x, (size_t)dim * T * 4), *ob = nan_buf(b, (size_t)dim * 4);
  struct strata_tensor tx = tensor(xb, STRATA_TYPE_F32, dim, T), to = tensor(ob, STRATA_TYPE_F32, dim, 4);
  ck_assert_int_eq(be->get_rows(b, &tx, &to), 0);
  float *o = fetch(b, ob, (size_t)dim * 4);
  for (int j = 0; j < 4; j++) ck_assert_int_eq(memcmp(o + j * dim, x + rows[j] * dim, dim * 4), 0);
  /* out must have n_out rows */
  to.ne[1] = 3;
  ck_assert_int_eq(be->get_rows(b, &tx, &to), -1);
  free(o);
  free(x);
  be->buf_free(b, xb);
  be->buf_free(b, ob);
  be->close(b);
}
END_TEST

/* ---- row-wise ops -------------------------------------------------------------------- */

/* _i is the tier (loop test); 2051: not whole vectors */
START_TEST(rmsnorm_matches) {
  strata_backend_t *b = open_backend(tiers[_i], 2);
  const int64_t dims[] = {96, 2048, 2051};
  const int64_t Ts[] = {5, 33, 3};
  uint64_t s = 13;
  for (int k = 0; k < 3; k++) {
    const int64_t dim = dims[k], T = Ts[k];
    float *x = rand_floats(&s, (size_t)dim * T, 3.0f), *w = rand_floats(&s, (size_t)dim, 1.0f);
    const float eps = 1e-5f;
    double *ref = malloc((size_t)dim * T * sizeof *ref);
    for (int64_t t = 0; t < T; t++) {
      double ss = 0;
      for (int64_t i = 0; i < dim; i++) ss += (double)x[t * dim + i] * x[t * dim + i];
      const double sc = 1.0 / sqrt(ss / dim + eps);
      for (int64_t i = 0; i < dim; i++) ref[t * dim + i] = x[t * dim + i] * sc * w[i];
    }
    for (int inplace = 0; inplace < 2; inplace++) {
      strata_buf_t *xb = mkbuf(b, x, (size_t)dim * T * 4), *wb = mkbuf(b, w, (size_t)dim * 4);
      strata_buf_t *ob = inplace ? xb : nan_buf(b, (size_t)dim * T);
      struct strata_tensor tx = tensor(xb, STRATA_TYPE_F32, dim, T), tw = tensor(wb, STRATA_TYPE_F32, dim, 1),
                           to = tensor(ob, STRATA_TYPE_F32, dim, T);
      ck_assert_int_eq(be->rmsnorm(b, &tx, &tw, eps, &to), 0);
      float *o = fetch(b, ob, (size_t)dim * T);
      ck_assert_msg(max_abs_err(o, ref, (size_t)dim * T) <= 1e-5 * 4, "tier %s dim %lld inplace %d",
                    tier_name(tiers[_i]), (long long)dim, inplace);
      ck_assert_double_le(rel_l2(o, ref, (size_t)dim * T), 1e-6);
      free(o);
      /* weight of the wrong length */
      tw.ne[0] = dim - 1;
      ck_assert_int_eq(be->rmsnorm(b, &tx, &tw, eps, &to), -1);
      be->buf_free(b, xb);
      be->buf_free(b, wb);
      if (!inplace) be->buf_free(b, ob);
    }
    free(ref);
    free(x);
    free(w);
  }
  be->close(b);
}
END_TEST

/* _i is the tier (loop test) */
START_TEST(add_add_bias_swiglu) {
  strata_backend_t *b = open_backend(tiers[_i], 2);
  const int64_t n = 301, T = 131; /* threaded, and not whole vectors */
  uint64_t s = 14;
  const size_t N = (size_t)n * T;
  float *a = rand_floats(&s, N, 4.0f), *c = rand_floats(&s, N, 4.0f), *bias = rand_floats(&s, n, 1.0f);
  /* swiglu's gates: a, and some far out on both sides, where e^-g
   * overflows or vanishes */
  float *g = malloc(N * sizeof *g);
  memcpy(g, a, N * sizeof *g);
  for (size_t i = 0; i < N; i += 97) g[i] = i % 2 ? 95.0f + (float)(i % 7) : -95.0f - (float)(i % 7);
  double *ref = malloc(N * sizeof *ref);
  for (int inplace = 0; inplace < 2; inplace++) {
    /* add */
    strata_buf_t *ab = mkbuf(b, a, N * 4), *cb = mkbuf(b, c, N * 4);
    strata_buf_t *ob = inplace ? ab : nan_buf(b, N);
    struct strata_tensor ta = tensor(ab, STRATA_TYPE_F32, n, T), tc = tensor(cb, STRATA_TYPE_F32, n, T),
                         to = tensor(ob, STRATA_TYPE_F32, n, T);
    ck_assert_int_eq(be->add(b, &ta, &tc, &to), 0);
    float *o = fetch(b, ob, N);
    for (size_t i = 0; i < N; i++) ref[i] = (double)a[i] + c[i];
    ck_assert_double_le(max_abs_err(o, ref, N), 1e-6);
    free(o);
    if (!inplace) be->buf_free(b, ob);
    be->buf_free(b, ab);

    /* swiglu: silu(gate) * up, out may be gate */
    ab = mkbuf(b, g, N * 4);
    ob = inplace ? ab : nan_buf(b, N);
    ta = tensor(ab, STRATA_TYPE_F32, n, T);
    to = tensor(ob, STRATA_TYPE_F32, n, T);
    ck_assert_int_eq(be->swiglu(b, &ta, &tc, &to), 0);
    o = fetch(b, ob, N);
    for (size_t i = 0; i < N; i++) ref[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * c[i];
    ck_assert_msg(rel_l2(o, ref, N) <= 1e-6, "tier %s swiglu rel L2 %g", tier_name(tiers[_i]),
                  rel_l2(o, ref, N));
    for (size_t i = 0; i < N; i++) {
      const double e = fabs(o[i] - ref[i]) / (fabs(ref[i]) > 1.0 ? fabs(ref[i]) : 1.0);
      ck_assert_msg(e <= 1e-5, "tier %s swiglu(%g, %g) = %g, want %g", tier_name(tiers[_i]),
                    (double)g[i], (double)c[i], (double)o[i], ref[i]);
    }
    free(o);
    if (!inplace) be->buf_free(b, ob);
    be->buf_free(b, ab);
    be->buf_free(b, cb);
  }
  /* add_bias, in place by definition */
  strata_buf_t *ab = mkbuf(b, a, N * 4), *bb = mkbuf(b, bias, (size_t)n * 4);
  struct strata_tensor ta = tensor(ab, STRATA_TYPE_F32, n, T), tb = tensor(bb, STRATA_TYPE_F32, n, 1);
  ck_assert_int_eq(be->add_bias(b, &ta, &tb), 0);
  float *o = fetch(b, ab, N);
  for (size_t i = 0; i < N; i++) ref[i] = (double)a[i] + bias[i % n];
  ck_assert_double_le(max_abs_err(o, ref, N), 1e-6);
  free(o);
  tb.ne[0] = n + 1;
  ck_assert_int_eq(be->add_bias(b, &ta, &tb), -1);
  be->buf_free(b, ab);
  be->buf_free(b, bb);
  free(ref);
  free(a);
  free(g);
  free(c);
  free(bias);
  be->close(b);
}
END_TEST

START_TEST(rope_both_modes) {
  strata_backend_t *b = open_backend(NULL, 2);
  const int T = 37;
  struct simple_batch sb;
  simple_batch(&sb, T);
  uint64_t s = 15;
  for (int t = 0; t < T; t++) sb.positions[t] = (int32_t)(rng_next(&s) % 5000);
  sb.positions[0] = 0;
  ck_assert_int_eq(be->set_batch(b, &sb.b), 0);
  const int heads = 3;
  const int hds[] = {16, 64, 64, 20};
  const int ndims[] = {16, 64, 32, 12};
  for (int v = 0; v < 4; v++)
    for (int neox = 0; neox < 2; neox++) {
      const int hd = hds[v];
      const struct strata_rope r = {.theta = v == 1 ? 1e6f : 10000.0f,
                                    .freq_scale = v == 2 ? 0.25f : 1.0f, .neox = neox,
                                    .n_dims = ndims[v]};
      const size_t N = (size_t)heads * hd * T;
      float *x = rand_floats(&s, N, 1.0f);
      double *ref = malloc(N * sizeof *ref);
      for (int t = 0; t < T; t++)
        for (int h = 0; h < heads; h++) {
          const float *xi = x + ((size_t)t * heads + h) * hd;
          double *ro = ref + ((size_t)t * heads + h) * hd;
          for (int i = 0; i < hd; i++) ro[i] = xi[i];
          for (int i = 0; i < r.n_dims / 2; i++) {
            const double ang = sb.positions[t] * (double)r.freq_scale *
                               pow((double)r.theta, -2.0 * i / r.n_dims);
            const int i0 = neox ? i : 2 * i, i1 = neox ? i + r.n_dims / 2 : 2 * i + 1;
            ro[i0] = xi[i0] * cos(ang) - xi[i1] * sin(ang);
            ro[i1] = xi[i0] * sin(ang) + xi[i1] * cos(ang);
          }
        }
      strata_buf_t *xb = mkbuf(b, x, N * 4);
      struct strata_tensor tx = tensor(xb, STRATA_TYPE_F32, (int64_t)heads * hd, T);
      ck_assert_int_eq(be->rope(b, &tx, heads, hd, &r), 0);
      float *o = fetch(b, xb, N);
      ck_assert_msg(max_abs_err(o, ref, N) <= 1e-5, "hd %d n_dims %d neox %d: err %g", hd,
                    r.n_dims, neox, max_abs_err(o, ref, N));
      free(o);
      be->buf_free(b, xb);
      free(ref);
      free(x);
    }
  /* the backend keeps the angles of a batch: a new batch with the same
   * rope parameters gets its own positions' */
  const struct strata_rope r = {.theta = 10000.0f, .freq_scale = 1.0f, .neox = 0, .n_dims = 16};
  float *x = rand_floats(&s, (size_t)16 * T, 1.0f);
  float *got[2];
  for (int round = 0; round < 2; round++) {
    if (round) {
      for (int t = 0; t < T; t++) sb.positions[t] += 1 + t;
      ck_assert_int_eq(be->set_batch(b, &sb.b), 0);
    }
    strata_buf_t *xb = mkbuf(b, x, (size_t)16 * T * 4);
    struct strata_tensor tx = tensor(xb, STRATA_TYPE_F32, 16, T);
    ck_assert_int_eq(be->rope(b, &tx, 1, 16, &r), 0);
    got[round] = fetch(b, xb, (size_t)16 * T);
    be->buf_free(b, xb);
  }
  for (int t = 1; t < T; t++) {
    const double ang = (double)sb.positions[t] * pow(10000.0, -2.0 * 3 / 16);
    const double want = x[t * 16 + 6] * cos(ang) - x[t * 16 + 7] * sin(ang);
    ck_assert_msg(fabs(got[1][t * 16 + 6] - want) <= 1e-5, "token %d: %g, want %g", t,
                  got[1][t * 16 + 6], want);
    ck_assert_msg(got[0][t * 16 + 6] != got[1][t * 16 + 6], "token %d: the old angle", t);
  }
  free(got[0]);
  free(got[1]);
  free(x);
  be->close(b);
}
END_TEST

/* ---- kv_store + attention --------------------------------------------------------------- */

struct attn_case {
  const char *tier;
  uint32_t kv_type;
  int block_size, group, head_dim;
  int long_decode; /* one-token decodes at 257..1000 positions instead */
};

static float kv_round(uint32_t type, float v) {
  return type == STRATA_TYPE_F16 ? strata_fp16_to_fp32(strata_fp32_to_fp16(v)) : v;
}

static void kv_put(uint32_t type, uint8_t *row, int64_t i, float v) {
  if (type == STRATA_TYPE_F16) {
    const uint16_t h = strata_fp32_to_fp16(v);
    memcpy(row + i * 2, &h, 2);
  } else {
    memcpy(row + i * 4, &v, 4);
  }
}

/* Four sequences in one batch: a prefill from 0, a one-token decode, and two
 * prefill chunks that start mid-sequence, over shuffled blocks of a shared
 * pool; or (long_decode) four one-token decodes over long contexts, which
 * the grouped kernel splits by position range between the threads and
 * merges. Past context is written straight into the caches; the new tokens
 * go through kv_store. Unused cache rows hold NaN, so reading a wrong row
 * shows. */
static void check_attention(struct attn_case ac, uint64_t seed) {
  strata_backend_t *b = open_backend(ac.tier, 2);
  enum { NS = 4 };
  const int32_t short_start[NS] = {0, 40, 13, 50}, long_start[NS] = {999, 300, 256, 700};
  const int32_t short_count[NS] = {9, 1, 5, 7}, long_count[NS] = {1, 1, 1, 1};
  const int32_t *start = ac.long_decode ? long_start : short_start; /* first new position */
  const int32_t *count = ac.long_decode ? long_count : short_count; /* new tokens */
  const int n_kv = 2, n_heads = n_kv * ac.group, hd = ac.head_dim, bs = ac.block_size;
  const int64_t kvd = (int64_t)n_kv * hd, qd = (int64_t)n_heads * hd;
  const uint32_t kt = ac.kv_type;
  const size_t es = kt == STRATA_TYPE_F16 ? 2 : 4, crow = (size_t)kvd * es;
  uint64_t s = seed;

  int32_t seq_len[NS], seq_start[NS + 1], nblk[NS], max_blocks = 0, total_blocks = 0;
  seq_start[0] = 0;
  for (int q = 0; q < NS; q++) {
    seq_len[q] = start[q] + count[q];
    seq_start[q + 1] = seq_start[q] + count[q];
    nblk[q] = (seq_len[q] + bs - 1) / bs;
    if (nblk[q] + 1 > max_blocks) max_blocks = nblk[q] + 1;
    total_blocks += nblk[q];
  }
  const int32_t pool = total_blocks + 5, T = seq_start[NS];
  /* shuffled block ids */
  int32_t *perm = malloc(pool * sizeof *perm);
  for (int32_t i = 0; i < pool; i++) perm[i] = i;
  for (int32_t i = pool - 1; i > 0; i--) {
    const int32_t j = (int32_t)(rng_next(&s) % (uint64_t)(i + 1)), t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  int32_t *bt = malloc((size_t)NS * max_blocks * sizeof *bt);
  for (int32_t i = 0, k = 0; i < NS; i++)
    for (int32_t p = 0; p < max_blocks; p++) bt[i * max_blocks + p] = p < nblk[i] ? perm[k++] : -1;

  /* host mirror of the caches: NaN everywhere, then the past context */
  const int64_t rows = (int64_t)pool * bs;
  uint8_t *kc = malloc(rows * crow), *vc = malloc(rows * crow);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < kvd; i++) {
      kv_put(kt, kc + r * crow, i, NAN);
      kv_put(kt, vc + r * crow, i, NAN);
    }
  /* reference K/V per sequence and position (the rounded cache values) */
  float *Kr[NS], *Vr[NS];
  for (int q = 0; q < NS; q++) {
    Kr[q] = malloc((size_t)seq_len[q] * kvd * sizeof(float));
    Vr[q] = malloc((size_t)seq_len[q] * kvd * sizeof(float));
    for (int32_t p = 0; p < start[q]; p++) {
      const int64_t slot = (int64_t)bt[q * max_blocks + p / bs] * bs + p % bs;
      for (int64_t i = 0; i < kvd; i++) {
        const float kv = kv_round(kt, frand(&s)), vv = kv_round(kt, frand(&s));
        Kr[q][p * kvd + i] = kv;
        Vr[q][p * kvd + i] = vv;
        kv_put(kt, kc + slot * crow, i, kv);
        kv_put(kt, vc + slot * crow, i, vv);
      }
    }
  }
  /* the step's tokens */
  int32_t *pos = malloc(T * sizeof *pos), *slots = malloc(T * sizeof *slots);
  float *k = rand_floats(&s, (size_t)T * kvd, 1.0f), *v = rand_floats(&s, (size_t)T * kvd, 1.0f);
  float *qv = rand_floats(&s, (size_t)T * qd, 2.0f);
  for (int q = 0; q < NS; q++)
    for (int32_t j = 0; j < count[q]; j++) {
      const int32_t i = seq_start[q] + j, p = start[q] + j;
      pos[i] = p;
      slots[i] = bt[q * max_blocks + p / bs] * bs + p % bs;
      for (int64_t d = 0; d < kvd; d++) {
        Kr[q][p * kvd + d] = kv_round(kt, k[i * kvd + d]);
        Vr[q][p * kvd + d] = kv_round(kt, v[i * kvd + d]);
      }
    }
  struct strata_batch batch = {.size = sizeof batch, .n_tokens = T, .positions = pos,
                               .slots = slots, .n_seqs = NS, .seq_start = seq_start,
                               .seq_len = seq_len, .block_tables = bt, .max_blocks = max_blocks,
                               .block_size = bs};
  ck_assert_msg(be->set_batch(b, &batch) == 0, "%s", be->last_error(b));

  strata_buf_t *kcb = mkbuf(b, kc, rows * crow), *vcb = mkbuf(b, vc, rows * crow);
  strata_buf_t *kb = mkbuf(b, k, (size_t)T * kvd * 4), *vb = mkbuf(b, v, (size_t)T * kvd * 4);
  strata_buf_t *qb = mkbuf(b, qv, (size_t)T * qd * 4), *ob = nan_buf(b, (size_t)T * qd);
  struct strata_tensor tkc = tensor(kcb, kt, kvd, rows), tvc = tensor(vcb, kt, kvd, rows);
  struct strata_tensor tk = tensor(kb, STRATA_TYPE_F32, kvd, T), tv = tensor(vb, STRATA_TYPE_F32, kvd, T);
  struct strata_tensor tq = tensor(qb, STRATA_TYPE_F32, qd, T), to = tensor(ob, STRATA_TYPE_F32, qd, T);
  ck_assert_msg(be->kv_store(b, &tk, &tv, &tkc, &tvc) == 0, "%s", be->last_error(b));

  /* kv_store wrote exactly the slots' rows, rounded to the cache type */
  for (int32_t i = 0; i < T; i++)
    for (int64_t d = 0; d < kvd; d++) {
      kv_put(kt, kc + slots[i] * crow, d, k[i * kvd + d]);
      kv_put(kt, vc + slots[i] * crow, d, v[i * kvd + d]);
    }
  uint8_t *back = malloc(rows * crow);
  ck_assert_int_eq(be->download(b, kcb, 0, back, rows * crow), 0);
  ck_assert_msg(memcmp(back, kc, rows * crow) == 0, "k cache differs after kv_store");
  ck_assert_int_eq(be->download(b, vcb, 0, back, rows * crow), 0);
  ck_assert_msg(memcmp(back, vc, rows * crow) == 0, "v cache differs after kv_store");
  free(back);

  const struct strata_attention at = {.n_heads = n_heads, .n_kv_heads = n_kv, .head_dim = hd,
                                      .scale = 1.0f / sqrtf((float)hd)};
  ck_assert_msg(be->attention(b, &tq, &tkc, &tvc, &at, &to) == 0, "%s", be->last_error(b));
  float *o = fetch(b, ob, (size_t)T * qd);

  double *ref = malloc((size_t)T * qd * sizeof *ref), *w = malloc(1024 * sizeof *w);
  for (int q = 0; q < NS; q++)
    for (int32_t i = seq_start[q]; i < seq_start[q + 1]; i++)
      for (int h = 0; h < n_heads; h++) {
        const int kvh = h / ac.group;
        const float *qi = qv + i * qd + h * hd;
        const int32_t np = pos[i] + 1;
        double mx = -INFINITY, sum = 0;
        for (int32_t p = 0; p < np; p++) {
          double d = 0;
          for (int e = 0; e < hd; e++) d += (double)qi[e] * Kr[q][p * kvd + kvh * hd + e];
          w[p] = d * at.scale;
          if (w[p] > mx) mx = w[p];
        }
        for (int32_t p = 0; p < np; p++) sum += (w[p] = exp(w[p] - mx));
        for (int e = 0; e < hd; e++) {
          double acc = 0;
          for (int32_t p = 0; p < np; p++) acc += w[p] * Vr[q][p * kvd + kvh * hd + e];
          ref[i * qd + h * hd + e] = acc / sum;
        }
      }
  const size_t n = (size_t)T * qd;
  ck_assert_msg(count_nan(o, n) == 0, "tier %s kv %s bs %d group %d hd %d%s: %zu NaN outputs",
                tier_name(ac.tier), kt == STRATA_TYPE_F16 ? "f16" : "f32", bs, ac.group, hd,
                ac.long_decode ? " long" : "", count_nan(o, n));
  ck_assert_msg(max_abs_err(o, ref, n) <= 1e-5 && rel_l2(o, ref, n) <= 1e-5,
                "tier %s kv %s bs %d group %d hd %d%s: max err %g rel %g", tier_name(ac.tier),
                kt == STRATA_TYPE_F16 ? "f16" : "f32", bs, ac.group, hd,
                ac.long_decode ? " long" : "", max_abs_err(o, ref, n), rel_l2(o, ref, n));

  /* a block table entry past the cache is refused, not read */
  bt[1 * max_blocks + 0] = pool;
  ck_assert_int_eq(be->set_batch(b, &batch), 0);
  ck_assert_int_eq(be->attention(b, &tq, &tkc, &tvc, &at, &to), -1);
  ck_assert_ptr_nonnull(strstr(be->last_error(b), "block"));

  free(o);
  free(ref);
  free(w);
  for (int q = 0; q < NS; q++) {
    free(Kr[q]);
    free(Vr[q]);
  }
  be->buf_free(b, kcb);
  be->buf_free(b, vcb);
  be->buf_free(b, kb);
  be->buf_free(b, vb);
  be->buf_free(b, qb);
  be->buf_free(b, ob);
  free(pos);
  free(slots);
  free(k);
  free(v);
  free(qv);
  free(kc);
  free(vc);
  free(bt);
  free(perm);
  be->close(b);
}

/* _i: tier x kv type x block size x group x head_dim */
START_TEST(kv_store_attention_paged) {
  /* groups 8 and 4 take the grouped kernel's unrolled paths, 5 its
   * general one, 12 two subgroups (8 + 4); head_dim 20 the per-head one */
  const int bss[] = {1, 16, 32}, groups[] = {1, 2, 4, 5, 8, 12}, hds[] = {64, 20};
  int i = _i;
  struct attn_case ac;
  ac.head_dim = hds[i % 2];
  i /= 2;
  ac.group = groups[i % 6];
  i /= 6;
  ac.block_size = bss[i % 3];
  i /= 3;
  ac.kv_type = i % 2 ? STRATA_TYPE_F16 : STRATA_TYPE_F32;
  i /= 2;
  ac.long_decode = i % 2;
  i /= 2;
  ac.tier = tiers[i];
  check_attention(ac, 100 + (uint64_t)_i);
}
END_TEST

/* ---- errors ------------------------------------------------------------------------------ */

#define EXPECT_FAIL(call, needle)                                                           \
  do {                                                                                      \
    ck_assert_int_eq((call), -1);                                                           \
    ck_assert_msg(strstr(be->last_error(b), needle) != NULL, "error '%s' lacks '%s'",       \
                  be->last_error(b), needle);                                               \
  } while (0)

START_TEST(errors_are_reported) {
  strata_backend_t *b = open_backend(NULL, 2);
  /* no batch yet */
  strata_buf_t *fb = nan_buf(b, 4096), *ob = nan_buf(b, 4096);
  struct strata_tensor t64 = tensor(fb, STRATA_TYPE_F32, 64, 2), o64 = tensor(ob, STRATA_TYPE_F32, 64, 2);
  const struct strata_rope r = {.theta = 10000.0f, .freq_scale = 1.0f, .neox = 0, .n_dims = 16};
  EXPECT_FAIL(be->rope(b, &t64, 4, 16, &r), "set_batch");
  EXPECT_FAIL(be->embed(b, &t64, &o64), "set_batch");

  /* matmul shapes and types */
  strata_buf_t *wb = nan_buf(b, 64 * 8);
  struct strata_tensor w = tensor(wb, STRATA_TYPE_F32, 64, 8), x = tensor(fb, STRATA_TYPE_F32, 32, 2),
                       out = tensor(ob, STRATA_TYPE_F32, 8, 2);
  EXPECT_FAIL(be->matmul(b, &w, &x, &out), "matmul x");
  x.ne[0] = 64;
  out.ne[0] = 9;
  EXPECT_FAIL(be->matmul(b, &w, &x, &out), "matmul out");
  out.ne[0] = 8;
  out.ne[1] = 3;
  EXPECT_FAIL(be->matmul(b, &w, &x, &out), "matmul out");
  out.ne[1] = 2;
  ck_assert_int_eq(be->matmul(b, &w, &x, &out), 0);
  w.type = 9999;
  EXPECT_FAIL(be->matmul(b, &w, &x, &out), "no quant plugin");
  w.type = STRATA_TYPE_Q8_0;
  w.ne[0] = 48; /* not whole blocks */
  EXPECT_FAIL(be->matmul(b, &w, &x, &out), "blocks");
  w = tensor(wb, STRATA_TYPE_F32, 64, 9); /* one row past the buffer */
  EXPECT_FAIL(be->matmul(b, &w, &x, &out), "outside");
  w.ne[1] = 7;
  w.offset = 2; /* misaligned floats */
  EXPECT_FAIL(be->matmul(b, &w, &x, &out), "aligned");
  w.offset = 0;
  w.ne[1] = 8;
  struct strata_tensor alias = tensor(fb, STRATA_TYPE_F32, 8, 2);
  EXPECT_FAIL(be->matmul(b, &w, &x, &alias), "overlaps");
  EXPECT_FAIL(be->matmul(b, NULL, &x, &out), "no tensor");
  struct strata_tensor nobuf = out;
  nobuf.buf = NULL;
  EXPECT_FAIL(be->matmul(b, &w, &x, &nobuf), "no buffer");
  /* writing into wrapped (read-only) memory */
  float host[16];
  strata_buf_t *hb = be->buf_wrap_host(b, host, sizeof host);
  struct strata_tensor ro = tensor(hb, STRATA_TYPE_F32, 8, 2);
  EXPECT_FAIL(be->matmul(b, &w, &x, &ro), "read-only");

  /* batches */
  int32_t toks[2] = {0, 64}, pos[2] = {0, 1}, slots[2] = {0, 1000}, ss[2] = {0, 2}, sl[1] = {2},
          btab[1] = {0};
  struct strata_batch batch = {.size = sizeof batch, .n_tokens = 2, .tokens = toks,
                               .positions = pos, .slots = slots};
  ck_assert_int_eq(be->set_batch(b, &batch), 0);
  struct strata_tensor table = tensor(wb, STRATA_TYPE_F32, 64, 8);
  EXPECT_FAIL(be->embed(b, &table, &o64), "token 1");
  struct strata_tensor k = tensor(fb, STRATA_TYPE_F32, 16, 2), kc = tensor(ob, STRATA_TYPE_F32, 16, 64);
  EXPECT_FAIL(be->kv_store(b, &k, &k, &kc, &kc), "slot 1000");
  struct strata_rope bad = r;
  bad.n_dims = 15;
  EXPECT_FAIL(be->rope(b, &t64, 4, 16, &bad), "n_dims");
  EXPECT_FAIL(be->rope(b, &t64, 4, 8, &r), "n_dims"); /* n_dims > head_dim */
  EXPECT_FAIL(be->rope(b, &t64, 3, 16, &r), "shape");
  struct strata_batch bad_batch = batch;
  bad_batch.size = 8;
  EXPECT_FAIL(be->set_batch(b, &bad_batch), "older");
  bad_batch = batch;
  bad_batch.n_seqs = 1;
  bad_batch.seq_start = ss;
  bad_batch.seq_len = sl;
  bad_batch.block_tables = btab;
  bad_batch.max_blocks = 1;
  bad_batch.block_size = 16;
  ss[1] = 1; /* does not cover the tokens */
  EXPECT_FAIL(be->set_batch(b, &bad_batch), "seq_start");
  ss[1] = 2;
  sl[0] = 1; /* token 1 at position 1 is past the length */
  EXPECT_FAIL(be->set_batch(b, &bad_batch), "past");
  sl[0] = 2;
  {
    /* a middle seq_start past the tokens, the last one right: refused
     * before any position is read through it (ASan checks the reading) */
    int32_t ss3[3] = {0, 100, 2}, sl2[2] = {2, 2}, bt2[2] = {0, 1};
    struct strata_batch two = bad_batch;
    two.n_seqs = 2;
    two.seq_start = ss3;
    two.seq_len = sl2;
    two.block_tables = bt2;
    EXPECT_FAIL(be->set_batch(b, &two), "passes n_tokens");
  }
  ck_assert_int_eq(be->set_batch(b, &bad_batch), 0);
  struct strata_attention at = {.n_heads = 3, .n_kv_heads = 2, .head_dim = 8, .scale = 0.3f};
  struct strata_tensor q = tensor(fb, STRATA_TYPE_F32, 24, 2), ao = tensor(ob, STRATA_TYPE_F32, 24, 2);
  EXPECT_FAIL(be->attention(b, &q, &kc, &kc, &at, &ao), "multiple");
  at.n_heads = 4;
  q.ne[0] = ao.ne[0] = 32;
  struct strata_tensor kc8 = tensor(ob, STRATA_TYPE_Q8_0, 32, 4);
  EXPECT_FAIL(be->attention(b, &q, &kc8, &kc8, &at, &ao), "cache");
  bad_batch.n_out = 1;
  int32_t orow[1] = {2};
  bad_batch.out_rows = orow;
  EXPECT_FAIL(be->set_batch(b, &bad_batch), "out_rows");

  be->buf_free(b, hb);
  be->buf_free(b, wb);
  be->buf_free(b, fb);
  be->buf_free(b, ob);
  be->close(b);
}
END_TEST

/* prepare_weight: what it packs, and the checks on what it is given and on
 * the packed tensor afterwards (only matmul reads it). */
START_TEST(prepare_weight_checks) {
  strata_backend_t *b = open_backend(NULL, 2);
  const struct strata_quant_vtable *q8 = quant(STRATA_TYPE_Q8_0);
  enum { K = 512, N = 130 };
  const size_t wrb = row_bytes(STRATA_TYPE_Q8_0, K);
  uint64_t s = 99;
  float *wf = rand_floats(&s, (size_t)N * K, 1.0f);
  uint8_t *wq = malloc(wrb * N);
  for (int r = 0; r < N; r++) q8->quantize_row(wf + (size_t)r * K, wq + r * wrb, K);
  strata_buf_t *wb = mkbuf(b, wq, wrb * N);
  struct strata_tensor w = tensor(wb, STRATA_TYPE_Q8_0, K, N), p;
  EXPECT_FAIL(be->prepare_weight(b, NULL, &p), "no tensor");
  w.ne[1] = N + 1; /* one row past the buffer */
  EXPECT_FAIL(be->prepare_weight(b, &w, &p), "outside");
  w.ne[1] = N;
  w.ne[0] = 48; /* not whole blocks */
  EXPECT_FAIL(be->prepare_weight(b, &w, &p), "blocks");
  w.ne[0] = K;
  /* float weights stay as they are */
  strata_buf_t *fb = nan_buf(b, (size_t)K * 8);
  struct strata_tensor wf32 = tensor(fb, STRATA_TYPE_F32, K, 8);
  ck_assert_int_eq(be->prepare_weight(b, &wf32, &p), 0);
  const int rc = be->prepare_weight(b, &w, &p);
  ck_assert_msg(rc >= 0, "%s", be->last_error(b));
  if (rc == 1) { /* a SIMD tier */
    ck_assert_uint_ge(p.type, STRATA_TYPE_BACKEND_PRIVATE);
    ck_assert_int_eq(p.ne[0], K);
    ck_assert_int_eq(p.ne[1], N);
    strata_buf_t *xb = nan_buf(b, (size_t)K * 4), *ob = nan_buf(b, (size_t)N * 4);
    struct strata_tensor x = tensor(xb, STRATA_TYPE_F32, K, 1), o = tensor(ob, STRATA_TYPE_F32, N, 1);
    /* the packed matrix's rows are whole row groups: 132 fit, 133 do not */
    struct strata_tensor big = p;
    big.ne[1] = 133;
    struct strata_tensor o133 = tensor(nan_buf(b, 133), STRATA_TYPE_F32, 133, 1);
    EXPECT_FAIL(be->matmul(b, &big, &x, &o133), "outside");
    be->buf_free(b, o133.buf);
    struct strata_tensor x2 = tensor(xb, STRATA_TYPE_F32, K / 2, 1);
    EXPECT_FAIL(be->matmul(b, &p, &x2, &o), "matmul x");
    /* only matmul reads it */
    int32_t toks[1] = {3}, pos[1] = {0}, slots[1] = {0};
    struct strata_batch batch = {.size = sizeof batch, .n_tokens = 1, .tokens = toks,
                                 .positions = pos, .slots = slots};
    ck_assert_int_eq(be->set_batch(b, &batch), 0);
    struct strata_tensor e = tensor(xb, STRATA_TYPE_F32, K, 1);
    EXPECT_FAIL(be->embed(b, &p, &e), "dequantizer");
    /* a prepared copy no longer depends on the original bytes */
    float *xv = rand_floats(&s, K, 1.0f);
    ck_assert_int_eq(be->upload(b, xb, 0, xv, (size_t)K * 4), 0);
    ck_assert_msg(be->matmul(b, &w, &x, &o) == 0, "%s", be->last_error(b));
    float *want = fetch(b, ob, N);
    memset(wq, 0, wrb * N);
    ck_assert_int_eq(be->upload(b, wb, 0, wq, wrb * N), 0);
    ck_assert_msg(be->matmul(b, &p, &x, &o) == 0, "%s", be->last_error(b));
    float *got = fetch(b, ob, N);
    double e2 = 0, r2 = 0;
    for (int r = 0; r < N; r++) {
      e2 += (double)(got[r] - want[r]) * (got[r] - want[r]);
      r2 += (double)want[r] * want[r];
    }
    ck_assert_msg(r2 > 0 && sqrt(e2 / r2) < 1e-5, "packed vs direct: rel L2 %.3g", sqrt(e2 / r2));
    free(want);
    free(got);
    free(xv);
    be->buf_free(b, p.buf);
    be->buf_free(b, xb);
    be->buf_free(b, ob);
  }
  be->buf_free(b, fb);
  be->buf_free(b, wb);
  free(wq);
  free(wf);
  be->close(b);
}
END_TEST

/* matmul_n: Q, K, V (three heights, one row length) in one pass give the
 * bits of three matmul calls, for weights in the GGUF layout and packed, at
 * 1, 3 and 7 tokens, on every tier; and its argument checks. */
START_TEST(matmul_n_matches_separate) {
  const char *tier = tiers[_i];
  strata_backend_t *b = open_backend(tier, 2);
  const uint32_t types[] = {STRATA_TYPE_Q8_0, STRATA_TYPE_Q4_0, STRATA_TYPE_F16};
  enum { K = 320 };
  const int64_t Ns[3] = {130, 36, 33};
  uint64_t s = 321;
  for (size_t ti = 0; ti < 3; ti++) {
    const struct strata_quant_vtable *q = quant(types[ti]);
    const size_t wrb = row_bytes(types[ti], K);
    strata_buf_t *wb[3];
    struct strata_tensor tw[3], tp[3];
    int np = 0;
    for (int i = 0; i < 3; i++) {
      float *wf = rand_floats(&s, (size_t)Ns[i] * K, 1.0f);
      uint8_t *wq = malloc(wrb * Ns[i]);
      for (int64_t r = 0; r < Ns[i]; r++) q->quantize_row(wf + r * K, wq + r * wrb, K);
      wb[i] = mkbuf(b, wq, wrb * Ns[i]);
      tw[i] = tensor(wb[i], types[ti], K, Ns[i]);
      np += be->prepare_weight(b, &tw[i], &tp[i]);
      free(wq);
      free(wf);
    }
    ck_assert(np == 0 || np == 3);
    for (int pk = 0; pk < 1 + (np == 3); pk++) {
      const int64_t Ts[] = {1, 3, 7};
      for (int k = 0; k < 3; k++) {
        const int64_t T = Ts[k];
        float *x = rand_floats(&s, (size_t)T * K, 1.0f);
        strata_buf_t *xb = mkbuf(b, x, (size_t)T * K * 4), *ob[3], *sb[3];
        struct strata_tensor tx = tensor(xb, STRATA_TYPE_F32, K, T), to[3];
        const struct strata_tensor *wp[3];
        struct strata_tensor *op[3];
        for (int i = 0; i < 3; i++) {
          ob[i] = nan_buf(b, (size_t)T * Ns[i]);
          sb[i] = nan_buf(b, (size_t)T * Ns[i]);
          to[i] = tensor(ob[i], STRATA_TYPE_F32, Ns[i], T);
          wp[i] = pk ? &tp[i] : &tw[i];
          op[i] = &to[i];
        }
        ck_assert_msg(be->matmul_n(b, 3, wp, &tx, op) == 0, "%s", be->last_error(b));
        for (int i = 0; i < 3; i++) {
          struct strata_tensor ts = tensor(sb[i], STRATA_TYPE_F32, Ns[i], T);
          ck_assert_msg(be->matmul(b, wp[i], &tx, &ts) == 0, "%s", be->last_error(b));
          float *got = fetch(b, ob[i], (size_t)T * Ns[i]), *want = fetch(b, sb[i], (size_t)T * Ns[i]);
          ck_assert_msg(count_nan(got, (size_t)T * Ns[i]) == 0 &&
                            memcmp(got, want, sizeof *got * (size_t)T * Ns[i]) == 0,
                        "tier %s type %u%s T=%lld weight %d: matmul_n differs from matmul",
                        tier_name(tier), types[ti], pk ? " packed" : "", (long long)T, i);
          free(got);
          free(want);
        }
        if (k == 0 && pk == 0 && ti == 0) {
          /* the checks */
          EXPECT_FAIL(be->matmul_n(b, 0, wp, &tx, op), "weights");
          EXPECT_FAIL(be->matmul_n(b, 5, wp, &tx, op), "weights");
          struct strata_tensor other = tw[1];
          other.ne[0] = K / 2;
          other.ne[1] = 2 * Ns[1];
          const struct strata_tensor *wx[2] = {&tw[0], &other};
          EXPECT_FAIL(be->matmul_n(b, 2, wx, &tx, op), "rows of");
          struct strata_tensor *same[2] = {&to[0], &to[0]};
          const struct strata_tensor *w00[2] = {&tw[0], &tw[0]};
          EXPECT_FAIL(be->matmul_n(b, 2, w00, &tx, same), "overlap");
          struct strata_tensor *wrong[2] = {&to[0], &to[0]};
          EXPECT_FAIL(be->matmul_n(b, 2, wp, &tx, wrong), "matmul out");
        }
        for (int i = 0; i < 3; i++) {
          be->buf_free(b, ob[i]);
          be->buf_free(b, sb[i]);
        }
        be->buf_free(b, xb);
        free(x);
      }
    }
    for (int i = 0; i < 3; i++) {
      if (np) be->buf_free(b, tp[i].buf);
      be->buf_free(b, wb[i]);
    }
  }
  be->close(b);
}
END_TEST

static Suite *backend_cpu_suite(void) {
  Suite *s = suite_create("backend_cpu");
  TCase *tc = tcase_create("core");
  tcase_add_unchecked_fixture(tc, load_plugins, unload_plugins);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, descriptor_and_device);
  tcase_add_test(tc, buffers);
  tcase_add_loop_test(tc, matmul_all_types_and_token_counts, 0, N_TIERS);
  tcase_add_loop_test(tc, matmul_large, 0, N_TIERS);
  tcase_add_loop_test(tc, matmul_activation_quants_exact, 0, N_TIERS);
  tcase_add_test(tc, matmul_activation_policy);
  tcase_add_test(tc, matmul_threads_agree);
  tcase_add_test(tc, matmul_offsets_and_wrapped_in_place);
  tcase_add_test(tc, embed_all_types);
  tcase_add_test(tc, get_rows_selects);
  tcase_add_loop_test(tc, rmsnorm_matches, 0, N_TIERS);
  tcase_add_loop_test(tc, add_add_bias_swiglu, 0, N_TIERS);
  tcase_add_test(tc, rope_both_modes);
  tcase_add_loop_test(tc, kv_store_attention_paged, 0, N_TIERS * 2 * 2 * 3 * 6 * 2);
  tcase_add_test(tc, errors_are_reported);
  tcase_add_test(tc, prepare_weight_checks);
  tcase_add_loop_test(tc, matmul_n_matches_separate, 0, N_TIERS);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_run_suite(backend_cpu_suite()); }
