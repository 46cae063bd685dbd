/* Logging to stderr with a level threshold (STRATA_LOG=error|warn|info|debug). */
#ifndef STRATA_LOG_H
#define STRATA_LOG_H

#include <stdarg.h>

#include <strata/plugin.h>

void strata_log(enum strata_log_level level, const char *who, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void strata_vlog(enum strata_log_level level, const char *who, const char *fmt,
                 va_list ap);
void strata_log_set_level(enum strata_log_level level);
enum strata_log_level strata_log_get_level(void);

#define LOG_ERROR(...) strata_log(STRATA_LOG_ERROR, "strata", __VA_ARGS__)
#define LOG_WARN(...) strata_log(STRATA_LOG_WARN, "strata", __VA_ARGS__)
#define LOG_INFO(...) strata_log(STRATA_LOG_INFO, "strata", __VA_ARGS__)
#define LOG_DEBUG(...) strata_log(STRATA_LOG_DEBUG, "strata", __VA_ARGS__)

#endif
