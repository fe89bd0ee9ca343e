"""An independent float64 reference of Hugging Face's qwen3_next causal LM and of the text model
of qwen3_5_moe (Gated DeltaNet / gated attention hybrids).

Written in plain PyTorch from the semantics (facts, not code) of transformers'
models/qwen3_next/modeling_qwen3_next.py (commit 7515843b617551b008901620ca58f1208bbc330d),
configuration_qwen3_next.py (249ef8164cfbd8e288c2f6d8395539b9e90e8300),
models/qwen3_5/modular_qwen3_5.py (8940358af7421e958995b05136ca14ce54bef39c: the split
in_proj_qkv / in_proj_z / in_proj_b / in_proj_a projections) and
models/qwen3_5_moe/modular_qwen3_5_moe.py (e36255cb9af68ea2c16fefd6b1c798882cafda16: the text
config nested under text_config, weights under model.language_model., the router always
renormalizing its top-k, every layer MoE).  A model is a config dict (config.json) and a dict of
tensors under the checkpoint's names, upcast to float64.

Per decoder layer (pre-norm residual blocks):
    norms      every RMSNorm but the DeltaNet's output norm is zero-centred: x_normed * (1 + w)
    mixer      layer_types[l] ("linear_attention" / "full_attention"; default every
               full_attention_interval-th layer full)
      gated attention  q_proj -> per head [query hd | gate hd]; per-head q/k RMSNorm; RoPE
               (rotate_half) on the first head_dim * partial_rotary_factor entries; GQA softmax
               attention; output * sigmoid(gate); o_proj
      Gated DeltaNet   [q k v] (conv channels), z, b, a; qwen3_next stores in_proj_qkvz /
               in_proj_ba grouped per key head ([q k v_r z_r] and [b_r a_r]); depthwise causal
               conv1d (kernel K, no bias) + SiLU over q, k, v; q, k L2-normalized (eps 1e-6),
               q / sqrt(dk); key heads repeated to the value heads; beta = sigmoid(b),
               g = -exp(A_log) softplus(a + dt_bias); the gated delta rule per value head
               (recurrent or chunked, below); RMSNorm(o) * w * silu(z) per head; out_proj
    mlp        softmax router, top-k (renormalized when norm_topk_prob), SwiGLU experts, plus
               shared expert * sigmoid(shared_expert_gate(x)); dense SwiGLU layers
               (qwen3_next: mlp_only_layers / decoder_sparse_step)

Switches (test_qwen3_next_reference.py shows the logits depend on each): output_gate,
shared_gate, z_gate, beta, decay.
"""

import math

import torch

import hf_reference as hf

F64 = torch.float64
CHUNK = 64


def text(cfg):
    """The text model's config (qwen3_5_moe nests it under text_config)."""
    return cfg["text_config"] if cfg["model_type"] == "qwen3_5_moe" else cfg


def prefix(cfg):
    return "model.language_model." if cfg["model_type"] == "qwen3_5_moe" else "model."


def layer_types(cfg):
    t = text(cfg)
    if t.get("layer_types"):
        return t["layer_types"]
    n = t.get("full_attention_interval", 4)
    return ["linear_attention" if (l + 1) % n else "full_attention" for l in range(t["num_hidden_layers"])]


def is_sparse(cfg, l):
    t = text(cfg)
    if cfg["model_type"] == "qwen3_5_moe":
        return True
    return l not in t.get("mlp_only_layers", []) and t["num_experts"] > 0 and (l + 1) % t.get("decoder_sparse_step", 1) == 0


def norm_topk(cfg):
    return True if cfg["model_type"] == "qwen3_5_moe" else text(cfg).get("norm_topk_prob", True)


def dims(cfg):
    t = text(cfg)
    Hk, Hv = t["linear_num_key_heads"], t["linear_num_value_heads"]
    dk, dv = t["linear_key_head_dim"], t["linear_value_head_dim"]
    return Hk, Hv, dk, dv


def rotary_dim(cfg):
    t = text(cfg)
    r = t.get("rope_parameters") or {}
    f = r.get("partial_rotary_factor", t.get("partial_rotary_factor", 0.25))
    return int(t["head_dim"] * f)


def zero_centred(name):
    """Whether the tensor is a (1 + w) RMSNorm weight (all but the DeltaNet's gated norm)."""
    return name.endswith("norm.weight") and ".linear_attn.norm." not in name


