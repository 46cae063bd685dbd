/* The OpenAI-compatible HTTP server; see server.h for the threading. */
#include "config.h"

#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <jansson.h>

#include "chat_template.h"
#include "http_api.h"
#include "log.h"
#include "runtime.h"
#include "cache_feed.h"
#include "http_conns.h"
#include "http_scan.h"
#include "http_util.h"
#include "tokenizer.h"
#include "util.h"

/* How long a stopping server lets running requests finish before it
 * cancels them, and how often running requests' sockets are checked. */
#define GRACE_SECONDS 10
#define PEEK_MS 250

struct server;

/* One engine event, copied on the engine thread. */
struct qev {
  struct qev *next;
  int32_t index;
  enum strata_finish finish;
  size_t len;
  char text[];
};

struct textbuf {
  char *p;
  size_t len, cap;
};

/* One completion or chat request held by the server. */
struct sreq {
  struct server *srv;
  struct sreq *prev, *next;    /* the server's in-flight list */
  struct evhttp_request *http; /* NULL once the client is gone */
  struct evhttp_connection *evcon;
  struct strata_api_request req;
  char id[64];
  int64_t created;
  double t0;
  int32_t np, nc; /* prompts (chat: 1); choices, np * req.n */
  strata_engine_req_t **hs; /* an engine request per prompt */
  struct sub {
    struct sreq *s;
    int32_t base; /* its first choice index */
  } *subs;
  struct event *wake;
  /* shared with the engine thread, under mu */
  pthread_mutex_t mu;
  struct qev *head, *tail;
  int eng_done, lost, detached;
  int32_t n_done; /* engine requests finished */
  struct strata_api_usage usage;
  /* libevent thread only */
  struct textbuf *text;       /* per choice (non-streaming) */
  enum strata_finish *finish; /* per choice */
  char *error;                /* text of an ERROR finish */
  char **echo; /* per prompt, when echo */
  size_t *echo_len;
  /* POST /v1/cache/hints with prefill: the hint to apply and answer with
   * when the prefill ends (NULL for completions) */
  struct strata_api_cache_hint *hint;
  int32_t *hint_toks;
  size_t n_hint_toks;
};

/* Seconds a connection may sit without reading or writing while the engine
 * holds its request (queued, or between tokens); otherwise (a request being
 * read, a kept-alive connection between requests) server.idle_timeout. */
#define HTTP_BUSY_TIMEOUT 3600

struct server {
  struct strata_runtime *rt;
  strata_engine_t *eng;
  const struct strata_server_opts *o;
  int idle_timeout; /* o->idle_timeout, 60 when unset */
  struct event_base *base;
  struct evhttp *http;
  struct evhttp_bound_socket *bound;
  struct strata_http_conns *conns; /* server.max_connections */
  struct event *sig_int, *sig_term, *grace, *peek;
  struct cache_feed *feed; /* GET /v1/cache/events */
  char *model_name;
  char *api_key_header; /* "Bearer KEY" or NULL */
  struct strata_chat_template tmpl;
  int have_tmpl;
  const char *bos_text, *eos_text;
  int32_t ctx_len, n_vocab;
  int64_t started;
  int stopping;
  struct sreq *inflight;
  uint64_t next_id;
  struct strata_server_stats stats;
};

/* ---- replies ----------------------------------------------------------------
 */

static void count_status(struct server *srv, int status) {
  int c = status / 100;
  if (c >= 0 && c < 6) srv->stats.http_requests[c]++;
}

static void reply_body(struct server *srv, struct evhttp_request *req,
                       int status, const char *ctype, const char *body,
                       size_t len) {
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  evbuffer_add(b, body, len);
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Content-Type", ctype);
  count_status(srv, status);
  evhttp_send_reply(req, status, strata_api_status_reason(status), b);
  evbuffer_free(b);
}

static void reply_json(struct server *srv, struct evhttp_request *req,
                       int status, char *json) {
  if (!json) {
    static const char oom[] =
        "{\"error\":{\"message\":\"out of "
        "memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
    reply_body(srv, req, 500, "application/json", oom, sizeof oom - 1);
    return;
  }
  reply_body(srv, req, status, "application/json", json, strlen(json));
  free(json);
}

static void reply_error(struct server *srv, struct evhttp_request *req,
                        const struct strata_api_error *e) {
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  if (e->status == 429) evhttp_add_header(h, "Retry-After", "1");
  if (e->status == 401) evhttp_add_header(h, "WWW-Authenticate", "Bearer");
  reply_json(srv, req, e->status, strata_api_error_json(e));
}

