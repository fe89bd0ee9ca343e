// Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"):
// instead of each token picking k experts, each expert picks its C best tokens, so every
// expert is exactly full (no load-balance loss, no dropped assignment) and a token may be
// taken by several experts or by none (then only the residual carries it).
//
// Per group (one image: `group_size` consecutive rows, or the whole batch), m tokens:
//   z = x Wr^T [T, E], s = softmax over experts per token [T, E]
//   C = ceil(capacity_factor * m / E), clamped to [1, m]: capacity_factor is the paper's c,
//       the average number of experts per token (c = 2 spends the compute of top-2 routing)
//   expert e takes the C tokens of the group with the largest s[:, e] (ties: lower token index)
//   out[t] = sum over experts e that took t of s[t, e] * FFN_e(x_t)
// Backward: the choice is piecewise constant and held fixed; the gate s[t, e] is differentiated
// through the softmax into Wr and x. Rows run expert-major: row (e * G + g) * C + c.
// Parameters: router.weight [E, d]; experts.w1/w3 [E, F, d]; experts.w2 [E, d, F].
// backward() writes dx (=) and accumulates parameter gradients (+=). No auxiliary loss.
#pragma once

#include <vector>

#include "moe/feed_forward.h"
#include "moe/grouped_experts.h"
#include "moe/moe_config.h"

namespace moe {

template <class T>
class ExpertChoice final : public FeedForward<T> {
 public:
  // Uses hidden_size, moe_intermediate_size, num_experts, hidden_act and capacity_factor
  // (must be > 0) of c.
  explicit ExpertChoice(const MoeConfig& c);
  void init_weights(Rng& rng, double std = 0.02);
  void set_group_size(int m) { group_ = m; }  // 0 = the whole batch is one group

  void forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt = {}) override;
  void backward(View<const T> dout, View<T> dx, double aux_scale = 1.0) override;
  double aux_loss() const override { return 0.0; }
  ParamSet<T>& params() override { return params_; }
  double active_macs_per_token() const override;

  int64_t capacity() const { return C_; }  // tokens per expert per group, of the last forward
  // Of the last forward: chosen token of each row [E*G*C] (expert-major), its gate, and the
  // number of experts that took each token [T] (0 = the token skipped every expert).
  const std::vector<int32_t>& chosen() const { return idx_; }
  const std::vector<T>& gates() const { return gate_; }
  const std::vector<int32_t>& experts_per_token() const { return taken_; }
  const std::vector<T>& scores() const { return s_; }

 private:
  int d_, F_, E_;
  double cf_;
  Activation act_;
  int group_ = 0;
  ParamSet<T> params_;
  GroupedExperts<T> experts_;
  std::vector<int64_t> offsets_;  // [E+1] expert e owns rows [e*G*C, (e+1)*G*C)
  int64_t tokens_ = 0, groups_ = 0, m_ = 0, C_ = 0;
  std::vector<T> x_, z_, s_, gate_, xp_, y_;
  std::vector<int32_t> idx_, taken_, order_;
  std::vector<T> dy_, dxp_, ds_, dz_;
};

}  // namespace moe
