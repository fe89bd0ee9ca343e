// Where write_gguf_model's tensors come from (gguf_model.h): a Hugging Face checkpoint, a GGUF
// file, a trained run, or random weights. Each fills one tensor at a time in Hugging Face row
// order, so the writer's memory is bounded by the largest tensor.
#include <algorithm>
#include <cstring>
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
  // gpt_oss's MXFP4 experts (*_blocks + *_scales) go to MXFP4 tensors as they are: regrouped,
  // never rounded again.
  bool fills_raw(const GgufModelTensor& t, GgmlType type) const override {
    return type == GgmlType::MXFP4 && t.role == GgufRole::Experts && c_.model_type == "gpt_oss" &&
           w_.has(gpt_oss_experts_name(t) + "_blocks");
  }
  void fill_raw(const GgufModelTensor& t, GgmlType type, uint8_t* out) const override {
    (void)type;
    mxfp4_experts(t, out);
  }
  void fill(const GgufModelTensor& t, float* out) const override {
    if (c_.model_type == "gpt_oss" && fill_gpt_oss(t, out)) return;
    if (t.layer >= 0 && c_.is_linear_layer(t.layer) && fill_deltanet(t, out)) return;
    if (t.role == GgufRole::Experts) {
      const int64_t E = t.shape[0], rows = t.shape[1], cols = t.shape[2], per = rows * cols;
      const std::string fused =
          hf_fused_experts_in(w_, c_, t.layer, t.kind != HfTensor::ExpertDown);
      if (!fused.empty() && t.kind == HfTensor::ExpertDown) {  // down_proj [E, d, F] as stacked
        read(fused, t.shape, out);
        return;
      }
      if (!fused.empty()) {  // gate_up_proj [E, 2F, d]: each expert's gate rows, then its up rows
        std::vector<float> both(static_cast<size_t>(2 * E * per));
        read(fused, {E, 2 * rows, cols}, both.data());
        const int64_t half = t.kind == HfTensor::ExpertGate ? 0 : 1;
        for (int64_t e = 0; e < E; ++e)
          std::copy_n(both.data() + (2 * e + half) * per, per, out + e * per);
        return;
      }
      for (int e = 0; e < t.shape[0]; ++e)
        read(hf_tensor_name(c_, t.layer, t.kind, e), {t.shape[1], t.shape[2]}, out + e * per);
      return;
    }
    std::string name;
    if (t.layer >= 0)
      name = hf_tensor_name(c_, t.layer, t.kind);
    else
      name = t.name == "token_embd.weight" ? hf_model_prefix(c_) + "embed_tokens.weight"
             : t.name == "output.weight"   ? std::string("lm_head.weight")
                                           : hf_model_prefix(c_) + "norm.weight";
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
  std::string gpt_oss_experts_name(const GgufModelTensor& t) const {
    return fmt::format("model.layers.{}.mlp.experts.{}", t.layer,
                       t.kind == HfTensor::ExpertDown ? "down_proj" : "gate_up_proj");
  }
  // Expert tensor t [E, rows, cols] as ggml MXFP4 rows from the released blocks
  // [E, stored_rows, cols/32, 16] and scales [E, stored_rows, cols/32]: gate = the even stored
  // rows of gate_up, up = the odd ones, down as stored.
  void mxfp4_experts(const GgufModelTensor& t, uint8_t* out) const {
    const int64_t E = t.shape[0], rows = t.shape[1], cols = t.shape[2], nb = cols / kQK;
    const bool down = t.kind == HfTensor::ExpertDown;
    const int64_t stored = down ? rows : 2 * rows, first = t.kind == HfTensor::ExpertUp ? 1 : 0;
    const std::string nm = gpt_oss_experts_name(t);
    auto raw = [&](const std::string& name, const std::vector<int64_t>& shape) {
      const SafeTensorsFile& f = w_.file_of(name);
      const TensorEntry& e = f.entry(name);
      MOE_REQUIRE(e.dtype == DType::U8 && e.shape == shape,
                  "{}: tensor {} has dtype {} and shape [{}], expected U8 [{}] (MXFP4)", f.path(),
                  name, dtype_name(e.dtype), fmt::join(e.shape, ", "), fmt::join(shape, ", "));
      return f.raw(e);
    };
    const uint8_t* codes = raw(nm + "_blocks", {E, stored, nb, kQK / 2});
    const uint8_t* scales = raw(nm + "_scales", {E, stored, nb});
    const int64_t rb = row_bytes(GgmlType::MXFP4, cols);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = e * stored + (down ? r : first + 2 * r);
        mxfp4_from_hf_row(codes + src * nb * (kQK / 2), scales + src * nb, nb,
                          reinterpret_cast<BlockMXFP4*>(out + (e * rows + r) * rb));
      }
  }
  // A Gated DeltaNet layer's tensor under llama.cpp's name (false: not one). Qwen3-Next's
  // in_proj_qkvz holds per key head [q (dk), k (dk), v (r*dv), z (r*dv)]: attn_qkv takes q of
  // every head, then k, then v, attn_gate the z rows (conversion/qwen.py); Qwen3.5 stores them
  // split. The values stay in Hugging Face's form (gguf_hybrid_values converts).
  bool fill_deltanet(const GgufModelTensor& t, float* out) const {
    const LinearAttnConfig& g = c_.linear;
    const std::string p = fmt::format("{}layers.{}.linear_attn.", hf_model_prefix(c_), t.layer);
    const int64_t d = c_.hidden_size, vd = g.value_dim(), cd = g.conv_dim();
    auto ends = [&](const char* suffix) { return t.name.ends_with(suffix); };
    const bool next = c_.model_type == "qwen3_next";
    if ((ends(".attn_qkv.weight") || ends(".attn_gate.weight")) && next) {
      const int64_t Hk = g.num_k_heads, dk = g.k_head_dim;
      const int64_t rdv = g.num_v_heads / Hk * g.v_head_dim, group = 2 * dk + 2 * rdv;
      std::vector<float> all(static_cast<size_t>((cd + vd) * d));
      read(p + "in_proj_qkvz.weight", {cd + vd, d}, all.data());
      std::vector<std::pair<int64_t, int64_t>> parts;  // (offset in a group, rows) in order
      if (ends(".attn_qkv.weight"))
        parts = {{0, dk}, {dk, dk}, {2 * dk, rdv}};
      else
        parts = {{2 * dk + rdv, rdv}};
      float* o = out;
      for (const auto& [offset, rows] : parts)
        for (int64_t h = 0; h < Hk; ++h, o += rows * d)
          std::copy_n(all.data() + (h * group + offset) * d, rows * d, o);
      return true;
    }
    const char* hf = ends(".attn_qkv.weight")    ? "in_proj_qkv.weight"
                     : ends(".attn_gate.weight") ? "in_proj_z.weight"
                     : ends(".ssm_ba.weight")    ? "in_proj_ba.weight"
                     : ends(".ssm_beta.weight")  ? "in_proj_b.weight"
                     : ends(".ssm_alpha.weight") ? "in_proj_a.weight"
                     : ends(".ssm_dt.bias")      ? "dt_bias"
                     : ends(".ssm_a")            ? "A_log"
                     : ends(".ssm_norm.weight")  ? "norm.weight"
                     : ends(".ssm_out.weight")   ? "out_proj.weight"
                                                 : nullptr;
    if (ends(".ssm_conv1d.weight")) {  // [cd, 1, K] as stored
      read(p + "conv1d.weight", {cd, 1, g.conv_kernel}, out);
      return true;
    }
    if (hf == nullptr) return false;
    read(p + hf, t.shape, out);
    return true;
  }
  // gpt_oss's tensors that are not stored as the other families' (false: the generic path).
  // The experts are for x @ W, gate_up_proj [E, d, 2F] with gate and up in the even and odd
  // columns and down_proj [E, F, d] (or MXFP4 blocks, decoded); their biases interleave as the
  // columns do.
  bool fill_gpt_oss(const GgufModelTensor& t, float* out) const {
    if (t.layer < 0) return false;
    const std::string p = fmt::format("model.layers.{}.", t.layer);
    auto ends = [&](const char* suffix) { return t.name.ends_with(suffix); };
    if (ends("attn_sinks.weight")) {
      read(p + "self_attn.sinks", t.shape, out);
    } else if (ends("attn_output.bias")) {
      read(p + "self_attn.o_proj.bias", t.shape, out);
    } else if (ends("ffn_gate_inp.bias")) {
      read(p + "mlp.router.bias", t.shape, out);
    } else if (ends("ffn_down_exps.bias")) {
      read(p + "mlp.experts.down_proj_bias", t.shape, out);
    } else if (ends("ffn_gate_exps.bias") || ends("ffn_up_exps.bias")) {
      const int64_t E = t.shape[0], F = t.shape[1], first = ends("ffn_up_exps.bias") ? 1 : 0;
      std::vector<float> both(static_cast<size_t>(2 * E * F));
      read(p + "mlp.experts.gate_up_proj_bias", {E, 2 * F}, both.data());
      for (int64_t i = 0; i < E * F; ++i) out[i] = both[static_cast<size_t>(2 * i + first)];
    } else if (t.role == GgufRole::Experts) {
      const int64_t E = t.shape[0], rows = t.shape[1], cols = t.shape[2];
      const std::string nm = gpt_oss_experts_name(t);
      if (w_.has(nm + "_blocks")) {  // MXFP4 as released, decoded
        const int64_t rb = row_bytes(GgmlType::MXFP4, cols);
        std::vector<uint8_t> blocks(static_cast<size_t>(E * rows * rb));
        mxfp4_experts(t, blocks.data());
        for (int64_t r = 0; r < E * rows; ++r)
          dequantize_row(GgmlType::MXFP4, blocks.data() + r * rb, out + r * cols, cols);
        return true;
      }
      const bool down = t.kind == HfTensor::ExpertDown;
      const int64_t stored = down ? rows : 2 * rows, first = t.kind == HfTensor::ExpertUp ? 1 : 0;
      std::vector<float> w(static_cast<size_t>(E * cols * stored));  // [E, in = cols, stored]
      read(nm, {E, cols, stored}, w.data());
      for (int64_t e = 0; e < E; ++e)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t i = 0; i < cols; ++i)
            out[(e * rows + r) * cols + i] =
                w[static_cast<size_t>((e * cols + i) * stored + (down ? r : first + 2 * r))];
    } else {
      return false;
    }
    return true;
  }
  const ModelConfig& c_;
  const HfWeights& w_;
};

