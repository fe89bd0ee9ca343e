#!/usr/bin/env python3
"""The PyTorch half of bench/compare_torch.sh.

For each shape, runs the C++ program (bench/compare_torch.cpp: our layer fp32 and bf16, and
OpenBLAS sgemm on the experts' GEMMs), which writes the weights, inputs and our outputs as
safetensors; builds a Hugging Face-style Mixtral sparse block (softmax, top-k, renormalize, a
loop over experts with index_add_, fp32, autograd backward) with the very same weights, checks
that its outputs and gradients agree with ours, and times its forward+backward right after
ours. Rounds alternate the two sides so that load from other work hits both. Prints the
tables: tokens/s, GFLOP/s, ratios ours/PyTorch and ours/sgemm, the per-part breakdown.

Usage: /usr/bin/python3 bench/compare_torch.py --bin BUILD/bench/compare_torch --out DIR
       [--shapes 0,1,2] [--rounds 3] [--reps 5] [--torch-reps 3]
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_safetensors(path):
    """Minimal reader (the safetensors package is not a Debian dependency here)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F64": np.float64}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        arr = np.frombuffer(data, dtype=dtypes[e["dtype"]], count=(end - b) // 4 if e["dtype"] == "F32" else (end - b) // 8, offset=b)
        out[name] = torch.from_numpy(arr.reshape(e["shape"]).copy())
    return out


