#include "config.h"

#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* ---- error lists ----------------------------------------------------------- */

void strata_errlist_add(struct strata_errlist *e, const char *file, int line,
                        const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char buf[1400];
  if (line > 0)
    snprintf(buf, sizeof buf, "%s:%d: %s", file ? file : "<config>", line, msg);
  else
    snprintf(buf, sizeof buf, "%s: %s", file ? file : "<config>", msg);
  char **nl = strata_reallocarray(e->lines, e->n + 1, sizeof *nl);
  if (!nl) return;
  e->lines = nl;
  e->lines[e->n] = strata_strdup(buf);
  if (e->lines[e->n]) e->n++;
}

void strata_errlist_free(struct strata_errlist *e) {
  for (size_t i = 0; i < e->n; i++) free(e->lines[i]);
  free(e->lines);
  e->lines = NULL;
  e->n = 0;
}

/* ---- the core tables --------------------------------------------------------- */

#define NO_RANGE 1, 0

static const struct strata_param engine_params[] = {
    {"model", STRATA_PARAM_STRING, 0, NULL, NO_RANGE,
     "GGUF model file (relative to this config file)"},
    {"backend", STRATA_PARAM_STRING, 0, "auto", NO_RANGE,
     "backend plugin name, or \"auto\" for the best one present"},
    {"quant", STRATA_PARAM_STRING, 0, NULL, NO_RANGE,
     "requantize weights at load to this quant plugin's format"},
    {"context_length", STRATA_PARAM_INT, 0, "0", 0, 16777216,
     "context length in tokens; 0 takes the model's"},
    {"memory_limit", STRATA_PARAM_SIZE, 0, "0", 0, 1e18,
     "memory the model may take (weights, KV cache, workspace); 0: the backend's free memory"},
    {"scheduler", STRATA_PARAM_STRING, 0, "fcfs", NO_RANGE,
     "scheduler plugin name (strata serve)"},
    {"max_batch_tokens", STRATA_PARAM_INT, 0, "2048", 1, 1048576,
     "tokens per engine step: prefill chunks plus one per decoding sequence"},
    {"max_running", STRATA_PARAM_INT, 0, "64", 1, 65536,
     "requests holding KV cache blocks at once"},
    {"max_waiting", STRATA_PARAM_INT, 0, "1024", 1, 1048576,
     "queued requests; beyond this a request gets HTTP 429"},
    {"logits", STRATA_PARAM_STRLIST, 0,
     "allowed_token_ids,bad_words,min_tokens,logit_bias,repetition_penalty,frequency_penalty,"
     "presence_penalty",
     NO_RANGE, "logits processor plugins enabled, in the order they apply"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_param kv_cache_params[] = {
    {"block_size", STRATA_PARAM_INT, 0, "16", 1, 1024, "tokens per KV cache block"},
    {"memory", STRATA_PARAM_SIZE, 0, "0", 0, 1e18,
     "KV cache size in bytes (\"2GiB\"); 0: `tokens` decides"},
    {"tokens", STRATA_PARAM_INT, 0, "0", 0, 1073741824,
     "KV cache size in tokens when memory is 0; 0: max_running full contexts, at most 1 GiB"},
    {"prefix_caching", STRATA_PARAM_BOOL, 0, "true", NO_RANGE,
     "reuse the KV blocks of a prompt prefix computed before"},
    {"dtype", STRATA_PARAM_STRING, 0, "f32", NO_RANGE,
     "element type of the cached K and V: f32, or f16 (half the bytes per token: twice the "
     "tokens in the same memory)"},
    {"group_ttl", STRATA_PARAM_FLOAT, 0, "0", 0, 86400,
     "seconds a finished grouped request's cached blocks are evicted last; 0: off (the "
     "affinity-group scheduler sets its own)"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_param server_params[] = {
    {"host", STRATA_PARAM_STRING, 0, "127.0.0.1", NO_RANGE, "listen address"},
    {"port", STRATA_PARAM_INT, 0, "8000", 1, 65535, "listen port"},
    {"api_key", STRATA_PARAM_STRING, 0, NULL, NO_RANGE,
     "require Authorization: Bearer <key> (or STRATA_API_KEY)"},
    {"allow_no_api_key", STRATA_PARAM_BOOL, 0, "false", NO_RANGE,
     "serve without an API key on an address other than loopback (a private network); "
     "without it such a server refuses to start"},
    {"served_model_name", STRATA_PARAM_STRING, 0, NULL, NO_RANGE,
     "model id in the API; default: the model file name without extension"},
    {"max_body_bytes", STRATA_PARAM_SIZE, 0, "4MiB", 1024, 1073741824,
     "largest request body; larger gets HTTP 413"},
    {"max_metadata_bytes", STRATA_PARAM_SIZE, 0, "16KiB", 0, 16777216,
     "largest `metadata` object of a request (as JSON text)"},
    {"max_header_bytes", STRATA_PARAM_SIZE, 0, "64KiB", 1024, 1048576,
     "largest request header block; larger gets HTTP 400"},
    {"max_connections", STRATA_PARAM_INT, 0, "1024", 1, 1048576,
     "open client connections; one that arrives past it gets HTTP 503 and is closed, and "
     "past it by an eighth accepting pauses (lowered, with a warning, to fit the file "
     "descriptor limit)"},
    {"max_n", STRATA_PARAM_INT, 0, "128", 1, 128, "largest `n` (and `best_of`) of a request"},
    {"max_stop", STRATA_PARAM_INT, 0, "16", 1, 1024, "most `stop` strings of a request"},
    {"chat_template", STRATA_PARAM_STRING, 0, NULL, NO_RANGE,
     "override the model's chat template: a family name (llama2, llama3, chatml, mistral, "
     "zephyr, gemma, plain) or a template file"},
    {"request_log", STRATA_PARAM_BOOL, 0, "true", NO_RANGE,
     "log one line per finished request (with its metadata) to stderr"},
    {"idle_timeout", STRATA_PARAM_INT, 0, "60", 1, 86400,
     "seconds a connection may stay silent while its request is read or while it idles "
     "between requests (a request the engine holds is exempt: up to an hour)"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_param router_params[] = {
    {"host", STRATA_PARAM_STRING, 0, "127.0.0.1", NO_RANGE, "listen address"},
    {"port", STRATA_PARAM_INT, 0, "8080", 0, 65535, "listen port (0: any free port)"},
    {"policy", STRATA_PARAM_STRING, 0, "round-robin", NO_RANGE,
     "router plugin name"},
    {"backends", STRATA_PARAM_STRLIST, 0, "", NO_RANGE,
     "engine instances, each \"http://HOST:PORT\", or \"dns://NAME:PORT\" for every address "
     "NAME resolves to"},
    {"dns_interval", STRATA_PARAM_FLOAT, 0, "10", 0.05, 86400,
     "seconds between lookups of the dns:// names"},
    {"dns_servers", STRATA_PARAM_STRLIST, 0, "", NO_RANGE,
     "name servers (\"IP\" or \"IP:PORT\") for the dns:// names; none: /etc/resolv.conf's"},
    {"api_key", STRATA_PARAM_STRING, 0, NULL, NO_RANGE,
     "require Authorization: Bearer <key> (or STRATA_API_KEY); also sent to the instances' "
     "health and metrics endpoints"},
    {"allow_no_api_key", STRATA_PARAM_BOOL, 0, "false", NO_RANGE,
     "route without an API key on an address other than loopback (a private network); "
     "without it such a router refuses to start"},
    {"max_body_bytes", STRATA_PARAM_SIZE, 0, "4MiB", 1024, 1073741824,
     "largest request body; larger gets HTTP 413"},
    {"max_header_bytes", STRATA_PARAM_SIZE, 0, "64KiB", 1024, 1048576,
     "largest request header block; larger gets HTTP 400"},
    {"max_connections", STRATA_PARAM_INT, 0, "1024", 1, 1048576,
     "open client connections; one that arrives past it gets HTTP 503 and is closed, and "
     "past it by an eighth accepting pauses (lowered, with a warning, to fit the file "
     "descriptor limit: each needs two, its own and one to an instance)"},
    {"health_interval", STRATA_PARAM_FLOAT, 0, "2", 0.05, 3600,
     "seconds between checks of each instance's /health and /metrics"},
    {"health_timeout", STRATA_PARAM_FLOAT, 0, "2", 0.05, 600, "seconds a check may take"},
    {"eject_after", STRATA_PARAM_INT, 0, "2", 1, 1000,
     "consecutive failed checks or attempts that eject an instance"},
    {"readmit_after", STRATA_PARAM_INT, 0, "1", 1, 1000,
     "consecutive passed checks that readmit an ejected instance"},
    {"max_retries", STRATA_PARAM_INT, 0, "2", 0, 16,
     "other instances tried when one fails before the first byte reached the client"},
    {"request_timeout", STRATA_PARAM_FLOAT, 0, "600", 1, 86400,
     "seconds an instance may take to connect or stay silent in the middle of an answer"},
    {"idle_timeout", STRATA_PARAM_INT, 0, "60", 1, 86400,
     "seconds a client connection may stay silent while its request is read or between "
     "requests"},
    {"max_pending_bytes", STRATA_PARAM_SIZE, 0, "256KiB", 4096, 1073741824,
     "unsent bytes to a slow client beyond which reading its answer from the instance pauses"},
    {"request_log", STRATA_PARAM_BOOL, 0, "false", NO_RANGE,
     "log one line per finished request to stderr"},
    {"tokenizer", STRATA_PARAM_STRING, 0, NULL, NO_RANGE,
     "a GGUF file (the served model's; only its tokenizer and chat template are read) for "
     "policies that need prompts as tokens (kv-aware): with it the router hashes prompts into "
     "the engines' block hashes itself; without it it asks each engine (POST /v1/cache/stats)"},
    {"cache_events", STRATA_PARAM_BOOL, 0, "true", NO_RANGE,
     "for such policies, follow each instance's GET /v1/cache/events to know exactly which "
     "blocks it holds (needs router.tokenizer)"},
    {"cache_probe_timeout", STRATA_PARAM_FLOAT, 0, "0.05", 0.001, 10,
     "seconds to wait for POST /v1/cache/stats answers from instances without a live event "
     "index before routing without them"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_param workflow_params[] = {
    {"max_workflows", STRATA_PARAM_INT, 0, "1024", 1, 1000000,
     "workflows alive at once (declared or implicit); one more gets HTTP 429"},
    {"max_agents", STRATA_PARAM_INT, 0, "64", 1, 4096, "agents per workflow"},
    {"max_steps", STRATA_PARAM_INT, 0, "256", 1, 65536,
     "steps per workflow, and barriers per workflow"},
    {"max_messages", STRATA_PARAM_INT, 0, "1024", 1, 1000000,
     "agent-to-agent messages a workflow keeps (for its lifetime); one more gets HTTP 429"},
    {"max_message_bytes", STRATA_PARAM_SIZE, 0, "64KiB", 64, 16777216,
     "largest message (as JSON) and largest step output; larger gets HTTP 413"},
    {"max_total_bytes", STRATA_PARAM_SIZE, 0, "256MiB", 4096, 68719476736.0,
     "messages and step outputs of all workflows together; beyond it a new one gets HTTP 429 "
     "(router_full)"},
    {"max_waiters", STRATA_PARAM_INT, 0, "256", 1, 100000,
     "open long polls, message streams and barrier or step waits per workflow; one more gets "
     "HTTP 429"},
    {"idle_ttl", STRATA_PARAM_FLOAT, 0, "600", 1, 604800,
     "seconds without a request or API call after which a workflow ends"},
    {"max_wait", STRATA_PARAM_FLOAT, 0, "300", 1, 3600,
     "longest timeout a long poll, barrier or step wait may ask for"},
    {"cache_hints", STRATA_PARAM_BOOL, 0, "true", NO_RANGE,
     "tell the instances which workflow contexts to keep and which to release "
     "(POST /v1/cache/hints), from each workflow's step graph"},
    {"keep_agents", STRATA_PARAM_BOOL, 0, "false", NO_RANGE,
     "with cache_hints, also keep each agent's own prompt while the step graph says it runs "
     "again, and again when its next step becomes ready (not only the declared contexts); "
     "protecting that much can crowd a small cache"},
    {"hint_ttl", STRATA_PARAM_FLOAT, 0, "300", 1, 86400,
     "seconds a keep hint protects an agent's context on its instance"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct {
  const char *name;
  const struct strata_param *params;
} core_groups[] = {
    {"engine", engine_params},
    {"engine.kv_cache", kv_cache_params},
    {"server", server_params},
    {"router", router_params},
    {"router.workflows", workflow_params},
};

const struct strata_param *strata_config_core_params(const char *group) {
  for (size_t i = 0; i < STRATA_ARRAY_LEN(core_groups); i++)
    if (strcmp(core_groups[i].name, group) == 0) return core_groups[i].params;
  return NULL;
}

/* ---- config handles ------------------------------------------------------------ */

struct strata_config_node {
  const struct strata_param *params;
  config_setting_t *setting; /* NULL: the group is absent, defaults apply */
  const struct strata_config *cfg;
  char *name;
};

struct file_map {
  char *tmp;  /* rewritten copy handed to libconfig */
  char *orig; /* the user's file */
};

struct strata_config {
  config_t lc;
  int lc_ready;
  char *path;
  char *tmpdir;
  struct file_map *files;
  size_t n_files;
  struct strata_config_node **nodes;
  size_t n_nodes;
  int model_overridden; /* engine.model is replaced (--model): not checked */
};

/* Maps a file name libconfig reports back to the user's file. */
static const char *user_file(const struct strata_config *cfg, const char *f) {
  if (!f) return cfg ? cfg->path : "<config>";
  for (size_t i = 0; cfg && i < cfg->n_files; i++)
    if (strcmp(cfg->files[i].tmp, f) == 0) return cfg->files[i].orig;
  return f;
}

static const char *setting_file(const struct strata_config *cfg,
                                const config_setting_t *s) {
  return user_file(cfg, s ? config_setting_source_file(s) : NULL);
}

static int setting_line(const config_setting_t *s) {
  int line = s ? (int)config_setting_source_line(s) : 0;
  return line > 0 ? line : 1;
}

/* ---- @include relative to the including file ------------------------------------
 * libconfig 1.5 (Debian 12) resolves @include against one fixed include_dir;
 * config_set_include_func only arrived in 1.7. So each file that contains an
 * @include is copied into a private temp directory with its include paths
 * rewritten (relative -> copy of the included file, itself rewritten), line
 * for line, so libconfig's line numbers stay true; file names are mapped back
 * for messages. Files without @include are read in place. */

#define MAX_INCLUDE_DEPTH 10

static int parse_include_line(const char *line, size_t len, size_t *q0,
                              size_t *q1) {
  size_t i = 0;
  while (i < len && (line[i] == ' ' || line[i] == '\t')) i++;
  if (len - i < 8 || memcmp(line + i, "@include", 8) != 0) return 0;
  i += 8;
  if (i >= len || (line[i] != ' ' && line[i] != '\t')) return 0;
  while (i < len && (line[i] == ' ' || line[i] == '\t')) i++;
  if (i >= len || line[i] != '"') return 0;
  size_t s = i + 1, e = s;
  while (e < len && line[e] != '"') e++;
  if (e >= len) return 0;
  *q0 = s;
  *q1 = e;
  return 1;
}

static int file_has_include(const char *text) {
  const char *p = text;
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    size_t a, b;
    if (parse_include_line(p, len, &a, &b)) return 1;
    if (!nl) break;
    p = nl + 1;
  }
  return 0;
}

/* Returns the path libconfig should read for orig (itself or a rewritten
 * copy), or NULL after adding an error. */
static const char *prepare_file(struct strata_config *cfg, const char *orig,
                                const char *from_file, int from_line,
                                int depth, struct strata_errlist *errs);

static int ensure_tmpdir(struct strata_config *cfg, struct strata_errlist *errs) {
  if (cfg->tmpdir) return 0;
  const char *base = getenv("TMPDIR");
  char tmpl[4096];
  snprintf(tmpl, sizeof tmpl, "%s/strata-conf-XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmpl)) {
    strata_errlist_add(errs, cfg->path, 0, "cannot create a temporary directory: %s",
                       strerror(errno));
    return -1;
  }
  cfg->tmpdir = strata_strdup(tmpl);
  return cfg->tmpdir ? 0 : -1;
}

static const char *prepare_file(struct strata_config *cfg, const char *orig,
                                const char *from_file, int from_line,
                                int depth, struct strata_errlist *errs) {
  char *text = NULL;
  size_t len = 0;
  char err[512];
  if (strata_read_file(orig, &text, &len, err, sizeof err) != 0) {
    if (from_file)
      strata_errlist_add(errs, from_file, from_line, "cannot open include file: %s", err);
    else
      strata_errlist_add(errs, NULL, 0, "%s", err);
    return NULL;
  }
  if (!file_has_include(text)) {
    free(text);
    return orig;
  }
  if (depth >= MAX_INCLUDE_DEPTH) {
    strata_errlist_add(errs, from_file, from_line,
                       "@include nested more than %d deep (an include cycle?)",
                       MAX_INCLUDE_DEPTH);
    free(text);
    return NULL;
  }
  if (ensure_tmpdir(cfg, errs) != 0) {
    free(text);
    return NULL;
  }
  char *dir = strata_dirname(orig);
  size_t cap = len + 1, n = 0;
  char *out = malloc(cap);
  int ok = dir && out;
  int lineno = 1;
  const char *p = text;
  while (ok && *p) {
    const char *nl = strchr(p, '\n');
    size_t ll = nl ? (size_t)(nl - p) : strlen(p);
    size_t a, b;
    const char *piece = p;
    size_t piece_len = ll;
    char *repl = NULL;
    if (parse_include_line(p, ll, &a, &b)) {
      char *rel = strata_strndup(p + a, b - a);
      char *inc = rel ? strata_path_join(dir, rel) : NULL;
      const char *use = inc ? prepare_file(cfg, inc, orig, lineno, depth + 1, errs) : NULL;
      if (!use) {
        ok = 0;
      } else {
        size_t rl = a + strlen(use) + (ll - b);
        repl = malloc(rl + 1);
        if (repl) {
          memcpy(repl, p, a);
          strcpy(repl + a, use);
          memcpy(repl + a + strlen(use), p + b, ll - b);
          repl[rl] = '\0';
          piece = repl;
          piece_len = rl;
        } else {
          ok = 0;
        }
      }
      free(rel);
      free(inc);
    }
    if (ok) {
      while (n + piece_len + 2 > cap) {
        cap *= 2;
        char *no = realloc(out, cap);
        if (!no) {
          ok = 0;
          break;
        }
        out = no;
      }
      if (ok) {
        memcpy(out + n, piece, piece_len);
        n += piece_len;
        if (nl) out[n++] = '\n';
      }
    }
    free(repl);
    lineno++;
    if (!nl) break;
    p = nl + 1;
  }
  free(text);
  free(dir);
  if (!ok) {
    free(out);
    return NULL;
  }
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s/%zu.conf", cfg->tmpdir, cfg->n_files);
  FILE *f = fopen(tmp, "wb");
  int wrote = f && fwrite(out, 1, n, f) == n;
  if (f && fclose(f) != 0) wrote = 0;
  free(out);
  struct file_map *nf = strata_reallocarray(cfg->files, cfg->n_files + 1, sizeof *nf);
  if (!wrote || !nf) {
    if (nf) cfg->files = nf;
    strata_errlist_add(errs, orig, 0, "cannot write a rewritten copy to %s", tmp);
    return NULL;
  }
  cfg->files = nf;
  cfg->files[cfg->n_files].tmp = strata_strdup(tmp);
  cfg->files[cfg->n_files].orig = strata_strdup(orig);
  return cfg->files[cfg->n_files++].tmp;
}

strata_config_t *strata_config_load(const char *path, struct strata_errlist *errs) {
  struct strata_config *cfg = strata_calloc(1, sizeof *cfg);
  if (!cfg) return NULL;
  cfg->path = strata_strdup(path);
  config_init(&cfg->lc);
  cfg->lc_ready = 1;
  const char *use = prepare_file(cfg, path, NULL, 0, 0, errs);
  if (!use) {
    strata_config_free(cfg);
    return NULL;
  }
  if (config_read_file(&cfg->lc, use) != CONFIG_TRUE) {
    const char *ef = config_error_file(&cfg->lc);
    int line = config_error_line(&cfg->lc);
    const char *text = config_error_text(&cfg->lc);
    if (config_error_type(&cfg->lc) == CONFIG_ERR_FILE_IO && !ef)
      strata_errlist_add(errs, path, 0, "cannot read: %s", text ? text : "I/O error");
    else
      strata_errlist_add(errs, user_file(cfg, ef ? ef : use), line > 0 ? line : 1,
                         "syntax error: %s", text ? text : "parse error");
    strata_config_free(cfg);
    return NULL;
  }
  return cfg;
}

static void remove_tmp(struct strata_config *cfg) {
  for (size_t i = 0; i < cfg->n_files; i++) {
    if (cfg->files[i].tmp) unlink(cfg->files[i].tmp);
    free(cfg->files[i].tmp);
    free(cfg->files[i].orig);
  }
  free(cfg->files);
  cfg->files = NULL;
  cfg->n_files = 0;
  if (cfg->tmpdir) rmdir(cfg->tmpdir);
  free(cfg->tmpdir);
  cfg->tmpdir = NULL;
}

void strata_config_free(strata_config_t *cfg) {
  if (!cfg) return;
  if (cfg->lc_ready) config_destroy(&cfg->lc);
  remove_tmp(cfg);
  for (size_t i = 0; i < cfg->n_nodes; i++) {
    free(cfg->nodes[i]->name);
    free(cfg->nodes[i]);
  }
  free(cfg->nodes);
  free(cfg->path);
  free(cfg);
}

const char *strata_config_path(const strata_config_t *cfg) { return cfg->path; }

void strata_config_override_model(strata_config_t *cfg) { cfg->model_overridden = 1; }

/* ---- validation --------------------------------------------------------------------- */

static const char *type_name(enum strata_param_type t) {
  switch (t) {
  case STRATA_PARAM_INT: return "an integer";
  case STRATA_PARAM_FLOAT: return "a number";
  case STRATA_PARAM_BOOL: return "a boolean (true or false)";
  case STRATA_PARAM_STRING: return "a string";
  case STRATA_PARAM_SIZE: return "a size (bytes, or a string such as \"2GiB\")";
  case STRATA_PARAM_STRLIST: return "a list of strings ( \"a\", \"b\" )";
  default: return "?";
  }
}

static const char *lc_type_name(int t) {
  switch (t) {
  case CONFIG_TYPE_GROUP: return "a group";
  case CONFIG_TYPE_INT:
  case CONFIG_TYPE_INT64: return "an integer";
  case CONFIG_TYPE_FLOAT: return "a float";
  case CONFIG_TYPE_STRING: return "a string";
  case CONFIG_TYPE_BOOL: return "a boolean";
  case CONFIG_TYPE_ARRAY: return "an array";
  case CONFIG_TYPE_LIST: return "a list";
  default: return "an unknown type";
  }
}

/* Edit distance for "did you mean" hints on typos. */
static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 64 || lb > 64) return 99;
  size_t prev[65], cur[65];
  for (size_t j = 0; j <= lb; j++) prev[j] = j;
  for (size_t i = 1; i <= la; i++) {
    cur[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t c = prev[j - 1] + (a[i - 1] != b[j - 1]);
      size_t d = prev[j] + 1, e = cur[j - 1] + 1;
      cur[j] = c < d ? (c < e ? c : e) : (d < e ? d : e);
    }
    memcpy(prev, cur, sizeof prev);
  }
  return prev[lb];
}

static const struct strata_param *find_param(const struct strata_param *params,
                                             const char *name) {
  for (const struct strata_param *p = params; p && p->name; p++)
    if (strcmp(p->name, name) == 0) return p;
  return NULL;
}

static const char *closest_param(const struct strata_param *params, const char *name) {
  const char *best = NULL;
  size_t bd = 3;
  for (const struct strata_param *p = params; p && p->name; p++) {
    size_t d = edit_distance(name, p->name);
    if (d < bd) {
      bd = d;
      best = p->name;
    }
  }
  return best;
}

static int has_range(const struct strata_param *p) { return p->min <= p->max; }

static void check_range(const struct strata_config *cfg, const config_setting_t *s,
                        const char *where, const struct strata_param *p, double v,
                        struct strata_errlist *errs) {
  if (has_range(p) && (v < p->min || v > p->max))
    strata_errlist_add(errs, setting_file(cfg, s), setting_line(s),
                       "%s.%s = %.17g is out of range [%.17g, %.17g]", where, p->name, v,
                       p->min, p->max);
}

/* libconfig reads an integer literal past 32 bits without its L suffix as
 * its low 32 bits, silently (1.7.3: 5000000000 is 705032704, 1e15 is
 * -1530494976), which may land inside the range. So a 32-bit integer
 * setting is read again from its line of the file, and one whose literal
 * says otherwise is an error naming the fix. 1 when it added that error. */
static int check_int32_literal(const struct strata_config *cfg, const config_setting_t *m,
                               const char *where, const char *name, struct strata_errlist *errs) {
  const char *file = config_setting_source_file(m);
  const int line = (int)config_setting_source_line(m);
  if (!file || line <= 0 || !name) return 0;
  FILE *f = fopen(file, "r");
  if (!f) return 0;
  char buf[4096];
  int at = 0, found = 0;
  while (fgets(buf, sizeof buf, f))
    if (++at == line) {
      found = 1;
      break;
    }
  fclose(f);
  if (!found) return 0;
  const size_t nl = strlen(name);
  for (const char *p = strstr(buf, name); p; p = strstr(p + 1, name)) {
    const int word_start = p == buf || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
    const char *q = p + nl;
    if (!word_start || isalnum((unsigned char)*q) || *q == '_' || *q == '-') continue;
    while (*q == ' ' || *q == '\t') q++;
    if (*q != '=' && *q != ':') continue;
    q++;
    while (*q == ' ' || *q == '\t') q++;
    char *end;
    errno = 0;
    const long long v = strtoll(q, &end, 0);
    if (end == q) return 0;
    if (errno == ERANGE || v != config_setting_get_int64(m)) {
      strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                         "%s.%s = %.*s does not fit in 32 bits, and libconfig reads it as %lld: "
                         "write a 64-bit integer with an L suffix (%.*sL)",
                         where, name, (int)(end - q), q, (long long)config_setting_get_int64(m),
                         (int)(end - q), q);
      return 1;
    }
    return 0;
  }
  return 0;
}

/* Whether where.name is a core group of its own (engine.kv_cache). */
static int is_core_subgroup(const char *where, const char *name) {
  char full[128];
  snprintf(full, sizeof full, "%s.%s", where, name);
  return strata_config_core_params(full) != NULL;
}

/* Validates the members of group s against params. */
static int validate_params(const struct strata_config *cfg, const config_setting_t *s,
                           const char *where, const struct strata_param *params,
                           struct strata_errlist *errs) {
  size_t before = errs->n;
  int n = s ? config_setting_length(s) : 0;
  for (int i = 0; i < n; i++) {
    config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
    const char *name = config_setting_name(m);
    const struct strata_param *p = name ? find_param(params, name) : NULL;
    if (!p && name && is_core_subgroup(where, name)) continue; /* validated on its own */
    if (!p) {
      const char *hint = name ? closest_param(params, name) : NULL;
      if (hint)
        strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                           "unknown key '%s' in %s (did you mean '%s'?)", name, where, hint);
      else
        strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                           "unknown key '%s' in %s", name ? name : "?", where);
      continue;
    }
    int t = config_setting_type(m);
    /* a numeric setting whose literal libconfig cut to 32 bits: that error,
     * not its (wrong) value's */
    if (t == CONFIG_TYPE_INT &&
        (p->type == STRATA_PARAM_INT || p->type == STRATA_PARAM_FLOAT ||
         p->type == STRATA_PARAM_SIZE) &&
        check_int32_literal(cfg, m, where, name, errs))
      continue;
    int ok = 0;
    switch (p->type) {
    case STRATA_PARAM_INT:
      ok = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
      if (ok) check_range(cfg, m, where, p, (double)config_setting_get_int64(m), errs);
      break;
    case STRATA_PARAM_FLOAT:
      ok = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64 || t == CONFIG_TYPE_FLOAT;
      if (ok) {
        double v = t == CONFIG_TYPE_FLOAT ? config_setting_get_float(m)
                                          : (double)config_setting_get_int64(m);
        check_range(cfg, m, where, p, v, errs);
      }
      break;
    case STRATA_PARAM_BOOL:
      ok = t == CONFIG_TYPE_BOOL;
      break;
    case STRATA_PARAM_STRING:
      ok = t == CONFIG_TYPE_STRING;
      break;
    case STRATA_PARAM_STRLIST:
      ok = t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST;
      for (int j = 0; ok && j < config_setting_length(m); j++) {
        config_setting_t *el = config_setting_get_elem(m, (unsigned)j);
        if (config_setting_type(el) != CONFIG_TYPE_STRING)
          strata_errlist_add(errs, setting_file(cfg, el), setting_line(el),
                             "%s.%s[%d] must be a string, not %s", where, name, j,
                             lc_type_name(config_setting_type(el)));
      }
      break;
    case STRATA_PARAM_SIZE:
      if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
        long long v = config_setting_get_int64(m);
        ok = 1;
        if (v < 0)
          strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                             "%s.%s must not be negative", where, name);
        else
          check_range(cfg, m, where, p, (double)v, errs);
      } else if (t == CONFIG_TYPE_STRING) {
        uint64_t v;
        ok = 1;
        if (strata_parse_size(config_setting_get_string(m), &v) != 0)
          strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                             "%s.%s: \"%s\" is not a size (e.g. 4096, \"64MiB\", \"2GiB\")",
                             where, name, config_setting_get_string(m));
        else
          check_range(cfg, m, where, p, (double)v, errs);
      }
      break;
    default:
      break;
    }
    if (!ok)
      strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                         "%s.%s must be %s, not %s", where, name, type_name(p->type),
                         lc_type_name(t));
  }
  for (const struct strata_param *p = params; p && p->name; p++) {
    if (p->required && (!s || !config_setting_get_member(s, p->name)))
      strata_errlist_add(errs, setting_file(cfg, s), setting_line(s),
                         "missing required key '%s' in %s", p->name, where);
  }
  return (int)(errs->n - before);
}

