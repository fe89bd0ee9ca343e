#include "moe/rmsnorm.h"

#include <algorithm>
#include <cmath>

#include "core/parallel_for.h"
#include "moe/error.h"

namespace moe {

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t n, int64_t d, double eps) {
  MOE_CHECK(d > 0 && eps >= 0, "rmsnorm_forward: needs d > 0 and eps >= 0, got d={} eps={}", d,
            eps);
  parallel_for(n, n * d > kParallelMinValues, [&](int64_t i) {
    const T* xi = x + i * d;
    double ss = 0.0;  // the mean square in double: d terms of one sign
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(xi[j]) * xi[j];
    const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
    rstd[i] = r;
    T* oi = out + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) oi[j] = xi[j] * r * w[j];
  });
}

// With g = dout[i], r = rstd[i]:  dx_j = r w_j g_j - r^3 / d * x_j * sum_k g_k w_k x_k,
// dw_j = sum_i g_ij x_ij r_i.
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t n,
                      int64_t d) {
#pragma omp parallel for if (n * d > kParallelMinValues)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    const T* gi = dout + i * d;
    const T r = rstd[i];
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(gi[j]) * w[j] * xi[j];
    const T c = static_cast<T>(dot * r * r * r / static_cast<double>(d));
    T* dxi = dx + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) dxi[j] += r * w[j] * gi[j] - c * xi[j];
  }
  // dw: threads own column blocks and sum rows in order (deterministic, no atomics).
  constexpr int64_t kCols = 64;
  const int64_t blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for if (n * d > kParallelMinValues)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kCols, c1 = std::min(d, c0 + kCols);
    for (int64_t i = 0; i < n; ++i) {
      const T* xi = x + i * d;
      const T* gi = dout + i * d;
      const T r = rstd[i];
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) dw[j] += gi[j] * xi[j] * r;
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t,
                                      int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, int64_t, int64_t);

}  // namespace moe
