/* The request-stream scanner (core/http_scan.h) on arbitrary bytes: the
 * stream fed whole and fed in pieces (sizes from the input) with whole
 * lines taken away between pieces, as evhttp does, and with the buffer's
 * end frozen while the scanner works (as bufferevent_socket keeps it
 * outside its reads), must come out the same: the scanner never loses its
 * place, never loses bytes, never crashes. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "../unit/http_scan_feed.h"
#include "fuzz.h"
#include "http_scan.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  const uint64_t limit = data[0];
  const size_t step = 1 + data[1] % 64; /* bits 6, 7: frozen, consumed */
  struct evbuffer *a = scan_stream(data + 2, size - 2, size, 0, 0, limit);
  struct evbuffer *b =
      scan_stream(data + 2, size - 2, step, (data[1] >> 7) & 1, (data[1] >> 6) & 1, limit);
  if (!a || !b) abort();
  const size_t na = evbuffer_get_length(a);
  if (na != evbuffer_get_length(b)) abort();
  if (na && memcmp(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), na) != 0) abort();
  evbuffer_free(a);
  evbuffer_free(b);
  return 0;
}
