/* The cache-aware part of the router host (route_int.h): for a policy
 * with STRATA_ROUTE_NEEDS_CACHE, how many of a prompt's tokens each
 * instance holds in its prefix cache.
 *
 * Two sources, best first:
 *  - an exact index per instance (route_kv.h), kept from the instance's
 *    GET /v1/cache/events stream, asked with the prompt's block hashes.
 *    Needs router.tokenizer: the router tokenizes the prompt as the engine
 *    does (same tokenizer, same chat template) and chains the hashes as the
 *    engine's KV manager does (strata_kv_hash_chain, with the cache_salt);
 *  - a probe: POST /v1/cache/stats with the prompt to every eligible
 *    instance without a live index, answered from its cache in
 *    microseconds (no model work); routing waits for the answers at most
 *    router.cache_probe_timeout and goes on without the late ones.
 * Instances that answer neither are -1 (unknown) to the policy. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "log.h"
#include "route_int.h"
#include "util.h"

/* The engine pings an idle stream every 5 s; three missed is a dead one. */
#define EVENTS_TIMEOUT 15.0

struct probe {
  struct rreq *r;
  struct backend *b;
  struct rconn *conn;
  struct evhttp_request *up; /* while in flight */
  int in_make, done;
};

/* ---- setup ------------------------------------------------------------------------ */

int route_cache_open(struct router *rt) {
  const char *path = rt->o->tokenizer;
  if (!path || !*path) {
    strata_log(STRATA_LOG_INFO, "route",
               "policy %s: no router.tokenizer, so each request asks the instances "
               "(POST /v1/cache/stats) what they hold",
               rt->plugin->desc->name);
    return 0;
  }
  char err[512];
  if (strata_gguf_open(path, &rt->gguf, err, sizeof err) != 0 ||
      strata_tokenizer_load(rt->gguf, &rt->tok, err, sizeof err) != 0) {
    fprintf(stderr, "strata: route: router.tokenizer: %s\n", err);
    return -1;
  }
  const char *tt = NULL;
  size_t tl = 0;
  if (strata_gguf_get_string(rt->gguf, "tokenizer.chat_template", &tt, &tl) != 0) {
    tt = NULL;
    tl = 0;
  }
  if (strata_chat_template_resolve(NULL, tt, tl, &rt->tmpl, err, sizeof err) != 0) {
    fprintf(stderr, "strata: route: router.tokenizer %s: chat template: %s\n", path, err);
    return -1;
  }
  rt->have_tmpl = 1;
  const int32_t bos = strata_tokenizer_bos(rt->tok), eos = strata_tokenizer_eos(rt->tok);
  rt->bos_text = bos >= 0 ? strata_tokenizer_token_text(rt->tok, bos) : NULL;
  rt->eos_text = eos >= 0 ? strata_tokenizer_token_text(rt->tok, eos) : NULL;
  strata_log(STRATA_LOG_INFO, "route", "policy %s: prompts hashed with the tokenizer of %s%s",
             rt->plugin->desc->name, path,
             rt->o->cache_events ? "; following each instance's /v1/cache/events" : "");
  return 0;
}

void route_cache_close(struct router *rt) {
  for (size_t i = 0; i < rt->n_be; i++) {
    struct backend *b = rt->be[i];
    if (b->evreq) evhttp_cancel_request(b->evreq);
    b->evreq = NULL;
    if (b->evc) evhttp_connection_free(b->evc);
    b->evc = NULL;
    route_kvidx_free(&b->idx);
  }
  if (rt->have_tmpl) strata_chat_template_free(&rt->tmpl);
  rt->have_tmpl = 0;
  strata_tokenizer_free(rt->tok);
  rt->tok = NULL;
  if (rt->gguf) strata_gguf_close(rt->gguf);
  rt->gguf = NULL;
}

/* ---- the event streams ------------------------------------------------------------ */

static void on_ev_chunk(struct evhttp_request *req, void *arg) {
  struct backend *b = arg;
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  if (b->ev_bad || evhttp_request_get_response_code(req) != 200) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  while (evbuffer_get_length(in)) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    char err[200];
    if (route_kvidx_feed(&b->idx, v.iov_base, v.iov_len, err, sizeof err) != 0) {
      strata_log(STRATA_LOG_WARN, "route", "%s/v1/cache/events: %s; reconnecting", b->url, err);
      b->ev_bad = 1; /* cancelled at the next tick, not inside its own callback */
      route_kvidx_reset(&b->idx);
      evbuffer_drain(in, evbuffer_get_length(in));
      return;
    }
    evbuffer_drain(in, v.iov_len);
  }
}

