#include "moe/moe_layer.h"

#include <algorithm>
#include <chrono>
#include <type_traits>

namespace moe {

namespace {
// Adds the time since the previous lap to one field of a LayerTimings pass (and the whole
// span to its total) and to the matching part of a StepProfile (the forward part, or its
// backward); with neither it reads no clock.
class Laps {
 public:
  using Clock = std::chrono::steady_clock;
  Laps(LayerTimings::Pass* pass, StepProfile* profile, bool backward)
      : pass_(pass), profile_(profile), backward_(backward) {
    if (pass_ || profile_) start_ = last_ = Clock::now();
  }
  ~Laps() {
    if (pass_) pass_->total += std::chrono::duration<double>(Clock::now() - start_).count();
  }
  Laps(const Laps&) = delete;
  Laps& operator=(const Laps&) = delete;
  void lap(double LayerTimings::Pass::*field, StepPart part) {
    if (!pass_ && !profile_) return;
    const auto now = Clock::now();
    const double s = std::chrono::duration<double>(now - last_).count();
    if (pass_) pass_->*field += s;
    if (profile_) profile_->add(backward_ ? backward_of(part) : part, s);
    last_ = now;
  }

 private:
  LayerTimings::Pass* pass_;
  StepProfile* profile_;
  bool backward_;
  Clock::time_point start_, last_;
};
using Pass = LayerTimings::Pass;

// The config, checked before any part is sized from it.
const MoeConfig& validated(const MoeConfig& c) {
  c.validate("MoeLayer");
  return c;
}
}  // namespace

template <class T>
MoeLayer<T>::MoeLayer(const MoeConfig& config, ParallelGroups* groups)
    : cfg_(validated(config)),
      router_(config),
      experts_({config.hidden_act, config.hidden_size, config.moe_intermediate_size,
                config.compute_dtype},
               config.num_experts / (groups ? groups->layout.expert_parallel : 1)),
      shared_(config),
      groups_(groups) {
  MOE_CHECK((std::is_same_v<T, float>) || cfg_.compute_dtype == ComputeDtype::Float32,
            "MoeLayer: compute_dtype \"bfloat16\" needs MoeLayer<float> (fp32 master weights)");
  d_ = cfg_.hidden_size;
  F_ = cfg_.moe_intermediate_size;
  E_ = cfg_.num_experts;
  k_ = cfg_.num_experts_per_tok;
  Hs_ = cfg_.shared_hidden();
  if (groups_) {
    MOE_REQUIRE(!cfg_.noisy_gating, "noisy_gating is not supported with expert parallelism");
    MOE_REQUIRE(cfg_.expert_dropout == 0,
                "expert_dropout is not supported with expert parallelism");
    const ParallelLayout& layout = groups_->layout;
    const std::string bad = ParallelLayout::check(layout.world, layout.expert_parallel, E_);
    MOE_REQUIRE(bad.empty(), "{}", bad);
    e0_ = layout.ep_rank() * experts_.experts();
    all_to_all_.emplace(*groups_->expert_group, E_, d_);
    rank_tokens_.assign(static_cast<size_t>(groups_->world->size()), 0);
  }
  params_.declare("router.weight", {E_, d_});
  if (cfg_.noisy_gating) params_.declare("router.noise_weight", {E_, d_});
  declare_expert_weights(params_, experts_.experts(), F_, d_, cfg_.hidden_act);
  declare_shared_expert_weights(params_, cfg_);
  params_.allocate();
  off_ = MoeParamOffsets::of(params_);
  experts_.bind(params_);
  shared_.bind(params_);
  dropout_mask_.assign(E_, 1);
  uniforms_.assign(E_, 0.0);
}

template <class T>
void MoeLayer<T>::init_weights(Rng& rng, double std) {
  rng.fill_normal(params_.values().data(), params_.numel(), 0.0, std);
}

template <class T>
double MoeLayer<T>::active_macs_per_token() const {
  const double per_ffn = cfg_.hidden_act == Activation::SwiGLU ? 3.0 : 2.0;
  return static_cast<double>(d_) * E_ + per_ffn * d_ * (static_cast<double>(k_) * F_ + Hs_);
}

template <class T>
double MoeLayer<T>::last_forward_macs() const {
  const double per_ffn = cfg_.hidden_act == Activation::SwiGLU ? 3.0 : 2.0;
  const double T_ = static_cast<double>(tokens_), kept = static_cast<double>(perm_.rows());
  return T_ * d_ * E_ + per_ffn * d_ * (kept * F_ + T_ * Hs_);
}

template <class T>
void MoeLayer<T>::reserve(int64_t T_) {
  const int64_t TE = T_ * E_, Tk = T_ * k_;
  grow_to(x_, T_ * d_);
  for (auto* v : {&noise_, &hn_, &dhn_}) grow_to(*v, TE);
  if (groups_) grow_to(zl_, TE);
  grow_to(dgate_, Tk);
  // Expert buffers are sized for the dropless worst case, N = T*k rows; the shared backward
  // borrows the experts' scratch, which must then hold T*Hs.
  for (auto* v : {&xp_, &y_, &dy_, &dxp_}) grow_to(*v, Tk * d_);
  experts_.reserve(Tk, T_ * Hs_);
  shared_.reserve(T_);
}

template <class T>
void MoeLayer<T>::forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt) {
  MOE_CHECK(x.ndim() == 2 && x.size(1) == d_ && x.contiguous(),
            "MoeLayer::forward: x has shape {}, expected [T,{}] (hidden_size)", x.shape.str(), d_);
  const int64_t T_ = x.size(0);
  check_shape(out, {T_, d_}, "MoeLayer::forward: out");
  if (opt.check_finite) check_finite(x, "MoeLayer::forward: x");
  MOE_CHECK(
      !groups_ || (opt.replay == nullptr && opt.noise == nullptr && opt.expert_mask == nullptr),
      "MoeLayer::forward: replay, noise and expert masks are not supported with expert "
      "parallelism");
  MOE_CHECK(!opt.expert_views || (!groups_ && cfg_.hidden_act == Activation::SwiGLU),
            "MoeLayer::forward: expert weight views need SwiGLU experts and no expert "
            "parallelism");
  Laps laps(timings_ ? &timings_->forward : nullptr, profile_, false);
  if (timings_) ++timings_->forward_calls;
  tokens_ = T_;
  reserve(T_);
  std::copy_n(x.data, T_ * d_, x_.data());

  // Experts dropped out for this batch (a replayed plan brings its own mask).
  typename Router<T>::Inputs in{opt.token_mask, opt.expert_mask, opt.replay};
  if (!opt.replay && !opt.expert_mask && opt.training && cfg_.expert_dropout > 0) {
    MOE_CHECK(opt.rng != nullptr, "MoeLayer::forward: expert_dropout needs an Rng in training");
    for (int e = 0; e < E_; ++e) uniforms_[e] = opt.rng->uniform();
    expert_dropout_mask(E_, k_, cfg_.expert_dropout, uniforms_.data(), dropout_mask_.data());
    in.expert_mask = dropout_mask_.data();
  }

  // 1. Logits, with Shazeer noise in training.
  noisy_ = cfg_.noisy_gating && opt.training;
  if (noisy_) {
    if (opt.noise) {
      std::copy_n(opt.noise, T_ * E_, noise_.data());
    } else {
      MOE_CHECK(opt.rng != nullptr, "MoeLayer::forward: noisy_gating needs an Rng in training");
      opt.rng->fill_normal(noise_.data(), T_ * E_);
    }
  }
  const T* wn = noisy_ ? value(off_.noise) : nullptr;
  router_logits_forward<T>(T_, d_, E_, x_.data(), value(off_.router), wn, noise_.data(), hn_.data(),
                           groups_ ? zl_.data() : router_.logits(T_));
  // 2-6. Scores, selection (or the replayed one), gates, capacity, losses and metrics.
  if (groups_)
    route_global(opt.token_mask);
  else
    router_.forward(T_, in);
  laps.lap(&Pass::routing, StepPart::Router);

  // 7. Grouped experts: permute, run each expert on its block, combine.
  build_permutation(groups_ ? local_plan_ : router_.plan(), perm_);
  gather_rows<T>(perm_, k_, d_, x_.data(), xp_.data());
  laps.lap(&Pass::gather, StepPart::Dispatch);
  if (all_to_all_) {
    // Rows to the owners of their experts, the local experts on their blocks, and back.
    AllToAllDispatcher<T>& a2a = *all_to_all_;
    a2a.exchange_counts(perm_);
    const int64_t R = a2a.received_rows();
    for (auto* v : {&xr_, &yr_, &dyr_, &dxr_}) grow_to(*v, R * d_);
    experts_.reserve(R, T_ * Hs_);
    a2a.dispatch(xp_.data(), xr_.data());
    experts_.forward(params_, a2a.block_offsets(), xr_.data(), yr_.data());
    a2a.undispatch(yr_.data(), y_.data());
    stats_ = {a2a.rows_sent(), a2a.rows_received()};
  } else if (opt.expert_views) {
    if constexpr (std::is_same_v<T, float>)
      experts_.forward(opt.expert_views, perm_.offsets.data(), xp_.data(), y_.data());
    else
      MOE_CHECK(false, "MoeLayer::forward: expert weight views need float");
  } else {
    experts_.forward(params_, perm_.offsets.data(), xp_.data(), y_.data());
  }
  laps.lap(&Pass::experts, StepPart::Experts);
  scatter_gated<T>(perm_, T_, k_, d_, y_.data(), router_.gates().data() + t0_ * k_, out.data);
  laps.lap(&Pass::combine, StepPart::Combine);

  // 8. Shared experts on every token, optionally gated.
  if (Hs_ > 0) {
    shared_.forward(params_, T_, x_.data(), out.data, opt.shared_views);
    laps.lap(&Pass::shared, StepPart::SharedExperts);
  }
}

