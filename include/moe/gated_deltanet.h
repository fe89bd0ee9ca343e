// Gated DeltaNet, the linear-attention token mixer of Qwen3-Next and Qwen3.5-MoE (forward only:
// inference). Per token x [d] of a sequence, with Hk key heads and Hv value heads (r = Hv/Hk):
//   [q k v] = x Wqkv^T [2*Hk*dk + Hv*dv], z = x Wz^T [Hv*dv], b = x Wb^T, a = x Wa^T [Hv];
//   q, k, v <- silu(depthwise causal conv1d of kernel K over the sequence, per channel);
//   q, k <- L2-normalized per head (x * rsqrt(sum x^2 + 1e-6)), q scaled by 1/sqrt(dk);
//   value head h reads key head h / r; beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias);
//   per value head a state S [dk, dv]: S <- exp(g) S; S <- S + k (beta (v - S^T k))^T; o = S^T q;
//   out = (RMSNorm(o) * weight * silu(z)) per value head, then out_proj [d, Hv*dv].
// Two forms of the recurrence give the same output and state: the recurrent one token by token
// (decode) and the chunked one (chunks of 64 tokens: a triangular solve inside a chunk, one
// state update per chunk; prefill). The state (KvCache::conv, ssm) has a constant size: the last
// K-1 conv inputs and the S matrices, whatever the context length. Qwen3-Next stores [q k v z] and
// [b a] interleaved by key-head group (in_proj_qkvz, in_proj_ba); the loader reorders those rows
// into the split layout of Qwen3.5 (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a), so one path
// computes both.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/attention.h"
#include "moe/linear.h"

namespace moe {

// Gated DeltaNet token mixers (qwen3_next, qwen3_5_moe; gated_deltanet.h): Hugging Face's
// linear_num_key_heads, linear_num_value_heads, linear_key_head_dim, linear_value_head_dim and
// linear_conv_kernel_dim.
struct LinearAttnConfig {
  int num_k_heads = 0, num_v_heads = 0;  // Hk, Hv (Hk divides Hv)
  int k_head_dim = 0, v_head_dim = 0;    // dk, dv
  int conv_kernel = 0;                   // K of the depthwise causal conv1d over q, k, v
  // Which key head value head h reads: h / (Hv/Hk) as Hugging Face groups them, or h % Hk when
  // the value heads are stored tiled (llama.cpp's qwen35moe GGUF files: its converter reorders
  // them so that ggml's broadcast repeats the key heads).
  bool tiled_heads = false;
  int64_t key_dim() const { return int64_t{num_k_heads} * k_head_dim; }
  int64_t value_dim() const { return int64_t{num_v_heads} * v_head_dim; }
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }  // the channels q, k, v
};

// The weights of one layer, views into the owner's memory.
struct GdnWeights {
  WeightView qkv;                  // [2*Hk*dk + Hv*dv, d]
  WeightView z;                    // [Hv*dv, d]
  WeightView b, a;                 // [Hv, d]
  const float* conv = nullptr;     // [conv_dim, K] depthwise kernels (no bias)
  const float* A_log = nullptr;    // [Hv]
  const float* dt_bias = nullptr;  // [Hv]
  const float* norm = nullptr;     // [dv] the gated RMSNorm's weight (plain, not 1 + w)
  WeightView out;                  // [d, Hv*dv]
};

// Makes `cache` a Gated DeltaNet layer's state for `batch` sequences (KvCache::conv, ssm: zeros,
// as before the first token; no keys or values).
void reset_gdn_cache(const LinearAttnConfig& c, int batch, int capacity, KvCache<float>& cache);

enum class GdnMode { Auto, Recurrent, Chunked };  // Auto: recurrent for one token, else chunked

inline constexpr int kGdnChunk = 64;

class GatedDeltaNet {
 public:
  GatedDeltaNet(const LinearAttnConfig& c, int hidden_size, double eps);
  // x [B*n, d]: n new tokens of each of B sequences (row b*n + t) continuing `state`;
  // out [B*n, d] += the layer's output. Updates the state and cache.length.
  void forward(const GdnWeights& w, const float* x, int B, int n, KvCache<float>& cache, float* out,
               GdnMode mode = GdnMode::Auto);
  // The delta rule alone on prepared inputs (for tests): q, k [B*n, Hv, dk] (L2-normed, q
  // scaled, already repeated to the value heads), v [B*n, Hv, dv], g, beta [B*n, Hv]; S
  // [B, Hv, dk, dv] updated; o [B*n, Hv, dv].
  static void delta_rule(const float* q, const float* k, const float* v, const float* g,
                         const float* beta, int B, int n, int Hv, int dk, int dv, float* S,
                         float* o, GdnMode mode);

 private:
  LinearAttnConfig c_;
  int d_ = 0;
  double eps_ = 1e-6;
  // Workspaces [B*n, ...], grown to the largest call.
  std::vector<float> qkv_, conv_out_, z_, b_, a_, q_, k_, g_, beta_, o_;
};

}  // namespace moe