def weight_shapes(cfg, fused=False):
    """{name: shape} in state-dict order; fused: experts as v5's gate_up_proj / down_proj."""
    t = text(cfg)
    d, V = t["hidden_size"], t["vocab_size"]
    H, G, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    Hk, Hv, dk, dv = dims(cfg)
    kd, vd = Hk * dk, Hv * dv
    K = t["linear_conv_kernel_dim"]
    q35 = cfg["model_type"] == "qwen3_5_moe"
    P = prefix(cfg)
    out = {P + "embed_tokens.weight": [V, d]}
    for l, kind in enumerate(layer_types(cfg)):
        p = P + "layers.%d." % l
        if kind == "linear_attention":
            a = p + "linear_attn."
            if q35:
                out[a + "in_proj_qkv.weight"] = [2 * kd + vd, d]
                out[a + "in_proj_z.weight"] = [vd, d]
                out[a + "in_proj_b.weight"] = [Hv, d]
                out[a + "in_proj_a.weight"] = [Hv, d]
            else:
                out[a + "in_proj_qkvz.weight"] = [2 * kd + 2 * vd, d]
                out[a + "in_proj_ba.weight"] = [2 * Hv, d]
            out[a + "conv1d.weight"] = [2 * kd + vd, 1, K]
            out[a + "dt_bias"] = [Hv]
            out[a + "A_log"] = [Hv]
            out[a + "norm.weight"] = [dv]
            out[a + "out_proj.weight"] = [d, vd]
        else:
            a = p + "self_attn."
            out[a + "q_proj.weight"] = [2 * H * hd, d]
            out[a + "k_proj.weight"] = [G * hd, d]
            out[a + "v_proj.weight"] = [G * hd, d]
            out[a + "o_proj.weight"] = [d, H * hd]
            out[a + "q_norm.weight"] = [hd]
            out[a + "k_norm.weight"] = [hd]
        m = p + "mlp."
        if is_sparse(cfg, l):
            hf.add_sparse_mlp_shapes(out, m, t["num_experts"], t["moe_intermediate_size"], d, fused,
                                     ("gate_proj", "up_proj", "down_proj"),
                                     t["shared_expert_intermediate_size"])
        else:
            hf.add_dense_mlp_shapes(out, m, t["intermediate_size"], d)
        out[p + "input_layernorm.weight"] = [d]
        out[p + "post_attention_layernorm.weight"] = [d]
    out[P + "norm.weight"] = [d]
    if not cfg.get("tie_word_embeddings", False):
        out["lm_head.weight"] = [V, d]
    if q35:   # parts of the checkpoint the text model never reads
        out["model.visual.patch_embed.proj.weight"] = [8, 3]
        out["mtp.fc.weight"] = [d, 2 * d]
    return out


_w = hf._w


def zc_norm(x, w, eps):
    """Zero-centred RMSNorm: x * rsqrt(mean x^2 + eps) * (1 + w)."""
    return hf.rms_norm(x, 1.0 + w.to(F64), eps)


# --------------------------------------------------------------------------
# The gated delta rule, both forms (float64). q, k [B, S, Hv, dk] (normalized, q scaled),
# v [B, S, Hv, dv], g, beta [B, S, Hv]; state [B, Hv, dk, dv] or None.
# --------------------------------------------------------------------------

def delta_rule_recurrent(q, k, v, g, beta, state=None):
    B, S, Hv, dk = k.shape
    dv = v.shape[-1]
    M = torch.zeros(B, Hv, dk, dv, dtype=F64) if state is None else state.clone()
    out = torch.zeros(B, S, Hv, dv, dtype=F64)
    for t in range(S):
        M = M * torch.exp(g[:, t])[..., None, None]
        pred = torch.einsum("bhkv,bhk->bhv", M, k[:, t])
        upd = beta[:, t][..., None] * (v[:, t] - pred)
        M = M + k[:, t][..., :, None] * upd[..., None, :]
        out[:, t] = torch.einsum("bhkv,bhk->bhv", M, q[:, t])
    return out, M


def delta_rule_chunked(q, k, v, g, beta, state=None, chunk=CHUNK):
    """The same recurrence a chunk at a time: within a chunk the corrected values solve a unit
    lower-triangular system (WY form), between chunks one state update."""
    B, S, Hv, dk = k.shape
    dv = v.shape[-1]
    M = torch.zeros(B, Hv, dk, dv, dtype=F64) if state is None else state.clone()
    out = torch.zeros(B, S, Hv, dv, dtype=F64)
    for s in range(0, S, chunk):
        e = min(S, s + chunk)
        qc, kc, vc = (x[:, s:e].transpose(1, 2) for x in (q, k, v))     # [B, Hv, c, .]
        gc, bc = g[:, s:e].transpose(1, 2), beta[:, s:e].transpose(1, 2)  # [B, Hv, c]
        c = e - s
        G = torch.cumsum(gc, dim=-1)
        decay = torch.exp(G[..., :, None] - G[..., None, :])               # [B, Hv, c, c]
        lower = torch.tril(torch.ones(c, c, dtype=torch.bool), diagonal=-1)
        Akk = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * decay).masked_fill(~lower, 0.0)
        # (I + Akk) X = rhs, unit lower triangular
        eye = torch.eye(c, dtype=F64)
        T = torch.linalg.solve_triangular(eye + Akk, eye.expand_as(Akk), upper=False)
        U = T @ (bc[..., None] * vc)
        W = T @ (bc[..., None] * torch.exp(G)[..., None] * kc)
        Vn = U - W @ M
        incl = torch.tril(torch.ones(c, c, dtype=torch.bool))
        P = ((qc @ kc.transpose(-1, -2)) * decay).masked_fill(~incl, 0.0)
        oc = torch.exp(G)[..., None] * (qc @ M) + P @ Vn
        out[:, s:e] = oc.transpose(1, 2)
        last = G[..., -1]
        M = torch.exp(last)[..., None, None] * M + \
            (torch.exp(last[..., None] - G)[..., None] * kc).transpose(-1, -2) @ Vn
    return out, M


