/* GGUF reader and writer: round trips of every metadata type and several
 * tensor types (v2 and v3, alignments 1 to 64), the real files in
 * ../shared, and hostile input: truncation at every byte, absurd counts,
 * every structural error the reader must catch, and seeded random mutations
 * that must never crash. Every failure must be one line reading
 * `<source>: offset N: <field>: <what is wrong>`. */
#include "config.h"

#include <inttypes.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <strata/quant.h>

#include "gguf.h"
#include "gguf_writer.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

static char errbuf[1024];

/* ---- small helpers ------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rng(void) { /* xorshift64*: deterministic across platforms */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed) {
  rng_state = seed | 1;
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(rng() >> 56);
}

/* A raw byte builder for files the writer refuses to produce. */
struct raw {
  uint8_t *p;
  size_t len, cap;
};

static void r_bytes(struct raw *r, const void *d, size_t n) {
  if (r->len + n > r->cap) {
    r->cap = (r->len + n) * 2 + 64;
    r->p = realloc(r->p, r->cap);
    ck_assert_ptr_nonnull(r->p);
  }
  if (n) memcpy(r->p + r->len, d, n);
  r->len += n;
}
static void r_u8(struct raw *r, uint8_t v) {
  r_bytes(r, &v, 1);
}
static void r_u32(struct raw *r, uint32_t v) {
  r_bytes(r, &v, 4);
}
static void r_u64(struct raw *r, uint64_t v) {
  r_bytes(r, &v, 8);
}
static void r_str(struct raw *r, const char *s) {
  r_u64(r, strlen(s));
  r_bytes(r, s, strlen(s));
}
static void r_pad(struct raw *r, size_t align) {
  while (r->len % align)
    r_u8(r, 0);
}
static void r_header(struct raw *r, uint32_t version, uint64_t nt,
                     uint64_t nkv) {
  r_bytes(r, "GGUF", 4);
  r_u32(r, version);
  r_u64(r, nt);
  r_u64(r, nkv);
}
static void r_kv_u32(struct raw *r, const char *key, uint32_t v) {
  r_str(r, key);
  r_u32(r, STRATA_GGUF_UINT32);
  r_u32(r, v);
}
static void r_tensor(struct raw *r, const char *name, uint32_t n_dims,
                     const uint64_t *ne, uint32_t type, uint64_t offset) {
  r_str(r, name);
  r_u32(r, n_dims);
  for (uint32_t d = 0; d < n_dims; d++)
    r_u64(r, ne[d]);
  r_u32(r, type);
  r_u64(r, offset);
}

/* `<src>: offset N: <field>: <what>`, one line. The field may not hold a
 * colon (none of our test keys do), so it is told apart from the message. */
static void check_message(const char *msg, const char *src) {
  ck_assert_msg(strchr(msg, '\n') == NULL, "multi-line message: %s", msg);
  ck_assert_msg(strncmp(msg, src, strlen(src)) == 0, "source missing: %s", msg);
  regex_t re;
  ck_assert_int_eq(regcomp(&re, ": offset [0-9]+: [^:]+[^: ]: [^ ].*$",
                           REG_EXTENDED | REG_NOSUB),
                   0);
  int m = regexec(&re, msg + strlen(src), 0, NULL, 0);
  regfree(&re);
  ck_assert_msg(m == 0, "message not in `src: offset N: field: what` form: %s",
                msg);
}

static uint64_t message_offset(const char *msg) {
  const char *o = strstr(msg, ": offset ");
  ck_assert_ptr_nonnull(o);
  return strtoull(o + 9, NULL, 10);
}

/* Opens a copy in a buffer of exactly n bytes, so that ASan sees any read
 * past the end. */
static int open_copy(const void *p, size_t n, strata_gguf_t **g, void **copy) {
  *copy = malloc(n ? n : 1);
  ck_assert_ptr_nonnull(*copy);
  if (n) memcpy(*copy, p, n);
  errbuf[0] = '\0';
  return strata_gguf_open_memory(*copy, n, g, errbuf, sizeof errbuf);
}

/* Must fail with a well-formed message containing each of the needles. */
static void expect_fail(const void *p, size_t n, const char *needle1,
                        const char *needle2) {
  strata_gguf_t *g = NULL;
  void *copy;
  double t0 = strata_now();
  int rc = open_copy(p, n, &g, &copy);
  double dt = strata_now() - t0;
  free(copy);
  if (rc == 0) strata_gguf_close(g);
  ck_assert_msg(rc != 0, "accepted a bad file (expected '%s')", needle1);
  ck_assert_ptr_null(g);
  check_message(errbuf, "<memory>");
  ck_assert_msg(strstr(errbuf, needle1), "'%s' lacks '%s'", errbuf, needle1);
  if (needle2)
    ck_assert_msg(strstr(errbuf, needle2), "'%s' lacks '%s'", errbuf, needle2);
  /* hostile counts must be refused at once, not after a long loop */
  ck_assert_msg(dt < 0.5, "took %.3f s to refuse: %s", dt, errbuf);
}

static strata_gguf_t *expect_ok(const void *p, size_t n, void **copy) {
  strata_gguf_t *g = NULL;
  int rc = open_copy(p, n, &g, copy);
  ck_assert_msg(rc == 0, "open failed: %s", errbuf);
  return g;
}

static int str_eq(const struct strata_gguf_str *a,
                  const struct strata_gguf_str *b) {
  return a->len == b->len &&
         (a->len == 0 || memcmp(a->ptr, b->ptr, a->len) == 0);
}

static int value_eq(const struct strata_gguf_value *a,
                    const struct strata_gguf_value *b) {
  if (a->type != b->type) return 0;
  switch (a->type) {
  case STRATA_GGUF_STRING:
    return str_eq(&a->v.str, &b->v.str);
  case STRATA_GGUF_ARRAY: {
    if (a->v.arr.type != b->v.arr.type || a->v.arr.n != b->v.arr.n) return 0;
    uint64_t n = a->v.arr.n;
    if (a->v.arr.type == STRATA_GGUF_STRING) {
      for (uint64_t i = 0; i < n; i++)
        if (!str_eq(&a->v.arr.strs[i], &b->v.arr.strs[i])) return 0;
    } else if (a->v.arr.type == STRATA_GGUF_ARRAY) {
      for (uint64_t i = 0; i < n; i++)
        if (!value_eq(&a->v.arr.items[i], &b->v.arr.items[i])) return 0;
    } else if (n) {
      size_t sz = strata_gguf_vtype_size(a->v.arr.type);
      return memcmp(a->v.arr.data, b->v.arr.data, n * sz) == 0;
    }
    return 1;
  }
  case STRATA_GGUF_FLOAT32:
  case STRATA_GGUF_FLOAT64:
    return memcmp(&a->v.f64, &b->v.f64, sizeof(double)) == 0;
  default:
    return a->v.u64 == b->v.u64;
  }
}

/* ---- the sample file: every metadata type, several tensor types ---------- */

static const uint8_t a_u8[] = {0, 1, 255};
static const int8_t a_i8[] = {-128, 0, 127};
static const uint16_t a_u16[] = {0, 65535, 258};
static const int16_t a_i16[] = {-32768, 32767, -1};
static const uint32_t a_u32[] = {0, 4294967295u, 7, 8};
static const int32_t a_i32[] = {INT32_MIN, INT32_MAX, -5};
static const uint64_t a_u64[] = {UINT64_MAX, 0, 1ull << 40};
static const int64_t a_i64[] = {INT64_MIN, INT64_MAX, -3};
static const float a_f32[] = {1.5f, -0.0f, 3.4028235e38f, 1e-45f};
static const double a_f64[] = {3.141592653589793, -1e300, 5e-324};
static const uint8_t a_bool[] = {1, 0, 1, 1};
static const uint32_t a_long[40] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
static const char *const a_str[] = {"", "a", "\xc4\xa0hello", "x\ny \"q\"",
                                    "<0x0A>"};
static const struct strata_gguf_str a_strn[] = {
    {3, "a\0b"}, {0, ""}, {2, "\xff\x01"}};

/* Nested values: [[1, 2, 3], ["p", "q"], []] and 8 levels of [[...[7]...]]. */
static const uint32_t n_inner_u32[] = {1, 2, 3};
static const struct strata_gguf_str n_inner_str[] = {{1, "p"}, {1, "q"}};
static struct strata_gguf_value nested_items[3];
static struct strata_gguf_value deep[STRATA_GGUF_MAX_DEPTH];
static const uint8_t deep_leaf[] = {7};

struct expect_kv {
  const char *key;
  struct strata_gguf_value v;
};

static struct expect_kv expected[64];
static int n_expected;

static struct strata_gguf_value num_array(enum strata_gguf_vtype t,
                                          const void *data, uint64_t n) {
  struct strata_gguf_value v = {.type = STRATA_GGUF_ARRAY};
  v.v.arr.type = t;
  v.v.arr.n = n;
  v.v.arr.data = data;
  return v;
}

static void add_expected(const char *key, struct strata_gguf_value v) {
  ck_assert_int_lt(n_expected, (int)STRATA_ARRAY_LEN(expected));
  expected[n_expected].key = key;
  expected[n_expected].v = v;
  n_expected++;
}

#define SCALAR(k, t, field, val)                                               \
  do {                                                                         \
    struct strata_gguf_value v_ = {.type = (t)};                               \
    v_.v.field = (val);                                                        \
    add_expected((k), v_);                                                     \
  } while (0)

