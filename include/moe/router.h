// The router of an MoE layer, step by step as in docs/moe-layer.md, each step a function
// with its backward beside it. Router math runs in T = float or double, never lower.
//   logits z [T, E] -> scores s [T, E] -> selection key u = s + b (masked) [T, E]
//   -> primary top-k experts [T, k] -> gates [T, k] -> capacity (drop / reroute)
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

}  // namespace moe
