#!/usr/bin/env bash
# Expert parallelism on one machine: step time, all-to-all volume and the split between
# communication and compute for W = 1, 2, 4 ranks (each rank holding E/W experts), side by
# side in one run. On one 2-core machine W = 4 is oversubscribed and slower: the point is the
# accounting. Figures are medians over the steps after the first (rank 0's view).
# Usage: bench/dist_step.sh [path/to/moe] [steps]
set -euo pipefail
moe=${1:-build/moe}
steps=${2:-12}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/config.json" <<JSON
{"model_type": "mixtral", "vocab_size": 258, "hidden_size": 256, "intermediate_size": 512,
 "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
 "max_position_embeddings": 128, "num_local_experts": 8, "num_experts_per_tok": 2,
 "training": {"max_steps": $steps, "batch_size": 16, "seq_len": 128, "eval_every": 0,
              "eval_batches": 1, "checkpoint_every": 0, "tokenizer": "byte",
              "data_dir": "${MOE_DATA_DIR:-data}"}}
JSON
printf "%-3s %-3s %12s %14s %14s %10s %10s %8s\n" W P "step ms" "a2a sent KB" "a2a recv KB" "comm ms" "compute ms" "comm %"
for W in 1 2 4; do
  out="$dir/w$W"
  OMP_NUM_THREADS=1 mpiexec --oversubscribe --allow-run-as-root -np "$W" "$moe" train \
    --config "$dir/config.json" --out "$out" --no-progress --expert-parallel "$W" \
    > "$out.log" 2>&1 || { tail -5 "$out.log"; exit 1; }
  python3 - "$out/metrics.jsonl" "$W" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step_s"' in l][1:]
med = lambda k: statistics.median(r[k] for r in rows)
comm, step = med("comm_s"), med("step_s")
print("%-3s %-3s %12.1f %14.1f %14.1f %10.1f %10.1f %7.0f%%" % (sys.argv[2], sys.argv[2], step * 1e3,
      med("a2a_sent_bytes") / 1e3, med("a2a_recv_bytes") / 1e3, comm * 1e3, med("compute_s") * 1e3,
      100 * comm / step))
PY
done
echo "(2 layers, d=256, 8 experts x 512, top-2, 2048 tokens per step; OMP_NUM_THREADS=1 per rank)"
