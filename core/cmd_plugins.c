/* strata plugins [--config FILE] [--verbose]: what the loader found. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "conf.h"
#include "plugin_loader.h"

static const char *param_type(enum strata_param_type t) {
  static const char *n[] = {"end", "int", "float", "bool", "string", "size"};
  return (unsigned)t < sizeof n / sizeof n[0] ? n[t] : "?";
}

int strata_cmd_plugins(int argc, char **argv) {
  const char *config_path = NULL;
  int verbose = 0;
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"verbose", no_argument, 0, 'v'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config_path = optarg; break;
    case 'v': verbose = 1; break;
    case 'h':
      printf("usage: strata plugins [--config FILE] [--verbose]\n"
             "Lists every plugin found on the search path (config plugins.path,\n"
             "STRATA_PLUGIN_PATH, then the build tree or the install directory)\n"
             "and every file rejected, with the reason.\n");
      return 0;
    default: return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "strata: plugins: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  strata_config_t *cfg = NULL;
  char **extra = NULL;
  size_t n_extra = 0;
  if (config_path) {
    struct strata_errlist errs = {0};
    cfg = strata_config_load(config_path, &errs);
    if (!cfg) {
      for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "%s\n", errs.lines[i]);
      strata_errlist_free(&errs);
      return 2;
    }
    extra = strata_config_plugin_dirs(cfg, &n_extra);
  }
  size_t n_dirs;
  char **dirs = strata_plugin_default_dirs((const char *const *)extra, n_extra, &n_dirs);
  struct strata_registry reg = {0};
  strata_registry_scan(&reg, (const char *const *)dirs, n_dirs);

  printf("search path:\n");
  for (size_t i = 0; i < reg.n_dirs; i++) printf("  %s\n", reg.dirs[i]);
  printf("\n%-10s %-20s %-10s %-4s %s\n", "KIND", "NAME", "VERSION", "ABI", "PATH");
  for (size_t i = 0; i < reg.n_plugins; i++) {
    const struct strata_plugin_desc *d = reg.plugins[i].desc;
    printf("%-10s %-20s %-10s %-4u %s\n", strata_plugin_kind_name(d->kind), d->name,
           d->version ? d->version : "-", d->abi_version, reg.plugins[i].path);
    if (verbose) {
      if (d->description) printf("    %s\n", d->description);
      printf("    license %s, fingerprint %s\n", d->license ? d->license : "-",
             d->fingerprint);
      for (const struct strata_param *p = d->params; p && p->name; p++)
        printf("    %s.%s: %s%s%s%s  %s\n", strata_plugin_kind_name(d->kind), p->name,
               param_type(p->type), p->required ? ", required" : "",
               p->defval ? ", default " : "", p->defval ? p->defval : "",
               p->help ? p->help : "");
    }
  }
  if (reg.n_rejects) {
    printf("\nrejected:\n");
    for (size_t i = 0; i < reg.n_rejects; i++) printf("  %s\n", reg.rejects[i].reason);
  }
  printf("\n%zu plugin(s) loaded, %zu file(s) rejected\n", reg.n_plugins, reg.n_rejects);
  strata_registry_free(&reg);
  strata_free_strv(dirs, n_dirs);
  strata_free_strv(extra, n_extra);
  strata_config_free(cfg);
  return 0;
}
