/* Multi-agent workflows in the router (route_wf.h; the API in
 * docs/agents.md).
 *
 * Everything runs on the router's one libevent thread, so no locks. A
 * workflow lives in a hash table by id until DELETE or idle_ttl without
 * use; nothing of it is persisted (a restarted router answers 404 and
 * clients declare again). Requests that wait -- message long polls and
 * streams, barrier arrivals, waits for steps -- are "waiters": held
 * evhttp requests on the workflow's list, answered when their condition
 * holds, when their timeout passes, or when the workflow ends (410).
 *
 * Messages are kept in one array per workflow in arrival order (seq =
 * index + 1). Each agent has a cursor: every message before it was either
 * delivered to that agent or not addressed to it, so a message is handed to
 * each receiver exactly once, in order, whether by a poll or a stream.
 *
 * Cache hints: after a workflow request ends on an instance, the agent's
 * prompt is kept there (POST /v1/cache/hints, action keep, hint_ttl) while
 * the step graph says the agent runs again, and released (without force:
 * a shared context someone keeps stays kept) when it does not; when a step
 * ends, the agents of the steps that became ready get their contexts kept
 * again; a declared shared context is prefilled and kept on the instance
 * the policy picks for the workflow; when the workflow ends everything it
 * kept is released with force. */
#include "config.h"

#include "route_wf.h"

#include <sys/queue.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <xxhash.h>

#include "http_api.h"
#include "http_util.h"
#include "log.h"
#include "util.h"

#include "route_int.h"
#include "route_wf_parse.h"


enum { W_MSG, W_SSE, W_BARRIER, W_STEPS };

struct wf;

struct waiter {
  struct wf *w;
  int kind;
  struct evhttp_request *req;
  struct evhttp_connection *con;
  struct event *timer;
  size_t agent;   /* W_MSG, W_SSE: index into w->agents */
  size_t limit;   /* W_MSG: messages per answer */
  size_t barrier; /* W_BARRIER: index into w->bars */
  uint64_t gen;   /* W_BARRIER: the generation it arrived in */
  char **steps;   /* W_STEPS: names waited for */
  size_t n_steps;
  double last_write; /* W_SSE: for pings */
  struct waiter *next, *prev;
};

struct msg {
  size_t bytes; /* as JSON */
  size_t from;  /* agent index */
  ssize_t to;   /* agent index, -1: every agent but the sender */
  json_t *env;  /* {"seq", "from", "to", "message"} as delivered */
};

struct agent {
  char *name;
  size_t cursor; /* messages before it: delivered or not for this agent */
  uint64_t requests, received;
  json_t *prompt;      /* the last request's prompt as a hint body part */
  int32_t instance;    /* where that request ran; -1: none yet */
  double kept_at;      /* when a keep of that prompt was sent; 0: none since it changed */
};

struct step {
  char *name;
  char *agent; /* NULL: any */
  char **after;
  size_t n_after;
  int done;
  json_t *output; /* NULL: none given */
  size_t bytes;   /* of an output given by POST (counted in msg_bytes) */
  double t_done;
  uint64_t requests;
};

struct barrier {
  char *name;
  int parties, arrived;
  uint64_t gen;
};

struct wf {
  char *id;
  uint64_t key, gen; /* gen: which workflow of this id (ids are reused after DELETE) */
  uint64_t active;   /* its proxied requests in flight: it does not idle out meanwhile */
  struct wf *hnext;
  struct router *rt;
  int declared;
  double created, created_wall, last, idle_ttl;
  struct agent *agents;
  size_t n_agents;
  struct step *steps;
  size_t n_steps;
  struct barrier *bars;
  size_t n_bars;
  struct msg *msgs;
  size_t n_msgs, cap_msgs;
  struct waiter *waiters;
  size_t n_waiters;
  json_t *context; /* hint body part of the shared context; NULL: none */
  char *cache_salt;
  int32_t ctx_instance, last_instance;
  int prefill; /* 0 none, 1 running, 2 done, -1 failed */
  double prefill_t0;
  int64_t prefilled_tokens;
  uint64_t requests, failed, moves, prompt_tokens, cached_tokens, usage_known;
};

struct hint {
  struct router *rt;
  struct backend *b;
  struct rconn *conn;
  struct evhttp_request *up;
  char *wf_id; /* whose (a prefill, or HINT_THEN_CONTEXT) */
  uint64_t wf_gen;
  unsigned flags;
  int in_make, done;
  struct hint *next, *prev;
};

/* send_hint's flags */
#define HINT_KEEP 1u         /* keep (else release) */
#define HINT_PREFILL 2u      /* keep: compute what is not cached first */
#define HINT_FORCE 4u        /* release: protected blocks too */
#define HINT_THEN_CONTEXT 8u /* when answered, keep the workflow's context again */

struct wf_reg {
  struct wf **tab;
  size_t cap, n;
  struct hint *hints;
  /* an instance that answered 404 (an engine without the hint API, such as
   * vLLM) is asked again only after this time */
  double no_hints[ROUTE_MAX_BACKENDS];
  uint64_t created_declared, created_implicit, ended_deleted, ended_idle, rejected;
  uint64_t messages, delivered, barrier_released, barrier_timeouts, step_timeouts, steps_done;
  uint64_t hints_keep, hints_release, hints_failed, prefills, held, promoted;
  uint64_t next_auto, next_gen;
  int closing;
  size_t msg_bytes; /* of every open workflow's messages and step outputs */
};

/* ---- small things -------------------------------------------------------------------- */

static void reply_json(struct router *rt, struct evhttp_request *req, int status, json_t *o) {
  char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(o);
  if (!s) {
    route_reply_errorf(rt, req, 500, NULL, "out of memory");
    return;
  }
  route_reply_body(rt, req, status, "application/json", s, strlen(s));
  free(s);
}

static char *copy_name(const json_t *v) {
  return route_wf_name_json(v) && strlen(json_string_value(v)) == json_string_length(v)
             ? strata_strdup(json_string_value(v))
             : NULL;
}

static uint64_t key_of(const char *id) {
  uint64_t k = XXH3_64bits(id, strlen(id));
  return k ? k : 1;
}

static const char *url_of_instance(const struct router *rt, int32_t id) {
  return id >= 0 && (size_t)id < rt->n_be ? rt->be[id]->url : NULL;
}

static json_t *url_json(const struct router *rt, int32_t id) {
  const char *u = url_of_instance(rt, id);
  return u ? json_string(u) : json_null();
}

/* ---- the table ----------------------------------------------------------------------- */

int route_wf_open(struct router *rt) {
  struct wf_reg *g = calloc(1, sizeof *g);
  size_t cap = 64;
  while (cap < (size_t)rt->o->wf_max_workflows && cap < ((size_t)1 << 20)) cap *= 2;
  if (g) g->tab = calloc(cap, sizeof *g->tab);
  if (!g || !g->tab) {
    free(g);
    fprintf(stderr, "strata: route: out of memory\n");
    return -1;
  }
  g->cap = cap;
  rt->wf = g;
  return 0;
}

static struct wf *find_wf(struct router *rt, const char *id) {
  const uint64_t k = key_of(id);
  for (struct wf *w = rt->wf->tab[k & (rt->wf->cap - 1)]; w; w = w->hnext)
    if (w->key == k && strcmp(w->id, id) == 0) return w;
  return NULL;
}

static struct wf *new_wf(struct router *rt, const char *id, int declared) {
  struct wf_reg *g = rt->wf;
  if (g->n >= (size_t)rt->o->wf_max_workflows) {
    g->rejected++;
    return NULL;
  }
  struct wf *w = calloc(1, sizeof *w);
  if (!w || !(w->id = strata_strdup(id))) {
    free(w);
    return NULL;
  }
  w->key = key_of(id);
  w->gen = ++g->next_gen;
  w->rt = rt;
  w->declared = declared;
  w->created = w->last = strata_now();
  w->created_wall = (double)time(NULL);
  w->idle_ttl = rt->o->wf_idle_ttl;
  w->ctx_instance = w->last_instance = -1;
  const size_t h = w->key & (g->cap - 1);
  w->hnext = g->tab[h];
  g->tab[h] = w;
  g->n++;
  if (declared)
    g->created_declared++;
  else
    g->created_implicit++;
  return w;
}

static ssize_t find_agent(const struct wf *w, const char *name) {
  for (size_t i = 0; i < w->n_agents; i++)
    if (strcmp(w->agents[i].name, name) == 0) return (ssize_t)i;
  return -1;
}

