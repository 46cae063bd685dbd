/* The router's index of an instance's prefix cache (route_kv.h): the SSE
 * stream of GET /v1/cache/events in any split, the set against a simple
 * model, and hostile streams (each an error, never a crash). */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_events.h"
#include "route_kv.h"
#include "testutil.h"

static struct strata_kv_hash H(uint64_t i) {
  /* spread like XXH3 output, never {0,0} */
  uint64_t z = i * 0x9e3779b97f4a7c15ULL + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  return (struct strata_kv_hash){z ^ (z >> 31), i + 1};
}

static char *msg(char *p, const char *type, uint64_t from, int n) {
  p += sprintf(p, "data: {\"type\":\"%s\",\"block_hashes\":[", type);
  for (int i = 0; i < n; i++) {
    char hex[33];
    strata_kv_hash_hex(H(from + (uint64_t)i), hex);
    p += sprintf(p, "%s\"%s\"", i ? "," : "", hex);
  }
  return p + sprintf(p, "]}\n\n");
}

/* a stream as the engine writes it: hello, snapshot 0..9, end, stored
 * 10..14, removed 0..2, a ping, a reset and a new snapshot 100..103 */
static size_t stream(char *buf, int with_reset) {
  char *p = buf;
  p += sprintf(p, "data: {\"type\":\"hello\",\"model\":\"m\",\"block_size\":16,\"hash\":\"xxh3-128\"}\n\n");
  p = msg(p, "snapshot", 0, 6);
  p = msg(p, "snapshot", 6, 4);
  p += sprintf(p, "data: {\"type\":\"snapshot_end\",\"blocks\":10,\"seq\":0}\n\n");
  p = msg(p, "stored", 10, 5);
  p += sprintf(p, ": ping\r\n\r\n");
  p = msg(p, "removed", 0, 3);
  p += sprintf(p, "event: whatever\nid: 7\ndata: {\"type\":\"from_the_future\",\"x\":1}\n\n");
  if (with_reset) {
    p += sprintf(p, "data: {\"type\":\"reset\",\"reason\":\"test\"}\n\n");
    p = msg(p, "snapshot", 100, 4);
    p += sprintf(p, "data: {\"type\":\"snapshot_end\",\"blocks\":4,\"seq\":9}\n\n");
  }
  return (size_t)(p - buf);
}

START_TEST(stream_in_any_split) {
  static char buf[8192];
  const size_t len = stream(buf, 0);
  for (size_t step = 1; step <= 64; step = step < 8 ? step + 1 : step * 2) {
    struct route_kvidx x;
    route_kvidx_init(&x);
    char err[256] = "";
    for (size_t i = 0; i < len; i += step)
      ck_assert_msg(route_kvidx_feed(&x, buf + i, len - i < step ? len - i : step, err,
                                     sizeof err) == 0,
                    "step %zu: %s", step, err);
    ck_assert_int_eq(x.block_size, 16);
    ck_assert(x.live);
    ck_assert_uint_eq(x.n, 12); /* 10 + 5 - 3 */
    for (uint64_t i = 0; i < 15; i++) ck_assert_int_eq(route_kvidx_has(&x, H(i)), i >= 3);
    ck_assert_uint_eq(x.messages, 7);
    struct strata_kv_hash chain[4] = {H(3), H(4), H(99), H(5)};
    ck_assert_int_eq(route_kvidx_match(&x, chain, 4), 2);
    route_kvidx_free(&x);
  }
  /* a reset forgets everything before it */
  const size_t len2 = stream(buf, 1);
  struct route_kvidx x;
  route_kvidx_init(&x);
  char err[256] = "";
  ck_assert_int_eq(route_kvidx_feed(&x, buf, len2, err, sizeof err), 0);
  ck_assert_uint_eq(x.n, 4);
  ck_assert(!route_kvidx_has(&x, H(5)));
  ck_assert(route_kvidx_has(&x, H(102)));
  ck_assert(x.live);
  route_kvidx_reset(&x);
  ck_assert(!x.live);
  ck_assert_uint_eq(x.n, 0);
  ck_assert(!route_kvidx_has(&x, H(102)));
  route_kvidx_free(&x);
}
END_TEST

/* Inserts and deletes (deletion shifts entries back) against a bitmap. */
START_TEST(set_against_a_model) {
  struct route_kvidx x;
  route_kvidx_init(&x);
  enum { N = 20000 };
  static unsigned char in[N];
  memset(in, 0, sizeof in);
  static char buf[64 * 1024];
  char err[256] = "";
  const char *hello = "data: {\"type\":\"hello\",\"block_size\":4,\"hash\":\"xxh3-128\"}\n\n";
  ck_assert_int_eq(route_kvidx_feed(&x, hello, strlen(hello), err, sizeof err), 0);
  uint64_t seed = 12345;
  size_t count = 0;
  for (int round = 0; round < 400; round++) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    const int del = (seed >> 33) % 3 == 0;
    const uint64_t from = (seed >> 40) % (N - 64);
    const int n = 1 + (int)((seed >> 20) % 63);
    char *end = msg(buf, del ? "removed" : "stored", from, n);
    ck_assert_int_eq(route_kvidx_feed(&x, buf, (size_t)(end - buf), err, sizeof err), 0);
    for (int i = 0; i < n; i++) {
      if (del && in[from + (uint64_t)i]) count--;
      if (!del && !in[from + (uint64_t)i]) count++;
      in[from + (uint64_t)i] = (unsigned char)!del;
    }
    if (round % 50 == 49) {
      ck_assert_uint_eq(x.n, count);
      for (uint64_t i = 0; i < N; i++) ck_assert_int_eq(route_kvidx_has(&x, H(i)), in[i]);
    }
  }
  route_kvidx_free(&x);
}
END_TEST

