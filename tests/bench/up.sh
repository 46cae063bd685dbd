# Sourced by the bench scripts (with B, the build tree, and T, a scratch
# directory, set): up NAME ARGS... starts strata ARGS in the background,
# adds it to PIDS, waits until it listens and sets URL; exits 1 showing its
# stderr when it does not start.
PIDS=()
up() {
  local n=$1
  shift
  "$B/strata" "$@" 2>"$T/$n.err" >/dev/null &
  PIDS+=($!)
  for i in $(seq 1 600); do grep -qs '^listening' "$T/$n.err" && break; sleep 0.1; done
  if ! grep -q '^listening' "$T/$n.err"; then
    echo "$n did not start:" >&2
    cat "$T/$n.err" >&2
    exit 1
  fi
  URL=$(sed -n 's/^listening on //p' "$T/$n.err")
}
