/* Oversized request bodies answered in JSON, not libevent's HTML.
 *
 * libevent 2.1's evhttp answers a request whose Content-Length is above
 * evhttp_set_max_body_size itself, with an HTML page, and never calls the
 * server (2.2 added an error callback; Debian 12 has 2.1). To give such a
 * client the API's JSON error, the scanner follows each connection's
 * request stream in its input buffer (an evbuffer callback, which runs as
 * bytes arrive, before evhttp parses them): the request line and headers
 * line by line, then the body by its Content-Length. A Content-Length line
 * above the limit is rewritten, before evhttp reads it, to
 *
 *     Content-Length: 0
 *     X-Strata-Body-Too-Large: N
 *
 * and the N body bytes that follow are dropped as they come (N: that first
 * Content-Length, whatever other lines say, unless the head has a
 * Transfer-Encoding, which evhttp follows instead); evhttp hands the server
 * an empty request carrying the header, and the server answers 413 in JSON
 * (strata_http_body_too_large). The connection stays open while the body is
 * dropped, so that the client, still sending, reads the answer (closing on
 * unread bytes would reset the connection under it), except where the
 * scanner cannot follow: with Transfer-Encoding, or Expect: 100-continue
 * (the client may never send the body).
 *
 * A line starting with NUL ends the head, as evhttp has it. A client's own
 * X-Strata-Body-Too-Large line is renamed X-Client-Body-Too-Large.
 *
 * A chunked body cannot be followed without decoding it: after one, the
 * scanner lets the connection's bytes pass untouched, and evhttp's own limit
 * (still set) answers an oversized chunked body as before. So does a
 * Content-Length evhttp would refuse anyway (not a number). Lines are
 * evhttp's: ending in LF or CRLF. */
#ifndef STRATA_HTTP_SCAN_H
#define STRATA_HTTP_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/http.h>

/* The header the scanner puts in place of an oversized Content-Length. */
#define STRATA_HTTP_TOO_LARGE_HEADER "X-Strata-Body-Too-Large"

struct strata_http_scan {
  uint64_t limit;     /* largest body let through */
  int mode;           /* 0 head, 1 body, 2 off (passing everything) */
  int in_head;        /* the request line seen */
  size_t partial;     /* bytes of the current line that came before */
  uint64_t body_left; /* mode 1: body bytes still to come */
  int drop;           /* mode 1: dropping them (the body is too large) */
  /* this head: */
  int body_method;    /* not HEAD or TRACE: evhttp reads a body */
  int n_length;       /* Content-Length lines */
  uint64_t length;    /* the last one's value (saturated) */
  int chunked, bad;   /* Transfer-Encoding seen; a length not a number, or folded */
  int last_was_length; /* the previous line was a Content-Length (folding) */
  uint64_t rewritten; /* the length rewritten (the first Content-Length), or 0 */
  int busy;           /* rewriting the buffer (its callback fires again) */
};

/* A scanner for a new connection (limit: server.max_body_bytes). */
void strata_http_scan_init(struct strata_http_scan *s, uint64_t limit);

/* Follows the n_added bytes just appended to in, rewriting in as above.
 * Returns 0, or -1 when out of memory (the buffer is then untouched and
 * the scanner off: evhttp's own limit applies). */
int strata_http_scan_feed(struct strata_http_scan *s, struct evbuffer *in, size_t n_added);

/* The Content-Length a rewritten request declared (as sent), or NULL when
 * it was not rewritten: the server answers 413 whatever the value (a header
 * folded onto it may have changed it). A client's own header of that name
 * arrives renamed. *keep_open: whether the answer may leave the connection
 * open (see above); otherwise it says Connection: close. */
const char *strata_http_body_too_large(struct evhttp_request *req, int *keep_open);

#endif
