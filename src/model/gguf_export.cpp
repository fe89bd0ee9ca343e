#include "moe/gguf_export.h"

#include <filesystem>
#include <map>

#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/gguf_tokenizer.h"

namespace moe {

namespace {

// llama.cpp's general.file_type (LlamaFileType): all F32, mostly F16, mostly BF16.
uint32_t file_type(DType d) {
  return d == DType::F16 ? 1 : d == DType::BF16 ? 32 : 0;
}

GgmlType ggml_type(DType d) {
  switch (d) {
    case DType::F32:
      return GgmlType::F32;
    case DType::F16:
      return GgmlType::F16;
    case DType::BF16:
      return GgmlType::BF16;
    default:
      break;
  }
  throw Error(fmt::format("export_gguf: dtype {} is not one of F32, F16, BF16", dtype_name(d)));
}

}  // namespace

std::string gguf_unsupported_reason(const ModelConfig& c) {
  const MoeConfig& m = c.moe;
  if (m.hidden_act != Activation::SwiGLU)
    return "hidden_act = gelu: llama.cpp's llama architecture runs SwiGLU (silu) FFNs only";
  if (c.num_local_experts == 0) return "";  // a dense Llama
  if (c.moe_every != 1)
    return fmt::format(
        "moe_every = {}: llama.cpp's llama architecture has experts in every layer or in none",
        c.moe_every);
  if (m.n_shared_experts > 0)
    return fmt::format(
        "n_shared_experts = {}: llama.cpp's llama architecture has no shared experts",
        m.n_shared_experts);
  if (m.scoring_func != ScoreFunc::Softmax)
    return "scoring_func = sigmoid: llama.cpp's llama architecture routes with softmax";
  if (m.use_selection_bias)
    return "use_selection_bias = true: llama.cpp's llama architecture has no selection bias";
  if (m.n_group > 1 && m.topk_group < m.n_group)
    return fmt::format(
        "n_group = {} (topk_group = {}): llama.cpp's llama architecture has no group-limited "
        "routing",
        m.n_group, m.topk_group);
  if (m.num_experts_per_tok == 1 && c.num_local_experts > 1)
    return "num_experts_per_tok = 1: our top-1 gate is the raw probability (Switch), llama.cpp "
           "renormalizes the selected gates to sum 1";
  if (!m.norm_topk_prob)
    return "norm_topk_prob = false: llama.cpp's llama architecture renormalizes the top-k gates";
  if (m.routed_scaling_factor != 1.0)
    return fmt::format(
        "routed_scaling_factor = {}: llama.cpp's llama architecture does not scale the gates",
        m.routed_scaling_factor);
  if (m.capacity_factor > 0)
    return fmt::format(
        "capacity_factor = {}: our inference drops tokens over capacity, llama.cpp is dropless "
        "(retrain or set capacity_factor 0)",
        m.capacity_factor);
  return "";
}

void permute_rope_rows(const float* src, float* dst, int n_heads, int head_dim, int64_t cols) {
  MOE_CHECK(head_dim % 2 == 0, "permute_rope_rows: head_dim {} is odd", head_dim);
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h)
    for (int i = 0; i < half; ++i)
      for (int j = 0; j < 2; ++j) {
        const float* s = src + (static_cast<int64_t>(h) * head_dim + i + j * half) * cols;
        std::copy_n(s, cols, dst + (static_cast<int64_t>(h) * head_dim + 2 * i + j) * cols);
      }
}

