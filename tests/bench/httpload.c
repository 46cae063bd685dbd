/* httpload: an open-loop HTTP load generator for the router's overhead.
 *
 * Sends POST requests at a fixed rate (not "as fast as answers come back":
 * a closed loop hides queueing) over a pool of keep-alive connections, and
 * prints the achieved rate and latency percentiles. A request's latency
 * runs from the moment the schedule says it should start, so time it spent
 * waiting for a free connection counts (no coordinated omission).
 *
 * Run it against an engine directly and through `strata route` in front of
 * it: the difference of the percentiles is what the router adds
 * (tests/bench/route_overhead.sh does exactly that).
 *
 * Not built by `make check`. Build and run:
 *   gcc -O2 -o httpload tests/bench/httpload.c -levent
 *   ./httpload URL RATE SECONDS [CONNECTIONS [BODY]]
 * e.g. ./httpload http://127.0.0.1:8080/v1/completions 2000 5 64 \
 *        '{"prompt":"Hi","max_tokens":1}'
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct conn {
  struct evhttp_connection *c;
  double started; /* scheduled start of its request */
  int busy;
};

static struct event_base *base;
static struct conn *conns;
static int n_conns;
static const char *host, *path, *body;
static int port;
static double t0, rate, secs, *lat;
static size_t n_lat, cap_lat, errors, sent, scheduled;
static double *pending; /* scheduled times waiting for a connection, a FIFO */
static size_t p_head, p_tail, p_cap;

static void send_on(struct conn *k, double when);

static void on_done(struct evhttp_request *req, void *arg) {
  struct conn *k = arg;
  const double t = now();
  if (!req || evhttp_request_get_response_code(req) != 200) errors++;
  else {
    if (n_lat == cap_lat) lat = realloc(lat, (cap_lat = cap_lat ? cap_lat * 2 : 65536) * sizeof *lat);
    lat[n_lat++] = t - k->started;
  }
  k->busy = 0;
  if (p_head < p_tail) send_on(k, pending[p_head++]);
}

static void send_on(struct conn *k, double when) {
  struct evhttp_request *r = evhttp_request_new(on_done, k);
  struct evkeyvalq *h = evhttp_request_get_output_headers(r);
  evhttp_add_header(h, "Host", host);
  evhttp_add_header(h, "Content-Type", "application/json");
  evbuffer_add(evhttp_request_get_output_buffer(r), body, strlen(body));
  k->busy = 1;
  k->started = when;
  sent++;
  if (evhttp_make_request(k->c, r, EVHTTP_REQ_POST, path) != 0) {
    errors++;
    k->busy = 0;
  }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct event *self = arg;
  const double t = now();
  if (t - t0 >= secs) {
    event_del(self);
    return;
  }
  /* every request whose time has come */
  while ((double)scheduled / rate <= t - t0) {
    const double when = t0 + (double)scheduled / rate;
    scheduled++;
    int i = 0;
    while (i < n_conns && conns[i].busy) i++;
    if (i < n_conns) {
      send_on(&conns[i], when);
    } else {
      if (p_tail == p_cap) pending = realloc(pending, (p_cap = p_cap ? p_cap * 2 : 4096) * sizeof *pending);
      pending[p_tail++] = when;
    }
  }
}

static int cmp(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: httpload URL RATE SECONDS [CONNECTIONS [BODY]]\n");
    return 2;
  }
  struct evhttp_uri *u = evhttp_uri_parse(argv[1]);
  if (!u || !evhttp_uri_get_host(u)) {
    fprintf(stderr, "httpload: bad URL %s\n", argv[1]);
    return 2;
  }
  host = evhttp_uri_get_host(u);
  port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
  path = evhttp_uri_get_path(u) && *evhttp_uri_get_path(u) ? evhttp_uri_get_path(u) : "/";
  rate = atof(argv[2]);
  secs = atof(argv[3]);
  n_conns = argc > 4 ? atoi(argv[4]) : 64;
  body = argc > 5 ? argv[5] : "{\"prompt\":\"Hi\",\"max_tokens\":1}";
  if (rate <= 0 || secs <= 0 || n_conns <= 0) {
    fprintf(stderr, "httpload: RATE, SECONDS and CONNECTIONS must be > 0\n");
    return 2;
  }
  /* epoll's timeout counts whole milliseconds, and the VM's timer is coarser
   * still: without a precise timer (timerfd) the 0.2 ms tick fires 2-4 ms late
   * and that lag lands in every latency measured from the schedule */
  struct event_config *ec = event_config_new();
  event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
  base = event_base_new_with_config(ec);
  event_config_free(ec);
  conns = calloc((size_t)n_conns, sizeof *conns);
  for (int i = 0; i < n_conns; i++) {
    conns[i].c = evhttp_connection_base_new(base, NULL, host, (unsigned short)port);
    evhttp_connection_set_timeout(conns[i].c, 30);
  }
  struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, event_self_cbarg());
  struct timeval tv = {0, 200}; /* 0.2 ms: requests go out close to their time */
  t0 = now();
  event_add(tick, &tv);
  event_base_dispatch(base); /* ends when the ticks stop and every answer is in */
  const double took = now() - t0;
  qsort(lat, n_lat, sizeof *lat, cmp);
#define PCT(p) (n_lat ? lat[(size_t)((p) * (double)(n_lat - 1))] * 1e6 : 0.0)
  printf("requests %zu in %.2f s (%.0f/s, asked %.0f/s), errors %zu\n", sent, took,
         (double)sent / secs, rate, errors);
  printf("latency us: p50 %.0f p90 %.0f p99 %.0f max %.0f\n", PCT(0.50), PCT(0.90), PCT(0.99),
         n_lat ? lat[n_lat - 1] * 1e6 : 0.0);
  for (int i = 0; i < n_conns; i++) evhttp_connection_free(conns[i].c);
  event_free(tick);
  event_base_free(base);
  evhttp_uri_free(u);
  free(conns);
  free(lat);
  free(pending);
  return errors ? 1 : 0;
}
