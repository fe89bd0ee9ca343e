#!/usr/bin/env bash
# Prompt processing and decode of two builds of moe side by side on GGUF files (issue 19's
# measurement, bench/quant_vs_llamacpp.py, without llama.cpp):
#   bench/ab_prompt.sh OLD_MOE NEW_MOE FILE.gguf...
# Per file, ROUNDS (default 5) rounds alternate old and new so that load on the host hits both
# alike; each is `moe generate` with the 128-token prompt of quant_vs_llamacpp.py, TOKENS (default
# 65) new tokens, THREADS (default 2). Printed: the median prompt and decode tokens/s of each side
# and new/old. On a host loaded beyond its cores, THREADS=1 compares the kernels without the
# waits of one thread at the barriers for the other, descheduled one. Each side runs with
# --warmup (untimed prefill and step first, as quant_vs_llamacpp.py times) where its build has
# the flag; COLD=1 times the first prompt of a fresh process on both sides instead.
set -euo pipefail
old=${1:?old moe binary}
new=${2:?new moe binary}
shift 2
rounds=${ROUNDS:-5}
threads=${THREADS:-2}
tokens=${TOKENS:-65}
export OMP_NUM_THREADS=$threads
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --warmup on a side whose build knows it (builds before it lack the flag), unless COLD=1.
warm_flag() {
  if [[ ${COLD:-0} != 1 ]] && "$1" generate --help 2>&1 | grep -q -- --warmup; then echo --warmup; fi
}
old_warm=$(warm_flag "$old")
new_warm=$(warm_flag "$new")
[[ -n $old_warm && -z $new_warm || -z $old_warm && -n $new_warm ]] &&
  echo "note: only one build has --warmup; its prompt is timed warm, the other's cold" >&2
ids=$(python3 -c "print(','.join(str((i * 7919 + 13) % 32000) for i in range(128)))")
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
printf '%-32s %10s %10s %8s %10s %10s %8s\n' "file ($rounds rounds, $threads threads)" \
  "old prompt" "new prompt" new/old "old decode" "new decode" new/old
for file in "$@"; do
  : > "$tmp/res"
  for r in $(seq "$rounds"); do
    for side in old new; do
      warm=${side}_warm
      # shellcheck disable=SC2086 # the flag is one word or none
      "${!side}" generate ${!warm} --model "$file" --prompt-ids "$ids" --max-new-tokens "$tokens" --ignore-eos \
        --temperature 0 --threads "$threads" > /dev/null 2> "$tmp/err"
      sed -n 's/.*(\([0-9.]*\) prompt tokens\/s), then [0-9]* tokens at \([0-9.]*\) tokens\/s.*/\1 \2/p' \
        "$tmp/err" | awk -v s="$side" '{print s, $1, $2}' >> "$tmp/res"
    done
  done
  op=$(awk '$1 == "old" {print $2}' "$tmp/res" | median)
  np=$(awk '$1 == "new" {print $2}' "$tmp/res" | median)
  od=$(awk '$1 == "old" {print $3}' "$tmp/res" | median)
  nd=$(awk '$1 == "new" {print $3}' "$tmp/res" | median)
  printf '%-32s %10.1f %10.1f %7.2fx %10.1f %10.1f %7.2fx\n' "$(basename "$file")" "$op" "$np" \
    "$(echo "$np / $op" | bc -l)" "$od" "$nd" "$(echo "$nd / $od" | bc -l)"
done
