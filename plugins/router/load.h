/* What the router policies count as an instance's load, shared by the
 * policies that fall back to the least loaded. */
#ifndef STRATA_ROUTER_LOAD_H
#define STRATA_ROUTER_LOAD_H

#include <stddef.h>
#include <stdint.h>

#include <strata/router.h>

/* Running + waiting requests as the instance's /metrics last said, but
 * never less than the requests this router has open on it now, which are
 * fresher than any scrape. */
static inline int64_t router_load(const struct strata_route_backend *b) {
  const int64_t q = (b->running > 0 ? b->running : 0) + (b->waiting > 0 ? b->waiting : 0);
  return q > b->inflight ? q : b->inflight;
}

/* a beats c: less load, then fewer open here, then fewer routed so far */
static inline int router_less_loaded(const struct strata_route_backend *a,
                                     const struct strata_route_backend *c) {
  const int64_t la = router_load(a), lc = router_load(c);
  if (la != lc) return la < lc;
  if (a->inflight != c->inflight) return a->inflight < c->inflight;
  return a->routed < c->routed;
}

/* The position of the least loaded of b[0..n), n >= 1. */
static inline size_t router_least_loaded(const struct strata_route_backend *b, size_t n) {
  size_t pick = 0;
  for (size_t i = 1; i < n; i++)
    if (router_less_loaded(&b[i], &b[pick])) pick = i;
  return pick;
}

#endif
