/* strata serve: the OpenAI-compatible server over the serving engine. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "conf.h"
#include "engine.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "util.h"

static void serve_usage(FILE *f) {
  fprintf(f,
          "usage: strata serve [--config FILE] [--model FILE] [--host ADDR] "
          "[--port N]\n"
          "         [--backend NAME] [--served-model-name NAME] [--threads N]\n"
          "Serves the OpenAI-compatible API (docs/http-api.md) until "
          "SIGINT/SIGTERM.\n"
          "Flags override the config; without --config the embedded default\n"
          "conf/strata.conf is used. --port 0 picks a free port. Prints\n"
          "\"listening on http://HOST:PORT\" to stderr once ready.\n");
}

int strata_cmd_serve(int argc, char **argv) {
  struct strata_runtime_opts ro = {0};
  const char *host = NULL, *served = NULL;
  long port = -1, v;
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'},
      {"model", required_argument, 0, 'm'},
      {"host", required_argument, 0, 'H'},
      {"port", required_argument, 0, 'p'},
      {"backend", required_argument, 0, 'b'},
      {"served-model-name", required_argument, 0, 'S'},
      {"threads", required_argument, 0, 'T'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "c:m:p:b:T:h", opts, NULL)) != -1) {
    switch (c) {
    case 'c':
      ro.config_path = optarg;
      break;
    case 'm':
      ro.model_path = optarg;
      break;
    case 'H':
      if (!*optarg) {
        fprintf(stderr, "strata: serve: --host must not be empty\n");
        return 2;
      }
      host = optarg;
      break;
    case 'p':
      if (strata_cli_parse_long("serve", "--port", optarg, 0, 65535, &port)) return 2;
      break;
    case 'b':
      ro.backend = optarg;
      break;
    case 'S':
      if (!*optarg) {
        fprintf(stderr,
                "strata: serve: --served-model-name must not be empty\n");
        return 2;
      }
      served = optarg;
      break;
    case 'T':
      if (strata_cli_parse_long("serve", "--threads", optarg, 1, 1024, &v)) return 2;
      ro.threads = (int)v;
      break;
    case 'h':
      serve_usage(stdout);
      return 0;
    default:
      serve_usage(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "strata: serve: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  char *def_conf = NULL;
  if (!ro.config_path) ro.config_path = def_conf = strata_cli_default_config();

  struct strata_runtime rt;
  int rc = strata_cli_engine_model_opts(&ro, "serve", NULL);
  if (rc == 0) rc = strata_runtime_open(&rt, &ro);
  if (rc != 0) {
    free(def_conf);
    return rc;
  }
  struct strata_engine_config ec;
  strata_engine_config_from(rt.cfg, &ec);
  const strata_config_node_t *srvn = rt.cfg
                                         ? strata_config_group(rt.cfg, "server")
                                         : strata_config_defaults("server");
  const char *key = strata_config_string(srvn, "api_key");
  const char *env_key = getenv("STRATA_API_KEY");
  char *tmpl = strata_config_is_set(srvn, "chat_template")
                   ? strata_config_path_value(srvn, "chat_template")
                   : NULL;
  /* A family name is not a path: keep the name itself when no such file. */
  if (tmpl && access(tmpl, R_OK) != 0) {
    free(tmpl);
    tmpl = strata_strdup(strata_config_string(srvn, "chat_template"));
  }
  struct strata_server_opts so = {
      .host = host ? host : strata_config_string(srvn, "host"),
      .port = port >= 0 ? (int)port : (int)strata_config_int(srvn, "port"),
      .api_key = env_key && *env_key ? env_key : key,
      .served_model_name =
          served ? served : strata_config_string(srvn, "served_model_name"),
      .max_body_bytes = (size_t)strata_config_int(srvn, "max_body_bytes"),
      .max_metadata_bytes =
          (size_t)strata_config_int(srvn, "max_metadata_bytes"),
      .max_n = (int32_t)strata_config_int(srvn, "max_n"),
      .max_stop = (int32_t)strata_config_int(srvn, "max_stop"),
      .max_header_bytes = (size_t)strata_config_int(srvn, "max_header_bytes"),
      .max_connections = (size_t)strata_config_int(srvn, "max_connections"),
      .chat_template = tmpl,
      .request_log = strata_config_bool(srvn, "request_log"),
      .idle_timeout = (int)strata_config_int(srvn, "idle_timeout"),
  };
  if (!so.host) so.host = "127.0.0.1";
  strata_engine_t *eng = NULL;
  char err[1024];
  if (!strata_may_listen("serve", "serve", "server", so.host, so.api_key,
                         strata_config_bool(srvn, "allow_no_api_key"))) {
    rc = 1;
  } else if (strata_engine_start(&rt, &ec, &eng, err, sizeof err) != 0) {
    fprintf(stderr, "strata: serve: %s\n", err);
    rc = 1;
  } else {
    rc = strata_server_run(&rt, eng, &so);
    strata_engine_stop(eng);
  }
  free(tmpl);
  strata_runtime_close(&rt);
  free(def_conf);
  return rc;
}
