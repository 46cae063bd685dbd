/* The reference answers of ../shared/reference/stories260K.jsonl, loaded
 * once by the Check suites that compare against them (test_model,
 * test_engine). Exits 77 (SKIP) when the reference or the model is missing,
 * 1 on a malformed line. Needs jansson and testutil.h. */
#ifndef STRATA_TEST_REFS_H
#define STRATA_TEST_REFS_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define TEST_REFS_MAX 16
#define TEST_REFS_VOCAB 512 /* stories260K */

struct ref {
  char *prompt;
  int32_t *prompt_tokens;
  int n_prompt;
  int32_t *greedy;
  int n_greedy;
  char *greedy_text;
  float *logits; /* [n_prompt][TEST_REFS_VOCAB], when loaded with logits */
};

static struct ref refs[TEST_REFS_MAX];
static int n_refs;

static inline int32_t *test_json_ints(json_t *a, int *n) {
  *n = (int)json_array_size(a);
  int32_t *v = malloc(sizeof *v * (size_t)(*n + 1));
  for (int i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
  return v;
}

/* Fills refs[0, n_refs); with_logits also reads every prompt position's
 * logits. */
static inline void load_refs_with(int with_logits) {
  char *path = test_shared_path("reference/stories260K.jsonl");
  char *model = test_shared_path("models/stories260K.gguf");
  FILE *f = fopen(path, "r");
  FILE *mf = fopen(model, "rb");
  if (!f || !mf) {
    fprintf(stderr, "%s or %s missing: skipping\n", path, model);
    exit(77);
  }
  fclose(mf);
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0 && n_refs < TEST_REFS_MAX) {
    json_error_t je;
    json_t *o = json_loads(line, 0, &je);
    if (!o) {
      fprintf(stderr, "%s: line %d: %s\n", path, n_refs + 1, je.text);
      exit(1);
    }
    struct ref *r = &refs[n_refs++];
    r->prompt = strdup(json_string_value(json_object_get(o, "prompt")));
    r->prompt_tokens = test_json_ints(json_object_get(o, "prompt_tokens"), &r->n_prompt);
    r->greedy = test_json_ints(json_object_get(o, "greedy_tokens"), &r->n_greedy);
    r->greedy_text = strdup(json_string_value(json_object_get(o, "greedy_text")));
    if (with_logits) {
      json_t *pl = json_object_get(o, "prompt_logits");
      if ((int)json_array_size(pl) != r->n_prompt) {
        fprintf(stderr, "%s: line %d: %zu logits rows for %d prompt tokens\n", path, n_refs,
                json_array_size(pl), r->n_prompt);
        exit(1);
      }
      r->logits = malloc(sizeof(float) * (size_t)r->n_prompt * TEST_REFS_VOCAB);
      for (int i = 0; i < r->n_prompt; i++) {
        json_t *row = json_array_get(pl, (size_t)i);
        if ((int)json_array_size(row) != TEST_REFS_VOCAB) {
          fprintf(stderr, "%s: line %d: a logits row of %zu values\n", path, n_refs,
                  json_array_size(row));
          exit(1);
        }
        for (int j = 0; j < TEST_REFS_VOCAB; j++)
          r->logits[(size_t)i * TEST_REFS_VOCAB + j] =
              (float)json_number_value(json_array_get(row, (size_t)j));
      }
    }
    json_decref(o);
  }
  free(line);
  fclose(f);
  free(path);
  free(model);
}

#endif
