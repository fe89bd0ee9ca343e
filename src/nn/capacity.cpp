// Capacity: each expert takes at most C = ceil(capacity_factor * T_valid * k / E) assignments.
// Phase 1 keeps each expert's C highest-priority primary assignments; phase 2 drops the rest
// or reroutes them, in priority order, to the token's next-best expert with room.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "moe/router.h"

namespace moe {

template <class T>
void apply_capacity(const MoeConfig& c, const T* gate, const T* u, RoutingPlan& plan) {
  const int E = c.num_experts, k = c.num_experts_per_tok;
  const int64_t slots = plan.tokens * k;
  plan.valid_tokens = 0;
  for (int64_t t = 0; t < plan.tokens; ++t) plan.valid_tokens += plan.token_mask[t] != 0;
  std::copy(plan.primary.begin(), plan.primary.end(), plan.expert.begin());
  std::fill(plan.rerouted.begin(), plan.rerouted.end(), 0);
  plan.dropped = plan.rerouted_count = 0;
  if (c.capacity_factor <= 0) {
    plan.capacity = -1;
    return;
  }
  // Same operation order as the reference: ((cf * T) * k) / E.
  plan.capacity = static_cast<int64_t>(
      std::ceil(c.capacity_factor * static_cast<double>(plan.valid_tokens) * k / E));
  const int64_t C = plan.capacity;

  // Priority: "position" = slot order; "score" = gate descending, ties in slot order;
  // "batch_priority" (V-MoE) = choice rank j ascending, then the token's top gate descending,
  // ties in token order: all of a token's assignments carry that token's priority.
  const bool by_score = c.drop_policy == DropPolicy::Score;
  const bool by_batch = c.drop_policy == DropPolicy::BatchPriority;
  auto top_gate = [&](int64_t slot) {
    const int64_t t = slot / k;
    T g = gate[t * k];
    for (int j = 1; j < k; ++j) g = std::max(g, gate[t * k + j]);
    return g;
  };
  auto before = [&](int64_t a, int64_t b) {
    if (by_score && gate[a] != gate[b]) return gate[a] > gate[b];
    if (by_batch) {
      if (a % k != b % k) return a % k < b % k;
      const T ga = top_gate(a), gb = top_gate(b);
      if (ga != gb) return ga > gb;
    }
    return a < b;
  };

  // Phase 1: bucket primary slots by expert (counting sort keeps slot order within a bucket).
  auto& offset = plan.scratch_offset;
  auto& bucket = plan.scratch_bucket;
  auto& load = plan.scratch_load;
  auto& overflow = plan.scratch_overflow;
  auto& order = plan.scratch_order;
  offset.assign(E + 1, 0);
  bucket.resize(static_cast<size_t>(slots));
  load.assign(E, 0);
  overflow.clear();
  overflow.reserve(static_cast<size_t>(slots));  // overflow varies by step: reserve the bound
  order.resize(E);
  for (int64_t i = 0; i < slots; ++i)
    if (plan.primary[i] >= 0) ++offset[plan.primary[i] + 1];
  for (int e = 0; e < E; ++e) offset[e + 1] += offset[e];
  // load[] doubles as the fill cursor of each bucket, then holds the kept count.
  for (int e = 0; e < E; ++e) load[e] = offset[e];
  for (int64_t i = 0; i < slots; ++i)
    if (plan.primary[i] >= 0) bucket[load[plan.primary[i]]++] = i;
  for (int e = 0; e < E; ++e) {
    auto* b = bucket.data() + offset[e];
    const int64_t n = offset[e + 1] - offset[e];
    if (by_score || by_batch) std::sort(b, b + n, before);  // `before` is a total order
    load[e] = std::min(n, C);
    for (int64_t i = C; i < n; ++i) overflow.push_back(b[i]);
  }
  std::sort(overflow.begin(), overflow.end(), before);

  // Phase 2.
  for (int64_t slot : overflow) {
    plan.expert[slot] = -1;
    if (c.overflow == OverflowAction::Reroute) {
      const int64_t t = slot / k;
      const T* ur = u + t * E;
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](int a, int b) { return ur[a] > ur[b] || (ur[a] == ur[b] && a < b); });
      for (int e : order) {
        if (ur[e] == -std::numeric_limits<T>::infinity()) break;
        bool held = false;
        for (int j = 0; j < k; ++j)
          held = held || plan.primary[t * k + j] == e || plan.expert[t * k + j] == e;
        if (held || load[e] >= C) continue;
        plan.expert[slot] = e;
        plan.rerouted[slot] = 1;
        ++load[e];
        ++plan.rerouted_count;
        break;
      }
    }
    if (plan.expert[slot] < 0) ++plan.dropped;
  }
}

template void apply_capacity<float>(const MoeConfig&, const float*, const float*, RoutingPlan&);
template void apply_capacity<double>(const MoeConfig&, const double*, const double*, RoutingPlan&);

}  // namespace moe
