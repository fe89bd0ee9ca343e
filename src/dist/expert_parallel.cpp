#include "moe/expert_parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "moe/error.h"
#include "moe/ffn.h"
#include "moe/gemm.h"
#include "moe/moe_losses.h"
#include "moe/router.h"
#include "moe/shared_experts.h"

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
    : cfg_(c), groups_(groups) {
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
  bias_.assign(static_cast<size_t>(E_), T(0));
  counts_.assign(static_cast<size_t>(E_), 0);
  importance_.assign(static_cast<size_t>(E_), 0.0);
  mean_prob_.assign(static_cast<size_t>(E_), 0.0);
  send_counts_.assign(static_cast<size_t>(P_ * El_), 0);
  recv_counts_.assign(static_cast<size_t>(P_ * El_), 0);
  block_offsets_.assign(static_cast<size_t>(El_ + 1), 0);
  count_bytes_.assign(static_cast<size_t>(P_), El_ * static_cast<int64_t>(sizeof(int64_t)));
  send_bytes_.assign(static_cast<size_t>(P_), 0);
  recv_bytes_.assign(static_cast<size_t>(P_), 0);
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
  bias_ = full.selection_bias();
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
  full.selection_bias() = bias_;
}

// Step 2: the routing of the global batch, with the one-process functions in their order.
template <class T>
void ExpertParallelMoe<T>::route_global() {
  Communicator& world = *groups_.world;
  const int W = world.size();
  int64_t sizes[1] = {Tl_};
  std::vector<int64_t> all(static_cast<size_t>(W));
  world.allgather(sizes, sizeof(int64_t), all.data());
  for (int r = 0; r < W; ++r)
    MOE_CHECK(all[r] == Tl_, "expert parallelism: rank {} has {} tokens, rank {} has {}",
              world.rank(), Tl_, r, all[r]);
  Tg_ = Tl_ * W;
  t0_ = Tl_ * world.rank();
  const int64_t TE = Tg_ * E_, Tk = Tg_ * k_;
  for (auto* v : {&z_, &s_, &u_, &p_, &ds_, &dp_, &dz_}) grow(*v, TE);
  for (auto* v : {&lse_, &norm_}) grow(*v, Tg_);
  for (auto* v : {&gate_prim_, &gate_, &dgate_, &dgate_prim_}) grow(*v, Tk);
  world.allgather(zl_.data(), Tl_ * E_ * static_cast<int64_t>(sizeof(T)), z_.data());
  std::vector<uint8_t> masks(static_cast<size_t>(Tg_));
  world.allgather(mask_l_.data(), Tl_, masks.data());

  plan_.resize(Tg_, k_, E_);
  std::copy(masks.begin(), masks.end(), plan_.token_mask.begin());
  router_scores_forward<T>(cfg_.scoring_func, Tg_, E_, z_.data(), s_.data(), lse_.data());
  const T* bias = cfg_.use_selection_bias ? bias_.data() : nullptr;
  select_top_k<T>(cfg_, s_.data(), bias, plan_, u_.data());
  primary_gates<T>(cfg_, plan_, s_.data(), norm_.data(), gate_prim_.data());
  apply_capacity<T>(cfg_, gate_prim_.data(), u_.data(), plan_);
  final_gates<T>(cfg_, plan_, s_.data(), norm_.data(), gate_.data());
  routing_probs<T>(cfg_.scoring_func, Tg_, E_, s_.data(), p_.data());
  primary_counts(plan_, counts_.data());
  metrics_.load_balance_loss =
      load_balance_loss<T>(cfg_, plan_, p_.data(), counts_.data(), mean_prob_.data());
  metrics_.importance_loss = importance_loss<T>(cfg_, plan_, gate_prim_.data(), importance_.data());
  metrics_.z_loss = z_loss<T>(cfg_, plan_, lse_.data());
  fill_metrics<T>(cfg_, plan_, p_.data(), counts_.data(), metrics_);

  // The slice of this rank's tokens, as a plan of its own for the permutation.
  local_plan_.resize(Tl_, k_, E_);
  std::copy_n(plan_.expert.begin() + t0_ * k_, Tl_ * k_, local_plan_.expert.begin());
  std::copy_n(plan_.primary.begin() + t0_ * k_, Tl_ * k_, local_plan_.primary.begin());
  std::copy_n(mask_l_.begin(), Tl_, local_plan_.token_mask.begin());
}

// Step 3-4: rows of the local permutation go to the owners of their experts. The local
// permutation is expert-major, so the rows for peer q (experts [q*El, (q+1)*El)) are one
// contiguous run. The reverse direction swaps the byte counts.
template <class T>
void ExpertParallelMoe<T>::dispatch(const T* rows, T* blocks) {
  grow(buf_, R_ * d_);
  groups_.expert_group->alltoallv(rows, send_bytes_.data(), buf_.data(), recv_bytes_.data());
  for (int64_t i = 0; i < R_; ++i)
    std::copy_n(buf_.data() + i * d_, d_, blocks + recv_to_block_[i] * d_);
}

