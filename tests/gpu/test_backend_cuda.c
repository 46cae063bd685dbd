/* Backend plugin "cuda" against backend "cpu": every op on the same seeded
 * random inputs (never all zeros) on both, outputs compared within stated
 * bounds; the GPU's outputs start as NaN, so an element a kernel forgot to
 * write shows up.
 *
 * Without a GPU (or a driver), the plugin must still load, report one
 * device of score 0 that says why, and refuse to open it with that reason;
 * those checks run everywhere, then the test exits 77 (SKIP): the op
 * comparisons need a device.
 *
 * Bounds (relative L2 norm of the whole output unless stated):
 * - embed, get_rows, kv_store: exact (the same dequantization and rounding);
 * - add, add_bias, swiglu, rmsnorm, rope: 1e-5;
 * - attention: 1e-4 (summation order over up to 300 positions), decode
 *   and prefill tiles, split over the positions and not, head sizes 64 to
 *   256;
 * - matmul: 1e-4 against the CPU's f32 path (q8_activations_min is set so
 *   high that the CPU dequantizes every weight type to f32);
 * - matmul of prepared (split) q8_0/q4_0 weights, whose activations the GPU
 *   quantizes to q8_0: 1e-5 against the CPU's f32 path on the activations
 *   rounded through the q8_0 plugin's reference quantizer (the same
 *   rounding, so only the summation order differs);
 * - matmul through cuBLAS (gemm_min_tokens; not the HIP build, which has
 *   none): 1e-5 against the CPU's f32 path on the activations rounded to
 *   the weights' f16/bf16 and, for split q8_0/q4_0, on the weights
 *   dequantized and rounded to f16 (the GPU's roundings). The other tests
 *   run with gemm_min_tokens = 0: the kernels. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <strata/backend.h>
#include <strata/fp16.h>
#include <strata/plugin.h>
#include <strata/quant.h>

#include "conf.h"
#include "plugin_loader.h"
#include "../unit/testutil.h"

/* Built once per GPU backend: "cuda", "hip" with -DGPU_BACKEND='"hip"'
 * (the same plugin source and kernels through kernels-hip/hip_compat.h),
 * and "emu" (the same again, the kernels emulated on the CPU by
 * tests/gpu/emu/: these tests run for real on every machine). */
#ifndef GPU_BACKEND
#define GPU_BACKEND "cuda"
#endif

static struct strata_registry g_reg;
static const struct strata_backend_vtable *cpu, *gpu;
static strata_backend_t *bc, *bg;

/* load_plugins runs outside any test: its failures exit with a message */
static void need(int ok, const char *fmt, const char *arg) {
  if (ok) return;
  fprintf(stderr, "test_backend_cuda: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n");
  exit(1);
}

/* Initializes the plugins (only: the GPU one, again) with this config
 * text; each test runs in a child process of its own. */
static void init_plugins(const char *text, const struct strata_backend_vtable *only) {
  char path[] = "/tmp/strata-test-cuda-XXXXXX";
  const int fd = mkstemp(path);
  need(fd >= 0, "cannot create %s", path);
  FILE *f = fdopen(fd, "w");
  fputs(text, f);
  fclose(f);
  struct strata_errlist errs = {0};
  strata_config_t *cfg = strata_config_load(path, &errs);
  unlink(path);
  need(cfg != NULL, "the test config did not load%s", "");
  strata_errlist_free(&errs);
  for (size_t i = 0; i < g_reg.n_plugins; i++) {
    if (only && g_reg.plugins[i].desc->vt.backend != only) continue;
    if (only) g_reg.plugins[i].initialized = 0; /* init reads its section again */
    char err[1024] = "";
    need(strata_plugin_init(&g_reg.plugins[i], cfg, err, sizeof err) == 0, "%s", err);
  }
  strata_config_free(cfg);
}

static void gpu_config(const char *section) {
  char text[512];
  snprintf(text, sizeof text, "plugins: { backend: { %s: { %s }; }; };\n", GPU_BACKEND, section);
  init_plugins(text, gpu);
}

static void load_plugins(void) {
  char dir[4096], emu[4096];
  snprintf(dir, sizeof dir, "%s/plugins", test_builddir());
  /* the test-only emu plugin lives outside plugins/ */
  snprintf(emu, sizeof emu, "%s/tests/gpu/emu", test_builddir());
  const char *dirs[] = {dir, emu};
  strata_registry_scan(&g_reg, dirs, strcmp(GPU_BACKEND, "emu") == 0 ? 2 : 1);
  strata_host_set_registry(&g_reg);
  /* L: libconfig reads a plain integer past 32 bits as its low 32 bits
   * (1e15 became -1530494976, i.e. "always quantize": the emulated kernels
   * caught it) */
  init_plugins("plugins: { backend: { cpu: { q8_activations_min = 1000000000000000L; }; " GPU_BACKEND
               ": { gemm_min_tokens = 0; }; }; };\n",
               NULL);
  const struct strata_plugin *pc = strata_registry_find(&g_reg, STRATA_PLUGIN_BACKEND, "cpu");
  const struct strata_plugin *pg = strata_registry_find(&g_reg, STRATA_PLUGIN_BACKEND, GPU_BACKEND);
  need(pc && pg, "backend plugins cpu and " GPU_BACKEND " not both under %s", dir);
  cpu = pc->desc->vt.backend;
  gpu = pg->desc->vt.backend;
}

