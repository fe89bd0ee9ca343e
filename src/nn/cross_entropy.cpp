#include "moe/cross_entropy.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <type_traits>

#include "core/fast_math.h"
#include "core/parallel_for.h"
#include "moe/error.h"

namespace moe {

namespace {

void check_targets(const int32_t* targets, int64_t n, int64_t V, const char* where) {
  MOE_CHECK(V > 0, "{}: vocabulary size must be positive, got {}", where, V);
  for (int64_t i = 0; i < n; ++i)
    MOE_CHECK(targets[i] >= -1 && targets[i] < V,
              "{}: target {} at row {} is outside [-1, {}) (-1 = ignored)", where, targets[i], i,
              V);
}

template <class T>
T row_max(const T* z, int64_t V) {
  T m = z[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < V; ++j) m = std::max(m, z[j]);
  return m;
}

// e[j] = exp(z[j] - m), returns their sum in double. Two loops: exp in T vectorizes on its
// own, a float-to-double sum fused with it does not.
template <class T>
double exp_sum(const T* z, int64_t V, T m, T* e) {
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) e[j] = exp_fast(z[j] - m);
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < V; ++j) s += static_cast<double>(e[j]);
  return s;
}
}  // namespace

template <class T>
double cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t n,
                             int64_t V, int64_t* counted) {
  check_targets(targets, n, V, "cross_entropy_forward");
#pragma omp parallel for if (n * V > kParallelMinValues)
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] < 0) {
      losses[i] = T(0);
      continue;
    }
    const T* z = logits + i * V;
    const T mx = row_max(z, V);
    constexpr int64_t kChunk = 512;  // exps go through a stack buffer: the forward keeps none
    T e[kChunk];
    double sum = 0.0;
    for (int64_t j0 = 0; j0 < V; j0 += kChunk)
      sum += exp_sum(z + j0, std::min(kChunk, V - j0), mx, e);
    losses[i] = static_cast<T>(std::log(sum) + static_cast<double>(mx) - z[targets[i]]);
  }
  // Summed serially in row order: the same total for any thread count.
  double total = 0.0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] < 0) continue;
    total += static_cast<double>(losses[i]);
    ++count;
  }
  if (counted) *counted = count;
  return total;
}

template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const int32_t* targets, int64_t n,
                            int64_t V, double scale) {
  check_targets(targets, n, V, "cross_entropy_backward");
#pragma omp parallel for if (n * V > kParallelMinValues)
  for (int64_t i = 0; i < n; ++i) {
    T* dz = dlogits + i * V;
    if (targets[i] < 0) {
      std::fill(dz, dz + V, T(0));
      continue;
    }
    const T* z = logits + i * V;
    const T f = static_cast<T>(scale / exp_sum(z, V, row_max(z, V), dz));
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) dz[j] *= f;
    dz[targets[i]] -= static_cast<T>(scale);
  }
}

template double cross_entropy_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                             int64_t*);
template double cross_entropy_forward<double>(double*, const double*, const int32_t*, int64_t,
                                              int64_t, int64_t*);
template void cross_entropy_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                            double);
template void cross_entropy_backward<double>(double*, const double*, const int32_t*, int64_t,
                                             int64_t, double);

}  // namespace moe
