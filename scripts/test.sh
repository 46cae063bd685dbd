#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs dependencies (hipcc
# too: the hip backend builds, and the cuda one where /usr/local/cuda has
# nvcc; their tests SKIP without a GPU), builds out of tree with -Werror,
# runs every test, runs the unit tests and the
# server and router integration tests again under AddressSanitizer +
# UndefinedBehaviorSanitizer (the emulated cuda model test too), runs the
# server and soak tests under
# ThreadSanitizer, runs each fuzz target briefly, then `make distcheck`.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)

scripts/install-deps.sh --gpu
autoreconf -fi >/dev/null

echo "== build and test (-Werror)"
mkdir -p build && cd build
"$top/configure" --enable-werror --prefix="$top/build/prefix" -q
make -j"$jobs" >/dev/null
make -j"$jobs" check || { cat test-suite.log; exit 1; }

echo "== installed strata finds its plugins, headers and pkg-config file"
make install >/dev/null
inst="$top/build/prefix"
"$inst/bin/strata" plugins >plugins.out
grep -q "plugin(s) loaded, 0 file(s) rejected" plugins.out
grep -q "$inst/lib/strata/quant_q8_0.so" plugins.out
for h in plugin.h quant.h backend.h fp16.h scheduler.h logits.h; do test -f "$inst/include/strata/$h"; done
PKG_CONFIG_PATH="$inst/lib/pkgconfig" pkg-config --cflags strata-plugin | grep -q -- "-I$inst/include"
cd "$top"
echo "== an out-of-tree scheduler plugin against the installed SDK"
bash tests/sdk/test_out_of_tree.sh "$inst" "$top/../shared"

echo "== unit, server and router tests under ASan + UBSan"
mkdir -p build-san && cd build-san
"$top/configure" --enable-werror --enable-sanitizers -q
make -j"$jobs" >/dev/null
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  make -j"$jobs" check-sanitized || { cat test-suite.log; exit 1; }
cd "$top"

echo "== server and soak tests under ThreadSanitizer"
mkdir -p build-tsan && cd build-tsan
"$top/configure" --enable-werror --enable-tsan -q
make -j"$jobs" >/dev/null
TSAN_OPTIONS=halt_on_error=1 make -j"$jobs" check-threads || { cat test-suite.log; exit 1; }
cd "$top"

echo "== fuzz targets, briefly (tests/fuzz/README.md)"
mkdir -p build-fuzz && cd build-fuzz
CC=clang "$top/configure" --enable-sanitizers --enable-fuzzing -q
make -j"$jobs" fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-10}" >fuzz.out 2>&1 || { cat fuzz.out; exit 1; }
grep -E '^== |^stat::' fuzz.out
cd "$top"

echo "== make distcheck"
cd build
make -j"$jobs" distcheck >/dev/null 2>distcheck.log || { tail -50 distcheck.log; exit 1; }
cd "$top"

# One summary line that CI reads, counted from every test log.
logs="build/test-suite.log build-san/test-suite.log build-tsan/test-suite.log"
pass=$(grep -h '^# PASS:' $logs | awk '{s+=$3} END {print s+0}')
fail=$(grep -h '^# FAIL:' $logs | awk '{s+=$3} END {print s+0}')
skip=$(grep -h '^# SKIP:' $logs | awk '{s+=$3} END {print s+0}')
echo "tests: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
