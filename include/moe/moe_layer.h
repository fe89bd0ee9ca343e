// The sparse MoE layer (docs/moe-layer.md): router -> top-k -> gates -> capacity ->
// grouped experts -> gate-weighted combine, plus shared experts and the auxiliary losses.
//
// Execution is grouped, not looped: kept assignments are counting-sorted by expert, their rows
// gathered into one contiguous buffer, each expert runs its GEMM chain on its block, and the
// outputs are scaled by their gates and summed back per token. The backward pass reuses the
// permutation. Workspaces grow to the largest batch seen and are reused afterwards, so a
// steady-state training step does not allocate.
//
// The parts (Megatron-Core's split): Router (router.h) from the logits to the routing plan,
// losses and metrics; the local dispatcher (permute.h) gathers and scatters rows; the
// GroupedExperts (grouped_experts.h) run the expert FFNs and schedule them over threads;
// SharedExperts (shared_experts.h) run on every token. compute_dtype = "bfloat16" runs the expert
// and shared expert GEMMs in bf16 with fp32 accumulation (MoeLayer<float> only).
//
// Expert parallelism is the same layer with the all-to-all dispatcher (all_to_all_dispatcher.h):
// constructed with ParallelGroups, each rank of an expert group of P ranks holds E/P experts
// (rank q: [q*E/P, (q+1)*E/P)). The steps of one forward (MegaBlocks' parallel_forward_once):
//   1. router logits of the local tokens (the router is replicated on every rank);
//   2. allgather the logits [T, E] over all ranks: every rank routes the global batch, so
//      capacity and drop decisions are exactly those of one process, and keeps its slice;
//   3. gather the local kept rows in expert order; counts all-to-all, then the rows;
//   4. the local experts run on their received blocks;
//   5. the reverse all-to-all brings the outputs home; gate-weighted combine per token;
//      shared experts run on the local tokens.
// The backward mirrors it; the gate gradients are allgathered so the router backward runs on
// the global batch. Gradients stay local: the caller sums router/shared gradients over all
// ranks and expert gradients over the replicas of the shard (ParallelGroups), as the trainer
// does. Every rank must pass the same number of tokens. Not supported under expert
// parallelism (an error names the key): noisy_gating and expert_dropout.
//
// Parameters (ParamSet names):            Workspaces saved for backward:
//   router.weight        [E, d]             z, s, lse, p [T, E]; gates [T, k]
//   router.noise_weight  [E, d]  (noisy)    xp [N, d]; h1, h3, a [N, F]; y [N, d]
//   experts.w1/w3        [E, F, d]          shared h1, h3, a [T, Hs]; shared y [T, d]
//   experts.w2           [E, d, F]          (N = kept assignments <= T*k; experts.* hold
//                                            E/P experts under expert parallelism)
//   shared.w1/w3         [Hs, d]
//   shared.w2            [d, Hs]
//   shared.gate          [1, d]
#pragma once

#include <optional>
#include <vector>

#include "moe/all_to_all_dispatcher.h"
#include "moe/communicator.h"
#include "moe/feed_forward.h"
#include "moe/grouped_experts.h"
#include "moe/moe_config.h"
#include "moe/moe_losses.h"
#include "moe/permute.h"
#include "moe/router.h"
#include "moe/shared_experts.h"
#include "moe/step_profile.h"

namespace moe {

// Wall-clock seconds per part of the layer, summed over the calls made while attached with
// MoeLayer::set_timings (off by default: then the layer reads no clock).
struct LayerTimings {
  struct Pass {
    double routing = 0;  // fwd: copy, logits, scores, top-k, gates, capacity, losses, metrics
                         // bwd: gate, loss, score and logit gradients (router weights and dx)
    double gather = 0;   // fwd: build the permutation, gather rows; bwd: sum rows back into dx
    double experts = 0;  // expert FFNs: the GEMMs and the activation
    double combine = 0;  // fwd: gate-weighted scatter; bwd: its gradient (dy rows, dgate)
    double shared = 0;   // shared experts and their gate
    double total = 0;
  };
  Pass forward, backward;
  int64_t forward_calls = 0, backward_calls = 0;
};

// Traffic of the last forward of one expert-parallel layer.
struct ExpertParallelStats {
  int64_t rows_sent = 0, rows_received = 0;  // to / from other ranks, one direction
};

// Arena offsets of the layer's parameters, resolved once (-1 when absent) so that hot paths
// never look names up; offsets rather than pointers keep a layer safely copyable. MoeLayer and
// the CUDA layer (cuda_moe_layer.h) share the layout, and this one lookup.
struct MoeParamOffsets {
  int64_t router = -1, noise = -1, w1 = -1, w3 = -1, w2 = -1;
  int64_t shared_w1 = -1, shared_w3 = -1, shared_w2 = -1, shared_gate = -1;

