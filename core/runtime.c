#include "config.h"

#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <strata/backend.h>

#include "log.h"
#include "util.h"

static int pick_backend(struct strata_runtime *rt, const char *name, int threads, char *err,
                        size_t errlen) {
  const struct strata_plugin *best = NULL;
  int best_dev = -1, best_score = 0;
  struct strata_backend_device best_info = {0};
  char unusable[256] = ""; /* why the last unusable device of the backend named is */
  for (size_t i = 0; i < rt->reg.n_plugins; i++) {
    struct strata_plugin *p = &rt->reg.plugins[i];
    if (p->desc->kind != STRATA_PLUGIN_BACKEND) continue;
    if (strcmp(name, "auto") != 0 && strcmp(name, p->desc->name) != 0) continue;
    char ierr[512];
    if (strata_plugin_init(p, rt->cfg, ierr, sizeof ierr) != 0) {
      strata_log(STRATA_LOG_WARN, "backend", "%s", ierr);
      continue;
    }
    int n = p->desc->vt.backend->n_devices();
    for (int d = 0; d < n; d++) {
      struct strata_backend_device info = {.size = sizeof info};
      if (p->desc->vt.backend->device_info(d, &info) != 0) continue;
      strata_log(STRATA_LOG_INFO, "backend", "%s device %d (%s): score %d: %s", p->desc->name, d,
                 info.name, info.score, info.why);
      if (info.score <= 0) snprintf(unusable, sizeof unusable, "%s", info.why);
      if (info.score > best_score) {
        best = p;
        best_dev = d;
        best_score = info.score;
        best_info = info;
      }
    }
  }
  if (!best) {
    if (strcmp(name, "auto") == 0) return strata_errf(err, errlen, "no usable backend plugin found (see `strata plugins`)");
    if (!strata_registry_find(&rt->reg, STRATA_PLUGIN_BACKEND, name))
      return strata_errf(err, errlen, "unknown backend '%s' (see `strata plugins`)", name);
    return strata_errf(err, errlen, "backend '%s' has no usable device here%s%s", name,
                       *unusable ? ": " : "", unusable);
  }
  strata_log(STRATA_LOG_INFO, "backend", "using %s device %d (%s): %s", best->desc->name, best_dev,
             best_info.name, best_info.why);
  struct strata_backend_params bp = {.size = sizeof bp, .threads = threads};
  char oerr[512];
  if (best->desc->vt.backend->open(best_dev, &bp, &rt->bk, oerr, sizeof oerr) != 0)
    return strata_errf(err, errlen, "backend %s: %s", best->desc->name, oerr);
  rt->backend_plugin = best;
  rt->be = best->desc->vt.backend;
  rt->device = best_info;
  return 0;
}

