#!/usr/bin/env bash
# One call on a lent GPU machine (docs/gpu.md), from the repository root:
#   bash tests/gpu/device_check.sh
# builds strata with the CUDA backend in build-gpu/, runs the GPU tests (ops
# against the cpu backend, the model against the fp32 reference, the server
# on the GPU), then `strata bench --backend cuda` on synthetic tinyllama-1.1b
# in q8_0 and f16 at 1 and 64 sequences. Logs go to $OUT (default
# ./gpu-check); a short summary is printed last.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$top/gpu-check}
mkdir -p "$OUT"
jobs=$(nproc 2>/dev/null || echo 4)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv \
  >"$OUT/gpu.txt" 2>&1
b="$top/build-gpu"
mkdir -p "$b"
cd "$top" && { [ -x configure ] || autoreconf -fi >/dev/null 2>&1; }
cd "$b" || exit 1
[ -f Makefile ] || "$top/configure" -q --with-cuda >"$OUT/configure.log" 2>&1 ||
  { tail -20 "$OUT/configure.log"; exit 1; }
make -j"$jobs" >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
make check TESTS="tests/gpu/test_backend_cuda tests/gpu/test_cuda_model.sh" >"$OUT/check.log" 2>&1
for t in tests/gpu/test_backend_cuda tests/gpu/test_cuda_model.sh; do cp "$t.log" "$OUT/" 2>/dev/null; done
summary=$(grep -E "^(PASS|FAIL|SKIP|ERROR):" "$OUT/check.log")
for q in q8_0 f16; do
  ./strata mkmodel --shape tinyllama-1.1b --quant "$q" --out "$b/tl-$q.gguf" >/dev/null 2>&1 || continue
  for batch in 1 64; do
    timeout 300 ./strata bench --model "$b/tl-$q.gguf" --backend cuda --prompt-tokens 512 \
      --gen-tokens 64 --batch "$batch" >"$OUT/bench-$q-b$batch.log" 2>&1
    summary="$summary
bench $q batch $batch: $({ grep -iE 'decode|prefill' "$OUT/bench-$q-b$batch.log" ||
      tail -n 1 "$OUT/bench-$q-b$batch.log"; } | tr '\n' ' ' | cut -c1-300)"
  done
done
echo "== $(head -2 "$OUT/gpu.txt" | tail -1)"
echo "$summary"
