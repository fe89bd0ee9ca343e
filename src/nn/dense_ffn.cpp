#include "moe/dense_ffn.h"

#include <algorithm>
#include <type_traits>

namespace moe {

template <class T>
DenseFfn<T>::DenseFfn(int hidden_size, int intermediate_size, Activation act, ComputeDtype dtype)
    : d_(hidden_size), F_(intermediate_size), act_(act), dtype_(dtype) {
  MOE_CHECK((std::is_same_v<T, float>) || dtype == ComputeDtype::Float32,
            "DenseFfn: compute_dtype \"bfloat16\" needs DenseFfn<float> (fp32 master weights)");
  MOE_CHECK(hidden_size > 0, "DenseFfn: hidden_size must be positive, got {}", hidden_size);
  MOE_CHECK(intermediate_size > 0, "DenseFfn: intermediate_size must be positive, got {}",
            intermediate_size);
  params_.declare("ffn.w1", {F_, d_});
  if (act_ == Activation::SwiGLU) params_.declare("ffn.w3", {F_, d_});
  params_.declare("ffn.w2", {d_, F_});
  params_.allocate();
}

template <class T>
void DenseFfn<T>::init_weights(Rng& rng, double std) {
  rng.fill_normal(params_.values().data(), params_.numel(), 0.0, std);
}

template <class T>
double DenseFfn<T>::active_macs_per_token() const {
  return static_cast<double>(d_) * F_ * (act_ == Activation::SwiGLU ? 3 : 2);
}

template <class T>
FfnWeights<const T> DenseFfn<T>::weights() {
  const bool glu = act_ == Activation::SwiGLU;
  return {params_.value("ffn.w1"), glu ? params_.value("ffn.w3") : nullptr,
          params_.value("ffn.w2")};
}

template <class T>
void DenseFfn<T>::forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt) {
  MOE_CHECK(x.ndim() == 2 && x.size(1) == d_ && x.contiguous(),
            "DenseFfn::forward: x has shape {}, expected [T,{}]", x.shape.str(), d_);
  tokens_ = x.size(0);
  check_shape(out, {tokens_, d_}, "DenseFfn::forward: out");
  if (opt.check_finite) check_finite(x, "DenseFfn::forward: x");
  const auto n = static_cast<size_t>(tokens_);
  x_.assign(x.data, x.data + n * d_);
  ffn_forward<T>(shape(), tokens_, x_.data(), weights(),
                 saved_.grow(shape(), tokens_, FfnRowBuffers<T>::Use::Saved), out.data);
}

template <class T>
void DenseFfn<T>::backward(View<const T> dout, View<T> dx, double) {
  check_shape(dout, {tokens_, d_}, "DenseFfn::backward: dout");
  check_shape(dx, {tokens_, d_}, "DenseFfn::backward: dx");
  const bool glu = act_ == Activation::SwiGLU;
  const FfnWeights<T> grad{params_.grad("ffn.w1"), glu ? params_.grad("ffn.w3") : nullptr,
                           params_.grad("ffn.w2")};
  using Use = typename FfnRowBuffers<T>::Use;
  ffn_backward<T>(shape(), tokens_, x_.data(), weights(), saved_.grow(shape(), tokens_, Use::Saved),
                  dout.data, dx.data, grad, scratch_.grow(shape(), tokens_, Use::Scratch));
}

template class DenseFfn<float>;
template class DenseFfn<double>;

}  // namespace moe
