#!/usr/bin/env bash
# Hostile command-line input (docs/reliability.md): each bad option or file is refused with exit
# status != 0 and exactly one line on stderr that names the option or file and carries no
# source location, before any slow work; nothing the user gave is modified.
# Usage: tests/cli_input_test.sh path/to/moe path/to/tests/fixtures
set -euo pipefail
moe=$1
fixtures=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "cli_input: $*" >&2; exit 1; }
checked=0

# refused WHAT EXPECTED -- ARGS...: moe ARGS fails within 30 s with one stderr line holding
# EXPECTED and no "src/...cpp:N" location.
refused() {
  local what=$1 expected=$2
  shift 3
  local rc=0
  timeout 30 "$moe" "$@" > "$dir/out" 2> "$dir/err" || rc=$?
  [[ $rc -ne 0 ]] || fail "$what: accepted (moe $*)"
  [[ $rc -ne 124 ]] || fail "$what: still running after 30 s (moe $*)"
  [[ $(wc -l < "$dir/err") -eq 1 ]] || fail "$what: not one line: $(cat "$dir/err")"
  grep -qF -- "$expected" "$dir/err" || fail "$what: expected \"$expected\" in: $(cat "$dir/err")"
  if grep -qE '(src|include)/[A-Za-z0-9_/]+\.(cpp|h):[0-9]+' "$dir/err"; then
    fail "$what: a source location in a user error: $(cat "$dir/err")"
  fi
  checked=$((checked + 1))
}

# A tiny run on the bundled corpus (byte tokenizer) for the commands that take a run.
cat > "$dir/tiny.json" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 32,
 "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 48, "num_local_experts": 4, "num_experts_per_tok": 2,
 "training": {"max_steps": 2, "batch_size": 2, "seq_len": 32, "eval_every": 0,
              "eval_batches": 1, "tokenizer": "byte", "data_dir": "$dir/data"}}
JSON
"$moe" train --config "$dir/tiny.json" --out "$dir/run" --no-progress > /dev/null 2>&1 ||
  fail "the tiny run did not train"

# eval and analyze show their progress over the validation windows.
"$moe" eval "$dir/run" --batches 4 > /dev/null 2> "$dir/err" || fail "eval failed: $(cat "$dir/err")"
grep -q "^eval: 8/8 windows" "$dir/err" || fail "no eval progress: $(cat "$dir/err")"
"$moe" analyze "$dir/run" --windows 6 > /dev/null 2> "$dir/err" || fail "analyze failed: $(cat "$dir/err")"
grep -q "^analyze: 6/6 windows" "$dir/err" || fail "no analyze progress: $(cat "$dir/err")"

# Numbers on the command line (defect 9, and --steps 0 / -3 that started a 1200-step run).
refused "threads -1" "--threads" -- train --config "$dir/tiny.json" --out "$dir/x" --threads -1
refused "threads 100000" "--threads" -- train --config "$dir/tiny.json" --out "$dir/x" --threads 100000
refused "eval threads" "--threads" -- eval "$dir/run" --threads 100000
refused "expert-parallel -2" "--expert-parallel" -- train --config "$dir/tiny.json" --out "$dir/x" --expert-parallel -2
refused "steps 0" "--steps" -- train --config "$dir/tiny.json" --out "$dir/x" --steps 0
refused "steps -3" "--steps" -- train --config "$dir/tiny.json" --out "$dir/x" --steps -3
refused "stop-after 0" "--stop-after" -- train --config "$dir/tiny.json" --out "$dir/x" --stop-after 0
refused "top-p 0" "--top-p" -- generate "$dir/run" --prompt hi --top-p 0
refused "temperature -1" "--temperature" -- generate "$dir/run" --prompt hi --temperature -1
refused "max-new-tokens 0" "--max-new-tokens" -- generate "$dir/run" --prompt hi --max-new-tokens 0
[[ ! -e "$dir/x" ]] || fail "a refused train wrote $dir/x"
# An existing run (or a missing one with --resume) is refused before the corpus is read: the
# one-line check fails if any data line came first.
refused "existing run" "checkpoint.safetensors: a checkpoint exists; pass --resume" -- \
  train --config "$dir/tiny.json" --out "$dir/run"
refused "resume of nothing" "no checkpoint to resume from" -- \
  train --config "$dir/tiny.json" --out "$dir/none" --resume

