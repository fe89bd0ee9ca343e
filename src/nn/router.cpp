#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/parallel_for.h"
#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/moe_losses.h"
#include "moe/tensor.h"

namespace moe {

void RoutingPlan::resize(int64_t T, int k_, int E) {
  tokens = T;
  k = k_;
  num_experts = E;
  token_mask.assign(static_cast<size_t>(T), 1);
  expert_mask.assign(static_cast<size_t>(E), 1);
  primary.assign(static_cast<size_t>(T * k_), -1);
  expert.assign(static_cast<size_t>(T * k_), -1);
  rerouted.assign(static_cast<size_t>(T * k_), 0);
  capacity = -1;
  valid_tokens = T;
  dropped = rerouted_count = 0;
}

namespace {
template <class T>
T softplus(T v) {
  return v > T(20) ? v : std::log1p(std::exp(v));
}
template <class T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}
template <class T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}
// Descending key, ties to the lower index: the order every selection in the layer uses.
template <class T>
struct ByKeyDesc {
  const T* key;
  bool operator()(int a, int b) const { return key[a] > key[b] || (key[a] == key[b] && a < b); }
};
}  // namespace

template <class T>
void router_logits_forward(int64_t tokens, int64_t d, int64_t E, const T* x, const T* wr,
                           const T* wn, const T* noise, T* hn, T* z) {
  gemm<T>(Trans::No, Trans::Yes, tokens, E, d, T(1), x, d, wr, d, T(0), z, E);
  if (!wn) return;
  gemm<T>(Trans::No, Trans::Yes, tokens, E, d, T(1), x, d, wn, d, T(0), hn, E);
  for (int64_t i = 0; i < tokens * E; ++i) z[i] += noise[i] * softplus(hn[i]);
}

template <class T>
void router_logits_backward(int64_t tokens, int64_t d, int64_t E, const T* x, const T* wr,
                            const T* wn, const T* noise, const T* hn, const T* dz, T* dx, T* dwr,
                            T* dwn, T* dhn) {
  gemm<T>(Trans::Yes, Trans::No, E, d, tokens, T(1), dz, E, x, d, T(1), dwr, d);
  gemm<T>(Trans::No, Trans::No, tokens, d, E, T(1), dz, E, wr, d, T(1), dx, d);
  if (!wn) return;
  // d softplus(h) / dh = sigmoid(h)
  for (int64_t i = 0; i < tokens * E; ++i) dhn[i] = dz[i] * noise[i] * sigmoid(hn[i]);
  gemm<T>(Trans::Yes, Trans::No, E, d, tokens, T(1), dhn, E, x, d, T(1), dwn, d);
  gemm<T>(Trans::No, Trans::No, tokens, d, E, T(1), dhn, E, wn, d, T(1), dx, d);
}

template <class T>
void router_scores_forward(ScoreFunc f, int64_t tokens, int64_t E, const T* z, T* s, T* lse) {
  parallel_for(tokens, tokens * E > (1 << 15), [&](int64_t t) {
    const T* zr = z + t * E;
    T* sr = s + t * E;
    const T m = *std::max_element(zr, zr + E);
    T sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(zr[e] - m);
    lse[t] = m + std::log(sum);
    if (f == ScoreFunc::Softmax) {
      for (int64_t e = 0; e < E; ++e) sr[e] = std::exp(zr[e] - m) / sum;
    } else {
      for (int64_t e = 0; e < E; ++e) sr[e] = sigmoid(zr[e]);
    }
  });
}

template <class T>
void router_scores_backward(ScoreFunc f, int64_t tokens, int64_t E, const T* s, const T* ds,
                            T* dz) {
#pragma omp parallel for if (tokens * E > (1 << 15))
  for (int64_t t = 0; t < tokens; ++t) {
    const T* sr = s + t * E;
    const T* dsr = ds + t * E;
    T* dzr = dz + t * E;
    if (f == ScoreFunc::Softmax) {
      T dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += dsr[e] * sr[e];
      for (int64_t e = 0; e < E; ++e) dzr[e] = sr[e] * (dsr[e] - dot);
    } else {
      for (int64_t e = 0; e < E; ++e) dzr[e] = dsr[e] * sr[e] * (T(1) - sr[e]);
    }
  }
}