void export_gguf(const Transformer<float>& model, const std::string& tokenizer_model_path,
                 const std::string& out_path, DType dtype) {
  const ModelConfig& c = model.config();
  if (const std::string why = gguf_unsupported_reason(c); !why.empty())
    throw Error(fmt::format("{}: cannot export to GGUF: {}", out_path, why));
  const GgmlType mat = ggml_type(dtype);
  const int d = c.hidden_size, H = c.num_attention_heads, G = c.num_key_value_heads;
  const int hd = c.head_size(), L = c.num_hidden_layers;
  const bool moe = c.num_local_experts > 0;

  // parameters() is non-const only because it hands out gradient pointers too; we only read.
  std::map<std::string, const ParamRef<float>*> params;
  for (const auto& p : const_cast<Transformer<float>&>(model).parameters()) params[p.name] = &p;
  auto param = [&](const std::string& name) -> const ParamRef<float>& {
    const auto it = params.find(name);
    MOE_CHECK(it != params.end(), "export_gguf: the model has no parameter {}", name);
    return *it->second;
  };

  GgufWriter w;
  const std::string arch = "llama";
  auto key = [&](const char* k) { return arch + "." + k; };
  w.set("general.architecture", GgufValue::string(arch));
  w.set("general.name", GgufValue::string(std::filesystem::path(out_path).stem().string()));
  w.set("general.file_type", GgufValue::u32(file_type(dtype)));
  w.set(key("vocab_size"), GgufValue::u32(static_cast<uint32_t>(c.vocab_size)));
  w.set(key("context_length"), GgufValue::u32(static_cast<uint32_t>(c.max_position_embeddings)));
  w.set(key("embedding_length"), GgufValue::u32(static_cast<uint32_t>(d)));
  w.set(key("block_count"), GgufValue::u32(static_cast<uint32_t>(L)));
  w.set(key("feed_forward_length"),
        GgufValue::u32(static_cast<uint32_t>(moe ? c.intermediate_size : c.dense_width())));
  w.set(key("attention.head_count"), GgufValue::u32(static_cast<uint32_t>(H)));
  w.set(key("attention.head_count_kv"), GgufValue::u32(static_cast<uint32_t>(G)));
  // llama.cpp assumes head_dim = hidden_size / heads unless told.
  w.set(key("attention.key_length"), GgufValue::u32(static_cast<uint32_t>(hd)));
  w.set(key("attention.value_length"), GgufValue::u32(static_cast<uint32_t>(hd)));
  w.set(key("rope.dimension_count"), GgufValue::u32(static_cast<uint32_t>(hd)));
  w.set(key("rope.freq_base"), GgufValue::f32(static_cast<float>(c.rope_theta)));
  w.set(key("attention.layer_norm_rms_epsilon"),
        GgufValue::f32(static_cast<float>(c.rms_norm_eps)));
  if (moe) {
    w.set(key("expert_count"), GgufValue::u32(static_cast<uint32_t>(c.num_local_experts)));
    w.set(key("expert_used_count"),
          GgufValue::u32(static_cast<uint32_t>(c.moe.num_experts_per_tok)));
  }

  const int32_t n_tokens = add_gguf_tokenizer_of_run(w, tokenizer_model_path);
  if (n_tokens != c.vocab_size) {
    if (tokenizer_model_path.empty())
      throw Error(fmt::format(
          "export_gguf: vocab_size = {}, but the byte tokenizer has 258 tokens (pass the run's "
          "tokenizer.model for a sentencepiece model)",
          c.vocab_size));
    throw Error(fmt::format("{}: has {} pieces but the model's vocab_size is {}",
                            tokenizer_model_path, n_tokens, c.vocab_size));
  }

  auto add = [&](const std::string& name, const std::string& ours, GgmlType type) {
    const ParamRef<float>& p = param(ours);
    const std::vector<int64_t> shape(p.shape.dims.begin(), p.shape.dims.begin() + p.shape.ndim);
    w.add_tensor(name, shape, type, p.value);
  };
  auto add_rope = [&](const std::string& name, const std::string& ours, int heads) {
    const ParamRef<float>& p = param(ours);
    const float* src = p.value;
    w.add_tensor(name, {p.shape[0], p.shape[1]}, mat,
                 [src, heads, hd, d](float* out) { permute_rope_rows(src, out, heads, hd, d); });
  };

  add("token_embd.weight", "model.embed_tokens.weight", mat);
  for (int l = 0; l < L; ++l) {
    const std::string blk = fmt::format("blk.{}.", l);
    const std::string ml = fmt::format("model.layers.{}.", l);
    add(blk + "attn_norm.weight", ml + "input_layernorm.weight", GgmlType::F32);
    add_rope(blk + "attn_q.weight", ml + "self_attn.q_proj.weight", H);
    add_rope(blk + "attn_k.weight", ml + "self_attn.k_proj.weight", G);
    add(blk + "attn_v.weight", ml + "self_attn.v_proj.weight", mat);
    add(blk + "attn_output.weight", ml + "self_attn.o_proj.weight", mat);
    add(blk + "ffn_norm.weight", ml + "post_attention_layernorm.weight", GgmlType::F32);
    if (moe) {
      // Our experts are stored stacked [E, F, d] / [E, d, F]: exactly llama.cpp's *_exps.
      const std::string e = ml + "block_sparse_moe.";
      add(blk + "ffn_gate_inp.weight", e + "router.weight", GgmlType::F32);
      add(blk + "ffn_gate_exps.weight", e + "experts.w1", mat);
      add(blk + "ffn_up_exps.weight", e + "experts.w3", mat);
      add(blk + "ffn_down_exps.weight", e + "experts.w2", mat);
    } else {
      add(blk + "ffn_gate.weight", ml + "mlp.ffn.w1", mat);
      add(blk + "ffn_up.weight", ml + "mlp.ffn.w3", mat);
      add(blk + "ffn_down.weight", ml + "mlp.ffn.w2", mat);
    }
  }
  add("output_norm.weight", "model.norm.weight", GgmlType::F32);
  // Tied: no output tensor; llama.cpp then uses token_embd as the LM head.
  if (!c.tie_word_embeddings) add("output.weight", "lm_head.weight", mat);
  w.write(out_path);
}

}  // namespace moe
