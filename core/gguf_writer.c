/* GGUF v2/v3 writer. Written by hand for the same reason as the reader
 * (gguf.c): Debian 12 packages no GGUF library. Every value is checked
 * against what the reader accepts, so a file written here always reads
 * back. */
#include "config.h"

#include "gguf_writer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <strata/quant.h>

#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF writer assumes a little-endian host"
#endif

struct wkv {
  char *key;
  size_t klen;
  uint8_t *blob; /* uint32 value type, then the value */
  size_t blen;
};

struct wtensor {
  char *name;
  size_t nlen;
  uint32_t type, n_dims;
  uint64_t ne[STRATA_GGUF_MAX_DIMS];
  uint64_t nbytes;
  uint64_t offset; /* relative to the data section, set by layout() */
  const void *data;
};

struct strata_gguf_writer {
  uint32_t version;
  uint32_t alignment;
  struct wkv *kvs;
  size_t n_kv, cap_kv;
  struct wtensor *ts;
  size_t n_t, cap_t;
  char err[512];

  /* streaming state */
  FILE *f;
  uint64_t data_offset, file_size;
  uint64_t pos;      /* bytes written since begin */
  size_t cur;        /* tensor receiving data */
  uint64_t cur_done; /* its bytes written so far */
};

static int werr(strata_gguf_writer_t *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int werr(strata_gguf_writer_t *w, const char *fmt, ...) {
  if (!w->err[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* Copies the sticky error out for the functions taking err/errlen. */
static int report(const strata_gguf_writer_t *w, char *err, size_t errlen) {
  return strata_errf(err, errlen, "%s", w->err);
}

strata_gguf_writer_t *strata_gguf_writer_new(uint32_t version) {
  if (version != 2 && version != 3) return NULL;
  strata_gguf_writer_t *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->version = version;
  w->alignment = STRATA_GGUF_DEFAULT_ALIGNMENT;
  return w;
}

void strata_gguf_writer_free(strata_gguf_writer_t *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n_kv; i++) {
    free(w->kvs[i].key);
    free(w->kvs[i].blob);
  }
  for (size_t i = 0; i < w->n_t; i++)
    free(w->ts[i].name);
  free(w->kvs);
  free(w->ts);
  free(w);
}

const char *strata_gguf_writer_error(const strata_gguf_writer_t *w) {
  return w->err;
}

/* Metadata and tensors are fixed once the header has been written. */
static int check_open(strata_gguf_writer_t *w, const char *what) {
  if (w->err[0]) return -1;
  if (w->f) return werr(w, "%s: the header has already been written", what);
  return 0;
}

/* ---- value serialization ---------------------------------------------- */

struct bbuf {
  uint8_t *p;
  size_t len, cap;
  int oom;
};

static void bb_put(struct bbuf *b, const void *d, size_t n) {
  if (b->oom || n == 0) return;
  if (n > SIZE_MAX - b->len) {
    b->oom = 1;
    return;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n)
      cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
    uint8_t *np = realloc(b->p, cap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, d, n);
  b->len += n;
}

static void bb_u32(struct bbuf *b, uint32_t v) {
  bb_put(b, &v, 4);
}
static void bb_u64(struct bbuf *b, uint64_t v) {
  bb_put(b, &v, 8);
}
static void bb_str(struct bbuf *b, const char *s, uint64_t len) {
  bb_u64(b, len);
  if (len) bb_put(b, s, (size_t)len);
}

static int is_numeric(uint32_t t) {
  return t <= STRATA_GGUF_FLOAT64 && t != STRATA_GGUF_STRING &&
         t != STRATA_GGUF_ARRAY;
}

static int ser_payload(strata_gguf_writer_t *w, const char *key, struct bbuf *b,
                       const struct strata_gguf_value *v, int level);

static int ser_array(strata_gguf_writer_t *w, const char *key, struct bbuf *b,
                     const struct strata_gguf_value *v, int level) {
  uint32_t et = v->v.arr.type;
  uint64_t n = v->v.arr.n;
  if (et > STRATA_GGUF_FLOAT64)
    return werr(w, "key '%s': unknown array element type %" PRIu32, key, et);
  if (et == STRATA_GGUF_ARRAY && level >= STRATA_GGUF_MAX_DEPTH)
    return werr(w, "key '%s': arrays nest deeper than %d levels", key,
                STRATA_GGUF_MAX_DEPTH);
  bb_u32(b, et);
  bb_u64(b, n);
  if (n == 0) return 0;
  if (is_numeric(et)) {
    size_t sz = strata_gguf_vtype_size((enum strata_gguf_vtype)et);
    if (!v->v.arr.data) return werr(w, "key '%s': array data is NULL", key);
    if (n > SIZE_MAX / sz) return werr(w, "key '%s': array too large", key);
    if (et == STRATA_GGUF_BOOL) {
      const uint8_t *d = v->v.arr.data;
      for (uint64_t i = 0; i < n; i++)
        if (d[i] > 1)
          return werr(w, "key '%s': bool element %" PRIu64 " is %u, not 0/1",
                      key, i, d[i]);
    }
    bb_put(b, v->v.arr.data, (size_t)(n * sz));
  } else if (et == STRATA_GGUF_STRING) {
    if (!v->v.arr.strs) return werr(w, "key '%s': array strings are NULL", key);
    for (uint64_t i = 0; i < n; i++) {
      const struct strata_gguf_str *s = &v->v.arr.strs[i];
      if (s->len && !s->ptr)
        return werr(w, "key '%s': string %" PRIu64 " is NULL", key, i);
      bb_str(b, s->ptr, s->len);
    }
  } else {
    if (!v->v.arr.items) return werr(w, "key '%s': array items are NULL", key);
    for (uint64_t i = 0; i < n; i++) {
      const struct strata_gguf_value *it = &v->v.arr.items[i];
      if (it->type != STRATA_GGUF_ARRAY)
        return werr(w,
                    "key '%s': item %" PRIu64 " of an array of arrays is "
                    "a %s",
                    key, i, strata_gguf_vtype_name(it->type));
      if (ser_array(w, key, b, it, level + 1)) return -1;
    }
  }
  return 0;
}

/* level: how many arrays enclose v. */
static int ser_payload(strata_gguf_writer_t *w, const char *key, struct bbuf *b,
                       const struct strata_gguf_value *v, int level) {
  uint64_t u = v->v.u64;
  int64_t s = v->v.i64;
  switch (v->type) {
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_BOOL: {
    uint64_t max = v->type == STRATA_GGUF_BOOL ? 1 : UINT8_MAX;
    if (u > max) goto range;
    uint8_t x = (uint8_t)u;
    bb_put(b, &x, 1);
    return 0;
  }
  case STRATA_GGUF_INT8: {
    if (s < INT8_MIN || s > INT8_MAX) goto range;
    int8_t x = (int8_t)s;
    bb_put(b, &x, 1);
    return 0;
  }
  case STRATA_GGUF_UINT16: {
    if (u > UINT16_MAX) goto range;
    uint16_t x = (uint16_t)u;
    bb_put(b, &x, 2);
    return 0;
  }
  case STRATA_GGUF_INT16: {
    if (s < INT16_MIN || s > INT16_MAX) goto range;
    int16_t x = (int16_t)s;
    bb_put(b, &x, 2);
    return 0;
  }
  case STRATA_GGUF_UINT32: {
    if (u > UINT32_MAX) goto range;
    bb_u32(b, (uint32_t)u);
    return 0;
  }
  case STRATA_GGUF_INT32: {
    if (s < INT32_MIN || s > INT32_MAX) goto range;
    int32_t x = (int32_t)s;
    bb_put(b, &x, 4);
    return 0;
  }
  case STRATA_GGUF_FLOAT32: {
    float x = (float)v->v.f64;
    bb_put(b, &x, 4);
    return 0;
  }
  case STRATA_GGUF_UINT64:
    bb_u64(b, u);
    return 0;
  case STRATA_GGUF_INT64:
    bb_put(b, &s, 8);
    return 0;
  case STRATA_GGUF_FLOAT64:
    bb_put(b, &v->v.f64, 8);
    return 0;
  case STRATA_GGUF_STRING:
    if (v->v.str.len && !v->v.str.ptr)
      return werr(w, "key '%s': string is NULL", key);
    bb_str(b, v->v.str.ptr, v->v.str.len);
    return 0;
  case STRATA_GGUF_ARRAY:
    return ser_array(w, key, b, v, level + 1);
  }
  return werr(w, "key '%s': unknown value type %u", key, (unsigned)v->type);
range:
  return werr(w, "key '%s': value does not fit in %s", key,
              strata_gguf_vtype_name(v->type));
}

/* Stores key = blob (taking the blob), replacing an earlier value. */
static int put_kv(strata_gguf_writer_t *w, const char *key, struct bbuf *b) {
  if (b->oom) {
    free(b->p);
    return werr(w, "key '%s': out of memory", key);
  }
  size_t klen = strlen(key);
  for (size_t i = 0; i < w->n_kv; i++) {
    if (w->kvs[i].klen == klen && memcmp(w->kvs[i].key, key, klen) == 0) {
      free(w->kvs[i].blob);
      w->kvs[i].blob = b->p;
      w->kvs[i].blen = b->len;
      return 0;
    }
  }
  if (w->n_kv == w->cap_kv) {
    size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
    struct wkv *nk = strata_reallocarray(w->kvs, cap, sizeof *nk);
    if (!nk) {
      free(b->p);
      return werr(w, "key '%s': out of memory", key);
    }
    w->kvs = nk;
    w->cap_kv = cap;
  }
  char *k = strata_strndup(key, klen);
  if (!k) {
    free(b->p);
    return werr(w, "key '%s': out of memory", key);
  }
  w->kvs[w->n_kv++] = (struct wkv){k, klen, b->p, b->len};
  return 0;
}

static int check_key(strata_gguf_writer_t *w, const char *key) {
  if (check_open(w, "metadata")) return -1;
  if (!key || !key[0]) return werr(w, "metadata key is empty");
  return 0;
}

int strata_gguf_writer_set_value(strata_gguf_writer_t *w, const char *key,
                                 const struct strata_gguf_value *v) {
  if (check_key(w, key)) return -1;
  if (!v) return werr(w, "key '%s': no value", key);
  if (strcmp(key, "general.alignment") == 0) {
    /* the reader insists on this type, and so does llama.cpp */
    if (v->type != STRATA_GGUF_UINT32)
      return werr(w, "general.alignment must be uint32, not %s",
                  strata_gguf_vtype_name(v->type));
    uint64_t a = v->v.u64;
    if (a == 0 || a > UINT32_MAX || (a & (a - 1)) != 0)
      return werr(w, "general.alignment %" PRIu64 " is not a power of two", a);
  }
  struct bbuf b = {0};
  bb_u32(&b, (uint32_t)v->type);
  if (ser_payload(w, key, &b, v, 0)) {
    free(b.p);
    return -1;
  }
  if (put_kv(w, key, &b)) return -1;
  if (strcmp(key, "general.alignment") == 0) w->alignment = (uint32_t)v->v.u64;
  return 0;
}

static int set_u(strata_gguf_writer_t *w, const char *key,
                 enum strata_gguf_vtype t, uint64_t x) {
  struct strata_gguf_value v = {.type = t};
  v.v.u64 = x;
  return strata_gguf_writer_set_value(w, key, &v);
}

static int set_i(strata_gguf_writer_t *w, const char *key,
                 enum strata_gguf_vtype t, int64_t x) {
  struct strata_gguf_value v = {.type = t};
  v.v.i64 = x;
  return strata_gguf_writer_set_value(w, key, &v);
}

static int set_f(strata_gguf_writer_t *w, const char *key,
                 enum strata_gguf_vtype t, double x) {
  struct strata_gguf_value v = {.type = t};
  v.v.f64 = x;
  return strata_gguf_writer_set_value(w, key, &v);
}

int strata_gguf_writer_set_alignment(strata_gguf_writer_t *w,
                                     uint32_t alignment) {
  return set_u(w, "general.alignment", STRATA_GGUF_UINT32, alignment);
}
int strata_gguf_writer_set_u8(strata_gguf_writer_t *w, const char *key,
                              uint8_t v) {
  return set_u(w, key, STRATA_GGUF_UINT8, v);
}
int strata_gguf_writer_set_i8(strata_gguf_writer_t *w, const char *key,
                              int8_t v) {
  return set_i(w, key, STRATA_GGUF_INT8, v);
}
int strata_gguf_writer_set_u16(strata_gguf_writer_t *w, const char *key,
                               uint16_t v) {
  return set_u(w, key, STRATA_GGUF_UINT16, v);
}
int strata_gguf_writer_set_i16(strata_gguf_writer_t *w, const char *key,
                               int16_t v) {
  return set_i(w, key, STRATA_GGUF_INT16, v);
}
int strata_gguf_writer_set_u32(strata_gguf_writer_t *w, const char *key,
                               uint32_t v) {
  return set_u(w, key, STRATA_GGUF_UINT32, v);
}
int strata_gguf_writer_set_i32(strata_gguf_writer_t *w, const char *key,
                               int32_t v) {
  return set_i(w, key, STRATA_GGUF_INT32, v);
}
int strata_gguf_writer_set_u64(strata_gguf_writer_t *w, const char *key,
                               uint64_t v) {
  return set_u(w, key, STRATA_GGUF_UINT64, v);
}
int strata_gguf_writer_set_i64(strata_gguf_writer_t *w, const char *key,
                               int64_t v) {
  return set_i(w, key, STRATA_GGUF_INT64, v);
}
int strata_gguf_writer_set_f32(strata_gguf_writer_t *w, const char *key,
                               float v) {
  return set_f(w, key, STRATA_GGUF_FLOAT32, v);
}
int strata_gguf_writer_set_f64(strata_gguf_writer_t *w, const char *key,
                               double v) {
  return set_f(w, key, STRATA_GGUF_FLOAT64, v);
}
int strata_gguf_writer_set_bool(strata_gguf_writer_t *w, const char *key,
                                int v) {
  return set_u(w, key, STRATA_GGUF_BOOL, v != 0);
}

int strata_gguf_writer_set_strn(strata_gguf_writer_t *w, const char *key,
                                const char *s, size_t len) {
  struct strata_gguf_value v = {.type = STRATA_GGUF_STRING};
  v.v.str.ptr = s;
  v.v.str.len = len;
  return strata_gguf_writer_set_value(w, key, &v);
}

int strata_gguf_writer_set_str(strata_gguf_writer_t *w, const char *key,
                               const char *s) {
  if (!s) return check_key(w, key) ? -1 : werr(w, "key '%s': NULL", key);
  return strata_gguf_writer_set_strn(w, key, s, strlen(s));
}

int strata_gguf_writer_set_array(strata_gguf_writer_t *w, const char *key,
                                 enum strata_gguf_vtype elem_type,
                                 const void *data, uint64_t n) {
  if (check_key(w, key)) return -1;
  if (!is_numeric(elem_type))
    return werr(w, "key '%s': %s is not a numeric element type", key,
                strata_gguf_vtype_name(elem_type));
  struct strata_gguf_value v = {.type = STRATA_GGUF_ARRAY};
  v.v.arr.type = elem_type;
  v.v.arr.n = n;
  v.v.arr.data = data;
  return strata_gguf_writer_set_value(w, key, &v);
}

int strata_gguf_writer_set_strn_array(strata_gguf_writer_t *w, const char *key,
                                      const struct strata_gguf_str *strs,
                                      uint64_t n) {
  struct strata_gguf_value v = {.type = STRATA_GGUF_ARRAY};
  v.v.arr.type = STRATA_GGUF_STRING;
  v.v.arr.n = n;
  v.v.arr.strs = strs;
  return strata_gguf_writer_set_value(w, key, &v);
}

int strata_gguf_writer_set_str_array(strata_gguf_writer_t *w, const char *key,
                                     const char *const *strs, uint64_t n) {
  /* Serialized directly: no temporary array of lengths for 150k tokens. */
  if (check_key(w, key)) return -1;
  if (n && !strs) return werr(w, "key '%s': strings are NULL", key);
  if (strcmp(key, "general.alignment") == 0)
    return werr(w, "general.alignment must be uint32, not array");
  struct bbuf b = {0};
  bb_u32(&b, STRATA_GGUF_ARRAY);
  bb_u32(&b, STRATA_GGUF_STRING);
  bb_u64(&b, n);
  for (uint64_t i = 0; i < n; i++) {
    if (!strs[i]) {
      free(b.p);
      return werr(w, "key '%s': string %" PRIu64 " is NULL", key, i);
    }
    bb_str(&b, strs[i], strlen(strs[i]));
  }
  return put_kv(w, key, &b);
}

/* ---- tensors ----------------------------------------------------------- */

int strata_gguf_writer_add_tensor(strata_gguf_writer_t *w, const char *name,
                                  uint32_t type, uint32_t n_dims,
                                  const uint64_t *ne, const void *data) {
  if (check_open(w, "tensor")) return -1;
  if (!name || !name[0]) return werr(w, "tensor name is empty");
  size_t nlen = strlen(name);
  for (size_t i = 0; i < w->n_t; i++)
    if (w->ts[i].nlen == nlen && memcmp(w->ts[i].name, name, nlen) == 0)
      return werr(w, "tensor '%s' is declared twice", name);
  if (n_dims < 1 || n_dims > STRATA_GGUF_MAX_DIMS || !ne)
    return werr(w, "tensor '%s': %" PRIu32 " dimensions (1 to %d allowed)",
                name, n_dims, STRATA_GGUF_MAX_DIMS);
  uint32_t bs, ts;
  if (strata_ggml_type_layout(type, &bs, &ts) != 0)
    return werr(w, "tensor '%s': unknown ggml type %" PRIu32, name, type);
  struct wtensor t = {.type = type, .n_dims = n_dims, .data = data};
  uint64_t nel = 1;
  for (uint32_t d = 0; d < STRATA_GGUF_MAX_DIMS; d++) {
    t.ne[d] = d < n_dims ? ne[d] : 1;
    if (t.ne[d] > (uint64_t)INT64_MAX ||
        (t.ne[d] && nel > (uint64_t)INT64_MAX / t.ne[d]))
      return werr(w, "tensor '%s': element count overflows int64", name);
    nel *= t.ne[d];
  }
  if (t.ne[0] % bs)
    return werr(w,
                "tensor '%s': ne[0] = %" PRIu64 " is not a multiple of the %s "
                "block size %" PRIu32,
                name, t.ne[0], strata_ggml_type_name(type), bs);
  if (nel / bs > UINT64_MAX / ts)
    return werr(w, "tensor '%s': byte count overflows", name);
  t.nbytes = nel / bs * ts;
  if (w->n_t == w->cap_t) {
    size_t cap = w->cap_t ? w->cap_t * 2 : 16;
    struct wtensor *nt = strata_reallocarray(w->ts, cap, sizeof *nt);
    if (!nt) return werr(w, "tensor '%s': out of memory", name);
    w->ts = nt;
    w->cap_t = cap;
  }
  t.name = strata_strndup(name, nlen);
  if (!t.name) return werr(w, "tensor '%s': out of memory", name);
  t.nlen = nlen;
  w->ts[w->n_t++] = t;
  return 0;
}

static uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}

static uint64_t header_size(const strata_gguf_writer_t *w) {
  uint64_t h = 4 + 4 + 8 + 8;
  for (size_t i = 0; i < w->n_kv; i++)
    h += 8 + w->kvs[i].klen + w->kvs[i].blen;
  for (size_t i = 0; i < w->n_t; i++)
    h += 8 + w->ts[i].nlen + 4 + 8 * (uint64_t)w->ts[i].n_dims + 4 + 8;
  return h;
}

/* Size of the data section; stores each tensor's offset when asked to. */
static uint64_t data_size(const strata_gguf_writer_t *w, struct wtensor *ts) {
  uint64_t off = 0;
  for (size_t i = 0; i < w->n_t; i++) {
    if (ts) ts[i].offset = off;
    off = align_up(off + w->ts[i].nbytes, w->alignment);
  }
  return off;
}

/* Assigns tensor offsets at begin: the alignment may have been set after
 * the tensors were declared. */
static void layout(strata_gguf_writer_t *w) {
  w->data_offset = align_up(header_size(w), w->alignment);
  w->file_size = w->data_offset + data_size(w, w->ts);
}

uint64_t strata_gguf_writer_n_tensors(const strata_gguf_writer_t *w) {
  return w->n_t;
}

uint64_t strata_gguf_writer_data_offset(const strata_gguf_writer_t *w) {
  return align_up(header_size(w), w->alignment);
}

uint64_t strata_gguf_writer_file_size(const strata_gguf_writer_t *w) {
  return strata_gguf_writer_data_offset(w) + data_size(w, NULL);
}

/* ---- output ------------------------------------------------------------ */

static int out(strata_gguf_writer_t *w, const void *d, size_t n) {
  if (n && fwrite(d, 1, n, w->f) != n)
    return werr(w, "write error at byte %" PRIu64 ": %s", w->pos,
                strerror(errno ? errno : EIO));
  w->pos += n;
  return 0;
}

static int out_u32(strata_gguf_writer_t *w, uint32_t v) {
  return out(w, &v, 4);
}
static int out_u64(strata_gguf_writer_t *w, uint64_t v) {
  return out(w, &v, 8);
}

static int pad_to(strata_gguf_writer_t *w, uint64_t target) {
  static const uint8_t zeros[4096];
  while (w->pos < target) {
    uint64_t k = target - w->pos;
    if (out(w, zeros, k < sizeof zeros ? (size_t)k : sizeof zeros)) return -1;
  }
  return 0;
}

/* Moves past finished tensors, writing the padding before each tensor and
 * the data of tensors declared with a pointer. Stops at the first tensor
 * that waits for streamed bytes, or pads the file's end. */
static int advance(strata_gguf_writer_t *w) {
  while (w->cur < w->n_t) {
    struct wtensor *t = &w->ts[w->cur];
    if (w->cur_done == 0 && pad_to(w, w->data_offset + t->offset)) return -1;
    if (w->cur_done == 0 && t->data && t->nbytes) {
      /* fwrite takes size_t; a tensor larger than that cannot be in memory */
      if (out(w, t->data, (size_t)t->nbytes)) return -1;
      w->cur_done = t->nbytes;
    }
    if (w->cur_done < t->nbytes) return 0;
    w->cur++;
    w->cur_done = 0;
  }
  return pad_to(w, w->file_size);
}

int strata_gguf_writer_begin(strata_gguf_writer_t *w, FILE *f, char *err,
                             size_t errlen) {
  if (check_open(w, "begin")) return report(w, err, errlen);
  if (!f) {
    werr(w, "begin: no file");
    return report(w, err, errlen);
  }
  layout(w);
  w->f = f;
  w->pos = 0;
  w->cur = 0;
  w->cur_done = 0;
  int bad = out(w, "GGUF", 4) || out_u32(w, w->version) || out_u64(w, w->n_t) ||
            out_u64(w, w->n_kv);
  for (size_t i = 0; !bad && i < w->n_kv; i++)
    bad = out_u64(w, w->kvs[i].klen) || out(w, w->kvs[i].key, w->kvs[i].klen) ||
          out(w, w->kvs[i].blob, w->kvs[i].blen);
  for (size_t i = 0; !bad && i < w->n_t; i++) {
    const struct wtensor *t = &w->ts[i];
    bad = out_u64(w, t->nlen) || out(w, t->name, t->nlen) ||
          out_u32(w, t->n_dims);
    for (uint32_t d = 0; !bad && d < t->n_dims; d++)
      bad = out_u64(w, t->ne[d]);
    bad = bad || out_u32(w, t->type) || out_u64(w, t->offset);
  }
  if (bad || pad_to(w, w->data_offset) || advance(w))
    return report(w, err, errlen);
  return 0;
}

int strata_gguf_writer_write(strata_gguf_writer_t *w, const void *data,
                             size_t n, char *err, size_t errlen) {
  if (w->err[0]) return report(w, err, errlen);
  if (!w->f) {
    werr(w, "write: strata_gguf_writer_begin was not called");
    return report(w, err, errlen);
  }
  const uint8_t *p = data;
  while (n > 0) {
    if (advance(w)) return report(w, err, errlen);
    if (w->cur == w->n_t) {
      werr(w, "write: %zu bytes more than the tensors declared", n);
      return report(w, err, errlen);
    }
    struct wtensor *t = &w->ts[w->cur];
    uint64_t left = t->nbytes - w->cur_done;
    size_t k = left < n ? (size_t)left : n;
    if (out(w, p, k)) return report(w, err, errlen);
    w->cur_done += k;
    p += k;
    n -= k;
  }
  if (advance(w)) return report(w, err, errlen);
  return 0;
}

int strata_gguf_writer_end(strata_gguf_writer_t *w, char *err, size_t errlen) {
  if (w->err[0]) return report(w, err, errlen);
  if (!w->f) {
    werr(w, "end: strata_gguf_writer_begin was not called");
    return report(w, err, errlen);
  }
  if (advance(w)) return report(w, err, errlen);
  if (w->cur < w->n_t) {
    const struct wtensor *t = &w->ts[w->cur];
    werr(w, "tensor '%s': %" PRIu64 " of its %" PRIu64 " data bytes written",
         t->name, w->cur_done, t->nbytes);
    return report(w, err, errlen);
  }
  if (fflush(w->f) != 0 || ferror(w->f)) {
    werr(w, "write error: %s", strerror(errno ? errno : EIO));
    return report(w, err, errlen);
  }
  /* back to building: the same writer may write another copy */
  w->f = NULL;
  return 0;
}

/* The all-at-once paths need every tensor's data up front. */
static int check_all_data(strata_gguf_writer_t *w) {
  if (check_open(w, "write")) return -1;
  for (size_t i = 0; i < w->n_t; i++)
    if (!w->ts[i].data && w->ts[i].nbytes)
      return werr(w, "tensor '%s' was declared without data", w->ts[i].name);
  return 0;
}

int strata_gguf_writer_write_file(strata_gguf_writer_t *w, const char *path,
                                  char *err, size_t errlen) {
  if (check_all_data(w)) return report(w, err, errlen);
  FILE *f = fopen(path, "wb");
  if (!f) return strata_errf(err, errlen, "%s: %s", path, strerror(errno));
  int rc = strata_gguf_writer_begin(w, f, err, errlen) ||
           strata_gguf_writer_end(w, err, errlen);
  w->f = NULL;
  if (fclose(f) != 0 && rc == 0) {
    rc = -1;
    strata_errf(err, errlen, "%s: %s", path, strerror(errno));
  }
  if (rc) {
    remove(path);
    return -1;
  }
  return 0;
}

int strata_gguf_writer_write_memory(strata_gguf_writer_t *w, void **outp,
                                    size_t *size, char *err, size_t errlen) {
  *outp = NULL;
  *size = 0;
  if (check_all_data(w)) return report(w, err, errlen);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    return strata_errf(err, errlen, "open_memstream: %s", strerror(errno));
  int rc = strata_gguf_writer_begin(w, f, err, errlen) ||
           strata_gguf_writer_end(w, err, errlen);
  w->f = NULL;
  if (fclose(f) != 0 && rc == 0) rc = strata_errf(err, errlen, "out of memory");
  if (rc) {
    free(buf);
    return -1;
  }
  *outp = buf;
  *size = len;
  return 0;
}
