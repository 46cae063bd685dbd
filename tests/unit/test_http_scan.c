/* The request-stream scanner (core/http_scan.c) that turns an oversized
 * Content-Length into an empty request evhttp hands the server: streams
 * fed in every chunk size (1 byte up), with and without a consumer taking
 * whole lines away between reads as evhttp does, pipelined requests, the
 * body dropped and what follows it intact, hostile lengths and heads. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "http_scan.h"
#include "http_scan_feed.h"
#include "testutil.h"

/* scan_stream's result as a string (malloc'd; *n its length). */
static char *run_frozen(const char *stream, size_t len, size_t chunk, int consume,
                        uint64_t limit, int frozen, size_t *n) {
  struct evbuffer *seen = scan_stream(stream, len, chunk, consume, frozen, limit);
  ck_assert_ptr_nonnull(seen);
  *n = evbuffer_get_length(seen);
  char *out = malloc(*n + 1);
  evbuffer_remove(seen, out, *n);
  out[*n] = 0;
  evbuffer_free(seen);
  return out;
}

static char *run(const char *stream, size_t len, size_t chunk, int consume, uint64_t limit,
                 size_t *n) {
  return run_frozen(stream, len, chunk, consume, limit, 0, n);
}

/* stream through the scanner gives want, in every chunk size up to its
 * length, consumed or not, the buffer's end frozen or not. */
static void expect(const char *stream, size_t len, uint64_t limit, const char *want,
                   size_t want_len) {
  for (size_t chunk = 1; chunk <= len; chunk++)
    for (int consume = 0; consume < 4; consume++) {
      size_t n;
      char *got = run_frozen(stream, len, chunk, consume & 1, limit, consume >> 1, &n);
      ck_assert_msg(n == want_len && memcmp(got, want, n) == 0,
                    "chunks of %zu%s: got %zu bytes [%.*s], want %zu [%.*s]", chunk,
                    consume ? " (consumed)" : "", n, (int)(n < 400 ? n : 400), got, want_len,
                    (int)(want_len < 400 ? want_len : 400), want);
      free(got);
    }
}

#define S(x) x, sizeof x - 1

START_TEST(small_bodies_pass) {
  const char st[] = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
                    "POST /b HTTP/1.1\r\ncontent-length:5\r\n\r\nab\ncd"
                    "GET /c HTTP/1.1\r\n\r\n";
  expect(S(st), 10, S(st));
  /* a body let through that reads like a head with a length over the
   * limit is a body: untouched */
  const char inner[] = "POST /a HTTP/1.1\r\nContent-Length: 25\r\n\r\n"
                       "x\r\nContent-Length: 99\r\n\r\n"
                       "GET /c HTTP/1.1\r\n\r\n";
  expect(S(inner), 50, S(inner));
}
END_TEST

START_TEST(oversized_body_rewritten_and_dropped) {
  const char st[] = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                    "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n0123456789\r\n"
                    "POST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
  const char want[] = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                      "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                      "X-Strata-Body-Too-Large: 12\r\n\r\n"
                      "POST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
  expect(S(st), 10, S(want));
  /* exactly the limit passes */
  expect(S(st), 12, S(st));
  /* LF line ends, blanks and a sign around the number, a GET's body */
  const char st2[] = "GET /x HTTP/1.1\nCONTENT-LENGTH:\t+0000000020 \n\n01234567890123456789"
                     "HEAD / HTTP/1.1\r\nContent-Length: 99\r\n\r\n";
  const char want2[] = "GET /x HTTP/1.1\nContent-Length: 0\r\nX-Strata-Body-Too-Large: 20\n\n"
                       "HEAD / HTTP/1.1\r\nContent-Length: 99\r\n\r\n";
  expect(S(st2), 10, S(want2));
}
END_TEST

/* Hostile lengths and heads: never a crash; what evhttp refuses anyway (a
 * length that is not a number, two lengths, a folded one) and chunked
 * bodies pass untouched, and so does everything after them. */
