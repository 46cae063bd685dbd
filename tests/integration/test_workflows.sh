#!/usr/bin/env bash
# Multi-agent workflows through the router, end to end: two real engines
# (stories260K) behind `strata route` with the workflow-aware policy and
# small router.workflows limits. A declared workflow shows its agents and
# step graph; its shared context is prefilled and kept on the instance the
# policy binds it to, so its agents' first requests hit the cache; requests
# carrying a step finish it with their answer's text and wake whoever waits;
# agent-to-agent messages reach each receiver exactly once, in order, by
# poll, long poll or SSE stream; barriers release all parties together or
# time out and withdraw; DELETE cancels waiters; idle workflows end; limits
# answer 413/429; hostile bodies and paths get 400/404; a restarted router
# knows no workflow (404).
SUITE="workflow tests"
NEEDS="curl jq"
. "$(dirname "$0")/common.sh"

cat >"$T/engine.conf" <<EOF
engine: { model = "$MODEL"; };
server: { request_log = false; };
EOF
start e0 serve --config "$T/engine.conf" --port 0 --threads 1
start e1 serve --config "$T/engine.conf" --port 0 --threads 1
cat >"$T/r.conf" <<EOF
router: {
  port = 0;
  policy = "workflow-aware";
  backends = [ "$URL_e0", "$URL_e1" ];
  health_interval = 0.2;
  workflows: {
    max_workflows = 6;
    max_agents = 8;
    max_messages = 6;
    max_message_bytes = "1KiB";
    max_waiters = 4;
    max_total_bytes = "4KiB";
    max_wait = 20;
  };
};
EOF
start r route --config "$T/r.conf"
R=$URL_r
post() { curl -s "$R$1" -H 'Content-Type: application/json' -d "$2"; }
code() { curl -s -o "$T/body" -w '%{http_code}' "$@"; }

# ---- declaration, prefill of the shared context -------------------------------------------
CTX="You are a team of three story writers. A planner outlines the story, a writer writes it and an editor makes it short. Stories are for small children and use simple words about animals, toys and friends."
decl=$(jq -nc --arg ctx "$CTX" '{id: "team", agents: ["planner", "writer", {name: "editor"}],
  steps: [{name: "plan", agent: "planner"}, {name: "write", agent: "writer", after: ["plan"]},
          {name: "edit", agent: "editor", after: ["write"]}], context: $ctx}')
c=$(code "$R/v1/workflows" -d "$decl")
check "declare: 201 ($c)" [ "$c" = 201 ]
check "declared state: 3 agents, plan ready, write waiting" \
  jq -e '.declared and (.agents | length) == 3 and .steps[0].status == "ready" and
         .steps[1].status == "waiting" and .context.instance != null' "$T/body" >/dev/null
c=$(code "$R/v1/workflows" -d '{"id":"team"}')
check "declaring it again: 409 ($c)" [ "$c" = 409 ]
for i in $(seq 1 100); do
  pf=$(curl -s "$R/v1/workflows/team" | jq -r .context.prefill)
  [ "$pf" = running ] || break
  sleep 0.1
done
check "the context is prefilled ($pf)" [ "$pf" = done ]
check "prefilled tokens counted" [ "$(curl -s "$R/v1/workflows/team" | jq .context.prefilled_tokens)" -gt 0 ]
ctxinst=$(curl -s "$R/v1/workflows/team" | jq -r .context.instance)
cached=$(jq -nc --arg ctx "$CTX" '{messages: [{role: "system", content: $ctx}], add_generation_prompt: false}' |
  curl -s "$ctxinst/v1/cache/stats" -d @- | jq .cached_tokens)
check "the context's instance holds it ($cached cached tokens)" [ "$cached" -gt 0 ]