static struct strata_config_node *new_node(struct strata_config *cfg,
                                           const struct strata_param *params,
                                           config_setting_t *s, const char *name) {
  for (size_t i = 0; cfg && i < cfg->n_nodes; i++)
    if (strcmp(cfg->nodes[i]->name, name) == 0) return cfg->nodes[i];
  struct strata_config_node *n = strata_calloc(1, sizeof *n);
  if (!n) return NULL;
  n->params = params;
  n->setting = s;
  n->cfg = cfg;
  n->name = strata_strdup(name);
  if (cfg) {
    struct strata_config_node **nn =
        strata_reallocarray(cfg->nodes, cfg->n_nodes + 1, sizeof *nn);
    if (!nn) {
      free(n->name);
      free(n);
      return NULL;
    }
    cfg->nodes = nn;
    cfg->nodes[cfg->n_nodes++] = n;
  }
  return n;
}

static int validate_plugins(strata_config_t *cfg, config_setting_t *pl,
                            const struct strata_registry *reg,
                            struct strata_errlist *errs) {
  size_t before = errs->n;
  int n = config_setting_length(pl);
  for (int i = 0; i < n; i++) {
    config_setting_t *m = config_setting_get_elem(pl, (unsigned)i);
    const char *name = config_setting_name(m);
    int t = config_setting_type(m);
    if (name && strcmp(name, "path") == 0) {
      if (t == CONFIG_TYPE_STRING) continue;
      if (t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) {
        for (int j = 0; j < config_setting_length(m); j++) {
          config_setting_t *e = config_setting_get_elem(m, (unsigned)j);
          if (config_setting_type(e) != CONFIG_TYPE_STRING)
            strata_errlist_add(errs, setting_file(cfg, e), setting_line(e),
                               "plugins.path[%d] must be a string, not %s", j,
                               lc_type_name(config_setting_type(e)));
        }
        continue;
      }
      strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                         "plugins.path must be a string or a list of strings, not %s",
                         lc_type_name(t));
      continue;
    }
    int kind = name ? strata_plugin_kind_from_name(name) : -1;
    if (kind < 0) {
      strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                         "unknown key '%s' in plugins (expected path, backend, quant, "
                         "scheduler, logits or router)",
                         name ? name : "?");
      continue;
    }
    if (t != CONFIG_TYPE_GROUP) {
      strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                         "plugins.%s must be a group of plugin settings, not %s", name,
                         lc_type_name(t));
      continue;
    }
    for (int j = 0; j < config_setting_length(m); j++) {
      config_setting_t *ps = config_setting_get_elem(m, (unsigned)j);
      const char *pname = config_setting_name(ps);
      char where[256];
      snprintf(where, sizeof where, "plugins.%s.%s", name, pname ? pname : "?");
      const struct strata_plugin *p =
          pname ? strata_registry_find(reg, (enum strata_plugin_kind)kind, pname) : NULL;
      if (!p) {
        char avail[512] = "";
        size_t off = 0;
        for (size_t k = 0; k < reg->n_plugins && off < sizeof avail - 64; k++) {
          if ((int)reg->plugins[k].desc->kind != kind) continue;
          off += (size_t)snprintf(avail + off, sizeof avail - off, "%s%s", off ? ", " : "",
                                  reg->plugins[k].desc->name);
        }
        strata_errlist_add(errs, setting_file(cfg, ps), setting_line(ps),
                           "unknown %s plugin '%s' (available: %s)", name,
                           pname ? pname : "?", off ? avail : "none found");
        continue;
      }
      if (config_setting_type(ps) != CONFIG_TYPE_GROUP) {
        strata_errlist_add(errs, setting_file(cfg, ps), setting_line(ps),
                           "%s must be a group, not %s", where,
                           lc_type_name(config_setting_type(ps)));
        continue;
      }
      if (validate_params(cfg, ps, where, p->desc->params, errs) == 0)
        new_node(cfg, p->desc->params, ps, where);
    }
  }
  return (int)(errs->n - before);
}