static void reply_errorf(struct server *srv, struct evhttp_request *req,
                         int status, const char *code, const char *param,
                         const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void reply_errorf(struct server *srv, struct evhttp_request *req,
                         int status, const char *code, const char *param,
                         const char *fmt, ...) {
  struct strata_api_error e;
  char msg[sizeof e.message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  strata_api_errorf(&e, status, NULL, code, param, "%s", msg);
  reply_error(srv, req, &e);
}

/* ---- request bodies
 * ---------------------------------------------------------- */

/* The body as one contiguous block, or NULL (out of memory: 500 sent). */
static const char *body_of(struct server *srv, struct evhttp_request *req, size_t *len) {
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  *len = evbuffer_get_length(in);
  if (*len == 0) return "";
  const char *b = (const char *)evbuffer_pullup(in, -1);
  if (!b) reply_errorf(srv, req, 500, NULL, NULL, "out of memory");
  return b;
}

static int check_model(struct server *srv, const char *model,
                       struct strata_api_error *e) {
  if (!model || strcmp(model, srv->model_name) == 0) return 0;
  return strata_api_errorf(
      e, 400, NULL, "model_not_found", "model",
      "The model '%.200s' does not exist; this server serves '%.200s'", model,
      srv->model_name);
}

/* The prompt tokens of a chat conversation. */
static int chat_tokens(struct server *srv, json_t *messages,
                       int add_generation_prompt, int32_t **toks, size_t *n,
                       struct strata_api_error *e) {
  char err[512];
  const int rc = strata_chat_tokens(&srv->tmpl, srv->bos_text, srv->eos_text, srv->rt->tok,
                                    messages, add_generation_prompt, toks, n, err, sizeof err);
  if (rc != 0)
    return strata_api_errorf(e, rc == STRATA_CHAT_ENOMEM ? 500 : 400, NULL, NULL, "messages",
                             "%s", err);
  return 0;
}

/* ---- engine events
 * ----------------------------------------------------------- */

/* Engine thread: copy the event, wake the libevent thread. */
static void on_engine_event(void *ud, const struct strata_engine_event *ev) {
  const struct sub *sb = ud;
  struct sreq *s = sb->s;
  struct qev *q = NULL;
  if (ev->text_len || ev->finish != STRATA_FINISH_NONE) {
    q = malloc(sizeof *q + ev->text_len + 1);
    if (q) {
      q->next = NULL;
      q->index = sb->base + ev->index;
      q->finish = ev->finish;
      q->len = ev->text_len;
      if (ev->text_len) memcpy(q->text, ev->text, ev->text_len);
      q->text[ev->text_len] = 0;
    }
  }
  pthread_mutex_lock(&s->mu);
  if (!s->detached) {
    if (q) {
      if (s->tail)
        s->tail->next = q;
      else
        s->head = q;
      s->tail = q;
      q = NULL;
    } else if (ev->text_len || ev->finish != STRATA_FINISH_NONE) {
      s->lost = 1;
    }
    if (ev->done) {
      s->eng_done = ++s->n_done == s->np;
      s->usage.prompt_tokens += ev->prompt_tokens;
      s->usage.completion_tokens += ev->completion_tokens;
      s->usage.cached_tokens += ev->cached_tokens;
    }
    event_active(s->wake, EV_READ, 0);
  }
  pthread_mutex_unlock(&s->mu);
  free(q);
}

static void sse_send(struct sreq *s, const char *data) {
  if (!s->http) return;
  struct evbuffer *b = evbuffer_new();
  if (!b) return;
  evbuffer_add(b, "data: ", 6);
  evbuffer_add(b, data, strlen(data));
  evbuffer_add(b, "\n\n", 2);
  evhttp_send_reply_chunk(s->http, b);
  evbuffer_free(b);
}

static void sse_send_json(struct sreq *s, char *json) {
  if (json) sse_send(s, json);
  free(json);
}

/* Frees a request: the engine handle first (after which its callback never
 * runs again), then our state. */
static void sreq_free(struct sreq *s) {
  struct server *srv = s->srv;
  pthread_mutex_lock(&s->mu);
  s->detached = 1;
  pthread_mutex_unlock(&s->mu);
  for (int32_t i = 0; s->hs && i < s->np; i++)
    if (s->hs[i]) {
      strata_engine_release(s->hs[i]);
      s->hs[i] = NULL;
      srv->stats.open_requests--;
    }
  if (s->evcon) evhttp_connection_set_closecb(s->evcon, NULL, NULL);
  if (s->wake) event_free(s->wake);
  for (struct qev *q = s->head, *nx; q; q = nx) {
    nx = q->next;
    free(q);
  }
  if (s->prev)
    s->prev->next = s->next;
  else if (srv->inflight == s)
    srv->inflight = s->next;
  if (s->next) s->next->prev = s->prev;
  if (s->text)
    for (int32_t i = 0; i < s->nc; i++)
      free(s->text[i].p);
  free(s->text);
  free(s->finish);
  free(s->error);
  for (int32_t i = 0; s->echo && i < s->np; i++) free(s->echo[i]);
  free(s->echo);
  free(s->echo_len);
  free(s->hs);
  free(s->subs);
  if (s->hint) strata_api_cache_hint_free(s->hint);
  free(s->hint);
  free(s->hint_toks);
  strata_api_request_free(&s->req);
  pthread_mutex_destroy(&s->mu);
  free(s);
  if (srv->stopping && !srv->inflight) {
    struct timeval tv = {0, 200000}; /* let the last replies flush */
    event_base_loopexit(srv->base, &tv);
  }
}

static int textbuf_add(struct textbuf *b, const char *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) return -1;
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = 0;
  return 0;
}

static void request_log(struct sreq *s, int status) {
  struct server *srv = s->srv;
  if (!srv->o->request_log) return;
  /* user as a JSON string: no newline can forge a log line */
  json_t *uj = s->req.user ? json_string(s->req.user) : NULL;
  char *user = uj ? json_dumps(uj, JSON_ENCODE_ANY) : NULL;
  json_decref(uj);
  char fin[128] = "";
  size_t off = 0;
  for (int32_t i = 0; i < s->nc && off + 10 < sizeof fin; i++)
    off += (size_t)snprintf(fin + off, sizeof fin - off, "%s%s", i ? "," : "",
                            s->finish[i] ? strata_finish_name(s->finish[i])
                                         : "none");
  fprintf(stderr,
          "strata: serve: %s %s status=%d prompt_tokens=%d "
          "completion_tokens=%d cached_tokens=%d "
          "finish=%s time=%.3fs%s%s%s%s\n",
          s->id,
          s->hint                           ? "cache_hint_prefill"
          : s->req.kind == STRATA_API_CHAT ? "chat"
                                           : "completion",
          status,
          s->usage.prompt_tokens, s->usage.completion_tokens,
          s->usage.cached_tokens, fin, strata_now() - s->t0,
          user ? " user=" : "", user ? user : "",
          s->req.metadata_text ? " metadata=" : "",
          s->req.metadata_text ? s->req.metadata_text : "");
  free(user);
}

static int reply_hint(struct server *srv, struct evhttp_request *http,
                      const struct strata_api_cache_hint *h, const int32_t *toks, size_t n,
                      int32_t prefilled);

static void finish_request(struct sreq *s) {
  struct server *srv = s->srv;
  int status = 200;
  /* The answer is complete: a close from now on is the client's business,
   * and a kept-alive connection idles under the usual timeout again. */
  if (s->evcon) {
    evhttp_connection_set_closecb(s->evcon, NULL, NULL);
    evhttp_connection_set_timeout(s->evcon, srv->idle_timeout);
  }
  s->evcon = NULL;
  if (s->http && s->hint) {
    /* a cache hint's prefill: the context is computed (and protected by
     * the engine as the request finished); apply the hint and answer it */
    if (s->error) {
      status = 500;
      reply_errorf(srv, s->http, 500, NULL, NULL, "the prefill failed: %s", s->error);
    } else if (s->finish[0] != STRATA_FINISH_STOP && s->finish[0] != STRATA_FINISH_LENGTH) {
      status = 503;
      reply_errorf(srv, s->http, 503, NULL, NULL,
                   "the prefill was cancelled (the server is stopping)");
    } else {
      status = reply_hint(srv, s->http, s->hint, s->hint_toks, s->n_hint_toks,
                          s->usage.prompt_tokens - s->usage.cached_tokens);
    }
  } else if (s->http && s->req.stream) {
    if (s->lost) {
      struct strata_api_error e;
      strata_api_errorf(&e, 500, NULL, NULL, NULL,
                        "out of memory: part of the answer was lost");
      sse_send_json(s, strata_api_error_json(&e));
      status = 500;
    } else if (s->req.include_usage) {
      sse_send_json(s,
                    strata_api_usage_chunk_json(s->req.kind, s->id, s->created,
                                                srv->model_name, &s->usage));
    }
    sse_send(s, "[DONE]");
    evhttp_send_reply_end(s->http);
  } else if (s->http) {
    if (s->error || s->lost) {
      status = 500;
      reply_errorf(srv, s->http, 500, NULL, NULL, "%s",
                   s->error ? s->error
                            : "out of memory: part of the answer was lost");
    } else {
      struct strata_api_choice *ch = calloc((size_t)s->nc, sizeof *ch);
      if (ch) {
        for (int32_t i = 0; i < s->nc; i++) {
          ch[i].text = s->text[i].p;
          ch[i].text_len = s->text[i].len;
          ch[i].finish = strata_finish_name(s->finish[i] ? s->finish[i]
                                                         : STRATA_FINISH_ABORT);
        }
      }
      char *json = ch ? strata_api_response_json(
                            s->req.kind, s->id, s->created, srv->model_name, ch,
                            (size_t)s->nc, &s->usage, s->req.metadata)
                      : NULL;
      free(ch);
      reply_json(srv, s->http, 200, json);
    }
  }
  request_log(s, s->http ? status : 499);
  sreq_free(s);
}

static void handle_qev(struct sreq *s, const struct qev *q) {
  if (q->index < 0 || q->index >= s->nc) return;
  const char *finish =
      q->finish != STRATA_FINISH_NONE ? strata_finish_name(q->finish) : NULL;
  if (q->finish != STRATA_FINISH_NONE) s->finish[q->index] = q->finish;
  if (q->finish == STRATA_FINISH_ERROR) {
    if (!s->error)
      s->error = q->len ? strata_strndup(q->text, q->len)
                        : strata_strdup("the model step failed");
    if (s->req.stream) {
      struct strata_api_error e;
      strata_api_errorf(&e, 500, NULL, NULL, NULL, "%.400s",
                        q->len ? q->text : "the model step failed");
      sse_send_json(s, strata_api_error_json(&e));
    }
    return;
  }
  if (s->req.stream) {
    sse_send_json(s, strata_api_chunk_json(s->req.kind, s->id, s->created,
                                           s->srv->model_name, q->index, 0,
                                           q->text, q->len, finish,
                                           s->req.include_usage));
  } else if (q->len && textbuf_add(&s->text[q->index], q->text, q->len) != 0) {
    s->lost = 1;
  }
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct sreq *s = arg;
  pthread_mutex_lock(&s->mu);
  struct qev *q = s->head;
  s->head = s->tail = NULL;
  int done = s->eng_done;
  pthread_mutex_unlock(&s->mu);
  while (q) {
    struct qev *nx = q->next;
    handle_qev(s, q);
    free(q);
    q = nx;
  }
  if (done) finish_request(s);
}

/* The client went away: cancel the engine request (its blocks come back at
 * the engine's next step) and forget the connection. */
static void client_gone(struct sreq *s) {
  struct server *srv = s->srv;
  srv->stats.client_disconnects++;
  s->http = NULL;
  s->evcon = NULL;
  if (srv->o->request_log)
    fprintf(stderr,
            "strata: serve: %s client disconnected; request cancelled\n",
            s->id);
  sreq_free(s);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg) {
  (void)evcon;
  struct sreq *s = arg;
  /* On EOF evhttp detaches a request the user has not finished from the
   * dying connection and leaves it to the user to free. */
  if (s->http && !evhttp_request_get_connection(s->http))
    evhttp_request_free(s->http);
  client_gone(s);
}

/* A running request's socket is checked with MSG_PEEK: evhttp does not read
 * while a request is being answered, so it would only notice a vanished
 * non-streaming client when writing the answer. */
static void on_peek(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct server *srv = arg;
  for (struct sreq *s = srv->inflight, *nx; s; s = nx) {
    nx = s->next;
    if (s->evcon && strata_http_peer_gone(s->evcon)) {
      struct evhttp_connection *evcon = s->evcon;
      evhttp_connection_set_closecb(evcon, NULL, NULL);
      client_gone(s);
      evhttp_connection_free(evcon); /* and the request still attached to it */
    }
  }
}

/* ---- completion endpoints
 * ------------------------------------------------------ */

static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h ? h : 1;
}

