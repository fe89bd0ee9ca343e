#include "moe/grouped_experts.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>

#include "core/fast_math.h"
#include "core/parallel_for.h"
#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/gemm_bf16.h"

namespace moe {

template <class T>
void gemm_in(ComputeDtype dt, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha,
             const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (dt == ComputeDtype::BFloat16) {
    if constexpr (std::is_same_v<T, float>) {
      gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
    } else {
      MOE_CHECK(false, "compute_dtype bfloat16 needs float tensors (fp32 master weights)");
    }
  }
  gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
template void gemm_in<float>(ComputeDtype, Trans, Trans, int64_t, int64_t, int64_t, float,
                             const float*, int64_t, const float*, int64_t, float, float*, int64_t);
template void gemm_in<double>(ComputeDtype, Trans, Trans, int64_t, int64_t, int64_t, double,
                              const double*, int64_t, const double*, int64_t, double, double*,
                              int64_t);

namespace {

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

// The FFN's GEMMs: gemm_in with alpha = 1; an operand of bf16 bits goes to gemm_bf16.
template <class T, class SA, class SB>
void mm(ComputeDtype dt, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const SA* A,
        int64_t lda, const SB* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<SA, T> && std::is_same_v<SB, T>) {
    gemm_in<T>(dt, ta, tb, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
  } else {
    static_assert(std::is_same_v<T, float>, "bf16 operands need float");
    gemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
  }
}

// Runs fill(lo, len, o1, o2) over chunks of [0, n) (threaded above kParallelMinValues), where
// fill writes values [lo, lo + len) of up to two outputs of S to o1 and o2 as T: the outputs
// themselves, or (S = bf16 bits) fp32 chunks then rounded by round_to_bf16. Rounding inline,
// in integer operations, made the bf16 SwiGLU passes 40% slower than their fp32 ones.
template <class T, class S, class Fill>
void fill_rows(int64_t n, S* out1, S* out2, const Fill& fill) {
  constexpr int64_t kChunk = 2048;
  parallel_for((n + kChunk - 1) / kChunk, n > kParallelMinValues, [&](int64_t c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, n - lo);
    if constexpr (std::is_same_v<S, T>) {
      fill(lo, len, out1 + lo, out2 ? out2 + lo : nullptr);
    } else {
      alignas(64) float b1[kChunk], b2[kChunk];
      fill(lo, len, b1, b2);
      round_to_bf16(b1, len, out1 + lo);
      if (out2) round_to_bf16(b2, len, out2 + lo);
    }
  });
}

// The FFN with its GEMM-only rows (a; dh1, dh3) stored as S.
template <class T, class S>
void ffn_forward_as(const FfnShape& f, int64_t n, const T* x, const FfnWeights<const T>& w, T* h1,
                    T* h3, S* a, T* y) {
  const int64_t d = f.d, F = f.F;
  const ComputeDtype dt = f.dtype;
  mm<T>(dt, Trans::No, Trans::Yes, n, F, d, x, d, w.w1, d, T(0), h1, F);
  const int64_t nf = n * F;
  if (f.act == Activation::SwiGLU) {
    mm<T>(dt, Trans::No, Trans::Yes, n, F, d, x, d, w.w3, d, T(0), h3, F);
    fill_rows<T>(nf, a, static_cast<S*>(nullptr), [&](int64_t lo, int64_t len, T* o, T*) {
      const T *g = h1 + lo, *u = h3 + lo;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
    });
  } else {
    fill_rows<T>(nf, a, static_cast<S*>(nullptr), [&](int64_t lo, int64_t len, T* o, T*) {
      const T* g = h1 + lo;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) o[i] = gelu(g[i]);
    });
  }
  mm<T>(dt, Trans::No, Trans::Yes, n, d, F, a, F, w.w2, F, T(0), y, d);
}

template <class T, class S>
void ffn_backward_as(const FfnShape& f, int64_t n, const T* x, const FfnWeights<const T>& w,
                     const T* h1, const T* h3, const S* a, const T* dy, T* dx,
                     const FfnWeights<T>& grad, T* da, S* dh1, S* dh3) {
  const int64_t d = f.d, F = f.F;
  const ComputeDtype dt = f.dtype;
  // y = a W2^T: da = dy W2, dW2 += dy^T a
  mm<T>(dt, Trans::No, Trans::No, n, F, d, dy, d, w.w2, F, T(0), da, F);
  mm<T>(dt, Trans::Yes, Trans::No, d, F, n, dy, d, a, F, T(1), grad.w2, F);
  const int64_t nf = n * F;
  if (f.act == Activation::SwiGLU) {
    fill_rows<T>(nf, dh1, dh3, [&](int64_t lo, int64_t len, T* o1, T* o3) {
      const T *g = h1 + lo, *u = h3 + lo, *dg = da + lo;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T s = sigmoid(g[i]);
        const T silu = g[i] * s;
        o3[i] = dg[i] * silu;
        o1[i] = dg[i] * u[i] * s * (T(1) + g[i] * (T(1) - s));
      }
    });
  } else {
    fill_rows<T>(nf, dh1, static_cast<S*>(nullptr), [&](int64_t lo, int64_t len, T* o, T*) {
      const T *g = h1 + lo, *dg = da + lo;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) o[i] = dg[i] * gelu_grad(g[i]);
    });
  }
  // h1 = x W1^T: dx = dh1 W1, dW1 += dh1^T x (and the same for W3)
  mm<T>(dt, Trans::No, Trans::No, n, d, F, dh1, F, w.w1, d, T(0), dx, d);
  mm<T>(dt, Trans::Yes, Trans::No, F, d, n, dh1, F, x, d, T(1), grad.w1, d);
  if (f.act == Activation::SwiGLU) {
    mm<T>(dt, Trans::No, Trans::No, n, d, F, dh3, F, w.w3, d, T(1), dx, d);
    mm<T>(dt, Trans::Yes, Trans::No, F, d, n, dh3, F, x, d, T(1), grad.w3, d);
  }
}

