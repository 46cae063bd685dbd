/* The router host's internal state (route.c, and route_cache.c for the
 * cache-aware part): not an interface for anything else. */
#ifndef STRATA_ROUTE_INT_H
#define STRATA_ROUTE_INT_H

#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include "chat_template.h"
#include "gguf.h"
#include "kv_cache.h"
#include "route.h"
#include "route_kv.h"
#include "tokenizer.h"

struct rconn { /* one keep-alive connection to an instance */
  struct evhttp_connection *c;
  struct rconn *next;
};

struct dnssrc { /* a "dns://NAME:PORT" entry: every address of NAME is an instance */
  struct router *rt;
  char *name;
  int port;
  int resolving;
};

/* A health or metrics check. in_make: evhttp_make_request has not returned
 * yet (it may fail the request through its callback before it does); done:
 * the callback ran. */
struct rcheck {
  struct router *rt;
  struct backend *b;
  int metrics, in_make, done;
};

struct backend {
  int32_t id;
  char *url, *host;
  int port;
  const struct dnssrc *src; /* NULL: listed statically */
  int removed;              /* gone from DNS: takes no new requests */
  int healthy;
  int fails, passes; /* consecutive failed / passed checks and attempts */
  int32_t inflight, running, waiting;
  double kv;
  uint64_t routed, failures, ejections;
  struct rconn *idle, *all;
  struct evhttp_connection *check; /* /health and /metrics */
  int checking;                    /* checks in flight on it */
  struct rcheck ck[2]; /* this round's /health and /metrics: a new round waits for both */
  /* its prefix cache, from GET /v1/cache/events (route_cache.c) */
  struct route_kvidx idx;
  struct evhttp_connection *evc;
  struct evhttp_request *evreq; /* the stream, while open */
  int ev_bad;                   /* the stream sent garbage: drop it at the next tick */
  int ev_unsupported;           /* answered 404: probes instead (retried rarely) */
  double ev_retry_at;
  uint64_t probes, probe_failures;
};

#define ROUTE_LAT_BUCKETS 12

struct decision {
  const char *reason; /* the plugin's static string */
  char *copy;
  uint64_t n;
};

struct router {
  const struct strata_route_opts *o;
  const struct strata_plugin *plugin;
  const struct strata_router_vtable *vt;
  void *state;
  struct event_base *base;
  struct evhttp *http;
  struct evhttp_bound_socket *bound;
  struct strata_http_conns *conns; /* router.max_connections */
  struct event *sig_int, *sig_term, *tick, *peek;
  char *api_key_header;
  struct backend *be[ROUTE_MAX_BACKENDS]; /* ids are positions; never reused */
  size_t n_be;
  struct strata_route_backend view[ROUTE_MAX_BACKENDS]; /* scratch for route() */
  struct dnssrc *dns;
  size_t n_dns;
  struct evdns_base *dnsbase;
  struct event *dns_tick;
  struct rreq *inflight;
  uint64_t next_id, rid_base;
  int stopping;
  /* metrics */
  uint64_t requests, retries, failed, ejections, client_disconnects, by_class[6];
  uint64_t lat_count, lat_buckets[ROUTE_LAT_BUCKETS];
  double lat_sum;
  struct decision decisions[32];
  size_t n_decisions;
  /* cache-aware routing (route_cache.c) */
  int needs_cache;
  strata_gguf_t *gguf;
  strata_tokenizer_t *tok;
  struct strata_chat_template tmpl;
  int have_tmpl;
  const char *bos_text, *eos_text;
  uint64_t index_answers, probe_answers, cache_unknown;
  /* workflows (route_wf.c) */
  struct wf_reg *wf;
};

struct rreq { /* one client request */
  struct router *rt;
  struct evhttp_request *client;
  struct evhttp_connection *cevcon;
  struct rreq *next, *prev;
  uint64_t id;
  char rid[80];
  char *uri;
  enum evhttp_cmd_type method;
  char *body;
  size_t body_len;
  json_t *json;
  struct strata_route_request rr;
  unsigned char tried[ROUTE_MAX_BACKENDS / 8]; /* bit per instance id */
  int attempts;
  /* the attempt in flight */
  struct backend *be;
  struct rconn *conn;
  struct evhttp_request *up;
  enum evhttp_request_error up_err;
  int up_failed, status, buffering, started, streaming, paused;
  struct evbuffer *held; /* a non-streamed answer, sent whole at its end */
  int in_make, deferred; /* see check */
  double t0, t_attempt;
  char last_error[160];
  /* cache-aware routing (route_cache.c) */
  int32_t *toks; /* the prompt's tokens (router.tokenizer), NULL: not known */
  size_t n_toks;
  struct strata_kv_hash *chain; /* their block hashes for chain_bs */
  int32_t n_chain, chain_bs;
  int32_t *probed; /* [n_probed] by instance id: cached tokens from a probe, -1 none */
  size_t n_probed;
  struct probe *probes;
  int n_probes, pending;
  struct event *ptimer;
  /* its workflow (route_wf.c): id, agent, step; NULL: none */
  char *wf_id, *wf_agent, *wf_step;
  int wf_held;     /* waiting for its workflow's context prefill */
  uint64_t wf_gen; /* which workflow of that id it joined */
};


/* route.c */
struct evhttp_connection *route_new_conn(struct router *rt, struct backend *b, double timeout);
struct rconn *route_take_conn(struct router *rt, struct backend *b);
void route_give_conn(struct backend *b, struct rconn *k);
void route_dispatch(struct rreq *r);
/* The first dispatch of a listed request: through the cache probes for a
 * cache-aware policy, else at once. May free r. */
void route_start(struct rreq *r);
void route_count_status(struct router *rt, int status);
/* The JSON in a whole body (an answer of an instance, or a client's
 * request), or NULL with why in je (may be NULL). */
json_t *route_json_buffer(struct evbuffer *b, json_error_t *je);
void route_reply_body(struct router *rt, struct evhttp_request *req, int status, const char *ctype,
                      const char *body, size_t len);
void route_reply_errorf(struct router *rt, struct evhttp_request *req, int status,
                        const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The instance the policy picks for a request of workflow wf_id with the
 * given body (declaring a workflow's context); -1 when none. */
int32_t route_pick(struct router *rt, const char *wf_id, const json_t *body);

/* route_cache.c: what policies with STRATA_ROUTE_NEEDS_CACHE are given */
/* Loads router.tokenizer (if set). 0, or -1 with a message printed. */
int route_cache_open(struct router *rt);
void route_cache_close(struct router *rt);
/* On the health timer: (re)starts each instance's GET /v1/cache/events. */
void route_cache_tick(struct router *rt);
/* Before the first dispatch: the prompt's tokens, and probes to the
 * instances without a live index. Calls route_dispatch(r) itself, now or
 * when the probes end. */
void route_cache_prepare(struct rreq *r);
/* Cancels r's probes and frees its cache state (from rreq_free). */
void route_cache_release(struct rreq *r);
/* JSON fields of an instance for /admin/backends. */
void route_cache_admin(const struct backend *b, json_t *e);

#endif
