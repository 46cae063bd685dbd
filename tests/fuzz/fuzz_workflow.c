/* The router's workflow API bodies (route_wf_parse.h) on arbitrary bytes:
 * declarations, A2A messages and barrier calls are accepted or refused with
 * a message, never a crash; every accepted message builds an envelope that
 * carries its parts unchanged and survives a JSON round trip; an accepted
 * barrier call has parties in range; names are checked byte for byte. */
#include "config.h"

#include <string.h>

#include <jansson.h>

#include "fuzz.h"
#include "route_wf_parse.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const int name = route_wf_name_ok((const char *)data, size);
  if (name && (size == 0 || size > ROUTE_WF_MAX_NAME || memchr(data, 0, size))) abort();
  json_error_t je;
  json_t *o = json_loadb((const char *)data, size, JSON_ALLOW_NUL, &je);
  if (!o) return 0;
  const char *e = route_wf_check_declare(o, 8, 8);
  if (e && !*e) abort();
  e = route_wf_check_message(o);
  if (!e) {
    const json_t *to = json_object_get(o, "to");
    json_t *env = route_wf_envelope(o, 7, json_string_value(json_object_get(o, "from")),
                                    json_is_string(to) ? json_string_value(to) : NULL, "wf", "m");
    if (!env) abort();
    const json_t *m = json_object_get(o, "message") ? json_object_get(o, "message") : o;
    if (!json_equal(json_object_get(json_object_get(env, "message"), "parts"),
                    json_object_get(m, "parts")))
      abort();
    char *s = json_dumps(env, JSON_COMPACT | JSON_ENCODE_ANY);
    json_t *back = s ? json_loads(s, JSON_ALLOW_NUL, NULL) : NULL;
    if (!back || !json_equal(back, env)) abort();
    json_decref(back);
    free(s);
    json_decref(env);
  } else if (!*e) {
    abort();
  }
  int parties = 0;
  if (!route_wf_check_barrier(o, &parties) && (parties < 1 || parties > 100000)) abort();
  json_decref(o);
  return 0;
}
