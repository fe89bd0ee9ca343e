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
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/attention.h"
#include "moe/generate.h"
#include "moe/hf_checkpoint.h"
#include "moe/permute.h"
#include "moe/router.h"

namespace moe {

// A matrix [rows, cols] (Hugging Face Linear layout: out x in) in the checkpoint's memory.
struct WeightView {
  const uint8_t* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
};

// y [n, W.rows] = x [n, W.cols] W^T (+ y when accumulate), in fp32 with the 16-bit weights
// widened exactly. Up to 4 rows (decoding) take one pass over the weights with the widening in
// registers; more rows (prefill) widen a block of weight rows at a time and run a GEMM on it.
void linear_forward(const float* x, int64_t n, const WeightView& w, float* y,
                    bool accumulate = false);

class InferenceModel {
 public:
  // Reads dir/config.json and the weights; every tensor is checked for presence, dtype (F32,
  // BF16, F16) and shape, and an error names the file and the tensor.
  static std::unique_ptr<InferenceModel> load(const std::string& dir);

  const ModelConfig& config() const { return cfg_; }
  ParameterCount parameters() const { return count_parameters(cfg_); }
  int64_t weight_bytes() const { return weights_.data_bytes(); }
  // The dtype most of the matrices are stored in (for the summary line).
  DType weight_dtype() const { return dtype_; }

  std::vector<KvCache<float>> new_caches(int batch, int capacity) const;
  // tokens [B*n]: n new tokens of each of B sequences at positions cache.length..; appends
  // to the caches. logits: [B*n, V] when all_logits, else [B, V] of each sequence's last token.
  void forward(const int32_t* tokens, int B, int n, std::vector<KvCache<float>>& caches,
               float* logits, bool all_logits = false);

 private:
  struct Expert {
    WeightView gate, up, down;
  };
  struct Layer {
    std::vector<float> input_norm, post_norm;  // [d]
    WeightView q, k, v, o;
    std::vector<float> q_bias, k_bias, v_bias;  // [H*hd], [G*hd] (empty without bias)
    std::vector<float> q_norm, k_norm;          // [hd] or [H*hd]/[G*hd] (empty without)
    bool moe = false;
    std::vector<float> router;  // [E, d] fp32
    std::vector<Expert> experts;
    Expert shared;  // the shared expert (qwen2_moe) or the dense SwiGLU
    bool has_shared = false;
    std::vector<float> shared_gate;  // [d] (empty: ungated)
  };

  InferenceModel() = default;
  WeightView matrix(const std::string& name, int64_t rows, int64_t cols) const;
  std::vector<float> vector(const std::string& name, int64_t size) const;
  void attention(const Layer& L, int B, int n, KvCache<float>& cache);
  void moe_block(const Layer& L, int64_t rows);
  void swiglu(const Expert& e, const float* x, int64_t rows, float* y, bool accumulate);

  ModelConfig cfg_;
  HfWeights weights_;
  DType dtype_ = DType::F32;
  WeightView embed_, head_;
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::vector<float> cos_, sin_;  // RoPE tables [max_positions, hd/2]

  // Workspaces, grown to the largest call.
  std::vector<float> h_, x_, tmp_, rstd_, q_, k_, v_, o_, scores_;
  std::vector<float> xp_, yp_, h1_, h3_;
  std::optional<Router<float>> router_;  // made by the first moe_block
  Permutation perm_;
};

// Greedy or sampled continuation of B prompts of equal length, with batched prefill and a KV
// cache. Returns [B][generated]; a sequence stops at eos (when >= 0 and opt.stop_at_eos) or
// after opt.max_new_tokens, or when the context ends (new_token_budget). on_token(b, id) sees
// every id as it is drawn.
std::vector<std::vector<int32_t>> generate(InferenceModel& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt, int32_t eos_id,
                                           const std::function<void(int, int32_t)>& on_token = {});

}  // namespace moe