# ---- requests carry agent and step; steps finish with the answer's text -------------------
chat() { # chat AGENT STEP USER -> the answer JSON (headers name workflow, agent, step)
  jq -nc --arg ctx "$CTX" --arg u "$3" \
    '{messages: [{role: "system", content: $ctx}, {role: "user", content: $u}], max_tokens: 8, temperature: 0}' |
    curl -s "$R/v1/chat/completions" -H 'X-Workflow-Id: team' -H "X-Agent-Id: $1" -H "X-Workflow-Step: $2" -d @-
}
# a wait for "write" opened before it runs
curl -s "$R/v1/workflows/team/steps?wait_for=plan,write&timeout=15" >"$T/wait_write" &
wpid=$!
a1=$(chat planner plan "Plan a story about a cat.")
check "the planner's first request hits the prefilled context" \
  [ "$(echo "$a1" | jq '.usage.prompt_tokens_details.cached_tokens')" -gt 0 ]
check "plan is done with the answer's text" \
  [ "$(curl -s "$R/v1/workflows/team/steps/plan" | jq -r .output)" = "$(echo "$a1" | jq -r '.choices[0].message.content')" ]
check "write is ready now" [ "$(curl -s "$R/v1/workflows/team/steps/write" | jq -r .status)" = ready ]
c=$(code "$R/v1/workflows/team/steps?wait_for=write&timeout=0.3")
check "a wait for an unfinished step times out: 408 step_timeout ($c)" \
  [ "$c" = 408 -a "$(jq -r .error.code "$T/body")" = step_timeout ]
a2=$(chat writer write "Write it.")
wait "$wpid"
check "the open wait got both steps' outputs" \
  jq -e '[.data[] | select(.status == "done")] | length == 2' "$T/wait_write" >/dev/null
c=$(code "$R/v1/workflows/team/steps/edit" -d '{"output":{"final":"The end."}}')
check "a step finished by hand: 200 ($c)" [ "$c" = 200 ]
c=$(code "$R/v1/workflows/team/steps/edit" -d '{"output":"again"}')
check "finishing it twice: 409 ($c)" [ "$c" = 409 ]
st=$(curl -s "$R/v1/workflows/team")
check "state: 3 steps done, 2 requests, one instance, usage counted" \
  [ "$(echo "$st" | jq '.steps_done == 3 and .requests == 2 and .moves == 0 and .cache.prompt_tokens > 0 and .cache.cached_tokens > 0')" = true ]
check "the agents' requests ran where the context lives" \
  [ "$(echo "$st" | jq -r --arg u "$ctxinst" '[.agents[] | select(.requests > 0) | .instance == $u] | all')" = true ]
hints=$(curl -s "$R/metrics" | sed -n 's/^strata_router_cache_hints_total{action="\([a-z]*\)"} //p' | paste -sd' ')
check "hints sent: keep, release and prefill ($hints)" bash -c "set -- $hints; [ \$1 -ge 1 ] && [ \$2 -ge 1 ] && [ \$3 = 1 ]"
check "the engines answered every hint" \
  [ "$(curl -s "$R/metrics" | sed -n 's/^strata_router_cache_hint_failures_total //p')" = 0 ]

# a request sent right after its declaration waits for the context's prefill (held by the
# router, or the prefill was quicker): either way it is served from the cache
post /v1/workflows "$(jq -nc --arg ctx "$CTX and a dragon" '{id: "quick", context: $ctx}')" >/dev/null
q1=$(jq -nc --arg ctx "$CTX and a dragon" '{messages: [{role: "system", content: $ctx}, {role: "user", content: "Go."}], max_tokens: 4}' |
  curl -s "$R/v1/chat/completions" -H 'X-Workflow-Id: quick' -d @-)
check "a request right after the declaration hits the prefilled context" \
  [ "$(echo "$q1" | jq '.usage.prompt_tokens_details.cached_tokens')" -gt 0 ]