def l2norm(x, eps=1e-6):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gdn_inputs(cfg, weights, layer, x):
    """(q, k, v, z, b, a) of a DeltaNet layer before the conv: mixed [B, S, 2kd+vd] for the conv,
    z [B, S, Hv, dv], b, a [B, S, Hv]."""
    Hk, Hv, dk, dv = dims(cfg)
    r = Hv // Hk
    B, S, _ = x.shape
    a_ = prefix(cfg) + "layers.%d.linear_attn." % layer
    if cfg["model_type"] == "qwen3_5_moe":
        mixed = x @ _w(weights, a_ + "in_proj_qkv.weight").T
        z = (x @ _w(weights, a_ + "in_proj_z.weight").T).view(B, S, Hv, dv)
        b = x @ _w(weights, a_ + "in_proj_b.weight").T
        a = x @ _w(weights, a_ + "in_proj_a.weight").T
        return mixed, z, b, a
    # Qwen3-Next: per key head group [q dk | k dk | v r*dv | z r*dv] and [b r | a r].
    qkvz = (x @ _w(weights, a_ + "in_proj_qkvz.weight").T).view(B, S, Hk, 2 * dk + 2 * r * dv)
    ba = (x @ _w(weights, a_ + "in_proj_ba.weight").T).view(B, S, Hk, 2 * r)
    q, k = qkvz[..., :dk], qkvz[..., dk:2 * dk]
    v, z = qkvz[..., 2 * dk:2 * dk + r * dv], qkvz[..., 2 * dk + r * dv:]
    mixed = torch.cat([q.reshape(B, S, -1), k.reshape(B, S, -1), v.reshape(B, S, -1)], dim=-1)
    return mixed, z.reshape(B, S, Hv, dv), ba[..., :r].reshape(B, S, Hv), ba[..., r:].reshape(B, S, Hv)


