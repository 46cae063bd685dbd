/* Helpers shared by the subcommands. */
#include "config.h"

#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "engine.h"
#include "runtime.h"
#include "util.h"

int strata_cli_parse_long(const char *cmd, const char *opt, const char *s, long lo, long hi,
                          long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) {
    fprintf(stderr, "strata: %s: %s must be an integer in [%ld, %ld], got '%s'\n", cmd, opt, lo,
            hi, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* The default config: conf/strata.conf of the source tree when strata runs
 * from its build tree (or was built there), else none. */
char *strata_cli_default_config(void) {
  char *p = strata_path_join(STRATA_SRCDIR, "conf/strata.conf");
  if (p && access(p, R_OK) == 0) return p;
  free(p);
  return NULL;
}

/* The model options the engine needs at load (its workspace and KV cache
 * are allocated with the model), from the config's engine settings. The
 * config is read here a first time, validated against an empty plugin
 * registry only to get its groups: strata_runtime_open reports every
 * config and model error properly afterwards, so failures here are
 * skipped. Returns 0, or 2 after printing a sizing error. */
int strata_cli_engine_model_opts(struct strata_runtime_opts *ro, const char *cmd,
                                 const struct strata_engine_overrides *ov) {
  struct strata_errlist errs = {0};
  strata_config_t *cfg =
      ro->config_path ? strata_config_load(ro->config_path, &errs) : NULL;
  struct strata_registry none;
  memset(&none, 0, sizeof none);
  if (cfg) strata_config_validate(cfg, &none, &errs);
  strata_errlist_free(&errs);
  if (ro->config_path && !cfg) return 0;
  struct strata_engine_config ec;
  strata_engine_config_from(cfg, &ec);
  if (ov) {
    if (ov->max_running > 0) ec.max_running = ov->max_running;
    if (ov->max_batch_tokens > 0) ec.max_batch_tokens = ov->max_batch_tokens;
    if (ov->kv_memory > 0) ec.kv_memory = ov->kv_memory;
    if (ov->kv_tokens > 0) {
      ec.kv_tokens = ov->kv_tokens;
      ec.kv_memory = 0;
    }
  }
  const strata_config_node_t *eng = cfg ? strata_config_group(cfg, "engine")
                                        : strata_config_defaults("engine");
  char *model = ro->model_path ? strata_strdup(ro->model_path)
                : eng          ? strata_config_path_value(eng, "model")
                               : NULL;
  int32_t ctx = ro->context_length > 0 ? ro->context_length
                : eng ? (int32_t)strata_config_int(eng, "context_length")
                      : 0;
  int rc = 0;
  char err[512];
  if (model && access(model, R_OK) == 0 &&
      strata_engine_model_opts(&ec, model, ctx, &ro->model, err, sizeof err) !=
          0) {
    fprintf(stderr, "strata: %s: %s\n", cmd, err);
    rc = 2;
  }
  free(model);
  strata_config_free(cfg);
  return rc;
}

