// RMSNorm (Llama/Mixtral), forward and backward side by side as in llm.c layernorm.
// Shapes: x, out, dout, dx [n, d]; w, dw [d]; rstd [n].
//   out[i, j] = x[i, j] * w[j] * rstd[i],  rstd[i] = 1 / sqrt(mean_j x[i, j]^2 + eps)
// The forward saves rstd for the backward. The backward ACCUMULATES into both dx and dw (+=):
// dx is the residual stream's gradient, which already holds the skip connection's part.
#pragma once

#include <cstdint>

namespace moe {

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t n, int64_t d, double eps);

template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t n,
                      int64_t d);

}  // namespace moe
