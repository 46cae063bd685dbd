/* Subcommands of the strata command. Each returns the process exit status:
 * 0 success, 1 runtime failure, 2 usage or configuration error. */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include <stdint.h>

int strata_cmd_plugins(int argc, char **argv);
int strata_cmd_check_config(int argc, char **argv);
int strata_cmd_inspect(int argc, char **argv);
int strata_cmd_tokenize(int argc, char **argv);
int strata_cmd_generate(int argc, char **argv);
int strata_cmd_bench(int argc, char **argv);
int strata_cmd_mkmodel(int argc, char **argv);
int strata_cmd_serve(int argc, char **argv);
int strata_cmd_route(int argc, char **argv);
int strata_cmd_estimate(int argc, char **argv);
int strata_cmd_sim(int argc, char **argv);

struct strata_runtime_opts;

/* conf/strata.conf of the source tree when strata runs from (or was built
 * in) its build tree, else NULL (malloc'd). */
char *strata_cli_default_config(void);

/* Engine settings given on a command line, over the config (0: unset). */
struct strata_engine_overrides {
  int32_t max_running, max_batch_tokens;
  uint64_t kv_memory;
  int64_t kv_tokens;
};
/* Fills ro->model (workspace, KV blocks) from the config's engine settings
 * and the overrides, as strata serve opens its model. 0, or 2 after
 * printing "strata: CMD: ..." for a sizing error. */
int strata_cli_engine_model_opts(struct strata_runtime_opts *ro, const char *cmd,
                                 const struct strata_engine_overrides *ov);
/* strata bench --logits (core/cmd_bench_logits.c): the engine's step time
 * with and without logits processors over n_req requests. */
int strata_bench_logits(struct strata_runtime_opts *ro, int n_req, int n_prompt, int n_gen);

/* Parses option opt's value s as an integer in [lo, hi] into *out; else
 * prints "strata: CMD: OPT must be an integer in [LO, HI], got 'S'" and
 * returns -1. */
int strata_cli_parse_long(const char *cmd, const char *opt, const char *s, long lo, long hi,
                          long *out);

#endif
