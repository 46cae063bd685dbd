/* kv-aware: a request goes to the instance whose prefix cache holds the
 * longest prefix of its prompt, as the instances themselves say.
 *
 * Unlike prefix-aware (an estimate from what the router sent), the counts
 * are exact: the host tells the policy, per instance, how many leading
 * prompt tokens sit in its cache (strata_route_request.cached_tokens),
 * from an index kept from the instance's GET /v1/cache/events stream or,
 * where there is none, from a POST /v1/cache/stats probe. So an eviction,
 * an engine restart or another router's traffic is seen as it happens.
 *
 * Choice: the most cached tokens (ties: the less loaded). Below
 * `min_match_tokens` nothing is worth a detour: the least loaded instance
 * takes it ("kv_miss", or "kv_unknown" when no instance could say).
 * Balance, as prefix-aware: an instance more than `max_imbalance` requests
 * above the least loaded one is passed over for the best match among those
 * within the bound ("kv_overloaded" when none of them holds enough), so one
 * system prompt cached everywhere first spreads, then routes by load. */
#include <stdint.h>
#include <stdlib.h>

#include <strata/plugin.h>
#include <strata/router.h>

#include "../load.h"

static const struct strata_host_api *host;

struct kv {
  int64_t min_match, max_imbalance;
};

static int kv_init(const struct strata_host_api *h, const strata_config_node_t *cfg, char *err,
                   size_t errlen) {
  (void)cfg;
  (void)err;
  (void)errlen;
  host = h;
  return 0;
}

static int kv_create(const strata_config_node_t *cfg, void **state, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  struct kv *k = calloc(1, sizeof *k);
  if (!k) return -1;
  k->min_match = host->config_int(cfg, "min_match_tokens");
  k->max_imbalance = host->config_int(cfg, "max_imbalance");
  *state = k;
  return 0;
}

static void kv_destroy(void *state) { free(state); }

/* Position of the instance with the most cached tokens among b[0..n) whose
 * load is within `bound` of floor (bound < 0: any); *best_c its count (-1:
 * none known). */
static size_t best_cached(const struct strata_route_backend *b, size_t n, const int32_t *c,
                          int64_t floor, int64_t bound, int32_t *best_c) {
  size_t pick = n;
  *best_c = -1;
  for (size_t j = 0; j < n; j++) {
    if (bound >= 0 && router_load(&b[j]) - floor > bound) continue;
    if (pick == n || c[j] > *best_c || (c[j] == *best_c && router_less_loaded(&b[j], &b[pick]))) {
      pick = j;
      *best_c = c[j];
    }
  }
  return pick;
}

static int kv_route(void *state, const struct strata_route_request *req,
                    const struct strata_route_backend *b, size_t n,
                    struct strata_route_choice *out) {
  struct kv *k = state;
  int32_t *c = n ? calloc(n, sizeof *c) : NULL;
  if (!c) return -1;
  int known = 0;
  for (size_t j = 0; j < n; j++) {
    c[j] = req->cached_tokens ? req->cached_tokens(req, b[j].id) : -1;
    known |= c[j] >= 0;
  }
  const size_t least = router_least_loaded(b, n);
  const int64_t floor = router_load(&b[least]);
  int32_t bc;
  size_t pick = best_cached(b, n, c, floor, -1, &bc);
  if (bc < k->min_match || bc <= 0) {
    pick = least;
    out->reason = known ? "kv_miss" : "kv_unknown";
  } else if (router_load(&b[pick]) - floor > k->max_imbalance) {
    pick = best_cached(b, n, c, floor, k->max_imbalance, &bc);
    if (bc < k->min_match || bc <= 0) {
      pick = least;
      out->reason = "kv_overloaded";
    } else {
      out->reason = "kv_match";
    }
  } else {
    out->reason = "kv_match";
  }
  out->id = b[pick].id;
  free(c);
  return 0;
}

static const struct strata_param kv_params[] = {
    {"min_match_tokens", STRATA_PARAM_INT, 0, "32", 0, 1 << 30,
     "fewest cached prompt tokens worth routing by; below it the least loaded instance"},
    {"max_imbalance", STRATA_PARAM_INT, 0, "8", 0, 1 << 30,
     "requests an instance may carry above the least loaded one and still be chosen for its "
     "cache"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_router_vtable kv_vtable = {
    .size = sizeof(struct strata_router_vtable),
    .create = kv_create,
    .destroy = kv_destroy,
    .route = kv_route,
    .on_done = NULL,
    .needs = STRATA_ROUTE_NEEDS_CACHE,
};

static const struct strata_plugin_desc kv_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_ROUTER,
    .name = "kv-aware",
    .version = "1.0",
    .license = "MIT",
    .description = "longest prefix the instances' own caches hold (their cache events), within a "
                   "load-imbalance bound",
    .params = kv_params,
    .init = kv_init,
    .fini = NULL,
    .vt.router = &kv_vtable,
};

STRATA_PLUGIN_DEFINE(kv_desc)
