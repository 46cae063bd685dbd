/* strata plugin SDK: the backend kind. A backend owns a device: its memory,
 * host<->device copies, a stream of work, and every op the model needs.
 *
 * Registry -> device -> instance (DESIGN rule 6): a plugin reports its
 * devices with a score; `backend = "auto"` opens the best-scoring device of
 * all backends present and logs why. An instance runs ops in order on one
 * stream; ops may run asynchronously until synchronize() (the CPU backend runs
 * them synchronously). Ops return 0, or -1 after writing a one-line reason
 * into the instance's error buffer (last_error).
 *
 * Data layout: every tensor is a row-major 2-D view into a device buffer;
 * ne[0] is the row length (the contiguous dimension), ne[1] the row count.
 * Activations are f32. Weights are in any quant type the backend supports.
 *
 * Paged KV cache: per layer, K and V are each one tensor of shape
 * [n_blocks * block_size rows, n_kv_heads * head_dim] in the KV type (f32 or
 * f16); row `slot = block * block_size + offset` holds one token. A sequence's
 * block table lists its blocks in order; token position p of the sequence is
 * at block_table[p / block_size], offset p % block_size.
 *
 * Aliasing: the row-wise ops (rmsnorm, add_bias, rope, swiglu, add) must work
 * in place, with out the same view as an input; matmul, attention, embed and
 * get_rows never alias. */
#ifndef STRATA_BACKEND_H
#define STRATA_BACKEND_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <strata/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct strata_backend strata_backend_t; /* an open device instance */
typedef struct strata_buf strata_buf_t;         /* device memory */

/* Tensor types from here on are a backend's own: layouts that only the
 * instance that made them (prepare_weight) reads. */
#define STRATA_TYPE_BACKEND_PRIVATE 0x40000000u

struct strata_tensor {
  strata_buf_t *buf;
  uint64_t offset; /* bytes from the start of buf */
  uint32_t type;   /* enum strata_ggml_type */
  int64_t ne[2];   /* [row length, rows] */
};

struct strata_backend_device {
  uint32_t size;          /* sizeof(struct strata_backend_device) */
  char name[64];          /* e.g. "cpu", "cuda:0 NVIDIA H100" */
  uint64_t memory_total;  /* bytes; for the memory estimator */
  uint64_t memory_free;
  int score;              /* 0: unusable here; higher is better (cpu: 10) */
  char why[256];          /* one line: why this score (e.g. "no CUDA driver") */
};

struct strata_backend_params {
  uint32_t size;
  int threads; /* CPU threads; 0 = the backend's default (config or all cores) */
};

/* The step's batch: host arrays, valid until the next set_batch. Tokens of
 * one sequence are contiguous: sequence s owns query rows
 * [seq_start[s], seq_start[s+1]). */
struct strata_batch {
  uint32_t size;
  int32_t n_tokens;
  const int32_t *tokens;    /* [n_tokens] */
  const int32_t *positions; /* [n_tokens] position within its sequence */
  const int32_t *slots;     /* [n_tokens] KV cache row for the new K/V */
  int32_t n_seqs;
  const int32_t *seq_start; /* [n_seqs + 1] */
  const int32_t *seq_len;   /* [n_seqs] context length including this step */
  const int32_t *block_tables; /* [n_seqs * max_blocks] */
  int32_t max_blocks;
  int32_t block_size;
  int32_t n_out;            /* rows selected by get_rows (logits wanted) */
  const int32_t *out_rows;  /* [n_out] indices into the step's tokens */
};

struct strata_rope {
  float theta;       /* base frequency (rope.freq_base, 10000 default) */
  float freq_scale;  /* 1 / linear scaling factor */
  int neox;          /* 0: rotate adjacent pairs (llama); 1: halves (neox) */
  int n_dims;        /* rotated dimensions per head (= head_dim usually) */
};

struct strata_attention {
  int n_heads, n_kv_heads, head_dim;
  float scale; /* usually 1/sqrt(head_dim) */
};

struct strata_backend_vtable {
  uint32_t size; /* sizeof(struct strata_backend_vtable) */

  /* ---- registry ---- */
  int (*n_devices)(void);
  int (*device_info)(int index, struct strata_backend_device *out);

