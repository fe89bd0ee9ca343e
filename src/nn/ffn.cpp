#include "moe/ffn.h"

#include <cmath>
#include <type_traits>

#include "core/fast_math.h"
#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/gemm_bf16.h"

namespace moe {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // below this, threading costs more than it saves

// exp_fast vectorizes for float (std::exp is a scalar libm call without -ffast-math: it was
// ~20% of a bf16 expert's time in the SwiGLU passes); double keeps std::exp.
template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + exp_fast(-z));
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

// The FFN's one GEMM entry point: fp32/fp64 BLAS, or bf16 operands with fp32 accumulation.
template <class T>
void mm(ComputeDtype dt, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const T* A,
        int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (dt == ComputeDtype::BFloat16) {
    if constexpr (std::is_same_v<T, float>) {
      gemm_bf16(ta, tb, M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc);
      return;
    } else {
      MOE_CHECK(false, "ffn: compute_dtype bfloat16 needs float tensors");
    }
  }
  gemm<T>(ta, tb, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}
}  // namespace

template <class T>
void ffn_forward(Activation act, int64_t n, int64_t d, int64_t F, const T* x, const T* w1,
                 const T* w3, const T* w2, T* h1, T* h3, T* a, T* y, ComputeDtype dt) {
  if (n == 0) return;
  mm<T>(dt, Trans::No, Trans::Yes, n, F, d, x, d, w1, d, T(0), h1, F);
  const int64_t nf = n * F;
  if (act == Activation::SwiGLU) {
    mm<T>(dt, Trans::No, Trans::Yes, n, F, d, x, d, w3, d, T(0), h3, F);
#pragma omp parallel for simd if (nf > kParallelMin)
    for (int64_t i = 0; i < nf; ++i) a[i] = h1[i] * sigmoid(h1[i]) * h3[i];
  } else {
#pragma omp parallel for simd if (nf > kParallelMin)
    for (int64_t i = 0; i < nf; ++i) a[i] = gelu(h1[i]);
  }
  mm<T>(dt, Trans::No, Trans::Yes, n, d, F, a, F, w2, F, T(0), y, d);
}

template <class T>
void ffn_backward(Activation act, int64_t n, int64_t d, int64_t F, const T* x, const T* w1,
                  const T* w3, const T* w2, const T* h1, const T* h3, const T* a, const T* dy,
                  T* dx, T* dw1, T* dw3, T* dw2, T* da, T* dh1, T* dh3, ComputeDtype dt) {
  if (n == 0) return;
  // y = a W2^T: da = dy W2, dW2 += dy^T a
  mm<T>(dt, Trans::No, Trans::No, n, F, d, dy, d, w2, F, T(0), da, F);
  mm<T>(dt, Trans::Yes, Trans::No, d, F, n, dy, d, a, F, T(1), dw2, F);
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
  mm<T>(dt, Trans::No, Trans::No, n, d, F, dh1, F, w1, d, T(0), dx, d);
  mm<T>(dt, Trans::Yes, Trans::No, F, d, n, dh1, F, x, d, T(1), dw1, d);
  if (act == Activation::SwiGLU) {
    mm<T>(dt, Trans::No, Trans::No, n, d, F, dh3, F, w3, d, T(1), dx, d);
    mm<T>(dt, Trans::Yes, Trans::No, F, d, n, dh3, F, x, d, T(1), dw3, d);
  }
}

template <class T>
void declare_expert_weights(ParamSet<T>& params, int64_t experts, int64_t F, int64_t d,
                            Activation act) {
  params.declare("experts.w1", {experts, F, d});
  if (act == Activation::SwiGLU) params.declare("experts.w3", {experts, F, d});
  params.declare("experts.w2", {experts, d, F});
}

#define MOE_INSTANTIATE(T)                                                                      \
  template void ffn_forward<T>(Activation, int64_t, int64_t, int64_t, const T*, const T*,       \
                               const T*, const T*, T*, T*, T*, T*, ComputeDtype);               \
  template void ffn_backward<T>(Activation, int64_t, int64_t, int64_t, const T*, const T*,      \
                                const T*, const T*, const T*, const T*, const T*, const T*, T*, \
                                T*, T*, T*, T*, T*, T*, ComputeDtype);                          \
  template void declare_expert_weights<T>(ParamSet<T>&, int64_t, int64_t, int64_t, Activation);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
#undef MOE_INSTANTIATE

}  // namespace moe
