/* The router host (route.h): client requests in, one routed attempt at a
 * time out to an engine instance, answers passed through as they arrive. */
#include "config.h"

#include "route.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "http_api.h"
#include "http_conns.h"
#include "http_scan.h"
#include "http_util.h"
#include "log.h"
#include "util.h"

#include "route_int.h"
#include "route_wf.h"

static const double lat_bounds[ROUTE_LAT_BUCKETS] = {25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3,
                                                     2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1.0};

/* ---- replies -------------------------------------------------------------------- */

json_t *route_json_buffer(struct evbuffer *b, json_error_t *je) {
  json_error_t ignored;
  if (!je) je = &ignored;
  const size_t n = evbuffer_get_length(b);
  const char *t = n ? (const char *)evbuffer_pullup(b, (ev_ssize_t)n) : "";
  if (!t) {
    snprintf(je->text, sizeof je->text, "out of memory");
    return NULL;
  }
  return json_loadb(t, n, 0, je);
}

void route_count_status(struct router *rt, int status) {
  const int c = status / 100;
  if (c >= 0 && c < 6) rt->by_class[c]++;
}

void route_reply_body(struct router *rt, struct evhttp_request *req, int status, const char *ctype,
                       const char *body, size_t len) {
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  evbuffer_add(b, body, len);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
  route_count_status(rt, status);
  evhttp_send_reply(req, status, strata_api_status_reason(status), b);
  evbuffer_free(b);
}

