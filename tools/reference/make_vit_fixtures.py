#!/usr/bin/python3
"""Write the ViT-MoE routing fixtures (tests/fixtures/vit/<case>.safetensors) from
vit_moe_reference.py: inputs, weights, an upstream gradient dout, the outputs, every gradient
of sum(y * dout) and the discrete routing decisions (I64).  Run with Debian's interpreter:

    /usr/bin/python3 tools/reference/make_vit_fixtures.py            # (re)write
    /usr/bin/python3 tools/reference/make_vit_fixtures.py --check    # compare (fixture_io.py)
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_io  # noqa: E402
import vit_moe_reference as ref  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "vit")

D, F, E, GROUP, GROUPS = 8, 6, 4, 6, 3
GAP = 1e-6  # min gap between the scores a discrete choice compares (else the seed advances)

CASES = [
    # name, kind, act, extras
    ("soft_moe_swiglu", "soft", "silu", dict(slots=2)),
    ("soft_moe_gelu", "soft", "gelu", dict(slots=1)),
    ("expert_choice_swiglu", "ec", "silu", dict(cf=2.0)),
    ("expert_choice_gelu", "ec", "gelu", dict(cf=1.0)),
    ("bpr_top2", "bpr", "gelu", dict(k=2, cf=0.5, norm=False)),
    ("bpr_top1", "bpr", "silu", dict(k=1, cf=0.5, norm=False)),
    ("bpr_top2_norm", "bpr", "silu", dict(k=2, cf=0.75, norm=True)),
]


def _min_gap(values):
    v = sorted(values)
    return min((b - a for a, b in zip(v, v[1:])), default=1.0)


def make_case(kind, act, extras, seed):
    torch.manual_seed(seed)
    T = GROUP * GROUPS
    x = torch.randn(T, D, dtype=torch.float64)
    std = 0.5
    w1 = (torch.randn(E, F, D, dtype=torch.float64) * std).requires_grad_()
    w3 = (torch.randn(E, F, D, dtype=torch.float64) * std).requires_grad_() if act == "silu" else None
    w2 = (torch.randn(E, D, F, dtype=torch.float64) * std).requires_grad_()
    dout = torch.randn(T, D, dtype=torch.float64)
    x.requires_grad_()
    tensors = [("x", x)]
    meta = {"kind": kind, "act": act, "group": str(GROUP), "num_experts": str(E)}
    if kind == "soft":
        p = extras["slots"]
        router = (torch.randn(D, E * p, dtype=torch.float64)).requires_grad_()
        y, Dm, Cm = ref.soft_moe(x, router, w1, w3, w2, act, p, GROUP)
        meta["slots_per_expert"] = str(p)
        rname, decisions, ok = "router.phi", [], True
    elif kind == "ec":
        router = (torch.randn(E, D, dtype=torch.float64)).requires_grad_()
        y, chosen, s = ref.expert_choice(x, router, w1, w3, w2, act, extras["cf"], GROUP)
        meta["capacity_factor"] = repr(extras["cf"])
        rname, decisions = "router.weight", [("chosen", chosen)]
        ok = all(_min_gap(s[g * GROUP:(g + 1) * GROUP, e].tolist()) > GAP
                 for g in range(GROUPS) for e in range(E))
    else:
        router = (torch.randn(E, D, dtype=torch.float64)).requires_grad_()
        y, expert = ref.top_k_batch_priority(x, router, w1, w3, w2, act, extras["k"], extras["cf"],
                                             extras["norm"])
        meta.update(k=str(extras["k"]), capacity_factor=repr(extras["cf"]),
                    norm_topk_prob=str(extras["norm"]).lower())
        rname, decisions = "router.weight", [("expert", expert)]
        s = torch.softmax(x @ router.T, dim=1).detach()
        ok = all(_min_gap(s[t].tolist()) > GAP for t in range(T))
        ok = ok and _min_gap(s.max(dim=1).values.tolist()) > GAP
        ok = ok and bool((expert < 0).any())  # the case must drop something
    tensors += [(rname, router), ("experts.w1", w1)]
    if w3 is not None:
        tensors.append(("experts.w3", w3))
    tensors += [("experts.w2", w2), ("dout", dout)]
    (y * dout).sum().backward()
    out = [(n, t.detach().clone()) for n, t in tensors]
    out.append(("y", y.detach()))
    for n, t in tensors:
        if n != "dout":
            out.append(("grad." + n, t.grad.detach().clone()))
    out += decisions
    return out, meta, ok


def write_all(directory, verbose=True):
    os.makedirs(directory, exist_ok=True)
    for i, (name, kind, act, extras) in enumerate(CASES):
        seed = 5000 + 100 * i
        while True:
            tensors, meta, ok = make_case(kind, act, extras, seed)
            if ok:
                break
            seed += 1
        meta["seed"] = str(seed)
        with open(os.path.join(directory, name + ".safetensors"), "wb") as fh:
            fh.write(fixture_io.encode_safetensors(tensors, meta))
        if verbose:
            print("wrote %s (seed %d)" % (name, seed))


if __name__ == "__main__":
    fixture_io.main(__doc__, FIXTURE_DIR, write_all)
