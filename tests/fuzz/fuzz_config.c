/* Config files on arbitrary text: libconfig's parse, then strata's
 * validation of every core group against its table. Either a config or
 * errors that each read FILE:LINE: message; never a crash. */
#define _GNU_SOURCE
#include "config.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "conf.h"
#include "fuzz.h"
#include "plugin_loader.h"

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fd = memfd_create("strata-fuzz.conf", 0);
  if (fd < 0) abort();
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* @include reads other files (a FIFO or /dev/stdin would block): not
   * what is fuzzed here */
  if (memmem(data, size, "@include", 8) || memmem(data, size, "@INCLUDE", 8)) return 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
  struct strata_errlist errs = {0};
  strata_config_t *cfg = strata_config_load(path, &errs);
  if (cfg) {
    struct strata_registry reg;
    memset(&reg, 0, sizeof reg);
    strata_config_validate(cfg, &reg, &errs);
    strata_config_free(cfg);
  }
  for (size_t i = 0; i < errs.n; i++)
    if (!strstr(errs.lines[i], ": ")) abort(); /* FILE:LINE: message */
  strata_errlist_free(&errs);
  return 0;
}
