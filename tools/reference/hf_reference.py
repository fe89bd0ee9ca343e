"""An independent float64 reference of Hugging Face causal LMs: five MoE families and four dense.

model_type "mixtral", "qwen2_moe", "qwen3_moe", "olmoe" and "granitemoe", and the dense "llama", "mistral",
"qwen2" and "qwen3", written in plain PyTorch
from the semantics of transformers' modeling_<type>.py (no transformers import: it is
not packaged for Debian).  A model is a config dict (the checkpoint's config.json) and
a dict of tensors with the checkpoint's Hugging Face names; any stored dtype is upcast
to float64 and everything is computed in float64.  Used only to make and check the
tests/fixtures/hf/ fixtures the C++ checkpoint loader is tested against.

The dense families are the same decoder with a SwiGLU MLP (mlp.{gate,up,down}_proj, width
intermediate_size) in every layer: llama and mistral plain (llama's attention_bias would put
a bias on q/k/v/o alike), qwen2 with q/k/v biases, qwen3 with qwen3_moe's per-head q/k norm
and explicit head_dim.

Expert layouts: transformers 4.x stores one tensor per expert and matrix; transformers v5
stores each MoE block's experts fused, experts.gate_up_proj [E, 2F, d] and experts.down_proj
[E, d, F] (v5 modeling_mixtral.py MixtralExperts: gate and up are the two halves of
x @ gate_up_proj[e].T, gate first).  moe_block reads whichever the weights hold.

What differs between the families (all else is the shared Llama-style decoder):

    mixtral    MoE in block_sparse_moe (experts.M.w1/w3/w2), top-k gates always
               renormalised (MixtralConfig has no norm_topk_prob), every layer MoE
    qwen2_moe  q/k/v biases; routed experts + a shared expert scaled by
               sigmoid(shared_expert_gate(x)); gates renormalised only if
               norm_topk_prob; some layers dense (layer_is_sparse)
    qwen3_moe  per-head RMSNorm(head_dim) on q and k before RoPE, explicit head_dim;
               no shared expert; same dense/sparse rule and norm_topk_prob
    olmoe      RMSNorm over the whole projected q (H*hd) and k (G*hd) before the
               per-head reshape and RoPE; expert width intermediate_size; every
               layer MoE; norm_topk_prob
    granitemoe (modeling_granitemoe.py) embeddings times embedding_multiplier; each
               attention and MoE output times residual_multiplier before the residual
               add; attention scores times attention_multiplier (not 1/sqrt(hd));
               logits divided by logits_scaling; router block_sparse_moe.router.layer,
               softmax over the top-k logits; experts fused in input_linear [E, 2F, d]
               (gate rows, then up rows) and output_linear [E, d, F]; every layer MoE

Training (the family golden fixtures of make_model_fixtures.py): the forward is
differentiable in the weights, and loss_on_window adds the cross-entropy and the
load-balancing loss of every MoE layer in Hugging Face's convention
(load_balancing_loss_func: softmax over all experts, f_i = share of tokens whose top-k
holds expert i, P_i = mean probability, coef * E * sum_i f_i P_i).  One difference,
deliberate: Hugging Face pools the router logits of all layers before the product;
here, as in the engine (docs/moe-layer.md, aux_loss_style "hf"), each MoE layer's loss
is computed on its own and the layers' losses are summed.  The two agree for one MoE
layer.

Public: ARCHS, head_dim, layer_is_sparse, weight_shapes, forward, greedy,
perplexity, loss_on_window, and the pieces (rms_norm, apply_rope, attention, moe_block, swiglu,
route) for the tests.
"""

import math

import torch

MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe")
DENSE_ARCHS = ("llama", "mistral", "qwen2", "qwen3")
ARCHS = MOE_ARCHS + DENSE_ARCHS

F64 = torch.float64


# --------------------------------------------------------------------------
# Config readings (the same defaults the HF classes apply)
# --------------------------------------------------------------------------

