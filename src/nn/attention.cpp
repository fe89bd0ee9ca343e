#include "moe/attention.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/fast_math.h"
#include "core/parallel_for.h"
#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/grouped_experts.h"
#include "moe/rmsnorm.h"

namespace moe {

namespace {
// Causal row block: the scores of rows [r0, r1) are computed only against keys [0, r1), so
// the products skip most of the masked upper triangle (S=256: 5/8 of the full work).
constexpr int64_t kBlock = 64;

// p[0..len) = softmax(p[0..len)), p[len..width) = 0.
template <class T>
void masked_softmax_row(T* p, int64_t len, int64_t width) {
  T mx = p[0];
#pragma omp simd reduction(max : mx)
  for (int64_t j = 1; j < len; ++j) mx = std::max(mx, p[j]);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) p[j] = exp_fast(p[j] - mx);
  double sum = 0.0;  // a separate loop: fused with the float exp it does not vectorize
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < len; ++j) sum += static_cast<double>(p[j]);
  const T inv = static_cast<T>(1.0 / sum);
  for (int64_t j = 0; j < len; ++j) p[j] *= inv;
  std::fill(p + len, p + width, T(0));
}

// One (sequence, query head): Q [S, hd] (row stride ldq), K, V [S, hd] (stride ldkv) ->
// P [S, S] probabilities, O [S, hd] (stride ldq).
template <class T>
void causal_forward(const T* Q, const T* K, const T* V, int64_t ldq, int64_t ldkv, T* P, T* O,
                    int64_t S, int64_t hd, T scale, bool causal) {
  for (int64_t r0 = 0; r0 < S; r0 += kBlock) {
    const int64_t r1 = std::min(S, r0 + kBlock), kc = causal ? r1 : S;  // keys this block sees
    gemm<T>(Trans::No, Trans::Yes, r1 - r0, kc, hd, scale, Q + r0 * ldq, ldq, K, ldkv, T(0),
            P + r0 * S, S);
  }
  for (int64_t s = 0; s < S; ++s) masked_softmax_row(P + s * S, causal ? s + 1 : S, S);
  for (int64_t r0 = 0; r0 < S; r0 += kBlock) {
    const int64_t r1 = std::min(S, r0 + kBlock), kc = causal ? r1 : S;
    gemm<T>(Trans::No, Trans::No, r1 - r0, hd, kc, T(1), P + r0 * S, S, V, ldkv, T(0), O + r0 * ldq,
            ldq);
  }
}

// Backward of causal_forward for one (sequence, query head): dQ written, dK and dV
// accumulated (query heads of one group share them). dS [S, S] is scratch.
template <class T>
void causal_backward(const T* Q, const T* K, const T* V, const T* P, const T* dO, int64_t ldq,
                     int64_t ldkv, T* dQ, T* dK, T* dV, T* dS, int64_t S, int64_t hd, T scale,
                     bool causal) {
  for (int64_t r0 = 0; r0 < S; r0 += kBlock) {
    const int64_t r1 = std::min(S, r0 + kBlock), kc = causal ? r1 : S;
    // dP = dO V^T, dV += P^T dO
    gemm<T>(Trans::No, Trans::Yes, r1 - r0, kc, hd, T(1), dO + r0 * ldq, ldq, V, ldkv, T(0),
            dS + r0 * S, S);
    gemm<T>(Trans::Yes, Trans::No, kc, hd, r1 - r0, T(1), P + r0 * S, S, dO + r0 * ldq, ldq, T(1),
            dV, ldkv);
  }
  // Softmax backward: dS = P * (dP - sum_j P dP); zero above the diagonal for the products.
  for (int64_t s = 0; s < S; ++s) {
    const T* p = P + s * S;
    T* ds = dS + s * S;
    const int64_t len = causal ? s + 1 : S;
    double dot = 0.0;
    for (int64_t j = 0; j < len; ++j) dot += static_cast<double>(p[j]) * ds[j];
    const T c = static_cast<T>(dot);
    for (int64_t j = 0; j < len; ++j) ds[j] = p[j] * (ds[j] - c);
    std::fill(ds + len, ds + S, T(0));
  }
  for (int64_t r0 = 0; r0 < S; r0 += kBlock) {
    const int64_t r1 = std::min(S, r0 + kBlock), kc = causal ? r1 : S;
    // scores = scale Q K^T: dQ = scale dS K, dK += scale dS^T Q
    gemm<T>(Trans::No, Trans::No, r1 - r0, hd, kc, scale, dS + r0 * S, S, K, ldkv, T(0),
            dQ + r0 * ldq, ldq);
    gemm<T>(Trans::Yes, Trans::No, kc, hd, r1 - r0, scale, dS + r0 * S, S, Q + r0 * ldq, ldq, T(1),
            dK, ldkv);
  }
}
}  // namespace

