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

# conn_limit_checks URL MAX METRIC_PREFIX KEY: the server at URL has
# max_connections = MAX. Raw sockets (bash's /dev/tcp) hold connections open:
# a request on one past MAX gets 503 server_busy with Connection: close, one
# within gets its answer; past MAX + MAX/8 + 4 accepting pauses (a request
# on a new connection waits), and once they close it resumes and /metrics
# counts the refusals and the pause. KEY: an API key for /metrics, or "".
conn_limit_checks() {
  local url=$1 max=$2 prefix=$3 key=$4
  local hp=${url#http://}
  local host=${hp%:*} port=${hp##*:} fd i
  local -a fds=()
  local req='GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
  for i in $(seq 0 "$max"); do
    exec {fd}<>"/dev/tcp/$host/$port"
    fds+=("$fd")
  done
  sleep 0.3
  # shellcheck disable=SC2059
  printf "$req" >&"${fds[$max]}"
  local over under
  over=$(timeout 10 cat <&"${fds[$max]}" | tr -d '\r')
  check "connection past max_connections: 503" grep -q '^HTTP/1.1 503' <<<"$over"
  check "... code server_busy" grep -q '"code":"server_busy"' <<<"$over"
  check "... Connection: close" grep -qi '^Connection: close' <<<"$over"
  # shellcheck disable=SC2059
  printf "$req" >&"${fds[0]}"
  under=$(timeout 10 cat <&"${fds[0]}" | tr -d '\r')
  check "connection within max_connections: answered" grep -q '^HTTP/1.1 [0-9]' <<<"$under"
  check "... not refused" test "$(grep -c server_busy <<<"$under")" = 0
  # far past the limit: accepting pauses
  local hard=$((max + max / 8 + 4))
  for i in $(seq 0 "$hard"); do
    exec {fd}<>"/dev/tcp/$host/$port"
    fds+=("$fd")
  done
  sleep 0.3
  check "accepting paused far past max_connections" \
    test "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "$url/health")" = 000
  for fd in "${fds[@]}"; do exec {fd}>&-; done
  # the closed ones still queued are accepted (and counted until they are
  # read) first: a client retries a 503 as Retry-After says
  # and the server drops a closed one once it has read its end (asynchronous):
  # /metrics is asked again until the count is down or 20 tries passed
  local m
  for i in $(seq 1 20); do
    m=$(curl -s -m 10 ${key:+-H "Authorization: Bearer $key"} "$url/metrics")
    if ! grep -q server_busy <<<"$m" &&
      ! awk -v p="${prefix}_connections" '$1 == p && $2 > 2 { f = 1 } END { exit !f }' <<<"$m"; then
      break
    fi
    sleep 0.5
  done
  echo "$m" | grep "^${prefix}_"
  check "accepting resumed once they closed" grep -q "^${prefix}_connections_max $max\$" <<<"$m"
  check "... refusals counted" awk -v p="${prefix}_connections_refused_total" '$1 == p && $2 >= 1 { f = 1 } END { exit !f }' <<<"$m"
  check "... the pause counted" awk -v p="${prefix}_accept_pauses_total" '$1 == p && $2 >= 1 { f = 1 } END { exit !f }' <<<"$m"
  check "... closed connections uncounted" awk -v p="${prefix}_connections" '$1 == p && $2 <= 2 { f = 1 } END { exit !f }' <<<"$m"
}
