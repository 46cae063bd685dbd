#!/usr/bin/env bash
# From a fresh clone: install dependencies, build, and run strata on the
# embedded default (conf/strata.conf: ../shared/models/stories260K.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -x configure ] || autoreconf -fi >/dev/null
[ -f Makefile ] || ./configure -q
make -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
./strata check-config conf/strata.conf
./strata plugins
./strata inspect ../shared/models/stories260K.gguf | sed -n 1,12p
echo "tokens of \"Once upon a time\":"
./strata tokenize --model ../shared/models/stories260K.gguf "Once upon a time"
echo "== strata generate (greedy, the config's model on the best backend)"
./strata generate --config conf/strata.conf --prompt "Once upon a time" -n 64 --temperature 0
echo

# Last, the main job: the OpenAI-compatible server on localhost, answering
# one request to show it works, then serving until Ctrl-C.
port=${STRATA_PORT:-8000}
echo "== strata serve on http://127.0.0.1:$port (Ctrl-C stops it)"
(
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "\$ curl -s localhost:$port/v1/completions -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 32, \"temperature\": 0}'"
  curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}'
  echo
) &
exec ./strata serve --config conf/strata.conf --port "$port"
