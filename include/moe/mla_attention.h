// Multi-head Latent Attention (DeepSeek-V2, arXiv:2405.04434 section 2.1; the Hugging Face
// families deepseek_v2 / deepseek_v3) for the cached Decoder: the Decoder's second attention
// kind beside GQA. Per layer and token, with H heads, nope/rope/v head widths and latent rank r:
//   q = q_proj(x), or q_b_proj(RMSNorm(q_a_proj(x)))          [H, nope + rope]
//   [c, k_pe] = kv_a_proj_with_mqa(x); c = RMSNorm(c)          [r], [rope] (one for all heads)
//   [k_nope_h, v_h] = kv_b_proj(c) per head                    [nope], [v]
//   RoPE on q_pe and k_pe (pairs (2i, 2i+1) as DeepSeek stores them, rope_interleave; else
//   rotate_half); score = (q_nope.k_nope + q_pe.k_pe) * scale; o = o_proj(sum p v).
// Two cache layouts (MlaCache):
//   Latent: per token only [c, k_pe] is cached ((r + rope) * 4 bytes per layer). The
//     up-projection is absorbed: per head q_nope W_UK (W_UK the head's key rows of kv_b_proj)
//     is a query in latent space, so the score is [q_lat, q_pe].[c, k_pe]; the weighted sum
//     runs over latents and W_UV (the head's value rows) is applied after it. Prefill takes the
//     same absorbed form.
//   FullHeads: the oracle: keys [H, nope + rope] and values [H, v] expanded by kv_b_proj and
//     cached as the modeling files do (H * (nope + rope + v) * 4 bytes). Both layouts give the
//     same logits (tests/test_deepseek.cpp compares them token by token).
// Workspaces are members, grown to the largest call. Not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "moe/attention.h"
#include "moe/linear.h"
#include "moe/model_config.h"

namespace moe {

enum class MlaCache { Latent, FullHeads };

struct MlaWeights {                  // views into the owner's memory
  WeightView q;                      // q_proj [H*(nope+rope), d] (q_lora_rank 0)
  WeightView q_a, q_b;               // [q_lora_rank, d], [H*(nope+rope), q_lora_rank]
  const float* q_a_norm = nullptr;   // [q_lora_rank]
  WeightView kv_a;                   // kv_a_proj_with_mqa [r + rope, d]
  const float* kv_a_norm = nullptr;  // [r]
  WeightView kv_b;                   // [H*(nope+v), r]
  WeightView o;                      // [d, H*v]
  const float* kv_b_f32 = nullptr;   // kv_b widened to fp32 (set by add_layer)
};

class MlaAttention {
 public:
  explicit MlaAttention(const ModelConfig& c);  // the RoPE tables and the softmax scale
  // Appends a layer; kv_b is widened to fp32 once (the absorbed per-head products read it).
  void add_layer(const MlaWeights& w);
  MlaWeights& weights(int layer) { return layers_[static_cast<size_t>(layer)]; }
  int layers() const { return static_cast<int>(layers_.size()); }
  // A cache of one layer in `layout` for `batch` sequences of up to `capacity` positions.
  void reset_cache(KvCache<float>& cache, int batch, int capacity, MlaCache layout) const;
  // out [B*n, d] += MLA of layer l over x [B*n, d] (n new tokens of each of B sequences at
  // positions cache.length..), through the cache in whichever layout it was reset to.
  void forward(int layer, const float* x, int B, int n, KvCache<float>& cache, float* out);

 private:
  void project(const MlaWeights& w, const float* x, int64_t rows, int n, int64_t start);
  void latent(const MlaWeights& w, int B, int n, KvCache<float>& cache);
  void full_heads(const MlaWeights& w, int B, int n, KvCache<float>& cache);

  ModelConfig c_;
  int H_ = 0, nope_ = 0, rope_ = 0, v_ = 0, r_ = 0, qk_ = 0;
  float scale_ = 1;
  std::vector<float> cos_, sin_;  // RoPE tables [max_positions, rope/2]
  std::vector<MlaWeights> layers_;
  std::deque<std::vector<float>> kv_b_f32_;  // [H*(nope+v), r] per layer
  // q_ [rows, H*(nope+rope)], qa_ [rows, q_lora_rank], kva_ [rows, r+rope] (normalized c and
  // rotated k_pe: a latent cache row), qpe_ [rows, H*rope], pe_ [rows, rope], qc_ [rows,
  // H*(r+rope)], olat_ [rows, H*r], lat_ [rows, r], kvb_ [rows, H*(nope+v)], o_ [rows, H*v].
  std::vector<float> q_, qa_, kva_, qpe_, pe_, qc_, olat_, lat_, kvb_, o_, rstd_, scratch_;
};

}  // namespace moe
