"""Independent PyTorch reference of the Mixture-of-Experts layer.

This module implements, in float64 and as plainly as possible, the contract
written down in ``docs/moe-layer.md`` ("The MoE layer: exact contract").  It is
the source of the test fixtures in ``tests/fixtures/layer/`` that the C++ layer
(``src/nn/``) is checked against, so it deliberately shares no code or
derivation with the C++ side:

* the discrete decisions (group-limited top-k selection, capacity, dropping,
  rerouting) are made with plain Python loops over Python floats, under
  ``torch.no_grad``;
* the differentiable output is then built from the chosen indices with gathers,
  and **every gradient comes from ``torch.autograd``** (no hand-written backward).
  Autograd therefore treats the decisions as constants, exactly as the contract's
  "Backward" section says, and differentiates everything else (gates through the
  scores and the normaliser S_t, expert FFNs, shared experts and their gate, the
  three losses, the noise branch, router weights, x).

Entry point: :func:`moe_forward`.  Step numbers in comments refer to the
"Forward" section of docs/moe-layer.md.

Choices where the contract leaves room (see also tools/reference/README.md):

* ``s`` (softmax/sigmoid) is taken over **all** E experts; ``expert_mask`` only
  acts on the selection key ``u`` (step 3).  So masked experts still hold
  softmax mass, and still enter P_i, the entropy and the z-loss.
* Rerouting only considers experts whose (group-limited) ``u`` is finite, i.e.
  experts outside the token's taken groups (step 4) are never rerouting targets.
* Padding tokens: primary expert, final expert = -1 and gate 0 in every slot.
* Router entropy uses the same ``p`` as the load-balance loss (s for softmax,
  s / sum(s) for sigmoid), averaged over valid tokens.
* ``sign(0) = 0`` in the aux-loss-free bias update.
"""

import math

import torch
import torch.nn.functional as F

CONFIG_KEYS = (
    "hidden_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok",
    "scoring_func", "norm_topk_prob", "routed_scaling_factor", "n_group", "topk_group",
    "noisy_gating", "capacity_factor", "drop_policy", "overflow", "hidden_act",
    "n_shared_experts", "shared_expert_intermediate_size", "shared_expert_gate",
    "router_aux_loss_coef", "router_importance_coef", "router_z_loss_coef",
    "aux_loss_style", "bias_update_rate", "tokens",
)

DEFAULT_CONFIG = {
    "hidden_size": 16,
    "moe_intermediate_size": 12,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "scoring_func": "softmax",
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "n_group": 1,
    "topk_group": 1,
    "noisy_gating": False,
    "capacity_factor": 0.0,
    "drop_policy": "position",
    "overflow": "drop",
    "hidden_act": "silu",
    "n_shared_experts": 0,
    "shared_expert_intermediate_size": 0,
    "shared_expert_gate": False,
    "router_aux_loss_coef": 0.0,
    "router_importance_coef": 0.0,
    "router_z_loss_coef": 0.0,
    "aux_loss_style": "switch",
    "bias_update_rate": 0.0,
    "tokens": 32,
}


def make_config(**overrides):
    """DEFAULT_CONFIG updated with ``overrides`` (unknown keys are an error)."""
    for key in overrides:
        if key not in DEFAULT_CONFIG:
            raise KeyError("unknown config key %r" % key)
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(overrides)
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise KeyError("config lacks %s" % missing)
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    assert 1 <= k <= E
    assert cfg["scoring_func"] in ("softmax", "sigmoid")
    assert cfg["drop_policy"] in ("position", "score")
    assert cfg["overflow"] in ("drop", "reroute")
    assert cfg["hidden_act"] in ("silu", "gelu")
    assert cfg["aux_loss_style"] in ("switch", "hf")
    assert cfg["n_group"] >= 1 and E % cfg["n_group"] == 0
    assert 1 <= cfg["topk_group"] <= cfg["n_group"]


def param_shapes(cfg):
    """Ordered {name: shape} of the parameters that exist for ``cfg`` (contract table)."""
    d, Fi, E = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_experts"]
    swiglu = cfg["hidden_act"] == "silu"
    shapes = {"router.weight": [E, d]}
    if cfg["noisy_gating"]:
        shapes["router.noise_weight"] = [E, d]
    shapes["experts.w1"] = [E, Fi, d]
    if swiglu:
        shapes["experts.w3"] = [E, Fi, d]
    shapes["experts.w2"] = [E, d, Fi]
    if cfg["n_shared_experts"] > 0:
        Hs = cfg["n_shared_experts"] * cfg["shared_expert_intermediate_size"]
        shapes["shared.w1"] = [Hs, d]
        if swiglu:
            shapes["shared.w3"] = [Hs, d]
        shapes["shared.w2"] = [d, Hs]
        if cfg["shared_expert_gate"]:
            shapes["shared.gate"] = [1, d]
    return shapes


