#!/usr/bin/python3
"""Sanity checks of the Hugging Face MoE reference (hf_reference.py) and its fixtures.

    /usr/bin/python3 tools/reference/test_hf_reference.py        (or -m unittest)

Independent of the C++ code.  Identities that pin the formulas (RoPE == complex
rotation, attention == a naive loop, one expert with k = 1 == a dense SwiGLU, gate
sums, a saturated Qwen2 shared-expert gate, causality, where the q/k norms sit), two
cross-checks against the separately written references in this directory (Mixtral vs
model_reference.forward, the Qwen2-MoE block vs moe_reference.moe_forward), checks that
each fixture would catch a missed feature, and the fixture files themselves (HF
layout, config keys, exactly the tensors the config implies, expected outputs).
"""

import cmath
import copy
import json
import math
import os
import struct
import sys
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fixture_io  # noqa: E402
import deepseek_reference as ds  # noqa: E402
import hf_reference as hf  # noqa: E402
import make_hf_fixtures as mk  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64

# Keys each HF config class reads (transformers configuration_<type>.py), beyond these
# common ones; the fixtures' config.json must hold all of them.
COMMON_KEYS = {
    "architectures", "model_type", "torch_dtype", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_act",
    "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache", "tie_word_embeddings",
    "rope_theta", "attention_dropout", "num_experts_per_tok", "output_router_logits",
    "router_aux_loss_coef", "bos_token_id", "eos_token_id",
}
ARCH_KEYS = {
    "mixtral": {"num_local_experts", "sliding_window", "router_jitter_noise"},
    "qwen2_moe": {"moe_intermediate_size", "shared_expert_intermediate_size", "num_experts", "norm_topk_prob",
                  "decoder_sparse_step", "mlp_only_layers", "use_sliding_window", "sliding_window",
                  "max_window_layers", "rope_scaling", "qkv_bias"},
    "qwen3_moe": {"head_dim", "moe_intermediate_size", "num_experts", "norm_topk_prob", "decoder_sparse_step",
                  "mlp_only_layers", "attention_bias", "use_sliding_window", "sliding_window",
                  "max_window_layers", "rope_scaling"},
    "olmoe": {"num_experts", "norm_topk_prob", "attention_bias", "clip_qkv", "rope_scaling", "pad_token_id"},
    "llama": {"head_dim", "attention_bias", "mlp_bias", "pretraining_tp", "rope_scaling", "pad_token_id"},
    "mistral": {"head_dim", "sliding_window"},
    "granitemoe": {"num_local_experts", "attention_bias", "rope_scaling", "embedding_multiplier",
                   "residual_multiplier", "attention_multiplier", "logits_scaling", "pad_token_id"},
    "qwen2": {"use_sliding_window", "sliding_window", "max_window_layers", "rope_scaling"},
    "qwen3": {"head_dim", "attention_bias", "use_sliding_window", "sliding_window", "max_window_layers",
              "rope_scaling"},
    "gpt_oss": {"head_dim", "num_local_experts", "experts_per_token", "sliding_window", "layer_types",
                "attention_bias", "swiglu_limit", "rope_scaling", "pad_token_id"},
}
# Qwen3NextConfig; Qwen3_5MoeConfig checks its text_config (Qwen3_5MoeTextConfig) and the top level.
_QWEN3_NEXT_KEYS = {"head_dim", "moe_intermediate_size", "shared_expert_intermediate_size", "num_experts",
                    "attention_bias", "linear_conv_kernel_dim", "linear_key_head_dim",
                    "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads", "layer_types"}
ARCH_KEYS["qwen3_next"] = _QWEN3_NEXT_KEYS | {"norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
                                              "rope_scaling", "partial_rotary_factor"}
QWEN3_5_MOE_TEXT_KEYS = (COMMON_KEYS - {"architectures", "model_type", "torch_dtype", "tie_word_embeddings",
                                        "rope_theta", "intermediate_size"}) | _QWEN3_NEXT_KEYS | {"rope_parameters"}
ARCH_KEYS["qwen3_5_moe"] = {"text_config", "vision_config"}
# DeepseekV2Config / DeepseekV3Config (no router_aux_loss_coef: aux_loss_alpha).
_DEEPSEEK_KEYS = {"moe_intermediate_size", "n_routed_experts", "n_shared_experts", "first_k_dense_replace",
                  "moe_layer_freq", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                  "v_head_dim", "topk_method", "n_group", "topk_group", "routed_scaling_factor",
                  "norm_topk_prob", "scoring_func", "aux_loss_alpha", "rope_scaling", "attention_bias"}
ARCH_KEYS["deepseek_v2"] = _DEEPSEEK_KEYS | {"mlp_bias"}
ARCH_KEYS["deepseek_v3"] = _DEEPSEEK_KEYS | {"rope_interleave", "ep_size", "num_nextn_predict_layers"}
# The dense config classes have no routing keys.
DENSE_COMMON_KEYS = COMMON_KEYS - {"num_experts_per_tok", "output_router_logits", "router_aux_loss_coef"}
ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM",
                 "granitemoe": "GraniteMoeForCausalLM", "gpt_oss": "GptOssForCausalLM",
                 "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM",
                 "deepseek_v3": "DeepseekV3ForCausalLM", "qwen3_next": "Qwen3NextForCausalLM",
                 "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}
STORED = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
MAX_CASE_BYTES = 350 * 1024


def _case(name):
    return fixture_io.case_named(mk.CASES, name)


