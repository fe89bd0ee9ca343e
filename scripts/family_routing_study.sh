#!/usr/bin/env bash
# Routing study of a real-family model (README "Routing study of a Qwen3-MoE-shaped model"):
#   1. pretrain  a qwen3_moe-shaped model (per-head q/k RMSNorm, head_dim x heads != hidden,
#                32 fine-grained experts of 256, top-4, renormalized: Qwen3-30B-A3B's recipe at
#                this machine's scale) on the bundled multi-domain corpus, from a Hugging Face
#                qwen3_moe config.json (`moe train --config`)
#   2. export    it as a Hugging Face qwen3_moe checkpoint (`moe convert --to hf`)
#   3. fine-tune that checkpoint on the corpus's training split given as a user's JSONL file,
#                routers and experts only (`moe train --init-from CKPT --data train.jsonl
#                --train routers,experts`), and export it again
#   4. analyze   both checkpoints on the validation split (`moe analyze CKPT --data valid.jsonl`),
#                each against the same checkpoint with its routers redrawn (the random-router
#                baseline), and print I(expert; domain) per layer side by side.
#
#   scripts/family_routing_study.sh [OUT_DIR=runs/family_routing_study]
# Knobs (environment): STEPS (600), FT_STEPS (200), WINDOWS (analysis windows, 400), MOE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-runs/family_routing_study}
moe=${MOE:-$root/build/moe}
steps=${STEPS:-600}
ft_steps=${FT_STEPS:-200}
windows=${WINDOWS:-400}
mkdir -p "$out"
out=$(cd "$out" && pwd)
data="$out/data"

cat > "$out/qwen3_moe.json" <<JSON
{"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
 "vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 4,
 "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64,
 "intermediate_size": 1024, "moe_intermediate_size": 256, "num_experts": 32,
 "num_experts_per_tok": 4, "norm_topk_prob": true, "decoder_sparse_step": 1,
 "mlp_only_layers": [], "router_aux_loss_coef": 0.01, "max_position_embeddings": 256,
 "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
 "training": {"max_steps": $steps, "eval_every": 200, "checkpoint_every": 0,
              "data_dir": "$data"}}
JSON
cat > "$out/finetune.json" <<JSON
{"training": {"max_steps": $ft_steps, "learning_rate": 0.001, "warmup_steps": 20,
              "eval_every": 100, "checkpoint_every": 0, "data_dir": "$data"}}
JSON

echo "== 1. pretrain a qwen3_moe-shaped model ($steps steps)"
rm -rf "$out/pretrain" "$out/pretrain-hf" "$out/finetune" "$out/finetune-hf"
"$moe" train --config "$out/qwen3_moe.json" --out "$out/pretrain" --no-progress
echo "== 2. export it as a Hugging Face checkpoint"
"$moe" convert "$out/pretrain" --to hf --out "$out/pretrain-hf"
echo "== 3. fine-tune the checkpoint: routers and experts, $ft_steps steps"
"$moe" train --init-from "$out/pretrain-hf" --data "$data/corpus/train.jsonl" \
  --config "$out/finetune.json" --train routers,experts --out "$out/finetune" --no-progress
"$moe" convert "$out/finetune" --to hf --out "$out/finetune-hf"
echo "== 4. routing analysis against the random-router baseline"
for m in pretrain-hf finetune-hf; do
  "$moe" analyze "$out/$m" --data "$data/corpus/valid.jsonl" --windows "$windows" \
    --out "$out/analysis-$m"
done
/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def mi(path):
    a = json.load(open(path))
    return [l["mi_domain_bits"] for l in a["layers"]], a.get("max_mi_domain_bits", 0)
print("\nI(expert; domain), bits per layer (trained router | random router)")
print(f"{'checkpoint':<14}" + "".join(f"   layer {l}       " for l in range(4)))
for m in ("pretrain-hf", "finetune-hf"):
    t, cap = mi(f"{out}/analysis-{m}/analysis.json")
    r, _ = mi(f"{out}/analysis-{m}/analysis_random_router.json")
    print(f"{m:<14}" + "".join(f"   {a:.3f} | {b:.3f}  " for a, b in zip(t, r)))
print(f"(at most {cap:.2f} bits)")
PY
