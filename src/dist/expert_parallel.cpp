#include "moe/expert_parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "moe/error.h"

namespace moe {

namespace {

template <class V>
void grow(V& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// Adds the seconds since construction (or the last lap) to one of two counters.
class Clock {
 public:
  Clock() : t_(std::chrono::steady_clock::now()) {}
  void lap(double& into) {
    const auto now = std::chrono::steady_clock::now();
    into += std::chrono::duration<double>(now - t_).count();
    t_ = now;
  }

 private:
  std::chrono::steady_clock::time_point t_;
};

}  // namespace

template <class T>
ExpertParallelMoe<T>::ExpertParallelMoe(const MoeConfig& c, ParallelGroups& groups)
    : cfg_(c),
      groups_(groups),
      router_(c),
      experts_({c.hidden_act, c.hidden_size, c.moe_intermediate_size, c.compute_dtype},
               c.num_experts / groups.layout.expert_parallel),
      shared_(c),
      dispatcher_(*groups.expert_group, c.num_experts, c.hidden_size) {
  cfg_.validate("ExpertParallelMoe");
  MOE_REQUIRE(!cfg_.noisy_gating, "noisy_gating is not supported with expert parallelism");
  MOE_REQUIRE(cfg_.expert_dropout == 0, "expert_dropout is not supported with expert parallelism");
  d_ = cfg_.hidden_size, F_ = cfg_.moe_intermediate_size, E_ = cfg_.num_experts;
  k_ = cfg_.num_experts_per_tok, Hs_ = cfg_.shared_hidden();
  P_ = groups_.layout.expert_parallel;
  const std::string bad = ParallelLayout::check(groups_.layout.world, P_, E_);
  MOE_REQUIRE(bad.empty(), "{}", bad);
  El_ = E_ / P_;
  e0_ = groups_.layout.ep_rank() * El_;
  params_.declare("router.weight", {E_, d_});
  declare_expert_weights(params_, El_, F_, d_, cfg_.hidden_act);
  declare_shared_expert_weights(params_, cfg_);
  params_.allocate();
  router_off_ = params_.offset_or_none("router.weight");
  experts_.bind(params_);
  shared_.bind(params_);
  rank_tokens_.assign(static_cast<size_t>(groups_.world->size()), 0);
}

template <class T>
double ExpertParallelMoe<T>::active_macs_per_token() const {
  const double per_ffn = cfg_.hidden_act == Activation::SwiGLU ? 3.0 : 2.0;
  return static_cast<double>(d_) * E_ + per_ffn * d_ * (static_cast<double>(k_) * F_ + Hs_);
}

template <class T>
void ExpertParallelMoe<T>::copy_from(MoeLayer<T>& full) {
  for (const char* name : {"router.weight", "shared.w1", "shared.w3", "shared.w2", "shared.gate"})
    if (params_.has(name))
      std::copy_n(full.params().value(name), params_.spec(name).shape.numel(), params_.value(name));
  for (const char* name : {"experts.w1", "experts.w3", "experts.w2"}) {
    if (!params_.has(name)) continue;
    const int64_t n = params_.spec(name).shape.numel();
    std::copy_n(full.params().value(name) + e0_ * (n / El_), n, params_.value(name));
  }
  router_.selection_bias() = full.selection_bias();
}

template <class T>
void ExpertParallelMoe<T>::copy_into(MoeLayer<T>& full) {
  for (const char* name : {"router.weight", "shared.w1", "shared.w3", "shared.w2", "shared.gate"})
    if (params_.has(name))
      std::copy_n(params_.value(name), params_.spec(name).shape.numel(), full.params().value(name));
  for (const char* name : {"experts.w1", "experts.w3", "experts.w2"}) {
    if (!params_.has(name)) continue;
    const int64_t n = params_.spec(name).shape.numel();
    std::copy_n(params_.value(name), n, full.params().value(name) + e0_ * (n / El_));
  }
  full.selection_bias() = router_.selection_bias();
}

template <class T>
void ExpertParallelMoe<T>::route_global() {
  Communicator& world = *groups_.world;
  const int W = world.size();
  world.allgather(&Tl_, sizeof(int64_t), rank_tokens_.data());
  for (int r = 0; r < W; ++r)
    MOE_CHECK(rank_tokens_[r] == Tl_, "expert parallelism: rank {} has {} tokens, rank {} has {}",
              world.rank(), Tl_, r, rank_tokens_[r]);
  Tg_ = Tl_ * W;
  t0_ = Tl_ * world.rank();
  world.allgather(zl_.data(), Tl_ * E_ * static_cast<int64_t>(sizeof(T)), router_.logits(Tg_));
  mask_g_.resize(static_cast<size_t>(Tg_));
  world.allgather(mask_l_.data(), Tl_, mask_g_.data());
  router_.forward(Tg_, {mask_g_.data(), nullptr, nullptr});

  // The slice of this rank's tokens, as a plan of its own for the permutation.
  const RoutingPlan& plan = router_.plan();
  local_plan_.resize(Tl_, k_, E_);
  std::copy_n(plan.expert.begin() + t0_ * k_, Tl_ * k_, local_plan_.expert.begin());
  std::copy_n(plan.primary.begin() + t0_ * k_, Tl_ * k_, local_plan_.primary.begin());
  std::copy_n(mask_l_.begin(), Tl_, local_plan_.token_mask.begin());
}

template <class T>
void ExpertParallelMoe<T>::forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt) {
  MOE_CHECK(x.ndim() == 2 && x.size(1) == d_ && x.contiguous(),
            "ExpertParallelMoe::forward: x has shape {}, expected [T,{}]", x.shape.str(), d_);
  MOE_CHECK(opt.replay == nullptr && opt.noise == nullptr && opt.expert_mask == nullptr,
            "ExpertParallelMoe::forward: replay, noise and expert masks are not supported");
  stats_ = ExpertParallelStats{};
  Clock clock;
  Tl_ = x.size(0);
  check_shape(out, {Tl_, d_}, "ExpertParallelMoe::forward: out");
  grow(x_, Tl_ * d_);
  std::copy_n(x.data, Tl_ * d_, x_.data());
  grow(zl_, Tl_ * E_);
  mask_l_.assign(static_cast<size_t>(Tl_), 1);
  if (opt.token_mask)
    for (int64_t t = 0; t < Tl_; ++t) mask_l_[t] = opt.token_mask[t] != 0;

  // 1. Local router logits.
  router_logits_forward<T>(Tl_, d_, E_, x_.data(), params_.values().data() + router_off_, nullptr,
                           nullptr, nullptr, zl_.data());
  clock.lap(stats_.compute_seconds);
  // 2. Global routing.
  route_global();
  clock.lap(stats_.comm_seconds);

  // 3. Local rows in expert order, to the owners of their experts.
  build_permutation(local_plan_, perm_);
  const int64_t N = perm_.rows();
  grow(xp_, N * d_);
  grow(y_, N * d_);
  gather_rows<T>(perm_, k_, d_, x_.data(), xp_.data());
  clock.lap(stats_.compute_seconds);
  dispatcher_.exchange_counts(perm_);
  const int64_t R = dispatcher_.received_rows();
  grow(xr_, R * d_);
  grow(yr_, R * d_);
  dispatcher_.dispatch(xp_.data(), xr_.data());
  clock.lap(stats_.comm_seconds);

  // 4. Local experts on their blocks.
  experts_.reserve(R, Tl_ * Hs_);
  experts_.forward(params_, dispatcher_.block_offsets(), xr_.data(), yr_.data());
  clock.lap(stats_.compute_seconds);
  // 5. Outputs home, combined with the gates of the local tokens.
  dispatcher_.undispatch(yr_.data(), y_.data());
  clock.lap(stats_.comm_seconds);
  scatter_gated<T>(perm_, Tl_, k_, d_, y_.data(), router_.gates().data() + t0_ * k_, out.data);
  if (Hs_ > 0) {
    shared_.reserve(Tl_);
    shared_.forward(params_, Tl_, x_.data(), out.data);
  }
  stats_.rows_sent += dispatcher_.rows_sent();
  stats_.rows_received += dispatcher_.rows_received();
  clock.lap(stats_.compute_seconds);
}

template <class T>
void ExpertParallelMoe<T>::backward(View<const T> dout, View<T> dx, double aux_scale) {
  check_shape(dout, {Tl_, d_}, "ExpertParallelMoe::backward: dout");
  check_shape(dx, {Tl_, d_}, "ExpertParallelMoe::backward: dx");
  Clock clock;
  const int64_t N = perm_.rows(), R = dispatcher_.received_rows();
  grow(dy_, N * d_);
  grow(dxp_, N * d_);
  grow(dgate_l_, Tl_ * k_);
  // Combine backward on the local tokens: dy rows and the gate gradients.
  scatter_gated_backward<T>(perm_, Tl_, k_, d_, dout.data, y_.data(),
                            router_.gates().data() + t0_ * k_, dy_.data(), dgate_l_.data());
  clock.lap(stats_.compute_seconds);
  grow(dyr_, R * d_);
  grow(dxr_, R * d_);
  dispatcher_.dispatch(dy_.data(), dyr_.data());
  clock.lap(stats_.comm_seconds);
  experts_.backward(params_, dispatcher_.block_offsets(), xr_.data(), dyr_.data(), dxr_.data());
  clock.lap(stats_.compute_seconds);
  dispatcher_.undispatch(dxr_.data(), dxp_.data());
  clock.lap(stats_.comm_seconds);
  std::fill(dx.data, dx.data + Tl_ * d_, T(0));
  gather_rows_backward<T>(perm_, Tl_, k_, d_, dxp_.data(), dx.data);
  if (Hs_ > 0) shared_.backward(params_, Tl_, x_.data(), dout.data, dx.data, experts_.scratch());
  clock.lap(stats_.compute_seconds);

  // Router: the gate gradients of every token, then the one-process backward on the global
  // batch; this rank applies the rows of its tokens.
  grow(dgate_, Tg_ * k_);
  groups_.world->allgather(dgate_l_.data(), Tl_ * k_ * static_cast<int64_t>(sizeof(T)),
                           dgate_.data());
  clock.lap(stats_.comm_seconds);
  const T* dz = router_.backward(dgate_.data(), aux_scale);
  grow(dhn_, Tl_ * E_);
  router_logits_backward<T>(Tl_, d_, E_, x_.data(), params_.values().data() + router_off_, nullptr,
                            nullptr, nullptr, dz + t0_ * E_, dx.data,
                            params_.grads().data() + router_off_, nullptr, dhn_.data());
  clock.lap(stats_.compute_seconds);
}

template <class T>
double ExpertParallelMoe<T>::aux_loss() const {
  return router_.aux_loss();
}

template class ExpertParallelMoe<float>;
template class ExpertParallelMoe<double>;

}  // namespace moe