void AttentionConfig::validate(const std::string& where) const {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: {} {}", where, key, why));
  };
  if (hidden_size <= 0) fail("hidden_size", fmt::format("must be positive, got {}", hidden_size));
  if (num_heads <= 0)
    fail("num_attention_heads", fmt::format("must be positive, got {}", num_heads));
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0)
    fail("num_key_value_heads", fmt::format("= {} must be positive and divide "
                                            "num_attention_heads = {}",
                                            num_kv_heads, num_heads));
  if (head_dim <= 0 || head_dim % 2 != 0)
    fail("head_dim",
         fmt::format("= {} must be positive and even (RoPE rotates pairs of halves)", head_dim));
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    fail("rope_theta", fmt::format("must be positive and finite, got {}", rope_theta));
  if (max_positions <= 0)
    fail("max_position_embeddings", fmt::format("must be positive, got {}", max_positions));
  rope_scaling.validate(where);
  if (rope_scaling.type == RopeType::Dynamic && head_dim <= 2)
    fail("head_dim", "must be more than 2 for dynamic NTK RoPE (its exponent is hd / (hd - 2))");
}

template <class T>
void KvCache<T>::reset(int b, int cap, int kvd, int vd, int win) {
  if (vd < 0) vd = kvd;
  MOE_CHECK(b > 0 && cap > 0 && kvd > 0 && win >= 0,
            "KvCache::reset: batch, capacity and kv_dim must be positive and window >= 0, got {}, "
            "{}, {}, {}",
            b, cap, kvd, win);
  // A window no shorter than the capacity never drops a position: a plain cache then.
  window = win > 0 && win < cap ? win : 0;
  if (window > 0) cap = window;
  stage_k.clear();
  stage_v.clear();
  batch = b;
  capacity = cap;
  kv_dim = kvd;
  v_dim = vd;
  length = 0;
  const auto rows = static_cast<size_t>(b) * cap;
  k.assign(rows * kvd, T(0));
  v.assign(rows * vd, T(0));
}

template <class T>
void rope_tables(std::vector<T>& cos, std::vector<T>& sin, int max_positions, int head_dim,
                 double theta) {
  cos.clear();
  sin.clear();
  rope_table_rows(cos, sin, rope_frequencies(head_dim, theta, RopeScaling{}), 0, max_positions);
}

namespace {
// y[i] = x[i] c - x[i+h] s', y[i+h] = x[i+h] c + x[i] s' with s' = sign * s: sign +1 rotates
// by the position's angle (forward), -1 by its negative, the transpose (backward). Interleaved:
// the pair of frequency i is (2i, 2i+1) instead of (i, i+h).
template <bool kInterleaved, class T>
void rope_rotate(T* x, const T* cos, const T* sin, int64_t n, int heads, int head_dim,
                 int64_t seq_len, int64_t start, T sign, int rotary_dim = 0) {
  // Partial rotary (Qwen3-Next): the first rotary_dim entries of each head turn, the rest pass.
  const int half = (rotary_dim > 0 ? rotary_dim : head_dim) / 2;
  const int64_t width = static_cast<int64_t>(heads) * head_dim;
  parallel_for(n, n * width > kParallelMinValues, [&](int64_t r) {
    const int64_t p = start + r % seq_len;
    const T* c = cos + p * half;
    const T* s = sin + p * half;
    for (int h = 0; h < heads; ++h) {
      T* y = x + r * width + static_cast<int64_t>(h) * head_dim;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const int64_t ia = kInterleaved ? 2 * i : i, ib = kInterleaved ? 2 * i + 1 : i + half;
        const T a = y[ia], b = y[ib], si = sign * s[i];
        y[ia] = a * c[i] - b * si;
        y[ib] = b * c[i] + a * si;
      }
    }
  });
}
}  // namespace

