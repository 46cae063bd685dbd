/* Shared bits of the libFuzzer targets (tests/fuzz/README.md). */
#ifndef STRATA_FUZZ_H
#define STRATA_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ../shared, as the tests find it: $STRATA_SHARED, else the configured one. */
static inline const char *fuzz_shared(void) {
  const char *e = getenv("STRATA_SHARED");
  return e && *e ? e : STRATA_SHARED_DIR;
}

/* A NUL-terminated copy of the input (the parsers take text). */
static inline char *fuzz_text(const uint8_t *data, size_t size) {
  char *t = malloc(size + 1);
  if (!t) abort();
  for (size_t i = 0; i < size; i++) t[i] = (char)data[i];
  t[size] = 0;
  return t;
}

#endif
