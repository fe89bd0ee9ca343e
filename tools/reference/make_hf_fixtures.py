#!/usr/bin/python3
"""Write the Hugging Face checkpoint fixtures (tests/fixtures/hf/<case>/).

Each case is a tiny random checkpoint in the exact Hugging Face layout of its
model_type (config.json + model.safetensors, or shards + model.safetensors.index.json)
and expected.safetensors with what tools/reference/hf_reference.py (float64) computes
from the stored weights: the logits of two prompts and 8 greedily generated tokens each.
Run with Debian's interpreter:

    /usr/bin/python3 tools/reference/make_hf_fixtures.py            # (re)write
    /usr/bin/python3 tools/reference/make_hf_fixtures.py --check    # compare

--check regenerates into a temporary directory and compares with tests/fixtures/hf/:
the same case directories and file names; JSON files byte-identical; safetensors files
byte-identical or else the same metadata, names, dtypes, shapes, exactly equal integer
tensors (prompts, greedy tokens) and floating tensors within one ulp of their stored
dtype on top of float64 rounding (fixture_io.compare_tensor_rounded); exit status 1 on
a real difference.  See tools/reference/README.md for the cases and the format.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deepseek_reference as ds  # noqa: E402
import fixture_io  # noqa: E402
import gpt_oss_reference  # noqa: E402
import hf_reference as hf  # noqa: E402
import qwen3_next_reference as qn  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "hf")


def load_fixture(name):
    """(config, {name: stored tensor} over all weight files, expected tensors, expected metadata)
    of the committed fixture tests/fixtures/hf/NAME (the reference tests read them back)."""
    d = os.path.join(FIXTURE_DIR, name)
    with open(os.path.join(d, "config.json")) as fh:
        cfg = json.load(fh)
    weights = {}
    for f in sorted(os.listdir(d)):
        if f.startswith("model") and f.endswith(".safetensors"):
            with open(os.path.join(d, f), "rb") as fh:
                weights.update(fixture_io.decode_safetensors(fh.read())[0])
    with open(os.path.join(d, "expected.safetensors"), "rb") as fh:
        exp, meta = fixture_io.decode_safetensors(fh.read())
    return cfg, weights, exp, meta

BATCH, PROMPT_LEN, NEW_TOKENS = 2, 7, 8
FIRST_PROMPT_TOKEN = 3     # prompts avoid the special ids 0..2 (eos is 2 in every case)

# A float32 engine reproduces the float64 reference to ~1e-6 relative, so these margins
# keep it from choosing another token or another expert.
GREEDY_MARGIN = 1e-3       # top-1 minus top-2 logit at every greedy step
ROUTER_GAP = 1e-4          # k-th minus (k+1)-th router logit of every token, every MoE layer
MIN_DISTINCT = 3           # greedy rows must not collapse to one or two repeated tokens
MAX_ATTEMPTS = 500

# Weight init: matrices N(0, MATRIX_STD), routers N(0, ROUTER_STD), embedding
# N(0, EMBED_STD), biases N(0, BIAS_STD), every RMSNorm weight 1 + N(0, NORM_STD) (a
# skipped norm shows).  Why these: with matrices at 0.1 the layers add too little, and a
# tied model (whose logits include the last token's own |e|^2) only repeats its last
# token; at 0.2 (and a smaller tied embedding) greedy continuations vary.
MATRIX_STD = 0.2
ROUTER_STD = 0.2
EMBED_STD = 0.5
TIED_EMBED_STD = 0.1
BIAS_STD = 0.1
NORM_STD = 0.1
# DeepSeek-V3's selection bias: large enough to change choices, small enough that no kept
# biased score is <= 0 (Hugging Face fills the other groups' keys with 0.0, DeepSeek's own
# code with -inf: the two agree only while every kept key is positive).
CORRECTION_BIAS_STD = 0.1
SINK_STD = 1.0   # gpt_oss's per-head sink logits: a visible share of each softmax row

_STORE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------
# Configs: every key the HF config class reads, as save_pretrained writes them
# --------------------------------------------------------------------------

def _common(arch, dtype, **over):
    cfg = {
        "model_type": arch, "torch_dtype": dtype, "vocab_size": 96, "hidden_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "hidden_act": "silu", "initializer_range": 0.02,
        "rms_norm_eps": 1e-5, "use_cache": True, "tie_word_embeddings": False,
        "attention_dropout": 0.0, "num_experts_per_tok": 2, "output_router_logits": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    cfg.update(over)
    return cfg


def mixtral_config(dtype="float32", **over):
    cfg = _common("mixtral", dtype, architectures=["MixtralForCausalLM"], intermediate_size=32,
                  num_local_experts=4, rope_theta=1e6, sliding_window=None,
                  router_aux_loss_coef=0.02, router_jitter_noise=0.0)
    cfg.update(over)
    return cfg


def qwen2_moe_config(**over):
    cfg = _common("qwen2_moe", "float16", architectures=["Qwen2MoeForCausalLM"], num_hidden_layers=3,
                  intermediate_size=56, moe_intermediate_size=32, shared_expert_intermediate_size=40,
                  num_experts=4, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
                  rope_theta=10000.0, rope_scaling=None, rms_norm_eps=1e-6, use_sliding_window=False,
                  sliding_window=None, max_window_layers=3, qkv_bias=True, router_aux_loss_coef=0.001)
    cfg.update(over)
    return cfg


def qwen3_moe_config(**over):
    cfg = _common("qwen3_moe", "float32", architectures=["Qwen3MoeForCausalLM"], hidden_size=64,
                  head_dim=24, intermediate_size=32, moe_intermediate_size=16, num_experts=8,
                  norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[], rope_theta=1e6,
                  rope_scaling=None, rms_norm_eps=1e-6, attention_bias=False, use_sliding_window=False,
                  sliding_window=None, max_window_layers=2, router_aux_loss_coef=0.001)
    cfg.update(over)
    return cfg


def olmoe_config(**over):
    cfg = _common("olmoe", "float32", architectures=["OlmoeForCausalLM"], intermediate_size=16,
                  num_experts=8, norm_topk_prob=False, rope_theta=10000.0, rope_scaling=None,
                  attention_bias=False, clip_qkv=None, router_aux_loss_coef=0.01,
                  pad_token_id=1, bos_token_id=None)
    cfg.update(over)
    return cfg


def granitemoe_config(**over):
    # granite-3.0-1b-a400m's multipliers (embedding 12, residual 0.22, logits 6);
    # attention_multiplier 0.125 against 1/sqrt(12) = 0.289 of the head size. Untied: a tied
    # head over 12x embeddings only repeats the last token.
    cfg = _common("granitemoe", "bfloat16", architectures=["GraniteMoeForCausalLM"], intermediate_size=32,
                  num_local_experts=4, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
                  embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.125,
                  logits_scaling=6.0, tie_word_embeddings=False, router_aux_loss_coef=0.001,
                  pad_token_id=0, bos_token_id=1)
    cfg.update(over)
    return cfg


def gpt_oss_config(**over):
    # gpt-oss-20b's config.json keys at a tiny shape: a window of 4 (shorter than the 7 + 8
    # positions) on the sliding layer, YaRN as released (truncate false) over a short original
    # context, and swiglu_limit 1.5 so that the clamp acts on a good share of the units.
    cfg = _common("gpt_oss", "bfloat16", architectures=["GptOssForCausalLM"], head_dim=12,
                  intermediate_size=32, num_local_experts=4, experts_per_token=2,
                  rope_theta=150000.0, max_position_embeddings=512, sliding_window=4,
                  layer_types=["sliding_attention", "full_attention"], attention_bias=True,
                  swiglu_limit=1.5, router_aux_loss_coef=0.9, pad_token_id=0,
                  rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                "beta_slow": 1.0, "original_max_position_embeddings": 16,
                                "truncate": False})
    cfg.update(over)
    return cfg


def qwen3_next_config(**over):
    # Qwen3NextConfig's keys at a tiny shape: 4 layers (DeltaNet x3, then gated attention), 2 key
    # / 4 value DeltaNet heads, RoPE on half of each head (partial_rotary_factor 0.5 of 12), a
    # dense layer through mlp_only_layers; per-expert tensors (transformers 4.x).
    cfg = _common("qwen3_next", "bfloat16", architectures=["Qwen3NextForCausalLM"], num_hidden_layers=4,
                  head_dim=12, intermediate_size=32, moe_intermediate_size=16,
                  shared_expert_intermediate_size=24, num_experts=4, norm_topk_prob=True,
                  decoder_sparse_step=1, mlp_only_layers=[1], rope_theta=10000.0, rope_scaling=None,
                  partial_rotary_factor=0.5, attention_bias=False, rms_norm_eps=1e-6,
                  full_attention_interval=4, linear_conv_kernel_dim=4, linear_key_head_dim=8,
                  linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                  router_aux_loss_coef=0.001,
                  layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"])
    cfg.update(over)
    return cfg


def qwen3_5_moe_config(**over):
    # Qwen3_5MoeConfig: the text model under text_config (v5 rope_parameters with M-RoPE sections,
    # split DeltaNet projections, fused experts), a vision_config the engine does not read.
    text = _common("qwen3_5_moe_text", "bfloat16", num_hidden_layers=4, head_dim=12,
                   moe_intermediate_size=16, shared_expert_intermediate_size=24, num_experts=4,
                   attention_bias=False, rms_norm_eps=1e-6, linear_conv_kernel_dim=4,
                   linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                   linear_num_value_heads=4, router_aux_loss_coef=0.001,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000000.0,
                                    "partial_rotary_factor": 0.5, "mrope_section": [1, 1, 1],
                                    "mrope_interleaved": True},
                   layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"])
    for k in ("torch_dtype", "tie_word_embeddings"):
        text.pop(k)
    cfg = {"model_type": "qwen3_5_moe", "architectures": ["Qwen3_5MoeForConditionalGeneration"],
           "torch_dtype": "bfloat16", "tie_word_embeddings": False, "text_config": text,
           "vision_config": {"model_type": "qwen3_5_moe", "depth": 1, "hidden_size": 8},
           "image_token_id": 90, "video_token_id": 91}
    cfg.update(over)
    return cfg


def text_config(cfg):
    """The keys of the text model (qwen3_5_moe nests them under text_config)."""
    return cfg.get("text_config", cfg)


def _dense_common(arch, dtype, **over):
    # The dense config classes have no routing keys.
    cfg = _common(arch, dtype, intermediate_size=64)
    for key in ("num_experts_per_tok", "output_router_logits"):
        del cfg[key]
    cfg.update(over)
    return cfg


def llama_config(**over):
    cfg = _dense_common("llama", "float32", architectures=["LlamaForCausalLM"], rope_theta=10000.0,
                        rope_scaling=None, attention_bias=False, mlp_bias=False, pretraining_tp=1,
                        head_dim=12, rms_norm_eps=1e-6, pad_token_id=None)
    cfg.update(over)
    return cfg


def mistral_config(**over):
    cfg = _dense_common("mistral", "bfloat16", architectures=["MistralForCausalLM"], rope_theta=1e6,
                        sliding_window=None, head_dim=None, tie_word_embeddings=True, rms_norm_eps=1e-5)
    cfg.update(over)
    return cfg


def qwen2_config(**over):
    cfg = _dense_common("qwen2", "float16", architectures=["Qwen2ForCausalLM"], num_hidden_layers=3,
                        rope_theta=10000.0, rope_scaling=None, rms_norm_eps=1e-6, use_sliding_window=False,
                        sliding_window=None, max_window_layers=3)
    cfg.update(over)
    return cfg


def qwen3_config(**over):
    cfg = _dense_common("qwen3", "float32", architectures=["Qwen3ForCausalLM"], head_dim=24, intermediate_size=48,
                        rope_theta=1e6, rope_scaling=None, rms_norm_eps=1e-6, attention_bias=False,
                        use_sliding_window=False, sliding_window=None, max_window_layers=2,
                        tie_word_embeddings=True)
    cfg.update(over)
    return cfg


def _deepseek_common(arch, dtype, **over):
    # Every key DeepseekV2Config / DeepseekV3Config read, as DeepSeek's config.json files hold them.
    cfg = _common(arch, dtype, num_hidden_layers=3, num_key_value_heads=4, intermediate_size=40,
                  moe_intermediate_size=8, n_routed_experts=8, num_experts_per_tok=2,
                  first_k_dense_replace=1, moe_layer_freq=1, kv_lora_rank=16, qk_nope_head_dim=8,
                  qk_rope_head_dim=4, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
                  aux_loss_alpha=0.001, seq_aux=True, pretraining_tp=1, rms_norm_eps=1e-6)
    cfg.update(over)
    return cfg


def deepseek_v2_config(**over):
    # DeepSeek-V2-Lite's shape in miniature: q_lora_rank null (q_proj directly), softmax routing,
    # YaRN with mscale = mscale_all_dim (over an original context of 8 positions);
    # k > topk_group, else the best k experts always sit in the best groups by their maximum.
    cfg = _deepseek_common("deepseek_v2", "bfloat16", architectures=["DeepseekV2ForCausalLM"],
                           q_lora_rank=None, v_head_dim=8, n_shared_experts=2, scoring_func="softmax",
                           topk_method="group_limited_greedy", n_group=2, topk_group=1,
                           num_experts_per_tok=3, routed_scaling_factor=2.0, norm_topk_prob=False,
                           mlp_bias=False, rope_scaling={
                               "type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8,
                               "beta_fast": 4.0, "beta_slow": 0.5, "mscale": 0.707,
                               "mscale_all_dim": 0.707})
    cfg.update(over)
    return cfg


def deepseek_v3_config(**over):
    # v_head_dim differs from qk_nope_head_dim, q goes through the q_a/q_b low rank, and YaRN's
    # mscale differs from mscale_all_dim (a rotation attention factor besides the softmax's).
    cfg = _deepseek_common("deepseek_v3", "float32", architectures=["DeepseekV3ForCausalLM"], hidden_size=32,
                           q_lora_rank=24, v_head_dim=12, n_shared_experts=1, scoring_func="sigmoid",
                           topk_method="noaux_tc", n_group=4, topk_group=2, routed_scaling_factor=2.5,
                           norm_topk_prob=True, rope_interleave=True, ep_size=1,
                           num_nextn_predict_layers=1, rope_scaling={
                               "type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8,
                               "beta_fast": 4.0, "beta_slow": 0.5, "mscale": 1.0,
                               "mscale_all_dim": 0.8})
    cfg.update(over)
    return cfg


# name, first seed tried, config, number of weight shards
CASES = [
    ("mixtral", 1000, mixtral_config(), 1),
    ("mixtral_bf16", 2000, mixtral_config("bfloat16", tie_word_embeddings=True, head_dim=12), 1),
    ("qwen2_moe", 3000, qwen2_moe_config(), 2),
    ("qwen3_moe", 4000, qwen3_moe_config(), 1),
    ("olmoe", 5000, olmoe_config(), 1),
    ("llama", 6000, llama_config(), 1),
    ("mistral", 7000, mistral_config(), 1),
    ("qwen2", 8000, qwen2_config(), 2),
    ("qwen3", 9000, qwen3_config(), 1),
    # RoPE scaling (each over a short original context, so the 7 + 8 positions pass it):
    # YaRN in transformers v5's rope_parameters spelling; YaRN with DeepSeek's mscale /
    # mscale_all_dim under the older "type" alias; llama3; linear; dynamic NTK (prompts longer
    # than max_position_embeddings: the frequencies of the 7-token forward are scaled).
    ("qwen3_moe_yarn", 10000, qwen3_moe_config(torch_dtype="bfloat16", rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}), 1),
    ("olmoe_yarn_mscale", 11000, olmoe_config(torch_dtype="bfloat16", rope_scaling={
        "type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8, "beta_fast": 4.0,
        "beta_slow": 0.5, "mscale": 0.707, "mscale_all_dim": 1.0}), 1),
    ("mixtral_llama3", 12000, mixtral_config("bfloat16", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}), 1),
    ("llama_linear", 13000, llama_config(rope_scaling={"type": "linear", "factor": 2.0}), 1),
    ("qwen2_moe_dynamic", 14000, qwen2_moe_config(max_position_embeddings=4, rope_scaling={
        "rope_type": "dynamic", "factor": 4.0}), 1),
    # transformers v5's fused experts (mlp.experts.gate_up_proj / down_proj), 2 shards.
    ("qwen3_moe_fused", 15000, qwen3_moe_config(torch_dtype="bfloat16", decoder_sparse_step=1), 2),
    ("granitemoe", 16000, granitemoe_config(), 1),
    ("deepseek_v2", 17000, deepseek_v2_config(), 1),
    ("deepseek_v3", 18000, deepseek_v3_config(), 1),
    ("gpt_oss", 17000, gpt_oss_config(), 1),
    # Gated DeltaNet hybrids: Qwen3-Next (fused in_proj_qkvz / in_proj_ba, per-expert tensors, a
    # dense layer) and Qwen3.5-MoE's text model (split projections, fused experts, vision and
    # mtp tensors in the file).
    ("qwen3_next", 19000, qwen3_next_config(), 1),
    ("qwen3_5_moe_fused", 20000, qwen3_5_moe_config(), 1),
    # The released checkpoints' MXFP4 experts (*_blocks + *_scales), d and F multiples of 32.
    ("gpt_oss_mxfp4", 18000, gpt_oss_config(hidden_size=64, intermediate_size=64, quantization_config={
        "quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}), 1),
]


def is_mxfp4(case):
    """Cases named *_mxfp4 store gpt_oss's expert matrices as MXFP4 blocks and scales."""
    return case.endswith("_mxfp4")