def head_dim(cfg):
    """Per-head width: config head_dim when given (Qwen3-MoE, Mixtral), else hidden/heads."""
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def num_kv_heads(cfg):
    # Mixtral / OLMoE default num_key_value_heads to num_attention_heads when null
    return cfg.get("num_key_value_heads") or cfg["num_attention_heads"]


def num_experts(cfg):
    if cfg["model_type"] in DENSE_ARCHS:
        return 0
    return cfg["num_local_experts"] if cfg["model_type"] in ("mixtral", "granitemoe") else cfg["num_experts"]


def expert_width(cfg):
    # Mixtral and OLMoE experts are intermediate_size wide; the Qwen MoEs keep
    # intermediate_size for their dense layers and use moe_intermediate_size.
    return cfg["moe_intermediate_size"] if cfg["model_type"] in ("qwen2_moe", "qwen3_moe") \
        else cfg["intermediate_size"]


def norm_topk(cfg):
    # Mixtral always renormalises the top-k probabilities (no config switch); Granite-MoE's
    # softmax over the top-k logits is the same.
    return True if cfg["model_type"] in ("mixtral", "granitemoe") else bool(cfg["norm_topk_prob"])


def layer_is_sparse(cfg, layer):
    """Whether decoder layer `layer` holds the MoE block (else a dense SwiGLU MLP).

    Qwen2/3-MoE (Qwen2MoeDecoderLayer): sparse iff layer not in mlp_only_layers and
    num_experts > 0 and (layer + 1) % decoder_sparse_step == 0.  Mixtral, OLMoE: all.
    The dense families: none."""
    if cfg["model_type"] in DENSE_ARCHS:
        return False
    if cfg["model_type"] in ("mixtral", "olmoe", "granitemoe"):
        return True
    return layer not in (cfg.get("mlp_only_layers") or []) and cfg["num_experts"] > 0 \
        and (layer + 1) % cfg.get("decoder_sparse_step", 1) == 0


def qkv_bias(cfg):
    # Qwen2-MoE: q/k/v biases (hard-wired before transformers v5, config qkv_bias since);
    # Qwen3-MoE and OLMoE (Llama attention) put attention_bias on q/k/v/o alike;
    # Mixtral's and Mistral's projections never have a bias; Qwen2 (dense) always has q/k/v
    # biases; Llama and Qwen3 put attention_bias on q/k/v/o alike.
    if cfg["model_type"] == "qwen2_moe":
        return bool(cfg.get("qkv_bias", True))
    if cfg["model_type"] == "qwen2":
        return True
    return cfg["model_type"] not in ("mixtral", "mistral") and bool(cfg.get("attention_bias", False))


def o_bias(cfg):
    return cfg["model_type"] in ("qwen3_moe", "olmoe", "llama", "qwen3", "granitemoe") and \
        bool(cfg.get("attention_bias", False))


def per_head_qk_norm(cfg):
    return cfg["model_type"] in ("qwen3_moe", "qwen3")


def _moe_prefix(cfg, layer):
    sub = "block_sparse_moe" if cfg["model_type"] in ("mixtral", "granitemoe") else "mlp"
    return "model.layers.%d.%s." % (layer, sub)


def _expert_names(cfg):
    """(gate, up, down) projection names of one routed expert."""
    return ("w1", "w3", "w2") if cfg["model_type"] == "mixtral" else ("gate_proj", "up_proj", "down_proj")


