/* libevent helpers for the server and the router (http_util.h). */
#include "config.h"

#include "http_util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/bufferevent.h>

int strata_http_peer_gone(struct evhttp_connection *c) {
  struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
  const evutil_socket_t sock = bev ? bufferevent_getfd(bev) : -1;
  if (sock < 0) return 0;
  char b;
  const ssize_t n = recv(sock, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

struct evhttp_bound_socket *strata_http_listen(struct evhttp *http, const char *who,
                                               const char *host, int port) {
  errno = 0;
  struct evhttp_bound_socket *s = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
  if (!s) {
    fprintf(stderr, "strata: %s: cannot listen on %s port %d: %s\n", who, host, port,
            errno ? strerror(errno) : "not a usable address");
    return NULL;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  int real = port;
  if (getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET)
      real = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
      real = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  const int v6 = strchr(host, ':') != NULL;
  fprintf(stderr, "listening on http://%s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "", real);
  fflush(stderr);
  return s;
}