/* Checks a string key naming a plugin of the given kind. */
static void check_plugin_ref(strata_config_t *cfg, config_setting_t *group,
                             const char *key, enum strata_plugin_kind kind,
                             const char *also_ok, const struct strata_registry *reg,
                             struct strata_errlist *errs) {
  if (!group) return;
  config_setting_t *s = config_setting_get_member(group, key);
  if (!s || config_setting_type(s) != CONFIG_TYPE_STRING) return;
  const char *v = config_setting_get_string(s);
  if (also_ok && strcmp(v, also_ok) == 0) return;
  if (strata_registry_find(reg, kind, v)) return;
  strata_errlist_add(errs, setting_file(cfg, s), setting_line(s),
                     "%s.%s: unknown %s plugin '%s'", config_setting_name(group), key,
                     strata_plugin_kind_name(kind), v);
}

/* Checks a list key naming plugins of the given kind, each at most once. */
static void check_plugin_list(strata_config_t *cfg, config_setting_t *group, const char *key,
                              enum strata_plugin_kind kind, const struct strata_registry *reg,
                              struct strata_errlist *errs) {
  config_setting_t *s = group ? config_setting_get_member(group, key) : NULL;
  int t = s ? config_setting_type(s) : CONFIG_TYPE_NONE;
  if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) return;
  int n = config_setting_length(s);
  for (int i = 0; i < n; i++) {
    config_setting_t *el = config_setting_get_elem(s, (unsigned)i);
    const char *v = config_setting_get_string(el);
    if (!v) continue; /* reported by validate_params */
    if (!strata_registry_find(reg, kind, v))
      strata_errlist_add(errs, setting_file(cfg, el), setting_line(el),
                         "%s.%s[%d]: unknown %s plugin '%s'", config_setting_name(group), key,
                         i, strata_plugin_kind_name(kind), v);
    for (int j = 0; j < i; j++) {
      const char *w = config_setting_get_string(config_setting_get_elem(s, (unsigned)j));
      if (w && strcmp(v, w) == 0) {
        strata_errlist_add(errs, setting_file(cfg, el), setting_line(el),
                           "%s.%s[%d]: '%s' is listed twice", config_setting_name(group), key,
                           i, v);
        break;
      }
    }
  }
}

