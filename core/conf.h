/* The one libconfig file that wires strata together.
 *
 * Top-level groups: engine, server, router, plugins. Every group and every
 * plugin subtree (plugins.<kind>.<name>) is checked against a declarative
 * table of {name, type, required, default, range}; unknown keys are errors.
 * Every error reads `FILE:LINE: message`. Relative paths in the file resolve
 * against the directory of the file that contains them. */
#ifndef STRATA_CONF_H
#define STRATA_CONF_H

#include <stddef.h>
#include <stdint.h>

#include <strata/plugin.h>

#include "plugin_loader.h"

typedef struct strata_config strata_config_t;

/* A list of error lines, each `FILE:LINE: message`. */
struct strata_errlist {
  char **lines;
  size_t n;
};
void strata_errlist_add(struct strata_errlist *e, const char *file, int line,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void strata_errlist_free(struct strata_errlist *e);

/* Parses the file (resolving @include relative to the including file).
 * Syntax errors go to errs; returns NULL then. */
strata_config_t *strata_config_load(const char *path, struct strata_errlist *errs);
void strata_config_free(strata_config_t *cfg);
const char *strata_config_path(const strata_config_t *cfg);
/* The caller replaces engine.model (a --model flag): validate does not
 * check that the file's own model is readable. */
void strata_config_override_model(strata_config_t *cfg);

/* Checks the engine/server/router groups against the core tables and the
 * plugins group against the plugins found in reg (unknown kinds, unknown
 * plugin names, each subtree against its plugin's table). Returns the number
 * of errors added. */
int strata_config_validate(strata_config_t *cfg, const struct strata_registry *reg,
                           struct strata_errlist *errs);

/* The plugins.path entries, resolved against the config file's directory.
 * Caller frees with strata_free_strv. */
char **strata_config_plugin_dirs(const strata_config_t *cfg, size_t *n);

/* Validated views on a core group ("engine", "server", "router") or on a
 * plugin's subtree. Valid for the config's lifetime; never NULL after a
 * successful validate (an absent group yields all defaults). */
const strata_config_node_t *strata_config_group(strata_config_t *cfg,
                                                const char *group);
const strata_config_node_t *strata_config_plugin_node(strata_config_t *cfg,
                                                      const struct strata_plugin *p);

/* Getters, also handed to plugins through the host API. */
int64_t strata_config_int(const strata_config_node_t *n, const char *key);
double strata_config_float(const strata_config_node_t *n, const char *key);
int strata_config_bool(const strata_config_node_t *n, const char *key);
const char *strata_config_string(const strata_config_node_t *n, const char *key);
int strata_config_is_set(const strata_config_node_t *n, const char *key);
/* A STRATA_PARAM_STRLIST value (or its comma-separated default): up to cap
 * pointers into out, owned by the config (the default's by a static table);
 * returns the list's length. */
size_t strata_config_strlist(const strata_config_node_t *n, const char *key, const char **out,
                             size_t cap);
/* A string value that names a file, resolved against the directory of the
 * file that set it (NULL when unset and without default). Newly allocated. */
char *strata_config_path_value(const strata_config_node_t *n, const char *key);
/* `file:line` of a key (or of the group when the key is absent), for errors
 * found after validation, e.g. "conf/strata.conf:3". */
void strata_config_where(const strata_config_node_t *n, const char *key,
                         char *buf, size_t cap);

/* A node over defaults only (no file): for commands run without --config. */
const strata_config_node_t *strata_config_defaults(const char *group);

/* The core tables, for docs and `strata check-config --keys`. */
const struct strata_param *strata_config_core_params(const char *group);

#endif