static void expect_error(const char *stream, const char *what) {
  struct route_kvidx x;
  route_kvidx_init(&x);
  char err[256] = "";
  ck_assert_msg(route_kvidx_feed(&x, stream, strlen(stream), err, sizeof err) == -1,
                "accepted: %s", stream);
  ck_assert_msg(strstr(err, what) != NULL, "error '%s' does not say '%s'", err, what);
  route_kvidx_free(&x);
}

START_TEST(hostile_streams) {
  expect_error("data: not json\n\n", "not a JSON object");
  expect_error("data: [1,2]\n\n", "not a JSON object");
  expect_error("data: {\"no\":\"type\"}\n\n", "\"type\"");
  expect_error("data: {\"type\":\"stored\",\"block_hashes\":[]}\n\n", "before the hello");
  expect_error("data: {\"type\":\"hello\",\"block_size\":0,\"hash\":\"xxh3-128\"}\n\n",
               "block_size");
  expect_error("data: {\"type\":\"hello\",\"block_size\":\"16\",\"hash\":\"xxh3-128\"}\n\n",
               "block_size");
  expect_error("data: {\"type\":\"hello\",\"block_size\":16,\"hash\":\"md5\"}\n\n", "md5");
  const char *h = "data: {\"type\":\"hello\",\"block_size\":16,\"hash\":\"xxh3-128\"}\n\n";
  char b[512];
  snprintf(b, sizeof b, "%sdata: {\"type\":\"stored\",\"block_hashes\":{}}\n\n", h);
  expect_error(b, "not an array");
  snprintf(b, sizeof b, "%sdata: {\"type\":\"stored\",\"block_hashes\":[\"abc\"]}\n\n", h);
  expect_error(b, "block_hashes[0]");
  snprintf(b, sizeof b, "%sdata: {\"type\":\"removed\",\"block_hashes\":[\"%s\",7]}\n\n", h,
           "0123456789abcdef0123456789abcdef");
  expect_error(b, "block_hashes[1]");
  snprintf(b, sizeof b, "%sdata: {\"type\":\"snapshot\",\"block_hashes\":[\"%s\"]}\n\n", h,
           "0123456789abcdef0123456789abcdeZ");
  expect_error(b, "32 hex");
  /* a line that never ends, an event that never ends */
  struct route_kvidx x;
  route_kvidx_init(&x);
  char err[256] = "";
  static char big[64 * 1024];
  memset(big, 'a', sizeof big);
  int rc = 0;
  for (int i = 0; i < 40 && rc == 0; i++) rc = route_kvidx_feed(&x, big, sizeof big, err, sizeof err);
  ck_assert_int_eq(rc, -1);
  ck_assert_msg(strstr(err, "longer than") != NULL, "%s", err);
  route_kvidx_free(&x);
  route_kvidx_init(&x);
  memcpy(big, "data: ", 6);
  big[sizeof big - 1] = '\n';
  rc = 0;
  for (int i = 0; i < 40 && rc == 0; i++) rc = route_kvidx_feed(&x, big, sizeof big, err, sizeof err);
  ck_assert_int_eq(rc, -1);
  ck_assert_msg(strstr(err, "larger than") != NULL, "%s", err);
  route_kvidx_free(&x);
  /* random bytes: an error or nothing, never a crash; the state stays usable */
  uint64_t seed = 99;
  for (int round = 0; round < 2000; round++) {
    route_kvidx_init(&x);
    char r[300];
    size_t n = 0;
    const char *alphabet = "data: {}[]\":,\n\r0123456789abcdeftypehlosrnkz_";
    const size_t na = strlen(alphabet);
    if (round % 2) n = (size_t)snprintf(r, sizeof r, "%s", h);
    while (n < sizeof r - 1) {
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      r[n++] = round % 3 ? alphabet[(seed >> 33) % na] : (char)(seed >> 56);
    }
    rc = route_kvidx_feed(&x, r, n, err, sizeof err);
    ck_assert(rc == 0 || rc == -1);
    if (rc == 0) ck_assert_uint_le(x.n, 64);
    route_kvidx_free(&x);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("route_kv");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, stream_in_any_split);
  tcase_add_test(tc, set_against_a_model);
  tcase_add_test(tc, hostile_streams);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
