/* workflow-aware: the requests of one multi-agent workflow go to the
 * instance that holds the workflow's context, so every agent's turn finds
 * the shared prompt and the earlier turns in that instance's prefix cache.
 *
 * A request names its workflow with the X-Workflow-Id header, or with
 * `workflow_id` in its body's `metadata` (or at the top level). The first
 * request of a workflow binds it to the instance with the fewest active
 * workflows (bindings used in the last `active_window` seconds: a workflow
 * in a tool-call pause sends nothing but still holds its context there),
 * the least loaded among those. Later ones
 * follow the binding, unless that instance carries more than
 * `max_imbalance` requests above the least loaded one, or is out (ejected,
 * removed, already tried): then the workflow moves, the binding with it,
 * and the move is counted (reason "workflow_moved" in the router's
 * metrics). A binding unused for `idle_ttl` seconds ends, and so does one
 * whose workflow the router's workflow API ends (DELETE, or idle there):
 * from then on it no longer counts as active where it was. A request
 * without a workflow goes to the least loaded instance. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#include <strata/plugin.h>
#include <strata/router.h>

#include "../load.h"

static const struct strata_host_api *host;

struct binding {
  uint64_t key; /* hash of the workflow id; 0: empty */
  int32_t id;
  double last;
};

struct workflow {
  int64_t max_imbalance;
  double idle_ttl, active_window;
  struct binding *tab;
  size_t cap, n; /* cap a power of two; n <= cap / 2 */
};

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int wf_init(const struct strata_host_api *h, const strata_config_node_t *cfg, char *err,
                   size_t errlen) {
  (void)cfg;
  (void)err;
  (void)errlen;
  host = h;
  return 0;
}

