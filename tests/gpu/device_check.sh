#!/usr/bin/env bash
# One call on a lent GPU machine (docs/gpu.md), from the repository root:
#   bash tests/gpu/device_check.sh
# builds strata with the CUDA backend in build-gpu/, runs the GPU tests (ops
# against the cpu backend, the model against the fp32 reference, the server
# on the GPU), then `strata bench --backend cuda` on synthetic tinyllama-1.1b
# in q8_0 and f16 at 1 and 64 sequences (and q8_0 once more on the kernels
# alone, without cuBLAS), and the paged decode attention
# (tests/bench/bench_attention.c) against PyTorch's SDPA on the same shapes
# (tests/bench/sdpa_reference.py). Logs go to $OUT (default ./gpu-check); a
# short summary is printed last.
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
# prefill through the kernels alone (gemm_min_tokens = 0), against the
# default (cuBLAS from 32 tokens) above: for tuning gemm_min_tokens
if [ -f "$b/tl-q8_0.gguf" ]; then
  printf 'plugins: { backend: { cuda: { gemm_min_tokens = 0; }; }; };\n' >"$b/kernels-only.conf"
  timeout 300 ./strata bench --model "$b/tl-q8_0.gguf" --backend cuda --prompt-tokens 512 \
    --gen-tokens 16 --batch 64 --config "$b/kernels-only.conf" >"$OUT/bench-q8_0-kernels-only.log" 2>&1
  summary="$summary
bench q8_0 batch 64, kernels only: $({ grep -iE 'decode|prefill' "$OUT/bench-q8_0-kernels-only.log" ||
    tail -n 1 "$OUT/bench-q8_0-kernels-only.log"; } | tr '\n' ' ' | cut -c1-300)"
fi
# paged decode attention against PyTorch's SDPA on the same shapes
./libtool --mode=link gcc -O2 -I. -I"$top/core/include" -I"$top/core" -DSTRATA_BUILDDIR="\"$b\"" \
  -DSTRATA_SRCDIR="\"$top\"" -DSTRATA_SHARED_DIR='"../shared"' -DSTRATA_PKGLIBDIR='"/nonexistent"' \
  -o bench_attention "$top/tests/bench/bench_attention.c" core/libstrata.la -lpthread \
  >"$OUT/bench_attention-build.log" 2>&1 &&
  timeout 120 ./bench_attention cuda >"$OUT/attention.log" 2>&1
timeout 120 python3 "$top/tests/bench/sdpa_reference.py" >"$OUT/sdpa.log" 2>&1
# "attention B x CTX: M ms, ..." and "sdpa B x CTX: M ms, ...": field 5 is M
while IFS='|' read -r shape ms; do
  sd=$(awk -v s="sdpa $shape" 'index($0, s) == 1 { print $5 }' "$OUT/sdpa.log")
  summary="$summary
attention $shape strata $ms ms, sdpa ${sd:-?} ms$( [ -n "$sd" ] &&
    awk -v a="$ms" -v s="$sd" 'BEGIN { printf ": %.2fx its speed", s / a }')"
done < <(awk '/^attention / { print $2 " " $3 " " $4 "|" $5 }' "$OUT/attention.log")
echo "== $(head -2 "$OUT/gpu.txt" | tail -1)"
echo "$summary"