template <class T>
void rope_forward(T* x, const T* cos, const T* sin, int64_t n, int heads, int head_dim,
                  int64_t seq_len, int64_t start, bool interleaved, int rotary_dim) {
  if (interleaved)
    rope_rotate<true>(x, cos, sin, n, heads, head_dim, seq_len, start, T(1), rotary_dim);
  else
    rope_rotate<false>(x, cos, sin, n, heads, head_dim, seq_len, start, T(1), rotary_dim);
}

template <class T>
void rope_backward(T* dx, const T* cos, const T* sin, int64_t n, int heads, int head_dim,
                   int64_t seq_len, int64_t start) {
  rope_rotate<false>(dx, cos, sin, n, heads, head_dim, seq_len, start, T(-1));
}

template <class T>
Attention<T>::Attention(const AttentionConfig& c) : c_(c) {
  c_.validate("Attention");
  qd_ = c_.num_heads * c_.head_dim;
  kvd_ = c_.num_kv_heads * c_.head_dim;
  const int64_t d = c_.hidden_size;
  params_.declare("q_proj.weight", {qd_, d});
  params_.declare("k_proj.weight", {kvd_, d});
  params_.declare("v_proj.weight", {kvd_, d});
  params_.declare("o_proj.weight", {d, qd_});
  if (c_.qkv_bias) {
    params_.declare("q_proj.bias", {qd_});
    params_.declare("k_proj.bias", {kvd_});
    params_.declare("v_proj.bias", {kvd_});
  }
  if (c_.qk_norm != QkNorm::None) {
    params_.declare("q_norm.weight", {norm_width(qd_)});
    params_.declare("k_norm.weight", {norm_width(kvd_)});
  }
  params_.allocate();
  cos_.clear();
  sin_.clear();
  rope_table_rows(cos_, sin_, rope_frequencies(c_.head_dim, c_.rope_theta, c_.rope_scaling), 0,
                  c_.max_positions);
}

template <class T>
int64_t Attention<T>::norm_rows(int64_t tokens, int heads) const {
  return c_.qk_norm == QkNorm::PerHead ? tokens * heads : tokens;
}

template <class T>
int64_t Attention<T>::norm_width(int64_t projection) const {
  return c_.qk_norm == QkNorm::PerHead ? int64_t{c_.head_dim} : projection;
}

template <class T>
void Attention<T>::init_weights(Rng& rng, double std) {
  for (const auto& s : params_.specs()) {
    T* v = params_.value(s.name);
    if (s.shape.ndim >= 2)
      rng.fill_normal(v, s.shape.numel(), 0.0, std);
    else  // biases start at 0 (torch's Linear init aside, HF zeroes them), norm weights at 1
      std::fill(v, v + s.shape.numel(), s.name.ends_with("norm.weight") ? T(1) : T(0));
  }
}

namespace {
// y[r, :] += b for every row of y [rows, width].
template <class T>
void add_bias(T* y, const T* b, int64_t rows, int64_t width) {
  parallel_for(rows, rows * width > kParallelMinValues, [&](int64_t r) {
    T* yr = y + r * width;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) yr[j] += b[j];
  });
}

// db += the column sums of dy [rows, width] (threads own column blocks: deterministic).
template <class T>
void add_bias_grad(T* db, const T* dy, int64_t rows, int64_t width) {
  constexpr int64_t kCols = 64;
  const int64_t blocks = (width + kCols - 1) / kCols;
#pragma omp parallel for if (rows * width > kParallelMinValues)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kCols, c1 = std::min(width, c0 + kCols);
    for (int64_t r = 0; r < rows; ++r) {
      const T* dr = dy + r * width;
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) db[j] += dr[j];
    }
  }
}
}  // namespace

