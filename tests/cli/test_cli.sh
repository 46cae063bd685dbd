#!/usr/bin/env bash
# Tests of the strata command itself: exit statuses, one-line errors,
# FILE:LINE config messages, and the outputs of plugins / check-config /
# inspect / tokenize on the real files in ../shared.
set -u
B=${STRATA_BUILDDIR:?}
S=${STRATA_SRCDIR:?}
SH=${STRATA_SHARED:-}
STRATA="$B/strata"
MODEL="$SH/models/stories260K.gguf"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# run NAME EXPECTED_STATUS CMD...: captures stdout/stderr in $T/out, $T/err
run() {
  local name=$1 want=$2
  shift 2
  "$@" >"$T/out" 2>"$T/err"
  local got=$?
  if [ "$got" -eq "$want" ]; then ok; else bad "$name: exit $got, want $want; stderr: $(head -3 "$T/err")"; fi
}
has() { # has NAME FILE PATTERN (extended regex)
  if grep -Eq -- "$3" "$2"; then ok; else bad "$1: $2 lacks /$3/: $(head -5 "$2")"; fi
}
lines() { # lines NAME FILE N
  local n
  n=$(wc -l <"$2")
  if [ "$n" -eq "$3" ]; then ok; else bad "$1: $n lines, want $3: $(head -5 "$2")"; fi
}

# ---- usage -----------------------------------------------------------------
run "no args" 2 "$STRATA"
run "help" 0 "$STRATA" --help
has "help" "$T/out" "check-config"
run "version" 0 "$STRATA" --version
has "version" "$T/out" "plugin ABI 1"
run "unknown command" 2 "$STRATA" frobnicate
has "unknown command" "$T/err" "unknown command 'frobnicate'"

# ---- estimate --------------------------------------------------------------
if [ -f "$SH/models/stories260K.gguf" ]; then
  M="$SH/models/stories260K.gguf"
  # an explicit config: the embedded default names ../shared relative to the
  # source tree, which a distcheck tree does not have beside it
  printf 'engine: { model = "%s"; };\n' "$M" >"$T/est.conf"
  E=("$STRATA" estimate --config "$T/est.conf")
  # --model replaces the config's model, which then need not exist
  printf 'engine: { model = "no-such-model.gguf"; };\n' >"$T/gone.conf"
  run "--model overrides an unreadable engine.model" 0 "$STRATA" generate --config "$T/gone.conf" \
    --model "$M" --prompt "Once upon a time" -n 3 --temperature 0
  run "without --model it is an error" 2 "$STRATA" generate --config "$T/gone.conf" --prompt Hi -n 1
  has "without --model it is an error" "$T/err" "gone.conf:1: engine.model: cannot read"
  # serve: not on a reachable address without an API key, unless told so
  run "serve 0.0.0.0 without a key" 1 "$STRATA" serve --config "$T/est.conf" --host 0.0.0.0 --port 0
  has "serve 0.0.0.0 without a key" "$T/err" "refusing to serve 0.0.0.0 without an API key.*server.allow_no_api_key"
  printf 'engine: { model = "%s"; };\nserver: { allow_no_api_key = true; };\n' "$M" >"$T/open.conf"
  run "serve 0.0.0.0 allowed" 124 timeout 3 "$STRATA" serve --config "$T/open.conf" --host 0.0.0.0 --port 0
  has "serve 0.0.0.0 allowed" "$T/err" "^listening on http://0.0.0.0:"
  run "estimate" 0 "${E[@]}" --model "$M"
  for part in weights "KV cache" workspace scratch process total available; do
    has "estimate prints $part" "$T/out" "^$part: +[0-9]+ bytes"
  done
  has "estimate full-length requests" "$T/out" "^full-length \(512-token\) requests the KV cache holds at once: [0-9]+"
  run "estimate kv-tokens" 0 "${E[@]}" --kv-tokens 1024 --max-batch-tokens 64
  has "estimate kv-tokens sizes the cache" "$T/out" "^KV cache: +1310720 bytes .*\(64 blocks x 16 tokens, 1280 bytes/token\)"
  has "estimate two full requests" "$T/out" "holds at once: 2$"
  run "estimate too small" 1 "${E[@]}" --memory-limit 1MiB
  has "estimate too small says so" "$T/err" "does not fit in memory.*Not even the weights"
  run "estimate kv too big" 1 "${E[@]}" --kv-tokens 100000 --max-batch-tokens 64 --memory-limit 40MiB
  has "estimate names the KV setting" "$T/err" "lower engine.kv_cache.memory"
  run "estimate bad size" 2 "${E[@]}" --memory-limit lots
  has "estimate bad size message" "$T/err" "--memory-limit: 'lots' is not a size"
