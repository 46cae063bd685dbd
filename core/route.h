/* The router host of `strata route`: an OpenAI-compatible HTTP front on
 * libevent that proxies each request to one of several engine instances,
 * chosen by a router plugin (strata/router.h).
 *
 * One libevent thread does everything: it accepts clients, keeps a pool of
 * keep-alive connections per instance, checks each instance's /health and
 * scrapes its /metrics on a timer, and passes answers through as they
 * arrive (an SSE stream chunk by chunk; reading from the instance pauses
 * while the client's socket has more than a bound unsent). A request is
 * retried on another instance when the chosen one fails before any byte
 * reached the client (connect error, reset, timeout, 5xx); after that the
 * client gets a clean end instead (an SSE error event on a stream). */
#ifndef STRATA_ROUTE_H
#define STRATA_ROUTE_H

#include <stddef.h>

#include <strata/router.h>

#include "conf.h"
#include "plugin_loader.h"

/* Instances a router holds at most, static and discovered together. */
#define ROUTE_MAX_BACKENDS 1024

struct strata_route_opts {
  const char *host;          /* listen address */
  int port;                  /* 0: any free port (printed) */
  const char *api_key;       /* NULL or "": none */
  size_t max_body_bytes;     /* larger bodies get 413 */
  size_t max_header_bytes;   /* larger request headers get 400 (0: 64 KiB) */
  size_t max_connections;    /* open client connections (0: 1024) */
  /* "http://HOST:PORT" each, or "dns://NAME:PORT": every address NAME
   * resolves to is an instance on PORT, re-resolved every dns_interval
   * seconds (a Kubernetes headless Service lists its pods so) */
  const char *const *backends;
  size_t n_backends;
  double dns_interval;
  const char *const *dns_servers; /* "IP[:PORT]" each; none: /etc/resolv.conf */
  size_t n_dns_servers;
  double health_interval;    /* seconds between /health and /metrics checks */
  double health_timeout;     /* seconds a check may take */
  int eject_after;           /* consecutive failures that eject an instance */
  int readmit_after;         /* consecutive passed checks that readmit it */
  int max_retries;           /* further instances tried before the first byte */
  double request_timeout;    /* seconds an instance may stay silent mid-answer */
  int idle_timeout;          /* seconds a client connection may idle */
  size_t max_pending_bytes;  /* unsent bytes to a client before reading pauses */
  int request_log;           /* one stderr line per finished request */
  /* For policies with STRATA_ROUTE_NEEDS_CACHE: */
  const char *tokenizer;      /* a GGUF for the prompt tokens; NULL: none (probes only) */
  int cache_events;           /* follow GET /v1/cache/events (with a tokenizer) */
  double cache_probe_timeout; /* seconds to wait for POST /v1/cache/stats answers */
  /* Workflows (router.workflows, route_wf.h): limits and cache hints. */
  int wf_max_workflows;         /* live at once; more get 429 */
  int wf_max_agents;            /* per workflow */
  int wf_max_steps;             /* steps and barriers, each, per workflow */
  int wf_max_messages;          /* kept per workflow (its lifetime) */
  size_t wf_max_message_bytes;  /* one message, or one step output */
  int wf_max_waiters;           /* long polls, streams and barrier waits per workflow */
  size_t wf_max_total_bytes;    /* messages and step outputs of all workflows together */
  double wf_idle_ttl;           /* seconds without use after which a workflow ends */
  double wf_max_wait;           /* longest timeout a waiter may ask for */
  int wf_cache_hints;           /* send POST /v1/cache/hints to the instances */
  double wf_hint_ttl;           /* seconds a keep hint protects an agent's context */
  int wf_keep_agents;           /* keep an agent's prompt while it runs again */
};

/* Serves until SIGINT or SIGTERM with the policy p (a loaded, initialised
 * router plugin) on its config subtree cfg: prints "listening on
 * http://HOST:PORT" to stderr once the socket listens; on the first signal
 * stops accepting and lets open requests finish (a second signal ends them
 * at once). Returns 0, or 1 after printing one line when it cannot start. */
int strata_route_run(const struct strata_plugin *p, const strata_config_node_t *cfg,
                     const struct strata_route_opts *opts);

#endif