template <class T>
void Attention<T>::project(const T* x, int64_t rows, int64_t seq_len, int64_t start, T* q, T* k,
                           T* v, bool save) {
  const int64_t d = c_.hidden_size;
  const int H = c_.num_heads, G = c_.num_kv_heads;
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::Yes, rows, qd_, d, T(1), x, d,
             params_.value("q_proj.weight"), d, T(0), q, qd_);
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::Yes, rows, kvd_, d, T(1), x, d,
             params_.value("k_proj.weight"), d, T(0), k, kvd_);
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::Yes, rows, kvd_, d, T(1), x, d,
             params_.value("v_proj.weight"), d, T(0), v, kvd_);
  if (c_.qkv_bias) {
    add_bias(q, params_.value("q_proj.bias"), rows, qd_);
    add_bias(k, params_.value("k_proj.bias"), rows, kvd_);
    add_bias(v, params_.value("v_proj.bias"), rows, kvd_);
  }
  if (c_.qk_norm != QkNorm::None) {
    const auto uq = static_cast<size_t>(norm_rows(rows, H)),
               uk = static_cast<size_t>(norm_rows(rows, G));
    // The forward keeps the pre-norm values and rstd for the backward; generation does not.
    if (save) {
      qraw_.assign(q, q + rows * qd_);
      kraw_.assign(k, k + rows * kvd_);
    }
    std::vector<T>& rq = save ? rstd_q_ : cached_rstd_q_;
    std::vector<T>& rk = save ? rstd_k_ : cached_rstd_k_;
    grow_to(rq, uq);
    grow_to(rk, uk);
    rmsnorm_forward(q, rq.data(), q, params_.value("q_norm.weight"), norm_rows(rows, H),
                    norm_width(qd_), c_.norm_eps);
    rmsnorm_forward(k, rk.data(), k, params_.value("k_norm.weight"), norm_rows(rows, G),
                    norm_width(kvd_), c_.norm_eps);
  }
  if (c_.rope) {
    // Dynamic NTK: the frequencies follow the length this call reaches (Hugging Face's
    // dynamic_rope_update), so this call's rows are refilled; the other types' tables are fixed.
    if (c_.rope_scaling.type == RopeType::Dynamic)
      rope_table_rows(
          cos_, sin_,
          rope_frequencies(c_.head_dim, c_.rope_theta, c_.rope_scaling, start + seq_len), start,
          seq_len);
    rope_forward(q, cos_.data(), sin_.data(), rows, H, c_.head_dim, seq_len, start);
    rope_forward(k, cos_.data(), sin_.data(), rows, G, c_.head_dim, seq_len, start);
  }
}

template <class T>
void Attention<T>::forward(View<const T> x, int B, int S, View<T> out) {
  MOE_CHECK(B > 0 && S > 0, "Attention::forward: B and S must be positive, got B={} S={}", B, S);
  MOE_REQUIRE(S <= c_.max_positions,
              "Attention::forward: position {} is beyond max_position_embeddings = {}", S - 1,
              c_.max_positions);
  const int64_t n = static_cast<int64_t>(B) * S, d = c_.hidden_size, hd = c_.head_dim;
  const int H = c_.num_heads, G = c_.num_kv_heads, rep = H / G;
  check_shape(x, {n, d}, "Attention::forward: x");
  check_shape(out, {n, d}, "Attention::forward: out");
  B_ = B;
  S_ = S;
  const auto un = static_cast<size_t>(n);
  x_.assign(x.data, x.data + un * d);
  q_.resize(un * qd_);
  k_.resize(un * kvd_);
  v_.resize(un * kvd_);
  o_.resize(un * qd_);
  att_.resize(static_cast<size_t>(B) * H * S * S);

  project(x_.data(), n, S, 0, q_.data(), k_.data(), v_.data(), /*save=*/true);

  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const int64_t tasks = static_cast<int64_t>(B) * H;
  // One task per (sequence, query head); BLAS runs single-threaded inside the region.
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / H, h = task % H, g = h / rep;
    const int64_t row0 = b * S;
    causal_forward(q_.data() + row0 * qd_ + h * hd, k_.data() + row0 * kvd_ + g * hd,
                   v_.data() + row0 * kvd_ + g * hd, int64_t{qd_}, int64_t{kvd_},
                   att_.data() + task * S * S, o_.data() + row0 * qd_ + h * hd, int64_t{S}, hd,
                   scale, c_.causal);
  }
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::Yes, n, d, qd_, T(1), o_.data(), qd_,
             params_.value("o_proj.weight"), qd_, T(0), out.data, d);
}