/* The agent's index, added if new; -1 at the limit or out of memory. */
static ssize_t agent_of(struct wf *w, const char *name) {
  ssize_t a = find_agent(w, name);
  if (a >= 0) return a;
  if (w->n_agents >= (size_t)w->rt->o->wf_max_agents) return -1;
  struct agent *na = realloc(w->agents, (w->n_agents + 1) * sizeof *na);
  if (!na) return -1;
  w->agents = na;
  na[w->n_agents] = (struct agent){.name = strata_strdup(name), .instance = -1};
  if (!na[w->n_agents].name) return -1;
  /* a new agent receives broadcasts sent from now on, not earlier ones */
  na[w->n_agents].cursor = w->n_msgs;
  return (ssize_t)w->n_agents++;
}

static ssize_t find_step(const struct wf *w, const char *name) {
  for (size_t i = 0; i < w->n_steps; i++)
    if (strcmp(w->steps[i].name, name) == 0) return (ssize_t)i;
  return -1;
}

static ssize_t step_of(struct wf *w, const char *name) {
  ssize_t s = find_step(w, name);
  if (s >= 0) return s;
  if (w->n_steps >= (size_t)w->rt->o->wf_max_steps) return -1;
  struct step *ns = realloc(w->steps, (w->n_steps + 1) * sizeof *ns);
  if (!ns) return -1;
  w->steps = ns;
  ns[w->n_steps] = (struct step){.name = strata_strdup(name)};
  if (!ns[w->n_steps].name) return -1;
  return (ssize_t)w->n_steps++;
}

static int step_ready(const struct wf *w, const struct step *s) {
  if (s->done) return 0;
  for (size_t i = 0; i < s->n_after; i++) {
    const ssize_t d = find_step(w, s->after[i]);
    if (d < 0 || !w->steps[d].done) return 0;
  }
  return 1;
}

/* ---- waiters ------------------------------------------------------------------------- */

static void on_waiter_close(struct evhttp_connection *c, void *arg);

static void waiter_unlink(struct waiter *x) {
  struct wf *w = x->w;
  if (x->prev)
    x->prev->next = x->next;
  else
    w->waiters = x->next;
  if (x->next) x->next->prev = x->prev;
  w->n_waiters--;
  if (x->timer) event_free(x->timer);
  if (x->con) evhttp_connection_set_closecb(x->con, NULL, NULL);
  for (size_t i = 0; i < x->n_steps; i++) free(x->steps[i]);
  free(x->steps);
  free(x);
}

/* A barrier arrival that leaves without the barrier releasing it. */
static void withdraw(struct waiter *x) {
  if (x->kind != W_BARRIER) return;
  struct barrier *b = &x->w->bars[x->barrier];
  if (b->gen == x->gen && b->arrived > 0) b->arrived--;
}