/* Whether the cuda plugin has a device here (score > 0). Asked in a child
 * process: a CUDA context does not survive fork(), and every test runs in
 * a child that Check forks from this process. */
static int have_gpu(void) {
  const pid_t pid = fork();
  if (pid == 0) {
    struct strata_backend_device d = {.size = sizeof d};
    _exit(gpu->device_info(0, &d) == 0 && d.score > 0 ? 0 : 1);
  }
  int st = 0;
  return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* ---- everywhere: the registry without a device ---------------------------------- */

START_TEST(registry_says_why) {
  ck_assert_int_ge(gpu->n_devices(), 1);
  struct strata_backend_device d = {.size = sizeof d};
  ck_assert_int_eq(gpu->device_info(0, &d), 0);
  ck_assert_msg(d.why[0] != 0, "device 0 gives no reason for its score");
  if (d.score == 0) {
    strata_backend_t *b = NULL;
    char err[512] = "";
    struct strata_backend_params p = {.size = sizeof p};
    ck_assert_int_ne(gpu->open(0, &p, &b, err, sizeof err), 0);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err, "no usable GPU") != NULL, "open without a device said: %s", err);
  } else {
    ck_assert_msg(strncmp(d.name, GPU_BACKEND ":0", strlen(GPU_BACKEND ":0")) == 0,
                  "device name %s", d.name);
    ck_assert_msg(d.memory_total > 0, "no device memory reported");
  }
}
END_TEST

/* ---- with a device: ops against the CPU backend ---------------------------------- */

static uint64_t g_rng = 0x5eed;
static float frand(void) { /* uniform in [-1, 1) */
  uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float)((z >> 40) * 0x1p-23 - 1.0);
}

static float *rand_floats(size_t n, float scale) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
  return v;
}

/* The same tensor on both backends. */
struct twin {
  strata_buf_t *c, *g;
  struct strata_tensor tc, tg;
  size_t bytes;
};

static struct twin twin_of(const void *data, size_t bytes, uint32_t type, int64_t ne0,
                           int64_t ne1) {
  struct twin t = {.bytes = bytes};
  t.c = cpu->buf_alloc(bc, bytes);
  t.g = gpu->buf_alloc(bg, bytes);
  ck_assert_msg(t.c && t.g, "buf_alloc: %s", gpu->last_error(bg));
  if (data) {
    ck_assert_int_eq(cpu->upload(bc, t.c, 0, data, bytes), 0);
    ck_assert_msg(gpu->upload(bg, t.g, 0, data, bytes) == 0, "upload: %s", gpu->last_error(bg));
  } else { /* outputs: NaN on both */
    float *nan = malloc(bytes);
    for (size_t i = 0; i < bytes / 4; i++) nan[i] = NAN;
    ck_assert_int_eq(cpu->upload(bc, t.c, 0, nan, bytes), 0);
    ck_assert_int_eq(gpu->upload(bg, t.g, 0, nan, bytes), 0);
    free(nan);
  }
  t.tc = (struct strata_tensor){.buf = t.c, .type = type, .ne = {ne0, ne1}};
  t.tg = (struct strata_tensor){.buf = t.g, .type = type, .ne = {ne0, ne1}};
  return t;
}

static struct twin twin_f32(const float *data, int64_t ne0, int64_t ne1) {
  return twin_of(data, (size_t)(ne0 * ne1) * 4, STRATA_TYPE_F32, ne0, ne1);
}

static void twin_free(struct twin *t) {
  cpu->buf_free(bc, t->c);
  gpu->buf_free(bg, t->g);
}

/* Downloads both sides of an f32 twin and checks the GPU's against the
 * CPU's: no NaN, relative L2 error within bound. */
