#!/usr/bin/python3
"""Write a random checkpoint of gpt-oss-20b's shape (the released layout: bf16 attention,
router, embeddings; MXFP4 experts as *_blocks + *_scales) with fewer layers, for measuring
decode speed and resident memory:

    /usr/bin/python3 tools/make_random_gpt_oss.py OUT_DIR [--layers 2]

Random bytes for the MXFP4 codes, scales 2^-7 .. 2^-5 (E8M0 120..122), bf16 matrices
N(0, 0.02), norms 1. Not a model anyone trained: only its shape and formats are gpt-oss-20b's.
"""

import argparse
import json
import os

import numpy as np

import random_checkpoint


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    L, d, V, H, G, hd, E, F = args.layers, 2880, 201088, 64, 8, 64, 32, 2880
    rng = np.random.default_rng(0)
    tensors = {}

    def bf16(shape, std=0.02):
        x = (rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * std).view(np.uint32)
        return ("BF16", shape, (x >> 16).astype(np.uint16))

    def ones(shape):
        return ("BF16", shape, np.full(int(np.prod(shape)), 0x3F80, np.uint16))

    tensors["model.embed_tokens.weight"] = bf16([V, d])
    tensors["lm_head.weight"] = bf16([V, d])
    tensors["model.norm.weight"] = ones([d])
    for l in range(L):
        p = "model.layers.%d." % l
        for n, rows in (("q_proj", H * hd), ("k_proj", G * hd), ("v_proj", G * hd)):
            tensors[p + "self_attn.%s.weight" % n] = bf16([rows, d])
            tensors[p + "self_attn.%s.bias" % n] = bf16([rows])
        tensors[p + "self_attn.o_proj.weight"] = bf16([d, H * hd])
        tensors[p + "self_attn.o_proj.bias"] = bf16([d])
        tensors[p + "self_attn.sinks"] = bf16([H], 1.0)
        tensors[p + "input_layernorm.weight"] = ones([d])
        tensors[p + "post_attention_layernorm.weight"] = ones([d])
        tensors[p + "mlp.router.weight"] = bf16([E, d])
        tensors[p + "mlp.router.bias"] = bf16([E])
        for n, rows, cols in (("gate_up_proj", 2 * F, d), ("down_proj", d, F)):
            nb = cols // 32
            tensors[p + "mlp.experts.%s_blocks" % n] = (
                "U8", [E, rows, nb, 16], rng.integers(0, 256, E * rows * nb * 16, dtype=np.uint8))
            tensors[p + "mlp.experts.%s_scales" % n] = (
                "U8", [E, rows, nb], rng.integers(120, 123, E * rows * nb, dtype=np.uint8))
        tensors[p + "mlp.experts.gate_up_proj_bias"] = bf16([E, 2 * F])
        tensors[p + "mlp.experts.down_proj_bias"] = bf16([E, d])
    random_checkpoint.write_safetensors(args.out, tensors)
    cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": d,
           "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H,
           "num_key_value_heads": G, "head_dim": hd, "num_local_experts": E, "num_experts_per_tok": 4,
           "experts_per_token": 4, "vocab_size": V, "max_position_embeddings": 131072,
           "rope_theta": 150000, "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                                  "beta_slow": 1.0, "original_max_position_embeddings": 4096,
                                                  "truncate": False},
           "sliding_window": 128, "layer_types": ["sliding_attention" if l % 2 == 0 else "full_attention"
                                                  for l in range(L)],
           "attention_bias": True, "swiglu_limit": 7.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "eos_token_id": 200002,
           "quantization_config": {"quant_method": "mxfp4"}}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


if __name__ == "__main__":
    main()