/* Answers x with an error and drops it. */
static void waiter_error(struct waiter *x, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void waiter_error(struct waiter *x, int status, const char *code, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct router *rt = x->w->rt;
  withdraw(x);
  if (x->kind == W_SSE) {
    struct evbuffer *b = evbuffer_new();
    if (b) {
      evbuffer_add_printf(b, "event: end\ndata: {\"reason\":\"%s\"}\n\n", code);
      evhttp_send_reply_chunk(x->req, b);
      evbuffer_free(b);
    }
    evhttp_send_reply_end(x->req);
  } else {
    route_reply_errorf(rt, x->req, status, code, "%s", msg);
  }
  waiter_unlink(x);
}

static void on_waiter_timeout(evutil_socket_t fd, short what, void *arg);

/* A new waiter for req, or NULL with the client answered (429). */
static struct waiter *add_waiter(struct wf *w, struct evhttp_request *req, int kind,
                                 double timeout) {
  struct router *rt = w->rt;
  if (rt->stopping) {
    route_reply_errorf(rt, req, 503, "router_stopping", "the router is stopping");
    return NULL;
  }
  if (w->n_waiters >= (size_t)rt->o->wf_max_waiters) {
    route_reply_errorf(rt, req, 429, "too_many_waiters",
                       "workflow %.200s has %zu open waits (router.workflows.max_waiters)", w->id,
                       w->n_waiters);
    return NULL;
  }
  struct waiter *x = calloc(1, sizeof *x);
  if (x && kind != W_SSE) x->timer = evtimer_new(rt->base, on_waiter_timeout, x);
  if (!x || (kind != W_SSE && !x->timer)) {
    free(x);
    route_reply_errorf(rt, req, 500, NULL, "out of memory");
    return NULL;
  }
  x->w = w;
  x->kind = kind;
  x->req = req;
  x->con = evhttp_request_get_connection(req);
  if (x->con) evhttp_connection_set_closecb(x->con, on_waiter_close, x);
  if (x->timer) {
    const struct timeval tv = {(time_t)timeout,
                               (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
    evtimer_add(x->timer, &tv);
  }
  x->next = w->waiters;
  if (w->waiters) w->waiters->prev = x;
  w->waiters = x;
  w->n_waiters++;
  return x;
}

static void on_waiter_close(struct evhttp_connection *c, void *arg) {
  struct waiter *x = arg;
  /* as for proxied requests: evhttp leaves an unfinished request on a
   * closed connection to us */
  if (x->req && !evhttp_request_get_connection(x->req) && c == x->con) evhttp_request_free(x->req);
  x->con = NULL;
  withdraw(x);
  waiter_unlink(x);
}

/* ---- messages ------------------------------------------------------------------------ */

static int for_agent(const struct msg *m, size_t a) {
  return m->to < 0 ? m->from != a : (size_t)m->to == a;
}

static size_t pending_for(const struct wf *w, size_t a) {
  size_t n = 0;
  for (size_t i = w->agents[a].cursor; i < w->n_msgs; i++) n += for_agent(&w->msgs[i], a);
  return n;
}

/* Up to limit messages for agent a, its cursor moved past them. */
static json_t *take_messages(struct wf *w, size_t a, size_t limit) {
  json_t *arr = json_array();
  struct agent *ag = &w->agents[a];
  size_t i = ag->cursor;
  for (; i < w->n_msgs && json_array_size(arr) < limit; i++)
    if (for_agent(&w->msgs[i], a)) json_array_append(arr, w->msgs[i].env);
  /* past the last one taken, and past any after it that are not ours */
  while (i < w->n_msgs && !for_agent(&w->msgs[i], a)) i++;
  ag->cursor = i;
  ag->received += json_array_size(arr);
  w->rt->wf->delivered += json_array_size(arr);
  return arr;
}

static void send_messages(struct waiter *x) {
  struct wf *w = x->w;
  json_t *arr = take_messages(w, x->agent, x->kind == W_SSE ? (size_t)-1 : x->limit);
  if (x->kind == W_SSE) {
    struct evbuffer *b = evbuffer_new();
    for (size_t i = 0; b && i < json_array_size(arr); i++) {
      char *s = json_dumps(json_array_get(arr, i), JSON_COMPACT | JSON_PRESERVE_ORDER);
      if (s) evbuffer_add_printf(b, "data: %s\n\n", s);
      free(s);
    }
    if (b && evbuffer_get_length(b)) evhttp_send_reply_chunk(x->req, b);
    if (b) evbuffer_free(b);
    json_decref(arr);
    x->last_write = strata_now();
    return;
  }
  json_t *o = json_pack("{s:s,s:o,s:I}", "object", "list", "data", arr, "pending",
                        (json_int_t)pending_for(w, x->agent));
  reply_json(w->rt, x->req, 200, o);
  waiter_unlink(x);
}

/* Hands new messages to waiting receivers (oldest waiter first). */
static void wake_receivers(struct wf *w) {
  struct waiter *last = w->waiters;
  while (last && last->next) last = last->next;
  for (struct waiter *x = last, *pv; x; x = pv) {
    pv = x->prev;
    if ((x->kind == W_MSG || x->kind == W_SSE) && pending_for(w, x->agent)) send_messages(x);
  }
}

/* ---- hints to the instances ----------------------------------------------------------- */

static void hint_free(struct hint *h) {
  struct wf_reg *g = h->rt->wf;
  if (h->prev)
    h->prev->next = h->next;
  else
    g->hints = h->next;
  if (h->next) h->next->prev = h->prev;
  free(h->wf_id);
  free(h);
}

static int send_hint(struct router *rt, int32_t id, const json_t *part, const char *salt,
                     unsigned flags, const char *wf_id);

/* The requests of w held while its context was being prefilled go now. */
static void release_held(struct router *rt, const struct wf *w) {
  struct rreq *r = rt->inflight;
  while (r && r->next) r = r->next; /* the list is newest first: oldest go first */
  for (struct rreq *pv; r; r = pv) {
    pv = r->prev;
    if (r->wf_held && strcmp(r->wf_id, w->id) == 0 && r->wf_gen == w->gen) {
      r->wf_held = 0;
      route_start(r); /* may free r (not pv) */
    }
  }
}

static void prefill_over(struct wf *w, int ok) {
  w->prefill = ok ? 2 : -1;
  release_held(w->rt, w);
}

static void on_hint_done(struct evhttp_request *req, void *arg) {
  struct hint *h = arg;
  struct router *rt = h->rt;
  h->done = 1;
  const int code = req ? evhttp_request_get_response_code(req) : 0;
  if (code == 404) rt->wf->no_hints[h->b->id] = strata_now() + 60;
  if (code != 200) rt->wf->hints_failed++;
  struct wf *w = h->wf_id ? find_wf(rt, h->wf_id) : NULL;
  if (w && w->gen != h->wf_gen) w = NULL; /* deleted and declared again meanwhile */
  if (w && (h->flags & HINT_PREFILL) && w->prefill == 1) {
    if (code == 200) {
      json_t *o = route_json_buffer(evhttp_request_get_input_buffer(req), NULL);
      const json_t *p = json_object_get(o, "prefilled_tokens");
      if (json_is_integer(p)) w->prefilled_tokens = json_integer_value(p);
      json_decref(o);
    }
    if (!h->in_make) prefill_over(w, code == 200); /* else the sender sees it failed */
  }
  /* a forced release of an agent's prompt lifted the context's keep too:
   * it is put back (in this order, so it wins) */
  if (w && (h->flags & HINT_THEN_CONTEXT) && w->context && w->ctx_instance == h->b->id &&
      !h->in_make)
    send_hint(rt, w->ctx_instance, w->context, w->cache_salt, HINT_KEEP, NULL);
  h->up = NULL;
  route_give_conn(h->b, h->conn);
  h->conn = NULL;
  if (!h->in_make) hint_free(h);
}

/* Sends {part..., action, ttl|force, prefill} to instance id, fire and
 * forget: 1 sent, 0 not (hints off, the instance gone or without hints, a
 * failure). */
static int send_hint(struct router *rt, int32_t id, const json_t *part, const char *salt,
                     unsigned flags, const char *wf_id) {
  struct wf_reg *g = rt->wf;
  if (!rt->o->wf_cache_hints || g->closing || !part || id < 0 || (size_t)id >= rt->n_be ||
      g->no_hints[id] > strata_now())
    return 0;
  struct backend *b = rt->be[id];
  if (b->removed || !b->healthy) return 0;
  const int keep = (flags & HINT_KEEP) != 0;
  json_t *o = json_deep_copy(part);
  if (!o) return 0;
  json_object_set_new(o, "action", json_string(keep ? "keep" : "release"));
  if (keep) json_object_set_new(o, "ttl", json_real(rt->o->wf_hint_ttl));
  if (keep && (flags & HINT_PREFILL)) json_object_set_new(o, "prefill", json_true());
  if (!keep && (flags & HINT_FORCE)) json_object_set_new(o, "force", json_true());
  if (salt) json_object_set_new(o, "cache_salt", json_string(salt));
  char *body = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  struct hint *h = body ? calloc(1, sizeof *h) : NULL;
  if (h) {
    h->rt = rt;
    h->b = b;
    h->flags = flags;
    h->wf_id = wf_id ? strata_strdup(wf_id) : NULL;
    if (wf_id) {
      const struct wf *w = find_wf(rt, wf_id);
      h->wf_gen = w ? w->gen : 0;
    }
    h->conn = route_take_conn(rt, b);
  }
  struct evhttp_request *req = h && h->conn ? evhttp_request_new(on_hint_done, h) : NULL;
  if (!req) {
    if (h && h->conn) route_give_conn(b, h->conn);
    if (h) free(h->wf_id);
    free(h);
    free(body);
    g->hints_failed++;
    return 0;
  }
  h->next = g->hints;
  if (g->hints) g->hints->prev = h;
  g->hints = h;
  struct evkeyvalq *hd = evhttp_request_get_output_headers(req);
  evhttp_add_header(hd, "Host", b->host);
  evhttp_add_header(hd, "Content-Type", "application/json");
  if (rt->api_key_header) evhttp_add_header(hd, "Authorization", rt->api_key_header);
  evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
  free(body);
  if (keep)
    g->hints_keep++;
  else
    g->hints_release++;
  if (flags & HINT_PREFILL) g->prefills++;
  h->up = req;
  h->in_make = 1;
  const int rc = evhttp_make_request(h->conn->c, req, EVHTTP_REQ_POST, "/v1/cache/hints");
  h->in_make = 0;
  if (h->done) { /* failed inside evhttp_make_request: its callback ran */
    hint_free(h);
    return 0;
  }
  if (rc != 0) {
    h->up = NULL;
    route_give_conn(b, h->conn);
    g->hints_failed++;
    hint_free(h);
    return 0;
  }
  return 1;
}

/* The prompt of a completion body as a hint body part ({"messages"} or
 * {"prompt"}); NULL when it has none usable. */
static json_t *prompt_part(const json_t *body, int chat) {
  if (chat) {
    const json_t *m = json_object_get(body, "messages");
    return json_is_array(m) ? json_pack("{s:O}", "messages", m) : NULL;
  }
  const json_t *p = json_object_get(body, "prompt");
  if (json_is_array(p) && json_array_size(p) && !json_is_integer(json_array_get(p, 0)))
    p = json_array_get(p, 0);
  return json_is_string(p) || json_is_array(p) ? json_pack("{s:O}", "prompt", p) : NULL;
}

/* Whether agent a has a step not done other than skip (-1: none). With no
 * step of its own in the graph it is assumed to come back. */
static int agent_runs_again(const struct wf *w, size_t a, ssize_t skip) {
  int any = 0;
  for (size_t i = 0; i < w->n_steps; i++) {
    const struct step *s = &w->steps[i];
    if (!s->agent || strcmp(s->agent, w->agents[a].name) != 0) continue;
    any = 1;
    if (!s->done && (ssize_t)i != skip) return 1;
  }
  return !any;
}

/* Steps that became ready: their agents' contexts are kept again (the
 * "needed soon" half of the step graph). */
static void hint_ready(struct wf *w) {
  if (!w->rt->o->wf_keep_agents) return;
  const double now = strata_now();
  for (size_t i = 0; i < w->n_steps; i++) {
    const struct step *s = &w->steps[i];
    if (!s->agent || !step_ready(w, s)) continue;
    const ssize_t a = find_agent(w, s->agent);
    if (a < 0 || !w->agents[a].prompt) continue;
    struct agent *ag = &w->agents[a];
    /* once per prompt (an agent with several ready steps, or a step that
     * stays ready while others finish, is not hinted again), renewed only
     * when half its keep's ttl has passed */
    if (ag->kept_at > 0 && now - ag->kept_at < w->rt->o->wf_hint_ttl / 2) continue;
    if (send_hint(w->rt, ag->instance, ag->prompt, w->cache_salt, HINT_KEEP, NULL))
      ag->kept_at = now;
  }
}

/* ---- steps --------------------------------------------------------------------------- */

static json_t *step_json(const struct wf *w, const struct step *s) {
  json_t *after = json_array();
  for (size_t i = 0; i < s->n_after; i++) json_array_append_new(after, json_string(s->after[i]));
  json_t *o = json_pack("{s:s,s:o,s:o,s:s,s:I}", "name", s->name, "agent",
                        s->agent ? json_string(s->agent) : json_null(), "after", after, "status",
                        s->done ? "done" : step_ready(w, s) ? "ready" : "waiting", "requests",
                        (json_int_t)s->requests);
  if (o && s->done) json_object_set(o, "output", s->output ? s->output : json_null());
  return o;
}

static int steps_done(const struct wf *w, char *const *names, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const ssize_t s = find_step(w, names[i]);
    if (s < 0 || !w->steps[s].done) return 0;
  }
  return 1;
}

static void answer_steps(struct waiter *x) {
  json_t *arr = json_array();
  for (size_t i = 0; i < x->n_steps; i++) {
    const ssize_t s = find_step(x->w, x->steps[i]);
    if (s >= 0) json_array_append_new(arr, step_json(x->w, &x->w->steps[s]));
  }
  reply_json(x->w->rt, x->req, 200, json_pack("{s:s,s:o}", "object", "list", "data", arr));
  waiter_unlink(x);
}

/* Marks step s done with output (taken; may be NULL) and wakes who waits. */
static void finish_step(struct wf *w, size_t s, json_t *output) {
  struct step *st = &w->steps[s];
  st->done = 1;
  st->output = output;
  st->t_done = strata_now();
  w->rt->wf->steps_done++;
  for (struct waiter *x = w->waiters, *nx; x; x = nx) {
    nx = x->next;
    if (x->kind == W_STEPS && steps_done(w, x->steps, x->n_steps)) answer_steps(x);
  }
  hint_ready(w);
}

/* ---- the workflow's state ------------------------------------------------------------ */

static json_t *wf_json(const struct wf *w) {
  const struct router *rt = w->rt;
  const double now = strata_now();
  json_t *agents = json_array(), *steps = json_array(), *bars = json_array();
  size_t done = 0;
  for (size_t i = 0; i < w->n_agents; i++) {
    const struct agent *a = &w->agents[i];
    json_array_append_new(agents,
                          json_pack("{s:s,s:I,s:I,s:I,s:o}", "name", a->name, "requests",
                                    (json_int_t)a->requests, "messages_received",
                                    (json_int_t)a->received, "messages_pending",
                                    (json_int_t)pending_for(w, i), "instance",
                                    url_json(rt, a->instance)));
  }
  for (size_t i = 0; i < w->n_steps; i++) {
    json_array_append_new(steps, step_json(w, &w->steps[i]));
    done += w->steps[i].done;
  }
  for (size_t i = 0; i < w->n_bars; i++)
    json_array_append_new(bars, json_pack("{s:s,s:i,s:i,s:I}", "name", w->bars[i].name,
                                          "parties", w->bars[i].parties, "arrived",
                                          w->bars[i].arrived, "generation",
                                          (json_int_t)w->bars[i].gen));
  static const char *const pf[] = {"failed", "none", "running", "done"};
  json_t *ctx = json_pack("{s:b,s:o,s:s,s:I}", "declared", w->context != NULL, "instance",
                          url_json(rt, w->ctx_instance), "prefill", pf[w->prefill + 1],
                          "prefilled_tokens", (json_int_t)w->prefilled_tokens);
  json_t *cache = json_pack("{s:I,s:I,s:I,s:f}", "requests_with_usage", (json_int_t)w->usage_known,
                            "prompt_tokens", (json_int_t)w->prompt_tokens, "cached_tokens",
                            (json_int_t)w->cached_tokens, "hit_rate",
                            w->prompt_tokens ? (double)w->cached_tokens / (double)w->prompt_tokens
                                             : 0.0);
  return json_pack("{s:s,s:s,s:b,s:I,s:f,s:f,s:o,s:o,s:I,s:I,s:I,s:I,s:o,s:o,s:o,s:I,s:I,s:o}",
                   "id", w->id, "object", "workflow", "declared", w->declared, "created",
                   (json_int_t)w->created_wall, "idle_seconds", now - w->last, "idle_ttl",
                   w->idle_ttl, "agents", agents, "steps", steps, "steps_done", (json_int_t)done,
                   "requests", (json_int_t)w->requests, "failed", (json_int_t)w->failed,
                   "moves", (json_int_t)w->moves, "instance", url_json(rt, w->last_instance),
                   "context", ctx, "cache", cache, "messages", (json_int_t)w->n_msgs,
                   "waiters", (json_int_t)w->n_waiters, "barriers", bars);
}

/* Ends w: waiters get 410, what it kept is released, it is freed. */
static void end_wf(struct wf *w, int idle) {
  struct router *rt = w->rt;
  struct wf_reg *g = rt->wf;
  while (w->waiters)
    waiter_error(w->waiters, 410, "workflow_ended", "workflow %.200s ended%s", w->id,
                 idle ? " (idle)" : "");
  if (w->prefill == 1) release_held(rt, w);
  if (w->context) send_hint(rt, w->ctx_instance, w->context, w->cache_salt, HINT_FORCE, NULL);
  for (size_t i = 0; i < w->n_agents; i++)
    if (w->agents[i].prompt)
      send_hint(rt, w->agents[i].instance, w->agents[i].prompt, w->cache_salt, HINT_FORCE, NULL);
  if (rt->vt->size >= offsetof(struct strata_router_vtable, on_workflow_end) +
                         sizeof rt->vt->on_workflow_end &&
      rt->vt->on_workflow_end)
    rt->vt->on_workflow_end(rt->state, w->id, strlen(w->id));
  struct wf **pp = &g->tab[w->key & (g->cap - 1)];
  while (*pp != w) pp = &(*pp)->hnext;
  *pp = w->hnext;
  g->n--;
  if (idle)
    g->ended_idle++;
  else
    g->ended_deleted++;
  for (size_t i = 0; i < w->n_agents; i++) {
    free(w->agents[i].name);
    json_decref(w->agents[i].prompt);
  }
  for (size_t i = 0; i < w->n_steps; i++) {
    free(w->steps[i].name);
    free(w->steps[i].agent);
    for (size_t k = 0; k < w->steps[i].n_after; k++) free(w->steps[i].after[k]);
    free(w->steps[i].after);
    json_decref(w->steps[i].output);
    g->msg_bytes -= w->steps[i].bytes;
  }
  for (size_t i = 0; i < w->n_bars; i++) free(w->bars[i].name);
  for (size_t i = 0; i < w->n_msgs; i++) {
    g->msg_bytes -= w->msgs[i].bytes;
    json_decref(w->msgs[i].env);
  }
  json_decref(w->context);
  free(w->agents);
  free(w->steps);
  free(w->bars);
  free(w->msgs);
  free(w->cache_salt);
  free(w->id);
  free(w);
}

/* ---- the API ------------------------------------------------------------------------- */

static json_t *body_json(struct router *rt, struct evhttp_request *req, int required) {
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  if (evbuffer_get_length(in) == 0 && !required) return json_object();
  json_error_t je;
  json_t *o = route_json_buffer(in, &je);
  if (!json_is_object(o)) {
    route_reply_errorf(rt, req, 400, "invalid_json", "the body is not a JSON object%s%s",
                       o ? "" : ": ", o ? "" : je.text);
    json_decref(o);
    return NULL;
  }
  return o;
}

/* A query parameter as a number in [lo, hi] (def when absent); -1 and the
 * client answered when it is not. */
static int query_num(struct router *rt, struct evhttp_request *req, const struct evkeyvalq *q,
                     const char *name, double def, double lo, double hi, double *out) {
  const char *v = evhttp_find_header(q, name);
  if (!v) {
    *out = def;
    return 0;
  }
  char *end;
  errno = 0;
  const double d = strtod(v, &end);
  if (end == v || *end || errno || !(d >= lo && d <= hi)) {
    route_reply_errorf(rt, req, 400, NULL, "query parameter %s: '%.40s' is not a number in "
                       "[%g, %g]", name, v, lo, hi);
    return -1;
  }
  *out = d;
  return 0;
}

/* A body field as a timeout in seconds in [0, max_wait]. */
static int body_timeout(struct router *rt, struct evhttp_request *req, const json_t *o,
                        double *out) {
  const json_t *t = json_object_get(o, "timeout");
  *out = rt->o->wf_max_wait;
  if (!t) return 0;
  if (!json_is_number(t) || json_number_value(t) < 0 ||
      json_number_value(t) > rt->o->wf_max_wait) {
    route_reply_errorf(rt, req, 400, NULL, "timeout must be a number of seconds in [0, %g] "
                       "(router.workflows.max_wait)", rt->o->wf_max_wait);
    return -1;
  }
  *out = json_number_value(t);
  return 0;
}

static void handle_declare(struct router *rt, struct evhttp_request *req) {
  json_t *o = body_json(rt, req, 0);
  if (!o) return;
  char id[64 + ROUTE_WF_MAX_NAME];
  const json_t *jid = json_object_get(o, "id");
  const json_t *agents = json_object_get(o, "agents"), *steps = json_object_get(o, "steps");
  const json_t *ctx = json_object_get(o, "context"), *salt = json_object_get(o, "cache_salt");
  const json_t *ttl = json_object_get(o, "idle_ttl"), *pf = json_object_get(o, "prefill");
  const char *err = route_wf_check_declare(o, (size_t)rt->o->wf_max_agents,
                                           (size_t)rt->o->wf_max_steps);
  if (err) {
    route_reply_errorf(rt, req, 400, NULL, "%s", err);
    json_decref(o);
    return;
  }
  if (jid)
    snprintf(id, sizeof id, "%s", json_string_value(jid));
  else
    snprintf(id, sizeof id, "wf-%llx-%llu", (unsigned long long)rt->rid_base,
             (unsigned long long)++rt->wf->next_auto);
  struct wf *w = find_wf(rt, id);
  if (w && w->declared) {
    route_reply_errorf(rt, req, 409, "workflow_exists", "workflow %.200s is already declared "
                       "(DELETE it first)", id);
    json_decref(o);
    return;
  }
  if (!w && !(w = new_wf(rt, id, 1))) {
    route_reply_errorf(rt, req, 429, "too_many_workflows", "%zu workflows are open "
                       "(router.workflows.max_workflows)", rt->wf->n);
    json_decref(o);
    return;
  }
  if (!w->declared) { /* implicit until now: declared from here on */
    w->declared = 1;
    rt->wf->promoted++;
  }
  w->last = strata_now();
  if (ttl) w->idle_ttl = json_number_value(ttl);
  int full = 0;
  for (size_t i = 0; i < json_array_size(agents); i++) {
    const json_t *a = json_array_get(agents, i);
    if (json_is_object(a)) a = json_object_get(a, "name");
    full |= agent_of(w, json_string_value(a)) < 0;
  }
  for (size_t i = 0; i < json_array_size(steps); i++) {
    const json_t *s = json_array_get(steps, i), *af = json_object_get(s, "after");
    const ssize_t k = step_of(w, json_string_value(json_object_get(s, "name")));
    if (k < 0) {
      full = 1;
      continue;
    }
    struct step *st = &w->steps[k];
    const char *ag = json_string_value(json_object_get(s, "agent"));
    free(st->agent);
    st->agent = ag ? strata_strdup(ag) : NULL;
    if (ag) full |= agent_of(w, ag) < 0;
    for (size_t j = 0; j < st->n_after; j++) free(st->after[j]);
    free(st->after);
    st->n_after = 0;
    st->after = calloc(json_array_size(af) + 1, sizeof *st->after);
    for (size_t j = 0; st->after && j < json_array_size(af); j++)
      if ((st->after[st->n_after] = copy_name(json_array_get(af, j)))) st->n_after++;
  }
  if (salt) {
    free(w->cache_salt);
    w->cache_salt = strata_strdup(json_string_value(salt));
  }
  if (ctx) {
    json_decref(w->context);
    w->context = json_is_string(ctx)
                     ? json_pack("{s:[{s:s,s:O}],s:b}", "messages", "role", "system", "content",
                                 ctx, "add_generation_prompt", 0)
                     : json_deep_copy(ctx);
    /* the context's instance: where the policy sends this workflow */
    if (w->context) w->ctx_instance = route_pick(rt, w->id, w->context);
    if (w->ctx_instance >= 0) {
      const int prefill = !pf || json_is_true(pf);
      if (prefill) { /* requests of the workflow wait for it (route_wf_join) */
        w->prefill = 1;
        w->prefill_t0 = strata_now();
      }
      if (!send_hint(rt, w->ctx_instance, w->context, w->cache_salt,
                     HINT_KEEP | (prefill ? HINT_PREFILL : 0u), w->id) &&
          w->prefill == 1)
        w->prefill = 0;
    }
  }
  json_decref(o);
  if (full) rt->wf->rejected++;
  json_t *st = wf_json(w);
  if (full && st)
    json_object_set_new(st, "warning", json_string("some agents or steps were not added: "
                                                   "router.workflows limits"));
  reply_json(rt, req, 201, st);
}

static void handle_list(struct router *rt, struct evhttp_request *req) {
  json_t *arr = json_array();
  for (size_t i = 0; i < rt->wf->cap && json_array_size(arr) < 1000; i++)
    for (const struct wf *w = rt->wf->tab[i]; w && json_array_size(arr) < 1000; w = w->hnext)
      json_array_append_new(arr, json_pack("{s:s,s:b,s:I,s:I,s:I}", "id", w->id, "declared",
                                           w->declared, "agents", (json_int_t)w->n_agents,
                                           "requests", (json_int_t)w->requests, "messages",
                                           (json_int_t)w->n_msgs));
  reply_json(rt, req, 200,
             json_pack("{s:s,s:I,s:o}", "object", "list", "total", (json_int_t)rt->wf->n, "data",
                       arr));
}

static void handle_post_message(struct router *rt, struct evhttp_request *req, struct wf *w) {
  json_t *o = body_json(rt, req, 1);
  if (!o) return;
  const char *err = route_wf_check_message(o);
  if (err) {
    route_reply_errorf(rt, req, 400, NULL, "%s", err);
    json_decref(o);
    return;
  }
  const json_t *from = json_object_get(o, "from"), *to = json_object_get(o, "to");
  if (w->n_msgs >= (size_t)rt->o->wf_max_messages) {
    route_reply_errorf(rt, req, 429, "too_many_messages", "workflow %.200s holds %zu messages "
                       "(router.workflows.max_messages)", w->id, w->n_msgs);
    json_decref(o);
    return;
  }
  const char *tn = json_string_value(to);
  if (tn && strcmp(tn, "*") == 0) tn = NULL;
  char midbuf[96];
  snprintf(midbuf, sizeof midbuf, "%llx-%zu", (unsigned long long)w->key, w->n_msgs + 1);
  json_t *env = route_wf_envelope(o, w->n_msgs + 1, json_string_value(from), tn, w->id, midbuf);
  char *s = env ? json_dumps(env, JSON_COMPACT) : NULL;
  const size_t bytes = s ? strlen(s) : 0;
  free(s);
  if (!env || !bytes) {
    json_decref(env);
    json_decref(o);
    route_reply_errorf(rt, req, 500, NULL, "out of memory");
    return;
  }
  if (bytes > rt->o->wf_max_message_bytes) {
    json_decref(env);
    json_decref(o);
    route_reply_errorf(rt, req, 413, "message_too_large", "the message is %zu bytes as JSON; "
                       "router.workflows.max_message_bytes is %zu", bytes,
                       rt->o->wf_max_message_bytes);
    return;
  }
  if (rt->wf->msg_bytes + bytes > rt->o->wf_max_total_bytes) {
    json_decref(env);
    json_decref(o);
    rt->wf->rejected++;
    route_reply_errorf(rt, req, 429, "router_full", "the router holds %zu bytes of workflow "
                       "messages (router.workflows.max_total_bytes): retry later", rt->wf->msg_bytes);
    return;
  }
  const ssize_t fa = agent_of(w, json_string_value(from));
  const ssize_t ta = tn ? agent_of(w, tn) : -1;
  json_decref(o);
  if (fa < 0 || (tn && ta < 0)) {
    json_decref(env);
    route_reply_errorf(rt, req, 429, "too_many_agents", "workflow %.200s has %zu agents "
                       "(router.workflows.max_agents)", w->id, w->n_agents);
    return;
  }
  if (w->n_msgs == w->cap_msgs) {
    const size_t cap = w->cap_msgs ? w->cap_msgs * 2 : 16;
    struct msg *nm = realloc(w->msgs, cap * sizeof *nm);
    if (!nm) {
      json_decref(env);
      route_reply_errorf(rt, req, 500, NULL, "out of memory");
      return;
    }
    w->msgs = nm;
    w->cap_msgs = cap;
  }
  w->msgs[w->n_msgs++] = (struct msg){.bytes = bytes, .from = (size_t)fa, .to = ta, .env = env};
  rt->wf->msg_bytes += bytes;
  rt->wf->messages++;
  reply_json(rt, req, 200,
             json_pack("{s:s,s:I,s:O}", "object", "workflow.message", "seq",
                       (json_int_t)w->n_msgs, "messageId",
                       json_object_get(json_object_get(env, "message"), "messageId")));
  wake_receivers(w);
}

static void handle_get_messages(struct router *rt, struct evhttp_request *req, struct wf *w,
                                const struct evkeyvalq *q) {
  const char *agent = evhttp_find_header(q, "agent");
  if (!agent || !route_wf_name_ok(agent, strlen(agent))) {
    route_reply_errorf(rt, req, 400, NULL, "query parameter agent (the receiver) is required");
    return;
  }
  double timeout, limit;
  if (query_num(rt, req, q, "timeout", 30 < rt->o->wf_max_wait ? 30 : rt->o->wf_max_wait, 0,
                rt->o->wf_max_wait, &timeout) != 0 ||
      query_num(rt, req, q, "limit", 100, 1, 10000, &limit) != 0)
    return;
  const char *st = evhttp_find_header(q, "stream");
  const char *acc = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");
  const int sse = (st && (strcmp(st, "true") == 0 || strcmp(st, "1") == 0)) ||
                  (acc && strstr(acc, "text/event-stream"));
  const ssize_t a = agent_of(w, agent);
  if (a < 0) {
    route_reply_errorf(rt, req, 429, "too_many_agents", "workflow %.200s has %zu agents "
                       "(router.workflows.max_agents)", w->id, w->n_agents);
    return;
  }
  if (!sse && (timeout == 0 || pending_for(w, (size_t)a))) {
    json_t *arr = take_messages(w, (size_t)a, (size_t)limit);
    reply_json(rt, req, 200, json_pack("{s:s,s:o,s:I}", "object", "list", "data", arr, "pending",
                                       (json_int_t)pending_for(w, (size_t)a)));
    return;
  }
  struct waiter *x = add_waiter(w, req, sse ? W_SSE : W_MSG, timeout);
  if (!x) return;
  x->agent = (size_t)a;
  x->limit = (size_t)limit;
  if (sse) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    route_count_status(rt, 200);
    evhttp_send_reply_start(req, 200, "OK");
    x->last_write = strata_now();
    if (pending_for(w, (size_t)a)) send_messages(x);
  }
}

static void handle_barrier(struct router *rt, struct evhttp_request *req, struct wf *w,
                           const char *name) {
  json_t *o = body_json(rt, req, 1);
  if (!o) return;
  double timeout;
  int parties = 0;
  const char *err = route_wf_check_barrier(o, &parties);
  if (err) {
    route_reply_errorf(rt, req, 400, NULL, "%s", err);
    json_decref(o);
    return;
  }
  if (body_timeout(rt, req, o, &timeout) != 0) {
    json_decref(o);
    return;
  }
  json_decref(o);
  size_t bi = w->n_bars;
  for (size_t i = 0; i < w->n_bars; i++)
    if (strcmp(w->bars[i].name, name) == 0) bi = i;
  if (bi == w->n_bars) {
    struct barrier *nb = w->n_bars < (size_t)rt->o->wf_max_steps
                             ? realloc(w->bars, (w->n_bars + 1) * sizeof *nb)
                             : NULL;
    if (!nb) {
      route_reply_errorf(rt, req, 429, "too_many_barriers", "workflow %.200s has %zu barriers "
                         "(router.workflows.max_steps)", w->id, w->n_bars);
      return;
    }
    w->bars = nb;
    nb[w->n_bars] = (struct barrier){.name = strata_strdup(name)};
    if (!nb[w->n_bars].name) {
      route_reply_errorf(rt, req, 500, NULL, "out of memory");
      return;
    }
    w->n_bars++;
  }
  struct barrier *b = &w->bars[bi];
  if (b->arrived > 0 && b->parties != parties) {
    route_reply_errorf(rt, req, 400, "barrier_mismatch", "barrier %.200s is waiting for %d "
                       "parties, not %d", name, b->parties, parties);
    return;
  }
  b->parties = parties;
  if (b->arrived + 1 < parties) {
    struct waiter *x = add_waiter(w, req, W_BARRIER, timeout);
    if (!x) return;
    x->barrier = bi;
    x->gen = b->gen;
    b->arrived++;
    return;
  }
  /* the last party: everyone goes */
  const uint64_t gen = b->gen;
  rt->wf->barrier_released++;
  for (struct waiter *x = w->waiters, *nx; x; x = nx) {
    nx = x->next;
    if (x->kind != W_BARRIER || x->barrier != bi || x->gen != gen) continue;
    reply_json(rt, x->req, 200,
               json_pack("{s:s,s:s,s:i,s:I}", "object", "workflow.barrier", "name", name,
                         "parties", parties, "generation", (json_int_t)gen));
    waiter_unlink(x);
  }
  b->arrived = 0;
  b->gen++;
  reply_json(rt, req, 200,
             json_pack("{s:s,s:s,s:i,s:I}", "object", "workflow.barrier", "name", name,
                       "parties", parties, "generation", (json_int_t)gen));
}

static void handle_post_step(struct router *rt, struct evhttp_request *req, struct wf *w,
                             const char *name) {
  json_t *o = body_json(rt, req, 0);
  if (!o) return;
  json_t *out = json_object_get(o, "output");
  char *s = out ? json_dumps(out, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  const size_t bytes = s ? strlen(s) : 0;
  free(s);
  if (bytes > rt->o->wf_max_message_bytes) {
    route_reply_errorf(rt, req, 413, "output_too_large", "the step output is %zu bytes as JSON; "
                       "router.workflows.max_message_bytes is %zu", bytes,
                       rt->o->wf_max_message_bytes);
    json_decref(o);
    return;
  }
  const ssize_t k = step_of(w, name);
  if (k < 0) {
    route_reply_errorf(rt, req, 429, "too_many_steps", "workflow %.200s has %zu steps "
                       "(router.workflows.max_steps)", w->id, w->n_steps);
    json_decref(o);
    return;
  }
  if (w->steps[k].done) {
    route_reply_errorf(rt, req, 409, "step_done", "step %.200s of workflow %.200s is done "
                       "already", name, w->id);
    json_decref(o);
    return;
  }
  if (rt->wf->msg_bytes + bytes > rt->o->wf_max_total_bytes) {
    rt->wf->rejected++;
    route_reply_errorf(rt, req, 429, "router_full", "the router holds %zu bytes of workflow "
                       "messages (router.workflows.max_total_bytes): retry later", rt->wf->msg_bytes);
    json_decref(o);
    return;
  }
  if (out) json_incref(out);
  json_decref(o);
  w->steps[k].bytes = bytes;
  rt->wf->msg_bytes += bytes;
  finish_step(w, (size_t)k, out);
  reply_json(rt, req, 200, step_json(w, &w->steps[k]));
}

static void handle_get_steps(struct router *rt, struct evhttp_request *req, struct wf *w,
                             const struct evkeyvalq *q) {
  const char *wait = evhttp_find_header(q, "wait_for");
  if (!wait) {
    json_t *arr = json_array();
    for (size_t i = 0; i < w->n_steps; i++) json_array_append_new(arr, step_json(w, &w->steps[i]));
    reply_json(rt, req, 200, json_pack("{s:s,s:o}", "object", "list", "data", arr));
    return;
  }
  double timeout;
  if (query_num(rt, req, q, "timeout", rt->o->wf_max_wait, 0, rt->o->wf_max_wait, &timeout) != 0)
    return;
  char **names = NULL;
  size_t n = 0;
  for (const char *p = wait; *p;) {
    const char *c = strchr(p, ',');
    const size_t len = c ? (size_t)(c - p) : strlen(p);
    char **nn = len && route_wf_name_ok(p, len) && n < 256 ? realloc(names, (n + 1) * sizeof *nn) : NULL;
    if (!nn) {
      for (size_t i = 0; i < n; i++) free(names[i]);
      free(names);
      route_reply_errorf(rt, req, 400, NULL, "wait_for must be a comma-separated list of 1 to "
                         "256 step names");
      return;
    }
    names = nn;
    if (!(names[n] = strata_strndup(p, len))) {
      for (size_t i = 0; i < n; i++) free(names[i]);
      free(names);
      route_reply_errorf(rt, req, 500, NULL, "out of memory");
      return;
    }
    n++;
    p += len + (c != NULL);
  }
  if (n == 0) {
    route_reply_errorf(rt, req, 400, NULL, "wait_for names no step");
    return;
  }
  struct waiter *x = add_waiter(w, req, W_STEPS, timeout);
  if (!x) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return;
  }
  x->steps = names;
  x->n_steps = n;
  if (steps_done(w, names, n)) answer_steps(x);
}

static void on_waiter_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct waiter *x = arg;
  struct router *rt = x->w->rt;
  if (x->kind == W_MSG) { /* a long poll that saw nothing: an empty list */
    reply_json(rt, x->req, 200, json_pack("{s:s,s:[],s:i}", "object", "list", "data", "pending", 0));
    waiter_unlink(x);
  } else if (x->kind == W_BARRIER) {
    rt->wf->barrier_timeouts++;
    const struct barrier *b = &x->w->bars[x->barrier];
    waiter_error(x, 408, "barrier_timeout", "barrier %.200s: %d of %d parties arrived before "
                 "the timeout", b->name, b->arrived, b->parties);
  } else if (x->kind == W_STEPS) {
    rt->wf->step_timeouts++;
    char missing[512] = "";
    size_t off = 0;
    for (size_t i = 0; i < x->n_steps && off < sizeof missing - 1; i++) {
      const ssize_t s = find_step(x->w, x->steps[i]);
      if (s < 0 || !x->w->steps[s].done)
        off += (size_t)snprintf(missing + off, sizeof missing - off, "%s%.100s", off ? ", " : "",
                                x->steps[i]);
    }
    waiter_error(x, 408, "step_timeout", "steps not done before the timeout: %s", missing);
  }
}

