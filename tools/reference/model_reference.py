"""Independent PyTorch reference of the decoder LM and its training step.

Implements docs/model.md ("The language model and its training: exact contract")
in plain PyTorch, written from the spec and sharing nothing with the C++ side
(``src/model/``).  MoE layers go through :func:`moe_reference.moe_forward`
(docs/moe-layer.md): dropless unless the config says otherwise, no noise, every
token real, zero selection bias.  Every gradient comes from ``torch.autograd``;
the optimizer step is ``torch.nn.utils.clip_grad_norm_`` + ``torch.optim.AdamW``.

The model is dtype-generic (it runs in the dtype of its parameters): the
fixtures use float64; a float32 run is used to check that a float32
implementation makes the same routing decisions along a trajectory.

Config: a dict in the Hugging Face Mixtral ``config.json`` style (see
:data:`EXAMPLE_CONFIG`), with the docs/moe-layer.md routing keys at top level and
the training keys under ``"training"``.  ``num_local_experts`` is the MoE layer's
``num_experts``, ``intermediate_size`` its ``moe_intermediate_size``.
"""

import math

import torch

try:
    import moe_reference as moe_ref
except ImportError:  # imported as a package module
    from . import moe_reference as moe_ref

# docs/moe-layer.md keys carried at top level of the model config (hidden_size,
# moe_intermediate_size and num_experts come from the Mixtral keys instead).
MOE_KEYS = (
    "scoring_func", "norm_topk_prob", "routed_scaling_factor", "n_group", "topk_group",
    "noisy_gating", "expert_dropout", "use_selection_bias", "bias_update_rate",
    "capacity_factor", "drop_policy", "overflow", "hidden_act", "n_shared_experts",
    "shared_expert_intermediate_size", "shared_expert_gate", "router_aux_loss_coef",
    "router_importance_coef", "router_z_loss_coef", "aux_loss_style",
)

MOE_DEFAULTS = {
    "scoring_func": "softmax", "norm_topk_prob": True, "routed_scaling_factor": 1.0,
    "n_group": 1, "topk_group": 1, "noisy_gating": False, "expert_dropout": 0.0,
    "use_selection_bias": False, "bias_update_rate": 0.0, "capacity_factor": 0.0,
    "drop_policy": "position", "overflow": "drop", "hidden_act": "silu",
    "n_shared_experts": 0, "shared_expert_intermediate_size": 0, "shared_expert_gate": False,
    "router_aux_loss_coef": 0.0, "router_importance_coef": 0.0, "router_z_loss_coef": 0.0,
    "aux_loss_style": "switch",
}

EXAMPLE_CONFIG = {
    "model_type": "mixtral", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False, "initializer_range": 0.02, "num_local_experts": 4,
    "num_experts_per_tok": 2, "moe_every": 2, "dense_intermediate_size": 24,
    **MOE_DEFAULTS,
    "training": {"learning_rate": 1e-2, "min_lr_ratio": 0.1, "warmup_steps": 3, "max_steps": 10,
                 "weight_decay": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_eps": 1e-8,
                 "grad_clip": 1.0, "batch_size": 2, "seq_len": 8, "grad_accum_steps": 1},
}


# --------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------

def head_size(cfg):
    hd = cfg.get("head_dim", 0) or 0
    return hd if hd > 0 else cfg["hidden_size"] // cfg["num_attention_heads"]


def dense_width(cfg):
    w = cfg.get("dense_intermediate_size", 0) or 0
    return w if w > 0 else cfg["intermediate_size"]


def is_moe_layer(cfg, l):
    """docs/model.md: MoE iff num_local_experts > 0 and (l + 1) % moe_every == 0."""
    return cfg["num_local_experts"] > 0 and (l + 1) % cfg.get("moe_every", 1) == 0


def moe_config(cfg, tokens):
    """The docs/moe-layer.md config of the model's MoE layers for a call on ``tokens`` rows."""
    m = {k: cfg.get(k, MOE_DEFAULTS[k]) for k in MOE_KEYS}
    m.update(hidden_size=cfg["hidden_size"], moe_intermediate_size=cfg["intermediate_size"],
             num_experts=cfg["num_local_experts"], num_experts_per_tok=cfg["num_experts_per_tok"],
             tokens=tokens)
    for key in ("noisy_gating", "use_selection_bias"):
        if m[key]:
            raise NotImplementedError("the model reference runs without %s" % key)
    if m["expert_dropout"] != 0:
        raise NotImplementedError("the model reference runs without expert_dropout")
    m = {k: m[k] for k in moe_ref.CONFIG_KEYS}
    moe_ref.validate_config(m)
    return m