static void build_expected(void) {
  n_expected = 0;
  SCALAR("t.u8", STRATA_GGUF_UINT8, u64, 255);
  SCALAR("t.i8", STRATA_GGUF_INT8, i64, -128);
  SCALAR("t.u16", STRATA_GGUF_UINT16, u64, 65535);
  SCALAR("t.i16", STRATA_GGUF_INT16, i64, -32768);
  SCALAR("t.u32", STRATA_GGUF_UINT32, u64, 4294967295u);
  SCALAR("t.i32", STRATA_GGUF_INT32, i64, INT32_MIN);
  SCALAR("t.u64", STRATA_GGUF_UINT64, u64, UINT64_MAX);
  SCALAR("t.i64", STRATA_GGUF_INT64, i64, INT64_MIN);
  SCALAR("t.f32", STRATA_GGUF_FLOAT32, f64, (double)1.25e-3f);
  SCALAR("t.f64", STRATA_GGUF_FLOAT64, f64, 3.141592653589793);
  SCALAR("t.bool1", STRATA_GGUF_BOOL, u64, 1);
  SCALAR("t.bool0", STRATA_GGUF_BOOL, u64, 0);
  struct strata_gguf_value s = {.type = STRATA_GGUF_STRING};
  s.v.str = (struct strata_gguf_str){13, "hello\n\"world\""};
  add_expected("t.str", s);
  s.v.str = (struct strata_gguf_str){3, "a\0b"};
  add_expected("t.str_nul", s);
  s.v.str = (struct strata_gguf_str){0, ""};
  add_expected("t.str_empty", s);
  add_expected("t.arr.u8", num_array(STRATA_GGUF_UINT8, a_u8, 3));
  add_expected("t.arr.i8", num_array(STRATA_GGUF_INT8, a_i8, 3));
  add_expected("t.arr.u16", num_array(STRATA_GGUF_UINT16, a_u16, 3));
  add_expected("t.arr.i16", num_array(STRATA_GGUF_INT16, a_i16, 3));
  add_expected("t.arr.u32", num_array(STRATA_GGUF_UINT32, a_u32, 4));
  add_expected("t.arr.i32", num_array(STRATA_GGUF_INT32, a_i32, 3));
  add_expected("t.arr.u64", num_array(STRATA_GGUF_UINT64, a_u64, 3));
  add_expected("t.arr.i64", num_array(STRATA_GGUF_INT64, a_i64, 3));
  add_expected("t.arr.f32", num_array(STRATA_GGUF_FLOAT32, a_f32, 4));
  add_expected("t.arr.f64", num_array(STRATA_GGUF_FLOAT64, a_f64, 3));
  add_expected("t.arr.bool", num_array(STRATA_GGUF_BOOL, a_bool, 4));
  add_expected("t.arr.empty", num_array(STRATA_GGUF_UINT32, NULL, 0));
  add_expected("t.arr.long", num_array(STRATA_GGUF_UINT32, a_long, 40));
  /* string arrays: filled in below from a_str / a_strn */
  static struct strata_gguf_str strs[5];
  for (int i = 0; i < 5; i++)
    strs[i] = (struct strata_gguf_str){strlen(a_str[i]), a_str[i]};
  struct strata_gguf_value sa = {.type = STRATA_GGUF_ARRAY};
  sa.v.arr.type = STRATA_GGUF_STRING;
  sa.v.arr.n = 5;
  sa.v.arr.strs = strs;
  add_expected("t.arr.str", sa);
  sa.v.arr.n = 3;
  sa.v.arr.strs = a_strn;
  add_expected("t.arr.strn", sa);
  sa.v.arr.n = 0;
  sa.v.arr.strs = NULL;
  add_expected("t.arr.str_empty", sa);

  nested_items[0] = num_array(STRATA_GGUF_UINT32, n_inner_u32, 3);
  nested_items[1] = num_array(STRATA_GGUF_STRING, NULL, 2);
  nested_items[1].v.arr.strs = n_inner_str;
  nested_items[2] = num_array(STRATA_GGUF_INT8, NULL, 0);
  struct strata_gguf_value nest = num_array(STRATA_GGUF_ARRAY, NULL, 3);
  nest.v.arr.items = nested_items;
  add_expected("t.nested", nest);

  /* deepest nesting allowed: level 8 holds the numbers */
  deep[STRATA_GGUF_MAX_DEPTH - 1] = num_array(STRATA_GGUF_UINT8, deep_leaf, 1);
  for (int d = STRATA_GGUF_MAX_DEPTH - 2; d >= 0; d--) {
    deep[d] = num_array(STRATA_GGUF_ARRAY, NULL, 1);
    deep[d].v.arr.items = &deep[d + 1];
  }
  add_expected("t.deep", deep[0]);
}

/* Sets each expected key through the most specific writer call. */
static void write_expected(strata_gguf_writer_t *w) {
  for (int i = 0; i < n_expected; i++) {
    const char *k = expected[i].key;
    const struct strata_gguf_value *v = &expected[i].v;
    int rc;
    switch (v->type) {
    case STRATA_GGUF_UINT8:
      rc = strata_gguf_writer_set_u8(w, k, (uint8_t)v->v.u64);
      break;
    case STRATA_GGUF_INT8:
      rc = strata_gguf_writer_set_i8(w, k, (int8_t)v->v.i64);
      break;
    case STRATA_GGUF_UINT16:
      rc = strata_gguf_writer_set_u16(w, k, (uint16_t)v->v.u64);
      break;
    case STRATA_GGUF_INT16:
      rc = strata_gguf_writer_set_i16(w, k, (int16_t)v->v.i64);
      break;
    case STRATA_GGUF_UINT32:
      rc = strata_gguf_writer_set_u32(w, k, (uint32_t)v->v.u64);
      break;
    case STRATA_GGUF_INT32:
      rc = strata_gguf_writer_set_i32(w, k, (int32_t)v->v.i64);
      break;
    case STRATA_GGUF_UINT64:
      rc = strata_gguf_writer_set_u64(w, k, v->v.u64);
      break;
    case STRATA_GGUF_INT64:
      rc = strata_gguf_writer_set_i64(w, k, v->v.i64);
      break;
    case STRATA_GGUF_FLOAT32:
      rc = strata_gguf_writer_set_f32(w, k, (float)v->v.f64);
      break;
    case STRATA_GGUF_FLOAT64:
      rc = strata_gguf_writer_set_f64(w, k, v->v.f64);
      break;
    case STRATA_GGUF_BOOL:
      rc = strata_gguf_writer_set_bool(w, k, (int)v->v.u64);
      break;
    case STRATA_GGUF_STRING:
      rc = strcmp(k, "t.str") == 0
               ? strata_gguf_writer_set_str(w, k, v->v.str.ptr)
               : strata_gguf_writer_set_strn(w, k, v->v.str.ptr,
                                             (size_t)v->v.str.len);
      break;
    default:
      if (strcmp(k, "t.arr.str") == 0)
        rc = strata_gguf_writer_set_str_array(w, k, a_str, 5);
      else if (strcmp(k, "t.arr.strn") == 0)
        rc = strata_gguf_writer_set_strn_array(w, k, a_strn, 3);
      else if (v->v.arr.type != STRATA_GGUF_STRING &&
               v->v.arr.type != STRATA_GGUF_ARRAY)
        rc = strata_gguf_writer_set_array(w, k, v->v.arr.type, v->v.arr.data,
                                          v->v.arr.n);
      else
        rc = strata_gguf_writer_set_value(w, k, v);
    }
    ck_assert_msg(rc == 0, "%s: %s", k, strata_gguf_writer_error(w));
  }
}

struct sample_tensor {
  const char *name;
  uint32_t type, n_dims;
  uint64_t ne[4];
  uint64_t nbytes;
};

static const struct sample_tensor sample_tensors[] = {
    {"f32", STRATA_TYPE_F32, 2, {7, 3, 1, 1}, 84},
    {"f16", STRATA_TYPE_F16, 1, {5, 1, 1, 1}, 10},
    {"q8_0", STRATA_TYPE_Q8_0, 2, {64, 2, 1, 1}, 4 * 34},
    {"q4_k", STRATA_TYPE_Q4_K, 1, {256, 1, 1, 1}, 144},
    {"i8", STRATA_TYPE_I8, 3, {3, 1, 2, 1}, 6},
    {"bf16", STRATA_TYPE_BF16, 4, {2, 2, 2, 2}, 32},
    {"q4_0", STRATA_TYPE_Q4_0, 2, {32, 3, 1, 1}, 3 * 18},
};
#define N_SAMPLE_TENSORS ((int)STRATA_ARRAY_LEN(sample_tensors))

static uint8_t *sample_data[N_SAMPLE_TENSORS];

static void make_sample_data(void) {
  for (int i = 0; i < N_SAMPLE_TENSORS; i++) {
    if (!sample_data[i]) sample_data[i] = malloc(sample_tensors[i].nbytes);
    fill_random(sample_data[i], sample_tensors[i].nbytes, 1000 + (uint64_t)i);
  }
}

/* alignment 0: leave general.alignment out (the default 32 applies). */
static strata_gguf_writer_t *sample_writer(uint32_t version,
                                           uint32_t alignment) {
  build_expected();
  make_sample_data();
  strata_gguf_writer_t *w = strata_gguf_writer_new(version);
  ck_assert_ptr_nonnull(w);
  if (alignment)
    ck_assert_int_eq(strata_gguf_writer_set_alignment(w, alignment), 0);
  write_expected(w);
  for (int i = 0; i < N_SAMPLE_TENSORS; i++) {
    const struct sample_tensor *t = &sample_tensors[i];
    ck_assert_msg(strata_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims,
                                                t->ne, sample_data[i]) == 0,
                  "%s", strata_gguf_writer_error(w));
  }
  return w;
}

static void *sample_bytes(uint32_t version, uint32_t alignment, size_t *size) {
  strata_gguf_writer_t *w = sample_writer(version, alignment);
  void *buf;
  ck_assert_msg(strata_gguf_writer_write_memory(w, &buf, size, errbuf,
                                                sizeof errbuf) == 0,
                "%s", errbuf);
  ck_assert_uint_eq(*size, strata_gguf_writer_file_size(w));
  strata_gguf_writer_free(w);
  return buf;
}

/* The sample plus a last tensor of exactly 32 bytes, so the file ends where
 * the data ends: without trailing padding, any cut loses something. */
static uint8_t *cut_sample(size_t *size) {
  static const uint8_t tail[32] = {1, 2, 3, 4, 5, 6, 7, 8};
  static const uint64_t ne[1] = {8};
  strata_gguf_writer_t *w = sample_writer(3, 0);
  ck_assert_int_eq(
      strata_gguf_writer_add_tensor(w, "tail", STRATA_TYPE_F32, 1, ne, tail),
      0);
  void *buf;
  ck_assert_int_eq(
      strata_gguf_writer_write_memory(w, &buf, size, errbuf, sizeof errbuf), 0);
  strata_gguf_writer_free(w);
  return buf;
}

static void verify_sample(const strata_gguf_t *g, uint32_t version,
                          uint32_t alignment, const void *base) {
  uint64_t align = alignment ? alignment : 32;
  ck_assert_uint_eq(strata_gguf_version(g), version);
  ck_assert_uint_eq(strata_gguf_alignment(g), align);
  ck_assert_uint_eq(strata_gguf_data_offset(g) % align, 0);
  uint64_t first = alignment ? 1 : 0;
  ck_assert_uint_eq(strata_gguf_n_kv(g), (uint64_t)n_expected + first);
  if (alignment) {
    const struct strata_gguf_kv *kv = strata_gguf_kv_at(g, 0);
    ck_assert_str_eq(kv->key.ptr, "general.alignment");
    ck_assert_int_eq(kv->value.type, STRATA_GGUF_UINT32);
    ck_assert_uint_eq(kv->value.v.u64, alignment);
  }
  for (int i = 0; i < n_expected; i++) {
    const struct strata_gguf_kv *kv = strata_gguf_kv_at(g, first + (uint64_t)i);
    ck_assert_ptr_nonnull(kv);
    ck_assert_str_eq(kv->key.ptr, expected[i].key);
    ck_assert_msg(value_eq(&kv->value, &expected[i].v), "value of %s differs",
                  expected[i].key);
    ck_assert_ptr_eq(strata_gguf_get(g, expected[i].key), &kv->value);
  }
  ck_assert_ptr_null(strata_gguf_kv_at(g, strata_gguf_n_kv(g)));
  /* strings come back NUL-terminated */
  const struct strata_gguf_value *v = strata_gguf_get(g, "t.str_nul");
  ck_assert_uint_eq(v->v.str.len, 3);
  ck_assert_int_eq(v->v.str.ptr[3], '\0');

  ck_assert_uint_eq(strata_gguf_n_tensors(g), N_SAMPLE_TENSORS);
  for (int i = 0; i < N_SAMPLE_TENSORS; i++) {
    const struct sample_tensor *e = &sample_tensors[i];
    const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, (uint64_t)i);
    ck_assert_str_eq(t->name.ptr, e->name);
    ck_assert_uint_eq(t->type, e->type);
    ck_assert_uint_eq(t->n_dims, e->n_dims);
    for (int d = 0; d < 4; d++)
      ck_assert_uint_eq(t->ne[d], e->ne[d]);
    ck_assert_uint_eq(t->nbytes, e->nbytes);
    ck_assert_uint_eq(t->offset % align, 0);
    ck_assert_ptr_eq(t->data, (const uint8_t *)base +
                                  strata_gguf_data_offset(g) + t->offset);
    ck_assert_mem_eq(t->data, sample_data[i], e->nbytes);
    ck_assert_ptr_eq(strata_gguf_find_tensor(g, e->name), t);
  }
  ck_assert_ptr_null(strata_gguf_tensor_at(g, N_SAMPLE_TENSORS));
  ck_assert_ptr_null(strata_gguf_find_tensor(g, "nope"));
  ck_assert_ptr_null(strata_gguf_get(g, "nope"));
}

