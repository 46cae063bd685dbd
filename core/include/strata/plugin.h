/* strata plugin SDK: the one header every plugin includes.
 *
 * A plugin is a shared object that exports exactly one symbol,
 * `strata_plugin_entry`, returning a const descriptor. The host checks the
 * descriptor's ABI version (exact match) and build fingerprint (exact match)
 * before it touches anything else. See docs/plugin-abi.md.
 *
 * Rules for growing these structs: fields are only ever appended, and every
 * struct starts with its own size so that either side can tell which fields
 * the other knows about.
 */
#ifndef STRATA_PLUGIN_H
#define STRATA_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change to a struct or vtable in the SDK. */
#define STRATA_ABI_VERSION 1

/* ---- build fingerprint --------------------------------------------------
 * Things that must agree between host and plugin beyond the ABI number:
 * pointer size, byte order and sanitizer instrumentation (an ASan host with a
 * plain plugin, or the reverse, fails in confusing ways at run time). */
#if defined(__SANITIZE_ADDRESS__)
#define STRATA_FP_ASAN "asan"
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STRATA_FP_ASAN "asan"
#endif
#endif
#ifndef STRATA_FP_ASAN
#define STRATA_FP_ASAN "noasan"
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define STRATA_FP_ENDIAN "be"
#else
#define STRATA_FP_ENDIAN "le"
#endif

#define STRATA_FP_STR2(x) #x
#define STRATA_FP_STR(x) STRATA_FP_STR2(x)

#define STRATA_BUILD_FINGERPRINT                                              \
  "abi" STRATA_FP_STR(STRATA_ABI_VERSION) "-ptr" STRATA_FP_STR(               \
      __SIZEOF_POINTER__) "-" STRATA_FP_ENDIAN "-" STRATA_FP_ASAN

/* ---- visibility --------------------------------------------------------- */
#if defined(__GNUC__)
#define STRATA_EXPORT __attribute__((visibility("default")))
#else
#define STRATA_EXPORT
#endif

/* ---- plugin kinds -------------------------------------------------------- */
enum strata_plugin_kind {
  STRATA_PLUGIN_BACKEND = 1,
  STRATA_PLUGIN_QUANT = 2,
  STRATA_PLUGIN_SCHEDULER = 3,
  STRATA_PLUGIN_LOGITS = 4,
  STRATA_PLUGIN_ROUTER = 5,
};

/* ---- log levels ---------------------------------------------------------- */
enum strata_log_level {
  STRATA_LOG_ERROR = 0,
  STRATA_LOG_WARN = 1,
  STRATA_LOG_INFO = 2,
  STRATA_LOG_DEBUG = 3,
};

/* ---- declarative config tables (DESIGN rule 7) ---------------------------
 * A plugin describes the keys of its own config subtree; the host checks the
 * subtree against the table (types, ranges, required keys, unknown keys) and
 * fills in defaults before the plugin's init sees it. */
enum strata_param_type {
  STRATA_PARAM_END = 0, /* terminates a table */
  STRATA_PARAM_INT = 1, /* 64-bit integer */
  STRATA_PARAM_FLOAT = 2,
  STRATA_PARAM_BOOL = 3,
  STRATA_PARAM_STRING = 4,
  STRATA_PARAM_SIZE = 5, /* bytes: an integer or a string like "2GiB" */
  STRATA_PARAM_STRLIST = 6, /* a list or array of strings; the default is
                               comma-separated text ("a,b,c") */
};

struct strata_param {
  const char *name;
  enum strata_param_type type;
  int required;       /* 1: the key must be present */
  const char *defval; /* default as text ("4", "0.5", "true", "2GiB"), or NULL */
  double min, max;    /* inclusive range for INT/FLOAT/SIZE; min > max: none */
  const char *help;   /* one line, shown by `strata plugins --verbose` */
};