def gated_deltanet(cfg, weights, layer, x, form="chunked", z_gate=True, use_beta=True, decay=True):
    t = text(cfg)
    Hk, Hv, dk, dv = dims(cfg)
    B, S, _ = x.shape
    K = t["linear_conv_kernel_dim"]
    a_ = prefix(cfg) + "layers.%d.linear_attn." % layer
    mixed, z, b, a = gdn_inputs(cfg, weights, layer, x)
    w = _w(weights, a_ + "conv1d.weight")[:, 0, :]                       # [C, K]
    padded = torch.cat([torch.zeros(B, K - 1, mixed.shape[-1], dtype=F64), mixed], dim=1)
    conv = sum(padded[:, j:j + S] * w[:, j] for j in range(K))
    mixed = torch.nn.functional.silu(conv)
    kd = Hk * dk
    q = l2norm(mixed[..., :kd].reshape(B, S, Hk, dk)) / math.sqrt(dk)
    k = l2norm(mixed[..., kd:2 * kd].reshape(B, S, Hk, dk))
    v = mixed[..., 2 * kd:].reshape(B, S, Hv, dv)
    q = q.repeat_interleave(Hv // Hk, dim=2)
    k = k.repeat_interleave(Hv // Hk, dim=2)
    beta = torch.sigmoid(b) if use_beta else torch.ones_like(b)
    g = -torch.exp(_w(weights, a_ + "A_log")) * torch.nn.functional.softplus(a + _w(weights, a_ + "dt_bias"))
    if not decay:
        g = torch.zeros_like(g)
    rule = delta_rule_chunked if form == "chunked" else delta_rule_recurrent
    o, _ = rule(q, k, v, g, beta)
    o = hf.rms_norm(o, _w(weights, a_ + "norm.weight"), t["rms_norm_eps"])
    if z_gate:
        o = o * torch.nn.functional.silu(z)
    return o.reshape(B, S, Hv * dv) @ _w(weights, a_ + "out_proj.weight").T


def attention(cfg, weights, layer, x, output_gate=True):
    t = text(cfg)
    B, S, _ = x.shape
    H, G, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    eps = t["rms_norm_eps"]
    a = prefix(cfg) + "layers.%d.self_attn." % layer
    qg = (x @ _w(weights, a + "q_proj.weight").T).view(B, S, H, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:].reshape(B, S, H * hd)
    k = (x @ _w(weights, a + "k_proj.weight").T).view(B, S, G, hd)
    v = (x @ _w(weights, a + "v_proj.weight").T).view(B, S, G, hd)
    q = zc_norm(q, weights[a + "q_norm.weight"], eps).transpose(1, 2)
    k = zc_norm(k, weights[a + "k_norm.weight"], eps).transpose(1, 2)
    v = v.transpose(1, 2)
    rd = rotary_dim(cfg)
    r = t.get("rope_parameters") or {}
    theta = r.get("rope_theta", t.get("rope_theta", 10000.0))
    cos, sin = hf.rope_cos_sin(torch.arange(S), rd, theta)
    q = torch.cat([hf.apply_rope(q[..., :rd], cos, sin), q[..., rd:]], dim=-1)
    k = torch.cat([hf.apply_rope(k[..., :rd], cos, sin), k[..., rd:]], dim=-1)
    k = k.repeat_interleave(H // G, dim=1)
    v = v.repeat_interleave(H // G, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(S, S, dtype=torch.bool), 1), float("-inf"))
    o = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, S, H * hd)
    if output_gate:
        o = o * torch.sigmoid(gate)
    return o @ _w(weights, a + "o_proj.weight").T


def mlp(cfg, weights, layer, x, trace=None, shared_gate=True):
    t = text(cfg)
    B, S, d = x.shape
    m = prefix(cfg) + "layers.%d.mlp." % layer
    if not is_sparse(cfg, layer):
        return hf.swiglu(x, weights[m + "gate_proj.weight"], weights[m + "up_proj.weight"], weights[m + "down_proj.weight"])
    x2 = x.reshape(B * S, d)
    logits = x2 @ _w(weights, m + "gate.weight").T
    if trace is not None:
        trace.append(logits)
    gates, ids = hf.route(logits, t["num_experts_per_tok"], norm_topk(cfg))
    out = torch.zeros_like(x2)
    fused = m + "experts.gate_up_proj" in weights
    for e in range(t["num_experts"]):
        rows, slot = torch.nonzero(ids == e, as_tuple=True)
        if rows.numel() == 0:
            continue
        if fused:
            gu = weights[m + "experts.gate_up_proj"][e]
            F = gu.shape[0] // 2
            y = hf.swiglu(x2[rows], gu[:F], gu[F:], weights[m + "experts.down_proj"][e])
        else:
            ex = m + "experts.%d." % e
            y = hf.swiglu(x2[rows], weights[ex + "gate_proj.weight"], weights[ex + "up_proj.weight"],
                          weights[ex + "down_proj.weight"])
        out.index_add_(0, rows, gates[rows, slot, None] * y)
    sh = m + "shared_expert."
    shared = hf.swiglu(x2, weights[sh + "gate_proj.weight"], weights[sh + "up_proj.weight"], weights[sh + "down_proj.weight"])
    if shared_gate:
        shared = torch.sigmoid(x2 @ _w(weights, m + "shared_expert_gate.weight").T) * shared
    return (out + shared).view(B, S, d)


def forward(cfg, weights, input_ids, trace=None, form="chunked", output_gate=True, shared_gate=True,
            z_gate=True, beta=True, decay=True):
    """Logits [B, S, V] (float64) of input_ids [B, S] at positions 0..S-1; trace: router logits."""
    t = text(cfg)
    eps = t["rms_norm_eps"]
    P = prefix(cfg)
    h = _w(weights, P + "embed_tokens.weight")[input_ids.long()]
    for l, kind in enumerate(layer_types(cfg)):
        p = P + "layers.%d." % l
        x = zc_norm(h, weights[p + "input_layernorm.weight"], eps)
        if kind == "linear_attention":
            h = h + gated_deltanet(cfg, weights, l, x, form, z_gate, beta, decay)
        else:
            h = h + attention(cfg, weights, l, x, output_gate)
        h = h + mlp(cfg, weights, l, zc_norm(h, weights[p + "post_attention_layernorm.weight"], eps), trace, shared_gate)
    h = zc_norm(h, weights[P + "norm.weight"], eps)
    head = P + "embed_tokens.weight" if cfg.get("tie_word_embeddings", False) else "lm_head.weight"
    return h @ _w(weights, head).T


def greedy(cfg, weights, input_ids, n, trace=None):
    """n greedy tokens per row [B, n]: hf_reference.greedy's loop over this family's forward."""
    return hf.greedy(cfg, weights, input_ids, n, trace, forward_fn=forward)
