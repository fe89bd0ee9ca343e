#!/usr/bin/python3
"""Write the language-model golden fixtures (tests/fixtures/model/<case>.safetensors).

Every number comes from tools/reference/model_reference.py (float64, autograd
gradients, torch clip_grad_norm_ + AdamW), which implements docs/model.md; the
family_<model_type> cases (one tiny model of each Hugging Face MoE family: q/k/v
biases, shared expert and a dense layer by decoder_sparse_step for qwen2_moe,
per-head q/k norm, explicit head_dim and mlp_only_layers for qwen3_moe, the whole-
projection q/k norm and unnormalized gates for olmoe) from hf_reference.py, which
is written from the Hugging Face modeling files, trained with model_reference.train.
A family fixture holds the checkpoint's config.json as metadata "hf_config" and the
training keys as "training"; its tensors are under the engine's names (experts
stacked [E, ...]; see engine_name) so the test reads them as the other cases.
Run with Debian's interpreter:

    /usr/bin/python3 tools/reference/make_model_fixtures.py            # (re)write
    /usr/bin/python3 tools/reference/make_model_fixtures.py --check    # compare

--check regenerates into a temporary directory and compares with the files in
tests/fixtures/model/: identical bytes pass; otherwise names, dtypes, shapes and
the token tensors must match exactly and the float values to float64 rounding
(see fixture_io.py); exit status 1 on a real difference.

File format: hand-written safetensors written by fixture_io.py (as for the layer
fixtures); F64 except the token tensors (I64).  See tools/reference/README.md.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_io  # noqa: E402
import hf_reference as href  # noqa: E402
import model_reference as mref  # noqa: E402
from fixture_io import decode_safetensors, encode_safetensors  # noqa: E402,F401  (used by the tests)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "model")

U_GAP = 1e-6       # min gap between any two consecutive selection keys u of a token
K_GAP = 1e-3       # min gap between the k-th and (k+1)-th u (the selected set's boundary)
MAX_ATTEMPTS = 200

# Initial weights: matrices N(0, MATRIX_STD), routers N(0, ROUTER_STD), the embedding
# N(0, init["embed_std"]), the decoder-layer norms 1 + N(0, NORM_STD), the final norm
# init["final_norm"] + N(0, NORM_STD).  The per-case embedding / final-norm scales put the
# gradient norm near grad_clip so that clipping triggers on some steps and not on others.
MATRIX_STD = 0.1
ROUTER_STD = 0.5
NORM_STD = 0.1
MIN_CLIPPED = 2    # at least this many clipped and this many unclipped steps


def _config(**over):
    train = dict(learning_rate=1e-2, min_lr_ratio=0.1, warmup_steps=3, max_steps=10,
                 weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8,
                 grad_clip=1.0, batch_size=2, seq_len=8, grad_accum_steps=1)
    train.update(over.pop("training", {}))
    cfg = {
        "model_type": "mixtral", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "max_position_embeddings": 64, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "initializer_range": 0.02,
        "num_local_experts": 4, "num_experts_per_tok": 2, "moe_every": 2,
        "dense_intermediate_size": 24,
    }
    cfg.update(mref.MOE_DEFAULTS)
    cfg.update(router_aux_loss_coef=0.01, router_z_loss_coef=1e-3)
    for k in over:
        if k not in cfg:
            raise KeyError(k)
    cfg.update(over)
    cfg["training"] = train
    return cfg


# name, seed, config, steps, init scales
CASES = [
    ("tiny_mixed", 100, _config(), 10, dict(embed_std=1.0, final_norm=1.0)),
    ("tiny_tied_all_moe", 200,
     _config(moe_every=1, tie_word_embeddings=True, num_key_value_heads=1,
             scoring_func="sigmoid", norm_topk_prob=True, training=dict(grad_clip=0.5)), 10,
     dict(embed_std=0.2, final_norm=0.15)),
]


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------

def generate(cfg, steps, seed, init):
    """Initial params and the [steps, B, S+1] token windows, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in mref.param_shapes(cfg).items():
        if len(shape) == 1:
            mean = init["final_norm"] if name == "model.norm.weight" else 1.0
            params[name] = mean + NORM_STD * torch.randn(*shape, generator=g, dtype=torch.float64)
        else:
            if name.endswith("router.weight"):
                std = ROUTER_STD
            elif name == "model.embed_tokens.weight":
                std = init["embed_std"]
            else:
                std = MATRIX_STD
            params[name] = std * torch.randn(*shape, generator=g, dtype=torch.float64)
    tr = cfg["training"]
    windows = torch.randint(0, cfg["vocab_size"], (steps, tr["batch_size"], tr["seq_len"] + 1),
                            generator=g, dtype=torch.int64)
    return params, windows