def param_shapes(cfg):
    """Ordered {name: shape} of the model parameters (docs/model.md table order)."""
    V, d = cfg["vocab_size"], cfg["hidden_size"]
    H, G, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_size(cfg)
    assert H % G == 0 and hd % 2 == 0
    shapes = {"model.embed_tokens.weight": [V, d]}
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        shapes[p + "input_layernorm.weight"] = [d]
        shapes[p + "self_attn.q_proj.weight"] = [H * hd, d]
        shapes[p + "self_attn.k_proj.weight"] = [G * hd, d]
        shapes[p + "self_attn.v_proj.weight"] = [G * hd, d]
        shapes[p + "self_attn.o_proj.weight"] = [d, H * hd]
        shapes[p + "post_attention_layernorm.weight"] = [d]
        if is_moe_layer(cfg, l):
            for n, s in moe_ref.param_shapes(moe_config(cfg, 1)).items():
                shapes[p + "block_sparse_moe." + n] = s
        else:
            Fd = dense_width(cfg)
            shapes[p + "mlp.ffn.w1"] = [Fd, d]
            shapes[p + "mlp.ffn.w3"] = [Fd, d]
            shapes[p + "mlp.ffn.w2"] = [d, Fd]
    shapes["model.norm.weight"] = [d]
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = [V, d]
    return shapes


# --------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    """x * w / sqrt(mean(x^2) + eps), per row."""
    return x * w / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)


def rope_cos_sin(S, hd, theta, dtype):
    """cos/sin [S, hd] in the HF rotate_half layout: angle p * theta^(-2i/hd), i < hd/2, twice."""
    i = torch.arange(hd // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * i / hd)
    ang = torch.arange(S, dtype=torch.float64)[:, None] * inv_freq[None, :]    # [S, hd/2]
    ang = torch.cat([ang, ang], dim=-1)                                          # [S, hd]
    return torch.cos(ang).to(dtype), torch.sin(ang).to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    """x [..., S, hd]: y[i] = x[i] c - x[i+hd/2] s, y[i+hd/2] = x[i+hd/2] c + x[i] s."""
    return x * cos + rotate_half(x) * sin


def repeat_kv(x, n_rep):
    """[B, G, S, hd] -> [B, G*n_rep, S, hd]; query head j reads kv head j // n_rep (HF)."""
    B, G, S, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(B, G, n_rep, S, hd).reshape(B, G * n_rep, S, hd)


def attention(cfg, P, prefix, a, B, S):
    H, G, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_size(cfg)
    q = a @ P[prefix + "self_attn.q_proj.weight"].t()            # [n, H*hd]
    k = a @ P[prefix + "self_attn.k_proj.weight"].t()            # [n, G*hd]
    v = a @ P[prefix + "self_attn.v_proj.weight"].t()
    q = q.view(B, S, H, hd).transpose(1, 2)                      # [B, H, S, hd]
    k = k.view(B, S, G, hd).transpose(1, 2)                      # [B, G, S, hd]
    v = v.view(B, S, G, hd).transpose(1, 2)
    cos, sin = rope_cos_sin(S, hd, float(cfg["rope_theta"]), a.dtype)
    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)
    k = repeat_kv(k, H // G)
    v = repeat_kv(v, H // G)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)           # [B, H, S(query), S(key)]
    causal = torch.ones(S, S, dtype=torch.bool).tril()           # key <= query
    scores = scores.masked_fill(~causal, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o = p @ v                                                    # [B, H, S, hd]
    o = o.transpose(1, 2).reshape(B * S, H * hd)
    return o @ P[prefix + "self_attn.o_proj.weight"].t()


def swiglu(x, w1, w3, w2):
    a = x @ w1.t()
    return (a * torch.sigmoid(a) * (x @ w3.t())) @ w2.t()


def forward(cfg, P, tokens, targets=None):
    """Model forward on a [B, S] token batch.

    P: {name: tensor} as in :func:`param_shapes` (may require grad).  targets [B, S]
    (-1 = ignored) or None.  Returns a dict with logits [n, V], and when targets are
    given ce, aux, loss (0-dim tensors); moe: per MoE layer {layer: moe_forward result}.
    """
    B, S = tokens.shape
    n = B * S
    eps = float(cfg["rms_norm_eps"])
    E = P["model.embed_tokens.weight"]
    h = E[tokens.reshape(-1)]                                    # [n, d], row = b*S + s
    mcfg = moe_config(cfg, n) if cfg["num_local_experts"] > 0 else None
    moe_results = {}
    aux = h.new_zeros(())
    for l in range(cfg["num_hidden_layers"]):
        pre = "model.layers.%d." % l
        a = rmsnorm(h, P[pre + "input_layernorm.weight"], eps)
        h = h + attention(cfg, P, pre, a, B, S)
        m = rmsnorm(h, P[pre + "post_attention_layernorm.weight"], eps)
        if is_moe_layer(cfg, l):
            mp = pre + "block_sparse_moe."
            lp = {name[len(mp):]: t for name, t in P.items() if name.startswith(mp)}
            Ex = cfg["num_local_experts"]
            r = moe_ref.moe_forward(
                mcfg, lp, noise=m.new_zeros(n, Ex), expert_mask=m.new_ones(Ex),
                token_mask=m.new_ones(n), selection_bias=m.new_zeros(Ex), x=m)
            moe_results[l] = r
            h = h + r["out"]
            aux = aux + r["loss_load_balance"] + r["loss_importance"] + r["loss_z"]
        else:
            h = h + swiglu(m, P[pre + "mlp.ffn.w1"], P[pre + "mlp.ffn.w3"], P[pre + "mlp.ffn.w2"])
    head = E if cfg["tie_word_embeddings"] else P["lm_head.weight"]
    logits = rmsnorm(h, P["model.norm.weight"], eps) @ head.t()  # [n, V]
    out = {"logits": logits, "moe": moe_results, "aux": aux}
    if targets is not None:
        t = targets.reshape(-1)
        valid = t != -1
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
        ce = (lse - picked)[valid].mean()
        out["ce"] = ce
        out["loss"] = ce + aux
    return out


def loss_on_window(cfg, P, window):
    """Forward on a [B, S+1] window: inputs window[:, :-1], targets window[:, 1:]."""
    return forward(cfg, P, window[:, :-1], window[:, 1:])


# --------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------

def lr_at(train, t):
    """docs/model.md learning rate at optimizer step t = 0, 1, ..."""
    lr = float(train["learning_rate"])
    W, T = int(train["warmup_steps"]), int(train["max_steps"])
    lr_min = lr * float(train["min_lr_ratio"])
    if t < W:
        return lr * (t + 1) / W
    prog = min(1.0, (t - W) / max(1, T - W))
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * prog))


def make_optimizer(cfg, P):
    """torch AdamW, two groups: weight decay on params with >= 2 dims, none on 1-dim ones."""
    tr = cfg["training"]
    decay = [t for t in P.values() if t.dim() >= 2]
    no_decay = [t for t in P.values() if t.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(tr["weight_decay"])},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=float(tr["learning_rate"]), betas=(float(tr["adam_beta1"]), float(tr["adam_beta2"])),
        eps=float(tr["adam_eps"]))