def weight_shapes(cfg, fused=False):
    """{name: shape} of every tensor the checkpoint holds, in HF state-dict (module) order.

    lm_head.weight is absent when tie_word_embeddings (HF does not save tied copies).
    fused: the routed experts in transformers v5's layout (see moe_block)."""
    arch = cfg["model_type"]
    if arch not in ARCHS:
        raise ValueError("unsupported model_type %r" % arch)
    d, V = cfg["hidden_size"], cfg["vocab_size"]
    H, G, hd = cfg["num_attention_heads"], num_kv_heads(cfg), head_dim(cfg)
    E, F = num_experts(cfg), expert_width(cfg)
    out = {"model.embed_tokens.weight": [V, d]}
    for l in range(cfg["num_hidden_layers"]):
        a = "model.layers.%d.self_attn." % l
        for proj, rows in (("q_proj", H * hd), ("k_proj", G * hd), ("v_proj", G * hd)):
            out[a + proj + ".weight"] = [rows, d]
            if qkv_bias(cfg):
                out[a + proj + ".bias"] = [rows]
        out[a + "o_proj.weight"] = [d, H * hd]
        if o_bias(cfg):
            out[a + "o_proj.bias"] = [d]
        if per_head_qk_norm(cfg):
            out[a + "q_norm.weight"] = [hd]
            out[a + "k_norm.weight"] = [hd]
        elif arch == "olmoe":
            out[a + "q_norm.weight"] = [H * hd]
            out[a + "k_norm.weight"] = [G * hd]
        m = _moe_prefix(cfg, l)
        if arch == "granitemoe":
            # GraniteMoeMoE: router.layer (nn.Linear) and two GraniteMoeParallelExperts whose
            # weight is [E, out, in]; input_linear's 2F outputs chunk into gate, then up.
            out[m + "input_linear.weight"] = [E, 2 * F, d]
            out[m + "output_linear.weight"] = [E, d, F]
            out[m + "router.layer.weight"] = [E, d]
        elif layer_is_sparse(cfg, l):
            shared = cfg["shared_expert_intermediate_size"] if arch == "qwen2_moe" else 0
            add_sparse_mlp_shapes(out, m, E, F, d, fused, _expert_names(cfg), shared)
        else:
            add_dense_mlp_shapes(out, m, cfg["intermediate_size"], d)
        out["model.layers.%d.input_layernorm.weight" % l] = [d]
        out["model.layers.%d.post_attention_layernorm.weight" % l] = [d]
    return add_final_shapes(out, cfg)


def add_sparse_mlp_shapes(out, m, E, F, d, fused, names, shared=0):
    """The router, the E routed experts (per expert, or transformers v5's fused gate_up_proj /
    down_proj) and, when shared > 0, Qwen2-MoE's sigmoid-gated shared expert of that width,
    under the MLP module prefix m."""
    out[m + "gate.weight"] = [E, d]
    g, u, dn = names
    if fused:
        out[m + "experts.gate_up_proj"] = [E, 2 * F, d]
        out[m + "experts.down_proj"] = [E, d, F]
    for e in range(E if not fused else 0):
        out[m + "experts.%d.%s.weight" % (e, g)] = [F, d]
        out[m + "experts.%d.%s.weight" % (e, u)] = [F, d]
        out[m + "experts.%d.%s.weight" % (e, dn)] = [d, F]
    if shared > 0:
        add_dense_mlp_shapes(out, m + "shared_expert.", shared, d)
        out[m + "shared_expert_gate.weight"] = [1, d]


def add_dense_mlp_shapes(out, m, I, d):
    """A SwiGLU MLP of width I under the module prefix m."""
    out[m + "gate_proj.weight"] = [I, d]
    out[m + "up_proj.weight"] = [I, d]
    out[m + "down_proj.weight"] = [d, I]


def add_final_shapes(out, cfg):
    """out with the final norm and, unless tied, the LM head appended (every family ends so)."""
    d, V = cfg["hidden_size"], cfg["vocab_size"]
    out["model.norm.weight"] = [d]
    if not cfg.get("tie_word_embeddings", False):
        out["lm_head.weight"] = [V, d]
    return out


# --------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------

def _w(weights, name):
    return weights[name].to(F64)


def _linear(x, weights, name, bias=False):
    y = x @ _w(weights, name + ".weight").T
    if bias:
        y = y + _w(weights, name + ".bias")
    return y