/* The HTTP error of a failed strata_engine_submit. */
static void submit_error(struct server *srv, int rc, const char *err,
                         struct strata_api_error *e) {
  if (rc == STRATA_ENGINE_EFULL) {
    srv->stats.rejected_full++;
    strata_api_errorf(e, 429, NULL, "queue_full", NULL, "the server is busy (%s); retry later",
                      err);
  } else if (rc == STRATA_ENGINE_ESTOP) {
    strata_api_errorf(e, 503, NULL, NULL, NULL, "the engine is stopping (%s)", err);
  } else {
    strata_api_errorf(e, 400, NULL, NULL, NULL, "%s", err);
  }
}

/* The engine holds s's requests: the server watches its connection (a
 * client gone cancels them) and answers from on_wake. */
static void sreq_watch(struct sreq *s, struct evhttp_request *http) {
  s->http = http;
  s->evcon = evhttp_request_get_connection(http);
  if (s->evcon) {
    evhttp_connection_set_closecb(s->evcon, on_conn_close, s);
    /* libevent would close a connection whose answer has not moved for
     * server.idle_timeout, cutting a request that waits in a long queue;
     * while the engine has it, only a client that stops reading for an
     * hour is dropped (a closed client is noticed at once: on_peek). */
    evhttp_connection_set_timeout(s->evcon, HTTP_BUSY_TIMEOUT);
  }
}

