#!/usr/bin/env bash
# The MoE against its dense baseline at equal active compute in EQUAL WALL TIME (issue 23; the
# Switch Transformer claim, not only equal steps): the default MoE (8 experts top-2) and
# `--dense --match-active-compute` (FFN width 2 x 512, the two active experts' compute) each
# train for the same number of seconds, and the validation losses are printed at the same
# wall-clock points.
#
#   1. calibrate  each model trains CAL_STEPS steps; its step time is the mean of the step
#                 times after the first (metrics.jsonl elapsed_s)
#   2. train      each model for floor(SECONDS / step time) steps, its own warm-up + cosine
#                 schedule ending at the budget, EVALS evaluations spread over it
#   3. table      validation loss of both at wall-clock points SECONDS/EVALS, 2 SECONDS/EVALS, ...
#                 (each run's last evaluation up to half an interval past it, and its final
#                 one at the last point; training seconds: the time its evaluations took is
#                 taken out of the clock)
# The same bundled corpus, tokenizer, seed and batch of 8 x 256 tokens for both.
#
# Full size (the lead's run on an idle machine; 2 x SECONDS plus calibration):
#   scripts/moe_vs_dense_wall.sh [OUT_DIR]
# Tiny (seconds; a 2-layer model of width 32 on the byte tokenizer, to check the script):
#   TINY=1 scripts/moe_vs_dense_wall.sh /tmp/wall_tiny
# Knobs (environment): SECONDS_BUDGET (600), EVALS (6), CAL_STEPS (8), DATA (a corpus of yours
# instead of the bundled one), MOE (the binary, default build/moe), OMP_NUM_THREADS (2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-runs/moe_vs_dense_wall}
moe=${MOE:-$root/build/moe}
py=/usr/bin/python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [[ -n "${TINY:-}" ]]; then
  budget=${SECONDS_BUDGET:-5}
  cal_steps=${CAL_STEPS:-20}
  base="$out/base.json"
  cat > "$base" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 16,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 64, "num_local_experts": 8, "num_experts_per_tok": 2,
 "training": {"batch_size": 2, "seq_len": 32, "warmup_steps": 2, "eval_batches": 2,
              "checkpoint_every": 0, "tokenizer": "byte"}}
JSON
else
  budget=${SECONDS_BUDGET:-600}
  cal_steps=${CAL_STEPS:-8}
  base="$root/configs/default.json"
fi
evals=${EVALS:-6}
data_args=()
[[ -n "${DATA:-}" ]] && data_args=(--data "$DATA")

# A config: the base with its step count and evaluation interval, the shared data cache.
make_config() {  # path steps eval_every
  "$py" - "$base" "$1" "$2" "$3" "$out/data" <<'PY'
import json, sys
base, path, steps, every, data_dir = sys.argv[1:]
c = json.load(open(base))
t = c.setdefault("training", {})
t.update(max_steps=int(steps), eval_every=int(every), checkpoint_every=0, data_dir=data_dir)
json.dump(c, open(path, "w"), indent=2)
PY
}
train() {  # name, then the arguments of moe train
  local name=$1
  shift
  rm -rf "${out:?}/$name"
  "$moe" train "$@" "${data_args[@]}" --out "$out/$name" --no-progress > "$out/$name.log" 2>&1 ||
    { tail -n 5 "$out/$name.log"; exit 1; }
}
# Mean seconds per step after the first, from a run's metrics.jsonl (the mean, not the median:
# the budget is a sum of steps, pauses included).
step_seconds() {
  "$py" - "$out/$1/metrics.jsonl" <<'PY'
import json, sys
e = [j["elapsed_s"] for j in map(json.loads, open(sys.argv[1])) if "elapsed_s" in j]
print((e[-1] - e[0]) / (len(e) - 1))
PY
}

declare -A flags=([moe]="" [dense]="--dense --match-active-compute")
declare -A steps
for name in moe dense; do
  make_config "$out/cal_$name.json" "$cal_steps" 0
  # shellcheck disable=SC2086
  train "cal_$name" --config "$out/cal_$name.json" ${flags[$name]}
  s=$(step_seconds "cal_$name")
  steps[$name]=$("$py" -c "print(max(2, int($budget / $s)))")
  echo "== $name: $s s/step -> ${steps[$name]} steps in $budget s"
done
for name in moe dense; do
  every=$(( steps[$name] / evals > 0 ? steps[$name] / evals : 1 ))
  make_config "$out/$name.json" "${steps[$name]}" "$every"
  echo "== $name: moe train ${flags[$name]} for ${steps[$name]} steps, evaluating every $every"
  # shellcheck disable=SC2086
  train "$name" --config "$out/$name.json" ${flags[$name]}
done

"$py" - "$out" "$budget" "$evals" <<'PY'
import json, os, statistics, sys
out, budget, evals = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])

def curve(run):
    """[(training seconds, validation loss)] of a run: an evaluation's own time is taken out of
    the clock (the step after it counts the median step time instead)."""
    lines = [json.loads(l) for l in open(os.path.join(out, run, "metrics.jsonl"))]
    steps = [j for j in lines if "elapsed_s" in j]
    deltas = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])]
    med = statistics.median(deltas) if deltas else 0.0
    evaluated = {j["step"] for j in lines if "val_loss" in j}
    clock, t, prev = {}, 0.0, None
    for j in steps:
        if prev is None:
            t = j["elapsed_s"]
        else:
            t += med if prev["step"] in evaluated else j["elapsed_s"] - prev["elapsed_s"]
        clock[j["step"]] = t
        prev = j
    return [(clock[j["step"]], j["val_loss"]) for j in lines if "val_loss" in j]

moe, dense = curve("moe"), curve("dense")
def at(c, t, last):
    # The last evaluation up to half an interval past the point (a schedule ends near, not
    # exactly at, the budget); at the last point each run's final evaluation, the end of its
    # schedule, whatever the clock drifted.
    if last:
        return "%.4f" % c[-1][1] if c else ""
    before = [v for s, v in c if s <= t + 0.5 * budget / evals]
    return "%.4f" % before[-1] if before else ""
print("\nvalidation loss at equal training seconds (both runs %g s):\n" % budget)
print("| seconds | MoE (8 experts top-2) | dense, equal active compute |")
print("|---:|---:|---:|")
for i in range(1, evals + 1):
    t = budget * i / evals
    print("| %.1f | %s | %s |" % (t, at(moe, t, i == evals), at(dense, t, i == evals)))
if not moe or not dense:
    sys.exit("moe_vs_dense_wall: a run has no validation loss")
print("\nfinal: MoE %.4f after %.1f s, dense %.4f after %.1f s (training seconds)" %
      (moe[-1][1], moe[-1][0], dense[-1][1], dense[-1][0]))
PY
