/* A bounded log of prefix-cache events (blocks stored in and removed from
 * the KV manager's hash table) for subscribers that keep their own index
 * of what an engine holds: GET /v1/cache/events, read by `strata route`'s
 * kv-aware routing.
 *
 * The KV manager appends from its event callback (engine thread, manager
 * mutex held); readers (the HTTP thread) copy events out by sequence
 * number. The log keeps the last `capacity` events: a reader that fell
 * further behind is told so and must start again from a snapshot
 * (strata_kv_list_cached taken together with strata_kv_events_next). Its
 * own mutex is taken inside the manager's, never around it. */
#ifndef STRATA_KV_EVENTS_H
#define STRATA_KV_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "kv_cache.h"

typedef struct strata_kv_events strata_kv_events_t;

struct strata_kv_evrec {
  uint64_t seq;                 /* position in the log, from 0 */
  enum strata_kv_event_type type;
  struct strata_kv_hash hash;
  struct strata_kv_hash parent; /* STORED: the chain's previous block */
};

/* capacity: events kept (rounded up to a power of two, at least 16).
 * NULL when out of memory. */
strata_kv_events_t *strata_kv_events_create(size_t capacity);
void strata_kv_events_destroy(strata_kv_events_t *log);

/* A strata_kv_event_fn: appends ev (ud is the log). */
void strata_kv_events_append(void *ud, const struct strata_kv_event *ev);

/* The sequence number the next event will get. */
uint64_t strata_kv_events_next(strata_kv_events_t *log);

/* Copies up to max events with seq >= from into out. Returns how many (0:
 * none yet), or -1 when events from `from` on are no longer all held (the
 * reader fell more than capacity behind): resynchronize from a snapshot. */
long strata_kv_events_read(strata_kv_events_t *log, uint64_t from, struct strata_kv_evrec *out,
                           size_t max);

/* A hash as 32 lowercase hex digits (hi then lo) and a NUL; and back
 * (0, or -1 if s is not exactly 32 hex digits). */
void strata_kv_hash_hex(struct strata_kv_hash h, char out[33]);
int strata_kv_hash_parse(const char *s, size_t len, struct strata_kv_hash *out);

#endif