static void handle_generate(struct server *srv, struct evhttp_request *http,
                            enum strata_api_kind kind) {
  struct strata_api_error e;
  size_t len;
  const char *body = body_of(srv, http, &len);
  if (!body) return;
  struct sreq *s = calloc(1, sizeof *s);
  if (!s) {
    reply_errorf(srv, http, 500, NULL, NULL, "out of memory");
    return;
  }
  struct strata_api_limits lim = {.max_metadata_bytes = srv->o->max_metadata_bytes,
                                  .n_vocab = srv->n_vocab,
                                  .max_n = srv->o->max_n,
                                  .max_stop = srv->o->max_stop};
  if (strata_api_parse_request(kind, body, len, &lim, &s->req, &e) != 0) {
    free(s);
    reply_error(srv, http, &e);
    return;
  }
  pthread_mutex_init(&s->mu, NULL);
  s->srv = srv;
  s->t0 = strata_now();
  s->created = (int64_t)time(NULL);
  snprintf(s->id, sizeof s->id, "%s-%016" PRIx64,
           kind == STRATA_API_CHAT ? "chatcmpl" : "cmpl", srv->next_id++);
  struct strata_api_request *r = &s->req;
  const int32_t np = kind == STRATA_API_CHAT ? 1 : (int32_t)r->n_prompts;
  s->np = np;
  s->nc = np * r->n;
  int32_t *toks = NULL;
  size_t n_toks = 0;
  void **lparams = NULL;
  char err[512];
  struct strata_request_params *ps = NULL;
  if (check_model(srv, r->model, &e) != 0) goto fail;
  const char *prompt_param = kind == STRATA_API_CHAT ? "messages" : "prompt";
  s->hs = calloc((size_t)np, sizeof *s->hs);
  s->subs = calloc((size_t)np, sizeof *s->subs);
  s->echo = calloc((size_t)np, sizeof *s->echo);
  s->echo_len = calloc((size_t)np, sizeof *s->echo_len);
  s->text = calloc((size_t)s->nc, sizeof *s->text);
  s->finish = calloc((size_t)s->nc, sizeof *s->finish);
  s->wake = event_new(srv->base, -1, 0, on_wake, s);
  ps = calloc((size_t)np, sizeof *ps);
  if (!s->hs || !s->subs || !s->echo || !s->echo_len || !s->text || !s->finish || !s->wake ||
      !ps) {
    strata_api_errorf(&e, 500, NULL, NULL, NULL, "out of memory");
    goto fail;
  }
  uint64_t group = r->group_id ? fnv1a(r->group_id) : 0;
  int64_t ctx = srv->ctx_len;
  int64_t kv_per_choice = 0; /* KV tokens for each of n choices (n > 1, no max_tokens) */
  if (!r->max_tokens && r->n > 1) {
    struct strata_engine_metrics met;
    strata_engine_get_metrics(srv->eng, &met);
    kv_per_choice = (int64_t)(met.kv.n_blocks / r->n) * met.kv.block_size;
  }
  /* every prompt is checked (and its logits parameters compiled) before
   * any is submitted: a batch is accepted or refused whole */
  for (int32_t pi = 0; pi < np; pi++) {
    /* "prompt 3: ..." in a batch's messages */
    char where[32] = "";
    if (np > 1) snprintf(where, sizeof where, "prompt %d: ", pi);
    const struct strata_api_prompt *q = kind == STRATA_API_CHAT ? NULL : &r->prompts[pi];
    if (kind == STRATA_API_CHAT) {
      if (chat_tokens(srv, r->messages, r->add_generation_prompt, &toks, &n_toks, &e) != 0)
        goto fail;
    } else if (q->ids) {
      toks = malloc(q->n_ids * sizeof *toks);
      if (!toks) {
        strata_api_errorf(&e, 500, NULL, NULL, NULL, "out of memory");
        goto fail;
      }
      memcpy(toks, q->ids, q->n_ids * sizeof *toks);
      n_toks = q->n_ids;
    } else if (strata_tokenize(srv->rt->tok, q->text, q->len, r->add_special_tokens, 0, &toks,
                               &n_toks, err, sizeof err) != 0) {
      strata_api_errorf(&e, 400, NULL, NULL, "prompt", "%s%s", where, err);
      goto fail;
    }
    if (n_toks == 0) {
      strata_api_errorf(&e, 400, NULL, NULL, prompt_param,
                        "%sthe prompt is empty (and no BOS token is added)", where);
      goto fail;
    }
    if ((int64_t)n_toks >= ctx) {
      strata_api_errorf(&e, 400, NULL, "context_length_exceeded", prompt_param,
                        "%sThis model's maximum context length is %" PRId64
                        " tokens. However, your prompt has "
                        "%zu tokens, leaving no room for the completion.",
                        where, ctx, n_toks);
      goto fail;
    }
    int32_t max_tokens = r->max_tokens              ? r->max_tokens
                         : kind == STRATA_API_CHAT ? (int32_t)(ctx - (int64_t)n_toks)
                                                   : 16;
    if (!r->max_tokens && max_tokens > ctx - (int64_t)n_toks)
      max_tokens = (int32_t)(ctx - (int64_t)n_toks);
    if (kv_per_choice > 0) {
      /* "the rest of the context" for each of n choices must also fit the
       * KV cache, which may hold fewer than n full contexts */
      int64_t per = kv_per_choice - (int64_t)n_toks;
      if (per >= 1 && max_tokens > per) max_tokens = (int32_t)per;
    }
    if ((int64_t)n_toks + max_tokens > ctx) {
      strata_api_errorf(&e, 400, NULL, "context_length_exceeded",
                        kind == STRATA_API_CHAT && !json_object_get(r->root, "max_tokens")
                            ? "max_completion_tokens"
                            : "max_tokens",
                        "%sThis model's maximum context length is %" PRId64
                        " tokens. However, you requested %" PRId64
                        " tokens (%zu in the %s, %d for the completion). Please "
                        "reduce the length of the %s or "
                        "the completion.",
                        where, ctx, (int64_t)n_toks + max_tokens, n_toks, prompt_param,
                        max_tokens, prompt_param);
      goto fail;
    }
    if (r->min_tokens > max_tokens) {
      strata_api_errorf(&e, 400, NULL, NULL, "min_tokens",
                        "%smin_tokens (%d) must not be more than max_tokens (%d)", where,
                        r->min_tokens, max_tokens);
      goto fail;
    }
    if (r->echo) {
      if (q && q->text) {
        s->echo[pi] = strata_strndup(q->text, q->len);
        s->echo_len[pi] = q->len;
      } else {
        s->echo[pi] = strata_detokenize_len(srv->rt->tok, toks, n_toks, 0, 1, &s->echo_len[pi]);
      }
      if (!s->echo[pi]) {
        strata_api_errorf(&e, 500, NULL, NULL, NULL, "out of memory");
        goto fail;
      }
      if (!r->stream)
        for (int32_t i = 0; i < r->n; i++)
          if (textbuf_add(&s->text[pi * r->n + i], s->echo[pi], s->echo_len[pi]) != 0) {
            strata_api_errorf(&e, 500, NULL, NULL, NULL, "out of memory");
            goto fail;
          }
    }
    const char *lfield = NULL;
    if (strata_engine_logits_compile(srv->eng, (const strata_json_t *)r->root, &lparams, &lfield,
                                     err, sizeof err) != 0) {
      strata_api_errorf(&e, 400, NULL, NULL, lfield, "%s", err);
      goto fail;
    }
    ps[pi] = (struct strata_request_params){
        .prompt = toks,
        .n_prompt = (int32_t)n_toks,
        .max_tokens = max_tokens,
        .n = r->n,
        .sampling = r->sampling,
        .has_seed = r->has_seed,
        .stop = r->stop,
        .n_stop = r->n_stop,
        .stop_token_ids = r->stop_token_ids,
        .n_stop_token_ids = r->n_stop_token_ids,
        .ignore_eos = r->ignore_eos,
        .priority = r->priority,
        .cache_salt = r->cache_salt,
        .group = group,
        .logits = lparams,
        .affinity = r->affinity_hint,
        .min_tokens = r->min_tokens,
    };
    toks = NULL;
    lparams = NULL;
    s->subs[pi] = (struct sub){.s = s, .base = pi * r->n};
  }
  /* Linked in before submit: the engine may call back at once (the wake
   * event then runs once this handler has returned). */
  s->next = srv->inflight;
  if (srv->inflight) srv->inflight->prev = s;
  srv->inflight = s;
  for (int32_t pi = 0; pi < np; pi++) {
    int rc = strata_engine_submit(srv->eng, &ps[pi], on_engine_event, &s->subs[pi], &s->hs[pi],
                                  err, sizeof err);
    /* the engine owns the logits parameters from here, submitted or not */
    ps[pi].logits = NULL;
    if (rc != 0) {
      s->hs[pi] = NULL;
      submit_error(srv, rc, err, &e);
      /* the batch is refused whole: the prompts submitted before go too */
      for (int32_t k = pi + 1; k < np; k++) strata_engine_logits_free(srv->eng, ps[k].logits);
      for (int32_t k = 0; k < np; k++) free((void *)ps[k].prompt);
      free(ps);
      reply_error(srv, http, &e);
      sreq_free(s);
      return;
    }
    srv->stats.open_requests++;
  }
  for (int32_t k = 0; k < np; k++) free((void *)ps[k].prompt);
  free(ps);
  sreq_watch(s, http);
  if (r->stream) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(http);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Request-Id", s->id);
    count_status(srv, 200);
    evhttp_send_reply_start(http, 200, "OK");
    for (int32_t i = 0; i < s->nc; i++) {
      if (kind == STRATA_API_CHAT)
        sse_send_json(s, strata_api_chunk_json(kind, s->id, s->created,
                                               srv->model_name, i, 1, NULL, 0,
                                               NULL, r->include_usage));
      if (s->echo[i / r->n])
        sse_send_json(s, strata_api_chunk_json(kind, s->id, s->created, srv->model_name, i, 0,
                                               s->echo[i / r->n], s->echo_len[i / r->n], NULL,
                                               r->include_usage));
    }
  } else {
    evhttp_add_header(evhttp_request_get_output_headers(http), "X-Request-Id",
                      s->id);
  }
  return;