curl -s -o /dev/null -X DELETE "$R/v1/workflows/quick"
# the policy heard of the end: the id's next request is placed afresh, not bound
placed() { curl -s "$R/metrics" | sed -n 's/^strata_router_decisions_total{policy="workflow-aware",reason="workflow_new"} //p'; }
p0=$(placed)
curl -s -o /dev/null "$R/v1/completions" -H 'X-Workflow-Id: quick' -d '{"prompt":"Hi","max_tokens":1}'
check "a deleted workflow's binding ended with it ($p0 -> $(placed) placements)" test "$(placed)" = $((p0 + 1))
curl -s -o /dev/null -X DELETE "$R/v1/workflows/quick"

# ---- implicit workflows ------------------------------------------------------------------------
post /v1/completions '{"prompt":"Hi","max_tokens":1,"metadata":{"workflow_id":"quiet","agent_id":"solo"}}' >/dev/null
check "a request's metadata creates a workflow implicitly" \
  [ "$(curl -s "$R/v1/workflows/quiet" | jq -c '[.declared, .requests, .agents[0].name]')" = '[false,1,"solo"]' ]

# ---- messages: in order, exactly once per receiver --------------------------------------------
msg() { post /v1/workflows/team/messages "{\"from\":\"$1\",\"to\":\"$2\",\"parts\":[{\"kind\":\"text\",\"text\":\"$3\"}]}"; }
msg planner writer one >/dev/null
msg planner '*' two >/dev/null
msg editor writer three >/dev/null
p1=$(curl -s "$R/v1/workflows/team/messages?agent=writer&limit=2")
p2=$(curl -s "$R/v1/workflows/team/messages?agent=writer&timeout=0")
p3=$(curl -s "$R/v1/workflows/team/messages?agent=writer&timeout=0")
check "the writer gets 1, 2 then 3, then nothing" \
  [ "$(echo "$p1" "$p2" "$p3" | jq -sc '[.[].data | map(.message.parts[0].text)]')" = '[["one","two"],["three"],[]]' ]
pe=$(curl -s "$R/v1/workflows/team/messages?agent=editor&timeout=0" | jq -c '[.data[].message.parts[0].text]')
pp=$(curl -s "$R/v1/workflows/team/messages?agent=planner&timeout=0" | jq -c '[.data[].message.parts[0].text]')
check "the broadcast reaches the editor, not its sender ($pe, $pp)" [ "$pe" = '["two"]' -a "$pp" = '[]' ]
check "A2A shape: kind, role, messageId, contextId" \
  [ "$(echo "$p1" | jq -c '.data[0].message | [.kind, .role, (.messageId | length > 0), .contextId]')" = '["message","agent",true,"team"]' ]
# a long poll is answered when a message comes
t0=$(date +%s.%N)
curl -s "$R/v1/workflows/team/messages?agent=editor&timeout=10" >"$T/lp" &
lpid=$!
sleep 0.5
post /v1/workflows/team/messages '{"from":"writer","to":"editor","message":{"role":"agent","parts":[{"kind":"data","data":{"draft":1}}]}}' >/dev/null
wait "$lpid"
t1=$(date +%s.%N)
check "a long poll wakes on the message ($(jq -c '.data[0].message.parts' "$T/lp"))" \
  [ "$(jq -c '.data[0].message.parts[0].data' "$T/lp")" = '{"draft":1}' ]
check "well before its timeout" [ "$(echo "$t1 - $t0 < 5" | bc)" = 1 ]
# a stream: every message as an SSE event, in order, ended by DELETE
post /v1/workflows '{"id":"talk"}' >/dev/null
curl -sN "$R/v1/workflows/talk/messages?agent=b&stream=true" >"$T/sse" &
spid=$!
sleep 0.3
post /v1/workflows/talk/messages '{"from":"a","to":"b","parts":[{"kind":"text","text":"x"}]}' >/dev/null
post /v1/workflows/talk/messages '{"from":"a","parts":[{"kind":"text","text":"y"}]}' >/dev/null
sleep 0.3
check "one waiter open (the stream)" \
  [ "$(curl -s "$R/metrics" | sed -n 's/^strata_router_workflow_waiters //p')" = 1 ]