/* ---- tables ----------------------------------------------------------- */

START_TEST(type_tables) {
  static const struct {
    uint32_t type;
    const char *name;
    uint32_t bs, ts;
  } want[] = {
      {STRATA_TYPE_F32, "f32", 1, 4},
      {STRATA_TYPE_F16, "f16", 1, 2},
      {STRATA_TYPE_BF16, "bf16", 1, 2},
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
      {STRATA_TYPE_I8, "i8", 1, 1},
      {STRATA_TYPE_I16, "i16", 1, 2},
      {STRATA_TYPE_I32, "i32", 1, 4},
      {STRATA_TYPE_I64, "i64", 1, 8},
      {STRATA_TYPE_F64, "f64", 1, 8},
  };
  for (size_t i = 0; i < STRATA_ARRAY_LEN(want); i++) {
    uint32_t bs = 0, ts = 0;
    ck_assert_int_eq(strata_ggml_type_layout(want[i].type, &bs, &ts), 0);
    ck_assert_uint_eq(bs, want[i].bs);
    ck_assert_uint_eq(ts, want[i].ts);
    ck_assert_str_eq(strata_ggml_type_name(want[i].type), want[i].name);
  }
  uint32_t bs = 9, ts = 9;
  ck_assert_int_eq(strata_ggml_type_layout(4, &bs, &ts), -1); /* removed Q4_2 */
  ck_assert_uint_eq(bs, 0);
  ck_assert_int_eq(strata_ggml_type_layout(1000, NULL, NULL), -1);
  ck_assert_str_eq(strata_ggml_type_name(1000), "unknown");

  ck_assert_uint_eq(strata_gguf_vtype_size(STRATA_GGUF_UINT8), 1);
  ck_assert_uint_eq(strata_gguf_vtype_size(STRATA_GGUF_BOOL), 1);
  ck_assert_uint_eq(strata_gguf_vtype_size(STRATA_GGUF_INT16), 2);
  ck_assert_uint_eq(strata_gguf_vtype_size(STRATA_GGUF_FLOAT32), 4);
  ck_assert_uint_eq(strata_gguf_vtype_size(STRATA_GGUF_FLOAT64), 8);
  ck_assert_uint_eq(strata_gguf_vtype_size(STRATA_GGUF_STRING), 0);
  ck_assert_uint_eq(strata_gguf_vtype_size(STRATA_GGUF_ARRAY), 0);
  ck_assert_str_eq(strata_gguf_vtype_name(STRATA_GGUF_FLOAT64), "float64");
  ck_assert_str_eq(strata_gguf_vtype_name(STRATA_GGUF_STRING), "string");
  ck_assert_str_eq(strata_gguf_vtype_name((enum strata_gguf_vtype)13),
                   "unknown");
}
END_TEST

/* ---- round trips -------------------------------------------------------- */

static const uint32_t rt_versions[] = {2, 3};
static const uint32_t rt_aligns[] = {1, 8, 0 /* default 32 */, 32, 64};

START_TEST(round_trip_memory) {
  uint32_t version = rt_versions[_i / 5];
  uint32_t alignment = rt_aligns[_i % 5];
  size_t size;
  void *buf = sample_bytes(version, alignment, &size);
  void *copy;
  strata_gguf_t *g = expect_ok(buf, size, &copy);
  verify_sample(g, version, alignment, copy);
  ck_assert_uint_eq(strata_gguf_file_size(g), size);
  /* the writer's file ends padded after the last tensor */
  const struct strata_gguf_tensor *last =
      strata_gguf_tensor_at(g, N_SAMPLE_TENSORS - 1);
  uint64_t a = strata_gguf_alignment(g);
  ck_assert_uint_eq(size, strata_gguf_data_offset(g) +
                              (last->offset + last->nbytes + a - 1) / a * a);
  /* padding is zeros */
  const uint8_t *b = buf;
  for (int i = 0; i + 1 < N_SAMPLE_TENSORS; i++) {
    const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, (uint64_t)i);
    const struct strata_gguf_tensor *n =
        strata_gguf_tensor_at(g, (uint64_t)i + 1);
    for (uint64_t o = t->offset + t->nbytes; o < n->offset; o++)
      ck_assert_uint_eq(b[strata_gguf_data_offset(g) + o], 0);
  }
  ck_assert_uint_le(strata_gguf_heap_bytes(g), 16 * size + 4096);
  strata_gguf_close(g);
  free(copy);
  free(buf);
}
END_TEST

static char tmpdir[256];

