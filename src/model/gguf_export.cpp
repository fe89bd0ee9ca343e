#include "moe/gguf_export.h"

#include <filesystem>

#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/gguf_model.h"
#include "moe/gguf_tokenizer.h"
#include "moe/utf8.h"

namespace moe {

namespace {

// llama.cpp's token types (gguf-py TokenType).
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUnused = 5, kByte = 6 };

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

void add_padded_byte_vocab(GgufWriter& w, int vocab_size) {
  MOE_CHECK(vocab_size >= 258, "add_padded_byte_vocab: vocab_size {} < 258", vocab_size);
  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  for (int b = 0; b < 256; ++b) tokens[b] = utf8_encode(gpt2_byte_chars()[b]);
  tokens[256] = "<s>";
  tokens[257] = "</s>";
  std::vector<int32_t> types(static_cast<size_t>(vocab_size), kNormal);
  types[256] = types[257] = kControl;
  for (int i = 258; i < vocab_size; ++i) {
    tokens[i] = fmt::format("<unused{}>", i - 258);
    types[i] = kUnused;
  }
  w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.set("tokenizer.ggml.pre", GgufValue::string("default"));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(std::move(tokens)));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
  w.set("tokenizer.ggml.merges", GgufValue::strings({}));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(256));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(257));
}

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
  types.base = ggml_type(dtype);
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