template <class T>
void MoeLayer<T>::route_global(const uint8_t* token_mask) {
  Communicator& world = *groups_->world;
  const int64_t T_ = tokens_;
  world.allgather(&tokens_, sizeof(int64_t), rank_tokens_.data());
  for (int r = 0; r < world.size(); ++r)
    MOE_CHECK(rank_tokens_[r] == T_, "expert parallelism: rank {} has {} tokens, rank {} has {}",
              world.rank(), T_, r, rank_tokens_[r]);
  const int64_t Tg = T_ * world.size();
  t0_ = T_ * world.rank();
  world.allgather(zl_.data(), T_ * E_ * static_cast<int64_t>(sizeof(T)), router_.logits(Tg));
  mask_l_.resize(static_cast<size_t>(T_));
  mask_g_.resize(static_cast<size_t>(Tg));
  for (int64_t t = 0; t < T_; ++t) mask_l_[t] = token_mask ? token_mask[t] != 0 : 1;
  world.allgather(mask_l_.data(), T_, mask_g_.data());
  router_.forward(Tg, {mask_g_.data(), nullptr, nullptr});

  // The slice of this rank's tokens, as a plan of its own for the permutation.
  const RoutingPlan& plan = router_.plan();
  if (local_plan_.tokens != T_ || local_plan_.k != k_) local_plan_.resize(T_, k_, E_);
  std::copy_n(plan.expert.begin() + t0_ * k_, T_ * k_, local_plan_.expert.begin());
  std::copy_n(plan.primary.begin() + t0_ * k_, T_ * k_, local_plan_.primary.begin());
  std::copy_n(mask_l_.begin(), T_, local_plan_.token_mask.begin());
}

