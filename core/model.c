#include "config.h"

#include "model.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <strata/quant.h>

#include "log.h"
#include "util.h"

/* ---- hyperparameters ----------------------------------------------------------- */

static int meta_int(const strata_gguf_t *g, const char *arch, const char *suffix,
                    int64_t *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  return strata_gguf_get_int(g, key, out);
}

static int meta_float(const strata_gguf_t *g, const char *arch, const char *suffix,
                      double *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  return strata_gguf_get_float(g, key, out);
}

int strata_model_read_hparams(const strata_gguf_t *g, struct strata_hparams *hp, char *err,
                              size_t errlen) {
  memset(hp, 0, sizeof *hp);
  const char *arch;
  size_t alen;
  if (strata_gguf_get_string(g, "general.architecture", &arch, &alen) != 0)
    return strata_errf(err, errlen, "missing metadata general.architecture");
  /* The llama family: the same graph, Qwen2 adding QKV biases and NeoX RoPE. */
  static const char *supported[] = {"llama", "mistral", "qwen2"};
  int ok = 0;
  for (size_t i = 0; i < STRATA_ARRAY_LEN(supported); i++) ok |= strcmp(arch, supported[i]) == 0;
  if (!ok || alen >= sizeof hp->arch)
    return strata_errf(err, errlen,
                       "unsupported architecture '%.64s' (supported: llama, mistral, qwen2)", arch);
  memcpy(hp->arch, arch, alen + 1);

  int64_t v;
  struct {
    const char *key;
    int32_t *dst;
    int required;
  } ints[] = {
      {"embedding_length", &hp->dim, 1},      {"block_count", &hp->n_layers, 1},
      {"feed_forward_length", &hp->ffn_dim, 1}, {"attention.head_count", &hp->n_heads, 1},
      {"attention.head_count_kv", &hp->n_kv_heads, 0}, {"context_length", &hp->ctx_len, 1},
  };
  for (size_t i = 0; i < STRATA_ARRAY_LEN(ints); i++) {
    if (meta_int(g, arch, ints[i].key, &v) != 0) {
      if (ints[i].required)
        return strata_errf(err, errlen, "missing metadata %s.%s", arch, ints[i].key);
      continue;
    }
    if (v <= 0 || v > (1 << 24))
      return strata_errf(err, errlen, "metadata %s.%s = %lld is out of range", arch,
                         ints[i].key, (long long)v);
    *ints[i].dst = (int32_t)v;
  }
  if (!hp->n_kv_heads) hp->n_kv_heads = hp->n_heads;
  if (hp->dim % hp->n_heads != 0)
    return strata_errf(err, errlen, "embedding_length %d is not a multiple of head_count %d",
                       hp->dim, hp->n_heads);
  if (hp->n_heads % hp->n_kv_heads != 0)
    return strata_errf(err, errlen, "head_count %d is not a multiple of head_count_kv %d",
                       hp->n_heads, hp->n_kv_heads);
  hp->head_dim = hp->dim / hp->n_heads;
  if (hp->head_dim % 2)
    return strata_errf(err, errlen, "head dimension %d is odd", hp->head_dim);
  double f;
  hp->rms_eps = meta_float(g, arch, "attention.layer_norm_rms_epsilon", &f) == 0 ? (float)f : 1e-5f;
  hp->rope.theta = meta_float(g, arch, "rope.freq_base", &f) == 0 ? (float)f : 10000.0f;
  hp->rope.freq_scale = 1.0f;
  const char *st;
  size_t stl;
  char key[128];
  snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
  int has_type = strata_gguf_get_string(g, key, &st, &stl) == 0;
  if (has_type && strcmp(st, "none") != 0 && strcmp(st, "linear") != 0)
    return strata_errf(err, errlen, "unsupported RoPE scaling type '%.32s' (supported: none, linear)", st);
  if ((!has_type || strcmp(st, "linear") == 0) && meta_float(g, arch, "rope.scaling.factor", &f) == 0 && f > 0)
    hp->rope.freq_scale = (float)(1.0 / f);
  hp->rope.n_dims = hp->head_dim;
  if (meta_int(g, arch, "rope.dimension_count", &v) == 0) {
    if (v <= 0 || v > hp->head_dim || v % 2)
      return strata_errf(err, errlen, "rope.dimension_count %lld does not fit head dimension %d",
                         (long long)v, hp->head_dim);
    hp->rope.n_dims = (int)v;
  }
  hp->rope.neox = strcmp(arch, "qwen2") == 0;
  hp->qkv_bias = strcmp(arch, "qwen2") == 0;
  const struct strata_gguf_tensor *te = strata_gguf_find_tensor(g, "token_embd.weight");
  if (!te) return strata_errf(err, errlen, "missing tensor token_embd.weight");
  if (te->ne[1] <= 0 || te->ne[1] > (1 << 24))
    return strata_errf(err, errlen, "token_embd.weight has %llu rows", (unsigned long long)te->ne[1]);
  hp->n_vocab = (int32_t)te->ne[1];
  hp->tied_output = strata_gguf_find_tensor(g, "output.weight") == NULL;
  return 0;
}