class GgufSource : public GgufModelSource {
 public:
  GgufSource(const ModelConfig& c, const GgufFile& f) : c_(c), f_(f) {}
  void fill(const GgufModelTensor& t, float* out) const override {
    if (fill_from_gate_up(t, out)) return;
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
    gguf_hybrid_values(c_, t, out, /*to_gguf=*/false, f_.path());  // back to Hugging Face's form
  }
  const uint8_t* raw(const GgufModelTensor& t, GgmlType type) const override {
    if (!f_.has_tensor(t.name) && t.role == GgufRole::Experts) return nullptr;  // gate_up
    const GgufTensorInfo& info = checked(t);
    return info.type == static_cast<uint32_t>(type) ? f_.data(info) : nullptr;
  }

 private:
  // ffn_gate_exps / ffn_up_exps from llama.cpp's fused ffn_gate_up_exps [E, 2F, d] (false:
  // not that case).
  bool fill_from_gate_up(const GgufModelTensor& t, float* out) const {
    if (t.role != GgufRole::Experts || t.kind == HfTensor::ExpertDown) return false;
    const int64_t E = t.shape[0], F = t.shape[1], cols = t.shape[2];
    const GgufTensorInfo* info = gguf_fused_gate_up(f_, t.layer, E, F, cols);
    if (info == nullptr) return false;
    const auto type = static_cast<GgmlType>(info->type);
    MOE_REQUIRE(is_weight_type(type), "{}: tensor {} has type {}, which cannot be read", f_.path(),
                info->name, ggml_type_name(info->type));
    const int64_t rb = row_bytes(type, cols);
    const bool up = t.kind == HfTensor::ExpertUp;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = 0; r < F; ++r)
        dequantize_row(type, f_.data(*info) + (gguf_gate_up_first_row(e, F, up) + r) * rb,
                       out + (e * F + r) * cols, cols);
    return true;
  }
  const GgufTensorInfo& checked(const GgufModelTensor& t) const {
    const GgufTensorInfo& info = f_.tensor(t.name);
    // Trailing ggml dimensions of 1 say nothing (the converter's [1, d] shared-expert gate).
    std::vector<int64_t> shape = info.shape();
    while (shape.size() > t.shape.size() && shape.front() == 1) shape.erase(shape.begin());
    MOE_REQUIRE(shape == t.shape, "{}: tensor {} has shape [{}], expected [{}]", f_.path(), t.name,
                fmt::join(info.shape(), ", "), fmt::join(t.shape, ", "));
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
    MOE_CHECK(p.shape.numel() == numel(t.shape), "RunSource: {} has {} values, expected {}", p.name,
              p.shape.numel(), numel(t.shape));
    std::copy_n(p.value, p.shape.numel(), out);
  }

 private:
  static std::string ours(const GgufModelTensor& t) {
    if (t.layer < 0)
      return t.name == "token_embd.weight" ? "model.embed_tokens.weight"
             : t.name == "output.weight"   ? "lm_head.weight"
                                           : "model.norm.weight";
    return fmt::format("model.layers.{}.{}", t.layer, param_of_hf_tensor(t.kind));
  }
  const ParamRef<float>& param(const std::string& name) const {
    const auto it = params_.find(name);
    MOE_CHECK(it != params_.end(), "RunSource: the model has no parameter {}", name);
    return *it->second;
  }
  std::map<std::string, const ParamRef<float>*> params_;
};

