"""An independent float64 reference of DeepSeek-V2 and DeepSeek-V3 (Hugging Face model_type
"deepseek_v2", "deepseek_v3"; "kimi_k2" configs are deepseek_v3).

Written in plain PyTorch from the semantics of transformers' modeling files
src/transformers/models/deepseek_v2/modeling_deepseek_v2.py (commit 0233e50) and
src/transformers/models/deepseek_v3/modeling_deepseek_v3.py (commit 00b676f), with no
transformers import (it is not packaged for Debian).  A model is a config dict (config.json)
and a dict of tensors under the checkpoint's names; everything is computed in float64.  Used
to make and check the tests/fixtures/hf/deepseek_* fixtures (make_hf_fixtures.py).

Multi-head Latent Attention, as the modeling files compute it (expanded, no absorption):

    q      = q_proj(x)  or  q_b_proj(RMSNorm(q_a_proj(x)))           [H, nope + rope]
    c, kpe = kv_a_proj_with_mqa(x) split [kv_lora_rank, rope]
    k_nope, v = kv_b_proj(RMSNorm(c)) split per head [nope, v]
    RoPE on q_pe and k_pe (one k_pe for every head):
        V2: complex rotation of the pairs (2i, 2i+1) (apply_rotary_emb, view_as_complex)
        V3: rope_interleave (default true): the pairs (2i, 2i+1) permuted to rotate_half
            order, then rotate_half; false: rotate_half on the stored order
    scores = [q_nope, q_pe].[k_nope, k_pe] * (nope + rope)^-0.5, causal softmax, o_proj.

DeepSeekMoE routing:

    V2  softmax scores; topk_method "greedy": top-k; "group_limited_greedy": a group's score
        is its best expert, the topk_group best groups stay, the others' scores become 0.0,
        top-k; gates = scores * routed_scaling_factor (never renormalised).
    V3  sigmoid scores; keys = scores + e_score_correction_bias; a group's score is the sum
        of its two best keys; the topk_group best groups stay (others' keys 0.0); top-k of
        the keys; gates = the unbiased scores of the chosen experts, divided by their sum
        (+1e-20) when norm_topk_prob, times routed_scaling_factor.
    Both: + shared_experts(x) (an ungated SwiGLU of n_shared_experts * moe_intermediate_size);
    the first first_k_dense_replace layers are dense SwiGLU MLPs of intermediate_size.

RoPE scaling (rope_scaling / rope_parameters) as hf_reference.rope_inv_freq computes it over
the qk_rope_head_dim rotary dimensions; its attention factor multiplies the rotation (so the
q_pe.k_pe part), and under YaRN with mscale_all_dim the softmax scale is multiplied by
yarn_get_mscale(factor, mscale_all_dim)^2 (modeling_deepseek_v3; DeepSeek's own V2 code does
the same, transformers' V2 port omits it: followed for V2 as DeepSeek trained it).

`ablate` (a set) removes one family piece, for the sanity tests that show each fixture
catches it: "correction_bias", "routed_scaling", "group_limit", "interleave" (rotate_half
on the stored order instead), "kv_norm" (no kv_a_layernorm), "mscale" (no YaRN mscale^2 in
the softmax scale).

Public: ARCHS, weight_shapes, forward, greedy, and the pieces (mla_attention,
mla_attention_absorbed, rope_pairs, route) for the tests.
"""

import math

import torch

import hf_reference as hf

ARCHS = ("deepseek_v2", "deepseek_v3", "kimi_k2")
F64 = torch.float64


def is_v3(cfg):
    return cfg["model_type"] != "deepseek_v2"


def q_lora_rank(cfg):
    return cfg.get("q_lora_rank") or 0


def qk_head_dim(cfg):
    return cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]


def layer_is_sparse(cfg, layer):
    """HF: MoE iff n_routed_experts and layer >= first_k_dense_replace (and the layer is a
    multiple of moe_layer_freq, as DeepSeek's own code reads it)."""
    return (cfg.get("n_routed_experts") is not None and layer >= cfg.get("first_k_dense_replace", 0)
            and layer % cfg.get("moe_layer_freq", 1) == 0)


