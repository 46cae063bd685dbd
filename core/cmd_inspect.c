/* strata inspect [--all] MODEL.gguf: the header, every metadata key with its
 * type and value, and the tensor table. Meant for people reading a file they
 * do not trust yet, so everything from the file is printed escaped. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"

/* Without --all: elements shown per array, bytes shown per string. */
#define SHOW_ELEMS 8
#define SHOW_BYTES 256

static const char usage_line[] = "usage: strata inspect [--all] MODEL.gguf\n";

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
  if (c >= 0xc2 && c <= 0xdf)
    len = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0)
      lo = 0xa0; /* no overlongs */
    else if (c == 0xed)
      hi = 0x9f; /* no surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0)
      lo = 0x90;
    else if (c == 0xf4)
      hi = 0x8f;
  } else
    return 0;
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xbf) return 0;
  return len;
}

/* Valid UTF-8 is printed as is (tokens are mostly UTF-8); control bytes,
 * quotes, backslashes and invalid bytes are escaped so one line stays one
 * line and the output is unambiguous. */
static void put_escaped(FILE *f, const char *str, uint64_t len, uint64_t max) {
  const unsigned char *s = (const unsigned char *)str;
  uint64_t n = len < max ? len : max;
  for (uint64_t i = 0; i < n;) {
    unsigned char c = s[i];
    if (c >= 0x80) {
      size_t k = utf8_len(s + i, (size_t)(len - i));
      if (k) {
        fwrite(s + i, 1, k, f);
        i += k;
        continue;
      }
      fprintf(f, "\\x%02x", c);
    } else if (c == '\n') {
      fputs("\\n", f);
    } else if (c == '\t') {
      fputs("\\t", f);
    } else if (c == '\r') {
      fputs("\\r", f);
    } else if (c == '"' || c == '\\') {
      fputc('\\', f);
      fputc(c, f);
    } else if (c < 0x20 || c == 0x7f) {
      fprintf(f, "\\x%02x", c);
    } else {
      fputc(c, f);
    }
    i++;
  }
}

static void put_string(FILE *f, const struct strata_gguf_str *s, int all) {
  fputc('"', f);
  put_escaped(f, s->ptr, s->len, all ? UINT64_MAX : SHOW_BYTES);
  fputc('"', f);
  if (!all && s->len > SHOW_BYTES)
    fprintf(f, "... (%" PRIu64 " bytes)", s->len);
}

/* Floats in the shortest form that reads back to the same value. */
static void put_f32(FILE *f, float x) {
  char b[64];
  for (int prec = 6; prec <= 9; prec++) {
    snprintf(b, sizeof b, "%.*g", prec, (double)x);
    if (strtof(b, NULL) == x) break;
  }
  fputs(b, f);
}

static void put_f64(FILE *f, double x) {
  char b[64];
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(b, sizeof b, "%.*g", prec, x);
    if (strtod(b, NULL) == x) break;
  }
  fputs(b, f);
}

/* One element of a numeric array, decoded from the packed file bytes. */
static void put_elem(FILE *f, enum strata_gguf_vtype t,
                     const unsigned char *p) {
  switch (t) {
  case STRATA_GGUF_UINT8:
    fprintf(f, "%u", p[0]);
    break;
  case STRATA_GGUF_INT8:
    fprintf(f, "%d", (int8_t)p[0]);
    break;
  case STRATA_GGUF_BOOL:
    fputs(p[0] ? "true" : "false", f);
    break;
  case STRATA_GGUF_UINT16: {
    uint16_t x;
    memcpy(&x, p, 2);
    fprintf(f, "%u", x);
    break;
  }
  case STRATA_GGUF_INT16: {
    int16_t x;
    memcpy(&x, p, 2);
    fprintf(f, "%d", x);
    break;
  }
  case STRATA_GGUF_UINT32: {
    uint32_t x;
    memcpy(&x, p, 4);
    fprintf(f, "%" PRIu32, x);
    break;
  }
  case STRATA_GGUF_INT32: {
    int32_t x;
    memcpy(&x, p, 4);
    fprintf(f, "%" PRId32, x);
    break;
  }
  case STRATA_GGUF_FLOAT32: {
    float x;
    memcpy(&x, p, 4);
    put_f32(f, x);
    break;
  }
  case STRATA_GGUF_UINT64: {
    uint64_t x;
    memcpy(&x, p, 8);
    fprintf(f, "%" PRIu64, x);
    break;
  }
  case STRATA_GGUF_INT64: {
    int64_t x;
    memcpy(&x, p, 8);
    fprintf(f, "%" PRId64, x);
    break;
  }
  case STRATA_GGUF_FLOAT64: {
    double x;
    memcpy(&x, p, 8);
    put_f64(f, x);
    break;
  }
  default:
    fputc('?', f);
  }
}

