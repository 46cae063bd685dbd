#!/usr/bin/env bash
# strata serve end to end: starts the real server on a free loopback port
# with the stories260K model from ../shared and drives it with curl (jq reads
# the JSON): both endpoints streamed and not, greedy equality with `strata
# generate`, 32 concurrent requests equal to their solo answers, a client
# disconnecting mid-stream (its KV blocks come back), malformed and hostile
# requests, auth, queue limits, /tokenize, /metrics, and a graceful SIGTERM.
SUITE="server tests"
NEEDS="curl jq"
. "$(dirname "$0")/common.sh"
jqe() { jq -e "$@" >/dev/null 2>&1; }

# start_server NAME CONFIG [ENV=VAL...]: sets URL_<NAME> and PID_<NAME>
start_server() {
  local name=$1 conf=$2
  shift 2
  start_cmd "$name" env "$@" "$STRATA" serve --config "$conf" --port 0 --threads 1
}

cat >"$T/main.conf" <<EOF
engine: { model = "$MODEL"; };
server: { host = "127.0.0.1"; port = 8000; max_metadata_bytes = 256; max_n = 16; max_stop = 2;
          max_header_bytes = "4KiB"; };
EOF
start_server main "$T/main.conf"
U=$URL_main

# ---- memory: `strata estimate` against the server's measured resident set ---------------
curl -s -o /dev/null -d '{"prompt":"Once upon a time","max_tokens":4}' "$U/v1/completions"
est=$("$STRATA" estimate --config "$T/main.conf" | sed -n 's/^total: *\([0-9]*\) bytes.*/\1/p')
rss=$(($(sed -n 's/^VmRSS:[^0-9]*\([0-9]*\) kB/\1/p' "/proc/$PID_main/status") * 1024))
echo "memory: estimate $est bytes, resident $rss bytes"
if [ "${STRATA_SANITIZERS:-0}" = 1 ]; then
  # ASan's shadow memory and quarantine make the resident set no measure of the estimate
  echo "memory: not compared under sanitizers"
else
  check "estimate within 10% of resident ($est vs $rss)" awk -v e="$est" -v r="$rss" 'BEGIN { d = e - r; if (d < 0) d = -d; exit !(r > 0 && d / r < 0.10) }'
fi
# ASan's allocator makes the process itself tens of MiB larger: leave room for some KV
# cache there too, so that the refusal can still suggest a context length
LIMIT=30
[ "${STRATA_SANITIZERS:-0}" = 1 ] && LIMIT=60
cat >"$T/tight.conf" <<EOF
engine: { model = "$MODEL"; memory_limit = "${LIMIT}MiB"; };
EOF
"$STRATA" serve --config "$T/tight.conf" --port 0 >/dev/null 2>"$T/tight.err"
check "serve refuses a model that does not fit (exit 1)" test $? -eq 1
check "refusal gives the parts" grep -q "weights .* + KV cache .* + workspace and scratch .* engine.memory_limit allows $LIMIT.0 MiB" "$T/tight.err"
check "refusal says what to change ($(cat "$T/tight.err"))" grep -q "lower engine.kv_cache.memory .* engine.context_length = " "$T/tight.err"
check "refusal is one line" test "$(wc -l <"$T/tight.err")" -eq 1

# post PATH BODY: prints the body, status in $T/status
post() {
  curl -s -o "$T/body" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$2" "$U$1" >"$T/status"
  cat "$T/body"
}
status() { cat "$T/status"; }
# expect_error NAME STATUS PATH BODY [PARAM]: the status and the OpenAI error shape
expect_error() {
  local name=$1 want=$2 path=$3 body=$4 param=${5:-}
  post "$path" "$body" >/dev/null
  if [ "$(status)" != "$want" ]; then
    bad "$name: status $(status), want $want: $(head -c 300 "$T/body")"
    return
  fi
  if ! jq -e '(.error | type == "object") and (.error.message | type == "string") and (.error.type | type == "string")
              and (.error | has("param")) and (.error | has("code"))' "$T/body" >/dev/null 2>&1; then
    bad "$name: not an OpenAI error body: $(head -c 300 "$T/body")"
    return
  fi
  if [ -n "$param" ] && [ "$(jq -r .error.param "$T/body")" != "$param" ]; then
    bad "$name: param $(jq -r .error.param "$T/body"), want $param"
    return
  fi
  ok
}

# ---- basics ---------------------------------------------------------------------
"$STRATA" serve --config "$T/main.conf" --port "${U##*:}" >/dev/null 2>"$T/inuse.err"
check "port in use exits 1" test $? -eq 1
check "port in use message" grep -q "cannot listen on 127.0.0.1 port ${U##*:}: Address already in use" "$T/inuse.err"
"$STRATA" serve --port 70000 >/dev/null 2>"$T/usage.err"
check "bad --port exits 2" test $? -eq 2
check "bad --port one line" test "$(wc -l <"$T/usage.err")" -eq 1
check "health" test "$(curl -s -o /dev/null -w '%{http_code}' "$U/health")" = 200
curl -s "$U/v1/models" >"$T/models"
check "models id" test "$(jq -r '.data[0].id' "$T/models")" = stories260K
check "models max_model_len" test "$(jq -r '.data[0].max_model_len' "$T/models")" = 512
check "model card" test "$(curl -s "$U/v1/models/stories260K" | jq -r .id)" = stories260K

# ---- greedy completions equal strata generate ------------------------------------
for p in "Once upon a time" "Lily and Ben" "The sun"; do
  for n in 1 20 60; do
    want=$("$STRATA" generate --model "$MODEL" --threads 1 --prompt "$p" -n "$n" --temperature 0 2>/dev/null)
    got=$(post /v1/completions "$(jq -nc --arg p "$p" --argjson n "$n" '{prompt: $p, max_tokens: $n, temperature: 0}')" | jq -r '.choices[0].text')
    if [ "$got" = "$want" ]; then ok; else bad "greedy '$p' -n $n: server '$got', generate '$want'"; fi
  done
done

# ---- non-streaming shapes ---------------------------------------------------------
post /v1/completions '{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"metadata":{"team":"qa","run":"7"}}' >"$T/c1"
check "completion 200" test "$(status)" = 200
check "completion object" test "$(jq -r .object "$T/c1")" = text_completion
check "completion finish length" test "$(jq -r '.choices[0].finish_reason' "$T/c1")" = length
check "completion usage" test "$(jq -c '[.usage.prompt_tokens, .usage.completion_tokens, .usage.total_tokens]' "$T/c1")" = "[5,20,25]"
check "completion metadata echoed" test "$(jq -r .metadata.team "$T/c1")" = qa
check "request log has metadata" grep -q 'metadata={"team":"qa","run":"7"}' "$T/main.err"
GREEDY20=$(jq -r '.choices[0].text' "$T/c1")

post /v1/completions '{"prompt":[1,403,407,261,378],"max_tokens":20,"temperature":0}' >"$T/c2"
check "token-id prompt" test "$(jq -r '.choices[0].text' "$T/c2")" = "$GREEDY20"

