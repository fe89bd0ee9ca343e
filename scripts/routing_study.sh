#!/usr/bin/env bash
# The README's routing study: six routing variants of configs/small.json, two seeds each,
# trained on the bundled corpus and compared with `moe compare` (validation on the whole
# validation split, so differences between variants are not sampling noise of a few batches).
# Usage: scripts/routing_study.sh [OUT_DIR] [STEPS]   (default runs/study, 300 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/study}
steps=${2:-300}
moe=${MOE:-build/moe}
[[ -x "$moe" ]] || { echo "routing_study: build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$out/configs"

# name -> the keys it sets on top of configs/small.json
declare -A variants=(
  [top2]='{}'
  [top1]='{"num_experts_per_tok": 1}'
  [aux0]='{"router_aux_loss_coef": 0.0}'
  [cap1-drop]='{"capacity_factor": 1.0, "overflow": "drop"}'
  [cap1-reroute]='{"capacity_factor": 1.0, "overflow": "reroute"}'
  [auxfree]='{"router_aux_loss_coef": 0.0, "use_selection_bias": true, "bias_update_rate": 0.001}'
)
runs=()
for name in top2 top1 aux0 cap1-drop cap1-reroute auxfree; do
  cfg="$out/configs/$name.json"
  /usr/bin/python3 - "$cfg" "${variants[$name]}" "$steps" "$PWD/data" <<'PY'
import json, sys
path, extra, steps, data_dir = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = json.load(open("configs/small.json"))
c.update(extra)
c["training"].update({"max_steps": steps, "eval_batches": 0, "data_dir": data_dir})
json.dump(c, open(path, "w"), indent=2)
PY
  for seed in 1 2; do
    run="$out/$name-s$seed"
    if [[ ! -f "$run/summary.json" ]]; then
      rm -rf "$run"
      echo "routing_study: $name seed $seed" >&2
      "$moe" train --config "$cfg" --out "$run" --seed "$seed" --no-progress > "$out/$name-s$seed.log" 2>&1
    fi
    runs+=("$run")
  done
done
"$moe" compare "${runs[@]}" --out "$out/compare.html"