template <class T>
void MoeLayer<T>::backward(View<const T> dout, View<T> dx, double aux_scale) {
  const int64_t T_ = tokens_;
  check_shape(dout, {T_, d_}, "MoeLayer::backward: dout");
  check_shape(dx, {T_, d_}, "MoeLayer::backward: dx");
  Laps laps(timings_ ? &timings_->backward : nullptr, profile_, true);
  if (timings_) ++timings_->backward_calls;

  // Combine -> experts -> gather, in reverse.
  scatter_gated_backward<T>(perm_, T_, k_, d_, dout.data, y_.data(),
                            router_.gates().data() + t0_ * k_, dy_.data(), dgate_.data());
  laps.lap(&Pass::combine, StepPart::Combine);
  if (all_to_all_) {
    AllToAllDispatcher<T>& a2a = *all_to_all_;
    a2a.dispatch(dy_.data(), dyr_.data());
    experts_.backward(params_, a2a.block_offsets(), xr_.data(), dyr_.data(), dxr_.data());
    a2a.undispatch(dxr_.data(), dxp_.data());
  } else {
    experts_.backward(params_, perm_.offsets.data(), xp_.data(), dy_.data(), dxp_.data());
  }
  laps.lap(&Pass::experts, StepPart::Experts);
  std::fill(dx.data, dx.data + T_ * d_, T(0));
  gather_rows_backward<T>(perm_, T_, k_, d_, dxp_.data(), dx.data);
  laps.lap(&Pass::gather, StepPart::Dispatch);

  // Shared experts and their gate.
  if (Hs_ > 0) {
    shared_.backward(params_, T_, x_.data(), dout.data, dx.data, experts_.scratch());
    laps.lap(&Pass::shared, StepPart::SharedExperts);
  }

  // Router: gates and losses -> scores -> logits -> weights and x. Under expert parallelism
  // the gate gradients of every token, the backward on the global batch, this rank's rows.
  const T* dgate = dgate_.data();
  if (groups_) {
    grow_to(dgate_global_, router_.tokens() * k_);
    groups_->world->allgather(dgate_.data(), T_ * k_ * static_cast<int64_t>(sizeof(T)),
                              dgate_global_.data());
    dgate = dgate_global_.data();
  }
  const T* dz = router_.backward(dgate, aux_scale) + t0_ * E_;
  const T* wn = noisy_ ? value(off_.noise) : nullptr;
  router_logits_backward<T>(T_, d_, E_, x_.data(), value(off_.router), wn, noise_.data(),
                            hn_.data(), dz, dx.data, grad(off_.router),
                            noisy_ ? grad(off_.noise) : nullptr, dhn_.data());
  laps.lap(&Pass::routing, StepPart::Router);
}

