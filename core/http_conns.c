/* Open-connection accounting and limit for an evhttp server (http_conns.h). */
#include "config.h"

#include "http_conns.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "http_scan.h"
#include "log.h"

/* What is known of one accepted connection, by its socket's number. */
struct slot {
  unsigned char used, over;
  socklen_t llen, plen;
  struct sockaddr_storage local, peer;
  /* the body scanner on its input (http_scan.h), or NULL; freed with the
   * record (the connection is gone by then, its buffer with it) */
  struct strata_http_scan *scan;
};

struct strata_http_conns {
  struct event_base *base;
  char who[32];
  size_t max, hard; /* refuse from max, pause accepting from hard */
  uint64_t body_limit; /* scan for bodies above it (0: not) */
  struct slot *slots;
  size_t n_slots, open;
  /* Connections evhttp is setting up: their sockets are known once the
   * bufferevent callback has returned (each holds a reference). */
  struct bufferevent **fresh;
  size_t n_fresh, cap_fresh;
  struct event *fresh_ev, *resume_ev;
  struct evconnlistener *lev;
  int paused;
  struct timespec last_sweep;
  uint64_t refused, pauses;
};

static double since(const struct timespec *t) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) * 1e-9;
}

/* Whether fd is still the connection s recorded: the same local address
 * (the listener's) and the same peer. A socket the peer reset keeps its
 * local address and has no peer (ENOTCONN) -- still open, still counted. */
static int alive(int fd, const struct slot *s) {
  struct sockaddr_storage a;
  socklen_t l = sizeof a;
  if (getsockname(fd, (struct sockaddr *)&a, &l) != 0) return 0;
  if (l != s->llen || memcmp(&a, &s->local, l) != 0) return 0;
  l = sizeof a;
  if (getpeername(fd, (struct sockaddr *)&a, &l) != 0) return errno == ENOTCONN;
  return l == s->plen && memcmp(&a, &s->peer, l) == 0;
}

/* Drops the records of closed connections; at most every 10 ms unless
 * forced (a sweep is two system calls per open connection). */
static void sweep(struct strata_http_conns *c, int force) {
  if (!force && since(&c->last_sweep) < 0.01) return;
  clock_gettime(CLOCK_MONOTONIC, &c->last_sweep);
  for (size_t fd = 0; fd < c->n_slots; fd++)
    if (c->slots[fd].used && !alive((int)fd, &c->slots[fd])) {
      c->slots[fd].used = 0;
      free(c->slots[fd].scan);
      c->slots[fd].scan = NULL;
      c->open--;
    }
}

static void pause_accepting(struct strata_http_conns *c, const char *why) {
  if (!c->lev || c->paused) return;
  evconnlistener_disable(c->lev);
  c->paused = 1;
  c->pauses++;
  strata_log(STRATA_LOG_WARN, c->who, "accepting paused: %s (%zu connection%s open, limit %zu)",
             why, c->open, c->open == 1 ? "" : "s", c->max);
  struct timeval tv = {0, 100 * 1000};
  evtimer_add(c->resume_ev, &tv);
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  struct strata_http_conns *c = arg;
  if (!c->lev) return;
  sweep(c, 1);
  if (c->open < c->max && evconnlistener_enable(c->lev) == 0) {
    c->paused = 0;
    strata_log(STRATA_LOG_INFO, c->who, "accepting again (%zu connection%s open)", c->open,
               c->open == 1 ? "" : "s");
    return;
  }
  struct timeval tv = {0, 100 * 1000};
  evtimer_add(c->resume_ev, &tv);
}

static void on_input(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg) {
  if (info->n_added) strata_http_scan_feed(arg, in, info->n_added);
}

