#!/usr/bin/env bash
# Router policies side by side on a multi-agent workload (agents.mjs):
# WORKFLOWS workflows of five agents sharing a CONTEXT-token context, with
# tool-call pauses, CONCURRENCY at a time, against three engines whose KV
# caches (KV tokens each) cannot keep every context. Each policy in turn
# gets freshly started engines (empty caches). workflow-aware runs twice:
# without and with the router's cache hints (router.workflows.cache_hints);
# the other policies run without hints. Prints each run's prefix-cache hit
# rate and prompt tokens computed, counted by the engines themselves
# (vllm:prefix_cache_queries_total and _hits_total, so the router's prefill
# requests count too), the same seen by the clients (usage), and workflow
# completion time (mean, p99).
#
# The model is synthetic (strata mkmodel; SHAPE below, q8_0), its tokenizer
# its own. Run from a configured build tree:
#   bash ../../tests/bench/route_agents.sh [WORKFLOWS [CONCURRENCY [CONTEXT [KV]]]]
# MODEL_ARGS overrides the mkmodel shape (e.g. "--shape tinyllama-1.1b" on
# a machine that can afford it); PAUSE the tool-call pause in seconds; SEED
# the workload's random seed; AGENTS_EXTRA more agents.mjs arguments (e.g.
# --no-prefill: declared contexts are not prefilled ahead).
set -eu
B=$(pwd)
S=$(cd "$(dirname "$0")/../.." && pwd)
WORKFLOWS=${1:-16}
CONC=${2:-6}
CTX=${3:-1000}
KV=${4:-6144}
PAUSE=${PAUSE:-0.5}
POLICIES=${POLICIES:-"round-robin prefix-aware kv-aware workflow-aware workflow-aware+hints"}
T=$(mktemp -d)
trap 'kill ${PIDS[@]+"${PIDS[@]}"} 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
. "$S/tests/bench/up.sh"
# shellcheck disable=SC2086
"$B/strata" mkmodel --out "$T/m.gguf" ${MODEL_ARGS:---dim 512 --layers 8 --heads 8 --ffn 1536 --context 4096} \
  --quant q8_0 >/dev/null 2>&1
printf 'engine: { model = "%s"; kv_cache: { tokens = %d; }; };\nserver: { request_log = false; };\n' \
  "$T/m.gguf" "$KV" >"$T/e.conf"
echo "$WORKFLOWS workflows x 5 agents, $CONC at a time, ${CTX}-token contexts, KV $KV tokens x 3 engines"
printf '%-22s %8s %10s %10s %10s %10s %9s\n' policy hit-rate computed "client hit" "wf mean" "wf p99" seconds
for run in $POLICIES; do
  pol=${run%+hints}
  hints=false
  [ "$run" != "$pol" ] && hints=true
  E=()
  for i in 0 1 2; do
    up "e$i" serve --config "$T/e.conf" --port 0 --threads 1
    E+=("$URL")
  done
  cat >"$T/r.conf" <<CONF
router: {
  port = 0;
  policy = "$pol";
  backends = [ "${E[0]}", "${E[1]}", "${E[2]}" ];
  tokenizer = "$T/m.gguf";
  workflows: { cache_hints = $hints; ${WF_EXTRA:-} };
};
${ROUTER_EXTRA:-}
CONF
  up r route --config "$T/r.conf"
  R=$URL
  for i in $(seq 1 50); do # kv-aware follows the engines' event streams once they are up
    [ "$pol" != kv-aware ] && break
    [ "$(curl -s "$R/admin/backends" | grep -o '"events":"live"' | wc -l)" -ge 3 ] && break
    sleep 0.1
  done
  node "$S/tests/bench/agents.mjs" --url "$R" --workflows "$WORKFLOWS" --concurrency "$CONC" \
    --context-tokens "$CTX" --pause "$PAUSE" --seed "${SEED:-1}" ${AGENTS_EXTRA:-} >"$T/$run.out"
  res=$(sed -n 's/^RESULT //p' "$T/$run.out")
  q=0
  h=0
  for u in "${E[@]}"; do # the engines started empty: their totals are this run's
    m=$(curl -s "$u/metrics")
    q=$((q + $(echo "$m" | sed -n 's/^vllm:prefix_cache_queries_total[{ ].* \([0-9]*\)$/\1/p;s/^vllm:prefix_cache_queries_total \([0-9]*\)$/\1/p' | head -1)))
    h=$((h + $(echo "$m" | sed -n 's/^vllm:prefix_cache_hits_total[{ ].* \([0-9]*\)$/\1/p;s/^vllm:prefix_cache_hits_total \([0-9]*\)$/\1/p' | head -1)))
  done
  node -e '
    const r = JSON.parse(process.argv[1]), q = +process.argv[3], h = +process.argv[4];
    console.log(process.argv[2].padEnd(22) + " " + (100 * h / q).toFixed(1).padStart(7) + "% " +
      String(q - h).padStart(10) + " " + ((100 * r.hit_rate).toFixed(1) + "%").padStart(10) + " " +
      (r.wf_mean.toFixed(2) + " s").padStart(10) + " " + (r.wf_p99.toFixed(2) + " s").padStart(10) + " " +
      r.seconds.toFixed(1).padStart(9));' "$res" "$run" "$q" "$h"
  curl -s "$R/metrics" | sed -n 's/^strata_router_decisions_total{[^,]*,reason="\([^"]*\)"} /  \1 /p;
    s/^strata_router_cache_hints_total{action="\([a-z]*\)"} /  hint_\1 /p;
    s/^strata_router_cache_hint_failures_total /  hint_failures /p;
    s/^strata_router_workflow_held_total /  held /p' | tr '\n' ' '
  for u in "${E[@]}"; do
    curl -s "$u/metrics" | sed -n 's/^vllm:num_preemptions_total[^ ]* /  preemptions /p;
      s/^strata:prefix_cache_evictions_total[^ ]* /  evictions /p' | tr '\n' ' '
  done
  echo
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  PIDS=()
done
