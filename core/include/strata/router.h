/* Router plugins (kind STRATA_PLUGIN_ROUTER): which engine instance serves a
 * request that `strata route` received.
 *
 * The plugin only decides; the host does everything else: it keeps the
 * list of instances (static or discovered), checks their health, scrapes
 * their load from /metrics, proxies the request, and retries it elsewhere
 * when the chosen instance fails before the first byte reached the client.
 * route() sees only the instances eligible now (healthy, and not already
 * tried for this request), so a policy never has to filter them.
 *
 * Threads: every call runs on the router's one event thread, one at a
 * time per state; create/destroy on the thread that starts/stops the
 * router. route() must not block: it runs once per request on the path of
 * every client. */
#ifndef STRATA_ROUTER_H
#define STRATA_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include <strata/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One engine instance as the router sees it now (read-only). */
struct strata_route_backend {
  int32_t id;           /* stable for as long as the instance is listed */
  const char *url;      /* "http://host:port" */
  int32_t inflight;     /* requests this router has open on it now */
  /* From the instance's /metrics (vLLM names: num_requests_running,
   * num_requests_waiting, kv_cache_usage_perc), -1 where unknown (not
   * scraped yet, or the instance does not export it). */
  int32_t running, waiting;
  double kv_usage;      /* 0..1 */
  uint64_t routed;      /* requests routed to it so far */
};

/* The request being routed (read-only, valid during the call). */
struct strata_route_request {
  uint64_t id;              /* the router's request number */
  const char *path;         /* "/v1/completions", "/v1/chat/completions", ... */
  const strata_json_t *body; /* the parsed JSON body; NULL for a GET */
  /* A request header (case-insensitive name), or NULL. */
  const char *(*header)(const struct strata_route_request *r, const char *name);
  void *host_data; /* the host's, for header() */
  /* For a policy whose vtable has STRATA_ROUTE_NEEDS_CACHE (else NULL):
   * how many leading prompt tokens instance id holds in its prefix cache,
   * or -1 where unknown. Exact, from the host's index of the instance's
   * GET /v1/cache/events stream when that is live and router.tokenizer is
   * set; else what the instance answered to POST /v1/cache/stats for this
   * prompt (asked of every eligible instance before route(), within
   * router.cache_probe_timeout). */
  int32_t (*cached_tokens)(const struct strata_route_request *r, int32_t id);
  int32_t prompt_tokens; /* the prompt's length in tokens; -1 unknown */
};

/* strata_router_vtable.needs */
#define STRATA_ROUTE_NEEDS_CACHE 1u /* fill strata_route_request.cached_tokens */

/* What route() decides. */
struct strata_route_choice {
  int32_t id;         /* a strata_route_backend.id from the list given */
  const char *reason; /* a static string naming why (counted in /metrics by
                         policy and reason): "round_robin", "least_loaded",
                         "session_hit", "prefix_match", ... */
};

struct strata_router_vtable {
  uint32_t size; /* sizeof(struct strata_router_vtable) */

  /* One routing state per router, on the plugin's validated config subtree
   * (plugins.router.<name>). Returns 0, or -1 with a message in err. */
  int (*create)(const strata_config_node_t *cfg, void **state, char *err, size_t errlen);
  void (*destroy)(void *state);

  /* Chooses one of the n >= 1 eligible instances b[0..n) for req. Returns
   * 0 with out filled, or -1 to refuse the request (the client gets 503
   * with out->reason as the message, if set). */
  int (*route)(void *state, const struct strata_route_request *req,
               const struct strata_route_backend *b, size_t n, struct strata_route_choice *out);

  /* (optional) The end of a routed attempt: status is the instance's HTTP
   * status, or 0 when the attempt failed without one (connect error, reset,
   * timeout); seconds from dispatch to the end. */
  void (*on_done)(void *state, const struct strata_route_request *req, int32_t id, int status,
                  double seconds);

  /* (optional, 0) STRATA_ROUTE_NEEDS_* bits: what the host must work out
   * before route(). */
  uint32_t needs;

  /* (optional; read only when size covers it) A workflow the router tracks
   * (router.workflows, docs/agents.md) ended: deleted, or idle past its
   * idle_ttl. id is its id (len bytes, not NUL-terminated), as requests
   * name it in X-Workflow-Id or metadata.workflow_id. A policy that binds
   * workflows to instances drops the binding, and stops counting the
   * workflow as active on its instance. */
  void (*on_workflow_end)(void *state, const char *id, size_t len);
};

#ifdef __cplusplus
}
#endif

#endif
