/* The router's index of an instance's prefix cache (route_kv.h).
 *
 * The SSE reader is written here rather than taken from a library: the
 * libraries Debian packages for C (libevent included) parse HTTP but not
 * text/event-stream, and the subset used (data lines, comments, blank-line
 * dispatch) is a few lines. */
#include "config.h"

#include "route_kv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kv_events.h"
#include "util.h"

void route_kvidx_init(struct route_kvidx *x) { memset(x, 0, sizeof *x); }

void route_kvidx_reset(struct route_kvidx *x) {
  if (x->slot) memset(x->slot, 0, x->cap * sizeof *x->slot);
  x->n = 0;
  x->block_size = 0;
  x->live = 0;
  x->line_len = x->data_len = 0;
}

void route_kvidx_free(struct route_kvidx *x) {
  free(x->slot);
  free(x->line);
  free(x->data);
  memset(x, 0, sizeof *x);
}

/* ---- the set: linear probing, deletion by backward shift (no tombstones) */

static int is_empty(struct strata_kv_hash h) { return !h.lo && !h.hi; }

static size_t home(const struct route_kvidx *x, struct strata_kv_hash h) {
  return (size_t)(h.lo ^ h.hi >> 7) & (x->cap - 1); /* XXH3 bits are uniform */
}

static size_t find(const struct route_kvidx *x, struct strata_kv_hash h) {
  size_t i = home(x, h);
  while (!is_empty(x->slot[i]) && !strata_kv_hash_eq(x->slot[i], h)) i = (i + 1) & (x->cap - 1);
  return i;
}

int route_kvidx_has(const struct route_kvidx *x, struct strata_kv_hash h) {
  return x->cap && !is_empty(h) && !is_empty(x->slot[find(x, h)]);
}

static int grow(struct route_kvidx *x) {
  const size_t cap = x->cap ? 2 * x->cap : 1024;
  struct strata_kv_hash *old = x->slot;
  const size_t oc = x->cap;
  x->slot = calloc(cap, sizeof *x->slot);
  if (!x->slot) {
    x->slot = old;
    return -1;
  }
  x->cap = cap;
  for (size_t i = 0; i < oc; i++)
    if (!is_empty(old[i])) x->slot[find(x, old[i])] = old[i];
  free(old);
  return 0;
}

static int add(struct route_kvidx *x, struct strata_kv_hash h) {
  if (is_empty(h)) return 0; /* {0,0} marks a free slot; such a hash is not worth a slot */
  if (2 * (x->n + 1) > x->cap && grow(x) != 0) return -1;
  const size_t i = find(x, h);
  if (is_empty(x->slot[i])) {
    if (x->n >= ROUTE_KV_MAX_BLOCKS) return -1;
    x->slot[i] = h;
    x->n++;
  }
  return 0;
}

static void del(struct route_kvidx *x, struct strata_kv_hash h) {
  if (!x->cap || is_empty(h)) return;
  size_t i = find(x, h);
  if (is_empty(x->slot[i])) return;
  const size_t m = x->cap - 1;
  for (size_t j = (i + 1) & m; !is_empty(x->slot[j]); j = (j + 1) & m) {
    /* move j back into the hole at i unless its home lies in (i, j] */
    const size_t k = home(x, x->slot[j]);
    if (((j - k) & m) >= ((j - i) & m)) {
      x->slot[i] = x->slot[j];
      i = j;
    }
  }
  x->slot[i] = (struct strata_kv_hash){0, 0};
  x->n--;
}

int32_t route_kvidx_match(const struct route_kvidx *x, const struct strata_kv_hash *chain,
                          int32_t n) {
  int32_t k = 0;
  while (k < n && route_kvidx_has(x, chain[k])) k++;
  return k;
}

/* ---- messages --------------------------------------------------------------- */

