#include "config.h"

#include "plugin_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include <strata/backend.h>
#include <strata/logits.h>
#include <strata/quant.h>
#include <strata/router.h>
#include <strata/scheduler.h>

#include "conf.h"
#include "engine.h"
#include "log.h"
#include "util.h"

static const char *kind_names[] = {
    [STRATA_PLUGIN_BACKEND] = "backend", [STRATA_PLUGIN_QUANT] = "quant",
    [STRATA_PLUGIN_SCHEDULER] = "scheduler", [STRATA_PLUGIN_LOGITS] = "logits",
    [STRATA_PLUGIN_ROUTER] = "router",
};

const char *strata_plugin_kind_name(enum strata_plugin_kind kind) {
  if ((int)kind <= 0 || (size_t)kind >= STRATA_ARRAY_LEN(kind_names)) return "unknown";
  return kind_names[kind];
}

int strata_plugin_kind_from_name(const char *name) {
  for (size_t i = 1; i < STRATA_ARRAY_LEN(kind_names); i++)
    if (kind_names[i] && strcmp(kind_names[i], name) == 0) return (int)i;
  return -1;
}

static int valid_name(const char *s) {
  if (!s || !*s || strlen(s) > 64) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
      return 0;
  return 1;
}

/* Kind-specific vtable checks: every mandatory slot present. Kinds whose
 * vtables this host does not define yet are refused by name. */
static int check_quant(const struct strata_plugin_desc *d, char *why, size_t cap) {
  const struct strata_quant_vtable *q = d->vt.quant;
  if (!q) return strata_errf(why, cap, "quant plugin without a vtable");
  if (q->size < offsetof(struct strata_quant_vtable, vec_dot_type))
    return strata_errf(why, cap, "quant vtable too small (%u bytes)", q->size);
  if (!q->dequantize_row || !q->quantize_row)
    return strata_errf(why, cap, "quant vtable lacks dequantize_row or quantize_row");
  if (q->block_size == 0 || q->type_size == 0 || q->block_size > 4096)
    return strata_errf(why, cap, "quant vtable has block_size %u, type_size %u",
                       q->block_size, q->type_size);
  return 0;
}

static int check_backend(const struct strata_plugin_desc *d, char *why, size_t cap) {
  const struct strata_backend_vtable *v = d->vt.backend;
  if (!v) return strata_errf(why, cap, "backend plugin without a vtable");
  if (v->size < offsetof(struct strata_backend_vtable, get_rows) + sizeof v->get_rows)
    return strata_errf(why, cap, "backend vtable too small (%u bytes)", v->size);
  /* Every slot but buf_wrap_host is mandatory. */
  const void *slots[] = {
      (const void *)v->n_devices, (const void *)v->device_info, (const void *)v->open,
      (const void *)v->close, (const void *)v->last_error, (const void *)v->supports_type,
      (const void *)v->buf_alloc, (const void *)v->buf_free, (const void *)v->upload,
      (const void *)v->download, (const void *)v->synchronize, (const void *)v->set_batch,
      (const void *)v->embed, (const void *)v->rmsnorm, (const void *)v->matmul,
      (const void *)v->add_bias, (const void *)v->rope, (const void *)v->kv_store,
      (const void *)v->attention, (const void *)v->swiglu, (const void *)v->add,
      (const void *)v->get_rows};
  for (size_t i = 0; i < STRATA_ARRAY_LEN(slots); i++)
    if (!slots[i]) return strata_errf(why, cap, "backend vtable slot %zu is NULL", i);
  return 0;
}

static int check_scheduler(const struct strata_plugin_desc *d, char *why, size_t cap) {
  const struct strata_scheduler_vtable *v = d->vt.scheduler;
  if (!v) return strata_errf(why, cap, "scheduler plugin without a vtable");
  if (v->size < offsetof(struct strata_scheduler_vtable, schedule) + sizeof v->schedule)
    return strata_errf(why, cap, "scheduler vtable too small (%u bytes)", v->size);
  /* on_finish is optional. */
  if (!v->create || !v->destroy || !v->schedule)
    return strata_errf(why, cap, "scheduler vtable lacks create, destroy or schedule");
  return 0;
}

