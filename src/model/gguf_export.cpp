#include "moe/gguf_export.h"

#include <filesystem>

#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/gguf_model.h"
#include "moe/gguf_tokenizer.h"

namespace moe {

namespace {}  // namespace

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
  TypeScheme types;
  MOE_REQUIRE(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
              "export_gguf: dtype {} is not one of F32, F16, BF16", dtype_name(dtype));
  types.base = ggml_type_of(dtype);
  export_gguf(model, tokenizer_model_path, out_path, types, nullptr);
}

void export_gguf(const Transformer<float>& model, const std::string& tokenizer_model_path,
                 const std::string& out_path, const TypeScheme& types,
                 const std::function<void(const std::string&)>& note) {
  const ModelConfig& c = model.config();
  if (const std::string why = gguf_unsupported_reason(c); !why.empty())
    throw Error(fmt::format("{}: cannot export to GGUF: {}", out_path, why));
  GgufModelWriteOptions opt;
  opt.types = types;
  opt.note = note;
  opt.name = std::filesystem::path(out_path).stem().string();
  opt.add_tokenizer = [&](GgufWriter& w) {
    const int32_t n_tokens = add_gguf_tokenizer_of_run(w, tokenizer_model_path);
    if (n_tokens == c.vocab_size) return;
    if (tokenizer_model_path.empty())
      throw Error(fmt::format(
          "export_gguf: vocab_size = {}, but the byte tokenizer has 258 tokens (pass the run's "
          "tokenizer.model for a sentencepiece model)",
          c.vocab_size));
    throw Error(fmt::format("{}: has {} pieces but the model's vocab_size is {}",
                            tokenizer_model_path, n_tokens, c.vocab_size));
  };
  // A trained run is the Mixtral family whatever its config file calls it.
  ModelConfig mixtral = c;
  mixtral.model_type = "mixtral";
  write_gguf_model(mixtral, *gguf_source_of_run(model), out_path, opt);
}

}  // namespace moe
