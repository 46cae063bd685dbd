/* strata mkmodel: writes a GGUF with random weights in a real shape and a
 * real tokenizer (Llama 2's SentencePiece vocabulary from ../shared by
 * default), for benchmarks and tests. Tensor data is streamed to disk row
 * block by row block, so a 7B model never sits in memory. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <strata/quant.h>

#include "cli.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "plugin_loader.h"
#include "sampler.h"
#include "util.h"

struct shape {
  const char *name;
  int dim, layers, heads, kv_heads, ffn, ctx;
};

static const struct shape shapes[] = {
    {"tiny", 256, 4, 8, 4, 768, 2048},
    {"tinyllama-1.1b", 2048, 22, 32, 4, 5632, 2048},
    {"llama-7b", 4096, 32, 32, 32, 11008, 4096},
    {"mistral-7b", 4096, 32, 32, 8, 14336, 8192},
};

static void mk_usage(FILE *f) {
  fprintf(f, "usage: strata mkmodel --out FILE (--shape NAME | --dim D --layers L --heads H\n"
             "         [--kv-heads K] --ffn F) [--quant Q] [--context N] [--vocab FILE] [--seed S]\n"
             "shapes:");
  for (size_t i = 0; i < STRATA_ARRAY_LEN(shapes); i++)
    fprintf(f, " %s (dim %d, %d layers, %d/%d heads, ffn %d)%s", shapes[i].name, shapes[i].dim,
            shapes[i].layers, shapes[i].heads, shapes[i].kv_heads, shapes[i].ffn,
            i + 1 < STRATA_ARRAY_LEN(shapes) ? "," : "\n");
  fprintf(f, "Q: a quant plugin (f32, f16, bf16, q8_0, q4_0; default q8_0); norms stay f32.\n");
}

static int parse_dim(const char *opt, const char *s, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < 1 || v > (1 << 20)) {
    fprintf(stderr, "strata: mkmodel: %s must be an integer in [1, 1048576], got '%s'\n", opt, s);
    return -1;
  }
  *out = (int)v;
  return 0;
}

struct tensor_plan {
  char name[64];
  uint32_t type;
  uint64_t ne0, ne1;
  float scale; /* uniform in [-scale, scale]; 0: all ones (norms) */
};