template <class T>
void MoeLayer<T>::copy_from(MoeLayer& full) {
  for (const auto& spec : params_.specs()) {
    const int64_t n = spec.shape.numel();
    const bool expert = spec.name.rfind("experts.", 0) == 0;
    std::copy_n(full.params().value(spec.name) + (expert ? e0_ * (n / local_experts()) : 0), n,
                params_.value(spec.name));
  }
  selection_bias() = full.selection_bias();
}

template <class T>
void MoeLayer<T>::copy_into(MoeLayer& full) {
  for (const auto& spec : params_.specs()) {
    const int64_t n = spec.shape.numel();
    const bool expert = spec.name.rfind("experts.", 0) == 0;
    std::copy_n(params_.value(spec.name), n,
                full.params().value(spec.name) + (expert ? e0_ * (n / local_experts()) : 0));
  }
  full.selection_bias() = selection_bias();
}

template <class T>
void MoeLayer<T>::gather_into(MoeLayer& full) {
  MOE_CHECK(groups_ != nullptr, "MoeLayer::gather_into: not an expert-parallel shard");
  copy_into(full);
  for (const char* name : {"experts.w1", "experts.w3", "experts.w2"}) {
    if (!full.params().has(name)) continue;
    const int64_t n = params_.spec(name).shape.numel();  // this rank's shard
    std::vector<T> mine(params_.value(name), params_.value(name) + n);
    groups_->expert_group->allgather(mine.data(), n * static_cast<int64_t>(sizeof(T)),
                                     full.params().value(name));
  }
}

template <class T>
double MoeLayer<T>::aux_loss() const {
  return router_.aux_loss();
}

template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace moe
