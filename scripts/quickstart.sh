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
