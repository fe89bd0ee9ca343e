#!/usr/bin/env python3
"""The driver of bench/train_vs_torch.sh: `moe train` against its PyTorch eager twin.

Each round trains the config with `moe train --profile` for --steps steps (a fresh run
directory) and then the twin (bench/torch_twin.py) for as many steps on as many tokens per step,
alternating so that load from other work hits both sides. Step times are medians after the
first --warmup steps: moe's from the elapsed_s of consecutive metrics.jsonl lines, the twin's
from its own clock. The twin must have exactly moe's parameter count (summary.json). Prints per
round and median tokens/s of both and the ratio (median of the per-round ratios), and moe's
step profile of the last round. When moe's run computes in bf16 (summary.json compute_dtype),
each round also times the twin under torch.autocast bf16, PyTorch's own mixed precision.

Usage: /usr/bin/python3 bench/train_vs_torch.py --moe BUILD/moe --config configs/default.json
       --out DIR [--steps 12] [--warmup 2] [--rounds 3] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def moe_round(a, run_dir):
    cmd = [a.moe, "train", "--config", a.config, "--out", run_dir, "--steps",
           str(a.warmup + a.steps), "--no-progress", "--profile"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    elapsed = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "elapsed_s" in j:
                elapsed.append(j["elapsed_s"])
    steps = [b - a_ for a_, b in zip(elapsed, elapsed[1:])][a.warmup - 1 if a.warmup else 0:]
    with open(os.path.join(run_dir, "profile.json")) as f:
        profile = json.load(f)
    return summary, statistics.median(steps), profile


def twin_round(a, params, bf16=False):
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "torch_twin.py"), "--config", a.config, "--steps",
           str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads),
           "--expect-params", str(params)] + (["--bf16"] if bf16 else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with open(a.config) as f:
        t = json.load(f)["training"]
    tokens = t["batch_size"] * t["seq_len"] * t.get("grad_accum_steps", 1)
    os.makedirs(a.out, exist_ok=True)
    ours, theirs, ratios = [], [], []
    theirs_bf16, ratios_bf16 = [], []
    profile = None
    for r in range(a.rounds):
        run_dir = os.path.join(a.out, f"moe-round{r}")
        subprocess.run(["rm", "-rf", run_dir], check=True)
        summary, step_s, profile = moe_round(a, run_dir)
        dtype = summary.get("compute_dtype", "float32")
        twin = twin_round(a, summary["parameters"])
        ours.append(tokens / step_s)
        theirs.append(twin["tokens_per_s"])
        ratios.append(ours[-1] / theirs[-1])
        line = (f"round {r}: moe ({dtype}) {ours[-1]:,.0f} tokens/s ({1e3 * step_s:.1f} ms/step), "
                f"PyTorch twin {theirs[-1]:,.0f} tokens/s ({twin['median_step_ms']:.1f} ms/step), "
                f"ratio {ratios[-1]:.2f}x")
        if dtype == "bfloat16":
            # moe computes in bf16: PyTorch's own bf16 (autocast) is timed beside its fp32.
            twin16 = twin_round(a, summary["parameters"], bf16=True)
            theirs_bf16.append(twin16["tokens_per_s"])
            ratios_bf16.append(ours[-1] / theirs_bf16[-1])
            line += (f"; twin under autocast bf16 {theirs_bf16[-1]:,.0f} tokens/s, "
                     f"ratio {ratios_bf16[-1]:.2f}x")
        print(line + f"; {summary['parameters']:,} parameters both", flush=True)
    load = os.getloadavg()
    print(f"\n{a.config}: {tokens} tokens/step, {a.threads} threads, medians of {a.steps} steps "
          f"after {a.warmup} warm-up, {a.rounds} rounds; load average {load[0]:.2f} at the end\n")
    print("| run | tokens/s | ratio |\n|---|---:|---:|")
    print(f"| moe train ({dtype}) | {statistics.median(ours):,.0f} | "
          f"{statistics.median(ratios):.2f}x |")
    print(f"| PyTorch eager twin (fp32) | {statistics.median(theirs):,.0f} | 1.00x |")
    if theirs_bf16:
        print(f"| PyTorch eager twin (autocast bf16) | {statistics.median(theirs_bf16):,.0f} | "
              f"{statistics.median(ratios) / statistics.median(ratios_bf16):.2f}x |")
        print(f"\nmoe against the autocast bf16 twin: {statistics.median(ratios_bf16):.2f}x "
              f"(median of the per-round ratios)")
    print(f"\nmoe step profile (last round, {profile['steps']} steps, ms per step):\n")
    print("| part | ms/step | % |\n|---|---:|---:|")
    for name in profile["order"]:
        p = profile["parts"][name]
        print(f"| {name} | {p['ms']:.2f} | {p['percent']:.1f} |")
    print(f"| (unaccounted) | {profile['unaccounted_ms']:.2f} | "
          f"{100 * profile['unaccounted_ms'] / profile['step_ms']:.1f} |")
    print(f"| step | {profile['step_ms']:.2f} | 100.0 |")


if __name__ == "__main__":
    main()
