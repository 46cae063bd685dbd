/* Small libevent helpers shared by the engine's server (server.c) and the
 * router (route.c). */
#ifndef STRATA_HTTP_UTIL_H
#define STRATA_HTTP_UTIL_H

#include <event2/http.h>

/* Whether the peer of c has closed its end (or the socket failed), seen
 * with a non-blocking MSG_PEEK: evhttp does not read a connection while it
 * answers a request, so a client that left is otherwise only noticed when
 * its answer is written. */
int strata_http_peer_gone(struct evhttp_connection *c);

/* Binds http to host:port (0: any free port) and prints "listening on
 * http://HOST:PORT" with the real port to stderr; or prints "strata: WHO:
 * cannot listen on ..." and returns NULL. */
struct evhttp_bound_socket *strata_http_listen(struct evhttp *http, const char *who,
                                               const char *host, int port);

#endif