/* A validated config subtree with defaults applied; opaque to plugins. */
typedef struct strata_config_node strata_config_node_t;

/* A JSON value borrowed from the host (a request body): read it through the
 * host API's json_* functions, only during the call that handed it over. */
typedef struct strata_json strata_json_t;

enum strata_json_type {
  STRATA_JSON_ABSENT = 0, /* a NULL value: the key or index is not there */
  STRATA_JSON_NULL = 1,
  STRATA_JSON_BOOL = 2,
  STRATA_JSON_INTEGER = 3,
  STRATA_JSON_REAL = 4,
  STRATA_JSON_STRING = 5,
  STRATA_JSON_ARRAY = 6,
  STRATA_JSON_OBJECT = 7,
};

/* ---- prefix-cache statistics ----------------------------------------------
 * What the engine's KV cache holds for a prompt (strata_cache_stats in the
 * core, host->cache_stats for plugins, POST /v1/cache/stats over HTTP). */
struct strata_cache_stats {
  uint32_t size;          /* sizeof(struct strata_cache_stats) as the caller knows it */
  int32_t block_size;     /* tokens per KV block */
  int32_t prompt_tokens;  /* the prompt asked about */
  /* Tokens a request with this prompt would take from the prefix cache now:
   * whole cached blocks from the start, leaving at least the last token to
   * compute (as the engine does); cached_blocks = cached_tokens / block_size. */
  int32_t cached_tokens;
  int32_t cached_blocks;
  int32_t total_blocks;     /* the pool */
  int32_t free_blocks;      /* on the free list */
  int32_t used_blocks;      /* referenced by running requests */
  int32_t evictable_blocks; /* cached and unreferenced: reusable or evictable */
  uint64_t queries, hits;   /* prompt tokens looked up / found so far */
  double hit_rate;          /* hits / queries, 0 before any query */
};

/* ---- the host API (DESIGN rule 5) ----------------------------------------
 * Plugins never link against the host; everything they need from it comes
 * through this table, handed to init(). */
struct strata_host_api {
  uint32_t size; /* sizeof(struct strata_host_api) as the host knows it */
  uint32_t abi_version;

  void (*log)(enum strata_log_level level, const char *who, const char *fmt,
              ...) __attribute__((format(printf, 3, 4)));

  /* Memory: aligned to at least 64 bytes; free(NULL) is a no-op. */
  void *(*alloc)(size_t bytes);
  void (*free)(void *ptr);

  /* Config access on the plugin's own validated subtree. Each returns the
   * value (the table's default where the key is absent); asking for a key
   * that is not in the plugin's table is a programming error and returns the
   * zero value after logging it. */
  int64_t (*config_int)(const strata_config_node_t *cfg, const char *key);
  double (*config_float)(const strata_config_node_t *cfg, const char *key);
  int (*config_bool)(const strata_config_node_t *cfg, const char *key);
  const char *(*config_string)(const strata_config_node_t *cfg,
                               const char *key);
  /* 1 if the key was set in the file, 0 if it comes from the default. */
  int (*config_is_set)(const strata_config_node_t *cfg, const char *key);

  /* Metrics: counters and gauges exported by the host under the plugin's
   * name. (Filled from the serving-engine issue on; may be NULL before.) */
  void (*metric_add)(const char *name, double delta);
  void (*metric_set)(const char *name, double value);

  /* The loaded quant plugin for a GGUF tensor type, or NULL: how a backend
   * that runs CPU code reaches dot kernels and (de)quantizers. */
  const struct strata_quant_vtable *(*quant_find)(uint32_t type);

  /* ---- appended with the logits kind (check size before use) ---- */

  /* A STRATA_PARAM_STRLIST value: writes up to cap pointers (owned by the
   * config) into out and returns the list's length. */
  size_t (*config_strlist)(const strata_config_node_t *cfg, const char *key,
                           const char **out, size_t cap);