static void tmp_setup(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/strata-gguf-test-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void tmp_teardown(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static char *tmp_path(const char *name) {
  return strata_path_join(tmpdir, name);
}

static void write_bytes(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(p, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
}

START_TEST(round_trip_file) {
  uint32_t version = rt_versions[_i / 5];
  uint32_t alignment = rt_aligns[_i % 5];
  strata_gguf_writer_t *w = sample_writer(version, alignment);
  char *path = tmp_path("rt.gguf");
  ck_assert_msg(strata_gguf_writer_write_file(w, path, errbuf, sizeof errbuf) ==
                    0,
                "%s", errbuf);
  /* the file and the memory image are the same bytes */
  void *mem;
  size_t size;
  ck_assert_int_eq(
      strata_gguf_writer_write_memory(w, &mem, &size, errbuf, sizeof errbuf),
      0);
  char *disk;
  size_t dlen;
  ck_assert_int_eq(strata_read_file(path, &disk, &dlen, errbuf, sizeof errbuf),
                   0);
  ck_assert_uint_eq(dlen, size);
  ck_assert_mem_eq(disk, mem, size);
  free(disk);
  free(mem);
  strata_gguf_writer_free(w);

  strata_gguf_t *g = NULL;
  ck_assert_msg(strata_gguf_open(path, &g, errbuf, sizeof errbuf) == 0, "%s",
                errbuf);
  /* tensor data points into the mapping: check bytes, not addresses */
  const struct strata_gguf_tensor *t0 = strata_gguf_tensor_at(g, 0);
  const uint8_t *base =
      (const uint8_t *)t0->data - strata_gguf_data_offset(g) - t0->offset;
  verify_sample(g, version, alignment, base);
  ck_assert_uint_eq(strata_gguf_file_size(g), size);
  strata_gguf_close(g);
  free(path);
}
END_TEST

/* Every metadata of a real file copied with set_value reads back equal. */
static void copy_and_compare(const char *rel) {
  char *path = test_shared_path(rel);
  strata_gguf_t *g = NULL;
  ck_assert_msg(strata_gguf_open(path, &g, errbuf, sizeof errbuf) == 0, "%s",
                errbuf);
  strata_gguf_writer_t *w = strata_gguf_writer_new(3);
  for (uint64_t i = 0; i < strata_gguf_n_kv(g); i++) {
    const struct strata_gguf_kv *kv = strata_gguf_kv_at(g, i);
    ck_assert_msg(strata_gguf_writer_set_value(w, kv->key.ptr, &kv->value) == 0,
                  "%s", strata_gguf_writer_error(w));
  }
  for (uint64_t i = 0; i < strata_gguf_n_tensors(g); i++) {
    const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, i);
    ck_assert_int_eq(strata_gguf_writer_add_tensor(w, t->name.ptr, t->type,
                                                   t->n_dims, t->ne, t->data),
                     0);
  }
  void *buf;
  size_t size;
  ck_assert_int_eq(
      strata_gguf_writer_write_memory(w, &buf, &size, errbuf, sizeof errbuf),
      0);
  strata_gguf_writer_free(w);
  strata_gguf_t *h = NULL;
  ck_assert_msg(strata_gguf_open_memory(buf, size, &h, errbuf, sizeof errbuf) ==
                    0,
                "%s", errbuf);
  ck_assert_uint_eq(strata_gguf_n_kv(h), strata_gguf_n_kv(g));
  for (uint64_t i = 0; i < strata_gguf_n_kv(g); i++) {
    const struct strata_gguf_kv *a = strata_gguf_kv_at(g, i);
    const struct strata_gguf_kv *b = strata_gguf_kv_at(h, i);
    ck_assert(str_eq(&a->key, &b->key));
    ck_assert_msg(value_eq(&a->value, &b->value), "%s differs", a->key.ptr);
  }
  ck_assert_uint_eq(strata_gguf_n_tensors(h), strata_gguf_n_tensors(g));
  for (uint64_t i = 0; i < strata_gguf_n_tensors(g); i++) {
    const struct strata_gguf_tensor *a = strata_gguf_tensor_at(g, i);
    const struct strata_gguf_tensor *b = strata_gguf_tensor_at(h, i);
    ck_assert(str_eq(&a->name, &b->name));
    ck_assert_uint_eq(a->nbytes, b->nbytes);
    ck_assert_mem_eq(a->data, b->data, a->nbytes);
  }
  strata_gguf_close(h);
  free(buf);
  strata_gguf_close(g);
  free(path);
}

START_TEST(round_trip_real_files) {
  copy_and_compare("models/stories260K.gguf");
  copy_and_compare("vocab/ggml-vocab-llama-spm.gguf");
  copy_and_compare("vocab/ggml-vocab-gpt-2.gguf");
}
END_TEST

/* ---- streaming ------------------------------------------------------------
 */

/* Tensors 0, 2, 3, 6 of the sample; with all_ptrs 0, the 1st and 3rd are
 * streamed and the others come from pointers. Alignment set last: it must
 * still apply to tensors declared before it. */
static strata_gguf_writer_t *stream_writer(int all_ptrs) {
  static const int idx[] = {0, 2, 3, 6};
  make_sample_data();
  strata_gguf_writer_t *w = strata_gguf_writer_new(3);
  ck_assert_int_eq(strata_gguf_writer_set_str(w, "general.architecture", "x"),
                   0);
  for (int k = 0; k < 4; k++) {
    const struct sample_tensor *t = &sample_tensors[idx[k]];
    const void *data =
        all_ptrs || k == 1 || k == 3 ? sample_data[idx[k]] : NULL;
    ck_assert_int_eq(strata_gguf_writer_add_tensor(w, t->name, t->type,
                                                   t->n_dims, t->ne, data),
                     0);
  }
  ck_assert_int_eq(strata_gguf_writer_set_alignment(w, 64), 0);
  return w;
}

START_TEST(stream_matches_memory) {
  strata_gguf_writer_t *ref = stream_writer(1);
  void *want;
  size_t want_len;
  ck_assert_int_eq(strata_gguf_writer_write_memory(ref, &want, &want_len,
                                                   errbuf, sizeof errbuf),
                   0);
  strata_gguf_writer_free(ref);

  /* the all-in-one paths refuse tensors without data */
  strata_gguf_writer_t *w = stream_writer(0);
  void *dummy;
  size_t dlen;
  ck_assert_int_eq(
      strata_gguf_writer_write_memory(w, &dummy, &dlen, errbuf, sizeof errbuf),
      -1);
  ck_assert_ptr_nonnull(strstr(errbuf, "'f32' was declared without data"));
  strata_gguf_writer_free(w);

  w = stream_writer(0);
  ck_assert_uint_eq(strata_gguf_writer_file_size(w), want_len);
  ck_assert_uint_eq(strata_gguf_writer_n_tensors(w), 4);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_int_eq(strata_gguf_writer_begin(w, f, errbuf, sizeof errbuf), 0);
  /* the streamed tensors' bytes, in odd chunks spanning both */
  size_t n0 = sample_tensors[0].nbytes, n2 = sample_tensors[3].nbytes;
  uint8_t *stream = malloc(n0 + n2);
  memcpy(stream, sample_data[0], n0);
  memcpy(stream + n0, sample_data[3], n2);
  for (size_t o = 0; o < n0 + n2; o += 7) {
    size_t k = n0 + n2 - o < 7 ? n0 + n2 - o : 7;
    ck_assert_msg(
        strata_gguf_writer_write(w, stream + o, k, errbuf, sizeof errbuf) == 0,
        "%s", errbuf);
  }
  ck_assert_msg(strata_gguf_writer_end(w, errbuf, sizeof errbuf) == 0, "%s",
                errbuf);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_uint_eq(len, want_len);
  ck_assert_mem_eq(buf, want, len);
  /* and it reads back with the data offset the writer predicted */
  strata_gguf_t *g = NULL;
  ck_assert_int_eq(strata_gguf_open_memory(buf, len, &g, errbuf, sizeof errbuf),
                   0);
  ck_assert_uint_eq(strata_gguf_data_offset(g),
                    strata_gguf_writer_data_offset(w));
  ck_assert_uint_eq(strata_gguf_alignment(g), 64);
  ck_assert_mem_eq(strata_gguf_find_tensor(g, "q4_k")->data, sample_data[3],
                   sample_tensors[3].nbytes);
  strata_gguf_close(g);
  free(buf);
  free(stream);
  free(want);
  strata_gguf_writer_free(w);
}
END_TEST

START_TEST(stream_errors) {
  uint8_t data[64] = {0};
  uint64_t ne[] = {16};
  char *buf = NULL;
  size_t len = 0;

  /* too few bytes */
  strata_gguf_writer_t *w = strata_gguf_writer_new(3);
  ck_assert_int_eq(
      strata_gguf_writer_add_tensor(w, "a", STRATA_TYPE_F32, 1, ne, NULL), 0);
  FILE *f = open_memstream(&buf, &len);
  ck_assert_int_eq(strata_gguf_writer_begin(w, f, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(strata_gguf_writer_write(w, data, 10, errbuf, sizeof errbuf),
                   0);
  ck_assert_int_eq(strata_gguf_writer_end(w, errbuf, sizeof errbuf), -1);
  ck_assert_ptr_nonnull(strstr(errbuf, "10 of its 64 data bytes"));
  fclose(f);
  free(buf);
  strata_gguf_writer_free(w);

  /* too many bytes */
  w = strata_gguf_writer_new(3);
  ck_assert_int_eq(
      strata_gguf_writer_add_tensor(w, "a", STRATA_TYPE_F32, 1, ne, NULL), 0);
  buf = NULL;
  f = open_memstream(&buf, &len);
  ck_assert_int_eq(strata_gguf_writer_begin(w, f, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(strata_gguf_writer_write(w, data, 64, errbuf, sizeof errbuf),
                   0);
  ck_assert_int_eq(strata_gguf_writer_write(w, data, 1, errbuf, sizeof errbuf),
                   -1);
  ck_assert_ptr_nonnull(strstr(errbuf, "more than the tensors declared"));
  fclose(f);
  free(buf);
  strata_gguf_writer_free(w);

  /* write before begin; tensor after begin */
  w = strata_gguf_writer_new(3);
  ck_assert_int_eq(strata_gguf_writer_write(w, data, 1, errbuf, sizeof errbuf),
                   -1);
  strata_gguf_writer_free(w);
  w = strata_gguf_writer_new(3);
  buf = NULL;
  f = open_memstream(&buf, &len);
  ck_assert_int_eq(strata_gguf_writer_begin(w, f, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(
      strata_gguf_writer_add_tensor(w, "b", STRATA_TYPE_F32, 1, ne, data), -1);
  ck_assert_ptr_nonnull(strstr(strata_gguf_writer_error(w), "already"));
  fclose(f);
  free(buf);
  strata_gguf_writer_free(w);

  /* a file that cannot be created */
  w = strata_gguf_writer_new(3);
  ck_assert_int_eq(strata_gguf_writer_write_file(w, "/nonexistent-dir/x.gguf",
                                                 errbuf, sizeof errbuf),
                   -1);
  ck_assert_ptr_nonnull(strstr(errbuf, "/nonexistent-dir/x.gguf"));
  strata_gguf_writer_free(w);
}
END_TEST

START_TEST(writer_refuses) {
  ck_assert_ptr_null(strata_gguf_writer_new(1));
  ck_assert_ptr_null(strata_gguf_writer_new(4));
  uint64_t ne[4] = {33, 1, 1, 1};
  uint8_t bad_bool[] = {0, 2};
  static struct {
    const char *want;
  } cases[] = {
      {"power of two"},  {"power of two"},      {"must be uint32"},
      {"block size 32"}, {"unknown ggml type"}, {"dimensions"},
      {"dimensions"},    {"declared twice"},    {"nest deeper"},
      {"not 0/1"},       {"does not fit"},      {"empty"},
      {"overflows"},     {"not a numeric"},
  };
  for (size_t c = 0; c < STRATA_ARRAY_LEN(cases); c++) {
    strata_gguf_writer_t *w = strata_gguf_writer_new(3);
    int rc = 0;
    switch (c) {
    case 0:
      rc = strata_gguf_writer_set_alignment(w, 0);
      break;
    case 1:
      rc = strata_gguf_writer_set_alignment(w, 48);
      break;
    case 2:
      rc = strata_gguf_writer_set_u64(w, "general.alignment", 32);
      break;
    case 3:
      rc = strata_gguf_writer_add_tensor(w, "q", STRATA_TYPE_Q8_0, 1, ne, NULL);
      break;
    case 4:
      rc = strata_gguf_writer_add_tensor(w, "q", 4, 1, ne, NULL);
      break;
    case 5:
      rc = strata_gguf_writer_add_tensor(w, "q", STRATA_TYPE_F32, 0, ne, NULL);
      break;
    case 6:
      rc = strata_gguf_writer_add_tensor(w, "q", STRATA_TYPE_F32, 5, ne, NULL);
      break;
    case 7:
      ck_assert_int_eq(
          strata_gguf_writer_add_tensor(w, "q", STRATA_TYPE_F32, 1, ne, NULL),
          0);
      rc = strata_gguf_writer_add_tensor(w, "q", STRATA_TYPE_F32, 1, ne, NULL);
      break;
    case 8: {
      struct strata_gguf_value d[STRATA_GGUF_MAX_DEPTH + 1];
      d[STRATA_GGUF_MAX_DEPTH] = num_array(STRATA_GGUF_UINT8, deep_leaf, 1);
      for (int k = STRATA_GGUF_MAX_DEPTH - 1; k >= 0; k--) {
        d[k] = num_array(STRATA_GGUF_ARRAY, NULL, 1);
        d[k].v.arr.items = &d[k + 1];
      }
      rc = strata_gguf_writer_set_value(w, "deep", &d[0]);
      break;
    }
    case 9:
      rc = strata_gguf_writer_set_array(w, "b", STRATA_GGUF_BOOL, bad_bool, 2);
      break;
    case 10: {
      struct strata_gguf_value v = {.type = STRATA_GGUF_INT8};
      v.v.i64 = 200;
      rc = strata_gguf_writer_set_value(w, "i", &v);
      break;
    }
    case 11:
      rc = strata_gguf_writer_set_u8(w, "", 1);
      break;
    case 12: {
      uint64_t big[2] = {1ull << 32, 1ull << 32};
      rc = strata_gguf_writer_add_tensor(w, "big", STRATA_TYPE_F32, 2, big,
                                         NULL);
      break;
    }
    case 13:
      rc = strata_gguf_writer_set_array(w, "s", STRATA_GGUF_STRING, NULL, 0);
      break;
    }
    ck_assert_msg(rc == -1, "case %zu accepted", c);
    ck_assert_msg(strstr(strata_gguf_writer_error(w), cases[c].want),
                  "case %zu: '%s' lacks '%s'", c, strata_gguf_writer_error(w),
                  cases[c].want);
    /* sticky: later calls fail too, and so does the final write */
    ck_assert_int_eq(strata_gguf_writer_set_u8(w, "later", 1), -1);
    void *buf;
    size_t n;
    ck_assert_int_eq(
        strata_gguf_writer_write_memory(w, &buf, &n, errbuf, sizeof errbuf),
        -1);
    ck_assert_str_eq(errbuf, strata_gguf_writer_error(w));
    strata_gguf_writer_free(w);
  }

  /* a key set twice keeps its place and takes the new value */
  strata_gguf_writer_t *w = strata_gguf_writer_new(3);
  ck_assert_int_eq(strata_gguf_writer_set_u32(w, "a", 1), 0);
  ck_assert_int_eq(strata_gguf_writer_set_u32(w, "b", 2), 0);
  ck_assert_int_eq(strata_gguf_writer_set_str(w, "a", "x"), 0);
  void *buf;
  size_t n;
  ck_assert_int_eq(
      strata_gguf_writer_write_memory(w, &buf, &n, errbuf, sizeof errbuf), 0);
  strata_gguf_t *g = NULL;
  ck_assert_int_eq(strata_gguf_open_memory(buf, n, &g, errbuf, sizeof errbuf),
                   0);
  ck_assert_uint_eq(strata_gguf_n_kv(g), 2);
  ck_assert_str_eq(strata_gguf_kv_at(g, 0)->key.ptr, "a");
  ck_assert_str_eq(strata_gguf_kv_at(g, 0)->value.v.str.ptr, "x");
  strata_gguf_close(g);
  free(buf);
  strata_gguf_writer_free(w);
}
END_TEST

/* ---- lookups ------------------------------------------------------------- */

START_TEST(typed_lookups) {
  size_t size;
  void *buf = sample_bytes(3, 0, &size);
  void *copy;
  strata_gguf_t *g = expect_ok(buf, size, &copy);
  int64_t i;
  double d;
  int b;
  const char *s;
  size_t len;
  ck_assert_int_eq(strata_gguf_get_int(g, "t.u8", &i), 0);
  ck_assert_int_eq(i, 255);
  ck_assert_int_eq(strata_gguf_get_int(g, "t.i8", &i), 0);
  ck_assert_int_eq(i, -128);
  ck_assert_int_eq(strata_gguf_get_int(g, "t.u32", &i), 0);
  ck_assert_int_eq(i, 4294967295ll);
  ck_assert_int_eq(strata_gguf_get_int(g, "t.i64", &i), 0);
  ck_assert(i == INT64_MIN);
  ck_assert_int_eq(strata_gguf_get_int(g, "t.u64", &i), -1); /* too big */
  ck_assert_int_eq(strata_gguf_get_int(g, "t.f32", &i), -1);
  ck_assert_int_eq(strata_gguf_get_int(g, "t.str", &i), -1);
  ck_assert_int_eq(strata_gguf_get_int(g, "t.bool1", &i), -1);
  ck_assert_int_eq(strata_gguf_get_int(g, "missing", &i), -1);
  ck_assert_int_eq(strata_gguf_get_float(g, "t.f32", &d), 0);
  ck_assert(d == (double)1.25e-3f);
  ck_assert_int_eq(strata_gguf_get_float(g, "t.f64", &d), 0);
  ck_assert(d == 3.141592653589793);
  ck_assert_int_eq(strata_gguf_get_float(g, "t.i16", &d), 0);
  ck_assert(d == -32768.0);
  ck_assert_int_eq(strata_gguf_get_float(g, "t.str", &d), -1);
  ck_assert_int_eq(strata_gguf_get_bool(g, "t.bool1", &b), 0);
  ck_assert_int_eq(b, 1);
  ck_assert_int_eq(strata_gguf_get_bool(g, "t.bool0", &b), 0);
  ck_assert_int_eq(b, 0);
  ck_assert_int_eq(strata_gguf_get_bool(g, "t.u8", &b), -1);
  ck_assert_int_eq(strata_gguf_get_string(g, "t.str", &s, &len), 0);
  ck_assert_str_eq(s, "hello\n\"world\"");
  ck_assert_uint_eq(len, 13);
  ck_assert_int_eq(strata_gguf_get_string(g, "t.str_empty", &s, NULL), 0);
  ck_assert_str_eq(s, "");
  ck_assert_int_eq(strata_gguf_get_string(g, "t.u8", &s, &len), -1);
  ck_assert_ptr_null(strata_gguf_get_array(g, "t.u8"));
  ck_assert_ptr_null(strata_gguf_get_array(g, "missing"));

  const struct strata_gguf_value *a = strata_gguf_get_array(g, "t.arr.i16");
  ck_assert_ptr_nonnull(a);
  ck_assert_int_eq(strata_gguf_arr_i64(a, 0), -32768);
  ck_assert(strata_gguf_arr_f64(a, 2) == -1.0);
  a = strata_gguf_get_array(g, "t.arr.u64");
  ck_assert(strata_gguf_arr_i64(a, 0) == INT64_MAX); /* clamped */
  ck_assert(strata_gguf_arr_f64(a, 2) == (double)(1ull << 40));
  a = strata_gguf_get_array(g, "t.arr.f32");
  ck_assert(strata_gguf_arr_f64(a, 0) == 1.5);
  ck_assert_int_eq(strata_gguf_arr_i64(a, 0), 1);
  ck_assert_int_eq(strata_gguf_arr_i64(a, 2), 0); /* 3.4e38: out of range */
  a = strata_gguf_get_array(g, "t.arr.f64");
  ck_assert(strata_gguf_arr_f64(a, 1) == -1e300);
  a = strata_gguf_get_array(g, "t.arr.bool");
  ck_assert_int_eq(strata_gguf_arr_i64(a, 0), 1);
  ck_assert_int_eq(strata_gguf_arr_i64(a, 1), 0);
  ck_assert_int_eq(strata_gguf_arr_i64(a, 99), 0); /* out of bounds */
  a = strata_gguf_get_array(g, "t.arr.str");
  ck_assert(strata_gguf_arr_f64(a, 0) == 0.0); /* not numeric */
  ck_assert_str_eq(a->v.arr.strs[2].ptr, "\xc4\xa0hello");
  ck_assert_str_eq(a->v.arr.strs[0].ptr, "");
  a = strata_gguf_get_array(g, "t.nested");
  ck_assert_uint_eq(a->v.arr.items[0].v.arr.n, 3);
  ck_assert_int_eq(strata_gguf_arr_i64(&a->v.arr.items[0], 2), 3);
  ck_assert_str_eq(a->v.arr.items[1].v.arr.strs[1].ptr, "q");
  ck_assert_int_eq(strata_gguf_arr_i64(NULL, 0), 0);
  strata_gguf_close(g);
  free(copy);
  free(buf);
}
END_TEST

/* ---- real files ------------------------------------------------------------
 */

START_TEST(real_stories260k) {
  char *path = test_shared_path("models/stories260K.gguf");
  strata_gguf_t *g = NULL;
  ck_assert_msg(strata_gguf_open(path, &g, errbuf, sizeof errbuf) == 0, "%s",
                errbuf);
  ck_assert_uint_eq(strata_gguf_version(g), 3);
  ck_assert_uint_eq(strata_gguf_alignment(g), 32);
  ck_assert_uint_eq(strata_gguf_n_kv(g), 19);
  ck_assert_uint_eq(strata_gguf_n_tensors(g), 48);
  ck_assert_uint_eq(strata_gguf_file_size(g), 1185376);
  ck_assert_uint_eq(strata_gguf_data_offset(g), 14176);
  static const struct {
    const char *key;
    int64_t v;
  } ints[] = {
      {"llama.embedding_length", 64},    {"llama.block_count", 5},
      {"llama.context_length", 512},     {"llama.feed_forward_length", 172},
      {"llama.attention.head_count", 8}, {"llama.attention.head_count_kv", 4},
      {"llama.rope.dimension_count", 8}, {"tokenizer.ggml.bos_token_id", 1},
      {"tokenizer.ggml.eos_token_id", 2}};
  for (size_t i = 0; i < STRATA_ARRAY_LEN(ints); i++) {
    int64_t v;
    ck_assert_msg(strata_gguf_get_int(g, ints[i].key, &v) == 0, "%s",
                  ints[i].key);
    ck_assert_int_eq(v, ints[i].v);
  }
  double eps;
  ck_assert_int_eq(
      strata_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &eps),
      0);
  ck_assert(fabs(eps - 1e-5) < 1e-9);
  const char *s;
  ck_assert_int_eq(strata_gguf_get_string(g, "general.architecture", &s, NULL),
                   0);
  ck_assert_str_eq(s, "llama");
  ck_assert_int_eq(strata_gguf_get_string(g, "tokenizer.ggml.model", &s, NULL),
                   0);
  ck_assert_str_eq(s, "llama");
  const struct strata_gguf_value *tok =
      strata_gguf_get_array(g, "tokenizer.ggml.tokens");
  ck_assert_ptr_nonnull(tok);
  ck_assert_int_eq(tok->v.arr.type, STRATA_GGUF_STRING);
  ck_assert_uint_eq(tok->v.arr.n, 512);
  ck_assert_str_eq(tok->v.arr.strs[1].ptr, "<s>");
  const struct strata_gguf_value *tt =
      strata_gguf_get_array(g, "tokenizer.ggml.token_type");
  ck_assert_int_eq(tt->v.arr.type, STRATA_GGUF_INT32);
  ck_assert_int_eq(strata_gguf_arr_i64(tt, 0), 2);

  const struct strata_gguf_tensor *te =
      strata_gguf_find_tensor(g, "token_embd.weight");
  ck_assert_ptr_nonnull(te);
  ck_assert_uint_eq(te->n_dims, 2);
  ck_assert_uint_eq(te->ne[0], 64);
  ck_assert_uint_eq(te->ne[1], 512);
  ck_assert_uint_eq(te->nbytes, 64 * 512 * 4);
  ck_assert_ptr_nonnull(strata_gguf_find_tensor(g, "output.weight"));
  ck_assert_ptr_nonnull(strata_gguf_find_tensor(g, "blk.4.ffn_norm.weight"));
  uint64_t total = 0;
  for (uint64_t i = 0; i < 48; i++) {
    const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, i);
    ck_assert_uint_eq(t->type, STRATA_TYPE_F32);
    ck_assert_uint_le(strata_gguf_data_offset(g) + t->offset + t->nbytes,
                      strata_gguf_file_size(g));
    /* the weights are real numbers */
    const float *f = t->data;
    for (uint64_t k = 0; k < t->nbytes / 4; k += 97)
      ck_assert(isfinite(f[k]));
    total += t->nbytes;
  }
  ck_assert_uint_eq(total, 1171200);
  ck_assert_uint_le(strata_gguf_heap_bytes(g), 4 * strata_gguf_file_size(g));
  strata_gguf_close(g);
  free(path);
}
END_TEST

static const struct {
  const char *file, *model, *pre;
  uint64_t n_kv, tokens, merges;
} vocabs[] = {
    {"vocab/ggml-vocab-llama-spm.gguf", "llama", "default", 22, 32000, 0},
    {"vocab/ggml-vocab-llama-bpe.gguf", "gpt2", "llama-bpe", 20, 128256,
     280147},
    {"vocab/ggml-vocab-qwen2.gguf", "gpt2", "qwen2", 20, 151936, 151387},
    {"vocab/ggml-vocab-gpt-2.gguf", "gpt2", "gpt-2", 16, 50257, 50000},
};

START_TEST(real_vocab) {
  char *path = test_shared_path(vocabs[_i].file);
  strata_gguf_t *g = NULL;
  ck_assert_msg(strata_gguf_open(path, &g, errbuf, sizeof errbuf) == 0, "%s",
                errbuf);
  ck_assert_uint_eq(strata_gguf_version(g), 3);
  ck_assert_uint_eq(strata_gguf_n_tensors(g), 0);
  ck_assert_uint_eq(strata_gguf_n_kv(g), vocabs[_i].n_kv);
  const char *s;
  ck_assert_int_eq(strata_gguf_get_string(g, "tokenizer.ggml.model", &s, NULL),
                   0);
  ck_assert_str_eq(s, vocabs[_i].model);
  ck_assert_int_eq(strata_gguf_get_string(g, "tokenizer.ggml.pre", &s, NULL),
                   0);
  ck_assert_str_eq(s, vocabs[_i].pre);
  const struct strata_gguf_value *tok =
      strata_gguf_get_array(g, "tokenizer.ggml.tokens");
  ck_assert_ptr_nonnull(tok);
  ck_assert_uint_eq(tok->v.arr.n, vocabs[_i].tokens);
  for (uint64_t i = 0; i < tok->v.arr.n; i++)
    ck_assert_uint_eq(strlen(tok->v.arr.strs[i].ptr) <= tok->v.arr.strs[i].len,
                      1);
  const struct strata_gguf_value *tt =
      strata_gguf_get_array(g, "tokenizer.ggml.token_type");
  ck_assert_uint_eq(tt->v.arr.n, vocabs[_i].tokens);
  const struct strata_gguf_value *m =
      strata_gguf_get_array(g, "tokenizer.ggml.merges");
  if (vocabs[_i].merges) {
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(m->v.arr.n, vocabs[_i].merges);
    ck_assert_ptr_nonnull(strchr(m->v.arr.strs[0].ptr, ' '));
  } else {
    ck_assert_ptr_null(m);
    const struct strata_gguf_value *sc =
        strata_gguf_get_array(g, "tokenizer.ggml.scores");
    ck_assert_uint_eq(sc->v.arr.n, 32000);
    ck_assert_str_eq(tok->v.arr.strs[0].ptr, "<unk>");
    int b;
    ck_assert_int_eq(
        strata_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(
        strata_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b), 0);
    ck_assert_int_eq(b, 0);
  }
  ck_assert_uint_le(strata_gguf_heap_bytes(g), 4 * strata_gguf_file_size(g));
  strata_gguf_close(g);
  free(path);
}
END_TEST

START_TEST(real_vocab_loads_fast) {
  char *path = test_shared_path("vocab/ggml-vocab-llama-bpe.gguf");
  double best = 1e9;
  for (int k = 0; k < 5; k++) {
    strata_gguf_t *g = NULL;
    double t0 = strata_now();
    ck_assert_int_eq(strata_gguf_open(path, &g, errbuf, sizeof errbuf), 0);
    double dt = strata_now() - t0;
    strata_gguf_close(g);
    if (dt < best) best = dt;
  }
  free(path);
  /* 128k tokens + 280k merges: one arena, no per-string allocation. The
   * sanitizers slow memcpy-heavy code several times over, valgrind (seen
   * by its preload library) by far more. */
  const char *pre = getenv("LD_PRELOAD");
  int valgrind = pre && strstr(pre, "vgpreload");
  double limit = valgrind ? 5.0 : UNDER_SANITIZER ? 0.5 : 0.05;
  fprintf(stderr, "gguf: llama-bpe vocab (7.8 MB) opens in %.1f ms\n",
          best * 1e3);
  ck_assert_msg(best < limit, "open took %.1f ms", best * 1e3);
}
END_TEST

START_TEST(open_errors) {
  strata_gguf_t *g = (strata_gguf_t *)1;
  ck_assert_int_eq(
      strata_gguf_open("/nonexistent/m.gguf", &g, errbuf, sizeof errbuf), -1);
  ck_assert_ptr_null(g);
  ck_assert_ptr_nonnull(strstr(errbuf, "/nonexistent/m.gguf"));
  ck_assert_ptr_nonnull(strstr(errbuf, "No such file"));
  ck_assert_int_eq(strata_gguf_open(tmpdir, &g, errbuf, sizeof errbuf), -1);
  ck_assert_ptr_nonnull(strstr(errbuf, "not a regular file"));
  char *empty = tmp_path("empty.gguf");
  write_bytes(empty, "", 0);
  ck_assert_int_eq(strata_gguf_open(empty, &g, errbuf, sizeof errbuf), -1);
  check_message(errbuf, empty);
  ck_assert_ptr_nonnull(strstr(errbuf, "offset 0: magic"));
  free(empty);

  /* truncated files on disk (the mmap path), a few cuts */
  size_t size;
  uint8_t *buf = cut_sample(&size);
  char *p = tmp_path("cut.gguf");
  size_t cuts[] = {3, 4, 23, 24, 100, size / 2, size - 1};
  for (size_t k = 0; k < STRATA_ARRAY_LEN(cuts); k++) {
    write_bytes(p, buf, cuts[k]);
    ck_assert_int_eq(strata_gguf_open(p, &g, errbuf, sizeof errbuf), -1);
    check_message(errbuf, p);
  }
  free(p);
  free(buf);
}
END_TEST

/* ---- hostile input ----------------------------------------------------------
 */

START_TEST(truncated_at_every_offset) {
  size_t size;
  uint8_t *buf = cut_sample(&size);
  void *copy0;
  strata_gguf_t *g0 = expect_ok(buf, size, &copy0);
  strata_gguf_close(g0);
  free(copy0);
  for (size_t n = 0; n < size; n++) {
    strata_gguf_t *g = NULL;
    void *copy;
    int rc = open_copy(buf, n, &g, &copy);
    free(copy);
    ck_assert_msg(rc != 0, "accepted the file cut at %zu of %zu bytes", n,
                  size);
    check_message(errbuf, "<memory>");
    ck_assert_msg(message_offset(errbuf) <= n, "offset past the cut %zu: %s", n,
                  errbuf);
  }
  free(buf);
}
END_TEST

START_TEST(bad_header) {
  struct raw r = {0};
  expect_fail("", 0, "offset 0: magic: truncated", NULL);
  expect_fail("GGU", 3, "offset 0: magic: truncated", NULL);
  expect_fail("GGUX\3\0\0\0", 8, "offset 0: magic", "not 'GGUF'");
  expect_fail("\x7f"
              "ELF\2\1\1\0",
              8, "magic: '\\x7fELF'", NULL);
  expect_fail("FUGG\0\0\0\3", 8, "magic", "big-endian");
  expect_fail("GGUF\3\0", 6, "offset 4: version: truncated", NULL);

  r_header(&r, 1, 0, 0);
  expect_fail(r.p, r.len, "offset 4: version", "v1");
  r.len = 0;
  r_header(&r, 99, 0, 0);
  expect_fail(r.p, r.len, "offset 4: version", "unsupported version 99");
  r.len = 0;
  r_header(&r, 0x03000000u, 0, 0); /* a big-endian v3 file */
  expect_fail(r.p, r.len, "offset 4: version", "big-endian");
  r.len = 0;
  r_header(&r, 0x02000000u, 0, 0);
  expect_fail(r.p, r.len, "byte-swapped 2", NULL);
  r.len = 0;
  r_header(&r, 3, 0, 0);
  expect_fail(r.p, 20, "offset 16: n_kv: truncated", NULL);

  /* absurd counts: refused from the header alone */
  uint64_t absurd[] = {1ull << 63, UINT64_MAX, 1ull << 32, 1000};
  for (size_t k = 0; k < STRATA_ARRAY_LEN(absurd); k++) {
    r.len = 0;
    r_header(&r, 3, absurd[k], 0);
    expect_fail(r.p, r.len, "offset 8: n_tensors",
                "cannot fit in the remaining 0 bytes");
    r.len = 0;
    r_header(&r, 3, 0, absurd[k]);
    r_kv_u32(&r, "a", 1);
    expect_fail(r.p, r.len, "offset 16: n_kv", "cannot fit");
  }
  /* an empty but valid file */
  r.len = 0;
  r_header(&r, 2, 0, 0);
  void *copy;
  strata_gguf_t *g = expect_ok(r.p, r.len, &copy);
  ck_assert_uint_eq(strata_gguf_n_kv(g), 0);
  ck_assert_uint_eq(strata_gguf_version(g), 2);
  ck_assert_ptr_null(strata_gguf_get(g, "x"));
  ck_assert_ptr_null(strata_gguf_find_tensor(g, "x"));
  strata_gguf_close(g);
  free(copy);
  free(r.p);
}
END_TEST

START_TEST(bad_metadata) {
  struct raw r = {0};
  char want[200];

  /* key length 2^63 */
  r_header(&r, 3, 0, 1);
  r_u64(&r, 1ull << 63);
  r_bytes(&r, "abcdefgh", 8);
  expect_fail(r.p, r.len, "offset 24: metadata[0] key length",
              "9223372036854775808 bytes cannot fit in the remaining 8 bytes");

  /* empty key, key with a NUL */
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "");
  r_u32(&r, STRATA_GGUF_UINT8);
  r_u8(&r, 0);
  expect_fail(r.p, r.len, "metadata[0] '' key", "empty");
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_u64(&r, 3);
  r_bytes(&r, "a\0b", 3);
  r_u32(&r, STRATA_GGUF_UINT8);
  r_u8(&r, 0);
  expect_fail(r.p, r.len, "offset 33: metadata[0] 'a\\x00b' key", "NUL");

  /* unknown value types */
  uint32_t bad_types[] = {13, 255, 0xffffffffu};
  for (size_t k = 0; k < STRATA_ARRAY_LEN(bad_types); k++) {
    r.len = 0;
    r_header(&r, 3, 0, 2);
    r_kv_u32(&r, "ok", 1);
    r_str(&r, "bad");
    r_u32(&r, bad_types[k]);
    r_u64(&r, 0);
    snprintf(want, sizeof want, "unknown value type %" PRIu32, bad_types[k]);
    expect_fail(r.p, r.len, "offset 53: metadata[1] 'bad' value type", want);
  }
  /* unknown array element type */
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "arr");
  r_u32(&r, STRATA_GGUF_ARRAY);
  r_u32(&r, 77);
  r_u64(&r, 0);
  expect_fail(r.p, r.len, "offset 39: metadata[0] 'arr' array type",
              "unknown value type 77");

  /* string value length 2^63 */
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "s");
  r_u32(&r, STRATA_GGUF_STRING);
  r_u64(&r, 1ull << 63);
  r_bytes(&r, "xyz", 3);
  expect_fail(r.p, r.len, "offset 37: metadata[0] 's' string length",
              "cannot fit in the remaining 3 bytes");

  /* array lengths that cannot fit, for each element kind */
  static const struct {
    uint32_t et;
    uint64_t n;
    const char *want;
  } arrs[] = {
      {STRATA_GGUF_UINT8, 1ull << 63, "9223372036854775808 uint8 elements"},
      {STRATA_GGUF_UINT64, UINT64_MAX / 8 + 1, "uint64 elements cannot fit"},
      {STRATA_GGUF_STRING, 4294967296ull,
       "4294967296 string elements cannot fit in the remaining 16 bytes"},
      {STRATA_GGUF_STRING, 3, "3 string elements cannot fit"},
      {STRATA_GGUF_ARRAY, 1ull << 40, "array elements cannot fit"},
      {STRATA_GGUF_ARRAY, 2, "2 array elements cannot fit"},
  };
  for (size_t k = 0; k < STRATA_ARRAY_LEN(arrs); k++) {
    r.len = 0;
    r_header(&r, 3, 0, 1);
    r_str(&r, "tokenizer.ggml.tokens");
    r_u32(&r, STRATA_GGUF_ARRAY);
    r_u32(&r, arrs[k].et);
    r_u64(&r, arrs[k].n);
    r_u64(&r, 0);
    r_u64(&r, 0);
    expect_fail(r.p, r.len,
                "offset 61: metadata[0] 'tokenizer.ggml.tokens' array length",
                arrs[k].want);
  }
  /* the 2nd string of an array is cut */
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "toks");
  r_u32(&r, STRATA_GGUF_ARRAY);
  r_u32(&r, STRATA_GGUF_STRING);
  r_u64(&r, 2);
  r_str(&r, "ab");
  r_u64(&r, 100);
  r_bytes(&r, "cd", 2);
  expect_fail(r.p, r.len, "metadata[0] 'toks'[1] string length",
              "100 bytes cannot fit in the remaining 2 bytes");

  /* bool values other than 0/1 */
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "b");
  r_u32(&r, STRATA_GGUF_BOOL);
  r_u8(&r, 2);
  expect_fail(r.p, r.len, "offset 37: metadata[0] 'b' value",
              "bool byte 2 is neither 0 nor 1");
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "bs");
  r_u32(&r, STRATA_GGUF_ARRAY);
  r_u32(&r, STRATA_GGUF_BOOL);
  r_u64(&r, 4);
  r_bytes(&r, "\1\0\xff\1", 4);
  expect_fail(r.p, r.len, "offset 52: metadata[0] 'bs'[2] value",
              "bool byte 255");

  /* a truncated scalar */
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "u");
  r_u32(&r, STRATA_GGUF_UINT64);
  r_bytes(&r, "1234567", 7);
  expect_fail(r.p, r.len, "offset 37: metadata[0] 'u' value",
              "truncated: needs 8 bytes, 7 remain");

  /* duplicate keys */
  r.len = 0;
  r_header(&r, 3, 0, 3);
  r_kv_u32(&r, "a", 1);
  r_kv_u32(&r, "b", 1);
  r_kv_u32(&r, "a", 2);
  expect_fail(r.p, r.len, "offset 58: metadata[2] 'a' key",
              "duplicate of metadata[0]");

  /* general.alignment: zero, not a power of two, wrong type */
  uint32_t bad_align[] = {0, 3, 48, 0x80000001u};
  for (size_t k = 0; k < STRATA_ARRAY_LEN(bad_align); k++) {
    r.len = 0;
    r_header(&r, 3, 0, 1);
    r_kv_u32(&r, "general.alignment", bad_align[k]);
    snprintf(want, sizeof want, "alignment %" PRIu32 " is not a power of two",
             bad_align[k]);
    expect_fail(r.p, r.len, "offset 53: metadata[0] 'general.alignment' value",
                want);
  }
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "general.alignment");
  r_u32(&r, STRATA_GGUF_UINT64);
  r_u64(&r, 32);
  expect_fail(r.p, r.len,
              "offset 49: metadata[0] 'general.alignment' value type",
              "must be uint32, not uint64");
  free(r.p);
}
END_TEST

