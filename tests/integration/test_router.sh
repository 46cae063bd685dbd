#!/usr/bin/env bash
# strata route end to end: three real engines (stories260K from ../shared)
# behind the router on loopback. Round-robin spreads requests evenly (seen
# in /admin/backends and /metrics); streaming through the router equals
# streaming direct; an engine killed under load fails only what it held,
# is ejected, and is readmitted once restarted; least-loaded routes away
# from a busy instance; session keeps a key on one instance; prefix-aware
# keeps a shared document on one instance; workflow-aware keeps a workflow's
# agents on one instance; kv-aware follows the engines' own caches (event
# streams, or probes); dns:// names find instances as
# their addresses come and go; bad requests get OpenAI-style errors.
SUITE="router tests"
NEEDS="curl jq"
. "$(dirname "$0")/common.sh"
# (a config of its own: the embedded default's model path is relative to the source tree)
cat >"$T/engine.conf" <<EOF
engine: { model = "$MODEL"; };
EOF
engine() { start "$1" serve --config "$T/engine.conf" --port "${2:-0}" --threads 1; }

engine e0
engine e1
engine e2
cat >"$T/router.conf" <<EOF
router: {
  host = "127.0.0.1";
  port = 0;
  policy = "round-robin";
  backends = [ "$URL_e0", "$URL_e1", "$URL_e2" ];
  health_interval = 0.2;
  eject_after = 1;
};
EOF
start r route --config "$T/router.conf"
R=$URL_r

completion() { # completion URL PROMPT N -> the text
  curl -s "$1/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"prompt\":\"$2\",\"max_tokens\":$3,\"temperature\":0}" | jq -r '.choices[0].text'
}

# ---- round-robin: 9 requests, 3 to each ------------------------------------------------
direct=$(completion "$URL_e0" "Once upon a time" 12)
same=0
for i in $(seq 1 9); do
  [ "$(completion "$R" "Once upon a time" 12)" = "$direct" ] && same=$((same + 1))
done
check "9 answers through the router equal the direct one ($same)" [ "$same" -eq 9 ]
routed=$(curl -s "$R/admin/backends" | jq -c '[.backends[].routed]')
check "round-robin spreads 9 requests 3/3/3 ($routed)" [ "$routed" = "[3,3,3]" ]
check "admin names the policy" [ "$(curl -s "$R/admin/backends" | jq -r .policy)" = "round-robin" ]
dec=$(curl -s "$R/metrics" | sed -n 's/^strata_router_decisions_total{policy="round-robin",reason="round_robin"} //p')
check "metrics count 9 round-robin decisions ($dec)" [ "$dec" = "9" ]

# ---- request ids ----------------------------------------------------------------------
rid=$(curl -s -D - -o /dev/null "$R/v1/completions" -H 'X-Request-Id: client-id-7' \
  -d '{"prompt":"Hi","max_tokens":1}' | tr -d '\r' | sed -n 's/^X-Request-Id: //Ip')
check "the client's request id comes back ($rid)" [ "$rid" = "client-id-7" ]

# a body above router.max_body_bytes (4 MiB): the API's JSON 413, not
# libevent's HTML page (core/http_scan.h)
head -c 5000000 /dev/zero | tr '\0' ' ' | sed 's/^/{"prompt":"x","pad":"/; s/$/"}/' >"$T/huge"
code=$(curl -s -o "$T/huge.out" -w '%{http_code}' --data-binary @"$T/huge" "$R/v1/completions")
check "router: huge body is a JSON 413 (got $code)" \
  sh -c "[ $code = 413 ] && jq -e '.error.code == \"request_too_large\"' '$T/huge.out' >/dev/null"

# ---- streaming through the router equals streaming direct ------------------------------
body='{"prompt":"Once upon a time","max_tokens":16,"temperature":0,"stream":true}'
sd=$(curl -sN "$URL_e1/v1/completions" -d "$body" | sed -n 's/^data: //p' | grep -v DONE | jq -r '.choices[0].text' | tr -d '\n')
sr=$(curl -sN "$R/v1/completions" -d "$body" | sed -n 's/^data: //p' | grep -v DONE | jq -r '.choices[0].text' | tr -d '\n')
check "streamed text through the router equals direct ('$sr' vs '$sd')" [ -n "$sd" -a "$sr" = "$sd" ]
check "the router's stream ends with [DONE]" bash -c "curl -sN '$R/v1/completions' -d '$body' | grep -q '^data: \[DONE\]'"
chat=$(curl -s "$R/v1/chat/completions" -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4}' | jq -r .object)
check "chat through the router ($chat)" [ "$chat" = "chat.completion" ]
check "models through the router" [ "$(curl -s "$R/v1/models" | jq -r '.data[0].id')" = "stories260K" ]