template <class T>
void select_top_k(const MoeConfig& c, const T* s, const T* bias, RoutingPlan& plan, T* u) {
  const int E = c.num_experts, k = c.num_experts_per_tok;
  const int G = c.n_group, gsize = E / G;
  int available = 0;
  for (int e = 0; e < E; ++e) available += plan.expert_mask[e] != 0;
  MOE_CHECK(available >= k,
            "select_top_k: only {} experts available after expert dropout, "
            "num_experts_per_tok = {}",
            available, k);
#pragma omp parallel for if (plan.tokens * E > (1 << 15))
  for (int64_t t = 0; t < plan.tokens; ++t) {
    T* ur = u + t * E;
    int32_t* prim = plan.primary.data() + t * k;
    if (!plan.token_mask[t]) {
      std::fill(ur, ur + E, neg_inf<T>());
      std::fill(prim, prim + k, -1);
      continue;
    }
    for (int e = 0; e < E; ++e)
      ur[e] = plan.expert_mask[e] ? s[t * E + e] + (bias ? bias[e] : T(0)) : neg_inf<T>();
    if (G > 1) {
      // Group score: the sum of the two best available keys in the group (DeepSeek-V3), or
      // the best one (DeepSeek-V2).
      T gscore[64 * 8];
      int gavail[64 * 8];
      std::vector<T> gscore_big;
      std::vector<int> gavail_big;
      T* gs = gscore;
      int* ga = gavail;
      if (G > 512) {
        gscore_big.resize(G);
        gavail_big.resize(G);
        gs = gscore_big.data();
        ga = gavail_big.data();
      }
      for (int g = 0; g < G; ++g) {
        T best = neg_inf<T>(), second = neg_inf<T>();
        int n = 0;
        for (int e = g * gsize; e < (g + 1) * gsize; ++e) {
          if (ur[e] == neg_inf<T>()) continue;
          ++n;
          if (ur[e] > best) {
            second = best;
            best = ur[e];
          } else if (ur[e] > second) {
            second = ur[e];
          }
        }
        ga[g] = n;
        gs[g] = n == 0 ? neg_inf<T>() : (n == 1 || c.group_score_max ? best : best + second);
      }
      int order[512];
      std::vector<int> order_big;
      int* ord = order;
      if (G > 512) {
        order_big.resize(G);
        ord = order_big.data();
      }
      std::iota(ord, ord + G, 0);
      std::sort(ord, ord + G, ByKeyDesc<T>{gs});
      int taken = 0, candidates = 0;
      uint64_t keep_bits[8] = {0};  // up to 512 groups
      for (int i = 0; i < G; ++i) {
        const int g = ord[i];
        if (ga[g] == 0) break;
        keep_bits[g / 64] |= uint64_t(1) << (g % 64);
        ++taken;
        candidates += ga[g];
        if (taken >= c.topk_group && candidates >= k) break;
      }
      for (int e = 0; e < E; ++e) {
        const int g = e / gsize;
        if (!(keep_bits[g / 64] >> (g % 64) & 1)) ur[e] = neg_inf<T>();
      }
    }
    int idx_small[256];
    std::vector<int> idx_big;
    int* idx = idx_small;
    if (E > 256) {
      idx_big.resize(E);
      idx = idx_big.data();
    }
    std::iota(idx, idx + E, 0);
    std::partial_sort(idx, idx + k, idx + E, ByKeyDesc<T>{ur});
    for (int j = 0; j < k; ++j) prim[j] = idx[j];
  }
}