/* Builds n arrays nested in each other around a uint8 [7]. */
static void r_nested(struct raw *r, int levels) {
  for (int d = 0; d < levels - 1; d++) {
    r_u32(r, STRATA_GGUF_ARRAY);
    r_u64(r, 1);
  }
  r_u32(r, STRATA_GGUF_UINT8);
  r_u64(r, 1);
  r_u8(r, 7);
}

START_TEST(nesting_limit) {
  struct raw r = {0};
  for (int levels = 1; levels <= STRATA_GGUF_MAX_DEPTH + 3; levels++) {
    r.len = 0;
    r_header(&r, 3, 0, 1);
    r_str(&r, "deep");
    r_u32(&r, STRATA_GGUF_ARRAY);
    r_nested(&r, levels);
    if (levels <= STRATA_GGUF_MAX_DEPTH) {
      void *copy;
      strata_gguf_t *g = expect_ok(r.p, r.len, &copy);
      const struct strata_gguf_value *v = strata_gguf_get(g, "deep");
      for (int d = 1; d < levels; d++)
        v = &v->v.arr.items[0];
      ck_assert_int_eq(strata_gguf_arr_i64(v, 0), 7);
      strata_gguf_close(g);
      free(copy);
    } else {
      expect_fail(r.p, r.len,
                  "metadata[0] 'deep'[0][0][0][0][0][0][0] array type",
                  "arrays nest deeper than 8 levels");
    }
  }
  /* a long chain of arrays of arrays must not recurse without bound */
  r.len = 0;
  r_header(&r, 3, 0, 1);
  r_str(&r, "chain");
  r_u32(&r, STRATA_GGUF_ARRAY);
  r_nested(&r, 100000);
  expect_fail(r.p, r.len, "nest deeper", NULL);
  free(r.p);
}
END_TEST