def reference(cfg):
    """The reference module of cfg's model_type."""
    if cfg["model_type"] in ds.ARCHS:
        return ds
    if cfg["model_type"] in ("qwen3_next", "qwen3_5_moe"):
        return qn
    return gpt_oss_reference if cfg["model_type"] == "gpt_oss" else hf


def shapes_of(name, cfg):
    """{tensor: shape} of case `name` in state-dict order."""
    if cfg["model_type"] == "gpt_oss":
        return gpt_oss_reference.weight_shapes(cfg, True, is_mxfp4(name))
    return reference(cfg).weight_shapes(cfg, is_fused(name))


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------

def _std(name, tied, cfg=None):
    if cfg is not None and reference(cfg) is qn and qn.zero_centred(name):
        return NORM_STD                     # stored zero-centred: the scale is 1 + w
    if name.endswith("norm.weight"):        # input/post_attention_layernorm, norm, q_norm, k_norm
        return None
    if name.endswith(".bias") or name.endswith("_bias"):
        return BIAS_STD
    if name.endswith(".sinks"):
        return SINK_STD
    if name.endswith("embed_tokens.weight"):
        return TIED_EMBED_STD if tied else EMBED_STD
    if name.endswith(".gate.weight") or name.endswith(".router.weight"):  # the router
        return ROUTER_STD
    if name.endswith("e_score_correction_bias"):
        return CORRECTION_BIAS_STD
    return MATRIX_STD