int strata_config_validate(strata_config_t *cfg, const struct strata_registry *reg,
                           struct strata_errlist *errs) {
  size_t before = errs->n;
  config_setting_t *root = config_root_setting(&cfg->lc);
  int n = config_setting_length(root);
  for (int i = 0; i < n; i++) {
    config_setting_t *m = config_setting_get_elem(root, (unsigned)i);
    const char *name = config_setting_name(m);
    int known = name && (strcmp(name, "plugins") == 0 || strata_config_core_params(name));
    if (!known) {
      strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                         "unknown top-level key '%s' (expected engine, server, router or "
                         "plugins)",
                         name ? name : "?");
      continue;
    }
    if (config_setting_type(m) != CONFIG_TYPE_GROUP)
      strata_errlist_add(errs, setting_file(cfg, m), setting_line(m),
                         "'%s' must be a group { ... }, not %s", name,
                         lc_type_name(config_setting_type(m)));
  }
  for (size_t g = 0; g < STRATA_ARRAY_LEN(core_groups); g++) {
    config_setting_t *s = config_lookup(&cfg->lc, core_groups[g].name);
    if (s && config_setting_type(s) != CONFIG_TYPE_GROUP) {
      if (strchr(core_groups[g].name, '.'))
        strata_errlist_add(errs, setting_file(cfg, s), setting_line(s),
                           "'%s' must be a group { ... }, not %s", core_groups[g].name,
                           lc_type_name(config_setting_type(s)));
      continue;
    }
    if (validate_params(cfg, s, core_groups[g].name, core_groups[g].params, errs) == 0)
      new_node(cfg, core_groups[g].params, s, core_groups[g].name);
  }
  config_setting_t *engine = config_setting_get_member(root, "engine");
  if (engine && config_setting_type(engine) == CONFIG_TYPE_GROUP) {
    check_plugin_ref(cfg, engine, "backend", STRATA_PLUGIN_BACKEND, "auto", reg, errs);
    check_plugin_ref(cfg, engine, "quant", STRATA_PLUGIN_QUANT, NULL, reg, errs);
    check_plugin_ref(cfg, engine, "scheduler", STRATA_PLUGIN_SCHEDULER, NULL, reg, errs);
    check_plugin_list(cfg, engine, "logits", STRATA_PLUGIN_LOGITS, reg, errs);
  }
  config_setting_t *kvd = config_lookup(&cfg->lc, "engine.kv_cache.dtype");
  if (kvd && config_setting_type(kvd) == CONFIG_TYPE_STRING) {
    const char *v = config_setting_get_string(kvd);
    if (strcmp(v, "f32") != 0 && strcmp(v, "f16") != 0)
      strata_errlist_add(errs, setting_file(cfg, kvd), setting_line(kvd),
                         "engine.kv_cache.dtype: '%.40s' is not f32 or f16", v);
  }
  /* The model file is checked for readability, not loaded. */
  config_setting_t *model = engine && config_setting_type(engine) == CONFIG_TYPE_GROUP
                                ? config_setting_get_member(engine, "model")
                                : NULL;
  if (model && config_setting_type(model) == CONFIG_TYPE_STRING && !cfg->model_overridden) {
    char *dir = strata_dirname(setting_file(cfg, model));
    char *mp = dir ? strata_path_join(dir, config_setting_get_string(model)) : NULL;
    if (mp && access(mp, R_OK) != 0)
      strata_errlist_add(errs, setting_file(cfg, model), setting_line(model),
                         "engine.model: cannot read '%.200s%s': %s", mp, strlen(mp) > 200 ? "..." : "",
                         strerror(errno));
    free(dir);
    free(mp);
  }
  config_setting_t *router = config_setting_get_member(root, "router");
  if (router && config_setting_type(router) == CONFIG_TYPE_GROUP)
    check_plugin_ref(cfg, router, "policy", STRATA_PLUGIN_ROUTER, NULL, reg, errs);
  config_setting_t *pl = config_setting_get_member(root, "plugins");
  if (pl && config_setting_type(pl) == CONFIG_TYPE_GROUP)
    validate_plugins(cfg, pl, reg, errs);
  return (int)(errs->n - before);
}