void route_reply_errorf(struct router *rt, struct evhttp_request *req, int status,
                         const char *code, const char *fmt, ...) {
  struct strata_api_error e;
  char msg[sizeof e.message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  strata_api_errorf(&e, status, NULL, code, NULL, "%s", msg);
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  if (status == 401) evhttp_add_header(h, "WWW-Authenticate", "Bearer");
  if (status == 503) evhttp_add_header(h, "Retry-After", "1");
  char *j = strata_api_error_json(&e);
  if (!j) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  route_reply_body(rt, req, status, "application/json", j, strlen(j));
  free(j);
}

/* ---- instances ---------------------------------------------------------------------- */

static void set_health(struct router *rt, struct backend *b, int ok, const char *why) {
  if (ok) {
    b->fails = 0;
    if (++b->passes >= rt->o->readmit_after && !b->healthy) {
      b->healthy = 1;
      strata_log(STRATA_LOG_INFO, "route", "%s readmitted", b->url);
    }
  } else {
    b->passes = 0;
    b->failures++;
    if (++b->fails >= rt->o->eject_after && b->healthy) {
      b->healthy = 0;
      b->ejections++;
      rt->ejections++;
      strata_log(STRATA_LOG_WARN, "route", "%s ejected: %s", b->url, why);
    }
  }
}

struct evhttp_connection *route_new_conn(struct router *rt, struct backend *b, double timeout) {
  (void)rt;
  struct evhttp_connection *c = evhttp_connection_base_new(rt->base, NULL, b->host,
                                                           (ev_uint16_t)b->port);
  if (!c) return NULL;
  struct timeval tv = {(time_t)timeout, (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
  /* (libevent 2.1 has one timeout for connecting and for each read) */
  evhttp_connection_set_timeout_tv(c, &tv);
  evhttp_connection_set_retries(c, 0);
  return c;
}

/* A free connection to b, or NULL. evhttp runs one request at a time per
 * connection, so each attempt takes one of its own; it returns to the pool
 * when the attempt ends (a closed one reconnects on its next use). */
struct rconn *route_take_conn(struct router *rt, struct backend *b) {
  struct rconn *k = b->idle;
  if (k) {
    b->idle = k->next;
    return k;
  }
  k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->c = route_new_conn(rt, b, rt->o->request_timeout);
  if (!k->c) {
    free(k);
    return NULL;
  }
  /* remember it for shutdown: `all` links through a second list */
  struct rconn *rec = calloc(1, sizeof *rec);
  if (!rec) {
    evhttp_connection_free(k->c);
    free(k);
    return NULL;
  }
  rec->c = k->c;
  rec->next = b->all;
  b->all = rec;
  return k;
}

void route_give_conn(struct backend *b, struct rconn *k) {
  k->next = b->idle;
  b->idle = k;
}

/* Sum of a metric's samples in Prometheus text (every label set), or -1. */
static double prom_sum(const char *text, size_t len, const char *name) {
  const size_t nl = strlen(name);
  double sum = -1;
  for (size_t i = 0; i < len;) {
    const char *line = text + i;
    const char *end = memchr(line, '\n', len - i);
    const size_t ll = end ? (size_t)(end - line) : len - i;
    if (ll > nl && memcmp(line, name, nl) == 0 && (line[nl] == '{' || line[nl] == ' ')) {
      const char *v = line + nl;
      if (*v == '{') {
        const char *cb = memchr(v, '}', ll - nl);
        v = cb ? cb + 1 : line + ll;
      }
      char buf[64];
      const size_t vl = (size_t)(line + ll - v) < sizeof buf - 1 ? (size_t)(line + ll - v)
                                                                 : sizeof buf - 1;
      memcpy(buf, v, vl);
      buf[vl] = 0;
      char *ep;
      const double x = strtod(buf, &ep);
      if (ep != buf) sum = (sum < 0 ? 0 : sum) + x;
    }
    i += ll + 1;
  }
  return sum;
}

static void on_check_done(struct evhttp_request *req, void *arg) {
  struct rcheck *ck = arg;
  struct router *rt = ck->rt;
  struct backend *b = ck->b;
  b->checking--;
  const int code = req ? evhttp_request_get_response_code(req) : 0;
  if (!ck->metrics) {
    char why[64];
    snprintf(why, sizeof why, code ? "/health answered %d" : "/health failed", code);
    set_health(rt, b, code == 200, why);
  } else if (code == 200) {
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    const size_t n = evbuffer_get_length(in);
    const char *t = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (t) {
      const double run = prom_sum(t, n, "vllm:num_requests_running");
      const double wait = prom_sum(t, n, "vllm:num_requests_waiting");
      double kv = prom_sum(t, n, "vllm:kv_cache_usage_perc");
      if (kv < 0) kv = prom_sum(t, n, "vllm:gpu_cache_usage_perc");
      b->running = run < 0 ? -1 : (int32_t)run;
      b->waiting = wait < 0 ? -1 : (int32_t)wait;
      b->kv = kv;
    }
  }
  ck->done = 1;
}

static void check_one(struct router *rt, struct backend *b, const char *path, int metrics) {
  /* in the instance itself: a check still in flight when the router stops
   * is cancelled without its callback, and nothing is left to free */
  struct rcheck *ck = &b->ck[metrics];
  *ck = (struct rcheck){rt, b, metrics, 1, 0};
  struct evhttp_request *req = evhttp_request_new(on_check_done, ck);
  if (!req) return;
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Host", b->host);
  if (rt->api_key_header) evhttp_add_header(h, "Authorization", rt->api_key_header);
  b->checking++;
  const int rc = evhttp_make_request(b->check, req, EVHTTP_REQ_GET, path);
  ck->in_make = 0;
  if (rc != 0 && !ck->done) {
    b->checking--;
    set_health(rt, b, 0, "cannot connect");
  }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct router *rt = arg;
  for (size_t i = 0; i < rt->n_be; i++) {
    struct backend *b = rt->be[i];
    if (b->checking || b->removed) continue; /* the last round has not ended (its timeout will) */
    check_one(rt, b, "/health", 0);
    check_one(rt, b, "/metrics", 1);
  }
  if (rt->needs_cache) route_cache_tick(rt);
  route_wf_tick(rt);
}

/* ---- proxying ------------------------------------------------------------------------ */


static void rreq_free(struct rreq *r) {
  struct router *rt = r->rt;
  route_cache_release(r);
  route_wf_release(r);
  if (r->cevcon) evhttp_connection_set_closecb(r->cevcon, NULL, NULL);
  if (r->prev) r->prev->next = r->next;
  else rt->inflight = r->next;
  if (r->next) r->next->prev = r->prev;
  if (r->json) json_decref(r->json);
  if (r->held) evbuffer_free(r->held);
  free(r->body);
  free(r->uri);
  free(r);
  if (rt->stopping && !rt->inflight) event_base_loopexit(rt->base, NULL);
}

/* The attempt in flight has ended (up is gone or about to be): the
 * instance's count, the connection back to the pool, the policy told. */
static void end_attempt(struct rreq *r, int status) {
  struct router *rt = r->rt;
  struct backend *b = r->be;
  b->inflight--;
  if (r->paused && r->conn) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(r->conn->c);
    if (bev) bufferevent_enable(bev, EV_READ);
  }
  r->paused = 0;
  route_give_conn(b, r->conn);
  r->conn = NULL;
  r->up = NULL;
  if (rt->vt->on_done) rt->vt->on_done(rt->state, &r->rr, b->id, status, strata_now() - r->t_attempt);
}

static const char *hdr_of(const struct strata_route_request *q, const char *name) {
  const struct rreq *r = q->host_data;
  return r->client ? evhttp_find_header(evhttp_request_get_input_headers(r->client), name) : NULL;
}

static void log_request(struct rreq *r, int status) {
  if (!r->rt->o->request_log) return;
  fprintf(stderr, "strata: route: %s %s -> %s: %d, %d attempt%s, %.3f s\n", r->rid, r->uri,
          r->be ? r->be->url : "-", status, r->attempts, r->attempts == 1 ? "" : "s",
          strata_now() - r->t0);
}

static void on_client_flushed(struct evhttp_connection *c, void *arg) {
  (void)c;
  struct rreq *r = arg;
  if (r->paused && r->conn) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(r->conn->c);
    if (bev) bufferevent_enable(bev, EV_READ);
    r->paused = 0;
  }
}

static void nodelay(struct evhttp_connection *c) {
  struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
  const evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
  const int one = 1;
  if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Starts the client's answer: status, headers, and what was held so far. */
static void start_reply(struct rreq *r, const char *clen) {
  struct evkeyvalq *out = evhttp_request_get_output_headers(r->client);
  if (clen) evhttp_add_header(out, "Content-Length", clen);
  route_count_status(r->rt, r->status);
  evhttp_send_reply_start(r->client, r->status, strata_api_status_reason(r->status));
  r->started = 1;
  if (r->held) {
    if (evbuffer_get_length(r->held)) evhttp_send_reply_chunk(r->client, r->held);
    evbuffer_free(r->held);
    r->held = NULL;
  }
}

static int on_up_header(struct evhttp_request *up, void *arg) {
  struct rreq *r = arg;
  struct router *rt = r->rt;
  r->status = evhttp_request_get_response_code(up);
  nodelay(r->conn->c);
  if (r->status >= 500 && r->attempts <= rt->o->max_retries) {
    r->buffering = 1; /* retried elsewhere: nothing of it goes out */
    return 0;
  }
  if (!r->client) return 0;
  struct evkeyvalq *in = evhttp_request_get_input_headers(up);
  struct evkeyvalq *out = evhttp_request_get_output_headers(r->client);
  static const char *const pass[] = {"Content-Type", "Retry-After", "Cache-Control",
                                     "WWW-Authenticate", "Allow"};
  for (size_t i = 0; i < STRATA_ARRAY_LEN(pass); i++) {
    const char *v = evhttp_find_header(in, pass[i]);
    if (v) evhttp_add_header(out, pass[i], v);
  }
  evhttp_add_header(out, "X-Request-Id", r->rid);
  const char *ct = evhttp_find_header(in, "Content-Type");
  r->streaming = ct && strncmp(ct, "text/event-stream", 17) == 0;
  /* A stream passes through event by event. A whole answer is held and
   * sent in one write at its end: no second small segment for the client's
   * TCP to wait on, and an instance that fails before it ends has sent
   * nothing yet, so the request can still be retried elsewhere. */
  if (!r->streaming) {
    r->held = evbuffer_new();
    if (r->held) return 0;
  }
  start_reply(r, evhttp_find_header(in, "Content-Length"));
  return 0;
}

static void on_up_chunk(struct evhttp_request *up, void *arg) {
  struct rreq *r = arg;
  struct evbuffer *in = evhttp_request_get_input_buffer(up);
  if (r->buffering || !r->client) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  if (r->held) {
    evbuffer_add_buffer(r->held, in);
    /* a long answer is not held whole: it starts going out */
    if (evbuffer_get_length(r->held) > r->rt->o->max_pending_bytes)
      start_reply(r, evhttp_find_header(evhttp_request_get_input_headers(up), "Content-Length"));
    return;
  }
  if (!r->started) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  evhttp_send_reply_chunk_with_cb(r->client, in, on_client_flushed, r);
  /* back-pressure: stop reading the instance while the client lags */
  struct bufferevent *cb = evhttp_connection_get_bufferevent(r->cevcon);
  if (cb && evbuffer_get_length(bufferevent_get_output(cb)) > r->rt->o->max_pending_bytes) {
    struct bufferevent *ub = evhttp_connection_get_bufferevent(r->conn->c);
    if (ub) {
      bufferevent_disable(ub, EV_READ);
      r->paused = 1;
    }
  }
}

static void on_up_error(enum evhttp_request_error err, void *arg) {
  struct rreq *r = arg;
  r->up_failed = 1;
  r->up_err = err;
}

static const char *up_error_name(enum evhttp_request_error e) {
  switch (e) {
  case EVREQ_HTTP_TIMEOUT: return "timeout";
  case EVREQ_HTTP_EOF: return "connection closed";
  case EVREQ_HTTP_INVALID_HEADER: return "invalid answer";
  case EVREQ_HTTP_BUFFER_ERROR: return "connection error";
  case EVREQ_HTTP_REQUEST_CANCEL: return "cancelled";
  case EVREQ_HTTP_DATA_TOO_LONG: return "answer too long";
  }
  return "error";
}

static void finish_attempt(struct rreq *r);

static void on_up_done(struct evhttp_request *up, void *arg) {
  struct rreq *r = arg;
  if (!up) r->up_failed = 1;
  if (r->in_make) { /* failed inside evhttp_make_request: dispatch ends it */
    r->deferred = 1;
    return;
  }
  finish_attempt(r);
}

static void finish_attempt(struct rreq *r) {
  struct router *rt = r->rt;
  struct backend *b = r->be;
  const int failed = r->up_failed || r->status == 0;
  const int status = failed ? 0 : r->status;
  if (failed) {
    snprintf(r->last_error, sizeof r->last_error, "%s: %s", b->url,
             r->up_failed ? up_error_name(r->up_err) : "connection refused or reset");
    set_health(rt, b, 0, r->last_error);
  } else if (r->buffering) {
    snprintf(r->last_error, sizeof r->last_error, "%s answered %d", b->url, r->status);
  }
  end_attempt(r, status);
  if (!r->client) { /* gone meanwhile (cannot be: the close callback cancels) */
    rreq_free(r);
    return;
  }
  if ((failed || r->buffering) && !r->started) {
    if (r->held) {
      evbuffer_free(r->held);
      r->held = NULL;
    }
    if (r->attempts <= rt->o->max_retries) {
      rt->retries++;
      r->buffering = 0;
      r->status = 0;
      r->up_failed = 0;
      route_dispatch(r);
      return;
    }
    log_request(r, 502);
    route_reply_errorf(rt, r->client, 502, "upstream_failed", "no engine instance answered: %s",
                 r->last_error);
    rt->failed++;
    rreq_free(r);
    return;
  }
  if (failed && r->streaming) {
    /* bytes already reached the client: end the stream with an error event */
    struct strata_api_error e;
    strata_api_errorf(&e, 502, NULL, "upstream_failed", NULL,
                      "the engine instance failed mid-answer: %s", r->last_error);
    char *j = strata_api_error_json(&e);
    struct evbuffer *eb = evbuffer_new();
    if (eb && j) {
      evbuffer_add_printf(eb, "data: %s\n\n", j);
      evhttp_send_reply_chunk(r->client, eb);
    }
    if (eb) evbuffer_free(eb);
    free(j);
  }
  if (r->wf_id) route_wf_done(r, failed ? 0 : r->status, r->held);
  log_request(r, failed ? 502 : r->status);
  if (r->held) { /* the whole answer, in one write */
    route_count_status(rt, r->status);
    evhttp_send_reply(r->client, r->status, strata_api_status_reason(r->status), r->held);
    evbuffer_free(r->held);
    r->held = NULL;
  } else {
    evhttp_send_reply_end(r->client);
  }
  rreq_free(r);
}

static void on_client_close(struct evhttp_connection *c, void *arg) {
  struct rreq *r = arg;
  struct router *rt = r->rt;
  rt->client_disconnects++;
  /* On EOF evhttp detaches a request the user has not finished from the
   * dying connection and leaves it to the user to free (when the peek
   * found it, freeing the connection frees the request). */
  if (r->client && !evhttp_request_get_connection(r->client) && c == r->cevcon)
    evhttp_request_free(r->client);
  r->client = NULL;
  r->cevcon = NULL;
  if (r->up) {
    /* the instance sees its client go and cancels (its blocks come back) */
    evhttp_cancel_request(r->up);
    end_attempt(r, 0);
  }
  log_request(r, 499);
  rreq_free(r);
}

/* evhttp does not read a client's socket while its request is being
 * answered, so a non-streaming client that went away would only be noticed
 * when its answer is written. Open requests' sockets are peeked instead
 * (as the engine's server does), and a closed one cancels its attempt, so
 * the instance stops generating for nobody. */
static void on_peek(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct router *rt = arg;
  for (struct rreq *r = rt->inflight, *nx; r; r = nx) {
    nx = r->next;
    if (r->cevcon && strata_http_peer_gone(r->cevcon)) {
      struct evhttp_connection *evcon = r->cevcon;
      evhttp_connection_set_closecb(evcon, NULL, NULL);
      on_client_close(evcon, r);
      evhttp_connection_free(evcon); /* and the request still attached to it */
    }
  }
  route_wf_peek(rt);
}

static void add_latency(struct router *rt, double s) {
  rt->lat_count++;
  rt->lat_sum += s;
  for (int i = 0; i < ROUTE_LAT_BUCKETS; i++)
    if (s <= lat_bounds[i]) rt->lat_buckets[i]++;
}

static void count_decision(struct router *rt, const char *reason) {
  if (!reason) reason = "unspecified";
  for (size_t i = 0; i < rt->n_decisions; i++)
    if (rt->decisions[i].reason == reason || strcmp(rt->decisions[i].copy, reason) == 0) {
      rt->decisions[i].n++;
      return;
    }
  if (rt->n_decisions == STRATA_ARRAY_LEN(rt->decisions)) return;
  char *c = strata_strndup(reason, strnlen(reason, 64)); /* strndup copies n bytes */
  if (!c) return;
  rt->decisions[rt->n_decisions++] = (struct decision){reason, c, 1};
}

/* Fills rt->view with the instances a policy may pick: healthy, not
 * removed, and not marked in tried (a bit per id; NULL: none tried).
 * Returns how many. */
static size_t eligible(struct router *rt, const unsigned char *tried) {
  size_t n = 0;
  for (size_t i = 0; i < rt->n_be; i++) {
    const struct backend *b = rt->be[i];
    if (!b->healthy || b->removed || (tried && (tried[i / 8] >> (i % 8) & 1))) continue;
    rt->view[n++] = (struct strata_route_backend){
        .id = b->id, .url = b->url, .inflight = b->inflight, .running = b->running,
        .waiting = b->waiting, .kv_usage = b->kv, .routed = b->routed};
  }
  return n;
}

/* Sends r to the instance the policy picks among those healthy and not yet
 * tried for it; answers the client itself when none is left. */
void route_dispatch(struct rreq *r) {
  struct router *rt = r->rt;
  const size_t n = eligible(rt, r->tried);
  if (n == 0) {
    const int st = r->attempts ? 502 : 503;
    log_request(r, st);
    if (r->attempts)
      route_reply_errorf(rt, r->client, st, "upstream_failed", "no engine instance answered: %s",
                   r->last_error);
    else
      route_reply_errorf(rt, r->client, st, "no_backend", "no healthy engine instance");
    rt->failed++;
    rreq_free(r);
    return;
  }
  struct strata_route_choice ch = {.id = -1, .reason = NULL};
  if (rt->vt->route(rt->state, &r->rr, rt->view, n, &ch) != 0) {
    log_request(r, 503);
    route_reply_errorf(rt, r->client, 503, "no_backend", "the %s policy refused the request%s%s",
                 rt->plugin->desc->name, ch.reason ? ": " : "", ch.reason ? ch.reason : "");
    rt->failed++;
    rreq_free(r);
    return;
  }
  struct backend *b = NULL;
  for (size_t i = 0; i < n; i++)
    if (rt->view[i].id == ch.id) b = rt->be[ch.id];
  if (!b) {
    log_request(r, 500);
    route_reply_errorf(rt, r->client, 500, NULL, "the %s policy chose instance %d, not one offered",
                 rt->plugin->desc->name, ch.id);
    rt->failed++;
    rreq_free(r);
    return;
  }
  count_decision(rt, ch.reason);
  r->tried[b->id / 8] |= (unsigned char)(1u << (b->id % 8));
  r->attempts++;
  r->be = b;
  r->conn = route_take_conn(rt, b);
  struct evhttp_request *up = r->conn ? evhttp_request_new(on_up_done, r) : NULL;
  if (!up) {
    if (r->conn) route_give_conn(b, r->conn);
    r->conn = NULL;
    log_request(r, 500);
    route_reply_errorf(rt, r->client, 500, NULL, "out of memory");
    rreq_free(r);
    return;
  }
  evhttp_request_set_header_cb(up, on_up_header);
  evhttp_request_set_chunked_cb(up, on_up_chunk);
  evhttp_request_set_error_cb(up, on_up_error);
  struct evkeyvalq *h = evhttp_request_get_output_headers(up);
  struct evkeyvalq *in = evhttp_request_get_input_headers(r->client);
  evhttp_add_header(h, "Host", b->host);
  evhttp_add_header(h, "X-Request-Id", r->rid);
  for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
    if (evutil_ascii_strcasecmp(kv->key, "Content-Type") == 0 ||
        evutil_ascii_strcasecmp(kv->key, "Accept") == 0 ||
        evutil_ascii_strcasecmp(kv->key, "Authorization") == 0 ||
        (evutil_ascii_strncasecmp(kv->key, "X-", 2) == 0 &&
         evutil_ascii_strcasecmp(kv->key, "X-Request-Id") != 0))
      evhttp_add_header(h, kv->key, kv->value);
  }
  if (r->body_len) evbuffer_add(evhttp_request_get_output_buffer(up), r->body, r->body_len);
  r->up = up;
  r->t_attempt = strata_now();
  b->inflight++;
  b->routed++;
  if (r->attempts == 1) add_latency(rt, r->t_attempt - r->t0);
  r->in_make = 1;
  r->deferred = 0;
  const int rc = evhttp_make_request(r->conn->c, up, r->method, r->uri);
  r->in_make = 0;
  if (rc != 0 || r->deferred) {
    if (!r->up_failed) r->up_err = EVREQ_HTTP_BUFFER_ERROR;
    r->up_failed = 1;
    finish_attempt(r);
  }
}

int32_t route_pick(struct router *rt, const char *wf_id, const json_t *body) {
  const size_t n = eligible(rt, NULL);
  json_t *o = n ? json_deep_copy(body) : NULL;
  if (!o) return -1;
  json_object_set_new(o, "metadata", json_pack("{s:s}", "workflow_id", wf_id));
  /* a request with no client: header() answers NULL for it */
  struct rreq none = {.rt = rt};
  none.rr = (struct strata_route_request){.id = ++rt->next_id, .path = "/v1/chat/completions",
                                          .body = (const strata_json_t *)o, .header = hdr_of,
                                          .host_data = &none, .prompt_tokens = -1};
  struct strata_route_choice ch = {.id = -1, .reason = NULL};
  int32_t id = -1;
  if (rt->vt->route(rt->state, &none.rr, rt->view, n, &ch) == 0)
    for (size_t i = 0; i < n; i++)
      if (rt->view[i].id == ch.id) id = ch.id;
  if (id >= 0) count_decision(rt, ch.reason);
  json_decref(o);
  return id;
}

/* ---- the router's own endpoints ------------------------------------------------------ */

static void handle_health(struct router *rt, struct evhttp_request *req) {
  size_t up = 0;
  for (size_t i = 0; i < rt->n_be; i++) up += rt->be[i]->healthy && !rt->be[i]->removed;
  char body[160];
  const int n = snprintf(body, sizeof body, "{\"status\":\"%s\",\"healthy_backends\":%zu,\"backends\":%zu}",
                         up ? "ok" : "unavailable", up, rt->n_be);
  route_reply_body(rt, req, up ? 200 : 503, "application/json", body, (size_t)n);
}

static void handle_admin(struct router *rt, struct evhttp_request *req) {
  json_t *o = json_object(), *arr = json_array();
  json_object_set_new(o, "policy", json_string(rt->plugin->desc->name));
  for (size_t i = 0; i < rt->n_be; i++) {
    const struct backend *b = rt->be[i];
    json_t *e = json_object();
    json_object_set_new(e, "id", json_integer(b->id));
    json_object_set_new(e, "url", json_string(b->url));
    json_object_set_new(e, "healthy", json_boolean(b->healthy));
    json_object_set_new(e, "removed", json_boolean(b->removed));
    json_object_set_new(e, "source", b->src ? json_string(b->src->name) : json_string("static"));
    json_object_set_new(e, "inflight", json_integer(b->inflight));
    json_object_set_new(e, "running", b->running < 0 ? json_null() : json_integer(b->running));
    json_object_set_new(e, "waiting", b->waiting < 0 ? json_null() : json_integer(b->waiting));
    json_object_set_new(e, "kv_cache_usage", b->kv < 0 ? json_null() : json_real(b->kv));
    json_object_set_new(e, "routed", json_integer((json_int_t)b->routed));
    json_object_set_new(e, "failures", json_integer((json_int_t)b->failures));
    json_object_set_new(e, "ejections", json_integer((json_int_t)b->ejections));
    json_object_set_new(e, "consecutive_failures", json_integer(b->fails));
    if (rt->needs_cache) route_cache_admin(b, e);
    json_array_append_new(arr, e);
  }
  json_object_set_new(o, "backends", arr);
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!s) {
    route_reply_errorf(rt, req, 500, NULL, "out of memory");
    return;
  }
  route_reply_body(rt, req, 200, "application/json", s, strlen(s));
  free(s);
}