post /v1/completions '{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"stop":["Lily"]}' >"$T/c3"
check "stop string cut" test "$(jq -r '.choices[0].text' "$T/c3")" = "${GREEDY20%%Lily*}"
check "stop finish" test "$(jq -r '.choices[0].finish_reason' "$T/c3")" = stop

post /v1/completions '{"prompt":"Once upon a time","max_tokens":5,"temperature":0,"echo":true}' >"$T/c4"
check "echo" test "$(jq -r '.choices[0].text' "$T/c4")" = "Once upon a time${GREEDY20:0:5}" -o "$(jq -r '.choices[0].text' "$T/c4" | head -c 16)" = "Once upon a time"

post /v1/completions '{"prompt":"Lily","max_tokens":16,"n":3,"temperature":1,"seed":11}' >"$T/c5"
check "n=3 choices" test "$(jq '.choices | length' "$T/c5")" = 3
check "n=3 indexes" test "$(jq -c '[.choices[].index]' "$T/c5")" = "[0,1,2]"
post /v1/completions '{"prompt":"Lily","max_tokens":16,"n":3,"temperature":1,"seed":11}' >"$T/c5b"
check "seeded n=3 reproducible" test "$(jq -c '[.choices[].text]' "$T/c5")" = "$(jq -c '[.choices[].text]' "$T/c5b")"

post /v1/chat/completions '{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":"Tell me about Lily."}],"max_tokens":24,"temperature":0}' >"$T/chat1"
check "chat 200" test "$(status)" = 200
check "chat object" test "$(jq -r .object "$T/chat1")" = chat.completion
check "chat role" test "$(jq -r '.choices[0].message.role' "$T/chat1")" = assistant
check "chat content" test -n "$(jq -r '.choices[0].message.content' "$T/chat1")"
check "chat usage" test "$(jq -r '.usage.completion_tokens' "$T/chat1")" -ge 1
post /v1/chat/completions '{"messages":[{"role":"user","content":"Hi"}],"max_completion_tokens":4}' >"$T/chat2"
check "chat max_completion_tokens" test "$(jq -r '.usage.completion_tokens' "$T/chat2")" -le 4

# ---- streaming --------------------------------------------------------------------
# stream_text FILE KIND: the concatenated text of an SSE stream
stream_text() {
  if [ "$2" = chat ]; then
    sed -n 's/^data: \({.*\)$/\1/p' "$1" | jq -j 'select(.choices | length > 0) | .choices[0].delta.content // ""'
  else
    sed -n 's/^data: \({.*\)$/\1/p' "$1" | jq -j 'select(.choices | length > 0) | .choices[0].text'
  fi
}
curl -sN -H 'Content-Type: application/json' -D "$T/s1.h" \
  -d '{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"stream":true}' "$U/v1/completions" >"$T/s1"
check "stream content-type" grep -qi '^content-type: text/event-stream' "$T/s1.h"
check "stream ends with DONE" test "$(grep -v '^$' "$T/s1" | tail -1)" = "data: [DONE]"
check "stream events are data lines" test -z "$(grep -v '^$' "$T/s1" | grep -v '^data: ')"
check "stream text = non-stream text" test "$(stream_text "$T/s1" cmpl)" = "$GREEDY20"
check "stream last finish" test "$(sed -n 's/^data: \({.*\)$/\1/p' "$T/s1" | jq -r '.choices[0].finish_reason // empty' | tail -1)" = length
check "stream no usage by default" test -z "$(sed -n 's/^data: \({.*\)$/\1/p' "$T/s1" | jq -r '.usage // empty')"

curl -sN -H 'Content-Type: application/json' \
  -d '{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}' \
  "$U/v1/completions" >"$T/s2"
check "stream usage chunk" test "$(sed -n 's/^data: \({.*\)$/\1/p' "$T/s2" | tail -1 | jq -c '[(.choices|length), .usage.completion_tokens]')" = "[0,20]"

CHAT='{"messages":[{"role":"user","content":"Tell me about Lily."}],"max_tokens":24,"temperature":0}'
post /v1/chat/completions "$CHAT" >"$T/chat3"
curl -sN -H 'Content-Type: application/json' -d "$(jq -c '. + {stream: true, stream_options: {include_usage: true}}' <<<"$CHAT")" \
  "$U/v1/chat/completions" >"$T/s3"
check "chat stream DONE" test "$(grep -v '^$' "$T/s3" | tail -1)" = "data: [DONE]"
check "chat stream first delta role" test "$(sed -n 's/^data: \({.*\)$/\1/p' "$T/s3" | head -1 | jq -r '.choices[0].delta.role')" = assistant
check "chat stream object" test "$(sed -n 's/^data: \({.*\)$/\1/p' "$T/s3" | head -1 | jq -r .object)" = chat.completion.chunk
check "chat stream text = non-stream" test "$(stream_text "$T/s3" chat)" = "$(jq -r '.choices[0].message.content' "$T/chat3")"
check "chat stream usage" test "$(sed -n 's/^data: \({.*\)$/\1/p' "$T/s3" | tail -1 | jq -r .usage.completion_tokens)" = "$(jq -r .usage.completion_tokens "$T/chat3")"

# ---- a batch of prompts in one completions request --------------------------------------------
# OpenAI's prompt may be an array of prompts (strings or token ids): prompt i
# answers as choices i * n .. i * n + n - 1, each equal to its solo answer.
BATCH='{"prompt":["Once upon a time","The dog",[1,403,407]],"n":2,"max_tokens":12,"temperature":0}'
post /v1/completions "$BATCH" >"$T/batch"
check "batch: 200" test "$(status)" = 200
check "batch: 6 choices indexed 0..5" jqe '[.choices[].index] == [0,1,2,3,4,5]' "$T/batch"
nsame=0
ptoks=0
for pi in 0 1 2; do
  one=$(jq -c --argjson i "$pi" '{prompt: .prompt[$i], max_tokens: 12, temperature: 0}' <<<"$BATCH")
  post /v1/completions "$one" >"$T/batch.$pi"
  ptoks=$((ptoks + $(jq -r .usage.prompt_tokens "$T/batch.$pi")))
  for c in 0 1; do
    [ "$(jq -r --argjson k $((pi * 2 + c)) '.choices[$k].text' "$T/batch")" = "$(jq -r '.choices[0].text' "$T/batch.$pi")" ] && nsame=$((nsame + 1))
  done
done
check "batch: every choice equals its prompt's solo answer ($nsame of 6)" test "$nsame" -eq 6
check "batch: usage sums the prompts" test "$(jq -r .usage.prompt_tokens "$T/batch")" = "$ptoks"
curl -sN -H 'Content-Type: application/json' -d "$(jq -c '. + {stream: true, stream_options: {include_usage: true}}' <<<"$BATCH")" \
  "$U/v1/completions" >"$T/batch.s"
nsame=0
for k in 0 1 2 3 4 5; do
  got=$(sed -n 's/^data: \({.*\)$/\1/p' "$T/batch.s" | jq -j --argjson k "$k" 'select(.choices | length > 0) | .choices[] | select(.index == $k) | .text')
  [ "$got" = "$(jq -r --argjson k "$k" '.choices[$k].text' "$T/batch")" ] && nsame=$((nsame + 1))
