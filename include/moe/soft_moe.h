// Soft MoE (Puigcerver et al. 2023, "From Sparse to Soft Mixtures of Experts"): every expert
// slot is a soft mix of all tokens of one example, so nothing is dropped and every expert gets
// a gradient from every token. Non-causal only (a slot mixes the whole example).
//
// Per group (one image: `group_size` consecutive rows of x), with m tokens and S = E*p slots:
//   L = X Phi                       [m, S]   logits
//   D = softmax over tokens of L    [m, S]   dispatch weights (each column sums to 1)
//   C = softmax over slots of L     [m, S]   combine weights (each row sums to 1)
//   Xs = D^T X                      [S, d]   slot inputs; slot s belongs to expert s / p
//   Ys[s] = FFN_{s/p}(Xs[s])        [S, d]   GroupedExperts, expert e on its p slots of every
//                                            group (expert-major)
//   Y = C Ys                        [m, d]
// The paper's optional l2 normalization of X and Phi (with a learned scale) is left out: the
// encoder feeds this layer RMS-normalized inputs and at our widths the logits stay small.
// Parameters: router.phi [d, E*p]; experts.w1/w3 [E, F, d]; experts.w2 [E, d, F].
// backward() writes dx (=) and accumulates parameter gradients (+=). No auxiliary loss.
#pragma once

#include <vector>

#include "moe/feed_forward.h"
#include "moe/grouped_experts.h"
#include "moe/moe_config.h"

namespace moe {

template <class T>
class SoftMoe final : public FeedForward<T> {
 public:
  // Uses hidden_size, moe_intermediate_size, num_experts and hidden_act of c.
  SoftMoe(const MoeConfig& c, int slots_per_expert);
  void init_weights(Rng& rng, double std = 0.02);
  // Tokens per example (rows of x are grouped consecutively); 0 = the whole batch is one group.
  void set_group_size(int m) { group_ = m; }

  void forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt = {}) override;
  void backward(View<const T> dout, View<T> dx, double aux_scale = 1.0) override;
  double aux_loss() const override { return 0.0; }
  ParamSet<T>& params() override { return params_; }
  // E*p slots run an expert per group of m tokens: E*p/m expert FFNs per token, plus the
  // dispatch and combine products (2 * E*p * d each, the logits d * E*p).
  double active_macs_per_token() const override;

  int slots_per_expert() const { return p_; }
  const std::vector<T>& dispatch() const { return D_; }  // [T, E*p] of the last forward
  const std::vector<T>& combine() const { return C_; }   // [T, E*p]

 private:
  int d_, F_, E_, p_, S_;
  Activation act_;
  int group_ = 0;
  ParamSet<T> params_;
  GroupedExperts<T> experts_;
  std::vector<int64_t> offsets_;  // [E+1] expert e owns slot rows [e*G*p, (e+1)*G*p)
  int64_t tokens_ = 0, groups_ = 0, m_ = 0;
  std::vector<T> x_, L_, D_, C_;                  // [T, d], [T, S] x3
  std::vector<T> xs_, ys_;                        // expert-major [E, G*p, d]
  std::vector<T> dys_, dxs_, dC_, dD_, dL_, gs_;  // backward scratch
};

}  // namespace moe
