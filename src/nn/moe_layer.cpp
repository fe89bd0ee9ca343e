#include "moe/moe_layer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <type_traits>

#include "moe/ffn.h"
#include "moe/gemm.h"
#include "moe/shared_experts.h"

namespace moe {

namespace {
template <class T>
void grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// Adds the time since the previous lap to one field of a LayerTimings pass, and the whole
// span to its total; without a pass it reads no clock.
class Laps {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Laps(LayerTimings::Pass* pass) : pass_(pass) {
    if (pass_) start_ = last_ = Clock::now();
  }
  ~Laps() {
    if (pass_) pass_->total += std::chrono::duration<double>(Clock::now() - start_).count();
  }
  Laps(const Laps&) = delete;
  Laps& operator=(const Laps&) = delete;
  void lap(double LayerTimings::Pass::*field) {
    if (!pass_) return;
    const auto now = Clock::now();
    pass_->*field += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  LayerTimings::Pass* pass_;
  Clock::time_point start_, last_;
};
using Pass = LayerTimings::Pass;
}  // namespace

template <class T>
MoeLayer<T>::MoeLayer(const MoeConfig& config) : cfg_(config) {
  cfg_.validate("MoeLayer");
  MOE_CHECK((std::is_same_v<T, float>) || cfg_.compute_dtype == ComputeDtype::Float32,
            "MoeLayer: compute_dtype \"bfloat16\" needs MoeLayer<float> (fp32 master weights)");
  d_ = cfg_.hidden_size;
  F_ = cfg_.moe_intermediate_size;
  E_ = cfg_.num_experts;
  k_ = cfg_.num_experts_per_tok;
  Hs_ = cfg_.shared_hidden();
  params_.declare("router.weight", {E_, d_});
  if (cfg_.noisy_gating) params_.declare("router.noise_weight", {E_, d_});
  declare_expert_weights(params_, E_, F_, d_, cfg_.hidden_act);
  declare_shared_expert_weights(params_, cfg_);
  params_.allocate();
  off_ = MoeParamOffsets::of(params_);
  bias_.assign(E_, T(0));
  counts_.assign(E_, 0);
  importance_.assign(E_, 0.0);
  mean_prob_.assign(E_, 0.0);
  uniforms_.assign(E_, 0.0);
  expert_order_.resize(E_);
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
  for (auto* v : {&x_}) grow(*v, T_ * d_);
  for (auto* v : {&noise_, &hn_, &z_, &s_, &u_, &p_, &ds_, &dp_, &dz_, &dhn_}) grow(*v, TE);
  for (auto* v : {&lse_, &norm_}) grow(*v, T_);
  for (auto* v : {&gate_prim_, &gate_, &dgate_, &dgate_prim_}) grow(*v, Tk);
  // Expert buffers are sized for the dropless worst case, N = T*k rows.
  for (auto* v : {&xp_, &y_, &dy_, &dxp_}) grow(*v, Tk * d_);
  for (auto* v : {&h1_, &h3_, &a_, &da_, &dh1_, &dh3_}) grow(*v, Tk * F_);
  if (Hs_ > 0) {
    for (auto* v : {&sh1_, &sh3_, &sa_}) grow(*v, T_ * std::max(Hs_, F_));
    for (auto* v : {&sy_, &dsy_, &dxs_}) grow(*v, T_ * d_);
    grow(sgate_, T_);
    // The shared backward reuses da/dh1/dh3, which must then hold T*Hs.
    for (auto* v : {&da_, &dh1_, &dh3_}) grow(*v, T_ * Hs_);
  }
}

template <class T>
void MoeLayer<T>::forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt) {
  MOE_CHECK(x.ndim() == 2 && x.size(1) == d_ && x.contiguous(),
            "MoeLayer::forward: x has shape {}, expected [T,{}] (hidden_size)", x.shape.str(), d_);
  const int64_t T_ = x.size(0);
  check_shape(out, {T_, d_}, "MoeLayer::forward: out");
  if (opt.check_finite) check_finite(x, "MoeLayer::forward: x");
  Laps laps(timings_ ? &timings_->forward : nullptr);
  if (timings_) ++timings_->forward_calls;
  tokens_ = T_;
  reserve(T_);
  std::copy_n(x.data, T_ * d_, x_.data());

  // Masks: padding tokens, and experts dropped out for this batch.
  if (plan_.tokens != T_ || plan_.k != k_) plan_.resize(T_, k_, E_);
  for (int64_t t = 0; t < T_; ++t)
    plan_.token_mask[t] = opt.token_mask ? opt.token_mask[t] != 0 : 1;
  if (opt.replay) {
    plan_.expert_mask = opt.replay->expert_mask;
  } else if (opt.expert_mask) {
    std::copy_n(opt.expert_mask, E_, plan_.expert_mask.data());
  } else if (opt.training && cfg_.expert_dropout > 0) {
    MOE_CHECK(opt.rng != nullptr, "MoeLayer::forward: expert_dropout needs an Rng in training");
    for (int e = 0; e < E_; ++e) uniforms_[e] = opt.rng->uniform();
    expert_dropout_mask(E_, k_, cfg_.expert_dropout, uniforms_.data(), plan_.expert_mask.data());
  } else {
    std::fill(plan_.expert_mask.begin(), plan_.expert_mask.end(), 1);
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
                           z_.data());
  // 2. Scores.
  router_scores_forward<T>(cfg_.scoring_func, T_, E_, z_.data(), s_.data(), lse_.data());
  // 3-5. Selection (or the replayed one), gates, capacity.
  if (opt.replay) {
    const RoutingPlan& r = *opt.replay;
    MOE_CHECK(r.tokens == T_ && r.k == k_ && r.num_experts == E_,
              "MoeLayer::forward: replayed plan is for T={} k={} E={}, not T={} k={} E={}",
              r.tokens, r.k, r.num_experts, T_, k_, E_);
    plan_.primary = r.primary;
    plan_.expert = r.expert;
    plan_.rerouted = r.rerouted;
    plan_.capacity = r.capacity;
    plan_.valid_tokens = r.valid_tokens;
    plan_.dropped = r.dropped;
    plan_.rerouted_count = r.rerouted_count;
    primary_gates<T>(cfg_, plan_, s_.data(), norm_.data(), gate_prim_.data());
  } else {
    const T* bias = cfg_.use_selection_bias ? bias_.data() : nullptr;
    select_top_k<T>(cfg_, s_.data(), bias, plan_, u_.data());
    primary_gates<T>(cfg_, plan_, s_.data(), norm_.data(), gate_prim_.data());
    apply_capacity<T>(cfg_, gate_prim_.data(), u_.data(), plan_);
  }
  final_gates<T>(cfg_, plan_, s_.data(), norm_.data(), gate_.data());

  // 6. Losses and metrics.
  routing_probs<T>(cfg_.scoring_func, T_, E_, s_.data(), p_.data());
  primary_counts(plan_, counts_.data());
  metrics_.load_balance_loss =
      load_balance_loss<T>(cfg_, plan_, p_.data(), counts_.data(), mean_prob_.data());
  metrics_.importance_loss = importance_loss<T>(cfg_, plan_, gate_prim_.data(), importance_.data());
  metrics_.z_loss = z_loss<T>(cfg_, plan_, lse_.data());
  fill_metrics<T>(cfg_, plan_, p_.data(), counts_.data(), metrics_);
  laps.lap(&Pass::routing);

  // 7. Grouped experts: permute, run each expert on its block, combine.
  build_permutation(plan_, perm_);
  gather_rows<T>(perm_, k_, d_, x_.data(), xp_.data());
  laps.lap(&Pass::gather);
  run_experts_forward();
  laps.lap(&Pass::experts);
  scatter_gated<T>(perm_, T_, k_, d_, y_.data(), gate_.data(), out.data);
  laps.lap(&Pass::combine);

  // 8. Shared experts on every token, optionally gated.
  if (Hs_ > 0) {
    shared_experts_forward<T>(cfg_, T_, x_.data(), value(off_.shared_w1), value(off_.shared_w3),
                              value(off_.shared_w2), value(off_.shared_gate), sh1_.data(),
                              sh3_.data(), sa_.data(), sy_.data(), sgate_.data(), out.data);
    laps.lap(&Pass::shared);
  }
}

template <class T>
bool MoeLayer<T>::experts_in_parallel() const {
  if (expert_parallel_ >= 0) return expert_parallel_ == 1;
  const int threads = omp_get_max_threads();
  if (threads <= 1 || omp_in_parallel()) return false;
  // One expert per thread pays when there are enough busy experts to balance the threads
  // (largest first) and no single expert outweighs a thread's share; otherwise (few experts,
  // or a collapsed router) threading each GEMM balances better.
  int busy = 0;
  int64_t largest = 0;
  for (int e = 0; e < E_; ++e) {
    busy += perm_.rows_of(e) > 0;
    largest = std::max(largest, perm_.rows_of(e));
  }
  return busy >= 2 * threads && largest * threads <= perm_.rows();
}

template <class T>
template <class Fn>
void MoeLayer<T>::for_each_expert(const Fn& run) {
  if (!experts_in_parallel()) {
    for (int e = 0; e < E_; ++e) run(e);
    return;
  }
  // Largest expert first (ties: lower index), handed out one at a time (LPT scheduling).
  std::iota(expert_order_.begin(), expert_order_.end(), 0);
  std::sort(expert_order_.begin(), expert_order_.end(), [&](int a, int b) {
    const int64_t ra = perm_.rows_of(a), rb = perm_.rows_of(b);
    return ra != rb ? ra > rb : a < b;
  });
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < E_; ++i) run(expert_order_[i]);
}

