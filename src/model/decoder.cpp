#include "moe/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "moe/error.h"
#include "moe/rmsnorm.h"

namespace moe {

std::vector<KvCache<float>> Decoder::new_caches(int batch, int capacity, MlaCache mla) const {
  MOE_REQUIRE(capacity <= cfg_.context_length(),
              "a KV cache of {} positions exceeds the context of {} positions "
              "(max_position_embeddings, rope_scaling)",
              capacity, cfg_.context_length());
  std::vector<KvCache<float>> caches(static_cast<size_t>(cfg_.num_hidden_layers));
  for (size_t l = 0; l < caches.size(); ++l) {
    KvCache<float>& c = caches[l];
    if (cfg_.is_linear_layer(static_cast<int>(l)))
      reset_gdn_cache(cfg_.linear, batch, capacity, c);
    else if (mla_)
      mla_->reset_cache(c, batch, capacity, mla);
    else  // a sliding layer keeps a ring of its window (KvCache::window)
      c.reset(batch, capacity, cfg_.num_key_value_heads * cfg_.head_size(), -1,
              cfg_.window_of(static_cast<int>(l)));
  }
  return caches;
}

int64_t Decoder::cache_bytes_per_token(MlaCache mla) const {
  int64_t bytes = 0;
  for (const KvCache<float>& c : new_caches(1, 1, mla)) bytes += c.bytes_per_token();
  return bytes;
}

int64_t Decoder::cache_state_bytes() const {
  int64_t bytes = 0;
  for (const KvCache<float>& c : new_caches(1, 1)) bytes += c.state_bytes();
  return bytes;
}

Decoder::Decoder(const ModelConfig& cfg) : cfg_(cfg) {
  if (cfg_.is_mla())
    mla_.emplace(cfg_);  // its own RoPE tables, of qk_rope_head_dim
  else
    rope_table_rows(cos_, sin_,
                    rope_frequencies(cfg_.rotary_dim(), cfg_.rope_theta, cfg_.rope_scaling), 0,
                    cfg_.context_length());
  if (cfg_.has_linear_layers()) gdn_.emplace(cfg_.linear, cfg_.hidden_size, cfg_.rms_norm_eps);
}

WeightView Decoder::quantized(const WeightView& w, GgmlType type) {
  // Already stored so (a GGUF file's tensor): no copy, and no second rounding.
  if (w.type == quantizable_type(type, w.cols)) return w;
  quantized_values_ += w.rows * w.cols;
  return quantize_view(w, type, quantized_.emplace_back());
}

void Decoder::quantize_attention_and_head(GgmlType type) {
  for (AttentionWeights& a : attn_)
    for (WeightView* w : {&a.q, &a.k, &a.v, &a.o, &a.gdn.qkv, &a.gdn.z, &a.gdn.out})
      if (w->data) *w = quantized(*w, type);
  if (mla_)  // kv_b stays as loaded too: the absorbed products read its fp32 copy
    for (int l = 0; l < mla_->layers(); ++l) {
      MlaWeights& m = mla_->weights(l);
      for (WeightView* w : {&m.q, &m.q_a, &m.q_b, &m.kv_a, &m.o})
        if (w->data) *w = quantized(*w, type);
    }
  head_ = quantized(head_, type);
}

void Decoder::observe_routing(int l, const RoutingPlan& plan, const float* gates,
                              const float* scores, ScoreFunc scoring) const {
  if (!observer_) return;
  RoutingChoice c;
  c.layer = l;
  c.rows = plan.tokens;
  c.k = plan.k;
  c.num_experts = plan.num_experts;
  c.experts = plan.primary.data();
  c.gates = gates;
  c.scores = scores;
  c.scoring = scoring;
  c.dropped = plan.dropped;
  observer_(c);
}

int64_t Decoder::quantized_bytes() const {
  int64_t bytes = 0;
  for (const auto& q : quantized_) bytes += static_cast<int64_t>(q.size());
  return bytes;
}

// h_ += attention of x_ through the cache.
void Decoder::attention(const AttentionWeights& w, int B, int n, KvCache<float>& cache) {
  const ModelConfig& c = cfg_;
  const int64_t rows = static_cast<int64_t>(B) * n, hd = c.head_size();
  const int H = c.num_attention_heads, G = c.num_key_value_heads;
  const int64_t qd = H * hd, kvd = G * hd, start = cache.length;
  MOE_REQUIRE(start + n <= c.context_length(),
              "position {} is beyond the context of {} positions (max_position_embeddings, "
              "rope_scaling)",
              start + n - 1, c.context_length());
  grow_to(q_, rows * qd);
  grow_to(k_, rows * kvd);
  grow_to(v_, rows * kvd);
  grow_to(o_, rows * qd);
  grow_to(rstd_, rows * H);
  if (c.attn_output_gate) {
    // q_proj yields [H, 2*hd] per token: each head's query, then its output gate.
    grow_to(gate_, rows * qd);
    grow_to(o_, rows * 2 * qd);
    linear_forward(x_.data(), rows, w.q, o_.data());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < H; ++h) {
        const float* src = o_.data() + (r * H + h) * 2 * hd;
        std::copy_n(src, hd, q_.data() + r * qd + h * hd);
        std::copy_n(src + hd, hd, gate_.data() + r * qd + h * hd);
      }
  } else {
    linear_forward(x_.data(), rows, w.q, q_.data());
  }
  linear_forward(x_.data(), rows, w.k, k_.data());
  linear_forward(x_.data(), rows, w.v, v_.data());
  if (w.q_bias)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < qd; ++j) q_[r * qd + j] += w.q_bias[j];
      for (int64_t j = 0; j < kvd; ++j) {
        k_[r * kvd + j] += w.k_bias[j];
        v_[r * kvd + j] += w.v_bias[j];
      }
    }
  const double eps = c.rms_norm_eps;
  if (c.qk_norm == QkNorm::PerHead) {  // every head row [hd] normalized with one weight
    rmsnorm_forward(q_.data(), rstd_.data(), q_.data(), w.q_norm, rows * H, hd, eps);
    rmsnorm_forward(k_.data(), rstd_.data(), k_.data(), w.k_norm, rows * G, hd, eps);
  } else if (c.qk_norm == QkNorm::Full) {  // the whole projection of a token at once
    rmsnorm_forward(q_.data(), rstd_.data(), q_.data(), w.q_norm, rows, qd, eps);
    rmsnorm_forward(k_.data(), rstd_.data(), k_.data(), w.k_norm, rows, kvd, eps);
  }
  rope_forward(q_.data(), cos_.data(), sin_.data(), rows, H, static_cast<int>(hd), n, start,
               rope_interleaved_, c.rotary_dim());
  rope_forward(k_.data(), cos_.data(), sin_.data(), rows, G, static_cast<int>(hd), n, start,
               rope_interleaved_, c.rotary_dim());
  if (c.attention_multiplier > 0) {
    // cached_attention scales the scores by 1/sqrt(hd); Granite-MoE's multiplier replaces it.
    const auto q_scale = static_cast<float>(c.attention_multiplier * std::sqrt(double(hd)));
    for (int64_t i = 0; i < rows * qd; ++i) q_[i] *= q_scale;
  }
  cached_attention(q_.data(), k_.data(), v_.data(), B, n, H, G, static_cast<int>(hd), cache,
                   o_.data(), scores_, w.window, w.sinks);
  if (c.attn_output_gate)
    for (int64_t i = 0; i < rows * qd; ++i)
      o_[i] *= static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(gate_[i]))));
  linear_forward(o_.data(), rows, w.o, h_.data(), /*accumulate=*/true);
  if (w.o_bias)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < c.hidden_size; ++j) h_[r * c.hidden_size + j] += w.o_bias[j];
}

