#!/usr/bin/python3
"""Write a random checkpoint of Qwen3.5-35B-A3B's text model shape (the released layout: bf16,
weights under model.language_model., the config's text model under text_config; split Gated
DeltaNet projections in_proj_qkv / in_proj_z / in_proj_b / in_proj_a, fused experts
mlp.experts.gate_up_proj [E, 2F, d] / down_proj [E, d, F], one gated shared expert) with fewer
layers, for measuring decode speed, resident memory and the cache:

    /usr/bin/python3 tools/make_random_qwen3_5_moe.py OUT_DIR [--layers 4] [--config-only]

--config-only writes config.json alone (for `moe quantize --random OUT_DIR/config.json`, which
draws the weights itself: the full 40 layers as GGUF without 70 GB of bf16 first).

Every 4th layer is full attention (layers 3, 7, ...), the others Gated DeltaNet, as released.
Shape: d 2048, vocabulary 248320, 256 experts of 512 (top-8) + a shared expert of 512,
attention 16 query / 2 key-value heads of 256 (RoPE on 64), DeltaNet 16 key / 32 value heads
of 128, conv kernel 4 (Qwen3_5MoeTextConfig's defaults, the Qwen3.5 / 3.6-35B-A3B model cards).
bf16 matrices N(0, 0.02), zero-centred norms 0 (scale 1), the DeltaNet's output norm 1,
A_log log(U(1, 16)), dt_bias 1. Not a model anyone trained: only its shape and formats are real.
"""

import argparse
import json
import os

import numpy as np

import random_checkpoint


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--config-only", action="store_true")
    args = ap.parse_args()
    L, d, V, H, G, hd = args.layers, 2048, 248320, 16, 2, 256
    E, F, S, k = 256, 512, 512, 8
    Hk, Hv, dk, dv, K = 16, 32, 128, 128, 4
    kd, vd = Hk * dk, Hv * dv
    rng = np.random.default_rng(0)
    tensors = {}

    def to_bf16(x):
        return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)

    def bf16(shape, std=0.02):
        return ("BF16", shape, to_bf16(rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * std))

    def const(shape, value):
        return ("BF16", shape, to_bf16(np.full(int(np.prod(shape)), value, np.float32)))

    P = "model.language_model."
    if not args.config_only:
        tensors[P + "embed_tokens.weight"] = bf16([V, d])
        tensors["lm_head.weight"] = bf16([V, d])
        tensors[P + "norm.weight"] = const([d], 0.0)
    types = []
    for l in range(L):
        p = P + "layers.%d." % l
        full = (l + 1) % 4 == 0
        types.append("full_attention" if full else "linear_attention")
        if args.config_only:
            continue
        if full:
            a = p + "self_attn."
            tensors[a + "q_proj.weight"] = bf16([2 * H * hd, d])
            tensors[a + "k_proj.weight"] = bf16([G * hd, d])
            tensors[a + "v_proj.weight"] = bf16([G * hd, d])
            tensors[a + "o_proj.weight"] = bf16([d, H * hd])
            tensors[a + "q_norm.weight"] = const([hd], 0.0)
            tensors[a + "k_norm.weight"] = const([hd], 0.0)
        else:
            a = p + "linear_attn."
            tensors[a + "in_proj_qkv.weight"] = bf16([2 * kd + vd, d])
            tensors[a + "in_proj_z.weight"] = bf16([vd, d])
            tensors[a + "in_proj_b.weight"] = bf16([Hv, d])
            tensors[a + "in_proj_a.weight"] = bf16([Hv, d])
            tensors[a + "conv1d.weight"] = bf16([2 * kd + vd, 1, K], 0.3)
            tensors[a + "A_log"] = ("BF16", [Hv], to_bf16(np.log(rng.uniform(1, 16, Hv))))
            tensors[a + "dt_bias"] = const([Hv], 1.0)
            tensors[a + "norm.weight"] = const([dv], 1.0)
            tensors[a + "out_proj.weight"] = bf16([d, vd])
        m = p + "mlp."
        tensors[m + "gate.weight"] = bf16([E, d])
        tensors[m + "experts.gate_up_proj"] = bf16([E, 2 * F, d])
        tensors[m + "experts.down_proj"] = bf16([E, d, F])
        for n, shape in (("gate_proj", [S, d]), ("up_proj", [S, d]), ("down_proj", [d, S])):
            tensors[m + "shared_expert.%s.weight" % n] = bf16(shape)
        tensors[m + "shared_expert_gate.weight"] = bf16([1, d])
        tensors[p + "input_layernorm.weight"] = const([d], 0.0)
        tensors[p + "post_attention_layernorm.weight"] = const([d], 0.0)
    if args.config_only:
        os.makedirs(args.out, exist_ok=True)
    else:
        random_checkpoint.write_safetensors(args.out, tensors)
    text = {"model_type": "qwen3_5_moe_text", "vocab_size": V, "hidden_size": d, "num_hidden_layers": L,
            "num_attention_heads": H, "num_key_value_heads": G, "head_dim": hd, "hidden_act": "silu",
            "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "attention_bias": False,
            "linear_conv_kernel_dim": K, "linear_key_head_dim": dk, "linear_value_head_dim": dv,
            "linear_num_key_heads": Hk, "linear_num_value_heads": Hv, "moe_intermediate_size": F,
            "shared_expert_intermediate_size": S, "num_experts_per_tok": k, "num_experts": E,
            "router_aux_loss_coef": 0.001, "layer_types": types, "eos_token_id": 248044,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                                "mrope_section": [11, 11, 10], "mrope_interleaved": True}}
    cfg = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "text_config": text,
           "vision_config": {"model_type": "qwen3_5_moe", "depth": 27, "hidden_size": 1152}}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


if __name__ == "__main__":
    main()
