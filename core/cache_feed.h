/* GET /v1/cache/events: the engine's prefix-cache events as a server-sent
 * event stream, for routers that keep an exact index of which instance
 * holds which blocks (`strata route`'s kv-aware policy). docs/http-api.md
 * gives the message format.
 *
 * A subscriber first gets a hello (block size, hash scheme), then a
 * snapshot of every block cached now, then stored/removed events as the
 * engine's KV manager emits them, polled from its event log every
 * FEED_TICK_MS. One that falls behind the log gets a reset and a new
 * snapshot; one that stops reading altogether is disconnected. Everything
 * runs on the server's libevent thread. */
#ifndef STRATA_CACHE_FEED_H
#define STRATA_CACHE_FEED_H

#include <event2/event.h>
#include <event2/http.h>

#include "engine.h"
#include "http_api.h"

struct cache_feed;

/* NULL when out of memory. model: the served model name (in the hello). */
struct cache_feed *cache_feed_new(struct event_base *base, strata_engine_t *eng,
                                  const char *model);
/* Starts the request's stream: 0; or -1 with e filled (404 when prefix
 * caching is off, 500 out of memory) for the caller to answer. */
int cache_feed_add(struct cache_feed *f, struct evhttp_request *http,
                   struct strata_api_error *e);
/* Subscribers now. */
int cache_feed_count(const struct cache_feed *f);
/* Ends every stream (a stopping server). */
void cache_feed_end_all(struct cache_feed *f);
/* Forgets every stream (the connections are freed with the evhttp) and
 * frees the feed. */
void cache_feed_free(struct cache_feed *f);

#endif