done
check "batch: streamed choices equal the non-streamed ($nsame of 6)" test "$nsame" -eq 6
check "batch stream: DONE" test "$(grep -v '^$' "$T/batch.s" | tail -1)" = "data: [DONE]"
expect_error "batch: one bad prompt refuses the batch" 400 /v1/completions '{"prompt":["Once",[1,999999]],"max_tokens":2}' "prompt[1]"
expect_error "batch: too many prompts" 400 /v1/completions "$(jq -nc '{prompt: [range(257) | "x"], max_tokens: 1}')" prompt
long=$(printf 'Once upon a time %.0s' $(seq 1 200))
expect_error "batch: a too-long prompt is named" 400 /v1/completions "$(jq -nc --arg l "$long" '{prompt: ["Once", $l], max_tokens: 4}')" prompt
check "batch: the message names prompt 1" grep -q '"prompt 1: ' "$T/body"

# ---- 32 concurrent requests equal their solo answers --------------------------------
PROMPTS=("Once upon a time" "Lily" "Ben went to the park" "The cat" "One day" "Tom had a big red ball" "Sue" "The dog barked")
body_i() {
  local i=$1 p=${PROMPTS[$((i % 8))]}
  if [ $((i % 2)) -eq 0 ]; then
    jq -nc --arg p "$p" --argjson n $((8 + i)) '{prompt: $p, max_tokens: $n, temperature: 0}'
  else
    jq -nc --arg p "$p" --argjson n $((8 + i)) --argjson s "$i" '{prompt: $p, max_tokens: $n, temperature: 0.9, top_p: 0.95, seed: $s}'
  fi
}
for i in $(seq 0 31); do
  curl -s -H 'Content-Type: application/json' -d "$(body_i "$i")" "$U/v1/completions" | jq -r '.choices[0].text' >"$T/solo.$i"
done
for i in $(seq 0 31); do
  (curl -s -H 'Content-Type: application/json' -d "$(body_i "$i")" "$U/v1/completions" | jq -r '.choices[0].text' >"$T/conc.$i") &