void Decoder::forward(const int32_t* tokens, int B, int n, std::vector<KvCache<float>>& caches,
                      float* logits, bool all_logits) {
  const ModelConfig& c = cfg_;
  MOE_CHECK(B > 0 && n > 0, "Decoder::forward: B and n must be positive, got B={} n={}", B, n);
  MOE_CHECK(caches.size() == attn_.size(), "Decoder::forward: {} caches for {} layers",
            caches.size(), attn_.size());
  const int64_t rows = static_cast<int64_t>(B) * n, d = c.hidden_size, V = c.vocab_size;
  grow_to(h_, rows * d);
  grow_to(x_, rows * d);
  grow_to(rstd_, rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = tokens[r];
    MOE_REQUIRE(t >= 0 && t < V, "token id {} is outside the vocabulary [0, {})", t, V);
    dequantize_row(embed_.type, embed_.row(t), h_.data() + r * d, d);
  }
  if (c.embedding_multiplier != 1.0) {
    const auto mul = static_cast<float>(c.embedding_multiplier);
    for (int64_t i = 0; i < rows * d; ++i) h_[i] *= mul;
  }
  // Granite-MoE scales each sub-layer's output before its residual add: the sub-layer then
  // accumulates into a zeroed h_ and the residual (res_) is added back.
  const bool scaled = c.residual_multiplier != 1.0;
  const auto res_mul = static_cast<float>(c.residual_multiplier);
  if (scaled) grow_to(res_, rows * d);
  auto begin_sublayer = [&] {
    if (!scaled) return;
    std::copy_n(h_.data(), rows * d, res_.data());
    std::fill_n(h_.data(), rows * d, 0.0f);
  };
  auto end_sublayer = [&] {
    if (!scaled) return;
    for (int64_t i = 0; i < rows * d; ++i) h_[i] = res_[i] + res_mul * h_[i];
  };
  // Dynamic NTK follows the length the sequence reaches, as Hugging Face's dynamic_rope_update
  // recomputes its frequencies once the cache grows past max_position_embeddings: this call's
  // positions are rotated with the frequencies of start + n, while the keys already cached keep
  // the rotation they were stored with (as in Hugging Face's cache). The other types are fixed.
  if (c.rope_scaling.type == RopeType::Dynamic && !mla_) {  // refused for MLA configs
    const int64_t start = caches.front().length;
    rope_table_rows(cos_, sin_,
                    rope_frequencies(c.rotary_dim(), c.rope_theta, c.rope_scaling, start + n),
                    start, n);
  }
  const double eps = c.rms_norm_eps;
  for (size_t l = 0; l < attn_.size(); ++l) {
    const AttentionWeights& w = attn_[l];
    rmsnorm_forward(x_.data(), rstd_.data(), h_.data(), w.input_norm, rows, d, eps);
    begin_sublayer();
    if (c.is_linear_layer(static_cast<int>(l)))
      gdn_->forward(w.gdn, x_.data(), B, n, caches[l], h_.data());
    else if (mla_)
      mla_->forward(static_cast<int>(l), x_.data(), B, n, caches[l], h_.data());
    else
      attention(w, B, n, caches[l]);
    end_sublayer();
    rmsnorm_forward(x_.data(), rstd_.data(), h_.data(), w.post_norm, rows, d, eps);
    begin_sublayer();
    ffn(static_cast<int>(l), rows);
    end_sublayer();
  }
  // The head runs on the rows whose logits are wanted only.
  const int64_t out_rows = all_logits ? rows : B;
  for (int64_t r = 0; r < out_rows; ++r) {
    const int64_t src = all_logits ? r : r * n + (n - 1);
    std::copy_n(h_.data() + src * d, d, x_.data() + r * d);
  }
  rmsnorm_forward(x_.data(), rstd_.data(), x_.data(), final_norm_, out_rows, d, eps);
  linear_forward(x_.data(), out_rows, head_, logits);
  if (c.logits_scaling != 1.0) {
    const auto div = static_cast<float>(c.logits_scaling);
    for (int64_t i = 0; i < out_rows * V; ++i) logits[i] /= div;
  }
}

}  // namespace moe
