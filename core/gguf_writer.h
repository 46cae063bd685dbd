/* GGUF v2/v3 writer, for tests and for `strata mkmodel`.
 *
 * Metadata is serialized as it is set (a key set twice keeps its place and
 * takes the new value). Tensors are declared with their shape and type; their
 * data either comes with the declaration (a pointer that must stay valid
 * until the file is written) or is streamed afterwards, so a file of many GB
 * never has to be in memory:
 *
 *   w = strata_gguf_writer_new(3);
 *   strata_gguf_writer_set_str(w, "general.architecture", "llama");
 *   strata_gguf_writer_add_tensor(w, "tok.weight", STRATA_TYPE_Q8_0, 2, ne,
 *                                 NULL);                 // data streamed
 *   strata_gguf_writer_begin(w, f, err, sizeof err);     // header + padding
 *   strata_gguf_writer_write(w, chunk, n, err, sizeof err);  // ... repeated
 *   strata_gguf_writer_end(w, err, sizeof err);
 *
 * Tensor data is written in declaration order, each tensor at an offset that
 * is a multiple of general.alignment (default 32), gaps zero-filled.
 *
 * Errors: the metadata and tensor calls return 0 or -1; the first failure is
 * kept (strata_gguf_writer_error) and makes every later call and the final
 * write fail with it, so a sequence of calls can be checked once at the end.
 * Numeric data is taken in host byte order, which is little-endian on every
 * supported host. */
#ifndef STRATA_GGUF_WRITER_H
#define STRATA_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gguf.h"

typedef struct strata_gguf_writer strata_gguf_writer_t;

/* version: 2 or 3. NULL on a bad version or out of memory. */
strata_gguf_writer_t *strata_gguf_writer_new(uint32_t version);
void strata_gguf_writer_free(strata_gguf_writer_t *w);
/* The first error, or "" when there is none. */
const char *strata_gguf_writer_error(const strata_gguf_writer_t *w);

/* Sets general.alignment (uint32, a power of two). Same as
 * strata_gguf_writer_set_u32(w, "general.alignment", alignment). */
int strata_gguf_writer_set_alignment(strata_gguf_writer_t *w,
                                     uint32_t alignment);

/* Scalars. */
int strata_gguf_writer_set_u8(strata_gguf_writer_t *w, const char *key,
                              uint8_t v);
int strata_gguf_writer_set_i8(strata_gguf_writer_t *w, const char *key,
                              int8_t v);
int strata_gguf_writer_set_u16(strata_gguf_writer_t *w, const char *key,
                               uint16_t v);
int strata_gguf_writer_set_i16(strata_gguf_writer_t *w, const char *key,
                               int16_t v);
int strata_gguf_writer_set_u32(strata_gguf_writer_t *w, const char *key,
                               uint32_t v);
int strata_gguf_writer_set_i32(strata_gguf_writer_t *w, const char *key,
                               int32_t v);
int strata_gguf_writer_set_u64(strata_gguf_writer_t *w, const char *key,
                               uint64_t v);
int strata_gguf_writer_set_i64(strata_gguf_writer_t *w, const char *key,
                               int64_t v);
int strata_gguf_writer_set_f32(strata_gguf_writer_t *w, const char *key,
                               float v);
int strata_gguf_writer_set_f64(strata_gguf_writer_t *w, const char *key,
                               double v);
int strata_gguf_writer_set_bool(strata_gguf_writer_t *w, const char *key,
                                int v);
/* A NUL-terminated string, or len bytes that may hold anything. */
int strata_gguf_writer_set_str(strata_gguf_writer_t *w, const char *key,
                               const char *s);
int strata_gguf_writer_set_strn(strata_gguf_writer_t *w, const char *key,
                                const char *s, size_t len);

/* An array of n numbers of elem_type (not STRING/ARRAY), packed as in C:
 * uint8_t[] for UINT8 and BOOL (0/1), float[] for FLOAT32, ... */
int strata_gguf_writer_set_array(strata_gguf_writer_t *w, const char *key,
                                 enum strata_gguf_vtype elem_type,
                                 const void *data, uint64_t n);
/* Arrays of n NUL-terminated strings, or of n strings with lengths. */
int strata_gguf_writer_set_str_array(strata_gguf_writer_t *w, const char *key,
                                     const char *const *strs, uint64_t n);
int strata_gguf_writer_set_strn_array(strata_gguf_writer_t *w, const char *key,
                                      const struct strata_gguf_str *strs,
                                      uint64_t n);
/* Any value as the reader represents it, nested arrays included (arr.data
 * for numbers, arr.strs for strings, arr.items for arrays, each item itself
 * of type ARRAY). Also copies a value straight from a file being read:
 * strata_gguf_writer_set_value(w, kv->key.ptr, &kv->value). */
int strata_gguf_writer_set_value(strata_gguf_writer_t *w, const char *key,
                                 const struct strata_gguf_value *v);

/* Declares a tensor: type is an enum strata_ggml_type, ne[0..n_dims-1] its
 * shape (ne[0] contiguous, a multiple of the type's block size). data is
 * NULL when the bytes will be streamed with strata_gguf_writer_write, or
 * points to the whole tensor, to be read when the data is written. */
int strata_gguf_writer_add_tensor(strata_gguf_writer_t *w, const char *name,
                                  uint32_t type, uint32_t n_dims,
                                  const uint64_t *ne, const void *data);

/* Layout of the file as declared so far. */
uint64_t strata_gguf_writer_n_tensors(const strata_gguf_writer_t *w);
uint64_t strata_gguf_writer_data_offset(const strata_gguf_writer_t *w);
uint64_t strata_gguf_writer_file_size(const strata_gguf_writer_t *w);

/* Streaming: begin writes the header, metadata, tensor table and padding at
 * f's current position; no metadata or tensor can be added afterwards.
 * write appends bytes of tensor data in declaration order (any chunking;
 * tensors declared with a data pointer are written when their turn
 * comes); end checks that every tensor got all its bytes and flushes. f
 * stays open and belongs to the caller. */
int strata_gguf_writer_begin(strata_gguf_writer_t *w, FILE *f, char *err,
                             size_t errlen);
int strata_gguf_writer_write(strata_gguf_writer_t *w, const void *data,
                             size_t n, char *err, size_t errlen);
int strata_gguf_writer_end(strata_gguf_writer_t *w, char *err, size_t errlen);

/* All in one, every tensor declared with its data: to a new file (removed
 * again on failure), or to a malloc'd buffer the caller frees. */
int strata_gguf_writer_write_file(strata_gguf_writer_t *w, const char *path,
                                  char *err, size_t errlen);
int strata_gguf_writer_write_memory(strata_gguf_writer_t *w, void **out,
                                    size_t *size, char *err, size_t errlen);

#endif