int strata_cmd_mkmodel(int argc, char **argv) {
  struct shape sh = {0};
  const char *out = NULL, *quant = "q8_0", *vocab = NULL;
  uint64_t seed = 42;
  static const struct option opts[] = {
      {"out", required_argument, 0, 'o'},    {"shape", required_argument, 0, 's'},
      {"dim", required_argument, 0, 'd'},    {"layers", required_argument, 0, 'l'},
      {"heads", required_argument, 0, 'H'},  {"kv-heads", required_argument, 0, 'K'},
      {"ffn", required_argument, 0, 'f'},    {"quant", required_argument, 0, 'q'},
      {"context", required_argument, 0, 'c'}, {"vocab", required_argument, 0, 'v'},
      {"seed", required_argument, 0, 'S'},   {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "o:s:q:h", opts, NULL)) != -1) {
    switch (c) {
    case 'o': out = optarg; break;
    case 's': {
      size_t i = 0;
      while (i < STRATA_ARRAY_LEN(shapes) && strcmp(shapes[i].name, optarg) != 0) i++;
      if (i == STRATA_ARRAY_LEN(shapes)) {
        fprintf(stderr, "strata: mkmodel: unknown shape '%s'\n", optarg);
        mk_usage(stderr);
        return 2;
      }
      sh = shapes[i];
      break;
    }
    case 'd':
      if (parse_dim("--dim", optarg, &sh.dim)) return 2;
      break;
    case 'l':
      if (parse_dim("--layers", optarg, &sh.layers)) return 2;
      break;
    case 'H':
      if (parse_dim("--heads", optarg, &sh.heads)) return 2;
      break;
    case 'K':
      if (parse_dim("--kv-heads", optarg, &sh.kv_heads)) return 2;
      break;
    case 'f':
      if (parse_dim("--ffn", optarg, &sh.ffn)) return 2;
      break;
    case 'c':
      if (parse_dim("--context", optarg, &sh.ctx)) return 2;
      break;
    case 'q': quant = optarg; break;
    case 'v': vocab = optarg; break;
    case 'S': seed = strtoull(optarg, NULL, 10); break;
    case 'h': mk_usage(stdout); return 0;
    default: mk_usage(stderr); return 2;
    }
  }
  if (optind < argc || !out || !sh.dim || !sh.layers || !sh.heads || !sh.ffn) {
    fprintf(stderr, "strata: mkmodel: need --out and a --shape or --dim, --layers, --heads and --ffn\n");
    return 2;
  }
  if (!sh.kv_heads) sh.kv_heads = sh.heads;
  if (!sh.ctx) sh.ctx = 2048;
  if (sh.dim % sh.heads || sh.heads % sh.kv_heads || (sh.dim / sh.heads) % 2) {
    fprintf(stderr, "strata: mkmodel: dim %d, heads %d, kv heads %d do not divide into even head sizes\n", sh.dim,
            sh.heads, sh.kv_heads);
    return 2;
  }

  /* quant plugins do the (de)quantizing */
  size_t n_dirs;
  char **dirs = strata_plugin_default_dirs(NULL, 0, &n_dirs);
  struct strata_registry reg = {0};
  strata_registry_scan(&reg, (const char *const *)dirs, n_dirs);
  strata_free_strv(dirs, n_dirs);
  int rc = 1;
  strata_gguf_t *vg = NULL;
  strata_gguf_writer_t *w = NULL;
  FILE *f = NULL;
  float *row = NULL;
  void *qbuf = NULL;
  char err[1024];
  const struct strata_plugin *qp = strata_registry_find(&reg, STRATA_PLUGIN_QUANT, quant);
  const struct strata_plugin *f32p = strata_registry_find(&reg, STRATA_PLUGIN_QUANT, "f32");
  if (!qp || !f32p) {
    fprintf(stderr, "strata: mkmodel: unknown quant '%s' (see `strata plugins`)\n", quant);
    rc = 2;
    goto done;
  }
  const struct strata_quant_vtable *q = qp->desc->vt.quant;
  if (sh.dim % q->block_size || sh.ffn % q->block_size) {
    fprintf(stderr, "strata: mkmodel: dim %d and ffn %d must be multiples of %s's block of %u\n", sh.dim, sh.ffn,
            quant, q->block_size);
    rc = 2;
    goto done;
  }
  char *default_vocab = NULL;
  if (!vocab) {
    default_vocab = strata_path_join(STRATA_SHARED_DIR, "vocab/ggml-vocab-llama-spm.gguf");
    vocab = default_vocab;
  }
  int vrc = strata_gguf_open(vocab, &vg, err, sizeof err);
  free(default_vocab);
  if (vrc != 0) {
    fprintf(stderr, "strata: mkmodel: vocabulary: %s\n", err);
    goto done;
  }
  const struct strata_gguf_value *toks = strata_gguf_get_array(vg, "tokenizer.ggml.tokens");
  if (!toks || toks->v.arr.type != STRATA_GGUF_STRING || toks->v.arr.n == 0) {
    fprintf(stderr, "strata: mkmodel: %s has no tokenizer.ggml.tokens\n", vocab);
    goto done;
  }
  uint64_t n_vocab = toks->v.arr.n;
  int hd = sh.dim / sh.heads;

  w = strata_gguf_writer_new(3);
  if (!w) goto oom;
  char name[128];
  snprintf(name, sizeof name, "synthetic %s %s", sh.name ? sh.name : "custom", quant);
  strata_gguf_writer_set_str(w, "general.architecture", "llama");
  strata_gguf_writer_set_str(w, "general.name", name);
  strata_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)sh.ctx);
  strata_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)sh.dim);
  strata_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)sh.layers);
  strata_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)sh.ffn);
  strata_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)sh.heads);
  strata_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)sh.kv_heads);
  strata_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
  strata_gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f);
  strata_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)hd);
  for (uint64_t i = 0; i < strata_gguf_n_kv(vg); i++) {
    const struct strata_gguf_kv *kv = strata_gguf_kv_at(vg, i);
    if (strncmp(kv->key.ptr, "tokenizer.", 10) == 0) strata_gguf_writer_set_value(w, kv->key.ptr, &kv->value);
  }

  size_t n_plan = (size_t)sh.layers * 9 + 3, np = 0;
  struct tensor_plan *plan = strata_calloc(n_plan, sizeof *plan);
  if (!plan) goto oom;
  /* Uniform weights with variance 1/fan_in keep activations of a deep
   * random network in range; norm weights are ones. */
  float s_dim = sqrtf(3.0f / sh.dim), s_ffn = sqrtf(3.0f / sh.ffn);