template <class T>
void primary_gates(const MoeConfig& c, const RoutingPlan& plan, const T* s, T* norm, T* gate) {
  const int E = c.num_experts, k = c.num_experts_per_tok;
  const bool renorm = c.norm_topk_prob && k > 1;
  const T rsf = static_cast<T>(c.routed_scaling_factor);
  for (int64_t t = 0; t < plan.tokens; ++t) {
    const int32_t* prim = plan.primary.data() + t * k;
    if (!plan.token_mask[t]) {
      norm[t] = T(1);
      std::fill(gate + t * k, gate + (t + 1) * k, T(0));
      continue;
    }
    T sum = 0;
    for (int j = 0; j < k; ++j) sum += s[t * E + prim[j]];
    norm[t] = renorm ? sum : T(1);
    for (int j = 0; j < k; ++j) gate[t * k + j] = rsf * s[t * E + prim[j]] / norm[t];
  }
}

template <class T>
void final_gates(const MoeConfig& c, const RoutingPlan& plan, const T* s, const T* norm, T* gate) {
  const int E = c.num_experts, k = c.num_experts_per_tok;
  const T rsf = static_cast<T>(c.routed_scaling_factor);
  for (int64_t i = 0; i < plan.tokens * k; ++i) {
    const int32_t e = plan.expert[i];
    const int64_t t = i / k;
    gate[i] = e < 0 ? T(0) : rsf * s[t * E + e] / norm[t];
  }
}

template <class T>
void gates_backward(const MoeConfig& c, const RoutingPlan& plan, const T* s, const T* norm,
                    const T* dgate, const T* dgate_primary, T* ds) {
  const int E = c.num_experts, k = c.num_experts_per_tok;
  const bool renorm = c.norm_topk_prob && k > 1;
  const T rsf = static_cast<T>(c.routed_scaling_factor);
  for (int64_t t = 0; t < plan.tokens; ++t) {
    if (!plan.token_mask[t]) continue;
    const T* sr = s + t * E;
    T* dsr = ds + t * E;
    const T inv = T(1) / norm[t];
    // g = rsf * s_e / S: dg/ds_e = rsf / S; dg/ds_m = -g / S for m in the primary set.
    T through_norm = 0;
    auto add = [&](int32_t e, T dg) {
      const T g = rsf * sr[e] * inv;
      dsr[e] += dg * rsf * inv;
      through_norm += dg * g;
    };
    for (int j = 0; j < k; ++j) {
      const int64_t i = t * k + j;
      if (plan.expert[i] >= 0) add(plan.expert[i], dgate[i]);
      if (dgate_primary) add(plan.primary[i], dgate_primary[i]);
    }
    if (renorm)
      for (int j = 0; j < k; ++j) dsr[plan.primary[t * k + j]] -= through_norm * inv;
  }
}

void expert_dropout_mask(int E, int k, double p, const double* uniforms, uint8_t* mask) {
  int available = 0;
  for (int e = 0; e < E; ++e) {
    mask[e] = uniforms[e] >= p;
    available += mask[e];
  }
  // Re-enable the dropped experts with the largest draws (the "least dropped") until k remain.
  while (available < k) {
    int best = -1;
    for (int e = 0; e < E; ++e)
      if (!mask[e] && (best < 0 || uniforms[e] > uniforms[best])) best = e;
    mask[best] = 1;
    ++available;
  }
}

template <class T>
void update_selection_bias(int E, double rate, const int64_t* primary_counts, int64_t valid_tokens,
                           int k, T* bias) {
  const double mean_load = static_cast<double>(valid_tokens) * k / E;
  for (int e = 0; e < E; ++e) {
    const double diff = mean_load - static_cast<double>(primary_counts[e]);
    bias[e] += static_cast<T>(rate * static_cast<double>((diff > 0) - (diff < 0)));
  }
}

