/* instant_engine: an HTTP server that answers like `strata serve` would
 * with max_tokens 1, at once, for measuring what the router adds without an
 * engine's own latency and its noise in the figures (the router issue's
 * "backends that answer instantly"). It is a benchmark fixture, not an
 * engine: every completion gets the same one-token answer.
 *
 *   POST /v1/completions, /v1/chat/completions -> a fixed completion
 *   GET /health -> {}; GET /metrics -> running/waiting 0
 *
 * Not built by `make check`. Build and run:
 *   gcc -O2 -o instant_engine tests/bench/instant_engine.c -levent
 *   ./instant_engine PORT      (0: any free port; prints "listening on URL")
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

static const char *completion =
    "{\"id\":\"cmpl-instant\",\"object\":\"text_completion\",\"created\":0,\"model\":\"instant\","
    "\"choices\":[{\"index\":0,\"text\":\" the\",\"logprobs\":null,\"finish_reason\":\"length\"}],"
    "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}";
static const char *metrics =
    "vllm:num_requests_running{model_name=\"instant\"} 0\n"
    "vllm:num_requests_waiting{model_name=\"instant\"} 0\n"
    "vllm:kv_cache_usage_perc{model_name=\"instant\"} 0\n";

static void reply(struct evhttp_request *req, const char *ctype, const char *body) {
  struct evbuffer *b = evbuffer_new();
  evbuffer_add(b, body, strlen(body));
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
  evhttp_send_reply(req, 200, "OK", b);
  evbuffer_free(b);
}

static void on_request(struct evhttp_request *req, void *arg) {
  (void)arg;
  const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
  if (!path) path = "/";
  if (strcmp(path, "/metrics") == 0)
    reply(req, "text/plain", metrics);
  else if (strcmp(path, "/health") == 0)
    reply(req, "application/json", "{}");
  else if (strcmp(path, "/v1/completions") == 0 || strcmp(path, "/v1/chat/completions") == 0)
    reply(req, "application/json", completion);
  else
    evhttp_send_error(req, 404, NULL);
}

int main(int argc, char **argv) {
  const int port = argc > 1 ? atoi(argv[1]) : 0;
  struct event_base *base = event_base_new();
  struct evhttp *http = evhttp_new(base);
  evhttp_set_gencb(http, on_request, NULL);
  struct evhttp_bound_socket *s = evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)port);
  if (!s) {
    fprintf(stderr, "instant_engine: cannot listen on port %d\n", port);
    return 1;
  }
  struct sockaddr_in sa;
  socklen_t sl = sizeof sa;
  getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&sa, &sl);
  fprintf(stderr, "listening on http://127.0.0.1:%d\n", ntohs(sa.sin_port));
  fflush(stderr);
  event_base_dispatch(base);
  return 0;
}
