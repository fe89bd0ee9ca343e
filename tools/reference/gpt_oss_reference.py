"""An independent float64 reference of Hugging Face's gpt_oss causal LM (gpt-oss-20b / -120b).

Written in plain PyTorch from the semantics of transformers' models/gpt_oss/modeling_gpt_oss.py
(transformers v4.55.0, the release that added gpt-oss; facts, not code) and the published
configs of openai/gpt-oss-20b and openai/gpt-oss-120b.  A model is a config dict (config.json)
and a dict of tensors under the checkpoint's names, upcast to float64.  Used to make the
tests/fixtures/hf/gpt_oss fixture (make_hf_fixtures.py) the C++ loader is tested against.

What gpt_oss computes, per decoder layer (pre-norm residual blocks, RMSNorm eps rms_norm_eps):

    attention  q/k/v/o projections all with biases; RoPE (rotate_half pairs i, i + hd/2) with the
               config's rope_scaling (YaRN in the released models, truncate false); GQA; scores
               q k^T / sqrt(hd), causal, and on layer_types[l] == "sliding_attention" only the
               keys with q_pos - k_pos < sliding_window; per head a learned logit sinks[h] is
               appended to every score row before the softmax and its probability dropped after
               it, so each row's weights sum to less than one
    router     logits = x W_r^T + b_r [E]; the top-k logits (torch.topk), softmax over those k
    experts    gate_up = x @ gate_up_proj[e] + gate_up_proj_bias[e]   ([d, 2F]: x @ W layout)
               gate = gate_up[..., 0::2], up = gate_up[..., 1::2]     (interleaved columns)
               gate = min(gate, limit); up = clamp(up, -limit, limit)  (limit = swiglu_limit)
               out = ((up + 1) * gate * sigmoid(1.702 * gate)) @ down_proj[e] + down_proj_bias[e]
               summed over the k experts weighted by their router weights

sinks=False / clamp=False switch the two gpt-oss specifics off (test_hf_reference.py shows that
the fixture depends on both).
"""

import math

import torch

import hf_reference as hf

F64 = torch.float64
ALPHA = 1.702   # the clamped SwiGLU's sigmoid slope


def layer_types(cfg):
    """Each layer's attention kind; GptOssConfig's default alternates, sliding first."""
    return cfg.get("layer_types") or [
        "sliding_attention" if l % 2 == 0 else "full_attention"
        for l in range(cfg["num_hidden_layers"])]


# FP4 E2M1 values by code (bit 3 the sign), the OCP Microscaling format's element type.
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4_dequantize(blocks, scales):
    """The released checkpoints' MXFP4 (transformers integrations/mxfp4.py layout):
    blocks [..., R, C/32, 16] uint8 with code 2j in the low nibble of byte j and 2j + 1 in the
    high one, scales [..., R, C/32] uint8 E8M0 (2^(s - 127)) -> float64 [..., R, C]."""
    b = blocks.to(torch.int64)
    codes = torch.stack([b & 15, b >> 4], dim=-1).flatten(-2)          # [..., R, C/32, 32]
    vals = torch.tensor(E2M1, dtype=F64)[codes]
    vals = vals * torch.pow(2.0, scales.to(F64) - 127)[..., None]
    return vals.flatten(-2)


