/* Multi-agent workflows in the router (route_wf.c): the /v1/workflows API
 * (declaration, state, agent-to-agent messages, barriers, step results),
 * the workflow side of proxied requests, and the cache hints the router
 * sends to engines (POST /v1/cache/hints) from what it knows of each
 * workflow's step graph. Internal to the router host; docs/agents.md
 * describes the API. */
#ifndef STRATA_ROUTE_WF_H
#define STRATA_ROUTE_WF_H

#include <event2/buffer.h>
#include <event2/http.h>

struct router;
struct rreq;

/* 0, or -1 out of memory (message printed). */
int route_wf_open(struct router *rt);
/* Answers every waiter 503, cancels hints in flight, frees everything. */
void route_wf_close(struct router *rt);
/* SIGTERM: waiters are answered 503 now (they would hold the drain). */
void route_wf_stop(struct router *rt);
/* Whether path is a workflow endpoint; if so it was answered (or is held
 * as a waiter). Called after authentication. */
int route_wf_handle(struct router *rt, struct evhttp_request *req, const char *path,
                    enum evhttp_cmd_type m);
/* A proxied completion: joins its workflow (creating it implicitly). 0: go
 * on; 1: held (its workflow's context is being prefilled: route_start runs
 * when that ends); -1: the client was answered (a limit). */
int route_wf_join(struct rreq *r);
/* r's attempt ended with status (0: failed); body: its whole answer when
 * held (non-streamed), else NULL. Counts, marks steps done, sends hints. */
void route_wf_done(struct rreq *r, int status, struct evbuffer *body);
/* Frees r's workflow fields. */
void route_wf_release(struct rreq *r);
/* On the health timer: idle workflows end, SSE streams get a ping. */
void route_wf_tick(struct router *rt);
/* On the peek timer: waiters whose client went away are dropped. */
void route_wf_peek(struct router *rt);
void route_wf_metrics(struct router *rt, struct evbuffer *b);

#endif
