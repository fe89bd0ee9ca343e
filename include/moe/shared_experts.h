// The shared experts of an MoE layer (DeepSeek/Qwen-MoE): one SwiGLU (or GELU) FFN of width
// shared_hidden() on every token, optionally behind Qwen2-MoE's sigmoid gate:
//   out += g * ffn(x),  g = sigmoid(x . wg) when shared_expert_gate, else 1.
// Parameters: shared.w1/w3 [Hs, d], shared.w2 [d, Hs], shared.gate [1, d] (with the gate).
// Saved for the backward: h1, h3, a [n, Hs]; y [n, d]; gate [n].
#pragma once

#include <cstdint>
#include <vector>

#include "moe/grouped_experts.h"
#include "moe/moe_config.h"
#include "moe/params.h"

namespace moe {

// Declares shared.w1 [Hs, d], shared.w3 [Hs, d] (SwiGLU only), shared.w2 [d, Hs] and
// shared.gate [1, d] (with shared_expert_gate); nothing when c has no shared experts.
template <class T>
void declare_shared_expert_weights(ParamSet<T>& params, const MoeConfig& c);

template <class T>
class SharedExperts {
 public:
  explicit SharedExperts(const MoeConfig& c);
  int64_t hidden() const { return shape_.F; }  // Hs; 0 = no shared experts
  // Resolves the weight offsets (after params.allocate()).
  void bind(const ParamSet<T>& params);
  void reserve(int64_t tokens);
  // out += g * ffn(x) over n tokens; the FFN over `views` when given (float, SwiGLU; inference
  // only: nothing is saved for the backward).
  void forward(const ParamSet<T>& params, int64_t n, const T* x, T* out,
               const FfnViews* views = nullptr);
  // dx (+=) and the weight gradients (+=); scratch [n, Hs] (e.g. GroupedExperts::scratch()).
  void backward(ParamSet<T>& params, int64_t n, const T* x, const T* dout, T* dx,
                const FfnRows<T>& scratch);

 private:
  FfnShape shape_;
  bool gated_;
  int64_t w1_ = -1, w3_ = -1, w2_ = -1, wg_ = -1;
  FfnRowBuffers<T> rows_;    // [n, Hs] saved for the backward
  int64_t rows_n_ = 0;       // tokens reserved
  std::vector<T> y_, gate_;  // forward, saved
  std::vector<T> dy_, dxs_;  // backward scratch [n, d]
};

}  // namespace moe
