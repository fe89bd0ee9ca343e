#!/usr/bin/env bash
# Sparse upcycling at this machine's scale (README "Sparse upcycling"), after Komatsuzaki et al.
# 2022: a dense model trained here, upcycled to 8 experts top-2 and trained on, against the same
# dense model trained on for the same steps and an MoE trained from scratch for the whole budget.
#
#   1. dense      `moe train --dense --match-active-compute` for DENSE_STEPS: the default MoE's
#                 dense baseline (FFN width 2 x 512, the two active experts' compute)
#   2. upcycle    `moe upcycle dense --experts 8 --top-k 2 --granularity G` (G = 2 by default:
#                 8 experts of width 512, the default MoE's shape, each token's two experts one
#                 whole copy of the dense MLP, so it starts from the dense function)
#   3. upcycled   `moe train --init-from upcycled` for EXTRA_STEPS
#   4. dense+     `moe train --init-from dense` for EXTRA_STEPS (same schedule as 3)
#   5. scratch    the default MoE for DENSE_STEPS + EXTRA_STEPS
# and prints the validation loss of the three at every evaluation as one table (steps counted
# from the start of the dense run; 3 and 4 start at DENSE_STEPS). The same bundled corpus,
# tokenizer, seed and batch of 8 x 256 tokens everywhere.
#
# Full size (the default; about 20-30 minutes on 2 idle cores):
#   scripts/upcycle_experiment.sh [OUT_DIR]
# Tiny (seconds; a 2-layer model of width 32 on the byte tokenizer, to check the script):
#   TINY=1 scripts/upcycle_experiment.sh /tmp/upcycle_tiny
# Knobs (environment): DENSE_STEPS (600), EXTRA_STEPS (600), EVAL_EVERY (100), GRANULARITY (2),
# LR_CONTINUE (the continued runs' peak learning rate; default: the config's), DATA (a corpus of
# yours instead of the bundled one), MOE (the binary, default build/moe).
#
# Steps 3 and 4 use `moe train --init-from MODEL --config FILE --out DIR` (part A of issue 20):
# the model from MODEL, the training settings from FILE. A `moe` without --init-from runs 1, 2
# and 5 and says so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-runs/upcycle_experiment}
moe=${MOE:-$root/build/moe}
py=/usr/bin/python3
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [[ -n "${TINY:-}" ]]; then
  dense_steps=${DENSE_STEPS:-6}
  extra_steps=${EXTRA_STEPS:-6}
  eval_every=${EVAL_EVERY:-3}
  base="$out/base.json"
  cat > "$base" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 16,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 8, "num_experts_per_tok": 2,
 "training": {"batch_size": 2, "seq_len": 32, "warmup_steps": 2, "eval_batches": 2,
              "checkpoint_every": 0, "tokenizer": "byte"}}
JSON
else
  dense_steps=${DENSE_STEPS:-600}
  extra_steps=${EXTRA_STEPS:-600}
  eval_every=${EVAL_EVERY:-100}
  base="$root/configs/default.json"
fi
granularity=${GRANULARITY:-2}
total=$((dense_steps + extra_steps))

# One config per phase: the base with its step count, evaluation interval and shared data cache.
phase_config() {  # name steps
  "$py" - "$base" "$out/$1.json" "$2" "$eval_every" "$out/data" "${LR_CONTINUE:-}" "$1" <<'PY'
import json, sys
base, path, steps, every, data_dir, lr, name = sys.argv[1:]
c = json.load(open(base))
t = c.setdefault("training", {})
t.update(max_steps=int(steps), eval_every=int(every), checkpoint_every=0, data_dir=data_dir)
if name == "continue":
    # With --init-from the model comes from MODEL: the file holds the training settings and the
    # z-loss the from-scratch MoE trains with (a loaded Hugging Face family has none).
    if lr:
        t["learning_rate"] = float(lr)
    t.pop("tokenizer", None)  # the model's own
    c = {"training": t, "router_z_loss_coef": c.get("router_z_loss_coef", 0.001)}
json.dump(c, open(path, "w"), indent=2)
PY
}
data_args=()
[[ -n "${DATA:-}" ]] && data_args=(--data "$DATA")
train() {  # name, then the arguments of moe train
  local name=$1
  shift
  if [[ -f "$out/$name/summary.json" ]]; then
    echo "== $name: done already ($out/$name)"
    return
  fi
  rm -rf "${out:?}/$name"
  echo "== $name: moe train $*"
  "$moe" train "$@" "${data_args[@]}" --out "$out/$name" --no-progress > "$out/$name.log" 2>&1 ||
    { tail -n 5 "$out/$name.log"; exit 1; }
  grep "validation loss" "$out/$name.log" | tail -n 1
}

phase_config dense "$dense_steps"
phase_config scratch "$total"
phase_config continue "$extra_steps"

train dense --config "$out/dense.json" --dense --match-active-compute
if [[ ! -d "$out/upcycled_init" ]]; then
  "$moe" upcycle "$out/dense" --experts 8 --top-k 2 --granularity "$granularity" --seed 1 \
    --out "$out/upcycled_init"
fi
if "$moe" train --help | grep -q -- "--init-from"; then
  train upcycled --config "$out/continue.json" --init-from "$out/upcycled_init"
  train dense_continued --config "$out/continue.json" --init-from "$out/dense"
else
  echo "== this moe train has no --init-from (part A of issue 20): the upcycled and continued" \
    "dense runs are skipped"
fi
train scratch --config "$out/scratch.json"

# The table: validation loss at each evaluation, steps from the start of the dense run.
"$py" - "$out" "$dense_steps" <<'PY'
import json, os, sys
out, offset = sys.argv[1], int(sys.argv[2])

def val(run, shift=0):
    path = os.path.join(out, run, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    losses = {}
    for line in open(path):
        j = json.loads(line)
        if "val_loss" in j:
            losses[j["step"] + shift] = j["val_loss"]
    return losses

dense, scratch = val("dense"), val("scratch")
up, cont = val("upcycled", offset), val("dense_continued", offset)
steps = sorted(set(dense) | set(scratch) | set(up) | set(cont))
print("| step | dense, then dense continued | dense, then upcycled (8 experts top-2) | MoE from scratch |")
print("|---:|---:|---:|---:|")
fmt = lambda v: "%.4f" % v if v is not None else ""
for s in steps:
    before = dense.get(s) if s <= offset else None
    print("| %d | %s | %s | %s |" % (s, fmt(before if before is not None else cont.get(s)),
                                     fmt(before if before is not None else up.get(s)),
                                     fmt(scratch.get(s))))
PY
