/* The llama architecture family (Llama 2/3, TinyLlama, Mistral, Qwen2) from
 * GGUF metadata, run on a backend plugin over a paged KV cache. */
#ifndef STRATA_MODEL_H
#define STRATA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <strata/backend.h>

#include "gguf.h"
#include "plugin_loader.h"

struct strata_hparams {
  char arch[32];
  int32_t n_vocab;
  int32_t dim;        /* embedding length */
  int32_t n_layers;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t ffn_dim;
  int32_t ctx_len;    /* the model's training context */
  float rms_eps;
  struct strata_rope rope;
  int tied_output;    /* output projection shares token_embd */
  int qkv_bias;       /* Qwen2 */
};

struct strata_layer {
  struct strata_tensor attn_norm; /* f32 [dim] */
  struct strata_tensor wq;        /* [dim, n_heads * head_dim] */
  struct strata_tensor wk;        /* [dim, n_kv_heads * head_dim] */
  struct strata_tensor wv;        /* [dim, n_kv_heads * head_dim] */
  struct strata_tensor wo;        /* [n_heads * head_dim, dim] */
  struct strata_tensor bq, bk, bv; /* f32 biases (qkv_bias only) */
  struct strata_tensor ffn_norm;  /* f32 [dim] */
  struct strata_tensor w_gate;    /* [dim, ffn_dim] */
  struct strata_tensor w_up;      /* [dim, ffn_dim] */
  struct strata_tensor w_down;    /* [ffn_dim, dim] */
  struct strata_tensor k_cache;   /* [n_kv_heads * head_dim, n_slots] */
  struct strata_tensor v_cache;   /* same */
};

struct strata_model_opts {
  const char *quant;     /* requantize weights to this quant plugin; NULL keeps them */
  int32_t context_length; /* 0: the model's */
  int32_t max_tokens;    /* most tokens in one step (workspace size) */
  int32_t max_out;       /* most logits rows in one step; 0: max_tokens */
  int32_t block_size;    /* KV cache block size in tokens */
  int32_t n_blocks;      /* KV cache blocks; 0: one full context */
  int kv_f16;            /* f16 KV cache instead of f32 */
};

struct strata_model {
  struct strata_hparams hp;
  struct strata_model_opts opts;
  int32_t ctx_len; /* effective */
  strata_gguf_t *gguf;
  const struct strata_backend_vtable *be;
  strata_backend_t *bk;

  struct strata_tensor tok_embd;    /* [dim, n_vocab] */
  struct strata_tensor output_norm; /* f32 [dim] */
  struct strata_tensor output;      /* [dim, n_vocab] */
  struct strata_layer *layers;

  /* workspace, [width, max_tokens] each */
  struct strata_tensor x, xb, q, k, v, att, hb, hb2, xo, logits;

  strata_buf_t **bufs; /* everything allocated, freed at close */
  size_t n_bufs;
  void **host_allocs; /* requantized weights */
  size_t n_host_allocs;
  uint64_t (*released)[2]; /* [start, end) addresses of mapped weights copied elsewhere */
  size_t n_released;
  uint64_t weight_bytes;  /* bytes of weights read per full forward */
  uint64_t embd_bytes;    /* of which the token embedding table's (a decode step
                           * reads one row of it, unless it is the output too) */
  uint64_t kv_bytes;
  uint64_t ws_bytes;      /* a plan: bytes alloc_act would take (KV included) */
};

/* What loading would take, computed from the GGUF header alone (no weight
 * is read, nothing is allocated): the same decisions as strata_model_load
 * (requantization, f32 vectors, KV and workspace shapes). */
struct strata_model_plan {
  struct strata_hparams hp;
  int32_t ctx_len;
  struct strata_model_opts opts; /* with load's defaults filled in */
  uint64_t weight_bytes;    /* weights in their final types */
  uint64_t kv_bytes;        /* K and V of every layer, all blocks */
  uint64_t kv_bytes_per_token;
  uint64_t workspace_bytes; /* activations for max_tokens / max_out */
};
int strata_model_plan(const char *path, const struct strata_model_opts *opts,
                      const struct strata_registry *reg, struct strata_model_plan *out, char *err,
                      size_t errlen);

/* Loads the model's weights onto an open backend instance (be NULL: a dry
 * run for strata_model_plan, only the byte counts are filled). On failure writes
 * one line naming the problem (missing tensor, unsupported architecture or
 * tensor type, shape mismatch). */
int strata_model_load(const char *path, const struct strata_model_opts *opts,
                      const struct strata_registry *reg,
                      const struct strata_backend_vtable *be, strata_backend_t *bk,
                      struct strata_model **out, char *err, size_t errlen);
void strata_model_free(struct strata_model *m);

/* Reads hyperparameters only (no weights): for estimates and checks. */
int strata_model_read_hparams(const strata_gguf_t *g, struct strata_hparams *hp,
                              char *err, size_t errlen);

/* One step: runs the batch and writes batch->n_out rows of n_vocab logits. */
int strata_model_forward(struct strata_model *m, const struct strata_batch *batch,
                         float *logits, char *err, size_t errlen);

/* Number of KV cache blocks and slots. */
int32_t strata_model_kv_blocks(const struct strata_model *m);

#endif