def train_step(cfg, P, opt, t, window, loss_fn=None):
    """One optimizer step t on a [B, S+1] window (grad_accum_steps = 1).

    loss_fn(cfg, P, window) -> dict with loss, ce, aux (default :func:`loss_on_window`;
    hf_reference.loss_on_window trains the Hugging Face families the same way).

    Returns dict: loss, ce, aux (floats, before the update), grad_norm (pre-clip total
    norm), clipped (bool: clip coefficient < 1), lr, result (forward dict).
    """
    tr = cfg["training"]
    assert int(tr.get("grad_accum_steps", 1)) == 1
    lr = lr_at(tr, t)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    r = (loss_fn or loss_on_window)(cfg, P, window)
    r["loss"].backward()
    params = list(P.values())
    # A tensor the loss does not reach (a per-expert tensor of an expert no token chose, in
    # the Hugging Face layout) gets a zero gradient, not None: torch's AdamW would skip it
    # (no decay, no moment update), whereas the engine's stacked expert tensors, like
    # transformers' fused ones, update every expert with g = 0.
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    clip = float(tr["grad_clip"])
    if clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        clipped = clip / (norm + 1e-6) < 1.0
    else:
        norm = float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params)))
        clipped = False
    opt.step()
    return {"loss": float(r["loss"]), "ce": float(r["ce"]), "aux": float(r["aux"]),
            "grad_norm": norm, "clipped": clipped, "lr": lr, "result": r}


def train(cfg, params, windows, dtype=torch.float64, loss_fn=None):
    """Run len(windows) steps from ``params`` (not modified); loss_fn as in train_step.

    Returns (final params {name: tensor}, list of train_step dicts).
    """
    P = {n: t.detach().clone().to(dtype).requires_grad_(True) for n, t in params.items()}
    opt = make_optimizer(cfg, P)
    log = []
    for t, w in enumerate(windows):
        log.append(train_step(cfg, P, opt, t, w, loss_fn))
    return {n: t.detach().clone() for n, t in P.items()}, log
