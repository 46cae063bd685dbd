/* The workflow API's request bodies checked (route_wf_parse.h). */
#include "config.h"

#include "route_wf_parse.h"

#include <string.h>

int route_wf_name_ok(const char *s, size_t n) {
  if (!s || n == 0 || n > ROUTE_WF_MAX_NAME) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
  /* valid UTF-8 (names go into JSON answers): jansson checks it */
  json_t *t = json_stringn(s, n);
  json_decref(t);
  return t != NULL;
}

int route_wf_name_json(const json_t *v) {
  return json_is_string(v) && route_wf_name_ok(json_string_value(v), json_string_length(v));
}

static const json_t *name_of_agent(const json_t *a) {
  return json_is_object(a) ? json_object_get(a, "name") : a;
}

const char *route_wf_check_declare(const json_t *o, size_t max_agents, size_t max_steps) {
  if (!json_is_object(o)) return "the body must be a JSON object";
  const json_t *jid = json_object_get(o, "id");
  const json_t *agents = json_object_get(o, "agents"), *steps = json_object_get(o, "steps");
  const json_t *ctx = json_object_get(o, "context"), *salt = json_object_get(o, "cache_salt");
  const json_t *ttl = json_object_get(o, "idle_ttl"), *pf = json_object_get(o, "prefill");
  if (jid && !route_wf_name_json(jid))
    return "id must be a string of 1 to 256 bytes without control characters";
  if (agents && !json_is_array(agents)) return "agents must be an array of names (or {\"name\"} objects)";
  if (steps && !json_is_array(steps)) return "steps must be an array of {\"name\", \"agent\", \"after\"} objects";
  if (ctx && !json_is_string(ctx) &&
      !(json_is_object(ctx) && (json_is_array(json_object_get(ctx, "messages")) ||
                                json_is_string(json_object_get(ctx, "prompt")) ||
                                json_is_array(json_object_get(ctx, "prompt")))))
    return "context must be a string (a system prompt) or {\"messages\": [...]} or {\"prompt\": ...}";
  if (salt && !json_is_string(salt)) return "cache_salt must be a string";
  if (ttl && !(json_is_number(ttl) && json_number_value(ttl) >= 1 && json_number_value(ttl) <= 604800))
    return "idle_ttl must be a number of seconds in [1, 604800]";
  if (pf && !json_is_boolean(pf)) return "prefill must be true or false";
  if (json_array_size(agents) > max_agents || json_array_size(steps) > max_steps)
    return "more agents or steps than router.workflows.max_agents / max_steps allow";
  for (size_t i = 0; i < json_array_size(agents); i++)
    if (!route_wf_name_json(name_of_agent(json_array_get(agents, i))))
      return "each agent is a name (1 to 256 bytes) or an object with one";
  for (size_t i = 0; i < json_array_size(steps); i++) {
    const json_t *s = json_array_get(steps, i), *n = json_object_get(s, "name");
    const json_t *ag = json_object_get(s, "agent"), *af = json_object_get(s, "after");
    if (!json_is_object(s) || !route_wf_name_json(n))
      return "each step is an object with a \"name\" (1 to 256 bytes)";
    if (ag && !json_is_null(ag) && !route_wf_name_json(ag)) return "a step's agent is a name";
    if (af && !json_is_array(af)) return "a step's after is an array of earlier step names";
    for (size_t k = 0; k < i; k++)
      if (json_equal(json_object_get(json_array_get(steps, k), "name"), n)) return "two steps have one name";
    for (size_t j = 0; j < json_array_size(af); j++) {
      int earlier = 0;
      for (size_t k = 0; k < i; k++)
        earlier |= json_equal(json_object_get(json_array_get(steps, k), "name"), json_array_get(af, j));
      if (!earlier) return "a step's after may only name steps listed before it (the graph has no cycles)";
    }
  }
  return NULL;
}

/* An A2A Part: {"kind":"text","text"}, {"kind":"data","data":{}} or
 * {"kind":"file","file":{"uri"|"bytes", ...}}. */