fi

# ---- sim -------------------------------------------------------------------
TR="$S/tests/data/traces"
run "sim" 0 "$STRATA" sim --trace "$TR/multi_agent.jsonl"
for p in fcfs prefix-aware affinity-group; do
  has "sim reports $p" "$T/out" "^$p +76 +"
done
run "sim one policy json" 0 "$STRATA" sim --trace "$TR/shared_system_prompt.jsonl" --policy fcfs --json
has "sim json" "$T/out" '^\{"policy":"fcfs","requests":200,"done":200,'
run "sim expand" 0 "$STRATA" sim --trace "$TR/random.jsonl" --expand "$T/expanded.jsonl"
n_lines=$(wc -l <"$T/expanded.jsonl")
if [ "$n_lines" -eq 150 ]; then ok; else bad "sim expand wrote $n_lines lines"; fi
has "sim expand token ids" "$T/expanded.jsonl" '^\{"t":[0-9.]+,"output":[0-9]+,"priority":0,"prompt":\[[0-9]+,'
printf '{"t": 0, "prompt": [1], "output": 1}\n{"t": 1, "prompt": [99999999], "output": 1}\n' >"$T/bad.jsonl"
run "sim bad trace" 2 "$STRATA" sim --trace "$T/bad.jsonl"
has "sim bad trace file:line" "$T/err" "bad.jsonl:2: prompt\[0\]: must be a token id"
run "sim unknown policy" 1 "$STRATA" sim --trace "$TR/random.jsonl" --policy nope
has "sim unknown policy message" "$T/err" "unknown scheduler 'nope'"
run "sim no trace" 2 "$STRATA" sim
# the attention term: long contexts cost more, so the same trace runs slower
run "sim without attention" 0 "$STRATA" sim --trace "$TR/multi_agent.jsonl" --policy fcfs --json
t0=$(jq -r .ttft_mean "$T/out")
run "sim with attention" 0 "$STRATA" sim --trace "$TR/multi_agent.jsonl" --policy fcfs --json --attn-ms 5
t1=$(jq -r .ttft_mean "$T/out")
if awk -v a="$t0" -v b="$t1" 'BEGIN { exit !(b > a * 1.05) }'; then ok; else bad "sim --attn-ms 5: TTFT mean $t1 not above $t0"; fi
run "sim bad attn-ms" 2 "$STRATA" sim --trace "$TR/random.jsonl" --attn-ms -1
# the step log and calibration: a simulation's own log gives its cost model back
STRATA_STEP_LOG="$T/steps.log" run "sim step log" 0 "$STRATA" sim --trace "$TR/multi_agent.jsonl" \
  --policy fcfs --step-ms 30 --prefill-ms 2.5 --decode-ms 8 --attn-ms 4
