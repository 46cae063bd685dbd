/* What every model-running command sets up: the config (optional), the
 * plugin registry, the chosen backend instance (DESIGN rule 6: "auto" picks
 * the best-scoring device and logs why), the model and its tokenizer. */
#ifndef STRATA_RUNTIME_H
#define STRATA_RUNTIME_H

#include "conf.h"
#include "estimate.h"
#include "model.h"
#include "plugin_loader.h"
#include "tokenizer.h"

struct strata_runtime_opts {
  const char *config_path; /* NULL: no config file */
  const char *model_path;  /* overrides engine.model */
  const char *backend;     /* overrides engine.backend */
  const char *quant;       /* overrides engine.quant */
  int threads;             /* >0 overrides the backend's threads */
  int32_t context_length;  /* >0 overrides engine.context_length */
  struct strata_model_opts model; /* max_tokens, block_size, n_blocks, kv_f16 */
  uint64_t memory_limit;   /* >0 overrides engine.memory_limit */
  int estimate_only;       /* stop after the memory estimate (rt->est): no
                              weights loaded, even if it does not fit */
};

struct strata_runtime {
  strata_config_t *cfg;
  struct strata_registry reg;
  const struct strata_plugin *backend_plugin;
  const struct strata_backend_vtable *be;
  strata_backend_t *bk;
  struct strata_backend_device device;
  struct strata_model *model;
  strata_tokenizer_t *tok;
  char *model_path;
  struct strata_mem_estimate est; /* made before loading (estimate.h) */
};

/* Returns 0, 1 (runtime failure) or 2 (configuration error), after printing
 * the error(s) to stderr in the project's formats. */
int strata_runtime_open(struct strata_runtime *rt, const struct strata_runtime_opts *opts);
void strata_runtime_close(struct strata_runtime *rt);

#endif
