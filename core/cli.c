/* Helpers shared by the subcommands. */
#include "config.h"

#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int strata_cli_parse_long(const char *cmd, const char *opt, const char *s, long lo, long hi,
                          long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) {
    fprintf(stderr, "strata: %s: %s must be an integer in [%ld, %ld], got '%s'\n", cmd, opt, lo,
            hi, s);
    return -1;
  }
  *out = v;
  return 0;
}