  /* ---- instance ---- */
  int (*open)(int index, const struct strata_backend_params *params,
              strata_backend_t **out, char *err, size_t errlen);
  void (*close)(strata_backend_t *b);
  const char *(*last_error)(strata_backend_t *b);
  /* Which weight types matmul accepts (1) or not (0). */
  int (*supports_type)(strata_backend_t *b, uint32_t type);

  /* ---- memory ---- */
  strata_buf_t *(*buf_alloc)(strata_backend_t *b, uint64_t bytes);
  /* (optional) use host memory (e.g. the mmapped GGUF) in place, with no
   * copy, when the device can read it; NULL or a NULL return: the host
   * allocates and uploads instead. */
  strata_buf_t *(*buf_wrap_host)(strata_backend_t *b, const void *host,
                                 uint64_t bytes);
  void (*buf_free)(strata_backend_t *b, strata_buf_t *buf);
  int (*upload)(strata_backend_t *b, strata_buf_t *dst, uint64_t offset,
                const void *src, uint64_t bytes);
  int (*download)(strata_backend_t *b, const strata_buf_t *src,
                  uint64_t offset, void *dst, uint64_t bytes);
  int (*synchronize)(strata_backend_t *b);

  /* ---- the step ---- */
  int (*set_batch)(strata_backend_t *b, const struct strata_batch *batch);

  /* ---- ops (on the current batch) ---- */
  /* out[t] = table[tokens[t]]  (table: [dim, vocab] any supported type) */
  int (*embed)(strata_backend_t *b, const struct strata_tensor *table,
               struct strata_tensor *out);
  /* out = x / rms(x) * w per row; w: f32 [dim, 1] */
  int (*rmsnorm)(strata_backend_t *b, const struct strata_tensor *x,
                 const struct strata_tensor *w, float eps,
                 struct strata_tensor *out);
  /* out[t, o] = sum_i x[t, i] * w[o, i]  (w: [n_in, n_out], any type) */
  int (*matmul)(strata_backend_t *b, const struct strata_tensor *w,
                const struct strata_tensor *x, struct strata_tensor *out);
  /* x[t, :] += bias[:] */
  int (*add_bias)(strata_backend_t *b, struct strata_tensor *x,
                  const struct strata_tensor *bias);
  /* Rotates x in place, heads of head_dim, at the batch's positions. */
  int (*rope)(strata_backend_t *b, struct strata_tensor *x, int n_heads,
              int head_dim, const struct strata_rope *rope);
  /* Writes k, v rows into the cache rows given by the batch's slots. */
  int (*kv_store)(strata_backend_t *b, const struct strata_tensor *k,
                  const struct strata_tensor *v, struct strata_tensor *k_cache,
                  struct strata_tensor *v_cache);
  /* Paged attention of the batch's queries over each sequence's cached
   * context (causal: query at position p sees positions 0..p), GQA. */
  int (*attention)(strata_backend_t *b, const struct strata_tensor *q,
                   const struct strata_tensor *k_cache,
                   const struct strata_tensor *v_cache,
                   const struct strata_attention *a, struct strata_tensor *out);
  /* out = silu(gate) * up */
  int (*swiglu)(strata_backend_t *b, const struct strata_tensor *gate,
                const struct strata_tensor *up, struct strata_tensor *out);
  /* out = a + c */
  int (*add)(strata_backend_t *b, const struct strata_tensor *a,
             const struct strata_tensor *c, struct strata_tensor *out);
  /* out[j] = x[out_rows[j]] */
  int (*get_rows)(strata_backend_t *b, const struct strata_tensor *x,
                  struct strata_tensor *out);

  /* ---- (optional; the host checks size) weight layout ---- */
  /* Puts matmul weight w ([n_in, n_out], a type matmul accepts) into the
   * layout this instance's matmul reads fastest, in new memory of its own:
   * returns 1 with *out filled (same shape; type may be >=
   * STRATA_TYPE_BACKEND_PRIVATE; the caller frees out->buf with buf_free and
   * need not keep w's memory), 0 when w is best used as it is (out
   * untouched), -1 on error. Only matmul accepts the result. */
  int (*prepare_weight)(strata_backend_t *b, const struct strata_tensor *w,
                        struct strata_tensor *out);
  /* (optional; the host checks size) out[i] = x w[i] for n (1..4) weights of
   * one row length, as n matmul calls would give, in one pass where the
   * device can (Q, K and V; gate and up). No out[i] may alias another. */
  int (*matmul_n)(strata_backend_t *b, int n, const struct strata_tensor *const *w,
                  const struct strata_tensor *x, struct strata_tensor *const *out);
};

