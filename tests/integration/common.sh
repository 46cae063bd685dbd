# Sourced by the integration scripts after setting SUITE (what the skip
# messages call them) and NEEDS (the tools they use): the build and shared
# paths, a skip (exit 77) when the model or a tool is missing, a scratch
# directory $T removed at exit with every process in PIDS (or in $T/*.pid)
# killed, the ok/bad/check counters, start / start_cmd and sanitizer_scan.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/sanitizer_scan.sh"
B=${STRATA_BUILDDIR:?}
S=${STRATA_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
SH=${STRATA_SHARED:-}
STRATA="$B/strata"
MODEL="$SH/models/stories260K.gguf"
if [ -z "$SH" ] || [ ! -f "$MODEL" ]; then
  echo "shared dir missing (no $MODEL): skipping the $SUITE"
  exit 77
fi
for t in ${NEEDS:-curl jq}; do
  if ! command -v "$t" >/dev/null 2>&1; then
    echo "$t is missing (scripts/install-deps.sh installs it): skipping the $SUITE"
    exit 77
  fi
done
T=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}" $(cat "$T"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() {
  fail=$((fail + 1))
  echo "FAIL: $*"
}
check() { # check NAME COND...
  local name=$1
  shift
  if "$@"; then ok; else bad "$name"; fi
}

# start_cmd NAME CMD...: runs CMD (a strata that listens, possibly under env),
# waits for "listening on", sets URL_<NAME> and PID_<NAME>; exits 1 showing
# its stderr when it does not start
start_cmd() {
  local name=$1
  shift
  "$@" >"$T/$name.out" 2>"$T/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  local i
  for i in $(seq 1 600); do
    grep -q '^listening on http://' "$T/$name.err" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  local url
  url=$(sed -n 's/^listening on \(http:[^ ]*\)$/\1/p' "$T/$name.err" | head -1)
  if [ -z "$url" ]; then
    echo "FAIL: $name did not start:"
    cat "$T/$name.err"
    exit 1
  fi
  eval "URL_$name=\$url; PID_$name=\$pid"
}

# start NAME ARGS...: start_cmd NAME strata ARGS
start() {
  local name=$1
  shift
  start_cmd "$name" "$STRATA" "$@"
}

# finish: ends every process (leak reports come at exit), scans for
# sanitizer reports, prints the tally and exits 0 only if nothing failed.
finish() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  sanitizer_scan "$T"
  echo "$SUITE: $pass passed, $fail failed"
  [ "$fail" -eq 0 ]
  exit
}
