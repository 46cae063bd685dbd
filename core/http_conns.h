/* Open-connection accounting and limit for an evhttp server (the engine's
 * server and the router): server.max_connections / router.max_connections.
 *
 * libevent 2.1 (Debian 12's) has no evhttp_set_max_connections (2.2 added
 * it) and no hook when evhttp closes a connection it accepted, so this
 * counts with public calls only: evhttp_set_bevcb sees every accepted
 * connection (its socket, once evhttp has set it, is recorded with its
 * local and peer address), and a record whose socket is closed or now
 * belongs to another connection is dropped when the count matters (at the
 * limit, for /metrics, while accepting is paused).
 *
 * A connection that arrives while max are open is served one answer: every
 * request on it gets 503 server_busy with Connection: close. Past
 * max + max/8 + 4 connections, or when accept() fails for want of file
 * descriptors (EMFILE/ENFILE, which libevent would otherwise retry in a busy
 * loop), the listener pauses and new connections wait in the kernel's
 * backlog until the count is below max again (checked every 100 ms). */
#ifndef STRATA_HTTP_CONNS_H
#define STRATA_HTTP_CONNS_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>

struct strata_http_conns;

/* Starts counting the connections http accepts. fds_per_conn: descriptors a
 * connection may use besides its own socket (the router's upstream
 * connection: 1) -- the soft RLIMIT_NOFILE is raised towards
 * max * (1 + fds_per_conn) + 64 when it is lower, and where the hard limit
 * forbids that, max is lowered to fit and a warning says so. who names the
 * server in log lines. NULL when out of memory. */
struct strata_http_conns *strata_http_conns_new(struct event_base *base, struct evhttp *http,
                                                const char *who, size_t max,
                                                unsigned fds_per_conn);

/* After strata_http_listen: lets it pause and resume bound's listener.
 * Before evhttp_del_accept_socket: with NULL, it lets go of it. */
void strata_http_conns_attach(struct strata_http_conns *c, struct evhttp_bound_socket *bound);

/* Whether req arrived on a connection accepted over the limit: the caller
 * answers 503 (strata_http_conns_refuse_headers adds Connection: close and
 * Retry-After). */
int strata_http_conns_over(struct strata_http_conns *c, struct evhttp_request *req);
void strata_http_conns_refuse_headers(struct evhttp_request *req);

/* Follows each new connection's requests for bodies above bytes, which
 * get the server's JSON 413 instead of evhttp's HTML (http_scan.h: the
 * server checks strata_http_body_too_large first). 0: not. Before any
 * connection; the server still sets evhttp's own limit to the same. */
void strata_http_conns_body_limit(struct strata_http_conns *c, uint64_t bytes);

/* The effective limit (max_connections, fitted to the descriptor limit). */
size_t strata_http_conns_max(const struct strata_http_conns *c);

/* Appends the connections open now, that limit, those refused (served a
 * 503) and the times accepting paused, as Prometheus metrics named
 * PREFIX_connections, PREFIX_connections_max,
 * PREFIX_connections_refused_total and PREFIX_accept_pauses_total. */
struct evbuffer;
void strata_http_conns_metrics(struct strata_http_conns *c, struct evbuffer *b,
                               const char *prefix);

void strata_http_conns_free(struct strata_http_conns *c);

#endif
