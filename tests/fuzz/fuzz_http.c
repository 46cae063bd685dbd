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

#include "fuzz.h"
#include "http_scan.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static void on_input(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg) {
  if (info->n_added) strata_http_scan_feed(arg, in, info->n_added);
}

/* What a consumer sees of the stream, fed in pieces of step bytes. */
static struct evbuffer *run(const uint8_t *p, size_t n, size_t step, int consume,
                            int frozen, uint64_t limit) {
  struct evbuffer *in = evbuffer_new(), *seen = evbuffer_new();
  if (!in || !seen) abort();
  struct strata_http_scan s;
  strata_http_scan_init(&s, limit);
  if (!frozen && !evbuffer_add_cb(in, on_input, &s)) abort();
  for (size_t off = 0; off < n; off += step) {
    const size_t k = n - off < step ? n - off : step;
    if (evbuffer_add(in, p + off, k) != 0) abort();
    if (frozen) {
      evbuffer_freeze(in, 0);
      if (strata_http_scan_feed(&s, in, k) != 0) abort();
      evbuffer_unfreeze(in, 0);
    }
    if (consume) {
      struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
      size_t upto = 0;
      while (e.pos >= 0) {
        upto = (size_t)e.pos + 1;
        if (evbuffer_ptr_set(in, &e, 1, EVBUFFER_PTR_ADD) != 0) break;
        e = evbuffer_search_eol(in, &e, NULL, EVBUFFER_EOL_LF);
      }
      evbuffer_remove_buffer(in, seen, upto);
    }
  }
  evbuffer_add_buffer(seen, in);
  evbuffer_free(in);
  return seen;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  const uint64_t limit = data[0];
  const size_t step = 1 + data[1] % 64; /* bits 6, 7: frozen, consumed */
  struct evbuffer *a = run(data + 2, size - 2, size, 0, 0, limit);
  struct evbuffer *b = run(data + 2, size - 2, step, (data[1] >> 7) & 1, (data[1] >> 6) & 1, limit);
  const size_t na = evbuffer_get_length(a);
  if (na != evbuffer_get_length(b)) abort();
  if (na && memcmp(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), na) != 0) abort();
  evbuffer_free(a);
  evbuffer_free(b);
  return 0;
}
