#!/usr/bin/env bash
# Fine-tuning end to end: `moe train --init-from` each Hugging Face family fixture
# (tests/fixtures/hf/) on a small text with the model's own tokenizer; the loss falls, the
# memory line is printed, `convert --to hf` writes the same family back and `moe generate
# --model` runs it. Then --train (frozen parts), a --config that contradicts the model, and
# `moe train --config` of a Hugging Face family config.json (random init).
# Usage: tests/finetune_cli.sh path/to/moe path/to/tests/fixtures
set -euo pipefail
moe=$1
fixtures=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "finetune_cli: $*" >&2; exit 1; }

# A byte-level BPE tokenizer.json of 28 single-character tokens (space is GPT-2's "Ġ",
# newline "Ċ"): it fits the fixtures' 96-row embeddings.
vocab='"Ġ": 3, "Ċ": 4, "."'": 5"
id=6
for c in a b c d e f g h i j k l m n o p q r s t u v w x y z; do
  vocab="$vocab, \"$c\": $id"
  id=$((id + 1))
done
tokenizer='{"version": "1.0", "added_tokens": [], "normalizer": null,
 "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
 "post_processor": null,
 "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
 "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
           "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
           "ignore_merges": false, "vocab": {'"$vocab"'}, "merges": []}}'

mkdir "$dir/text"  # one document per file, for the train / validation split
for i in $(seq 1 20); do
  for j in $(seq 1 4); do
    printf 'the cat sat on the mat. the dog ran to the cat.\na bird sang in the tree.\n'
  done > "$dir/text/$i.txt"
done
cat > "$dir/ft.json" <<JSON
{"router_aux_loss_coef": 0.01,
 "training": {"max_steps": 12, "batch_size": 4, "seq_len": 32, "learning_rate": 0.01,
              "warmup_steps": 2, "eval_every": 0, "eval_batches": 2, "checkpoint_every": 0,
              "data_dir": "$dir/cache", "valid_fraction": 0.1}}
JSON

first_last_loss() {  # the training loss of the first and the last step in metrics.jsonl
  grep '"grad_norm"' "$1" | sed -n 's/.*"loss":\([0-9.eE+-]*\).*/\1/p' | sed -n '1p;$p'
}

for fam in mixtral qwen2_moe qwen3_moe olmoe; do
  cp -r "$fixtures/hf/$fam" "$dir/$fam"
  echo "$tokenizer" > "$dir/$fam/tokenizer.json"
  "$moe" train --init-from "$dir/$fam" --data "$dir/text" --config "$dir/ft.json" \
    --out "$dir/run_$fam" --no-progress > "$dir/out" 2> "$dir/log" ||
    fail "$fam: train failed: $(cat "$dir/log")"
  grep -q "memory: .* MB: weights .* gradients .* AdamW moments .* activations .*MemAvailable" \
    "$dir/log" || fail "$fam: no memory line: $(cat "$dir/log")"
  read -r l0 l1 <<< "$(first_last_loss "$dir/run_$fam/metrics.jsonl" | tr '\n' ' ')"
  awk -v a="$l0" -v b="$l1" 'BEGIN { exit !(b < a - 0.1) }' ||
    fail "$fam: the loss did not fall: $l0 -> $l1"
  echo "$fam: training loss $l0 -> $l1"
  grep -q "\"model_type\": \"$fam\"" "$dir/run_$fam/config.json" || fail "$fam: run config"
  "$moe" convert "$dir/run_$fam" --to hf --out "$dir/hf_$fam" > "$dir/out" 2>&1 ||
    fail "$fam: convert failed: $(cat "$dir/out")"
  grep -q "model_type $fam" "$dir/out" || fail "$fam: converted to another family: $(cat "$dir/out")"
  "$moe" generate --model "$dir/hf_$fam" --prompt "the cat" --max-new-tokens 8 --temperature 0 \
    > "$dir/gen" 2> "$dir/glog" || fail "$fam: generate failed: $(cat "$dir/glog")"
  grep -q "^the cat" "$dir/gen" || fail "$fam: no continuation: $(cat "$dir/gen")"
done

# --train routers: the experts of the result equal the starting model's.
"$moe" train --init-from "$dir/qwen2_moe" --data "$dir/text" --config "$dir/ft.json" \
  --train routers --out "$dir/run_routers" --no-progress > "$dir/out" 2> "$dir/log" ||
  fail "--train routers failed: $(cat "$dir/log")"
grep -q "memory: .*M of .*M parameters train" "$dir/log" || fail "no trainable count: $(cat "$dir/log")"
grep -q '"trainable": "routers"' "$dir/run_routers/config.json" || fail "trainable not recorded"

# A --config that changes the model's shape: one line naming the key.
echo '{"hidden_size": 64}' > "$dir/shape.json"
if "$moe" train --init-from "$dir/olmoe" --data "$dir/text" --config "$dir/shape.json" \
  --out "$dir/run_bad" --no-progress > "$dir/out" 2> "$dir/log"; then
  fail "a contradicting hidden_size was accepted"
fi
grep -q "shape.json: hidden_size = 64 contradicts the model's 48" "$dir/log" ||
  fail "unclear refusal: $(cat "$dir/log")"

# A Hugging Face family config.json as --config: that architecture, random weights.
"$moe" train --config "$fixtures/hf/qwen2_moe/config.json" --data "$dir/text" --tokenizer byte \
  --data-dir "$dir/cache" --steps 2 --out "$dir/run_hf_config" --no-progress > "$dir/out" 2> "$dir/log" ||
  fail "--config of a qwen2_moe config.json failed: $(cat "$dir/log")"
grep -q '"model_type": "qwen2_moe"' "$dir/run_hf_config/config.json" || fail "not qwen2_moe"
grep -q '"attention_bias": true' "$dir/run_hf_config/config.json" || fail "no q/k/v biases"
echo "finetune_cli: ok"
