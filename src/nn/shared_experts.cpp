#include "moe/shared_experts.h"

#include <cmath>
#include <type_traits>

#include "moe/error.h"
#include "moe/gemm.h"

namespace moe {

template <class T>
SharedExperts<T>::SharedExperts(const MoeConfig& c)
    : shape_{c.hidden_act, c.hidden_size, c.shared_hidden(), c.compute_dtype},
      gated_(c.shared_expert_gate) {}

template <class T>
void SharedExperts<T>::bind(const ParamSet<T>& params) {
  w1_ = params.offset_or_none("shared.w1");
  w3_ = params.offset_or_none("shared.w3");
  w2_ = params.offset_or_none("shared.w2");
  wg_ = params.offset_or_none("shared.gate");
}

template <class T>
void SharedExperts<T>::reserve(int64_t n) {
  if (shape_.F <= 0) return;
  rows_n_ = std::max(rows_n_, n);
  rows_.grow(shape_, rows_n_, FfnRowBuffers<T>::Use::Saved);
  for (auto* v : {&y_, &dy_, &dxs_}) grow_to(*v, n * shape_.d);
  grow_to(gate_, n);
}

template <class T>
void SharedExperts<T>::forward(const ParamSet<T>& params, int64_t n, const T* x, T* out,
                               const FfnViews* views) {
  const T* v = params.values().data();
  const int64_t d = shape_.d;
  if (views) {
    // if constexpr: the views hold float weights; the double instantiation never gets them.
    if constexpr (std::is_same_v<T, float>) {
      MOE_CHECK(shape_.glu(), "SharedExperts::forward: weight views need SwiGLU");
      const int64_t nf = n * shape_.F;
      const FfnRows<T> r = rows_.grow(shape_, n, FfnRowBuffers<T>::Use::Forward);
      linear_forward(x, n, views->w1, r.h1);
      linear_forward(x, n, views->w3, r.h3);
      for (int64_t i = 0; i < nf; ++i) r.h1[i] = r.h1[i] / (1.0f + std::exp(-r.h1[i])) * r.h3[i];
      linear_forward(r.h1, n, views->w2, y_.data());
    } else {
      MOE_CHECK(false, "SharedExperts::forward: weight views need float");
    }
  } else {
    const FfnWeights<const T> w{v + w1_, shape_.glu() ? v + w3_ : nullptr, v + w2_};
    MOE_CHECK(n <= rows_n_, "SharedExperts::forward: {} tokens, {} reserved", n, rows_n_);
    ffn_forward<T>(shape_, n, x, w, rows_.grow(shape_, rows_n_, FfnRowBuffers<T>::Use::Saved),
                   y_.data());
  }
  T* gate = gate_.data();
  if (gated_) {
    gemm<T>(Trans::No, Trans::Yes, n, 1, d, T(1), x, d, v + wg_, d, T(0), gate, 1);
    for (int64_t t = 0; t < n; ++t) gate[t] = T(1) / (T(1) + std::exp(-gate[t]));
  }
  const T* y = y_.data();
  for (int64_t t = 0; t < n; ++t) {
    const T g = gated_ ? gate[t] : T(1);
    for (int64_t j = 0; j < d; ++j) out[t * d + j] += g * y[t * d + j];
  }
}

template <class T>
void SharedExperts<T>::backward(ParamSet<T>& params, int64_t n, const T* x, const T* dout, T* dx,
                                const FfnRows<T>& scratch) {
  const T* v = params.values().data();
  T* g = params.grads().data();
  const int64_t d = shape_.d;
  const bool glu = shape_.glu();
  const T* y = y_.data();
  const T* dys = dout;
  if (gated_) {
    const T* wg = v + wg_;
    T* dwg = g + wg_;
    T* dy = dy_.data();
    for (int64_t t = 0; t < n; ++t) {
      const T gt = gate_[t];
      T dg = 0;
      for (int64_t j = 0; j < d; ++j) {
        dg += dout[t * d + j] * y[t * d + j];
        dy[t * d + j] = gt * dout[t * d + j];
      }
      const T dpre = dg * gt * (T(1) - gt);
      for (int64_t j = 0; j < d; ++j) {
        dwg[j] += dpre * x[t * d + j];
        dx[t * d + j] += dpre * wg[j];
      }
    }
    dys = dy;
  }
  const FfnWeights<const T> w{v + w1_, glu ? v + w3_ : nullptr, v + w2_};
  const FfnWeights<T> dw{g + w1_, glu ? g + w3_ : nullptr, g + w2_};
  T* dxs = dxs_.data();
  ffn_backward<T>(shape_, n, x, w, rows_.grow(shape_, rows_n_, FfnRowBuffers<T>::Use::Saved), dys,
                  dxs, dw, scratch);
  for (int64_t i = 0; i < n * d; ++i) dx[i] += dxs[i];
}

template <class T>
void declare_shared_expert_weights(ParamSet<T>& params, const MoeConfig& c) {
  const int64_t Hs = c.shared_hidden(), d = c.hidden_size;
  if (Hs <= 0) return;
  params.declare("shared.w1", {Hs, d});
  if (c.hidden_act == Activation::SwiGLU) params.declare("shared.w3", {Hs, d});
  params.declare("shared.w2", {d, Hs});
  if (c.shared_expert_gate) params.declare("shared.gate", {1, d});
}

template class SharedExperts<float>;
template class SharedExperts<double>;
template void declare_shared_expert_weights<float>(ParamSet<float>&, const MoeConfig&);
template void declare_shared_expert_weights<double>(ParamSet<double>&, const MoeConfig&);

}  // namespace moe
