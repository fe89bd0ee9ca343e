#!/usr/bin/python3
"""Write the MoE layer test fixtures (tests/fixtures/layer/<case>.safetensors).

Every number comes from tools/reference/moe_reference.py (float64, autograd
gradients), which implements docs/moe-layer.md.  Run with Debian's interpreter:

    /usr/bin/python3 tools/reference/make_layer_fixtures.py            # (re)write
    /usr/bin/python3 tools/reference/make_layer_fixtures.py --check    # compare

--check regenerates into a temporary directory and compares with the files in
tests/fixtures/layer/: identical bytes pass; otherwise names, dtypes, shapes and
integer-valued tensors (routing, counts, masks) must match exactly and the other
values to float64 rounding (see fixture_io.py); exit status 1 on a real difference.

The safetensors files are written by hand by fixture_io.py (no `safetensors`
package); every tensor here is F64.  See tools/reference/README.md.
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_io  # noqa: E402
import moe_reference as ref  # noqa: E402
from fixture_io import decode_safetensors, encode_safetensors  # noqa: E402,F401  (used by the tests)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "layer")

U_GAP = 1e-6       # min gap between consecutive selectable u of a token (covers k-th vs k+1-th)
GROUP_GAP = 1e-6   # min gap between consecutive group scores of a token
GATE_GAP = 1e-9    # min gap between primary gate values (score priority)
MAX_ATTEMPTS = 200


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def _mask_except(n, zeros):
    m = torch.ones(n, dtype=torch.float64)
    for i in zeros:
        m[i] = 0.0
    return m


CASES = [
    # name, seed, config overrides, extras
    ("mixtral_top2", 1000,
     dict(num_experts_per_tok=2, norm_topk_prob=True, router_aux_loss_coef=0.01,
          router_z_loss_coef=1e-3),
     dict(padding=[5, 17])),
    ("switch_top1_capacity", 2000,
     dict(num_experts_per_tok=1, norm_topk_prob=False, capacity_factor=1.0,
          drop_policy="position", overflow="drop"),
     dict(padding=[0, 9], require=lambda r: r["dropped"] > 0)),
    ("score_reroute", 3000,
     dict(num_experts_per_tok=2, norm_topk_prob=True, capacity_factor=1.0,
          drop_policy="score", overflow="reroute"),
     dict(require=lambda r: r["rerouted"] > 0 and r["dropped"] > 0)),
    ("sigmoid_bias_group_shared", 4000,
     dict(scoring_func="sigmoid", num_experts_per_tok=2, norm_topk_prob=True,
          routed_scaling_factor=2.5, n_group=4, topk_group=2, bias_update_rate=1e-3,
          n_shared_experts=2, shared_expert_intermediate_size=12, shared_expert_gate=False,
          router_aux_loss_coef=0.01, router_z_loss_coef=1e-3),
     dict(bias_std=0.1, require_groups_matter=True, require_bias_matters=True)),
    ("noisy_top2", 5000,
     dict(num_experts_per_tok=2, norm_topk_prob=True, noisy_gating=True,
          router_importance_coef=0.1, router_aux_loss_coef=0.01, router_z_loss_coef=1e-3),
     dict()),
    ("expert_dropout", 6000,
     dict(num_experts_per_tok=2, norm_topk_prob=True),
     dict(expert_mask_zeros=[1, 4, 6])),
    ("gelu_experts", 7000,
     dict(num_experts_per_tok=2, norm_topk_prob=True, hidden_act="gelu", capacity_factor=1.25,
          drop_policy="position", overflow="drop", aux_loss_style="hf",
          router_aux_loss_coef=0.01),
     dict(require=lambda r: r["dropped"] > 0)),
    ("qwen2_shared_gate", 8000,
     dict(num_experts=8, num_experts_per_tok=4, norm_topk_prob=False, n_shared_experts=1,
          shared_expert_intermediate_size=16, shared_expert_gate=True,
          router_aux_loss_coef=0.001),
     dict(padding=[11])),
    ("one_expert_dense", 9000,
     dict(num_experts=1, num_experts_per_tok=1, norm_topk_prob=False, capacity_factor=0.0),
     dict(padding=[3])),
]

ROUTER_STD = 0.5
NOISE_WEIGHT_STD = 0.25


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------

def _randn(*shape, std=1.0):
    return torch.randn(*shape, dtype=torch.float64) * std


def generate_inputs(cfg, extras, seed):
    """All random tensors of one case, drawn in a fixed order after manual_seed(seed)."""
    torch.manual_seed(seed)
    T, d, E = cfg["tokens"], cfg["hidden_size"], cfg["num_experts"]
    inputs = {
        "x": _randn(T, d),
        "dout": _randn(T, d),
        "noise": _randn(T, E),
        "expert_mask": _mask_except(E, extras.get("expert_mask_zeros", [])),
        "token_mask": _mask_except(T, extras.get("padding", [])),
    }
    bias_std = extras.get("bias_std", 0.0)
    inputs["selection_bias"] = _randn(E, std=bias_std) if bias_std > 0 else torch.zeros(E, dtype=torch.float64)
    params = {}
    for name, shape in ref.param_shapes(cfg).items():
        if name == "router.weight":
            std = ROUTER_STD
        elif name == "router.noise_weight":
            std = NOISE_WEIGHT_STD
        else:
            std = 1.0 / math.sqrt(shape[-1])   # fan_in = last dim ([out, in] layout)
        params[name] = _randn(*shape, std=std)
    return inputs, params


def run_case(cfg, inputs, params):
    """Forward + autograd gradients of L = sum(out*dout) + losses."""
    x = inputs["x"].clone().requires_grad_(True)
    p = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    r = ref.moe_forward(cfg, p, inputs["noise"], inputs["expert_mask"], inputs["token_mask"],
                        inputs["selection_bias"], x)
    L = ref.total_loss(r, inputs["dout"])
    names = ["x"] + list(p)
    grads = torch.autograd.grad(L, [x] + [p[n] for n in p])
    r["grads"] = dict(zip(names, grads))
    return r


def tie_problems(cfg, r):
    """Reasons the case is too close to a discrete tie (empty list = fine)."""
    dec = r["decisions"]
    problems = []
    for t, ok in enumerate(dec["valid"]):
        if not ok:
            continue
        vals = sorted((v for v in dec["u"][t] if v != ref.NEG_INF), reverse=True)
        gaps = [a - b for a, b in zip(vals, vals[1:])]
        if gaps and min(gaps) <= U_GAP:
            problems.append("token %d: u gap %.3g" % (t, min(gaps)))
        gs = dec["group_scores"][t]
        if gs is not None:
            gv = sorted((v for v in gs if v is not None), reverse=True)
            ggaps = [a - b for a, b in zip(gv, gv[1:])]
            if ggaps and min(ggaps) <= GROUP_GAP:
                problems.append("token %d: group score gap %.3g" % (t, min(ggaps)))
    if cfg["drop_policy"] == "score" and cfg["capacity_factor"] > 0:
        gv = sorted(g for t, ok in enumerate(dec["valid"]) if ok for g in dec["gate_value"][t])
        ggaps = [b - a for a, b in zip(gv, gv[1:])]
        if ggaps and min(ggaps) <= GATE_GAP:
            problems.append("gate gap %.3g" % min(ggaps))
    return problems


def requirement_problems(cfg, extras, r, inputs):
    problems = []
    req = extras.get("require")
    if req is not None and not req(r):
        problems.append("requirement not met (dropped=%d rerouted=%d)" % (r["dropped"], r["rerouted"]))
    if extras.get("require_groups_matter"):
        flat = ref.route(dict(cfg, n_group=1, topk_group=1), r["s"].detach(), inputs["selection_bias"],
                         inputs["expert_mask"], inputs["token_mask"])["primary"]
        if flat == r["decisions"]["primary"]:
            problems.append("group limiting changes no selection")
    if extras.get("require_bias_matters"):
        nobias = ref.route(cfg, r["s"].detach(), torch.zeros_like(inputs["selection_bias"]),
                           inputs["expert_mask"], inputs["token_mask"])["primary"]
        if nobias == r["decisions"]["primary"]:
            problems.append("selection bias changes no selection")
    return problems


def build_case(name, seed, overrides, extras):
    cfg = ref.make_config(**overrides)
    for attempt in range(MAX_ATTEMPTS):
        inputs, params = generate_inputs(cfg, extras, seed + attempt)
        r = run_case(cfg, inputs, params)
        problems = tie_problems(cfg, r) + requirement_problems(cfg, extras, r, inputs)
        if not problems:
            return cfg, seed + attempt, inputs, params, r
    raise RuntimeError("case %s: no acceptable seed in %d attempts (last: %s)" % (name, MAX_ATTEMPTS, problems))


def fixture_tensors(cfg, inputs, params, r):
    """Ordered list of (name, float64 tensor) written to the fixture."""
    def f64(v):
        if isinstance(v, torch.Tensor):
            return v.detach().to(torch.float64)
        return torch.tensor([float(v)], dtype=torch.float64)

    def scalar(v):
        return f64(v).reshape(1)

    items = [(n, inputs[n]) for n in ("x", "dout", "noise", "expert_mask", "token_mask", "selection_bias")]
    items += list(params.items())
    items += [
        ("out", r["out"]),
        ("loss.load_balance", scalar(r["loss_load_balance"])),
        ("loss.importance", scalar(r["loss_importance"])),
        ("loss.z", scalar(r["loss_z"])),
        ("routing.primary_expert", r["primary_expert"]),
        ("routing.expert", r["expert"]),
        ("routing.gate", r["gate"]),
        ("counts.primary", r["counts_primary"]),
        ("counts.kept", r["counts_kept"]),
        ("stats.dropped", scalar(r["dropped"])),
        ("stats.rerouted", scalar(r["rerouted"])),
        ("stats.entropy", scalar(r["entropy"])),
        ("bias_after_update", r["bias_after_update"]),
    ]
    items += [("grad." + n, g) for n, g in r["grads"].items()]
    return [(n, f64(t)) for n, t in items]


# --------------------------------------------------------------------------

def write_all(directory, verbose=True):
    os.makedirs(directory, exist_ok=True)
    summary = []
    for name, seed, overrides, extras in CASES:
        cfg, used_seed, inputs, params, r = build_case(name, seed, overrides, extras)
        meta = {"config": json.dumps(cfg, separators=(",", ":")), "case": name}
        blob = encode_safetensors(fixture_tensors(cfg, inputs, params, r), meta)
        path = os.path.join(directory, name + ".safetensors")
        with open(path, "wb") as fh:
            fh.write(blob)
        row = dict(case=name, seed=used_seed, bytes=len(blob), capacity=r["capacity"],
                   dropped=r["dropped"], rerouted=r["rerouted"],
                   load_balance=float(r["loss_load_balance"]), importance=float(r["loss_importance"]),
                   z=float(r["loss_z"]), entropy=r["entropy"],
                   primary=[int(v) for v in r["counts_primary"]], kept=[int(v) for v in r["counts_kept"]])
        summary.append(row)
        if verbose:
            print("%-26s seed=%d C=%s dropped=%d rerouted=%d lb=%.9g imp=%.9g z=%.9g H=%.6f  %d bytes"
                  % (name, used_seed, r["capacity"], r["dropped"], r["rerouted"], row["load_balance"],
                     row["importance"], row["z"], r["entropy"], len(blob)))
            print("%26s primary=%s kept=%s" % ("", row["primary"], row["kept"]))
    return summary


if __name__ == "__main__":
    fixture_io.main(__doc__, FIXTURE_DIR, write_all)