def rms_norm(x, w, eps):
    """x * rsqrt(mean(x^2) + eps) * w over the last dim (HF computes this in fp32; here fp64)."""
    x = x.to(F64)
    return w.to(F64) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_cos_sin(positions, hd, theta, inv_freq=None, attention_factor=1.0):
    """cos, sin [S, hd]: both halves equal, scaled by attention_factor.

    Default HF RoPE: inv_freq_i = theta^(-2i/hd); a scaled RoPE passes its own inv_freq."""
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=F64) / hd))
    ang = positions.to(F64)[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rope_parameters(cfg):
    """The config's RoPE scaling dict with its type under "rope_type" (None when unscaled).

    transformers v5 spells it "rope_parameters" (and may put rope_theta there), 4.x
    "rope_scaling" with "rope_type" or the older alias "type"."""
    r = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if not r:
        return None
    r = dict(r)
    r["rope_type"] = r.get("rope_type", r.get("type", "default"))
    return None if r["rope_type"] == "default" else r


def rope_theta(cfg):
    r = cfg.get("rope_parameters") or {}
    return r.get("rope_theta", cfg["rope_theta"])


def _yarn_get_mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def rope_inv_freq(cfg, seq_len):
    """(inv_freq [hd/2] float64, attention_factor) of the config's RoPE for a sequence that
    reaches seq_len positions.

    Written from transformers' modeling_rope_utils.py (the _compute_*_parameters functions of
    v4.5x / v5; facts, not code):
      linear   inv_freq / factor
      dynamic  base * (factor * L / M - (factor - 1)) ** (dim / (dim - 2)), L = max(seq_len, M),
               M = max_position_embeddings (dynamic_rope_update recomputes once the sequence
               outgrows M)
      yarn     low/high = the dimensions turning beta_fast / beta_slow times over
               original_max_position_embeddings (floor / ceil unless truncate is false, clipped
               to [0, dim-1], high += 0.001 if equal); ramp_i = clamp((i - low) / (high - low));
               inv_freq = inv / factor * ramp + inv * (1 - ramp); attention factor: the config's
               attention_factor, else get_mscale(factor, mscale) / get_mscale(factor,
               mscale_all_dim) when both are given, else get_mscale(factor) (0.1 ln s + 1);
               factor missing: max_position_embeddings / original (v5)
      llama3   wavelen = 2 pi / inv; > original / low_freq_factor: inv / factor; < original /
               high_freq_factor: inv; between: (1 - s) inv / factor + s inv with
               s = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    """
    hd, theta = head_dim(cfg), rope_theta(cfg)
    r = rope_parameters(cfg)
    exps = torch.arange(0, hd, 2, dtype=F64) / hd
    inv = 1.0 / (theta ** exps)
    if r is None:
        return inv, 1.0
    kind = r["rope_type"]
    M = cfg["max_position_embeddings"]
    if kind == "linear":
        return inv / r["factor"], 1.0
    if kind == "dynamic":
        L = max(seq_len, M)
        base = theta * ((r["factor"] * L / M) - (r["factor"] - 1)) ** (hd / (hd - 2))
        return 1.0 / (base ** exps), 1.0
    if kind == "yarn":
        orig = r.get("original_max_position_embeddings") or M
        factor = r.get("factor") or M / orig
        af = r.get("attention_factor")
        if af is None:
            ms, msa = r.get("mscale"), r.get("mscale_all_dim")
            af = _yarn_get_mscale(factor, ms) / _yarn_get_mscale(factor, msa) if ms and msa \
                else _yarn_get_mscale(factor)
        beta_fast, beta_slow = r.get("beta_fast") or 32, r.get("beta_slow") or 1

        def dim_of(rotations):
            return hd * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low, high = dim_of(beta_fast), dim_of(beta_slow)
        if r.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, hd - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(hd // 2, dtype=F64) - low) / (high - low)).clamp(0, 1)
        return inv / factor * ramp + inv * (1 - ramp), af
    if kind == "llama3":
        factor, orig = r["factor"], r["original_max_position_embeddings"]
        lo, hi = r["low_freq_factor"], r["high_freq_factor"]
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - lo) / (hi - lo)
        out = torch.where(wavelen > orig / lo, inv / factor,
                          torch.where(wavelen < orig / hi, inv, (1 - smooth) * inv / factor + smooth * inv))
        return out, 1.0
    raise ValueError("unsupported rope_type %r" % kind)


def apply_rope(x, cos, sin):
    """rotate_half convention: dims i and i + hd/2 form a pair (not interleaved)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention(cfg, weights, layer, x):
    """Causal grouped-query self-attention of one layer; x [B, S, d] -> [B, S, d].

    A dynamic RoPE takes the frequencies of this forward's length S (a full forward without
    cache, as HF's dynamic_rope_update sees it)."""
    arch = cfg["model_type"]
    B, S, _ = x.shape
    H, G, hd = cfg["num_attention_heads"], num_kv_heads(cfg), head_dim(cfg)
    eps = cfg["rms_norm_eps"]
    a = "model.layers.%d.self_attn." % layer
    bias = qkv_bias(cfg)
    q = _linear(x, weights, a + "q_proj", bias)
    k = _linear(x, weights, a + "k_proj", bias)
    v = _linear(x, weights, a + "v_proj", bias)
    if arch == "olmoe":
        # OLMoE normalises the whole projection (all heads together) before the reshape.
        q = rms_norm(q, weights[a + "q_norm.weight"], eps)
        k = rms_norm(k, weights[a + "k_norm.weight"], eps)
        if cfg.get("clip_qkv") is not None:
            c = cfg["clip_qkv"]
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
    q = q.view(B, S, H, hd)
    k = k.view(B, S, G, hd)
    v = v.view(B, S, G, hd)
    if per_head_qk_norm(cfg):
        # Qwen3 normalises each head separately (RMSNorm over head_dim), before RoPE.
        q = rms_norm(q, weights[a + "q_norm.weight"], eps)
        k = rms_norm(k, weights[a + "k_norm.weight"], eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)     # [B, heads, S, hd]
    inv_freq, af = rope_inv_freq(cfg, S)
    cos, sin = rope_cos_sin(torch.arange(S), hd, None, inv_freq, af)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    # HF repeat_kv: query head h reads kv head h // (H / G)
    k = k.repeat_interleave(H // G, dim=1)
    v = v.repeat_interleave(H // G, dim=1)
    # Granite-MoE: attention_multiplier replaces 1/sqrt(hd)
    scale = cfg["attention_multiplier"] if arch == "granitemoe" else 1.0 / math.sqrt(hd)
    scores = (q @ k.transpose(-1, -2)) * scale
    future = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v                            # [B, H, S, hd]
    out = out.transpose(1, 2).reshape(B, S, H * hd)
    return _linear(out, weights, a + "o_proj", o_bias(cfg))


def swiglu(x, w_gate, w_up, w_down):
    """down(silu(gate(x)) * up(x))."""
    x = x.to(F64)
    return (torch.nn.functional.silu(x @ w_gate.to(F64).T) * (x @ w_up.to(F64).T)) @ w_down.to(F64).T


def route(router_logits, k, normalize):
    """(gates [T, k], expert ids [T, k]): softmax over all experts, top-k, optional renormalisation."""
    probs = torch.softmax(router_logits, dim=-1)
    gates, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        gates = gates / gates.sum(-1, keepdim=True)
    return gates, ids


def moe_block(cfg, weights, layer, x, trace=None):
    """The sparse FFN of one layer; x [B, S, d] -> [B, S, d].

    trace: if a list, the router logits [B*S, E] are appended (for tie checks)."""
    B, S, d = x.shape
    t = x.reshape(B * S, d).to(F64)
    m = _moe_prefix(cfg, layer)
    granite = cfg["model_type"] == "granitemoe"
    logits = t @ _w(weights, m + ("router.layer.weight" if granite else "gate.weight")).T
    if trace is not None:
        trace.append(logits)
    if granite:
        # GraniteMoeTopKGating: top-k of the logits, softmax over those k
        top, ids = torch.topk(logits, cfg["num_experts_per_tok"], dim=-1)
        gates = torch.softmax(top, dim=-1)
    else:
        gates, ids = route(logits, cfg["num_experts_per_tok"], norm_topk(cfg))
    g, u, dn = _expert_names(cfg)
    out = torch.zeros_like(t)
    fused = m + "experts.gate_up_proj" in weights
    for e in range(num_experts(cfg)):
        rows, slot = torch.nonzero(ids == e, as_tuple=True)
        if rows.numel() == 0:
            continue
        if granite:
            gate_up = weights[m + "input_linear.weight"][e]
            F = gate_up.shape[0] // 2
            y = swiglu(t[rows], gate_up[:F], gate_up[F:], weights[m + "output_linear.weight"][e])
        elif fused:
            # transformers v5 (modeling_mixtral.py MixtralExperts, the same in every family's
            # Experts module): gate_up_proj [E, 2F, d]; x @ gate_up_proj[e].T is chunked in two
            # along the features, gate first; down_proj [E, d, F] is applied as x @ down_proj[e].T.
            gate_up = weights[m + "experts.gate_up_proj"][e]
            F = gate_up.shape[0] // 2
            y = swiglu(t[rows], gate_up[:F], gate_up[F:], weights[m + "experts.down_proj"][e])
        else:
            ex = m + "experts.%d." % e
            y = swiglu(t[rows], weights[ex + g + ".weight"], weights[ex + u + ".weight"], weights[ex + dn + ".weight"])
        out.index_add_(0, rows, gates[rows, slot, None] * y)
    if cfg["model_type"] == "qwen2_moe":
        sh = m + "shared_expert."
        shared = swiglu(t, weights[sh + "gate_proj.weight"], weights[sh + "up_proj.weight"],
                        weights[sh + "down_proj.weight"])
        out = out + torch.sigmoid(t @ _w(weights, m + "shared_expert_gate.weight").T) * shared
    return out.view(B, S, d)


def dense_mlp(cfg, weights, layer, x):
    m = "model.layers.%d.mlp." % layer
    return swiglu(x, weights[m + "gate_proj.weight"], weights[m + "up_proj.weight"], weights[m + "down_proj.weight"])


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def forward(cfg, weights, input_ids, trace=None):
    """Logits [B, S, V] (float64) of input_ids [B, S]; positions 0..S-1 in every row.

    trace: if a list, every MoE layer's router logits are appended to it."""
    if cfg["model_type"] == "gpt_oss":   # its own module (sinks, windows, biases, MXFP4)
        import gpt_oss_reference
        return gpt_oss_reference.forward(cfg, weights, input_ids, trace)
    if cfg["model_type"] not in ARCHS:
        raise ValueError("unsupported model_type %r" % cfg["model_type"])
    eps = cfg["rms_norm_eps"]
    # Granite-MoE's multipliers (1 elsewhere): embeddings scaled, each sub-layer's output scaled
    # before its residual add, logits divided.
    granite = cfg["model_type"] == "granitemoe"
    emb_mul = cfg["embedding_multiplier"] if granite else 1.0
    res_mul = cfg["residual_multiplier"] if granite else 1.0
    logit_div = cfg["logits_scaling"] if granite else 1.0
    embed = _w(weights, "model.embed_tokens.weight")
    h = embed[input_ids.long()] * emb_mul
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = h + res_mul * attention(cfg, weights, l, rms_norm(h, weights[p + "input_layernorm.weight"], eps))
        x = rms_norm(h, weights[p + "post_attention_layernorm.weight"], eps)
        h = h + res_mul * (moe_block(cfg, weights, l, x, trace) if layer_is_sparse(cfg, l)
                           else dense_mlp(cfg, weights, l, x))
    h = rms_norm(h, weights["model.norm.weight"], eps)
    head = embed if cfg.get("tie_word_embeddings", False) else _w(weights, "lm_head.weight")
    return (h @ head.T) / logit_div


def greedy(cfg, weights, input_ids, n, trace=None, forward_fn=None):
    """n greedily chosen tokens per row [B, n] (int64).

    Recomputes the full forward over the grown sequence at each step (no KV cache),
    so it does not share a cache bug with the engine it checks.  Ties go to the lowest
    id (torch.argmax), as in HF generate.  trace: if a list, one (last-position logits
    [B, V], router logits list) pair is appended per step.  forward_fn: another family's
    forward(cfg, weights, ids, trace) (deepseek_reference, gpt_oss_reference); this one's
    by default."""
    forward_fn = forward_fn or forward
    seq = input_ids.long()
    out = []
    for _ in range(n):
        routers = [] if trace is not None else None
        last = forward_fn(cfg, weights, seq, routers)[:, -1, :]
        if trace is not None:
            trace.append((last, routers))
        nxt = torch.argmax(last, dim=-1)
        out.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)


def perplexity(cfg, weights, ids, ctx, stride, trace=None):
    """(sum of -log p(token), tokens scored) of the 1-D token sequence ids, float64.

    The sliding-window definition of include/moe/perplexity.h, written here as a loop over
    targets: every token t >= 1 is scored once, by the first window that reaches it; window w
    feeds ids[w*stride : w*stride + ctx] (clipped to the sequence) as positions 0.. and
    predicts each next token.  Each window is a fresh full forward (no cache).  trace: as
    forward's, over all windows."""
    n = len(ids)
    if not (1 <= stride <= ctx) or n < 2:
        raise ValueError("need 1 <= stride <= ctx and at least 2 tokens")
    seq = torch.as_tensor(ids).long()
    nll, count, scored_to, begin = 0.0, 0, 0, 0
    while True:
        end = min(begin + ctx, n - 1)
        logp = torch.log_softmax(forward(cfg, weights, seq[None, begin:end], trace)[0], dim=-1)
        for t in range(scored_to + 1, end + 1):
            nll -= float(logp[t - 1 - begin, seq[t]])
            count += 1
        scored_to = end
        if end == n - 1:
            return nll, count
        begin += stride


# --------------------------------------------------------------------------
# Training loss
# --------------------------------------------------------------------------

def load_balancing_loss(cfg, router_logits):
    """E * sum_i f_i P_i of one MoE layer's router logits [T, E] (no coefficient)."""
    E, k = num_experts(cfg), cfg["num_experts_per_tok"]
    probs = torch.softmax(router_logits, dim=-1)
    _, ids = torch.topk(probs, k, dim=-1)
    mask = torch.nn.functional.one_hot(ids, E).to(probs.dtype)     # [T, k, E]
    f = mask.mean(dim=0).sum(dim=0)                                # [E]: n_i / T
    return E * (f * probs.mean(dim=0)).sum()


def loss_on_window(cfg, weights, window):
    """Forward on a [B, S+1] window (inputs window[:, :-1], targets window[:, 1:]).

    Returns logits [B*S, V], ce (mean over tokens), aux (router_aux_loss_coef times the
    sum over MoE layers of load_balancing_loss), loss = ce + aux, and the router logits."""
    inputs, targets = window[:, :-1], window[:, 1:]
    routers = []
    logits = forward(cfg, weights, inputs, routers)
    logits = logits.reshape(-1, logits.shape[-1])
    ce = torch.nn.functional.cross_entropy(logits, targets.reshape(-1))
    coef = cfg.get("router_aux_loss_coef", 0.0)
    aux = logits.new_zeros(())
    for r in routers:
        aux = aux + coef * load_balancing_loss(cfg, r)
    return {"logits": logits, "ce": ce, "aux": aux, "loss": ce + aux, "routers": routers}