n_arr=$(grep -c '^{"arrive":' "$T/steps.log")
if [ "$n_arr" -eq 76 ]; then ok; else bad "sim step log: $n_arr arrivals, want 76"; fi
run "sim calibrate" 0 "$STRATA" sim --calibrate "$T/steps.log"
has "sim calibrate coefficients" "$T/out" '^  --step-ms 30\.00 --prefill-ms 2\.500 --decode-ms 8\.000 --attn-ms 4\.000$'
has "sim calibrate fit" "$T/out" 'R\^2 1\.000'
run "sim calibrated run" 0 "$STRATA" sim --trace "$TR/multi_agent.jsonl" --policy fcfs --calibrate "$T/steps.log" --decode-ms 9
has "sim calibrated run uses the fit, flags win" "$T/out" 'cost 30\.0 ms/step \+ 2\.50 ms/prefill token \+ 9\.00 ms/decoding sequence \+ 4\.00 ms'
printf '{"dur":0.1,"prefill":3,"decode":1,"pos":9}\n{"dur":"x"}\n' > "$T/bad.log"
run "sim calibrate bad log" 2 "$STRATA" sim --calibrate "$T/bad.log"
has "sim calibrate bad log file:line" "$T/err" "bad.log:2: dur: expected a number >= 0"
run "sim calibrate missing log" 2 "$STRATA" sim --calibrate "$T/nope.log"

# ---- plugins ---------------------------------------------------------------
run "plugins" 0 "$STRATA" plugins
for q in f32 f16 bf16 q8_0 q4_0; do has "plugins lists $q" "$T/out" "^quant +$q +"; done
has "plugins lists cpu backend" "$T/out" "^backend +cpu +"
has "plugins lists fcfs scheduler" "$T/out" "^scheduler +fcfs +"
has "plugins lists prefix-aware scheduler" "$T/out" "^scheduler +prefix-aware +"
has "plugins lists affinity-group scheduler" "$T/out" "^scheduler +affinity-group +"
for l in allowed_token_ids bad_words min_tokens logit_bias repetition_penalty frequency_penalty \
  presence_penalty; do
  has "plugins lists logits $l" "$T/out" "^logits +$l +"
done
n_plugins=22
for g in cuda hip; do # built where configure found nvcc / hipcc
  if [ -e "$B/plugins/backend/$g/backend_$g.la" ]; then
    n_plugins=$((n_plugins + 1))
    has "plugins lists $g backend" "$T/out" "^backend +$g +"
  fi
done
has "plugins count" "$T/out" "^$n_plugins plugin\(s\) loaded, 0 file\(s\) rejected"

# ---- strata route: bad setups fail at once, with a reason --------------------
run "route unknown policy" 2 "$STRATA" route --policy nope --backend http://127.0.0.1:1
has "route unknown policy" "$T/err" "unknown policy 'nope' \(available:.*round-robin"
run "route without backends" 1 "$STRATA" route --port 0
has "route without backends" "$T/err" "no backends"
run "route bad backend" 1 "$STRATA" route --port 0 --backend ftp://example
has "route bad backend" "$T/err" "not an http://HOST:PORT or dns://NAME:PORT address"
run "route dns without port" 1 "$STRATA" route --port 0 --backend dns://engines.example
has "route dns without port" "$T/err" "dns://engines.example. is not an http"
run "route same backend twice" 1 "$STRATA" route --port 0 --backend http://127.0.0.1:9 --backend http://127.0.0.1:9/
has "route same backend twice" "$T/err" "listed twice"
# not on a reachable address without an API key, unless told so
run "route 0.0.0.0 without a key" 1 "$STRATA" route --host 0.0.0.0 --port 0 --backend http://127.0.0.1:9
has "route 0.0.0.0 without a key" "$T/err" "refusing to route on 0.0.0.0 without an API key.*router.allow_no_api_key"
STRATA_API_KEY=k run "route 0.0.0.0 with a key" 124 timeout 1 "$STRATA" route --host 0.0.0.0 --port 0 \
  --backend http://127.0.0.1:9
