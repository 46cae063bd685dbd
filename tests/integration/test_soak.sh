#!/usr/bin/env bash
# Soak and faults, bounded and on loopback: two engines (stories260K) behind a
# router take SOAK_REQUESTS (default 400) requests, 16 at a time, of random
# kinds (tests/integration/soak.mjs): plain, streamed and chat requests, n > 1,
# clients that cancel mid-stream or give up on a plain answer, slow readers,
# malformed and oversized bodies, bad parameters; meanwhile one engine is
# killed (SIGKILL) and restarted on its port every SOAK_KILL_EVERY seconds
# (default 2) while the load runs. Afterwards: no request was lost without
# an error reaching its client, every engine is idle with every KV block
# free, neither the surviving engine's nor the router's memory grew from the
# first half to the second, and every process stops cleanly. A long soak:
#   SOAK_REQUESTS=20000 bash tests/integration/test_soak.sh (from a build
#   tree, with STRATA_BUILDDIR etc. as `make check` sets them)
SUITE="soak test"
NEEDS="curl jq node"
. "$(dirname "$0")/common.sh"
N=${SOAK_REQUESTS:-400}
printf 'engine: { model = "%s"; };\nserver: { request_log = false; };\n' "$MODEL" >"$T/e.conf"
start e0 serve --config "$T/e.conf" --port 0 --threads 1
E0=$URL_e0 E0PID=$PID_e0
: >"$T/e1.err"
"$STRATA" serve --config "$T/e.conf" --port 0 --threads 1 >"$T/e1.out" 2>>"$T/e1.err" &
echo $! >"$T/e1.pid"
disown $! # its kill is the test's doing: no "Killed" notice from the shell
for i in $(seq 1 300); do grep -q '^listening' "$T/e1.err" && break; sleep 0.1; done
E1=$(sed -n 's/^listening on //p' "$T/e1.err" | head -1)
cat >"$T/r.conf" <<EOF
router: {
  port = 0;
  backends = [ "$E0", "$E1" ];
  health_interval = 0.2;
  eject_after = 1;
  max_body_bytes = "64KiB";
};
EOF
start r route --config "$T/r.conf"
R=$URL_r RPID=$PID_r
if [ -z "$E1" ]; then
  echo "FAIL: engine e1 did not start"
  cat "$T/e1.err"
  exit 1
fi

rss() { echo $(($(sed -n 's/^VmRSS:[^0-9]*\([0-9]*\) kB/\1/p' "/proc/$1/status") * 1024)); }
EVERY=${SOAK_KILL_EVERY:-2}
: >"$T/kills"
# kill e1 mid-load and bring it back on its port, every $EVERY seconds until
# the phase's load is done (once at least, however quick the load)
chaos() {
  local first=1
  while sleep "$(awk -v e="$EVERY" 'BEGIN { print e * 0.75 }')" && [ $first = 1 -o ! -f "$T/phase.done" ]; do
    first=0
    kill -9 "$(cat "$T/e1.pid")" 2>/dev/null && echo kill >>"$T/kills"
    sleep "$(awk -v e="$EVERY" 'BEGIN { print e * 0.25 }')"
    "$STRATA" serve --config "$T/e.conf" --port "${E1##*:}" --threads 1 >>"$T/e1.out" 2>>"$T/e1.err" &
    echo $! >"$T/e1.pid"
    disown $!
  done
}
phase() { # phase NAME SEED
  rm -f "$T/phase.done"
  chaos &
  local cpid=$!
  node "$S/tests/integration/soak.mjs" --url "$R" --requests $((N / 2)) --concurrency 16 \
    --seed "$2" >"$T/$1.json"
  touch "$T/phase.done"
  wait "$cpid"
  local j
  j=$(cat "$T/$1.json")
  echo "$1: $j" | cut -c1-400
  check "$1: every request ended ($(echo "$j" | jq -c '[.requests, .ok, .error, .aborted]'))" \
    [ "$(echo "$j" | jq '.requests == .ok + .error + .aborted + .lost and .requests == '$((N / 2)))" = true ]
  check "$1: no request lost without an error ($(echo "$j" | jq -c .lost_examples))" \
    [ "$(echo "$j" | jq .lost)" = 0 ]
  check "$1: most requests succeeded" [ "$(echo "$j" | jq '.ok * 3 > .requests')" = true ]
}
# warm up, so that the memory compared is the steady state
node "$S/tests/integration/soak.mjs" --url "$R" --requests 64 --concurrency 16 --seed 7 >/dev/null
rss0=$(rss "$E0PID") rr0=$(rss "$RPID")
phase first 11
rss1=$(rss "$E0PID") rr1=$(rss "$RPID")
phase second 12
rss2=$(rss "$E0PID") rr2=$(rss "$RPID")
restarts=$(wc -l <"$T/kills")
echo "engine e0 resident: $rss0 after warm-up, $rss1 after the first half, $rss2 after the second"
echo "router resident: $rr0 after warm-up, $rr1 after the first half, $rr2 after the second"
flat() { [ $(($2 - $1)) -lt $(($1 / 20 > 4194304 ? $1 / 20 : 4194304)) ]; }
if [ "${STRATA_SANITIZERS:-0}" = 1 ]; then
  # ASan holds freed memory in its quarantine (up to 256 MiB): RSS says nothing here
  echo "memory: not compared under sanitizers"
else
  check "engine memory flat from the first half to the second ($rss1 -> $rss2)" flat "$rss1" "$rss2"
  check "router memory flat from the first half to the second ($rr1 -> $rr2)" flat "$rr1" "$rr2"
fi
check "an engine was killed and restarted in each half ($restarts kills)" [ "$restarts" -ge 2 ]

# afterwards: every engine idle, every KV block free, the router holding nothing
for i in $(seq 1 100); do
  curl -sf "$E1/health" >/dev/null && break
  sleep 0.1
done
metric() { curl -s "$1/metrics" | sed -n "s/^$2{[^}]*} //p" | cut -d. -f1; }
for u in "$E0" "$E1"; do
  for i in $(seq 1 100); do
    [ "$(metric "$u" vllm:num_requests_running)" = 0 ] && [ "$(metric "$u" strata:kv_blocks_used)" = 0 ] && break
    sleep 0.1
  done
  check "$u idle, every KV block free (running $(metric "$u" vllm:num_requests_running), waiting $(metric "$u" vllm:num_requests_waiting), blocks used $(metric "$u" strata:kv_blocks_used))" \
    [ "$(metric "$u" vllm:num_requests_running)" = 0 -a "$(metric "$u" vllm:num_requests_waiting)" = 0 \
      -a "$(metric "$u" strata:kv_blocks_used)" = 0 ]
done
check "the router holds no request ($(curl -s "$R/admin/backends" | jq -c '[.backends[].inflight]'))" \
  [ "$(curl -s "$R/admin/backends" | jq '[.backends[].inflight] | add')" = 0 ]
echo "soak: $N requests, $restarts engine kills and restarts"
kill "$RPID"
wait "$RPID"
check "the router exits 0" [ $? -eq 0 ]
kill "$E0PID"
wait "$E0PID"
check "the surviving engine exits 0" [ $? -eq 0 ]
kill "$(cat "$T/e1.pid")"
for i in $(seq 1 100); do kill -0 "$(cat "$T/e1.pid")" 2>/dev/null || break; sleep 0.1; done
sanitizer_scan "$T"
echo "soak tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