# --------------------------------------------------------------------------
# Discrete decisions (no autograd; plain Python over float64 values)
# --------------------------------------------------------------------------

NEG_INF = float("-inf")


def _select_key(cfg, s, selection_bias, expert_mask):
    """Steps 3-4: selection key u per token, after expert masking and group limiting.

    Returns (u, group_scores): u is a list of T lists of E floats (-inf = not
    selectable); group_scores is a list of T lists of n_group floats (None for a
    group with no available expert), kept for tie diagnostics.
    """
    T, E = s.shape
    n_group, topk_group = cfg["n_group"], cfg["topk_group"]
    k = cfg["num_experts_per_tok"]
    b = [float(v) for v in selection_bias]
    avail = [float(m) != 0.0 for m in expert_mask]
    u_all, gs_all = [], []
    for t in range(T):
        u = [float(s[t, e]) + b[e] if avail[e] else NEG_INF for e in range(E)]
        gscores = None
        if n_group > 1:
            size = E // n_group
            gscores = []
            for gi in range(n_group):
                vals = sorted((u[e] for e in range(gi * size, (gi + 1) * size) if u[e] != NEG_INF),
                              reverse=True)
                gscores.append(sum(vals[:2]) if vals else None)
            order = sorted((gi for gi in range(n_group) if gscores[gi] is not None),
                           key=lambda gi: (-gscores[gi], gi))
            taken, n_avail = [], 0
            for gi in order:
                if len(taken) >= topk_group and n_avail >= k:
                    break
                taken.append(gi)
                n_avail += sum(1 for e in range(gi * size, (gi + 1) * size) if u[e] != NEG_INF)
            taken = set(taken)
            u = [u[e] if (e // size) in taken else NEG_INF for e in range(E)]
        u_all.append(u)
        gs_all.append(gscores)
    return u_all, gs_all


def _descending(u_row):
    """Selectable experts of one token in descending u, ties by lower index."""
    return sorted((e for e in range(len(u_row)) if u_row[e] != NEG_INF),
                  key=lambda e: (-u_row[e], e))


def route(cfg, s, selection_bias, expert_mask, token_mask):
    """Steps 3-7: all discrete routing decisions.  ``s`` is the [T,E] score tensor.

    Returns a dict of Python values:
      valid        list[bool] per token
      u            list of T lists of E floats (group-limited selection key)
      group_scores list of T lists (or None) of group scores
      primary      T lists of k expert ids (-1 for padding)
      final        T lists of k expert ids (rerouted id, -1 dropped / padding)
      rerouted     T lists of k bools
      capacity     C (int) or None
      n_primary    per-expert primary counts (valid tokens, before capacity)
      n_kept       per-expert kept counts (phase 1 + reroutes)
      dropped, rerouted_count  ints
      gate_value   T lists of k floats: primary gate values g[t,j] (priority key)
    """
    with torch.no_grad():
        T, E = s.shape
        k = cfg["num_experts_per_tok"]
        rsf = float(cfg["routed_scaling_factor"])
        valid = [float(m) != 0.0 for m in token_mask]
        u, gscores = _select_key(cfg, s, selection_bias, expert_mask)

        # Step 5: primary top-k.
        primary = []
        for t in range(T):
            if not valid[t]:
                primary.append([-1] * k)
                continue
            order = _descending(u[t])
            if len(order) < k:
                raise ValueError("token %d has only %d selectable experts (< k=%d)" % (t, len(order), k))
            primary.append(order[:k])

        # Step 6: gate values (only used here as the "score" priority key).
        norm = bool(cfg["norm_topk_prob"]) and k > 1
        gate_value, S = [], []
        for t in range(T):
            if not valid[t]:
                gate_value.append([0.0] * k)
                S.append(1.0)
                continue
            st = sum(float(s[t, e]) for e in primary[t]) if norm else 1.0
            S.append(st)
            gate_value.append([rsf * float(s[t, e]) / st for e in primary[t]])

        n_primary = [0] * E
        for t in range(T):
            if valid[t]:
                for e in primary[t]:
                    n_primary[e] += 1

        # Step 7: capacity.
        T_valid = sum(valid)
        cf = float(cfg["capacity_factor"])
        C = math.ceil(cf * T_valid * k / E) if cf > 0 else None
        final = [list(p) for p in primary]
        rerouted = [[False] * k for _ in range(T)]
        assignments = [(t, j) for t in range(T) if valid[t] for j in range(k)]
        if cfg["drop_policy"] == "position":
            prio = lambda a: (a[0], a[1])
        else:
            prio = lambda a: (-gate_value[a[0]][a[1]], a[0], a[1])
        dropped = n_rerouted = 0
        if C is None:
            n_kept = list(n_primary)
        else:
            # Phase 1: walking all assignments in priority order and keeping while
            # the expert has room == each expert keeps its C highest-priority ones.
            load = [0] * E
            overflowed = []
            for a in sorted(assignments, key=prio):
                e = primary[a[0]][a[1]]
                if load[e] < C:
                    load[e] += 1
                else:
                    overflowed.append(a)  # already in priority order
            # Phase 2.
            held = [set(p) for p in primary]
            for (t, j) in overflowed:
                target = None
                if cfg["overflow"] == "reroute":
                    for e in _descending(u[t]):
                        if e in held[t]:
                            continue
                        if load[e] < C:
                            target = e
                            break
                if target is None:
                    final[t][j] = -1
                    dropped += 1
                else:
                    final[t][j] = target
                    rerouted[t][j] = True
                    held[t].add(target)
                    load[target] += 1
                    n_rerouted += 1
            n_kept = load
        return {
            "valid": valid, "u": u, "group_scores": gscores, "primary": primary,
            "final": final, "rerouted": rerouted, "capacity": C,
            "n_primary": n_primary, "n_kept": n_kept, "dropped": dropped,
            "rerouted_count": n_rerouted, "gate_value": gate_value,
        }


# --------------------------------------------------------------------------
# Differentiable part
# --------------------------------------------------------------------------

def _act(cfg, a):
    if cfg["hidden_act"] == "silu":
        return a * torch.sigmoid(a)          # silu(a) = a * sigmoid(a)
    return F.gelu(a)                          # exact erf GELU (approximate='none')


def _ffn(cfg, x, w1, w3, w2):
    """W2 (act(W1 x) * W3 x) for SwiGLU, W2 act(W1 x) for GELU; x is [n, d], weights [out, in]."""
    h = _act(cfg, x @ w1.t())
    if cfg["hidden_act"] == "silu":
        h = h * (x @ w3.t())
    return h @ w2.t()


def router_logits(cfg, params, noise, x):
    """Step 1: z = x Wr^T (+ noise * softplus(x Wn^T) with noisy gating)."""
    z = x @ params["router.weight"].t()
    if cfg["noisy_gating"]:
        z = z + noise * F.softplus(x @ params["router.noise_weight"].t())
    return z


def router_scores(cfg, z):
    """Step 2."""
    return torch.softmax(z, dim=-1) if cfg["scoring_func"] == "softmax" else torch.sigmoid(z)


def moe_forward(cfg, params, noise, expert_mask, token_mask, selection_bias, x, decisions=None):
    """Forward pass of the MoE layer exactly as docs/moe-layer.md specifies.

    Args:
      cfg: config dict with every key in CONFIG_KEYS.
      params: dict name -> float64 tensor, names/shapes as in :func:`param_shapes`
        (``router.weight``, optional ``router.noise_weight``, ``experts.w1``/``w3``/``w2``,
        optional ``shared.w1``/``w3``/``w2``/``gate``).  May require grad.
      noise [T,E], expert_mask [E], token_mask [T], selection_bias [E]: injected tensors
        (noise is only used when cfg["noisy_gating"]).
      x [T,d]: input, may require grad.
      decisions: optional result of :func:`route` to reuse (for gradient checks with
        the discrete decisions held fixed); computed from the scores when None.

    Returns a dict:
      out [T,d]; loss_load_balance, loss_importance, loss_z (0-dim tensors, differentiable);
      primary_expert [T,k] long (-1 padding); expert [T,k] long (final expert per slot:
      rerouted expert if rerouted, -1 dropped or padding); gate [T,k] (final gate, 0 if
      dropped/padding; differentiable); counts_primary [E], counts_kept [E] (float64);
      dropped, rerouted (ints); entropy (float); bias_after_update [E];
      capacity (int or None); dropped_fraction, load_cv, load_max_over_mean (floats);
      z, s (tensors); decisions (the :func:`route` dict).
    """
    validate_config(cfg)
    T, d = x.shape
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    rsf = float(cfg["routed_scaling_factor"])
    dt, dev = x.dtype, x.device

    z = router_logits(cfg, params, noise, x)           # step 1
    s = router_scores(cfg, z)                          # step 2
    if decisions is None:                              # steps 3-7 (discrete)
        decisions = route(cfg, s.detach(), selection_bias, expert_mask, token_mask)
    dec = decisions
    valid_list = dec["valid"]
    T_valid = sum(valid_list)
    valid = torch.tensor(valid_list, dtype=torch.bool, device=dev)
    validf = valid.to(dt)

    primary = torch.tensor(dec["primary"], dtype=torch.long, device=dev).view(T, k)
    final = torch.tensor(dec["final"], dtype=torch.long, device=dev).view(T, k)
    kept = final >= 0

    # Step 6: gates from s (not u), normaliser S_t over the primary selection.
    s_prim = s.gather(1, primary.clamp(min=0)) * validf[:, None]        # [T,k]
    if cfg["norm_topk_prob"] and k > 1:
        S = torch.where(valid[:, None], s_prim.sum(dim=1, keepdim=True),
                        torch.ones(T, 1, dtype=dt, device=dev))
    else:
        S = torch.ones(T, 1, dtype=dt, device=dev)
    g_primary = rsf * s_prim / S                                        # [T,k]
    gate = rsf * s.gather(1, final.clamp(min=0)) / S * kept.to(dt)      # [T,k] final gates

    # Step 8: grouped execution, one FFN per expert over its gathered rows; the
    # gate-scaled results are placed at their (t, j) slot and summed per token in
    # slot order.
    slot_contrib = x.new_zeros(T * k, d)
    for e in range(E):
        rows = [(t, j) for t in range(T) for j in range(k) if dec["final"][t][j] == e]
        if not rows:
            continue
        ts = torch.tensor([t for t, _ in rows], dtype=torch.long, device=dev)
        js = torch.tensor([j for _, j in rows], dtype=torch.long, device=dev)
        w3 = params["experts.w3"][e] if cfg["hidden_act"] == "silu" else None
        y = _ffn(cfg, x[ts], params["experts.w1"][e], w3, params["experts.w2"][e])
        y = y * gate[ts, js][:, None]
        slot_contrib = slot_contrib.index_add(0, ts * k + js, y)
    slot_contrib = slot_contrib.view(T, k, d)
    out = slot_contrib[:, 0]
    for j in range(1, k):
        out = out + slot_contrib[:, j]

    # Step 9: shared experts on every token (padding included).
    if cfg["n_shared_experts"] > 0:
        w3s = params["shared.w3"] if cfg["hidden_act"] == "silu" else None
        ys = _ffn(cfg, x, params["shared.w1"], w3s, params["shared.w2"])
        if cfg["shared_expert_gate"]:
            ys = ys * torch.sigmoid(x @ params["shared.gate"].t())      # [T,1]
        out = out + ys

    # Auxiliary losses over valid tokens.
    if cfg["scoring_func"] == "softmax":
        p = s
    else:
        p = s / s.sum(dim=-1, keepdim=True)
    n_primary = torch.tensor(dec["n_primary"], dtype=dt, device=dev)
    if cfg["aux_loss_style"] == "switch":
        f = n_primary / (T_valid * k)
    else:
        f = n_primary / T_valid
    P = (p * validf[:, None]).sum(dim=0) / T_valid
    loss_lb = cfg["router_aux_loss_coef"] * E * (f * P).sum()

    I = x.new_zeros(E).index_add(0, primary[valid].reshape(-1), g_primary[valid].reshape(-1))
    I_mean = I.mean()
    I_var = ((I - I_mean) ** 2).mean()                                  # population variance
    loss_imp = cfg["router_importance_coef"] * I_var / (I_mean ** 2 + 1e-10)

    lse = torch.logsumexp(z, dim=-1)
    loss_z = cfg["router_z_loss_coef"] * ((lse ** 2) * validf).sum() / T_valid

    # Metrics (not differentiated).
    with torch.no_grad():
        ent_t = -torch.special.xlogy(p, p).sum(dim=-1)
        entropy = float((ent_t * validf).sum() / T_valid)
        mean_load = T_valid * k / E
        loads = dec["n_primary"]
        load_cv = (math.sqrt(sum((l - mean_load) ** 2 for l in loads) / E) / mean_load
                   if mean_load > 0 else 0.0)
        load_max_over_mean = max(loads) / mean_load if mean_load > 0 else 0.0
        rate = float(cfg["bias_update_rate"])
        sign = torch.sign(torch.tensor([mean_load - l for l in loads], dtype=dt, device=dev))
        bias_after = selection_bias.detach().to(dt) + rate * sign

    return {
        "out": out,
        "loss_load_balance": loss_lb,
        "loss_importance": loss_imp,
        "loss_z": loss_z,
        "primary_expert": primary,
        "expert": final,
        "gate": gate,
        "counts_primary": n_primary,
        "counts_kept": torch.tensor(dec["n_kept"], dtype=dt, device=dev),
        "dropped": dec["dropped"],
        "rerouted": dec["rerouted_count"],
        "entropy": entropy,
        "bias_after_update": bias_after,
        "capacity": dec["capacity"],
        "dropped_fraction": dec["dropped"] / (T_valid * k) if T_valid else 0.0,
        "load_cv": load_cv,
        "load_max_over_mean": load_max_over_mean,
        "z": z,
        "s": s,
        "decisions": dec,
    }


def total_loss(result, dout):
    """Scalar used for the fixture gradients: sum(out * dout) + L_lb + L_imp + L_z."""
    return ((result["out"] * dout).sum() + result["loss_load_balance"]
            + result["loss_importance"] + result["loss_z"])