static void compare(const char *what, struct twin *t, double bound) {
  const size_t n = t->bytes / 4;
  float *c = malloc(t->bytes), *g = malloc(t->bytes);
  ck_assert_int_eq(cpu->download(bc, t->c, 0, c, t->bytes), 0);
  ck_assert_msg(gpu->download(bg, t->g, 0, g, t->bytes) == 0, "%s: %s", what,
                gpu->last_error(bg));
  double e = 0, r = 0;
  size_t nan = 0;
  for (size_t i = 0; i < n; i++) {
    nan += isnan(g[i]) != 0;
    e += ((double)g[i] - c[i]) * ((double)g[i] - c[i]);
    r += (double)c[i] * c[i];
  }
  const double rel = r > 0 ? sqrt(e / r) : sqrt(e);
  ck_assert_msg(nan == 0, "%s: %zu of %zu elements unwritten (NaN)", what, nan, n);
  ck_assert_msg(r > 0, "%s: the CPU's output is all zeros: a useless comparison", what);
  ck_assert_msg(rel <= bound, "%s: relative error %.3g above %.1g", what, rel, bound);
  free(c);
  free(g);
}

#define BOTH(call_c, call_g)                                                           \
  do {                                                                                 \
    ck_assert_msg((call_c) == 0, "cpu: %s", cpu->last_error(bc));                      \
    ck_assert_msg((call_g) == 0, GPU_BACKEND ": %s", gpu->last_error(bg));              \
  } while (0)

/* A batch: n_seqs sequences of the given lengths, the last q[s] positions
 * of each as this step's tokens, their blocks a shuffled range. */
struct tbatch {
  struct strata_batch b;
  int32_t tokens[512], positions[512], slots[512], seq_start[17], seq_len[16],
      block_tables[16 * 32], out_rows[512];
};

