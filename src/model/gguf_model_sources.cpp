// Where write_gguf_model's tensors come from (gguf_model.h): a Hugging Face checkpoint, a GGUF
// file, a trained run, or random weights. Each fills one tensor at a time in Hugging Face row
// order, so the writer's memory is bounded by the largest tensor.
#include <map>

#include "moe/error.h"
#include "moe/gguf_export.h"
#include "moe/gguf_model.h"
#include "moe/rng.h"

namespace moe {

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

class HfSource : public GgufModelSource {
 public:
  HfSource(const ModelConfig& c, const HfWeights& w) : c_(c), w_(w) {}
  void fill(const GgufModelTensor& t, float* out) const override {
    if (t.role == GgufRole::Experts) {
      const int64_t per = t.shape[1] * t.shape[2];
      for (int e = 0; e < t.shape[0]; ++e)
        read(hf_tensor_name(c_, t.layer, t.kind, e), {t.shape[1], t.shape[2]}, out + e * per);
      return;
    }
    std::string name;
    if (t.layer >= 0)
      name = hf_tensor_name(c_, t.layer, t.kind);
    else
      name = t.name == "token_embd.weight" ? "model.embed_tokens.weight"
             : t.name == "output.weight"   ? "lm_head.weight"
                                           : "model.norm.weight";
    // The shared expert's gate is [1, d] in Hugging Face checkpoints.
    if (t.layer >= 0 && t.kind == HfTensor::SharedExpertGate)
      read(name, {1, t.shape[0]}, out);
    else
      read(name, t.shape, out);
  }

 private:
  void read(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
    w_.file_of(name).read_into<float>(name, Shape::from(shape), out);
  }
  const ModelConfig& c_;
  const HfWeights& w_;
};

class GgufSource : public GgufModelSource {
 public:
  GgufSource(const ModelConfig& c, const GgufFile& f) : c_(c), f_(f) {}
  void fill(const GgufModelTensor& t, float* out) const override {
    const GgufTensorInfo& info = checked(t);
    const auto type = static_cast<GgmlType>(info.type);
    MOE_REQUIRE(is_weight_type(type), "{}: tensor {} has type {}, which cannot be read", f_.path(),
                t.name, ggml_type_name(info.type));
    const int64_t cols = info.dims[0], rows = info.numel() / cols, rb = row_bytes(type, cols);
    const uint8_t* p = f_.data(info);
    const bool q = t.layer >= 0 && t.kind == HfTensor::Q, k = t.layer >= 0 && t.kind == HfTensor::K;
    if (gguf_rope_interleaved(c_) && (q || k)) {  // back to Hugging Face's row order
      std::vector<float> stored(static_cast<size_t>(rows * cols));
      for (int64_t r = 0; r < rows; ++r) dequantize_row(type, p + r * rb, &stored[r * cols], cols);
      unpermute_rope_rows(stored.data(), out, q ? c_.num_attention_heads : c_.num_key_value_heads,
                          c_.head_size(), cols);
      return;
    }
    for (int64_t r = 0; r < rows; ++r) dequantize_row(type, p + r * rb, out + r * cols, cols);
  }
  const uint8_t* raw(const GgufModelTensor& t, GgmlType type) const override {
    const GgufTensorInfo& info = checked(t);
    return info.type == static_cast<uint32_t>(type) ? f_.data(info) : nullptr;
  }

 private:
  const GgufTensorInfo& checked(const GgufModelTensor& t) const {
    const GgufTensorInfo& info = f_.tensor(t.name);
    MOE_REQUIRE(info.shape() == t.shape, "{}: tensor {} has shape [{}], expected [{}]", f_.path(),
                t.name, fmt::join(info.shape(), ", "), fmt::join(t.shape, ", "));
    return info;
  }
  const ModelConfig& c_;
  const GgufFile& f_;
};

class RunSource : public GgufModelSource {
 public:
  explicit RunSource(const Transformer<float>& m) {
    // parameters() is non-const only because it hands out gradient pointers too; we only read.
    for (const auto& p : const_cast<Transformer<float>&>(m).parameters()) params_[p.name] = &p;
  }
  void fill(const GgufModelTensor& t, float* out) const override {
    const ParamRef<float>& p = param(ours(t));
    MOE_CHECK(p.shape.numel() == numel(t.shape), "RunSource: {} has {} values, expected {}",
              p.name, p.shape.numel(), numel(t.shape));
    std::copy_n(p.value, p.shape.numel(), out);
  }