bool bf16_rows(const FfnShape& f) {
  return f.dtype == ComputeDtype::BFloat16;
}
}  // namespace

template <class T>
void ffn_forward(const FfnShape& f, int64_t n, const T* x, const FfnWeights<const T>& w,
                 const FfnRows<T>& saved, T* y) {
  if (n == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_rows(f)) {
      MOE_CHECK(saved.a_bf16 != nullptr, "ffn_forward: bfloat16 compute without bf16 rows");
      ffn_forward_as<T, uint16_t>(f, n, x, w, saved.h1, saved.h3, saved.a_bf16, y);
      return;
    }
  }
  ffn_forward_as<T, T>(f, n, x, w, saved.h1, saved.h3, saved.a, y);
}

template <class T>
void ffn_backward(const FfnShape& f, int64_t n, const T* x, const FfnWeights<const T>& w,
                  const FfnRows<T>& saved, const T* dy, T* dx, const FfnWeights<T>& grad,
                  const FfnRows<T>& scratch) {
  if (n == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_rows(f)) {
      MOE_CHECK(saved.a_bf16 != nullptr && scratch.h1_bf16 != nullptr,
                "ffn_backward: bfloat16 compute without bf16 rows");
      ffn_backward_as<T, uint16_t>(f, n, x, w, saved.h1, saved.h3, saved.a_bf16, dy, dx, grad,
                                   scratch.a, scratch.h1_bf16, scratch.h3_bf16);
      return;
    }
  }
  ffn_backward_as<T, T>(f, n, x, w, saved.h1, saved.h3, saved.a, dy, dx, grad, scratch.a,
                        scratch.h1, scratch.h3);
}

template <class T>
FfnRows<T> FfnRowBuffers<T>::grow(const FfnShape& f, int64_t rows, Use use) {
  const int64_t n = rows * f.F;
  const bool bf16 = bf16_rows(f), glu = f.glu();
  FfnRows<T> r;
  auto take = [n](auto& v) {
    grow_to(v, n);
    return v.data();
  };
  if (use == Use::Forward || use == Use::Saved || !bf16) r.h1 = take(h1_);
  if (glu && (use == Use::Forward || use == Use::Saved || !bf16)) r.h3 = take(h3_);
  if (use == Use::Scratch && bf16) {
    r.h1_bf16 = take(h1_bf16_);
    if (glu) r.h3_bf16 = take(h3_bf16_);
  }
  if (use == Use::Saved && bf16)
    r.a_bf16 = take(a_bf16_);
  else if (use != Use::Forward)
    r.a = take(a_);
  return r;
}

template <class T>
void declare_expert_weights(ParamSet<T>& params, int64_t experts, int64_t F, int64_t d,
                            Activation act) {
  params.declare("experts.w1", {experts, F, d});
  if (act == Activation::SwiGLU) params.declare("experts.w3", {experts, F, d});
  params.declare("experts.w2", {experts, d, F});
}