static void handle_metrics(struct router *rt, struct evhttp_request *req) {
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  const char *pol = rt->plugin->desc->name;
  evbuffer_add_printf(b,
                      "# HELP strata_router_requests_total Client requests proxied.\n"
                      "# TYPE strata_router_requests_total counter\n"
                      "strata_router_requests_total %llu\n"
                      "# HELP strata_router_retries_total Attempts repeated on another instance "
                      "before the first byte.\n"
                      "# TYPE strata_router_retries_total counter\n"
                      "strata_router_retries_total %llu\n"
                      "# HELP strata_router_failed_total Requests no instance answered.\n"
                      "# TYPE strata_router_failed_total counter\n"
                      "strata_router_failed_total %llu\n"
                      "# HELP strata_router_ejections_total Instances ejected by health checks "
                      "or failed attempts.\n"
                      "# TYPE strata_router_ejections_total counter\n"
                      "strata_router_ejections_total %llu\n"
                      "# HELP strata_router_client_disconnects_total Clients gone before their "
                      "answer ended.\n"
                      "# TYPE strata_router_client_disconnects_total counter\n"
                      "strata_router_client_disconnects_total %llu\n",
                      (unsigned long long)rt->requests, (unsigned long long)rt->retries,
                      (unsigned long long)rt->failed, (unsigned long long)rt->ejections,
                      (unsigned long long)rt->client_disconnects);
  evbuffer_add_printf(b, "# HELP strata_router_http_responses_total Responses by status class.\n"
                         "# TYPE strata_router_http_responses_total counter\n");
  for (int c = 1; c < 6; c++)
    evbuffer_add_printf(b, "strata_router_http_responses_total{code=\"%dxx\"} %llu\n", c,
                        (unsigned long long)rt->by_class[c]);
  evbuffer_add_printf(b, "# HELP strata_router_decisions_total Routing decisions by policy and "
                         "reason.\n# TYPE strata_router_decisions_total counter\n");
  for (size_t i = 0; i < rt->n_decisions; i++)
    evbuffer_add_printf(b, "strata_router_decisions_total{policy=\"%s\",reason=\"%s\"} %llu\n",
                        pol, rt->decisions[i].copy, (unsigned long long)rt->decisions[i].n);
  if (rt->needs_cache)
    evbuffer_add_printf(b,
                        "# HELP strata_router_cache_answers_total Cached-prefix counts given to "
                        "the policy, by source.\n"
                        "# TYPE strata_router_cache_answers_total counter\n"
                        "strata_router_cache_answers_total{source=\"index\"} %llu\n"
                        "strata_router_cache_answers_total{source=\"probe\"} %llu\n"
                        "strata_router_cache_answers_total{source=\"unknown\"} %llu\n",
                        (unsigned long long)rt->index_answers,
                        (unsigned long long)rt->probe_answers,
                        (unsigned long long)rt->cache_unknown);
  static const char *const gauges[][2] = {
      {"strata_router_backend_healthy", "1 while the instance takes requests."},
      {"strata_router_backend_inflight", "Requests this router has open on the instance."},
      {"strata_router_backend_running", "vllm:num_requests_running as last scraped (-1: unknown)."},
      {"strata_router_backend_waiting", "vllm:num_requests_waiting as last scraped (-1: unknown)."},
      {"strata_router_backend_routed_total", "Attempts routed to the instance."},
      {"strata_router_backend_failures_total", "Failed checks and attempts of the instance."}};
  for (size_t g = 0; g < STRATA_ARRAY_LEN(gauges); g++) {
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", gauges[g][0], gauges[g][1],
                        gauges[g][0], g >= 4 ? "counter" : "gauge");
    for (size_t i = 0; i < rt->n_be; i++) {
      const struct backend *e = rt->be[i];
      const double v = g == 0 ? e->healthy : g == 1 ? e->inflight : g == 2 ? e->running
                       : g == 3 ? e->waiting : g == 4 ? (double)e->routed : (double)e->failures;
      evbuffer_add_printf(b, "%s{backend=\"%s\"} %.17g\n", gauges[g][0], e->url, v);
    }
  }
  evbuffer_add_printf(b, "# HELP strata_router_added_latency_seconds Time from a request's "
                         "arrival to its dispatch to an instance.\n"
                         "# TYPE strata_router_added_latency_seconds histogram\n");
  for (int i = 0; i < ROUTE_LAT_BUCKETS; i++)
    evbuffer_add_printf(b, "strata_router_added_latency_seconds_bucket{le=\"%g\"} %llu\n",
                        lat_bounds[i], (unsigned long long)rt->lat_buckets[i]);
  evbuffer_add_printf(b,
                      "strata_router_added_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
                      "strata_router_added_latency_seconds_sum %.9f\n"
                      "strata_router_added_latency_seconds_count %llu\n",
                      (unsigned long long)rt->lat_count, rt->lat_sum,
                      (unsigned long long)rt->lat_count);
  route_wf_metrics(rt, b);
  strata_http_conns_metrics(rt->conns, b, "strata_router");
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                    "text/plain; version=0.0.4");
  route_count_status(rt, 200);
  evhttp_send_reply(req, 200, "OK", b);
  evbuffer_free(b);
}

