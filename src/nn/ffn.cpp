#include "moe/ffn.h"

#include <cmath>

#include "moe/gemm.h"

namespace moe {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // below this, threading costs more than it saves

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}
template <class T>
T gelu(T z) {
  return T(0.5) * z * (T(1) + std::erf(z * T(M_SQRT1_2)));
}
template <class T>
T gelu_grad(T z) {
  const T cdf = T(0.5) * (T(1) + std::erf(z * T(M_SQRT1_2)));
  const T pdf = std::exp(T(-0.5) * z * z) * T(0.3989422804014327);  // 1/sqrt(2 pi)
  return cdf + z * pdf;
}
}  // namespace

template <class T>
void ffn_forward(Activation act, int64_t n, int64_t d, int64_t F, const T* x, const T* w1,
                 const T* w3, const T* w2, T* h1, T* h3, T* a, T* y) {
  if (n == 0) return;
  gemm<T>(Trans::No, Trans::Yes, n, F, d, T(1), x, d, w1, d, T(0), h1, F);
  const int64_t nf = n * F;
  if (act == Activation::SwiGLU) {
    gemm<T>(Trans::No, Trans::Yes, n, F, d, T(1), x, d, w3, d, T(0), h3, F);
#pragma omp parallel for simd if (nf > kParallelMin)
    for (int64_t i = 0; i < nf; ++i) a[i] = h1[i] * sigmoid(h1[i]) * h3[i];
  } else {
#pragma omp parallel for simd if (nf > kParallelMin)
    for (int64_t i = 0; i < nf; ++i) a[i] = gelu(h1[i]);
  }
  gemm<T>(Trans::No, Trans::Yes, n, d, F, T(1), a, F, w2, F, T(0), y, d);
}

template <class T>
void ffn_backward(Activation act, int64_t n, int64_t d, int64_t F, const T* x, const T* w1,
                  const T* w3, const T* w2, const T* h1, const T* h3, const T* a, const T* dy,
                  T* dx, T* dw1, T* dw3, T* dw2, T* da, T* dh1, T* dh3) {
  if (n == 0) return;
  // y = a W2^T: da = dy W2, dW2 += dy^T a
  gemm<T>(Trans::No, Trans::No, n, F, d, T(1), dy, d, w2, F, T(0), da, F);
  gemm<T>(Trans::Yes, Trans::No, d, F, n, T(1), dy, d, a, F, T(1), dw2, F);
  const int64_t nf = n * F;
  if (act == Activation::SwiGLU) {
#pragma omp parallel for simd if (nf > kParallelMin)
    for (int64_t i = 0; i < nf; ++i) {
      const T s = sigmoid(h1[i]);
      const T silu = h1[i] * s;
      dh3[i] = da[i] * silu;
      dh1[i] = da[i] * h3[i] * s * (T(1) + h1[i] * (T(1) - s));
    }
  } else {
#pragma omp parallel for simd if (nf > kParallelMin)
    for (int64_t i = 0; i < nf; ++i) dh1[i] = da[i] * gelu_grad(h1[i]);
  }
  // h1 = x W1^T: dx = dh1 W1, dW1 += dh1^T x (and the same for W3)
  gemm<T>(Trans::No, Trans::No, n, d, F, T(1), dh1, F, w1, d, T(0), dx, d);
  gemm<T>(Trans::Yes, Trans::No, F, d, n, T(1), dh1, F, x, d, T(1), dw1, d);
  if (act == Activation::SwiGLU) {
    gemm<T>(Trans::No, Trans::No, n, d, F, T(1), dh3, F, w3, d, T(1), dx, d);
    gemm<T>(Trans::Yes, Trans::No, F, d, n, T(1), dh3, F, x, d, T(1), dw3, d);
  }
}

#define MOE_INSTANTIATE(T)                                                                      \
  template void ffn_forward<T>(Activation, int64_t, int64_t, int64_t, const T*, const T*,       \
                               const T*, const T*, T*, T*, T*, T*);                             \
  template void ffn_backward<T>(Activation, int64_t, int64_t, int64_t, const T*, const T*,      \
                                const T*, const T*, const T*, const T*, const T*, const T*, T*, \
                                T*, T*, T*, T*, T*, T*);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
#undef MOE_INSTANTIATE

}  // namespace moe
