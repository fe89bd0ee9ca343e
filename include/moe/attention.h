// Grouped-query causal self-attention with RoPE (Mixtral/Llama), forward and backward side by
// side, plus a cached forward for generation. Exact math: docs/model.md.
//   q = x Wq^T (+ bq) [n, H*hd], k = x Wk^T (+ bk), v = x Wv^T (+ bv) [n, G*hd] (biases:
//   qwen2_moe); optional RMSNorm of q and k (qwen3_moe per head, olmoe over the whole
//   projection); RoPE (HF rotate_half) on q and k;
//   query head j reads kv head j / (H/G); P = softmax(q k^T / sqrt(hd)) causal within each
//   sequence; o = P v [n, H*hd]; out = o Wo^T [n, d].
// The forward SAVES the softmax probabilities [B, H, S, S] (llm.c style; at the sizes this
// trains, B=16 S=256 H=8, that is 32 MB in float, cheaper than recomputing them).
// The backward writes dx (=) and accumulates parameter gradients (+=), like FeedForward.
// Workspaces are members, sized on the first call: a steady-state forward/backward of the same
// shape does not allocate. Not thread-safe: one layer object per concurrent caller.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/moe_config.h"
#include "moe/params.h"
#include "moe/rng.h"
#include "moe/rope.h"
#include "moe/tensor.h"