class MixtralBlockSparseTop2MLP(nn.Module):
    """transformers' MixtralBlockSparseTop2MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d, ffn):
        super().__init__()
        self.w1 = nn.Linear(d, ffn, bias=False)
        self.w2 = nn.Linear(ffn, d, bias=False)
        self.w3 = nn.Linear(d, ffn, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MixtralSparseMoeBlock(nn.Module):
    """transformers' MixtralSparseMoeBlock.forward (v4.36-4.40), without jitter/aux loss."""

    def __init__(self, d, ffn, experts, top_k):
        super().__init__()
        self.num_experts, self.top_k = experts, top_k
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList([MixtralBlockSparseTop2MLP(d, ffn) for _ in range(experts)])

    def forward(self, hidden_states):
        sequence_length, hidden_dim = hidden_states.shape
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final_hidden_states = torch.zeros(
            (sequence_length, hidden_dim), dtype=hidden_states.dtype, device=hidden_states.device)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx])
            if top_x.shape[0] == 0:
                continue
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current_hidden_states = expert_layer(current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
        return final_hidden_states, router_logits


def rel_err(a, b):
    """Normalized error |a - b| / |b| (Frobenius)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def load_block(t, shape):
    d, ffn, E, k = shape["d"], shape["ffn"], shape["experts"], shape["top_k"]
    block = MixtralSparseMoeBlock(d, ffn, E, k)
    with torch.no_grad():
        block.gate.weight.copy_(t["router.weight"])
        for e in range(E):
            block.experts[e].w1.weight.copy_(t["experts.w1"][e])
            block.experts[e].w3.weight.copy_(t["experts.w3"][e])
            block.experts[e].w2.weight.copy_(t["experts.w2"][e])
    return block


def time_torch(block, x, dout, warmup, reps):
    def step():
        block.zero_grad(set_to_none=True)
        x.grad = None
        o, _ = block(x)
        o.backward(dout)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the C++ program (bench/compare_torch.cpp)")
    ap.add_argument("--out", required=True, help="directory for weights and results")
    ap.add_argument("--shapes", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate ours and PyTorch this many times per shape")
    ap.add_argument("--reps", type=int, default=5, help="timed steps of ours per round")
    ap.add_argument("--torch-reps", type=int, default=3, help="timed PyTorch steps per round")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    os.makedirs(args.out, exist_ok=True)
    rows, checks, breakdown = [], [], []
    kernel = "?"
    for shape in args.shapes.split(","):
        rounds = []  # per round: (ours json, torch seconds)
        block = x = dout = None
        for rnd in range(args.rounds):
            # Ours and sgemm first, then PyTorch right after: a load spike from other work on
            # the machine hits both sides of a round's ratio alike.
            subprocess.run([args.bin, args.out, "--reps", str(args.reps), "--warmup", "2",
                            "--shapes", shape], check=True)
            res = json.load(open(os.path.join(args.out, "results.json")))
            kernel = res["bf16_kernel"]
            s = res["shapes"][0]
            name = f"d={s['d']} ffn={s['ffn']} E={s['experts']} k={s['top_k']} T={s['tokens']}"
            if block is None:
                t = read_safetensors(s["file"])
                block = load_block(t, s)
                x = t["x"].clone().requires_grad_(True)
                dout = t["dout"]
                # Correctness: one step on zeroed gradients, against ours (fp32 and bf16).
                out, _ = block(x)
                out.backward(dout)
                ref = {"out": out.detach(), "dx": x.grad.detach(),
                       "grad.router.weight": block.gate.weight.grad,
                       "grad.experts.w1.0": block.experts[0].w1.weight.grad,
                       "grad.experts.w3.0": block.experts[0].w3.weight.grad,
                       "grad.experts.w2.0": block.experts[0].w2.weight.grad}
                for tag in ("fp32", "bf16"):
                    errs = {k: rel_err(t[f"{k}.{tag}"], v) for k, v in ref.items()}
                    checks.append((name, tag, errs))
                del t
            os.remove(s["file"])  # the shared weights: up to 0.6 GB
            torch_s = time_torch(block, x, dout, 1, args.torch_reps)
            print(f"  round {rnd + 1}: PyTorch {torch_s * 1e3:.1f} ms", flush=True)
            rounds.append((s, torch_s))
        med = statistics.median
        s0 = rounds[0][0]
        r = {"name": name, "T": s0["tokens"], "flops": s0["flops"], "gemm_flops": s0["gemm_flops"],
             "torch": med([t for _, t in rounds])}
        for key in ("fp32", "bf16", "sgemm_experts", "sgemm_block"):
            r[key] = med([s[key]["median"] for s, _ in rounds])
        # Ratios per round (same load), then their median.
        for key in ("fp32", "bf16"):
            r[key + "/torch"] = med([t / s[key]["median"] for s, t in rounds])
            r[key + "/sgemm_experts"] = med(
                [s["sgemm_experts"]["median"] / s[key]["median"] * s["flops"] / s["gemm_flops"]
                 for s, _ in rounds])
            r[key + "/sgemm_block"] = med(
                [s["sgemm_block"]["median"] / s[key]["median"] * s["flops"] / s["gemm_flops"]
                 for s, _ in rounds])
        rows.append(r)
        mid = sorted(rounds, key=lambda st: st[0]["fp32"]["median"])[len(rounds) // 2][0]
        for tag in ("fp32", "bf16"):
            breakdown.append((name, tag, mid[tag]))

    print(f"\nMoE layer forward+backward, {threads} threads, bf16 kernel {kernel}, PyTorch "
          f"{torch.__version__}. Each shape: {args.rounds} rounds of (ours and sgemm: median of "
          f"{args.reps} steps; PyTorch: median of {args.torch_reps}) after warm-up; the table "
          f"shows the median over rounds, and ratios are medians of the per-round ratios.")
    print("GFLOP/s count 2 per multiply-add: router + 3*d*ffn per kept assignment, x3 for "
          "fwd+bwd; the sgemm rows count the same expert GEMM FLOPs (no router).")
    print("| shape | run | ms | tokens/s | GFLOP/s | ours/PyTorch (tokens/s) | "
          "ours/sgemm per expert (GFLOP/s) | ours/sgemm one block (GFLOP/s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        def line(run, sec, fl, ratios=("", "", "")):
            print(f"| {r['name']} | {run} | {sec * 1e3:.1f} | {r['T'] / sec:,.0f} | "
                  f"{fl / sec / 1e9:.1f} | " + " | ".join(ratios) + " |")
        line("PyTorch HF block fp32", r["torch"], r["flops"])
        line("OpenBLAS sgemm per expert", r["sgemm_experts"], r["gemm_flops"])
        line("OpenBLAS sgemm one block", r["sgemm_block"], r["gemm_flops"])
        for key in ("fp32", "bf16"):
            line(f"ours {key}", r[key], r["flops"],
                 (f"{r[key + '/torch']:.2f}x", f"{r[key + '/sgemm_experts']:.2f}",
                  f"{r[key + '/sgemm_block']:.2f}"))

    print("\nBreakdown per pass (ms per step, mean of the timed steps of the median round): "
          "MoE overhead = 1 - experts / total")
    print("| shape | run | pass | routing | gather | experts (GEMMs + SwiGLU) | combine | total "
          "| overhead |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, tag, r in breakdown:
        for p in ("forward", "backward"):
            b = r[p]
            over = 1 - b["experts"] / b["total"] if b["total"] > 0 else 0
            print(f"| {name} | {tag} | {p} | {b['routing'] * 1e3:.1f} | {b['gather'] * 1e3:.1f} | "
                  f"{b['experts'] * 1e3:.1f} | {b['combine'] * 1e3:.1f} | {b['total'] * 1e3:.1f} | "
                  f"{over * 100:.1f}% |")

    print("\nAgreement with the PyTorch block (normalized error |ours - torch| / |torch|):")
    print("| shape | run | out | dx | grad router | grad w1[0] | grad w3[0] | grad w2[0] |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    ok = True
    for name, tag, e in checks:
        vals = [e["out"], e["dx"], e["grad.router.weight"], e["grad.experts.w1.0"],
                e["grad.experts.w3.0"], e["grad.experts.w2.0"]]
        print(f"| {name} | {tag} | " + " | ".join(f"{v:.1e}" for v in vals) + " |")
        limit = 1e-4 if tag == "fp32" else 1e-2
        ok = ok and max(vals) < limit
    print("outputs and gradients agree (fp32 < 1e-4, bf16 < 1e-2)" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