// A block of `type` with uniform random quants and scales chosen so the values have a standard
// deviation near 0.02 and mean near 0 (uniform q in [0, 2^b) has std 2^b / sqrt(12)).
void random_block(GgmlType type, Rng& rng, uint8_t* out) {
  auto bytes = [&](uint8_t* p, int n) {
    for (int i = 0; i < n; i += 8) {
      const uint64_t r = rng.next_u64();
      std::memcpy(p + i, &r, static_cast<size_t>(std::min(8, n - i)));
    }
  };
  constexpr float kStd = 0.02f;
  switch (type) {
    case GgmlType::Q8_0: {  // int8 uniform in [-127, 127]: std 73
      auto* b = reinterpret_cast<BlockQ8_0*>(out);
      b->d = float_to_f16(kStd / 73.0f);
      bytes(reinterpret_cast<uint8_t*>(b->qs), kQK);
      for (auto& q : b->qs) q = static_cast<int8_t>(q == -128 ? -127 : q);
      break;
    }
    case GgmlType::Q4_0: {  // q - 8, q uniform in [0, 16): std 4.6, mean -0.5
      auto* b = reinterpret_cast<BlockQ4_0*>(out);
      // A random sign per block takes the mean to 0.
      b->d = float_to_f16((rng.next_u64() & 1 ? 1.0f : -1.0f) * kStd / 4.6f);
      bytes(b->qs, kQK / 2);
      break;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {  // every sub-block scale and min 15: x = d*15*q - dmin*15
      const bool five = type == GgmlType::Q5_K;
      const float spread = five ? 9.2f : 4.6f, mean = five ? 15.5f : 7.5f;
      const uint16_t d = float_to_f16(kStd / spread / 15.0f);
      const uint16_t dmin = float_to_f16(kStd / spread / 15.0f * mean);
      // 6-bit scales and mins of 15 pack as 15 in bytes 0..7 and 0xFF in bytes 8..11.
      const uint8_t scales[kKScaleBytes] = {15, 15, 15, 15, 15, 15, 15, 15, 255, 255, 255, 255};
      if (five) {
        auto* b = reinterpret_cast<BlockQ5_K*>(out);
        b->d = d, b->dmin = dmin;
        std::memcpy(b->scales, scales, kKScaleBytes);
        bytes(b->qh, kQKK / 8);
        bytes(b->qs, kQKK / 2);
      } else {
        auto* b = reinterpret_cast<BlockQ4_K*>(out);
        b->d = d, b->dmin = dmin;
        std::memcpy(b->scales, scales, kKScaleBytes);
        bytes(b->qs, kQKK / 2);
      }
      break;
    }
    case GgmlType::Q6_K: {  // q - 32, q uniform in [0, 64): std 18.5; sub-block scales 16
      auto* b = reinterpret_cast<BlockQ6_K*>(out);
      bytes(b->ql, kQKK / 2);
      bytes(b->qh, kQKK / 4);
      for (auto& sc : b->scales) sc = 16;
      b->d = float_to_f16(kStd / 18.5f / 16.0f);
      break;
    }
    case GgmlType::MXFP4: {  // E2M1 codes uniform: std 2.93, scale 2^(120 - 127): std 0.023
      auto* b = reinterpret_cast<BlockMXFP4*>(out);
      b->e = 120;
      bytes(b->qs, kQK / 2);
      break;
    }
    default:
      MOE_CHECK(false, "random_block: {} is not a block-quantized weight type",
                ggml_type_name(static_cast<uint32_t>(type)));
  }
}

bool is_block_type(GgmlType t) {
  return t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::Q4_K || t == GgmlType::Q5_K ||
         t == GgmlType::Q6_K || t == GgmlType::MXFP4;
}

class RandomSource : public GgufModelSource {
 public:
  explicit RandomSource(uint64_t seed) : seed_(seed) {}
  bool fills_raw(const GgufModelTensor& t, GgmlType type) const override {
    return (t.role == GgufRole::Matrix || t.role == GgufRole::Experts) && is_block_type(type);
  }
  void fill_raw(const GgufModelTensor& t, GgmlType type, uint8_t* out) const override {
    const GgmlBlock blk = ggml_block(static_cast<uint32_t>(type));
    const int64_t blocks = numel(t.shape) / blk.values;
    constexpr int64_t kChunk = 4096;  // blocks per random stream
    const int64_t chunks = (blocks + kChunk - 1) / kChunk;
    const uint64_t h = stream_of(t);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < chunks; ++i) {
      Rng rng(h + static_cast<uint64_t>(i) * 0xD1B54A32D192ED03ull);
      for (int64_t b = i * kChunk; b < std::min(blocks, (i + 1) * kChunk); ++b)
        random_block(type, rng, out + b * blk.bytes);
    }
  }
  void fill(const GgufModelTensor& t, float* out) const override {
    const int64_t n = numel(t.shape);
    const bool bias = t.layer >= 0 && (t.kind == HfTensor::QBias || t.kind == HfTensor::KBias ||
                                       t.kind == HfTensor::VBias || t.name.ends_with(".bias"));
    if (t.role == GgufRole::Vector) {
      std::fill_n(out, n, bias ? 0.0f : 1.0f);
      return;
    }
    // Chunks with their own streams, so threads can draw them in any order.
    const uint64_t h = stream_of(t);
    constexpr int64_t kChunk = int64_t{1} << 16;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < chunks; ++i) {
      Rng rng(h + static_cast<uint64_t>(i) * 0xD1B54A32D192ED03ull);
      rng.fill_normal(out + i * kChunk, std::min(kChunk, n - i * kChunk), 0.0, 0.02);
    }
  }

 private:
  uint64_t stream_of(const GgufModelTensor& t) const {
    uint64_t h = seed_ ^ 0x9E3779B97F4A7C15ull;
    for (char ch : t.name) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001B3ull;
    return h;
  }
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
