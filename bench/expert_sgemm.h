// Plain sgemm on the experts' GEMM work: the calls of the SwiGLU expert (src/nn/ffn.cpp)
// without the activation, the routing, the permutation or the combine. The baseline both
// benchmark programs compare the layer against.
//   forward:  H1 = X W1^T, H3 = X W3^T  (n x F, K = d);  Y = A W2^T  (n x d, K = F)
//   backward: dA = dY W2;  dW2 += dY^T A;  dX = dH1 W1 + dH3 W3;  dW1 += dH1^T X;  dW3 += dH3^T X
// One chain per group of rows (one weight set per group), each GEMM threaded by BLAS.
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

#include "moe/gemm.h"
#include "moe/rng.h"

namespace moe::bench {

struct ExpertSgemm {
  // rows[g]: rows of group g.
  ExpertSgemm(int d_, int F_, std::vector<int64_t> group_rows, uint64_t seed)
      : d(d_), F(F_), rows(std::move(group_rows)) {
    offsets.assign(rows.size() + 1, 0);
    std::partial_sum(rows.begin(), rows.end(), offsets.begin() + 1);
    const int64_t n = offsets.back();
    const auto wsz = static_cast<size_t>(int64_t(F) * d * int64_t(rows.size()));
    Rng rng(seed);
    auto normal = [&rng](std::vector<float>& v, size_t count, double std) {
      v.resize(count);
      rng.fill_normal(v.data(), int64_t(count), 0.0, std);
    };
    normal(w1, wsz, 0.02);
    normal(w3, wsz, 0.02);
    normal(w2, wsz, 0.02);
    dw1.assign(wsz, 0.f);
    dw3.assign(wsz, 0.f);
    dw2.assign(wsz, 0.f);
    normal(x, size_t(n * d), 1.0);
    normal(dy, size_t(n * d), 1e-3);
    normal(a, size_t(n * F), 0.1);
    normal(dh1, size_t(n * F), 1e-3);
    normal(dh3, size_t(n * F), 1e-3);
    h1.assign(size_t(n * F), 0.f);
    h3.assign(size_t(n * F), 0.f);
    da.assign(size_t(n * F), 0.f);
    y.assign(size_t(n * d), 0.f);
    dx.assign(size_t(n * d), 0.f);
    flops_fwd = 2.0 * 3.0 * double(n) * d * F;
  }

  void run(bool backward) {
    const int64_t wsz = int64_t(F) * d;
    for (size_t g = 0; g < rows.size(); ++g) {
      const int64_t n = rows[g], r0 = offsets[g];
      if (n == 0) continue;
      const float *W1 = w1.data() + g * wsz, *W3 = w3.data() + g * wsz, *W2 = w2.data() + g * wsz;
      const float *X = x.data() + r0 * d, *A = a.data() + r0 * F;
      gemm<float>(Trans::No, Trans::Yes, n, F, d, 1.f, X, d, W1, d, 0.f, h1.data() + r0 * F, F);
      gemm<float>(Trans::No, Trans::Yes, n, F, d, 1.f, X, d, W3, d, 0.f, h3.data() + r0 * F, F);
      gemm<float>(Trans::No, Trans::Yes, n, d, F, 1.f, A, F, W2, F, 0.f, y.data() + r0 * d, d);
      if (!backward) continue;
      const float *dY = dy.data() + r0 * d, *dH1 = dh1.data() + r0 * F, *dH3 = dh3.data() + r0 * F;
      float* dX = dx.data() + r0 * d;
      gemm<float>(Trans::No, Trans::No, n, F, d, 1.f, dY, d, W2, F, 0.f, da.data() + r0 * F, F);
      gemm<float>(Trans::Yes, Trans::No, d, F, n, 1.f, dY, d, A, F, 1.f, dw2.data() + g * wsz, F);
      gemm<float>(Trans::No, Trans::No, n, d, F, 1.f, dH1, F, W1, d, 0.f, dX, d);
      gemm<float>(Trans::Yes, Trans::No, F, d, n, 1.f, dH1, F, X, d, 1.f, dw1.data() + g * wsz, d);
      gemm<float>(Trans::No, Trans::No, n, d, F, 1.f, dH3, F, W3, d, 1.f, dX, d);
      gemm<float>(Trans::Yes, Trans::No, F, d, n, 1.f, dH3, F, X, d, 1.f, dw3.data() + g * wsz, d);
    }
  }

  int d, F;
  std::vector<int64_t> rows, offsets;
  std::vector<float> w1, w3, w2, dw1, dw3, dw2, x, dy, a, dh1, dh3, h1, h3, da, y, dx;
  double flops_fwd = 0;
};

}  // namespace moe::bench