int strata_runtime_open(struct strata_runtime *rt, const struct strata_runtime_opts *o) {
  memset(rt, 0, sizeof *rt);
  struct strata_errlist errs = {0};
  char **extra = NULL;
  size_t n_extra = 0;
  if (o->config_path) {
    rt->cfg = strata_config_load(o->config_path, &errs);
    if (!rt->cfg) goto config_error;
    extra = strata_config_plugin_dirs(rt->cfg, &n_extra);
  }
  size_t n_dirs;
  char **dirs = strata_plugin_default_dirs((const char *const *)extra, n_extra, &n_dirs);
  strata_registry_scan(&rt->reg, (const char *const *)dirs, n_dirs);
  strata_free_strv(dirs, n_dirs);
  strata_free_strv(extra, n_extra);
  strata_host_set_registry(&rt->reg);
  for (size_t i = 0; i < rt->reg.n_rejects; i++)
    strata_log(STRATA_LOG_INFO, "plugins", "rejected %s", rt->reg.rejects[i].reason);
  if (rt->cfg && o->model_path) strata_config_override_model(rt->cfg);
  if (rt->cfg && strata_config_validate(rt->cfg, &rt->reg, &errs) != 0) goto config_error;

  const strata_config_node_t *eng = rt->cfg ? strata_config_group(rt->cfg, "engine")
                                            : strata_config_defaults("engine");
  rt->model_path = o->model_path ? strata_strdup(o->model_path) : strata_config_path_value(eng, "model");
  if (!rt->model_path) {
    fprintf(stderr, "strata: no model: give --model FILE or set engine.model in the config\n");
    strata_runtime_close(rt);
    return 2;
  }
  const char *backend = o->backend ? o->backend : strata_config_string(eng, "backend");
  const char *quant = o->quant ? o->quant : strata_config_string(eng, "quant");
  if (quant && !strata_registry_find(&rt->reg, STRATA_PLUGIN_QUANT, quant)) {
    fprintf(stderr, "strata: unknown quant '%s' (available:", quant);
    for (size_t i = 0; i < rt->reg.n_plugins; i++)
      if (rt->reg.plugins[i].desc->kind == STRATA_PLUGIN_QUANT)
        fprintf(stderr, " %s", rt->reg.plugins[i].desc->name);
    fprintf(stderr, ")\n");
    strata_runtime_close(rt);
    return 2;
  }
  /* Quant plugins are stateless but still get their init() call. */
  char err[1024];
  for (size_t i = 0; i < rt->reg.n_plugins; i++)
    if (rt->reg.plugins[i].desc->kind == STRATA_PLUGIN_QUANT &&
        strata_plugin_init(&rt->reg.plugins[i], rt->cfg, err, sizeof err) != 0) {
      fprintf(stderr, "strata: %s\n", err);
      strata_runtime_close(rt);
      return 1;
    }
  if (pick_backend(rt, backend, o->threads, err, sizeof err) != 0) {
    fprintf(stderr, "strata: %s\n", err);
    strata_runtime_close(rt);
    return 1;
  }
  struct strata_model_opts mo = o->model;
  mo.quant = quant;
  mo.context_length = o->context_length > 0 ? o->context_length : (int32_t)strata_config_int(eng, "context_length");
  /* the memory estimate, before any weight is read */
  uint64_t limit = o->memory_limit ? o->memory_limit : (uint64_t)strata_config_int(eng, "memory_limit");
  const char *from = o->memory_limit ? "--memory-limit" : "engine.memory_limit";
  if (!limit) {
    limit = rt->device.memory_free;
    from = "the backend's free memory";
  }
  if (strata_estimate(rt->model_path, &mo, &rt->reg, limit, from, &rt->est, err, sizeof err) != 0) {
    fprintf(stderr, "strata: %s\n", err);
    strata_runtime_close(rt);
    return 1;
  }
  if (o->estimate_only) return 0;
  if (!strata_estimate_fits(&rt->est)) {
    char msg[2048];
    strata_estimate_refusal(&rt->est, msg, sizeof msg);
    fprintf(stderr, "strata: %s\n", msg);
    strata_runtime_close(rt);
    return 1;
  }
  {
    char t[32], a[32];
    strata_log(STRATA_LOG_INFO, "memory",
               "estimated %s of %s available (%s); the KV cache holds %lld full-length "
               "(%d-token) requests at once",
               strata_fmt_bytes(rt->est.total, t, sizeof t),
               strata_fmt_bytes(rt->est.available, a, sizeof a), rt->est.available_from,
               (long long)rt->est.full_requests, rt->est.plan.ctx_len);
  }
  if (strata_model_load(rt->model_path, &mo, &rt->reg, rt->be, rt->bk, &rt->model, err, sizeof err) != 0) {
    fprintf(stderr, "strata: %s\n", err);
    strata_runtime_close(rt);
    return 1;
  }
  if (strata_tokenizer_load(rt->model->gguf, &rt->tok, err, sizeof err) != 0) {
    fprintf(stderr, "strata: %s: %s\n", rt->model_path, err);
    strata_runtime_close(rt);
    return 1;
  }
  return 0;

config_error:
  for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "%s\n", errs.lines[i]);
  strata_errlist_free(&errs);
  strata_runtime_close(rt);
  return 2;
}

void strata_runtime_close(struct strata_runtime *rt) {
  strata_tokenizer_free(rt->tok);
  strata_model_free(rt->model);
  if (rt->bk) rt->be->close(rt->bk);
  strata_registry_free(&rt->reg);
  strata_config_free(rt->cfg);
  free(rt->model_path);
  memset(rt, 0, sizeof *rt);
}
