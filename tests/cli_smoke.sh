#!/usr/bin/env bash
# End-to-end check of the `moe` command line on the real bundled corpus (byte tokenizer, a
# tiny model, a few steps): train, refuse to overwrite, resume, compare, eval, generate, and
# one-line errors for bad input. Usage: tests/cli_smoke.sh path/to/moe
set -euo pipefail
moe=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "cli_smoke: $*" >&2; exit 1; }

# A bad key: one line naming the file and the key, exit status 1.
echo '{"model_type": "mixtral", "hidden_sise": 64}' > "$dir/bad.json"
if "$moe" train --config "$dir/bad.json" --out "$dir/bad" 2> "$dir/err"; then fail "bad config accepted"; fi
grep -q "bad.json: unknown key \"hidden_sise\"" "$dir/err" || fail "unexpected error: $(cat "$dir/err")"
[[ $(wc -l < "$dir/err") -eq 1 ]] || fail "error is not one line: $(cat "$dir/err")"

cat > "$dir/tiny.json" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
 "training": {"max_steps": 6, "batch_size": 2, "seq_len": 32, "eval_every": 3,
              "eval_batches": 2, "checkpoint_every": 3, "tokenizer": "byte",
              "data_dir": "$dir/data"}}
JSON
"$moe" train --config "$dir/tiny.json" --out "$dir/run" --steps 4 --no-progress > "$dir/out"
for f in config.json model.safetensors checkpoint.safetensors metrics.jsonl report.md summary.json; do
  [[ -s "$dir/run/$f" ]] || fail "missing $f"
done
[[ $(grep -c '"loss"' "$dir/run/metrics.jsonl") -eq 4 ]] || fail "expected 4 step lines in metrics.jsonl"
grep -q '"val_loss"' "$dir/run/metrics.jsonl" || fail "no validation line in metrics.jsonl"

# Training into an existing run without --resume would lose it: refused.
if "$moe" train --config "$dir/tiny.json" --out "$dir/run" 2> "$dir/err"; then fail "overwrote a run"; fi
grep -q "pass --resume" "$dir/err" || fail "unexpected error: $(cat "$dir/err")"

"$moe" train --out "$dir/run" --resume --steps 6 --no-progress > "$dir/out"
[[ $(grep -c '"loss"' "$dir/run/metrics.jsonl") -eq 6 ]] || fail "resume did not continue to step 6"
# Resuming a finished run: refused with one line, and the run's files stay as they are.
cp "$dir/run/summary.json" "$dir/summary.before"
cp "$dir/run/report.md" "$dir/report.before"
if "$moe" train --out "$dir/run" --resume --no-progress > /dev/null 2> "$dir/err"; then
  fail "resumed a finished run"
fi
grep "^moe: error: " "$dir/err" > "$dir/err_line" || fail "no error line: $(cat "$dir/err")"
grep -q "run: already finished at step 6 of 6; nothing to resume" "$dir/err_line" ||
  fail "unexpected error: $(cat "$dir/err")"
[[ $(wc -l < "$dir/err_line") -eq 1 ]] || fail "error is not one line: $(cat "$dir/err")"
if grep -q '\.cpp' "$dir/err_line"; then fail "error names a source file: $(cat "$dir/err")"; fi
cmp -s "$dir/run/summary.json" "$dir/summary.before" || fail "summary.json changed"
cmp -s "$dir/run/report.md" "$dir/report.before" || fail "report.md changed"

# `moe compare`: the run against itself (no differing keys), --out HTML, and a directory that
# is not a run as one line naming it.
"$moe" compare "$dir/run" "$dir/run" --out "$dir/compare.html" > "$dir/cmp"
grep -q "the configs are identical" "$dir/cmp" || fail "compare printed: $(cat "$dir/cmp")"
grep -q "validation loss" "$dir/cmp" || fail "compare printed: $(cat "$dir/cmp")"
grep -q 'data-chart="val_loss"' "$dir/compare.html" || fail "compare.html has no validation chart"
if "$moe" compare "$dir/run" "$dir/data" 2> "$dir/err"; then fail "compare accepted a non-run"; fi
grep -q "$dir/data: not a run directory" "$dir/err" || fail "unexpected error: $(cat "$dir/err")"
[[ $(wc -l < "$dir/err") -eq 1 ]] || fail "error is not one line: $(cat "$dir/err")"