def weight_shapes(cfg, fused=False):
    """{name: shape} of every tensor of the checkpoint, in HF state-dict order (DeepSeek's
    released checkpoints store one tensor per expert: `fused` is not offered)."""
    if fused:
        raise ValueError("the DeepSeek fixtures store experts one tensor each")
    d, V, H = cfg["hidden_size"], cfg["vocab_size"], cfg["num_attention_heads"]
    r, dr = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]
    qk, nope, dv = qk_head_dim(cfg), cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    out = {"model.embed_tokens.weight": [V, d]}
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        a = p + "self_attn."
        if q_lora_rank(cfg):
            qr = q_lora_rank(cfg)
            out[a + "q_a_proj.weight"] = [qr, d]
            out[a + "q_a_layernorm.weight"] = [qr]
            out[a + "q_b_proj.weight"] = [H * qk, qr]
        else:
            out[a + "q_proj.weight"] = [H * qk, d]
        out[a + "kv_a_proj_with_mqa.weight"] = [r + dr, d]
        out[a + "kv_a_layernorm.weight"] = [r]
        out[a + "kv_b_proj.weight"] = [H * (nope + dv), r]
        out[a + "o_proj.weight"] = [d, H * dv]
        m = p + "mlp."
        if layer_is_sparse(cfg, l):
            E, F = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
            for e in range(E):
                for n, s in (("gate_proj", [F, d]), ("up_proj", [F, d]), ("down_proj", [d, F])):
                    out[m + "experts.%d.%s.weight" % (e, n)] = s
            out[m + "gate.weight"] = [E, d]
            if is_v3(cfg):
                out[m + "gate.e_score_correction_bias"] = [E]
            S = F * cfg["n_shared_experts"]
            for n, s in (("gate_proj", [S, d]), ("up_proj", [S, d]), ("down_proj", [d, S])):
                out[m + "shared_experts.%s.weight" % n] = s
        else:
            I = cfg["intermediate_size"]
            for n, s in (("gate_proj", [I, d]), ("up_proj", [I, d]), ("down_proj", [d, I])):
                out[m + "%s.weight" % n] = s
        out[p + "input_layernorm.weight"] = [d]
        out[p + "post_attention_layernorm.weight"] = [d]
    return hf.add_final_shapes(out, cfg)


# --------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------

_w = hf._w  # a weight in float64


def _lin(x, weights, name):
    return x @ _w(weights, name).T


def rms_norm(x, w, eps):
    x = x.to(F64)
    return w.to(F64) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _angles(S, dr, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dr, 2, dtype=F64) / dr))
    return torch.arange(S, dtype=F64)[:, None] * inv_freq[None, :]          # [S, dr/2]


def rope_angles(cfg, S):
    """(angles [S, dr/2], attention factor) of the config's RoPE over qk_rope_head_dim (the
    config classes set head_dim = qk_rope_head_dim for the rotary embedding); rope_scaling as
    hf_reference.rope_inv_freq computes it (transformers' modeling_rope_utils)."""
    inv, af = hf.rope_inv_freq(dict(cfg, head_dim=cfg["qk_rope_head_dim"]), S)
    return torch.arange(S, dtype=F64)[:, None] * inv[None, :], af


def softmax_scale(cfg, ablate=()):
    """(nope + rope)^-0.5, times yarn_get_mscale(factor, mscale_all_dim)^2 under a scaled RoPE
    with mscale_all_dim (modeling_deepseek_v3's DeepseekV3Attention; DeepSeek's own V2 code
    does the same, transformers' V2 port does not: we follow DeepSeek for both)."""
    scale = qk_head_dim(cfg) ** -0.5
    r = hf.rope_parameters(cfg)
    if r is not None and r.get("mscale_all_dim") and "mscale" not in ablate:
        m = hf._yarn_get_mscale(r["factor"], r["mscale_all_dim"])
        scale = scale * m * m
    return scale


def _rotate_half(x, ang):
    emb = torch.cat([ang, ang], dim=-1)
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * emb.cos() + rot * emb.sin()


def rope_pairs(cfg, x, ang, ablate=(), factor=1.0):
    """RoPE of x [..., S, dr] as the family's modeling file applies it (see the docstring),
    scaled by the rotary embedding's attention factor."""
    if not is_v3(cfg) and "interleave" not in ablate:
        # V2: pairs (2i, 2i+1) as complex numbers times factor * e^(i * angle_i).
        z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        z = z * torch.polar(torch.full_like(ang, factor), ang)
        return torch.view_as_real(z).flatten(-2)
    if cfg.get("rope_interleave", True) and "interleave" not in ablate:
        # V3: de-interleave to rotate_half order first; the result stays in that order (q and
        # k alike, so their dot products are those of the rotated pairs).
        x = x.reshape(*x.shape[:-1], -1, 2).transpose(-1, -2).reshape(x.shape)
    return _rotate_half(x, ang) * factor