fail:
  free(toks);
  strata_engine_logits_free(srv->eng, lparams);
  if (ps)
    for (int32_t k = 0; k < np; k++) {
      free((void *)ps[k].prompt);
      strata_engine_logits_free(srv->eng, ps[k].logits);
    }
  free(ps);
  reply_error(srv, http, &e);
  sreq_free(s);
}

/* ---- other endpoints
 * --------------------------------------------------------------- */

/* The tokens of a /tokenize or /v1/cache/stats body (its model checked):
 * chat messages through the template, token ids as given, or text. */
static int body_tokens(struct server *srv, struct strata_api_tokenize *t, int32_t **toks,
                       size_t *n, struct strata_api_error *e) {
  char err[512];
  if (check_model(srv, t->model, e) != 0) return -1;
  if (t->messages) return chat_tokens(srv, t->messages, t->add_generation_prompt, toks, n, e);
  if (t->prompt_ids) {
    *toks = t->prompt_ids;
    *n = t->n_prompt_ids;
    t->prompt_ids = NULL;
    return 0;
  }
  if (strata_tokenize(srv->rt->tok, t->prompt, t->prompt_len, t->add_special_tokens, 0, toks, n,
                      err, sizeof err) != 0)
    return strata_api_errorf(e, 400, NULL, NULL, "prompt", "%s", err);
  return 0;
}

static void handle_tokenize(struct server *srv, struct evhttp_request *http) {
  struct strata_api_error e;
  struct strata_api_tokenize t;
  size_t len;
  const char *body = body_of(srv, http, &len);
  if (!body) return;
  if (strata_api_parse_tokenize(body, len, &t, &e) != 0) {
    reply_error(srv, http, &e);
    return;
  }
  int32_t *toks = NULL;
  size_t n = 0;
  if (body_tokens(srv, &t, &toks, &n, &e) != 0) goto fail;
  json_t *arr = json_array();
  for (size_t i = 0; arr && i < n; i++)
    json_array_append_new(arr, json_integer(toks[i]));
  json_t *o = arr ? json_pack("{s:I,s:i,s:o}", "count", (json_int_t)n,
                              "max_model_len", (int)srv->ctx_len, "tokens", arr)
                  : NULL;
  reply_json(srv, http, 200,
             o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL);
  json_decref(o);
  free(toks);
  strata_api_tokenize_free(&t);
  return;
fail:
  free(toks);
  strata_api_tokenize_free(&t);
  reply_error(srv, http, &e);
}

/* POST /v1/cache/stats: what the prefix cache holds for a prompt. */
static void handle_cache_stats(struct server *srv, struct evhttp_request *http) {
  struct strata_api_error e;
  struct strata_api_tokenize t;
  size_t len;
  const char *body = body_of(srv, http, &len);
  if (!body) return;
  if (strata_api_parse_cache_stats(body, len, srv->n_vocab, &t, &e) != 0) {
    reply_error(srv, http, &e);
    return;
  }
  int32_t *toks = NULL;
  size_t n = 0;
  if (body_tokens(srv, &t, &toks, &n, &e) != 0) goto fail;
  struct strata_cache_stats st = {.size = sizeof st};
  if (strata_cache_stats_salt(srv->eng, toks, n, t.cache_salt, &st) != 0) {
    strata_api_errorf(&e, 400, NULL, NULL, "prompt", "the prompt is too long");
    goto fail;
  }
  json_t *o = json_pack(
      "{s:s,s:i,s:i,s:i,s:i,s:{s:i,s:i,s:i,s:i},s:f,s:I,s:I}", "object", "cache.stats",
      "prompt_tokens", st.prompt_tokens, "cached_tokens", st.cached_tokens, "cached_blocks",
      st.cached_blocks, "block_size", st.block_size, "blocks", "total", st.total_blocks, "free",
      st.free_blocks, "used", st.used_blocks, "evictable", st.evictable_blocks, "hit_rate",
      st.hit_rate, "prefix_cache_queries", (json_int_t)st.queries, "prefix_cache_hits",
      (json_int_t)st.hits);
  reply_json(srv, http, 200, o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL);
  json_decref(o);
  free(toks);
  strata_api_tokenize_free(&t);
  return;
fail:
  free(toks);
  strata_api_tokenize_free(&t);
  reply_error(srv, http, &e);
}

/* Applies a cache hint to a prompt and answers it (200, or the error);
 * returns the status. */
static int reply_hint(struct server *srv, struct evhttp_request *http,
                      const struct strata_api_cache_hint *h, const int32_t *toks, size_t n,
                      int32_t prefilled) {
  struct strata_cache_hint_result res;
  int rc = strata_engine_cache_hint(srv->eng, toks, n, h->t.cache_salt,
                                    (enum strata_cache_hint_action)h->action, h->ttl, h->force,
                                    &res);
  if (rc != 0) {
    struct strata_api_error e;
    if (rc == -3)
      strata_api_errorf(&e, 500, NULL, NULL, NULL, "out of memory");
    else
      strata_api_errorf(&e, 400, NULL, NULL, NULL, "the cache hint could not be applied");
    reply_error(srv, http, &e);
    return e.status;
  }
  json_t *o = json_pack("{s:s,s:s,s:i,s:i,s:i}", "object", "cache.hint", "action",
                        h->action == STRATA_CACHE_HINT_KEEP ? "keep" : "release",
                        "prompt_tokens", res.prompt_tokens, "cached_tokens", res.cached_tokens,
                        "blocks", res.blocks);
  if (o && h->action == STRATA_CACHE_HINT_KEEP) {
    json_object_set_new(o, "ttl", h->ttl == (double)(int64_t)h->ttl
                                      ? json_integer((json_int_t)h->ttl)
                                      : json_real(h->ttl));
    json_object_set_new(o, "prefilled_tokens", json_integer(prefilled));
  } else if (o) {
    json_object_set_new(o, "protected_blocks", json_integer(res.kept_blocks));
  }
  srv->stats.cache_hints[h->action]++;
  reply_json(srv, http, 200, o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL);
  json_decref(o);
  return 200;
}

/* POST /v1/cache/hints: keep (protect, optionally after a prefill) or
 * release a prompt's cached blocks. The prefill is an ordinary engine
 * request (max_tokens 1, output dropped) held like a completion; its
 * done event answers the hint. */