/* Splits "/v1/workflows/ID[/SUB[/NAME]]" with ID and NAME percent-decoded
 * into id and name (malloc'd). */
static int split_path(const char *path, char **id, char **sub, char **name) {
  *id = *sub = *name = NULL;
  const char *p = path + strlen("/v1/workflows/");
  const char *s1 = strchr(p, '/');
  const size_t idlen = s1 ? (size_t)(s1 - p) : strlen(p);
  char *raw = strata_strndup(p, idlen);
  if (!raw) return -1;
  size_t n = 0;
  *id = evhttp_uridecode(raw, 0, &n);
  free(raw);
  if (!*id || !route_wf_name_ok(*id, n) || strlen(*id) != n) return -1;
  if (!s1) return 0;
  const char *s2 = strchr(s1 + 1, '/');
  *sub = strata_strndup(s1 + 1, s2 ? (size_t)(s2 - s1 - 1) : strlen(s1 + 1));
  if (!*sub) return -1;
  if (!s2) return 0;
  if (strchr(s2 + 1, '/')) return -1;
  *name = evhttp_uridecode(s2 + 1, 0, &n);
  return *name && route_wf_name_ok(*name, n) && strlen(*name) == n ? 0 : -1;
}

int route_wf_handle(struct router *rt, struct evhttp_request *req, const char *path,
                    enum evhttp_cmd_type m) {
  if (strcmp(path, "/v1/workflows") == 0) {
    if (m == EVHTTP_REQ_POST)
      handle_declare(rt, req);
    else if (m == EVHTTP_REQ_GET)
      handle_list(rt, req);
    else
      route_reply_errorf(rt, req, 405, "method_not_allowed", "method not allowed for %s", path);
    return 1;
  }
  if (strncmp(path, "/v1/workflows/", 14) != 0) return 0;
  char *id, *sub, *name;
  if (split_path(path, &id, &sub, &name) != 0) {
    route_reply_errorf(rt, req, 400, NULL, "%.200s is not /v1/workflows/ID[/messages|/steps"
                       "[/NAME]|/barriers/NAME] with names of 1 to 256 bytes", path);
    goto out;
  }
  struct wf *w = find_wf(rt, id);
  const int known_sub = !sub || strcmp(sub, "messages") == 0 || strcmp(sub, "steps") == 0 ||
                        strcmp(sub, "barriers") == 0;
  if (!known_sub || (sub && strcmp(sub, "messages") == 0 && name) ||
      (sub && strcmp(sub, "barriers") == 0 && !name)) {
    route_reply_errorf(rt, req, 404, "not_found", "no such endpoint: %.200s", path);
    goto out;
  }
  if (!w) {
    route_reply_errorf(rt, req, 404, "workflow_not_found", "no workflow %.200s (it ended, or "
                       "the router restarted: declare it again)", id);
    goto out;
  }
  w->last = strata_now();
  struct evkeyvalq q;
  TAILQ_INIT(&q);
  const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
  const char *qs = u ? evhttp_uri_get_query(u) : NULL;
  if (qs && evhttp_parse_query_str(qs, &q) != 0) {
    route_reply_errorf(rt, req, 400, NULL, "the query string is malformed");
    goto out;
  }
  int ok = 1;
  if (!sub) {
    if (m == EVHTTP_REQ_GET)
      reply_json(rt, req, 200, wf_json(w));
    else if (m == EVHTTP_REQ_DELETE) {
      json_t *st = wf_json(w);
      end_wf(w, 0);
      reply_json(rt, req, 200, json_pack("{s:s,s:s,s:b,s:o}", "id", id, "object",
                                         "workflow.deleted", "deleted", 1, "final", st));
    } else
      ok = 0;
  } else if (strcmp(sub, "messages") == 0) {
    if (m == EVHTTP_REQ_POST)
      handle_post_message(rt, req, w);
    else if (m == EVHTTP_REQ_GET)
      handle_get_messages(rt, req, w, &q);
    else
      ok = 0;
  } else if (strcmp(sub, "barriers") == 0) {
    if (m == EVHTTP_REQ_POST)
      handle_barrier(rt, req, w, name);
    else
      ok = 0;
  } else if (!name) { /* steps */
    if (m == EVHTTP_REQ_GET)
      handle_get_steps(rt, req, w, &q);
    else
      ok = 0;
  } else {
    const ssize_t k = find_step(w, name);
    if (m == EVHTTP_REQ_POST)
      handle_post_step(rt, req, w, name);
    else if (m == EVHTTP_REQ_GET && k >= 0)
      reply_json(rt, req, 200, step_json(w, &w->steps[k]));
    else if (m == EVHTTP_REQ_GET)
      route_reply_errorf(rt, req, 404, "step_not_found", "workflow %.200s has no step %.200s",
                         id, name);
    else
      ok = 0;
  }
  if (!ok) route_reply_errorf(rt, req, 405, "method_not_allowed", "method not allowed for %.200s",
                              path);
  evhttp_clear_headers(&q);
out:
  free(id);
  free(sub);
  free(name);
  return 1;
}

