/* The router's exact index of one engine instance's prefix cache, kept
 * from the instance's GET /v1/cache/events stream (cache_feed.h gives the
 * format): an SSE parser, and a set of the block hashes the instance holds.
 * kv-aware routing asks it how many leading blocks of a prompt's hash chain
 * (kv_cache.h: strata_kv_hash_chain) the instance has. Bytes from the
 * instance are outside input: every malformed or oversized piece is an
 * error, after which the host drops the stream and starts a new one. */
#ifndef STRATA_ROUTE_KV_H
#define STRATA_ROUTE_KV_H

#include <stddef.h>
#include <stdint.h>

#include "kv_cache.h"

#define ROUTE_KV_MAX_LINE (1u << 20)   /* bytes in one SSE line or event */
#define ROUTE_KV_MAX_BLOCKS (1u << 22) /* hashes held for one instance */

struct route_kvidx {
  struct strata_kv_hash *slot; /* open addressing; {0,0} empty */
  size_t cap, n;
  int32_t block_size; /* from the hello; 0 before */
  int live;           /* the snapshot is complete: answers are exact */
  uint64_t messages;  /* applied so far */
  /* parser */
  char *line, *data; /* grown as needed, up to ROUTE_KV_MAX_LINE */
  size_t line_len, data_len, line_cap, data_cap;
};

void route_kvidx_init(struct route_kvidx *x);
/* Forgets everything (a new stream starts). */
void route_kvidx_reset(struct route_kvidx *x);
void route_kvidx_free(struct route_kvidx *x);
/* Feeds stream bytes as they arrive. 0, or -1 with the reason in err. */
int route_kvidx_feed(struct route_kvidx *x, const char *p, size_t n, char *err, size_t errlen);
int route_kvidx_has(const struct route_kvidx *x, struct strata_kv_hash h);
/* How many of chain[0..n), from the first, the instance holds. */
int32_t route_kvidx_match(const struct route_kvidx *x, const struct strata_kv_hash *chain,
                          int32_t n);

#endif