curl -s -X DELETE "$R/v1/workflows/talk" >/dev/null
wait "$spid"
check "the stream carried x then y, then the end" \
  [ "$(sed -n 's/^data: //p' "$T/sse" | jq -sc '[.[] | .message.parts[0].text // .reason]')" = '["x","y","workflow_ended"]' ]

# ---- barriers ------------------------------------------------------------------------------
bp=()
for i in 1 2; do
  post /v1/workflows/team/barriers/sync '{"parties":3}' >"$T/bar$i" &
  bp+=($!)
done
sleep 0.3
check "two of three parties wait" \
  [ "$(curl -s "$R/v1/workflows/team" | jq '.barriers[] | select(.name == "sync") | .arrived')" = 2 ]
b3=$(post /v1/workflows/team/barriers/sync '{"parties":3}')
wait "${bp[@]}"
check "the third releases all three, same generation" \
  [ "$(cat "$T/bar1" "$T/bar2" <(echo "$b3") | jq -sc '[.[].generation] | unique')" = '[0]' ]
c=$(code "$R/v1/workflows/team/barriers/lonely" -d '{"parties":2,"timeout":0.3}')
check "a barrier times out: 408 ($c)" [ "$c" = 408 -a "$(jq -r .error.code "$T/body")" = barrier_timeout ]
check "and the arrival is withdrawn" \
  [ "$(curl -s "$R/v1/workflows/team" | jq '.barriers[] | select(.name == "lonely") | .arrived')" = 0 ]
post /v1/workflows/team/barriers/sync '{"parties":2}' >"$T/bar4" &
bp=($!)
sleep 0.3
c=$(code "$R/v1/workflows/team/barriers/sync" -d '{"parties":5}')
check "other parties while it fills: 400 ($c)" [ "$c" = 400 ]
# a waiter whose client goes away is dropped
curl -s -m 0.5 "$R/v1/workflows/team/messages?agent=nobody&timeout=15" >/dev/null
sleep 0.6
check "a gone long poll is dropped (1 waiter left)" \
  [ "$(curl -s "$R/metrics" | sed -n 's/^strata_router_workflow_waiters //p')" = 1 ]

# ---- limits ----------------------------------------------------------------------------------
big=$(head -c 2000 /dev/zero | tr '\0' a)
c=$(code "$R/v1/workflows/team/messages" -d "{\"from\":\"a\",\"parts\":[{\"kind\":\"text\",\"text\":\"$big\"}]}")
check "a message over max_message_bytes: 413 ($c)" [ "$c" = 413 ]
for i in 1 2; do msg planner writer "m$i" >/dev/null; done
c=$(code "$R/v1/workflows/team/messages" -d '{"from":"a","parts":[{"kind":"text","text":"one too many"}]}')
check "the 7th message over max_messages 6: 429 ($c)" [ "$c" = 429 ]
for i in 1 2 3 4 5 6; do post /v1/workflows "{\"id\":\"many$i\"}" >/dev/null; done
c=$(code "$R/v1/workflows" -d '{"id":"toomany"}')
check "a workflow over max_workflows: 429 ($c)" [ "$c" = 429 ]
c=$(code "$R/v1/completions" -H 'X-Workflow-Id: toomany2' -d '{"prompt":"Hi","max_tokens":1}')
check "an implicit one too: 429 ($c)" [ "$c" = 429 -a "$(jq -r .error.code "$T/body")" = too_many_workflows ]
for i in 1 2 3 4 5 6; do curl -s -o /dev/null -X DELETE "$R/v1/workflows/many$i"; done
# the barrier party and three long polls of agents with nothing pending
for a in planner editor nobody; do
  curl -s -o /dev/null "$R/v1/workflows/team/messages?agent=$a&timeout=10" &
  bp+=($!)
done
sleep 0.3
c=$(code "$R/v1/workflows/team/messages?agent=a&timeout=10")
check "a fifth waiter over max_waiters 4: 429 ($c)" [ "$c" = 429 -a "$(jq -r .error.code "$T/body")" = too_many_waiters ]

