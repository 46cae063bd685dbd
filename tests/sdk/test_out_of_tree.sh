#!/usr/bin/env bash
# The plugin SDK from outside the tree: builds examples/shortest-first with
# nothing but an installed strata (pkg-config strata-plugin), loads it
# through a config file (plugins.path, engine.scheduler, its own settings)
# and serves requests with it.
# Usage: test_out_of_tree.sh PREFIX SHARED_DIR
set -euo pipefail
inst=$(cd "$1" && pwd)
shared=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
model="$shared/models/stories260K.gguf"
T=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

cp -r "$src/examples/shortest-first" "$T/plugin"
PKG_CONFIG_PATH="$inst/lib/pkgconfig" make -s -C "$T/plugin" >/dev/null || fail "the example did not build"
test -f "$T/plugin/scheduler_shortest_first.so" || fail "no plugin built"
cat >"$T/sf.conf" <<CONF
engine: { model = "$model"; scheduler = "shortest-first"; };
plugins: {
  path = [ "$T/plugin" ];
  scheduler: { shortest-first: { max_prefill_chunk = 32; }; };
};
CONF
"$inst/bin/strata" check-config "$T/sf.conf" >/dev/null || fail "check-config refused the config"
"$inst/bin/strata" plugins --config "$T/sf.conf" >"$T/plugins.out"
grep -Eq "^scheduler +shortest-first +0.1 +1 +$T/plugin/scheduler_shortest_first.so" "$T/plugins.out" ||
  fail "the plugin is not listed: $(cat "$T/plugins.out")"
# a typo in its settings is a FILE:LINE error from its own table
sed 's/max_prefill_chunk/max_prefil_chunk/' "$T/sf.conf" >"$T/typo.conf"
if "$inst/bin/strata" check-config "$T/typo.conf" 2>"$T/typo.err" >/dev/null; then fail "typo accepted"; fi
grep -q "typo.conf:4: unknown key 'max_prefil_chunk'.*did you mean 'max_prefill_chunk'" "$T/typo.err" ||
  fail "typo message: $(cat "$T/typo.err")"

STRATA_LOG=info "$inst/bin/strata" serve --config "$T/sf.conf" --port 0 --threads 1 2>"$T/serve.err" >/dev/null &
pid=$!
url=
for _ in $(seq 1 300); do
  url=$(sed -n 's/^listening on \(http:[^ ]*\)$/\1/p' "$T/serve.err" | head -1)
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$url" ] || fail "serve did not start: $(cat "$T/serve.err")"
want=$("$inst/bin/strata" generate --model "$model" --prompt "Once upon a time" -n 24 --temperature 0 2>/dev/null)
for i in 1 2 3 4; do
  curl -s -d '{"prompt":"Once upon a time","max_tokens":24,"temperature":0}' "$url/v1/completions" >"$T/r$i" &
done
wait %2 %3 %4 %5 2>/dev/null || true
for i in 1 2 3 4; do
  got=$(jq -r '.choices[0].text' "$T/r$i")
  [ "$got" = "$want" ] || fail "request $i under shortest-first: '$got', want '$want'"
done
grep -q "scheduler shortest-first" "$T/serve.err" || fail "the engine did not log its scheduler"
kill -TERM "$pid"
wait "$pid" || fail "serve did not exit 0"
pid=
echo "out-of-tree plugin: built with pkg-config, loaded from the config, served 4 requests"