char **strata_config_plugin_dirs(const strata_config_t *cfg, size_t *n_out) {
  *n_out = 0;
  config_setting_t *s = config_lookup(&cfg->lc, "plugins.path");
  if (!s) return NULL;
  int t = config_setting_type(s);
  int n = t == CONFIG_TYPE_STRING ? 1
          : (t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) ? config_setting_length(s)
                                                              : 0;
  char **v = strata_calloc((size_t)n + 1, sizeof *v);
  if (!v) return NULL;
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    config_setting_t *e = t == CONFIG_TYPE_STRING ? s : config_setting_get_elem(s, (unsigned)i);
    if (config_setting_type(e) != CONFIG_TYPE_STRING) continue;
    char *dir = strata_dirname(setting_file(cfg, e));
    v[k] = dir ? strata_path_join(dir, config_setting_get_string(e)) : NULL;
    free(dir);
    if (v[k]) k++;
  }
  *n_out = k;
  return v;
}

const strata_config_node_t *strata_config_group(strata_config_t *cfg, const char *group) {
  for (size_t i = 0; i < cfg->n_nodes; i++)
    if (strcmp(cfg->nodes[i]->name, group) == 0) return cfg->nodes[i];
  const struct strata_param *params = strata_config_core_params(group);
  if (!params) return NULL;
  config_setting_t *s = config_lookup(&cfg->lc, group);
  if (s && config_setting_type(s) != CONFIG_TYPE_GROUP) s = NULL;
  return new_node(cfg, params, s, group);
}

