#include "config.h"

#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int strata_errf(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

void *strata_calloc(size_t n, size_t size) {
  if (n && size > SIZE_MAX / n) return NULL;
  return calloc(n ? n : 1, size ? size : 1);
}

void *strata_reallocarray(void *p, size_t n, size_t size) {
  if (n && size > SIZE_MAX / n) return NULL;
  size_t total = n * size;
  return realloc(p, total ? total : 1);
}

char *strata_strdup(const char *s) { return s ? strata_strndup(s, strlen(s)) : NULL; }

char *strata_strndup(const char *s, size_t n) {
  if (n == SIZE_MAX) return NULL;
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

int strata_read_file(const char *path, char **data, size_t *len, char *err,
                     size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) return strata_errf(err, errlen, "%s: %s", path, strerror(errno));
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (n + 1 >= cap) {
      char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (!buf) return strata_errf(err, errlen, "%s: out of memory", path);
  if (bad) {
    free(buf);
    return strata_errf(err, errlen, "%s: read error", path);
  }
  buf[n] = '\0';
  *data = buf;
  if (len) *len = n;
  return 0;
}

int strata_parse_size(const char *text, uint64_t *out) {
  if (!text) return -1;
  while (isspace((unsigned char)*text)) text++;
  if (!isdigit((unsigned char)*text) && *text != '.') return -1;
  errno = 0;
  char *end;
  double v = strtod(text, &end);
  if (errno || end == text || !(v >= 0) || !isfinite(v)) return -1;
  while (isspace((unsigned char)*end)) end++;
  static const struct {
    const char *suffix;
    double mult;
  } units[] = {
      {"", 1},          {"B", 1},         {"K", 1e3},       {"KB", 1e3},
      {"KiB", 1024.0},  {"M", 1e6},       {"MB", 1e6},      {"MiB", 1048576.0},
      {"G", 1e9},       {"GB", 1e9},      {"GiB", 1073741824.0},
      {"T", 1e12},      {"TB", 1e12},     {"TiB", 1099511627776.0},
  };
  for (size_t i = 0; i < STRATA_ARRAY_LEN(units); i++) {
    if (strcmp(end, units[i].suffix) == 0) {
      double b = v * units[i].mult;
      if (b >= 18446744073709551615.0) return -1;
      if (units[i].mult == 1 && b != floor(b)) return -1;
      *out = (uint64_t)(b + 0.5);
      return 0;
    }
  }
  return -1;
}

char *strata_dirname(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return strata_strdup(".");
  if (slash == path) return strata_strdup("/");
  return strata_strndup(path, (size_t)(slash - path));
}

char *strata_path_join(const char *dir, const char *rel) {
  if (rel[0] == '/' || !dir || !dir[0]) return strata_strdup(rel);
  size_t a = strlen(dir), b = strlen(rel);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  p[a] = '/';
  memcpy(p + a + 1, rel, b + 1);
  return p;
}

double strata_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int strata_secret_equal(const char *got, const char *want) {
  if (!got) return 0;
  const size_t a = strlen(got), b = strlen(want);
  unsigned diff = a != b;
  for (size_t i = 0; i < b; i++)
    diff |= (unsigned)(unsigned char)(i < a ? got[i] : 0) ^ (unsigned char)want[i];
  return diff == 0;
}

int strata_host_is_loopback(const char *host) {
  if (!host) return 0;
  if (strcmp(host, "localhost") == 0) return 1;
  struct in_addr a4;
  if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  struct in6_addr a6;
  if (inet_pton(AF_INET6, host, &a6) == 1) return memcmp(&a6, &in6addr_loopback, sizeof a6) == 0;
  return 0;
}

int strata_may_listen(const char *cmd, const char *verb, const char *group, const char *host,
                      const char *api_key, int allow_no_api_key) {
  if ((api_key && *api_key) || allow_no_api_key || strata_host_is_loopback(host)) return 1;
  fprintf(stderr,
          "strata: %s: refusing to %s %s without an API key: anyone who can reach it could use "
          "it. Set %s.api_key (or STRATA_API_KEY), or %s.allow_no_api_key = true on a private "
          "network\n",
          cmd, verb, host, group, group);
  return 0;
}
