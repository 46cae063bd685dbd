#!/usr/bin/env bash
# Router policies side by side on a chat workload with shared and private
# prefixes (loadgen.mjs --chats): three engines, each policy in turn behind
# a router, with the engines restarted between policies so each starts with
# empty caches. Prints each policy's prefix-cache hit rate and TTFT.
#
# The model is synthetic (strata mkmodel; prefill costs what a small real
# model's would), the tokenizer its own, so the router's tokenizer
# (kv-aware) is the same file. Run from a configured build tree:
#   bash ../../tests/bench/route_hitrate.sh [CHATS [CLIENTS [KV_TOKENS]]]
# KV_TOKENS: each engine's KV cache (engine.kv_cache.tokens). The chats'
# shape: SYSTEMS system prompts of SYSTEM_TOKENS, a document of DOC_TOKENS
# per chat, TURNS turns (environment; loadgen's defaults otherwise).
set -eu
B=$(pwd)
S=$(cd "$(dirname "$0")/../.." && pwd)
CHATS=${1:-24}
CLIENTS=${2:-6}
KV=${3:-8192}
POLICIES=${POLICIES:-"round-robin least-loaded session prefix-aware kv-aware kv-aware-probe workflow-aware"}
T=$(mktemp -d)
trap 'kill ${PIDS[@]+"${PIDS[@]}"} 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
"$B/strata" mkmodel --out "$T/m.gguf" --dim 512 --layers 8 --heads 8 --ffn 1536 --context 2048 \
  --quant q8_0 >/dev/null 2>&1
printf 'engine: { model = "%s"; kv_cache: { tokens = %d; }; };\nserver: { request_log = false; };\n' \
  "$T/m.gguf" "$KV" >"$T/e.conf"

. "$S/tests/bench/up.sh"
shape=()
[ -n "${SYSTEMS:-}" ] && shape+=(--systems "$SYSTEMS")
[ -n "${SYSTEM_TOKENS:-}" ] && shape+=(--system-tokens "$SYSTEM_TOKENS")
[ -n "${DOC_TOKENS:-}" ] && shape+=(--doc-tokens "$DOC_TOKENS")
[ -n "${TURNS:-}" ] && shape+=(--turns "$TURNS")

printf '%-16s %8s %10s %10s %10s %9s\n' policy hit-rate "TTFT mean" "TTFT p50" "TTFT p90" seconds
for pol in $POLICIES; do
  E=()
  for i in 0 1 2; do
    up "e$i" serve --config "$T/e.conf" --port 0 --threads 1
    E+=("$URL")
  done
  name=$pol
  extra=(--tokenizer "$T/m.gguf")
  if [ "$pol" = kv-aware-probe ]; then
    name=kv-aware
    extra=()
  fi
  up r route --port 0 --policy "$name" ${extra[@]+"${extra[@]}"} --backend "${E[0]}" \
    --backend "${E[1]}" --backend "${E[2]}"
  R=$URL
  # kv-aware follows the engines' event streams once they are up
  for i in $(seq 1 50); do
    [ "$(curl -s "$R/admin/backends" | grep -o '"events":"live"' | wc -l)" -ge 3 ] && break
    [ "$name" != kv-aware ] || [ "$pol" = kv-aware-probe ] && break
    sleep 0.1
  done
  node "$S/tests/bench/loadgen.mjs" --url "$R" --tokenize-url "${E[0]}" --chats "$CHATS" \
    --clients "$CLIENTS" --max-tokens 24 ${shape[@]+"${shape[@]}"} >"$T/$pol.out"
  res=$(sed -n 's/^RESULT //p' "$T/$pol.out")
  node -e '
    const r = JSON.parse(process.argv[1]);
    const ms = (x) => (x * 1e3).toFixed(0) + " ms";
    console.log(process.argv[2].padEnd(16) + " " + (100 * r.hit_rate).toFixed(1).padStart(7) + "% " +
      ms(r.ttft_mean).padStart(10) + " " + ms(r.ttft_p50).padStart(10) + " " + ms(r.ttft_p90).padStart(10) +
      " " + r.seconds.toFixed(1).padStart(9));' "$res" "$pol"
  curl -s "$R/metrics" | sed -n 's/^strata_router_decisions_total{[^,]*,reason="\([^"]*\)"} /  \1 /p' |
    tr '\n' ' '
  echo
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  PIDS=()
done