const strata_config_node_t *strata_config_plugin_node(strata_config_t *cfg,
                                                      const struct strata_plugin *p) {
  char where[256];
  snprintf(where, sizeof where, "plugins.%s.%s", strata_plugin_kind_name(p->desc->kind),
           p->desc->name);
  for (size_t i = 0; cfg && i < cfg->n_nodes; i++)
    if (strcmp(cfg->nodes[i]->name, where) == 0) return cfg->nodes[i];
  config_setting_t *s = cfg ? config_lookup(&cfg->lc, where) : NULL;
  if (s && config_setting_type(s) != CONFIG_TYPE_GROUP) s = NULL;
  if (!cfg) {
    /* Defaults only: kept for the process lifetime in a small static list. */
    static struct strata_config_node *defaults[64];
    static size_t n_defaults;
    for (size_t i = 0; i < n_defaults; i++)
      if (strcmp(defaults[i]->name, where) == 0) return defaults[i];
    struct strata_config_node *n = new_node(NULL, p->desc->params, NULL, where);
    if (n && n_defaults < STRATA_ARRAY_LEN(defaults)) defaults[n_defaults++] = n;
    return n;
  }
  return new_node(cfg, p->desc->params, s, where);
}

const strata_config_node_t *strata_config_defaults(const char *group) {
  static struct strata_config_node nodes[STRATA_ARRAY_LEN(core_groups)];
  for (size_t i = 0; i < STRATA_ARRAY_LEN(core_groups); i++) {
    if (strcmp(core_groups[i].name, group) != 0) continue;
    nodes[i].params = core_groups[i].params;
    nodes[i].name = (char *)core_groups[i].name;
    return &nodes[i];
  }
  return NULL;
}