  template <class T>
  static MoeParamOffsets of(const ParamSet<T>& p) {
    MoeParamOffsets o;
    o.router = p.offset_or_none("router.weight");
    o.noise = p.offset_or_none("router.noise_weight");
    o.w1 = p.offset_or_none("experts.w1");
    o.w3 = p.offset_or_none("experts.w3");
    o.w2 = p.offset_or_none("experts.w2");
    o.shared_w1 = p.offset_or_none("shared.w1");
    o.shared_w3 = p.offset_or_none("shared.w3");
    o.shared_w2 = p.offset_or_none("shared.w2");
    o.shared_gate = p.offset_or_none("shared.gate");
    return o;
  }
};

template <class T>
class MoeLayer final : public FeedForward<T> {
 public:
  // With groups: expert parallelism, this rank's shard of the experts (see above).
  explicit MoeLayer(const MoeConfig& config, ParallelGroups* groups = nullptr);

  // Router, expert and shared weights ~ N(0, std).
  void init_weights(Rng& rng, double std = 0.02);

  void forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt = {}) override;
  void backward(View<const T> dout, View<T> dx, double aux_scale = 1.0) override;
  double aux_loss() const override;  // of the global batch under expert parallelism
  ParamSet<T>& params() override { return params_; }
  double active_macs_per_token() const override;
  // Multiply-adds the last forward actually ran: router, kept assignments, shared experts.
  double last_forward_macs() const;

  // Aux-loss-free balancing: call after the optimizer step (uses the last forward's loads).
  void update_selection_bias() { router_.update_selection_bias(); }
  std::vector<T>& selection_bias() { return router_.selection_bias(); }
  const std::vector<T>& selection_bias() const { return router_.selection_bias(); }

  const MoeConfig& config() const { return cfg_; }
  const Router<T>& router() const { return router_; }
  const RoutingPlan& plan() const { return router_.plan(); }  // of the global batch
  const MoeMetrics& metrics() const { return router_.metrics(); }
  // Final gates of the last forward, [T, k] (0 where dropped) and the scores [T, E].
  const std::vector<T>& gates() const { return router_.gates(); }
  const std::vector<T>& scores() const { return router_.scores(); }
  // Expert outputs of the last forward in expert-major order [N, d] (for inspection).
  const Permutation& permutation() const { return perm_; }

  // Attach (or with nullptr detach) a timing record that forward/backward add to.
  void set_timings(LayerTimings* t) { timings_ = t; }
  // The same laps into a training step's profile (step_profile.h); null: off.
  void set_profile(StepProfile* p) { profile_ = p; }
  // OpenMP expert scheduling (GroupedExperts::set_schedule): -1 (default) decides per call,
  // 0 one expert after another with threaded GEMMs, 1 experts in parallel. Same results.
  void set_expert_schedule(int mode) { experts_.set_schedule(mode); }

  // Expert parallelism: the shard [first_expert, first_expert + local_experts).
  bool expert_parallel() const { return groups_ != nullptr; }
  int first_expert() const { return e0_; }
  int local_experts() const { return experts_.experts(); }
  const ExpertParallelStats& stats() const { return stats_; }
  // This shard's part of a full (one-process) layer's parameters and selection bias, and back
  // (router/shared and this rank's experts; the caller gathers the other experts).
  void copy_from(MoeLayer& full);
  void copy_into(MoeLayer& full);
  // copy_into, then the expert shards of the whole expert group gathered into full (collective
  // over the group: every rank ends with the whole layer).
  void gather_into(MoeLayer& full);

 private:
  void reserve(int64_t tokens);
  // Expert parallelism, step 2: allgather the logits and token masks, route the global batch
  // and keep this rank's slice as local_plan_.
  void route_global(const uint8_t* token_mask);

  T* value(int64_t off) { return off < 0 ? nullptr : params_.values().data() + off; }
  T* grad(int64_t off) { return off < 0 ? nullptr : params_.grads().data() + off; }

  MoeConfig cfg_;
  int d_, F_, E_, k_, Hs_;
  ParamSet<T> params_;
  MoeParamOffsets off_;
  Router<T> router_;
  GroupedExperts<T> experts_;
  SharedExperts<T> shared_;
  ParallelGroups* groups_ = nullptr;
  std::optional<AllToAllDispatcher<T>> all_to_all_;  // with groups_

  int64_t tokens_ = 0;
  int64_t t0_ = 0;  // first token of this rank in the global batch
  int e0_ = 0;
  bool noisy_ = false;  // noise applied in the last forward
  Permutation perm_;
  std::vector<uint8_t> dropout_mask_;  // [E]
  std::vector<double> uniforms_;

  // Forward state; backward scratch.
  std::vector<T> x_, noise_, hn_, xp_, y_;
  std::vector<T> dy_, dxp_, dgate_, dhn_;
  // Expert parallelism: local logits, the received rows [R, d], the global gate gradients.
  std::vector<T> zl_, xr_, yr_, dyr_, dxr_, dgate_global_;
  std::vector<int64_t> rank_tokens_;  // [world]
  std::vector<uint8_t> mask_l_, mask_g_;
  RoutingPlan local_plan_;
  ExpertParallelStats stats_;

  LayerTimings* timings_ = nullptr;
  StepProfile* profile_ = nullptr;
};

}  // namespace moe
