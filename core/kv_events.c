/* The prefix-cache event log (kv_events.h): a ring of the last 2^k events. */
#include "config.h"

#include "kv_events.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct strata_kv_events {
  pthread_mutex_t mu;
  struct strata_kv_evrec *ring;
  size_t mask;   /* capacity - 1 */
  uint64_t next; /* seq of the next event */
};

strata_kv_events_t *strata_kv_events_create(size_t capacity) {
  size_t cap = 16;
  while (cap < capacity && cap < ((size_t)1 << 40)) cap <<= 1;
  strata_kv_events_t *log = calloc(1, sizeof *log);
  if (!log) return NULL;
  log->ring = malloc(cap * sizeof *log->ring);
  if (!log->ring) {
    free(log);
    return NULL;
  }
  log->mask = cap - 1;
  pthread_mutex_init(&log->mu, NULL);
  return log;
}

void strata_kv_events_destroy(strata_kv_events_t *log) {
  if (!log) return;
  pthread_mutex_destroy(&log->mu);
  free(log->ring);
  free(log);
}

void strata_kv_events_append(void *ud, const struct strata_kv_event *ev) {
  strata_kv_events_t *log = ud;
  pthread_mutex_lock(&log->mu);
  struct strata_kv_evrec *r = &log->ring[log->next & log->mask];
  *r = (struct strata_kv_evrec){.seq = log->next, .type = ev->type, .hash = ev->hash,
                                .parent = ev->parent};
  log->next++;
  pthread_mutex_unlock(&log->mu);
}

uint64_t strata_kv_events_next(strata_kv_events_t *log) {
  pthread_mutex_lock(&log->mu);
  const uint64_t n = log->next;
  pthread_mutex_unlock(&log->mu);
  return n;
}

long strata_kv_events_read(strata_kv_events_t *log, uint64_t from, struct strata_kv_evrec *out,
                           size_t max) {
  pthread_mutex_lock(&log->mu);
  const uint64_t cap = (uint64_t)log->mask + 1;
  const uint64_t oldest = log->next > cap ? log->next - cap : 0;
  long n = 0;
  if (from < oldest || from > log->next) {
    n = -1;
  } else {
    for (uint64_t s = from; s < log->next && (size_t)n < max; s++, n++)
      out[n] = log->ring[s & log->mask];
  }
  pthread_mutex_unlock(&log->mu);
  return n;
}

void strata_kv_hash_hex(struct strata_kv_hash h, char out[33]) {
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.hi, (unsigned long long)h.lo);
}

int strata_kv_hash_parse(const char *s, size_t len, struct strata_kv_hash *out) {
  if (!s || len != 32) return -1;
  uint64_t w[2] = {0, 0};
  for (size_t i = 0; i < 32; i++) {
    const char c = s[i];
    const int d = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
    if (d < 0) return -1;
    w[i / 16] = w[i / 16] << 4 | (uint64_t)d;
  }
  out->hi = w[0];
  out->lo = w[1];
  return 0;
}