template <class T>
void Attention<T>::backward(View<const T> dout, View<T> dx) {
  MOE_CHECK(B_ > 0, "Attention::backward: called before forward");
  const int B = B_, S = S_;
  const int64_t n = static_cast<int64_t>(B) * S, d = c_.hidden_size, hd = c_.head_dim;
  const int H = c_.num_heads, G = c_.num_kv_heads, rep = H / G;
  check_shape(dout, {n, d}, "Attention::backward: dout");
  check_shape(dx, {n, d}, "Attention::backward: dx");
  const auto un = static_cast<size_t>(n);
  do_.resize(un * qd_);
  dq_.resize(un * qd_);
  dk_.resize(un * kvd_);
  dv_.resize(un * kvd_);
  const int threads = omp_get_max_threads();
  const int64_t ss = static_cast<int64_t>(S) * S;
  if (scratch_.size() < static_cast<size_t>(threads * ss))
    scratch_.resize(static_cast<size_t>(threads * ss));

  // out = o Wo^T: dWo += dout^T o, do = dout Wo
  const T* wo = params_.value("o_proj.weight");
  gemm_in<T>(c_.compute_dtype, Trans::Yes, Trans::No, d, qd_, n, T(1), dout.data, d, o_.data(), qd_,
             T(1), params_.grad("o_proj.weight"), qd_);
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::No, n, qd_, d, T(1), dout.data, d, wo, qd_, T(0),
             do_.data(), qd_);

  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const int64_t tasks = static_cast<int64_t>(B) * G;
  // One task per (sequence, kv head), so the query heads that share a kv head add into its
  // dK, dV in a fixed order without races.
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / G, g = task % G, row0 = b * S;
    T* dS = scratch_.data() + omp_get_thread_num() * ss;
    T* dK = dk_.data() + row0 * kvd_ + g * hd;
    T* dV = dv_.data() + row0 * kvd_ + g * hd;
    for (int64_t s = 0; s < S; ++s) {
      std::fill(dK + s * kvd_, dK + s * kvd_ + hd, T(0));
      std::fill(dV + s * kvd_, dV + s * kvd_ + hd, T(0));
    }
    for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
      const int64_t qoff = row0 * qd_ + h * hd;
      causal_backward(q_.data() + qoff, k_.data() + row0 * kvd_ + g * hd,
                      v_.data() + row0 * kvd_ + g * hd, att_.data() + (b * H + h) * ss,
                      do_.data() + qoff, int64_t{qd_}, int64_t{kvd_}, dq_.data() + qoff, dK, dV, dS,
                      int64_t{S}, hd, scale, c_.causal);
    }
  }
  if (c_.rope) {
    rope_backward(dq_.data(), cos_.data(), sin_.data(), n, H, c_.head_dim, S, 0);
    rope_backward(dk_.data(), cos_.data(), sin_.data(), n, G, c_.head_dim, S, 0);
  }
  T* dq = dq_.data();  // the gradient of the projection (before any q/k norm)
  T* dk = dk_.data();
  if (c_.qk_norm != QkNorm::None) {
    dqraw_.assign(un * qd_, T(0));  // rmsnorm_backward accumulates into dx
    dkraw_.assign(un * kvd_, T(0));
    rmsnorm_backward(dqraw_.data(), params_.grad("q_norm.weight"), dq_.data(), qraw_.data(),
                     params_.value("q_norm.weight"), rstd_q_.data(), norm_rows(n, H),
                     norm_width(qd_));
    rmsnorm_backward(dkraw_.data(), params_.grad("k_norm.weight"), dk_.data(), kraw_.data(),
                     params_.value("k_norm.weight"), rstd_k_.data(), norm_rows(n, G),
                     norm_width(kvd_));
    dq = dqraw_.data();
    dk = dkraw_.data();
  }
  if (c_.qkv_bias) {
    add_bias_grad(params_.grad("q_proj.bias"), dq, n, qd_);
    add_bias_grad(params_.grad("k_proj.bias"), dk, n, kvd_);
    add_bias_grad(params_.grad("v_proj.bias"), dv_.data(), n, kvd_);
  }

  // q = x Wq^T etc.: dW += dq^T x, dx = dq Wq + dk Wk + dv Wv
  const T* wq = params_.value("q_proj.weight");
  const T* wk = params_.value("k_proj.weight");
  const T* wv = params_.value("v_proj.weight");
  gemm_in<T>(c_.compute_dtype, Trans::Yes, Trans::No, qd_, d, n, T(1), dq, qd_, x_.data(), d, T(1),
             params_.grad("q_proj.weight"), d);
  gemm_in<T>(c_.compute_dtype, Trans::Yes, Trans::No, kvd_, d, n, T(1), dk, kvd_, x_.data(), d,
             T(1), params_.grad("k_proj.weight"), d);
  gemm_in<T>(c_.compute_dtype, Trans::Yes, Trans::No, kvd_, d, n, T(1), dv_.data(), kvd_, x_.data(),
             d, T(1), params_.grad("v_proj.weight"), d);
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::No, n, d, qd_, T(1), dq, qd_, wq, d, T(0), dx.data,
             d);
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::No, n, d, kvd_, T(1), dk, kvd_, wk, d, T(1),
             dx.data, d);
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::No, n, d, kvd_, T(1), dv_.data(), kvd_, wv, d,
             T(1), dx.data, d);
}

