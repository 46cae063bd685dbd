/* Plugin discovery and loading (DESIGN rules 1, 2, 5, 9, 10).
 *
 * Search order: config plugins.path, then STRATA_PLUGIN_PATH (colon
 * separated), then the build tree's plugins/ when the running strata lives in
 * the build tree, else $(pkglibdir). The first plugin of a given kind and name
 * wins; later ones are recorded as shadowed. */
#ifndef STRATA_PLUGIN_LOADER_H
#define STRATA_PLUGIN_LOADER_H

#include <stddef.h>

#include <strata/plugin.h>

struct strata_plugin {
  const struct strata_plugin_desc *desc;
  char *path;
  void *handle; /* never dlclosed (DESIGN rule 10) */
  int initialized;
};

struct strata_plugin_reject {
  char *path;
  char *reason; /* one line: what was wrong and a hint */
};

struct strata_registry {
  struct strata_plugin *plugins;
  size_t n_plugins;
  struct strata_plugin_reject *rejects;
  size_t n_rejects;
  char **dirs; /* the directories searched, in order */
  size_t n_dirs;
};

/* Loads one file: dlopen(RTLD_NOW|RTLD_LOCAL), resolves the entry symbol,
 * checks descriptor size, ABI version, fingerprint, kind and vtable. On error
 * writes a one-line reason naming the path (and both values on a mismatch). */
int strata_plugin_load_file(const char *path, struct strata_plugin *out,
                            char *err, size_t errlen);

/* Scans each directory (non-recursively for *.so; in the build tree, the
 * plugins/KIND/NAME/.libs/ folders) and loads what it finds. Missing
 * directories are skipped silently. Never fails: bad files become rejects. */
void strata_registry_scan(struct strata_registry *reg, const char *const *dirs,
                          size_t n_dirs);

/* The default directory list: extra (from config, may be NULL/0), then
 * STRATA_PLUGIN_PATH, then the build tree or pkglibdir. Caller frees with
 * strata_free_strv. */
char **strata_plugin_default_dirs(const char *const *extra, size_t n_extra,
                                  size_t *n_out);
void strata_free_strv(char **v, size_t n);

const struct strata_plugin *strata_registry_find(const struct strata_registry *reg,
                                                 enum strata_plugin_kind kind,
                                                 const char *name);
/* The quant plugin implementing a ggml type id, or NULL. */
const struct strata_plugin *strata_registry_find_quant(const struct strata_registry *reg,
                                                       unsigned type);
void strata_registry_free(struct strata_registry *reg);

const char *strata_plugin_kind_name(enum strata_plugin_kind kind);
/* -1 when unknown. */
int strata_plugin_kind_from_name(const char *name);

struct strata_config;
/* Calls the plugin's init() once with its validated config subtree (cfg may
 * be NULL: defaults only). */
int strata_plugin_init(struct strata_plugin *p, struct strata_config *cfg, char *err,
                       size_t errlen);

/* The registry the host API's quant_find searches (the process's one). */
void strata_host_set_registry(const struct strata_registry *reg);

/* The host API handed to every plugin's init(). */
const struct strata_host_api *strata_host_api(void);

#endif