const char *route_wf_check_part(const json_t *p) {
  const char *k = json_string_value(json_object_get(p, "kind"));
  if (!json_is_object(p) || !k) return "each part must be an object with a \"kind\"";
  if (strcmp(k, "text") == 0)
    return json_is_string(json_object_get(p, "text")) ? NULL : "a text part needs \"text\"";
  if (strcmp(k, "data") == 0)
    return json_is_object(json_object_get(p, "data")) ? NULL : "a data part needs a \"data\" object";
  if (strcmp(k, "file") == 0) {
    const json_t *f = json_object_get(p, "file");
    return json_is_object(f) && (json_is_string(json_object_get(f, "uri")) ||
                                 json_is_string(json_object_get(f, "bytes")))
               ? NULL
               : "a file part needs a \"file\" object with \"uri\" or \"bytes\"";
  }
  return "a part's kind is text, data or file";
}

/* The A2A message of a body: under "message", or the body itself. */
static const json_t *message_of(const json_t *o) {
  const json_t *m = json_object_get(o, "message");
  return m ? m : o;
}

const char *route_wf_check_message(const json_t *o) {
  if (!json_is_object(o)) return "the body must be a JSON object";
  const json_t *from = json_object_get(o, "from"), *to = json_object_get(o, "to");
  const json_t *m = message_of(o);
  if (!route_wf_name_json(from)) return "from must name the sending agent";
  if (to && !json_is_null(to) && !route_wf_name_json(to))
    return "to must name an agent, or be \"*\" or absent for every agent";
  if (!json_is_object(m)) return "message must be an A2A message object";
  const json_t *parts = json_object_get(m, "parts"), *role = json_object_get(m, "role");
  const json_t *mid = json_object_get(m, "messageId"), *meta = json_object_get(m, "metadata");
  if (!json_is_array(parts) || json_array_size(parts) == 0 || json_array_size(parts) > 64)
    return "parts must be an array of 1 to 64 A2A parts";
  if (role && !(json_is_string(role) && (strcmp(json_string_value(role), "user") == 0 ||
                                         strcmp(json_string_value(role), "agent") == 0)))
    return "role must be \"user\" or \"agent\"";
  if (mid && !route_wf_name_json(mid)) return "messageId must be a string of 1 to 256 bytes";
  if (meta && !json_is_object(meta)) return "metadata must be an object";
  for (size_t i = 0; i < json_array_size(parts); i++) {
    const char *e = route_wf_check_part(json_array_get(parts, i));
    if (e) return e;
  }
  return NULL;
}

json_t *route_wf_envelope(const json_t *o, uint64_t seq, const char *from, const char *to,
                          const char *context_id, const char *def_id) {
  const json_t *m = message_of(o);
  const json_t *role = json_object_get(m, "role"), *mid = json_object_get(m, "messageId");
  const json_t *meta = json_object_get(m, "metadata");
  json_t *msg = json_pack("{s:s,s:s,s:O,s:s,s:s}", "kind", "message", "role",
                          role ? json_string_value(role) : "agent", "parts",
                          json_object_get(m, "parts"), "messageId",
                          mid ? json_string_value(mid) : def_id, "contextId", context_id);
  if (msg && meta && json_object_set(msg, "metadata", (json_t *)meta) != 0) {
    json_decref(msg);
    return NULL;
  }
  return msg ? json_pack("{s:I,s:s,s:s,s:o}", "seq", (json_int_t)seq, "from", from, "to",
                         to ? to : "*", "message", msg)
             : NULL;
}

const char *route_wf_check_barrier(const json_t *o, int *parties) {
  const json_t *p = json_object_get(o, "parties");
  if (!json_is_integer(p) || json_integer_value(p) < 1 || json_integer_value(p) > 100000)
    return "parties must be an integer in [1, 100000]";
  *parties = (int)json_integer_value(p);
  return NULL;
}