// p[lo..len) = softmax over p[lo..len) and the logit `sink` (dropped: these sum to under 1),
// the rest of p[0..width) = 0: a sliding layer's row with gpt-oss's attention sink.
template <class T>
void windowed_softmax_row(T* p, int64_t lo, int64_t len, int64_t width, T sink) {
  T mx = sink;
  for (int64_t j = lo; j < len; ++j) mx = std::max(mx, p[j]);
  double sum = std::exp(static_cast<double>(sink - mx));
#pragma omp simd
  for (int64_t j = lo; j < len; ++j) p[j] = exp_fast(p[j] - mx);
#pragma omp simd reduction(+ : sum)
  for (int64_t j = lo; j < len; ++j) sum += static_cast<double>(p[j]);
  const T inv = static_cast<T>(1.0 / sum);
  for (int64_t j = lo; j < len; ++j) p[j] *= inv;
  std::fill(p, p + lo, T(0));
  std::fill(p + len, p + width, T(0));
}

template <class T>
void attend_cached(const T* q, int64_t ldq, int q_dim, const T* k, int64_t ldk, int64_t k_head,
                   const T* v, int64_t ldv, int64_t v_head, int v_dim, int B, int n, int H, int rep,
                   int64_t L, int64_t cap, T scale, T* o, int64_t ldo, std::vector<T>& scratch,
                   int window, const T* sinks) {
  const int64_t total = L + n;
  const int threads = omp_get_max_threads();
  // Scores of one (sequence, head) [n, total]; sized for the full capacity so generating one
  // token at a time after the prompt never grows it.
  const int64_t per = static_cast<int64_t>(n) * cap;
  if (scratch.size() < static_cast<size_t>(threads * per))
    scratch.resize(static_cast<size_t>(threads * per));
  const int64_t tasks = static_cast<int64_t>(B) * H;
#pragma omp parallel for schedule(static) if (tasks > 1 && \
                                              tasks * n * total * q_dim > kParallelMinValues)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / H, h = task % H, g = h / rep;
    T* P = scratch.data() + omp_get_thread_num() * per;
    const T* K = k + b * cap * ldk + g * k_head;
    const T* V = v + b * cap * ldv + g * v_head;
    gemm<T>(Trans::No, Trans::Yes, n, total, q_dim, scale, q + b * n * ldq + h * q_dim, ldq, K, ldk,
            T(0), P, total);
    if (window <= 0 && !sinks) {
      for (int64_t t = 0; t < n; ++t) masked_softmax_row(P + t * total, L + t + 1, total);
    } else {  // without sinks the sink logit is -inf: exp() adds nothing to the denominator
      const T sink = sinks ? sinks[h] : -std::numeric_limits<T>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const int64_t len = L + t + 1, lo = window > 0 ? std::max<int64_t>(0, len - window) : 0;
        windowed_softmax_row(P + t * total, lo, len, total, sink);
      }
    }
    gemm<T>(Trans::No, Trans::No, n, v_dim, total, T(1), P, total, V, ldv, T(0),
            o + b * n * ldo + h * v_dim, ldo);
  }
}

