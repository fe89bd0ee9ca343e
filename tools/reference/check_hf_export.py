"""Checks checkpoints that `moe` exported in the Hugging Face layout against the independent
reference (hf_reference.py): the tensor names and shapes are exactly those Hugging Face's
model class for the config holds (no missing, no unexpected key), and the reference's logits
on the stored prompt match the logits the C++ model computed before saving.

Each DIR holds config.json, model.safetensors and expected.safetensors (input_ids I32 [B, S],
logits F32 [B, S, V]), as test_hf_checkpoint writes them when MOE_EXPORT_DIR is set:

    MOE_EXPORT_DIR=/tmp/exports build/tests/test_hf_checkpoint --gtest_filter='*Export*:*RoundTrip*:*Qwen2*'
    /usr/bin/python3 tools/reference/check_hf_export.py /tmp/exports/*
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_io  # noqa: E402
import hf_reference  # noqa: E402

TOLERANCE = 1e-4  # max |ours - reference| / max |reference|, as the fixture test uses


def load_weights(directory):
    index = os.path.join(directory, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    weights = {}
    for name in files:
        with open(os.path.join(directory, name), "rb") as f:
            tensors, _ = fixture_io.decode_safetensors(f.read())
        weights.update(tensors)
    return weights


def check(directory):
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    weights = load_weights(directory)
    want = hf_reference.weight_shapes(cfg)
    problems = []
    for name in sorted(set(want) - set(weights)):
        problems.append("missing %s" % name)
    for name in sorted(set(weights) - set(want)):
        problems.append("unexpected %s" % name)
    for name in sorted(set(want) & set(weights)):
        if list(weights[name].shape) != list(want[name]):
            problems.append("%s has shape %s, expected %s" % (name, list(weights[name].shape), want[name]))
    if problems:
        return "%s: %s" % (directory, "; ".join(problems))
    with open(os.path.join(directory, "expected.safetensors"), "rb") as f:
        expected, _ = fixture_io.decode_safetensors(f.read())
    ref = hf_reference.forward(cfg, weights, expected["input_ids"].to(torch.int64))
    ours = expected["logits"].to(torch.float64).reshape(ref.shape)
    err = ((ours - ref).abs().max() / ref.abs().max()).item()
    status = "ok" if err <= TOLERANCE else "DIFFERS"
    print("%s %s (%s, %d tensors): logits normalized error %.2e" % (status, directory, cfg["model_type"], len(weights), err))
    return None if err <= TOLERANCE else "%s: logits differ by %.2e" % (directory, err)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    failures = [p for p in (check(d) for d in sys.argv[1:]) if p]
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