template <class T>
GroupedExperts<T>::GroupedExperts(const FfnShape& shape, int experts)
    : shape_(shape), E_(experts), order_(static_cast<size_t>(experts)) {}

template <class T>
void GroupedExperts<T>::bind(const ParamSet<T>& params) {
  w1_ = params.offset_or_none("experts.w1");
  w3_ = params.offset_or_none("experts.w3");
  w2_ = params.offset_or_none("experts.w2");
  MOE_CHECK(w1_ >= 0 && w2_ >= 0 && (w3_ >= 0) == shape_.glu(),
            "GroupedExperts: the parameters lack experts.w1/w3/w2");
}

template <class T>
void GroupedExperts<T>::reserve(int64_t rows, int64_t scratch_elems) {
  using Use = typename FfnRowBuffers<T>::Use;
  saved_n_ = std::max(saved_n_, rows);
  // The scratch in rows of F, to hold scratch_elems as well (the shared experts' T * Hs).
  const int64_t F = std::max<int64_t>(shape_.F, 1);
  scratch_n_ = std::max({scratch_n_, rows, (scratch_elems + F - 1) / F});
  saved_.grow(shape_, saved_n_, Use::Saved);
  scratch_.grow(shape_, scratch_n_, Use::Scratch);
}

template <class T>
bool GroupedExperts<T>::in_parallel(const int64_t* offsets) const {
  if (schedule_ >= 0) return schedule_ == 1;
  const int threads = omp_get_max_threads();
  if (threads <= 1 || omp_in_parallel()) return false;
  // One expert per thread pays when there are enough busy experts to balance the threads
  // (largest first) and no single expert outweighs a thread's share; otherwise (few experts,
  // or a collapsed router) threading each GEMM balances better.
  int busy = 0;
  int64_t largest = 0;
  for (int e = 0; e < E_; ++e) {
    busy += offsets[e + 1] > offsets[e];
    largest = std::max(largest, offsets[e + 1] - offsets[e]);
  }
  return busy >= 2 * threads && largest * threads <= offsets[E_] - offsets[0];
}

template <class T>
template <class Fn>
void GroupedExperts<T>::for_each_expert(const int64_t* offsets, const Fn& run) {
  auto rows = [&](int e) { return offsets[e + 1] - offsets[e]; };
  if (!in_parallel(offsets)) {
    for (int e = 0; e < E_; ++e)
      if (rows(e) > 0) run(e);
    return;
  }
  // Largest expert first (ties: lower index), handed out one at a time (LPT scheduling).
  std::iota(order_.begin(), order_.end(), 0);
  std::sort(order_.begin(), order_.end(), [&](int a, int b) {
    const int64_t ra = rows(a), rb = rows(b);
    return ra != rb ? ra > rb : a < b;
  });
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < E_; ++i)
    if (rows(order_[i]) > 0) run(order_[i]);
}

template <class T>
void GroupedExperts<T>::forward(const ParamSet<T>& params, const int64_t* offsets, const T* x,
                                T* y) {
  const T* v = params.values().data();
  const int64_t d = shape_.d, wsz = shape_.F * d;
  MOE_CHECK(offsets[E_] <= saved_n_, "GroupedExperts::forward: {} rows, {} reserved", offsets[E_],
            saved_n_);
  const FfnRows<T> saved = saved_.grow(shape_, saved_n_, FfnRowBuffers<T>::Use::Saved);
  for_each_expert(offsets, [&](int e) {
    const int64_t r0 = offsets[e];
    const FfnWeights<const T> w{v + w1_ + e * wsz, shape_.glu() ? v + w3_ + e * wsz : nullptr,
                                v + w2_ + e * wsz};
    ffn_forward<T>(shape_, offsets[e + 1] - r0, x + r0 * d, w, saved.at(r0, shape_.F), y + r0 * d);
  });
}

