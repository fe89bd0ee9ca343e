// The index and selection math of the router that the CUDA kernels run per token (or per chunk
// of slots) and that the host can run too, so that tests/test_cuda_routing_math.cpp checks it
// against the CPU layer (src/nn/router.cpp, capacity.cpp, permute.cpp, moe_losses.cpp) on a
// machine without a GPU. Every function mirrors its CPU counterpart operation for operation
// (same loop order, same float/double casts), so on the host the results are bit-identical;
// on the device expf/logf may differ from the host libm by an ulp (see docs/cuda.md).
//
// Only plain C++ and <cmath> here: no CUDA headers, no fmt, no moe headers, so it compiles
// under nvcc, g++ and in device code alike.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MOE_HD __host__ __device__
#else
#define MOE_HD
#endif

namespace moe::cuda {

// The router settings the per-token math needs, copied out of a MoeConfig (a POD that can be
// passed to a kernel by value).
struct RouterParams {
  int num_experts = 0;           // E
  int k = 0;                     // num_experts_per_tok
  bool softmax = true;           // scoring_func softmax (else sigmoid)
  bool renormalize = true;       // norm_topk_prob && k > 1
  float routed_scaling = 1.0f;   // routed_scaling_factor, cast to float as the CPU layer does
  double aux_coef = 0.0;         // router_aux_loss_coef
  bool aux_switch_style = true;  // f normalized by T*k (Switch) or by T (Hugging Face)
  double z_coef = 0.0;           // router_z_loss_coef
};

MOE_HD inline float rm_exp(float v) {
#if defined(__CUDA_ARCH__)
  return ::expf(v);
#else
  return std::exp(v);
#endif
}
MOE_HD inline float rm_log(float v) {
#if defined(__CUDA_ARCH__)
  return ::logf(v);
#else
  return std::log(v);
#endif
}
MOE_HD inline double rm_ceil(double v) {
#if defined(__CUDA_ARCH__)
  return ::ceil(v);
#else
  return std::ceil(v);
#endif
}
MOE_HD inline double rm_log(double v) {
#if defined(__CUDA_ARCH__)
  return ::log(v);
#else
  return std::log(v);
#endif
}

// ---- Scores (router_scores_forward) ----------------------------------------------------------

// One token: s [E] = softmax(z) or sigmoid(z); returns logsumexp(z) (the z-loss needs it for
// either scoring function).
MOE_HD inline float token_scores(bool softmax, int E, const float* z, float* s) {
  float m = z[0];
  for (int e = 1; e < E; ++e)
    if (m < z[e]) m = z[e];  // std::max_element keeps the first of equal maxima
  float sum = 0;
  for (int e = 0; e < E; ++e) sum += rm_exp(z[e] - m);
  const float lse = m + rm_log(sum);
  if (softmax) {
    for (int e = 0; e < E; ++e) s[e] = rm_exp(z[e] - m) / sum;
  } else {
    for (int e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + rm_exp(-z[e]));
  }
  return lse;
}

// ---- Selection (select_top_k without groups or expert dropout) -------------------------------

// The selection key of expert e: u = s + b (b = 0 without a selection bias).
MOE_HD inline float selection_key(const float* s, const float* bias, int e) {
  return s[e] + (bias ? bias[e] : 0.0f);
}

// True when expert a comes before expert b in the CPU's selection order: descending key, ties
// to the lower index (ByKeyDesc in router.cpp).
MOE_HD inline bool key_before(float ka, int a, float kb, int b) {
  return ka > kb || (ka == kb && a < b);
}

// primary [k] = the first k experts of the selection order, best first: the same result as the
// CPU's std::partial_sort with ByKeyDesc, found without scratch memory by taking, k times, the
// best expert that comes strictly after the previous pick. O(k E) per token.
// A NaN key is never picked; if fewer than k keys are comparable the remaining slots get the
// lowest unpicked indices so that every index stays in range (garbage in, no crash).
MOE_HD inline void token_top_k(int E, int k, const float* s, const float* bias, int32_t* primary) {
  int prev = -1;
  float prev_key = 0;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    float best_key = 0;
    for (int e = 0; e < E; ++e) {
      const float key = selection_key(s, bias, e);
      if (prev >= 0 && !key_before(prev_key, prev, key, e)) continue;  // not after prev
      if (key != key) continue;                                        // NaN
      if (best < 0 || key_before(key, e, best_key, best)) {
        best = e;
        best_key = key;
      }
    }
    if (best < 0) {
      for (int e = 0; e < E && best < 0; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken = taken || primary[i] == e;
        if (!taken) best = e;
      }
      primary[j] = best;
      continue;  // prev stays: the order below a NaN is undefined anyway
    }
    primary[j] = best;
    prev = best;
    prev_key = best_key;
  }
}

