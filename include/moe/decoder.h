// The one cached decoder forward of generation, for a trained run (TransformerLm) and a Hugging
// Face checkpoint (InferenceModel): embedding -> L x (RMSNorm, attention through a KV cache,
// RMSNorm, FFN; residual adds) -> RMSNorm -> LM head. The attention is of one of two kinds:
// GQA with RoPE (attention() here), or Multi-head Latent Attention (mla_attention.h, DeepSeek)
// when the config has a kv_lora_rank. They differ in the weight format (WeightView: fp32
// parameters in place, or mapped F32/BF16/F16) and in each layer's ffn().
// Transformer::forward stays apart: training saves every activation for the backward.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <vector>

#include "moe/attention.h"
#include "moe/gated_deltanet.h"
#include "moe/linear.h"
#include "moe/mla_attention.h"
#include "moe/model_config.h"
#include "moe/rng.h"
#include "moe/router.h"

namespace moe {

// What one MoE layer's router chose in a Decoder::forward, for the routing observer (routing
// analysis, `moe route`): views valid during the call only.
struct RoutingChoice {
  int layer = 0;     // block index
  int64_t rows = 0;  // tokens of the call, sequence-major [B*n]
  int k = 0, num_experts = 0;
  const int32_t* experts = nullptr;  // [rows, k] the primary top-k (before capacity)
  const float* gates = nullptr;      // [rows, k] final gates (0 where capacity dropped a slot)
  const float* scores = nullptr;     // [rows, E] softmax or sigmoid scores
  ScoreFunc scoring = ScoreFunc::Softmax;
  int64_t dropped = 0;  // slots capacity dropped (0 when dropless)
};
using RoutingObserver = std::function<void(const RoutingChoice&)>;

class Decoder {
 public:
  explicit Decoder(const ModelConfig& cfg);  // the config and the RoPE tables; weights later
  Decoder(const Decoder&) = delete;          // a copy's views would point into the original
  virtual ~Decoder() = default;
  const ModelConfig& config() const { return cfg_; }
  // One cache per layer for `batch` sequences of up to `capacity` positions. `mla` picks the
  // layout of an MLA model's caches (the compressed latent, or the full-head oracle); GQA
  // models ignore it.
  std::vector<KvCache<float>> new_caches(int batch, int capacity,
                                         MlaCache mla = MlaCache::Latent) const;
  // Cache bytes per token over all layers in that layout.
  int64_t cache_bytes_per_token(MlaCache mla = MlaCache::Latent) const;
  // Cache bytes of one sequence that do not grow with the context: the Gated DeltaNet layers'
  // states (0 without such layers).
  int64_t cache_state_bytes() const;
  // tokens [B*n]: n new tokens of each of B sequences at positions cache.length..; appends
  // to the caches. logits: [B*n, V] when all_logits, else [B, V] of each sequence's last token.
  void forward(const int32_t* tokens, int B, int n, std::vector<KvCache<float>>& caches,
               float* logits, bool all_logits = false);
  // Bytes and values of the quantized copies made at load (0 without --quantize).
  int64_t quantized_bytes() const;
  int64_t quantized_values() const { return quantized_values_; }
  // Called by every MoE layer in each forward with its routing (empty: nobody listens).
  void set_routing_observer(RoutingObserver observer) { observer_ = std::move(observer); }
  // The random-router baseline: every MoE layer's router weights redrawn ~ N(0, std) from rng,
  // layer by layer (the experts, attention and selection biases stay).
  virtual void randomize_routers(Rng& rng, double std) = 0;

 protected:
  struct AttentionWeights {             // views into the owner's memory
    const float* input_norm = nullptr;  // [d]
    const float* post_norm = nullptr;   // [d], the FFN's input norm
    WeightView q, k, v, o;              // GQA (empty under MLA: mla_ holds its weights)
    const float *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr;  // [H*hd], [G*hd]
    const float *q_norm = nullptr, *k_norm = nullptr;  // per cfg_.qk_norm: [hd] or [H*hd]/[G*hd]
    const float* o_bias = nullptr;                     // [d] (gpt_oss)
    const float* sinks = nullptr;                      // [H] (gpt_oss)
    int window = 0;                                    // sliding window (0: all positions)
    GdnWeights gdn = {};  // a Gated DeltaNet layer's (cfg_.is_linear_layer): q..o stay empty
  };

  // Hands layer l's routing of the current call to the observer, if any.
  void observe_routing(int l, const RoutingPlan& plan, const float* gates, const float* scores,
                       ScoreFunc scoring) const;

  // h_ [rows, d] += the FFN of layer l applied to x_ [rows, d] (post-attention normalized).
  virtual void ffn(int l, int64_t rows) = 0;

  // Load-time quantization: a copy of `w` in `type` (quantize_view) that this decoder owns, or
  // `w` itself when it is stored in that type already.
  WeightView quantized(const WeightView& w, GgmlType type);
  // Replaces every layer's attention matrices and the LM head by quantized copies (the
  // embedding table stays: a lookup reads one row per token).
  void quantize_attention_and_head(GgmlType type);

  ModelConfig cfg_;
  WeightView embed_, head_;             // [V, d]
  const float* final_norm_ = nullptr;   // [d]
  std::vector<AttentionWeights> attn_;  // [L]
  std::optional<MlaAttention> mla_;     // the attention of every layer when cfg_.is_mla()
  std::optional<GatedDeltaNet> gdn_;    // the token mixer of the linear layers, if any
  // Q/K rows stored for interleaved RoPE (pairs 2i, 2i+1: llama.cpp's llama architecture)
  // instead of rotate_half (pairs i, i + hd/2).
  bool rope_interleaved_ = false;
  // Workspaces, grown to the largest call: h_ the residual stream, x_ a sub-layer's input.
  std::vector<float> h_, x_;

 private:
  void attention(const AttentionWeights& w, int B, int n, KvCache<float>& cache);

  RoutingObserver observer_;
  std::deque<std::vector<uint8_t>> quantized_;  // what quantized() made
  int64_t quantized_values_ = 0;
  std::vector<float> cos_, sin_;  // RoPE tables [max_positions, rotary_dim/2]
  std::vector<float> rstd_, q_, k_, v_, o_, scores_;
  std::vector<float> gate_;  // [rows, H*hd] the output gate of gated attention (qwen3_next)
  std::vector<float> res_;   // the residual stream while a scaled sub-layer runs (Granite-MoE)
};

}  // namespace moe
