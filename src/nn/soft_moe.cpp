// Soft MoE forward and backward (soft_moe.h has the math). Slot rows live expert-major,
// row (e * G + g) * p + j for slot j of expert e in group g, so the GroupedExperts run each
// expert over its contiguous G*p rows, exactly as the sparse layer runs its kept rows.
#include "moe/soft_moe.h"

#include <algorithm>
#include <cmath>

#include "moe/gemm.h"

namespace moe {

template <class T>
SoftMoe<T>::SoftMoe(const MoeConfig& c, int slots_per_expert)
    : d_(c.hidden_size),
      F_(c.moe_intermediate_size),
      E_(c.num_experts),
      p_(slots_per_expert),
      S_(c.num_experts * slots_per_expert),
      act_(c.hidden_act),
      experts_({c.hidden_act, c.hidden_size, c.moe_intermediate_size}, c.num_experts),
      offsets_(static_cast<size_t>(c.num_experts + 1), 0) {
  MOE_CHECK(d_ > 0 && F_ > 0 && E_ > 0,
            "SoftMoe: hidden_size, moe_intermediate_size and num_experts must be positive");
  MOE_CHECK(p_ > 0, "SoftMoe: slots_per_expert must be positive, got {}", p_);
  params_.declare("router.phi", {d_, S_});
  declare_expert_weights(params_, E_, F_, d_, act_);
  params_.allocate();
  experts_.bind(params_);
}

template <class T>
void SoftMoe<T>::init_weights(Rng& rng, double std) {
  rng.fill_normal(params_.values().data(), params_.numel(), 0.0, std);
}

template <class T>
double SoftMoe<T>::active_macs_per_token() const {
  const double m = group_ > 0 ? group_ : 1.0;
  const double ffn = static_cast<double>(d_) * F_ * (act_ == Activation::SwiGLU ? 3 : 2);
  return S_ / m * ffn + 3.0 * S_ * d_;
}

template <class T>
void SoftMoe<T>::forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt) {
  MOE_CHECK(x.ndim() == 2 && x.size(1) == d_ && x.contiguous(),
            "SoftMoe::forward: x has shape {}, expected [T,{}]", x.shape.str(), d_);
  tokens_ = x.size(0);
  check_shape(out, {tokens_, d_}, "SoftMoe::forward: out");
  if (opt.check_finite) check_finite(x, "SoftMoe::forward: x");
  m_ = group_ > 0 ? group_ : tokens_;
  MOE_CHECK(tokens_ % m_ == 0,
            "SoftMoe::forward: {} tokens are not a multiple of the group size {}", tokens_, m_);
  groups_ = tokens_ / m_;
  const int64_t T_ = tokens_, m = m_, S = S_, d = d_, G = groups_, rows = G * S;
  x_.assign(x.data, x.data + T_ * d);
  grow_to(L_, T_ * S);
  grow_to(D_, T_ * S);
  grow_to(C_, T_ * S);
  grow_to(xs_, rows * d);
  grow_to(ys_, rows * d);
  experts_.reserve(rows);
  grow_to(gs_, 2 * S * d);
  const T* phi = params_.value("router.phi");
  auto slot_row = [&](int64_t g, int64_t s) { return ((s / p_) * G + g) * p_ + s % p_; };

  for (int64_t g = 0; g < G; ++g) {
    const T* X = x_.data() + g * m * d;
    T* L = L_.data() + g * m * S;
    T* D = D_.data() + g * m * S;
    T* C = C_.data() + g * m * S;
    gemm<T>(Trans::No, Trans::No, m, S, d, T(1), X, d, phi, S, T(0), L, S);
    // Combine: softmax over the slots of each token (row).
    for (int64_t i = 0; i < m; ++i) {
      const T* l = L + i * S;
      T mx = *std::max_element(l, l + S);
      double sum = 0;
      for (int64_t s = 0; s < S; ++s) sum += std::exp(static_cast<double>(l[s] - mx));
      for (int64_t s = 0; s < S; ++s)
        C[i * S + s] = static_cast<T>(std::exp(static_cast<double>(l[s] - mx)) / sum);
    }
    // Dispatch: softmax over the tokens of each slot (column).
    for (int64_t s = 0; s < S; ++s) {
      T mx = L[s];
      for (int64_t i = 1; i < m; ++i) mx = std::max(mx, L[i * S + s]);
      double sum = 0;
      for (int64_t i = 0; i < m; ++i) sum += std::exp(static_cast<double>(L[i * S + s] - mx));
      for (int64_t i = 0; i < m; ++i)
        D[i * S + s] = static_cast<T>(std::exp(static_cast<double>(L[i * S + s] - mx)) / sum);
    }
    // Slot inputs Xs = D^T X, stored expert-major.
    gemm<T>(Trans::Yes, Trans::No, S, d, m, T(1), D, S, X, d, T(0), gs_.data(), d);
    for (int64_t s = 0; s < S; ++s)
      std::copy_n(gs_.data() + s * d, d, xs_.data() + slot_row(g, s) * d);
  }

  for (int e = 0; e <= E_; ++e) offsets_[e] = e * G * p_;
  experts_.forward(params_, offsets_.data(), xs_.data(), ys_.data());

  for (int64_t g = 0; g < G; ++g) {
    for (int64_t s = 0; s < S; ++s)
      std::copy_n(ys_.data() + slot_row(g, s) * d, d, gs_.data() + s * d);
    gemm<T>(Trans::No, Trans::No, m, d, S, T(1), C_.data() + g * m * S, S, gs_.data(), d, T(0),
            out.data + g * m * d, d);
  }
}

