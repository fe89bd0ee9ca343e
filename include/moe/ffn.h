// Feed-forward block on a contiguous block of n rows: the kernel behind every expert, the
// shared experts and the dense baseline.
//   SwiGLU: h1 = x W1^T, h3 = x W3^T, a = silu(h1) * h3, y = a W2^T  (Mixtral w1/w3/w2)
//   GELU:   h1 = x W1^T,               a = gelu(h1),     y = a W2^T  (exact erf GELU)
// Shapes: x [n, d], W1/W3 [F, d], W2 [d, F], h1/h3/a [n, F], y [n, d].
// The forward saves h1, h3 and a for the backward. The backward writes dx (=) and
// accumulates parameter gradients (+=), as in llm.c.
// With ComputeDtype::BFloat16 (float only) every GEMM rounds its operands to bf16 and
// accumulates in fp32 (gemm_bf16.h); the activation and its gradient stay fp32.
#pragma once

#include <cstdint>

#include "moe/moe_config.h"
#include "moe/params.h"

namespace moe {

template <class T>
void ffn_forward(Activation act, int64_t n, int64_t d, int64_t F, const T* x, const T* w1,
                 const T* w3, const T* w2, T* h1, T* h3, T* a, T* y,
                 ComputeDtype dtype = ComputeDtype::Float32);

// da, dh1, dh3 are [n, F] scratch buffers (dh3 unused for GELU).
template <class T>
void ffn_backward(Activation act, int64_t n, int64_t d, int64_t F, const T* x, const T* w1,
                  const T* w3, const T* w2, const T* h1, const T* h3, const T* a, const T* dy,
                  T* dx, T* dw1, T* dw3, T* dw2, T* da, T* dh1, T* dh3,
                  ComputeDtype dtype = ComputeDtype::Float32);

// Declares a bank of `experts` expert FFNs in the layout every MoE variant shares (Mixtral's,
// stacked): experts.w1 [E, F, d], experts.w3 [E, F, d] (SwiGLU only), experts.w2 [E, d, F].
template <class T>
void declare_expert_weights(ParamSet<T>& params, int64_t experts, int64_t F, int64_t d,
                            Activation act);

}  // namespace moe