/* One kv (alignment 32), the given tensor infos, padding, data_len bytes. */
struct tinfo {
  const char *name;
  uint32_t n_dims;
  uint64_t ne[4];
  uint32_t type;
  uint64_t offset;
};

static void r_tensor_file(struct raw *r, const struct tinfo *t, int n,
                          size_t data_len) {
  r->len = 0;
  r_header(r, 3, (uint64_t)n, 1);
  r_kv_u32(r, "general.alignment", 32);
  for (int i = 0; i < n; i++)
    r_tensor(r, t[i].name, t[i].n_dims, t[i].ne, t[i].type, t[i].offset);
  r_pad(r, 32);
  for (size_t i = 0; i < data_len; i++)
    r_u8(r, (uint8_t)i);
}

START_TEST(bad_tensors) {
  struct raw r = {0};
  /* the first tensor info starts at 24 + 8+17 + 4+4 = 57 */
  struct tinfo ok = {"w", 2, {4, 2, 1, 1}, STRATA_TYPE_F32, 0};
  r_tensor_file(&r, &ok, 1, 32);
  void *copy;
  strata_gguf_t *g = expect_ok(r.p, r.len, &copy);
  ck_assert_uint_eq(strata_gguf_data_offset(g), 128);
  strata_gguf_close(g);
  free(copy);

  struct tinfo t = ok;
  t.n_dims = 0;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "offset 66: tensor[0] 'w' n_dims",
              "0 is not between 1 and 4");
  t.n_dims = 5;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "tensor[0] 'w' n_dims", "5 is not between 1 and 4");

  t = ok;
  t.ne[0] = 1ull << 32;
  t.ne[1] = 1ull << 32;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "offset 78: tensor[0] 'w' dim[1]", "overflows int64");
  t.ne[0] = 1ull << 63;
  t.ne[1] = 1;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "offset 70: tensor[0] 'w' dim[0]",
              "does not fit in int64");
  t.n_dims = 4;
  t.ne[0] = 1ull << 20;
  t.ne[1] = 1ull << 20;
  t.ne[2] = 1ull << 20;
  t.ne[3] = 1ull << 20;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "tensor[0] 'w' dim[3]", "overflows int64");
  /* 2^62 f32 elements: the byte count overflows 64 bits */
  t.n_dims = 2;
  t.ne[0] = 1ull << 31;
  t.ne[1] = 1ull << 31;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "tensor[0] 'w' type", "overflow a 64-bit byte count");
  /* big but representable: runs past the end of the file */
  t.ne[0] = 1ull << 30;
  t.ne[1] = 1ull << 30;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "tensor[0] 'w' offset",
              "run past the end of the file");

  t = ok;
  uint32_t bad_types[] = {4, 5, 31, 40, 1000, 0xffffffffu};
  for (size_t k = 0; k < STRATA_ARRAY_LEN(bad_types); k++) {
    t.type = bad_types[k];
    r_tensor_file(&r, &t, 1, 32);
    char want[64];
    snprintf(want, sizeof want, "unknown ggml type %" PRIu32, bad_types[k]);
    expect_fail(r.p, r.len, "offset 86: tensor[0] 'w' type", want);
  }
  t = ok;
  t.type = STRATA_TYPE_Q8_0;
  t.ne[0] = 33;
  r_tensor_file(&r, &t, 1, 64);
  expect_fail(r.p, r.len, "offset 70: tensor[0] 'w' dim[0]",
              "33 is not a multiple of the q8_0 block size 32");
  t.type = STRATA_TYPE_Q4_K;
  t.ne[0] = 32;
  r_tensor_file(&r, &t, 1, 64);
  expect_fail(r.p, r.len, "dim[0]", "block size 256");

  t = ok;
  t.offset = 4;
  r_tensor_file(&r, &t, 1, 64);
  expect_fail(r.p, r.len, "offset 90: tensor[0] 'w' offset",
              "4 is not a multiple of the alignment 32");
  t.offset = 32;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "offset 90: tensor[0] 'w' offset",
              "32 data bytes at data offset 128 + 32 run past the end of the "
              "file (size 160)");
  t.offset = UINT64_MAX - 31;
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "tensor[0] 'w' offset", "run past the end");
  t = ok;
  r_tensor_file(&r, &t, 1, 31); /* one byte short */
  expect_fail(r.p, r.len, "tensor[0] 'w' offset", "(size 159)");

  /* empty name, NUL in a name, name length absurd */
  t = ok;
  t.name = "";
  r_tensor_file(&r, &t, 1, 32);
  expect_fail(r.p, r.len, "offset 57: tensor[0] '' name", "empty");
  r.len = 0;
  r_header(&r, 3, 1, 0);
  r_u64(&r, 1ull << 62);
  r_bytes(&r, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 32);
  expect_fail(r.p, r.len, "offset 24: tensor[0] name length", "cannot fit");

  /* duplicate names */
  struct tinfo two[3] = {ok, ok, ok};
  two[1].offset = 32;
  two[2].name = "v";
  two[2].offset = 64;
  r_tensor_file(&r, two, 3, 96);
  expect_fail(r.p, r.len, "tensor[1] 'w' name", "duplicate of tensor[0]");

  /* overlaps: the same range, a partial overlap, one inside another */
  two[1].name = "u";
  two[1].offset = 0;
  r_tensor_file(&r, two, 3, 96);
  expect_fail(r.p, r.len, "tensor[1] 'u' offset",
              "data [0, 32) overlaps tensor[0] 'w' [0, 32)");
  struct tinfo big[3] = {{"a", 1, {64, 1, 1, 1}, STRATA_TYPE_F32, 0},
                         {"b", 1, {8, 1, 1, 1}, STRATA_TYPE_F32, 256},
                         {"c", 1, {8, 1, 1, 1}, STRATA_TYPE_F32, 64}};
  r_tensor_file(&r, big, 3, 512);
  expect_fail(r.p, r.len, "tensor[2] 'c' offset",
              "data [64, 96) overlaps tensor[0] 'a' [0, 256)");
  big[2].offset = 320;
  big[1].ne[0] = 32; /* b: [256, 384) overlaps c: [320, 352) */
  r_tensor_file(&r, big, 3, 512);
  expect_fail(r.p, r.len, "tensor[2] 'c' offset", "overlaps tensor[1] 'b'");
  big[2].offset = 384; /* adjacent is fine */
  r_tensor_file(&r, big, 3, 512);
  g = expect_ok(r.p, r.len, &copy);
  strata_gguf_close(g);
  free(copy);
  free(r.p);
}
END_TEST

