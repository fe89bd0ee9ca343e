#include "moe/moe_losses.h"

#include <algorithm>
#include <cmath>

#include "moe/routing_stats.h"

namespace moe {

template <class T>
void routing_probs(ScoreFunc f, int64_t tokens, int64_t E, const T* s, T* p) {
  if (f == ScoreFunc::Softmax) {
    std::copy_n(s, tokens * E, p);
    return;
  }
  for (int64_t t = 0; t < tokens; ++t) {
    T sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += s[t * E + e];
    for (int64_t e = 0; e < E; ++e) p[t * E + e] = s[t * E + e] / sum;
  }
}

template <class T>
void routing_probs_backward(ScoreFunc f, int64_t tokens, int64_t E, const T* s, const T* p,
                            const T* dp, T* ds) {
  for (int64_t t = 0; t < tokens; ++t) {
    const T* dpr = dp + t * E;
    T* dsr = ds + t * E;
    if (f == ScoreFunc::Softmax) {
      for (int64_t e = 0; e < E; ++e) dsr[e] += dpr[e];
      continue;
    }
    // p = s / S: ds_m = (dp_m - sum_i dp_i p_i) / S
    T sum = 0, dot = 0;
    for (int64_t e = 0; e < E; ++e) {
      sum += s[t * E + e];
      dot += dpr[e] * p[t * E + e];
    }
    for (int64_t e = 0; e < E; ++e) dsr[e] += (dpr[e] - dot) / sum;
  }
}

void primary_counts(const RoutingPlan& plan, int64_t* counts) {
  std::fill(counts, counts + plan.num_experts, 0);
  for (int32_t e : plan.primary)
    if (e >= 0) ++counts[e];
}

namespace {
// f_i = n_i / (T_valid * k) (Switch) or n_i / T_valid (Hugging Face Mixtral).
double balance_denominator(const MoeConfig& c, const RoutingPlan& plan) {
  const double tv = static_cast<double>(std::max<int64_t>(plan.valid_tokens, 1));
  return c.aux_loss_style == AuxLossStyle::Switch ? tv * plan.k : tv;
}
}  // namespace

template <class T>
double load_balance_loss(const MoeConfig& c, const RoutingPlan& plan, const T* p,
                         const int64_t* counts, double* P) {
  if (c.router_aux_loss_coef == 0 || plan.valid_tokens == 0) return 0.0;
  const int E = plan.num_experts;
  std::fill(P, P + E, 0.0);
  for (int64_t t = 0; t < plan.tokens; ++t)
    if (plan.token_mask[t])
      for (int e = 0; e < E; ++e) P[e] += static_cast<double>(p[t * E + e]);
  const double denom = balance_denominator(c, plan);
  double sum = 0;
  for (int e = 0; e < E; ++e) sum += static_cast<double>(counts[e]) / denom * P[e];
  return c.router_aux_loss_coef * E * sum / static_cast<double>(plan.valid_tokens);
}

template <class T>
void load_balance_backward(const MoeConfig& c, const RoutingPlan& plan, const int64_t* counts,
                           double scale, T* dp) {
  if (c.router_aux_loss_coef == 0 || plan.valid_tokens == 0) return;
  const int E = plan.num_experts;
  const double denom = balance_denominator(c, plan);
  const double base = scale * c.router_aux_loss_coef * E / static_cast<double>(plan.valid_tokens);
  for (int64_t t = 0; t < plan.tokens; ++t)
    if (plan.token_mask[t])
      for (int e = 0; e < E; ++e)
        dp[t * E + e] += static_cast<T>(base * static_cast<double>(counts[e]) / denom);
}

template <class T>
double importance_loss(const MoeConfig& c, const RoutingPlan& plan, const T* gate_primary,
                       double* importance) {
  const int E = plan.num_experts;
  std::fill(importance, importance + E, 0.0);
  if (c.router_importance_coef == 0) return 0.0;
  for (int64_t i = 0; i < plan.tokens * plan.k; ++i)
    if (plan.primary[i] >= 0) importance[plan.primary[i]] += static_cast<double>(gate_primary[i]);
  double mean = 0, var = 0;
  for (int e = 0; e < E; ++e) mean += importance[e];
  mean /= E;
  for (int e = 0; e < E; ++e) var += (importance[e] - mean) * (importance[e] - mean);
  var /= E;
  return c.router_importance_coef * var / (mean * mean + 1e-10);
}

template <class T>
void importance_backward(const MoeConfig& c, const RoutingPlan& plan, const double* importance,
                         double scale, T* dgate_primary) {
  if (c.router_importance_coef == 0) return;
  const int E = plan.num_experts;
  double mean = 0, var = 0;
  for (int e = 0; e < E; ++e) mean += importance[e];
  mean /= E;
  for (int e = 0; e < E; ++e) var += (importance[e] - mean) * (importance[e] - mean);
  var /= E;
  // L = w var / (m^2 + eps): dL/dI_i = w [2 (I_i - m) / (E q) - 2 m var / (E q^2)], q = m^2 + eps
  const double q = mean * mean + 1e-10, w = scale * c.router_importance_coef;
  for (int64_t i = 0; i < plan.tokens * plan.k; ++i) {
    const int32_t e = plan.primary[i];
    if (e < 0) continue;
    const double g = w * (2.0 * (importance[e] - mean) / (E * q) - 2.0 * mean * var / (E * q * q));
    dgate_primary[i] += static_cast<T>(g);
  }
}

template <class T>
double z_loss(const MoeConfig& c, const RoutingPlan& plan, const T* lse) {
  if (c.router_z_loss_coef == 0 || plan.valid_tokens == 0) return 0.0;
  double sum = 0;
  for (int64_t t = 0; t < plan.tokens; ++t)
    if (plan.token_mask[t]) sum += static_cast<double>(lse[t]) * static_cast<double>(lse[t]);
  return c.router_z_loss_coef * sum / static_cast<double>(plan.valid_tokens);
}

template <class T>
void z_loss_backward(const MoeConfig& c, const RoutingPlan& plan, const T* z, const T* lse,
                     double scale, T* dz) {
  if (c.router_z_loss_coef == 0 || plan.valid_tokens == 0) return;
  const int E = plan.num_experts;
  const double w = scale * c.router_z_loss_coef * 2.0 / static_cast<double>(plan.valid_tokens);
  for (int64_t t = 0; t < plan.tokens; ++t) {
    if (!plan.token_mask[t]) continue;
    // d lse / dz = softmax(z) = exp(z - lse), whatever the scoring function.
    const T coef = static_cast<T>(w * static_cast<double>(lse[t]));
    for (int e = 0; e < E; ++e) dz[t * E + e] += coef * std::exp(z[t * E + e] - lse[t]);
  }
}

void MoeMetrics::set_load_spread() {
  const int E = static_cast<int>(primary_per_expert.size());
  load_cv = E > 0 ? moe::load_cv(primary_per_expert.data(), E) : 0.0;
  load_max_over_mean = E > 0 ? moe::load_max_over_mean(primary_per_expert.data(), E) : 0.0;
}

template <class T>
void fill_metrics(const MoeConfig& c, const RoutingPlan& plan, const T* p, const int64_t* counts,
                  MoeMetrics& m) {
  const int E = plan.num_experts;
  m.primary_per_expert.assign(counts, counts + E);
  m.kept_per_expert.assign(E, 0);
  for (int32_t e : plan.expert)
    if (e >= 0) ++m.kept_per_expert[e];
  m.tokens = plan.valid_tokens;
  m.assignments = plan.valid_tokens * plan.k;
  m.dropped = plan.dropped;
  m.rerouted = plan.rerouted_count;
  m.capacity = plan.capacity;
  m.dropped_fraction =
      m.assignments ? static_cast<double>(m.dropped) / static_cast<double>(m.assignments) : 0.0;
  double entropy = 0;
  for (int64_t t = 0; t < plan.tokens; ++t) {
    if (!plan.token_mask[t]) continue;
    for (int e = 0; e < E; ++e) {
      const double v = static_cast<double>(p[t * E + e]);
      if (v > 0) entropy -= v * std::log(v);
    }
  }
  m.router_entropy = plan.valid_tokens ? entropy / static_cast<double>(plan.valid_tokens) : 0.0;
  m.set_load_spread();
  (void)c;
}

#define MOE_INSTANTIATE(T)                                                                      \
  template void routing_probs<T>(ScoreFunc, int64_t, int64_t, const T*, T*);                    \
  template void routing_probs_backward<T>(ScoreFunc, int64_t, int64_t, const T*, const T*,      \
                                          const T*, T*);                                        \
  template double load_balance_loss<T>(const MoeConfig&, const RoutingPlan&, const T*,          \
                                       const int64_t*, double*);                                \
  template void load_balance_backward<T>(const MoeConfig&, const RoutingPlan&, const int64_t*,  \
                                         double, T*);                                           \
  template double importance_loss<T>(const MoeConfig&, const RoutingPlan&, const T*, double*);  \
  template void importance_backward<T>(const MoeConfig&, const RoutingPlan&, const double*,     \
                                       double, T*);                                             \
  template double z_loss<T>(const MoeConfig&, const RoutingPlan&, const T*);                    \
  template void z_loss_backward<T>(const MoeConfig&, const RoutingPlan&, const T*, const T*,    \
                                   double, T*);                                                 \
  template void fill_metrics<T>(const MoeConfig&, const RoutingPlan&, const T*, const int64_t*, \
                                MoeMetrics&);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
#undef MOE_INSTANTIATE

template <class T>
void routing_backward(const MoeConfig& c, const RoutingPlan& plan, const T* z, const T* s,
                      const T* p, const T* norm, const T* lse, const double* importance,
                      const int64_t* counts, const T* dgate, double aux_scale, T* dgate_prim, T* ds,
                      T* dp, T* dz) {
  const int64_t TE = plan.tokens * plan.num_experts, Tk = plan.tokens * plan.k;
  std::fill(dgate_prim, dgate_prim + Tk, T(0));
  importance_backward<T>(c, plan, importance, aux_scale, dgate_prim);
  std::fill(ds, ds + TE, T(0));
  gates_backward<T>(c, plan, s, norm, dgate, dgate_prim, ds);
  std::fill(dp, dp + TE, T(0));
  load_balance_backward<T>(c, plan, counts, aux_scale, dp);
  routing_probs_backward<T>(c.scoring_func, plan.tokens, plan.num_experts, s, p, dp, ds);
  router_scores_backward<T>(c.scoring_func, plan.tokens, plan.num_experts, s, ds, dz);
  z_loss_backward<T>(c, plan, z, lse, aux_scale, dz);
}

template void routing_backward<float>(const MoeConfig&, const RoutingPlan&, const float*,
                                      const float*, const float*, const float*, const float*,
                                      const double*, const int64_t*, const float*, double, float*,
                                      float*, float*, float*);
template void routing_backward<double>(const MoeConfig&, const RoutingPlan&, const double*,
                                       const double*, const double*, const double*, const double*,
                                       const double*, const int64_t*, const double*, double,
                                       double*, double*, double*, double*);

}  // namespace moe