 private:
  static std::string ours(const GgufModelTensor& t) {
    if (t.layer < 0)
      return t.name == "token_embd.weight" ? "model.embed_tokens.weight"
             : t.name == "output.weight"   ? "lm_head.weight"
                                           : "model.norm.weight";
    const std::string ml = fmt::format("model.layers.{}.", t.layer);
    const std::string e = ml + "block_sparse_moe.";
    switch (t.kind) {
      case HfTensor::InputNorm:
        return ml + "input_layernorm.weight";
      case HfTensor::PostAttentionNorm:
        return ml + "post_attention_layernorm.weight";
      case HfTensor::Q:
        return ml + "self_attn.q_proj.weight";
      case HfTensor::K:
        return ml + "self_attn.k_proj.weight";
      case HfTensor::V:
        return ml + "self_attn.v_proj.weight";
      case HfTensor::O:
        return ml + "self_attn.o_proj.weight";
      case HfTensor::Router:
        return e + "router.weight";
      case HfTensor::ExpertGate:  // stored stacked [E, F, d] as llama.cpp's *_exps
        return e + "experts.w1";
      case HfTensor::ExpertUp:
        return e + "experts.w3";
      case HfTensor::ExpertDown:
        return e + "experts.w2";
      case HfTensor::DenseGate:
        return ml + "mlp.ffn.w1";
      case HfTensor::DenseUp:
        return ml + "mlp.ffn.w3";
      case HfTensor::DenseDown:
        return ml + "mlp.ffn.w2";
      default:
        break;
    }
    MOE_CHECK(false, "RunSource: a trained run has no tensor {}", t.name);
  }
  const ParamRef<float>& param(const std::string& name) const {
    const auto it = params_.find(name);
    MOE_CHECK(it != params_.end(), "RunSource: the model has no parameter {}", name);
    return *it->second;
  }
  std::map<std::string, const ParamRef<float>*> params_;
};

class RandomSource : public GgufModelSource {
 public:
  explicit RandomSource(uint64_t seed) : seed_(seed) {}
  void fill(const GgufModelTensor& t, float* out) const override {
    const int64_t n = numel(t.shape);
    const bool bias = t.layer >= 0 && (t.kind == HfTensor::QBias || t.kind == HfTensor::KBias ||
                                       t.kind == HfTensor::VBias);
    if (t.role == GgufRole::Vector) {
      std::fill_n(out, n, bias ? 0.0f : 1.0f);
      return;
    }
    if (t.layer >= 0 && t.kind == HfTensor::SharedExpertGate) {
      std::fill_n(out, n, 0.0f);  // sigmoid(0): the shared expert at half weight
      return;
    }
    // Chunks with their own streams, so threads can draw them in any order.
    uint64_t h = seed_ ^ 0x9E3779B97F4A7C15ull;
    for (char ch : t.name) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001B3ull;
    constexpr int64_t kChunk = int64_t{1} << 16;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < chunks; ++i) {
      Rng rng(h + static_cast<uint64_t>(i) * 0xD1B54A32D192ED03ull);
      rng.fill_normal(out + i * kChunk, std::min(kChunk, n - i * kChunk), 0.0, 0.02);
    }
  }

 private:
  uint64_t seed_;
};

}  // namespace

std::unique_ptr<GgufModelSource> gguf_source_of_hf(const ModelConfig& c, const HfWeights& w) {
  return std::make_unique<HfSource>(c, w);
}
std::unique_ptr<GgufModelSource> gguf_source_of_gguf(const ModelConfig& c, const GgufFile& f) {
  return std::make_unique<GgufSource>(c, f);
}
std::unique_ptr<GgufModelSource> gguf_source_of_run(const Transformer<float>& m) {
  return std::make_unique<RunSource>(m);
}
std::unique_ptr<GgufModelSource> gguf_source_random(uint64_t seed) {
  return std::make_unique<RandomSource>(seed);
}

}  // namespace moe
