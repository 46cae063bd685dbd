#include "config.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_level = -1;

static void init_level(void) {
  if (g_level >= 0) return;
  g_level = STRATA_LOG_WARN;
  const char *e = getenv("STRATA_LOG");
  if (!e) return;
  static const char *names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++)
    if (strcmp(e, names[i]) == 0) g_level = i;
}

void strata_log_set_level(enum strata_log_level level) { g_level = (int)level; }

enum strata_log_level strata_log_get_level(void) {
  init_level();
  return (enum strata_log_level)g_level;
}

void strata_vlog(enum strata_log_level level, const char *who, const char *fmt,
                 va_list ap) {
  init_level();
  if ((int)level > g_level) return;
  static const char *tags[] = {"error", "warn", "info", "debug"};
  char line[2048];
  vsnprintf(line, sizeof line, fmt, ap);
  fprintf(stderr, "%s: %s: %s\n", who ? who : "strata",
          tags[level <= STRATA_LOG_DEBUG ? level : STRATA_LOG_DEBUG], line);
}

void strata_log(enum strata_log_level level, const char *who, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  strata_vlog(level, who, fmt, ap);
  va_end(ap);
}