/* "[type; n] [a, b, c, ... ]", nested arrays the same way. */
static void put_array(FILE *f, const struct strata_gguf_value *v, int all) {
  enum strata_gguf_vtype et = v->v.arr.type;
  uint64_t n = v->v.arr.n;
  uint64_t show = all || n <= SHOW_ELEMS ? n : SHOW_ELEMS;
  fprintf(f, "[%s; %" PRIu64 "] [", strata_gguf_vtype_name(et), n);
  size_t sz = strata_gguf_vtype_size(et);
  for (uint64_t i = 0; i < show; i++) {
    if (i) fputs(", ", f);
    if (et == STRATA_GGUF_STRING)
      put_string(f, &v->v.arr.strs[i], all);
    else if (et == STRATA_GGUF_ARRAY)
      put_array(f, &v->v.arr.items[i], all);
    else
      put_elem(f, et, (const unsigned char *)v->v.arr.data + i * sz);
  }
  if (show < n) fputs(show ? ", ... " : "... ", f);
  fputc(']', f);
}

static void put_value(FILE *f, const struct strata_gguf_value *v, int all) {
  switch (v->type) {
  case STRATA_GGUF_ARRAY:
    put_array(f, v, all);
    return;
  case STRATA_GGUF_STRING:
    fputs("string ", f);
    put_string(f, &v->v.str, all);
    return;
  default:
    break;
  }
  fprintf(f, "%s ", strata_gguf_vtype_name(v->type));
  switch (v->type) {
  case STRATA_GGUF_UINT8:
  case STRATA_GGUF_UINT16:
  case STRATA_GGUF_UINT32:
  case STRATA_GGUF_UINT64:
    fprintf(f, "%" PRIu64, v->v.u64);
    break;
  case STRATA_GGUF_INT8:
  case STRATA_GGUF_INT16:
  case STRATA_GGUF_INT32:
  case STRATA_GGUF_INT64:
    fprintf(f, "%" PRId64, v->v.i64);
    break;
  case STRATA_GGUF_BOOL:
    fputs(v->v.u64 ? "true" : "false", f);
    break;
  case STRATA_GGUF_FLOAT32:
    put_f32(f, (float)v->v.f64);
    break;
  case STRATA_GGUF_FLOAT64:
    put_f64(f, v->v.f64);
    break;
  default:
    fputc('?', f);
  }
}

static void put_size(FILE *f, uint64_t bytes) {
  static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
  fprintf(f, "%" PRIu64 " bytes", bytes);
  if (bytes < 1024) return;
  double x = (double)bytes;
  size_t u = 0;
  x /= 1024;
  while (x >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
    x /= 1024;
    u++;
  }
  fprintf(f, " (%.2f %s)", x, units[u]);
}

