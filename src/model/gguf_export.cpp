#include "moe/gguf_export.h"

#include <sentencepiece_processor.h>

#include <filesystem>

#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/gguf_model.h"
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

// The sentencepiece model as llama.cpp's SPM vocabulary ("llama"): same pieces, scores and
// types, so llama.cpp's score-driven merges and byte fallback give sentencepiece's ids.
void sentencepiece_vocab(GgufWriter& w, const std::string& path, int vocab_size) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(path);
  if (!status.ok())
    throw Error(
        fmt::format("{}: cannot load the sentencepiece model: {}", path, status.ToString()));
  const int n = sp.GetPieceSize();
  if (n != vocab_size)
    throw Error(
        fmt::format("{}: has {} pieces but the model's vocab_size is {}", path, n, vocab_size));
  std::vector<std::string> tokens(n);
  std::vector<float> scores(n);
  std::vector<int32_t> types(n);
  for (int i = 0; i < n; ++i) {
    tokens[i] = sp.IdToPiece(i);
    scores[i] = sp.GetScore(i);
    types[i] = sp.IsUnknown(i)   ? kUnknown
               : sp.IsControl(i) ? kControl
               : sp.IsUnused(i)  ? kUnused
               : sp.IsByte(i)    ? kByte
                                 : kNormal;
  }
  w.set("tokenizer.ggml.model", GgufValue::string("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(std::move(tokens)));
  w.set("tokenizer.ggml.scores", GgufValue::f32s(scores));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(static_cast<uint32_t>(sp.bos_id())));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(static_cast<uint32_t>(sp.eos_id())));
  if (sp.unk_id() >= 0)
    w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(static_cast<uint32_t>(sp.unk_id())));
  // train_sentencepiece: no dummy prefix, no whitespace folding (llama.cpp's SPM default adds
  // the prefix).
  w.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(false));
  w.set("tokenizer.ggml.remove_extra_whitespaces", GgufValue::boolean(false));
}

// The byte tokenizer (ids 0..255 the bytes, 256 BOS, 257 EOS) as a GPT-2 byte-level BPE
// vocabulary ("gpt2") with no merges: every byte is its own token. Not the "llama" SPM type:
// llama.cpp's SPM path rewrites ' ' as U+2581 before lookup, which would give the three bytes
// of U+2581 instead of byte 0x20.
void byte_vocab(GgufWriter& w, int vocab_size) {
  if (vocab_size != 258)
    throw Error(fmt::format(
        "export_gguf: vocab_size = {}, but the byte tokenizer has 258 tokens (pass the run's "
        "tokenizer.model for a sentencepiece model)",
        vocab_size));
  add_padded_byte_vocab(w, 258);
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
    if (tokenizer_model_path.empty())
      byte_vocab(w, c.vocab_size);
    else
      sentencepiece_vocab(w, tokenizer_model_path, c.vocab_size);
    // Training documents are BOS + text + EOS and `moe generate` starts from BOS.
    w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(true));
    w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
  };
  // A trained run is the Mixtral family whatever its config file calls it.
  ModelConfig mixtral = c;
  mixtral.model_type = "mixtral";
  write_gguf_model(mixtral, *gguf_source_of_run(model), out_path, opt);
}

}  // namespace moe
