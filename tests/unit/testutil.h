/* Helpers shared by the Check suites. */
#ifndef STRATA_TESTUTIL_H
#define STRATA_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The ../shared directory (models, vocabularies, references). Tests that
 * need it exit 77 (automake SKIP) when it is missing. */
static inline const char *test_shared_dir(void) {
  const char *e = getenv("STRATA_SHARED");
  return e && *e ? e : STRATA_SHARED_DIR;
}

static inline char *test_shared_path(const char *rel) {
  const char *d = test_shared_dir();
  size_t n = strlen(d) + strlen(rel) + 2;
  char *p = malloc(n);
  snprintf(p, n, "%s/%s", d, rel);
  return p;
}

static inline const char *test_builddir(void) {
  const char *e = getenv("STRATA_BUILDDIR");
  return e && *e ? e : STRATA_BUILDDIR;
}

static inline const char *test_srcdir(void) {
  const char *e = getenv("STRATA_SRCDIR");
  return e && *e ? e : STRATA_SRCDIR;
}

/* Runs a suite and returns the exit status automake expects. */
static inline int test_run_suite(Suite *s) {
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}

#endif
