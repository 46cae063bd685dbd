/* GET /v1/cache/events (cache_feed.h). */
#include "config.h"

#include "cache_feed.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>

#include "http_api.h"
#include "kv_events.h"
#include "util.h"

#define FEED_TICK_MS 20
#define FEED_PING_SECONDS 5.0
#define FEED_BATCH 4096       /* events read per subscriber per tick */
#define FEED_MSG_HASHES 512   /* hashes per SSE message at most */
#define FEED_SLOW_BYTES (1u << 20)  /* unsent bytes: skip this tick */
#define FEED_DROP_BYTES (32u << 20) /* unsent bytes: disconnect */

struct csub {
  struct cache_feed *f;
  struct csub *prev, *next;
  struct evhttp_request *http;
  struct evhttp_connection *evcon;
  uint64_t seq; /* next event to send */
  double last_sent;
};

struct cache_feed {
  struct event_base *base;
  strata_engine_t *eng;
  char *model;
  struct event *tick;
  struct csub *subs;
  int n;
  struct strata_kv_evrec *buf; /* [FEED_BATCH] */
};

static void sub_free(struct csub *s) {
  struct cache_feed *f = s->f;
  if (s->evcon) evhttp_connection_set_closecb(s->evcon, NULL, NULL);
  if (s->prev) s->prev->next = s->next;
  else f->subs = s->next;
  if (s->next) s->next->prev = s->prev;
  f->n--;
  if (!f->n && f->tick) event_del(f->tick);
  free(s);
}

static void on_close(struct evhttp_connection *evcon, void *arg) {
  (void)evcon;
  struct csub *s = arg;
  /* evhttp detaches an unfinished request from a dying connection and
   * leaves it to its user */
  if (s->http && !evhttp_request_get_connection(s->http)) evhttp_request_free(s->http);
  s->evcon = NULL;
  s->http = NULL;
  sub_free(s);
}

