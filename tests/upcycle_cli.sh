#!/usr/bin/env bash
# `moe upcycle` end to end: a dense run trained on the bundled corpus and a dense Hugging Face
# fixture become MoE checkpoints that `moe generate --model` runs and that continue greedily as
# the dense models do; bad input is one line with exit status 1, and DENSE is never written.
# Usage: tests/upcycle_cli.sh path/to/moe tests/fixtures
set -euo pipefail
moe=$1
fixtures=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "upcycle_cli: $*" >&2; exit 1; }

cat > "$dir/tiny.json" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
 "training": {"max_steps": 3, "batch_size": 2, "seq_len": 32, "eval_every": 0,
              "eval_batches": 2, "checkpoint_every": 0, "tokenizer": "byte",
              "data_dir": "$dir/data"}}
JSON
"$moe" train --config "$dir/tiny.json" --dense --out "$dir/dense" --no-progress > /dev/null
sums() { (cd "$1" && find . -type f -exec sha256sum {} + | sort); }
sums "$dir/dense" > "$dir/dense.sums"

"$moe" upcycle "$dir/dense" --experts 4 --top-k 2 --out "$dir/moe" > "$dir/out"
grep -q "model_type mixtral from the dense run" "$dir/out" || fail "unexpected output: $(cat "$dir/out")"
grep -q "computes the dense model's function" "$dir/out" || fail "no identity line: $(cat "$dir/out")"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [[ -s "$dir/moe/$f" ]] || fail "missing $f"
done
# Greedy continuations (token ids: the two print undecodable bytes differently) of the dense
# run and its upcycled checkpoint agree.
"$moe" generate "$dir/dense" --prompt-ids 256,84,104,101,32 --max-new-tokens 12 \
  --temperature 0 > "$dir/dense.txt" 2> /dev/null
"$moe" generate --model "$dir/moe" --prompt-ids 256,84,104,101,32 --max-new-tokens 12 \
  --temperature 0 > "$dir/moe.txt" 2> /dev/null
[[ -s "$dir/moe.txt" ]] || fail "generate --model printed nothing"
cmp -s "$dir/dense.txt" "$dir/moe.txt" ||
  fail "greedy text differs: $(cat "$dir/dense.txt") vs $(cat "$dir/moe.txt")"

# A Hugging Face dense family, fine-grained: 8 experts of half the width, top-2.
"$moe" upcycle "$fixtures/hf/qwen3" --experts 8 --top-k 2 --granularity 2 --seed 3 \
  --out "$dir/q3" > "$dir/out"
grep -q "model_type qwen3_moe from the qwen3 checkpoint" "$dir/out" || fail "unexpected output: $(cat "$dir/out")"
"$moe" generate --model "$fixtures/hf/qwen3" --prompt-ids 5,17,33,4 --max-new-tokens 8 \
  --temperature 0 > "$dir/a.txt" 2> /dev/null
"$moe" generate --model "$dir/q3" --prompt-ids 5,17,33,4 --max-new-tokens 8 --temperature 0 \
  > "$dir/b.txt" 2> /dev/null
cmp -s "$dir/a.txt" "$dir/b.txt" || fail "qwen3 greedy ids differ: $(cat "$dir/a.txt") vs $(cat "$dir/b.txt")"

# Bad input: one line each, exit status 1, nothing written.
refused() {
  local want=$1
  shift
  if "$moe" upcycle "$@" > /dev/null 2> "$dir/err"; then fail "accepted: $*"; fi
  grep -q -- "$want" "$dir/err" || fail "expected \"$want\", got: $(cat "$dir/err")"
  [[ $(wc -l < "$dir/err") -eq 1 ]] || fail "error is not one line: $(cat "$dir/err")"
}
refused "is a Mixture of Experts already" "$fixtures/hf/mixtral" --experts 8 --top-k 2 --out "$dir/x"
refused "must be a multiple of --granularity" "$dir/dense" --experts 6 --top-k 2 --granularity 4 --out "$dir/x"
refused "top-k = 5" "$dir/dense" --experts 4 --top-k 5 --out "$dir/x"
refused "already exists" "$dir/dense" --experts 4 --top-k 2 --out "$dir/moe"
refused "--experts is required" "$dir/dense" --top-k 2 --out "$dir/x"
[[ ! -e "$dir/x" ]] || fail "a refused upcycle wrote $dir/x"
if ls -a "$dir" | grep -q upcycle-; then fail "a temporary directory was left behind"; fi
sums "$dir/dense" | cmp -s - "$dir/dense.sums" || fail "the dense run was modified"
echo "upcycle_cli: ok"