has "route 0.0.0.0 with a key" "$T/err" "^listening on http://0.0.0.0:"
printf 'router: { backends = [ "http://127.0.0.1:9" ]; allow_no_api_key = true; };\n' >"$T/open.conf"
run "route 0.0.0.0 allowed" 124 timeout 1 "$STRATA" route --config "$T/open.conf" --host :: --port 0
has "route 0.0.0.0 allowed" "$T/err" "^listening on http://\[::\]:"
run "route ::1 needs no key" 124 timeout 1 "$STRATA" route --host ::1 --port 0 --backend http://127.0.0.1:9
printf 'router: { backends = [ "http://127.0.0.1:9" ]; eject_after = 0; };\n' >"$T/r.conf"
run "route config range" 2 "$STRATA" route --config "$T/r.conf"
has "route config range" "$T/err" "r.conf:1: .*eject_after"
# Broken plugins on STRATA_PLUGIN_PATH are listed with their reasons.
STRATA_PLUGIN_PATH="$B/tests/plugins/.libs" run "plugins with rejects" 0 "$STRATA" plugins
has "reject abi" "$T/out" "bad_abi.so: ABI version mismatch: plugin has 7, host needs 1"
has "reject entry" "$T/out" "no_entry.so: missing symbol strata_plugin_entry"
has "reject unresolved" "$T/out" "unresolved.so: cannot load: .*strata_symbol_that_does_not_exist"
has "reject fingerprint" "$T/out" "bad_fingerprint.so: build fingerprint mismatch"
has "good test plugin" "$T/out" "^quant +test-good +1.0 +1 +"
# Config plugins.path is searched first.
cat >"$T/p.conf" <<EOF
plugins: { path = ["$B/tests/plugins/.libs/good_quant.so"]; };
EOF
run "plugins --config" 0 "$STRATA" plugins --config "$T/p.conf" --verbose
has "config path first" "$T/out" "^  $B/tests/plugins/.libs/good_quant.so$"
has "verbose params" "$T/out" "quant.factor: float, default 1.0"