// ---- Gates (primary_gates / final_gates) -----------------------------------------------------

// Primary gates [k] of one token; returns the normalizer S (the sum of the k selected scores
// when renormalizing, else 1).
MOE_HD inline float token_gates(const RouterParams& rp, const float* s, const int32_t* primary,
                                float* gate) {
  float sum = 0;
  for (int j = 0; j < rp.k; ++j) sum += s[primary[j]];
  const float norm = rp.renormalize ? sum : 1.0f;
  for (int j = 0; j < rp.k; ++j) gate[j] = rp.routed_scaling * s[primary[j]] / norm;
  return norm;
}

// ---- Losses and metrics (moe_losses.cpp) -----------------------------------------------------

// Routing probabilities p [E] of one token: s for softmax, s / sum(s) for sigmoid.
MOE_HD inline void token_probs(bool softmax, int E, const float* s, float* p) {
  if (softmax) {
    for (int e = 0; e < E; ++e) p[e] = s[e];
    return;
  }
  float sum = 0;
  for (int e = 0; e < E; ++e) sum += s[e];
  for (int e = 0; e < E; ++e) p[e] = s[e] / sum;
}

// -sum p log p of one token (nats), in double as fill_metrics sums it.
MOE_HD inline double token_entropy(int E, const float* p) {
  double entropy = 0;
  for (int e = 0; e < E; ++e) {
    const double v = static_cast<double>(p[e]);
    if (v > 0) entropy -= v * rm_log(v);
  }
  return entropy;
}

// Denominator of f_i: T_valid * k (Switch) or T_valid (Hugging Face Mixtral).
MOE_HD inline double balance_denominator(const RouterParams& rp, int64_t valid_tokens) {
  const double tv = static_cast<double>(valid_tokens > 1 ? valid_tokens : 1);
  return rp.aux_switch_style ? tv * rp.k : tv;
}

// alpha * E * sum_i f_i P_i from the primary counts [E] and the summed probabilities [E].
MOE_HD inline double load_balance_value(const RouterParams& rp, const int64_t* counts,
                                        const double* prob_sums, int64_t valid_tokens) {
  if (rp.aux_coef == 0 || valid_tokens == 0) return 0.0;
  const double denom = balance_denominator(rp, valid_tokens);
  double sum = 0;
  for (int e = 0; e < rp.num_experts; ++e)
    sum += static_cast<double>(counts[e]) / denom * prob_sums[e];
  return rp.aux_coef * rp.num_experts * sum / static_cast<double>(valid_tokens);
}

// beta * mean lse^2 from the summed lse^2.
MOE_HD inline double z_loss_value(const RouterParams& rp, double lse_sq_sum, int64_t valid_tokens) {
  if (rp.z_coef == 0 || valid_tokens == 0) return 0.0;
  return rp.z_coef * lse_sq_sum / static_cast<double>(valid_tokens);
}

// ---- Capacity and permutation (apply_capacity with position/drop, build_permutation) ---------

// C = ceil(capacity_factor * T_valid * k / E), evaluated in the CPU's operation order; -1 when
// dropless (capacity_factor <= 0).
MOE_HD inline int64_t expert_capacity(double capacity_factor, int64_t valid_tokens, int k, int E) {
  if (capacity_factor <= 0) return -1;
  return static_cast<int64_t>(rm_ceil(capacity_factor * static_cast<double>(valid_tokens) * k / E));
}

// The slots t*k+j are cut into chunks of `chunk` consecutive slots. With position priority a
// slot is kept iff fewer than C earlier slots chose the same expert, and the kept rows of an
// expert are in slot order, so one stable rank per slot decides both capacity and row:
//   1. chunk_expert_counts: per chunk, how many of its slots chose each expert;
//   2. exclusive_scan_column: per expert, the counts of all earlier chunks (prefix sums);
//   3. kept_offsets: kept_e = min(n_e, C), offsets = prefix sums of kept_e;
//   4. assign_chunk_rows: rank = earlier chunks + earlier slots of this chunk; kept iff rank < C;
//      row = offsets[e] + rank.
// Chunks run in parallel on the device (one thread each) and in any order on the host.

// counts [E] (=) of the experts chosen by primary[begin, end).
MOE_HD inline void chunk_expert_counts(const int32_t* primary, int64_t begin, int64_t end, int E,
                                       int32_t* counts) {
  for (int e = 0; e < E; ++e) counts[e] = 0;
  for (int64_t i = begin; i < end; ++i)
    if (primary[i] >= 0) ++counts[primary[i]];
}

// Column e of chunk_counts [chunks, E]: counts -> exclusive prefix sums (=); returns the total.
MOE_HD inline int64_t exclusive_scan_column(int32_t* chunk_counts, int64_t chunks, int E, int e) {
  int64_t running = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const int32_t n = chunk_counts[c * E + e];
    chunk_counts[c * E + e] = static_cast<int32_t>(running);
    running += n;
  }
  return running;
}