# ---- DELETE cancels waiters -----------------------------------------------------------------
c=$(code -X DELETE "$R/v1/workflows/team")
check "delete: 200 ($c)" [ "$c" = 200 -a "$(jq .final.steps_done "$T/body")" = 3 ]
wait "${bp[@]}"
check "the waiting barrier party got 410 workflow_ended" [ "$(jq -r .error.code "$T/bar4")" = workflow_ended ]
c=$(code "$R/v1/workflows/team")
check "then it is gone: 404 ($c)" [ "$c" = 404 -a "$(jq -r .error.code "$T/body")" = workflow_not_found ]
check "no waiter left" [ "$(curl -s "$R/metrics" | sed -n 's/^strata_router_workflow_waiters //p')" = 0 ]

# ---- hostile input ---------------------------------------------------------------------------
for body in '' 'nope' '[1]' '{"id":""}' '{"id":7}' '{"agents":"x"}' '{"steps":[{"name":"a","after":["b"]},{"name":"b"}]}' \
  '{"steps":[{"name":"a"},{"name":"a"}]}' '{"steps":[{}]}' '{"context":5}' '{"idle_ttl":0}' '{"prefill":"yes"}'; do
  c=$(code "$R/v1/workflows" -d "$body")
  # the empty body declares an anonymous workflow
  if [ -z "$body" ]; then check "empty declaration: 201 ($c)" [ "$c" = 201 ]; continue; fi
  check "declaration $body: 400 ($c)" [ "$c" = 400 ] && jq -e .error.message "$T/body" >/dev/null
done
post /v1/workflows '{"id":"h"}' >/dev/null
for body in '{}' '{"from":"a"}' '{"from":"a","parts":[]}' '{"from":"a","parts":[{"kind":"image"}]}' \
  '{"from":"a","parts":[{"kind":"text"}]}' '{"from":"a","parts":[{"kind":"data","data":3}]}' \
  '{"from":"a","parts":[{"kind":"file","file":{}}]}' '{"from":"a","to":5,"parts":[{"kind":"text","text":"x"}]}' \
  '{"from":"a","role":"robot","parts":[{"kind":"text","text":"x"}]}'; do
  c=$(code "$R/v1/workflows/h/messages" -d "$body")
  check "message $body: 400 ($c)" [ "$c" = 400 ]
done
for q in 'agent=' 'agent=a&timeout=-1' 'agent=a&timeout=1e9' 'agent=a&limit=0' 'agent=a&timeout=nan'; do
  c=$(code "$R/v1/workflows/h/messages?$q")
  check "poll ?$q: 400 ($c)" [ "$c" = 400 ]
done
for body in '{}' '{"parties":0}' '{"parties":"2"}' '{"parties":2,"timeout":-1}' '{"parties":2,"timeout":1e9}'; do
  c=$(code "$R/v1/workflows/h/barriers/b" -d "$body")
  check "barrier $body: 400 ($c)" [ "$c" = 400 ]
done
c=$(code "$R/v1/workflows/h/steps?wait_for=,")
check "wait_for with empty names: 400 ($c)" [ "$c" = 400 ]
c=$(code "$R/v1/workflows/h/steps/s" -d "{\"output\":\"$big\"}")
check "a step output over max_message_bytes: 413 ($c)" [ "$c" = 413 ]
for path in /v1/workflows/h/nothing /v1/workflows/h/barriers /v1/workflows/h/messages/x; do
  c=$(code "$R$path")
  check "$path: 404 ($c)" [ "$c" = 404 ]
done
c=$(code "$R/v1/workflows/a%00b")
check "an id with a NUL: 400 ($c)" [ "$c" = 400 ]
c=$(code "$R/v1/workflows/caf%E9")
check "an id that is not UTF-8: 400 ($c)" [ "$c" = 400 ]
c=$(code "$R/v1/completions" -H "$(printf 'X-Workflow-Id: caf\xe9')" -d '{"prompt":"Hi","max_tokens":1}')
check "a request naming a non-UTF-8 workflow is served, in no workflow ($c)" [ "$c" = 200 ]
c=$(code -X PUT "$R/v1/workflows/h")
check "PUT on a workflow: 405 ($c)" [ "$c" = 405 ]
c=$(code "$R/v1/workflows/h%2Fx")
check "an encoded slash is part of the id, not a path: 404 ($c)" [ "$c" = 404 ]