def is_fused(case):
    """Cases named *_fused store their experts in transformers v5's fused layout."""
    return case.endswith("_fused")


def make_weights(cfg, fused=False, mxfp4=False):
    """{name: tensor in the stored dtype}, drawn in state-dict order from the current RNG;
    mxfp4: gpt_oss's expert matrices drawn as bf16 and stored MXFP4 (blocks + scales, [out, in])."""
    dtype = _STORE[cfg["torch_dtype"]]
    out = {}
    for name, shape in reference(cfg).weight_shapes(cfg, fused).items():
        std = _std(name, cfg.get("tie_word_embeddings", False), cfg)
        t = 1.0 + NORM_STD * torch.randn(shape) if std is None else std * torch.randn(shape)
        if mxfp4 and (name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj")):
            out[name + "_blocks"], out[name + "_scales"] = gpt_oss_reference.mxfp4_quantize(
                t.to(dtype).transpose(-1, -2))
            continue
        # Buffers (DeepSeek-V3's correction bias) are saved in float32 whatever torch_dtype says.
        out[name] = t.to(torch.float32 if name.endswith("e_score_correction_bias") else dtype)
    return out


def decision_problems(cfg, trace):
    """Why a float32 engine could decide differently from the reference on this seed (list)."""
    problems = []
    k = text_config(cfg).get("num_experts_per_tok", 0)   # dense families: no router logits
    for step, (last, routers) in enumerate(trace):
        top = torch.topk(last, 2, dim=-1).values
        margin = float((top[:, 0] - top[:, 1]).min())
        if margin <= GREEDY_MARGIN:
            problems.append("greedy step %d margin %.2g" % (step, margin))
        for layer, logits in enumerate(routers):
            kk = k
            if isinstance(logits, tuple):   # DeepSeek: (selection keys or group scores, how many taken)
                logits, kk = logits
                if bool((logits.max(dim=-1).values <= 0).any()):
                    problems.append("step %d decision %d has no positive key" % (step, layer))
            if kk < logits.shape[-1]:
                s = torch.sort(logits, dim=-1, descending=True).values
                gap = float((s[:, kk - 1] - s[:, kk]).min())
                if gap <= ROUTER_GAP:
                    problems.append("step %d MoE layer %d router gap %.2g" % (step, layer, gap))
                if isinstance(routers[layer], tuple) and float(s[:, kk - 1].min()) <= 0:
                    problems.append("step %d decision %d keeps a key <= 0" % (step, layer))
    return problems


def build_case(name, seed0, cfg):
    """(weights, input_ids, logits, greedy tokens, seed) for the first seed >= seed0 that passes."""
    for seed in range(seed0, seed0 + MAX_ATTEMPTS):
        torch.manual_seed(seed)
        weights = make_weights(cfg, is_fused(name), is_mxfp4(name))
        ids = torch.randint(FIRST_PROMPT_TOKEN, text_config(cfg)["vocab_size"], (BATCH, PROMPT_LEN))
        trace = []
        ref = reference(cfg)
        tokens = ref.greedy(cfg, weights, ids, NEW_TOKENS, trace)
        problems = decision_problems(cfg, trace)
        if bool((tokens == text_config(cfg)["eos_token_id"]).any()):
            problems.append("greedy emits eos")      # an engine stopping at eos would differ
        if any(len(set(row.tolist())) < MIN_DISTINCT for row in tokens):
            problems.append("degenerate greedy output")
        if not problems:
            return weights, ids, ref.forward(cfg, weights, ids), tokens, seed
    raise RuntimeError("%s: no seed in [%d, %d) passes" % (name, seed0, seed0 + MAX_ATTEMPTS))


# --------------------------------------------------------------------------
# Files, as Hugging Face writes them
# --------------------------------------------------------------------------

def _json_bytes(obj):
    # save_pretrained: indent 2, sorted keys, trailing newline
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _weight_file(weights, names):
    # The safetensors library writes tensors of one dtype in name order.
    return fixture_io.encode_safetensors([(n, weights[n]) for n in sorted(names)], {"format": "pt"})


def case_files(cfg, weights, ids, logits, tokens, seed, name, shards):
    """{file name: bytes} of one case directory."""
    files = {"config.json": _json_bytes(cfg)}
    order = list(shapes_of(name, cfg))
    if shards == 1:
        files["model.safetensors"] = _weight_file(weights, order)
    else:
        # Like save_pretrained's size-based sharding: state-dict order, cut at equal sizes.
        nbytes = {n: weights[n].numel() * weights[n].element_size() for n in order}
        total, parts, acc = sum(nbytes.values()), [[] for _ in range(shards)], 0
        for n in order:
            parts[min(shards - 1, acc * shards // total)].append(n)
            acc += nbytes[n]
        weight_map = {}
        for i, part in enumerate(parts):
            fname = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
            files[fname] = _weight_file(weights, part)
            weight_map.update({n: fname for n in part})
        files["model.safetensors.index.json"] = _json_bytes(
            {"metadata": {"total_size": total}, "weight_map": weight_map})
    files["expected.safetensors"] = fixture_io.encode_safetensors(
        [("input_ids", ids.to(torch.int32)), ("logits", logits.to(torch.float32)),
         ("greedy", tokens.to(torch.int32))],
        {"case": name, "seed": str(seed), "model_type": cfg["model_type"]})
    return files


def write_all(directory, verbose=True):
    torch.set_num_threads(1)   # fixed reduction order
    for name, seed0, cfg, shards in CASES:
        weights, ids, logits, tokens, seed = build_case(name, seed0, cfg)
        files = case_files(cfg, weights, ids, logits, tokens, seed, name, shards)
        d = os.path.join(directory, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        for fname, blob in files.items():
            with open(os.path.join(d, fname), "wb") as fh:
                fh.write(blob)
        if verbose:
            size = sum(len(b) for b in files.values())
            print("%-13s seed %d  %6.1f KB  %d files  greedy %s" % (
                name, seed, size / 1024.0, len(files), tokens.tolist()))


def check(directory):
    """Regenerate into a temp dir and compare with directory; True if everything passes."""
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        write_all(tmp, verbose=False)
        want = sorted(os.listdir(tmp))
        have = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        for case in sorted(set(have) - set(want)):
            print("unexpected %s" % case)
            ok = False
        for case in want:
            new_dir, old_dir = os.path.join(tmp, case), os.path.join(directory, case)
            have_files = sorted(os.listdir(old_dir)) if os.path.isdir(old_dir) else []
            for f in sorted(set(have_files) - set(os.listdir(new_dir))):
                print("unexpected %s/%s" % (case, f))
                ok = False
            for f in sorted(os.listdir(new_dir)):
                rel = "%s/%s" % (case, f)
                if f not in have_files:
                    print("missing  %s" % rel)
                    ok = False
                    continue
                with open(os.path.join(new_dir, f), "rb") as fh:
                    new = fh.read()
                with open(os.path.join(old_dir, f), "rb") as fh:
                    old = fh.read()
                if old == new:
                    print("ok       %s (bytes identical)" % rel)
                    continue
                if not f.endswith(".safetensors"):
                    print("DIFFERS  %s" % rel)
                    ok = False
                    continue
                problems, worst, where = fixture_io.compare_blobs(old, new, fixture_io.compare_tensor_rounded)
                if problems:
                    ok = False
                    print("DIFFERS  %s" % rel)
                    for p in problems:
                        print("    %s" % p)
                else:
                    print("ok       %s (max rel diff %.3g in %s)" % (rel, worst, where))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temp dir and compare with the committed files")
    ap.add_argument("--out", default=FIXTURE_DIR, help="fixture directory (default: %(default)s)")
    args = ap.parse_args()
    if args.check:
        sys.exit(0 if check(args.out) else 1)
    write_all(args.out)


if __name__ == "__main__":
    main()