# ---- errors ---------------------------------------------------------------------------
code=$(curl -s -o "$T/err.json" -w '%{http_code}' "$R/v1/completions" -d '{bad json')
check "malformed JSON: 400 with an OpenAI error ($code)" [ "$code" = 400 ] && jq -e '.error.message' "$T/err.json" >/dev/null
code=$(curl -s -o /dev/null -w '%{http_code}' "$R/v1/nothing")
check "unknown path: 404 ($code)" [ "$code" = 404 ]
code=$(curl -s -o /dev/null -w '%{http_code}' -X GET "$R/v1/completions")
check "wrong method: 405 ($code)" [ "$code" = 405 ]
code=$(curl -s -o "$T/err.json" -w '%{http_code}' "$R/v1/completions" -d '{"prompt":"Hi","max_tokens":-3}')
check "an engine's 400 passes through ($code)" [ "$code" = 400 ] && jq -e '.error.message' "$T/err.json" >/dev/null

# ---- a non-streaming client that gives up cancels its attempt ----------------------------
# (32 x 480 tokens take an engine about 4 s; the checks come at 1 s)
curl -s -m 0.4 -o /dev/null "$R/v1/completions" \
  -d '{"prompt":"Once upon a time","max_tokens":480,"n":32,"ignore_eos":true}'
sleep 0.6
disc=$(curl -s "$R/metrics" | sed -n 's/^strata_router_client_disconnects_total //p')
check "the router noticed the client leave mid-answer ($disc)" [ "${disc:-0}" -ge 1 ]
open=$(curl -s "$R/admin/backends" | jq '[.backends[].inflight] | add')
check "and holds no attempt open for it ($open)" [ "$open" = 0 ]

# ---- an engine dies under load: only its requests may fail; ejected; readmitted ---------
LOADP=()
for i in $(seq 1 12); do
  curl -s -o "$T/load$i.json" -w '%{http_code}\n' "$R/v1/completions" \
    -d '{"prompt":"Once upon a time","max_tokens":200}' >"$T/load$i.code" &
  LOADP+=($!)
done
sleep 0.3
port2=${URL_e2##*:}
kill "$PID_e2"
wait "$PID_e2" 2>/dev/null
wait "${LOADP[@]}" 2>/dev/null
okn=0
for i in $(seq 1 12); do
  c=$(cat "$T/load$i.code")
  if [ "$c" = 200 ]; then
    okn=$((okn + 1))
  fi
done
echo "under a kill: $okn of 12 answered 200"
check "at least the 8 requests on the other engines succeed ($okn)" [ "$okn" -ge 8 ]
okafter=0
for i in $(seq 1 6); do
  c=$(curl -s -o /dev/null -w '%{http_code}' "$R/v1/completions" -d '{"prompt":"Hi","max_tokens":2}')
  [ "$c" = 200 ] && okafter=$((okafter + 1))
done
check "after the kill every request succeeds ($okafter of 6)" [ "$okafter" -eq 6 ]
sleep 0.5
h2=$(curl -s "$R/admin/backends" | jq -r '.backends[2].healthy')
check "the dead engine is ejected ($h2)" [ "$h2" = false ]
check "health still ok with 2 of 3" [ "$(curl -s "$R/health" | jq -r .healthy_backends)" = 2 ]
engine e2b "$port2"
for i in $(seq 1 50); do
  [ "$(curl -s "$R/admin/backends" | jq -r '.backends[2].healthy')" = true ] && break
  sleep 0.1
done
check "restarted, it is readmitted" [ "$(curl -s "$R/admin/backends" | jq -r '.backends[2].healthy')" = true ]
before=$(curl -s "$R/admin/backends" | jq '.backends[2].routed')
for i in 1 2 3; do completion "$R" "Hi" 2 >/dev/null; done
after=$(curl -s "$R/admin/backends" | jq '.backends[2].routed')
check "and gets traffic again ($before -> $after)" [ "$after" -gt "$before" ]
kill "$PID_r"
wait "$PID_r" 2>/dev/null
check "the router exits 0 on SIGTERM" [ $? -eq 0 ]

# ---- least-loaded: a busy instance gets no new requests --------------------------------
cat >"$T/ll.conf" <<EOF
router: {
  port = 0;
  policy = "least-loaded";
  backends = [ "$URL_e0", "$URL_e1" ];
  health_interval = 0.1;
};
plugins: { router: { least-loaded: { choices = 0; }; }; };
EOF
start ll route --config "$T/ll.conf"
# long requests straight to e0 (they show in its /metrics, not as the router's)
for i in $(seq 1 8); do
  curl -s -o /dev/null "$URL_e0/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":480,"n":4,"ignore_eos":true}' &
  PIDS+=($!)
