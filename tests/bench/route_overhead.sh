#!/usr/bin/env bash
# What strata route adds to a request's latency: an engine answering
# max_tokens 1 on the stories260K model, loaded at a fixed rate by httpload
# directly and through a router in front of it (round-robin over that one
# engine), in alternating rounds; prints each round's percentiles and the
# differences of the medians over rounds. Run from a configured build tree:
#   bash ../../tests/bench/route_overhead.sh [RATE [SECONDS [ROUNDS]]]
# INSTANT=1: the backend is tests/bench/instant_engine.c, which answers at
# once, so the engine's own latency and its noise leave the figures.
set -eu
B=$(pwd)
S=$(cd "$(dirname "$0")/../.." && pwd)
RATE=${1:-500}
SECS=${2:-5}
ROUNDS=${3:-3}
MODEL=${STRATA_SHARED:-$S/../shared}/models/stories260K.gguf
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
gcc -O2 -o "$T/httpload" "$S/tests/bench/httpload.c" -levent
if [ "${INSTANT:-0}" = 1 ]; then
  gcc -O2 -o "$T/instant" "$S/tests/bench/instant_engine.c" -levent
  "$T/instant" 0 2>"$T/e.err" >/dev/null &
else
  printf 'engine: { model = "%s"; };\nserver: { request_log = false; };\n' "$MODEL" >"$T/e.conf"
  "$B/strata" serve --config "$T/e.conf" --port 0 --threads 1 2>"$T/e.err" >/dev/null &
fi
for i in $(seq 1 100); do grep -q '^listening' "$T/e.err" && break; sleep 0.1; done
E=$(sed -n 's/^listening on //p' "$T/e.err")
"$B/strata" route --port 0 --backend "$E" 2>"$T/r.err" >/dev/null &
for i in $(seq 1 100); do grep -q '^listening' "$T/r.err" && break; sleep 0.1; done
R=$(sed -n 's/^listening on //p' "$T/r.err")
BODY='{"prompt":"Hi","max_tokens":1}'
"$T/httpload" "$E/v1/completions" 200 1 8 "$BODY" >/dev/null # warm up
"$T/httpload" "$R/v1/completions" 200 1 8 "$BODY" >/dev/null
echo "rate $RATE/s, $SECS s per round, engine $E, router $R"
for r in $(seq 1 "$ROUNDS"); do
  for tgt in direct router; do
    u=$E
    [ "$tgt" = router ] && u=$R
    line=$("$T/httpload" "$u/v1/completions" "$RATE" "$SECS" 32 "$BODY" | tail -1)
    echo "round $r $tgt: $line"
    echo "$tgt $line" >>"$T/all"
  done
done
# the median over rounds of one target's percentile
med() { grep "^$1 " "$T/all" | sed -n "s/.* $2 \([0-9]*\).*/\1/p" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for p in p50 p99; do
  d=$(med direct $p)
  r=$(med router $p)
  echo "median over rounds, $p: direct $d us, router $r us: the router adds $((r - d)) us"
done
curl -s "$R/metrics" | grep '^strata_router_added_latency_seconds' | sed 's/^/router histogram: /'