/* Records the connection on socket fd; 0, or -1 when it could not be. */
static int record(struct strata_http_conns *c, int fd) {
  if ((size_t)fd >= c->n_slots) {
    size_t n = c->n_slots ? c->n_slots : 64;
    while (n <= (size_t)fd) n *= 2;
    struct slot *s = realloc(c->slots, n * sizeof *s);
    if (!s) return -1; /* uncounted; the next one may fit */
    memset(s + c->n_slots, 0, (n - c->n_slots) * sizeof *s);
    c->slots = s;
    c->n_slots = n;
  }
  struct slot *s = &c->slots[fd];
  if (s->used) c->open--; /* the number was reused: that one is closed */
  free(s->scan);
  memset(s, 0, sizeof *s);
  s->llen = sizeof s->local;
  s->plen = sizeof s->peer;
  if (getsockname(fd, (struct sockaddr *)&s->local, &s->llen) != 0) return -1;
  if (getpeername(fd, (struct sockaddr *)&s->peer, &s->plen) != 0) s->plen = 0;
  if (c->open >= c->max) sweep(c, 0);
  s->over = c->open >= c->max;
  if (s->over) c->refused++;
  s->used = 1;
  c->open++;
  if (c->open >= c->hard) pause_accepting(c, "too many open connections");
  return 0;
}

static void take_fresh(struct strata_http_conns *c) {
  for (size_t i = 0; i < c->n_fresh; i++) {
    const evutil_socket_t fd = bufferevent_getfd(c->fresh[i]);
    if (fd >= 0 && record(c, (int)fd) == 0 && c->body_limit > 0) {
      struct slot *s = &c->slots[fd];
      s->scan = malloc(sizeof *s->scan);
      if (s->scan) {
        strata_http_scan_init(s->scan, c->body_limit);
        struct evbuffer *in = bufferevent_get_input(c->fresh[i]);
        /* bytes read before now (none, normally: this runs before the
         * socket's first read) are looked at as new */
        if (!evbuffer_add_cb(in, on_input, s->scan)) {
          free(s->scan);
          s->scan = NULL;
        } else if (evbuffer_get_length(in) > 0) {
          strata_http_scan_feed(s->scan, in, evbuffer_get_length(in));
        }
      }
    }
    bufferevent_decref(c->fresh[i]);
  }
  c->n_fresh = 0;
}

static void on_fresh(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  take_fresh(arg);
}

/* evhttp's bufferevent callback: the one evhttp would make itself, held
 * until its socket is known. */
static struct bufferevent *on_accept(struct event_base *base, void *arg) {
  struct strata_http_conns *c = arg;
  struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) return NULL;
  if (c->n_fresh == c->cap_fresh) {
    const size_t n = c->cap_fresh ? 2 * c->cap_fresh : 16;
    struct bufferevent **f = realloc(c->fresh, n * sizeof *f);
    if (!f) return bev; /* uncounted */
    c->fresh = f;
    c->cap_fresh = n;
  }
  bufferevent_incref(bev);
  c->fresh[c->n_fresh++] = bev;
  event_active(c->fresh_ev, EV_TIMEOUT, 0);
  return bev;
}

static void on_accept_error(struct evconnlistener *lev, void *arg) {
  (void)lev;
  struct strata_http_conns *c = arg;
  const int err = EVUTIL_SOCKET_ERROR();
  if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
    char why[128];
    snprintf(why, sizeof why, "accept: %s", strerror(err));
    pause_accepting(c, why);
  } else {
    strata_log(STRATA_LOG_WARN, c->who, "accept: %s", strerror(err));
  }
}

static size_t hard_of(size_t max) { return max + max / 8 + 4; }