static void make_batch(struct tbatch *t, int n_seqs, const int32_t *len, const int32_t *q,
                       int block_size, int32_t vocab) {
  memset(t, 0, sizeof *t);
  const int max_blocks = 32;
  int32_t perm[16 * 32];
  const int nb = n_seqs * max_blocks;
  for (int i = 0; i < nb; i++) perm[i] = i;
  for (int i = nb - 1; i > 0; i--) {
    const int j = (int)((frand() + 1.0f) * 0.5f * (float)(i + 1)) % (i + 1);
    const int32_t x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  int32_t T = 0;
  for (int s = 0; s < n_seqs; s++) {
    t->seq_start[s] = T;
    t->seq_len[s] = len[s];
    for (int k = 0; k < max_blocks; k++) t->block_tables[s * max_blocks + k] = perm[s * max_blocks + k];
    for (int32_t p = len[s] - q[s]; p < len[s]; p++, T++) {
      t->tokens[T] = (int32_t)((frand() + 1.0f) * 0.5f * (float)vocab) % vocab;
      t->positions[T] = p;
      t->slots[T] = t->block_tables[s * max_blocks + p / block_size] * block_size + p % block_size;
      t->out_rows[T] = T;
    }
  }
  t->seq_start[n_seqs] = T;
  t->b = (struct strata_batch){.size = sizeof t->b, .n_tokens = T, .tokens = t->tokens,
                               .positions = t->positions, .slots = t->slots, .n_seqs = n_seqs,
                               .seq_start = t->seq_start, .seq_len = t->seq_len,
                               .block_tables = t->block_tables, .max_blocks = max_blocks,
                               .block_size = block_size, .n_out = T, .out_rows = t->out_rows};
  BOTH(cpu->set_batch(bc, &t->b), gpu->set_batch(bg, &t->b));
}

static const struct strata_quant_vtable *quant(uint32_t type) {
  const struct strata_plugin *p = strata_registry_find_quant(&g_reg, type);
  ck_assert_msg(p != NULL, "no quant plugin for type %u", type);
  return p->desc->vt.quant;
}

/* rows x n floats quantized to type (f32: copied), with its byte size. */
static void *as_type(const float *src, int64_t n, int64_t rows, uint32_t type, size_t *bytes) {
  if (type == STRATA_TYPE_F32) {
    *bytes = (size_t)(n * rows) * 4;
    void *d = malloc(*bytes);
    memcpy(d, src, *bytes);
    return d;
  }
  const struct strata_quant_vtable *q = quant(type);
  const size_t rb = (size_t)(n / q->block_size) * q->type_size;
  *bytes = rb * (size_t)rows;
  uint8_t *d = malloc(*bytes);
  for (int64_t r = 0; r < rows; r++) q->quantize_row(src + r * n, d + (size_t)r * rb, n);
  return d;
}

static const uint32_t wtypes[] = {STRATA_TYPE_F32, STRATA_TYPE_F16, STRATA_TYPE_BF16,
                                  STRATA_TYPE_Q8_0, STRATA_TYPE_Q4_0};

static void setup(void) {
  struct strata_backend_params p = {.size = sizeof p, .threads = 2};
  char err[512] = "";
  ck_assert_msg(cpu->open(0, &p, &bc, err, sizeof err) == 0, "cpu: %s", err);
  ck_assert_msg(gpu->open(0, &p, &bg, err, sizeof err) == 0, GPU_BACKEND ": %s", err);
}

static void teardown(void) {
  cpu->close(bc);
  gpu->close(bg);
}

START_TEST(row_ops) {
  const int64_t dim = 288, T = 7;
  const int32_t len[2] = {5, 9}, q[2] = {3, 4};
  struct tbatch tb;
  make_batch(&tb, 2, len, q, 16, 100);
  float *xa = rand_floats((size_t)(dim * T), 2.0f), *xb = rand_floats((size_t)(dim * T), 2.0f);
  float *w = rand_floats((size_t)dim, 1.0f);
  struct twin a = twin_f32(xa, dim, T), c = twin_f32(xb, dim, T), wt = twin_f32(w, dim, 1);
  struct twin o = twin_f32(NULL, dim, T);
  BOTH(cpu->rmsnorm(bc, &a.tc, &wt.tc, 1e-5f, &o.tc), gpu->rmsnorm(bg, &a.tg, &wt.tg, 1e-5f, &o.tg));
  compare("rmsnorm", &o, 1e-5);
  BOTH(cpu->add(bc, &a.tc, &c.tc, &o.tc), gpu->add(bg, &a.tg, &c.tg, &o.tg));
  compare("add", &o, 1e-6);
  BOTH(cpu->swiglu(bc, &a.tc, &c.tc, &o.tc), gpu->swiglu(bg, &a.tg, &c.tg, &o.tg));
  compare("swiglu", &o, 1e-5);
  BOTH(cpu->add_bias(bc, &o.tc, &wt.tc), gpu->add_bias(bg, &o.tg, &wt.tg)); /* in place */
  compare("add_bias", &o, 1e-5);
  struct twin r = twin_f32(NULL, dim, T);
  /* from a, which both hold bit for bit (o may differ in the last bits) */
  BOTH(cpu->get_rows(bc, &a.tc, &r.tc), gpu->get_rows(bg, &a.tg, &r.tg));
  compare("get_rows", &r, 0.0);
  /* rope on 9 heads of 32 at positions up to 8, both pairings, partial dims */
  for (int neox = 0; neox < 2; neox++) {
    const struct strata_rope rp = {.theta = 10000.0f, .freq_scale = 1.0f, .neox = neox,
                                   .n_dims = neox ? 24 : 32};
    struct twin x = twin_f32(xa, dim, T);
    BOTH(cpu->rope(bc, &x.tc, 9, 32, &rp), gpu->rope(bg, &x.tg, 9, 32, &rp));
    compare(neox ? "rope (neox, 24 dims)" : "rope", &x, 1e-5);
    twin_free(&x);
  }
  twin_free(&a), twin_free(&c), twin_free(&wt), twin_free(&o), twin_free(&r);
  free(xa), free(xb), free(w);
}
END_TEST

START_TEST(embed_all_types) {
  const int64_t dim = 64, vocab = 100;
  const int32_t len[1] = {20}, q[1] = {20};
  struct tbatch tb;
  make_batch(&tb, 1, len, q, 16, (int32_t)vocab);
  float *tab = rand_floats((size_t)(dim * vocab), 1.0f);
  for (size_t k = 0; k < sizeof wtypes / sizeof *wtypes; k++) {
    size_t bytes;
    void *d = as_type(tab, dim, vocab, wtypes[k], &bytes);
    struct twin t = twin_of(d, bytes, wtypes[k], dim, vocab);
    struct twin o = twin_f32(NULL, dim, 20);
    BOTH(cpu->embed(bc, &t.tc, &o.tc), gpu->embed(bg, &t.tg, &o.tg));
    char what[64];
    snprintf(what, sizeof what, "embed (type %u)", wtypes[k]);
    compare(what, &o, 0.0);
    twin_free(&t), twin_free(&o);
    free(d);
  }
  free(tab);
}
END_TEST

START_TEST(matmul_all_types) {
  const int64_t n_in = 256, n_out = 75;
  float *w = rand_floats((size_t)(n_in * n_out), 1.0f);
  for (int64_t T = 1; T <= 9; T += 4) {
    float *x = rand_floats((size_t)(n_in * T), 1.0f);
    struct twin xt = twin_f32(x, n_in, T);
    for (size_t k = 0; k < sizeof wtypes / sizeof *wtypes; k++) {
      size_t bytes;
      void *d = as_type(w, n_in, n_out, wtypes[k], &bytes);
      struct twin wt = twin_of(d, bytes, wtypes[k], n_in, n_out);
      struct twin o = twin_f32(NULL, n_out, T);
      BOTH(cpu->matmul(bc, &wt.tc, &xt.tc, &o.tc), gpu->matmul(bg, &wt.tg, &xt.tg, &o.tg));
      char what[64];
      snprintf(what, sizeof what, "matmul (type %u, %lld tokens)", wtypes[k], (long long)T);
      compare(what, &o, 1e-4);
      twin_free(&wt), twin_free(&o);
      free(d);
    }
    twin_free(&xt);
    free(x);
  }
  free(w);
}
END_TEST

/* prepare_weight's split q8_0/q4_0 layout through the integer matmul, at
 * the token counts of each of its variants (1, 2, 3-4, 5-8, then passes of
 * 8) and two shapes (rows of 8 and 64 blocks: fewer 16-byte pieces than
 * lanes, and several per lane). Token t's activations are scaled by 1 + t
 * (different block scales) and token 0's first block is zero (scale 0). */
START_TEST(matmul_split) {
  const int64_t shapes[2][2] = {{256, 300}, {2048, 40}};
  const int64_t Ts[] = {1, 2, 3, 5, 8, 9, 17, 40};
  const uint32_t types[2] = {STRATA_TYPE_Q8_0, STRATA_TYPE_Q4_0};
  const struct strata_quant_vtable *q8 = quant(STRATA_TYPE_Q8_0);
  for (int si = 0; si < 2; si++)
    for (int k = 0; k < 2; k++) {
      const int64_t n_in = shapes[si][0], n_out = shapes[si][1];
      float *w = rand_floats((size_t)(n_in * n_out), 1.0f);
      size_t bytes;
      void *d = as_type(w, n_in, n_out, types[k], &bytes);
      struct twin wt = twin_of(d, bytes, types[k], n_in, n_out);
      struct strata_tensor prep;
      ck_assert_msg(gpu->prepare_weight(bg, &wt.tg, &prep) == 1, "prepare_weight: %s",
                    gpu->last_error(bg));
      ck_assert_msg(prep.type != wt.tg.type && prep.ne[0] == n_in && prep.ne[1] == n_out,
                    "prepared: type %u, shape [%lld, %lld]", prep.type, (long long)prep.ne[0],
                    (long long)prep.ne[1]);
      for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
        const int64_t T = Ts[ti];
        float *x = rand_floats((size_t)(n_in * T), 1.0f), *xr = malloc((size_t)(n_in * T) * 4);
        uint8_t *qb = malloc((size_t)(n_in / 32) * q8->type_size);
        for (int64_t t = 0; t < T; t++)
          for (int64_t i = 0; i < n_in; i++) x[t * n_in + i] *= (float)(1 + t);
        memset(x, 0, 32 * sizeof *x);
        for (int64_t t = 0; t < T; t++) {
          q8->quantize_row(x + t * n_in, qb, n_in);
          q8->dequantize_row(qb, xr + t * n_in, n_in);
        }
        struct twin xt = twin_f32(x, n_in, T), xrt = twin_f32(xr, n_in, T);
        struct twin o = twin_f32(NULL, n_out, T);
        BOTH(cpu->matmul(bc, &wt.tc, &xrt.tc, &o.tc), gpu->matmul(bg, &prep, &xt.tg, &o.tg));
        char what[96];
        snprintf(what, sizeof what, "split matmul (type %u, [%lld, %lld], %lld tokens)", types[k],
                 (long long)n_in, (long long)n_out, (long long)T);
        compare(what, &o, 1e-5);
        twin_free(&xt), twin_free(&xrt), twin_free(&o);
        free(x), free(xr), free(qb);
      }
      /* only matmul reads the split layout */
      struct twin e = twin_f32(NULL, n_in, 1);
      ck_assert_int_ne(gpu->rmsnorm(bg, &prep, &e.tg, 1e-5f, &e.tg), 0);
      twin_free(&e);
      gpu->buf_free(bg, prep.buf);
      twin_free(&wt);
      free(w), free(d);
    }
  /* a small matrix stays as it is (the float path) */
  float *w = rand_floats(64 * 64, 1.0f);
  size_t bytes;
  void *d = as_type(w, 64, 64, STRATA_TYPE_Q8_0, &bytes);
  struct twin wt = twin_of(d, bytes, STRATA_TYPE_Q8_0, 64, 64);
  struct strata_tensor prep;
  ck_assert_int_eq(gpu->prepare_weight(bg, &wt.tg, &prep), 0);
  twin_free(&wt);
  free(w), free(d);
}
END_TEST