/* Touches everything a successful open exposes. */
static void walk_value(const struct strata_gguf_value *v,
                       volatile uint64_t *sink) {
  switch (v->type) {
  case STRATA_GGUF_STRING:
    ck_assert_int_eq(v->v.str.ptr[v->v.str.len], '\0');
    *sink += strlen(v->v.str.ptr);
    break;
  case STRATA_GGUF_ARRAY:
    ck_assert_int_le(v->v.arr.type, STRATA_GGUF_FLOAT64);
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
      if (v->v.arr.type == STRATA_GGUF_STRING) {
        const struct strata_gguf_str *s = &v->v.arr.strs[i];
        ck_assert_int_eq(s->ptr[s->len], '\0');
        *sink += s->len ? (uint8_t)s->ptr[s->len - 1] : 0;
      } else if (v->v.arr.type == STRATA_GGUF_ARRAY) {
        walk_value(&v->v.arr.items[i], sink);
      } else {
        *sink += (uint64_t)strata_gguf_arr_i64(v, i);
        double d = strata_gguf_arr_f64(v, i);
        *sink += d == d;
      }
    }
    break;
  case STRATA_GGUF_BOOL:
    ck_assert_uint_le(v->v.u64, 1);
    break;
  default:
    *sink += v->v.u64;
  }
}

