/* GGUF v2/v3 reader.
 *
 * Hand-written because Debian 12 packages no GGUF library (ggml's reader is
 * only vendored inside llama.cpp/whisper.cpp sources, never shipped as a
 * library), and the format is small: a header, typed key/value metadata, a
 * tensor table and an aligned data section.
 *
 * Hostile input is the normal case. The header region is parsed twice: the
 * first pass validates everything and only counts what must be stored
 * (string bytes, string slots, nested array values), allocating nothing, so
 * a header claiming 2^63 entries costs nothing. The second pass fills
 * buffers sized exactly from those counts: one arena for every key and
 * string (each copied with a terminating NUL), one array of string slots and
 * one of nested array values. Every allocation is therefore bounded by a
 * small multiple of the file size. Numeric arrays and tensor data stay in
 * the mapping. */
#include "config.h"

#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <strata/quant.h>

#include "util.h"

/* Fields are copied out of the file with memcpy into host integers, which
 * is only right on a little-endian host (every target we build for). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

#define VTYPE_MAX STRATA_GGUF_FLOAT64
/* Smallest possible encodings, used to reject absurd counts up front. */
#define MIN_KV_BYTES 13 /* key length 8 + value type 4 + uint8 value 1 */
#define MIN_TENSOR_BYTES                                                       \
  32                       /* name length 8 + n_dims 4 + dim 8 + type 4 +      \
                              offset 8 */
#define MIN_ARRAY_BYTES 12 /* element type 4 + length 8 */

/* Open-addressing index from a string to its position in an array of
 * structs (keys in kvs, names in tensors); slots hold position + 1. */
struct strindex {
  uint64_t *slot;
  uint64_t mask;
  const char *base; /* address of the strata_gguf_str of item 0 */
  size_t stride;
};

struct tensor_where {
  uint64_t name_off;   /* file offset of the name's length field */
  uint64_t offset_off; /* file offset of the offset field */
};

struct strata_gguf {
  const uint8_t *base;
  uint64_t size;
  void *map; /* NULL for caller buffers and empty files */
  size_t map_len;

  uint32_t version;
  uint64_t alignment;
  uint64_t data_offset;

  uint64_t n_kv;
  struct strata_gguf_kv *kvs;
  uint64_t *kv_off; /* file offset of each key, for error messages */
  uint64_t n_tensors;
  struct strata_gguf_tensor *tensors;
  struct tensor_where *t_where;

  char *arena;
  struct strata_gguf_str *strs;
  struct strata_gguf_value *items;
  struct strindex kv_index, t_index;
  uint64_t heap;
};

/* ---- type tables ------------------------------------------------------- */

size_t strata_gguf_vtype_size(enum strata_gguf_vtype t) {
  switch (t) {
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_INT8:
  case STRATA_GGUF_BOOL:
    return 1;
  case STRATA_GGUF_UINT16:
  case STRATA_GGUF_INT16:
    return 2;
  case STRATA_GGUF_UINT32:
  case STRATA_GGUF_INT32:
  case STRATA_GGUF_FLOAT32:
    return 4;
  case STRATA_GGUF_UINT64:
  case STRATA_GGUF_INT64:
  case STRATA_GGUF_FLOAT64:
    return 8;
  case STRATA_GGUF_STRING:
  case STRATA_GGUF_ARRAY:
    return 0;
  }
  return 0;
}

const char *strata_gguf_vtype_name(enum strata_gguf_vtype t) {
  static const char *const names[] = {
      "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
      "bool",  "string", "array",  "uint64", "int64",  "float64"};
  return (unsigned)t < STRATA_ARRAY_LEN(names) ? names[t] : "unknown";
}

static const struct ggml_type_info {
  uint32_t type;
  const char *name;
  uint32_t block_size, type_size;
} ggml_types[] = {
    /* Names follow ggml_type_name() so messages match llama.cpp tooling. */
    {STRATA_TYPE_F32, "f32", 1, 4},
    {STRATA_TYPE_F16, "f16", 1, 2},
    {STRATA_TYPE_Q4_0, "q4_0", 32, 18},
    {STRATA_TYPE_Q4_1, "q4_1", 32, 20},
    {STRATA_TYPE_Q5_0, "q5_0", 32, 22},
    {STRATA_TYPE_Q5_1, "q5_1", 32, 24},
    {STRATA_TYPE_Q8_0, "q8_0", 32, 34},
    {STRATA_TYPE_Q8_1, "q8_1", 32, 36},
    {STRATA_TYPE_Q2_K, "q2_K", 256, 84},
    {STRATA_TYPE_Q3_K, "q3_K", 256, 110},
    {STRATA_TYPE_Q4_K, "q4_K", 256, 144},
    {STRATA_TYPE_Q5_K, "q5_K", 256, 176},
    {STRATA_TYPE_Q6_K, "q6_K", 256, 210},
    {STRATA_TYPE_Q8_K, "q8_K", 256, 292},
    /* The i-quants and ternary types have no enum name in quant.h yet, but
     * real files use them and `strata inspect` should still size them. */
    {16, "iq2_xxs", 256, 66},
    {17, "iq2_xs", 256, 74},
    {18, "iq3_xxs", 256, 98},
    {19, "iq1_s", 256, 50},
    {20, "iq4_nl", 32, 18},
    {21, "iq3_s", 256, 110},
    {22, "iq2_s", 256, 82},
    {23, "iq4_xs", 256, 136},
    {STRATA_TYPE_I8, "i8", 1, 1},
    {STRATA_TYPE_I16, "i16", 1, 2},
    {STRATA_TYPE_I32, "i32", 1, 4},
    {STRATA_TYPE_I64, "i64", 1, 8},
    {STRATA_TYPE_F64, "f64", 1, 8},
    {29, "iq1_m", 256, 56},
    {STRATA_TYPE_BF16, "bf16", 1, 2},
    {34, "tq1_0", 256, 54},
    {35, "tq2_0", 256, 66},
    {39, "mxfp4", 32, 17},
};