template <class T>
void GroupedExperts<T>::forward(const FfnViews* w, const int64_t* offsets, const float* x, float* y,
                                bool accumulate) requires std::is_same_v<T, float> {
  // if constexpr as well: clang 14 still instantiates this body for T = double with the class.
  if constexpr (std::is_same_v<T, float>) {
    const int64_t d = shape_.d, F = shape_.F;
    const FfnRows<T> rows = saved_.grow(shape_, offsets[E_], FfnRowBuffers<T>::Use::Forward);
    for_each_expert(offsets, [&](int e) {
      const int64_t r0 = offsets[e], n = offsets[e + 1] - r0, nf = n * F;
      float* h1 = rows.h1 + r0 * F;
      float* h3 = rows.h3 + r0 * F;
      const FfnViews& we = w[e];
      linear_forward(x + r0 * d, n, we.w1, h1);
      linear_forward(x + r0 * d, n, we.w3, h3);
      if (we.b1)
        for (int64_t r = 0; r < n; ++r)
          for (int64_t j = 0; j < F; ++j) {
            h1[r * F + j] += we.b1[j];
            h3[r * F + j] += we.b3[j];
          }
      // In chunks of 4096 values, threaded only for a prompt's share (a decode step's few rows
      // stay in this thread).
      constexpr int64_t kChunk = 4096;
      const bool clamped = shape_.act == Activation::ClampedSwiGLU;
      const auto lim = static_cast<float>(shape_.limit);
      parallel_for((nf + kChunk - 1) / kChunk, nf > (1 << 16), [&](int64_t c) {
        const int64_t lo = c * kChunk, hi = std::min(nf, lo + kChunk);
        if (clamped) {
          constexpr float kAlpha = 1.702f;  // gpt-oss's sigmoid slope (a GELU approximation)
#pragma omp simd
          for (int64_t i = lo; i < hi; ++i) {
            const float g = std::min(h1[i], lim), u = std::clamp(h3[i], -lim, lim);
            h1[i] = g * sigmoid(kAlpha * g) * (u + 1.0f);
          }
        } else {
#pragma omp simd
          for (int64_t i = lo; i < hi; ++i) h1[i] = h1[i] * sigmoid(h1[i]) * h3[i];
        }
      });
      float* yr = y + r0 * d;
      if (!we.b2) {
        linear_forward(h1, n, we.w2, yr, accumulate);
        return;
      }
      MOE_CHECK(!accumulate, "GroupedExperts::forward: a down-projection bias needs y (=)");
      linear_forward(h1, n, we.w2, yr);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < d; ++j) yr[r * d + j] += we.b2[j];
    });
  }
}

template <class T>
void GroupedExperts<T>::backward(ParamSet<T>& params, const int64_t* offsets, const T* x,
                                 const T* dy, T* dx) {
  const T* v = params.values().data();
  T* g = params.grads().data();
  const int64_t d = shape_.d, F = shape_.F, wsz = F * d;
  const bool glu = shape_.glu();
  MOE_CHECK(offsets[E_] <= saved_n_ && offsets[E_] <= scratch_n_,
            "GroupedExperts::backward: {} rows, {} reserved", offsets[E_], saved_n_);
  const FfnRows<T> saved = saved_.grow(shape_, saved_n_, FfnRowBuffers<T>::Use::Saved);
  const FfnRows<T> scratch = scratch_.grow(shape_, scratch_n_, FfnRowBuffers<T>::Use::Scratch);
  for_each_expert(offsets, [&](int e) {
    const int64_t r0 = offsets[e];
    const FfnWeights<const T> w{v + w1_ + e * wsz, glu ? v + w3_ + e * wsz : nullptr,
                                v + w2_ + e * wsz};
    const FfnWeights<T> dw{g + w1_ + e * wsz, glu ? g + w3_ + e * wsz : nullptr, g + w2_ + e * wsz};
    ffn_backward<T>(shape_, offsets[e + 1] - r0, x + r0 * d, w, saved.at(r0, F), dy + r0 * d,
                    dx + r0 * d, dw, scratch.at(r0, F));
  });
}

#define MOE_INSTANTIATE(T)                                                                      \
  template void ffn_forward<T>(const FfnShape&, int64_t, const T*, const FfnWeights<const T>&,  \
                               const FfnRows<T>&, T*);                                          \
  template void ffn_backward<T>(const FfnShape&, int64_t, const T*, const FfnWeights<const T>&, \
                                const FfnRows<T>&, const T*, T*, const FfnWeights<T>&,          \
                                const FfnRows<T>&);                                             \
  template void declare_expert_weights<T>(ParamSet<T>&, int64_t, int64_t, int64_t, Activation); \
  template class FfnRowBuffers<T>;                                                              \
  template class GroupedExperts<T>;
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
#undef MOE_INSTANTIATE

}  // namespace moe