/* A name escaped into a buffer, for column alignment. */
static char *escaped_dup(const struct strata_gguf_str *s) {
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  if (!m) return NULL;
  put_escaped(m, s->ptr, s->len, UINT64_MAX);
  if (fclose(m) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

static void format_shape(const struct strata_gguf_tensor *t, char *buf,
                         size_t cap) {
  size_t k = 0;
  buf[0] = '\0';
  for (uint32_t d = 0; d < t->n_dims && k < cap; d++) {
    int w = snprintf(buf + k, cap - k, "%s%" PRIu64, d ? ", " : "[", t->ne[d]);
    if (w < 0) break;
    k += (size_t)w;
  }
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

static void print_tensors(FILE *f, const strata_gguf_t *g) {
  uint64_t n = strata_gguf_n_tensors(g);
  fprintf(f, "\ntensors: %" PRIu64 "\n", n);
  if (n == 0) return;
  /* 4 dims of up to 19 digits, separators and brackets */
  char shape[128];
  int wname = 4, wshape = 5;
  for (uint64_t i = 0; i < n; i++) {
    const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, i);
    if (t->name.len > (uint64_t)wname)
      wname = t->name.len > 48 ? 48 : (int)t->name.len;
    format_shape(t, shape, sizeof shape);
    if (strlen(shape) > (size_t)wshape) wshape = (int)strlen(shape);
  }
  fprintf(f, "  %5s  %-*s  %-7s  %-*s  %14s  %14s\n", "#", wname, "name",
          "type", wshape, "shape", "offset", "bytes");
  uint64_t total = 0, elems = 0;
  for (uint64_t i = 0; i < n; i++) {
    const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, i);
    format_shape(t, shape, sizeof shape);
    char *name = escaped_dup(&t->name);
    fprintf(f,
            "  %5" PRIu64 "  %-*s  %-7s  %-*s  %14" PRIu64 "  %14" PRIu64 "\n",
            i, wname, name ? name : "?", strata_ggml_type_name(t->type), wshape,
            shape, t->offset, t->nbytes);
    free(name);
    total += t->nbytes;
    /* the reader guarantees the product fits in int64 */
    elems += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
  }
  fprintf(f, "total: %" PRIu64 " tensors, %" PRIu64 " elements, ", n, elems);
  put_size(f, total);
  fputc('\n', f);
}

int strata_cmd_inspect(int argc, char **argv) {
  int all = 0;
  const char *path = NULL;
  int opts = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (opts && strcmp(a, "--") == 0) {
      opts = 0;
    } else if (opts && strcmp(a, "--all") == 0) {
      all = 1;
    } else if (opts && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
      fputs(usage_line, stdout);
      fputs("Prints a GGUF file's header, metadata and tensor table; --all "
            "prints arrays and strings whole.\n",
            stdout);
      return 0;
    } else if (opts && a[0] == '-' && a[1]) {
      fprintf(stderr, "strata: inspect: unknown option '%s'\n%s", a,
              usage_line);
      return 2;
    } else if (path) {
      fprintf(stderr, "strata: inspect: one file at a time\n%s", usage_line);
      return 2;
    } else {
      path = a;
    }
  }
  if (!path) {
    fprintf(stderr, "strata: inspect: no file given\n%s", usage_line);
    return 2;
  }

  char err[1024];
  strata_gguf_t *g = NULL;
  if (strata_gguf_open(path, &g, err, sizeof err) != 0) {
    fprintf(stderr, "strata: inspect: %s\n", err);
    return 1;
  }

  FILE *f = stdout;
  fprintf(f, "file:         %s\n", path);
  fprintf(f, "version:      GGUF v%" PRIu32 "\n", strata_gguf_version(g));
  fprintf(f, "alignment:    %" PRIu64 "\n", strata_gguf_alignment(g));
  fprintf(f, "data offset:  %" PRIu64 "\n", strata_gguf_data_offset(g));
  fprintf(f, "file size:    ");
  put_size(f, strata_gguf_file_size(g));
  fputc('\n', f);

  uint64_t n_kv = strata_gguf_n_kv(g);
  fprintf(f, "\nmetadata: %" PRIu64 " keys\n", n_kv);
  for (uint64_t i = 0; i < n_kv; i++) {
    const struct strata_gguf_kv *kv = strata_gguf_kv_at(g, i);
    fputs("  ", f);
    put_escaped(f, kv->key.ptr, kv->key.len, UINT64_MAX);
    fputs(": ", f);
    put_value(f, &kv->value, all);
    fputc('\n', f);
  }
  print_tensors(f, g);
  strata_gguf_close(g);

  if (fflush(f) != 0 || ferror(f)) {
    fprintf(stderr, "strata: inspect: error writing the output\n");
    return 1;
  }
  return 0;
}