/* ---- loading ---------------------------------------------------------------------- */

static int track_buf(struct strata_model *m, strata_buf_t *b) {
  strata_buf_t **nb = strata_reallocarray(m->bufs, m->n_bufs + 1, sizeof *nb);
  if (!nb) return -1;
  m->bufs = nb;
  m->bufs[m->n_bufs++] = b;
  return 0;
}

static int track_host(struct strata_model *m, void *p) {
  void **nb = strata_reallocarray(m->host_allocs, m->n_host_allocs + 1, sizeof *nb);
  if (!nb) return -1;
  m->host_allocs = nb;
  m->host_allocs[m->n_host_allocs++] = p;
  return 0;
}

/* The mapped tensor bytes at p will not be read again (see release_mapped);
 * ranges are kept as addresses. */
static int mark_released(struct strata_model *m, const void *p, uint64_t bytes) {
  uint64_t(*nr)[2] = strata_reallocarray(m->released, m->n_released + 1, sizeof *nr);
  if (!nr) return -1;
  m->released = nr;
  const uint64_t at = (uint64_t)(uintptr_t)p;
  m->released[m->n_released][0] = at;
  m->released[m->n_released][1] = at + bytes;
  m->n_released++;
  return 0;
}

static int cmp_range(const void *a, const void *b) {
  const uint64_t x = ((const uint64_t *)a)[0], y = ((const uint64_t *)b)[0];
  return x < y ? -1 : x > y;
}

/* Weights that live elsewhere now (packed by the backend, copied, or
 * requantized) leave the process's resident memory, in runs as long as
 * possible: the page cache maps files in large folios (2 MiB), and a read
 * next to a released range (the next tensor, a norm vector left in place)
 * brought the whole folio back. During the load (final 0) only the whole
 * 2 MiB pages inside each run go, which no later read shares, so the load
 * never holds much more than the model; at the end (final 1) the rest. */
static void release_mapped(struct strata_model *m, int final) {
  if (m->n_released == 0) return;
  const uint64_t gran = final ? 1 : (uint64_t)2 << 20;
  qsort(m->released, m->n_released, sizeof *m->released, cmp_range);
  const uint64_t align = strata_gguf_alignment(m->gguf);
  uint64_t s = m->released[0][0], e = m->released[0][1];
  for (size_t i = 1; i <= m->n_released; i++) {
    /* tensors are `align`-padded: a gap below that is padding */
    if (i < m->n_released && m->released[i][0] <= e + align) {
      if (m->released[i][1] > e) e = m->released[i][1];
      continue;
    }
    const uint64_t a = (s + gran - 1) / gran * gran, z = e / gran * gran;
    if (z > a) strata_gguf_release(m->gguf, (const void *)(uintptr_t)a, z - a);
    if (i < m->n_released) {
      s = m->released[i][0];
      e = m->released[i][1];
    }
  }
}