static int check_logits(const struct strata_plugin_desc *d, char *why, size_t cap) {
  const struct strata_logits_vtable *v = d->vt.logits;
  if (!v) return strata_errf(why, cap, "logits plugin without a vtable");
  if (v->size < offsetof(struct strata_logits_vtable, apply) + sizeof v->apply)
    return strata_errf(why, cap, "logits vtable too small (%u bytes)", v->size);
  if (!v->fields || !v->fields[0])
    return strata_errf(why, cap, "logits plugin names no request field");
  for (size_t i = 0; v->fields[i]; i++)
    if (i >= 32) return strata_errf(why, cap, "logits plugin field list not terminated");
  if (!v->create || !v->destroy || !v->compile || !v->release || !v->update || !v->apply)
    return strata_errf(why, cap, "logits vtable lacks one of create, destroy, compile, "
                                 "release, update, apply");
  return 0;
}

static int check_router(const struct strata_plugin_desc *d, char *why, size_t cap) {
  const struct strata_router_vtable *v = d->vt.router;
  if (!v) return strata_errf(why, cap, "router plugin without a vtable");
  if (v->size < offsetof(struct strata_router_vtable, route) + sizeof v->route)
    return strata_errf(why, cap, "router vtable too small (%u bytes)", v->size);
  /* on_done is optional. */
  if (!v->create || !v->destroy || !v->route)
    return strata_errf(why, cap, "router vtable lacks create, destroy or route");
  return 0;
}

static int check_vtable(const struct strata_plugin_desc *d, char *why, size_t cap) {
  switch (d->kind) {
  case STRATA_PLUGIN_QUANT: return check_quant(d, why, cap);
  case STRATA_PLUGIN_BACKEND: return check_backend(d, why, cap);
  case STRATA_PLUGIN_SCHEDULER: return check_scheduler(d, why, cap);
  case STRATA_PLUGIN_LOGITS: return check_logits(d, why, cap);
  case STRATA_PLUGIN_ROUTER: return check_router(d, why, cap);
  default:
    return strata_errf(why, cap, "unknown plugin kind %d", (int)d->kind);
  }
}

static int check_params(const struct strata_plugin_desc *d, char *why, size_t cap) {
  for (const struct strata_param *p = d->params; p && p->name; p++) {
    if (p->type < STRATA_PARAM_INT || p->type > STRATA_PARAM_STRLIST)
      return strata_errf(why, cap, "config table entry '%s' has unknown type %d", p->name,
                         (int)p->type);
    if (p - d->params > 256) return strata_errf(why, cap, "config table not terminated");
  }
  return 0;
}

int strata_plugin_load_file(const char *path, struct strata_plugin *out, char *err,
                            size_t errlen) {
  memset(out, 0, sizeof *out);
  dlerror();
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *e = dlerror();
    return strata_errf(err, errlen,
                       "%s: cannot load: %s (hint: an undefined symbol means the plugin "
                       "needs a library or host symbol that is not there; see `ldd -r %s`)",
                       path, e ? e : "unknown dlopen error", path);
  }
  /* From here on the handle is never closed, even on rejection: a plugin's
   * constructors may already have started threads (DESIGN rule 10). */
  dlerror();
  void *sym = dlsym(h, STRATA_PLUGIN_ENTRY_SYMBOL);
  if (!sym) {
    const char *e = dlerror();
    return strata_errf(err, errlen,
                       "%s: missing symbol %s: not a strata plugin (%s; build it with "
                       "STRATA_PLUGIN_DEFINE from <strata/plugin.h>)",
                       path, STRATA_PLUGIN_ENTRY_SYMBOL, e ? e : "symbol not found");
  }
  strata_plugin_entry_fn entry;
  memcpy(&entry, &sym, sizeof entry); /* object -> function pointer, POSIX-style */
  const struct strata_plugin_desc *d = entry();
  if (!d) return strata_errf(err, errlen, "%s: %s returned NULL", path, STRATA_PLUGIN_ENTRY_SYMBOL);
  if (d->abi_version != STRATA_ABI_VERSION)
    return strata_errf(err, errlen,
                       "%s: ABI version mismatch: plugin has %u, host needs %u (rebuild the "
                       "plugin against this strata's SDK)",
                       path, d->abi_version, (unsigned)STRATA_ABI_VERSION);
  if (d->size < sizeof(struct strata_plugin_desc))
    return strata_errf(err, errlen, "%s: descriptor size %u is smaller than ABI %u's %zu bytes",
                       path, d->size, (unsigned)STRATA_ABI_VERSION,
                       sizeof(struct strata_plugin_desc));
  const char *fp = d->fingerprint ? d->fingerprint : "(null)";
  if (strcmp(fp, STRATA_BUILD_FINGERPRINT) != 0)
    return strata_errf(err, errlen,
                       "%s: build fingerprint mismatch: plugin '%s', host '%s' (rebuild the "
                       "plugin with the same settings, e.g. sanitizers on or off)",
                       path, fp, STRATA_BUILD_FINGERPRINT);
  if (!valid_name(d->name))
    return strata_errf(err, errlen, "%s: invalid plugin name (want [a-z0-9_-]{1,64})", path);
  char why[256];
  if (check_vtable(d, why, sizeof why) != 0 || check_params(d, why, sizeof why) != 0)
    return strata_errf(err, errlen, "%s: %s plugin '%s': %s", path,
                       strata_plugin_kind_name(d->kind), d->name, why);
  out->desc = d;
  out->handle = h;
  out->path = strata_strdup(path);
  return out->path ? 0 : strata_errf(err, errlen, "out of memory");
}

