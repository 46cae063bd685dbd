#!/usr/bin/env bash
# strata serve driven by the official `openai` npm package
# (openai_client.mjs). The package is installed from the npm registry into
# the build tree (tests/integration/node/); without node/npm, or when the
# registry is unreachable, the test is skipped (exit 77) saying why.
SUITE="openai client test"
NEEDS="node npm"
. "$(dirname "$0")/common.sh"
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

cat >"$T/s.conf" <<CONF
engine: { model = "$MODEL"; };
CONF
start_cmd srv env STRATA_API_KEY=node-test-key "$STRATA" serve --config "$T/s.conf" --port 0 --threads 1
URL=$URL_srv
EXPECT=$("$STRATA" generate --model "$MODEL" --prompt "Once upon a time" -n 20 --temperature 0 2>/dev/null)
(cd "$N" && STRATA_URL="$URL" STRATA_KEY=node-test-key STRATA_EXPECT="$EXPECT" timeout 300 node openai_client.mjs) || exit 1

# docs/agents.md's worked example (examples/agents/pipeline.mjs): three
# agents through a router in front of the server
start_cmd rt env STRATA_API_KEY=node-test-key "$STRATA" route --backend "$URL" --policy workflow-aware --port 0
RURL=$URL_rt
cd "$N" && STRATA_URL="$RURL" STRATA_KEY=node-test-key timeout 300 node pipeline.mjs