template <class T>
void MoeLayer<T>::run_experts_forward() {
  const bool glu = cfg_.hidden_act == Activation::SwiGLU;
  const T* w1 = value(off_.w1);
  const T* w3 = value(off_.w3);
  const T* w2 = value(off_.w2);
  const int64_t wsz = static_cast<int64_t>(F_) * d_;
  auto run = [&](int e) {
    const int64_t r0 = perm_.offsets[e], n = perm_.rows_of(e);
    if (n == 0) return;
    ffn_forward<T>(cfg_.hidden_act, n, d_, F_, xp_.data() + r0 * d_, w1 + e * wsz,
                   glu ? w3 + e * wsz : nullptr, w2 + e * wsz, h1_.data() + r0 * F_,
                   h3_.data() + r0 * F_, a_.data() + r0 * F_, y_.data() + r0 * d_,
                   cfg_.compute_dtype);
  };
  for_each_expert(run);
}

template <class T>
void MoeLayer<T>::run_experts_backward() {
  const bool glu = cfg_.hidden_act == Activation::SwiGLU;
  const T* w1 = value(off_.w1);
  const T* w3 = value(off_.w3);
  const T* w2 = value(off_.w2);
  T* dw1 = grad(off_.w1);
  T* dw3 = grad(off_.w3);
  T* dw2 = grad(off_.w2);
  const int64_t wsz = static_cast<int64_t>(F_) * d_;
  auto run = [&](int e) {
    const int64_t r0 = perm_.offsets[e], n = perm_.rows_of(e);
    if (n == 0) return;
    ffn_backward<T>(cfg_.hidden_act, n, d_, F_, xp_.data() + r0 * d_, w1 + e * wsz,
                    glu ? w3 + e * wsz : nullptr, w2 + e * wsz, h1_.data() + r0 * F_,
                    h3_.data() + r0 * F_, a_.data() + r0 * F_, dy_.data() + r0 * d_,
                    dxp_.data() + r0 * d_, dw1 + e * wsz, glu ? dw3 + e * wsz : nullptr,
                    dw2 + e * wsz, da_.data() + r0 * F_, dh1_.data() + r0 * F_,
                    dh3_.data() + r0 * F_, cfg_.compute_dtype);
  };
  // Each expert writes only its own rows and its own weight gradients: no two threads share
  // an output, so the parallel schedule cannot change any sum.
  for_each_expert(run);
}