done
for i in $(seq 1 50); do
  r0=$(curl -s "$URL_ll/admin/backends" | jq '.backends[0].running')
  [ "$r0" != null ] && [ "$r0" -ge 1 ] && break
  sleep 0.1
done
for i in 1 2 3 4; do completion "$URL_ll" "Hi" 2 >/dev/null; done
routed=$(curl -s "$URL_ll/admin/backends" | jq -c '[.backends[].routed]')
check "least-loaded sends all 4 to the idle instance ($routed)" [ "$routed" = "[0,4]" ]

# ---- session: one key, one instance; keys spread; the user field works ----------------
cat >"$T/ss.conf" <<EOF
router: {
  port = 0;
  policy = "session";
  backends = [ "$URL_e0", "$URL_e1", "$URL_e2b" ];
  health_interval = 0.2;
};
EOF
start ss route --config "$T/ss.conf"
routed_vec() { curl -s "$1/admin/backends" | jq -c '[.backends[].routed]'; }
prev=$(routed_vec "$URL_ss")
for i in 1 2 3 4 5; do
  curl -s -o /dev/null "$URL_ss/v1/completions" -H 'X-Session-Id: alice' -d '{"prompt":"Hi","max_tokens":1}'
done
now=$(routed_vec "$URL_ss")
moved=$(jq -n --argjson a "$prev" --argjson b "$now" '[range(0; 3) | select($b[.] != $a[.])] | length')
check "5 requests of one session land on one instance ($now)" [ "$moved" = 1 ]
for i in 1 2 3 4 5; do
  curl -s -o /dev/null "$URL_ss/v1/completions" -d '{"prompt":"Hi","max_tokens":1,"user":"alice"}'
done
now2=$(routed_vec "$URL_ss")
check "the body's user field is the same key as the header ($now -> $now2)" \
  [ "$(jq -n --argjson a "$now" --argjson b "$now2" '[range(0; 3) | select($b[.] - $a[.] == 5)] | length')" = 1 ]
for i in $(seq 1 30); do
  curl -s -o /dev/null "$URL_ss/v1/completions" -H "X-Session-Id: user-$i" -d '{"prompt":"Hi","max_tokens":1}'
done
spread=$(routed_vec "$URL_ss")
check "30 sessions reach every instance ($spread)" \
  [ "$(jq -n --argjson b "$spread" --argjson a "$now2" '[range(0; 3) | select($b[.] > $a[.])] | length')" = 3 ]
hashed=$(curl -s "$URL_ss/metrics" | sed -n 's/^strata_router_decisions_total{policy="session",reason="session_hash"} //p')
check "metrics count 40 session_hash decisions ($hashed)" [ "$hashed" = 40 ]