static uint64_t tensor_bytes(uint32_t type, int64_t ne0, int64_t ne1) {
  uint32_t bs, ts;
  if (strata_ggml_type_layout(type, &bs, &ts) != 0) return 0;
  return (uint64_t)(ne0 / bs) * ts * (uint64_t)ne1;
}

/* Puts host data on the device: in place when the backend can read it and
 * copy is 0. */
static int place(struct strata_model *m, const void *data, uint64_t bytes, int copy,
                 strata_buf_t **out, char *err, size_t errlen) {
  strata_buf_t *b =
      m->be->buf_wrap_host && !copy ? m->be->buf_wrap_host(m->bk, data, bytes) : NULL;
  if (!b) {
    b = m->be->buf_alloc(m->bk, bytes);
    if (!b) return strata_errf(err, errlen, "out of device memory for %llu bytes", (unsigned long long)bytes);
    if (m->be->upload(m->bk, b, 0, data, bytes) != 0)
      return strata_errf(err, errlen, "upload failed: %s", m->be->last_error(m->bk));
  }
  *out = b;
  return track_buf(m, b);
}

/* Loads one weight; ne0/ne1 are the expected shape (ne1 = 1 for vectors).
 * Vectors must be f32 (norms, biases). Matrices may be requantized. */
static int load_weight(struct strata_model *m, const struct strata_registry *reg,
                       const char *name, int64_t ne0, int64_t ne1, int is_vector,
                       int requant, struct strata_tensor *out, char *err, size_t errlen) {
  const struct strata_gguf_tensor *t = strata_gguf_find_tensor(m->gguf, name);
  if (!t) return strata_errf(err, errlen, "missing tensor %s", name);
  if ((int64_t)t->ne[0] != ne0 || (int64_t)t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
    return strata_errf(err, errlen, "tensor %s has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld]",
                       name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                       (unsigned long long)t->ne[2], (unsigned long long)t->ne[3], (long long)ne0,
                       (long long)ne1);
  const void *data = t->data;
  uint32_t type = t->type;
  uint64_t bytes = t->nbytes;
  const struct strata_plugin *src_q = strata_registry_find_quant(reg, type);
  if (!src_q)
    return strata_errf(err, errlen, "tensor %s has type %s, which no quant plugin supports", name,
                       strata_ggml_type_name(type));
  if (!m->be) { /* a plan: the same decisions, no memory touched */
    if (is_vector && type != STRATA_TYPE_F32) {
      bytes = (uint64_t)ne0 * ne1 * sizeof(float);
    } else if (!is_vector && requant && m->opts.quant) {
      const struct strata_plugin *dq = strata_registry_find(reg, STRATA_PLUGIN_QUANT, m->opts.quant);
      if (!dq) return strata_errf(err, errlen, "unknown quant '%s'", m->opts.quant);
      const struct strata_quant_vtable *q = dq->desc->vt.quant;
      if (q->type != type && ne0 % q->block_size == 0 && ne0 % src_q->desc->vt.quant->block_size == 0)
        bytes = tensor_bytes(q->type, ne0, ne1);
    }
    m->weight_bytes += bytes;
    *out = (struct strata_tensor){.type = type, .ne = {ne0, ne1}};
    return 0;
  }
  if (is_vector && type != STRATA_TYPE_F32) {
    /* Norm weights and biases are tiny: keep them f32 for every backend. */
    float *f = malloc((size_t)ne0 * ne1 * sizeof *f);
    if (!f || track_host(m, f) != 0) return strata_errf(err, errlen, "out of memory");
    src_q->desc->vt.quant->dequantize_row(t->data, f, ne0 * ne1);
    data = f;
    type = STRATA_TYPE_F32;
    bytes = (uint64_t)ne0 * ne1 * sizeof *f;
  } else if (!is_vector && requant && m->opts.quant) {
    const struct strata_plugin *dq = strata_registry_find(reg, STRATA_PLUGIN_QUANT, m->opts.quant);
    if (!dq) return strata_errf(err, errlen, "unknown quant '%s'", m->opts.quant);
    const struct strata_quant_vtable *q = dq->desc->vt.quant;
    uint32_t sbs = src_q->desc->vt.quant->block_size;
    if (q->type != type && ne0 % q->block_size == 0 && ne0 % sbs == 0) {
      uint64_t nb = tensor_bytes(q->type, ne0, ne1);
      void *dst = malloc(nb);
      float *row = malloc((size_t)ne0 * sizeof *row);
      if (!dst || !row || track_host(m, dst) != 0) {
        free(row);
        return strata_errf(err, errlen, "out of memory requantizing %s", name);
      }
      uint64_t src_row = bytes / (uint64_t)ne1, dst_row = nb / (uint64_t)ne1;
      for (int64_t r = 0; r < ne1; r++) {
        src_q->desc->vt.quant->dequantize_row((const char *)t->data + r * src_row, row, ne0);
        q->quantize_row(row, (char *)dst + r * dst_row, ne0);
      }
      free(row);
      data = dst;
      type = q->type;
      bytes = nb;
    } else if (q->type != type) {
      strata_log(STRATA_LOG_INFO, "model", "keeping %s in %s: row length %lld is not a multiple of %s's block",
                 name, strata_ggml_type_name(type), (long long)ne0, m->opts.quant);
    }
  }
  if (!is_vector && !m->be->supports_type(m->bk, type))
    return strata_errf(err, errlen, "tensor %s: the backend has no matmul for type %s", name,
                       strata_ggml_type_name(type));
  strata_buf_t *b = NULL;
  /* vectors are copied: a norm read in place each step kept the file's
   * large folio around it resident (see release_mapped) */
  if (place(m, data, bytes, is_vector, &b, err, errlen) != 0) return -1;
  /* the file's bytes are not read again once copied, converted or requantized */
  if ((is_vector || data != t->data) && mark_released(m, t->data, t->nbytes) != 0)
    return strata_errf(err, errlen, "out of memory");
  *out = (struct strata_tensor){.buf = b, .offset = 0, .type = type, .ne = {ne0, ne1}};
  /* A matrix that only matmul reads (not the embedding table, which the
   * embedding lookup reads too) may go into the backend's own layout; the
   * original bytes are then never read again and leave memory. */
  const struct strata_backend_vtable *be = m->be;
  if (!is_vector && strcmp(name, "token_embd.weight") != 0 &&
      be->size >= offsetof(struct strata_backend_vtable, prepare_weight) + sizeof be->prepare_weight &&
      be->prepare_weight) {
    struct strata_tensor prep;
    int rc = be->prepare_weight(m->bk, out, &prep);
    if (rc < 0) return strata_errf(err, errlen, "tensor %s: %s", name, be->last_error(m->bk));
    if (rc > 0) {
      /* b is the last tracked buffer: put the prepared one in its place */
      be->buf_free(m->bk, b);
      m->bufs[m->n_bufs - 1] = prep.buf;
      if (data == t->data) {
        if (mark_released(m, data, bytes) != 0) return strata_errf(err, errlen, "out of memory");
        release_mapped(m, 0);
      } else { /* requantized above: the last host allocation */
        free(m->host_allocs[--m->n_host_allocs]);
      }
      *out = prep;
    }
  }
  m->weight_bytes += bytes;
  return 0;
}

static int alloc_act(struct strata_model *m, struct strata_tensor *t, int64_t width, int64_t rows,
                     uint32_t type, char *err, size_t errlen) {
  uint64_t bytes = tensor_bytes(type, width, rows);
  if (!m->be) { /* a plan */
    m->ws_bytes += bytes;
    *t = (struct strata_tensor){.type = type, .ne = {width, rows}};
    return 0;
  }
  strata_buf_t *b = m->be->buf_alloc(m->bk, bytes ? bytes : 1);
  if (!b || track_buf(m, b) != 0)
    return strata_errf(err, errlen, "out of device memory for %llu bytes of workspace",
                       (unsigned long long)bytes);
  *t = (struct strata_tensor){.buf = b, .offset = 0, .type = type, .ne = {width, rows}};
  return 0;
}

int strata_model_load(const char *path, const struct strata_model_opts *opts,
                      const struct strata_registry *reg, const struct strata_backend_vtable *be,
                      strata_backend_t *bk, struct strata_model **out, char *err, size_t errlen) {
  struct strata_model *m = strata_calloc(1, sizeof *m);
  if (!m) return strata_errf(err, errlen, "out of memory");
  m->opts = *opts;
  m->be = be;
  m->bk = bk;
  char gerr[512];
  if (strata_gguf_open(path, &m->gguf, gerr, sizeof gerr) != 0) {
    strata_errf(err, errlen, "%s", gerr);
    goto fail;
  }
  if (strata_model_read_hparams(m->gguf, &m->hp, gerr, sizeof gerr) != 0) {
    strata_errf(err, errlen, "%s: %s", path, gerr);
    goto fail;
  }
  const struct strata_hparams *hp = &m->hp;
  m->ctx_len = opts->context_length > 0 ? opts->context_length : hp->ctx_len;
  if (m->opts.block_size <= 0) m->opts.block_size = 16;
  if (m->opts.max_tokens <= 0) m->opts.max_tokens = 512;
  if (m->opts.max_out <= 0) m->opts.max_out = m->opts.max_tokens;
  if (m->opts.n_blocks <= 0) m->opts.n_blocks = (m->ctx_len + m->opts.block_size - 1) / m->opts.block_size;
  int64_t qd = (int64_t)hp->n_heads * hp->head_dim, kvd = (int64_t)hp->n_kv_heads * hp->head_dim;

  char name[96];
  /* The embedding is a row lookup: requantizing it saves memory but no
   * time and only adds error, so it keeps its type unless it doubles as
   * the output projection (a matmul). */
  const uint64_t before_embd = m->weight_bytes;
  if (load_weight(m, reg, "token_embd.weight", hp->dim, hp->n_vocab, 0, hp->tied_output, &m->tok_embd,
                  err, errlen))
    goto fail;
  m->embd_bytes = m->weight_bytes - before_embd;
  if (load_weight(m, reg, "output_norm.weight", hp->dim, 1, 1, 0, &m->output_norm, err, errlen))
    goto fail;
  if (hp->tied_output)
    m->output = m->tok_embd;
  else if (load_weight(m, reg, "output.weight", hp->dim, hp->n_vocab, 0, 1, &m->output, err, errlen))
    goto fail;
  m->layers = strata_calloc((size_t)hp->n_layers, sizeof *m->layers);
  if (!m->layers) {
    strata_errf(err, errlen, "out of memory");
    goto fail;
  }
  for (int l = 0; l < hp->n_layers; l++) {
    struct strata_layer *L = &m->layers[l];
    struct {
      const char *suffix;
      int64_t ne0, ne1;
      int vec;
      struct strata_tensor *dst;
    } ws[] = {
        {"attn_norm.weight", hp->dim, 1, 1, &L->attn_norm},
        {"attn_q.weight", hp->dim, qd, 0, &L->wq},
        {"attn_k.weight", hp->dim, kvd, 0, &L->wk},
        {"attn_v.weight", hp->dim, kvd, 0, &L->wv},
        {"attn_output.weight", qd, hp->dim, 0, &L->wo},
        {"ffn_norm.weight", hp->dim, 1, 1, &L->ffn_norm},
        {"ffn_gate.weight", hp->dim, hp->ffn_dim, 0, &L->w_gate},
        {"ffn_up.weight", hp->dim, hp->ffn_dim, 0, &L->w_up},
        {"ffn_down.weight", hp->ffn_dim, hp->dim, 0, &L->w_down},
        {"attn_q.bias", qd, 1, 1, &L->bq},
        {"attn_k.bias", kvd, 1, 1, &L->bk},
        {"attn_v.bias", kvd, 1, 1, &L->bv},
    };
    size_t n = hp->qkv_bias ? STRATA_ARRAY_LEN(ws) : STRATA_ARRAY_LEN(ws) - 3;
    for (size_t i = 0; i < n; i++) {
      snprintf(name, sizeof name, "blk.%d.%s", l, ws[i].suffix);
      if (load_weight(m, reg, name, ws[i].ne0, ws[i].ne1, ws[i].vec, 1, ws[i].dst, err, errlen))
        goto fail;
    }
    int64_t slots = (int64_t)m->opts.n_blocks * m->opts.block_size;
    uint32_t kvt = opts->kv_f16 ? STRATA_TYPE_F16 : STRATA_TYPE_F32;
    if (alloc_act(m, &L->k_cache, kvd, slots, kvt, err, errlen) ||
        alloc_act(m, &L->v_cache, kvd, slots, kvt, err, errlen))
      goto fail;
    m->kv_bytes += 2 * tensor_bytes(kvt, kvd, slots);
  }
  int64_t T = m->opts.max_tokens;
  if (alloc_act(m, &m->x, hp->dim, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->xb, hp->dim, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->q, qd, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->k, kvd, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->v, kvd, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->att, qd, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->hb, hp->ffn_dim, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->hb2, hp->ffn_dim, T, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->xo, hp->dim, m->opts.max_out, STRATA_TYPE_F32, err, errlen) ||
      alloc_act(m, &m->logits, hp->n_vocab, m->opts.max_out, STRATA_TYPE_F32, err, errlen))
    goto fail;
  release_mapped(m, 1);
  *out = m;
  return 0;
fail:
  strata_model_free(m);
  return -1;
}

int strata_model_plan(const char *path, const struct strata_model_opts *opts,
                      const struct strata_registry *reg, struct strata_model_plan *out, char *err,
                      size_t errlen) {
  struct strata_model *m = NULL;
  memset(out, 0, sizeof *out);
  if (strata_model_load(path, opts, reg, NULL, NULL, &m, err, errlen) != 0) return -1;
  out->hp = m->hp;
  out->ctx_len = m->ctx_len;
  out->opts = m->opts;
  out->weight_bytes = m->weight_bytes;
  out->kv_bytes = m->kv_bytes;
  /* the KV tensors went through alloc_act too */
  out->workspace_bytes = m->ws_bytes - m->kv_bytes;
  out->kv_bytes_per_token =
      m->opts.n_blocks > 0 ? m->kv_bytes / ((uint64_t)m->opts.n_blocks * m->opts.block_size) : 0;
  strata_model_free(m);
  return 0;
}

void strata_model_free(struct strata_model *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n_bufs; i++) m->be->buf_free(m->bk, m->bufs[i]);
  free(m->bufs);
  for (size_t i = 0; i < m->n_host_allocs; i++) free(m->host_allocs[i]);
  free(m->host_allocs);
  free(m->released);
  free(m->layers);
  strata_gguf_close(m->gguf);
  free(m);
}

