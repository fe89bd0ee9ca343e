"""Writes tests/fixtures/perplexity/hf.json: the float64 reference perplexity
(tools/reference/hf_reference.py `perplexity`) of the Hugging Face fixtures in MODELS (under
tests/fixtures/hf/) on one fixed token sequence, for several window settings, which
tests/test_perplexity.cpp checks `moe::perplexity` on the loaded checkpoints against (1e-5).

The sequence: 61 tokens drawn from [3, 96) (every fixture has a vocabulary of 96 and a
context of 64) with torch.manual_seed(seed) for the first seed >= 20 whose every window keeps
each router's k-th and (k+1)-th logits more than ROUTER_GAP apart in every model (a float32
engine then chooses the same experts).  Settings (ctx, stride): one window over the whole
sequence (60, 60), disjoint windows (16, 16), overlapping windows (16, 5) and (24, 1), and a
window of one token (1, 1).

    /usr/bin/python3 tools/reference/make_perplexity_fixture.py          # rewrite
    /usr/bin/python3 tools/reference/make_perplexity_fixture.py --check  # compare (1e-12)
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_io  # noqa: E402
import hf_reference as hf  # noqa: E402

HF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "hf")
OUT = os.path.join(HF_DIR, "..", "perplexity", "hf.json")  # not in hf/: only checkpoints there
SETTINGS = [(60, 60), (16, 16), (16, 5), (24, 1), (1, 1)]
# The checkpoints it covers: one per family of the first Hugging Face loader (listed, so that a
# fixture added to tests/fixtures/hf/ later does not change this file's seed and contents; the
# later families' logits, greedy tokens and cached steps are checked by test_hf_checkpoint).
MODELS = ["llama", "mistral", "mixtral", "mixtral_bf16", "olmoe", "qwen2", "qwen2_moe", "qwen3",
          "qwen3_moe"]
ROUTER_GAP = 1e-4


def load_checkpoint(d):
    with open(os.path.join(d, "config.json")) as fh:
        cfg = json.load(fh)
    weights = {}
    for f in sorted(os.listdir(d)):
        if f.startswith("model") and f.endswith(".safetensors"):
            with open(os.path.join(d, f), "rb") as fh:
                t, _ = fixture_io.decode_safetensors(fh.read())
            weights.update({n: v.to(torch.float64) for n, v in t.items()})
    return cfg, weights


def min_router_gap(cfg, trace):
    k, gap = cfg.get("num_experts_per_tok", 0), float("inf")  # dense: no routers
    for logits in trace:
        if k < logits.shape[-1]:
            s = torch.sort(logits.reshape(-1, logits.shape[-1]), dim=-1, descending=True).values
            gap = min(gap, float((s[:, k - 1] - s[:, k]).min()))
    return gap


def build():
    torch.set_num_threads(1)
    models = []
    for name in MODELS:
        models.append((name,) + load_checkpoint(os.path.join(HF_DIR, name)))
    for seed in range(20, 220):
        torch.manual_seed(seed)
        ids = torch.randint(3, 96, (61,)).tolist()
        cases, gap = [], float("inf")
        for name, cfg, weights in models:
            for ctx, stride in SETTINGS:
                trace = []
                nll, count = hf.perplexity(cfg, weights, ids, ctx, stride, trace)
                gap = min(gap, min_router_gap(cfg, trace))
                cases.append({"model": name, "ctx": ctx, "stride": stride, "nll_sum": nll,
                              "tokens": count, "loss": nll / count})
        if gap > ROUTER_GAP:
            return {"seed": seed, "tokens": ids, "cases": cases}
    raise RuntimeError("no seed keeps the routers away from ties")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed file")
    args = ap.parse_args()
    fresh = build()
    if not args.check:
        with open(OUT, "w") as fh:
            json.dump(fresh, fh, indent=1)
            fh.write("\n")
        for c in fresh["cases"]:
            print("%-13s ctx %2d stride %2d  loss %.6f over %d" % (
                c["model"], c["ctx"], c["stride"], c["loss"], c["tokens"]))
        return
    with open(OUT) as fh:
        old = json.load(fh)
    ok = old["tokens"] == fresh["tokens"] and len(old["cases"]) == len(fresh["cases"])
    for a, b in zip(old["cases"], fresh["cases"]):
        same = all(a[k] == b[k] for k in ("model", "ctx", "stride", "tokens"))
        ok = ok and same and abs(a["loss"] - b["loss"]) <= 1e-12 * abs(a["loss"])
    print("ok" if ok else "DIFFERS")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