static const struct ggml_type_info *ggml_type_find(uint32_t type) {
  for (size_t i = 0; i < STRATA_ARRAY_LEN(ggml_types); i++)
    if (ggml_types[i].type == type) return &ggml_types[i];
  return NULL;
}

int strata_ggml_type_layout(uint32_t type, uint32_t *block_size,
                            uint32_t *type_size) {
  const struct ggml_type_info *t = ggml_type_find(type);
  if (block_size) *block_size = t ? t->block_size : 0;
  if (type_size) *type_size = t ? t->type_size : 0;
  return t ? 0 : -1;
}

const char *strata_ggml_type_name(uint32_t type) {
  const struct ggml_type_info *t = ggml_type_find(type);
  return t ? t->name : "unknown";
}

/* ---- string index ------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, uint64_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (uint64_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ull;
  }
  return h;
}

static const struct strata_gguf_str *si_str(const struct strindex *x,
                                            uint64_t i) {
  return (const struct strata_gguf_str *)(const void *)(x->base +
                                                        i * x->stride);
}

static int si_init(struct strindex *x, uint64_t n, const void *base,
                   size_t stride, uint64_t *heap) {
  uint64_t cap = 16;
  while (cap < 2 * n)
    cap *= 2;
  x->slot = strata_calloc(cap, sizeof *x->slot);
  if (!x->slot) return -1;
  *heap += cap * sizeof *x->slot;
  x->mask = cap - 1;
  x->base = base;
  x->stride = stride;
  return 0;
}

/* Position of the item equal to (s, n), or UINT64_MAX; *where gets the slot
 * where it is or would go. */
static uint64_t si_lookup(const struct strindex *x, const char *s, uint64_t n,
                          uint64_t *where) {
  uint64_t h = hash_bytes(s, n) & x->mask;
  while (x->slot[h]) {
    const struct strata_gguf_str *e = si_str(x, x->slot[h] - 1);
    if (e->len == n && memcmp(e->ptr, s, n) == 0) {
      *where = h;
      return x->slot[h] - 1;
    }
    h = (h + 1) & x->mask;
  }
  *where = h;
  return UINT64_MAX;
}

/* Adds item i; returns the position of an earlier equal item, or
 * UINT64_MAX when i is new. */
static uint64_t si_insert(struct strindex *x, uint64_t i) {
  const struct strata_gguf_str *s = si_str(x, i);
  uint64_t where;
  uint64_t prev = si_lookup(x, s->ptr, s->len, &where);
  if (prev == UINT64_MAX) x->slot[where] = i + 1;
  return prev;
}

/* ---- parser ----------------------------------------------------------- */

struct parser {
  const uint8_t *p;
  uint64_t size, pos; /* invariant: pos <= size */
  const char *src;    /* path or "<memory>" for messages */
  char *err;
  size_t errlen;

  int fill; /* 0: validate and count; 1: store into g */
  strata_gguf_t *g;
  uint64_t alignment;
  uint64_t n_kv, n_tensors;
  /* what pass 1 counted, what pass 2 has used */
  uint64_t arena_need, n_strs, n_items;
  uint64_t arena_pos, strs_pos, items_pos;

  /* Where we are, for messages: "metadata[3] 'key'[5][2] field". */
  const char *sect;
  uint64_t idx;
  const uint8_t *name;
  uint64_t name_len;
  int depth;
  uint64_t elem[STRATA_GGUF_MAX_DEPTH + 1];
};

