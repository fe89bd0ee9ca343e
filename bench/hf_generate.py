#!/usr/bin/env python3
"""Generation speed and memory of `moe generate --model` on a random Mixtral-shaped
Hugging Face checkpoint, stored as bf16 and as f32, side by side in one run.

Writes the checkpoints (config.json + model.safetensors, numpy only) into --dir, runs
`moe generate --model DIR --prompt-ids ... --temperature 0` on each, and prints the file
size, the peak resident memory of the process, the prompt (prefill) and decode speeds.
The point of the memory column: weights stay mapped in their stored dtype, so the peak
resident memory of a bf16 checkpoint is about its file size, not twice it.

    /usr/bin/python3 bench/hf_generate.py --moe build/moe            # ~1.2 GB bf16 + 2.4 GB f32
    /usr/bin/python3 bench/hf_generate.py --moe build/moe --layers 2 # quicker
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np


def write_checkpoint(path, cfg, dtype, seed):
    rng = np.random.default_rng(seed)
    d, V, F, E = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    hd = d // cfg["num_attention_heads"]
    qd, kvd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = [("model.embed_tokens.weight", (V, d)), ("model.norm.weight", (d,)), ("lm_head.weight", (V, d))]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        shapes += [(p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,)),
                   (p + "self_attn.q_proj.weight", (qd, d)), (p + "self_attn.k_proj.weight", (kvd, d)),
                   (p + "self_attn.v_proj.weight", (kvd, d)), (p + "self_attn.o_proj.weight", (d, qd)),
                   (p + "block_sparse_moe.gate.weight", (E, d))]
        for e in range(E):
            q = p + "block_sparse_moe.experts.%d." % e
            shapes += [(q + "w1.weight", (F, d)), (q + "w3.weight", (F, d)), (q + "w2.weight", (d, F))]
    esize = 2 if dtype == "BF16" else 4
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * esize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-(len(text) + 8) % 8)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape in shapes:
            if name.endswith("norm.weight"):
                a = np.ones(shape, np.float32)
            else:
                a = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
            if dtype == "BF16":
                a = (a.view(np.uint32) >> 16).astype(np.uint16)
            f.write(a.tobytes())
    c = dict(cfg, model_type="mixtral", architectures=["MixtralForCausalLM"],
             torch_dtype="bfloat16" if dtype == "BF16" else "float32")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f, indent=2)


def run(moe, path, prompt, new_tokens, threads):
    cmd = [moe, "generate", "--model", path, "--prompt-ids", ",".join(map(str, prompt)),
           "--temperature", "0", "--max-new-tokens", str(new_tokens), "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), r.stderr))
    err = r.stderr
    prefill = float(re.search(r"\(([\d.]+) prompt tokens/s\)", err).group(1))
    decode = float(re.search(r"then \d+ tokens at ([\d.]+) tokens/s", err).group(1))
    peak = float(re.search(r"peak resident memory ([\d.]+) MB", err).group(1))
    params = re.search(r"parameters (\S+) total, (\S+) active", err).groups()
    return prefill, decode, peak, params, r.stdout.split()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", default="build/moe")
    ap.add_argument("--dir", default="/tmp/moe_hf_bench")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=32, help="generated tokens")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    cfg = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=a.layers,
               num_attention_heads=16, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2,
               max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
               hidden_act="silu", sliding_window=None)
    prompt = [int(x) for x in np.random.default_rng(0).integers(3, cfg["vocab_size"], a.prompt)]
    rows, tokens = [], []
    for dtype in ("BF16", "F32"):
        path = os.path.join(a.dir, dtype.lower())
        if not os.path.exists(os.path.join(path, "config.json")):
            print("writing %s checkpoint to %s ..." % (dtype, path), flush=True)
            write_checkpoint(path, cfg, dtype, seed=1)
        size = os.path.getsize(os.path.join(path, "model.safetensors")) / 1e6
        prefill, decode, peak, params, out = run(a.moe, path, prompt, a.new, a.threads)
        rows.append((dtype, size, peak, prefill, decode, params))
        tokens.append(out)
    print("\nrandom Mixtral-shaped checkpoint: d=1024, 8 experts x 2816, top-2, %d layers, vocab 32000; "
          "%s parameters, %s active; prompt %d tokens, %d generated, %d threads"
          % (a.layers, rows[0][5][0], rows[0][5][1], a.prompt, a.new, a.threads))
    print("%-5s %10s %14s %10s %16s %14s" % ("dtype", "file MB", "peak RSS MB", "RSS/file", "prompt tok/s", "decode tok/s"))
    for dtype, size, peak, prefill, decode, _ in rows:
        print("%-5s %10.0f %14.0f %10.2f %16.1f %14.1f" % (dtype, size, peak, peak / size, prefill, decode))
    same = sum(x == y for x, y in zip(tokens[0], tokens[1]))
    print("greedy tokens equal between bf16 and f32 weights: %d of %d (bf16 rounds the weights)" % (same, len(tokens[0])))


if __name__ == "__main__":
    main()
