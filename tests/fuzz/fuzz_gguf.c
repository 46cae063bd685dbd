/* The GGUF reader on arbitrary bytes: every input is opened from memory,
 * and whatever opens is walked (metadata, tensors). A bad file must give
 * an error with the offset and field, never a crash or an overread. */
#include "config.h"

#include <string.h>

#include "fuzz.h"
#include "gguf.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  strata_gguf_t *g = NULL;
  char err[512];
  /* the reader keeps pointers into the buffer: give it its own copy */
  uint8_t *copy = malloc(size ? size : 1);
  if (!copy) return 0;
  memcpy(copy, data, size);
  if (strata_gguf_open_memory(copy, size, &g, err, sizeof err) == 0) {
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < strata_gguf_n_kv(g); i++) {
      const struct strata_gguf_kv *kv = strata_gguf_kv_at(g, i);
      sink += kv->key.len ? (unsigned char)kv->key.ptr[kv->key.len - 1] : 0;
      const struct strata_gguf_value *v = &kv->value;
      if (v->type == STRATA_GGUF_STRING && v->v.str.len)
        sink += (unsigned char)v->v.str.ptr[v->v.str.len - 1];
      if (v->type == STRATA_GGUF_ARRAY && v->v.arr.n) {
        if (v->v.arr.type == STRATA_GGUF_STRING) {
          const struct strata_gguf_str *last = &v->v.arr.strs[v->v.arr.n - 1];
          sink += last->len ? (unsigned char)last->ptr[last->len - 1] : 0;
        } else if (v->v.arr.type != STRATA_GGUF_ARRAY) {
          sink += (uint64_t)strata_gguf_arr_i64(v, v->v.arr.n - 1);
        }
      }
    }
    for (uint64_t i = 0; i < strata_gguf_n_tensors(g); i++) {
      const struct strata_gguf_tensor *t = strata_gguf_tensor_at(g, i);
      if (t->nbytes) /* first and last byte: inside the buffer */
        sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    (void)sink;
    strata_gguf_close(g);
  } else if (!err[0]) {
    abort(); /* a refusal always says why */
  }
  free(copy);
  return 0;
}
