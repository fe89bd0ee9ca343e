// The contract every FFN layer meets (dense baseline and MoE alike), so a Transformer block
// can hold either. forward() saves what backward() needs; backward() writes dx (=) and
// accumulates parameter gradients (+=).
#pragma once

#include <cstdint>

#include "moe/params.h"
#include "moe/rng.h"
#include "moe/router.h"
#include "moe/tensor.h"

namespace moe {

struct FfnViews;  // grouped_experts.h

template <class T>
struct ForwardOptions {
  bool training = false;
  Rng* rng = nullptr;                    // draws router noise and expert dropout in training
  const uint8_t* token_mask = nullptr;   // [T] 1 = token, 0 = padding; null: all tokens
  const T* noise = nullptr;              // [T, E] injected router noise (overrides rng)
  const uint8_t* expert_mask = nullptr;  // [E] injected expert-dropout mask (overrides rng)
  const RoutingPlan* replay = nullptr;   // reuse these routing decisions (gradient checks)
  bool check_finite = false;             // NaN or inf in x is an error naming the position
  // Inference over other copies of the expert weights (load-time quantization; float only,
  // SwiGLU, no expert parallelism): [E] routed experts and the shared expert, instead of the
  // layer's parameters. The router, its gate and the shared gate still use the parameters.
  const FfnViews* expert_views = nullptr;
  const FfnViews* shared_views = nullptr;
};

template <class T>
class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // x, out: [T, hidden_size]
  virtual void forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt = {}) = 0;
  // dout, dx: [T, hidden_size]; aux_scale multiplies the gradient of the auxiliary losses.
  virtual void backward(View<const T> dout, View<T> dx, double aux_scale = 1.0) = 0;
  // Sum of the auxiliary losses of the last forward (0 for a dense FFN).
  virtual double aux_loss() const = 0;
  virtual ParamSet<T>& params() = 0;
  // Multiply-adds per token of the work actually run (for FLOP accounting).
  virtual double active_macs_per_token() const = 0;
};

// Throws naming `what` and the first position where x is NaN or infinite.
template <class T>
void check_finite(View<const T> x, const char* what);

}  // namespace moe