/* Fills device_info's out from the plugin's own d: the caller's struct may
 * be older (smaller) than the plugin's, so only what it has is copied and
 * its size kept. 0, or -1 when it is too old to hold the score. */
static inline int strata_backend_device_fill(struct strata_backend_device *out,
                                             const struct strata_backend_device *d) {
  const size_t n = out->size < sizeof *d ? out->size : sizeof *d;
  if (n < offsetof(struct strata_backend_device, score) + sizeof d->score) return -1;
  const uint32_t caller_size = out->size;
  memcpy(out, d, n);
  out->size = caller_size;
  return 0;
}

/* The checks every backend's set_batch makes on a batch (counts, the
 * sequences' token ranges, lengths and positions, out_rows), shared so that
 * each backend refuses the same batches: 0, or -1 with "set_batch: ..." in
 * err. The arrays a batch may lack (tokens, positions, slots) are checked
 * by the ops that read them. */
static inline int strata_batch_check(const struct strata_batch *B, char *err, size_t errlen) {
#define STRATA_BATCH_FAIL(...) return (snprintf(err, errlen, __VA_ARGS__), -1)
  if (B->n_tokens < 0 || B->n_seqs < 0 || B->n_out < 0)
    STRATA_BATCH_FAIL("set_batch: negative count (n_tokens %d, n_seqs %d, n_out %d)",
                      B->n_tokens, B->n_seqs, B->n_out);
  if (B->positions)
    for (int32_t i = 0; i < B->n_tokens; i++)
      if (B->positions[i] < 0)
        STRATA_BATCH_FAIL("set_batch: token %d has position %d", i, B->positions[i]);
  if (B->n_seqs > 0) {
    if (!B->seq_start || !B->seq_len || !B->block_tables)
      STRATA_BATCH_FAIL("set_batch: %d sequences but no seq_start/seq_len/block_tables",
                        B->n_seqs);
    if (B->block_size <= 0 || B->max_blocks <= 0)
      STRATA_BATCH_FAIL("set_batch: block_size %d, max_blocks %d", B->block_size,
                        B->max_blocks);
    if (B->seq_start[0] != 0 || B->seq_start[B->n_seqs] != B->n_tokens)
      STRATA_BATCH_FAIL("set_batch: seq_start runs %d..%d, expected 0..%d", B->seq_start[0],
                        B->seq_start[B->n_seqs], B->n_tokens);
    for (int32_t s = 0; s < B->n_seqs; s++) {
      /* bounded before the positions are read through it */
      if (B->seq_start[s + 1] < B->seq_start[s] || B->seq_start[s + 1] > B->n_tokens)
        STRATA_BATCH_FAIL("set_batch: seq_start decreases or passes n_tokens at sequence %d",
                          s);
      if (B->seq_len[s] < 0 || (int64_t)B->seq_len[s] > (int64_t)B->max_blocks * B->block_size)
        STRATA_BATCH_FAIL("set_batch: sequence %d has length %d (at most %lld)", s,
                          B->seq_len[s], (long long)B->max_blocks * B->block_size);
      if (B->positions)
        for (int32_t i = B->seq_start[s]; i < B->seq_start[s + 1]; i++)
          if (B->positions[i] >= B->seq_len[s])
            STRATA_BATCH_FAIL("set_batch: token %d at position %d is past its sequence's "
                              "length %d", i, B->positions[i], B->seq_len[s]);
    }
  }
  if (B->n_out > 0) {
    if (!B->out_rows) STRATA_BATCH_FAIL("set_batch: n_out %d but no out_rows", B->n_out);
    for (int32_t j = 0; j < B->n_out; j++)
      if (B->out_rows[j] < 0 || B->out_rows[j] >= B->n_tokens)
        STRATA_BATCH_FAIL("set_batch: out_rows[%d] = %d is not a token of the batch (%d)", j,
                          B->out_rows[j], B->n_tokens);
  }
  return 0;
#undef STRATA_BATCH_FAIL
}

#ifdef __cplusplus
}
#endif
#endif