def routing_problems(cfg, log, tag):
    """Ties in any MoE layer's selection keys at any step (empty list = fine)."""
    k = cfg["num_experts_per_tok"]
    problems = []
    for t, st in enumerate(log):
        for l, r in st["result"]["moe"].items():
            for tok, u in enumerate(r["decisions"]["u"]):
                vals = sorted((v for v in u if v != float("-inf")), reverse=True)
                gaps = [a - b for a, b in zip(vals, vals[1:])]
                if gaps and min(gaps) <= U_GAP:
                    problems.append("%s step %d layer %d token %d: u gap %.3g" % (tag, t, l, tok, min(gaps)))
                if len(vals) > k and vals[k - 1] - vals[k] <= K_GAP:
                    problems.append("%s step %d layer %d token %d: k-th gap %.3g"
                                    % (tag, t, l, tok, vals[k - 1] - vals[k]))
    return problems


def selections(log):
    return [{l: [sorted(p) for p in r["decisions"]["primary"]] for l, r in st["result"]["moe"].items()}
            for st in log]


def min_kth_gap(cfg, log):
    k = cfg["num_experts_per_tok"]
    best = float("inf")
    for st in log:
        for r in st["result"]["moe"].values():
            for u in r["decisions"]["u"]:
                vals = sorted(u, reverse=True)
                if len(vals) > k:
                    best = min(best, vals[k - 1] - vals[k])
    return best


def run_case(cfg, steps, seed, init):
    params, windows = generate(cfg, steps, seed, init)
    # step-0 forward and gradient at the initial weights
    P = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    r0 = mref.loss_on_window(cfg, P, windows[0])
    grads = torch.autograd.grad(r0["loss"], list(P.values()))
    final, log = mref.train(cfg, params, windows)
    final32, log32 = mref.train(cfg, params, windows, dtype=torch.float32)
    problems = routing_problems(cfg, log, "f64") + routing_problems(cfg, log32, "f32")
    if selections(log) != selections(log32):
        problems.append("float32 trajectory routes differently")
    clipped = [st["clipped"] for st in log]
    if cfg["training"]["grad_clip"] > 0 and not MIN_CLIPPED <= sum(clipped) <= len(clipped) - MIN_CLIPPED:
        problems.append("clipping on %d of %d steps" % (sum(clipped), len(clipped)))
    if clipped != [st["clipped"] for st in log32]:
        problems.append("float32 clips on other steps")
    return dict(params=params, windows=windows, r0=r0, grads=dict(zip(P, grads)),
                final=final, log=log, log32=log32, problems=problems)


def build_case(name, seed, cfg, steps, init):
    problems = None
    for attempt in range(MAX_ATTEMPTS):
        res = run_case(cfg, steps, seed + attempt, init)
        if not res["problems"]:
            res["seed"] = seed + attempt
            return res
        problems = res["problems"]
    raise RuntimeError("case %s: no acceptable seed in %d attempts (last: %s)"
                       % (name, MAX_ATTEMPTS, problems[:3]))


def fixture_tensors(cfg, res):
    """Ordered list of (name, tensor); int64 tensors are written as I64, the rest as F64."""
    f64 = lambda t: t.detach().to(torch.float64)
    sc = lambda v: torch.tensor([float(v)], dtype=torch.float64)
    r0, log = res["r0"], res["log"]
    items = [("param." + n, f64(t)) for n, t in res["params"].items()]
    items += [("tokens", res["windows"][0].clone()),
              ("logits", f64(r0["logits"])),
              ("ce", sc(r0["ce"])), ("aux", sc(r0["aux"])), ("loss", sc(r0["loss"]))]
    items += [("grad." + n, f64(g)) for n, g in res["grads"].items()]
    items += [("trajectory.tokens", res["windows"].clone()),
              ("trajectory.loss", torch.tensor([st["loss"] for st in log], dtype=torch.float64)),
              ("trajectory.lr", torch.tensor([st["lr"] for st in log], dtype=torch.float64)),
              ("trajectory.grad_norm", torch.tensor([st["grad_norm"] for st in log], dtype=torch.float64))]
    items += [("final." + n, f64(t)) for n, t in res["final"].items()]
    return items


# --------------------------------------------------------------------------
# The Hugging Face families (hf_reference.py)
# --------------------------------------------------------------------------