/* ---- registry ------------------------------------------------------------------- */

static void add_reject(struct strata_registry *reg, const char *path, const char *reason) {
  struct strata_plugin_reject *r =
      strata_reallocarray(reg->rejects, reg->n_rejects + 1, sizeof *r);
  if (!r) return;
  reg->rejects = r;
  r[reg->n_rejects].path = strata_strdup(path);
  r[reg->n_rejects].reason = strata_strdup(reason);
  reg->n_rejects++;
}

static int already_seen(const struct strata_registry *reg, const char *real) {
  for (size_t i = 0; i < reg->n_plugins; i++) {
    char buf[PATH_MAX];
    if (realpath(reg->plugins[i].path, buf) && strcmp(buf, real) == 0) return 1;
  }
  for (size_t i = 0; i < reg->n_rejects; i++) {
    char buf[PATH_MAX];
    if (realpath(reg->rejects[i].path, buf) && strcmp(buf, real) == 0) return 1;
  }
  return 0;
}

static void consider_file(struct strata_registry *reg, const char *path) {
  char real[PATH_MAX];
  if (!realpath(path, real) || already_seen(reg, real)) return;
  struct strata_plugin p;
  char err[1024];
  if (strata_plugin_load_file(path, &p, err, sizeof err) != 0) {
    add_reject(reg, path, err);
    return;
  }
  const struct strata_plugin *prev = strata_registry_find(reg, p.desc->kind, p.desc->name);
  if (prev) {
    snprintf(err, sizeof err, "%s: shadowed: %s plugin '%s' was already loaded from %s",
             path, strata_plugin_kind_name(p.desc->kind), p.desc->name, prev->path);
    add_reject(reg, path, err);
    free(p.path);
    return;
  }
  struct strata_plugin *np = strata_reallocarray(reg->plugins, reg->n_plugins + 1, sizeof *np);
  if (!np) {
    free(p.path);
    return;
  }
  reg->plugins = np;
  reg->plugins[reg->n_plugins++] = p;
}

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Depth-limited walk: installed plugins sit flat in one directory, build-tree
 * plugins in plugins/KIND/NAME/.libs/. */
static void scan_dir(struct strata_registry *reg, const char *dir, int depth) {
  struct dirent **ents = NULL;
  int n = scandir(dir, &ents, NULL, alphasort);
  if (n < 0) return;
  for (int i = 0; i < n; i++) {
    const char *nm = ents[i]->d_name;
    if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0) {
      free(ents[i]);
      continue;
    }
    char *full = strata_path_join(dir, nm);
    struct stat st;
    if (full && stat(full, &st) == 0) {
      if (S_ISREG(st.st_mode) && has_suffix(nm, ".so"))
        consider_file(reg, full);
      else if (S_ISDIR(st.st_mode) && depth < 4 && (nm[0] != '.' || strcmp(nm, ".libs") == 0))
        scan_dir(reg, full, depth + 1);
    }
    free(full);
    free(ents[i]);
  }
  free(ents);
}

void strata_registry_scan(struct strata_registry *reg, const char *const *dirs,
                          size_t n_dirs) {
  for (size_t i = 0; i < n_dirs; i++) {
    char **nd = strata_reallocarray(reg->dirs, reg->n_dirs + 1, sizeof *nd);
    if (nd) {
      reg->dirs = nd;
      reg->dirs[reg->n_dirs] = strata_strdup(dirs[i]);
      if (reg->dirs[reg->n_dirs]) reg->n_dirs++;
    }
    struct stat st;
    if (stat(dirs[i], &st) == 0 && S_ISREG(st.st_mode))
      consider_file(reg, dirs[i]); /* a path entry may name one plugin file */
    else
      scan_dir(reg, dirs[i], 0);
  }
}