  /* Read-only JSON access (jansson underneath). Every function accepts NULL
   * and a value of the wrong type, answering ABSENT / 0 / NULL. */
  enum strata_json_type (*json_type)(const strata_json_t *v);
  /* Member of an object, NULL if absent. */
  const strata_json_t *(*json_get)(const strata_json_t *obj, const char *key);
  /* Elements of an array, members of an object, bytes of a string. */
  size_t (*json_size)(const strata_json_t *v);
  const strata_json_t *(*json_at)(const strata_json_t *arr, size_t i);
  /* Calls fn on each member of an object in the order of the text; stops at
   * and returns the first nonzero fn result (0 when all returned 0). */
  int (*json_foreach)(const strata_json_t *obj,
                      int (*fn)(void *ud, const char *key, const strata_json_t *v), void *ud);
  int (*json_bool)(const strata_json_t *v);
  int64_t (*json_integer)(const strata_json_t *v);
  double (*json_number)(const strata_json_t *v); /* integer or real */
  /* UTF-8 bytes (NUL-terminated; may contain NUL), *len set when len. */
  const char *(*json_string)(const strata_json_t *v, size_t *len);

  /* ---- appended with the cache stats API ---- */

  /* Prefix-cache statistics of an engine for tokens[0, n) (salt: the
   * request's cache_salt or NULL). engine is the handle a kind hands over
   * (struct strata_sched_view.engine). Cheap (hashing only, no model work)
   * and safe on any thread while the engine runs. Set out->size first (the
   * host fills that much). 0, or -1 on bad arguments. */
  int (*cache_stats)(void *engine, const int32_t *tokens, size_t n, const char *salt,
                     struct strata_cache_stats *out);
};

/* Kind-specific vtables, each defined in its own header. */
struct strata_quant_vtable;
struct strata_backend_vtable;
struct strata_scheduler_vtable;
struct strata_logits_vtable;
struct strata_router_vtable;

/* ---- the descriptor (DESIGN rule 1) -------------------------------------- */
struct strata_plugin_desc {
  uint32_t size;        /* sizeof(struct strata_plugin_desc) */
  uint32_t abi_version; /* STRATA_ABI_VERSION */
  const char *fingerprint; /* STRATA_BUILD_FINGERPRINT */
  enum strata_plugin_kind kind;
  const char *name;    /* unique within its kind: [a-z0-9_-]+ */
  const char *version; /* the plugin's own version, free text */
  const char *license; /* SPDX identifier */
  const char *description;

  /* The plugin's config subtree (plugins.<kind>.<name>); NULL: no keys. */
  const struct strata_param *params;

  /* (optional) called once after loading with the validated config subtree.
   * Returns 0, or non-zero after writing a message into err. */
  int (*init)(const struct strata_host_api *host,
              const strata_config_node_t *cfg, char *err, size_t errlen);
  /* (optional) called once at host shutdown. The plugin stays mapped
   * (DESIGN rule 10: never dlclose a plugin that may own threads). */
  void (*fini)(void);

  /* Exactly one of these is set, matching `kind`. */
  union {
    const struct strata_quant_vtable *quant;
    const struct strata_backend_vtable *backend;
    const struct strata_scheduler_vtable *scheduler;
    const struct strata_logits_vtable *logits;
    const struct strata_router_vtable *router;
  } vt;
};

/* The one symbol a plugin exports. */
#define STRATA_PLUGIN_ENTRY_SYMBOL "strata_plugin_entry"
typedef const struct strata_plugin_desc *(*strata_plugin_entry_fn)(void);

#define STRATA_PLUGIN_DEFINE(desc_var)                                        \
  STRATA_EXPORT const struct strata_plugin_desc *strata_plugin_entry(void);   \
  STRATA_EXPORT const struct strata_plugin_desc *strata_plugin_entry(void) {  \
    return &(desc_var);                                                       \
  }

#ifdef __cplusplus
}
#endif
#endif
