/* strata route: the OpenAI-compatible router over engine instances. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <strata/router.h>

#include "cli.h"
#include "conf.h"
#include "log.h"
#include "plugin_loader.h"
#include "route.h"
#include "util.h"

static void route_usage(FILE *f) {
  fprintf(f,
          "usage: strata route [--config FILE] [--host ADDR] [--port N] [--policy NAME]\n"
          "         [--backend URL]... [--tokenizer GGUF]\n"
          "Proxies the OpenAI-compatible API to engine instances (`strata serve`),\n"
          "choosing one per request with a router plugin (docs/router.md), until\n"
          "SIGINT/SIGTERM. Flags override the config's router group; --backend may be\n"
          "given several times and replaces router.backends. --port 0 picks a free\n"
          "port. --tokenizer sets router.tokenizer (kv-aware routing hashes prompts\n"
          "with the model's tokenizer). Prints \"listening on http://HOST:PORT\" to\n"
          "stderr once ready.\n");
}



int strata_cmd_route(int argc, char **argv) {
  const char *config_path = NULL, *host = NULL, *policy = NULL, *tokenizer = NULL;
  const char *flag_backends[ROUTE_MAX_BACKENDS];
  size_t n_flag = 0;
  long port = -1;
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"host", required_argument, 0, 'H'},
                                       {"port", required_argument, 0, 'p'},
                                       {"policy", required_argument, 0, 'P'},
                                       {"backend", required_argument, 0, 'b'},
                                       {"tokenizer", required_argument, 0, 'T'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "c:p:b:h", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config_path = optarg; break;
    case 'H':
      if (!*optarg) {
        fprintf(stderr, "strata: route: --host must not be empty\n");
        return 2;
      }
      host = optarg;
      break;
    case 'p':
      if (strata_cli_parse_long("route", "--port", optarg, 0, 65535, &port)) return 2;
      break;
    case 'P': policy = optarg; break;
    case 'T': tokenizer = optarg; break;
    case 'b':
      if (n_flag == ROUTE_MAX_BACKENDS) {
        fprintf(stderr, "strata: route: more than %d --backend\n", ROUTE_MAX_BACKENDS);
        return 2;
      }
      flag_backends[n_flag++] = optarg;
      break;
    case 'h': route_usage(stdout); return 0;
    default: route_usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "strata: route: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  struct strata_errlist errs = {0};
  strata_config_t *cfg = NULL;
  char **extra = NULL;
  size_t n_extra = 0, n_dirs = 0;
  struct strata_registry reg;
  memset(&reg, 0, sizeof reg);
  int rc = 2;
  if (config_path) {
    cfg = strata_config_load(config_path, &errs);
    if (!cfg) goto errors;
    extra = strata_config_plugin_dirs(cfg, &n_extra);
  }
  char **dirs = strata_plugin_default_dirs((const char *const *)extra, n_extra, &n_dirs);
  strata_registry_scan(&reg, (const char *const *)dirs, n_dirs);
  strata_free_strv(dirs, n_dirs);
  strata_free_strv(extra, n_extra);
  strata_host_set_registry(&reg);
  if (cfg && strata_config_validate(cfg, &reg, &errs) != 0) goto errors;
  const strata_config_node_t *rn = cfg ? strata_config_group(cfg, "router")
                                       : strata_config_defaults("router");
  const strata_config_node_t *wn = cfg ? strata_config_group(cfg, "router.workflows")
                                       : strata_config_defaults("router.workflows");
  if (!policy) policy = strata_config_string(rn, "policy");
  struct strata_plugin *p = NULL;
  for (size_t i = 0; i < reg.n_plugins; i++)
    if (reg.plugins[i].desc->kind == STRATA_PLUGIN_ROUTER &&
        strcmp(reg.plugins[i].desc->name, policy) == 0)
      p = &reg.plugins[i];
  if (!p) {
    fprintf(stderr, "strata: route: unknown policy '%s' (available:", policy);
    for (size_t i = 0; i < reg.n_plugins; i++)
      if (reg.plugins[i].desc->kind == STRATA_PLUGIN_ROUTER)
        fprintf(stderr, " %s", reg.plugins[i].desc->name);
    fprintf(stderr, ")\n");
    goto out;
  }
  char err[512];
  if (strata_plugin_init(p, cfg, err, sizeof err) != 0) {
    fprintf(stderr, "strata: route: %s\n", err);
    rc = 1;
    goto out;
  }
  const char *cfg_backends[ROUTE_MAX_BACKENDS];
  size_t n_cfg = strata_config_strlist(rn, "backends", cfg_backends, ROUTE_MAX_BACKENDS);
  if (n_cfg > ROUTE_MAX_BACKENDS) n_cfg = ROUTE_MAX_BACKENDS;
  const char *dns_servers[64];
  size_t n_dns = strata_config_strlist(rn, "dns_servers", dns_servers, 64);
  if (n_dns > 64) n_dns = 64;
  const char *key = strata_config_string(rn, "api_key"), *env_key = getenv("STRATA_API_KEY");
  struct strata_route_opts o = {
      .host = host ? host : strata_config_string(rn, "host"),
      .port = port >= 0 ? (int)port : (int)strata_config_int(rn, "port"),
      .api_key = env_key && *env_key ? env_key : key,
      .max_body_bytes = (size_t)strata_config_int(rn, "max_body_bytes"),
      .max_header_bytes = (size_t)strata_config_int(rn, "max_header_bytes"),
      .max_connections = (size_t)strata_config_int(rn, "max_connections"),
      .backends = n_flag ? flag_backends : cfg_backends,
      .n_backends = n_flag ? n_flag : n_cfg,
      .dns_interval = strata_config_float(rn, "dns_interval"),
      .dns_servers = dns_servers,
      .n_dns_servers = n_dns,
      .health_interval = strata_config_float(rn, "health_interval"),
      .health_timeout = strata_config_float(rn, "health_timeout"),
      .eject_after = (int)strata_config_int(rn, "eject_after"),
      .readmit_after = (int)strata_config_int(rn, "readmit_after"),
      .max_retries = (int)strata_config_int(rn, "max_retries"),
      .request_timeout = strata_config_float(rn, "request_timeout"),
      .idle_timeout = (int)strata_config_int(rn, "idle_timeout"),
      .max_pending_bytes = (size_t)strata_config_int(rn, "max_pending_bytes"),
      .request_log = strata_config_bool(rn, "request_log"),
      .cache_events = strata_config_bool(rn, "cache_events"),
      .cache_probe_timeout = strata_config_float(rn, "cache_probe_timeout"),
      .wf_max_workflows = (int)strata_config_int(wn, "max_workflows"),
      .wf_max_agents = (int)strata_config_int(wn, "max_agents"),
      .wf_max_steps = (int)strata_config_int(wn, "max_steps"),
      .wf_max_messages = (int)strata_config_int(wn, "max_messages"),
      .wf_max_message_bytes = (size_t)strata_config_int(wn, "max_message_bytes"),
      .wf_max_waiters = (int)strata_config_int(wn, "max_waiters"),
      .wf_max_total_bytes = (size_t)strata_config_int(wn, "max_total_bytes"),
      .wf_idle_ttl = strata_config_float(wn, "idle_ttl"),
      .wf_max_wait = strata_config_float(wn, "max_wait"),
      .wf_cache_hints = strata_config_bool(wn, "cache_hints"),
      .wf_hint_ttl = strata_config_float(wn, "hint_ttl"),
      .wf_keep_agents = strata_config_bool(wn, "keep_agents"),
  };
  if (!o.host) o.host = "127.0.0.1";
  if (!strata_may_listen("route", "route on", "router", o.host, o.api_key,
                         strata_config_bool(rn, "allow_no_api_key"))) {
    rc = 1;
    goto out;
  }
  char *tok_path = tokenizer ? strata_strdup(tokenizer) : strata_config_path_value(rn, "tokenizer");
  o.tokenizer = tok_path;
  rc = strata_route_run(p, strata_config_plugin_node(cfg, p), &o);
  free(tok_path);
  goto out;
errors:
  for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "%s\n", errs.lines[i]);
out:
  strata_errlist_free(&errs);
  strata_registry_free(&reg);
  if (cfg) strata_config_free(cfg);
  return rc;
}