#define PLAN(nm, t, a, b, sc)                                                        \
  do {                                                                               \
    snprintf(plan[np].name, sizeof plan[np].name, "%s", nm);                         \
    plan[np].type = (t);                                                             \
    plan[np].ne0 = (uint64_t)(a);                                                    \
    plan[np].ne1 = (uint64_t)(b);                                                    \
    plan[np].scale = (sc);                                                           \
    np++;                                                                            \
  } while (0)
  PLAN("token_embd.weight", q->type, sh.dim, n_vocab, s_dim);
  for (int l = 0; l < sh.layers; l++) {
    char nm[64];
#define LAYER(suffix, t, a, b, sc)                           \
  do {                                                     \
    snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);       \
    PLAN(nm, t, a, b, sc);                                 \
  } while (0)
    LAYER("attn_norm.weight", STRATA_TYPE_F32, sh.dim, 1, 0);
    LAYER("attn_q.weight", q->type, sh.dim, sh.heads * hd, s_dim);
    LAYER("attn_k.weight", q->type, sh.dim, sh.kv_heads * hd, s_dim);
    LAYER("attn_v.weight", q->type, sh.dim, sh.kv_heads * hd, s_dim);
    LAYER("attn_output.weight", q->type, sh.heads * hd, sh.dim, s_dim);
    LAYER("ffn_norm.weight", STRATA_TYPE_F32, sh.dim, 1, 0);
    LAYER("ffn_gate.weight", q->type, sh.dim, sh.ffn, s_dim);
    LAYER("ffn_up.weight", q->type, sh.dim, sh.ffn, s_dim);
    LAYER("ffn_down.weight", q->type, sh.ffn, sh.dim, s_ffn);
#undef LAYER
  }
  PLAN("output_norm.weight", STRATA_TYPE_F32, sh.dim, 1, 0);
  PLAN("output.weight", q->type, sh.dim, n_vocab, s_dim);
#undef PLAN
  for (size_t i = 0; i < np; i++) {
    uint64_t ne[2] = {plan[i].ne0, plan[i].ne1};
    strata_gguf_writer_add_tensor(w, plan[i].name, plan[i].type, plan[i].ne1 == 1 ? 1 : 2, ne, NULL);
  }
  if (strata_gguf_writer_error(w)[0]) {
    fprintf(stderr, "strata: mkmodel: %s\n", strata_gguf_writer_error(w));
    free(plan);
    goto done;
  }
  f = fopen(out, "wb");
  if (!f) {
    fprintf(stderr, "strata: mkmodel: %s: %s\n", out, strerror(errno));
    free(plan);
    goto done;
  }
  if (strata_gguf_writer_begin(w, f, err, sizeof err) != 0) goto write_failed_plan;
  size_t maxrow = (size_t)(sh.ffn > sh.dim ? sh.ffn : sh.dim);
  row = malloc(maxrow * sizeof *row * 64);
  qbuf = malloc(maxrow * 4 * 64);
  if (!row || !qbuf) {
    free(plan);
    goto oom;
  }
  struct strata_rng rng;
  strata_rng_seed(&rng, seed);
  double t0 = strata_now();
  for (size_t i = 0; i < np; i++) {
    const struct strata_quant_vtable *tq = plan[i].type == q->type ? q : f32p->desc->vt.quant;
    uint64_t row_bytes = plan[i].ne0 / tq->block_size * tq->type_size;
    for (uint64_t r = 0; r < plan[i].ne1; r += 64) {
      uint64_t nr = plan[i].ne1 - r < 64 ? plan[i].ne1 - r : 64;
      size_t n = (size_t)(nr * plan[i].ne0);
      for (size_t k = 0; k < n; k++)
        row[k] = plan[i].scale == 0 ? 1.0f
                                    : (float)((strata_rng_uniform(&rng) * 2 - 1) * plan[i].scale);
      for (uint64_t k = 0; k < nr; k++)
        tq->quantize_row(row + k * plan[i].ne0, (char *)qbuf + k * row_bytes, (int64_t)plan[i].ne0);
      if (strata_gguf_writer_write(w, qbuf, (size_t)(nr * row_bytes), err, sizeof err) != 0) goto write_failed_plan;
    }
  }
  free(plan);
  if (strata_gguf_writer_end(w, err, sizeof err) != 0) goto write_failed;
  if (fclose(f) != 0) {
    f = NULL;
    snprintf(err, sizeof err, "%s", strerror(errno));
    goto write_failed;
  }
  f = NULL;
  fprintf(stderr, "wrote %s: %s, %d layers, dim %d, ffn %d, %d/%d heads, vocab %llu, %s, %.1f MB in %.1f s\n", out,
          sh.name ? sh.name : "custom", sh.layers, sh.dim, sh.ffn, sh.heads, sh.kv_heads,
          (unsigned long long)n_vocab, quant, strata_gguf_writer_file_size(w) / 1e6, strata_now() - t0);
  rc = 0;
  goto done;
write_failed_plan:
  free(plan);
write_failed:
  fprintf(stderr, "strata: mkmodel: writing %s: %s\n", out, err);
  if (f) fclose(f);
  f = NULL;
  unlink(out);
  goto done;
oom:
  fprintf(stderr, "strata: mkmodel: out of memory\n");
done:
  if (f) {
    fclose(f);
    unlink(out);
  }
  free(row);
  free(qbuf);
  strata_gguf_writer_free(w);
  strata_gguf_close(vg);
  strata_registry_free(&reg);
  return rc;
}