/* kv_store then attention, on f32 and f16 caches, GQA (8 heads over 2),
 * three sequences of 300, 17 and 129 positions (several chunks, a partial
 * block, chunk boundaries), for four query shapes: 5, 1 and 3 queries (one
 * tile each), 1, 1 and 1 (decode), 40, 1 and 20 (several tiles of 16, the
 * last partial), and all 300, 17 and 129 (whole prompts, with 32 heads over
 * 8: enough blocks that the positions are not split, where the smaller
 * shapes are, on any GPU of 4 or more multiprocessors; 8 over 2 on the
 * emulator's 4); head sizes 64, 128 and 256 (chunks of 64, 32 and 8
 * positions). */
START_TEST(kv_store_and_attention) {
  const int bs = 16;
  const int32_t len[3] = {300, 17, 129};
  const int32_t qs[4][3] = {{5, 1, 3}, {1, 1, 1}, {40, 1, 20}, {300, 17, 129}};
  const int hds[3] = {64, 128, 256};
  const uint32_t ctypes[2] = {STRATA_TYPE_F32, STRATA_TYPE_F16};
  for (int qi = 0; qi < 4; qi++)
    for (int hi = 0; hi < 3; hi++)
      for (int ci = 0; ci < 2; ci++) {
        if (qi == 3 && hi > 0) continue; /* whole prompts: once is enough */
        /* the emulator (4 multiprocessors) needs no more than 8 heads
         * for unsplit blocks, and emulates 128 threads a block slowly */
        const int emu = strcmp(GPU_BACKEND, "emu") == 0;
        const int hd = hds[hi], n_heads = qi == 3 && !emu ? 32 : 8, n_kv = qi == 3 && !emu ? 8 : 2;
        struct tbatch tb;
        make_batch(&tb, 3, len, qs[qi], bs, 10);
        const int32_t T = tb.b.n_tokens;
        const int64_t kvd = (int64_t)n_kv * hd, rows = 3 * 32 * bs;
        /* the cache: random history everywhere, then this step's rows stored */
        float *hist = rand_floats((size_t)(kvd * rows), 1.0f);
        size_t cb;
        void *hc = as_type(hist, kvd, rows, ctypes[ci], &cb);
        struct twin kc = twin_of(hc, cb, ctypes[ci], kvd, rows),
                    vc = twin_of(hc, cb, ctypes[ci], kvd, rows);
        float *kn = rand_floats((size_t)(kvd * T), 1.0f), *vn = rand_floats((size_t)(kvd * T), 1.0f);
        struct twin k = twin_f32(kn, kvd, T), v = twin_f32(vn, kvd, T);
        BOTH(cpu->kv_store(bc, &k.tc, &v.tc, &kc.tc, &vc.tc),
             gpu->kv_store(bg, &k.tg, &v.tg, &kc.tg, &vc.tg));
        char what[96];
        snprintf(what, sizeof what, "%s cache, head_dim %d, queries %d/%d/%d", ci ? "f16" : "f32",
                 hd, qs[qi][0], qs[qi][1], qs[qi][2]);
        /* the caches compared as bytes */
        uint8_t *c1 = malloc(cb), *g1 = malloc(cb);
        ck_assert_int_eq(cpu->download(bc, kc.c, 0, c1, cb), 0);
        ck_assert_int_eq(gpu->download(bg, kc.g, 0, g1, cb), 0);
        ck_assert_msg(memcmp(c1, g1, cb) == 0, "kv_store (%s): the K caches differ", what);
        ck_assert_int_eq(cpu->download(bc, vc.c, 0, c1, cb), 0);
        ck_assert_int_eq(gpu->download(bg, vc.g, 0, g1, cb), 0);
        ck_assert_msg(memcmp(c1, g1, cb) == 0, "kv_store (%s): the V caches differ", what);
        free(c1), free(g1);
        float *qd = rand_floats((size_t)(n_heads * hd * T), 1.0f);
        struct twin qt = twin_f32(qd, n_heads * hd, T), o = twin_f32(NULL, n_heads * hd, T);
        const struct strata_attention at = {.n_heads = n_heads, .n_kv_heads = n_kv, .head_dim = hd,
                                            .scale = 1.0f / sqrtf((float)hd)};
        BOTH(cpu->attention(bc, &qt.tc, &kc.tc, &vc.tc, &at, &o.tc),
             gpu->attention(bg, &qt.tg, &kc.tg, &vc.tg, &at, &o.tg));
        char w2[128];
        snprintf(w2, sizeof w2, "attention (%s)", what);
        compare(w2, &o, 1e-4);
        twin_free(&kc), twin_free(&vc), twin_free(&k), twin_free(&v), twin_free(&qt), twin_free(&o);
        free(hist), free(hc), free(kn), free(vn), free(qd);
      }
}
END_TEST