struct strata_http_conns *strata_http_conns_new(struct event_base *base, struct evhttp *http,
                                                const char *who, size_t max,
                                                unsigned fds_per_conn) {
  struct strata_http_conns *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->base = base;
  snprintf(c->who, sizeof c->who, "%s", who);
  if (max < 1) max = 1;
  /* Descriptors: every connection up to the pause point with its own, and
   * 64 for the rest of the process (listener, log, model, engine). */
  const rlim_t per = 1 + (rlim_t)fds_per_conn;
  const rlim_t need = (rlim_t)hard_of(max) * per + 64;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
    struct rlimit want = rl;
    want.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl = want;
    if (rl.rlim_cur < need) {
      const rlim_t usable = rl.rlim_cur > 64 + 5 * per ? (rl.rlim_cur - 64) / per : 5;
      size_t fit = (size_t)(usable - 4) * 8 / 9;
      while (fit > 1 && hard_of(fit) > usable) fit--;
      strata_log(STRATA_LOG_WARN, who,
                 "max_connections %zu lowered to %zu: the file descriptor limit is %llu "
                 "(raise it with ulimit -n)",
                 max, fit, (unsigned long long)rl.rlim_cur);
      max = fit ? fit : 1;
    }
  }
  c->max = max;
  c->hard = hard_of(max);
  c->fresh_ev = event_new(base, -1, 0, on_fresh, c);
  c->resume_ev = evtimer_new(base, on_resume, c);
  if (!c->fresh_ev || !c->resume_ev) {
    strata_http_conns_free(c);
    return NULL;
  }
  clock_gettime(CLOCK_MONOTONIC, &c->last_sweep);
  evhttp_set_bevcb(http, on_accept, c);
  return c;
}

void strata_http_conns_attach(struct strata_http_conns *c, struct evhttp_bound_socket *bound) {
  c->lev = bound ? evhttp_bound_socket_get_listener(bound) : NULL;
  if (c->lev) {
    evconnlistener_set_error_cb(c->lev, on_accept_error);
  } else {
    evtimer_del(c->resume_ev);
    c->paused = 0;
  }
}

int strata_http_conns_over(struct strata_http_conns *c, struct evhttp_request *req) {
  if (c->n_fresh) take_fresh(c);
  struct evhttp_connection *conn = evhttp_request_get_connection(req);
  struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
  const evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
  return fd >= 0 && (size_t)fd < c->n_slots && c->slots[fd].used && c->slots[fd].over;
}

void strata_http_conns_refuse_headers(struct evhttp_request *req) {
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Connection", "close");
  evhttp_add_header(h, "Retry-After", "1");
}

size_t strata_http_conns_max(const struct strata_http_conns *c) { return c->max; }

void strata_http_conns_body_limit(struct strata_http_conns *c, uint64_t bytes) {
  c->body_limit = bytes;
}

void strata_http_conns_metrics(struct strata_http_conns *c, struct evbuffer *b,
                               const char *prefix) {
  if (c->n_fresh) take_fresh(c);
  sweep(c, 1);
  const size_t open = c->open;
  evbuffer_add_printf(b,
                      "# HELP %s_connections Open client connections.\n"
                      "# TYPE %s_connections gauge\n%s_connections %zu\n"
                      "# HELP %s_connections_max Client connections served at once "
                      "(max_connections, fitted to the descriptor limit).\n"
                      "# TYPE %s_connections_max gauge\n%s_connections_max %zu\n"
                      "# HELP %s_connections_refused_total Connections that arrived at the "
                      "limit and got 503.\n"
                      "# TYPE %s_connections_refused_total counter\n"
                      "%s_connections_refused_total %llu\n"
                      "# HELP %s_accept_pauses_total Times accepting paused (far over the "
                      "limit, or out of descriptors).\n"
                      "# TYPE %s_accept_pauses_total counter\n%s_accept_pauses_total %llu\n",
                      prefix, prefix, prefix, open, prefix, prefix, prefix, c->max, prefix,
                      prefix, prefix, (unsigned long long)c->refused, prefix, prefix, prefix,
                      (unsigned long long)c->pauses);
}

void strata_http_conns_free(struct strata_http_conns *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n_fresh; i++) bufferevent_decref(c->fresh[i]);
  if (c->fresh_ev) event_free(c->fresh_ev);
  if (c->resume_ev) event_free(c->resume_ev);
  free(c->fresh);
  /* after evhttp_free: the connections, and their buffers, are gone */
  for (size_t fd = 0; fd < c->n_slots; fd++) free(c->slots[fd].scan);
  free(c->slots);
  free(c);
}
