#!/usr/bin/env bash
# Two builds of moe side by side in one run, for a change that must not move speed (a refactor):
#   bench/ab_builds.sh OLD_BIN_DIR NEW_BIN_DIR RUN_DIR [CHECKPOINT_DIR]
# Each BIN_DIR holds `moe` and `bench_layer` (a build's top folder and bench/ flattened, or a
# folder you copied them to). Rounds alternate old, new (ROUNDS, default 3) so that load on the
# host hits both alike; printed: the medians of each side and new/old.
#   layer: bench_layer's MoE fwd+bwd (fp32 and bf16) and dense fwd+bwd, ms per step
#   decode: `moe generate` tokens/s on RUN_DIR (a trained run), and on CHECKPOINT_DIR (a Hugging
#           Face checkpoint) when given; THREADS (default 2), 32-token prompt.
set -euo pipefail
old=${1:?old bin dir}
new=${2:?new bin dir}
run=${3:?run dir}
ckpt=${4:-}
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
export OMP_NUM_THREADS=$threads OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ids=$(python3 -c "print(','.join(str(3 + i * 37 % 250) for i in range(32)))")
filter='^(MoE/fwdbwd/d512|MoE-bf16/fwdbwd/d512|MoE/fwdbwd/d1024_ffn704|Dense/fwdbwd)'
for r in $(seq "$rounds"); do
  for side in old new; do
    dir=${!side}
    # bench_layer repeats each case 3 times and reports the median (ms).
    "$dir/bench_layer" --benchmark_filter="$filter" --benchmark_format=csv 2>/dev/null |
      awk -F, -v s="$side" '$1 ~ /_median"?$/ {gsub(/"/, "", $1); sub(/\/min_time.*/, "", $1);
        print s, "layer", $1, $3}' >> "$tmp/res"
    "$dir/moe" generate "$run" --prompt-ids "$ids" --max-new-tokens 200 --seed 7 \
      --threads "$threads" > /dev/null 2> "$tmp/err"
    echo "$side decode run $(grep -o 'then [0-9]* tokens at [0-9.]* tokens/s' "$tmp/err" | awk '{print $5}')" >> "$tmp/res"
    if [[ -n $ckpt ]]; then
      "$dir/moe" generate --model "$ckpt" --prompt-ids "$ids" --max-new-tokens 32 \
        --temperature 0 --threads "$threads" > /dev/null 2> "$tmp/err"
      echo "$side decode checkpoint $(grep -o 'then [0-9]* tokens at [0-9.]* tokens/s' "$tmp/err" | awk '{print $5}')" >> "$tmp/res"
    fi
  done
done
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
printf '%-52s %12s %12s %8s\n' "what ($rounds rounds, $threads threads)" old new new/old
awk '{print $2, $3}' "$tmp/res" | sort -u | while read -r kind name; do
  o=$(awk -v k="$kind" -v n="$name" '$1 == "old" && $2 == k && $3 == n {print $4}' "$tmp/res" | median)
  n=$(awk -v k="$kind" -v n="$name" '$1 == "new" && $2 == k && $3 == n {print $4}' "$tmp/res" | median)
  unit=$([[ $kind == layer ]] && echo "ms" || echo "tok/s")
  printf '%-52s %12.2f %12.2f %8.3f\n' "$kind $name ($unit)" "$o" "$n" "$(echo "$n / $o" | bc -l)"
done