namespace moe {

// RMSNorm on the attention queries and keys before RoPE, as the Hugging Face families differ.
enum class QkNorm {
  None,
  PerHead,  // qwen3_moe: one weight [head_dim] applied to every head
  Full,     // olmoe: one weight over the whole projection, [H*hd] for q and [G*hd] for k
};

struct AttentionConfig {
  int hidden_size = 0;   // d
  int num_heads = 0;     // H (num_attention_heads)
  int num_kv_heads = 0;  // G (num_key_value_heads), H % G == 0
  int head_dim = 0;      // hd (even)
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;  // rope.h; dynamic NTK refills the rows of each call
  // RoPE table length (the model's context, ModelConfig::context_length()); positions >= this
  // fail.
  int max_positions = 0;
  // Encoders (the ViT of vit.h) attend both ways and carry learned absolute positions instead
  // of RoPE. The defaults are the decoder's. forward_cached requires causal.
  bool causal = true;
  bool rope = true;
  bool qkv_bias = false;          // q/k/v projections carry a bias (qwen2_moe)
  QkNorm qk_norm = QkNorm::None;  // RMSNorm of q and k before RoPE (qwen3_moe, olmoe)
  double norm_eps = 1e-6;         // that RMSNorm's epsilon (the model's rms_norm_eps)
  // The q/k/v/o projections' GEMMs in bf16 (fp32 accumulation, fp32 master weights; float
  // only), the model's compute_dtype. Scores and weighted values stay fp32.
  ComputeDtype compute_dtype = ComputeDtype::Float32;
  // Throws moe::Error "where: <HF key name> ..." for the first bad value.
  void validate(const std::string& where) const;
};

// Per-sequence key/value cache for generation: k [B, capacity, kv_dim], v [B, capacity, v_dim]
// (RoPE already applied to k); GQA: kv_dim = v_dim = G*hd. Multi-head Latent Attention keeps
// one row per token in k (the normalized latent and the rotated rope key) and no v (v_dim 0),
// or as the full-head oracle k [H*(nope+rope)], v [H*v_head_dim]. length = positions filled,
// the same for every sequence.
// A sliding-window layer's cache is a ring (window > 0): it holds the last `window` positions
// only (capacity = window), position p in slot p % window, so its bytes stop growing once the
// sequence passes the window; length still counts every position seen. stage_k / stage_v are
// the ring's workspace for calls of more than one token (the window's rows in position order
// followed by the new ones), not cache contents.
template <class T>
struct KvCache {
  int batch = 0, capacity = 0, length = 0, kv_dim = 0, v_dim = 0;
  int window = 0;    // > 0: a ring of the last `window` positions (capacity == window)
  std::vector<T> k;  // [batch, capacity, kv_dim]
  std::vector<T> v;  // [batch, capacity, v_dim]
  std::vector<T> stage_k, stage_v;  // ring only: [batch, window - 1 + n, kv_dim / v_dim]
  // A Gated DeltaNet layer (gated_deltanet.h) caches no keys or values (kv_dim = v_dim = 0) but
  // a state of constant size: conv [batch, K-1, conv_dim] (the last inputs of its short
  // convolution) and ssm [batch, Hv, dk, dv] (the delta rule's matrices).
  std::vector<T> conv, ssm;
  // length = 0; v_dim < 0: v_dim = kv_dim. window > 0 and shorter than `capacity`: a ring of
  // `window` slots (a sequence may then run past `capacity`; the model's context bounds it).
  void reset(int batch, int capacity, int kv_dim, int v_dim = -1, int window = 0);
  int64_t bytes_per_token() const { return static_cast<int64_t>(kv_dim + v_dim) * sizeof(T); }
  // Bytes of the cached keys and values (the staging workspace not counted).
  int64_t bytes() const { return static_cast<int64_t>(k.size() + v.size()) * sizeof(T); }
  // The bytes that do not grow with the context (the Gated DeltaNet state).
  int64_t state_bytes() const {
    return static_cast<int64_t>((conv.size() + ssm.size()) * sizeof(T));
  }
};

// Plain RoPE tables: cos, sin [max_positions, hd/2], cos[p, i] = cos(p * theta^(-2i/hd)),
// computed in double (rope_frequencies + rope_table_rows of rope.h for a scaled RoPE).
template <class T>
void rope_tables(std::vector<T>& cos, std::vector<T>& sin, int max_positions, int head_dim,
                 double theta);
// Rotates every head of x [n, heads*hd] in place, HF rotate_half layout (pairs i, i + hd/2), or
// with `interleaved` llama.cpp's layout of GGUF `llama` files (pairs 2i, 2i+1: the rows after
// permute_rope_rows); row r is at position start + r % seq_len. With rotary_dim > 0 (partial
// rotary, Qwen3-Next) only the first rotary_dim entries of each head turn (tables [.., rotary_dim
// / 2]) and the others pass unchanged. rope_backward applies the inverse (transposed) rotation
// to a gradient, rotate_half layout.
template <class T>
void rope_forward(T* x, const T* cos, const T* sin, int64_t n, int heads, int head_dim,
                  int64_t seq_len, int64_t start, bool interleaved = false, int rotary_dim = 0);
template <class T>
void rope_backward(T* dx, const T* cos, const T* sin, int64_t n, int heads, int head_dim,
                   int64_t seq_len, int64_t start);

// Attention over a KV cache after the projections: appends k, v [B*n, G*hd] (RoPE applied) of
// n new tokens per sequence to the cache, attends causally to everything cached and writes
// o [B*n, H*hd]. scratch grows to threads * n * capacity once. With `window` > 0 a query at
// position p sees keys p - window + 1 .. p only (a sliding layer); with `sinks` [H] head h's
// softmax denominator also holds exp(sinks[h]), a logit with no value (gpt-oss). The core is
// attend_cached below. A ring cache (KvCache::window) needs `window` equal to its own.
template <class T>
void cached_attention(const T* q, const T* k, const T* v, int B, int n, int H, int G, int hd,
                      KvCache<T>& cache, T* o, std::vector<T>& scratch, int window = 0,
                      const T* sinks = nullptr);

// The attention core over cached rows, any head layout: for each sequence b and query head h,
// o[b*n+t, h*v_dim ..] = softmax(scale * q_h K_b^T, causal: position L+t sees 0..L+t) V_b, where
// q_h = q[b*n+t, h*q_dim ..] (row stride ldq), K_b rows k + (b*cap + j)*ldk + (h/rep)*k_head
// (q_dim wide), V_b rows v + (b*cap + j)*ldv + (h/rep)*v_head (v_dim wide), o row stride ldo.
// GQA: k_head = v_head = hd, rep = H/G; latent MLA: every head reads the same rows (k_head =
// v_head = 0) and the values are the keys' first v_dim columns. window and sinks as in
// cached_attention. scratch grows to threads * n * cap once.
template <class T>
void attend_cached(const T* q, int64_t ldq, int q_dim, const T* k, int64_t ldk, int64_t k_head,
                   const T* v, int64_t ldv, int64_t v_head, int v_dim, int B, int n, int H, int rep,
                   int64_t L, int64_t cap, T scale, T* o, int64_t ldo, std::vector<T>& scratch,
                   int window = 0, const T* sinks = nullptr);

template <class T>
class Attention {
 public:
  explicit Attention(const AttentionConfig& c);
  // The four matrices ~ N(0, std), biases 0, q/k norm weights 1.
  void init_weights(Rng& rng, double std);
  // "q_proj.weight" [H*hd, d], "k_proj.weight" [G*hd, d], "v_proj.weight" [G*hd, d],
  // "o_proj.weight" [d, H*hd]; with qkv_bias "{q,k,v}_proj.bias" [H*hd], [G*hd], [G*hd]; with
  // qk_norm "q_norm.weight", "k_norm.weight": [hd] (PerHead) or [H*hd], [G*hd] (Full).
  ParamSet<T>& params() { return params_; }
  // x, out [B*S, d] (row = b*S + s), causal within each sequence, positions 0..S-1.
  void forward(View<const T> x, int B, int S, View<T> out);
  // dx (=) and parameter gradients (+=) for the last forward.
  void backward(View<const T> dout, View<T> dx);
  // Generation: x [B*n, d] holds n new tokens of each of B sequences (row = b*n + t) at
  // positions cache.length .. cache.length+n-1; appends their k, v to the cache (error if its
  // capacity would be exceeded), attends to everything cached, writes out [B*n, d]. Does not
  // touch what forward() saved for backward().
  void forward_cached(View<const T> x, int B, int n, KvCache<T>& cache, View<T> out);
  const AttentionConfig& config() const { return c_; }
  const std::vector<T>& probabilities() const { return att_; }  // [B, H, S, S] of the last forward