/* ---- proxied requests ----------------------------------------------------------------- */

/* A request's workflow field: header, else body metadata.<field>, else
 * body.<field>. Copied; NULL when absent or not a valid name. */
static char *field_of(const struct rreq *r, const char *header, const char *field) {
  const char *v = r->client ? evhttp_find_header(evhttp_request_get_input_headers(r->client), header)
                            : NULL;
  if (v && *v) return route_wf_name_ok(v, strlen(v)) ? strata_strdup(v) : NULL;
  const json_t *j = json_object_get(json_object_get(r->json, "metadata"), field);
  if (!json_is_string(j)) j = json_object_get(r->json, field);
  return json_is_string(j) ? copy_name(j) : NULL;
}

static int is_completion_path(const char *p) {
  return strcmp(p, "/v1/completions") == 0 || strcmp(p, "/v1/chat/completions") == 0;
}

int route_wf_join(struct rreq *r) {
  struct router *rt = r->rt;
  if (!r->json || !is_completion_path(r->rr.path)) return 0;
  r->wf_id = field_of(r, "X-Workflow-Id", "workflow_id");
  if (!r->wf_id) return 0;
  r->wf_agent = field_of(r, "X-Agent-Id", "agent_id");
  r->wf_step = field_of(r, "X-Workflow-Step", "step");
  struct wf *w = find_wf(rt, r->wf_id);
  if (!w && !(w = new_wf(rt, r->wf_id, 0))) {
    route_reply_errorf(rt, r->client, 429, "too_many_workflows", "%zu workflows are open "
                       "(router.workflows.max_workflows)", rt->wf->n);
    return -1;
  }
  w->last = strata_now();
  w->requests++;
  w->active++;
  r->wf_gen = w->gen;
  if (r->wf_agent && agent_of(w, r->wf_agent) < 0) {
    free(r->wf_agent);
    r->wf_agent = NULL; /* over the limit: the request still goes, unattributed */
  }
  if (r->wf_step) {
    const ssize_t k = step_of(w, r->wf_step);
    if (k >= 0) w->steps[k].requests++;
  }
  if (r->wf_agent) w->agents[find_agent(w, r->wf_agent)].requests++;
  if (w->prefill == 1) { /* its context is being prefilled: it waits, not computes it again */
    r->wf_held = 1;
    rt->wf->held++;
    return 1;
  }
  return 0;
}

