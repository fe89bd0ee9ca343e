// Helpers shared by the tests: normalized error, random tensors, and the finite-difference
// gradient check.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "moe/rng.h"

namespace moe::test {

// ||a - b|| / ||b|| (absolute ||a - b|| when b is zero).
template <class A, class B>
double normalized_error(const A* a, const B* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <class A, class B>
void expect_close(const std::string& what, const A* a, const B* b, int64_t n, double tol) {
  const double err = normalized_error(a, b, n);
  EXPECT_LE(err, tol) << what << ": normalized error " << err << " over " << n << " values";
}

template <class T>
std::vector<T> random_vector(Rng& rng, int64_t n, double std = 1.0) {
  std::vector<T> v(static_cast<size_t>(n));
  rng.fill_normal(v.data(), n, 0.0, std);
  return v;
}

// Central differences of `loss` with respect to the n values at `p`, checked against the
// analytic gradient `grad`. Checks every coordinate when n <= max_coords, else a fixed random
// subset. Returns the normalized error over the checked coordinates.
inline double fd_gradient_error(double* p, const double* grad, int64_t n,
                                const std::function<double()>& loss, int64_t max_coords = 64,
                                double eps = 1e-6) {
  std::vector<int64_t> idx;
  if (n <= max_coords) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    Rng pick(12345 + static_cast<uint64_t>(n));
    for (int64_t i = 0; i < max_coords; ++i) idx.push_back(static_cast<int64_t>(pick.below(n)));
  }
  std::vector<double> num(idx.size()), ana(idx.size());
  for (size_t j = 0; j < idx.size(); ++j) {
    const int64_t i = idx[j];
    const double saved = p[i];
    p[i] = saved + eps;
    const double lp = loss();
    p[i] = saved - eps;
    const double lm = loss();
    p[i] = saved;
    num[j] = (lp - lm) / (2 * eps);
    ana[j] = grad[i];
  }
  return normalized_error(ana.data(), num.data(), static_cast<int64_t>(idx.size()));
}

}  // namespace moe::test
