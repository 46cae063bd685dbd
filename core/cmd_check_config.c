/* strata check-config FILE: validate without loading a model. Every problem
 * is one `FILE:LINE: message` line on stderr; exit status 2 when any. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "conf.h"
#include "plugin_loader.h"

int strata_cmd_check_config(int argc, char **argv) {
  const char *path = NULL;
  int quiet = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: strata check-config [--quiet] FILE\n"
             "Validates FILE (syntax, @include, key names, types, ranges, plugin\n"
             "names and each plugin's settings) without loading a model.\n");
      return 0;
    } else if (strcmp(argv[i], "--quiet") == 0 || strcmp(argv[i], "-q") == 0) {
      quiet = 1;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "strata: check-config: unknown option '%s'\n", argv[i]);
      return 2;
    } else if (path) {
      fprintf(stderr, "strata: check-config: only one FILE, got '%s' and '%s'\n", path,
              argv[i]);
      return 2;
    } else {
      path = argv[i];
    }
  }
  if (!path) {
    fprintf(stderr, "usage: strata check-config [--quiet] FILE\n");
    return 2;
  }
  struct strata_errlist errs = {0};
  strata_config_t *cfg = strata_config_load(path, &errs);
  int status = 2;
  if (cfg) {
    size_t n_extra;
    char **extra = strata_config_plugin_dirs(cfg, &n_extra);
    size_t n_dirs;
    char **dirs = strata_plugin_default_dirs((const char *const *)extra, n_extra, &n_dirs);
    struct strata_registry reg = {0};
    strata_registry_scan(&reg, (const char *const *)dirs, n_dirs);
    strata_config_validate(cfg, &reg, &errs);
    if (errs.n == 0) {
      status = 0;
      if (!quiet) printf("%s: OK\n", path);
    }
    strata_registry_free(&reg);
    strata_free_strv(dirs, n_dirs);
    strata_free_strv(extra, n_extra);
    strata_config_free(cfg);
  }
  for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "%s\n", errs.lines[i]);
  strata_errlist_free(&errs);
  return status;
}
