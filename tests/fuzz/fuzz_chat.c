/* Chat templates on arbitrary input: the first byte picks a template (by
 * name), the rest is an OpenAI "messages" array (JSON) rendered through it;
 * and the same bytes as a tokenizer.chat_template text for detection. An
 * error names the message, never a crash. */
#include "config.h"

#include <jansson.h>
#include <string.h>

#include "chat_template.h"
#include "fuzz.h"

static const char *const names[] = {
    "llama2",     "llama3",     "llama3.1",          "chatml",     "mistral",
    "mistral-legacy", "mistral-v1", "mistral-v3",    "mistral-v3-tekken", "mistral-v7",
    "mistral-v7-tekken", "zephyr", "gemma",          "gemma2",     "gemma3",
    "plain"};
#define N_NAMES (sizeof names / sizeof names[0])
static struct strata_chat_template tmpl[N_NAMES];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  char err[256];
  for (size_t i = 0; i < N_NAMES; i++)
    if (strata_chat_template_by_name(names[i], &tmpl[i], err, sizeof err) != 0) {
      fprintf(stderr, "fuzz_chat: %s: %s\n", names[i], err);
      abort();
    }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const struct strata_chat_template *t = &tmpl[data[0] % N_NAMES];
  char err[512];
  json_t *m = json_loadb((const char *)data + 1, size - 1, 0, NULL);
  if (m) {
    struct strata_chat_msg *msgs = NULL;
    size_t n = 0;
    if (strata_chat_msgs_from_json(m, &msgs, &n, err, sizeof err) == 0) {
      char *out = NULL;
      size_t len = 0;
      int adds_bos = 0;
      const int rc = strata_chat_apply(t, msgs, n, "<s>", "</s>", data[0] & 0x80 ? 1 : 0, &out,
                                       &len, &adds_bos, err, sizeof err);
      if (rc == 0 && (!out || strlen(out) > len)) abort();
      free(out);
      free(msgs);
    }
    json_decref(m);
  }
  struct strata_chat_template d;
  if (strata_chat_template_detect((const char *)data, size, &d, err, sizeof err) == 0)
    strata_chat_template_free(&d);
  return 0;
}