def _mla_parts(cfg, weights, layer, x, ablate=()):
    """q_nope [B,H,S,nope], q_pe [B,H,S,dr] rotated, c [B,S,r] normalised, k_pe [B,S,dr] rotated."""
    B, S, _ = x.shape
    H, r, dr, nope = cfg["num_attention_heads"], cfg["kv_lora_rank"], cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"]
    eps = cfg["rms_norm_eps"]
    a = "model.layers.%d.self_attn." % layer
    if q_lora_rank(cfg):
        q = _lin(rms_norm(_lin(x, weights, a + "q_a_proj.weight"), weights[a + "q_a_layernorm.weight"], eps),
                 weights, a + "q_b_proj.weight")
    else:
        q = _lin(x, weights, a + "q_proj.weight")
    q = q.view(B, S, H, nope + dr).transpose(1, 2)
    q_nope, q_pe = q[..., :nope], q[..., nope:]
    ckv = _lin(x, weights, a + "kv_a_proj_with_mqa.weight")
    c, k_pe = ckv[..., :r], ckv[..., r:]
    if "kv_norm" not in ablate:
        c = rms_norm(c, weights[a + "kv_a_layernorm.weight"], eps)
    ang, af = rope_angles(cfg, S)
    return q_nope, rope_pairs(cfg, q_pe, ang, ablate, af), c, rope_pairs(cfg, k_pe, ang, ablate, af)


def _causal_softmax(scores):
    S = scores.shape[-1]
    future = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def mla_attention(cfg, weights, layer, x, ablate=()):
    """MLA of one layer as the modeling files compute it (keys/values expanded per head)."""
    B, S, _ = x.shape
    H, nope, dv = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    a = "model.layers.%d.self_attn." % layer
    q_nope, q_pe, c, k_pe = _mla_parts(cfg, weights, layer, x, ablate)
    kv = _lin(c, weights, a + "kv_b_proj.weight").view(B, S, H, nope + dv).transpose(1, 2)
    k_nope, v = kv[..., :nope], kv[..., nope:]
    k = torch.cat([k_nope, k_pe[:, None].expand(B, H, S, k_pe.shape[-1])], dim=-1)
    q = torch.cat([q_nope, q_pe], dim=-1)
    p = _causal_softmax(q @ k.transpose(-1, -2) * softmax_scale(cfg, ablate))
    out = (p @ v).transpose(1, 2).reshape(B, S, H * dv)
    return _lin(out, weights, a + "o_proj.weight")


def mla_attention_absorbed(cfg, weights, layer, x):
    """The same attention with kv_b_proj absorbed (DeepSeek-V2 paper, section 2.1.2): scores
    against the latent c, W_UV after the weighted sum.  For the tests (equals mla_attention)."""
    B, S, _ = x.shape
    H, nope, dv, r = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    a = "model.layers.%d.self_attn." % layer
    q_nope, q_pe, c, k_pe = _mla_parts(cfg, weights, layer, x)
    w = _w(weights, a + "kv_b_proj.weight").view(H, nope + dv, r)
    w_uk, w_uv = w[:, :nope], w[:, nope:]                               # [H, nope, r], [H, dv, r]
    q_lat = torch.einsum("bhsn,hnr->bhsr", q_nope, w_uk)
    scores = q_lat @ c[:, None].transpose(-1, -2) + q_pe @ k_pe[:, None].transpose(-1, -2)
    p = _causal_softmax(scores * softmax_scale(cfg))
    o_lat = p @ c[:, None]                                              # [B, H, S, r]
    out = torch.einsum("bhsr,hvr->bshv", o_lat, w_uv).reshape(B, S, H * dv)
    return _lin(out, weights, a + "o_proj.weight")


def swiglu(x, w_gate, w_up, w_down):
    x = x.to(F64)
    return (torch.nn.functional.silu(x @ w_gate.to(F64).T) * (x @ w_up.to(F64).T)) @ w_down.to(F64).T