# ---- the router's memory is bounded across workflows -----------------------------------------
post /v1/workflows '{"id":"fill"}' >/dev/null
chunk=$(head -c 800 /dev/zero | tr '\0' b)
codes=""
for i in 1 2 3 4 5; do
  codes="$codes $(code "$R/v1/workflows/fill/messages" -d "{\"from\":\"a\",\"parts\":[{\"kind\":\"text\",\"text\":\"$chunk\"}]}")"
done
check "messages beyond max_total_bytes 4KiB: 429 router_full ($codes)" \
  [ "$codes" = " 200 200 200 200 429" -a "$(jq -r .error.code "$T/body")" = router_full ]
curl -s -o /dev/null -X DELETE "$R/v1/workflows/fill"
c=$(code "$R/v1/workflows/h/messages" -d "{\"from\":\"a\",\"parts\":[{\"kind\":\"text\",\"text\":\"$chunk\"}]}")
check "the deleted workflow's bytes are free again: 200 ($c)" [ "$c" = 200 ]

# ---- idle workflows end; a restarted router knows none -------------------------------------
post /v1/workflows '{"id":"brief","idle_ttl":1}' >/dev/null
# (the list does not count as use; GET /v1/workflows/brief would)
listed() { curl -s "$R/v1/workflows" | jq '[.data[].id] | index("brief") != null'; }
check "listed" [ "$(listed)" = true ]
for i in $(seq 1 40); do [ "$(listed)" = false ] && break; sleep 0.1; done
check "an idle workflow ends after idle_ttl" [ "$(code "$R/v1/workflows/brief")" = 404 ]
check "counted as idle" [ "$(curl -s "$R/metrics" | sed -n 's/^strata_router_workflows_ended_total{reason="idle"} //p')" -ge 1 ]
kill "$PID_r"
wait "$PID_r" 2>/dev/null
check "the router stops cleanly with workflows open" [ $? -eq 0 ]
start r2 route --config "$T/r.conf"
c=$(code "$URL_r2/v1/workflows/h/messages?agent=a&timeout=0")
check "after a restart a workflow is unknown: 404 ($c)" [ "$c" = 404 ]

# ---- keep_agents: an agent with two steps ready after its first is kept once, not per step --
sed 's/workflows: {/workflows: { keep_agents = true;/' "$T/r.conf" >"$T/rk.conf"
start rk route --config "$T/rk.conf"
keeps() { curl -s "$URL_rk/metrics" | sed -n 's/^strata_router_cache_hints_total{action="keep"} //p'; }
curl -s -o /dev/null "$URL_rk/v1/workflows" -d '{"id":"fan","agents":["a","b"],"steps":[{"name":"a1","agent":"a"},
  {"name":"a2","agent":"a","after":["a1"]},{"name":"a3","agent":"a","after":["a1"]},{"name":"b1","agent":"b","after":["a1"]}]}'
k0=$(keeps)
curl -s -o /dev/null "$URL_rk/v1/completions" -H 'X-Workflow-Id: fan' -H 'X-Agent-Id: a' -H 'X-Workflow-Step: a1' \
  -d '{"prompt":"Once upon a time","max_tokens":2}'
for i in $(seq 1 50); do [ "$(curl -s "$URL_rk/metrics" | sed -n 's/^strata_router_cache_hints_total{action="keep"} //p')" != "$k0" ] && break; sleep 0.1; done
sleep 0.3
check "one keep for agent a's prompt ($k0 -> $(keeps))" [ "$(keeps)" = $((k0 + 1)) ]

finish