FAMILY_TRAINING = dict(learning_rate=1e-2, min_lr_ratio=0.1, warmup_steps=1, max_steps=3,
                       weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8,
                       grad_clip=2.0, batch_size=2, seq_len=8, grad_accum_steps=1)
FAMILY_STEPS = 3


def _hf_config(model_type, **over):
    cfg = {"model_type": model_type, "vocab_size": 32, "hidden_size": 16,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": False, "num_experts_per_tok": 2,
           "router_aux_loss_coef": 0.02, "hidden_act": "silu"}
    cfg.update(over)
    return cfg


# name, seed, Hugging Face config.json
FAMILY_CASES = [
    ("family_mixtral", 300,
     _hf_config("mixtral", intermediate_size=8, num_local_experts=4, rms_norm_eps=1e-5)),
    ("family_qwen2_moe", 400,
     _hf_config("qwen2_moe", intermediate_size=12, moe_intermediate_size=8, num_experts=4,
                shared_expert_intermediate_size=8, decoder_sparse_step=2, mlp_only_layers=[],
                norm_topk_prob=False, qkv_bias=True)),
    ("family_qwen3_moe", 500,
     _hf_config("qwen3_moe", intermediate_size=12, moe_intermediate_size=8, num_experts=4,
                head_dim=6, decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=True,
                tie_word_embeddings=True)),
    ("family_olmoe", 600,
     _hf_config("olmoe", intermediate_size=8, num_experts=4, norm_topk_prob=False)),
]


