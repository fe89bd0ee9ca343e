#include "moe/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "moe/error.h"

namespace moe {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // below this, threading costs more than it saves

void check_targets(const int32_t* targets, int64_t n, int64_t V, const char* where) {
  MOE_CHECK(V > 0, "{}: vocabulary size must be positive, got {}", where, V);
  for (int64_t i = 0; i < n; ++i)
    MOE_CHECK(targets[i] >= -1 && targets[i] < V,
              "{}: target {} at row {} is outside [-1, {}) (-1 = ignored)", where, targets[i], i,
              V);
}

// Row maximum and sum of exp(logit - max): exp in T (float exp is several times cheaper and
// exact enough per term), the sum in double.
template <class T>
void row_stats(const T* z, int64_t V, T& mx, double& sum) {
  mx = z[0];
  for (int64_t j = 1; j < V; ++j) mx = std::max(mx, z[j]);
  sum = 0.0;
  for (int64_t j = 0; j < V; ++j) sum += static_cast<double>(std::exp(z[j] - mx));
}
}  // namespace

template <class T>
double cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t n,
                             int64_t V, int64_t* counted) {
  check_targets(targets, n, V, "cross_entropy_forward");
#pragma omp parallel for if (n * V > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] < 0) {
      losses[i] = T(0);
      continue;
    }
    const T* z = logits + i * V;
    T mx;
    double sum;
    row_stats(z, V, mx, sum);
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
#pragma omp parallel for if (n * V > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    T* dz = dlogits + i * V;
    if (targets[i] < 0) {
      std::fill(dz, dz + V, T(0));
      continue;
    }
    const T* z = logits + i * V;
    T mx;
    double sum;
    row_stats(z, V, mx, sum);
    const T f = static_cast<T>(scale / sum);
    for (int64_t j = 0; j < V; ++j) dz[j] = f * std::exp(z[j] - mx);
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
