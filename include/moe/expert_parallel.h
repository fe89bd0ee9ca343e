// Expert parallelism of one MoE layer: each rank of an expert-parallel group of P ranks holds
// E/P experts (rank q holds experts [q*E/P, (q+1)*E/P)); tokens travel to their experts and
// back. The steps of one forward (MegaBlocks' parallel_forward_once, Megatron's dispatcher):
//   1. router logits of the local tokens (the router is replicated on every rank);
//   2. allgather the logits [T, E] over all ranks: every rank runs the one-process routing code
//      (top-k, gates, capacity, losses, metrics) on the global batch, so capacity and drop
//      decisions are exactly those of one process, and keeps the slice of its own tokens;
//   3. gather the local kept rows in expert order (already grouped by destination rank);
//      a counts all-to-all (rows per local expert) then an MPI_Alltoallv of the rows;
//   4. regroup the received rows by local expert (source rank order = token order) and run
//      the experts on their contiguous blocks;
//   5. the reverse all-to-all brings the outputs home; gate-weighted combine per token;
//      shared experts run on the local tokens.
// The backward mirrors it: dy rows out, expert backward, dx rows home; the gate gradients are
// allgathered so the router backward again runs on the global batch and each rank takes the
// rows of its tokens. Gradients stay local: the caller sums router/shared gradients over all
// ranks and expert gradients over the replicas of the shard (ParallelGroups), as the trainer
// does. Every rank must pass the same number of tokens.
// Not supported under expert parallelism (an error names the key): noisy_gating and
// expert_dropout (they draw random numbers per token or per batch).
#pragma once

#include <vector>

#include "moe/communicator.h"
#include "moe/feed_forward.h"
#include "moe/moe_layer.h"

namespace moe {

// Traffic and time of the last forward+backward of one layer.
struct ExpertParallelStats {
  int64_t rows_sent = 0, rows_received = 0;  // to / from other ranks, forward and backward
  double comm_seconds = 0, compute_seconds = 0;
};

template <class T>
class ExpertParallelMoe final : public FeedForward<T> {
 public:
  // Parameter names as MoeLayer's; experts.* hold the local shard [E/P, ...].
  ExpertParallelMoe(const MoeConfig& config, ParallelGroups& groups);

  void forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt = {}) override;
  void backward(View<const T> dout, View<T> dx, double aux_scale = 1.0) override;
  double aux_loss() const override;  // of the global batch, the same on every rank
  ParamSet<T>& params() override { return params_; }
  double active_macs_per_token() const override;

  int first_expert() const { return e0_; }
  int local_experts() const { return El_; }
  // This rank's part of a full layer's parameters, and back (for checkpoints: experts are
  // gathered into the full layer by the caller).
  void copy_from(MoeLayer<T>& full);
  void copy_into(MoeLayer<T>& full);  // router/shared and this rank's experts

  const MoeMetrics& metrics() const { return metrics_; }  // global
  const RoutingPlan& global_plan() const { return plan_; }
  std::vector<T>& selection_bias() { return bias_; }
  const std::vector<T>& selection_bias() const { return bias_; }
  void update_selection_bias();
  const ExpertParallelStats& stats() const { return stats_; }

 private:
  void route_global();
  // A parameter's values / gradients, or null when the config has none (w3 of GELU, the gate).
  T* param(const char* name) { return params_.has(name) ? params_.value(name) : nullptr; }
  T* grad(const char* name) { return params_.has(name) ? params_.grad(name) : nullptr; }
  // Sends `rows` [N, d] of the local permutation to the expert owners (forward direction)
  // into recv_ [R, d] in expert-block order, or back (reverse direction).
  void dispatch(const T* rows, T* blocks);
  void undispatch(const T* blocks, T* rows);

  MoeConfig cfg_;
  ParallelGroups& groups_;
  int d_, F_, E_, k_, Hs_, P_, El_, e0_;
  ParamSet<T> params_;
  std::vector<T> bias_;

  // Global routing state [Tg, E] / [Tg*k] and the local slice.
  int64_t Tl_ = 0, Tg_ = 0, t0_ = 0;
  std::vector<T> zl_, z_, s_, lse_, u_, p_, norm_, gate_prim_, gate_;
  std::vector<uint8_t> mask_l_;
  RoutingPlan plan_, local_plan_;
  Permutation perm_;
  std::vector<int64_t> counts_;
  std::vector<double> importance_, mean_prob_;
  MoeMetrics metrics_;

  // Dispatch layout: per peer q of the expert group, rows per local expert sent/received.
  std::vector<int64_t> send_counts_, recv_counts_;  // [P * El]
  std::vector<int64_t> send_bytes_, recv_bytes_;    // [P] row bytes to / from each peer
  std::vector<int64_t> count_bytes_;                // [P] bytes of one peer's counts
  std::vector<int64_t> block_offsets_;              // [El + 1] rows of each local expert
  std::vector<int64_t> recv_to_block_;              // [R] receive index -> block row
  int64_t R_ = 0;

  std::vector<T> x_, xp_, y_, xr_, yr_, h1_, h3_, a_, buf_;
  std::vector<T> sh1_, sh3_, sa_, sy_, sgate_;
  std::vector<T> dy_, dyr_, dxr_, dxp_, da_, dh1_, dh3_, dgate_l_, dgate_, dgate_prim_, ds_, dp_,
      dz_, dsy_, dxs_, dhn_;
  ExpertParallelStats stats_;
};

}  // namespace moe
