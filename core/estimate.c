/* Memory estimation: see estimate.h. */
#include "config.h"

#include "estimate.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

const char *strata_fmt_bytes(uint64_t b, char *buf, size_t cap) {
  if (b >= (1ull << 30))
    snprintf(buf, cap, "%.2f GiB", (double)b / (double)(1ull << 30));
  else if (b >= (1ull << 20))
    snprintf(buf, cap, "%.1f MiB", (double)b / (double)(1ull << 20));
  else
    snprintf(buf, cap, "%.1f KiB", (double)b / 1024.0);
  return buf;
}

/* This process's resident set now (VmRSS), 0 if unknown: what the code,
 * libraries and loaded plugins take before any model memory. */
static uint64_t self_rss(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  unsigned long long kib = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %llu kB", &kib) == 1) break;
  fclose(f);
  return (uint64_t)kib * 1024;
}

int strata_estimate(const char *model_path, const struct strata_model_opts *mo,
                    const struct strata_registry *reg, uint64_t available,
                    const char *available_from, struct strata_mem_estimate *out, char *err,
                    size_t errlen) {
  memset(out, 0, sizeof *out);
  if (strata_model_plan(model_path, mo, reg, &out->plan, err, errlen) != 0) return -1;
  const struct strata_model_plan *p = &out->plan;
  out->weights = p->weight_bytes;
  out->kv_cache = p->kv_bytes;
  out->workspace = p->workspace_bytes;
  /* The CPU backend's grow-only scratch peaks at the 8-bit activations of
   * the widest matmul input (K bytes per token plus a float scale per 32)
   * for a full step, plus one context of attention scores per thread. */
  int64_t widest = p->hp.ffn_dim > p->hp.dim ? p->hp.ffn_dim : p->hp.dim;
  long threads = sysconf(_SC_NPROCESSORS_ONLN);
  if (threads < 1) threads = 1;
  out->scratch = (uint64_t)widest * (uint64_t)p->opts.max_tokens * 5 / 4 +
                 (uint64_t)threads * (uint64_t)p->ctx_len * sizeof(float);
  out->overhead = self_rss();
  out->total = out->weights + out->kv_cache + out->workspace + out->scratch + out->overhead;
  out->available = available;
  out->available_from = available_from ? available_from : "";
  uint64_t fixed = out->weights + out->workspace + out->scratch + out->overhead;
  int32_t bs = p->opts.block_size > 0 ? p->opts.block_size : 16;
  if (p->kv_bytes_per_token && (available == 0 || available > fixed)) {
    uint64_t room = available ? available - fixed : UINT64_MAX;
    uint64_t ctx = room / p->kv_bytes_per_token / (uint64_t)bs * (uint64_t)bs;
    out->max_context = ctx > (uint64_t)p->hp.ctx_len ? p->hp.ctx_len : (int32_t)ctx;
  }
  uint64_t slots = (uint64_t)p->opts.n_blocks * (uint64_t)bs;
  uint64_t per = ((uint64_t)p->ctx_len + (uint64_t)bs - 1) / (uint64_t)bs * (uint64_t)bs;
  out->full_requests = per ? (int64_t)(slots / per) : 0;
  return 0;
}

int strata_estimate_fits(const struct strata_mem_estimate *e) {
  return e->available == 0 || e->total <= e->available;
}

void strata_estimate_refusal(const struct strata_mem_estimate *e, char *buf, size_t cap) {
  char t[32], w[32], k[32], s[32], o[32], a[32];
  uint64_t fixed = e->weights + e->workspace + e->scratch + e->overhead;
  int n = snprintf(buf, cap,
                   "the model does not fit in memory: it needs %s = weights %s + KV cache %s "
                   "(%d blocks of %d tokens) + workspace and scratch %s + process %s, and %s "
                   "allows %s. ",
                   strata_fmt_bytes(e->total, t, sizeof t), strata_fmt_bytes(e->weights, w, sizeof w),
                   strata_fmt_bytes(e->kv_cache, k, sizeof k), e->plan.opts.n_blocks,
                   e->plan.opts.block_size,
                   strata_fmt_bytes(e->workspace + e->scratch, s, sizeof s),
                   strata_fmt_bytes(e->overhead, o, sizeof o), e->available_from,
                   strata_fmt_bytes(e->available, a, sizeof a));
  if (n < 0 || (size_t)n >= cap) return;
  if (fixed >= e->available || e->max_context < e->plan.opts.block_size) {
    snprintf(buf + n, cap - (size_t)n,
             "Not even the weights and workspace fit: use a smaller quantization "
             "(engine.quant = \"q4_0\"), a lower engine.max_batch_tokens, or a larger "
             "engine.memory_limit.");
    return;
  }
  uint64_t kv_room = e->available - fixed;
  char r[32];
  snprintf(buf + n, cap - (size_t)n,
           "The KV cache may take at most %s (%" PRIu64
           " tokens): lower engine.kv_cache.memory (or kv_cache.tokens, or engine.max_running "
           "when the cache is sized from it); one full-length request fits up to "
           "engine.context_length = %d.",
           strata_fmt_bytes(kv_room, r, sizeof r),
           e->plan.kv_bytes_per_token ? kv_room / e->plan.kv_bytes_per_token : 0,
           e->max_context);
}

void strata_estimate_print(FILE *f, const struct strata_mem_estimate *e) {
  char b[32];
  const struct strata_model_plan *p = &e->plan;
  fprintf(f, "model: %s, %d layers, dim %d, %d/%d heads, vocab %d, context %d\n", p->hp.arch,
          p->hp.n_layers, p->hp.dim, p->hp.n_heads, p->hp.n_kv_heads, p->hp.n_vocab, p->ctx_len);
  fprintf(f, "weights:    %14" PRIu64 " bytes  %s\n", e->weights,
          strata_fmt_bytes(e->weights, b, sizeof b));
  fprintf(f, "KV cache:   %14" PRIu64 " bytes  %s  (%d blocks x %d tokens, %" PRIu64
             " bytes/token)\n",
          e->kv_cache, strata_fmt_bytes(e->kv_cache, b, sizeof b), p->opts.n_blocks,
          p->opts.block_size, p->kv_bytes_per_token);
  fprintf(f, "workspace:  %14" PRIu64 " bytes  %s  (%d tokens per step)\n", e->workspace,
          strata_fmt_bytes(e->workspace, b, sizeof b), p->opts.max_tokens);
  fprintf(f, "scratch:    %14" PRIu64 " bytes  %s\n", e->scratch,
          strata_fmt_bytes(e->scratch, b, sizeof b));
  fprintf(f, "process:    %14" PRIu64 " bytes  %s\n", e->overhead,
          strata_fmt_bytes(e->overhead, b, sizeof b));
  fprintf(f, "total:      %14" PRIu64 " bytes  %s\n", e->total,
          strata_fmt_bytes(e->total, b, sizeof b));
  if (e->available)
    fprintf(f, "available:  %14" PRIu64 " bytes  %s (%s): %s\n", e->available,
            strata_fmt_bytes(e->available, b, sizeof b), e->available_from,
            strata_estimate_fits(e) ? "fits" : "does NOT fit");
  fprintf(f, "full-length (%d-token) requests the KV cache holds at once: %" PRId64 "\n",
          p->ctx_len, e->full_requests);
  if (e->available)
    fprintf(f, "largest context length whose one full-length request fits: %d\n",
            e->max_context);
}