/* ---- getters ------------------------------------------------------------------------- */

static const struct strata_param *node_param(const strata_config_node_t *n,
                                             const char *key, const config_setting_t **s) {
  const struct strata_param *p = n ? find_param(n->params, key) : NULL;
  if (!p) {
    strata_log(STRATA_LOG_ERROR, "config", "%s: key '%s' is not in the table (a bug)",
               n ? n->name : "?", key);
    *s = NULL;
    return NULL;
  }
  *s = n->setting ? config_setting_get_member(n->setting, key) : NULL;
  return p;
}

int64_t strata_config_int(const strata_config_node_t *n, const char *key) {
  const config_setting_t *s;
  const struct strata_param *p = node_param(n, key, &s);
  if (!p) return 0;
  if (s) {
    if (p->type == STRATA_PARAM_SIZE && config_setting_type(s) == CONFIG_TYPE_STRING) {
      uint64_t v = 0;
      strata_parse_size(config_setting_get_string(s), &v);
      return v > INT64_MAX ? INT64_MAX : (int64_t)v;
    }
    if (config_setting_type(s) == CONFIG_TYPE_FLOAT) return (int64_t)config_setting_get_float(s);
    return (int64_t)config_setting_get_int64(s);
  }
  if (!p->defval) return 0;
  if (p->type == STRATA_PARAM_SIZE) {
    uint64_t v = 0;
    strata_parse_size(p->defval, &v);
    return v > INT64_MAX ? INT64_MAX : (int64_t)v;
  }
  return strtoll(p->defval, NULL, 10);
}