static void on_ev_done(struct evhttp_request *req, void *arg) {
  struct backend *b = arg;
  const int code = req ? evhttp_request_get_response_code(req) : 0;
  b->evreq = NULL;
  b->ev_bad = 0;
  route_kvidx_reset(&b->idx);
  if (code == 404 || code == 405 || code == 501) {
    if (!b->ev_unsupported)
      strata_log(STRATA_LOG_INFO, "route",
                 "%s has no GET /v1/cache/events (HTTP %d): asking it per request instead",
                 b->url, code);
    b->ev_unsupported = 1;
    b->ev_retry_at = strata_now() + 60;
  } else {
    b->ev_retry_at = strata_now() + 1;
  }
}

void route_cache_tick(struct router *rt) {
  if (!rt->tok || !rt->o->cache_events) return;
  const double now = strata_now();
  for (size_t i = 0; i < rt->n_be; i++) {
    struct backend *b = rt->be[i];
    if (b->evreq && b->ev_bad) {
      evhttp_cancel_request(b->evreq);
      b->evreq = NULL;
      b->ev_bad = 0;
      route_kvidx_reset(&b->idx);
      b->ev_retry_at = now + 1;
      continue;
    }
    if (b->evreq || b->removed || !b->healthy || now < b->ev_retry_at) continue;
    if (!b->evc && !(b->evc = route_new_conn(rt, b, EVENTS_TIMEOUT))) continue;
    struct evhttp_request *req = evhttp_request_new(on_ev_done, b);
    if (!req) continue;
    evhttp_request_set_chunked_cb(req, on_ev_chunk);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", b->host);
    evhttp_add_header(h, "Accept", "text/event-stream");
    if (rt->api_key_header) evhttp_add_header(h, "Authorization", rt->api_key_header);
    route_kvidx_reset(&b->idx);
    b->evreq = req;
    if (evhttp_make_request(b->evc, req, EVHTTP_REQ_GET, "/v1/cache/events") != 0) {
      b->evreq = NULL;
      b->ev_retry_at = now + 1;
    }
  }
}

/* ---- a request's prompt ------------------------------------------------------------- */

static int is_chat(const struct rreq *r) { return strcmp(r->rr.path, "/v1/chat/completions") == 0; }
static int is_completion(const struct rreq *r) { return strcmp(r->rr.path, "/v1/completions") == 0; }

/* A completion's prompt: a string or token ids; of a list of prompts, the
 * first (the one a policy routes by). NULL if none. */
static const json_t *first_prompt(const json_t *body) {
  const json_t *p = json_object_get(body, "prompt");
  if (json_is_array(p) && json_array_size(p) && !json_is_integer(json_array_get(p, 0)))
    p = json_array_get(p, 0);
  return json_is_string(p) || json_is_array(p) ? p : NULL;
}

static int32_t *ids_of(const json_t *a, size_t *n) {
  *n = json_array_size(a);
  int32_t *t = malloc((*n ? *n : 1) * sizeof *t);
  for (size_t i = 0; t && i < *n; i++) {
    const json_t *v = json_array_get(a, i);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
      free(t);
      return NULL;
    }
    t[i] = (int32_t)json_integer_value(v);
  }
  return t;
}

/* The prompt's tokens as the engine will see them, with router.tokenizer;
 * left unknown for anything the engine would refuse (it says why). */
static void request_tokens(struct rreq *r) {
  struct router *rt = r->rt;
  if (!rt->tok || !r->json) return;
  char err[256];
  int32_t *t = NULL;
  size_t n = 0;
  if (is_chat(r)) {
    const json_t *m = json_object_get(r->json, "messages");
    const json_t *ag = json_object_get(r->json, "add_generation_prompt");
    if (!json_is_array(m) ||
        strata_chat_tokens(&rt->tmpl, rt->bos_text, rt->eos_text, rt->tok, m,
                           ag ? json_is_true(ag) : 1, &t, &n, err, sizeof err) != 0)
      return;
  } else if (is_completion(r)) {
    const json_t *p = first_prompt(r->json);
    const json_t *as = json_object_get(r->json, "add_special_tokens");
    if (json_is_string(p)) {
      if (strata_tokenize(rt->tok, json_string_value(p), json_string_length(p),
                          as ? json_is_true(as) : 1, 0, &t, &n, err, sizeof err) != 0)
        return;
    } else if (p) {
      if (!(t = ids_of(p, &n))) return;
    } else {
      return;
    }
  } else {
    return;
  }
  if (n > INT32_MAX) {
    free(t);
    return;
  }
  r->toks = t;
  r->n_toks = n;
  r->rr.prompt_tokens = (int32_t)n;
}