"$moe" eval "$dir/run" --batches 8 > "$dir/eval"
grep -q "validation loss" "$dir/eval" || fail "eval printed: $(cat "$dir/eval")"
# Validation windows are spread over the split, so several domains are measured.
[[ $(grep -cE "^(code|numbers|en|de|es|it|ru|pl|cs|zh) " "$dir/eval") -ge 5 ]] ||
  fail "eval covers too few domains: $(cat "$dir/eval")"

"$moe" generate "$dir/run" --prompt "Hello" --max-new-tokens 8 --seed 3 > "$dir/gen1"
"$moe" generate "$dir/run" --prompt "Hello" --max-new-tokens 8 --seed 3 > "$dir/gen2"
cmp -s "$dir/gen1" "$dir/gen2" || fail "generation with one seed is not deterministic"

# The run as a Hugging Face checkpoint (f32 and bf16) that `generate --model` runs, and as GGUF.
"$moe" convert "$dir/run" --to hf --out "$dir/hf" > "$dir/conv"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [[ -s "$dir/hf/$f" ]] || fail "convert --to hf wrote no $f"
done
grep -q '"model_type": "mixtral"' "$dir/hf/config.json" || fail "hf config: $(cat "$dir/hf/config.json")"
"$moe" generate --model "$dir/hf" --prompt "Hello" --max-new-tokens 8 --seed 3 > "$dir/g_hf" 2> "$dir/err"
grep -q "^Hello" "$dir/g_hf" || fail "generate --model printed: $(cat "$dir/g_hf")"
grep -q "active per token" "$dir/err" || fail "no parameter accounting: $(cat "$dir/err")"
grep -q "tokens/s" "$dir/err" || fail "no speed line: $(cat "$dir/err")"
"$moe" convert "$dir/run" --to hf --dtype bf16 --out "$dir/hf16" > "$dir/conv"
"$moe" generate --model "$dir/hf16" --prompt "Hello" --max-new-tokens 4 > /dev/null 2> "$dir/err"
grep -q "weights BF16" "$dir/err" || fail "bf16 checkpoint: $(cat "$dir/err")"
# transformers v5's fused expert tensors: the same text from the same weights.
"$moe" convert "$dir/run" --to hf --layout fused --out "$dir/hf_fused" > "$dir/conv"
grep -q "fused experts" "$dir/conv" || fail "convert --layout fused printed: $(cat "$dir/conv")"
"$moe" generate --model "$dir/hf_fused" --prompt "Hello" --max-new-tokens 8 --seed 3 > "$dir/g_fused" 2> /dev/null
cmp -s "$dir/g_hf" "$dir/g_fused" || fail "fused layout generates other text: $(cat "$dir/g_fused")"
if "$moe" convert "$dir/run" --to hf --layout stacked --out "$dir/x" 2> "$dir/err"; then fail "bad --layout accepted"; fi
grep -q "layout" "$dir/err" || fail "unexpected error: $(cat "$dir/err")"
"$moe" convert "$dir/run" --to gguf --out "$dir/run.gguf" > "$dir/conv"
[[ $(head -c 4 "$dir/run.gguf") == "GGUF" ]] || fail "convert --to gguf wrote no GGUF file"
# A config with an unknown model_type: one line naming the file and the key.
sed -i 's/"model_type": "mixtral"/"model_type": "jamba"/' "$dir/hf/config.json"
if "$moe" generate --model "$dir/hf" --prompt-ids 1,2 2> "$dir/err"; then fail "unknown model_type accepted"; fi
grep -q "config.json: model_type \"jamba\"" "$dir/err" || fail "unexpected error: $(cat "$dir/err")"
[[ $(wc -l < "$dir/err") -eq 1 ]] || fail "error is not one line: $(cat "$dir/err")"

# A truncated weights file: one line naming the file.
head -c 1000 "$dir/run/model.safetensors" > "$dir/trunc.safetensors"
mv "$dir/trunc.safetensors" "$dir/run/model.safetensors"
if "$moe" eval "$dir/run" 2> "$dir/err"; then fail "truncated weights accepted"; fi
grep -q "model.safetensors" "$dir/err" || fail "error does not name the file: $(cat "$dir/err")"
[[ $(wc -l < "$dir/err") -eq 1 ]] || fail "error is not one line: $(cat "$dir/err")"
echo "cli_smoke: ok"
