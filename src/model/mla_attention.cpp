#include "moe/mla_attention.h"

#include <algorithm>
#include <cmath>

#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/quant.h"
#include "moe/rmsnorm.h"
#include "moe/rope.h"

namespace moe {

MlaAttention::MlaAttention(const ModelConfig& c) : c_(c) {
  const MlaConfig& a = c.mla;
  MOE_CHECK(c.is_mla(), "MlaAttention: the config has no kv_lora_rank");
  H_ = c.num_attention_heads, nope_ = a.qk_nope_head_dim, rope_ = a.qk_rope_head_dim;
  v_ = a.v_head_dim, r_ = a.kv_lora_rank, qk_ = a.qk_head_dim();
  // DeepSeek's softmax scale: 1/sqrt(qk_head_dim), times yarn_mscale(factor, mscale_all_dim)^2
  // under YaRN (DeepSeek's modeling code and Hugging Face's deepseek_v3; transformers'
  // deepseek_v2 port leaves it out, which changes DeepSeek-V2(-Lite)'s outputs: we follow
  // DeepSeek). The rotation's own attention factor multiplies the q_pe.k_pe part (rope.h).
  const RopeScaling& rs = c.rope_scaling;
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_));
  if (rs.type == RopeType::Yarn && rs.mscale_all_dim > 0) {
    const double m = yarn_mscale(rs.factor, rs.mscale_all_dim);
    scale *= m * m;
  }
  scale_ = static_cast<float>(scale);
  rope_table_rows(cos_, sin_, rope_frequencies(rope_, c.rope_theta, rs), 0, c.context_length());
}

void MlaAttention::add_layer(const MlaWeights& w) {
  std::vector<float>& f = kv_b_f32_.emplace_back(static_cast<size_t>(w.kv_b.rows * w.kv_b.cols));
  for (int64_t i = 0; i < w.kv_b.rows; ++i)
    dequantize_row(w.kv_b.type, w.kv_b.row(i), f.data() + i * w.kv_b.cols, w.kv_b.cols);
  layers_.push_back(w);
  layers_.back().kv_b_f32 = f.data();
}

void MlaAttention::reset_cache(KvCache<float>& cache, int batch, int capacity,
                               MlaCache layout) const {
  if (layout == MlaCache::Latent)
    cache.reset(batch, capacity, r_ + rope_, 0);
  else
    cache.reset(batch, capacity, H_ * qk_, H_ * v_);
}

// q_ (with q_pe left unrotated), qpe_ the rotated q_pe, kva_ the latent cache rows.
void MlaAttention::project(const MlaWeights& w, const float* x, int64_t rows, int n,
                           int64_t start) {
  const int64_t qd = int64_t(H_) * qk_, lat = r_ + rope_, qr = c_.mla.q_lora_rank;
  const double eps = c_.rms_norm_eps;
  grow_to(q_, rows * qd);
  grow_to(rstd_, rows);
  if (qr > 0) {
    grow_to(qa_, rows * qr);
    linear_forward(x, rows, w.q_a, qa_.data());
    rmsnorm_forward(qa_.data(), rstd_.data(), qa_.data(), w.q_a_norm, rows, qr, eps);
    linear_forward(qa_.data(), rows, w.q_b, q_.data());
  } else {
    linear_forward(x, rows, w.q, q_.data());
  }
  grow_to(qpe_, rows * H_ * rope_);
  for (int64_t i = 0; i < rows; ++i)
    for (int h = 0; h < H_; ++h)
      std::copy_n(q_.data() + i * qd + h * qk_ + nope_, rope_, qpe_.data() + (i * H_ + h) * rope_);
  const bool inter = c_.mla.rope_interleave;
  rope_forward(qpe_.data(), cos_.data(), sin_.data(), rows, H_, rope_, n, start, inter);

  grow_to(kva_, rows * lat);
  grow_to(pe_, rows * rope_);
  linear_forward(x, rows, w.kv_a, kva_.data());
  for (int64_t i = 0; i < rows; ++i) {
    float* row = kva_.data() + i * lat;
    rmsnorm_forward(row, rstd_.data() + i, row, w.kv_a_norm, 1, r_, eps);
    std::copy_n(row + r_, rope_, pe_.data() + i * rope_);
  }
  rope_forward(pe_.data(), cos_.data(), sin_.data(), rows, 1, rope_, n, start, inter);
  for (int64_t i = 0; i < rows; ++i)
    std::copy_n(pe_.data() + i * rope_, rope_, kva_.data() + i * lat + r_);
}