/* The text of choice 0 of a non-streamed completion or chat answer. */
static json_t *answer_text(const json_t *o) {
  const json_t *c = json_array_get(json_object_get(o, "choices"), 0);
  const json_t *t = json_object_get(c, "text");
  if (!json_is_string(t)) t = json_object_get(json_object_get(c, "message"), "content");
  return json_is_string(t) ? json_incref((json_t *)t) : NULL;
}

void route_wf_done(struct rreq *r, int status, struct evbuffer *body) {
  struct router *rt = r->rt;
  struct wf *w = r->wf_id ? find_wf(rt, r->wf_id) : NULL;
  if (!w || w->gen != r->wf_gen) return;
  w->last = strata_now();
  if (status < 200 || status >= 300) {
    w->failed++;
    return;
  }
  const int32_t inst = r->be->id;
  if (w->last_instance >= 0 && w->last_instance != inst) w->moves++;
  w->last_instance = inst;
  json_t *ans = NULL;
  if (body) {
    ans = route_json_buffer(body, NULL);
    const json_t *u = json_object_get(ans, "usage");
    const json_t *pt = json_object_get(u, "prompt_tokens");
    const json_t *ct = json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
    if (json_is_integer(pt) && json_integer_value(pt) >= 0) {
      w->usage_known++;
      w->prompt_tokens += (uint64_t)json_integer_value(pt);
      if (json_is_integer(ct) && json_integer_value(ct) >= 0)
        w->cached_tokens += (uint64_t)json_integer_value(ct);
    }
  }
  const ssize_t k = r->wf_step ? find_step(w, r->wf_step) : -1;
  const ssize_t a = r->wf_agent ? find_agent(w, r->wf_agent) : -1;
  if (a >= 0) {
    struct agent *ag = &w->agents[a];
    json_decref(ag->prompt);
    ag->prompt = prompt_part(r->json, strcmp(r->rr.path, "/v1/chat/completions") == 0);
    ag->instance = inst;
    ag->kept_at = 0;
    /* its context: kept while the graph says it comes back, else let go
     * first -- with force, since its own earlier keep protects it; the
     * workflow's shared context, in that prompt too, is kept again after */
    if (agent_runs_again(w, (size_t)a, k)) {
      if (rt->o->wf_keep_agents && send_hint(rt, inst, ag->prompt, w->cache_salt, HINT_KEEP, NULL))
        ag->kept_at = strata_now();
    } else
      send_hint(rt, inst, ag->prompt, w->cache_salt, HINT_FORCE | HINT_THEN_CONTEXT, w->id);
  }
  if (k >= 0 && !w->steps[k].done) {
    /* the answer's text is the step's output, within the limits a posted
     * output has (else null: the step is done all the same) */
    json_t *out = answer_text(ans);
    const size_t bytes = out ? json_string_length(out) + 2 : 0;
    if (out && (bytes > rt->o->wf_max_message_bytes ||
                rt->wf->msg_bytes + bytes > rt->o->wf_max_total_bytes)) {
      json_decref(out);
      out = NULL;
    }
    w->steps[k].bytes = out ? bytes : 0;
    rt->wf->msg_bytes += w->steps[k].bytes;
    finish_step(w, (size_t)k, out);
  }
  json_decref(ans);
}