static const char *salt_of(const struct rreq *r) {
  const char *s = r->json ? json_string_value(json_object_get(r->json, "cache_salt")) : NULL;
  return s && *s ? s : NULL;
}

/* strata_route_request.cached_tokens */
static int32_t cached_of(const struct strata_route_request *q, int32_t id) {
  struct rreq *r = q->host_data;
  struct router *rt = r->rt;
  if (id < 0 || (size_t)id >= rt->n_be) return -1;
  const struct backend *b = rt->be[id];
  const int32_t bs = b->idx.block_size;
  if (r->toks && b->idx.live && bs > 0) {
    if (r->chain_bs != bs) { /* hashes for this block size (instances may differ) */
      free(r->chain);
      const size_t nb = r->n_toks / (size_t)bs;
      r->chain = nb ? malloc(nb * sizeof *r->chain) : NULL;
      r->n_chain = r->chain ? strata_kv_hash_chain(r->toks, (int32_t)r->n_toks, bs, salt_of(r),
                                                   r->chain)
                            : 0;
      r->chain_bs = nb && !r->chain ? 0 : bs;
    }
    if (r->chain_bs == bs) {
      rt->index_answers++;
      return route_kvidx_match(&b->idx, r->chain, r->n_chain) * bs;
    }
  }
  if (r->probed && (size_t)id < r->n_probed && r->probed[id] >= 0) {
    rt->probe_answers++;
    return r->probed[id];
  }
  rt->cache_unknown++;
  return -1;
}

/* ---- probes ------------------------------------------------------------------------ */

/* The POST /v1/cache/stats body for r's prompt: its tokens when known
 * (no second tokenization on the instance), else the prompt as sent. */
static char *probe_body(const struct rreq *r) {
  json_t *o = json_object();
  if (!o) return NULL;
  if (r->toks) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < r->n_toks; i++) json_array_append_new(a, json_integer(r->toks[i]));
    json_object_set_new(o, "prompt", a);
  } else if (is_chat(r)) {
    json_object_set(o, "messages", json_object_get(r->json, "messages"));
    const json_t *ag = json_object_get(r->json, "add_generation_prompt");
    if (json_is_boolean(ag)) json_object_set(o, "add_generation_prompt", (json_t *)ag);
  } else {
    json_object_set(o, "prompt", (json_t *)first_prompt(r->json));
    const json_t *as = json_object_get(r->json, "add_special_tokens");
    if (json_is_boolean(as)) json_object_set(o, "add_special_tokens", (json_t *)as);
  }
  const json_t *model = json_object_get(r->json, "model");
  if (json_is_string(model)) json_object_set(o, "model", (json_t *)model);
  if (salt_of(r)) json_object_set_new(o, "cache_salt", json_string(salt_of(r)));
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return s;
}

static void probes_over(struct rreq *r) {
  if (r->ptimer) event_del(r->ptimer);
  r->pending = 0;
  route_dispatch(r); /* may free r */
}

static void on_probe_done(struct evhttp_request *req, void *arg) {
  struct probe *p = arg;
  struct rreq *r = p->r;
  p->done = 1;
  p->b->probes++;
  int ok = 0;
  if (req && evhttp_request_get_response_code(req) == 200) {
    json_t *o = route_json_buffer(evhttp_request_get_input_buffer(req), NULL);
    const json_t *c = o ? json_object_get(o, "cached_tokens") : NULL;
    if (json_is_integer(c) && json_integer_value(c) >= 0 && json_integer_value(c) <= INT32_MAX) {
      r->probed[p->b->id] = (int32_t)json_integer_value(c);
      ok = 1;
    }
    if (o) json_decref(o);
  }
  if (!ok) p->b->probe_failures++;
  p->up = NULL; /* evhttp frees it after this callback */
  route_give_conn(p->b, p->conn);
  p->conn = NULL;
  if (p->in_make) return; /* failed inside evhttp_make_request: not counted as pending */
  if (--r->pending == 0) probes_over(r);
}