// cached_attention on a ring cache of W = window slots (position p in slot p % W). One new token
// (decode): its k, v overwrite the oldest slot and it attends to every filled slot, the window
// exactly; the softmax and the weighted sum do not depend on the order of the rows. More tokens:
// the last W - 1 cached positions and the new rows are staged in position order and attended
// with the window mask, then the last min(n, W) new rows go into the ring.
template <class T>
void ring_attention(const T* q, const T* k, const T* v, int B, int n, int H, int G, int hd,
                    KvCache<T>& cache, T* o, std::vector<T>& scratch, int window, const T* sinks,
                    T scale) {
  const int64_t W = cache.window, L = cache.length, qd = static_cast<int64_t>(H) * hd,
                kvd = static_cast<int64_t>(G) * hd;
  MOE_CHECK(window == W,
            "cached attention: a ring cache of {} slots serves a window of {} positions, not {}", W,
            W, window);
  auto put = [&](int64_t b, int64_t t, int64_t pos) {  // new row (b, t) at position pos
    const size_t src = static_cast<size_t>((b * n + t) * kvd);
    const size_t dst = static_cast<size_t>((b * W + pos % W) * kvd);
    std::copy_n(k + src, kvd, cache.k.data() + dst);
    std::copy_n(v + src, kvd, cache.v.data() + dst);
  };
  if (n == 1) {
    for (int64_t b = 0; b < B; ++b) put(b, 0, L);
    const int64_t rows = std::min(L + 1, W);
    attend_cached<T>(q, qd, hd, cache.k.data(), kvd, hd, cache.v.data(), kvd, hd, hd, B, 1, H,
                     H / G, rows - 1, W, scale, o, qd, scratch, 0, sinks);
  } else {
    const int64_t old = std::min(L, W - 1), rows = old + n;
    const auto staged = static_cast<size_t>(B * rows * kvd);
    if (cache.stage_k.size() < staged) {
      cache.stage_k.resize(staged);
      cache.stage_v.resize(staged);
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < old; ++j) {
        const size_t src = static_cast<size_t>((b * W + (L - old + j) % W) * kvd);
        const size_t dst = static_cast<size_t>((b * rows + j) * kvd);
        std::copy_n(cache.k.data() + src, kvd, cache.stage_k.data() + dst);
        std::copy_n(cache.v.data() + src, kvd, cache.stage_v.data() + dst);
      }
      const size_t src = static_cast<size_t>(b * n * kvd);
      const size_t dst = static_cast<size_t>((b * rows + old) * kvd);
      std::copy_n(k + src, n * kvd, cache.stage_k.data() + dst);
      std::copy_n(v + src, n * kvd, cache.stage_v.data() + dst);
    }
    attend_cached<T>(q, qd, hd, cache.stage_k.data(), kvd, hd, cache.stage_v.data(), kvd, hd, hd, B,
                     n, H, H / G, old, rows, scale, o, qd, scratch, window, sinks);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = std::max<int64_t>(0, n - W); t < n; ++t) put(b, t, L + t);
  }
  cache.length = static_cast<int>(L + n);
}

template <class T>
void cached_attention(const T* q, const T* k, const T* v, int B, int n, int H, int G, int hd,
                      KvCache<T>& cache, T* o, std::vector<T>& scratch, int window,
                      const T* sinks) {
  const int64_t qd = static_cast<int64_t>(H) * hd, kvd = static_cast<int64_t>(G) * hd;
  MOE_CHECK(B > 0 && n > 0, "cached attention: B and n must be positive, got B={} n={}", B, n);
  MOE_CHECK(cache.batch == B && cache.kv_dim == kvd &&
                cache.k.size() == static_cast<size_t>(cache.batch) * cache.capacity * kvd &&
                cache.v.size() == cache.k.size(),
            "cached attention: KV cache was reset for batch {} and kv_dim {}, the call needs "
            "batch {} and kv_dim {}",
            cache.batch, cache.kv_dim, B, kvd);
  const int64_t L = cache.length, total = L + n, cap = cache.capacity;
  const auto scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  if (cache.window > 0) {
    ring_attention(q, k, v, B, n, H, G, hd, cache, o, scratch, window, sinks, scale);
    return;
  }
  MOE_CHECK(total <= cap,
            "cached attention: KV cache overflow: {} cached + {} new tokens exceed its capacity {}",
            L, n, cap);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t) {
      const size_t src = static_cast<size_t>((b * n + t) * kvd);
      const size_t dst = static_cast<size_t>((b * cap + L + t) * kvd);
      std::copy_n(k + src, kvd, cache.k.data() + dst);
      std::copy_n(v + src, kvd, cache.v.data() + dst);
    }
  attend_cached<T>(q, qd, hd, cache.k.data(), kvd, hd, cache.v.data(), kvd, hd, hd, B, n, H, H / G,
                   L, cap, scale, o, qd, scratch, window, sinks);
  cache.length = static_cast<int>(total);
}

