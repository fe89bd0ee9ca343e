#!/usr/bin/env bash
# Expert parallelism in training: 20 steps of a tiny MoE (capacity 1.0, so tokens are
# dropped) in one process and under mpirun with -np 2 / P=2 and -np 4 / P=2 (two replicas)
# must give the same losses (relative 1e-4); the gathered model.safetensors loads in one
# process; a wrong launch is one error line and a clean exit of every rank.
# Usage: tests/dist_train_test.sh path/to/moe path/to/mpiexec
set -euo pipefail
moe=$1
mpirun=("$2" --oversubscribe --allow-run-as-root)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "dist_train_test: $*" >&2; exit 1; }
export OMP_NUM_THREADS=1

cat > "$dir/tiny.json" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
 "capacity_factor": 1.0,
 "training": {"max_steps": 20, "batch_size": 4, "seq_len": 32, "eval_every": 10,
              "eval_batches": 2, "checkpoint_every": 10, "tokenizer": "byte",
              "data_dir": "$dir/data", "warmup_steps": 5}}
JSON
losses() { grep '"loss"' "$1/metrics.jsonl" | sed -E 's/.*"loss":([-0-9.eE+]+).*/\1/'; }

"$moe" train --config "$dir/tiny.json" --out "$dir/one" --no-progress > /dev/null 2>&1 ||
  fail "one-process run failed"
for layout in "2 2" "4 2"; do
  set -- $layout
  out="$dir/np$1_p$2"
  "${mpirun[@]}" -np "$1" "$moe" train --config "$dir/tiny.json" --out "$out" --no-progress \
    --expert-parallel "$2" > "$out.log" 2>&1 || fail "mpirun -np $1 --expert-parallel $2: $(tail -3 "$out.log")"
  paste <(losses "$dir/one") <(losses "$out") | awk -v tag="np $1 P $2" '
    { n++; d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > worst) worst = r }
    END { if (n != 20) { print tag ": " n " steps, expected 20"; exit 1 }
          printf "dist_train_test: %s: 20 losses equal one process (max relative difference %.1e)\n", tag, worst
          if (worst > 1e-4) exit 1 }' || fail "losses differ"
  grep -q '"a2a_sent_bytes"' "$out/metrics.jsonl" || fail "no all-to-all volume in metrics.jsonl"
  [[ -s "$out/checkpoint-rank1-of-$1.safetensors" ]] || fail "no per-rank checkpoint"
done
# Part of the model training (`training.trainable`): the frozen tensors are left out of the
# gradient norm in one process and under expert parallelism alike, so the norms agree. The first
# 5 steps, to 1e-6: later the two float trajectories drift apart (with capacity 1.0 one flipped
# drop moves a norm by 1e-3 while the losses stay within 1e-5); a frozen tensor counted in one
# of them moves the norm by far more (21x here).
sed 's/"warmup_steps": 5}/"warmup_steps": 5, "trainable": "experts,routers"}/' "$dir/tiny.json" \
  > "$dir/part.json"
grep -q '"trainable"' "$dir/part.json" || fail "could not write part.json"
norms() { grep '"grad_norm"' "$1/metrics.jsonl" | sed -E 's/.*"grad_norm":([-0-9.eE+]+).*/\1/'; }
"$moe" train --config "$dir/part.json" --out "$dir/part_one" --no-progress > /dev/null 2>&1 ||
  fail "one-process run of part.json failed"
"${mpirun[@]}" -np 2 "$moe" train --config "$dir/part.json" --out "$dir/part_np2" --no-progress \
  --expert-parallel 2 > "$dir/part_np2.log" 2>&1 || fail "part.json under mpirun: $(tail -3 "$dir/part_np2.log")"
paste <(norms "$dir/part_one") <(norms "$dir/part_np2") | awk '
  { n++; d = $1 - $2; if (d < 0) d = -d; r = d / $1; if (n <= 5 && r > worst) worst = r }
  END { if (n != 20) { print "frozen parts: " n " norms, expected 20"; exit 1 }
        printf "dist_train_test: frozen parts: the first 5 gradient norms equal one process (max relative difference %.1e)\n", worst
        if (worst > 1e-6) exit 1 }' || fail "gradient norms differ with frozen parts"

# The gathered weights are the whole model: one process evaluates them like the original.
a=$("$moe" eval "$dir/one" --batches 2 2>/dev/null | head -1 | sed 's/^[^:]*://')
b=$("$moe" eval "$dir/np4_p2" --batches 2 2>/dev/null | head -1 | sed 's/^[^:]*://')
[[ "$a" == "$b" ]] || fail "eval differs: '$a' vs '$b'"

# Wrong launches: one line from rank 0, every rank gone (no hang: the timeout would fire).
if timeout 60 "${mpirun[@]}" -np 3 "$moe" train --config "$dir/tiny.json" --out "$dir/bad" \
  --expert-parallel 2 > /dev/null 2> "$dir/err"; then fail "-np 3 with P=2 accepted"; fi
[[ $(grep -c "moe: error:" "$dir/err") -eq 1 ]] || fail "expected one error line: $(cat "$dir/err")"
grep -q "does not divide the 3 processes" "$dir/err" || fail "unexpected: $(cat "$dir/err")"
if timeout 60 "${mpirun[@]}" -np 4 "$moe" train --config "$dir/tiny.json" --out "$dir/bad" \
  --expert-parallel 8 > /dev/null 2> "$dir/err"; then fail "P=8 with 4 experts accepted"; fi
grep -q "does not divide the 4 processes\|does not divide num_local_experts" "$dir/err" ||
  fail "unexpected: $(cat "$dir/err")"
sed 's/"hidden_size": 32/"hidden_size": 48/' "$dir/tiny.json" > "$dir/other.json"
if timeout 60 "${mpirun[@]}" -np 1 "$moe" train --config "$dir/tiny.json" --out "$dir/bad" \
  --expert-parallel 2 : -np 1 "$moe" train --config "$dir/other.json" --out "$dir/bad" \
  --expert-parallel 2 > /dev/null 2> "$dir/err"; then fail "mismatched configs accepted"; fi
grep -q "config differs between ranks" "$dir/err" || fail "unexpected: $(cat "$dir/err")"
echo "dist_train_test: ok"
