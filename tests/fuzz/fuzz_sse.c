/* The router's reader of an engine's GET /v1/cache/events stream
 * (route_kv.h) on arbitrary bytes, fed in pieces whose sizes come from the
 * input itself: an error or nothing, never a crash, and the index stays
 * consistent (every hash it says it holds, it finds). */
#include "config.h"

#include "fuzz.h"
#include "route_kv.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  struct route_kvidx x;
  route_kvidx_init(&x);
  const size_t step = 1 + data[0] % 64;
  char err[256];
  for (size_t i = 1; i < size; i += step) {
    const size_t n = size - i < step ? size - i : step;
    if (route_kvidx_feed(&x, (const char *)data + i, n, err, sizeof err) != 0) {
      if (!err[0]) abort();
      break;
    }
  }
  size_t found = 0;
  for (size_t i = 0; i < x.cap; i++)
    if (x.slot[i].lo || x.slot[i].hi) {
      if (!route_kvidx_has(&x, x.slot[i])) abort();
      found++;
    }
  if (found != x.n) abort();
  route_kvidx_free(&x);
  return 0;
}
