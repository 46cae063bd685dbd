#!/usr/bin/env bash
# strata serve driven by the official `openai` npm package
# (openai_client.mjs). The package is installed from the npm registry into
# the build tree (tests/integration/node/); without node/npm, or when the
# registry is unreachable, the test is skipped (exit 77) saying why.
set -u
B=${STRATA_BUILDDIR:?}
S=${STRATA_SRCDIR:?}
SH=${STRATA_SHARED:-}
STRATA="$B/strata"
MODEL="$SH/models/stories260K.gguf"
if [ -z "$SH" ] || [ ! -f "$MODEL" ]; then
  echo "shared dir missing (no $MODEL): skipping the openai client test"
  exit 77
fi
for t in node npm; do
  if ! command -v "$t" >/dev/null 2>&1; then
    echo "$t is missing (scripts/install-deps.sh installs nodejs and npm): skipping the openai client test"
    exit 77
  fi
done
N="$B/tests/integration/node"
mkdir -p "$N"
cp "$S/tests/integration/package.json" "$S/tests/integration/openai_client.mjs" \
  "$S/examples/agents/pipeline.mjs" "$N/"
if [ ! -f "$N/node_modules/openai/package.json" ]; then
  if ! (cd "$N" && timeout 300 npm install --no-audit --no-fund --loglevel=error >"$N/npm-install.log" 2>&1); then
    echo "npm install of the openai package failed (is the npm registry reachable?): skipping"
    tail -5 "$N/npm-install.log"
    exit 77
  fi
fi
echo "openai client $(node -p "require('$N/node_modules/openai/package.json').version")"

T=$(mktemp -d)
PID=
RPID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -n "$RPID" ] && kill "$RPID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
cat >"$T/s.conf" <<CONF
engine: { model = "$MODEL"; };
CONF
STRATA_API_KEY=node-test-key "$STRATA" serve --config "$T/s.conf" --port 0 --threads 1 2>"$T/err" &
PID=$!
for i in $(seq 1 600); do
  grep -q '^listening on http://' "$T/err" && break
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
URL=$(sed -n 's/^listening on \(http:[^ ]*\)$/\1/p' "$T/err" | head -1)
if [ -z "$URL" ]; then
  echo "FAIL: the server did not start:"
  cat "$T/err"
  exit 1
fi
EXPECT=$("$STRATA" generate --model "$MODEL" --prompt "Once upon a time" -n 20 --temperature 0 2>/dev/null)
(cd "$N" && STRATA_URL="$URL" STRATA_KEY=node-test-key STRATA_EXPECT="$EXPECT" timeout 300 node openai_client.mjs) || exit 1

# docs/agents.md's worked example (examples/agents/pipeline.mjs): three
# agents through a router in front of the server
STRATA_API_KEY=node-test-key "$STRATA" route --backend "$URL" --policy workflow-aware --port 0 2>"$T/rerr" &
RPID=$!
for i in $(seq 1 100); do
  grep -q '^listening on http://' "$T/rerr" && break
  sleep 0.1
done
RURL=$(sed -n 's/^listening on \(http:[^ ]*\)$/\1/p' "$T/rerr" | head -1)
if [ -z "$RURL" ]; then
  echo "FAIL: the router did not start:"
  cat "$T/rerr"
  exit 1
fi
cd "$N" && STRATA_URL="$RURL" STRATA_KEY=node-test-key timeout 300 node pipeline.mjs