double strata_config_float(const strata_config_node_t *n, const char *key) {
  const config_setting_t *s;
  const struct strata_param *p = node_param(n, key, &s);
  if (!p) return 0;
  if (s)
    return config_setting_type(s) == CONFIG_TYPE_FLOAT ? config_setting_get_float(s)
                                                       : (double)config_setting_get_int64(s);
  return p->defval ? strtod(p->defval, NULL) : 0;
}

int strata_config_bool(const strata_config_node_t *n, const char *key) {
  const config_setting_t *s;
  const struct strata_param *p = node_param(n, key, &s);
  if (!p) return 0;
  if (s) return config_setting_get_bool(s) != 0;
  return p->defval && strcmp(p->defval, "true") == 0;
}

const char *strata_config_string(const strata_config_node_t *n, const char *key) {
  const config_setting_t *s;
  const struct strata_param *p = node_param(n, key, &s);
  if (!p) return NULL;
  if (s) return config_setting_get_string(s);
  return p->defval;
}

size_t strata_config_strlist(const strata_config_node_t *n, const char *key, const char **out,
                             size_t cap) {
  const config_setting_t *s;
  const struct strata_param *p = node_param(n, key, &s);
  if (!p || p->type != STRATA_PARAM_STRLIST) return 0;
  size_t k = 0;
  if (s) {
    int len = config_setting_length(s);
    for (int i = 0; i < len; i++) {
      const char *v = config_setting_get_string_elem(s, i);
      if (!v) continue;
      if (k < cap) out[k] = v;
      k++;
    }
    return k;
  }
  /* The default "a,b,c": pieces of a per-table static copy, split once. */
  static struct {
    const struct strata_param *p;
    char buf[512];
    const char *items[32];
    size_t n;
  } cache[8];
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&mu);
  size_t c = 0;
  while (c < STRATA_ARRAY_LEN(cache) && cache[c].p && cache[c].p != p) c++;
  if (c == STRATA_ARRAY_LEN(cache)) {
    pthread_mutex_unlock(&mu);
    strata_log(STRATA_LOG_ERROR, "config", "too many list defaults (a bug)");
    return 0;
  }
  if (!cache[c].p) {
    cache[c].p = p;
    snprintf(cache[c].buf, sizeof cache[c].buf, "%s", p->defval ? p->defval : "");
    char *save = NULL;
    for (char *t = strtok_r(cache[c].buf, ",", &save); t && cache[c].n < 32;
         t = strtok_r(NULL, ",", &save))
      cache[c].items[cache[c].n++] = t;
  }
  pthread_mutex_unlock(&mu);
  for (size_t i = 0; i < cache[c].n; i++)
    if (i < cap) out[i] = cache[c].items[i];
  return cache[c].n;
}

int strata_config_is_set(const strata_config_node_t *n, const char *key) {
  const config_setting_t *s;
  return node_param(n, key, &s) && s != NULL;
}

char *strata_config_path_value(const strata_config_node_t *n, const char *key) {
  const config_setting_t *s;
  const struct strata_param *p = node_param(n, key, &s);
  if (!p) return NULL;
  if (!s) return p->defval ? strata_strdup(p->defval) : NULL;
  char *dir = strata_dirname(setting_file(n->cfg, s));
  char *r = dir ? strata_path_join(dir, config_setting_get_string(s)) : NULL;
  free(dir);
  return r;
}

void strata_config_where(const strata_config_node_t *n, const char *key, char *buf,
                         size_t cap) {
  const config_setting_t *s = NULL;
  if (n && n->setting) s = key ? config_setting_get_member(n->setting, key) : NULL;
  if (!s && n) s = n->setting;
  if (!n || !n->cfg) {
    snprintf(buf, cap, "<defaults>");
    return;
  }
  snprintf(buf, cap, "%s:%d", setting_file(n->cfg, s), setting_line(s));
}