done
wait_jobs() { local j; for j in $(jobs -p); do case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" ;; esac; done; }
wait_jobs
same=0
for i in $(seq 0 31); do
  if [ -s "$T/solo.$i" ] && cmp -s "$T/solo.$i" "$T/conc.$i"; then same=$((same + 1)); else bad "concurrent $i: '$(cat "$T/conc.$i")' != solo '$(cat "$T/solo.$i")'"; fi
done
[ "$same" -eq 32 ] && ok

# ---- a client disconnecting mid-stream --------------------------------------------------
metric() { curl -s "$U/metrics" | sed -n "s/^$1{[^}]*} \([0-9.e+]*\)$/\1/p" | head -1; }
disc0=$(metric 'strata:client_disconnects_total')
abort0=$(curl -s "$U/metrics" | sed -n 's/^vllm:request_success_total{.*finished_reason="abort"} \([0-9]*\)$/\1/p')
# n=16 long choices: seconds of work, so the disconnect lands mid-answer.
curl -sN -H 'Content-Type: application/json' \
  -d '{"prompt":"Once upon a time","max_tokens":480,"n":16,"ignore_eos":true,"temperature":1,"seed":3,"stream":true}' \
  "$U/v1/completions" 2>/dev/null | head -c 2000 >"$T/cut"
check "cut stream got data" grep -q '^data: {' "$T/cut"
blocks=""
for i in $(seq 1 100); do
  blocks=$(metric 'strata:kv_blocks_used')
  running=$(metric 'vllm:num_requests_running')
  [ "$blocks" = 0 ] && [ "$running" = 0 ] && break
  sleep 0.1
done
check "blocks back after disconnect (used=$blocks)" test "$blocks" = 0
check "disconnect counted" test "$(metric 'strata:client_disconnects_total')" -gt "$disc0"
abort1=$(curl -s "$U/metrics" | sed -n 's/^vllm:request_success_total{.*finished_reason="abort"} \([0-9]*\)$/\1/p')
check "disconnect aborted the request" test "$abort1" -gt "$abort0"
check "disconnect logged" grep -q 'client disconnected; request cancelled' "$T/main.err"
# A non-streaming client that goes away is noticed too.
curl -s -m 0.3 -H 'Content-Type: application/json' \
  -d '{"prompt":"Once upon a time","max_tokens":480,"n":16,"ignore_eos":true,"seed":4}' "$U/v1/completions" >/dev/null 2>&1
for i in $(seq 1 100); do
  blocks=$(metric 'strata:kv_blocks_used')
  [ "$blocks" = 0 ] && [ "$(metric 'vllm:num_requests_running')" = 0 ] && break
  sleep 0.1
done
check "blocks back after non-stream disconnect (used=$blocks)" test "$blocks" = 0
check "health after disconnects" test "$(curl -s -o /dev/null -w '%{http_code}' "$U/health")" = 200

# ---- bad requests -------------------------------------------------------------------------
expect_error "malformed json" 400 /v1/completions '{"prompt": "x",'
expect_error "not an object" 400 /v1/completions '["prompt"]'
expect_error "empty body" 400 /v1/completions ''
expect_error "wrong type max_tokens" 400 /v1/completions '{"prompt":"x","max_tokens":"5"}' max_tokens
expect_error "wrong type prompt" 400 /v1/completions '{"prompt":{"text":"x"}}' prompt
expect_error "wrong type stream" 400 /v1/completions '{"prompt":"x","stream":"yes"}' stream
expect_error "wrong type messages" 400 /v1/chat/completions '{"messages":"hi"}' messages
expect_error "bad message role" 400 /v1/chat/completions '{"messages":[{"role":"wizard","content":"x"}]}' messages
expect_error "temperature range" 400 /v1/completions '{"prompt":"x","temperature":5}' temperature
expect_error "top_p range" 400 /v1/completions '{"prompt":"x","top_p":0}' top_p
expect_error "n range" 400 /v1/completions '{"prompt":"x","n":0}' n
expect_error "max_tokens range" 400 /v1/completions '{"prompt":"x","max_tokens":-1}' max_tokens
expect_error "token id range" 400 /v1/completions '{"prompt":[1,999999]}' prompt
expect_error "unknown model" 400 /v1/completions '{"prompt":"x","model":"gpt-4"}' model
expect_error "context exceeded" 400 /v1/completions '{"prompt":"Once upon a time","max_tokens":600}' max_tokens
check "context message names both numbers" grep -q '512 tokens.*605 tokens (5 in the prompt, 600 for the completion)' "$T/body"
expect_error "metadata not strings" 400 /v1/completions '{"prompt":"x","metadata":{"a":1}}' metadata
expect_error "metadata too big" 400 /v1/completions "{\"prompt\":\"x\",\"metadata\":{\"a\":\"$(head -c 400 /dev/zero | tr '\0' a)\"}}" metadata
expect_error "unsupported logprobs" 400 /v1/completions '{"prompt":"x","logprobs":2}' logprobs
expect_error "stream_options without stream" 400 /v1/completions '{"prompt":"x","stream_options":{"include_usage":true}}' stream_options
printf '{"prompt":"bad \xff\xfe bytes"}' >"$T/badutf8"
expect_error "invalid utf-8" 400 /v1/completions "$(cat "$T/badutf8")"
check "invalid utf-8 code" test "$(jq -r .error.code "$T/body")" = invalid_utf8
printf '{"messages":[{"role":"user","content":"\xc0\xaf"}]}' >"$T/badutf8c"
expect_error "invalid utf-8 chat" 400 /v1/chat/completions "$(cat "$T/badutf8c")"
expect_error "unknown path" 404 /v2/everything '{}'
code=$(curl -s -o "$T/body" -w '%{http_code}' "$U/v1/completions")
check "GET on POST endpoint is 405" test "$code" = 405
check "405 body" jqe .error.message "$T/body"
code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$U/v1/models")
check "DELETE is 405" test "$code" = 405
# Unknown fields are ignored, as OpenAI and vLLM do.
post /v1/completions '{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"frobnicate":{"x":[1,2]},"guided_json":null}' >"$T/unk"
check "unknown fields ignored" test "$(status)" = 200 -a "$(jq -r '.choices[0].text' "$T/unk")" = "$GREEDY20"
# Configured per-request limits: server.max_n 16, max_stop 2, max_header_bytes 4 KiB.
c=$(curl -s -o "$T/lim" -w '%{http_code}' "$U/v1/completions" -d '{"prompt":"Hi","max_tokens":1,"n":17}')
check "n above server.max_n: 400 naming n ($c)" [ "$c" = 400 -a "$(jq -r .error.param "$T/lim")" = n ]
c=$(curl -s -o "$T/lim" -w '%{http_code}' "$U/v1/completions" -d '{"prompt":"Hi","max_tokens":1,"stop":["a","b","c"]}')
check "stop strings above server.max_stop: 400 naming stop ($c)" [ "$c" = 400 -a "$(jq -r .error.param "$T/lim")" = stop ]
c=$(curl -s -o /dev/null -w '%{http_code}' "$U/v1/completions" -H "X-Big: $(head -c 5000 /dev/zero | tr '\0' x)" \
  -d '{"prompt":"Hi","max_tokens":1}')
check "headers above server.max_header_bytes: 400 ($c)" [ "$c" = 400 ]
c=$(curl -s -o /dev/null -w '%{http_code}' "$U/v1/completions" -H "X-Ok: $(head -c 3000 /dev/zero | tr '\0' x)" \
  -d '{"prompt":"Hi","max_tokens":1}')
check "headers below it served ($c)" [ "$c" = 200 ]

# Bodies above server.max_body_bytes (4 MiB by default): 413.
head -c 5000000 /dev/zero | tr '\0' ' ' | sed 's/^/{"prompt":"x","pad":"/; s/$/"}/' >"$T/huge"
code=$(curl -s -o "$T/huge.out" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$T/huge" "$U/v1/completions")
check "huge body is 413 (got $code)" test "$code" = 413
# in the API's JSON, not libevent's HTML page (core/http_scan.h), with or
# without curl's Expect: 100-continue, and for a GET's body too
check "huge body's 413 is JSON naming the sizes" \
  jq -e '.error.code == "request_too_large" and (.error.message | test("5000023 bytes.*4194304"))' "$T/huge.out"
code=$(curl -s -o "$T/huge.out" -w '%{http_code}' -H 'Expect:' --data-binary @"$T/huge" "$U/v1/completions")
check "huge body without Expect: JSON 413 (got $code)" \
  sh -c "[ $code = 413 ] && jq -e '.error.code == \"request_too_large\"' '$T/huge.out' >/dev/null"
code=$(curl -s -o "$T/huge.out" -w '%{http_code}' -X GET --data-binary @"$T/huge" "$U/health")
check "huge GET body: JSON 413 (got $code)" \
  sh -c "[ $code = 413 ] && jq -e '.error.code == \"request_too_large\"' '$T/huge.out' >/dev/null"
# without Expect the connection stays open while the body is dropped (the
# client, still sending, reads the answer), and then serves the next request
keep=$( (
  trap '' PIPE
  hp=${U#http://}
  exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}" || exit 0
  { printf 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n'
    head -c 5000000 /dev/zero
    printf 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'; } >&3 2>/dev/null
  timeout 20 cat <&3
) | grep -ao 'HTTP/1.1 [0-9]*' | tr '\n' ' ')
check "after a 413 the same connection serves the next request ($keep)" \
  test "$keep" = "HTTP/1.1 413 HTTP/1.1 200 "
# the marker header is the scanner's alone: a client's own is renamed
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Strata-Body-Too-Large: 5' "$U/health")
check "a client's own X-Strata-Body-Too-Large is not a 413 (got $code)" test "$code" = 200
# two requests in one write, the second's declared body over the limit: the
# first answered, then the 413 (the scanner keeps the stream in step)
pipe=$( (
  trap '' PIPE
  hp=${U#http://}
  exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}" || exit 0
  printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\nabc' >&3
  timeout 5 cat <&3
) | tr -d '\r')
check "pipelined: 200 then a JSON 413" \
  sh -c "printf '%s' \"\$1\" | grep -q '^HTTP/1.1 200' && printf '%s' \"\$1\" | grep -q 'HTTP/1.1 413' && printf '%s' \"\$1\" | grep -q request_too_large" _ "$pipe"
check "server alive after hostile input" test "$(curl -s -o /dev/null -w '%{http_code}' "$U/health")" = 200
# Raw hostile HTTP: garbage, bad lengths, truncated and bad chunked bodies,
# huge headers, a client vanishing mid-body.
HP=${U#http://}
raw() { # in a subshell ignoring SIGPIPE: the server may close first
  (
    trap '' PIPE
    exec 3<>"/dev/tcp/${HP%:*}/${HP##*:}" || exit 0
    printf '%b' "$1" >&3 2>/dev/null
    timeout 2 cat <&3 >/dev/null 2>&1
  )
}
raw 'NOT HTTP\r\n\r\n'
raw '\x00\x01\xff\xfe\r\n\r\n'
raw 'GET /\r\n'
raw 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n'
raw 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{}'
raw 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt":'
raw 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n'
raw 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"pro\r\n'
raw "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: $(head -c 100000 /dev/zero | tr '\0' a)\r\n\r\n"
raw 'GET /v1/models/%00%ff HTTP/1.1\r\nHost: x\r\n\r\n'
raw 'GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n'
code=$(curl -s -o "$T/body" -w '%{http_code}' -H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' \
  --data-binary '{"prompt":"Once upon a time","max_tokens":3,"temperature":0}' "$U/v1/completions")
check "chunked request body works" test "$code" = 200
check "server alive after raw garbage" test "$(curl -s -o /dev/null -w '%{http_code}' "$U/health")" = 200

# ---- /tokenize and /detokenize -------------------------------------------------------------
post /tokenize '{"prompt":"Once upon a time"}' >"$T/tok"
check "tokenize ids" test "$(jq -c .tokens "$T/tok")" = "$("$STRATA" tokenize --model "$MODEL" "Once upon a time" | jq -sc .)"
check "tokenize count" test "$(jq -r .count "$T/tok")" = "$(jq '.tokens | length' "$T/tok")"
check "tokenize max_model_len" test "$(jq -r .max_model_len "$T/tok")" = 512
post /detokenize "$(jq -c '{tokens: .tokens}' "$T/tok")" >"$T/detok"
check "detokenize round trip" test "$(jq -r .prompt "$T/detok")" = "Once upon a time"
post /tokenize '{"messages":[{"role":"user","content":"Hi"}]}' >"$T/tokc"
check "tokenize chat" test "$(jq -r .count "$T/tokc")" -gt 2
expect_error "detokenize bad id" 400 /detokenize '{"tokens":[-4]}' tokens

# ---- logits processors over HTTP (docs/logits-processors.md) ---------------------------------
post /v1/completions '{"prompt":"Once upon a time","max_tokens":60,"temperature":0}' >"$T/lp0"
check "base answer has Lily" grep -q Lily "$T/lp0"
post /v1/completions '{"prompt":"Once upon a time","max_tokens":60,"temperature":0,"bad_words":["Lily"]}' >"$T/lp1"
check "bad_words 200" test "$(status)" = 200
check "bad_words removes Lily" test "$(jq -r '.choices[0].text' "$T/lp1" | grep -c Lily)" = 0
# streamed with n = 2 (sampled): no choice says it
curl -sN -H 'Content-Type: application/json' -d '{"prompt":"Once upon a time","max_tokens":60,"temperature":0.8,"seed":5,"n":2,"stream":true,"bad_words":["Lily"," park"]}' \
  "$U/v1/completions" >"$T/lp2"
for i in 0 1; do
  txt=$(sed -n 's/^data: //p' "$T/lp2" | grep -v '^\[DONE\]' | jq -j --argjson i "$i" 'select(.choices[0].index == $i) | .choices[0].text')
  check "stream choice $i has text" test -n "$txt"
  if printf '%s' "$txt" | grep -q -e Lily -e park; then bad "stream choice $i: $txt"; else ok; fi
done
check "stream ends with DONE" grep -q '^data: \[DONE\]' "$T/lp2"
post /v1/chat/completions '{"messages":[{"role":"user","content":"Tell a story"}],"max_tokens":20,"temperature":0,"logit_bias":{"317":100}}' >"$T/lp3"
check "chat logit_bias +100 forces the token" test "$(jq -r '.choices[0].message.content' "$T/lp3" | tr -s ' ' | sed 's/^ //')" = "$(printf 'Lily %.0s' $(seq 1 20) | sed 's/ $//')"
expect_error "bad_words empty" 400 /v1/completions '{"prompt":"x","bad_words":[" "]}' bad_words
expect_error "logit_bias range" 400 /v1/completions '{"prompt":"x","logit_bias":{"5":-101}}' logit_bias
expect_error "logit_bias key" 400 /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"logit_bias":{"five":1}}' logit_bias
expect_error "allowed_token_ids empty" 400 /v1/completions '{"prompt":"x","allowed_token_ids":[]}' allowed_token_ids
expect_error "min_tokens over max_tokens" 400 /v1/completions '{"prompt":"x","max_tokens":4,"min_tokens":5}' min_tokens
expect_error "repetition_penalty zero" 400 /v1/completions '{"prompt":"x","repetition_penalty":0}' repetition_penalty
expect_error "presence_penalty range" 400 /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"presence_penalty":2.5}' presence_penalty
expect_error "frequency_penalty type" 400 /v1/completions '{"prompt":"x","frequency_penalty":"1"}' frequency_penalty
post /v1/completions '{"prompt":"x","max_tokens":2,"presence_penalty":0,"frequency_penalty":0,"repetition_penalty":1,"logit_bias":{},"bad_words":[],"min_tokens":0}' >/dev/null
check "neutral processor values 200" test "$(status)" = 200

# a server with only bad_words enabled refuses the others' fields, naming them
cat >"$T/onlybw.conf" <<EOF
engine: { model = "$MODEL"; logits = ( "bad_words" ); };
EOF
start_server onlybw "$T/onlybw.conf"
code=$(curl -s -o "$T/body" -w '%{http_code}' -d '{"prompt":"x","max_tokens":2,"logit_bias":{"5":3}}' "$URL_onlybw/v1/completions")
check "disabled processor 400" test "$code" = 400
check "disabled processor param" test "$(jq -r .error.param "$T/body")" = logit_bias
check "disabled processor message" grep -q "not enabled" "$T/body"
code=$(curl -s -o /dev/null -w '%{http_code}' -d '{"prompt":"x","max_tokens":2,"bad_words":["y"],"presence_penalty":0}' "$URL_onlybw/v1/completions")
check "enabled processor 200 on the limited server" test "$code" = 200
kill -TERM "$PID_onlybw"
wait "$PID_onlybw"
cat >"$T/badlogits.conf" <<EOF
engine: {
  model = "$MODEL";
  logits = ( "bad_words", "no_such", "bad_words" );
};
EOF
"$STRATA" check-config "$T/badlogits.conf" >"$T/cc.out" 2>&1
check "check-config rejects unknown logits plugin" test $? -ne 0
check "unknown logits plugin file:line" grep -q "badlogits.conf:3: .*unknown logits plugin 'no_such'" "$T/cc.out"
check "duplicate logits plugin file:line" grep -q "badlogits.conf:3: .*'bad_words' is listed twice" "$T/cc.out"

# ---- /v1/cache/stats ---------------------------------------------------------------------------
LONGP="Once upon a time there was a little girl named Lily who loved to play in the park with her dog every day"
post /v1/cache/stats "$(jq -nc --arg p "$LONGP and the sun" '{prompt: $p}')" >"$T/cs0"
check "cache stats 200" test "$(status)" = 200
check "cache stats object" test "$(jq -r .object "$T/cs0")" = cache.stats
check "cache stats block size" test "$(jq -r .block_size "$T/cs0")" = 16
check "cache stats blocks add up" test "$(jq '.blocks.free + .blocks.used + .blocks.evictable == .blocks.total' "$T/cs0")" = true
post /v1/completions "$(jq -nc --arg p "$LONGP" '{prompt: $p, max_tokens: 3, temperature: 0}')" >/dev/null
post /v1/cache/stats "$(jq -nc --arg p "$LONGP and the sun" '{prompt: $p}')" >"$T/cs1"
NP=$(jq -r .prompt_tokens "$T/cs1")
check "cache stats sees the computed prefix" test "$(jq -r .cached_tokens "$T/cs1")" = "$(( (NP - 1) / 16 * 16 ))"
check "cache stats cached blocks" test "$(jq -r '.cached_blocks * 16' "$T/cs1")" = "$(jq -r .cached_tokens "$T/cs1")"
post /tokenize "$(jq -nc --arg p "$LONGP and the sun" '{prompt: $p}')" >"$T/cs_tok"
post /v1/cache/stats "$(jq -c '{prompt: .tokens}' "$T/cs_tok")" >"$T/cs2"
check "cache stats token ids = text" test "$(jq -r .cached_tokens "$T/cs2")" = "$(jq -r .cached_tokens "$T/cs1")"
post /v1/cache/stats "$(jq -nc --arg p "$LONGP and the sun" '{prompt: $p, cache_salt: "tenant-b"}')" >"$T/cs3"
check "cache stats salt separates" test "$(jq -r .cached_tokens "$T/cs3")" = 0
post /v1/cache/stats '{"messages":[{"role":"user","content":"Hello there"}]}' >"$T/cs4"
check "cache stats chat 200" test "$(status)" = 200
check "cache stats hit rate in [0,1]" test "$(jq '.hit_rate >= 0 and .hit_rate <= 1' "$T/cs4")" = true
expect_error "cache stats no prompt" 400 /v1/cache/stats '{}' prompt
expect_error "cache stats bad id" 400 /v1/cache/stats '{"prompt":[1,-2]}' prompt
expect_error "cache stats both" 400 /v1/cache/stats '{"prompt":"x","messages":[{"role":"user","content":"x"}]}' prompt
expect_error "cache stats empty salt" 400 /v1/cache/stats '{"prompt":"x","cache_salt":""}' cache_salt
expect_error "cache stats salt type" 400 /v1/cache/stats '{"prompt":"x","cache_salt":5}' cache_salt
expect_error "cache stats wrong model" 400 /v1/cache/stats '{"prompt":"x","model":"nope"}'
check "cache stats GET is 405" test "$(curl -s -o /dev/null -w '%{http_code}' "$U/v1/cache/stats")" = 405

# ---- /v1/cache/hints ---------------------------------------------------------------------------
# bad bodies on the main server: a 400 naming the field
expect_error "hint no action" 400 /v1/cache/hints '{"prompt":"x"}' action
expect_error "hint unknown action" 400 /v1/cache/hints '{"prompt":"x","action":"pin"}' action
expect_error "hint action type" 400 /v1/cache/hints '{"prompt":"x","action":1}' action
expect_error "hint ttl 0" 400 /v1/cache/hints '{"prompt":"x","action":"keep","ttl":0}' ttl
expect_error "hint ttl too long" 400 /v1/cache/hints '{"prompt":"x","action":"keep","ttl":86401}' ttl
expect_error "hint ttl string" 400 /v1/cache/hints '{"prompt":"x","action":"keep","ttl":"300"}' ttl
expect_error "hint ttl with release" 400 /v1/cache/hints '{"prompt":"x","action":"release","ttl":5}' ttl
expect_error "hint prefill with release" 400 /v1/cache/hints '{"prompt":"x","action":"release","prefill":true}' prefill
expect_error "hint force with keep" 400 /v1/cache/hints '{"prompt":"x","action":"keep","force":true}' force
expect_error "hint both prompts" 400 /v1/cache/hints '{"prompt":"x","messages":[{"role":"user","content":"x"}],"action":"keep"}' prompt
expect_error "hint no prompt" 400 /v1/cache/hints '{"action":"keep"}' prompt
expect_error "hint bad id" 400 /v1/cache/hints '{"prompt":[1,512],"action":"keep"}' prompt
expect_error "hint wrong model" 400 /v1/cache/hints '{"prompt":"x","action":"keep","model":"nope"}' model
expect_error "hint malformed" 400 /v1/cache/hints '{"prompt":"x","action":"keep",'
expect_error "hint prompt too long" 400 /v1/cache/hints "$(jq -nc '{prompt: [range(0;513) | . % 500 + 3], action: "release"}')" prompt
check "hint prompt too long code" test "$(jq -r .error.code "$T/body")" = context_length_exceeded
# a prefill needs room for its one token: a context-long prompt is kept, not prefilled
expect_error "hint prefill of a full context" 400 /v1/cache/hints "$(jq -nc '{prompt: [range(0;512) | . % 500 + 3], action: "keep", prefill: true}')" prompt
post /v1/cache/hints "$(jq -nc '{prompt: [range(0;512) | . % 500 + 3], action: "keep"}')" >/dev/null
check "hint keep of a full context is 200" test "$(status)" = 200
check "hint GET is 405" test "$(curl -s -o /dev/null -w '%{http_code}' "$U/v1/cache/hints")" = 405
post /v1/cache/hints '{"messages":[{"role":"user","content":"Hello there"}],"action":"keep","ttl":1.5}' >"$T/h0"
check "hint chat keep 200" test "$(status)" = 200
check "hint keep of an uncached prompt" test "$(jq -c '[.object, .action, .blocks, .cached_tokens, .prefilled_tokens, .ttl]' "$T/h0")" = '["cache.hint","keep",0,0,0,1.5]'

# A small KV cache (20 blocks of 16) and prompts of token ids (65 tokens: 4 full blocks
# and one token), distinct from their first token on.
printf 'engine: { model = "%s"; kv_cache: { tokens = 320; }; };\n' "$MODEL" >"$T/hint.conf"
start_server hint "$T/hint.conf"
H=$URL_hint
ids() { jq -nc --argjson k "$1" --argjson n "$2" '[range(0;$n) | ((. * 7 + $k * 131) % 497) + 3]'; }
hpost() {
  curl -s -o "$T/body" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$2" "$H$1" >"$T/status"
  cat "$T/body"
}
hcached() { hpost /v1/cache/stats "{\"prompt\":$(ids "$1" "$2")}" | jq -r .cached_tokens; }
hmetric() { curl -s "$H/metrics" | sed -n "s/^$1{[^}]*} \([0-9.e+]*\)$/\1/p" | head -1; }
hrun() { hpost /v1/completions "{\"prompt\":$(ids "$1" "$2"),\"max_tokens\":1}" >/dev/null; }
check "hint: A not cached yet" test "$(hcached 1 65)" = 0
# (1) keep with prefill computes the prompt, and answers once it is cached
hpost /v1/cache/hints "{\"prompt\":$(ids 1 65),\"action\":\"keep\",\"ttl\":600,\"prefill\":true,\"priority\":-1}" >"$T/h1"
check "hint prefill 200 ($(status): $(head -c 200 "$T/h1"))" test "$(status)" = 200
check "hint prefill reply" test "$(jq -c '[.object, .action, .prompt_tokens, .cached_tokens, .blocks, .ttl]' "$T/h1")" = '["cache.hint","keep",65,64,4,600]'
check "hint prefill computed the prompt" test "$(jq -r .prefilled_tokens "$T/h1")" -gt 0
check "hint: A cached after the prefill" test "$(hcached 1 65)" = 64
check "hint prefill logged" grep -q 'hint-[0-9a-f]* cache_hint_prefill status=200 prompt_tokens=65' "$T/hint.err"
check "hint: A's blocks protected" test "$(hmetric strata:kv_blocks_protected)" = 4
# a second keep with prefill of a cached prompt computes its last token only
hpost /v1/cache/hints "{\"prompt\":$(ids 1 65),\"action\":\"keep\",\"ttl\":600,\"prefill\":true}" >"$T/h1b"
check "hint prefill of a cached prompt" test "$(jq -c '[.cached_tokens, .blocks, .prefilled_tokens]' "$T/h1b")" = '[64,4,1]'
# (2) B, as large and more recent than A, is not kept: a flood of other prompts evicts B
# (plain LRU would have taken A first) while A stays
hrun 2 65
check "hint: B cached" test "$(hcached 2 65)" = 64
for k in 10 11 12 13 14 15 16 17; do hrun $k 65; done
check "hint: the flood evicted blocks" test "$(hmetric strata:prefix_cache_evictions_total)" -ge 12
check "hint: kept A survives the flood" test "$(hcached 1 65)" = 64
check "hint: un-kept B does not" test "$(hcached 2 65)" = 0
# (3) release: A is still under its own keep, so only force releases it
hpost /v1/cache/hints "{\"prompt\":$(ids 1 65),\"action\":\"release\"}" >"$T/h2"
check "hint release of a kept prompt leaves it" test "$(jq -c '[.action, .blocks, .protected_blocks, .cached_tokens]' "$T/h2")" = '["release",0,4,64]'
check "hint: A still protected" test "$(hmetric strata:kv_blocks_protected)" = 4
hpost /v1/cache/hints "{\"prompt\":$(ids 1 65),\"action\":\"release\",\"force\":true}" >"$T/h3"
check "hint forced release" test "$(jq -c '[.action, .blocks, .protected_blocks]' "$T/h3")" = '["release",4,0]'
check "hint: A's blocks hinted" test "$(hmetric strata:kv_blocks_hinted)" = 4
# E: the least recently used prompt still cached, first in line under LRU
E=""
for k in 10 11 12 13 14 15 16 17; do
  if [ "$(hcached $k 65)" = 64 ]; then E=$k; break; fi
done
check "hint: a flood prompt survives (E=$E)" test -n "$E"
ev0=$(hmetric strata:prefix_cache_evictions_total)
for k in $(seq 30 60); do
  hrun "$k" 17
  [ "$(hmetric strata:prefix_cache_evictions_total)" -gt "$ev0" ] && break
done
check "hint: small prompts evicted something" test "$(hmetric strata:prefix_cache_evictions_total)" -gt "$ev0"
check "hint: released A goes first" test "$(hcached 1 65)" -lt 64
[ -n "$E" ] && check "hint: the LRU prompt E stays" test "$(hcached "$E" 65)" = 64
curl -s "$H/metrics" >"$T/hmetrics"
check "metric cache hints keep" grep -q '^strata:cache_hints_total{model_name="stories260K",action="keep"} 2$' "$T/hmetrics"
check "metric cache hints release" grep -q '^strata:cache_hints_total{model_name="stories260K",action="release"} 2$' "$T/hmetrics"
kill -TERM "$PID_hint"
wait "$PID_hint"
check "hint server exits 0" test $? -eq 0
# prefix caching off: hints make no sense
printf 'engine: { model = "%s"; kv_cache: { prefix_caching = false; }; };\n' "$MODEL" >"$T/nocache.conf"
start_server nocache "$T/nocache.conf"
code=$(curl -s -o "$T/body" -w '%{http_code}' -d '{"prompt":"x","action":"keep"}' "$URL_nocache/v1/cache/hints")
check "hint without prefix caching is 400 ($code)" test "$code" = 400
check "hint without prefix caching says so" grep -q 'engine.kv_cache.prefix_caching is off' "$T/body"
kill -TERM "$PID_nocache"
wait "$PID_nocache"

# ---- /metrics --------------------------------------------------------------------------------
curl -s "$U/metrics" >"$T/metrics"
for m in vllm:num_requests_running vllm:num_requests_waiting vllm:gpu_cache_usage_perc vllm:kv_cache_usage_perc \
  vllm:prefix_cache_queries_total vllm:prefix_cache_hits_total vllm:prompt_tokens_total vllm:generation_tokens_total \
  strata:kv_blocks_used strata:kv_blocks_free strata:engine_step_seconds_total \
  strata:logits_processing_seconds_total; do
  check "metric $m" grep -q "^$m{model_name=\"stories260K\"} " "$T/metrics"
done
for h in vllm:time_to_first_token_seconds vllm:inter_token_latency_seconds vllm:e2e_request_latency_seconds; do
  check "histogram $h" grep -q "^# TYPE $h histogram" "$T/metrics"
  check "histogram $h +Inf" grep -q "^${h}_bucket{model_name=\"stories260K\",le=\"+Inf\"} " "$T/metrics"
  check "histogram $h count" test "$(sed -n "s/^${h}_count{[^}]*} //p" "$T/metrics")" -gt 0
  # cumulative buckets never decrease and end at _count
  check "histogram $h cumulative" awk -v h="${h}_bucket" 'index($0, h "{") == 1 { v = $NF + 0; if (v < last) exit 1; last = v } END { exit 0 }' "$T/metrics"
done
check "generation tokens counted" test "$(sed -n 's/^vllm:generation_tokens_total{[^}]*} //p' "$T/metrics")" -gt 100

# ---- chat with n > 1 and no max_tokens on a KV cache of ~one context ------------------------
# "the rest of the context" per choice must shrink to what the cache holds for n choices
cat >"$T/smallkv.conf" <<EOF
engine: { model = "$MODEL"; kv_cache: { tokens = 600; }; };
EOF
start_server smallkv "$T/smallkv.conf"
code=$(curl -s -o "$T/body" -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Hi"}],"n":2,"seed":3}' "$URL_smallkv/v1/chat/completions")
check "chat n=2 without max_tokens on a small cache is 200 ($code)" test "$code" = 200
check "chat n=2 gives 2 choices" test "$(jq '.choices | length' "$T/body")" = 2
check "chat n=2 fits the cache" test "$(jq '.usage.completion_tokens' "$T/body")" -le 592
kill -TERM "$PID_smallkv"
wait "$PID_smallkv"
check "small-cache server exits 0" test $? -eq 0

# ---- API key, queue limit (429) ---------------------------------------------------------------
cat >"$T/limited.conf" <<EOF
engine: { model = "$MODEL"; max_running = 1; max_waiting = 1; };
server: { api_key = "from-config"; served_model_name = "tiny"; };
EOF
start_server limited "$T/limited.conf" STRATA_API_KEY=s3cret
L=$URL_limited
code=$(curl -s -o "$T/body" -w '%{http_code}' -d '{"prompt":"x","max_tokens":2}' "$L/v1/completions")
check "no key is 401" test "$code" = 401
check "401 body" test "$(jq -r .error.code "$T/body")" = invalid_api_key
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer from-config' -d '{"prompt":"x","max_tokens":2}' "$L/v1/completions")
check "env key wins over config" test "$code" = 401
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer s3cretX' "$L/v1/models")
check "wrong key is 401" test "$code" = 401
code=$(curl -s -o "$T/body" -w '%{http_code}' -H 'Authorization: Bearer s3cret' -d '{"prompt":"x","max_tokens":2,"model":"tiny"}' "$L/v1/completions")
check "right key is 200" test "$code" = 200
check "served model name" test "$(jq -r .model "$T/body")" = tiny
check "health needs no key" test "$(curl -s -o /dev/null -w '%{http_code}' "$L/health")" = 200
for i in $(seq 1 8); do
  curl -s -D "$T/q$i.h" -o "$T/q$i" -H 'Authorization: Bearer s3cret' \
    -d '{"prompt":"Once","max_tokens":400,"ignore_eos":true}' "$L/v1/completions" &
done
wait_jobs
n429=$(grep -l '^HTTP/1.1 429' "$T"/q*.h 2>/dev/null | wc -l)
check "queue full gives 429 ($n429 of 8)" test "$n429" -ge 1
f=$(grep -l '^HTTP/1.1 429' "$T"/q*.h 2>/dev/null | head -1)
if [ -n "$f" ]; then
  check "429 Retry-After" grep -qi '^retry-after: ' "$f"
  check "429 body" jqe '.error.type' "${f%.h}"
fi

# ---- failing model steps: /health says 503 until a step works again ------------------------------
# STRATA_FAILPOINT=step:0-1 makes the first model step fail as a backend
# error would: that request gets a 500, /health turns 503 and the failure is
# counted; the next request's steps work and /health is 200 again.
cat >"$T/fail.conf" <<EOF
engine: { model = "$MODEL"; };
server: { request_log = false; };
EOF
start_server fail "$T/fail.conf" STRATA_FAILPOINT=step:0-1
F=$URL_fail
check "failpoint: healthy before any step" test "$(curl -s -o /dev/null -w '%{http_code}' "$F/health")" = 200
code=$(curl -s -o "$T/fbody" -w '%{http_code}' -d '{"prompt":"Once","max_tokens":4}' "$F/v1/completions")
check "failpoint: the failed request gets 500 ($code)" test "$code" = 500
check "failpoint: 500 body is an OpenAI error" jqe '.error.message | test("failpoint")' "$T/fbody"
code=$(curl -s -o "$T/fhealth" -w '%{http_code}' "$F/health")
check "failpoint: /health 503 after a failed step ($code)" test "$code" = 503
check "failpoint: /health says why" jqe '.error.code == "engine_failing" and (.error.message | test("last 1 model step failed"))' "$T/fhealth"
check "failpoint: counted" grep -q '^strata:engine_failed_steps_total{model_name="stories260K"} 1$' <(curl -s "$F/metrics")
code=$(curl -s -o "$T/fbody" -w '%{http_code}' -d '{"prompt":"Once","max_tokens":4}' "$F/v1/completions")
check "failpoint: the next request works ($code)" test "$code" = 200
check "failpoint: healthy again" test "$(curl -s -o /dev/null -w '%{http_code}' "$F/health")" = 200
kill -TERM "$PID_fail"
wait "$PID_fail"
STRATA_FAILPOINT=bogus "$STRATA" serve --config "$T/fail.conf" --port 0 >/dev/null 2>"$T/fp.err"
check "a bad STRATA_FAILPOINT is refused" grep -q "STRATA_FAILPOINT='bogus': expected step:A" "$T/fp.err"

# ---- a long queue outlasts server.idle_timeout ---------------------------------------------------
# 12 requests of 0.2 s each, one at a time: the last ones wait about 2 s for
# their first token, past the 1 s idle timeout, and must still be answered
# (streamed and not); libevent's timeout used to cut them.
cat >"$T/queue.conf" <<EOF
engine: { model = "$MODEL"; max_running = 1; };
server: { idle_timeout = 1; request_log = false; };
EOF
start_server queue "$T/queue.conf"
for i in $(seq 1 12); do
  st=$([ $((i % 2)) -eq 0 ] && echo true || echo false)
  curl -s -o "$T/w$i" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "{\"prompt\":\"Once\",\"max_tokens\":500,\"ignore_eos\":true,\"stream\":$st}" \
    "$URL_queue/v1/completions" >"$T/w$i.code" &
done
wait_jobs
nok=0
for i in $(seq 1 12); do
  if [ $((i % 2)) -eq 0 ]; then
    [ "$(cat "$T/w$i.code")" = 200 ] && grep -q '^data: \[DONE\]' "$T/w$i" && nok=$((nok + 1))
  else
    [ "$(cat "$T/w$i.code")" = 200 ] && jqe '.usage.completion_tokens == 500' "$T/w$i" && nok=$((nok + 1))
  fi
done
check "12 queued requests all answered past idle_timeout ($nok)" test "$nok" -eq 12
# an idle connection is still closed after idle_timeout: a raw connection
# that sends nothing is closed by the server within about a second
start=$(date +%s%N)
timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/${URL_queue##*:}; cat <&3 >/dev/null"
took=$((($(date +%s%N) - start) / 1000000))
check "a silent connection is closed after idle_timeout (${took} ms)" test "$took" -lt 5000
kill -TERM "$PID_queue"
wait "$PID_queue"

# ---- connection limit ----------------------------------------------------------------------------
cat >"$T/conns.conf" <<EOF
engine: { model = "$MODEL"; };
server: { host = "127.0.0.1"; port = 8000; max_connections = 4; };
EOF
start_server conns "$T/conns.conf"
conn_limit_checks "$URL_conns" 4 strata:http ""
kill -TERM "$PID_conns"
wait "$PID_conns"
# a file-descriptor limit too low for the default max_connections: lowered to fit, said so
start_cmd fdlim bash -c "ulimit -n 90 && exec '$STRATA' serve --config '$T/main.conf' --port 0 --threads 1"
check "max_connections lowered to the descriptor limit, with a warning" \
  grep -q 'max_connections 1024 lowered to [0-9]*: the file descriptor limit is 90' "$T/fdlim.err"
fitted=$(curl -s "$URL_fdlim/metrics" | sed -n 's/^strata:http_connections_max //p')
check "... and /metrics says so ($fitted)" [ "${fitted:-0}" -ge 1 -a "${fitted:-0}" -lt 90 ]
kill -TERM "$PID_fdlim"
wait "$PID_fdlim"

# ---- graceful stop -------------------------------------------------------------------------------
kill -TERM "$PID_limited"
rc=0
for i in $(seq 1 150); do kill -0 "$PID_limited" 2>/dev/null || break; sleep 0.1; done
wait "$PID_limited"
rc=$?
check "SIGTERM exits 0 (rc=$rc)" test "$rc" -eq 0
check "SIGTERM logged" grep -q 'SIGTERM: stopping' "$T/limited.err"
# the main server: a request in flight finishes before the server exits
curl -sN -H 'Content-Type: application/json' \
  -d '{"prompt":"Once upon a time","max_tokens":200,"ignore_eos":true,"n":4,"stream":true}' \
  "$U/v1/completions" >"$T/last" &
cj=$!
for i in $(seq 1 100); do grep -q '^data: {' "$T/last" && break; sleep 0.05; done
kill -TERM "$PID_main"
wait "$cj"
for i in $(seq 1 150); do kill -0 "$PID_main" 2>/dev/null || break; sleep 0.1; done
wait "$PID_main"
rc=$?
check "main server exits 0 (rc=$rc)" test "$rc" -eq 0
check "in-flight stream finished at stop" test "$(grep -v '^$' "$T/last" | tail -1)" = "data: [DONE]"
check "in-flight choices all finished" test "$(sed -n 's/^data: \({.*\)$/\1/p' "$T/last" | jq -r '.choices[0].finish_reason // empty' | grep -c length)" = 4
PIDS=()

# every process ends first (leak reports come at exit)
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
wait 2>/dev/null
sanitizer_scan "$T"
echo "server tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
