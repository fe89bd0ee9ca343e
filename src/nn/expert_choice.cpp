// Expert-choice routing forward and backward (expert_choice.h has the math).
#include "moe/expert_choice.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "moe/gemm.h"

namespace moe {

template <class T>
ExpertChoice<T>::ExpertChoice(const MoeConfig& c)
    : d_(c.hidden_size),
      F_(c.moe_intermediate_size),
      E_(c.num_experts),
      cf_(c.capacity_factor),
      act_(c.hidden_act),
      experts_({c.hidden_act, c.hidden_size, c.moe_intermediate_size}, c.num_experts),
      offsets_(static_cast<size_t>(c.num_experts + 1), 0) {
  MOE_CHECK(d_ > 0 && F_ > 0 && E_ > 0,
            "ExpertChoice: hidden_size, moe_intermediate_size and num_experts must be positive");
  MOE_CHECK(cf_ > 0, "ExpertChoice: capacity_factor must be positive (experts per token), got {}",
            cf_);
  params_.declare("router.weight", {E_, d_});
  declare_expert_weights(params_, E_, F_, d_, act_);
  params_.allocate();
  experts_.bind(params_);
}

template <class T>
void ExpertChoice<T>::init_weights(Rng& rng, double std) {
  rng.fill_normal(params_.values().data(), params_.numel(), 0.0, std);
}

template <class T>
double ExpertChoice<T>::active_macs_per_token() const {
  const double ffn = static_cast<double>(d_) * F_ * (act_ == Activation::SwiGLU ? 3 : 2);
  return cf_ * ffn + static_cast<double>(d_) * E_;
}

template <class T>
void ExpertChoice<T>::forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt) {
  MOE_CHECK(x.ndim() == 2 && x.size(1) == d_ && x.contiguous(),
            "ExpertChoice::forward: x has shape {}, expected [T,{}]", x.shape.str(), d_);
  tokens_ = x.size(0);
  check_shape(out, {tokens_, d_}, "ExpertChoice::forward: out");
  if (opt.check_finite) check_finite(x, "ExpertChoice::forward: x");
  m_ = group_ > 0 ? group_ : tokens_;
  MOE_CHECK(tokens_ % m_ == 0,
            "ExpertChoice::forward: {} tokens are not a multiple of the group size {}", tokens_,
            m_);
  groups_ = tokens_ / m_;
  // Same operation order as the reference: ceil((cf * m) / E).
  C_ = static_cast<int64_t>(std::ceil(cf_ * static_cast<double>(m_) / E_));
  C_ = std::clamp<int64_t>(C_, 1, m_);
  const int64_t T_ = tokens_, d = d_, E = E_, G = groups_, m = m_, C = C_, rows = E * G * C;
  x_.assign(x.data, x.data + T_ * d);
  grow_to(z_, T_ * E);
  grow_to(s_, T_ * E);
  grow_to(gate_, rows);
  grow_to(idx_, rows);
  grow_to(xp_, rows * d);
  grow_to(y_, rows * d);
  experts_.reserve(rows);
  grow_to(order_, m);
  taken_.assign(static_cast<size_t>(T_), 0);

  gemm<T>(Trans::No, Trans::Yes, T_, E, d, T(1), x_.data(), d, params_.value("router.weight"), d,
          T(0), z_.data(), E);
  for (int64_t t = 0; t < T_; ++t) {
    const T* z = z_.data() + t * E;
    const T mx = *std::max_element(z, z + E);
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(z[e] - mx));
    for (int64_t e = 0; e < E; ++e)
      s_[t * E + e] = static_cast<T>(std::exp(static_cast<double>(z[e] - mx)) / sum);
  }
  for (int64_t e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g) {
      std::iota(order_.begin(), order_.begin() + m, 0);
      const T* s = s_.data() + g * m * E + e;
      std::partial_sort(order_.begin(), order_.begin() + C, order_.begin() + m,
                        [&](int32_t a, int32_t b) {
                          return s[a * E] > s[b * E] || (s[a * E] == s[b * E] && a < b);
                        });
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = (e * G + g) * C + c, t = g * m + order_[c];
        idx_[r] = static_cast<int32_t>(t);
        gate_[r] = s_[t * E + e];
        ++taken_[t];
        std::copy_n(x_.data() + t * d, d, xp_.data() + r * d);
      }
    }

  for (int e = 0; e <= E_; ++e) offsets_[e] = e * G * C;
  experts_.forward(params_, offsets_.data(), xp_.data(), y_.data());
  // Combine in row order (expert-major), so every token's sum runs in a fixed order.
  std::fill(out.data, out.data + T_ * d, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out.data + idx_[r] * d;
    const T g = gate_[r];
    const T* y = y_.data() + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] += g * y[j];
  }
}

template <class T>
void ExpertChoice<T>::backward(View<const T> dout, View<T> dx, double) {
  MOE_CHECK(tokens_ > 0, "ExpertChoice::backward: called before forward");
  check_shape(dout, {tokens_, d_}, "ExpertChoice::backward: dout");
  check_shape(dx, {tokens_, d_}, "ExpertChoice::backward: dx");
  const int64_t T_ = tokens_, d = d_, E = E_, G = groups_, C = C_, rows = E * G * C;
  grow_to(dy_, rows * d);
  grow_to(dxp_, rows * d);
  ds_.assign(static_cast<size_t>(T_ * E), T(0));
  grow_to(dz_, T_ * E);
  // out[t] += g * y: dy = g * dout[t], dg = dout[t] . y (each (t, e) is one row at most).
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = idx_[r], e = r / (G * C);
    const T* go = dout.data + t * d;
    const T* y = y_.data() + r * d;
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) {
      dy_[r * d + j] = gate_[r] * go[j];
      dot += static_cast<double>(go[j]) * y[j];
    }
    ds_[t * E + e] += static_cast<T>(dot);
  }
  experts_.backward(params_, offsets_.data(), xp_.data(), dy_.data(), dxp_.data());
  std::fill(dx.data, dx.data + T_ * d, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    T* o = dx.data + idx_[r] * d;
    const T* g = dxp_.data() + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] += g[j];
  }
  // Softmax backward: dz = s * (ds - sum_e s ds).
  for (int64_t t = 0; t < T_; ++t) {
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += static_cast<double>(s_[t * E + e]) * ds_[t * E + e];
    for (int64_t e = 0; e < E; ++e)
      dz_[t * E + e] = s_[t * E + e] * (ds_[t * E + e] - static_cast<T>(dot));
  }
  gemm<T>(Trans::Yes, Trans::No, E, d, T_, T(1), dz_.data(), E, x_.data(), d, T(1),
          params_.grad("router.weight"), d);
  gemm<T>(Trans::No, Trans::No, T_, d, E, T(1), dz_.data(), E, params_.value("router.weight"), d,
          T(1), dx.data, d);
}

template class ExpertChoice<float>;
template class ExpertChoice<double>;

}  // namespace moe