static int apply(struct route_kvidx *x, const char *data, size_t len, char *err,
                 size_t errlen) {
  json_error_t je;
  json_t *o = json_loadb(data, len, 0, &je);
  int rc = 0;
  const char *type = o ? json_string_value(json_object_get(o, "type")) : NULL;
  if (!o || !json_is_object(o) || !type) {
    rc = strata_errf(err, errlen, "a cache event is not a JSON object with a \"type\"%s%s",
                     o ? "" : ": ", o ? "" : je.text);
    goto out;
  }
  if (strcmp(type, "hello") == 0) {
    const json_t *bs = json_object_get(o, "block_size");
    const char *hash = json_string_value(json_object_get(o, "hash"));
    if (!json_is_integer(bs) || json_integer_value(bs) < 1 || json_integer_value(bs) > 65536) {
      rc = strata_errf(err, errlen, "hello: block_size is not an integer in 1..65536");
      goto out;
    }
    if (!hash || strcmp(hash, "xxh3-128") != 0) {
      rc = strata_errf(err, errlen, "hello: hash scheme '%.40s' is not xxh3-128",
                       hash ? hash : "(none)");
      goto out;
    }
    route_kvidx_reset(x);
    x->block_size = (int32_t)json_integer_value(bs);
  } else if (strcmp(type, "reset") == 0) {
    const int32_t bs = x->block_size;
    route_kvidx_reset(x);
    x->block_size = bs;
  } else if (strcmp(type, "snapshot_end") == 0) {
    x->live = x->block_size > 0;
  } else if (strcmp(type, "snapshot") == 0 || strcmp(type, "stored") == 0 ||
             strcmp(type, "removed") == 0) {
    if (!x->block_size) {
      rc = strata_errf(err, errlen, "a %s event before the hello", type);
      goto out;
    }
    const json_t *a = json_object_get(o, "block_hashes");
    if (!json_is_array(a)) {
      rc = strata_errf(err, errlen, "%s: block_hashes is not an array", type);
      goto out;
    }
    const int removing = type[0] == 'r';
    for (size_t i = 0; i < json_array_size(a); i++) {
      const json_t *v = json_array_get(a, i);
      struct strata_kv_hash h;
      if (!json_is_string(v) ||
          strata_kv_hash_parse(json_string_value(v), json_string_length(v), &h) != 0) {
        rc = strata_errf(err, errlen, "%s: block_hashes[%zu] is not 32 hex digits", type, i);
        goto out;
      }
      if (removing) {
        del(x, h);
      } else if (add(x, h) != 0) {
        rc = strata_errf(err, errlen, "more than %u blocks, or out of memory",
                         ROUTE_KV_MAX_BLOCKS);
        goto out;
      }
    }
  } /* other types: a newer engine's; ignored */
  x->messages++;
out:
  if (o) json_decref(o);
  return rc;
}

/* Room for need bytes in *buf (of *cap), need <= ROUTE_KV_MAX_LINE. */
static int reserve(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 256;
  while (c < need) c *= 2;
  if (c > ROUTE_KV_MAX_LINE) c = ROUTE_KV_MAX_LINE;
  char *p = realloc(*buf, c);
  if (!p) return -1;
  *buf = p;
  *cap = c;
  return 0;
}

/* One complete line (no terminator). */
static int line(struct route_kvidx *x, const char *l, size_t n, char *err, size_t errlen) {
  if (n == 0) { /* dispatch */
    int rc = 0;
    if (x->data_len) rc = apply(x, x->data, x->data_len, err, errlen);
    x->data_len = 0;
    return rc;
  }
  if (l[0] == ':') return 0; /* comment (ping) */
  const char *colon = memchr(l, ':', n);
  const size_t fl = colon ? (size_t)(colon - l) : n;
  if (fl != 4 || memcmp(l, "data", 4) != 0) return 0; /* event:, id:, retry: unused */
  const char *v = colon ? colon + 1 : l + n;
  if (v < l + n && *v == ' ') v++;
  const size_t vl = (size_t)(l + n - v);
  if (x->data_len + vl + 1 > ROUTE_KV_MAX_LINE)
    return strata_errf(err, errlen, "a cache event is larger than %u bytes", ROUTE_KV_MAX_LINE);
  if (reserve(&x->data, &x->data_cap, x->data_len + vl + 1) != 0)
    return strata_errf(err, errlen, "out of memory");
  if (x->data_len) x->data[x->data_len++] = '\n';
  memcpy(x->data + x->data_len, v, vl);
  x->data_len += vl;
  return 0;
}

int route_kvidx_feed(struct route_kvidx *x, const char *p, size_t n, char *err, size_t errlen) {
  while (n) {
    const char *nl = memchr(p, '\n', n);
    const size_t take = nl ? (size_t)(nl - p) : n;
    if (x->line_len + take > ROUTE_KV_MAX_LINE)
      return strata_errf(err, errlen, "a cache event line is longer than %u bytes",
                         ROUTE_KV_MAX_LINE);
    if (!nl) { /* keep the partial line */
      if (reserve(&x->line, &x->line_cap, x->line_len + take) != 0)
        return strata_errf(err, errlen, "out of memory");
      memcpy(x->line + x->line_len, p, take);
      x->line_len += take;
      return 0;
    }
    const char *l = p;
    size_t ll = take;
    if (x->line_len) {
      if (reserve(&x->line, &x->line_cap, x->line_len + take) != 0)
        return strata_errf(err, errlen, "out of memory");
      memcpy(x->line + x->line_len, p, take);
      l = x->line;
      ll = x->line_len + take;
      x->line_len = 0;
    }
    if (ll && l[ll - 1] == '\r') ll--;
    if (line(x, l, ll, err, errlen) != 0) return -1;
    p += take + 1;
    n -= take + 1;
  }
  return 0;
}