static void buf_add(char *buf, size_t cap, size_t *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void buf_add(char *buf, size_t cap, size_t *n, const char *fmt, ...) {
  if (*n >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(buf + *n, cap - *n, fmt, ap);
  va_end(ap);
  if (k > 0) *n = (size_t)k >= cap - *n ? cap - 1 : *n + (size_t)k;
}

/* A key or name for a message: printable ASCII kept, the rest \xNN, cut
 * after max bytes so one hostile name cannot flood the line. ':' is escaped
 * too, so the field part of `src: offset N: field: what` never holds one. */
static void escape_name(char *out, size_t cap, const uint8_t *s, uint64_t len,
                        uint64_t max) {
  size_t n = 0;
  out[0] = '\0';
  for (uint64_t i = 0; i < len && i < max; i++) {
    uint8_t c = s[i];
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\' && c != ':')
      buf_add(out, cap, &n, "%c", c);
    else
      buf_add(out, cap, &n, "\\x%02x", c);
  }
  if (len > max) buf_add(out, cap, &n, "...");
}

static int perr(struct parser *ps, uint64_t off, const char *field,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int perr(struct parser *ps, uint64_t off, const char *field,
                const char *fmt, ...) {
  char ctx[512];
  size_t n = 0;
  ctx[0] = '\0';
  if (ps->sect) {
    buf_add(ctx, sizeof ctx, &n, "%s[%" PRIu64 "]", ps->sect, ps->idx);
    if (ps->name) {
      char e[300];
      escape_name(e, sizeof e, ps->name, ps->name_len, 64);
      buf_add(ctx, sizeof ctx, &n, " '%s'", e);
    }
    for (int d = 0; d < ps->depth; d++)
      buf_add(ctx, sizeof ctx, &n, "[%" PRIu64 "]", ps->elem[d]);
    buf_add(ctx, sizeof ctx, &n, " ");
  }
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return strata_errf(ps->err, ps->errlen, "%s: offset %" PRIu64 ": %s%s: %s",
                     ps->src, off, ctx, field, msg);
}

static int need(struct parser *ps, uint64_t n, const char *field) {
  uint64_t rem = ps->size - ps->pos;
  if (rem >= n) return 0;
  return perr(ps, ps->pos, field,
              "truncated: needs %" PRIu64 " bytes, %" PRIu64
              " remain (file size %" PRIu64 ")",
              n, rem, ps->size);
}

static int rd_u32(struct parser *ps, const char *field, uint32_t *v) {
  if (need(ps, 4, field)) return -1;
  memcpy(v, ps->p + ps->pos, 4);
  ps->pos += 4;
  return 0;
}

static int rd_u64(struct parser *ps, const char *field, uint64_t *v) {
  if (need(ps, 8, field)) return -1;
  memcpy(v, ps->p + ps->pos, 8);
  ps->pos += 8;
  return 0;
}

/* A string: uint64 length, then bytes. Pass 1 leaves out->ptr in the file
 * (not NUL-terminated); pass 2 copies into the arena. */
static int rd_str(struct parser *ps, const char *lenfield,
                  struct strata_gguf_str *out) {
  uint64_t off = ps->pos, len;
  if (rd_u64(ps, lenfield, &len)) return -1;
  uint64_t rem = ps->size - ps->pos;
  if (len > rem)
    return perr(ps, off, lenfield,
                "%" PRIu64 " bytes cannot fit in the remaining %" PRIu64
                " bytes",
                len, rem);
  const char *src = (const char *)ps->p + ps->pos;
  ps->pos += len;
  out->len = len;
  if (ps->fill) {
    char *dst = ps->g->arena + ps->arena_pos;
    if (len) memcpy(dst, src, len);
    dst[len] = '\0';
    ps->arena_pos += len + 1;
    out->ptr = dst;
  } else {
    ps->arena_need += len + 1;
    out->ptr = src;
  }
  return 0;
}

static void decode_scalar(uint32_t type, const uint8_t *b,
                          struct strata_gguf_value *out) {
  switch (type) {
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_BOOL:
    out->v.u64 = b[0];
    break;
  case STRATA_GGUF_INT8:
    out->v.i64 = (int8_t)b[0];
    break;
  case STRATA_GGUF_UINT16: {
    uint16_t x;
    memcpy(&x, b, 2);
    out->v.u64 = x;
    break;
  }
  case STRATA_GGUF_INT16: {
    int16_t x;
    memcpy(&x, b, 2);
    out->v.i64 = x;
    break;
  }
  case STRATA_GGUF_UINT32: {
    uint32_t x;
    memcpy(&x, b, 4);
    out->v.u64 = x;
    break;
  }
  case STRATA_GGUF_INT32: {
    int32_t x;
    memcpy(&x, b, 4);
    out->v.i64 = x;
    break;
  }
  case STRATA_GGUF_FLOAT32: {
    float x;
    memcpy(&x, b, 4);
    out->v.f64 = x;
    break;
  }
  case STRATA_GGUF_UINT64:
    memcpy(&out->v.u64, b, 8);
    break;
  case STRATA_GGUF_INT64:
    memcpy(&out->v.i64, b, 8);
    break;
  case STRATA_GGUF_FLOAT64:
    memcpy(&out->v.f64, b, 8);
    break;
  default:
    break;
  }
}

static int parse_array(struct parser *ps, struct strata_gguf_value *out,
                       int level);

/* type is already known to be valid. level: how many arrays enclose it. */
static int parse_value(struct parser *ps, uint32_t type,
                       struct strata_gguf_value *out, int level) {
  memset(out, 0, sizeof *out);
  out->type = (enum strata_gguf_vtype)type;
  if (type == STRATA_GGUF_STRING)
    return rd_str(ps, "string length", &out->v.str);
  if (type == STRATA_GGUF_ARRAY) return parse_array(ps, out, level + 1);
  uint64_t off = ps->pos;
  if (need(ps, strata_gguf_vtype_size(type), "value")) return -1;
  decode_scalar(type, ps->p + off, out);
  if (type == STRATA_GGUF_BOOL && out->v.u64 > 1)
    return perr(ps, off, "value", "bool byte %" PRIu64 " is neither 0 nor 1",
                out->v.u64);
  ps->pos += strata_gguf_vtype_size(type);
  return 0;
}

/* level: 1 for an array that is a metadata value, 2 for its elements... */
static int parse_array(struct parser *ps, struct strata_gguf_value *out,
                       int level) {
  uint64_t toff = ps->pos, noff;
  uint32_t et;
  uint64_t n;
  if (rd_u32(ps, "array type", &et)) return -1;
  if (et > VTYPE_MAX)
    return perr(ps, toff, "array type", "unknown value type %" PRIu32, et);
  if (et == STRATA_GGUF_ARRAY && level >= STRATA_GGUF_MAX_DEPTH)
    return perr(ps, toff, "array type", "arrays nest deeper than %d levels",
                STRATA_GGUF_MAX_DEPTH);
  noff = ps->pos;
  if (rd_u64(ps, "array length", &n)) return -1;
  uint64_t esize = strata_gguf_vtype_size(et);
  uint64_t min = et == STRATA_GGUF_STRING  ? 8
                 : et == STRATA_GGUF_ARRAY ? MIN_ARRAY_BYTES
                                           : esize;
  uint64_t rem = ps->size - ps->pos;
  if (n > rem / min)
    return perr(ps, noff, "array length",
                "%" PRIu64 " %s elements cannot fit in the remaining %" PRIu64
                " bytes",
                n, strata_gguf_vtype_name(et), rem);
  out->type = STRATA_GGUF_ARRAY;
  out->v.arr.type = (enum strata_gguf_vtype)et;
  out->v.arr.n = n;
  out->v.arr.data = NULL;
  out->v.arr.strs = NULL;
  out->v.arr.items = NULL;

  int d = ps->depth;
  if (et == STRATA_GGUF_STRING) {
    struct strata_gguf_str *s = NULL, tmp;
    if (ps->fill) {
      s = ps->g->strs + ps->strs_pos;
      ps->strs_pos += n;
      out->v.arr.strs = s;
    } else {
      ps->n_strs += n;
    }
    ps->depth = d + 1;
    for (uint64_t i = 0; i < n; i++) {
      ps->elem[d] = i;
      if (rd_str(ps, "string length", s ? &s[i] : &tmp)) return -1;
    }
  } else if (et == STRATA_GGUF_ARRAY) {
    struct strata_gguf_value *it = NULL, tmp;
    if (ps->fill) {
      it = ps->g->items + ps->items_pos;
      ps->items_pos += n;
      out->v.arr.items = it;
    } else {
      ps->n_items += n;
    }
    ps->depth = d + 1;
    for (uint64_t i = 0; i < n; i++) {
      ps->elem[d] = i;
      struct strata_gguf_value *v = it ? &it[i] : &tmp;
      memset(v, 0, sizeof *v);
      if (parse_array(ps, v, level + 1)) return -1;
    }
  } else {
    out->v.arr.data = ps->p + ps->pos;
    if (et == STRATA_GGUF_BOOL && !ps->fill) {
      for (uint64_t i = 0; i < n; i++) {
        uint8_t b = ps->p[ps->pos + i];
        if (b > 1) {
          ps->elem[d] = i;
          ps->depth = d + 1;
          return perr(ps, ps->pos + i, "value",
                      "bool byte %u is neither 0 nor 1", b);
        }
      }
    }
    ps->pos += n * esize;
  }
  ps->depth = d;
  return 0;
}

static const char *const dim_field[STRATA_GGUF_MAX_DIMS] = {"dim[0]", "dim[1]",
                                                            "dim[2]", "dim[3]"};

static int parse_header(struct parser *ps) {
  strata_gguf_t *g = ps->g;
  ps->sect = NULL;
  if (need(ps, 4, "magic")) return -1;
  if (memcmp(ps->p, "GGUF", 4) != 0) {
    char e[64];
    escape_name(e, sizeof e, ps->p, 4, 4);
    if (memcmp(ps->p, "FUGG", 4) == 0)
      return perr(ps, 0, "magic",
                  "'FUGG' is a byte-swapped (big-endian) GGUF file, which "
                  "is not supported");
    return perr(ps, 0, "magic", "'%s' is not 'GGUF': not a GGUF file", e);
  }
  ps->pos = 4;
  uint32_t version;
  if (rd_u32(ps, "version", &version)) return -1;
  if (version == 1)
    return perr(ps, 4, "version",
                "GGUF v1 (32-bit counts) is not supported; convert the "
                "file to v3");
  if (version == 0x02000000u || version == 0x03000000u)
    return perr(ps, 4, "version",
                "%" PRIu32 " is a byte-swapped %u: big-endian GGUF files are "
                "not supported",
                version, (unsigned)(version >> 24));
  if (version != 2 && version != 3)
    return perr(ps, 4, "version",
                "unsupported version %" PRIu32 " (expected 2 or 3)", version);
  g->version = version;
  if (rd_u64(ps, "n_tensors", &ps->n_tensors)) return -1;
  if (rd_u64(ps, "n_kv", &ps->n_kv)) return -1;
  uint64_t rem = ps->size - ps->pos;
  if (ps->n_tensors > rem / MIN_TENSOR_BYTES)
    return perr(ps, 8, "n_tensors",
                "%" PRIu64 " tensor infos cannot fit in the remaining %" PRIu64
                " bytes",
                ps->n_tensors, rem);
  if (ps->n_kv > (rem - ps->n_tensors * MIN_TENSOR_BYTES) / MIN_KV_BYTES) {
    if (ps->n_tensors == 0)
      return perr(ps, 16, "n_kv",
                  "%" PRIu64 " key/value pairs cannot fit in the remaining "
                  "%" PRIu64 " bytes",
                  ps->n_kv, rem);
    return perr(ps, 16, "n_kv",
                "%" PRIu64 " key/value pairs and %" PRIu64
                " tensor infos cannot fit in the remaining %" PRIu64 " bytes",
                ps->n_kv, ps->n_tensors, rem);
  }
  return 0;
}

/* Reads a key or a tensor name: non-empty and free of NUL bytes. Points
 * ps->name at it so later messages can say whose field was bad. */
static int rd_name(struct parser *ps, const char *len_field, const char *field,
                   struct strata_gguf_str *out, uint64_t *off) {
  *off = ps->pos;
  if (rd_str(ps, len_field, out)) return -1;
  const uint8_t *raw = ps->p + *off + 8;
  ps->name = raw;
  ps->name_len = out->len;
  if (out->len == 0) return perr(ps, *off, field, "empty %s", field);
  const uint8_t *nul = memchr(raw, 0, out->len);
  if (nul)
    return perr(ps, *off + 8 + (uint64_t)(nul - raw), field,
                "contains a NUL byte");
  return 0;
}

static int parse_kvs(struct parser *ps) {
  strata_gguf_t *g = ps->g;
  for (uint64_t i = 0; i < ps->n_kv; i++) {
    ps->sect = "metadata";
    ps->idx = i;
    ps->name = NULL;
    ps->depth = 0;
    uint64_t koff;
    struct strata_gguf_str key;
    if (rd_name(ps, "key length", "key", &key, &koff)) return -1;
    const uint8_t *raw = ps->p + koff + 8;
    uint64_t toff = ps->pos;
    uint32_t type;
    if (rd_u32(ps, "value type", &type)) return -1;
    if (type > VTYPE_MAX)
      return perr(ps, toff, "value type", "unknown value type %" PRIu32, type);
    int is_align = key.len == 17 && memcmp(raw, "general.alignment", 17) == 0;
    if (is_align && type != STRATA_GGUF_UINT32)
      return perr(ps, toff, "value type",
                  "general.alignment must be uint32, not %s",
                  strata_gguf_vtype_name((enum strata_gguf_vtype)type));
    uint64_t voff = ps->pos;
    struct strata_gguf_value tmp;
    struct strata_gguf_value *v = ps->fill ? &g->kvs[i].value : &tmp;
    if (parse_value(ps, type, v, 0)) return -1;
    if (is_align) {
      uint64_t a = v->v.u64;
      if (a == 0 || (a & (a - 1)) != 0)
        return perr(ps, voff, "value",
                    "alignment %" PRIu64 " is not a power of two", a);
      ps->alignment = a;
    }
    if (ps->fill) {
      g->kvs[i].key = key;
      g->kv_off[i] = koff;
    }
  }
  return 0;
}

static int parse_tensor_infos(struct parser *ps) {
  strata_gguf_t *g = ps->g;
  for (uint64_t i = 0; i < ps->n_tensors; i++) {
    ps->sect = "tensor";
    ps->idx = i;
    ps->name = NULL;
    ps->depth = 0;
    uint64_t noff;
    struct strata_gguf_str name;
    if (rd_name(ps, "name length", "name", &name, &noff)) return -1;

    uint64_t doff = ps->pos;
    uint32_t n_dims;
    if (rd_u32(ps, "n_dims", &n_dims)) return -1;
    if (n_dims == 0 || n_dims > STRATA_GGUF_MAX_DIMS)
      return perr(ps, doff, "n_dims", "%" PRIu32 " is not between 1 and %d",
                  n_dims, STRATA_GGUF_MAX_DIMS);
    uint64_t ne[STRATA_GGUF_MAX_DIMS] = {1, 1, 1, 1};
    uint64_t ne_off[STRATA_GGUF_MAX_DIMS] = {0, 0, 0, 0};
    uint64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
      ne_off[d] = ps->pos;
      if (rd_u64(ps, dim_field[d], &ne[d])) return -1;
      /* ggml counts elements in int64_t */
      if (ne[d] > (uint64_t)INT64_MAX)
        return perr(ps, ne_off[d], dim_field[d],
                    "%" PRIu64 " does not fit in int64", ne[d]);
      if (ne[d] != 0 && nel > (uint64_t)INT64_MAX / ne[d])
        return perr(ps, ne_off[d], dim_field[d],
                    "the element count overflows int64 at %" PRIu64, ne[d]);
      nel *= ne[d];
    }
    uint64_t tyoff = ps->pos;
    uint32_t type;
    if (rd_u32(ps, "type", &type)) return -1;
    uint32_t bs, ts;
    if (strata_ggml_type_layout(type, &bs, &ts) != 0)
      return perr(ps, tyoff, "type", "unknown ggml type %" PRIu32, type);
    if (ne[0] % bs != 0)
      return perr(ps, ne_off[0], "dim[0]",
                  "%" PRIu64 " is not a multiple of the %s block size %" PRIu32,
                  ne[0], strata_ggml_type_name(type), bs);
    uint64_t blocks = nel / bs;
    if (blocks > UINT64_MAX / ts)
      return perr(ps, tyoff, "type",
                  "%" PRIu64 " %s elements overflow a 64-bit byte count", nel,
                  strata_ggml_type_name(type));
    uint64_t ooff = ps->pos, off;
    if (rd_u64(ps, "offset", &off)) return -1;
    if (off % ps->alignment != 0)
      return perr(ps, ooff, "offset",
                  "%" PRIu64 " is not a multiple of the alignment %" PRIu64,
                  off, ps->alignment);
    if (ps->fill) {
      struct strata_gguf_tensor *t = &g->tensors[i];
      t->name = name;
      t->type = type;
      t->n_dims = n_dims;
      memcpy(t->ne, ne, sizeof ne);
      t->offset = off;
      t->nbytes = blocks * ts;
      t->data = NULL;
      g->t_where[i].name_off = noff;
      g->t_where[i].offset_off = ooff;
    }
  }
  return 0;
}

static int parse_pass(struct parser *ps) {
  ps->pos = 0;
  ps->alignment = STRATA_GGUF_DEFAULT_ALIGNMENT;
  ps->arena_pos = ps->strs_pos = ps->items_pos = 0;
  if (parse_header(ps) || parse_kvs(ps) || parse_tensor_infos(ps)) return -1;
  return 0;
}

static void *heap_alloc(strata_gguf_t *g, uint64_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *p = strata_calloc((size_t)n, size);
  if (p) g->heap += n * size;
  return p;
}

struct span {
  uint64_t start, end, idx;
};

static int span_cmp(const void *a, const void *b) {
  const struct span *x = a, *y = b;
  if (x->start != y->start) return x->start < y->start ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Checks that need every tensor at once: bounds, unique names, overlaps. */
static int check_tensors(struct parser *ps) {
  strata_gguf_t *g = ps->g;
  uint64_t n = g->n_tensors;
  ps->sect = "tensor";
  ps->depth = 0;
  for (uint64_t i = 0; i < n; i++) {
    const struct strata_gguf_tensor *t = &g->tensors[i];
    uint64_t room = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    if (g->data_offset > g->size || t->offset > room ||
        t->nbytes > room - t->offset) {
      ps->idx = i;
      ps->name = (const uint8_t *)t->name.ptr;
      ps->name_len = t->name.len;
      return perr(ps, g->t_where[i].offset_off, "offset",
                  "%" PRIu64 " data bytes at data offset %" PRIu64 " + %" PRIu64
                  " run past the end of the file (size %" PRIu64 ")",
                  t->nbytes, g->data_offset, t->offset, g->size);
    }
  }
  for (uint64_t i = 0; i < n; i++) {
    uint64_t prev = si_insert(&g->t_index, i);
    if (prev != UINT64_MAX) {
      ps->idx = i;
      ps->name = (const uint8_t *)g->tensors[i].name.ptr;
      ps->name_len = g->tensors[i].name.len;
      return perr(ps, g->t_where[i].name_off, "name",
                  "duplicate of tensor[%" PRIu64 "]", prev);
    }
  }
  if (n > 1) {
    struct span *sp = strata_calloc((size_t)n, sizeof *sp);
    if (!sp)
      return strata_errf(ps->err, ps->errlen, "%s: out of memory", ps->src);
    for (uint64_t i = 0; i < n; i++) {
      sp[i].start = g->tensors[i].offset;
      sp[i].end = g->tensors[i].offset + g->tensors[i].nbytes;
      sp[i].idx = i;
    }
    qsort(sp, (size_t)n, sizeof *sp, span_cmp);
    /* the interval reaching furthest so far catches containment too */
    uint64_t far = 0;
    for (uint64_t k = 1; k < n; k++) {
      if (sp[k - 1].end > sp[far].end) far = k - 1;
      if (sp[k].start < sp[far].end && sp[k].end > sp[k].start) {
        const struct span *a = &sp[far], *b = &sp[k];
        const struct strata_gguf_tensor *ta = &g->tensors[a->idx];
        char e[300];
        escape_name(e, sizeof e, (const uint8_t *)ta->name.ptr, ta->name.len,
                    64);
        ps->idx = b->idx;
        ps->name = (const uint8_t *)g->tensors[b->idx].name.ptr;
        ps->name_len = g->tensors[b->idx].name.len;
        uint64_t at = g->t_where[b->idx].offset_off;
        uint64_t bs = b->start, be = b->end, as = a->start, ae = a->end,
                 ai = a->idx;
        free(sp);
        return perr(ps, at, "offset",
                    "data [%" PRIu64 ", %" PRIu64 ") overlaps tensor[%" PRIu64
                    "] '%s' [%" PRIu64 ", %" PRIu64 ")",
                    bs, be, ai, e, as, ae);
      }
    }
    free(sp);
  }
  for (uint64_t i = 0; i < n; i++)
    g->tensors[i].data = g->base + g->data_offset + g->tensors[i].offset;
  return 0;
}

static int parse(strata_gguf_t *g, const char *src, char *err, size_t errlen) {
  struct parser ps;
  memset(&ps, 0, sizeof ps);
  ps.p = g->base;
  ps.size = g->size;
  ps.src = src;
  ps.err = err;
  ps.errlen = errlen;
  ps.g = g;

  if (parse_pass(&ps)) return -1;

  /* Everything below is sized by what pass 1 actually found in the file. */
  g->n_kv = ps.n_kv;
  g->n_tensors = ps.n_tensors;
  g->kvs = heap_alloc(g, ps.n_kv, sizeof *g->kvs);
  g->kv_off = heap_alloc(g, ps.n_kv, sizeof *g->kv_off);
  g->tensors = heap_alloc(g, ps.n_tensors, sizeof *g->tensors);
  g->t_where = heap_alloc(g, ps.n_tensors, sizeof *g->t_where);
  g->arena = heap_alloc(g, ps.arena_need, 1);
  g->strs = heap_alloc(g, ps.n_strs, sizeof *g->strs);
  g->items = heap_alloc(g, ps.n_items, sizeof *g->items);
  if (!g->kvs || !g->kv_off || !g->tensors || !g->t_where || !g->arena ||
      !g->strs || !g->items)
    return strata_errf(err, errlen,
                       "%s: out of memory for the metadata (%" PRIu64
                       " bytes of strings)",
                       src, ps.arena_need);
  uint64_t counted_arena = ps.arena_need, counted_strs = ps.n_strs,
           counted_items = ps.n_items;
  ps.fill = 1;
  if (parse_pass(&ps)) return -1;
  if (ps.arena_pos != counted_arena || ps.strs_pos != counted_strs ||
      ps.items_pos != counted_items)
    return strata_errf(err, errlen, "%s: internal error: GGUF passes differ",
                       src);

  g->alignment = ps.alignment;
  /* ps.pos <= size and alignment <= 2^31: no overflow */
  g->data_offset = (ps.pos + g->alignment - 1) / g->alignment * g->alignment;

  if (si_init(&g->kv_index, g->n_kv, &g->kvs[0].key, sizeof *g->kvs,
              &g->heap) ||
      si_init(&g->t_index, g->n_tensors, &g->tensors[0].name,
              sizeof *g->tensors, &g->heap))
    return strata_errf(err, errlen, "%s: out of memory", src);
  ps.sect = "metadata";
  ps.depth = 0;
  for (uint64_t i = 0; i < g->n_kv; i++) {
    uint64_t prev = si_insert(&g->kv_index, i);
    if (prev != UINT64_MAX) {
      ps.idx = i;
      ps.name = (const uint8_t *)g->kvs[i].key.ptr;
      ps.name_len = g->kvs[i].key.len;
      return perr(&ps, g->kv_off[i], "key",
                  "duplicate of metadata[%" PRIu64 "]", prev);
    }
  }
  return check_tensors(&ps);
}

/* ---- open / close ------------------------------------------------------ */

static int open_common(strata_gguf_t *g, const char *src, strata_gguf_t **out,
                       char *err, size_t errlen) {
  if (parse(g, src, err, errlen) != 0) {
    strata_gguf_close(g);
    return -1;
  }
  *out = g;
  return 0;
}

int strata_gguf_open_memory(const void *data, size_t size, strata_gguf_t **out,
                            char *err, size_t errlen) {
  *out = NULL;
  strata_gguf_t *g = calloc(1, sizeof *g);
  if (!g) return strata_errf(err, errlen, "<memory>: out of memory");
  g->base = data ? data : (const uint8_t *)"";
  g->size = data ? size : 0;
  return open_common(g, "<memory>", out, err, errlen);
}

int strata_gguf_open(const char *path, strata_gguf_t **out, char *err,
                     size_t errlen) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return strata_errf(err, errlen, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return strata_errf(err, errlen, "%s: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return strata_errf(err, errlen, "%s: not a regular file", path);
  }
  strata_gguf_t *g = calloc(1, sizeof *g);
  if (!g) {
    close(fd);
    return strata_errf(err, errlen, "%s: out of memory", path);
  }
  g->base = (const uint8_t *)"";
  g->size = 0;
  if (st.st_size > 0) {
    /* The mapping lives as long as the handle: tensor data and numeric
     * arrays point into it. MAP_PRIVATE so nothing can write the file. */
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      close(fd);
      free(g);
      return strata_errf(err, errlen, "%s: mmap: %s", path, strerror(e));
    }
    g->map = m;
    g->map_len = (size_t)st.st_size;
    g->base = m;
    g->size = (uint64_t)st.st_size;
  }
  close(fd);
  return open_common(g, path, out, err, errlen);
}

void strata_gguf_release(strata_gguf_t *g, const void *p, uint64_t bytes) {
  if (!g || !g->map || !p) return;
  const uintptr_t m0 = (uintptr_t)g->map, m1 = m0 + g->map_len;
  uintptr_t a = (uintptr_t)p, e = a + bytes;
  if (a < m0 || e > m1 || e < a) return;
  const long pg = sysconf(_SC_PAGESIZE);
  if (pg <= 0) return;
  a = (a + (uintptr_t)pg - 1) / (uintptr_t)pg * (uintptr_t)pg;
  e = e / (uintptr_t)pg * (uintptr_t)pg;
  /* MADV_DONTNEED on a private mapping nobody wrote: the pages are the
   * file's, read back on demand (posix_madvise's DONTNEED is a no-op in
   * glibc). A failure only leaves them resident. */
  if (e > a) (void)madvise((void *)a, e - a, MADV_DONTNEED);
}

void strata_gguf_close(strata_gguf_t *g) {
  if (!g) return;
  if (g->map) munmap(g->map, g->map_len);
  free(g->kvs);
  free(g->kv_off);
  free(g->tensors);
  free(g->t_where);
  free(g->arena);
  free(g->strs);
  free(g->items);
  free(g->kv_index.slot);
  free(g->t_index.slot);
  free(g);
}

/* ---- accessors --------------------------------------------------------- */

uint32_t strata_gguf_version(const strata_gguf_t *g) {
  return g->version;
}
uint64_t strata_gguf_alignment(const strata_gguf_t *g) {
  return g->alignment;
}
uint64_t strata_gguf_data_offset(const strata_gguf_t *g) {
  return g->data_offset;
}
uint64_t strata_gguf_file_size(const strata_gguf_t *g) {
  return g->size;
}
uint64_t strata_gguf_heap_bytes(const strata_gguf_t *g) {
  return g->heap;
}

uint64_t strata_gguf_n_kv(const strata_gguf_t *g) {
  return g->n_kv;
}

const struct strata_gguf_kv *strata_gguf_kv_at(const strata_gguf_t *g,
                                               uint64_t i) {
  return i < g->n_kv ? &g->kvs[i] : NULL;
}

const struct strata_gguf_value *strata_gguf_get(const strata_gguf_t *g,
                                                const char *key) {
  if (!key || !g->kv_index.slot) return NULL;
  uint64_t where;
  uint64_t i = si_lookup(&g->kv_index, key, strlen(key), &where);
  return i == UINT64_MAX ? NULL : &g->kvs[i].value;
}

int strata_gguf_get_int(const strata_gguf_t *g, const char *key, int64_t *out) {
  const struct strata_gguf_value *v = strata_gguf_get(g, key);
  if (!v) return -1;
  switch (v->type) {
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_UINT16:
  case STRATA_GGUF_UINT32:
  case STRATA_GGUF_UINT64:
    if (v->v.u64 > (uint64_t)INT64_MAX) return -1;
    *out = (int64_t)v->v.u64;
    return 0;
  case STRATA_GGUF_INT8:
  case STRATA_GGUF_INT16:
  case STRATA_GGUF_INT32:
  case STRATA_GGUF_INT64:
    *out = v->v.i64;
    return 0;
  default:
    return -1;
  }
}

int strata_gguf_get_float(const strata_gguf_t *g, const char *key,
                          double *out) {
  const struct strata_gguf_value *v = strata_gguf_get(g, key);
  if (!v) return -1;
  switch (v->type) {
  case STRATA_GGUF_FLOAT32:
  case STRATA_GGUF_FLOAT64:
    *out = v->v.f64;
    return 0;
  /* Some converters write e.g. rope.freq_base as an integer. */
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_UINT16:
  case STRATA_GGUF_UINT32:
  case STRATA_GGUF_UINT64:
    *out = (double)v->v.u64;
    return 0;
  case STRATA_GGUF_INT8:
  case STRATA_GGUF_INT16:
  case STRATA_GGUF_INT32:
  case STRATA_GGUF_INT64:
    *out = (double)v->v.i64;
    return 0;
  default:
    return -1;
  }
}

int strata_gguf_get_bool(const strata_gguf_t *g, const char *key, int *out) {
  const struct strata_gguf_value *v = strata_gguf_get(g, key);
  if (!v || v->type != STRATA_GGUF_BOOL) return -1;
  *out = v->v.u64 != 0;
  return 0;
}

int strata_gguf_get_string(const strata_gguf_t *g, const char *key,
                           const char **out, size_t *len) {
  const struct strata_gguf_value *v = strata_gguf_get(g, key);
  if (!v || v->type != STRATA_GGUF_STRING) return -1;
  *out = v->v.str.ptr;
  if (len) *len = (size_t)v->v.str.len;
  return 0;
}

const struct strata_gguf_value *strata_gguf_get_array(const strata_gguf_t *g,
                                                      const char *key) {
  const struct strata_gguf_value *v = strata_gguf_get(g, key);
  return v && v->type == STRATA_GGUF_ARRAY ? v : NULL;
}

/* Decodes element i of a numeric array into whichever of the three unions
 * members fits its type; returns the type, or -1 when not numeric. */
static int arr_elem(const struct strata_gguf_value *arr, uint64_t i,
                    struct strata_gguf_value *e) {
  if (!arr || arr->type != STRATA_GGUF_ARRAY || i >= arr->v.arr.n ||
      !arr->v.arr.data)
    return -1;
  size_t sz = strata_gguf_vtype_size(arr->v.arr.type);
  if (!sz) return -1;
  decode_scalar(arr->v.arr.type, (const uint8_t *)arr->v.arr.data + i * sz, e);
  return (int)arr->v.arr.type;
}

double strata_gguf_arr_f64(const struct strata_gguf_value *arr, uint64_t i) {
  struct strata_gguf_value e;
  switch (arr_elem(arr, i, &e)) {
  case STRATA_GGUF_FLOAT32:
  case STRATA_GGUF_FLOAT64:
    return e.v.f64;
  case STRATA_GGUF_INT8:
  case STRATA_GGUF_INT16:
  case STRATA_GGUF_INT32:
  case STRATA_GGUF_INT64:
    return (double)e.v.i64;
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_UINT16:
  case STRATA_GGUF_UINT32:
  case STRATA_GGUF_UINT64:
  case STRATA_GGUF_BOOL:
    return (double)e.v.u64;
  default:
    return 0.0;
  }
}

int64_t strata_gguf_arr_i64(const struct strata_gguf_value *arr, uint64_t i) {
  struct strata_gguf_value e;
  switch (arr_elem(arr, i, &e)) {
  case STRATA_GGUF_FLOAT32:
  case STRATA_GGUF_FLOAT64:
    /* out-of-range and NaN would be undefined behaviour in the cast */
    if (!(e.v.f64 >= -9223372036854775808.0 && e.v.f64 < 9223372036854775808.0))
      return 0;
    return (int64_t)e.v.f64;
  case STRATA_GGUF_INT8:
  case STRATA_GGUF_INT16:
  case STRATA_GGUF_INT32:
  case STRATA_GGUF_INT64:
    return e.v.i64;
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_UINT16:
  case STRATA_GGUF_UINT32:
  case STRATA_GGUF_UINT64:
  case STRATA_GGUF_BOOL:
    return e.v.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)e.v.u64;
  default:
    return 0;
  }
}

uint64_t strata_gguf_n_tensors(const strata_gguf_t *g) {
  return g->n_tensors;
}

const struct strata_gguf_tensor *strata_gguf_tensor_at(const strata_gguf_t *g,
                                                       uint64_t i) {
  return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct strata_gguf_tensor *strata_gguf_find_tensor(const strata_gguf_t *g,
                                                         const char *name) {
  if (!name || !g->t_index.slot) return NULL;
  uint64_t where;
  uint64_t i = si_lookup(&g->t_index, name, strlen(name), &where);
  return i == UINT64_MAX ? NULL : &g->tensors[i];
}