static int wf_create(const strata_config_node_t *cfg, void **state, char *err, size_t errlen) {
  struct workflow *w = calloc(1, sizeof *w);
  if (w) {
    w->cap = 1024;
    w->tab = calloc(w->cap, sizeof *w->tab);
  }
  if (!w || !w->tab) {
    free(w);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  w->max_imbalance = host->config_int(cfg, "max_imbalance");
  w->idle_ttl = host->config_float(cfg, "idle_ttl");
  w->active_window = host->config_float(cfg, "active_window");
  *state = w;
  return 0;
}

static void wf_destroy(void *state) {
  struct workflow *w = state;
  free(w->tab);
  free(w);
}

static struct binding *find(struct workflow *w, uint64_t key) {
  size_t i = (size_t)(key * 0x9e3779b97f4a7c15ull) & (w->cap - 1);
  while (w->tab[i].key && w->tab[i].key != key) i = (i + 1) & (w->cap - 1);
  return &w->tab[i];
}

/* Makes room: drops idle bindings, and doubles the table if still half full. */
static int make_room(struct workflow *w, double now) {
  size_t cap = w->cap, live = 0;
  for (size_t i = 0; i < w->cap; i++)
    live += w->tab[i].key && now - w->tab[i].last <= w->idle_ttl;
  while (live + 1 > cap / 2) cap *= 2;
  struct binding *old = w->tab, *t = calloc(cap, sizeof *t);
  if (!t) return -1;
  const size_t oldcap = w->cap;
  w->tab = t;
  w->cap = cap;
  w->n = 0;
  for (size_t i = 0; i < oldcap; i++)
    if (old[i].key && now - old[i].last <= w->idle_ttl) {
      *find(w, old[i].key) = old[i];
      w->n++;
    }
  free(old);
  return 0;
}

static const char *workflow_id(const struct strata_route_request *req, size_t *len) {
  const char *v = req->header(req, "X-Workflow-Id");
  if (v && *v) {
    *len = strlen(v);
    return v;
  }
  const strata_json_t *j = host->json_get(host->json_get(req->body, "metadata"), "workflow_id");
  if (host->json_type(j) != STRATA_JSON_STRING) j = host->json_get(req->body, "workflow_id");
  v = host->json_string(j, len);
  return v && *len ? v : NULL;
}

/* The position in b of the instance for a new workflow: the fewest active
 * workflows, then the least loaded. */
static size_t place(const struct workflow *w, const struct strata_route_backend *b, size_t n,
                    double now) {
  int64_t counts[64] = {0};
  const size_t m = n < 64 ? n : 64; /* beyond 64 instances: load alone decides */
  for (size_t i = 0; i < w->cap && m; i++) {
    const struct binding *e = &w->tab[i];
    if (!e->key || e->id < 0 || now - e->last > w->active_window) continue;
    for (size_t k = 0; k < m; k++)
      if (b[k].id == e->id) counts[k]++;
  }
  size_t pick = 0;
  for (size_t k = 1; k < n; k++) {
    const int64_t ck = k < m ? counts[k] : 0, cp = pick < m ? counts[pick] : 0;
    if (ck < cp || (ck == cp && router_less_loaded(&b[k], &b[pick]))) pick = k;
  }
  return pick;
}

static int wf_route(void *state, const struct strata_route_request *req,
                    const struct strata_route_backend *b, size_t n,
                    struct strata_route_choice *out) {
  struct workflow *w = state;
  const size_t least = router_least_loaded(b, n);
  size_t len = 0;
  const char *wid = workflow_id(req, &len);
  if (!wid) {
    out->id = b[least].id;
    out->reason = "no_workflow";
    return 0;
  }
  const double now = mono();
  uint64_t key = XXH3_64bits(wid, len);
  if (!key) key = 1;
  struct binding *e = find(w, key);
  if (e->key && now - e->last > w->idle_ttl) e->id = -1; /* idle: it ended */
  if (!e->key) {
    if (w->n + 1 > w->cap / 2) {
      if (make_room(w, now) != 0) {
        out->id = b[least].id;
        out->reason = "no_workflow";
        return 0;
      }
      e = find(w, key);
    }
    e->key = key;
    e->id = -1;
    w->n++;
  }
  size_t at = n;
  for (size_t i = 0; i < n; i++)
    if (b[i].id == e->id) at = i;
  if (e->id < 0) {
    at = place(w, b, n, now);
    out->reason = "workflow_new";
  } else if (at == n || router_load(&b[at]) - router_load(&b[least]) > w->max_imbalance) {
    at = least;
    out->reason = "workflow_moved";
  } else {
    out->reason = "workflow_bound";
  }
  e->id = b[at].id;
  e->last = now;
  out->id = b[at].id;
  return 0;
}

/* The router ended a workflow: its binding ends (the entry stays, as an
 * ended one, until make_room drops it). */
static void wf_workflow_end(void *state, const char *id, size_t len) {
  struct workflow *w = state;
  uint64_t key = XXH3_64bits(id, len);
  if (!key) key = 1;
  struct binding *e = find(w, key);
  if (!e->key) return;
  e->id = -1;
  e->last = -1e300;
}

static const struct strata_param wf_params[] = {
    {"max_imbalance", STRATA_PARAM_INT, 0, "8", 0, 1 << 30,
     "requests a workflow's instance may carry above the least loaded one before the workflow "
     "moves"},
    {"idle_ttl", STRATA_PARAM_FLOAT, 0, "600", 0, 86400 * 7,
     "seconds without a request after which a workflow's binding ends"},
    {"active_window", STRATA_PARAM_FLOAT, 0, "30", 0, 86400,
     "a workflow with a request in the last this many seconds counts as active on its "
     "instance when a new workflow is placed (the fewest active wins)"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_router_vtable wf_vtable = {
    .size = sizeof(struct strata_router_vtable),
    .create = wf_create,
    .destroy = wf_destroy,
    .route = wf_route,
    .on_done = NULL,
    .needs = 0,
    .on_workflow_end = wf_workflow_end,
};

static const struct strata_plugin_desc wf_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_ROUTER,
    .name = "workflow-aware",
    .version = "1.0",
    .license = "MIT",
    .description = "a workflow's requests stay on one instance until it is overloaded or idles",
    .params = wf_params,
    .init = wf_init,
    .fini = NULL,
    .vt.router = &wf_vtable,
};

STRATA_PLUGIN_DEFINE(wf_desc)
