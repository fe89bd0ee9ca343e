#!/usr/bin/python3
"""Write a random checkpoint in DeepSeek-V2-Lite's shape (Hugging Face layout, bf16) for
bench/bench_mla: hidden 2048, 16 heads, kv_lora_rank 512, q_lora_rank null, qk_nope 128,
qk_rope 64, v 128, 64 routed experts of 1408 (top-6) + 2 shared, a dense first layer of
10944, vocabulary 102400; the depth reduced from 27 layers to --layers (default 3: one dense,
then MoE), without rope_scaling (max_position_embeddings 4096, V2-Lite's original context).
Weights N(0, 0.02), norms 1, so that the engine's speed, not the text, is what it shows.

    /usr/bin/python3 bench/make_deepseek_random.py OUT_DIR [--layers 3]
"""

import argparse
import json
import os
import struct

import numpy as np

CFG = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "torch_dtype": "bfloat16",
    "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64,
    "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
    "v_head_dim": 128, "topk_method": "greedy", "n_group": 1, "topk_group": 1, "norm_topk_prob": False,
    "routed_scaling_factor": 1.0, "scoring_func": "softmax", "aux_loss_alpha": 0.001, "seq_aux": True,
    "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "rope_scaling": None, "tie_word_embeddings": False, "attention_bias": False, "bos_token_id": 100000,
    "eos_token_id": 100001, "initializer_range": 0.02, "use_cache": True,
}


def shapes(c):
    d, H, r, dr = c["hidden_size"], c["num_attention_heads"], c["kv_lora_rank"], c["qk_rope_head_dim"]
    qk, dv, F, E = c["qk_nope_head_dim"] + dr, c["v_head_dim"], c["moe_intermediate_size"], c["n_routed_experts"]
    out = {"model.embed_tokens.weight": [c["vocab_size"], d]}
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        out[p + "self_attn.q_proj.weight"] = [H * qk, d]
        out[p + "self_attn.kv_a_proj_with_mqa.weight"] = [r + dr, d]
        out[p + "self_attn.kv_a_layernorm.weight"] = [r]
        out[p + "self_attn.kv_b_proj.weight"] = [H * (qk - dr + dv), r]
        out[p + "self_attn.o_proj.weight"] = [d, H * dv]
        m = p + "mlp."
        if l >= c["first_k_dense_replace"]:
            out[m + "gate.weight"] = [E, d]
            for e in range(E):
                for n, s in (("gate_proj", [F, d]), ("up_proj", [F, d]), ("down_proj", [d, F])):
                    out[m + "experts.%d.%s.weight" % (e, n)] = s
            S = F * c["n_shared_experts"]
            for n, s in (("gate_proj", [S, d]), ("up_proj", [S, d]), ("down_proj", [d, S])):
                out[m + "shared_experts.%s.weight" % n] = s
        else:
            I = c["intermediate_size"]
            for n, s in (("gate_proj", [I, d]), ("up_proj", [I, d]), ("down_proj", [d, I])):
                out[m + "%s.weight" % n] = s
        out[p + "input_layernorm.weight"] = [d]
        out[p + "post_attention_layernorm.weight"] = [d]
    out["model.norm.weight"] = [d]
    out["lm_head.weight"] = [c["vocab_size"], d]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=3)
    args = ap.parse_args()
    cfg = dict(CFG, num_hidden_layers=args.layers)
    sh = shapes(cfg)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(sh):
        n = int(np.prod(sh[name])) * 2
        header[name] = {"dtype": "BF16", "shape": sh[name], "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = os.path.join(args.out, "model.safetensors.tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name in sorted(sh):
            if name.endswith("norm.weight"):
                x = np.ones(sh[name], dtype=np.float32)
            else:
                x = rng.standard_normal(sh[name], dtype=np.float32) * np.float32(0.02)
            fh.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())   # bf16 (truncated)
    os.replace(tmp, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print("%s: %d layers, %.2f GB" % (args.out, args.layers, offset / 1e9))


if __name__ == "__main__":
    main()