template <class T>
void Attention<T>::forward_cached(View<const T> x, int B, int n, KvCache<T>& cache, View<T> out) {
  MOE_CHECK(c_.causal && c_.rope, "Attention::forward_cached: only the causal RoPE decoder caches");
  MOE_CHECK(B > 0 && n > 0, "Attention::forward_cached: B and n must be positive, got B={} n={}", B,
            n);
  const int64_t L = cache.length, total = L + n;
  MOE_CHECK(cache.window > 0 || total <= cache.capacity,
            "Attention::forward_cached: KV cache overflow: {} cached + {} new tokens exceed its "
            "capacity {}",
            L, n, cache.capacity);
  MOE_REQUIRE(total <= c_.max_positions,
              "Attention::forward_cached: position {} is beyond max_position_embeddings = {}",
              total - 1, c_.max_positions);
  const int64_t rows = static_cast<int64_t>(B) * n, d = c_.hidden_size;
  const int H = c_.num_heads, G = c_.num_kv_heads;
  check_shape(x, {rows, d}, "Attention::forward_cached: x");
  check_shape(out, {rows, d}, "Attention::forward_cached: out");
  const auto ur = static_cast<size_t>(rows);
  cq_.resize(ur * qd_);
  ck_.resize(ur * kvd_);
  cv_.resize(ur * kvd_);
  co_.resize(ur * qd_);
  project(x.data, rows, n, L, cq_.data(), ck_.data(), cv_.data(), /*save=*/false);
  cached_attention(cq_.data(), ck_.data(), cv_.data(), B, n, H, G, c_.head_dim, cache, co_.data(),
                   scratch_);
  gemm_in<T>(c_.compute_dtype, Trans::No, Trans::Yes, rows, d, qd_, T(1), co_.data(), qd_,
             params_.value("o_proj.weight"), qd_, T(0), out.data, d);
}

template struct KvCache<float>;
template struct KvCache<double>;
template class Attention<float>;
template class Attention<double>;
template void attend_cached<float>(const float*, int64_t, int, const float*, int64_t, int64_t,
                                   const float*, int64_t, int64_t, int, int, int, int, int, int64_t,
                                   int64_t, float, float*, int64_t, std::vector<float>&, int,
                                   const float*);
template void attend_cached<double>(const double*, int64_t, int, const double*, int64_t, int64_t,
                                    const double*, int64_t, int64_t, int, int, int, int, int,
                                    int64_t, int64_t, double, double*, int64_t,
                                    std::vector<double>&, int, const double*);
template void cached_attention<float>(const float*, const float*, const float*, int, int, int, int,
                                      int, KvCache<float>&, float*, std::vector<float>&, int,
                                      const float*);
template void cached_attention<double>(const double*, const double*, const double*, int, int, int,
                                       int, int, KvCache<double>&, double*, std::vector<double>&,
                                       int, const double*);
template void rope_tables<float>(std::vector<float>&, std::vector<float>&, int, int, double);
template void rope_tables<double>(std::vector<double>&, std::vector<double>&, int, int, double);
template void rope_forward<float>(float*, const float*, const float*, int64_t, int, int, int64_t,
                                  int64_t, bool, int);
template void rope_forward<double>(double*, const double*, const double*, int64_t, int, int,
                                   int64_t, int64_t, bool, int);
template void rope_backward<float>(float*, const float*, const float*, int64_t, int, int, int64_t,
                                   int64_t);
template void rope_backward<double>(double*, const double*, const double*, int64_t, int, int,
                                    int64_t, int64_t);

}  // namespace moe