template <class T>
void MoeLayer<T>::backward(View<const T> dout, View<T> dx, double aux_scale) {
  const int64_t T_ = tokens_;
  check_shape(dout, {T_, d_}, "MoeLayer::backward: dout");
  check_shape(dx, {T_, d_}, "MoeLayer::backward: dx");
  Laps laps(timings_ ? &timings_->backward : nullptr);
  if (timings_) ++timings_->backward_calls;

  // Combine -> experts -> gather, in reverse.
  scatter_gated_backward<T>(perm_, T_, k_, d_, dout.data, y_.data(), gate_.data(), dy_.data(),
                            dgate_.data());
  laps.lap(&Pass::combine);
  run_experts_backward();
  laps.lap(&Pass::experts);
  std::fill(dx.data, dx.data + T_ * d_, T(0));
  gather_rows_backward<T>(perm_, T_, k_, d_, dxp_.data(), dx.data);
  laps.lap(&Pass::gather);

  // Shared experts and their gate.
  if (Hs_ > 0) {
    shared_experts_backward<T>(
        cfg_, T_, x_.data(), value(off_.shared_w1), value(off_.shared_w3), value(off_.shared_w2),
        value(off_.shared_gate), sh1_.data(), sh3_.data(), sa_.data(), sy_.data(), sgate_.data(),
        dout.data, dx.data, grad(off_.shared_w1), grad(off_.shared_w3), grad(off_.shared_w2),
        grad(off_.shared_gate), dsy_.data(), dxs_.data(), da_.data(), dh1_.data(), dh3_.data());
    laps.lap(&Pass::shared);
  }

  // Router: gates and losses -> scores -> logits -> weights and x.
  routing_backward<T>(cfg_, plan_, z_.data(), s_.data(), p_.data(), norm_.data(), lse_.data(),
                      importance_.data(), counts_.data(), dgate_.data(), aux_scale,
                      dgate_prim_.data(), ds_.data(), dp_.data(), dz_.data());
  const T* wn = noisy_ ? value(off_.noise) : nullptr;
  router_logits_backward<T>(T_, d_, E_, x_.data(), value(off_.router), wn, noise_.data(),
                            hn_.data(), dz_.data(), dx.data, grad(off_.router),
                            noisy_ ? grad(off_.noise) : nullptr, dhn_.data());
  laps.lap(&Pass::routing);
}

template <class T>
double MoeLayer<T>::aux_loss() const {
  return metrics_.load_balance_loss + metrics_.importance_loss + metrics_.z_loss;
}

template <class T>
void MoeLayer<T>::update_selection_bias() {
  if (!cfg_.use_selection_bias) return;
  moe::update_selection_bias<T>(E_, cfg_.bias_update_rate, counts_.data(), plan_.valid_tokens, k_,
                                bias_.data());
}

template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace moe