static void handle_cache_hints(struct server *srv, struct evhttp_request *http) {
  struct strata_api_error e;
  size_t len;
  const char *body = body_of(srv, http, &len);
  if (!body) return;
  struct strata_api_cache_hint *h = calloc(1, sizeof *h);
  if (!h) {
    reply_errorf(srv, http, 500, NULL, NULL, "out of memory");
    return;
  }
  if (strata_api_parse_cache_hint(body, len, srv->n_vocab, h, &e) != 0) {
    free(h);
    reply_error(srv, http, &e);
    return;
  }
  int32_t *toks = NULL;
  size_t n = 0;
  struct sreq *s = NULL;
  const char *pparam = h->t.messages ? "messages" : "prompt";
  if (body_tokens(srv, &h->t, &toks, &n, &e) != 0) goto fail;
  if (!strata_engine_prefix_caching(srv->eng)) {
    strata_api_errorf(&e, 400, NULL, NULL, NULL,
                      "cache hints need the prefix cache, and "
                      "engine.kv_cache.prefix_caching is off");
    goto fail;
  }
  if (n == 0) {
    strata_api_errorf(&e, 400, NULL, NULL, pparam,
                      "the prompt is empty (and no BOS token is added)");
    goto fail;
  }
  /* a prefill generates one token after the prompt */
  const int64_t room = srv->ctx_len - (h->prefill ? 1 : 0);
  if ((int64_t)n > room) {
    strata_api_errorf(&e, 400, NULL, "context_length_exceeded", pparam,
                      "This model's maximum context length is %d tokens. However, your "
                      "prompt has %zu tokens%s.",
                      (int)srv->ctx_len, n,
                      h->prefill ? ", leaving no room for the prefill's one token" : "");
    goto fail;
  }
  if (!h->prefill) {
    reply_hint(srv, http, h, toks, n, 0);
    free(toks);
    strata_api_cache_hint_free(h);
    free(h);
    return;
  }
  s = calloc(1, sizeof *s);
  if (!s) {
    strata_api_errorf(&e, 500, NULL, NULL, NULL, "out of memory");
    goto fail;
  }
  pthread_mutex_init(&s->mu, NULL);
  s->srv = srv;
  s->t0 = strata_now();
  s->created = (int64_t)time(NULL);
  snprintf(s->id, sizeof s->id, "hint-%016" PRIx64, srv->next_id++);
  s->np = s->nc = 1;
  s->hint = h;
  s->hint_toks = toks;
  s->n_hint_toks = n;
  h = NULL;
  toks = NULL;
  s->hs = calloc(1, sizeof *s->hs);
  s->subs = calloc(1, sizeof *s->subs);
  s->text = calloc(1, sizeof *s->text);
  s->finish = calloc(1, sizeof *s->finish);
  s->wake = event_new(srv->base, -1, 0, on_wake, s);
  if (!s->hs || !s->subs || !s->text || !s->finish || !s->wake) {
    strata_api_errorf(&e, 500, NULL, NULL, NULL, "out of memory");
    goto fail;
  }
  s->subs[0] = (struct sub){.s = s, .base = 0};
  struct strata_sampling greedy = STRATA_SAMPLING_DEFAULTS;
  greedy.temperature = 0;
  const struct strata_request_params ps = {
      .prompt = s->hint_toks,
      .n_prompt = (int32_t)s->n_hint_toks,
      .max_tokens = 1,
      .n = 1,
      .sampling = greedy,
      .has_seed = 1,
      .priority = s->hint->priority,
      .cache_salt = s->hint->t.cache_salt,
      .keep_ttl = s->hint->ttl,
  };
  /* Linked in before submit: the engine may call back at once. */
  s->next = srv->inflight;
  if (srv->inflight) srv->inflight->prev = s;
  srv->inflight = s;
  char err[512];
  int rc = strata_engine_submit(srv->eng, &ps, on_engine_event, &s->subs[0], &s->hs[0], err,
                                sizeof err);
  if (rc != 0) {
    s->hs[0] = NULL;
    submit_error(srv, rc, err, &e);
    goto fail;
  }
  srv->stats.open_requests++;
  sreq_watch(s, http);
  evhttp_add_header(evhttp_request_get_output_headers(http), "X-Request-Id", s->id);
  return;
fail:
  free(toks);
  if (h) strata_api_cache_hint_free(h);
  free(h);
  reply_error(srv, http, &e);
  if (s) sreq_free(s);
}

static void handle_detokenize(struct server *srv, struct evhttp_request *http) {
  struct strata_api_error e;
  struct strata_api_detokenize d;
  size_t len;
  const char *body = body_of(srv, http, &len);
  if (!body) return;
  if (strata_api_parse_detokenize(body, len, srv->n_vocab, &d, &e) != 0) {
    reply_error(srv, http, &e);
    return;
  }
  if (check_model(srv, d.model, &e) != 0) {
    strata_api_detokenize_free(&d);
    reply_error(srv, http, &e);
    return;
  }
  size_t tlen = 0;
  char *text =
      strata_detokenize_len(srv->rt->tok, d.tokens, d.n_tokens, 0, 1, &tlen);
  json_t *o =
      text ? json_pack("{s:o}", "prompt", strata_api_string(text, tlen)) : NULL;
  reply_json(srv, http, 200, o ? json_dumps(o, JSON_COMPACT) : NULL);
  json_decref(o);
  free(text);
  strata_api_detokenize_free(&d);
}

static json_t *model_card(struct server *srv) {
  return json_pack("{s:s,s:s,s:I,s:s,s:s,s:n,s:i}", "id", srv->model_name,
                   "object", "model", "created", (json_int_t)srv->started,
                   "owned_by", "strata", "root", srv->rt->model_path, "parent",
                   "max_model_len", (int)srv->ctx_len);
}

static void handle_models(struct server *srv, struct evhttp_request *http) {
  json_t *o =
      json_pack("{s:s,s:[o]}", "object", "list", "data", model_card(srv));
  reply_json(srv, http, 200,
             o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL);
  json_decref(o);
}

static void handle_model(struct server *srv, struct evhttp_request *http,
                         const char *id) {
  if (strcmp(id, srv->model_name) != 0) {
    reply_errorf(srv, http, 404, "model_not_found", "model",
                 "The model '%.200s' does not exist", id);
    return;
  }
  json_t *o = model_card(srv);
  reply_json(srv, http, 200,
             o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL);
  json_decref(o);
}

static void handle_metrics(struct server *srv, struct evhttp_request *http) {
  struct strata_engine_metrics m;
  memset(&m, 0, sizeof m);
  strata_engine_get_metrics(srv->eng, &m);
  char *text = strata_api_metrics_text(&m, srv->model_name, &srv->stats);
  struct evbuffer *b = text ? evbuffer_new() : NULL;
  const char *all = NULL;
  if (b && evbuffer_add(b, text, strlen(text)) == 0) {
    strata_http_conns_metrics(srv->conns, b, "strata:http");
    all = (const char *)evbuffer_pullup(b, -1);
  }
  if (!all)
    reply_errorf(srv, http, 500, NULL, NULL, "out of memory");
  else
    reply_body(srv, http, 200, "text/plain; version=0.0.4; charset=utf-8", all,
               evbuffer_get_length(b));
  if (b) evbuffer_free(b);
  free(text);
}

