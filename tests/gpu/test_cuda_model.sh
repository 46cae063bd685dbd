#!/usr/bin/env bash
# The whole model on a GPU backend, STRATA_GPU_BACKEND (cuda; test_hip_model.sh:
# hip), stories260K in f32: greedy continuations
# of the reference prompts (../shared/reference/stories260K.jsonl, computed by
# an independent fp32 implementation) equal the reference and the cpu
# backend's, and the server on the GPU answers a completion with the same
# text. Without a GPU, `strata generate --backend "$GPU"` must fail saying why,
# and the test exits 77 (SKIP).
GPU=${STRATA_GPU_BACKEND:-cuda}
SUITE="$GPU model test"
NEEDS="curl jq"
. "$(dirname "$0")/../integration/common.sh"
REF="$SH/reference/stories260K.jsonl"
probe=$("$STRATA" generate --model "$MODEL" --backend "$GPU" --prompt "Once" -n 1 --temperature 0 2>&1)
if grep -q "has no usable device" <<<"$probe"; then
  check "without a GPU the refusal says why ($probe)" grep -q "no usable device here: no usable GPU:" <<<"$probe"
  [ "$fail" -eq 0 ] || finish
  echo "no GPU here: $probe (SKIP)"
  exit 77
fi
n=0
while IFS= read -r line; do
  prompt=$(jq -r .prompt <<<"$line")
  want=$(jq -r .greedy_text <<<"$line")
  ntok=$(jq '.greedy_tokens | length' <<<"$line")
  got=$("$STRATA" generate --model "$MODEL" --backend "$GPU" --prompt "$prompt" -n "$ntok" --temperature 0 2>"$T/gen.err")
  cpu=$("$STRATA" generate --model "$MODEL" --backend cpu --prompt "$prompt" -n "$ntok" --temperature 0 2>/dev/null)
  check "$GPU greedy = reference for '$prompt'" test "$got" = "$want"
  check "$GPU greedy = cpu for '$prompt'" test "$got" = "$cpu"
  check "generate ran on $GPU" grep -q "backend $GPU" "$T/gen.err"
  n=$((n + 1))
done < <(head -3 "$REF")
check "three reference prompts compared" [ "$n" = 3 ]
# q8_0 and q4_0 on a synthetic model whose matrices are large enough for
# the split layout and its integer matmul: every prompt position's logits
# against the cpu backend's, which quantizes the activations the same way
# (relative L2 over all of them; 22 prompt tokens: prefill in passes of 8).
# 1e-2, not float rounding's 1e-5: where the two backends' float sums differ
# in the last bit, an activation can round to the neighbouring 8-bit value,
# which moves its matmul's output by about 1e-3 and the layers after it; a
# wrong layout or scale is off by order 1.
long="Once upon a time there was a little girl who lived in a village near the forest and loved to play"
for q in q8_0 q4_0; do
  "$STRATA" mkmodel --shape tiny --quant $q --out "$T/tiny-$q.gguf" >/dev/null 2>&1
  for be in cpu "$GPU"; do
    "$STRATA" generate --model "$T/tiny-$q.gguf" --backend "$be" --prompt "$long" -n 1 --temperature 0 \
      --dump-logits "$T/logits-$q-$be.txt" >/dev/null 2>&1
  done
  rel=$(paste -d'\n' "$T/logits-$q-cpu.txt" "$T/logits-$q-$GPU.txt" | awk '
    NR % 2 == 1 { n = split($0, c, " "); next }
    { m = split($0, g, " "); if (m != n) bad = 1
      for (i = 1; i <= n; i++) { e += (g[i] - c[i]) ^ 2; r += c[i] ^ 2 } rows++ }
    END { if (bad || rows < 22 || r == 0) print "mismatch"; else printf "%.3g", sqrt(e / r) }')
  check "$q split-layout logits on $GPU match cpu's (relative L2 $rel)" \
    awk -v r="$rel" 'BEGIN { exit !(r != "mismatch" && r + 0 <= 1e-2) }'
done
cat >"$T/gpu.conf" <<EOF
engine: { model = "$MODEL"; backend = "$GPU"; };
server: { request_log = false; };
EOF
start srv serve --config "$T/gpu.conf" --port 0
first=$(head -1 "$REF")
body=$(jq -nc --arg p "$(jq -r .prompt <<<"$first")" --argjson n "$(jq '.greedy_tokens | length' <<<"$first")" \
  '{prompt: $p, max_tokens: $n, temperature: 0}')
text=$(curl -s "$URL_srv/v1/completions" -d "$body" | jq -r '.choices[0].text')
check "the server on the GPU answers the reference text" test "$text" = "$(jq -r .greedy_text <<<"$first")"
finish