# Defect 7: --prompt-ids with a run directory was ignored.
refused "prompt-ids -7" '--prompt-ids: "-7" is not a token id' -- generate "$dir/run" --prompt-ids "-7"
refused "prompt-ids out of vocab" "--prompt-ids: 258 is outside the vocabulary [0, 258)" -- \
  generate "$dir/run" --prompt-ids "1,258"
refused "prompt and ids" "not both" -- generate "$dir/run" --prompt hi --prompt-ids 1
"$moe" generate "$dir/run" --prompt-ids "1,72,105" --max-new-tokens 3 --temperature 0 \
  > "$dir/ids" 2> /dev/null || fail "--prompt-ids with a run failed"
[[ $(wc -w < "$dir/ids") -eq 3 ]] || fail "--prompt-ids with a run printed: $(cat "$dir/ids")"
grep -qE '^[0-9]+ [0-9]+ [0-9]+$' "$dir/ids" || fail "--prompt-ids output: $(cat "$dir/ids")"

# Defect 8: past the context, both kinds of model stop there and say so, exit status 0.
"$moe" generate "$dir/run" --prompt-ids 1 --max-new-tokens 2000000000 --temperature 0 \
  > "$dir/long" 2> "$dir/err" || fail "long generation failed: $(cat "$dir/err")"
grep -q "47 new tokens instead of 2000000000" "$dir/err" || fail "no context note: $(cat "$dir/err")"
[[ $(wc -w < "$dir/long") -le 47 ]] || fail "generated past the context"
cp -r "$fixtures/hf/mixtral" "$dir/hf"
"$moe" generate --model "$dir/hf" --prompt-ids 1,2 --max-new-tokens 2000000000 --temperature 0 \
  > "$dir/long" 2> "$dir/err" || fail "long generation (--model) failed: $(cat "$dir/err")"
grep -q "62 new tokens instead of 2000000000" "$dir/err" || fail "no context note: $(cat "$dir/err")"

# Files (defects 1, 5, 6, 10): one line naming the file.
echo '{"model_type": "mixtral", "hidden_size": 1e999}' > "$dir/overflow.json"
refused "number overflow" "overflow.json: not valid JSON" -- train --config "$dir/overflow.json" --out "$dir/x"
echo '{"model_type": "mixtral", "vocab_size": 2147483647}' > "$dir/vocab.json"
refused "vocab_size" "vocab.json: vocab_size must be in [1, 1048576]" -- train --config "$dir/vocab.json" --out "$dir/x"
echo '{"model_type": "mixtral", "vocab_size": 300000, "training": {"data_dir": "'"$dir/data2"'"}}' > "$dir/vocab2.json"
refused "trained vocab" "vocab2.json: vocab_size = 300000 is more than the 262144" -- \
  train --config "$dir/vocab2.json" --out "$dir/x"
[[ ! -e "$dir/data2" ]] || fail "a refused config prepared data in $dir/data2"
cp "$dir/hf/config.json" "$dir/config.keep"
echo '{}' > "$dir/hf/config.json"
refused "config.json {}" "config.json: model_type is missing" -- generate --model "$dir/hf" --prompt-ids 1
cp "$dir/config.keep" "$dir/hf/config.json"
mv "$dir/hf/model.safetensors" "$dir/model.keep"
mkfifo "$dir/hf/model.safetensors"
refused "FIFO weights" "model.safetensors: not a regular file (a FIFO)" -- generate --model "$dir/hf" --prompt-ids 1
rm "$dir/hf/model.safetensors"
mv "$dir/model.keep" "$dir/hf/model.safetensors"
truncate -s 1G "$dir/huge.json"
refused "1 GB config" "huge.json: 1073741824 bytes, more than the" -- train --config "$dir/huge.json" --out "$dir/x"
refused "eval of a non-run" "config.json: cannot open" -- eval "$dir/hf/.."

# The fixture copy the commands read is untouched (they open user files read-only).
cmp -s "$fixtures/hf/mixtral/model.safetensors" "$dir/hf/model.safetensors" || fail "weights changed"

"$moe" --version | grep -qE '^moe [0-9]+\.[0-9]+\.[0-9]+$' || fail "moe --version: $("$moe" --version)"
echo "cli_input: ok ($checked refusals checked)"
