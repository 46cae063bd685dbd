/* The workflow API's request bodies checked (route_wf.c; docs/agents.md):
 * pure functions of the JSON, no router state, so the fuzz target
 * (tests/fuzz/fuzz_workflow.c) drives exactly what the router runs. */
#ifndef STRATA_ROUTE_WF_PARSE_H
#define STRATA_ROUTE_WF_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define ROUTE_WF_MAX_NAME 256 /* bytes of an id, agent, step or barrier name */

/* 1 if s[0, n) is a usable name: 1 to 256 bytes of valid UTF-8, no
 * control character (so no NUL). */
int route_wf_name_ok(const char *s, size_t n);
/* 1 if v is a JSON string that is a usable name. */
int route_wf_name_json(const json_t *v);
/* POST /v1/workflows: NULL if o is a valid declaration with at most
 * max_agents agents and max_steps steps, else what is wrong. Steps' `after`
 * may only name steps listed before them, so the graph has no cycles. */
const char *route_wf_check_declare(const json_t *o, size_t max_agents, size_t max_steps);
/* An A2A part: NULL, or what is wrong with it. */
const char *route_wf_check_part(const json_t *p);
/* POST /v1/workflows/{id}/messages: NULL if o is a valid message (its A2A
 * fields inline, or under "message"), else what is wrong. */
const char *route_wf_check_message(const json_t *o);
/* The envelope a receiver gets for a valid message o: {"seq", "from", "to",
 * "message": {"kind":"message", "role", "parts", "messageId", "contextId",
 * ["metadata"]}}; to NULL: "*". The messageId defaults to def_id. NULL out
 * of memory. */
json_t *route_wf_envelope(const json_t *o, uint64_t seq, const char *from, const char *to,
                          const char *context_id, const char *def_id);
/* A barrier call: NULL with *parties set, or what is wrong. */
const char *route_wf_check_barrier(const json_t *o, int *parties);

#endif
