/* strata estimate: the memory a model will need for the configured context
 * and KV cache, and whether it fits, without loading any weight. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "estimate.h"
#include "runtime.h"
#include "util.h"

static void estimate_usage(FILE *f) {
  fprintf(f,
          "usage: strata estimate [--config FILE] [--model FILE] [--context N] [--quant Q]\n"
          "         [--max-running N] [--max-batch-tokens N] [--kv-memory SIZE]\n"
          "         [--kv-tokens N] [--memory-limit SIZE] [--backend NAME]\n"
          "Prints the bytes of weights, KV cache, workspace and scratch for the engine\n"
          "settings of the config (the embedded default without --config), flags\n"
          "overriding it, against engine.memory_limit or the backend's free memory.\n"
          "Exit status 0 when it fits, 1 when it does not (with what to change).\n");
}

static int size_arg(const char *opt, const char *s, uint64_t *out) {
  if (strata_parse_size(s, out) == 0 && *out > 0) return 0;
  fprintf(stderr, "strata: estimate: %s: '%s' is not a size (e.g. 4096, \"512MiB\", \"2GiB\")\n",
          opt, s);
  return -1;
}

int strata_cmd_estimate(int argc, char **argv) {
  struct strata_runtime_opts ro = {0};
  struct strata_engine_overrides ov = {0};
  long v;
  uint64_t sz;
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"model", required_argument, 0, 'm'},
                                       {"context", required_argument, 0, 'C'},
                                       {"quant", required_argument, 0, 'q'},
                                       {"max-running", required_argument, 0, 'R'},
                                       {"max-batch-tokens", required_argument, 0, 'B'},
                                       {"kv-memory", required_argument, 0, 'K'},
                                       {"kv-tokens", required_argument, 0, 'k'},
                                       {"memory-limit", required_argument, 0, 'L'},
                                       {"backend", required_argument, 0, 'b'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "c:m:q:b:h", opts, NULL)) != -1) {
    switch (c) {
    case 'c': ro.config_path = optarg; break;
    case 'm': ro.model_path = optarg; break;
    case 'q': ro.quant = optarg; break;
    case 'b': ro.backend = optarg; break;
    case 'C':
      if (strata_cli_parse_long("estimate", "--context", optarg, 1, 16777216, &v)) return 2;
      ro.context_length = (int32_t)v;
      break;
    case 'R':
      if (strata_cli_parse_long("estimate", "--max-running", optarg, 1, 65536, &v)) return 2;
      ov.max_running = (int32_t)v;
      break;
    case 'B':
      if (strata_cli_parse_long("estimate", "--max-batch-tokens", optarg, 1, 1048576, &v))
        return 2;
      ov.max_batch_tokens = (int32_t)v;
      break;
    case 'k':
      if (strata_cli_parse_long("estimate", "--kv-tokens", optarg, 1, 1073741824, &v)) return 2;
      ov.kv_tokens = v;
      break;
    case 'K':
      if (size_arg("--kv-memory", optarg, &sz)) return 2;
      ov.kv_memory = sz;
      break;
    case 'L':
      if (size_arg("--memory-limit", optarg, &sz)) return 2;
      ro.memory_limit = sz;
      break;
    case 'h': estimate_usage(stdout); return 0;
    default: estimate_usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "strata: estimate: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  char *def_conf = NULL;
  if (!ro.config_path) ro.config_path = def_conf = strata_cli_default_config();
  int rc = strata_cli_engine_model_opts(&ro, "estimate", &ov);
  struct strata_runtime rt;
  ro.estimate_only = 1;
  if (rc == 0) rc = strata_runtime_open(&rt, &ro);
  free(def_conf);
  if (rc != 0) return rc;
  strata_estimate_print(stdout, &rt.est);
  rc = 0;
  if (!strata_estimate_fits(&rt.est)) {
    char msg[2048];
    strata_estimate_refusal(&rt.est, msg, sizeof msg);
    fprintf(stderr, "strata: %s\n", msg);
    rc = 1;
  }
  strata_runtime_close(&rt);
  return rc;
}
