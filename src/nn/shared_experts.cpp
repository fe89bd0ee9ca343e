#include "moe/shared_experts.h"

#include <cmath>

#include "moe/ffn.h"
#include "moe/gemm.h"

namespace moe {

template <class T>
void shared_experts_forward(const MoeConfig& c, int64_t n, const T* x, const T* w1, const T* w3,
                            const T* w2, const T* wg, T* h1, T* h3, T* a, T* y, T* gate, T* out) {
  const int64_t d = c.hidden_size;
  ffn_forward<T>(c.hidden_act, n, d, c.shared_hidden(), x, w1, w3, w2, h1, h3, a, y,
                 c.compute_dtype);
  if (c.shared_expert_gate) {
    gemm<T>(Trans::No, Trans::Yes, n, 1, d, T(1), x, d, wg, d, T(0), gate, 1);
    for (int64_t t = 0; t < n; ++t) gate[t] = T(1) / (T(1) + std::exp(-gate[t]));
  }
  for (int64_t t = 0; t < n; ++t) {
    const T g = c.shared_expert_gate ? gate[t] : T(1);
    for (int64_t j = 0; j < d; ++j) out[t * d + j] += g * y[t * d + j];
  }
}

template <class T>
void shared_experts_backward(const MoeConfig& c, int64_t n, const T* x, const T* w1, const T* w3,
                             const T* w2, const T* wg, const T* h1, const T* h3, const T* a,
                             const T* y, const T* gate, const T* dout, T* dx, T* dw1, T* dw3,
                             T* dw2, T* dwg, T* dy, T* dxs, T* da, T* dh1, T* dh3) {
  const int64_t d = c.hidden_size;
  const T* dys = dout;
  if (c.shared_expert_gate) {
    for (int64_t t = 0; t < n; ++t) {
      const T g = gate[t];
      T dg = 0;
      for (int64_t j = 0; j < d; ++j) {
        dg += dout[t * d + j] * y[t * d + j];
        dy[t * d + j] = g * dout[t * d + j];
      }
      const T dpre = dg * g * (T(1) - g);
      for (int64_t j = 0; j < d; ++j) {
        dwg[j] += dpre * x[t * d + j];
        dx[t * d + j] += dpre * wg[j];
      }
    }
    dys = dy;
  }
  ffn_backward<T>(c.hidden_act, n, d, c.shared_hidden(), x, w1, w3, w2, h1, h3, a, dys, dxs, dw1,
                  dw3, dw2, da, dh1, dh3, c.compute_dtype);
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

#define MOE_SHARED_EXPERTS(T)                                                                      \
  template void shared_experts_forward<T>(const MoeConfig&, int64_t, const T*, const T*, const T*, \
                                          const T*, const T*, T*, T*, T*, T*, T*, T*);             \
  template void shared_experts_backward<T>(                                                        \
      const MoeConfig&, int64_t, const T*, const T*, const T*, const T*, const T*, const T*,       \
      const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*, T*, T*, T*, T*, T*, T*);   \
  template void declare_shared_expert_weights<T>(ParamSet<T>&, const MoeConfig&);
MOE_SHARED_EXPERTS(float)
MOE_SHARED_EXPERTS(double)
#undef MOE_SHARED_EXPERTS

}  // namespace moe
