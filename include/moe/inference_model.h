// Runs a model of the four MoE families for generation: a Hugging Face checkpoint directory
// (hf_checkpoint.h) or a GGUF file of the matching llama.cpp architecture (gguf_model.h). Both
// become the same weight views, and everything after that is shared. Weights stay where the
// file maps them, in their stored type (F32, BF16, F16, or GGUF's block-quantized types, one
// view per expert into the stacked tensors): a model costs its file size in memory, not more.
// Norms, biases and the router are copied to fp32 (the router is never run in low precision).
// The llama architecture's Q/K rows stay permuted: the Decoder rotates them interleaved.
// Math per family as in hf_checkpoint.h: attention with optional q/k/v bias and q/k RMSNorm,
// RoPE (rotate_half), GQA, or DeepSeek's Multi-head Latent Attention (mla_attention.h);
// softmax or sigmoid router (DeepSeek-V3: with its correction bias and groups), top-k (renormalized
// when norm_topk_prob), grouped expert SwiGLUs; the optional sigmoid-gated shared expert; dense
// SwiGLU layers. gpt_oss adds attention sinks, sliding-window layers, o_proj / router / expert
// biases and the clamped SwiGLU.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/decoder.h"
#include "moe/generate.h"
#include "moe/gguf.h"
#include "moe/grouped_experts.h"
#include "moe/hf_checkpoint.h"
#include "moe/permute.h"
#include "moe/router.h"

namespace moe {

class InferenceModel : public Decoder {
 public:
  // A GGUF file (a regular file) or a Hugging Face directory (dir/config.json and the
  // weights); every tensor is checked for presence, type and shape, and an error names the
  // file and the tensor. With `quantize` other than F32, every matrix (attention, experts,
  // shared and dense FFNs, LM head; not the router, norms, biases or embedding table) is
  // quantized once to that type into memory the model owns (Decoder::quantized); the file
  // stays mapped.
  static std::unique_ptr<InferenceModel> load(const std::string& path,
                                              GgmlType quantize = GgmlType::F32);

  ParameterCount parameters() const { return count_parameters(cfg_); }
  int64_t weight_bytes() const { return weight_bytes_; }
  // The type most of the matrices are stored in (for the summary line): the experts' type.
  GgmlType weight_type() const { return weight_type_; }
  // The types of the matrices and their bytes, e.g. "Q4_K 15.2 GB, Q6_K 2.1 GB, F32 0.1 GB".
  std::string weight_types() const;
  // The GGUF file, or nullptr for a Hugging Face directory.
  const GgufFile* gguf() const { return gguf_ ? &*gguf_ : nullptr; }
  void randomize_routers(Rng& rng, double std) override;

 private:
  // A layer's FFN (its attention weights are Decoder's attn_).
  struct Layer {
    int index = 0;  // block index
    bool moe = false;
    std::vector<float> router;          // [E, d] fp32
    std::vector<float> selection_bias;  // [E] deepseek_v3 e_score_correction_bias (else empty)
    std::vector<float> router_bias;     // [E] (gpt_oss), empty: none
    std::vector<FfnViews> experts;
    FfnViews shared;  // the shared expert (qwen2_moe) or the dense SwiGLU
    bool has_shared = false;
    std::vector<float> shared_gate;  // [d] (empty: ungated)
  };

  class Source;  // where the weight views come from (inference_model.cpp)
  class HfSource;
  class GgufSource;

  explicit InferenceModel(const ModelConfig& cfg) : Decoder(cfg) {}
  static std::unique_ptr<InferenceModel> open(const std::string& path);  // load, as stored
  static std::unique_ptr<InferenceModel> build(const ModelConfig& cfg, Source& src);
  void ffn(int l, int64_t rows) override;
  void moe_block(const Layer& L, int64_t rows);
  void quantize_matrices(GgmlType type);

  std::optional<HfWeights> hf_;
  std::optional<GgufFile> gguf_;
  int64_t weight_bytes_ = 0;
  GgmlType weight_type_ = GgmlType::F32;
  std::map<GgmlType, int64_t> bytes_of_type_;
  std::vector<Layer> layers_;
  std::deque<std::vector<float>> fp32_;  // what vector() read
  // gpt_oss's expert matrices, stored [E, d, 2F] / [E, F, d] for x @ W with gate/up columns
  // interleaved, transposed to our [rows, cols] in their stored type at load.
  std::deque<std::vector<uint8_t>> repacked_;

  // Workspaces, grown to the largest call.
  std::vector<float> tmp_;
  std::vector<float> xp_, yp_;
  // The FFNs: the routed experts, the shared expert, the dense layers (made by load() as needed).
  std::optional<GroupedExperts<float>> experts_, shared_, dense_;
  std::optional<Router<float>> router_;  // made by the first moe_block
  Permutation perm_;
};

}  // namespace moe
