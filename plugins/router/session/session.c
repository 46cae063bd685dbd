/* session: requests that carry the same session key go to the same
 * instance, by consistent hashing, so a conversation finds its earlier
 * turns in that instance's prefix cache.
 *
 * The key is a request header (`header`, default X-Session-Id) or, without
 * it, a body field (`field`, default "user", as OpenAI's `user`; a dotted
 * path such as "metadata.session_id" reaches into objects). Each instance
 * owns `replicas` points on a 64-bit ring, hashed from its URL, so routers
 * on other machines place a key on the same instance, and when an instance
 * leaves (ejected, or already tried for this request) only its own keys
 * move, each to the next point's owner. A request without a key goes to
 * the least loaded instance. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include <strata/plugin.h>
#include <strata/router.h>

#include "../load.h"

static const struct strata_host_api *host;

struct point {
  uint64_t h;
  int32_t id;
};

struct session {
  char header[128];
  char field[128];
  int replicas;
  struct point *ring;
  size_t n_ring;
  int32_t *known; /* ids on the ring */
  size_t n_known;
  unsigned char *ok; /* scratch: eligible by id */
  size_t ok_cap;
};

static int session_init(const struct strata_host_api *h, const strata_config_node_t *cfg,
                        char *err, size_t errlen) {
  (void)cfg;
  (void)err;
  (void)errlen;
  host = h;
  return 0;
}

static int session_create(const strata_config_node_t *cfg, void **state, char *err,
                          size_t errlen) {
  (void)err;
  (void)errlen;
  struct session *s = calloc(1, sizeof *s);
  if (!s) return -1;
  const char *hd = host->config_string(cfg, "header"), *fd = host->config_string(cfg, "field");
  snprintf(s->header, sizeof s->header, "%s", hd ? hd : "");
  snprintf(s->field, sizeof s->field, "%s", fd ? fd : "");
  s->replicas = (int)host->config_int(cfg, "replicas");
  *state = s;
  return 0;
}

static void session_destroy(void *state) {
  struct session *s = state;
  free(s->ring);
  free(s->known);
  free(s->ok);
  free(s);
}

static int cmp_point(const void *a, const void *b) {
  const struct point *x = a, *y = b;
  if (x->h != y->h) return x->h < y->h ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

/* Puts an instance's points on the ring the first time it is seen. */
static int add_instance(struct session *s, const struct strata_route_backend *b) {
  for (size_t i = 0; i < s->n_known; i++)
    if (s->known[i] == b->id) return 0;
  int32_t *k = realloc(s->known, (s->n_known + 1) * sizeof *k);
  if (!k) return -1;
  s->known = k;
  struct point *r = realloc(s->ring, (s->n_ring + (size_t)s->replicas) * sizeof *r);
  if (!r) return -1;
  s->ring = r;
  s->known[s->n_known++] = b->id;
  const size_t ul = strlen(b->url);
  for (int i = 0; i < s->replicas; i++)
    s->ring[s->n_ring++] = (struct point){XXH3_64bits_withSeed(b->url, ul, (XXH64_hash_t)i), b->id};
  qsort(s->ring, s->n_ring, sizeof *s->ring, cmp_point);
  return 0;
}

/* The session key's bytes, or NULL. */
static const char *session_key(const struct session *s, const struct strata_route_request *req,
                               size_t *len, char *num, size_t numcap) {
  const char *v = s->header[0] ? req->header(req, s->header) : NULL;
  if (v && *v) {
    *len = strlen(v);
    return v;
  }
  if (!s->field[0] || !req->body) return NULL;
  const strata_json_t *j = req->body;
  char path[128];
  snprintf(path, sizeof path, "%s", s->field);
  for (char *p = path, *dot; j && p; p = dot ? dot + 1 : NULL) {
    dot = strchr(p, '.');
    if (dot) *dot = 0;
    j = host->json_get(j, p);
  }
  switch (host->json_type(j)) {
  case STRATA_JSON_STRING:
    v = host->json_string(j, len);
    return v && *len ? v : NULL;
  case STRATA_JSON_INTEGER:
    *len = (size_t)snprintf(num, numcap, "%lld", (long long)host->json_integer(j));
    return num;
  default:
    return NULL;
  }
}

static int session_route(void *state, const struct strata_route_request *req,
                         const struct strata_route_backend *b, size_t n,
                         struct strata_route_choice *out) {
  struct session *s = state;
  char num[32];
  size_t len = 0;
  const char *key = session_key(s, req, &len, num, sizeof num);
  int32_t max_id = 0;
  for (size_t i = 0; i < n; i++) {
    if (add_instance(s, &b[i]) != 0) key = NULL; /* out of memory: route by load */
    if (b[i].id > max_id) max_id = b[i].id;
  }
  if (!key || s->n_ring == 0) {
    out->id = b[router_least_loaded(b, n)].id;
    out->reason = "no_session_key";
    return 0;
  }
  if ((size_t)max_id + 1 > s->ok_cap) {
    unsigned char *ok = realloc(s->ok, (size_t)max_id + 1);
    if (!ok) {
      out->id = b[router_least_loaded(b, n)].id;
      out->reason = "no_session_key";
      return 0;
    }
    s->ok = ok;
    s->ok_cap = (size_t)max_id + 1;
  }
  memset(s->ok, 0, s->ok_cap);
  for (size_t i = 0; i < n; i++) s->ok[b[i].id] = 1;
  /* the first point at or after the key's hash, clockwise, whose owner is
   * eligible */
  const uint64_t h = XXH3_64bits(key, len);
  size_t lo = 0, hi = s->n_ring;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    if (s->ring[mid].h < h) lo = mid + 1;
    else hi = mid;
  }
  for (size_t k = 0; k < s->n_ring; k++) {
    const struct point *p = &s->ring[(lo + k) % s->n_ring];
    if ((size_t)p->id < s->ok_cap && s->ok[p->id]) {
      out->id = p->id;
      out->reason = k == 0 ? "session_hash" : "session_moved"; /* its owner is out */
      return 0;
    }
  }
  out->id = b[router_least_loaded(b, n)].id;
  out->reason = "no_session_key";
  return 0;
}

static const struct strata_param session_params[] = {
    {"header", STRATA_PARAM_STRING, 0, "X-Session-Id", 1, 0,
     "request header that carries the session key (\"\": none)"},
    {"field", STRATA_PARAM_STRING, 0, "user", 1, 0,
     "body field used when the header is absent; a dotted path reaches into objects "
     "(\"metadata.session_id\"); \"\": none"},
    {"replicas", STRATA_PARAM_INT, 0, "64", 1, 4096, "points per instance on the hash ring"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_router_vtable session_vtable = {
    .size = sizeof(struct strata_router_vtable),
    .create = session_create,
    .destroy = session_destroy,
    .route = session_route,
    .on_done = NULL,
};

static const struct strata_plugin_desc session_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_ROUTER,
    .name = "session",
    .version = "1.0",
    .license = "MIT",
    .description = "consistent hashing of a session header or body field; no key: least loaded",
    .params = session_params,
    .init = session_init,
    .fini = NULL,
    .vt.router = &session_vtable,
};

STRATA_PLUGIN_DEFINE(session_desc)