template <class T>
void ExpertParallelMoe<T>::undispatch(const T* blocks, T* rows) {
  grow(buf_, R_ * d_);
  for (int64_t i = 0; i < R_; ++i)
    std::copy_n(blocks + recv_to_block_[i] * d_, d_, buf_.data() + i * d_);
  groups_.expert_group->alltoallv(buf_.data(), recv_bytes_.data(), rows, send_bytes_.data());
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
  router_logits_forward<T>(Tl_, d_, E_, x_.data(), params_.value("router.weight"), nullptr, nullptr,
                           nullptr, zl_.data());
  clock.lap(stats_.compute_seconds);
  // 2. Global routing.
  route_global();
  clock.lap(stats_.comm_seconds);

  // 3. Local rows in expert order; counts per (peer, local expert) both ways.
  build_permutation(local_plan_, perm_);
  const int64_t N = perm_.rows();
  grow(xp_, N * d_);
  grow(y_, N * d_);
  gather_rows<T>(perm_, k_, d_, x_.data(), xp_.data());
  for (int e = 0; e < E_; ++e) send_counts_[e] = perm_.rows_of(e);  // peer e/El, expert e%El
  clock.lap(stats_.compute_seconds);
  groups_.expert_group->alltoallv(send_counts_.data(), count_bytes_.data(), recv_counts_.data(),
                                  count_bytes_.data());
  // Received rows arrive peer-major (within a peer, expert-major); blocks are expert-major
  // (within an expert, peer-major = token order).
  R_ = 0;
  for (int64_t c : recv_counts_) R_ += c;
  const int64_t row_bytes = d_ * static_cast<int64_t>(sizeof(T));
  for (int q = 0; q < P_; ++q) {
    int64_t s = 0, r = 0;
    for (int j = 0; j < El_; ++j) {
      s += send_counts_[q * El_ + j];
      r += recv_counts_[q * El_ + j];
    }
    send_bytes_[q] = s * row_bytes;
    recv_bytes_[q] = r * row_bytes;
  }
  block_offsets_[0] = 0;
  for (int j = 0; j < El_; ++j) {
    int64_t n = 0;
    for (int q = 0; q < P_; ++q) n += recv_counts_[q * El_ + j];
    block_offsets_[j + 1] = block_offsets_[j] + n;
  }
  recv_to_block_.resize(static_cast<size_t>(R_));
  {
    std::vector<int64_t> cursor(block_offsets_.begin(), block_offsets_.end() - 1);
    int64_t i = 0;
    for (int q = 0; q < P_; ++q)
      for (int j = 0; j < El_; ++j)
        for (int64_t c = 0; c < recv_counts_[q * El_ + j]; ++c) recv_to_block_[i++] = cursor[j]++;
  }
  grow(xr_, R_ * d_);
  grow(yr_, R_ * d_);
  dispatch(xp_.data(), xr_.data());
  clock.lap(stats_.comm_seconds);

  // 4. Local experts on their blocks.
  grow(h1_, R_ * F_);
  grow(h3_, R_ * F_);
  grow(a_, R_ * F_);
  const bool glu = cfg_.hidden_act == Activation::SwiGLU;
  const int64_t wsz = static_cast<int64_t>(F_) * d_;
  const T* w1 = params_.value("experts.w1");
  const T* w3 = glu ? params_.value("experts.w3") : nullptr;
  const T* w2 = params_.value("experts.w2");
  for (int j = 0; j < El_; ++j) {
    const int64_t r0 = block_offsets_[j], n = block_offsets_[j + 1] - r0;
    if (n == 0) continue;
    ffn_forward<T>(cfg_.hidden_act, n, d_, F_, xr_.data() + r0 * d_, w1 + j * wsz,
                   glu ? w3 + j * wsz : nullptr, w2 + j * wsz, h1_.data() + r0 * F_,
                   h3_.data() + r0 * F_, a_.data() + r0 * F_, yr_.data() + r0 * d_,
                   cfg_.compute_dtype);
  }
  clock.lap(stats_.compute_seconds);
  // 5. Outputs home, combined with the gates of the local tokens.
  undispatch(yr_.data(), y_.data());
  clock.lap(stats_.comm_seconds);
  scatter_gated<T>(perm_, Tl_, k_, d_, y_.data(), gate_.data() + t0_ * k_, out.data);

  if (Hs_ > 0) {
    for (auto* v : {&sh1_, &sh3_, &sa_}) grow(*v, Tl_ * Hs_);
    grow(sy_, Tl_ * d_);
    grow(sgate_, Tl_);
    shared_experts_forward<T>(cfg_, Tl_, x_.data(), param("shared.w1"), param("shared.w3"),
                              param("shared.w2"), param("shared.gate"), sh1_.data(), sh3_.data(),
                              sa_.data(), sy_.data(), sgate_.data(), out.data);
  }
  for (int e = 0; e < E_; ++e)
    if (e / El_ != groups_.layout.ep_rank()) stats_.rows_sent += send_counts_[e];
  for (int q = 0; q < P_; ++q)
    if (q != groups_.layout.ep_rank())
      for (int j = 0; j < El_; ++j) stats_.rows_received += recv_counts_[q * El_ + j];
  clock.lap(stats_.compute_seconds);
}