/* ---- requests ---------------------------------------------------------------------- */

static int auth_ok(struct router *rt, struct evhttp_request *req) {
  return !rt->api_key_header ||
         strata_secret_equal(
             evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization"),
             rt->api_key_header);
}

static const struct {
  const char *path;
  enum evhttp_cmd_type method;
} proxied[] = {
    {"/v1/completions", EVHTTP_REQ_POST}, {"/v1/chat/completions", EVHTTP_REQ_POST},
    {"/v1/models", EVHTTP_REQ_GET},       {"/tokenize", EVHTTP_REQ_POST},
    {"/detokenize", EVHTTP_REQ_POST},
};

/* Frees a request not yet in the in-flight list (refused while read). */
static void drop_unlisted(struct rreq *r) {
  if (!r) return;
  route_wf_release(r);
  if (r->json) json_decref(r->json);
  free(r->body);
  free(r->uri);
  free(r);
}

static void on_request(struct evhttp_request *req, void *arg) {
  struct router *rt = arg;
  if (strata_http_conns_over(rt->conns, req)) {
    strata_http_conns_refuse_headers(req);
    route_reply_errorf(rt, req, 503, "server_busy",
                       "too many connections: the router has its limit of %zu open "
                       "(router.max_connections); retry on a new connection",
                       strata_http_conns_max(rt->conns));
    return;
  }
  int keep_open;
  const char *big = strata_http_body_too_large(req, &keep_open);
  if (big) { /* the scanner takes its body away (http_scan.h) */
    if (!keep_open)
      evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    route_reply_errorf(rt, req, 413, "request_too_large",
                       "the request body is %.40s bytes; the router takes at most %zu "
                       "(router.max_body_bytes)",
                       big, rt->o->max_body_bytes);
    return;
  }
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  if (!path || !*path) path = "/";
  const enum evhttp_cmd_type m = evhttp_request_get_command(req);
  if (m == EVHTTP_REQ_GET && strcmp(path, "/health") == 0) {
    handle_health(rt, req);
    return;
  }
  if (m == EVHTTP_REQ_GET && strcmp(path, "/metrics") == 0) {
    handle_metrics(rt, req);
    return;
  }
  if (strncmp(path, "/v1/workflows", 13) == 0 && (path[13] == 0 || path[13] == '/')) {
    if (!auth_ok(rt, req))
      route_reply_errorf(rt, req, 401, "invalid_api_key",
                         "missing or wrong API key: send the header 'Authorization: Bearer <key>'");
    else
      route_wf_handle(rt, req, path, m);
    return;
  }
  int known = 0, found = 0;
  for (size_t i = 0; i < STRATA_ARRAY_LEN(proxied); i++)
    if (strcmp(path, proxied[i].path) == 0) {
      known = 1;
      found |= m == proxied[i].method;
    }
  if (strncmp(path, "/v1/models/", 11) == 0 && path[11]) {
    known = 1;
    found = m == EVHTTP_REQ_GET;
  }
  const int admin = strcmp(path, "/admin/backends") == 0;
  if (admin) known = 1, found = m == EVHTTP_REQ_GET;
  if (!found) {
    if (known)
      route_reply_errorf(rt, req, 405, "method_not_allowed", "method not allowed for %.200s", path);
    else
      route_reply_errorf(rt, req, 404, "not_found", "no such endpoint: %.200s", path);
    return;
  }
  if (!auth_ok(rt, req)) {
    route_reply_errorf(rt, req, 401, "invalid_api_key",
                 "missing or wrong API key: send the header 'Authorization: Bearer <key>'");
    return;
  }
  if (admin) {
    handle_admin(rt, req);
    return;
  }
  if (rt->stopping) {
    route_reply_errorf(rt, req, 503, NULL, "the router is stopping");
    return;
  }
  struct rreq *r = calloc(1, sizeof *r);
  const char *full = evhttp_request_get_uri(req);
  if (r) r->uri = strata_strdup(full ? full : path);
  if (!r || !r->uri) {
    drop_unlisted(r);
    route_reply_errorf(rt, req, 500, NULL, "out of memory");
    return;
  }
  r->rt = rt;
  r->client = req;
  r->method = m;
  r->t0 = strata_now();
  r->id = ++rt->next_id;
  const char *cid = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
  if (cid && *cid && strlen(cid) < sizeof r->rid)
    snprintf(r->rid, sizeof r->rid, "%s", cid);
  else
    snprintf(r->rid, sizeof r->rid, "rt-%llx-%llu", (unsigned long long)rt->rid_base,
             (unsigned long long)r->id);
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  r->body_len = evbuffer_get_length(in);
  if (r->body_len) {
    r->body = malloc(r->body_len);
    if (!r->body) {
      drop_unlisted(r);
      route_reply_errorf(rt, req, 500, NULL, "out of memory");
      return;
    }
    evbuffer_copyout(in, r->body, r->body_len);
  }
  if (m == EVHTTP_REQ_POST) {
    json_error_t je;
    r->json = json_loadb(r->body ? r->body : "", r->body_len, 0, &je);
    if (!r->json || !json_is_object(r->json)) {
      route_reply_errorf(rt, req, 400, "invalid_json", "the body is not a JSON object: %s",
                   r->json ? "another JSON value" : je.text);
      drop_unlisted(r);
      return;
    }
  }
  r->rr = (struct strata_route_request){.id = r->id, .path = path, .body = (const strata_json_t *)r->json,
                                        .header = hdr_of, .host_data = r};
  const int joined = route_wf_join(r);
  if (joined < 0) { /* answered: a workflow limit */
    drop_unlisted(r);
    return;
  }
  rt->requests++;
  /* rr.path points into the request's URI, which lives as long as it */
  r->next = rt->inflight;
  if (rt->inflight) rt->inflight->prev = r;
  rt->inflight = r;
  r->cevcon = evhttp_request_get_connection(req);
  if (r->cevcon) evhttp_connection_set_closecb(r->cevcon, on_client_close, r);
  nodelay(r->cevcon);
  if (joined == 0) route_start(r); /* else when its workflow's context is ready */
}