/* Matmuls through cuBLAS (where the build has it): f32/f16/bf16 weights in
 * the GGUF layout and split q8_0/q4_0 in slices of 64 rows (300 rows: 4
 * whole and a partial one), at 1, 5 and 33 tokens. */
START_TEST(matmul_gemm) {
  const int blas = strcmp(GPU_BACKEND, "hip") != 0;
  gpu_config("gemm_min_tokens = 1; gemm_slice_weights = 16384;");
  const int64_t n_in = 256, n_out = 300;
  float *w = rand_floats((size_t)(n_in * n_out), 1.0f);
  const uint32_t types[] = {STRATA_TYPE_F32, STRATA_TYPE_F16, STRATA_TYPE_BF16,
                            STRATA_TYPE_Q8_0, STRATA_TYPE_Q4_0};
  for (int64_t T = 1; T <= 33; T += T == 1 ? 4 : 28) {
    float *x = rand_floats((size_t)(n_in * T), 1.0f), *xr = malloc((size_t)(n_in * T) * 4);
    struct twin xt = twin_f32(x, n_in, T);
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
      const uint32_t ty = types[k];
      const int split = ty == STRATA_TYPE_Q8_0 || ty == STRATA_TYPE_Q4_0;
      size_t bytes;
      void *d = as_type(w, n_in, n_out, ty, &bytes);
      struct twin wt = twin_of(d, bytes, ty, n_in, n_out);
      struct strata_tensor gw = wt.tg;
      if (split)
        ck_assert_msg(gpu->prepare_weight(bg, &wt.tg, &gw) == 1, "prepare_weight: %s",
                      gpu->last_error(bg));
      /* the reference: the GPU's roundings of x (and of split weights) */
      for (int64_t i = 0; i < n_in * T; i++)
        xr[i] = !blas || ty == STRATA_TYPE_F32 ? x[i]
                : ty == STRATA_TYPE_BF16     ? strata_bf16_to_fp32(strata_fp32_to_bf16(x[i]))
                                             : strata_fp16_to_fp32(strata_fp32_to_fp16(x[i]));
      struct twin xrt = twin_f32(xr, n_in, T);
      struct twin ref = wt;
      float *wr = NULL;
      if (split && blas) {
        wr = malloc((size_t)(n_in * n_out) * 4);
        const struct strata_quant_vtable *qv = quant(ty);
        for (int64_t r = 0; r < n_out; r++)
          qv->dequantize_row((const uint8_t *)d + (size_t)r * (bytes / (size_t)n_out),
                             wr + r * n_in, n_in);
        for (int64_t i = 0; i < n_in * n_out; i++)
          wr[i] = strata_fp16_to_fp32(strata_fp32_to_fp16(wr[i]));
        ref = twin_f32(wr, n_in, n_out);
      }
      struct twin o = twin_f32(NULL, n_out, T);
      BOTH(cpu->matmul(bc, &ref.tc, split && !blas ? &xt.tc : &xrt.tc, &o.tc),
           gpu->matmul(bg, &gw, &xt.tg, &o.tg));
      char what[64];
      snprintf(what, sizeof what, "gemm (type %u, %lld tokens)", ty, (long long)T);
      /* split without BLAS: the integer kernel (its own test bounds it) */
      compare(what, &o, split && !blas ? 2e-2 : 1e-5);
      if (split) gpu->buf_free(bg, gw.buf);
      if (wr) twin_free(&ref), free(wr);
      twin_free(&wt), twin_free(&o), twin_free(&xrt);
      free(d);
    }
    twin_free(&xt);
    free(x), free(xr);
  }
  free(w);
  gpu_config("gemm_min_tokens = 0;");
}
END_TEST