static void cancel_probes(struct rreq *r) {
  for (int i = 0; i < r->n_probes; i++) {
    struct probe *p = &r->probes[i];
    if (!p->up) continue;
    evhttp_cancel_request(p->up); /* its callback does not run */
    p->up = NULL;
    p->b->probe_failures++;
    route_give_conn(p->b, p->conn);
    p->conn = NULL;
  }
}

static void on_probe_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct rreq *r = arg;
  cancel_probes(r);
  probes_over(r);
}

void route_cache_prepare(struct rreq *r) {
  struct router *rt = r->rt;
  r->rr.cached_tokens = cached_of;
  r->rr.prompt_tokens = -1;
  if (!r->json || !(is_chat(r) || is_completion(r))) {
    route_dispatch(r);
    return;
  }
  request_tokens(r);
  if (!r->toks && (is_chat(r) ? !json_is_array(json_object_get(r->json, "messages"))
                              : !first_prompt(r->json))) {
    route_dispatch(r); /* no prompt to ask about: the instance will say what is wrong */
    return;
  }
  size_t want = 0;
  for (size_t i = 0; i < rt->n_be; i++) {
    const struct backend *b = rt->be[i];
    want += b->healthy && !b->removed && !(r->toks && b->idx.live);
  }
  char *body = want ? probe_body(r) : NULL;
  r->probed = body ? malloc(rt->n_be * sizeof *r->probed) : NULL;
  r->probes = r->probed ? calloc(want, sizeof *r->probes) : NULL;
  r->ptimer = r->probes ? evtimer_new(rt->base, on_probe_timeout, r) : NULL;
  if (!r->ptimer) {
    free(body);
    route_dispatch(r);
    return;
  }
  r->n_probed = rt->n_be;
  for (size_t i = 0; i < rt->n_be; i++) r->probed[i] = -1;
  const size_t blen = strlen(body);
  for (size_t i = 0; i < rt->n_be && (size_t)r->n_probes < want; i++) {
    struct backend *b = rt->be[i];
    if (!b->healthy || b->removed || (r->toks && b->idx.live)) continue;
    struct probe *p = &r->probes[r->n_probes++];
    *p = (struct probe){.r = r, .b = b, .conn = route_take_conn(rt, b)};
    struct evhttp_request *req = p->conn ? evhttp_request_new(on_probe_done, p) : NULL;
    if (!req) {
      if (p->conn) route_give_conn(b, p->conn);
      p->conn = NULL;
      continue;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", b->host);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "X-Request-Id", r->rid);
    if (rt->api_key_header) evhttp_add_header(h, "Authorization", rt->api_key_header);
    evbuffer_add(evhttp_request_get_output_buffer(req), body, blen);
    p->up = req;
    p->in_make = 1;
    const int rc = evhttp_make_request(p->conn->c, req, EVHTTP_REQ_POST, "/v1/cache/stats");
    p->in_make = 0;
    if (p->done) continue; /* answered (failed) already */
    if (rc != 0) {
      p->up = NULL;
      b->probe_failures++;
      route_give_conn(b, p->conn);
      p->conn = NULL;
      continue;
    }
    r->pending++;
  }
  free(body);
  if (!r->pending) {
    route_dispatch(r);
    return;
  }
  const double t = rt->o->cache_probe_timeout;
  const struct timeval tv = {(time_t)t, (suseconds_t)((t - (double)(time_t)t) * 1e6)};
  evtimer_add(r->ptimer, &tv);
}

void route_cache_release(struct rreq *r) {
  cancel_probes(r);
  if (r->ptimer) event_free(r->ptimer);
  r->ptimer = NULL;
  free(r->probes);
  r->probes = NULL;
  r->n_probes = r->pending = 0;
  free(r->probed);
  r->probed = NULL;
  free(r->toks);
  r->toks = NULL;
  free(r->chain);
  r->chain = NULL;
}

void route_cache_admin(const struct backend *b, json_t *e) {
  json_t *c = json_object();
  const char *state = b->idx.live ? "live" : b->evreq ? "syncing" : b->ev_unsupported ? "unsupported" : "none";
  json_object_set_new(c, "events", json_string(state));
  json_object_set_new(c, "blocks", json_integer((json_int_t)b->idx.n));
  json_object_set_new(c, "block_size", json_integer(b->idx.block_size));
  json_object_set_new(c, "messages", json_integer((json_int_t)b->idx.messages));
  json_object_set_new(c, "probes", json_integer((json_int_t)b->probes));
  json_object_set_new(c, "probe_failures", json_integer((json_int_t)b->probe_failures));
  json_object_set_new(e, "cache", c);
}