void route_wf_release(struct rreq *r) {
  struct wf *w = r->wf_id && r->rt->wf ? find_wf(r->rt, r->wf_id) : NULL;
  if (w && w->gen == r->wf_gen && w->active > 0) {
    w->active--;
    w->last = strata_now();
  }
  free(r->wf_id);
  free(r->wf_agent);
  free(r->wf_step);
  r->wf_id = r->wf_agent = r->wf_step = NULL;
}

/* ---- timers, metrics, shutdown --------------------------------------------------------- */

void route_wf_tick(struct router *rt) {
  struct wf_reg *g = rt->wf;
  if (!g) return;
  const double now = strata_now();
  for (size_t i = 0; i < g->cap; i++)
    for (struct wf *w = g->tab[i], *nx; w; w = nx) {
      nx = w->hnext;
      for (struct waiter *x = w->waiters; x; x = x->next)
        if (x->kind == W_SSE && now - x->last_write >= 15) {
          struct evbuffer *b = evbuffer_new();
          if (b) {
            evbuffer_add_printf(b, ": ping\n\n");
            evhttp_send_reply_chunk(x->req, b);
            evbuffer_free(b);
          }
          x->last_write = now;
        }
      if (w->prefill == 1 && now - w->prefill_t0 > 60) {
        strata_log(STRATA_LOG_WARN, "route", "workflow %s: the context's prefill took over 60 s; "
                   "its requests go on without it", w->id);
        prefill_over(w, 0);
      }
      if (!w->waiters && !w->active && now - w->last > w->idle_ttl) {
        strata_log(STRATA_LOG_INFO, "route", "workflow %s ended: idle for %.0f s", w->id,
                   now - w->last);
        end_wf(w, 1);
      }
    }
}