/* The build tree counts when the running executable lives in it, unless it
 * is the installed strata of a prefix inside the build directory. */
static int running_from_build_tree(void) {
  char exe[PATH_MAX], bt[PATH_MAX], bin[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return 0;
  exe[n] = '\0';
  if (!realpath(STRATA_BUILDDIR, bt)) return 0;
  size_t bl = strlen(bt);
  if (strncmp(exe, bt, bl) != 0 || exe[bl] != '/') return 0;
  if (realpath(STRATA_BINDIR, bin)) {
    size_t il = strlen(bin);
    if (strncmp(exe, bin, il) == 0 && exe[il] == '/' && !strchr(exe + il + 1, '/')) return 0;
  }
  return 1;
}

char **strata_plugin_default_dirs(const char *const *extra, size_t n_extra, size_t *n_out) {
  size_t cap = n_extra + 2, n = 0;
  const char *env = getenv("STRATA_PLUGIN_PATH");
  if (env)
    for (const char *p = env; *p; p++) cap += *p == ':';
  char **v = strata_calloc(cap + 1, sizeof *v);
  if (!v) {
    *n_out = 0;
    return NULL;
  }
  for (size_t i = 0; i < n_extra; i++) v[n++] = strata_strdup(extra[i]);
  if (env) {
    const char *p = env;
    while (*p) {
      const char *c = strchr(p, ':');
      size_t len = c ? (size_t)(c - p) : strlen(p);
      if (len) v[n++] = strata_strndup(p, len);
      if (!c) break;
      p = c + 1;
    }
  }
  if (running_from_build_tree())
    v[n++] = strata_path_join(STRATA_BUILDDIR, "plugins");
  else
    v[n++] = strata_strdup(STRATA_PKGLIBDIR);
  *n_out = n;
  return v;
}

void strata_free_strv(char **v, size_t n) {
  if (!v) return;
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

const struct strata_plugin *strata_registry_find(const struct strata_registry *reg,
                                                 enum strata_plugin_kind kind,
                                                 const char *name) {
  for (size_t i = 0; i < reg->n_plugins; i++)
    if (reg->plugins[i].desc->kind == kind && strcmp(reg->plugins[i].desc->name, name) == 0)
      return &reg->plugins[i];
  return NULL;
}

const struct strata_plugin *strata_registry_find_quant(const struct strata_registry *reg,
                                                       unsigned type) {
  for (size_t i = 0; i < reg->n_plugins; i++)
    if (reg->plugins[i].desc->kind == STRATA_PLUGIN_QUANT &&
        reg->plugins[i].desc->vt.quant->type == type)
      return &reg->plugins[i];
  return NULL;
}

void strata_registry_free(struct strata_registry *reg) {
  for (size_t i = 0; i < reg->n_plugins; i++) {
    if (reg->plugins[i].initialized && reg->plugins[i].desc->fini) reg->plugins[i].desc->fini();
    free(reg->plugins[i].path); /* the handle stays open (DESIGN rule 10) */
  }
  for (size_t i = 0; i < reg->n_rejects; i++) {
    free(reg->rejects[i].path);
    free(reg->rejects[i].reason);
  }
  strata_free_strv(reg->dirs, reg->n_dirs);
  free(reg->plugins);
  free(reg->rejects);
  memset(reg, 0, sizeof *reg);
}

/* ---- host API --------------------------------------------------------------------- */

static void host_log(enum strata_log_level level, const char *who, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  strata_vlog(level, who, fmt, ap);
  va_end(ap);
}

static void *host_alloc(size_t bytes) {
  if (bytes > SIZE_MAX - 63) return NULL;
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) return NULL;
  return p;
}

static void host_free(void *p) { free(p); }

static const struct strata_registry *g_registry;

void strata_host_set_registry(const struct strata_registry *reg) { g_registry = reg; }

static const struct strata_quant_vtable *host_quant_find(uint32_t type) {
  const struct strata_plugin *p = g_registry ? strata_registry_find_quant(g_registry, type) : NULL;
  return p ? p->desc->vt.quant : NULL;
}

/* ---- JSON access for plugins: thin wrappers over jansson, so that plugins
 * read request bodies without linking a JSON library of their own. */

static enum strata_json_type hj_type(const strata_json_t *v) {
  const json_t *j = (const json_t *)v;
  if (!j) return STRATA_JSON_ABSENT;
  switch (json_typeof(j)) {
  case JSON_NULL: return STRATA_JSON_NULL;
  case JSON_TRUE:
  case JSON_FALSE: return STRATA_JSON_BOOL;
  case JSON_INTEGER: return STRATA_JSON_INTEGER;
  case JSON_REAL: return STRATA_JSON_REAL;
  case JSON_STRING: return STRATA_JSON_STRING;
  case JSON_ARRAY: return STRATA_JSON_ARRAY;
  case JSON_OBJECT: return STRATA_JSON_OBJECT;
  }
  return STRATA_JSON_ABSENT;
}

static const strata_json_t *hj_get(const strata_json_t *o, const char *key) {
  const json_t *j = (const json_t *)o;
  return (const strata_json_t *)(json_is_object(j) && key ? json_object_get(j, key) : NULL);
}

static size_t hj_size(const strata_json_t *v) {
  const json_t *j = (const json_t *)v;
  if (json_is_array(j)) return json_array_size(j);
  if (json_is_object(j)) return json_object_size(j);
  if (json_is_string(j)) return json_string_length(j);
  return 0;
}

static const strata_json_t *hj_at(const strata_json_t *a, size_t i) {
  const json_t *j = (const json_t *)a;
  return (const strata_json_t *)(json_is_array(j) ? json_array_get(j, i) : NULL);
}

static int hj_foreach(const strata_json_t *o,
                      int (*fn)(void *ud, const char *key, const strata_json_t *v), void *ud) {
  json_t *j = (json_t *)o; /* jansson's iterators take non-const; nothing is modified */
  if (!json_is_object(j) || !fn) return 0;
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    int rc = fn(ud, key, (const strata_json_t *)v);
    if (rc) return rc;
  }
  return 0;
}