# ---- check-config ----------------------------------------------------------
# The example configs name ../shared's model relative to conf/; in a copy of
# the tree without ../shared beside it (make distcheck), that is their one error.
if [ -f "$S/../shared/models/stories260K.gguf" ]; then
  run "default config" 0 "$STRATA" check-config "$S/conf/strata.conf"
  has "default config" "$T/out" "OK"
  for f in "$S"/conf/*.conf; do run "example $f" 0 "$STRATA" check-config "$f"; done
else
  run "default config" 2 "$STRATA" check-config "$S/conf/strata.conf"
  has "default config" "$T/err" "engine.model: cannot read"
  lines "default config" "$T/err" 1
fi
printf 'engine: {\n  modle = "x";\n};\n' >"$T/typo.conf"
run "typo" 2 "$STRATA" check-config "$T/typo.conf"
has "typo" "$T/err" "^$T/typo.conf:2: unknown key 'modle' in engine \(did you mean 'model'\?\)$"
lines "typo one line" "$T/err" 1
printf 'server: {\n port = 0;\n host = 5;\n};\nfoo = 1;\nplugins: { scheduler: { nosuch: {}; }; };\n' >"$T/many.conf"
run "many errors" 2 "$STRATA" check-config "$T/many.conf"
lines "many errors" "$T/err" 4
has "range" "$T/err" "^$T/many.conf:2: server.port = 0 is out of range"
has "type" "$T/err" "^$T/many.conf:3: server.host must be a string, not an integer"
has "top" "$T/err" "^$T/many.conf:5: unknown top-level key 'foo'"
has "plugin" "$T/err" "^$T/many.conf:6: unknown scheduler plugin 'nosuch'"
printf 'engine: { model = "x" }\nserver: {;\n' >"$T/syntax.conf"
run "syntax" 2 "$STRATA" check-config "$T/syntax.conf"
has "syntax" "$T/err" "^$T/syntax.conf:[0-9]+: syntax error"
mkdir -p "$T/inc"
printf 'server: {\n  port = 123456;\n};\n' >"$T/inc/part.conf"
printf '@include "inc/part.conf"\n' >"$T/top.conf"
run "include" 2 "$STRATA" check-config "$T/top.conf"
has "include" "$T/err" "^$T/inc/part.conf:2: server.port = 123456 is out of range"
run "missing config" 2 "$STRATA" check-config "$T/none.conf"
has "missing config" "$T/err" "none.conf"
run "check-config usage" 2 "$STRATA" check-config

if [ -z "$SH" ] || [ ! -f "$MODEL" ]; then
  echo "shared dir missing: skipping the model tests"
  echo "cli: $pass passed, $fail failed"
  [ "$fail" -eq 0 ] || exit 1
  exit 77
fi

# ---- inspect ---------------------------------------------------------------
run "inspect" 0 "$STRATA" inspect "$MODEL"
has "inspect arch" "$T/out" "general.architecture"
has "inspect dims" "$T/out" "llama.embedding_length.*64"
has "inspect tensor" "$T/out" "token_embd.weight"
has "inspect abbreviates" "$T/out" "tokenizer.ggml.tokens.*\.\.\."
run "inspect missing" 1 "$STRATA" inspect "$T/none.gguf"
lines "inspect missing one line" "$T/err" 1
head -c 100 "$MODEL" >"$T/trunc.gguf"
run "inspect truncated" 1 "$STRATA" inspect "$T/trunc.gguf"
has "inspect truncated" "$T/err" "offset [0-9]+"
lines "inspect truncated one line" "$T/err" 1
run "inspect usage" 2 "$STRATA" inspect

# ---- tokenize --------------------------------------------------------------
run "tokenize" 0 "$STRATA" tokenize --model "$MODEL" "Once upon a time"
has "tokenize" "$T/out" "^1 403 407 261 378$"
run "tokenize no-bos" 0 "$STRATA" tokenize --model "$MODEL" --no-bos "Once upon a time"
has "tokenize no-bos" "$T/out" "^403 407 261 378$"
printf 'Once upon a time' | "$STRATA" tokenize --model "$MODEL" - >"$T/out" 2>"$T/err"
has "tokenize stdin" "$T/out" "^1 403 407 261 378$"
printf 'bad \xff byte' >"$T/bad.txt"
run "tokenize invalid utf8" 1 "$STRATA" tokenize --model "$MODEL" - <"$T/bad.txt"
has "tokenize invalid utf8" "$T/err" "offset 4"
run "tokenize bad model" 1 "$STRATA" tokenize --model "$T/trunc.gguf" "x"
run "tokenize usage" 2 "$STRATA" tokenize "x"

# ---- generate --------------------------------------------------------------
run "generate greedy" 0 "$STRATA" generate --model "$MODEL" --prompt "Once upon a time" -n 20 --temperature 0
has "generate greedy" "$T/out" "^, there was a little girl named Lily"
has "generate stats" "$T/err" "prompt: 5 tokens .* generated: 20 tokens"
"$STRATA" generate --model "$MODEL" --prompt "Lily" -n 30 --seed 7 >"$T/s1" 2>/dev/null
"$STRATA" generate --model "$MODEL" --prompt "Lily" -n 30 --seed 7 >"$T/s2" 2>/dev/null
"$STRATA" generate --model "$MODEL" --prompt "Lily" -n 30 --seed 8 >"$T/s3" 2>/dev/null
if cmp -s "$T/s1" "$T/s2"; then ok; else bad "same seed, different text"; fi
if cmp -s "$T/s1" "$T/s3"; then bad "different seeds, same text"; else ok; fi
run "generate top-k top-p min-p" 0 "$STRATA" generate --model "$MODEL" --prompt "Lily" -n 10 --top-k 5 --top-p 0.9 --min-p 0.05 --temperature 0.8
run "generate q8_0" 0 "$STRATA" generate --model "$MODEL" --prompt "Once upon a time" -n 10 --quant q8_0 --temperature 0
run "generate dump" 0 "$STRATA" generate --model "$MODEL" --prompt "Once upon a time" -n 3 --temperature 0 --dump-logits "$T/logits.txt"
lines "dump lines" "$T/logits.txt" 7    # 5 prompt positions + 2 decode steps
if [ "$(head -1 "$T/logits.txt" | wc -w)" -eq 512 ]; then ok; else bad "dump row width"; fi
if [ -f "$S/../shared/models/stories260K.gguf" ]; then
  run "generate config" 0 "$STRATA" generate --config "$S/conf/strata.conf" --prompt "Once" -n 5 --temperature 0
fi
run "generate stdin prompt" 0 "$STRATA" generate --model "$MODEL" --prompt - -n 5 --temperature 0 <<<"Once upon a time"
# bad input: one line, non-zero exit
run "generate missing model" 1 "$STRATA" generate --model "$T/none.gguf" --prompt x
lines "generate missing model" "$T/err" 1
run "generate truncated model" 1 "$STRATA" generate --model "$T/trunc.gguf" --prompt x
lines "generate truncated model" "$T/err" 1
has "generate truncated model" "$T/err" "offset"
head -c 600000 "$MODEL" >"$T/half.gguf"
run "generate cut model" 1 "$STRATA" generate --model "$T/half.gguf" --prompt x
lines "generate cut model" "$T/err" 1
run "generate n=0" 2 "$STRATA" generate --model "$MODEL" --prompt x -n 0
lines "generate n=0" "$T/err" 1
run "generate n<0" 2 "$STRATA" generate --model "$MODEL" --prompt x -n -5
run "generate bad quant" 2 "$STRATA" generate --model "$MODEL" --prompt x --quant q9_9
lines "generate bad quant" "$T/err" 1
run "generate prompt too long" 1 "$STRATA" generate --model "$MODEL" --context-length 8 --prompt "Once upon a time there was a little girl named Lily"
has "generate prompt too long" "$T/err" "context holds 8"
lines "generate prompt too long" "$T/err" 1
run "generate bad temperature" 2 "$STRATA" generate --model "$MODEL" --prompt x --temperature hot
run "generate no prompt" 2 "$STRATA" generate --model "$MODEL"

# ---- mkmodel and bench -------------------------------------------------------
run "mkmodel tiny q8_0" 0 "$STRATA" mkmodel --out "$T/tiny.gguf" --shape tiny --quant q8_0 --vocab "$SH/vocab/ggml-vocab-llama-spm.gguf"
run "mkmodel inspect" 0 "$STRATA" inspect "$T/tiny.gguf"
has "mkmodel vocab" "$T/out" "tokenizer.ggml.tokens: \[string; 32000\]"
has "mkmodel q8_0" "$T/out" "blk.0.attn_q.weight +q8_0 +\[256, 256\]"
run "mkmodel tokenizes" 0 "$STRATA" tokenize --model "$T/tiny.gguf" "Hello world"
has "mkmodel tokenizes" "$T/out" "^1 15043 3186$"
run "generate synthetic" 0 "$STRATA" generate --model "$T/tiny.gguf" --prompt "Hello" -n 8 --temperature 0
run "mkmodel q4_0" 0 "$STRATA" mkmodel --out "$T/tiny4.gguf" --dim 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --quant q4_0 --vocab "$SH/vocab/ggml-vocab-llama-spm.gguf"
run "bench" 0 "$STRATA" bench --model "$T/tiny4.gguf" --prompt-tokens 64 --gen-tokens 8 --batch 4 --threads 2
has "bench prefill" "$T/out" "^prefill: +64 tokens"
has "bench batch" "$T/out" "^decode: +4 sequences"
has "bench roofline" "$T/out" "^roofline: .* GB/s"
run "mkmodel bad shape" 2 "$STRATA" mkmodel --out "$T/x.gguf" --shape gpt-5
run "mkmodel bad quant" 2 "$STRATA" mkmodel --out "$T/x.gguf" --shape tiny --quant q9
run "mkmodel unaligned" 2 "$STRATA" mkmodel --out "$T/x.gguf" --dim 100 --layers 1 --heads 4 --ffn 64 --quant q8_0
if [ ! -e "$T/x.gguf" ]; then ok; else bad "failed mkmodel left a file"; fi

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