int32_t strata_model_kv_blocks(const struct strata_model *m) { return m->opts.n_blocks; }

/* ---- the forward pass ------------------------------------------------------------- */

static struct strata_tensor rows(struct strata_tensor t, int64_t n) {
  t.ne[1] = n;
  return t;
}

#define OP(call)                                                                        \
  do {                                                                                  \
    if ((call) != 0)                                                                    \
      return strata_errf(err, errlen, "backend op failed (%s:%d): %s", __FILE__, __LINE__, \
                         m->be->last_error(m->bk));                                     \
  } while (0)

int strata_model_forward(struct strata_model *m, const struct strata_batch *batch, float *logits,
                         char *err, size_t errlen) {
  const struct strata_hparams *hp = &m->hp;
  const struct strata_backend_vtable *be = m->be;
  strata_backend_t *b = m->bk;
  int64_t T = batch->n_tokens;
  if (T <= 0 || T > m->opts.max_tokens)
    return strata_errf(err, errlen, "batch of %lld tokens (the workspace holds 1..%d)", (long long)T,
                       m->opts.max_tokens);
  if (batch->n_out < 0 || batch->n_out > m->opts.max_out)
    return strata_errf(err, errlen, "%d logits rows requested (at most %d)", batch->n_out,
                       m->opts.max_out);
  for (int64_t i = 0; i < T; i++) {
    if (batch->tokens[i] < 0 || batch->tokens[i] >= hp->n_vocab)
      return strata_errf(err, errlen, "token id %d out of range [0, %d)", batch->tokens[i], hp->n_vocab);
    if (batch->positions[i] < 0 || batch->positions[i] >= m->ctx_len)
      return strata_errf(err, errlen, "position %d beyond the context length %d", batch->positions[i],
                         m->ctx_len);
  }
  struct strata_tensor x = rows(m->x, T), xb = rows(m->xb, T), q = rows(m->q, T), k = rows(m->k, T),
                       v = rows(m->v, T), att = rows(m->att, T), hb = rows(m->hb, T),
                       hb2 = rows(m->hb2, T);
  struct strata_attention at = {.n_heads = hp->n_heads, .n_kv_heads = hp->n_kv_heads,
                                .head_dim = hp->head_dim,
                                .scale = 1.0f / sqrtf((float)hp->head_dim)};
  /* Q, K and V (gate and up) in one pass where the backend has one */
  const int fused =
      be->size >= offsetof(struct strata_backend_vtable, matmul_n) + sizeof be->matmul_n &&
      be->matmul_n != NULL;
  OP(be->set_batch(b, batch));
  OP(be->embed(b, &m->tok_embd, &x));
  for (int l = 0; l < hp->n_layers; l++) {
    struct strata_layer *L = &m->layers[l];
    /* attention block */
    OP(be->rmsnorm(b, &x, &L->attn_norm, hp->rms_eps, &xb));
    if (fused) {
      const struct strata_tensor *w3[3] = {&L->wq, &L->wk, &L->wv};
      struct strata_tensor *o3[3] = {&q, &k, &v};
      OP(be->matmul_n(b, 3, w3, &xb, o3));
    } else {
      OP(be->matmul(b, &L->wq, &xb, &q));
      OP(be->matmul(b, &L->wk, &xb, &k));
      OP(be->matmul(b, &L->wv, &xb, &v));
    }
    if (hp->qkv_bias) {
      OP(be->add_bias(b, &q, &L->bq));
      OP(be->add_bias(b, &k, &L->bk));
      OP(be->add_bias(b, &v, &L->bv));
    }
    OP(be->rope(b, &q, hp->n_heads, hp->head_dim, &hp->rope));
    OP(be->rope(b, &k, hp->n_kv_heads, hp->head_dim, &hp->rope));
    OP(be->kv_store(b, &k, &v, &L->k_cache, &L->v_cache));
    OP(be->attention(b, &q, &L->k_cache, &L->v_cache, &at, &att));
    OP(be->matmul(b, &L->wo, &att, &xb));
    OP(be->add(b, &x, &xb, &x));
    /* feed-forward block */
    OP(be->rmsnorm(b, &x, &L->ffn_norm, hp->rms_eps, &xb));
    if (fused) {
      const struct strata_tensor *w2[2] = {&L->w_gate, &L->w_up};
      struct strata_tensor *o2[2] = {&hb, &hb2};
      OP(be->matmul_n(b, 2, w2, &xb, o2));
    } else {
      OP(be->matmul(b, &L->w_gate, &xb, &hb));
      OP(be->matmul(b, &L->w_up, &xb, &hb2));
    }
    OP(be->swiglu(b, &hb, &hb2, &hb));
    OP(be->matmul(b, &L->w_down, &hb, &xb));
    OP(be->add(b, &x, &xb, &x));
  }
  if (batch->n_out == 0) return be->synchronize(b) == 0 ? 0 : strata_errf(err, errlen, "%s", be->last_error(b));
  struct strata_tensor xo = rows(m->xo, batch->n_out), lg = rows(m->logits, batch->n_out);
  OP(be->get_rows(b, &x, &xo));
  OP(be->rmsnorm(b, &xo, &m->output_norm, hp->rms_eps, &xo));
  OP(be->matmul(b, &m->output, &xo, &lg));
  OP(be->download(b, lg.buf, 0, logits, (uint64_t)batch->n_out * hp->n_vocab * sizeof(float)));
  OP(be->synchronize(b));
  return 0;
}