static void handle_health(struct server *srv, struct evhttp_request *http) {
  if (srv->stopping) {
    reply_errorf(srv, http, 503, NULL, NULL, "the server is stopping");
    return;
  }
  /* unhealthy while model steps keep failing (a router or a load balancer
   * takes the replica out); healthy again after a step that works */
  struct strata_engine_metrics m;
  strata_engine_get_metrics(srv->eng, &m);
  if (m.failing_steps > 0) {
    reply_errorf(srv, http, 503, "engine_failing", NULL,
                 "the engine's last %u model step%s failed: %s", m.failing_steps,
                 m.failing_steps == 1 ? "" : "s", m.last_step_error);
    return;
  }
  reply_body(srv, http, 200, "application/json", "{}", 2);
}

static void handle_version(struct server *srv, struct evhttp_request *http) {
  char buf[128];
  snprintf(buf, sizeof buf, "{\"version\":\"%s\"}", PACKAGE_VERSION);
  reply_body(srv, http, 200, "application/json", buf, strlen(buf));
}

/* ---- routing
 * ----------------------------------------------------------------------- */

enum route {
  R_HEALTH,
  R_METRICS,
  R_VERSION,
  R_MODELS,
  R_MODEL,
  R_COMPLETIONS,
  R_CHAT,
  R_TOKENIZE,
  R_DETOKENIZE,
  R_CACHE_STATS,
  R_CACHE_EVENTS,
  R_CACHE_HINTS,
};

static const struct {
  const char *path;
  enum evhttp_cmd_type method;
  enum route route;
  int auth; /* needs the API key */
} routes[] = {
    {"/health", EVHTTP_REQ_GET, R_HEALTH, 0},
    {"/metrics", EVHTTP_REQ_GET, R_METRICS, 0},
    {"/version", EVHTTP_REQ_GET, R_VERSION, 0},
    {"/v1/models", EVHTTP_REQ_GET, R_MODELS, 1},
    {"/v1/completions", EVHTTP_REQ_POST, R_COMPLETIONS, 1},
    {"/v1/chat/completions", EVHTTP_REQ_POST, R_CHAT, 1},
    {"/tokenize", EVHTTP_REQ_POST, R_TOKENIZE, 1},
    {"/detokenize", EVHTTP_REQ_POST, R_DETOKENIZE, 1},
    {"/v1/cache/stats", EVHTTP_REQ_POST, R_CACHE_STATS, 1},
    {"/v1/cache/events", EVHTTP_REQ_GET, R_CACHE_EVENTS, 1},
    {"/v1/cache/hints", EVHTTP_REQ_POST, R_CACHE_HINTS, 1},
};

static int auth_ok(struct server *srv, struct evhttp_request *http) {
  if (!srv->api_key_header) return 1;
  return strata_secret_equal(
      evhttp_find_header(evhttp_request_get_input_headers(http), "Authorization"),
      srv->api_key_header);
}

static void on_request(struct evhttp_request *http, void *arg) {
  struct server *srv = arg;
  if (strata_http_conns_over(srv->conns, http)) {
    strata_http_conns_refuse_headers(http);
    reply_errorf(srv, http, 503, "server_busy", NULL,
                 "too many connections: the server has its limit of %zu open "
                 "(server.max_connections); retry on a new connection",
                 strata_http_conns_max(srv->conns));
    return;
  }
  int keep_open;
  const char *big = strata_http_body_too_large(http, &keep_open);
  if (big) { /* the scanner takes its body away (http_scan.h) */
    if (!keep_open)
      evhttp_add_header(evhttp_request_get_output_headers(http), "Connection", "close");
    reply_errorf(srv, http, 413, "request_too_large", NULL,
                 "the request body is %.40s bytes; this server takes at most %zu "
                 "(server.max_body_bytes)",
                 big, srv->o->max_body_bytes);
    return;
  }
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(http);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  if (!path || !*path) path = "/";
  enum evhttp_cmd_type method = evhttp_request_get_command(http);
  int found = -1, path_known = 0;
  const char *model_id = NULL;
  for (size_t i = 0; i < STRATA_ARRAY_LEN(routes); i++)
    if (strcmp(path, routes[i].path) == 0) {
      path_known = 1;
      if (method == routes[i].method) found = (int)i;
    }
  if (strncmp(path, "/v1/models/", 11) == 0 && path[11]) {
    path_known = 1;
    if (method == EVHTTP_REQ_GET) {
      found = -2;
      model_id = path + 11;
    }
  }
  if (found == -1) {
    if (path_known) {
      int post = 0;
      for (size_t i = 0; i < STRATA_ARRAY_LEN(routes); i++)
        if (strcmp(path, routes[i].path) == 0)
          post = routes[i].method == EVHTTP_REQ_POST;
      evhttp_add_header(evhttp_request_get_output_headers(http), "Allow",
                        post ? "POST" : "GET");
      reply_errorf(srv, http, 405, "method_not_allowed", NULL,
                   "method not allowed for %.200s", path);
    } else {
      reply_errorf(srv, http, 404, "not_found", NULL,
                   "no such endpoint: %.200s", path);
    }
    return;
  }
  enum route route = found == -2 ? R_MODEL : routes[found].route;
  int needs_auth = found == -2 ? 1 : routes[found].auth;
  if (needs_auth && !auth_ok(srv, http)) {
    reply_errorf(srv, http, 401, "invalid_api_key", NULL,
                 "missing or wrong API key: send the header 'Authorization: "
                 "Bearer <key>'");
    return;
  }
  if (srv->stopping && (route == R_COMPLETIONS || route == R_CHAT || route == R_CACHE_HINTS)) {
    reply_errorf(srv, http, 503, NULL, NULL, "the server is stopping");
    return;
  }
  switch (route) {
  case R_HEALTH:
    handle_health(srv, http);
    break;
  case R_METRICS:
    handle_metrics(srv, http);
    break;
  case R_VERSION:
    handle_version(srv, http);
    break;
  case R_MODELS:
    handle_models(srv, http);
    break;
  case R_MODEL:
    handle_model(srv, http, model_id);
    break;
  case R_COMPLETIONS:
    handle_generate(srv, http, STRATA_API_COMPLETIONS);
    break;
  case R_CHAT:
    handle_generate(srv, http, STRATA_API_CHAT);
    break;
  case R_TOKENIZE:
    handle_tokenize(srv, http);
    break;
  case R_DETOKENIZE:
    handle_detokenize(srv, http);
    break;
  case R_CACHE_STATS:
    handle_cache_stats(srv, http);
    break;
  case R_CACHE_HINTS:
    handle_cache_hints(srv, http);
    break;
  case R_CACHE_EVENTS: {
    struct strata_api_error e;
    if (cache_feed_add(srv->feed, http, &e) != 0) reply_error(srv, http, &e);
    break;
  }
  }
}

/* ---- start and stop
 * ------------------------------------------------------------------- */

static void cancel_all(struct server *srv) {
  for (struct sreq *s = srv->inflight; s; s = s->next)
    for (int32_t i = 0; s->hs && i < s->np; i++)
      if (s->hs[i]) strata_engine_cancel(s->hs[i]);
}

