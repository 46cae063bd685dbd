/* strata: the command-line entry point. Subcommands live in cmd_*.c. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <strata/plugin.h>

#include "cli.h"

static const struct {
  const char *name;
  int (*fn)(int argc, char **argv);
  const char *help;
} commands[] = {
    {"plugins", strata_cmd_plugins, "list the plugins found and the files rejected, with reasons"},
    {"check-config", strata_cmd_check_config, "validate a config file without loading a model"},
    {"inspect", strata_cmd_inspect, "print a GGUF file's metadata and tensor table"},
    {"tokenize", strata_cmd_tokenize, "tokenize text with a model's tokenizer"},
    {"generate", strata_cmd_generate, "generate text from a prompt on one sequence"},
    {"mkmodel", strata_cmd_mkmodel, "write a synthetic GGUF model (random weights, real shape and vocabulary)"},
    {"bench", strata_cmd_bench, "measure prefill and decode speed against the memory roofline"},
    {"serve", strata_cmd_serve, "serve the OpenAI-compatible HTTP API (completions, chat, metrics)"},
    {"route", strata_cmd_route, "route the OpenAI-compatible API over several engine instances"},
    {"sim", strata_cmd_sim, "replay a request trace through the schedulers with a cost model"},
    {"estimate", strata_cmd_estimate, "memory a model needs (weights, KV cache, workspace), without loading it"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: strata COMMAND [OPTIONS]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\n`strata COMMAND --help` describes a command's options.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("strata %s (plugin ABI %d, %s)\n", PACKAGE_VERSION, STRATA_ABI_VERSION,
           STRATA_BUILD_FINGERPRINT);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(cmd, commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "strata: unknown command '%s'\n", cmd);
  usage(stderr);
  return 2;
}