// offsets [E+1] of each expert's kept rows from the primary counts [E] and C (-1: keep all).
MOE_HD inline void kept_offsets(const int64_t* counts, int E, int64_t capacity, int64_t* offsets) {
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) {
    const int64_t kept = capacity < 0 || counts[e] < capacity ? counts[e] : capacity;
    offsets[e + 1] = offsets[e] + kept;
  }
}

// Slots [begin, end) of one chunk: slot_row [slot] = its row or -1 (dropped or padding) and
// row_slot [row] = slot. cursor [E] holds the chunk's exclusive prefix from step 2 and is
// advanced in place (it is the chunk's own row of chunk_counts).
MOE_HD inline void assign_chunk_rows(const int32_t* primary, int64_t begin, int64_t end,
                                     int32_t* cursor, const int64_t* offsets, int64_t capacity,
                                     int32_t* slot_row, int32_t* row_slot) {
  for (int64_t i = begin; i < end; ++i) {
    const int32_t e = primary[i];
    if (e < 0) {
      slot_row[i] = -1;
      continue;
    }
    const int64_t rank = cursor[e]++;
    if (capacity >= 0 && rank >= capacity) {
      slot_row[i] = -1;
      continue;
    }
    const int64_t row = offsets[e] + rank;
    slot_row[i] = static_cast<int32_t>(row);
    row_slot[row] = static_cast<int32_t>(i);
  }
}

// ---- Router backward (routing_backward without the importance loss) --------------------------

// One token, from the final-gate gradients dgate [k] to the logit gradients dz [E] (=), through
// the gates and their renormalization, the load-balance loss (into p), the scores and the
// z-loss; loss terms scaled by aux_scale. primary / expert [k] are the primary and the final
// experts (-1 where dropped), counts [E] the primary counts of the forward. ds [E] is scratch.
MOE_HD inline void token_routing_backward(const RouterParams& rp, const float* z, const float* s,
                                          const float* p, float norm, float lse,
                                          const int32_t* primary, const int32_t* expert,
                                          const float* dgate, const int64_t* counts,
                                          int64_t valid_tokens, double aux_scale, float* ds,
                                          float* dz) {
  const int E = rp.num_experts, k = rp.k;
  for (int e = 0; e < E; ++e) ds[e] = 0;
  // gates_backward: g = rsf * s_e / S; dg/ds_e = rsf / S, dg/ds_m = -g / S over the primary m.
  const float rsf = rp.routed_scaling;
  const float inv = 1.0f / norm;
  float through_norm = 0;
  for (int j = 0; j < k; ++j) {
    const int32_t e = expert[j];
    if (e < 0) continue;
    const float g = rsf * s[e] * inv;
    ds[e] += dgate[j] * rsf * inv;
    through_norm += dgate[j] * g;
  }
  if (rp.renormalize)
    for (int j = 0; j < k; ++j) ds[primary[j]] -= through_norm * inv;

  // load_balance_backward + routing_probs_backward: dp_e = alpha E n_e / (denom T_valid).
  const bool balance = rp.aux_coef != 0 && valid_tokens != 0;
  const double denom = balance_denominator(rp, valid_tokens);
  const double base = aux_scale * rp.aux_coef * E / static_cast<double>(valid_tokens);
  auto dp = [&](int e) {
    return balance ? static_cast<float>(base * static_cast<double>(counts[e]) / denom) : 0.0f;
  };
  if (rp.softmax) {
    for (int e = 0; e < E; ++e) ds[e] += dp(e);
  } else {
    // p = s / S: ds_m += (dp_m - sum_i dp_i p_i) / S
    float sum = 0, dot = 0;
    for (int e = 0; e < E; ++e) {
      sum += s[e];
      dot += dp(e) * p[e];
    }
    for (int e = 0; e < E; ++e) ds[e] += (dp(e) - dot) / sum;
  }

  // router_scores_backward.
  if (rp.softmax) {
    float dot = 0;
    for (int e = 0; e < E; ++e) dot += ds[e] * s[e];
    for (int e = 0; e < E; ++e) dz[e] = s[e] * (ds[e] - dot);
  } else {
    for (int e = 0; e < E; ++e) dz[e] = ds[e] * s[e] * (1.0f - s[e]);
  }

  // z_loss_backward: d lse / dz = softmax(z) = exp(z - lse).
  if (rp.z_coef != 0 && valid_tokens != 0) {
    const double w = aux_scale * rp.z_coef * 2.0 / static_cast<double>(valid_tokens);
    const float coef = static_cast<float>(w * static_cast<double>(lse));
    for (int e = 0; e < E; ++e) dz[e] += coef * rm_exp(z[e] - lse);
  }
}

}  // namespace moe::cuda
