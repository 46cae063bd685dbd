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