static int hj_bool(const strata_json_t *v) { return json_is_true((const json_t *)v); }

static int64_t hj_integer(const strata_json_t *v) {
  const json_t *j = (const json_t *)v;
  return json_is_integer(j) ? (int64_t)json_integer_value(j) : 0;
}

static double hj_number(const strata_json_t *v) {
  const json_t *j = (const json_t *)v;
  return json_is_number(j) ? json_number_value(j) : 0;
}

static const char *hj_string(const strata_json_t *v, size_t *len) {
  const json_t *j = (const json_t *)v;
  if (!json_is_string(j)) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = json_string_length(j);
  return json_string_value(j);
}

static int host_cache_stats(void *engine, const int32_t *tokens, size_t n, const char *salt,
                            struct strata_cache_stats *out) {
  return strata_cache_stats_salt(engine, tokens, n, salt, out);
}

static const struct strata_host_api host_api = {
    .size = sizeof(struct strata_host_api),
    .abi_version = STRATA_ABI_VERSION,
    .log = host_log,
    .alloc = host_alloc,
    .free = host_free,
    .config_int = strata_config_int,
    .config_float = strata_config_float,
    .config_bool = strata_config_bool,
    .config_string = strata_config_string,
    .config_is_set = strata_config_is_set,
    /* metric_add / metric_set stay NULL until the metrics registry lands with
     * the serving engine; the SDK documents that plugins check for NULL. */
    .quant_find = host_quant_find,
    .config_strlist = strata_config_strlist,
    .json_type = hj_type,
    .json_get = hj_get,
    .json_size = hj_size,
    .json_at = hj_at,
    .json_foreach = hj_foreach,
    .json_bool = hj_bool,
    .json_integer = hj_integer,
    .json_number = hj_number,
    .json_string = hj_string,
    .cache_stats = host_cache_stats,
};

const struct strata_host_api *strata_host_api(void) { return &host_api; }

int strata_plugin_init(struct strata_plugin *p, strata_config_t *cfg, char *err,
                       size_t errlen) {
  if (p->initialized || !p->desc->init) {
    p->initialized = 1;
    return 0;
  }
  const strata_config_node_t *node = strata_config_plugin_node(cfg, p);
  char why[512] = "";
  if (!node) return strata_errf(err, errlen, "%s: out of memory", p->path);
  if (p->desc->init(&host_api, node, why, sizeof why) != 0)
    return strata_errf(err, errlen, "%s plugin '%s' failed to initialize: %s",
                       strata_plugin_kind_name(p->desc->kind), p->desc->name,
                       why[0] ? why : "(no reason given)");
  p->initialized = 1;
  return 0;
}