template <class T>
void ExpertParallelMoe<T>::backward(View<const T> dout, View<T> dx, double aux_scale) {
  check_shape(dout, {Tl_, d_}, "ExpertParallelMoe::backward: dout");
  check_shape(dx, {Tl_, d_}, "ExpertParallelMoe::backward: dx");
  Clock clock;
  const int64_t N = perm_.rows();
  grow(dy_, N * d_);
  grow(dxp_, N * d_);
  grow(dgate_l_, Tl_ * k_);
  // Combine backward on the local tokens: dy rows and the gate gradients.
  scatter_gated_backward<T>(perm_, Tl_, k_, d_, dout.data, y_.data(), gate_.data() + t0_ * k_,
                            dy_.data(), dgate_l_.data());
  clock.lap(stats_.compute_seconds);
  grow(dyr_, R_ * d_);
  grow(dxr_, R_ * d_);
  dispatch(dy_.data(), dyr_.data());
  clock.lap(stats_.comm_seconds);
  for (auto* v : {&da_, &dh1_, &dh3_}) grow(*v, std::max(R_ * F_, Tl_ * Hs_));
  const bool glu = cfg_.hidden_act == Activation::SwiGLU;
  const int64_t wsz = static_cast<int64_t>(F_) * d_;
  const T* w1 = params_.value("experts.w1");
  const T* w3 = glu ? params_.value("experts.w3") : nullptr;
  const T* w2 = params_.value("experts.w2");
  T* dw1 = params_.grad("experts.w1");
  T* dw3 = glu ? params_.grad("experts.w3") : nullptr;
  T* dw2 = params_.grad("experts.w2");
  for (int j = 0; j < El_; ++j) {
    const int64_t r0 = block_offsets_[j], n = block_offsets_[j + 1] - r0;
    if (n == 0) continue;
    ffn_backward<T>(cfg_.hidden_act, n, d_, F_, xr_.data() + r0 * d_, w1 + j * wsz,
                    glu ? w3 + j * wsz : nullptr, w2 + j * wsz, h1_.data() + r0 * F_,
                    h3_.data() + r0 * F_, a_.data() + r0 * F_, dyr_.data() + r0 * d_,
                    dxr_.data() + r0 * d_, dw1 + j * wsz, glu ? dw3 + j * wsz : nullptr,
                    dw2 + j * wsz, da_.data() + r0 * F_, dh1_.data() + r0 * F_,
                    dh3_.data() + r0 * F_, cfg_.compute_dtype);
  }
  clock.lap(stats_.compute_seconds);
  undispatch(dxr_.data(), dxp_.data());
  clock.lap(stats_.comm_seconds);
  std::fill(dx.data, dx.data + Tl_ * d_, T(0));
  gather_rows_backward<T>(perm_, Tl_, k_, d_, dxp_.data(), dx.data);

  if (Hs_ > 0) {
    grow(dsy_, Tl_ * d_);
    grow(dxs_, Tl_ * d_);
    shared_experts_backward<T>(
        cfg_, Tl_, x_.data(), param("shared.w1"), param("shared.w3"), param("shared.w2"),
        param("shared.gate"), sh1_.data(), sh3_.data(), sa_.data(), sy_.data(), sgate_.data(),
        dout.data, dx.data, grad("shared.w1"), grad("shared.w3"), grad("shared.w2"),
        grad("shared.gate"), dsy_.data(), dxs_.data(), da_.data(), dh1_.data(), dh3_.data());
  }
  clock.lap(stats_.compute_seconds);

  // Router: the gate gradients of every token, then the one-process backward on the global
  // batch; this rank applies the rows of its tokens.
  groups_.world->allgather(dgate_l_.data(), Tl_ * k_ * static_cast<int64_t>(sizeof(T)),
                           dgate_.data());
  clock.lap(stats_.comm_seconds);
  routing_backward<T>(cfg_, plan_, z_.data(), s_.data(), p_.data(), norm_.data(), lse_.data(),
                      importance_.data(), counts_.data(), dgate_.data(), aux_scale,
                      dgate_prim_.data(), ds_.data(), dp_.data(), dz_.data());
  grow(dhn_, Tl_ * E_);
  router_logits_backward<T>(Tl_, d_, E_, x_.data(), params_.value("router.weight"), nullptr,
                            nullptr, nullptr, dz_.data() + t0_ * E_, dx.data,
                            params_.grad("router.weight"), nullptr, dhn_.data());
  clock.lap(stats_.compute_seconds);
}

template <class T>
double ExpertParallelMoe<T>::aux_loss() const {
  return metrics_.load_balance_loss + metrics_.importance_loss + metrics_.z_loss;
}

template <class T>
void ExpertParallelMoe<T>::update_selection_bias() {
  if (!cfg_.use_selection_bias) return;
  moe::update_selection_bias<T>(E_, cfg_.bias_update_rate, counts_.data(), plan_.valid_tokens, k_,
                                bias_.data());
}

template class ExpertParallelMoe<float>;
template class ExpertParallelMoe<double>;

}  // namespace moe