def engine_name(cfg, name):
    """(engine parameter name, expert index or None) of a Hugging Face tensor name."""
    parts = name.split(".")
    if not name.startswith("model.layers.") or parts[3] == "self_attn" or "layernorm" in name:
        return name, None
    pre = ".".join(parts[:3]) + "."
    rest = ".".join(parts[4:])              # after block_sparse_moe. / mlp.
    moe = pre + "block_sparse_moe."
    proj = {"w1": "w1", "w3": "w3", "w2": "w2",
            "gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    if rest == "gate.weight":
        return moe + "router.weight", None
    if rest.startswith("experts."):
        _, e, p, _ = rest.split(".")
        return moe + "experts." + proj[p], int(e)
    if rest.startswith("shared_expert."):
        return moe + "shared." + proj[rest.split(".")[1]], None
    if rest == "shared_expert_gate.weight":
        return moe + "shared.gate", None
    return pre + "mlp.ffn." + proj[rest.split(".")[0]], None   # a dense layer


def to_engine(cfg, tensors):
    """{engine name: tensor} with the experts' tensors stacked in expert order."""
    out, stacks = {}, {}
    for name, t in tensors.items():
        ours, e = engine_name(cfg, name)
        if e is None:
            out[ours] = t
        else:
            stacks.setdefault(ours, {})[e] = t
    for ours, per in stacks.items():
        out[ours] = torch.stack([per[e] for e in sorted(per)])
    return out


def family_init(cfg, seed):
    """Initial weights (Hugging Face names) and the [steps, B, S+1] token windows."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in href.weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            weights[name] = 1.0 + NORM_STD * torch.randn(*shape, generator=g, dtype=torch.float64)
        elif len(shape) == 1:   # q/k/v biases
            weights[name] = MATRIX_STD * torch.randn(*shape, generator=g, dtype=torch.float64)
        else:
            router = name.endswith(".gate.weight") or name.endswith("shared_expert_gate.weight")
            emb = name == "model.embed_tokens.weight"
            std = ROUTER_STD if router else (0.5 if emb else MATRIX_STD)
            weights[name] = std * torch.randn(*shape, generator=g, dtype=torch.float64)
    tr = FAMILY_TRAINING
    windows = torch.randint(0, cfg["vocab_size"], (FAMILY_STEPS, tr["batch_size"], tr["seq_len"] + 1),
                            generator=g, dtype=torch.int64)
    return weights, windows


def family_routing_problems(cfg, routers, tag):
    """Router logits whose k-th and (k+1)-th largest are closer than K_GAP (a float32
    implementation could select another expert)."""
    k = cfg["num_experts_per_tok"]
    problems = []
    for l, r in enumerate(routers):
        top = torch.topk(r.detach(), k + 1, dim=-1).values
        gap = float((top[:, k - 1] - top[:, k]).min())
        if gap <= K_GAP:
            problems.append("%s router %d: k-th gap %.3g" % (tag, l, gap))
    return problems


def run_family_case(cfg, seed):
    weights, windows = family_init(cfg, seed)
    train_cfg = {"training": FAMILY_TRAINING}
    loss_fn = lambda _cfg, P, w: href.loss_on_window(cfg, P, w)  # noqa: E731
    P = {n: t.clone().requires_grad_(True) for n, t in weights.items()}
    r0 = href.loss_on_window(cfg, P, windows[0])
    grads = torch.autograd.grad(r0["loss"], list(P.values()))
    final, log = mref.train(train_cfg, weights, windows, loss_fn=loss_fn)
    problems = family_routing_problems(cfg, r0["routers"], "step 0")
    for t, st in enumerate(log):
        problems += family_routing_problems(cfg, st["result"]["routers"], "step %d" % t)
    return dict(params=weights, windows=windows, r0=r0, grads=dict(zip(P, grads)),
                final=final, log=log, problems=problems)


def build_family_case(name, seed, cfg):
    problems = None
    for attempt in range(MAX_ATTEMPTS):
        res = run_family_case(cfg, seed + attempt)
        if not res["problems"]:
            res["seed"] = seed + attempt
            return res
        problems = res["problems"]
    raise RuntimeError("case %s: no acceptable seed in %d attempts (last: %s)"
                       % (name, MAX_ATTEMPTS, problems[:3]))


def family_fixture_tensors(cfg, res):
    """As fixture_tensors, under the engine's names."""
    res = dict(res)
    for key in ("params", "grads", "final"):
        res[key] = to_engine(cfg, res[key])
    return fixture_tensors(cfg, res)


# --------------------------------------------------------------------------

def write_all(directory, verbose=True):
    os.makedirs(directory, exist_ok=True)
    summary = []
    for name, seed, cfg, steps, init in CASES:
        res = build_case(name, seed, cfg, steps, init)
        meta = {"config": json.dumps(cfg, separators=(",", ":")), "steps": str(steps), "case": name}
        blob = encode_safetensors(fixture_tensors(cfg, res), meta)
        with open(os.path.join(directory, name + ".safetensors"), "wb") as fh:
            fh.write(blob)
        log, log32 = res["log"], res["log32"]
        row = dict(case=name, seed=res["seed"], bytes=len(blob),
                   loss=[st["loss"] for st in log], grad_norm=[st["grad_norm"] for st in log],
                   clipped=[t for t, st in enumerate(log) if st["clipped"]],
                   f32_max_rel_loss=max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(log, log32)),
                   min_kth_gap=min(min_kth_gap(cfg, log), min_kth_gap(cfg, log32)))
        summary.append(row)
        if verbose:
            print("%-18s seed=%d %d bytes  ce0=%.9g aux0=%.9g" % (name, res["seed"], len(blob),
                                                                float(res["r0"]["ce"]), float(res["r0"]["aux"])))
            for t, st in enumerate(log):
                print("   step %2d lr=%.6g loss=%.12g grad_norm=%.6g%s"
                      % (t, st["lr"], st["loss"], st["grad_norm"], "  clipped" if st["clipped"] else ""))
            print("   float32 trajectory: max rel loss diff %.3g, same routing; min k-th u gap %.3g"
                  % (row["f32_max_rel_loss"], row["min_kth_gap"]))
    for name, seed, cfg in FAMILY_CASES:
        res = build_family_case(name, seed, cfg)
        meta = {"hf_config": json.dumps(cfg, separators=(",", ":")),
                "training": json.dumps(FAMILY_TRAINING, separators=(",", ":")),
                "steps": str(FAMILY_STEPS), "case": name}
        blob = encode_safetensors(family_fixture_tensors(cfg, res), meta)
        with open(os.path.join(directory, name + ".safetensors"), "wb") as fh:
            fh.write(blob)
        log = res["log"]
        summary.append(dict(case=name, seed=res["seed"], bytes=len(blob),
                            loss=[st["loss"] for st in log]))
        if verbose:
            print("%-18s seed=%d %d bytes  ce0=%.9g aux0=%.9g" % (name, res["seed"], len(blob),
                                                                float(res["r0"]["ce"]), float(res["r0"]["aux"])))
            for t, st in enumerate(log):
                print("   step %2d lr=%.6g loss=%.12g grad_norm=%.6g%s"
                      % (t, st["lr"], st["loss"], st["grad_norm"], "  clipped" if st["clipped"] else ""))
    return summary


if __name__ == "__main__":
    fixture_io.main(__doc__, FIXTURE_DIR, write_all)