void MlaAttention::latent(const MlaWeights& w, int B, int n, KvCache<float>& cache) {
  const int64_t rows = int64_t(B) * n, lat = r_ + rope_, qd = int64_t(H_) * qk_;
  const int64_t start = cache.length, cap = cache.capacity, hkv = nope_ + v_;
  for (int64_t b = 0; b < B; ++b)
    std::copy_n(kva_.data() + b * n * lat, n * lat, cache.k.data() + (b * cap + start) * lat);
  // Queries in latent space: [q_nope W_UK, q_pe] per head.
  grow_to(qc_, rows * H_ * lat);
  for (int h = 0; h < H_; ++h)
    gemm<float>(Trans::No, Trans::No, rows, r_, nope_, 1.0f, q_.data() + h * qk_, qd,
                w.kv_b_f32 + h * hkv * r_, r_, 0.0f, qc_.data() + h * lat, H_ * lat);
  for (int64_t i = 0; i < rows; ++i)
    for (int h = 0; h < H_; ++h)
      std::copy_n(qpe_.data() + (i * H_ + h) * rope_, rope_, qc_.data() + (i * H_ + h) * lat + r_);
  // Every head attends to the same latent rows; the values are their first r columns.
  grow_to(olat_, rows * H_ * r_);
  attend_cached<float>(qc_.data(), H_ * lat, static_cast<int>(lat), cache.k.data(), lat, 0,
                       cache.k.data(), lat, 0, r_, B, n, H_, 1, start, cap, scale_, olat_.data(),
                       H_ * r_, scratch_);
  // o_h = (sum p c) W_UV^T.
  grow_to(o_, rows * H_ * v_);
  for (int h = 0; h < H_; ++h)
    gemm<float>(Trans::No, Trans::Yes, rows, v_, r_, 1.0f, olat_.data() + h * r_, H_ * r_,
                w.kv_b_f32 + (h * hkv + nope_) * r_, r_, 0.0f, o_.data() + h * v_, H_ * v_);
}

void MlaAttention::full_heads(const MlaWeights& w, int B, int n, KvCache<float>& cache) {
  const int64_t rows = int64_t(B) * n, lat = r_ + rope_, qd = int64_t(H_) * qk_;
  const int64_t start = cache.length, cap = cache.capacity, hkv = nope_ + v_, vd = H_ * v_;
  grow_to(lat_, rows * r_);
  for (int64_t i = 0; i < rows; ++i) std::copy_n(kva_.data() + i * lat, r_, lat_.data() + i * r_);
  grow_to(kvb_, rows * H_ * hkv);
  linear_forward(lat_.data(), rows, w.kv_b, kvb_.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t) {
      const int64_t i = b * n + t, pos = b * cap + start + t;
      for (int h = 0; h < H_; ++h) {
        const float* kv = kvb_.data() + (i * H_ + h) * hkv;
        float* k = cache.k.data() + pos * qd + h * qk_;
        std::copy_n(kv, nope_, k);
        std::copy_n(kva_.data() + i * lat + r_, rope_, k + nope_);  // k_pe, shared by all heads
        std::copy_n(kv + nope_, v_, cache.v.data() + pos * vd + h * v_);
        std::copy_n(qpe_.data() + (i * H_ + h) * rope_, rope_,
                    q_.data() + i * qd + h * qk_ + nope_);
      }
    }
  grow_to(o_, rows * vd);
  attend_cached<float>(q_.data(), qd, qk_, cache.k.data(), qd, qk_, cache.v.data(), vd, v_, v_, B,
                       n, H_, 1, start, cap, scale_, o_.data(), vd, scratch_);
}

void MlaAttention::forward(int layer, const float* x, int B, int n, KvCache<float>& cache,
                           float* out) {
  MOE_CHECK(layer >= 0 && layer < layers(), "MlaAttention::forward: layer {} of {}", layer,
            layers());
  MOE_CHECK(B > 0 && n > 0, "MlaAttention::forward: B and n must be positive, got B={} n={}", B, n);
  const bool latent_cache = cache.v_dim == 0;
  MOE_CHECK(cache.batch == B && (latent_cache ? cache.kv_dim == r_ + rope_
                                              : cache.kv_dim == H_ * qk_ && cache.v_dim == H_ * v_),
            "MlaAttention::forward: the cache was reset for batch {}, kv_dim {}, v_dim {}, which "
            "is no MLA layout of this model for batch {}",
            cache.batch, cache.kv_dim, cache.v_dim, B);
  const int64_t start = cache.length, rows = int64_t(B) * n;
  MOE_REQUIRE(start + n <= c_.context_length(),
              "position {} is beyond the context of {} positions (max_position_embeddings, "
              "rope_scaling)",
              start + n - 1, c_.context_length());
  MOE_CHECK(start + n <= cache.capacity,
            "MlaAttention: KV cache overflow: {} cached + {} new tokens exceed its capacity {}",
            start, n, cache.capacity);
  const MlaWeights& w = layers_[static_cast<size_t>(layer)];
  project(w, x, rows, n, start);
  if (latent_cache)
    latent(w, B, n, cache);
  else
    full_heads(w, B, n, cache);
  cache.length = static_cast<int>(start + n);
  linear_forward(o_.data(), rows, w.o, out, /*accumulate=*/true);
}

}  // namespace moe