void route_start(struct rreq *r) {
  if (r->rt->needs_cache)
    route_cache_prepare(r); /* dispatches now or once the probes end */
  else
    route_dispatch(r);
}

/* ---- start and stop --------------------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  struct router *rt = arg;
  if (rt->stopping || !rt->inflight) {
    event_base_loopexit(rt->base, NULL);
    return;
  }
  rt->stopping = 1;
  route_wf_stop(rt);
  strata_log(STRATA_LOG_INFO, "route", "%s: no new requests; waiting for the open ones (again "
             "to stop at once)", sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (rt->bound) {
    strata_http_conns_attach(rt->conns, NULL);
    evhttp_del_accept_socket(rt->http, rt->bound);
    rt->bound = NULL;
  }
}

/* An instance's URL, "http://HOST:PORT" ([HOST] for IPv6). */
static void url_of(const char *host, int port, char *buf, size_t cap) {
  const int v6 = strchr(host, ':') != NULL;
  snprintf(buf, cap, "http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

/* A new instance at host:port (src: the DNS entry it came from, or NULL);
 * NULL when out of room or memory, with err set. */
static struct backend *add_backend(struct router *rt, const char *host, int port,
                                   const struct dnssrc *src, char *err, size_t errlen) {
  if (rt->n_be == ROUTE_MAX_BACKENDS) {
    strata_errf(err, errlen, "more than %d instances", ROUTE_MAX_BACKENDS);
    return NULL;
  }
  struct backend *b = calloc(1, sizeof *b);
  char buf[512];
  url_of(host, port, buf, sizeof buf);
  if (b) {
    b->host = strata_strdup(host);
    b->url = strata_strdup(buf);
  }
  if (!b || !b->host || !b->url) {
    if (b) {
      free(b->host);
      free(b->url);
    }
    free(b);
    strata_errf(err, errlen, "out of memory");
    return NULL;
  }
  b->port = port;
  b->src = src;
  b->id = (int32_t)rt->n_be;
  b->healthy = 1;
  b->running = b->waiting = -1;
  b->kv = -1;
  b->check = route_new_conn(rt, b, rt->o->health_timeout);
  if (!b->check) {
    free(b->host);
    free(b->url);
    free(b);
    strata_errf(err, errlen, "cannot create a connection to %s", buf);
    return NULL;
  }
  rt->be[rt->n_be++] = b;
  return b;
}

/* ---- DNS discovery ---------------------------------------------------------------------- */

static void on_dns(int result, char type, int count, int ttl, void *addresses, void *arg) {
  (void)ttl;
  struct dnssrc *d = arg;
  struct router *rt = d->rt;
  d->resolving = 0;
  if (result == DNS_ERR_SHUTDOWN) return;
  if (result != DNS_ERR_NONE || type != DNS_IPv4_A) {
    /* a failed lookup changes nothing: instances stay until DNS says otherwise */
    strata_log(STRATA_LOG_WARN, "route", "dns %s: %s", d->name,
               result != DNS_ERR_NONE ? evdns_err_to_string(result) : "no IPv4 answer");
    return;
  }
  const uint32_t *a = addresses;
  char hosts[64][INET_ADDRSTRLEN];
  const int n = count < 64 ? count : 64;
  for (int i = 0; i < n; i++) inet_ntop(AF_INET, &a[i], hosts[i], sizeof hosts[i]);
  /* instances of this name no longer listed stop taking requests (their
   * open ones finish); listed ones come (back) */
  for (size_t k = 0; k < rt->n_be; k++) {
    struct backend *b = rt->be[k];
    if (b->src != d) continue;
    int listed = 0;
    for (int i = 0; i < n; i++) listed |= strcmp(hosts[i], b->host) == 0;
    if (listed && b->removed) {
      b->removed = 0;
      b->fails = b->passes = 0;
      b->healthy = 1;
      strata_log(STRATA_LOG_INFO, "route", "%s is back in %s", b->url, d->name);
    } else if (!listed && !b->removed) {
      b->removed = 1;
      strata_log(STRATA_LOG_INFO, "route", "%s left %s: drained (%d open)", b->url, d->name,
                 b->inflight);
    }
  }
  for (int i = 0; i < n; i++) {
    int known = 0;
    for (size_t k = 0; k < rt->n_be; k++)
      known |= rt->be[k]->src == d && strcmp(rt->be[k]->host, hosts[i]) == 0;
    if (known) continue;
    char err[160];
    struct backend *b = add_backend(rt, hosts[i], d->port, d, err, sizeof err);
    if (b)
      strata_log(STRATA_LOG_INFO, "route", "%s found in %s", b->url, d->name);
    else
      strata_log(STRATA_LOG_WARN, "route", "dns %s: %s", d->name, err);
  }
}

static void on_dns_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct router *rt = arg;
  for (size_t i = 0; i < rt->n_dns; i++) {
    struct dnssrc *d = &rt->dns[i];
    if (d->resolving) continue;
    d->resolving = 1;
    if (!evdns_base_resolve_ipv4(rt->dnsbase, d->name, 0, on_dns, d))
      d->resolving = 0;
  }
}

/* One router.backends entry: a static instance, or a DNS source. */
static int parse_backend(struct router *rt, const char *url, char *err, size_t errlen) {
  struct evhttp_uri *u = evhttp_uri_parse(url);
  const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL, *host = u ? evhttp_uri_get_host(u) : NULL;
  const char *path = u ? evhttp_uri_get_path(u) : NULL;
  const int dns = scheme && strcmp(scheme, "dns") == 0;
  if (!u || !scheme || (strcmp(scheme, "http") != 0 && !dns) || !host || !*host ||
      (path && *path && strcmp(path, "/") != 0) || (dns && evhttp_uri_get_port(u) <= 0)) {
    if (u) evhttp_uri_free(u);
    return strata_errf(err, errlen, "backend '%s' is not an http://HOST:PORT or dns://NAME:PORT "
                       "address", url);
  }
  const int port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
  int rc = 0;
  if (dns) {
    struct dnssrc *nd = realloc(rt->dns, (rt->n_dns + 1) * sizeof *nd);
    if (nd) {
      rt->dns = nd;
      nd[rt->n_dns] = (struct dnssrc){.rt = rt, .name = strata_strdup(host), .port = port};
      if (nd[rt->n_dns].name) rt->n_dns++;
    }
    if (!nd || !rt->dns[rt->n_dns - 1].name) rc = strata_errf(err, errlen, "out of memory");
  } else {
    char buf[512];
    url_of(host, port, buf, sizeof buf);
    for (size_t j = 0; j < rt->n_be; j++)
      if (strcmp(rt->be[j]->url, buf) == 0) rc = strata_errf(err, errlen, "backend %s is listed twice", buf);
    if (rc == 0 && !add_backend(rt, host, port, NULL, err, errlen)) rc = -1;
  }
  evhttp_uri_free(u);
  return rc;
}

int strata_route_run(const struct strata_plugin *p, const strata_config_node_t *cfg,
                     const struct strata_route_opts *o) {
  struct router rt;
  memset(&rt, 0, sizeof rt);
  rt.o = o;
  rt.plugin = p;
  rt.vt = p->desc->vt.router;
  int rc = 1;
  char err[512];
  {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rt.rid_base = ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)ts.tv_nsec;
  }
  if (o->n_backends == 0) {
    fprintf(stderr, "strata: route: no backends: set router.backends or give --backend URL\n");
    return 1;
  }
  rt.base = event_base_new();
  rt.http = rt.base ? evhttp_new(rt.base) : NULL;
  if (!rt.http) {
    fprintf(stderr, "strata: route: cannot create the event loop\n");
    goto out;
  }
  for (size_t i = 0; i < o->n_backends; i++)
    if (parse_backend(&rt, o->backends[i], err, sizeof err) != 0) {
      fprintf(stderr, "strata: route: %s\n", err);
      goto out;
    }
  if (rt.n_dns) {
    rt.dnsbase = evdns_base_new(rt.base, o->n_dns_servers ? 0 : EVDNS_BASE_INITIALIZE_NAMESERVERS);
    for (size_t i = 0; rt.dnsbase && i < o->n_dns_servers; i++)
      if (evdns_base_nameserver_ip_add(rt.dnsbase, o->dns_servers[i]) != 0) {
        fprintf(stderr, "strata: route: dns server '%s' is not an IP[:PORT] address\n",
                o->dns_servers[i]);
        goto out;
      }
    rt.dns_tick = rt.dnsbase ? event_new(rt.base, -1, EV_PERSIST, on_dns_tick, &rt) : NULL;
    if (!rt.dns_tick) {
      fprintf(stderr, "strata: route: cannot set up DNS resolution\n");
      goto out;
    }
    const double di = o->dns_interval;
    struct timeval dv = {(time_t)di, (suseconds_t)((di - (double)(time_t)di) * 1e6)};
    event_add(rt.dns_tick, &dv);
    on_dns_tick(-1, 0, &rt); /* the first lookups now */
  }
  if (o->api_key && *o->api_key) {
    const size_t n = strlen(o->api_key) + 8;
    rt.api_key_header = malloc(n);
    if (!rt.api_key_header) goto out;
    snprintf(rt.api_key_header, n, "Bearer %s", o->api_key);
  }
  if (rt.vt->create(cfg, &rt.state, err, sizeof err) != 0) {
    fprintf(stderr, "strata: route: policy %s: %s\n", p->desc->name, err);
    goto out;
  }
  rt.needs_cache = rt.vt->size >= offsetof(struct strata_router_vtable, needs) + sizeof rt.vt->needs &&
                   (rt.vt->needs & STRATA_ROUTE_NEEDS_CACHE);
  if (rt.needs_cache && route_cache_open(&rt) != 0) goto out;
  if (route_wf_open(&rt) != 0) goto out;
  evhttp_set_max_body_size(rt.http, (ev_ssize_t)o->max_body_bytes);
  evhttp_set_max_headers_size(rt.http, (ev_ssize_t)(o->max_header_bytes ? o->max_header_bytes
                                                                         : 64 * 1024));
  evhttp_set_timeout(rt.http, o->idle_timeout > 0 ? o->idle_timeout : 60);
  evhttp_set_allowed_methods(rt.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                          EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                          EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
  evhttp_set_gencb(rt.http, on_request, &rt);
  rt.conns = strata_http_conns_new(rt.base, rt.http, "route",
                                   o->max_connections ? o->max_connections : 1024, 1);
  if (rt.conns) strata_http_conns_body_limit(rt.conns, o->max_body_bytes);
  rt.sig_int = evsignal_new(rt.base, SIGINT, on_signal, &rt);
  rt.sig_term = evsignal_new(rt.base, SIGTERM, on_signal, &rt);
  rt.tick = event_new(rt.base, -1, EV_PERSIST, on_tick, &rt);
  rt.peek = event_new(rt.base, -1, EV_PERSIST, on_peek, &rt);
  if (!rt.sig_int || !rt.sig_term || !rt.tick || !rt.peek || !rt.conns) {
    fprintf(stderr, "strata: route: cannot create events\n");
    goto out;
  }
  event_add(rt.sig_int, NULL);
  event_add(rt.sig_term, NULL);
  const double hi = o->health_interval;
  struct timeval tv = {(time_t)hi, (suseconds_t)((hi - (double)(time_t)hi) * 1e6)};
  event_add(rt.tick, &tv);
  struct timeval pt = {0, 200 * 1000};
  event_add(rt.peek, &pt);
  on_tick(-1, 0, &rt); /* the first checks now */
  signal(SIGPIPE, SIG_IGN);
  strata_log(STRATA_LOG_INFO, "route", "policy %s over %zu instance%s%s", p->desc->name, rt.n_be,
             rt.n_be == 1 ? "" : "s", rt.n_dns ? " and DNS names" : "");
  if (!(rt.bound = strata_http_listen(rt.http, "route", o->host, o->port))) goto out;
  strata_http_conns_attach(rt.conns, rt.bound);
  event_base_dispatch(rt.base);
  rc = 0;
out:
  while (rt.inflight) {
    struct rreq *r = rt.inflight;
    rt.stopping = 0;
    if (r->up) {
      evhttp_cancel_request(r->up);
      end_attempt(r, 0);
    }
    r->client = NULL;
    rreq_free(r);
  }
  route_wf_close(&rt);
  if (rt.tick) event_free(rt.tick);
  if (rt.peek) event_free(rt.peek);
  if (rt.sig_int) event_free(rt.sig_int);
  if (rt.sig_term) event_free(rt.sig_term);
  if (rt.http) evhttp_free(rt.http);
  strata_http_conns_free(rt.conns);
  if (rt.dns_tick) event_free(rt.dns_tick);
  if (rt.dnsbase) {
    /* fails lookups in flight: their callbacks (and the frees of their
     * requests) are deferred to the loop, so it runs once more (libevent
     * issue #942: without it each lookup in flight leaks) */
    evdns_base_free(rt.dnsbase, 1);
    event_base_loop(rt.base, EVLOOP_NONBLOCK);
  }
  for (size_t i = 0; i < rt.n_dns; i++) free(rt.dns[i].name);
  free(rt.dns);
  route_cache_close(&rt);
  for (size_t i = 0; i < rt.n_be; i++) {
    struct backend *b = rt.be[i];
    for (struct rconn *k = b->all, *nx; k; k = nx) {
      nx = k->next;
      evhttp_connection_free(k->c);
      free(k);
    }
    for (struct rconn *k = b->idle, *nx; k; k = nx) {
      nx = k->next;
      free(k);
    }
    if (b->check) evhttp_connection_free(b->check);
    free(b->url);
    free(b->host);
    free(b);
  }
  if (rt.state) rt.vt->destroy(rt.state);
  if (rt.base) event_base_free(rt.base);
  for (size_t i = 0; i < rt.n_decisions; i++) free(rt.decisions[i].copy);
  free(rt.api_key_header);
  return rc;
}
