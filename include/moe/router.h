// The router of an MoE layer, step by step as in docs/moe-layer.md, each step a function
// with its backward beside it, and Router, the one object that runs the whole sequence (used
// by MoeLayer, expert parallelism and inference). Router math runs in T = float or double.
//   logits z [T, E] -> scores s [T, E] -> selection key u = s + b (masked) [T, E]
//   -> primary top-k experts [T, k] -> gates [T, k] -> capacity (drop / reroute)
//   -> final gates [T, k] -> losses (moe_losses.h) and metrics
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "moe/moe_config.h"

namespace moe {

// The discrete decisions of one call. Replaying a plan (see MoeLayer::ForwardOptions) holds
// the selection fixed, which is how gradients are checked against finite differences.
struct RoutingPlan {
  int64_t tokens = 0;
  int k = 0;
  int num_experts = 0;
  std::vector<uint8_t> token_mask;   // [T]   1 = real token, 0 = padding (never routed)
  std::vector<uint8_t> expert_mask;  // [E]   0 = dropped out for this batch
  std::vector<int32_t> primary;      // [T*k] top-k experts in descending u; -1 for padding
  std::vector<int32_t> expert;       // [T*k] final expert of each slot; -1 = dropped / padding
  std::vector<uint8_t> rerouted;     // [T*k] 1 if the slot moved to another expert
  int64_t capacity = 0;              // per-expert capacity C; -1 = unlimited
  int64_t valid_tokens = 0;
  int64_t dropped = 0, rerouted_count = 0;

  // Scratch reused across calls so that routing does not allocate in steady state.
  std::vector<int64_t> scratch_offset, scratch_bucket, scratch_load, scratch_overflow;
  std::vector<int> scratch_order;

  void resize(int64_t T, int k_, int E);
};

struct MoeMetrics {
  std::vector<int64_t> primary_per_expert;  // router demand, before capacity
  std::vector<int64_t> kept_per_expert;     // tokens each expert actually ran
  int64_t tokens = 0;                       // valid tokens
  int64_t assignments = 0;                  // tokens * k
  int64_t dropped = 0, rerouted = 0;
  int64_t capacity = -1;  // -1 = dropless
  double dropped_fraction = 0;
  double load_balance_loss = 0, importance_loss = 0, z_loss = 0;
  double router_entropy = 0;  // mean over tokens of -sum p log p (nats)
  double load_cv = 0;         // std / mean of primary_per_expert
  double load_max_over_mean = 0;