def mxfp4_quantize(w):
    """float [..., R, C] -> (blocks, scales) as mxfp4_dequantize reads them: per 32 values the
    smallest power-of-two scale that brings the largest magnitude within 6, each value rounded to
    the nearest E2M1 magnitude (for making fixtures; any rounding is fine, the stored bytes are
    what the reference and the engine read)."""
    *lead, R, C = w.shape
    v = w.to(F64).reshape(*lead, R, C // 32, 32)
    amax = v.abs().amax(-1)
    e = torch.where(amax > 0, torch.ceil(torch.log2(amax / 6.0)), torch.full_like(amax, -127.0))
    e = e.clamp(-127, 127)
    x = v / torch.pow(2.0, e)[..., None]
    mags = torch.tensor(E2M1[:8], dtype=F64)
    idx = (x.abs()[..., None] - mags).abs().argmin(-1)                  # ties: the smaller code
    codes = idx + 8 * ((x < 0) & (idx > 0)).to(torch.int64)
    codes = codes.reshape(*lead, R, C // 32, 16, 2)
    blocks = (codes[..., 0] | (codes[..., 1] << 4)).to(torch.uint8)
    return blocks, (e + 127).to(torch.uint8)


def expert_matrices(weights, prefix):
    """(gate_up_proj [E, d, 2F], down_proj [E, F, d]) in float64 from either stored layout: the
    matrices, or MXFP4 name_blocks / name_scales stored [out, in] (transposed back here)."""
    out = []
    for name in ("gate_up_proj", "down_proj"):
        n = prefix + "experts." + name
        if n in weights:
            out.append(_w(weights, n))
        else:
            out.append(mxfp4_dequantize(weights[n + "_blocks"], weights[n + "_scales"]).transpose(-1, -2))
    return out


def weight_shapes(cfg, fused=True, mxfp4=False):
    """{name: shape} in state-dict order (experts always fused: gpt_oss has no other layout);
    mxfp4: the experts' matrices as name_blocks [E, out, in/32, 16] + name_scales [E, out, in/32]."""
    d, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    H, G, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    E, F = cfg["num_local_experts"], cfg["intermediate_size"]
    out = {"model.embed_tokens.weight": [V, d]}
    for l in range(L):
        p = "model.layers.%d." % l
        for name, rows in (("q_proj", H * hd), ("k_proj", G * hd), ("v_proj", G * hd)):
            out[p + "self_attn.%s.weight" % name] = [rows, d]
            out[p + "self_attn.%s.bias" % name] = [rows]
        out[p + "self_attn.o_proj.weight"] = [d, H * hd]
        out[p + "self_attn.o_proj.bias"] = [d]
        out[p + "self_attn.sinks"] = [H]
        out[p + "mlp.router.weight"] = [E, d]
        out[p + "mlp.router.bias"] = [E]
        if mxfp4:
            out[p + "mlp.experts.gate_up_proj_blocks"] = [E, 2 * F, d // 32, 16]
            out[p + "mlp.experts.gate_up_proj_scales"] = [E, 2 * F, d // 32]
        else:
            out[p + "mlp.experts.gate_up_proj"] = [E, d, 2 * F]
        out[p + "mlp.experts.gate_up_proj_bias"] = [E, 2 * F]
        if mxfp4:
            out[p + "mlp.experts.down_proj_blocks"] = [E, d, F // 32, 16]
            out[p + "mlp.experts.down_proj_scales"] = [E, d, F // 32]
        else:
            out[p + "mlp.experts.down_proj"] = [E, F, d]
        out[p + "mlp.experts.down_proj_bias"] = [E, d]
        out[p + "input_layernorm.weight"] = [d]
        out[p + "post_attention_layernorm.weight"] = [d]
    return hf.add_final_shapes(out, cfg)


_w = hf._w  # a weight in float64


def attention(cfg, weights, layer, x, sinks=True):
    """x [B, S, d] -> [B, S, d]: biased GQA with RoPE, the layer's window and the sinks."""
    B, S, _ = x.shape
    H, G, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    a = "model.layers.%d.self_attn." % layer

    def proj(name, t):
        return t @ _w(weights, a + name + ".weight").T + _w(weights, a + name + ".bias")

    q = proj("q_proj", x).view(B, S, H, hd).transpose(1, 2)
    k = proj("k_proj", x).view(B, S, G, hd).transpose(1, 2)
    v = proj("v_proj", x).view(B, S, G, hd).transpose(1, 2)
    inv_freq, af = hf.rope_inv_freq(cfg, S)
    cos, sin = hf.rope_cos_sin(torch.arange(S), hd, None, inv_freq, af)
    q, k = hf.apply_rope(q, cos, sin), hf.apply_rope(k, cos, sin)
    k = k.repeat_interleave(H // G, dim=1)
    v = v.repeat_interleave(H // G, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)               # [B, H, S, S]
    qpos, kpos = torch.arange(S)[:, None], torch.arange(S)[None, :]
    hidden = kpos > qpos
    if layer_types(cfg)[layer] == "sliding_attention":
        hidden = hidden | (qpos - kpos >= cfg["sliding_window"])
    scores = scores.masked_fill(hidden, float("-inf"))
    if sinks:
        sink = _w(weights, a + "sinks").view(1, H, 1, 1).expand(B, H, S, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(B, S, H * hd)
    return out @ _w(weights, a + "o_proj.weight").T + _w(weights, a + "o_proj.bias")


def clamped_swiglu(gate_up, limit, clamp=True):
    """gate_up [..., 2F] with gate/up interleaved -> [..., F]."""
    gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
    if clamp:
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
    return (up + 1) * gate * torch.sigmoid(ALPHA * gate)


def moe_block(cfg, weights, layer, x, trace=None, clamp=True):
    """x [B, S, d] -> [B, S, d]; trace: if a list, the router logits [B*S, E] are appended."""
    B, S, d = x.shape
    p = "model.layers.%d.mlp." % layer
    k, limit = cfg["num_experts_per_tok"], cfg.get("swiglu_limit", 7.0)
    t = x.reshape(B * S, d)
    logits = t @ _w(weights, p + "router.weight").T + _w(weights, p + "router.bias")
    if trace is not None:
        trace.append(logits)
    top_val, top_idx = torch.topk(logits, k, dim=-1)
    gates = torch.softmax(top_val, dim=-1)
    gate_up, down = expert_matrices(weights, p)
    gate_up_b, down_b = _w(weights, p + "experts.gate_up_proj_bias"), _w(weights, p + "experts.down_proj_bias")
    out = torch.zeros_like(t)
    for e in range(gate_up.shape[0]):
        rows, slot = (top_idx == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        a = clamped_swiglu(t[rows] @ gate_up[e] + gate_up_b[e], limit, clamp)
        out.index_add_(0, rows, gates[rows, slot][:, None] * (a @ down[e] + down_b[e]))
    return out.view(B, S, d)


def forward(cfg, weights, input_ids, trace=None, sinks=True, clamp=True):
    """Logits [B, S, V] (float64) of input_ids [B, S], positions 0..S-1 in every row."""
    eps = cfg["rms_norm_eps"]
    embed = _w(weights, "model.embed_tokens.weight")
    h = embed[input_ids.long()]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = h + attention(cfg, weights, l, hf.rms_norm(h, weights[p + "input_layernorm.weight"], eps), sinks)
        x = hf.rms_norm(h, weights[p + "post_attention_layernorm.weight"], eps)
        h = h + moe_block(cfg, weights, l, x, trace, clamp)
    h = hf.rms_norm(h, weights["model.norm.weight"], eps)
    head = embed if cfg.get("tie_word_embeddings", False) else _w(weights, "lm_head.weight")
    return h @ head.T


def greedy(cfg, weights, input_ids, n, trace=None):
    """n greedy tokens per row [B, n]: hf_reference.greedy's loop over this family's forward."""
    return hf.greedy(cfg, weights, input_ids, n, trace, forward_fn=forward)
