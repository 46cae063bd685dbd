/* The OpenAI-compatible HTTP server of `strata serve`, on libevent's evhttp.
 *
 * One libevent thread owns every connection; the engine runs on its own
 * thread (engine.h). An engine callback never touches libevent state
 * directly: it copies the event into the request's mutex-guarded queue and
 * wakes the request's user event with event_active() (libevent built
 * thread-aware through evthread_use_pthreads), so sockets are only written
 * on the libevent thread. A client that goes away (the connection's close
 * callback, or a periodic MSG_PEEK while its request runs) cancels and
 * releases its engine request, so the engine frees the blocks at its next
 * step. Request parsing and response shapes live in http_api.c. */
#ifndef STRATA_SERVER_H
#define STRATA_SERVER_H

#include <stddef.h>

#include "engine.h"

struct strata_runtime;

struct strata_server_opts {
  const char *host;    /* listen address ("127.0.0.1", "::1", "0.0.0.0") */
  int port;            /* 0: any free port (the real one is printed) */
  const char *api_key; /* NULL or "": no authentication */
  const char
      *served_model_name;    /* NULL: the model file name without extension */
  size_t max_body_bytes;     /* larger bodies get 413 */
  size_t max_metadata_bytes; /* a request's metadata as compact JSON */
  int32_t max_n;             /* n and best_of */
  int32_t max_stop;          /* stop strings of a request */
  size_t max_header_bytes;   /* a request's headers */
  size_t max_connections;    /* open client connections (0: 1024) */
  const char
      *chat_template; /* server.chat_template override; NULL: the model's */
  int request_log;    /* one stderr line per finished request */
  int idle_timeout;   /* seconds; 0: 60 */
};

/* Serves until SIGINT or SIGTERM: prints "listening on http://HOST:PORT" to
 * stderr once the socket listens; on the first signal stops accepting,
 * lets running requests finish (cancelling them after a grace period; a
 * second signal cancels at once), then returns. The engine must be
 * started; the caller stops it afterwards. Returns 0, or 1 after printing
 * one line when the server cannot start (address in use, ...). */
int strata_server_run(struct strata_runtime *rt, strata_engine_t *eng,
                      const struct strata_server_opts *opts);

#endif
