#!/usr/bin/env bash
# The ViT-MoE experiments of the README ("Vision MoE"): runs them two at a time, one thread
# each (on a small shared machine one OpenMP thread per process is much faster than two), and
# prints the table. Usage: scripts/vit_experiments.sh [BUILD_DIR] [OUT_DIR]
#   1. capacity_factor 0.5 in training and test: batch-priority routing vs routing by position,
#      the same seeds (V-MoE, Riquelme et al. 2021, Fig. 5)
#   2. dense vs top-2 MoE (capacity 1.0, BPR) vs Soft MoE vs expert choice at equal active
#      compute (32 expert rows per 16-patch image, see README) and equal steps
set -euo pipefail
build=${1:-build}
out=${2:-runs/vit-exp}
moe="$build/moe"
mkdir -p "$out"

# Derived configs: configs/vit-moe.json with capacity 0.5 and either drop policy.
for policy in batch_priority position; do
  /usr/bin/python3 - "$policy" "$out/c05-$policy.json" <<'PY'
import json, sys
c = json.load(open("configs/vit-moe.json"))
c["capacity_factor"] = 0.5
c["drop_policy"] = sys.argv[1]
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
done

bpr_seeds=${BPR_SEEDS:-1 2 3}
cmp_seeds=${CMP_SEEDS:-1 2}
jobs_list=()
for seed in $bpr_seeds; do
  for policy in batch_priority position; do
    jobs_list+=("$out/c05-$policy.json c05-$policy-s$seed $seed")
  done
done
for seed in $cmp_seeds; do
  for name in dense moe soft-moe expert-choice; do
    jobs_list+=("configs/vit-$name.json $name-s$seed $seed")
  done
done

run_one() {
  local cfg=$1 name=$2 seed=$3
  if [[ -f "$out/$name/summary.json" ]]; then return; fi  # finished earlier: keep it
  "$moe" train --config "$cfg" --out "$out/$name" --seed "$seed" --threads 1 --no-progress \
    > "$out/$name.log" 2>&1
  echo "done $name: $(tail -n 1 "$out/$name.log")"
}
i=0
for j in "${jobs_list[@]}"; do
  set -- $j
  [[ -f "$out/$2/summary.json" ]] && continue
  # shellcheck disable=SC2086
  run_one $j &
  i=$((i + 1))
  if ((i % 2 == 0)); then wait; fi
done
wait

echo
printf "%-26s %10s %10s %10s\n" run test_acc dropped seconds
for j in "${jobs_list[@]}"; do
  set -- $j
  /usr/bin/python3 - "$out/$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
print("%-26s %10.4f %10.3f %10.1f" % (sys.argv[1].split("/")[-1], s["test_accuracy"],
      s["test_dropped_fraction"], s["train_seconds"]))
PY
done
