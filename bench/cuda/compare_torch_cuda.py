#!/usr/bin/env python3
"""PyTorch Hugging Face-style MoE block on CUDA, the comparison for bench/cuda/bench_cuda_moe.

The block is the loop of transformers' MixtralSparseMoeBlock (router linear, softmax, top-k,
renormalize, then one Python iteration per expert: index the tokens routed to it, run its
SwiGLU MLP, scale by the gate and index_add_ back), with Qwen2-MoE's shared experts added for
the second shape. Everything in bf16 as HF runs with torch_dtype=bfloat16. Forward + backward
are timed with CUDA events (median), and TFLOP/s use the same FLOP count as bench_cuda_moe:
3 x (router + 3 GEMMs per kept assignment + shared experts) multiply-adds x 2.

Usage: python3 bench/cuda/compare_torch_cuda.py [--iters N] [--warmup N] [--shape NAME|all]
                                                [--ours PATH/TO/bench_cuda_moe]

With --ours, each shape is also run through our benchmark binary (same iterations), and one
table ends the run: ours, the cuBLAS dense bf16 chain and the PyTorch loop in TFLOP/s, with the
two ratios the CUDA issue sets targets for (>= 5x the loop, >= 70% of dense).

Needs a CUDA build of PyTorch. Debian's python3-torch is CPU-only: on such a machine (or one
without a GPU) this script says so and exits with status 1; it never falls back to the CPU.
"""
import argparse
import re
import subprocess
import sys

SHAPES = {
    "mixtral": dict(T=8192, d=4096, F=14336, E=8, k=2, n_shared=0),
    "deepseek": dict(T=8192, d=2048, F=1408, E=64, k=6, n_shared=2),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--shape", default="all", choices=["all", *SHAPES])
    ap.add_argument("--ours", help="path to bench_cuda_moe: run it too and print one table")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F_
    except ImportError:
        print("compare_torch_cuda: PyTorch is not installed; install a CUDA build of PyTorch "
              "(pip install torch) on the GPU machine", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print(f"compare_torch_cuda: torch {torch.__version__} has no usable CUDA device "
              f"(torch.version.cuda = {torch.version.cuda}); Debian's python3-torch is CPU-only. "
              "Run this on the GPU machine with a CUDA build of PyTorch. Nothing was measured.",
              file=sys.stderr)
        return 1

    dev = torch.device("cuda")
    dt = torch.bfloat16
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"{args.warmup} warmup, median of {args.iters}")

    class Expert(torch.nn.Module):  # HF MixtralBlockSparseTop2MLP: w2(silu(w1 x) * w3 x)
        def __init__(self, d, f):
            super().__init__()
            self.w1 = torch.nn.Linear(d, f, bias=False)
            self.w3 = torch.nn.Linear(d, f, bias=False)
            self.w2 = torch.nn.Linear(f, d, bias=False)

        def forward(self, x):
            return self.w2(F_.silu(self.w1(x)) * self.w3(x))

    class HfMoeBlock(torch.nn.Module):
        def __init__(self, d, f, E, k, n_shared):
            super().__init__()
            self.E, self.k = E, k
            self.gate = torch.nn.Linear(d, E, bias=False)
            self.experts = torch.nn.ModuleList(Expert(d, f) for _ in range(E))
            self.shared = Expert(d, f * n_shared) if n_shared else None

        def forward(self, x):
            logits = self.gate(x)
            weights = F_.softmax(logits, dim=1, dtype=torch.float)
            weights, selected = torch.topk(weights, self.k, dim=-1)
            weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
            out = torch.zeros_like(x)
            mask = F_.one_hot(selected, num_classes=self.E).permute(2, 1, 0)
            for e in range(self.E):  # the per-expert Python loop of HF
                idx, top = torch.where(mask[e])
                if top.numel() == 0:
                    continue
                y = self.experts[e](x[top]) * weights[top, idx, None]
                out.index_add_(0, top, y.to(x.dtype))
            if self.shared is not None:
                out = out + self.shared(x)
            return out

    rows = []
    for name, s in SHAPES.items():
        if args.shape not in ("all", name):
            continue
        ours = run_ours(args, name) if args.ours else None
        T, d, f, E, k, ns = s["T"], s["d"], s["F"], s["E"], s["k"], s["n_shared"]
        print(f"== {name}: T={T} d={d} F={f} E={E} k={k} shared={ns} ==")
        torch.manual_seed(0)
        block = HfMoeBlock(d, f, E, k, ns).to(device=dev, dtype=dt)
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.02)
        x = torch.randn(T, d, device=dev, dtype=dt, requires_grad=True)
        dout = torch.randn(T, d, device=dev, dtype=dt) * 1e-3

        def step():
            block.zero_grad(set_to_none=True)
            x.grad = None
            block(x).backward(dout)

        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.iters):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        times.sort()
        n = len(times)
        ms = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
        flops = 3 * 2.0 * (T * d * E + 3.0 * d * (T * k * f + T * f * ns))
        print(f"  FLOPs per fwd+bwd: {flops / 1e12:.3f} T")
        torch_tflops = flops / (ms * 1e-3) / 1e12
        print(f"  torch HF loop fwd+bwd {ms:9.3f} ms  {torch_tflops:7.1f} TFLOP/s")
        if ours:
            rows.append((name, ours, ms, torch_tflops))
        del block, x
        torch.cuda.empty_cache()
    if rows:
        print("\n| shape | ours ms | ours TFLOP/s | dense TFLOP/s | torch loop TFLOP/s | "
              "ours / torch loop (>= 5x) | ours / dense (>= 70%) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, o, torch_ms, torch_tflops in rows:
            print(f"| {name} | {o['ours_ms']:.2f} | {o['ours_tflops']:.1f} | "
                  f"{o['dense_tflops']:.1f} | {torch_tflops:.1f} | "
                  f"{torch_ms / o['ours_ms']:.2f}x | {100 * o['dense_ms'] / o['ours_ms']:.0f}% |")
    return 0


def run_ours(args, name):
    """Runs our benchmark on one shape, echoes its output and returns its figures."""
    cmd = [args.ours, "--shape", name, "--iters", str(args.iters), "--warmup", str(args.warmup)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(res.stdout)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"compare_torch_cuda: {' '.join(cmd)} failed ({res.returncode})")
    num = r"([0-9.]+)"
    ours = re.search(rf"ours\s+fwd\+bwd\s+{num} ms\s+{num} TFLOP/s", res.stdout)
    dense = re.search(rf"dense bf16\s+{num} ms\s+{num} TFLOP/s", res.stdout)
    if not ours or not dense:
        raise SystemExit(f"compare_torch_cuda: no figures in the output of {' '.join(cmd)}")
    return dict(ours_ms=float(ours[1]), ours_tflops=float(ours[2]), dense_ms=float(dense[1]),
                dense_tflops=float(dense[2]))


if __name__ == "__main__":
    sys.exit(main())