#define MOE_INSTANTIATE(T)                                                                         \
  template void router_logits_forward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*,  \
                                         const T*, T*, T*);                                        \
  template void router_logits_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, \
                                          const T*, const T*, const T*, T*, T*, T*, T*);           \
  template void router_scores_forward<T>(ScoreFunc, int64_t, int64_t, const T*, T*, T*);           \
  template void router_scores_backward<T>(ScoreFunc, int64_t, int64_t, const T*, const T*, T*);    \
  template void select_top_k<T>(const MoeConfig&, const T*, const T*, RoutingPlan&, T*);           \
  template void primary_gates<T>(const MoeConfig&, const RoutingPlan&, const T*, T*, T*);          \
  template void final_gates<T>(const MoeConfig&, const RoutingPlan&, const T*, const T*, T*);      \
  template void gates_backward<T>(const MoeConfig&, const RoutingPlan&, const T*, const T*,        \
                                  const T*, const T*, T*);                                         \
  template void update_selection_bias<T>(int, double, const int64_t*, int64_t, int, T*);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
#undef MOE_INSTANTIATE

template <class T>
Router<T>::Router(const MoeConfig& c) : cfg_(c), E_(c.num_experts), k_(c.num_experts_per_tok) {
  bias_.assign(E_, T(0));
  counts_.assign(E_, 0);
  importance_.assign(E_, 0.0);
  mean_prob_.assign(E_, 0.0);
}

template <class T>
T* Router<T>::logits(int64_t tokens) {
  const int64_t TE = tokens * E_, Tk = tokens * k_;
  for (auto* v : {&z_, &s_, &u_, &p_, &ds_, &dp_, &dz_}) grow_to(*v, TE);
  for (auto* v : {&lse_, &norm_}) grow_to(*v, tokens);
  for (auto* v : {&gate_prim_, &gate_, &dgate_prim_}) grow_to(*v, Tk);
  return z_.data();
}

template <class T>
void Router<T>::forward(int64_t T_, const Inputs& in) {
  MOE_CHECK(static_cast<int64_t>(z_.size()) >= T_ * E_,
            "Router::forward: logits(tokens) not filled for {} tokens", T_);
  // Masks: padding tokens, and experts dropped out for this batch.
  if (plan_.tokens != T_ || plan_.k != k_) plan_.resize(T_, k_, E_);
  for (int64_t t = 0; t < T_; ++t) plan_.token_mask[t] = in.token_mask ? in.token_mask[t] != 0 : 1;
  if (in.replay)
    plan_.expert_mask = in.replay->expert_mask;
  else if (in.expert_mask)
    std::copy_n(in.expert_mask, E_, plan_.expert_mask.data());
  else
    std::fill(plan_.expert_mask.begin(), plan_.expert_mask.end(), 1);

  // Scores; selection (or the replayed one), gates, capacity.
  router_scores_forward<T>(cfg_.scoring_func, T_, E_, z_.data(), s_.data(), lse_.data());
  if (in.replay) {
    const RoutingPlan& r = *in.replay;
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

  // Losses and metrics.
  routing_probs<T>(cfg_.scoring_func, T_, E_, s_.data(), p_.data());
  primary_counts(plan_, counts_.data());
  metrics_.load_balance_loss =
      load_balance_loss<T>(cfg_, plan_, p_.data(), counts_.data(), mean_prob_.data());
  metrics_.importance_loss = importance_loss<T>(cfg_, plan_, gate_prim_.data(), importance_.data());
  metrics_.z_loss = z_loss<T>(cfg_, plan_, lse_.data());
  fill_metrics<T>(cfg_, plan_, p_.data(), counts_.data(), metrics_);
}

template <class T>
const T* Router<T>::backward(const T* dgate, double aux_scale) {
  routing_backward<T>(cfg_, plan_, z_.data(), s_.data(), p_.data(), norm_.data(), lse_.data(),
                      importance_.data(), counts_.data(), dgate, aux_scale, dgate_prim_.data(),
                      ds_.data(), dp_.data(), dz_.data());
  return dz_.data();
}

template <class T>
void Router<T>::update_selection_bias() {
  if (!cfg_.use_selection_bias) return;
  moe::update_selection_bias<T>(E_, cfg_.bias_update_rate, counts_.data(), plan_.valid_tokens, k_,
                                bias_.data());
}

template class Router<float>;
template class Router<double>;

}  // namespace moe
