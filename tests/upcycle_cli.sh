#!/usr/bin/env bash
# `moe upcycle` end to end: a dense run trained on the bundled corpus and a dense Hugging Face
# fixture become MoE checkpoints that `moe generate --model` runs and that continue greedily as
# the dense models do; upcycled llama, qwen2 and qwen3 fixtures fine-tune with `moe train
# --init-from`; bad input is one line with exit status 1, and DENSE is never written.
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
"$moe" train --config "$dir/tiny.json" --dense --out "$dir/dense" --no-progress > /dev/null 2>&1
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

# The upcycled Hugging Face families fine-tune with `moe train --init-from` (their tokenizer
# copied along: a byte-level BPE of 28 single-character tokens that fits the 96-row embeddings).
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
mkdir "$dir/text"
for i in $(seq 1 20); do
  printf 'the cat sat on the mat. the dog ran to the cat.\na bird sang in the tree.\n' > "$dir/text/$i.txt"
done
cat > "$dir/ft.json" <<JSON
{"training": {"max_steps": 4, "batch_size": 2, "seq_len": 16, "warmup_steps": 1,
              "eval_every": 0, "eval_batches": 1, "checkpoint_every": 0,
              "data_dir": "$dir/cache", "valid_fraction": 0.1}}
JSON
for fam in llama qwen2 qwen3; do
  cp -r "$fixtures/hf/$fam" "$dir/dense_$fam"
  echo "$tokenizer" > "$dir/dense_$fam/tokenizer.json"
  "$moe" upcycle "$dir/dense_$fam" --experts 4 --top-k 2 --granularity 2 --out "$dir/up_$fam" > /dev/null
  cmp -s "$dir/dense_$fam/tokenizer.json" "$dir/up_$fam/tokenizer.json" || fail "$fam: tokenizer not copied"
  "$moe" train --init-from "$dir/up_$fam" --data "$dir/text" --config "$dir/ft.json" \
    --out "$dir/ft_$fam" --no-progress > /dev/null 2> "$dir/log" ||
    fail "$fam: fine-tuning the upcycled checkpoint failed: $(tail -n 3 "$dir/log")"
  [[ -s "$dir/ft_$fam/model.safetensors" ]] || fail "$fam: no fine-tuned weights"
done

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
