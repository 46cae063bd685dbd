/* Drives the request-stream scanner (core/http_scan.h) as a connection
 * does, for test_http_scan and fuzz_http: one definition of how evhttp
 * reads, so that the two check the same thing. */
#ifndef STRATA_TEST_HTTP_SCAN_FEED_H
#define STRATA_TEST_HTTP_SCAN_FEED_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "http_scan.h"

static void scan_feed_on_input(struct evbuffer *in, const struct evbuffer_cb_info *info,
                               void *arg) {
  if (info->n_added) strata_http_scan_feed(arg, in, info->n_added);
}

/* Feeds stream (n bytes) in pieces of step bytes to a scanner of this
 * limit. consume: after each piece, takes away every whole line, as evhttp
 * parses a head (it takes body bytes too, which this does as well).
 * frozen: the buffer's end frozen while the scanner runs (called directly
 * after each append), as bufferevent_socket keeps an input buffer outside
 * its reads; otherwise the scanner is the buffer's callback. Returns every
 * byte the consumer saw, in order, then what was left; NULL when any step
 * failed (the scanner's included). */
static struct evbuffer *scan_stream(const void *stream, size_t n, size_t step, int consume,
                                    int frozen, uint64_t limit) {
  const char *p = stream;
  struct evbuffer *in = evbuffer_new(), *seen = evbuffer_new();
  struct strata_http_scan s;
  strata_http_scan_init(&s, limit);
  int ok = in && seen && (frozen || evbuffer_add_cb(in, scan_feed_on_input, &s));
  for (size_t off = 0; off < n && ok; off += step) {
    const size_t k = n - off < step ? n - off : step;
    ok = evbuffer_add(in, p + off, k) == 0;
    if (ok && frozen)
      ok = evbuffer_freeze(in, 0) == 0 && strata_http_scan_feed(&s, in, k) == 0 &&
           evbuffer_unfreeze(in, 0) == 0;
    if (ok && consume) {
      struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
      size_t upto = 0;
      while (e.pos >= 0) {
        upto = (size_t)e.pos + 1;
        if (evbuffer_ptr_set(in, &e, 1, EVBUFFER_PTR_ADD) != 0) break;
        e = evbuffer_search_eol(in, &e, NULL, EVBUFFER_EOL_LF);
      }
      ok = evbuffer_remove_buffer(in, seen, upto) == (int)upto;
    }
  }
  if (ok) ok = evbuffer_add_buffer(seen, in) == 0;
  if (in) evbuffer_free(in);
  if (!ok && seen) {
    evbuffer_free(seen);
    seen = NULL;
  }
  return seen;
}

#endif
