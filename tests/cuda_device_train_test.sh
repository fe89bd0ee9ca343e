#!/usr/bin/env bash
# `moe train --device cuda` end to end, with the CUDA backend on the CPU emulator
# (tests/cuda_emu): the run directory is complete, the first losses match the CPU's to bf16
# precision, a resumed run repeats the uninterrupted one step for step (weights, selection
# biases and AdamW state go through the CPU checkpoint and back), eval reads the result,
# unsupported keys are refused before anything is written, and a CPU-only build says it has
# no CUDA. Usage: tests/cuda_device_train_test.sh path/to/moe_cli_emulated path/to/moe
set -euo pipefail
emu=$1
cpu=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "cuda_device_train: $*" >&2; exit 1; }
step_losses() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    j = json.loads(line)
    if "loss" in j: print(j["step"], repr(j["loss"]))' "$1"; }

cat > "$dir/tiny.json" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
 "router_aux_loss_coef": 0.01,
 "training": {"max_steps": 6, "batch_size": 2, "seq_len": 32, "eval_every": 3,
              "eval_batches": 2, "checkpoint_every": 2, "grad_accum_steps": 2,
              "tokenizer": "byte", "data_dir": "$dir/data"}}
JSON

"$cpu" train --config "$dir/tiny.json" --out "$dir/cpu" --steps 6 --no-progress > /dev/null
"$emu" train --config "$dir/tiny.json" --out "$dir/gpu" --steps 6 --device cuda --no-progress \
  > /dev/null 2> "$dir/log"
grep -q "training steps run on cuda (moe CPU emulator" "$dir/log" || fail "no device line: $(cat "$dir/log")"
for f in config.json model.safetensors checkpoint.safetensors metrics.jsonl report.md summary.json; do
  [[ -s "$dir/gpu/$f" ]] || fail "missing $f"
done
[[ $(grep -c '"loss"' "$dir/gpu/metrics.jsonl") -eq 6 ]] || fail "expected 6 step lines"
grep -q '"expert_load"' "$dir/gpu/metrics.jsonl" || fail "no routing metrics from the device"
grep -q '"val_loss"' "$dir/gpu/metrics.jsonl" || fail "no validation line"

# Same data, same initial weights: the device's losses follow the CPU's within bf16 rounding of
# the experts (the rest is fp32 on both).
python3 - "$dir/cpu/metrics.jsonl" "$dir/gpu/metrics.jsonl" <<'PY' || fail "losses differ from the CPU's"
import json, sys
def losses(p):
    return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l]
c, g = losses(sys.argv[1]), losses(sys.argv[2])
for i, (a, b) in enumerate(zip(c, g)):
    tol = 2e-3 if i == 0 else 2e-2
    if abs(a - b) > tol * abs(a):
        sys.exit(f"step {i + 1}: cpu {a} cuda {b}")
PY

# Stopped after 4 steps and resumed: steps 5 and 6 repeat the uninterrupted run bit for bit.
"$emu" train --config "$dir/tiny.json" --out "$dir/part" --stop-after 4 --device cuda \
  --no-progress > /dev/null 2>&1
[[ $(grep -c '"loss"' "$dir/part/metrics.jsonl") -eq 4 ]] || fail "--stop-after 4 did not stop at 4"
"$emu" train --config "$dir/tiny.json" --out "$dir/part" --resume --steps 6 --device cuda \
  --no-progress > /dev/null 2>&1
diff <(step_losses "$dir/gpu/metrics.jsonl") <(step_losses "$dir/part/metrics.jsonl") ||
  fail "the resumed run differs from the uninterrupted one"

"$emu" eval "$dir/gpu" --batches 4 > "$dir/eval"
grep -q "validation loss" "$dir/eval" || fail "eval printed: $(cat "$dir/eval")"

# A key the CUDA backend does not run: one error line naming it, no run directory written.
sed 's/"num_experts_per_tok": 2,/"num_experts_per_tok": 2, "noisy_gating": true,/' \
  "$dir/tiny.json" > "$dir/noisy.json"
if "$emu" train --config "$dir/noisy.json" --out "$dir/noisy" --device cuda 2> "$dir/err"; then
  fail "noisy gating accepted on the device"
fi
grep -q "noisy_gating" "$dir/err" || fail "unexpected error: $(cat "$dir/err")"
[[ $(wc -l < "$dir/err") -eq 1 ]] || fail "error is not one line: $(cat "$dir/err")"
[[ ! -e "$dir/noisy/metrics.jsonl" ]] || fail "a refused run wrote metrics"

# The CPU-only build.
if "$cpu" train --config "$dir/tiny.json" --out "$dir/nocuda" --device cuda 2> "$dir/err"; then
  fail "a CPU-only build accepted --device cuda"
fi
grep -q "built without the CUDA backend" "$dir/err" || fail "unexpected error: $(cat "$dir/err")"
echo "cuda_device_train: ok"