# ---- prefix-aware: a shared document keeps its requests on one instance -----------------
cat >"$T/px.conf" <<EOF
router: {
  port = 0;
  policy = "prefix-aware";
  backends = [ "$URL_e0", "$URL_e1", "$URL_e2b" ];
  health_interval = 0.2;
};
plugins: { router: { prefix-aware: { chunk_bytes = 32; min_match_bytes = 128; }; }; };
EOF
start px route --config "$T/px.conf"
docA="Once upon a time there was a little girl named Lily. She loved to play in the park with her big red ball. One day the sun was warm and the birds sang in the tall green trees."
docB="Tom had a small dog called Max. Every morning they walked to the river and watched the boats. Max liked to bark at the ducks, and Tom laughed every time the ducks flew away."
ask() { # ask DOC QUESTION
  curl -s -o /dev/null "$URL_px/v1/completions" -d "{\"prompt\":\"$1 $2\",\"max_tokens\":2}"
}
prev=$(routed_vec "$URL_px")
ask "$docA" "Where did Lily play?"
afterA=$(routed_vec "$URL_px")
for q in "What color was the ball?" "Was the sun warm?" "What did the birds do?"; do ask "$docA" "$q"; done
afterA4=$(routed_vec "$URL_px")
check "four questions on one document go to one instance ($prev -> $afterA4)" \
  [ "$(jq -n --argjson a "$prev" --argjson b "$afterA4" '[range(0; 3) | select($b[.] - $a[.] == 4)] | length')" = 1 ]
ask "$docB" "What was the dog called?"
ask "$docB" "Where did they walk?"
afterB=$(routed_vec "$URL_px")
check "another document goes elsewhere ($afterA4 -> $afterB)" \
  [ "$(jq -n --argjson a "$afterA4" --argjson b "$afterB" --argjson x "$afterA" --argjson p "$prev" \
      '[range(0; 3) | select($b[.] - $a[.] == 2 and $x[.] == $p[.])] | length')" = 1 ]
pm=$(curl -s "$URL_px/metrics" | sed -n 's/^strata_router_decisions_total{policy="prefix-aware",reason="prefix_match"} //p')
check "4 prefix_match decisions ($pm)" [ "$pm" = 4 ]

# ---- workflow-aware: each workflow's agents stay on its instance -------------------------
cat >"$T/wf.conf" <<EOF
router: {
  port = 0;
  policy = "workflow-aware";
  backends = [ "$URL_e0", "$URL_e1", "$URL_e2b" ];
  health_interval = 0.2;
};
EOF
start wf route --config "$T/wf.conf"
for agent in planner coder reviewer tester; do
  curl -s -o /dev/null "$URL_wf/v1/completions" -H 'X-Workflow-Id: wf-a' -H "X-Agent-Id: $agent" \
    -d '{"prompt":"Hi","max_tokens":1}'
  curl -s -o /dev/null "$URL_wf/v1/chat/completions" \
    -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":1,\"metadata\":{\"workflow_id\":\"wf-b\",\"agent_id\":\"$agent\"}}"
done
wfv=$(routed_vec "$URL_wf")
check "two workflows of 4 agents each: two instances with 4 requests ($wfv)" \
  [ "$(echo "$wfv" | jq -c sort)" = "[0,4,4]" ]
bound=$(curl -s "$URL_wf/metrics" | sed -n 's/^strata_router_decisions_total{policy="workflow-aware",reason="workflow_bound"} //p')
check "6 requests followed their workflow's binding ($bound)" [ "$bound" = 6 ]

# ---- kv-aware: the instances' own caches decide --------------------------------------
# A document is sent straight to one engine (the router never sees it); a
# question on it through the router goes there: the router knows from the
# engine's cache events (with router.tokenizer) or from asking it
# (POST /v1/cache/stats, without). Prompts are long enough for several blocks.
docC="Once upon a time there was a big brown bear who lived in a cave near the forest. Every day the bear went to the river to catch fish for his family. One morning he saw a small rabbit sitting on a rock and crying because it had lost its way home."
docD="Sue and her brother Ben built a tall tower of blocks in their room. They used red blocks and blue blocks and one yellow block at the very top. When the cat jumped on the bed the tower shook, but it did not fall, and the children clapped their hands."
docE="The little train went up the hill every morning with milk and bread for the town. It puffed and puffed and said I think I can. The people at the top waved to the train and the driver rang the bell three times to say hello to everyone."
cat >"$T/kv.conf" <<EOF
router: {
  port = 0;
  policy = "kv-aware";
  backends = [ "$URL_e0", "$URL_e1", "$URL_e2b" ];
  health_interval = 0.2;
  tokenizer = "$MODEL";
};
EOF
start kv route --config "$T/kv.conf"
live() { curl -s "$1/admin/backends" | jq '[.backends[] | select(.cache.events == "live")] | length'; }
for i in $(seq 1 50); do [ "$(live "$URL_kv")" = 3 ] && break; sleep 0.1; done
check "kv-aware follows every instance's cache events ($(live "$URL_kv") live)" [ "$(live "$URL_kv")" = 3 ]
curl -s -o /dev/null "$URL_e1/v1/completions" -d "{\"prompt\":\"$docC What did the bear do?\",\"max_tokens\":1}"
curl -s -o /dev/null "$URL_e2b/v1/completions" -d "{\"prompt\":\"$docD Who built the tower?\",\"max_tokens\":1}"
# the index sees e1's new blocks within a tick of the engine's feed
for i in $(seq 1 30); do
  [ "$(curl -s "$URL_kv/admin/backends" | jq '.backends[1].cache.blocks')" -ge 6 ] && break
  sleep 0.1