def route(cfg, logits, bias=None, ablate=(), trace=None):
    """(gates [T, k], expert ids [T, k]) of router logits [T, E] (see the docstring).

    trace: if a list, (keys after group masking, k) and, with groups, (group scores,
    topk_group) are appended: the decisions a float32 engine must make alike."""
    T, E = logits.shape
    k = cfg["num_experts_per_tok"]
    v3 = is_v3(cfg)
    scores = torch.sigmoid(logits) if v3 else torch.softmax(logits, dim=-1)
    keys = scores
    if v3 and bias is not None and "correction_bias" not in ablate:
        keys = scores + bias.to(F64)[None, :]
    grouped = (v3 or cfg.get("topk_method", "greedy") == "group_limited_greedy") and "group_limit" not in ablate
    if grouped and cfg.get("n_group", 1) > 1:
        G, tg = cfg["n_group"], cfg["topk_group"]
        per = keys.view(T, G, E // G)
        gs = per.topk(2, dim=-1).values.sum(-1) if v3 else per.max(dim=-1).values
        if trace is not None:
            trace.append((gs, tg))
        gidx = torch.topk(gs, tg, dim=-1).indices
        gmask = torch.zeros(T, G, dtype=torch.bool)
        gmask[torch.arange(T)[:, None], gidx] = True
        keys = keys.masked_fill(~gmask[:, :, None].expand(T, G, E // G).reshape(T, E), 0.0)
    if trace is not None:
        trace.append((keys, k))
    ids = torch.topk(keys, k, dim=-1).indices
    gates = scores.gather(1, ids)
    if v3 and cfg.get("norm_topk_prob", True):
        gates = gates / (gates.sum(-1, keepdim=True) + 1e-20)
    if "routed_scaling" not in ablate:
        gates = gates * cfg.get("routed_scaling_factor", 1.0)
    return gates, ids


def moe_block(cfg, weights, layer, x, ablate=(), trace=None):
    B, S, d = x.shape
    t = x.reshape(B * S, d).to(F64)
    m = "model.layers.%d.mlp." % layer
    bias = weights.get(m + "gate.e_score_correction_bias")
    gates, ids = route(cfg, t @ _w(weights, m + "gate.weight").T, bias, ablate, trace)
    out = torch.zeros_like(t)
    for e in range(cfg["n_routed_experts"]):
        rows, slot = torch.nonzero(ids == e, as_tuple=True)
        if rows.numel() == 0:
            continue
        ex = m + "experts.%d." % e
        y = swiglu(t[rows], weights[ex + "gate_proj.weight"], weights[ex + "up_proj.weight"],
                   weights[ex + "down_proj.weight"])
        out.index_add_(0, rows, gates[rows, slot, None] * y)
    sh = m + "shared_experts."
    out = out + swiglu(t, weights[sh + "gate_proj.weight"], weights[sh + "up_proj.weight"],
                       weights[sh + "down_proj.weight"])
    return out.view(B, S, d)


def dense_mlp(weights, layer, x):
    m = "model.layers.%d.mlp." % layer
    return swiglu(x, weights[m + "gate_proj.weight"], weights[m + "up_proj.weight"], weights[m + "down_proj.weight"])


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def forward(cfg, weights, input_ids, trace=None, ablate=()):
    """Logits [B, S, V] (float64) of input_ids [B, S]; positions 0..S-1 in every row.

    trace: if a list, every MoE layer's routing decisions are appended (see route)."""
    if cfg["model_type"] not in ARCHS:
        raise ValueError("unsupported model_type %r" % cfg["model_type"])
    eps = cfg["rms_norm_eps"]
    embed = _w(weights, "model.embed_tokens.weight")
    h = embed[input_ids.long()]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = h + mla_attention(cfg, weights, l, rms_norm(h, weights[p + "input_layernorm.weight"], eps), ablate)
        x = rms_norm(h, weights[p + "post_attention_layernorm.weight"], eps)
        h = h + (moe_block(cfg, weights, l, x, ablate, trace) if layer_is_sparse(cfg, l) else dense_mlp(weights, l, x))
    h = rms_norm(h, weights["model.norm.weight"], eps)
    head = embed if cfg.get("tie_word_embeddings", False) else _w(weights, "lm_head.weight")
    return h @ head.T


def greedy(cfg, weights, input_ids, n, trace=None):
    """n greedy tokens per row [B, n]: hf_reference.greedy's loop over this family's forward."""
    return hf.greedy(cfg, weights, input_ids, n, trace, forward_fn=forward)
