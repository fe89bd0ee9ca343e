// Runs a Hugging Face checkpoint of the four MoE families (hf_checkpoint.h) for generation.
// Weights stay where the checkpoint maps them, in their stored dtype (F32, BF16 or F16): a bf16
// checkpoint costs its file size in memory, not twice that. Matrices in 16 bits are widened
// to fp32 a block of rows at a time inside the matrix product; norms, biases and the router
// are copied to fp32 (the router is never run in low precision).
// Math per family as in hf_checkpoint.h: attention with optional q/k/v bias and q/k RMSNorm,
// RoPE (rotate_half), GQA; softmax router, top-k (renormalized when norm_topk_prob), grouped
// expert SwiGLUs; the optional sigmoid-gated shared expert; dense SwiGLU layers.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/decoder.h"
#include "moe/generate.h"
#include "moe/grouped_experts.h"
#include "moe/hf_checkpoint.h"
#include "moe/permute.h"
#include "moe/router.h"

namespace moe {

class InferenceModel : public Decoder {
 public:
  // Reads dir/config.json and the weights; every tensor is checked for presence, dtype (F32,
  // BF16, F16) and shape, and an error names the file and the tensor. With `quantize` other
  // than F32, every matrix (attention, experts, shared and dense FFNs, LM head; not the
  // router, norms, biases or embedding table) is quantized once to that type into memory the
  // model owns (Decoder::quantized); the checkpoint stays mapped.
  static std::unique_ptr<InferenceModel> load(const std::string& dir,
                                              GgmlType quantize = GgmlType::F32);

  ParameterCount parameters() const { return count_parameters(cfg_); }
  int64_t weight_bytes() const { return weights_.data_bytes(); }
  // The type most of the matrices are stored in (for the summary line).
  GgmlType weight_type() const { return weight_type_; }

 private:
  // A layer's FFN (its attention weights are Decoder's attn_).
  struct Layer {
    bool moe = false;
    std::vector<float> router;  // [E, d] fp32
    std::vector<FfnViews> experts;
    FfnViews shared;  // the shared expert (qwen2_moe) or the dense SwiGLU
    bool has_shared = false;
    std::vector<float> shared_gate;  // [d] (empty: ungated)
  };

  explicit InferenceModel(const ModelConfig& cfg) : Decoder(cfg) {}
  WeightView matrix(const std::string& name, int64_t rows, int64_t cols) const;
  // A small tensor (norm, bias) as fp32, kept in fp32_.
  const float* vector(const std::string& name, int64_t size);
  void ffn(int l, int64_t rows) override;
  void moe_block(const Layer& L, int64_t rows);
  void quantize_matrices(GgmlType type);

  HfWeights weights_;
  GgmlType weight_type_ = GgmlType::F32;
  std::vector<Layer> layers_;
  std::deque<std::vector<float>> fp32_;  // what vector() read

  // Workspaces, grown to the largest call.
  std::vector<float> tmp_;
  std::vector<float> xp_, yp_;
  // The FFNs: the routed experts, the shared expert, the dense layers (made by load() as needed).
  std::optional<GroupedExperts<float>> experts_, shared_, dense_;
  std::optional<Router<float>> router_;  // made by the first moe_block
  Permutation perm_;
};

}  // namespace moe