void route_wf_peek(struct router *rt) {
  struct wf_reg *g = rt->wf;
  if (!g) return;
  for (size_t i = 0; i < g->cap; i++)
    for (struct wf *w = g->tab[i]; w; w = w->hnext)
      for (struct waiter *x = w->waiters, *nx; x; x = nx) {
        nx = x->next;
        if (x->con && strata_http_peer_gone(x->con)) {
          struct evhttp_connection *c = x->con;
          evhttp_connection_set_closecb(c, NULL, NULL);
          x->con = NULL;
          withdraw(x);
          waiter_unlink(x);
          evhttp_connection_free(c); /* and the request on it */
        }
      }
}

void route_wf_metrics(struct router *rt, struct evbuffer *b) {
  const struct wf_reg *g = rt->wf;
  size_t waiters = 0, msgs = 0;
  for (size_t i = 0; i < g->cap; i++)
    for (const struct wf *w = g->tab[i]; w; w = w->hnext) {
      waiters += w->n_waiters;
      msgs += w->n_msgs;
    }
  evbuffer_add_printf(
      b,
      "# HELP strata_router_workflows Workflows open.\n"
      "# TYPE strata_router_workflows gauge\n"
      "strata_router_workflows %zu\n"
      "# HELP strata_router_workflows_created_total Workflows created, by how.\n"
      "# TYPE strata_router_workflows_created_total counter\n"
      "strata_router_workflows_created_total{how=\"declared\"} %llu\n"
      "strata_router_workflows_created_total{how=\"implicit\"} %llu\n"
      "# HELP strata_router_workflows_declared_after_use_total Implicit workflows declared "
      "later.\n"
      "# TYPE strata_router_workflows_declared_after_use_total counter\n"
      "strata_router_workflows_declared_after_use_total %llu\n"
      "# HELP strata_router_workflows_ended_total Workflows ended, by reason.\n"
      "# TYPE strata_router_workflows_ended_total counter\n"
      "strata_router_workflows_ended_total{reason=\"deleted\"} %llu\n"
      "strata_router_workflows_ended_total{reason=\"idle\"} %llu\n"
      "# HELP strata_router_workflow_limit_rejections_total Workflows, agents or steps refused "
      "at a router.workflows limit.\n"
      "# TYPE strata_router_workflow_limit_rejections_total counter\n"
      "strata_router_workflow_limit_rejections_total %llu\n"
      "# HELP strata_router_workflow_waiters Long polls, streams and waits open.\n"
      "# TYPE strata_router_workflow_waiters gauge\n"
      "strata_router_workflow_waiters %zu\n"
      "# HELP strata_router_workflow_messages Messages held by open workflows.\n"
      "# TYPE strata_router_workflow_messages gauge\n"
      "strata_router_workflow_messages %zu\n"
      "# HELP strata_router_workflow_messages_total Messages posted.\n"
      "# TYPE strata_router_workflow_messages_total counter\n"
      "strata_router_workflow_messages_total %llu\n"
      "# HELP strata_router_workflow_deliveries_total Messages delivered (once per receiver).\n"
      "# TYPE strata_router_workflow_deliveries_total counter\n"
      "strata_router_workflow_deliveries_total %llu\n"
      "# HELP strata_router_workflow_barriers_total Barrier rounds, by outcome.\n"
      "# TYPE strata_router_workflow_barriers_total counter\n"
      "strata_router_workflow_barriers_total{result=\"released\"} %llu\n"
      "strata_router_workflow_barriers_total{result=\"timeout\"} %llu\n"
      "# HELP strata_router_workflow_steps_done_total Steps finished.\n"
      "# TYPE strata_router_workflow_steps_done_total counter\n"
      "strata_router_workflow_steps_done_total %llu\n"
      "# HELP strata_router_workflow_step_wait_timeouts_total Step waits that timed out.\n"
      "# TYPE strata_router_workflow_step_wait_timeouts_total counter\n"
      "strata_router_workflow_step_wait_timeouts_total %llu\n"
      "# HELP strata_router_cache_hints_total Cache hints sent to instances, by action.\n"
      "# TYPE strata_router_cache_hints_total counter\n"
      "strata_router_cache_hints_total{action=\"keep\"} %llu\n"
      "strata_router_cache_hints_total{action=\"release\"} %llu\n"
      "strata_router_cache_hints_total{action=\"prefill\"} %llu\n"
      "# HELP strata_router_cache_hint_failures_total Cache hints not answered 200.\n"
      "# TYPE strata_router_cache_hint_failures_total counter\n"
      "strata_router_cache_hint_failures_total %llu\n"
      "# HELP strata_router_workflow_held_total Requests held until their workflow's context "
      "was prefilled.\n"
      "# TYPE strata_router_workflow_held_total counter\n"
      "strata_router_workflow_held_total %llu\n",
      g->n, (unsigned long long)g->created_declared, (unsigned long long)g->created_implicit,
      (unsigned long long)g->promoted,
      (unsigned long long)g->ended_deleted, (unsigned long long)g->ended_idle,
      (unsigned long long)g->rejected, waiters, msgs, (unsigned long long)g->messages,
      (unsigned long long)g->delivered, (unsigned long long)g->barrier_released,
      (unsigned long long)g->barrier_timeouts, (unsigned long long)g->steps_done,
      (unsigned long long)g->step_timeouts, (unsigned long long)g->hints_keep,
      (unsigned long long)g->hints_release, (unsigned long long)g->prefills,
      (unsigned long long)g->hints_failed, (unsigned long long)g->held);
}

void route_wf_stop(struct router *rt) {
  struct wf_reg *g = rt->wf;
  if (!g) return;
  for (size_t i = 0; i < g->cap; i++)
    for (struct wf *w = g->tab[i]; w; w = w->hnext)
      while (w->waiters) waiter_error(w->waiters, 503, "router_stopping", "the router is stopping");
}

void route_wf_close(struct router *rt) {
  struct wf_reg *g = rt->wf;
  if (!g) return;
  route_wf_stop(rt);
  g->closing = 1; /* no releases on the way out */
  for (size_t i = 0; i < g->cap; i++)
    while (g->tab[i]) end_wf(g->tab[i], 0);
  while (g->hints) {
    struct hint *h = g->hints;
    if (h->up) evhttp_cancel_request(h->up); /* its callback does not run */
    if (h->conn) route_give_conn(h->b, h->conn);
    hint_free(h);
  }
  free(g->tab);
  free(g);
  rt->wf = NULL;
}