/* matmul_n (one quantization or rounding of x for all its weights) gives
 * exactly what matmul gives weight by weight, on the kernels and through
 * cuBLAS, with weights of three kinds (split q8_0, f16, split q4_0); and
 * refuses outputs that overlap or rows of different lengths. */
START_TEST(matmul_n_as_singles) {
  const int64_t K = 256, T = 5, rows[3] = {300, 64, 300};
  const uint32_t types[3] = {STRATA_TYPE_Q8_0, STRATA_TYPE_F16, STRATA_TYPE_Q4_0};
  struct twin wt[3], o[3], r[3];
  struct strata_tensor gw[3];
  void *d[3];
  for (int i = 0; i < 3; i++) {
    float *w = rand_floats((size_t)(K * rows[i]), 1.0f);
    size_t bytes;
    d[i] = as_type(w, K, rows[i], types[i], &bytes);
    wt[i] = twin_of(d[i], bytes, types[i], K, rows[i]);
    gw[i] = wt[i].tg;
    if (types[i] != STRATA_TYPE_F16)
      ck_assert_msg(gpu->prepare_weight(bg, &wt[i].tg, &gw[i]) == 1, "prepare_weight: %s",
                    gpu->last_error(bg));
    free(w);
  }
  float *x = rand_floats((size_t)(K * T), 1.0f), *x2 = rand_floats((size_t)(K * T), 1.0f);
  struct twin xt = twin_f32(x, K, T), xt2 = twin_f32(x2, K, T);
  for (int gemm = 0; gemm < 2; gemm++) {
    gpu_config(gemm ? "gemm_min_tokens = 1;" : "gemm_min_tokens = 0;");
    const struct strata_tensor *ws[3] = {&gw[0], &gw[1], &gw[2]};
    struct strata_tensor *os[3];
    for (int i = 0; i < 3; i++) {
      o[i] = twin_f32(NULL, rows[i], T);
      r[i] = twin_f32(NULL, rows[i], T);
      os[i] = &o[i].tg;
      /* the workspaces left holding another x's conversions */
      ck_assert_msg(gpu->matmul(bg, &gw[i], &xt2.tg, &r[i].tg) == 0, "matmul: %s",
                    gpu->last_error(bg));
    }
    ck_assert_msg(gpu->matmul_n(bg, 3, ws, &xt.tg, os) == 0, "matmul_n: %s", gpu->last_error(bg));
    for (int i = 0; i < 3; i++)
      ck_assert_msg(gpu->matmul(bg, &gw[i], &xt.tg, &r[i].tg) == 0, "matmul: %s",
                    gpu->last_error(bg));
    for (int i = 0; i < 3; i++) {
      const size_t bytes = (size_t)(rows[i] * T) * 4;
      float *a = malloc(bytes), *b = malloc(bytes);
      ck_assert_int_eq(gpu->download(bg, o[i].g, 0, a, bytes), 0);
      ck_assert_int_eq(gpu->download(bg, r[i].g, 0, b, bytes), 0);
      ck_assert_msg(memcmp(a, b, bytes) == 0 && !isnan(a[0]),
                    "matmul_n weight %d (type %u, cuBLAS %d) differs from matmul", i, types[i],
                    gemm);
      free(a), free(b);
    }
    /* outputs 0 and 2 the same memory; weight 1 with other rows */
    struct strata_tensor *same[3] = {&o[0].tg, &o[1].tg, &o[0].tg};
    ck_assert_int_ne(gpu->matmul_n(bg, 3, ws, &xt.tg, same), 0);
    ck_assert_msg(strstr(gpu->last_error(bg), "overlap") != NULL, "%s", gpu->last_error(bg));
    /* output 0 written over weight 1, which is read after it */
    struct strata_tensor over = {.buf = gw[1].buf, .type = STRATA_TYPE_F32, .ne = {rows[0], T}};
    struct strata_tensor *onw[3] = {&over, &o[1].tg, &o[2].tg};
    ck_assert_int_ne(gpu->matmul_n(bg, 3, ws, &xt.tg, onw), 0);
    ck_assert_msg(strstr(gpu->last_error(bg), "overlaps weight 1") != NULL, "%s",
                  gpu->last_error(bg));
    struct strata_tensor narrow = gw[1];
    narrow.ne[0] = K / 2;
    const struct strata_tensor *mixed[2] = {&gw[0], &narrow};
    ck_assert_int_ne(gpu->matmul_n(bg, 2, mixed, &xt.tg, os), 0);
    for (int i = 0; i < 3; i++) twin_free(&o[i]), twin_free(&r[i]);
  }
  gpu_config("gemm_min_tokens = 0;");
  for (int i = 0; i < 3; i++) {
    if (types[i] != STRATA_TYPE_F16) gpu->buf_free(bg, gw[i].buf);
    twin_free(&wt[i]);
    free(d[i]);
  }
  twin_free(&xt), twin_free(&xt2);
  free(x), free(x2);
}
END_TEST