 private:
  // q, k, v of `rows` tokens (positions start + r % seq_len): projections, biases, q/k norm,
  // RoPE. With `save` the pre-norm q, k and the norms' rstd are kept for backward().
  void project(const T* x, int64_t rows, int64_t seq_len, int64_t start, T* q, T* k, T* v,
               bool save);
  // The norm's rows and width for q (width = qd_) or k (kvd_): per head or whole projection.
  int64_t norm_rows(int64_t tokens, int heads) const;
  int64_t norm_width(int64_t projection) const;

  AttentionConfig c_;
  int qd_ = 0, kvd_ = 0;  // H*hd, G*hd
  ParamSet<T> params_;
  std::vector<T> cos_, sin_;        // [max_positions, hd/2]
  int B_ = 0, S_ = 0;               // shape of the last forward
  std::vector<T> x_;                // [n, d] input of the last forward
  std::vector<T> q_;                // [n, H*hd] after RoPE
  std::vector<T> k_, v_;            // [n, G*hd], k after RoPE
  std::vector<T> qraw_, kraw_;      // with qk_norm: q, k before the norm
  std::vector<T> rstd_q_, rstd_k_;  // with qk_norm: [norm rows]
  std::vector<T> dqraw_, dkraw_;    // with qk_norm: gradients before the norm
  std::vector<T> att_;              // [B, H, S, S] probabilities, zero above the diagonal
  std::vector<T> o_;                // [n, H*hd] attention output before o_proj
  std::vector<T> do_, dq_;          // [n, H*hd]
  std::vector<T> dk_, dv_;          // [n, G*hd]
  std::vector<T> scratch_;  // [threads, S*S] (backward dP) or [threads, n*capacity] (cached)
  std::vector<T> cq_, ck_, cv_, co_;  // forward_cached: [B*n, H*hd], [B*n, G*hd] x2, [B*n, H*hd]
  std::vector<T> cached_rstd_q_, cached_rstd_k_;  // forward_cached with qk_norm
};

}  // namespace moe
