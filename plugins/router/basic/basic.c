/* Two routing policies from one source:
 *   round-robin  (built plain): the instances in turn, by id;
 *   least-loaded (built with ROUTER_LEAST_LOADED): the power of d choices
 *                on each instance's load, running + waiting requests.
 *
 * Round-robin walks ids, not positions in the list it is given: the list
 * holds only the instances eligible now, so a position shifts whenever one
 * is ejected, readmitted or already tried; the next id after the last one
 * chosen keeps the turn fair through all of that.
 *
 * Least-loaded: an instance's load is router_load() (load.h). Sampling d instances
 * and taking the least loaded (Mitzenmacher's power of two choices) keeps
 * a burst that arrives between two scrapes from all landing on the one
 * instance that looked idlest; d = 0 compares every instance. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <strata/plugin.h>
#include <strata/router.h>

#include "../load.h"

static const struct strata_host_api *host;

struct basic {
  int32_t last;   /* round-robin: the id chosen last, -1 before the first */
  int choices;    /* least-loaded: d */
  uint64_t rng;   /* least-loaded: xorshift64 state */
};

static int basic_init(const struct strata_host_api *h, const strata_config_node_t *cfg, char *err,
                      size_t errlen) {
  (void)cfg;
  (void)err;
  (void)errlen;
  host = h;
  return 0;
}

static int basic_create(const strata_config_node_t *cfg, void **state, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  struct basic *r = calloc(1, sizeof *r);
  if (!r) return -1;
  r->last = -1;
#ifdef ROUTER_LEAST_LOADED
  r->choices = (int)host->config_int(cfg, "choices");
  const int64_t seed = host->config_int(cfg, "seed");
  r->rng = seed ? (uint64_t)seed : (uint64_t)(uintptr_t)r ^ 0x9e3779b97f4a7c15ull;
#else
  (void)cfg;
#endif
  *state = r;
  return 0;
}

static void basic_destroy(void *state) { free(state); }

#ifdef ROUTER_LEAST_LOADED
static uint64_t next_rand(struct basic *r) {
  r->rng ^= r->rng << 13;
  r->rng ^= r->rng >> 7;
  r->rng ^= r->rng << 17;
  return r->rng;
}

#endif

static int basic_route(void *state, const struct strata_route_request *req,
                       const struct strata_route_backend *b, size_t n,
                       struct strata_route_choice *out) {
  struct basic *r = state;
  (void)req;
  size_t pick = 0;
#ifdef ROUTER_LEAST_LOADED
  if (r->choices <= 0 || (size_t)r->choices >= n) {
    pick = router_least_loaded(b, n);
  } else {
    /* d distinct samples: a partial Fisher-Yates over the positions */
    size_t idx[64];
    const size_t m = n < 64 ? n : 64, d = (size_t)r->choices < m ? (size_t)r->choices : m;
    for (size_t i = 0; i < m; i++) idx[i] = i;
    pick = SIZE_MAX;
    for (size_t i = 0; i < d; i++) {
      const size_t j = i + (size_t)(next_rand(r) % (m - i));
      const size_t t = idx[i];
      idx[i] = idx[j];
      idx[j] = t;
      if (pick == SIZE_MAX || router_less_loaded(&b[idx[i]], &b[pick])) pick = idx[i];
    }
  }
  out->reason = "least_loaded";
#else
  /* the smallest id after the last one chosen, else the smallest id */
  size_t first = 0, after = SIZE_MAX;
  for (size_t i = 0; i < n; i++) {
    if (b[i].id < b[first].id) first = i;
    if (b[i].id > r->last && (after == SIZE_MAX || b[i].id < b[after].id)) after = i;
  }
  pick = after != SIZE_MAX ? after : first;
  out->reason = "round_robin";
#endif
  r->last = b[pick].id;
  out->id = b[pick].id;
  return 0;
}

static const struct strata_param basic_params[] = {
#ifdef ROUTER_LEAST_LOADED
    {"choices", STRATA_PARAM_INT, 0, "2", 0, 64,
     "instances sampled per request, the least loaded wins (0: all)"},
    {"seed", STRATA_PARAM_INT, 0, "0", 0, 9007199254740991.0,
     "sampling seed (0: a different one each run)"},
#endif
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_router_vtable basic_vtable = {
    .size = sizeof(struct strata_router_vtable),
    .create = basic_create,
    .destroy = basic_destroy,
    .route = basic_route,
    .on_done = NULL,
};

static const struct strata_plugin_desc basic_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_ROUTER,
#ifdef ROUTER_LEAST_LOADED
    .name = "least-loaded",
    .description = "power of d choices on running + waiting requests (from /metrics) and "
                   "requests open on each instance",
#else
    .name = "round-robin",
    .description = "every eligible instance in turn",
#endif
    .version = "1.0",
    .license = "MIT",
    .params = basic_params,
    .init = basic_init,
    .fini = NULL,
    .vt.router = &basic_vtable,
};

STRATA_PLUGIN_DEFINE(basic_desc)
