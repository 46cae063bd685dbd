/* Small helpers shared by the core: error buffers, checked allocation,
 * whole-file reads, size parsing. */
#ifndef STRATA_UTIL_H
#define STRATA_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Error convention across the core: functions return 0 on success and -1 on
 * failure after writing one line (no trailing newline) into err[errlen]. */
int strata_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Allocation that aborts on exhaustion is wrong for a server, so these return
 * NULL like malloc; they only add overflow checks on the size products. */
void *strata_calloc(size_t n, size_t size);
void *strata_reallocarray(void *p, size_t n, size_t size);
char *strata_strdup(const char *s);
char *strata_strndup(const char *s, size_t n);

/* Reads a whole file (NUL-terminated for convenience). */
int strata_read_file(const char *path, char **data, size_t *len, char *err,
                     size_t errlen);

/* Parses "123", "64KiB", "2GiB", "1.5GB", "512MiB". 1 KB = 1000, 1 KiB = 1024.
 * Returns 0 and the byte count, or -1 if the text is not a size. */
int strata_parse_size(const char *text, uint64_t *out);

/* Directory part of a path ("." when there is none), newly allocated. */
char *strata_dirname(const char *path);
/* Joins dir and rel unless rel is absolute; newly allocated. */
char *strata_path_join(const char *dir, const char *rel);

/* Monotonic time in seconds. */
double strata_now(void);
/* 1 when the secret `got` (NUL-terminated, may be NULL) equals `want`, in
 * time that depends on want's length only (API keys). */
int strata_secret_equal(const char *got, const char *want);
/* Whether a listen address only reaches this machine: "localhost",
 * 127.0.0.0/8 or ::1. Anything else (0.0.0.0, ::, a name) is not. */
int strata_host_is_loopback(const char *host);
/* Whether `strata CMD` may listen on host: on loopback, with an API key, or
 * when GROUP.allow_no_api_key says the network is private. Otherwise prints
 * "strata: CMD: refusing to VERB HOST without an API key ..." naming the
 * settings to change, and returns 0. */
int strata_may_listen(const char *cmd, const char *verb, const char *group, const char *host,
                      const char *api_key, int allow_no_api_key);

#define STRATA_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