START_TEST(hostile_heads) {
  const char *const pass[] = {
      "POST / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n0123456789ab",
      "POST / HTTP/1.1\r\nContent-Length: -12\r\n\r\n0123456789ab",
      "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
      "POST / HTTP/1.1\r\nContent-Length: 3\r\n 4\r\n\r\nabc",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
      "POST / HTTP/1.1\r\nContent-Length: 99\r\n\r\n",
      "\r\n\r\nGET / HTTP/1.1\r\n\r\n",
      "TRACE / HTTP/1.1\r\nContent-Length: 99\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof pass / sizeof *pass; i++)
    expect(pass[i], strlen(pass[i]), 10, pass[i], strlen(pass[i]));
  const char nul[] = "POST / HTTP/1.1\r\nX: \0\xff\r\nContent-Lengthh: 99\r\n\r\n";
  expect(S(nul), 10, S(nul));
  /* past 64 bits: saturated, still too large */
  const char big[] = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\nxx";
  const char bigw[] = "POST / HTTP/1.1\r\nContent-Length: 0\r\nX-Strata-Body-Too-Large: "
                      "18446744073709551615\r\n\r\n";
  expect(S(big), 10, S(bigw));
  /* a line starting with NUL ends the head (evhttp's test): 5 body bytes */
  const char nulend[] = "POST / HTTP/1.1\r\nContent-Length: 5\r\n\0\r\nabcdeGET / HTTP/1.1\r\n"
                        "Content-Length: 50\r\n\r\n";
  const char nulendw[] = "POST / HTTP/1.1\r\nContent-Length: 5\r\n\0\r\nabcdeGET / HTTP/1.1\r\n"
                         "Content-Length: 0\r\nX-Strata-Body-Too-Large: 50\r\n\r\n";
  expect(S(nulend), 10, S(nulendw));
  /* a client's own marker is renamed, in any method */
  const char own[] = "HEAD / HTTP/1.1\r\nx-strata-body-too-large: 5\r\n\r\n";
  const char ownw[] = "HEAD / HTTP/1.1\r\nX-Client-Body-Too-Large: 5\r\n\r\n";
  expect(S(own), 10, S(ownw));
  /* a fold after an oversized length: rewritten (the server answers 413
   * whatever the marker then says), the declared 20 bytes dropped */
  const char fold[] = "POST / HTTP/1.1\r\nContent-Length: 20\r\n 7\r\n\r\n01234567890123456789";
  const char foldw[] = "POST / HTTP/1.1\r\nContent-Length: 0\r\nX-Strata-Body-Too-Large: 20\r\n"
                       " 7\r\n\r\n";
  expect(S(fold), 10, S(foldw));
  /* a second length after an oversized first: the first is rewritten
   * (evhttp reads the first) and its 50 bytes go */
  const char two[] = "POST / HTTP/1.1\r\nContent-Length: 50\r\nContent-Length: 3\r\n\r\nabc";
  const char twow[] = "POST / HTTP/1.1\r\nContent-Length: 0\r\nX-Strata-Body-Too-Large: 50\r\n"
                      "Content-Length: 3\r\n\r\n";
  expect(S(two), 10, S(twow));
  /* with Transfer-Encoding too, evhttp reads chunks: nothing dropped, the
   * scanner off (the server closes the connection after its 413) */
  const char te[] = "POST / HTTP/1.1\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n0\r\n\r\n";
  const char tew[] = "POST / HTTP/1.1\r\nContent-Length: 0\r\nX-Strata-Body-Too-Large: 50\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
  expect(S(te), 10, S(tew));
}
END_TEST

/* Random streams of random pieces, oversized lengths among them: the
 * scanner never crashes, and whatever the chunks, consumed or not, frozen
 * or not, the result is the stream's fed whole. */
START_TEST(random_streams) {
  static const char *const pieces[] = {"POST / HTTP/1.1\r\n", "GET / HTTP/1.1\n", "\r\n", "\n",
                                       "Content-Length: 4\r\n", "content-length:0\r\n",
                                       "Transfer-Encoding: x\r\n", "abcd", "\r", ":", " ",
                                       "Host: y\r\n", "Content-Length: 150\r\n",
                                       "X-Strata-Body-Too-Large: 1\r\n", "\0"};
  uint64_t r = 42;
  for (int it = 0; it < 300; it++) {
    char st[512];
    size_t n = 0;
    while (n < 400) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      const char *p = pieces[(r >> 33) % (sizeof pieces / sizeof *pieces)];
      const size_t k = strlen(p);
      memcpy(st + n, p, k);
      n += k;
    }
    size_t wn;
    char *whole = run(st, n, n, 0, 100, &wn);
    for (size_t chunk = 1; chunk < 40; chunk += 7) {
      size_t m;
      char *got = run_frozen(st, n, chunk, (int)(chunk & 1), 100, (int)(chunk & 2) >> 1, &m);
      ck_assert_msg(m == wn && memcmp(got, whole, m) == 0, "stream %d: chunks of %zu differ", it,
                    chunk);
      free(got);
    }
    free(whole);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_scan");
  TCase *tc = tcase_create("scan");
  tcase_add_test(tc, small_bodies_pass);
  tcase_add_test(tc, oversized_body_rewritten_and_dropped);
  tcase_add_test(tc, hostile_heads);
  tcase_add_test(tc, random_streams);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
