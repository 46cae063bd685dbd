/* bench_attention: a backend's paged decode attention on serving shapes,
 * to set beside PyTorch's scaled_dot_product_attention on the same shapes
 * (tests/bench/sdpa_reference.py; tests/gpu/device_check.sh runs both).
 *
 * Shapes: 32 query heads over 8 KV heads of 128 (Llama-3-8B's), an f16
 * cache in blocks of 16 shuffled over the pool, one query per sequence at
 * the last position (a decode step), for B sequences of CTX positions:
 * 1 x 8192, 8 x 4096, 64 x 1024, 64 x 4096. Prints, per shape, the median
 * time of an attention call (each call followed by a synchronize; enough
 * calls for a second) and the K/V bytes it must read over that time.
 *
 * Not built by `make check`. From a configured build tree:
 *   ./libtool --mode=link gcc -O2 -I. -I$SRC/core/include -I$SRC/core \
 *     -DSTRATA_BUILDDIR="\"$PWD\"" -DSTRATA_SRCDIR="\"$SRC\"" \
 *     -DSTRATA_SHARED_DIR='"../shared"' -DSTRATA_PKGLIBDIR='"/nonexistent"' \
 *     -o bench_attention $SRC/tests/bench/bench_attention.c core/libstrata.la -lpthread
 *   ./bench_attention [BACKEND]     (default cuda)
 * Output lines: "attention B x CTX: M ms, G GB/s". */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <strata/backend.h>
#include <strata/fp16.h>
#include <strata/quant.h>

#include "plugin_loader.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what, const char *why) {
  fprintf(stderr, "bench_attention: %s: %s\n", what, why);
  exit(1);
}

static uint64_t rng = 12345;
static float frand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) * 0x1p-23 - 1.0);
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  const char *name = argc > 1 ? argv[1] : "cuda";
  char dir[4096];
  const char *bd = getenv("STRATA_BUILDDIR");
  snprintf(dir, sizeof dir, "%s/plugins", bd && *bd ? bd : STRATA_BUILDDIR);
  const char *dirs[] = {dir};
  struct strata_registry reg;
  memset(&reg, 0, sizeof reg);
  strata_registry_scan(&reg, dirs, 1);
  strata_host_set_registry(&reg);
  char err[1024];
  for (size_t i = 0; i < reg.n_plugins; i++)
    if (strata_plugin_init(&reg.plugins[i], NULL, err, sizeof err) != 0) die("init", err);
  const struct strata_plugin *pl = strata_registry_find(&reg, STRATA_PLUGIN_BACKEND, name);
  if (!pl) die(name, "no such backend plugin under the build tree");
  const struct strata_backend_vtable *be = pl->desc->vt.backend;
  struct strata_backend_params params = {.size = sizeof params};
  strata_backend_t *b;
  if (be->open(0, &params, &b, err, sizeof err) != 0) die("open", err);

  const int n_heads = 32, n_kv = 8, hd = 128, bs = 16;
  const int shapes[][2] = {{1, 8192}, {8, 4096}, {64, 1024}, {64, 4096}};
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    const int B = shapes[si][0], ctx = shapes[si][1], per = ctx / bs, nblocks = B * per;
    const int64_t kvd = (int64_t)n_kv * hd, rows = (int64_t)nblocks * bs;
    /* the cache: random f16 rows (K and V alike), blocks shuffled */
    const size_t cbytes = (size_t)(kvd * rows) * 2;
    uint16_t *hc = malloc(cbytes);
    for (size_t i = 0; i < cbytes / 2; i++) hc[i] = strata_fp32_to_fp16(frand());
    strata_buf_t *kc = be->buf_alloc(b, cbytes), *vc = be->buf_alloc(b, cbytes);
    if (!kc || !vc) die("buf_alloc", be->last_error(b));
    if (be->upload(b, kc, 0, hc, cbytes) || be->upload(b, vc, 0, hc, cbytes))
      die("upload", be->last_error(b));
    free(hc);
    int32_t *bt = malloc(sizeof *bt * (size_t)nblocks), *pos = malloc(sizeof *pos * (size_t)B),
            *start = malloc(sizeof *start * (size_t)(B + 1)), *len = malloc(sizeof *len * (size_t)B),
            *outr = malloc(sizeof *outr * (size_t)B);
    for (int i = 0; i < nblocks; i++) bt[i] = i;
    for (int i = nblocks - 1; i > 0; i--) {
      const int j = (int)((frand() + 1.0f) * 0.5f * (float)(i + 1)) % (i + 1);
      const int32_t x = bt[i];
      bt[i] = bt[j];
      bt[j] = x;
    }
    for (int s = 0; s < B; s++) {
      pos[s] = ctx - 1;
      start[s] = s;
      len[s] = ctx;
      outr[s] = s;
    }
    start[B] = B;
    const struct strata_batch batch = {.size = sizeof batch, .n_tokens = B, .positions = pos,
                                       .n_seqs = B, .seq_start = start, .seq_len = len,
                                       .block_tables = bt, .max_blocks = per, .block_size = bs,
                                       .n_out = B, .out_rows = outr};
    if (be->set_batch(b, &batch) != 0) die("set_batch", be->last_error(b));
    const size_t qbytes = (size_t)B * n_heads * hd * 4;
    float *hq = malloc(qbytes);
    for (size_t i = 0; i < qbytes / 4; i++) hq[i] = frand();
    strata_buf_t *qb = be->buf_alloc(b, qbytes), *ob = be->buf_alloc(b, qbytes);
    if (!qb || !ob || be->upload(b, qb, 0, hq, qbytes)) die("q", be->last_error(b));
    free(hq);
    const struct strata_tensor tq = {.buf = qb, .type = STRATA_TYPE_F32, .ne = {n_heads * hd, B}};
    const struct strata_tensor tk = {.buf = kc, .type = STRATA_TYPE_F16, .ne = {kvd, rows}};
    const struct strata_tensor tv = {.buf = vc, .type = STRATA_TYPE_F16, .ne = {kvd, rows}};
    struct strata_tensor to = {.buf = ob, .type = STRATA_TYPE_F32, .ne = {n_heads * hd, B}};
    const struct strata_attention at = {.n_heads = n_heads, .n_kv_heads = n_kv, .head_dim = hd,
                                        .scale = 0.08838834764831845f};
    for (int w = 0; w < 3; w++) /* warm-up: module load, workspace */
      if (be->attention(b, &tq, &tk, &tv, &at, &to) || be->synchronize(b))
        die("attention", be->last_error(b));
    double ts[4096];
    int n = 0;
    const double t0 = now();
    while (n < 4096 && (now() - t0 < 1.0 || n < 10)) {
      const double a = now();
      if (be->attention(b, &tq, &tk, &tv, &at, &to) || be->synchronize(b))
        die("attention", be->last_error(b));
      ts[n++] = now() - a;
    }
    qsort(ts, (size_t)n, sizeof *ts, cmp_double);
    const double med = ts[n / 2];
    const double kv_bytes = 2.0 * B * (double)ctx * (double)kvd * 2;
    printf("attention %d x %d: %.4f ms, %.1f GB/s (%d calls)\n", B, ctx, med * 1e3,
           kv_bytes / med / 1e9, n);
    be->buf_free(b, kc);
    be->buf_free(b, vc);
    be->buf_free(b, qb);
    be->buf_free(b, ob);
    free(bt), free(pos), free(start), free(len), free(outr);
  }
  be->close(b);
  strata_registry_free(&reg);
  return 0;
}
