/* GGUF v2/v3 reader. Hostile input is expected: every count, length, offset,
 * type and dimension is checked before use, and a failure names the field and
 * the byte offset where it was read. Tensor data is mmapped, never copied. */
#ifndef STRATA_GGUF_H
#define STRATA_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum strata_gguf_vtype {
  STRATA_GGUF_UINT8 = 0,
  STRATA_GGUF_INT8 = 1,
  STRATA_GGUF_UINT16 = 2,
  STRATA_GGUF_INT16 = 3,
  STRATA_GGUF_UINT32 = 4,
  STRATA_GGUF_INT32 = 5,
  STRATA_GGUF_FLOAT32 = 6,
  STRATA_GGUF_BOOL = 7,
  STRATA_GGUF_STRING = 8,
  STRATA_GGUF_ARRAY = 9,
  STRATA_GGUF_UINT64 = 10,
  STRATA_GGUF_INT64 = 11,
  STRATA_GGUF_FLOAT64 = 12,
};

/* A string as stored in the file: not necessarily NUL-free, but the reader
 * always stores a terminating NUL after len bytes so ptr is usable as a C
 * string when the value holds no NUL. */
struct strata_gguf_str {
  uint64_t len;
  const char *ptr;
};

struct strata_gguf_value {
  enum strata_gguf_vtype type;
  union {
    uint64_t u64; /* UINT8/16/32/64 and BOOL (0/1) */
    int64_t i64;  /* INT8/16/32/64 */
    double f64;   /* FLOAT32/64 */
    struct strata_gguf_str str;
    struct {
      enum strata_gguf_vtype type; /* element type */
      uint64_t n;
      /* numeric elements: packed little-endian data of n elements, each
       * strata_gguf_type_size(type) bytes (points into the mapped file) */
      const void *data;
      /* STRING elements: n strings; ARRAY elements: n nested values */
      const struct strata_gguf_str *strs;
      const struct strata_gguf_value *items;
    } arr;
  } v;
};

struct strata_gguf_kv {
  struct strata_gguf_str key;
  struct strata_gguf_value value;
};

#define STRATA_GGUF_MAX_DIMS 4

struct strata_gguf_tensor {
  struct strata_gguf_str name;
  uint32_t type;     /* enum strata_ggml_type */
  uint32_t n_dims;
  uint64_t ne[STRATA_GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension;
                                        unused dims are 1 */
  uint64_t offset;   /* relative to the start of the data section */
  uint64_t nbytes;
  const void *data;  /* into the mapping */
};

typedef struct strata_gguf strata_gguf_t;

/* Opens and validates a file; tensor data is mmapped read-only. */
int strata_gguf_open(const char *path, strata_gguf_t **out, char *err,
                     size_t errlen);
/* Same on a caller-owned buffer that must outlive the handle (tests, fuzzing). */
int strata_gguf_open_memory(const void *data, size_t size, strata_gguf_t **out,
                            char *err, size_t errlen);
void strata_gguf_close(strata_gguf_t *g);
/* The caller will not read [p, p + bytes) of the file's mapping again (a
 * tensor it has copied elsewhere): the whole pages inside leave the process's
 * resident memory (a later read faults them back in from the file). Nothing
 * for a caller's buffer. */
void strata_gguf_release(strata_gguf_t *g, const void *p, uint64_t bytes);

uint32_t strata_gguf_version(const strata_gguf_t *g);
uint64_t strata_gguf_alignment(const strata_gguf_t *g);
uint64_t strata_gguf_data_offset(const strata_gguf_t *g); /* of the data section */
uint64_t strata_gguf_file_size(const strata_gguf_t *g);

uint64_t strata_gguf_n_kv(const strata_gguf_t *g);
const struct strata_gguf_kv *strata_gguf_kv_at(const strata_gguf_t *g,
                                               uint64_t i);
/* NULL when absent. */
const struct strata_gguf_value *strata_gguf_get(const strata_gguf_t *g,
                                                const char *key);

/* Typed lookups: 0 on success, -1 when absent or of an incompatible type
 * (integers convert between widths when the value fits). */
int strata_gguf_get_int(const strata_gguf_t *g, const char *key, int64_t *out);
int strata_gguf_get_float(const strata_gguf_t *g, const char *key, double *out);
int strata_gguf_get_bool(const strata_gguf_t *g, const char *key, int *out);
int strata_gguf_get_string(const strata_gguf_t *g, const char *key,
                           const char **out, size_t *len);
/* Array lookup: returns the array value or NULL when absent / not an array. */
const struct strata_gguf_value *strata_gguf_get_array(const strata_gguf_t *g,
                                                      const char *key);
/* Element i of a numeric array as double / int64 (element type converted). */
double strata_gguf_arr_f64(const struct strata_gguf_value *arr, uint64_t i);
int64_t strata_gguf_arr_i64(const struct strata_gguf_value *arr, uint64_t i);

uint64_t strata_gguf_n_tensors(const strata_gguf_t *g);
const struct strata_gguf_tensor *strata_gguf_tensor_at(const strata_gguf_t *g,
                                                       uint64_t i);
const struct strata_gguf_tensor *strata_gguf_find_tensor(const strata_gguf_t *g,
                                                         const char *name);

/* Size in bytes of one element of a metadata value type (0 for STRING/ARRAY). */
size_t strata_gguf_vtype_size(enum strata_gguf_vtype t);
const char *strata_gguf_vtype_name(enum strata_gguf_vtype t);
/* Block layout of a tensor type: 0 and -1 when unknown. */
int strata_ggml_type_layout(uint32_t type, uint32_t *block_size,
                            uint32_t *type_size);
const char *strata_ggml_type_name(uint32_t type);

/* Additions below the original API. */

/* Arrays may nest at most this many levels (an array of arrays is 2). */
#define STRATA_GGUF_MAX_DEPTH 8
/* general.alignment when the key is absent. */
#define STRATA_GGUF_DEFAULT_ALIGNMENT 32

/* Bytes the handle holds on the heap (keys, strings, tables; not the
 * mapping). The reader never allocates more than a small multiple of the
 * file size, whatever the counts in the header claim. */
uint64_t strata_gguf_heap_bytes(const strata_gguf_t *g);

#endif
