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
// Parameters (ParamSet names):            Workspaces saved for backward:
//   router.weight        [E, d]             z, s, lse, p [T, E]; gates [T, k]
//   router.noise_weight  [E, d]  (noisy)    xp [N, d]; h1, h3, a [N, F]; y [N, d]
//   experts.w1/w3        [E, F, d]          shared h1, h3, a [T, Hs]; shared y [T, d]
//   experts.w2           [E, d, F]          (N = kept assignments <= T*k)
//   shared.w1/w3         [Hs, d]
//   shared.w2            [d, Hs]
//   shared.gate          [1, d]
#pragma once

#include <vector>

#include "moe/feed_forward.h"
#include "moe/grouped_experts.h"
#include "moe/moe_config.h"
#include "moe/moe_losses.h"
#include "moe/permute.h"
#include "moe/router.h"
#include "moe/shared_experts.h"

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

// Arena offsets of the layer's parameters, resolved once (-1 when absent) so that hot paths
// never look names up; offsets rather than pointers keep a layer safely copyable. MoeLayer and
// the CUDA layer (cuda_moe.h) share the layout, and this one lookup.
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
  explicit MoeLayer(const MoeConfig& config);

  // Router, expert and shared weights ~ N(0, std).
  void init_weights(Rng& rng, double std = 0.02);

  void forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt = {}) override;
  void backward(View<const T> dout, View<T> dx, double aux_scale = 1.0) override;
  double aux_loss() const override;
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
  const RoutingPlan& plan() const { return router_.plan(); }
  const MoeMetrics& metrics() const { return router_.metrics(); }
  // Final gates of the last forward, [T, k] (0 where dropped) and the scores [T, E].
  const std::vector<T>& gates() const { return router_.gates(); }
  const std::vector<T>& scores() const { return router_.scores(); }
  // Expert outputs of the last forward in expert-major order [N, d] (for inspection).
  const Permutation& permutation() const { return perm_; }

  // Attach (or with nullptr detach) a timing record that forward/backward add to.
  void set_timings(LayerTimings* t) { timings_ = t; }
  // OpenMP expert scheduling (GroupedExperts::set_schedule): -1 (default) decides per call,
  // 0 one expert after another with threaded GEMMs, 1 experts in parallel. Same results.
  void set_expert_schedule(int mode) { experts_.set_schedule(mode); }

 private:
  void reserve(int64_t tokens);

  T* value(int64_t off) { return off < 0 ? nullptr : params_.values().data() + off; }
  T* grad(int64_t off) { return off < 0 ? nullptr : params_.grads().data() + off; }

  MoeConfig cfg_;
  int d_, F_, E_, k_, Hs_;
  ParamSet<T> params_;
  MoeParamOffsets off_;
  Router<T> router_;
  GroupedExperts<T> experts_;
  SharedExperts<T> shared_;

  int64_t tokens_ = 0;
  bool noisy_ = false;  // noise applied in the last forward
  Permutation perm_;
  std::vector<uint8_t> dropout_mask_;  // [E]
  std::vector<double> uniforms_;

  // Forward state; backward scratch.
  std::vector<T> x_, noise_, hn_, xp_, y_;
  std::vector<T> dy_, dxp_, dgate_, dhn_;

  LayerTimings* timings_ = nullptr;
};

}  // namespace moe