done
prev=$(routed_vec "$URL_kv")
curl -s -o "$T/kv1.json" "$URL_kv/v1/completions" -d "{\"prompt\":\"$docC Where was the rabbit?\",\"max_tokens\":1}"
afterC=$(routed_vec "$URL_kv")
check "a question on a document one engine holds goes there ($prev -> $afterC)" \
  [ "$(jq -n --argjson a "$prev" --argjson b "$afterC" '$b[1] - $a[1]')" = 1 ]
cached=$(jq '.usage.prompt_tokens_details.cached_tokens' "$T/kv1.json")
check "and the engine reuses the document's blocks ($cached cached tokens)" [ "${cached:-0}" -ge 64 ]
curl -s -o /dev/null "$URL_kv/v1/completions" -d "{\"prompt\":\"$docD What was at the top?\",\"max_tokens\":1}"
afterD=$(routed_vec "$URL_kv")
check "another engine's document goes to that engine ($afterC -> $afterD)" \
  [ "$(jq -n --argjson a "$afterC" --argjson b "$afterD" '$b[2] - $a[2]')" = 1 ]
curl -s -o /dev/null "$URL_kv/v1/chat/completions" \
  -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$docE\"}],\"max_tokens\":1}"
kvm=$(curl -s "$URL_kv/metrics")
check "2 kv_match decisions, then a kv_miss for a new prompt" \
  [ "$(echo "$kvm" | sed -n 's/^strata_router_decisions_total{policy="kv-aware",reason="kv_match"} //p')" = 2 ] &&
  [ "$(echo "$kvm" | sed -n 's/^strata_router_decisions_total{policy="kv-aware",reason="kv_miss"} //p')" = 1 ]
check "the counts came from the index" \
  [ "$(echo "$kvm" | sed -n 's/^strata_router_cache_answers_total{source="index"} //p')" -ge 9 ]
# the chat went through the same template and tokenizer as on the engine: the
# engine that took it holds exactly the blocks the router's index now says
for i in $(seq 1 30); do
  tot=$(curl -s "$URL_kv/admin/backends" | jq '[.backends[].cache.blocks] | add')
  sum=0
  for u in "$URL_e0" "$URL_e1" "$URL_e2b"; do
    n=$(curl -s "$u/metrics" | sed -n 's/^strata:prefix_cache_blocks{[^}]*} //p' | cut -d. -f1)
    sum=$((sum + ${n:-0}))
  done
  [ "$tot" = "$sum" ] && break
  sleep 0.1
done
check "the router's index holds as many blocks as the engines' caches ($tot vs $sum)" [ "$tot" = "$sum" ]
# without a tokenizer: each request asks the instances
cat >"$T/kvp.conf" <<EOF
router: {
  port = 0;
  policy = "kv-aware";
  backends = [ "$URL_e0", "$URL_e1", "$URL_e2b" ];
  health_interval = 0.2;
};
EOF
start kvp route --config "$T/kvp.conf"
prev=$(routed_vec "$URL_kvp")
curl -s -o /dev/null "$URL_kvp/v1/completions" -d "{\"prompt\":\"$docC Was the bear big?\",\"max_tokens\":1}"
afterP=$(routed_vec "$URL_kvp")
curl -s -o /dev/null "$URL_kvp/v1/chat/completions" \
  -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$docE\"}],\"max_tokens\":1}"