template <class T>
void SoftMoe<T>::backward(View<const T> dout, View<T> dx, double) {
  MOE_CHECK(tokens_ > 0, "SoftMoe::backward: called before forward");
  check_shape(dout, {tokens_, d_}, "SoftMoe::backward: dout");
  check_shape(dx, {tokens_, d_}, "SoftMoe::backward: dx");
  const int64_t m = m_, S = S_, d = d_, G = groups_, rows = G * S;
  grow_to(dys_, rows * d);
  grow_to(dxs_, rows * d);
  grow_to(dC_, m * S);
  grow_to(dD_, m * S);
  grow_to(dL_, m * S);
  const T* phi = params_.value("router.phi");
  T* dphi = params_.grad("router.phi");
  T* gs = gs_.data();
  T* gs2 = gs_.data() + S * d;
  auto slot_row = [&](int64_t g, int64_t s) { return ((s / p_) * G + g) * p_ + s % p_; };

  // Y = C Ys: dYs = C^T dY (scattered expert-major); dC = dY Ys^T is recomputed per group below.
  for (int64_t g = 0; g < G; ++g) {
    gemm<T>(Trans::Yes, Trans::No, S, d, m, T(1), C_.data() + g * m * S, S, dout.data + g * m * d,
            d, T(0), gs, d);
    for (int64_t s = 0; s < S; ++s) std::copy_n(gs + s * d, d, dys_.data() + slot_row(g, s) * d);
  }
  experts_.backward(params_, offsets_.data(), xs_.data(), dys_.data(), dxs_.data());

  for (int64_t g = 0; g < G; ++g) {
    const T* X = x_.data() + g * m * d;
    const T* D = D_.data() + g * m * S;
    const T* C = C_.data() + g * m * S;
    const T* dY = dout.data + g * m * d;
    T* dX = dx.data + g * m * d;
    for (int64_t s = 0; s < S; ++s) {
      std::copy_n(ys_.data() + slot_row(g, s) * d, d, gs + s * d);
      std::copy_n(dxs_.data() + slot_row(g, s) * d, d, gs2 + s * d);
    }
    gemm<T>(Trans::No, Trans::Yes, m, S, d, T(1), dY, d, gs, d, T(0), dC_.data(), S);
    // Xs = D^T X: dX = D dXs, dD = X dXs^T.
    gemm<T>(Trans::No, Trans::No, m, d, S, T(1), D, S, gs2, d, T(0), dX, d);
    gemm<T>(Trans::No, Trans::Yes, m, S, d, T(1), X, d, gs2, d, T(0), dD_.data(), S);
    // Both softmaxes share the logits: dL = C (dC - rowsum(C dC)) + D (dD - colsum(D dD)).
    for (int64_t i = 0; i < m; ++i) {
      double dot = 0;
      for (int64_t s = 0; s < S; ++s) dot += static_cast<double>(C[i * S + s]) * dC_[i * S + s];
      for (int64_t s = 0; s < S; ++s)
        dL_[i * S + s] = C[i * S + s] * (dC_[i * S + s] - static_cast<T>(dot));
    }
    for (int64_t s = 0; s < S; ++s) {
      double dot = 0;
      for (int64_t i = 0; i < m; ++i) dot += static_cast<double>(D[i * S + s]) * dD_[i * S + s];
      for (int64_t i = 0; i < m; ++i)
        dL_[i * S + s] += D[i * S + s] * (dD_[i * S + s] - static_cast<T>(dot));
    }
    // L = X Phi: dX += dL Phi^T, dPhi += X^T dL.
    gemm<T>(Trans::No, Trans::Yes, m, d, S, T(1), dL_.data(), S, phi, S, T(1), dX, d);
    gemm<T>(Trans::Yes, Trans::No, d, S, m, T(1), X, d, dL_.data(), S, T(1), dphi, S);
  }
}

template class SoftMoe<float>;
template class SoftMoe<double>;

}  // namespace moe