  // load_cv and load_max_over_mean from primary_per_expert.
  void set_load_spread();
};

// z = x Wr^T; with noise (training, noisy_gating): hn = x Wn^T, z += noise * softplus(hn).
// x [T, d], wr/wn [E, d], noise/hn/z [T, E]. wn and noise null when not noisy.
template <class T>
void router_logits_forward(int64_t tokens, int64_t d, int64_t E, const T* x, const T* wr,
                           const T* wn, const T* noise, T* hn, T* z);
// dz [T, E] -> dx (+=), dwr (+=), dwn (+=). dhn is [T, E] scratch.
template <class T>
void router_logits_backward(int64_t tokens, int64_t d, int64_t E, const T* x, const T* wr,
                            const T* wn, const T* noise, const T* hn, const T* dz, T* dx, T* dwr,
                            T* dwn, T* dhn);

// s = softmax(z) or sigmoid(z) per row; lse [T] = logsumexp(z) per row (for the z-loss).
template <class T>
void router_scores_forward(ScoreFunc f, int64_t tokens, int64_t E, const T* z, T* s, T* lse);
// ds -> dz (=), through softmax or sigmoid.
template <class T>
void router_scores_backward(ScoreFunc f, int64_t tokens, int64_t E, const T* s, const T* ds, T* dz);

// Fills u [T, E] (s + bias, -inf where masked or outside the taken groups) and plan.primary.
// bias may be null. Padding tokens get primary = -1.
template <class T>
void select_top_k(const MoeConfig& c, const T* s, const T* bias, RoutingPlan& plan, T* u);

// Per-token normalizer S_t [T] and primary gates [T, k] (zeros for padding).
template <class T>
void primary_gates(const MoeConfig& c, const RoutingPlan& plan, const T* s, T* norm, T* gate);

// Applies capacity_factor, drop_policy and overflow to plan (fills expert, rerouted, counts).
// gate: primary gates [T, k] (priority of "score"); u: selection keys (reroute order).
template <class T>
void apply_capacity(const MoeConfig& c, const T* gate, const T* u, RoutingPlan& plan);

// Final gates [T, k] of plan.expert (0 where dropped).
template <class T>
void final_gates(const MoeConfig& c, const RoutingPlan& plan, const T* s, const T* norm, T* gate);

// Backward of gates g = rsf * s[e] / S: dgate [T, k] of the final slots and dgate_primary [T, k]
// of the primary slots (may be null) accumulate into ds (+=).
template <class T>
void gates_backward(const MoeConfig& c, const RoutingPlan& plan, const T* s, const T* norm,
                    const T* dgate, const T* dgate_primary, T* ds);

// Expert dropout: each expert unavailable with probability p; at least k stay available.
// Draws one uniform per expert from rng_uniforms (E values in [0, 1)).
void expert_dropout_mask(int E, int k, double p, const double* uniforms, uint8_t* mask);

// Aux-loss-free balancing: b_i += rate * sign(mean_load - load_i).
template <class T>
void update_selection_bias(int E, double rate, const int64_t* primary_counts, int64_t valid_tokens,
                           int k, T* bias);

// The whole routing sequence of one MoE layer on a batch whose logits the caller computed (the
// layer from its router weights; expert parallelism all-gathered from every rank), and its
// backward from the final-gate gradients to the logit gradients. Owns the routing workspaces
// (grown to the largest batch, then reused: a steady-state step does not allocate) and the
// selection bias of aux-loss-free balancing (state, not a parameter).
template <class T>
class Router {
 public:
  struct Inputs {
    const uint8_t* token_mask = nullptr;   // [T] 0 = padding; null = every token is real
    const uint8_t* expert_mask = nullptr;  // [E] 0 = dropped out; null = every expert
    const RoutingPlan* replay = nullptr;   // holds the selection of an earlier call fixed
  };

  explicit Router(const MoeConfig& c);

  // The logits buffer z [T, E] of a batch of T tokens: fill it, then call forward(T, ...).
  T* logits(int64_t tokens);
  // Scores, top-k of s + b, primary gates, capacity, final gates, losses and metrics.
  void forward(int64_t tokens, const Inputs& in = {});
  // dgate [T, k] of the final gates -> dz [T, E] (owned by the router), the loss terms
  // scaled by aux_scale.
  const T* backward(const T* dgate, double aux_scale);
  // Aux-loss-free balancing: b_i += rate * sign(mean_load - load_i) from the last forward.
  void update_selection_bias();

  const MoeConfig& config() const { return cfg_; }
  int64_t tokens() const { return plan_.tokens; }
  const RoutingPlan& plan() const { return plan_; }
  const MoeMetrics& metrics() const { return metrics_; }
  double aux_loss() const {
    return metrics_.load_balance_loss + metrics_.importance_loss + metrics_.z_loss;
  }
  // Final gates [T, k] (0 where dropped), scores [T, E], logits [T, E] of the last forward.
  const std::vector<T>& gates() const { return gate_; }
  std::vector<T>& gates() { return gate_; }
  const std::vector<T>& scores() const { return s_; }
  const std::vector<T>& logits() const { return z_; }
  std::vector<T>& selection_bias() { return bias_; }
  const std::vector<T>& selection_bias() const { return bias_; }

 private:
  MoeConfig cfg_;
  int E_, k_;
  RoutingPlan plan_;
  MoeMetrics metrics_;
  std::vector<T> bias_;          // [E]
  std::vector<int64_t> counts_;  // [E] primary assignments
  std::vector<double> importance_, mean_prob_;
  std::vector<T> z_, s_, lse_, u_, p_, norm_, gate_prim_, gate_;  // forward, saved
  std::vector<T> dgate_prim_, ds_, dp_, dz_;                      // backward scratch
};

}  // namespace moe