/* Bad calls get an error naming the op, not a crash. */
START_TEST(refuses_bad_views) {
  struct strata_tensor none = {0};
  struct twin a = twin_f32(NULL, 8, 2);
  ck_assert_int_ne(gpu->add(bg, &a.tg, &none, &a.tg), 0);
  ck_assert_msg(strstr(gpu->last_error(bg), "add c") != NULL, "%s", gpu->last_error(bg));
  struct strata_tensor big = a.tg;
  big.ne[1] = 3; /* past the buffer */
  ck_assert_int_ne(gpu->rmsnorm(bg, &big, &a.tg, 1e-5f, &a.tg), 0);
  ck_assert_msg(strstr(gpu->last_error(bg), "outside its buffer") != NULL, "%s",
                gpu->last_error(bg));
  twin_free(&a);
}
END_TEST

int main(void) {
  load_plugins();
  Suite *s = suite_create("backend_" GPU_BACKEND);
  TCase *tr = tcase_create("registry");
  tcase_add_test(tr, registry_says_why);
  suite_add_tcase(s, tr);
  const int gpu_here = have_gpu();
  if (gpu_here) {
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, row_ops);
    tcase_add_test(tc, embed_all_types);
    tcase_add_test(tc, matmul_all_types);
    tcase_add_test(tc, matmul_split);
    tcase_add_test(tc, matmul_gemm);
    tcase_add_test(tc, matmul_n_as_singles);
    tcase_add_test(tc, kv_store_and_attention);
    tcase_add_test(tc, refuses_bad_views);
    suite_add_tcase(s, tc);
  }
  const int rc = test_run_suite(s);
  strata_registry_free(&g_reg);
  if (rc) return rc;
  if (!gpu_here) {
    printf("no GPU here: the registry checks passed; the op comparisons need a device (SKIP)\n");
    return 77;
  }
  return 0;
}