static size_t unsent(const struct csub *s) {
  struct bufferevent *bev = s->evcon ? evhttp_connection_get_bufferevent(s->evcon) : NULL;
  return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

static void send_buf(struct csub *s, struct evbuffer *b) {
  if (evbuffer_get_length(b)) {
    evhttp_send_reply_chunk(s->http, b);
    s->last_sent = strata_now();
  }
}

/* One SSE message listing hashes: {"type":T[,"seq":N][,"parent_block_hash":P],"block_hashes":[..]} */
static void add_msg(struct evbuffer *b, const char *type, const uint64_t *seq,
                    const struct strata_kv_hash *parent, const struct strata_kv_hash *h, size_t n,
                    size_t stride) {
  char hex[33];
  evbuffer_add_printf(b, "data: {\"type\":\"%s\"", type);
  if (seq) evbuffer_add_printf(b, ",\"seq\":%llu", (unsigned long long)*seq);
  if (parent) {
    strata_kv_hash_hex(*parent, hex);
    evbuffer_add_printf(b, ",\"parent_block_hash\":\"%s\"", hex);
  }
  evbuffer_add(b, ",\"block_hashes\":[", 17);
  for (size_t i = 0; i < n; i++) {
    strata_kv_hash_hex(*(const struct strata_kv_hash *)((const char *)h + i * stride), hex);
    evbuffer_add_printf(b, "%s\"%s\"", i ? "," : "", hex);
  }
  evbuffer_add(b, "]}\n\n", 4);
}

/* The whole cache now, and where the events go on from. */
static int snapshot(struct csub *s, struct evbuffer *b) {
  struct strata_kv_hash *h;
  int32_t n;
  const int rc = strata_engine_cache_snapshot(s->f->eng, &h, &n, &s->seq);
  if (rc != 0) return rc;
  for (int32_t i = 0; i < n; i += FEED_MSG_HASHES)
    add_msg(b, "snapshot", NULL, NULL, h + i,
            (size_t)(n - i < FEED_MSG_HASHES ? n - i : FEED_MSG_HASHES), sizeof *h);
  evbuffer_add_printf(b, "data: {\"type\":\"snapshot_end\",\"blocks\":%d,\"seq\":%llu}\n\n", n,
                      (unsigned long long)s->seq);
  free(h);
  return 0;
}

/* The subscriber's events since its last send, as messages: a run of
 * STORED events that chain (each the parent of the next) is one message,
 * a run of REMOVED events another. */
static void pump(struct csub *s, struct evbuffer *b) {
  struct cache_feed *f = s->f;
  for (int round = 0; round < 4; round++) {
    const long n = strata_engine_cache_events(f->eng, s->seq, f->buf, FEED_BATCH);
    if (n < 0) {
      /* fell out of the log: start again from a snapshot */
      evbuffer_add_printf(b, "data: {\"type\":\"reset\",\"reason\":\"fell behind the event log\"}\n\n");
      if (snapshot(s, b) != 0) return; /* out of memory: again next tick */
      continue;
    }
    if (n == 0) return;
    for (long i = 0; i < n;) {
      long j = i + 1;
      const enum strata_kv_event_type t = f->buf[i].type;
      while (j < n && j - i < FEED_MSG_HASHES && f->buf[j].type == t &&
             (t != STRATA_KV_EVENT_STORED ||
              strata_kv_hash_eq(f->buf[j].parent, f->buf[j - 1].hash)))
        j++;
      add_msg(b, t == STRATA_KV_EVENT_STORED ? "stored" : "removed", &f->buf[i].seq,
              t == STRATA_KV_EVENT_STORED ? &f->buf[i].parent : NULL, &f->buf[i].hash,
              (size_t)(j - i), sizeof f->buf[0]);
      i = j;
    }
    s->seq = f->buf[n - 1].seq + 1;
    if (n < FEED_BATCH) return;
  }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct cache_feed *f = arg;
  const double now = strata_now();
  for (struct csub *s = f->subs, *nx; s; s = nx) {
    nx = s->next;
    const size_t q = unsent(s);
    if (q > FEED_DROP_BYTES) {
      /* not reading: drop it (a router reconnects and starts over) */
      struct evhttp_connection *c = s->evcon;
      s->evcon = NULL;
      evhttp_connection_set_closecb(c, NULL, NULL);
      sub_free(s);
      evhttp_connection_free(c);
      continue;
    }
    if (q > FEED_SLOW_BYTES) continue;
    struct evbuffer *b = evbuffer_new();
    if (!b) return;
    pump(s, b);
    if (!evbuffer_get_length(b) && now - s->last_sent >= FEED_PING_SECONDS)
      evbuffer_add(b, ": ping\n\n", 8);
    send_buf(s, b);
    evbuffer_free(b);
  }
}

struct cache_feed *cache_feed_new(struct event_base *base, strata_engine_t *eng,
                                  const char *model) {
  struct cache_feed *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->base = base;
  f->eng = eng;
  f->model = strata_strdup(model);
  f->buf = malloc(FEED_BATCH * sizeof *f->buf);
  f->tick = event_new(base, -1, EV_PERSIST, on_tick, f);
  if (!f->model || !f->buf || !f->tick) {
    cache_feed_free(f);
    return NULL;
  }
  return f;
}

int cache_feed_add(struct cache_feed *f, struct evhttp_request *http,
                   struct strata_api_error *e) {
  struct csub *s = calloc(1, sizeof *s);
  struct evbuffer *b = s ? evbuffer_new() : NULL;
  if (!b) {
    free(s);
    return strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
  }
  s->f = f;
  s->http = http;
  s->evcon = evhttp_request_get_connection(http);
  evbuffer_add_printf(b, "data: {\"type\":\"hello\",\"model\":\"");
  for (const char *p = f->model; *p; p++) /* a served model name is plain text; keep it JSON */
    if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) evbuffer_add(b, p, 1);
  evbuffer_add_printf(b, "\",\"block_size\":%d,\"hash\":\"xxh3-128\"}\n\n",
                      (int)strata_engine_block_size(f->eng));
  const int rc = snapshot(s, b);
  if (rc != 0) {
    evbuffer_free(b);
    free(s);
    if (rc == -2) return strata_api_errorf(e, 500, NULL, NULL, NULL, "out of memory");
    return strata_api_errorf(e, 404, NULL, "not_found", NULL,
                             "prefix caching is off (engine.kv_cache.prefix_caching), so there "
                             "are no cache events");
  }
  struct evkeyvalq *h = evhttp_request_get_output_headers(http);
  evhttp_add_header(h, "Content-Type", "text/event-stream");
  evhttp_add_header(h, "Cache-Control", "no-cache");
  if (s->evcon) {
    evhttp_connection_set_closecb(s->evcon, on_close, s);
    /* a subscription lasts as long as the engine; pings keep it moving */
    evhttp_connection_set_timeout(s->evcon, 3600);
  }
  evhttp_send_reply_start(http, 200, "OK");
  send_buf(s, b);
  evbuffer_free(b);
  s->next = f->subs;
  if (f->subs) f->subs->prev = s;
  f->subs = s;
  if (!f->n++) {
    const struct timeval tv = {0, FEED_TICK_MS * 1000};
    event_add(f->tick, &tv);
  }
  return 0;
}

int cache_feed_count(const struct cache_feed *f) { return f ? f->n : 0; }

void cache_feed_end_all(struct cache_feed *f) {
  while (f && f->subs) {
    struct csub *s = f->subs;
    struct evhttp_request *http = s->http;
    sub_free(s);
    if (http) evhttp_send_reply_end(http);
  }
}

void cache_feed_free(struct cache_feed *f) {
  if (!f) return;
  while (f->subs) sub_free(f->subs);
  if (f->tick) event_free(f->tick);
  free(f->buf);
  free(f->model);
  free(f);
}