static void walk(strata_gguf_t *g, size_t size) {
  volatile uint64_t sink = 0;
  ck_assert_uint_le(strata_gguf_heap_bytes(g), 16 * (uint64_t)size + 4096);
  uint64_t a = strata_gguf_alignment(g);
  ck_assert(a && (a & (a - 1)) == 0);
  for (uint64_t i = 0; i < strata_gguf_n_kv(g); i++) {
    const struct strata_gguf_kv *kv = strata_gguf_kv_at(g, i);
    ck_assert_uint_eq(strlen(kv->key.ptr), kv->key.len);
    ck_assert_ptr_eq(strata_gguf_get(g, kv->key.ptr), &kv->value);
    walk_value(&kv->value, &sink);
  }
  for (uint64_t i = 0; i < strata_gguf_n_tensors(g); i++) {
    const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, i);
    ck_assert_ptr_eq(strata_gguf_find_tensor(g, t->name.ptr), t);
    ck_assert_uint_le(strata_gguf_data_offset(g) + t->offset + t->nbytes, size);
    ck_assert(t->n_dims >= 1 && t->n_dims <= 4);
    if (t->nbytes) {
      sink += ((const uint8_t *)t->data)[0];
      sink += ((const uint8_t *)t->data)[t->nbytes - 1];
    }
  }
  (void)sink;
}

START_TEST(random_mutations) {
  size_t size;
  uint8_t *base = sample_bytes(3, 0, &size);
  void *copy0;
  strata_gguf_t *g0 = expect_ok(base, size, &copy0);
  size_t header = (size_t)strata_gguf_data_offset(g0);
  strata_gguf_close(g0);
  free(copy0);

  static const uint64_t interesting[] = {
      0,          1,          2,          7,          8,
      9,          12,         13,         31,         32,
      33,         255,        256,        65535,      1ull << 31,
      1ull << 32, 1ull << 62, 1ull << 63, UINT64_MAX, UINT64_MAX - 1};
  uint8_t *m = malloc(size + 64);
  int accepted = 0, rejected = 0;
  const int iterations = 5000;
  for (int it = 0; it < iterations; it++) {
    rng_state = 0x9e3779b97f4a7c15ull * (uint64_t)(it + 1);
    memcpy(m, base, size);
    size_t n = size;
    int edits = 1 + (int)(rng() % 4);
    for (int e = 0; e < edits; e++) {
      /* mostly in the header, where the structure is */
      size_t lim = rng() % 8 && header < n ? header : n;
      if (lim == 0) break;
      size_t at = (size_t)(rng() % lim);
      switch (rng() % 6) {
      case 0:
        m[at] = (uint8_t)rng();
        break;
      case 1:
        m[at] ^= (uint8_t)(1u << (rng() % 8));
        break;
      case 2: {
        static const uint8_t b[] = {0, 1, 2, 0x7f, 0x80, 0xfe, 0xff};
        m[at] = b[rng() % sizeof b];
        break;
      }
      case 3:
        if (at + 8 <= n) {
          uint64_t v = interesting[rng() % STRATA_ARRAY_LEN(interesting)];
          memcpy(m + at, &v, 8);
        }
        break;
      case 4:
        if (at + 4 <= n) {
          uint32_t v =
              (uint32_t)interesting[rng() % STRATA_ARRAY_LEN(interesting)];
          memcpy(m + at, &v, 4);
        }
        break;
      case 5:
        n = at; /* truncate */
        break;
      }
    }
    strata_gguf_t *g = NULL;
    void *copy;
    if (open_copy(m, n, &g, &copy) == 0) {
      walk(g, n);
      strata_gguf_close(g);
      accepted++;
    } else {
      check_message(errbuf, "<memory>");
      ck_assert_uint_le(message_offset(errbuf), n);
      rejected++;
    }
    free(copy);
  }
  fprintf(stderr, "gguf: %d mutations: %d accepted, %d rejected\n", iterations,
          accepted, rejected);
  ck_assert_int_gt(rejected, iterations / 2);
  ck_assert_int_gt(accepted, 0);
  free(m);
  free(base);
}
END_TEST

/* Under an address-space limit, absurd counts must still be refused for
 * what they are, never reach an allocation (which would fail and say "out
 * of memory"), and a real 7.8 MB vocabulary must still load. ASan reserves
 * terabytes of address space, so this only runs in plain builds. Runs in a
 * child of its own, so the limit never leaks into other tests. */
START_TEST(bounded_allocations) {
  if (UNDER_SANITIZER) return;
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld", &pages) != 1) _exit(3);
    fclose(f);
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max =
        (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (256u << 20);
    if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
    struct raw r = {0};
    const uint64_t counts[] = {1ull << 24, 1ull << 32, 1ull << 40, 1ull << 62,
                               UINT64_MAX};
    for (size_t k = 0; k < STRATA_ARRAY_LEN(counts); k++) {
      for (int kind = 0; kind < 5; kind++) {
        r.len = 0;
        r_header(&r, 3, kind == 0 ? counts[k] : 0, kind == 1 ? counts[k] : 1);
        if (kind >= 2) {
          r_str(&r, "k");
          r_u32(&r, kind == 2 ? STRATA_GGUF_STRING : STRATA_GGUF_ARRAY);
          if (kind != 2)
            r_u32(&r, kind == 3 ? STRATA_GGUF_STRING : STRATA_GGUF_ARRAY);
          r_u64(&r, counts[k]);
        }
        for (int pad = 0; pad < 64; pad++)
          r_u64(&r, 0);
        strata_gguf_t *g = NULL;
        if (strata_gguf_open_memory(r.p, r.len, &g, errbuf, sizeof errbuf) ==
                0 ||
            !strstr(errbuf, "cannot fit")) {
          fprintf(stderr, "count %" PRIu64 " kind %d: %s\n", counts[k], kind,
                  g ? "accepted" : errbuf);
          _exit(1);
        }
      }
    }
    free(r.p);
    char *path = test_shared_path("vocab/ggml-vocab-llama-bpe.gguf");
    strata_gguf_t *g = NULL;
    if (strata_gguf_open(path, &g, errbuf, sizeof errbuf) != 0) {
      fprintf(stderr, "vocab under the limit: %s\n", errbuf);
      _exit(2);
    }
    strata_gguf_close(g);
    free(path);
    _exit(0);
  }
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "child failed with status %d", st);
}
END_TEST

/* ---- strata inspect ------------------------------------------------------- */

static int run_capture(const char *cmd, char **out) {
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  size_t k;
  while ((k = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += k;
    if (len + 1 == cap) buf = realloc(buf, cap *= 2);
  }
  buf[len] = '\0';
  *out = buf;
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(inspect_command) {
  char bin[4096];
  snprintf(bin, sizeof bin, "%s/strata", test_builddir());
  /* make check builds strata before any test runs. */
  ck_assert_msg(access(bin, X_OK) == 0, "%s is not built", bin);
  size_t size;
  void *buf = sample_bytes(3, 64, &size);
  char *path = tmp_path("s.gguf");
  write_bytes(path, buf, size);
  free(buf);
  char cmd[8192], *out;
  snprintf(cmd, sizeof cmd, "'%s' inspect '%s' 2>&1", bin, path);
  ck_assert_int_eq(run_capture(cmd, &out), 0);
  static const char *const want[] = {
      "version:      GGUF v3",
      "alignment:    64",
      "  general.alignment: uint32 64\n",
      "  t.u8: uint8 255\n",
      "  t.i64: int64 -9223372036854775808\n",
      "  t.f32: float32 0.00125\n",
      "  t.bool1: bool true\n",
      "  t.str: string \"hello\\n\\\"world\\\"\"\n",
      "  t.str_nul: string \"a\\x00b\"\n",
      "  t.arr.str: [string; 5] [\"\", \"a\", \"\xc4\xa0hello\", \"x\\ny "
      "\\\"q\\\"\", \"<0x0A>\"]\n",
      "  t.arr.strn: [string; 3] [\"a\\x00b\", \"\", \"\\xff\\x01\"]\n",
      "  t.arr.long: [uint32; 40] [0, 1, 2, 3, 4, 5, 6, 7, ... ]\n",
      "  t.arr.empty: [uint32; 0] []\n",
      "  t.nested: [array; 3] [[uint32; 3] [1, 2, 3], [string; 2] [\"p\", "
      "\"q\"], [int8; 0] []]\n",
      "  t.arr.bool: [bool; 4] [true, false, true, true]\n",
      "  t.arr.f64: [float64; 3] [3.141592653589793, -1e+300, "
      "4.94065645841247e-324]\n",
      "q4_k",
      "[256]",
      "total: 7 tensors",
  };
  for (size_t i = 0; i < STRATA_ARRAY_LEN(want); i++)
    ck_assert_msg(strstr(out, want[i]), "inspect output lacks '%s':\n%s",
                  want[i], out);
  free(out);
  snprintf(cmd, sizeof cmd, "'%s' inspect --all '%s' 2>&1", bin, path);
  ck_assert_int_eq(run_capture(cmd, &out), 0);
  ck_assert_ptr_nonnull(strstr(out,
                               "[uint32; 40] [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, "
                               "10, 11, 0, 0"));
  ck_assert_ptr_null(strstr(out, "..."));
  free(out);

  /* a cut file: exit 1, one line naming the offset */
  FILE *f = fopen(path, "r+b");
  ck_assert_int_eq(ftruncate(fileno(f), 200), 0);
  fclose(f);
  snprintf(cmd, sizeof cmd, "'%s' inspect '%s' 2>&1 >/dev/null", bin, path);
  ck_assert_int_eq(run_capture(cmd, &out), 1);
  ck_assert_msg(strncmp(out, "strata: inspect: ", 17) == 0, "%s", out);
  ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1); /* one line */
  out[strlen(out) - 1] = '\0';
  check_message(out + 17, path);
  free(out);
  snprintf(cmd, sizeof cmd, "'%s' inspect 2>&1", bin);
  ck_assert_int_eq(run_capture(cmd, &out), 2);
  free(out);
  snprintf(cmd, sizeof cmd, "'%s' inspect --bogus x 2>&1", bin);
  ck_assert_int_eq(run_capture(cmd, &out), 2);
  free(out);
  free(path);
}
END_TEST

static Suite *gguf_suite(void) {
  Suite *s = suite_create("gguf");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, type_tables);
  tcase_add_loop_test(tc, round_trip_memory, 0, 10);
  tcase_add_loop_test(tc, round_trip_file, 0, 10);
  tcase_add_test(tc, round_trip_real_files);
  tcase_add_test(tc, stream_matches_memory);
  tcase_add_test(tc, stream_errors);
  tcase_add_test(tc, writer_refuses);
  tcase_add_test(tc, typed_lookups);
  tcase_add_test(tc, real_stories260k);
  tcase_add_loop_test(tc, real_vocab, 0, (int)STRATA_ARRAY_LEN(vocabs));
  tcase_add_test(tc, real_vocab_loads_fast);
  tcase_add_test(tc, open_errors);
  tcase_add_test(tc, truncated_at_every_offset);
  tcase_add_test(tc, bad_header);
  tcase_add_test(tc, bad_metadata);
  tcase_add_test(tc, nesting_limit);
  tcase_add_test(tc, bad_tensors);
  tcase_add_test(tc, random_mutations);
  tcase_add_test(tc, bounded_allocations);
  tcase_add_test(tc, inspect_command);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  struct stat st;
  if (stat(test_shared_dir(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "gguf: %s missing, skipping\n", test_shared_dir());
    return 77;
  }
  int rc = test_run_suite(gguf_suite());
  for (int i = 0; i < N_SAMPLE_TENSORS; i++)
    free(sample_data[i]);
  return rc;
}