def _random_model(cfg, seed=0):
    """float64 weights for cfg drawn like the fixtures' (no seed search)."""
    torch.manual_seed(seed)
    return {n: t.to(F64) for n, t in mk.make_weights(cfg).items()}


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


def _fixture_dir(name):
    return os.path.join(mk.FIXTURE_DIR, name)


def _load_fixture(name):
    return mk.load_fixture(name)


def _rel_change(a, b):
    return float((a - b).abs().max() / a.abs().max())


# --------------------------------------------------------------------------

class Pieces(unittest.TestCase):
    def test_rope_is_complex_rotation(self):
        # rotate_half pairs dim i with i + hd/2, rotated by pos * theta^(-2i/hd)
        hd, S, theta = 12, 5, 1e6
        x = torch.randn(1, 1, S, hd, dtype=F64, generator=torch.Generator().manual_seed(1))
        cos, sin = hf.rope_cos_sin(torch.arange(S), hd, theta)
        y = hf.apply_rope(x, cos, sin)
        for p in range(S):
            for i in range(hd // 2):
                z = complex(float(x[0, 0, p, i]), float(x[0, 0, p, i + hd // 2]))
                r = z * cmath.exp(1j * p * theta ** (-2.0 * i / hd))
                self.assertAlmostEqual(float(y[0, 0, p, i]), r.real, delta=1e-12)
                self.assertAlmostEqual(float(y[0, 0, p, i + hd // 2]), r.imag, delta=1e-12)

    def test_attention_is_naive_loop(self):
        for name in ("mixtral", "qwen2_moe"):          # with and without q/k/v biases
            cfg = _case(name)[2]
            w = _random_model(cfg, 3)
            B, S, d = 2, 5, cfg["hidden_size"]
            H, G, hd = cfg["num_attention_heads"], hf.num_kv_heads(cfg), hf.head_dim(cfg)
            x = torch.randn(B, S, d, dtype=F64, generator=torch.Generator().manual_seed(2))
            got = hf.attention(cfg, w, 0, x)
            a = "model.layers.0.self_attn."
            bias = (lambda n: w[a + n + ".bias"]) if name == "qwen2_moe" else (lambda n: 0.0)
            cos, sin = hf.rope_cos_sin(torch.arange(S), hd, cfg["rope_theta"])
            want = torch.zeros(B, S, H * hd, dtype=F64)
            for b in range(B):
                q = x[b] @ w[a + "q_proj.weight"].T + bias("q_proj")
                k = x[b] @ w[a + "k_proj.weight"].T + bias("k_proj")
                v = x[b] @ w[a + "v_proj.weight"].T + bias("v_proj")
                for h in range(H):
                    g = h // (H // G)
                    qh = hf.apply_rope(q[:, h * hd:(h + 1) * hd], cos, sin)
                    kh = hf.apply_rope(k[:, g * hd:(g + 1) * hd], cos, sin)
                    for i in range(S):
                        s = torch.tensor([float(qh[i] @ kh[j]) / math.sqrt(hd) for j in range(i + 1)], dtype=F64)
                        p = torch.softmax(s, 0)
                        want[b, i, h * hd:(h + 1) * hd] = sum(p[j] * v[j, g * hd:(g + 1) * hd] for j in range(i + 1))
            want = want @ w[a + "o_proj.weight"].T
            self.assertLess(float((got - want).abs().max()), 1e-12, name)

    def test_qk_norm_placement(self):
        # Qwen3 normalises each head: scaling one head's q rows changes nothing.
        # OLMoE normalises all heads together: scaling every row changes nothing,
        # scaling one head's rows does.  (eps = 0 makes the invariances exact.)
        ids = torch.tensor([[5, 9, 17, 33, 4]])
        for name, per_head in (("qwen3_moe", True), ("olmoe", False), ("qwen3", True)):
            cfg = dict(_case(name)[2], rms_norm_eps=0.0)
            w = _random_model(cfg, 4)
            base = mk.reference(cfg).forward(cfg, w, ids)
            hd = hf.head_dim(cfg)
            for scale_rows, invariant in ((slice(0, hd), per_head), (slice(None), True)):
                w2 = dict(w)
                q = w["model.layers.0.self_attn.q_proj.weight"].clone()
                q[scale_rows] *= 3.0
                w2["model.layers.0.self_attn.q_proj.weight"] = q
                change = _rel_change(base, mk.reference(cfg).forward(cfg, w2, ids))
                if invariant:
                    self.assertLess(change, 1e-12, name)
                else:
                    self.assertGreater(change, 1e-3, name)

    def test_dense_family_is_its_moe_family_with_one_expert(self):
        # A dense model equals the matching MoE family with E = 1, k = 1 whose expert is the
        # dense MLP (for qwen2_moe, a shared expert with a zero down projection).
        ids = torch.tensor([[5, 9, 17, 33, 4], [8, 8, 40, 3, 21]])
        for dense, moe in (("llama", "mixtral"), ("mistral", "mixtral"), ("qwen2", "qwen2_moe"),
                           ("qwen3", "qwen3_moe")):
            cfg = _case(dense)[2]
            w = _random_model(cfg, 15)
            I, d = cfg["intermediate_size"], cfg["hidden_size"]
            mcfg = dict(cfg, model_type=moe, num_experts_per_tok=1, norm_topk_prob=True,
                        decoder_sparse_step=1, mlp_only_layers=[], moe_intermediate_size=I,
                        shared_expert_intermediate_size=1)
            mcfg["num_local_experts" if moe == "mixtral" else "num_experts"] = 1
            mw = {}
            for n, t in w.items():
                if ".mlp." not in n:
                    mw[n] = t
            g, u, dn = hf._expert_names(mcfg)
            for l in range(cfg["num_hidden_layers"]):
                src, dst = "model.layers.%d.mlp." % l, hf._moe_prefix(mcfg, l)
                mw[dst + "gate.weight"] = torch.randn(1, d, dtype=F64)
                for ours, theirs in (("gate_proj", g), ("up_proj", u), ("down_proj", dn)):
                    mw[dst + "experts.0.%s.weight" % theirs] = w[src + ours + ".weight"]
                if moe == "qwen2_moe":
                    mw[dst + "shared_expert.gate_proj.weight"] = torch.randn(1, d, dtype=F64)
                    mw[dst + "shared_expert.up_proj.weight"] = torch.randn(1, d, dtype=F64)
                    mw[dst + "shared_expert.down_proj.weight"] = torch.zeros(d, 1, dtype=F64)
                    mw[dst + "shared_expert_gate.weight"] = torch.randn(1, d, dtype=F64)
            self.assertEqual(set(mw), set(hf.weight_shapes(mcfg)), dense)
            self.assertLess(_rel_change(mk.reference(cfg).forward(cfg, w, ids), hf.forward(mcfg, mw, ids)), 1e-12, dense)

    def test_one_expert_top1_is_dense_swiglu(self):
        for name in ("mixtral", "qwen3_moe", "olmoe"):
            cfg = dict(_case(name)[2], num_experts_per_tok=1)
            cfg["num_local_experts" if name == "mixtral" else "num_experts"] = 1
            cfg["mlp_only_layers"], cfg["decoder_sparse_step"] = [], 1
            w = _random_model(cfg, 5)
            x = torch.randn(2, 4, cfg["hidden_size"], dtype=F64, generator=torch.Generator().manual_seed(6))
            g, u, dn = hf._expert_names(cfg)
            m = hf._moe_prefix(cfg, 0) + "experts.0."
            want = hf.swiglu(x, w[m + g + ".weight"], w[m + u + ".weight"], w[m + dn + ".weight"])
            self.assertLess(float((hf.moe_block(cfg, w, 0, x) - want).abs().max()), 1e-14, name)

    def test_gates(self):
        z = torch.randn(10, 8, dtype=F64, generator=torch.Generator().manual_seed(7))
        g, ids = hf.route(z, 2, True)
        self.assertLess(float((g.sum(-1) - 1).abs().max()), 1e-15)
        raw, ids2 = hf.route(z, 2, False)
        self.assertTrue(torch.equal(ids, ids2))
        p = torch.softmax(z, -1)
        self.assertTrue(torch.allclose(raw, p.gather(1, ids), rtol=0, atol=1e-16))
        self.assertTrue(bool((raw.sum(-1) < 1).all()))
        self.assertTrue(bool((p.gather(1, ids[:, 1:]) >= p.topk(3, -1).values[:, 2:]).all()))  # true top-2

    def test_qwen2_saturated_shared_gate(self):
        # sigmoid(-big) = 0: only routed experts; sigmoid(+big) = 1: routed + full shared expert.
        cfg = _case("qwen2_moe")[2]
        w = _random_model(cfg, 8)
        d = cfg["hidden_size"]
        x = torch.rand(1, 6, d, dtype=F64, generator=torch.Generator().manual_seed(9)) + 0.1   # all positive
        routed_only = hf.moe_block(dict(cfg, model_type="qwen3_moe"), w, 0, x)
        gate = "model.layers.0.mlp.shared_expert_gate.weight"
        sh = "model.layers.0.mlp.shared_expert."
        shared = hf.swiglu(x, w[sh + "gate_proj.weight"], w[sh + "up_proj.weight"], w[sh + "down_proj.weight"])
        for sign, want in ((-1, routed_only), (1, routed_only + shared)):
            got = hf.moe_block(cfg, dict(w, **{gate: sign * 1e4 * torch.ones(1, d, dtype=F64)}), 0, x)
            self.assertLess(float((got - want).abs().max()), 1e-14)
        self.assertGreater(float(shared.abs().max()), 1e-2)

    def test_sparse_layer_rule(self):
        cfg = {"model_type": "qwen2_moe", "num_experts": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3]}
        self.assertEqual([hf.layer_is_sparse(cfg, l) for l in range(6)], [False, True, False, False, False, True])
        self.assertFalse(hf.layer_is_sparse(dict(cfg, num_experts=0, decoder_sparse_step=1), 0))
        expect = {"mixtral": [True, True], "mixtral_bf16": [True, True], "qwen2_moe": [True, False, True],
                  "qwen3_moe": [False, True], "olmoe": [True, True], "llama": [False, False],
                  "mistral": [False, False], "qwen2": [False, False, False], "qwen3": [False, False]}
        for name, want in expect.items():
            cfg = _case(name)[2]
            self.assertEqual([hf.layer_is_sparse(cfg, l) for l in range(cfg["num_hidden_layers"])], want, name)

    def test_causal(self):
        for name, _, cfg, _ in mk.CASES:
            w = _random_model(cfg, 10)
            ids = torch.tensor([[5, 9, 17, 33, 4, 60, 7]])
            ids2 = ids.clone()
            ids2[0, 4] = 50
            a, b = mk.reference(cfg).forward(cfg, w, ids), mk.reference(cfg).forward(cfg, w, ids2)
            self.assertLess(float((a[:, :4] - b[:, :4]).abs().max()), 1e-12, name)
            self.assertGreater(float((a[:, 4:] - b[:, 4:]).abs().max()), 1e-3, name)

    def test_batch_rows_independent(self):
        for name, _, cfg, _ in mk.CASES:
            w = _random_model(cfg, 11)
            ids = torch.tensor([[5, 9, 17, 33, 4], [8, 8, 40, 3, 21]])
            both = mk.reference(cfg).forward(cfg, w, ids)
            for r in range(2):
                self.assertLess(float((both[r] - mk.reference(cfg).forward(cfg, w, ids[r:r + 1])[0]).abs().max()), 1e-12, name)


class CrossReference(unittest.TestCase):
    """Against the other references here, written separately from docs/ specs."""

    def test_mixtral_equals_model_reference(self):
        import model_reference as mref
        for name in ("mixtral", "mixtral_bf16"):
            cfg = _case(name)[2]
            w = _random_model(cfg, 12)
            E = cfg["num_local_experts"]
            P = {}
            for n, t in w.items():
                if ".block_sparse_moe." not in n:
                    P[n] = t
            for l in range(cfg["num_hidden_layers"]):
                p = "model.layers.%d.block_sparse_moe." % l
                P[p + "router.weight"] = w[p + "gate.weight"]
                for ours in ("w1", "w2", "w3"):
                    P[p + "experts." + ours] = torch.stack([w[p + "experts.%d.%s.weight" % (e, ours)]
                                                            for e in range(E)])
            mcfg = dict(cfg, **mref.MOE_DEFAULTS)
            mcfg.update(moe_every=1, norm_topk_prob=True, router_aux_loss_coef=0.0)
            ids = torch.tensor([[5, 9, 17, 33, 4, 60, 7], [3, 3, 80, 12, 44, 9, 90]])
            want = mref.forward(mcfg, P, ids)["logits"].view(2, 7, -1)
            self.assertLess(_rel_change(want, mk.reference(cfg).forward(cfg, w, ids)), 1e-12, name)

    def test_mixtral_training_loss_equals_model_reference(self):
        """loss_on_window (cross-entropy + each layer's load-balancing loss) and its gradient
        equal model_reference's with aux_loss_style "hf" (docs/moe-layer.md)."""
        import model_reference as mref
        cfg = dict(_case("mixtral")[2], router_aux_loss_coef=0.05)
        w = _random_model(cfg, 13)
        E = cfg["num_local_experts"]
        P = {n: t for n, t in w.items() if ".block_sparse_moe." not in n}
        for l in range(cfg["num_hidden_layers"]):
            p = "model.layers.%d.block_sparse_moe." % l
            P[p + "router.weight"] = w[p + "gate.weight"]
            for ours in ("w1", "w2", "w3"):
                P[p + "experts." + ours] = torch.stack([w[p + "experts.%d.%s.weight" % (e, ours)]
                                                        for e in range(E)])
        mcfg = dict(cfg, **mref.MOE_DEFAULTS)
        mcfg.update(moe_every=1, norm_topk_prob=True, router_aux_loss_coef=0.05,
                    aux_loss_style="hf")
        window = torch.tensor([[5, 9, 17, 33, 4, 60, 7, 8], [3, 3, 80, 12, 44, 9, 90, 1]])
        W = {n: t.clone().requires_grad_(True) for n, t in w.items()}
        got = hf.loss_on_window(cfg, W, window)
        want = mref.loss_on_window(mcfg, P, window)
        self.assertGreater(float(got["aux"]), 0.0)
        self.assertLess(abs(float(got["aux"]) - float(want["aux"])), 1e-12)
        self.assertLess(abs(float(got["loss"]) - float(want["loss"])), 1e-12)
        # The gradient is the autograd of the same expression: check one router against
        # central differences.
        name = "model.layers.1.block_sparse_moe.gate.weight"
        g = torch.autograd.grad(got["loss"], W[name])[0]
        for idx in [(0, 0), (2, 5), (3, 11)]:
            plus, minus = dict(w), dict(w)
            plus[name] = w[name].clone()
            minus[name] = w[name].clone()
            plus[name][idx] += 1e-6
            minus[name][idx] -= 1e-6
            fd = (float(hf.loss_on_window(cfg, plus, window)["loss"]) -
                  float(hf.loss_on_window(cfg, minus, window)["loss"])) / 2e-6
            self.assertLess(abs(fd - float(g[idx])), 1e-6)

    def test_qwen2_block_equals_moe_reference(self):
        import moe_reference as moe_ref
        cfg = _case("qwen2_moe")[2]
        w = _random_model(cfg, 13)
        E, d = cfg["num_experts"], cfg["hidden_size"]
        x = torch.randn(1, 9, d, dtype=F64, generator=torch.Generator().manual_seed(14))
        m = "model.layers.0.mlp."
        params = {"router.weight": w[m + "gate.weight"],
                  "shared.w1": w[m + "shared_expert.gate_proj.weight"],
                  "shared.w3": w[m + "shared_expert.up_proj.weight"],
                  "shared.w2": w[m + "shared_expert.down_proj.weight"],
                  "shared.gate": w[m + "shared_expert_gate.weight"]}
        for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            params["experts." + theirs] = torch.stack([w[m + "experts.%d.%s.weight" % (e, ours)] for e in range(E)])
        mc = dict(moe_ref.DEFAULT_CONFIG)
        mc.update(hidden_size=d, moe_intermediate_size=cfg["moe_intermediate_size"], num_experts=E,
                  num_experts_per_tok=cfg["num_experts_per_tok"], scoring_func="softmax", norm_topk_prob=False,
                  routed_scaling_factor=1.0, n_group=1, topk_group=1, noisy_gating=False, capacity_factor=0.0,
                  hidden_act="silu", n_shared_experts=1,
                  shared_expert_intermediate_size=cfg["shared_expert_intermediate_size"],
                  shared_expert_gate=True, tokens=9)
        T = 9
        r = moe_ref.moe_forward(mc, params, noise=torch.zeros(T, E, dtype=F64), expert_mask=torch.ones(E, dtype=F64),
                                token_mask=torch.ones(T, dtype=F64), selection_bias=torch.zeros(E, dtype=F64),
                                x=x[0])
        self.assertLess(float((r["out"] - hf.moe_block(cfg, w, 0, x)[0]).abs().max()), 1e-13)


class Sensitivity(unittest.TestCase):
    """Each fixture would catch a missed feature: dropping it moves the logits by > 1e-3."""

    def _assert_moves(self, name, mutate, what):
        cfg, stored, exp, _ = _load_fixture(name)
        w = {n: t.to(F64) for n, t in stored.items()}
        cfg2, w2 = copy.deepcopy(cfg), dict(w)
        mutate(cfg2, w2)
        change = _rel_change(mk.reference(cfg).forward(cfg, w, exp["input_ids"]), mk.reference(cfg2).forward(cfg2, w2, exp["input_ids"]))
        self.assertGreater(change, 1e-3, "%s: %s" % (name, what))

    def test_features_matter(self):
        def ones(pattern):
            def f(cfg, w):
                for n in list(w):
                    if n.endswith(pattern):
                        w[n] = torch.ones_like(w[n])
            return f

        def zero(pattern):
            def f(cfg, w):
                for n in list(w):
                    if n.endswith(pattern):
                        w[n] = torch.zeros_like(w[n])
            return f

        def flip_norm_topk(cfg, w):
            cfg["norm_topk_prob"] = not cfg["norm_topk_prob"]

        def theta(cfg, w):
            t = mk.text_config(cfg)
            r = t.get("rope_parameters") or {}
            where = r if "rope_theta" in r else t
            where["rope_theta"] = 1e4 if where["rope_theta"] != 1e4 else 1e6

        def untie(cfg, w):
            cfg["tie_word_embeddings"] = False
            w["lm_head.weight"] = torch.randn_like(w["model.embed_tokens.weight"])

        for name, _, _, _ in mk.CASES:
            self._assert_moves(name, ones("input_layernorm.weight"), "input_layernorm")
            self._assert_moves(name, ones("post_attention_layernorm.weight"), "post_attention_layernorm")
            self._assert_moves(name, ones("model.norm.weight"), "final norm")
            self._assert_moves(name, theta, "rope_theta")
        self._assert_moves("mixtral_bf16", untie, "tied lm_head")
        self._assert_moves("qwen2_moe", zero("_proj.bias"), "q/k/v biases")
        self._assert_moves("qwen2_moe", zero("shared_expert.down_proj.weight"), "shared expert")
        self._assert_moves("qwen2_moe", zero("shared_expert_gate.weight"), "shared expert gate")
        for name in ("qwen2_moe", "qwen3_moe", "olmoe"):
            self._assert_moves(name, flip_norm_topk, "norm_topk_prob")
        for name in ("qwen3_moe", "olmoe", "qwen3"):
            self._assert_moves(name, ones("q_norm.weight"), "q_norm weight")
            self._assert_moves(name, ones("k_norm.weight"), "k_norm weight")
        self._assert_moves("qwen2", zero("_proj.bias"), "q/k/v biases")
        self._assert_moves("mistral", untie, "tied lm_head")
        self._assert_moves("qwen3", untie, "tied lm_head")
        for name in ("llama", "mistral", "qwen2", "qwen3"):
            self._assert_moves(name, zero("mlp.down_proj.weight"), "dense MLP")

    def test_gpt_oss_features_matter(self):
        """Without the sinks, the clamp, the window, a bias or the interleave the logits move."""
        import gpt_oss_reference as go
        cfg, stored, exp, _ = _load_fixture("gpt_oss")
        w = {n: t.to(F64) for n, t in stored.items()}
        ids = exp["input_ids"]
        base = go.forward(cfg, w, ids)
        self.assertGreater(_rel_change(base, go.forward(cfg, w, ids, sinks=False)), 1e-3, "sinks")
        self.assertGreater(_rel_change(base, go.forward(cfg, w, ids, clamp=False)), 1e-3, "clamp")

        def moves(mutate, what):
            self._assert_moves("gpt_oss", mutate, what)

        def full_attention(c, _):
            c["layer_types"] = ["full_attention"] * c["num_hidden_layers"]

        def zero(suffix):
            def f(_, ww):
                for n in list(ww):
                    if n.endswith(suffix):
                        ww[n] = torch.zeros_like(ww[n])
            return f

        def swap_gate_up(_, ww):   # gate/up as two halves instead of interleaved
            for n in list(ww):
                if n.endswith("gate_up_proj") or n.endswith("gate_up_proj_bias"):
                    t = ww[n]
                    ww[n] = torch.cat([t[..., 0::2], t[..., 1::2]], dim=-1)

        moves(full_attention, "sliding window")
        for suffix in ("o_proj.bias", "router.bias", "gate_up_proj_bias", "down_proj_bias"):
            moves(zero(suffix), suffix)
        moves(swap_gate_up, "interleaved gate/up")
        # The clamp acts on a good share of the fixture's units (limit 1.5).
        x = torch.randn(64, cfg["hidden_size"], dtype=F64)
        gu = x @ w["model.layers.0.mlp.experts.gate_up_proj"][0] + w["model.layers.0.mlp.experts.gate_up_proj_bias"][0]
        self.assertGreater(float((gu.abs() > cfg["swiglu_limit"]).double().mean()), 0.1)

    def test_mxfp4_layout(self):
        """The HF MXFP4 reader against hand-built blocks, and the quantizer round trip."""
        import gpt_oss_reference as go
        blocks = torch.tensor([[[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] + [0x0F] * 8]],
                              dtype=torch.uint8)                  # [R=1, C/32=1, 16]
        scales = torch.tensor([[128]], dtype=torch.uint8)           # 2^1
        got = go.mxfp4_dequantize(blocks, scales)[0]
        want = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12] + [-12, 0] * 8
        self.assertEqual(got.tolist(), [float(v) for v in want])
        w = torch.randn(3, 5, 64, dtype=F64)
        b, s = go.mxfp4_quantize(w)
        back = go.mxfp4_dequantize(b, s)
        self.assertTrue(torch.equal(go.mxfp4_dequantize(*go.mxfp4_quantize(back)), back))
        # |x| / scale lies in (3, 6] for the block's largest, E2M1's widest gap (4 to 6) is 2:
        # every error is under a third of the block's largest magnitude.
        amax = w.view(3, 5, 2, 32).abs().amax(-1).repeat_interleave(32, -1)
        self.assertLess(float(((back - w).abs() / amax).max()), 1 / 3)

    def test_gpt_oss_mxfp4_is_the_dequantized_model(self):
        """The MXFP4 case's logits are those of its experts dequantized into the matrix layout."""
        import gpt_oss_reference as go
        cfg, stored, exp, _ = _load_fixture("gpt_oss_mxfp4")
        dense = dict(stored)
        for l in range(cfg["num_hidden_layers"]):
            p = "model.layers.%d.mlp." % l
            gate_up, down = go.expert_matrices(stored, p)
            for n in list(dense):
                if n.startswith(p + "experts.") and (n.endswith("_blocks") or n.endswith("_scales")):
                    del dense[n]
            dense[p + "experts.gate_up_proj"], dense[p + "experts.down_proj"] = gate_up, down
        self.assertLess(_rel_change(go.forward(cfg, stored, exp["input_ids"]),
                                    go.forward(cfg, dense, exp["input_ids"])), 1e-12)

    def test_gpt_oss_attention_is_a_naive_loop(self):
        """Sinks and window against a per-query loop over the visible keys."""
        import gpt_oss_reference as go
        cfg = dict(_case("gpt_oss")[2])
        w = _random_model(cfg, 12)
        B, S, d = 1, 9, cfg["hidden_size"]
        H, G, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        x = torch.randn(B, S, d, dtype=F64)
        a = "model.layers.0.self_attn."
        got = go.attention(cfg, w, 0, x)   # layer 0 slides (window 4)
        q = (x @ w[a + "q_proj.weight"].T + w[a + "q_proj.bias"]).view(B, S, H, hd)
        k = (x @ w[a + "k_proj.weight"].T + w[a + "k_proj.bias"]).view(B, S, G, hd)
        v = (x @ w[a + "v_proj.weight"].T + w[a + "v_proj.bias"]).view(B, S, G, hd)
        inv_freq, af = hf.rope_inv_freq(cfg, S)
        cos, sin = hf.rope_cos_sin(torch.arange(S), hd, None, inv_freq, af)
        q = hf.apply_rope(q.transpose(1, 2), cos, sin)
        k = hf.apply_rope(k.transpose(1, 2), cos, sin)
        out = torch.zeros(B, S, H * hd, dtype=F64)
        for h in range(H):
            g = h // (H // G)
            for t in range(S):
                keys = [j for j in range(S) if j <= t and t - j < cfg["sliding_window"]]
                logits = [float(q[0, h, t] @ k[0, g, j]) / math.sqrt(hd) for j in keys]
                m = max(logits + [float(w[a + "sinks"][h])])
                den = sum(math.exp(z - m) for z in logits) + math.exp(float(w[a + "sinks"][h]) - m)
                for j, z in zip(keys, logits):
                    out[0, t, h * hd:(h + 1) * hd] += math.exp(z - m) / den * v[0, j, g]
        want = out @ w[a + "o_proj.weight"].T + w[a + "o_proj.bias"]
        self.assertLess(float((got - want).abs().max()), 1e-12)

    def test_granitemoe_multipliers_matter(self):
        def set_to(key, value):
            def f(cfg, w):
                cfg[key] = value
            return f

        for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            self._assert_moves("granitemoe", set_to(key, 1.0), key)
        self._assert_moves("granitemoe", set_to("attention_multiplier", 1 / math.sqrt(12)),
                           "attention_multiplier")

    def test_rope_scaling_matters(self):
        def unscaled(cfg, w):
            cfg.pop("rope_parameters", None)
            cfg["rope_scaling"] = None

        def no_yarn_mscale(cfg, w):
            # attention factor 1: the mscale / mscale_all_dim (or 0.1 ln factor + 1) term gone
            key = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
            cfg[key] = dict(cfg[key], attention_factor=1.0)

        def default_yarn_mscale(cfg, w):
            cfg["rope_scaling"] = {k: v for k, v in cfg["rope_scaling"].items()
                                   if k not in ("mscale", "mscale_all_dim")}

        for name in ("qwen3_moe_yarn", "olmoe_yarn_mscale", "mixtral_llama3", "llama_linear",
                     "qwen2_moe_dynamic"):
            self._assert_moves(name, unscaled, "rope scaling")
        for name in ("qwen3_moe_yarn", "olmoe_yarn_mscale"):
            self._assert_moves(name, no_yarn_mscale, "YaRN attention factor")
        self._assert_moves("olmoe_yarn_mscale", default_yarn_mscale, "mscale / mscale_all_dim")

    def test_fused_expert_layout_is_the_same_model(self):
        # per-expert tensors stacked into v5's gate_up_proj / down_proj: the same logits
        cfg, stored, exp, _ = _load_fixture("qwen2_moe")
        w = {n: t.to(F64) for n, t in stored.items()}
        fused = {n: t for n, t in w.items() if ".experts." not in n}
        for l in range(cfg["num_hidden_layers"]):
            if not hf.layer_is_sparse(cfg, l):
                continue
            m = "model.layers.%d.mlp.experts." % l
            E = hf.num_experts(cfg)
            fused[m + "gate_up_proj"] = torch.stack([torch.cat(
                [w[m + "%d.gate_proj.weight" % e], w[m + "%d.up_proj.weight" % e]]) for e in range(E)])
            fused[m + "down_proj"] = torch.stack([w[m + "%d.down_proj.weight" % e] for e in range(E)])
        a = mk.reference(cfg).forward(cfg, w, exp["input_ids"])
        self.assertTrue(torch.equal(a, mk.reference(cfg).forward(cfg, fused, exp["input_ids"])))
        # gate and up swapped: another model
        for n in list(fused):
            if n.endswith("gate_up_proj"):
                F = fused[n].shape[1] // 2
                fused[n] = torch.cat([fused[n][:, F:], fused[n][:, :F]], dim=1)
        self.assertGreater(_rel_change(a, mk.reference(cfg).forward(cfg, fused, exp["input_ids"])), 1e-3)

    def test_rope_frequencies_by_hand(self):
        # yarn: factor 4, original 16, hd 24, theta 1e6: low = 0 and high = 1 after floor/ceil,
        # so pair 0 keeps its frequency, every other is divided by 4; af = 0.1 ln 4 + 1.
        cfg = {"hidden_size": 96, "num_attention_heads": 4, "head_dim": 24, "rope_theta": 1e6,
               "max_position_embeddings": 64,
               "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}}
        inv, af = hf.rope_inv_freq(cfg, 7)
        plain = 1.0 / (1e6 ** (torch.arange(0, 24, 2, dtype=F64) / 24))
        self.assertAlmostEqual(af, 0.1 * math.log(4) + 1, places=12)
        self.assertEqual(float(inv[0]), float(plain[0]))
        self.assertTrue(torch.allclose(inv[1:], plain[1:] / 4, rtol=1e-15))
        # dynamic: no change up to max_position_embeddings, then theta grows
        cfg = dict(cfg, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
        self.assertTrue(torch.equal(hf.rope_inv_freq(cfg, 64)[0], plain))
        base = 1e6 * (4.0 * 128 / 64 - 3.0) ** (24 / 22)
        want = 1.0 / (base ** (torch.arange(0, 24, 2, dtype=F64) / 24))
        self.assertTrue(torch.allclose(hf.rope_inv_freq(cfg, 128)[0], want, rtol=1e-14))


class Fixtures(unittest.TestCase):
    def test_case_directories(self):
        self.assertEqual(sorted(os.listdir(mk.FIXTURE_DIR)), sorted(c[0] for c in mk.CASES))
        for name, _, gen_cfg, shards in mk.CASES:
            d = _fixture_dir(name)
            files = sorted(os.listdir(d))
            weight_files = ["model.safetensors"] if shards == 1 else \
                ["model-%05d-of-%05d.safetensors" % (i + 1, shards) for i in range(shards)]
            want = ["config.json", "expected.safetensors"] + weight_files
            if shards > 1:
                want.append("model.safetensors.index.json")
            self.assertEqual(files, sorted(want), name)
            self.assertLess(sum(os.path.getsize(os.path.join(d, f)) for f in files), MAX_CASE_BYTES, name)

            cfg = json.loads(_read(os.path.join(d, "config.json")))
            self.assertEqual(cfg, gen_cfg, name)
            arch = cfg["model_type"]
            self.assertEqual(cfg["architectures"], [ARCHITECTURES[arch]], name)
            common = DENSE_COMMON_KEYS if arch in hf.DENSE_ARCHS else COMMON_KEYS
            if arch in ds.ARCHS:
                common = common - {"router_aux_loss_coef"}
            if arch == "qwen3_5_moe":
                common = {"architectures", "model_type", "torch_dtype", "tie_word_embeddings"}
                self.assertEqual(QWEN3_5_MOE_TEXT_KEYS - set(cfg["text_config"]), set(), name)
            missing = (common | ARCH_KEYS[arch]) - set(cfg)
            self.assertEqual(missing, set(), name)

            # every weight file: real safetensors layout, HF metadata, one dtype
            shapes = mk.shapes_of(name, cfg)
            seen = {}
            for f in weight_files:
                blob = _read(os.path.join(d, f))
                (n,) = struct.unpack("<Q", blob[:8])
                self.assertEqual((8 + n) % 8, 0)
                header = json.loads(blob[8:8 + n])
                self.assertEqual(header.pop("__metadata__"), {"format": "pt"}, f)
                self.assertEqual(list(header), sorted(header), f)   # name order, as the library writes
                end = 0
                for tname, info in header.items():
                    mxfp4 = tname.endswith("_blocks") or tname.endswith("_scales")
                    self.assertEqual(info["dtype"], "U8" if mxfp4 else STORED[cfg["torch_dtype"]], tname)
                    self.assertEqual(info["data_offsets"][0], end, tname)
                    end = info["data_offsets"][1]
                    seen[tname] = (f, info["shape"], end - info["data_offsets"][0])
                self.assertEqual(len(blob), 8 + n + end, f)
            self.assertEqual({k: v[1] for k, v in seen.items()}, shapes, name)   # exactly these tensors
            if cfg["tie_word_embeddings"]:
                self.assertNotIn("lm_head.weight", seen)
            if shards > 1:
                index = json.loads(_read(os.path.join(d, "model.safetensors.index.json")))
                self.assertEqual(set(index), {"metadata", "weight_map"})
                self.assertEqual(index["weight_map"], {k: v[0] for k, v in seen.items()})
                self.assertEqual(index["metadata"]["total_size"], sum(v[2] for v in seen.values()))
                self.assertEqual(len(set(index["weight_map"].values())), shards)

    def test_expected_outputs(self):
        for name, _, _, _ in mk.CASES:
            cfg, stored, exp, meta = _load_fixture(name)
            self.assertEqual(list(exp), ["input_ids", "logits", "greedy"])
            self.assertEqual(meta["case"], name)
            self.assertEqual(meta["model_type"], cfg["model_type"])
            self.assertEqual(int(meta["seed"]) >= _case(name)[1], True)
            V = mk.text_config(cfg)["vocab_size"]
            self.assertEqual((exp["input_ids"].dtype, list(exp["input_ids"].shape)), (torch.int32, [2, 7]))
            self.assertEqual((exp["logits"].dtype, list(exp["logits"].shape)), (torch.float32, [2, 7, V]))
            self.assertEqual((exp["greedy"].dtype, list(exp["greedy"].shape)), (torch.int32, [2, 8]))
            self.assertFalse(torch.equal(exp["input_ids"][0], exp["input_ids"][1]))
            # the stored values are the reference's on the stored (upcast) weights
            trace = []
            tokens = mk.reference(cfg).greedy(cfg, stored, exp["input_ids"], 8, trace)
            self.assertTrue(torch.equal(tokens.to(torch.int32), exp["greedy"]), name)
            logits = mk.reference(cfg).forward(cfg, stored, exp["input_ids"]).to(torch.float32)
            self.assertIsNone(fixture_io.compare_tensor_rounded(exp["logits"], logits)[0], name)
            self.assertEqual(mk.decision_problems(cfg, trace), [], name)
            self.assertFalse(bool((exp["greedy"] == mk.text_config(cfg)["eos_token_id"]).any()), name)
            # not degenerate (before Granite-MoE's division by logits_scaling)
            self.assertGreater(float(exp["logits"].std()) * cfg.get("logits_scaling", 1.0), 0.3, name)

    def test_bf16_and_f16_are_stored_narrow(self):
        # the reference must see exactly the rounded values the C++ side will load
        _, stored, _, _ = _load_fixture("mixtral_bf16")
        self.assertTrue(all(t.dtype == torch.bfloat16 for t in stored.values()))
        _, stored, _, _ = _load_fixture("qwen2_moe")
        self.assertTrue(all(t.dtype == torch.float16 for t in stored.values()))

    def test_rounded_comparison(self):
        c = torch.tensor([1.0, -3.5, 1e-3, 0.0], dtype=torch.float32)
        one_ulp = torch.nextafter(c, torch.full_like(c, 10.0))
        self.assertIsNone(fixture_io.compare_tensor_rounded(c, one_ulp)[0])
        self.assertIsNotNone(fixture_io.compare_tensor_rounded(c, c + 1e-5)[0])
        b = c.to(torch.bfloat16)
        self.assertIsNone(fixture_io.compare_tensor_rounded(b, b)[0])
        self.assertIsNotNone(fixture_io.compare_tensor_rounded(b, (c + 0.1).to(torch.bfloat16))[0])
        i = torch.tensor([1, 2], dtype=torch.int32)
        self.assertIsNotNone(fixture_io.compare_tensor_rounded(i, i + 1)[0])
        # F64 keeps the strict float64 tolerance of compare_tensor
        d = torch.tensor([1.0, 2.0 + 1e-9], dtype=F64)
        self.assertIsNotNone(fixture_io.compare_tensor_rounded(d, d + 1e-6)[0])

    def test_narrow_dtypes_round_trip(self):
        for dt in (torch.float32, torch.float16, torch.bfloat16, torch.int32):
            t = (torch.randn(3, 5) * 7).to(dt)
            back, meta = fixture_io.decode_safetensors(fixture_io.encode_safetensors([("t", t)], {"k": "v"}))
            self.assertEqual(back["t"].dtype, dt)
            self.assertTrue(torch.equal(back["t"], t))
            self.assertEqual(meta, {"k": "v"})


if __name__ == "__main__":
    unittest.main(verbosity=2)