static void on_grace(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct server *srv = arg;
  fprintf(
      stderr,
      "strata: serve: grace period over; cancelling the running requests\n");
  cancel_all(srv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  struct server *srv = arg;
  if (srv->stopping) {
    fprintf(stderr,
            "strata: serve: second signal; cancelling the running requests\n");
    cancel_all(srv);
    return;
  }
  srv->stopping = 1;
  cache_feed_end_all(srv->feed);
  fprintf(stderr, "strata: serve: %s: stopping (no new requests)\n",
          sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (srv->bound) {
    strata_http_conns_attach(srv->conns, NULL);
    evhttp_del_accept_socket(srv->http, srv->bound);
    srv->bound = NULL;
  }
  if (!srv->inflight) {
    struct timeval tv = {0, 50000};
    event_base_loopexit(srv->base, &tv);
    return;
  }
  struct timeval tv = {GRACE_SECONDS, 0};
  evtimer_add(srv->grace, &tv);
}

static char *default_model_name(const char *path) {
  const char *b = strrchr(path, '/');
  b = b ? b + 1 : path;
  const char *dot = strrchr(b, '.');
  size_t n = dot && dot != b ? (size_t)(dot - b) : strlen(b);
  return strata_strndup(b, n);
}

int strata_server_run(struct strata_runtime *rt, strata_engine_t *eng,
                      const struct strata_server_opts *o) {
  struct server srv;
  memset(&srv, 0, sizeof srv);
  srv.rt = rt;
  srv.eng = eng;
  srv.o = o;
  srv.started = (int64_t)time(NULL);
  srv.ctx_len = strata_engine_context_length(eng);
  srv.n_vocab = strata_tokenizer_n_vocab(rt->tok);
  {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    srv.next_id = ((uint64_t)ts.tv_sec << 20) ^
                  (uint64_t)ts.tv_nsec; /* ids unique across restarts */
  }
  int rc = 1;
  srv.model_name = o->served_model_name && *o->served_model_name
                       ? strata_strdup(o->served_model_name)
                       : default_model_name(rt->model_path);
  if (o->api_key && *o->api_key) {
    size_t n = strlen(o->api_key) + 8;
    srv.api_key_header = malloc(n);
    if (srv.api_key_header)
      snprintf(srv.api_key_header, n, "Bearer %s", o->api_key);
  }
  if (!srv.model_name || (o->api_key && *o->api_key && !srv.api_key_header)) {
    fprintf(stderr, "strata: serve: out of memory\n");
    goto out;
  }
  const char *tmpl_text = NULL;
  size_t tmpl_len = 0;
  if (strata_gguf_get_string(rt->model->gguf, "tokenizer.chat_template",
                             &tmpl_text, &tmpl_len) != 0) {
    tmpl_text = NULL;
    tmpl_len = 0;
  }
  char err[512];
  if (strata_chat_template_resolve(o->chat_template, tmpl_text, tmpl_len,
                                   &srv.tmpl, err, sizeof err) != 0) {
    fprintf(stderr, "strata: serve: server.chat_template: %s\n", err);
    goto out;
  }
  srv.have_tmpl = 1;
  if (srv.tmpl.fallback)
    strata_log(STRATA_LOG_WARN, "serve",
               "the model has no chat template of a known family; chat uses "
               "the plain format");
  else
    strata_log(STRATA_LOG_INFO, "serve", "chat template: %s%s",
               strata_chat_template_name(&srv.tmpl),
               srv.tmpl.approximate ? " (approximate)" : "");
  int32_t bos = strata_tokenizer_bos(rt->tok),
          eos = strata_tokenizer_eos(rt->tok);
  srv.bos_text = bos >= 0 ? strata_tokenizer_token_text(rt->tok, bos) : NULL;
  srv.eos_text = eos >= 0 ? strata_tokenizer_token_text(rt->tok, eos) : NULL;

  if (evthread_use_pthreads() != 0) {
    fprintf(stderr, "strata: serve: libevent has no pthreads support\n");
    goto out;
  }
  srv.base = event_base_new();
  srv.http = srv.base ? evhttp_new(srv.base) : NULL;
  if (!srv.http) {
    fprintf(stderr, "strata: serve: cannot create the event loop\n");
    goto out;
  }
  evhttp_set_max_body_size(srv.http, (ev_ssize_t)o->max_body_bytes);
  evhttp_set_max_headers_size(srv.http, (ev_ssize_t)(srv.o->max_header_bytes
                                                         ? srv.o->max_header_bytes
                                                         : 64 * 1024));
  srv.idle_timeout = o->idle_timeout > 0 ? o->idle_timeout : 60;
  evhttp_set_timeout(srv.http, srv.idle_timeout);
  evhttp_set_allowed_methods(
      srv.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                    EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                    EVHTTP_REQ_PATCH);
  evhttp_set_gencb(srv.http, on_request, &srv);
  srv.conns = strata_http_conns_new(srv.base, srv.http, "serve",
                                    o->max_connections ? o->max_connections : 1024, 0);
  if (srv.conns) strata_http_conns_body_limit(srv.conns, o->max_body_bytes);
  srv.sig_int = evsignal_new(srv.base, SIGINT, on_signal, &srv);
  srv.sig_term = evsignal_new(srv.base, SIGTERM, on_signal, &srv);
  srv.grace = evtimer_new(srv.base, on_grace, &srv);
  srv.peek = event_new(srv.base, -1, EV_PERSIST, on_peek, &srv);
  srv.feed = cache_feed_new(srv.base, eng, srv.model_name);
  if (!srv.sig_int || !srv.sig_term || !srv.grace || !srv.peek || !srv.feed || !srv.conns) {
    fprintf(stderr, "strata: serve: cannot create events\n");
    goto out;
  }
  event_add(srv.sig_int, NULL);
  event_add(srv.sig_term, NULL);
  struct timeval pt = {0, PEEK_MS * 1000};
  event_add(srv.peek, &pt);
  signal(SIGPIPE, SIG_IGN);
  if (!(srv.bound = strata_http_listen(srv.http, "serve", o->host, o->port))) goto out;
  strata_http_conns_attach(srv.conns, srv.bound);
  event_base_dispatch(srv.base);
  rc = 0;
out:
  /* Requests still held (a second signal during the grace period) are
   * released: release cancels, and the engine frees their blocks. */
  while (srv.inflight) {
    struct sreq *s = srv.inflight;
    srv.stopping = 0; /* no loopexit from sreq_free */
    s->http = NULL;
    if (s->evcon) evhttp_connection_set_closecb(s->evcon, NULL, NULL);
    s->evcon = NULL;
    sreq_free(s);
  }
  if (srv.sig_int) event_free(srv.sig_int);
  if (srv.sig_term) event_free(srv.sig_term);
  if (srv.grace) event_free(srv.grace);
  if (srv.peek) event_free(srv.peek);
  cache_feed_free(srv.feed);
  if (srv.http) evhttp_free(srv.http);
  strata_http_conns_free(srv.conns);
  if (srv.base) event_base_free(srv.base);
  if (srv.have_tmpl) strata_chat_template_free(&srv.tmpl);
  free(srv.model_name);
  free(srv.api_key_header);
  return rc;
}
