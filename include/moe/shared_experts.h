// The shared experts of an MoE layer (DeepSeek/Qwen-MoE): one SwiGLU (or GELU) FFN of width
// shared_hidden() on every token, optionally behind Qwen2-MoE's sigmoid gate:
//   out += g * ffn(x),  g = sigmoid(x . wg) when shared_expert_gate, else 1.
// Used by MoeLayer and by its expert-parallel twin. Shapes: x, y, out [n, d]; w1/w3 [Hs, d],
// w2 [d, Hs], wg [d] (null without the gate); h1, h3, a [n, Hs]; gate [n].
#pragma once

#include <cstdint>

#include "moe/moe_config.h"
#include "moe/params.h"

namespace moe {

// Declares shared.w1 [Hs, d], shared.w3 [Hs, d] (SwiGLU only), shared.w2 [d, Hs] and
// shared.gate [1, d] (with shared_expert_gate); nothing when c has no shared experts.
template <class T>
void declare_shared_expert_weights(ParamSet<T>& params, const MoeConfig& c);

// Saves h1, h3, a, y and gate for the backward; adds into out.
template <class T>
void shared_experts_forward(const MoeConfig& c, int64_t n, const T* x, const T* w1, const T* w3,
                            const T* w2, const T* wg, T* h1, T* h3, T* a, T* y, T* gate, T* out);

// dx (+=) and the weight gradients (+=). dy, dxs [n, d] and da, dh1, dh3 [n, Hs] are scratch.
template <class T>
void shared_experts_backward(const MoeConfig& c, int64_t n, const T* x, const T* w1, const T* w3,
                             const T* w2, const T* wg, const T* h1, const T* h3, const T* a,
                             const T* y, const T* gate, const T* dout, T* dx, T* dw1, T* dw3,
                             T* dw2, T* dwg, T* dy, T* dxs, T* da, T* dh1, T* dh3);

}  // namespace moe
