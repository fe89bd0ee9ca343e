// Expert parallelism of one MoE layer, composed of the parts of MoeLayer: the same Router
// (router.h), GroupedExperts over this rank's shard and the AllToAllDispatcher
// (all_to_all_dispatcher.h) in place of the local one. Each rank of an expert-parallel group of P
// ranks holds E/P experts (rank q holds experts [q*E/P, (q+1)*E/P)); tokens travel to their experts
// and back. The steps of one forward (MegaBlocks' parallel_forward_once, Megatron's dispatcher):
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

#include "moe/all_to_all_dispatcher.h"
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

  const MoeMetrics& metrics() const { return router_.metrics(); }  // global
  const RoutingPlan& global_plan() const { return router_.plan(); }
  std::vector<T>& selection_bias() { return router_.selection_bias(); }
  const std::vector<T>& selection_bias() const { return router_.selection_bias(); }
  void update_selection_bias() { router_.update_selection_bias(); }
  const ExpertParallelStats& stats() const { return stats_; }

 private:
  // Step 2: allgather the logits and token masks, route the global batch, keep the local slice.
  void route_global();

  MoeConfig cfg_;
  ParallelGroups& groups_;
  int d_, F_, E_, k_, Hs_, P_, El_, e0_;
  ParamSet<T> params_;
  int64_t router_off_ = -1;
  Router<T> router_;  // on the global batch [Tg, ...]
  GroupedExperts<T> experts_;
  SharedExperts<T> shared_;
  AllToAllDispatcher<T> dispatcher_;

  int64_t Tl_ = 0, Tg_ = 0, t0_ = 0;
  std::vector<int64_t> rank_tokens_;  // [W]
  std::vector<uint8_t> mask_l_, mask_g_;
  RoutingPlan local_plan_;
  Permutation perm_;

  std::vector<T> x_, zl_, xp_, y_, xr_, yr_;
  std::vector<T> dy_, dyr_, dxr_, dxp_, dgate_l_, dgate_, dhn_;
  ExpertParallelStats stats_;
};

}  // namespace moe
