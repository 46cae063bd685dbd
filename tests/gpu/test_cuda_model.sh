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
# The emulator (emu) runs a step in tens of milliseconds: there, one prompt
# and 40 tokens, against the cpu backend (which test_model holds to the
# reference); on a GPU three prompts, whole, against both.
prompts=3 limit=0
[ "$GPU" = emu ] && prompts=1 limit=40
n=0
while IFS= read -r line; do
  prompt=$(jq -r .prompt <<<"$line")
  want=$(jq -r .greedy_text <<<"$line")
  ntok=$(jq '.greedy_tokens | length' <<<"$line")
  [ "$limit" -gt 0 ] && ntok=$limit
  got=$("$STRATA" generate --model "$MODEL" --backend "$GPU" --prompt "$prompt" -n "$ntok" --temperature 0 2>"$T/gen.err")
  cpu=$("$STRATA" generate --model "$MODEL" --backend cpu --prompt "$prompt" -n "$ntok" --temperature 0 2>/dev/null)
  [ "$limit" -gt 0 ] || check "$GPU greedy = reference for '$prompt'" test "$got" = "$want"
  check "$GPU greedy = cpu for '$prompt' ($ntok tokens)" test "$got" = "$cpu"
  check "generate ran on $GPU" grep -q "backend $GPU" "$T/gen.err"
  n=$((n + 1))
done < <(head -"$prompts" "$REF")
check "$prompts reference prompts compared" [ "$n" = "$prompts" ]
# q8_0 and q4_0 on a synthetic model whose matrices are large enough for
# the split layout and its integer matmul: every prompt position's logits
# against the cpu backend's, which quantizes the activations the same way
# (relative L2 over all of them; 38 prompt tokens: a prefill of at least
# gemm_min_tokens (32) goes through cuBLAS, the weights dequantized to f16,
# and the decode through the integer kernel; the stories260K vocabulary
# keeps the output matrix small for the emulator).
# 5e-2, not float rounding's 1e-6 (what the f32 model gives): where the two
# backends' float sums differ in the last bit, an activation can round to
# the neighbouring 8-bit value; its K/V row then differs by about 1e-3, every
# later position attends to it, and later layers round differently in turn:
# on the emulator, positions up to the first such flip agree to 1e-7 and all
# after it by 1-2% (q8_0 0.9%, q4_0 1.5% overall). A wrong layout or scale
# is off by order 1.
long="Once upon a time there was a little girl who lived in a village near the forest and loved to play"
for q in q8_0 q4_0; do
  "$STRATA" mkmodel --shape tiny --quant $q --vocab "$MODEL" --out "$T/tiny-$q.gguf" >/dev/null 2>&1
  for be in cpu "$GPU"; do
    "$STRATA" generate --model "$T/tiny-$q.gguf" --backend "$be" --prompt "$long" -n 1 --temperature 0 \
      --dump-logits "$T/logits-$q-$be.txt" >/dev/null 2>&1
  done
  rel=$(paste -d'\n' "$T/logits-$q-cpu.txt" "$T/logits-$q-$GPU.txt" | awk '
    NR % 2 == 1 { n = split($0, c, " "); next }
    { m = split($0, g, " "); if (m != n) bad = 1
      for (i = 1; i <= n; i++) { e += (g[i] - c[i]) ^ 2; r += c[i] ^ 2 } rows++ }
    END { if (bad || rows < 30 || r == 0) print "mismatch"; else printf "%.3g", sqrt(e / r) }')
  check "$q split-layout logits on $GPU match cpu's (relative L2 $rel)" \
    awk -v r="$rel" 'BEGIN { exit !(r != "mismatch" && r + 0 <= 5e-2) }'
done
cat >"$T/gpu.conf" <<EOF
engine: { model = "$MODEL"; backend = "$GPU"; };
server: { request_log = false; };
EOF
start srv serve --config "$T/gpu.conf" --port 0
first=$(head -1 "$REF")
ntok=$(jq '.greedy_tokens | length' <<<"$first")
want=$(jq -r .greedy_text <<<"$first")
if [ "$limit" -gt 0 ]; then # the last prompt's cpu text, of limit tokens
  ntok=$limit
  want=$cpu
fi
body=$(jq -nc --arg p "$(jq -r .prompt <<<"$first")" --argjson n "$ntok" \
  '{prompt: $p, max_tokens: $n, temperature: 0}')
text=$(curl -s "$URL_srv/v1/completions" -d "$body" | jq -r '.choices[0].text')
check "the server on the GPU answers the reference text" test "$text" = "$want"
finish