probes=$(curl -s "$URL_kvp/admin/backends" | jq '[.backends[].cache.probes] | add')
check "probing, the document's question goes to its engine ($prev -> $afterP, $probes probes)" \
  [ "$(jq -n --argjson a "$prev" --argjson b "$afterP" '$b[1] - $a[1]')" = 1 -a "$probes" = 6 ]
check "and so does the chat, to the engine that answered it before" \
  [ "$(curl -s "$URL_kvp/metrics" | sed -n 's/^strata_router_decisions_total{policy="kv-aware",reason="kv_match"} //p')" = 2 ]

# ---- DNS discovery: a name's addresses come and go (a stub DNS server in Node) ---------
if command -v node >/dev/null 2>&1; then
  echo "engines.test 127.0.0.2" >"$T/dns.txt"
  node "$S/tests/integration/dns_stub.mjs" "$T/dns.txt" >"$T/dns.out" 2>&1 &
  PIDS+=($!)
  for i in $(seq 1 50); do grep -q '^dns on' "$T/dns.out" && break; sleep 0.1; done
  dport=$(sed -n 's/^dns on //p' "$T/dns.out")
  start_on() { start "$1" serve --config "$T/engine.conf" --host "$2" --port "$3" --threads 1; }
  start_on d1 127.0.0.2 0
  P=${URL_d1##*:}
  start_on d2 127.0.0.3 "$P"
  cat >"$T/dns.conf" <<EOF
router: {
  port = 0;
  backends = [ "dns://engines.test:$P" ];
  dns_servers = [ "127.0.0.1:$dport" ];
  dns_interval = 0.2;
  health_interval = 0.2;
};
EOF
  start dn route --config "$T/dns.conf"
  urls() { curl -s "$URL_dn/admin/backends" | jq -c '[.backends[] | select(.removed | not) | .url]'; }
  for i in $(seq 1 50); do [ "$(urls)" = "[\"http://127.0.0.2:$P\"]" ] && break; sleep 0.1; done
  check "the name's one address is an instance ($(urls))" [ "$(urls)" = "[\"http://127.0.0.2:$P\"]" ]
  code=$(curl -s -o /dev/null -w '%{http_code}' "$URL_dn/v1/completions" -d '{"prompt":"Hi","max_tokens":2}')
  check "and serves ($code)" [ "$code" = 200 ]
  echo "engines.test 127.0.0.2 127.0.0.3" >"$T/dns.txt"
  for i in $(seq 1 50); do [ "$(urls | jq length)" = 2 ] && break; sleep 0.1; done
  check "a second address joins ($(urls))" [ "$(urls | jq length)" = 2 ]
  for i in 1 2 3 4; do curl -s -o /dev/null "$URL_dn/v1/completions" -d '{"prompt":"Hi","max_tokens":2}'; done
  check "both take requests" [ "$(curl -s "$URL_dn/admin/backends" | jq '[.backends[] | select(.routed > 0)] | length')" = 2 ]
  echo "engines.test 127.0.0.3" >"$T/dns.txt"
  for i in $(seq 1 50); do [ "$(urls)" = "[\"http://127.0.0.3:$P\"]" ] && break; sleep 0.1; done
  check "the address that left is removed ($(urls))" [ "$(urls)" = "[\"http://127.0.0.3:$P\"]" ]
  before=$(curl -s "$URL_dn/admin/backends" | jq -c '[.backends[].routed]')
  for i in 1 2 3; do curl -s -o /dev/null "$URL_dn/v1/completions" -d '{"prompt":"Hi","max_tokens":2}'; done
  after=$(curl -s "$URL_dn/admin/backends" | jq -c '[.backends[].routed]')
  check "and gets no more requests ($before -> $after)" \
    [ "$(jq -n --argjson a "$before" --argjson b "$after" '$b[0] == $a[0] and $b[1] == $a[1] + 3')" = true ]
else
  echo "node is missing: the DNS discovery checks do not run"
fi

# ---- connection limit (router.max_connections) ----------------------------------------------
cat >"$T/rconns.conf" <<EOF
router: { host = "127.0.0.1"; port = 0; policy = "round-robin"; backends = [ "$URL_e0" ];
          max_connections = 3; };
EOF
start rconns route --config "$T/rconns.conf"
conn_limit_checks "$URL_rconns" 3 strata_router ""

# every process ends first (leak reports come at exit)
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
wait 2>/dev/null
sanitizer_scan "$T"
echo "router tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
