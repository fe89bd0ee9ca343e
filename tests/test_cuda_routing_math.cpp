// The host/device routing math of the CUDA backend (src/cuda/routing_math.h) against the CPU
// layer's router, capacity, permutation and losses, on random inputs with and without ties.
// Runs on every machine: routing_math.h is plain C++ when compiled without nvcc, and the CUDA
// kernels call exactly these functions, so this is the CPU-side proof that the GPU's discrete
// decisions (top-k order, ties, capacity, rows) are the CPU layer's.
//
// Forward values (scores, lse, selection, gates, probabilities, capacity, rows) must agree
// bit for bit: the functions repeat the CPU's operations in the CPU's order. Loss sums and the
// router backward are compared to 1e-12 (double) / 1e-6 (float) relative, because the library
// is built with -march=native and may contract a * b + c into an FMA where this test does not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/router_params.h"
#include "cuda/routing_math.h"
#include "moe/cuda_moe_layer.h"
#include "moe/moe_losses.h"
#include "moe/permute.h"
#include "moe/rng.h"
#include "moe/router.h"
#include "test_util.h"

namespace moe {
namespace {

using cuda::RouterParams;

struct Case {
  std::string name;
  int T, E, k;
  ScoreFunc score = ScoreFunc::Softmax;
  bool norm_topk = true;
  double rsf = 1.0;
  bool bias = false;
  double capacity_factor = 0.0;
  double aux = 0.01;
  AuxLossStyle style = AuxLossStyle::Switch;
  double z = 1e-3;
  int tie_levels = 0;      // > 0: logits and bias rounded to 1/tie_levels (many exact ties)
  bool padding = false;    // ~15% padding tokens (primary -1), as the CPU plan writes them
  bool collapsed = false;  // every token prefers expert E/2: capacity drops most slots
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << c.name;
}

MoeConfig config_of(const Case& c) {
  MoeConfig cfg;
  cfg.hidden_size = 8;
  cfg.moe_intermediate_size = 8;
  cfg.num_experts = c.E;
  cfg.num_experts_per_tok = c.k;
  cfg.scoring_func = c.score;
  cfg.norm_topk_prob = c.norm_topk;
  cfg.routed_scaling_factor = c.rsf;
  cfg.use_selection_bias = c.bias;
  cfg.capacity_factor = c.capacity_factor;
  cfg.router_aux_loss_coef = c.aux;
  cfg.aux_loss_style = c.style;
  cfg.router_z_loss_coef = c.z;
  cfg.validate("test");
  return cfg;
}

double rel_diff(double a, double b) {
  return std::abs(a - b) / std::max(std::abs(b), 1e-300);
}

// Everything the CPU layer computes for one routing call, and the same from routing_math.
struct CpuRouting {
  std::vector<float> z, s, lse, u, norm, gate_prim, p;
  std::vector<float> bias;
  RoutingPlan plan;
  Permutation perm;
  std::vector<int64_t> counts;
};

CpuRouting run_cpu(const MoeConfig& cfg, const Case& c, uint64_t seed) {
  const int T = c.T, E = c.E, k = c.k;
  Rng rng(seed);
  CpuRouting r;
  r.z.resize(static_cast<size_t>(T) * E);
  rng.fill_normal(r.z.data(), T * E, 0.0, 1.5);
  if (c.tie_levels > 0)
    for (float& v : r.z) v = std::round(v * c.tie_levels) / static_cast<float>(c.tie_levels);
  if (c.collapsed)
    for (int t = 0; t < T; ++t) r.z[t * E + E / 2] += 8.0f;
  if (c.bias) {
    r.bias.resize(E);
    rng.fill_normal(r.bias.data(), E, 0.0, 0.05);
    if (c.tie_levels > 0)
      for (float& v : r.bias) v = std::round(v * 10) / 10.0f;  // mostly 0: equal keys stay equal
  }
  r.s.resize(r.z.size());
  r.u.resize(r.z.size());
  r.p.resize(r.z.size());
  r.lse.resize(T);
  r.norm.resize(T);
  r.gate_prim.resize(static_cast<size_t>(T) * k);
  router_scores_forward<float>(cfg.scoring_func, T, E, r.z.data(), r.s.data(), r.lse.data());
  r.plan.resize(T, k, E);
  if (c.padding)
    for (int t = 0; t < T; ++t) r.plan.token_mask[t] = rng.uniform() >= 0.15;
  select_top_k<float>(cfg, r.s.data(), c.bias ? r.bias.data() : nullptr, r.plan, r.u.data());
  primary_gates<float>(cfg, r.plan, r.s.data(), r.norm.data(), r.gate_prim.data());
  apply_capacity<float>(cfg, r.gate_prim.data(), r.u.data(), r.plan);
  build_permutation(r.plan, r.perm);
  routing_probs<float>(cfg.scoring_func, T, E, r.s.data(), r.p.data());
  r.counts.assign(E, 0);
  primary_counts(r.plan, r.counts.data());
  return r;
}

std::vector<Case> cases() {
  std::vector<Case> v;
  v.push_back({"mixtral_top2", 64, 8, 2});
  {
    Case c{"switch_top1_capacity", 37, 8, 1};
    c.norm_topk = false;
    c.capacity_factor = 1.0;
    c.z = 0;
    v.push_back(c);
  }
  {
    Case c{"qwen_top4_hf_ties", 100, 16, 4};
    c.norm_topk = false;
    c.capacity_factor = 1.25;
    c.style = AuxLossStyle::HF;
    c.tie_levels = 4;
    v.push_back(c);
  }
  {
    Case c{"deepseek_sigmoid_bias", 53, 64, 6};
    c.score = ScoreFunc::Sigmoid;
    c.rsf = 2.5;
    c.bias = true;
    c.capacity_factor = 0.5;
    v.push_back(c);
  }
  {
    Case c{"sigmoid_k_equals_E_ties", 200, 4, 4};
    c.score = ScoreFunc::Sigmoid;
    c.norm_topk = false;
    c.bias = true;
    c.capacity_factor = 1.1;
    c.tie_levels = 2;
    v.push_back(c);
  }
  {
    Case c{"one_expert", 31, 1, 1};
    c.capacity_factor = 0.3;
    v.push_back(c);
  }
  {
    Case c{"many_experts_ties", 128, 160, 8};
    c.capacity_factor = 2.0;
    c.tie_levels = 8;
    c.aux = 0.02;
    v.push_back(c);
  }
  {
    Case c{"collapsed_router", 96, 8, 2};
    c.capacity_factor = 1.0;
    c.collapsed = true;
    v.push_back(c);
  }
  {
    Case c{"tiny_capacity", 45, 6, 3};
    c.capacity_factor = 0.01;  // C = 1
    c.score = ScoreFunc::Sigmoid;
    v.push_back(c);
  }
  {
    Case c{"padding_softmax", 77, 8, 2};
    c.capacity_factor = 1.0;
    c.padding = true;
    v.push_back(c);
  }
  {
    Case c{"padding_sigmoid_bias_ties", 90, 12, 3};
    c.score = ScoreFunc::Sigmoid;
    c.bias = true;
    c.capacity_factor = 0.75;
    c.padding = true;
    c.tie_levels = 3;
    c.rsf = 1.5;
    v.push_back(c);
  }
  {
    Case c{"all_ties", 40, 8, 3};
    c.tie_levels = 1;  // logits rounded to integers: whole rows of equal scores
    c.capacity_factor = 1.0;
    v.push_back(c);
  }
  return v;
}

class RoutingMath : public ::testing::TestWithParam<Case> {};

TEST_P(RoutingMath, ForwardDecisionsAreTheCpuLayers) {
  const Case& c = GetParam();
  const MoeConfig cfg = config_of(c);
  const RouterParams rp = cuda::router_params(cfg);
  const int T = c.T, E = c.E, k = c.k;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const CpuRouting r = run_cpu(cfg, c, seed);
    const float* bias = c.bias ? r.bias.data() : nullptr;

    // Scores, lse, selection, gates, probabilities: per token, bit for bit.
    std::vector<float> s(E), p(E), gate(k);
    std::vector<int32_t> primary(k);
    int ties_seen = 0;
    for (int t = 0; t < T; ++t) {
      const float lse = cuda::token_scores(rp.softmax, E, r.z.data() + t * E, s.data());
      ASSERT_EQ(lse, r.lse[t]) << "lse of token " << t;
      for (int e = 0; e < E; ++e) ASSERT_EQ(s[e], r.s[t * E + e]) << "s[" << t << "," << e << "]";
      cuda::token_probs(rp.softmax, E, s.data(), p.data());
      for (int e = 0; e < E; ++e) ASSERT_EQ(p[e], r.p[t * E + e]) << "p[" << t << "," << e << "]";
      if (!r.plan.token_mask[t]) continue;
      cuda::token_top_k(E, k, s.data(), bias, primary.data());
      for (int j = 0; j < k; ++j)
        ASSERT_EQ(primary[j], r.plan.primary[t * k + j]) << "token " << t << " choice " << j;
      for (int a = 0; a < E; ++a)
        for (int b = a + 1; b < E; ++b)
          ties_seen +=
              cuda::selection_key(s.data(), bias, a) == cuda::selection_key(s.data(), bias, b);
      const float norm = cuda::token_gates(rp, s.data(), primary.data(), gate.data());
      ASSERT_EQ(norm, r.norm[t]) << "norm of token " << t;
      for (int j = 0; j < k; ++j)
        ASSERT_EQ(gate[j], r.gate_prim[t * k + j]) << "gate " << t << "," << j;
    }
    if (c.tie_levels > 0 && E > 1) {
      EXPECT_GT(ties_seen, 0) << "the tie case produced no ties";
    }

    // Capacity and rows through the chunked pipeline, for several chunk sizes.
    const int64_t valid = r.plan.valid_tokens;
    const int64_t C = cuda::expert_capacity(cfg.capacity_factor, valid, k, E);
    ASSERT_EQ(C, r.plan.capacity);
    const int64_t slots = static_cast<int64_t>(T) * k;
    for (int64_t chunk : {int64_t(1), int64_t(5), int64_t(64), slots + 3}) {
      SCOPED_TRACE("chunk " + std::to_string(chunk));
      const int64_t chunks = (slots + chunk - 1) / chunk;
      std::vector<int32_t> chunk_counts(static_cast<size_t>(chunks) * E);
      for (int64_t ch = chunks - 1; ch >= 0; --ch)  // any chunk order
        cuda::chunk_expert_counts(r.plan.primary.data(), ch * chunk,
                                  std::min(slots, (ch + 1) * chunk), E,
                                  chunk_counts.data() + ch * E);
      std::vector<int64_t> totals(E), offsets(E + 1);
      for (int e = 0; e < E; ++e)
        totals[e] = cuda::exclusive_scan_column(chunk_counts.data(), chunks, E, e);
      for (int e = 0; e < E; ++e) ASSERT_EQ(totals[e], r.counts[e]) << "primary count " << e;
      cuda::kept_offsets(totals.data(), E, C, offsets.data());
      for (int e = 0; e <= E; ++e) ASSERT_EQ(offsets[e], r.perm.offsets[e]) << "offset " << e;
      std::vector<int32_t> slot_row(slots, -7), row_slot(offsets[E], -7);
      for (int64_t ch = 0; ch < chunks; ++ch)
        cuda::assign_chunk_rows(r.plan.primary.data(), ch * chunk,
                                std::min(slots, (ch + 1) * chunk), chunk_counts.data() + ch * E,
                                offsets.data(), C, slot_row.data(), row_slot.data());
      int64_t dropped = 0;
      for (int64_t i = 0; i < slots; ++i) {
        ASSERT_EQ(slot_row[i], r.perm.slot_row[i]) << "row of slot " << i;
        const int32_t final_expert = slot_row[i] >= 0 ? r.plan.primary[i] : -1;
        ASSERT_EQ(final_expert, r.plan.expert[i]) << "final expert of slot " << i;
        dropped += r.plan.primary[i] >= 0 && slot_row[i] < 0;
      }
      for (int64_t row = 0; row < offsets[E]; ++row)
        ASSERT_EQ(row_slot[row], r.perm.row_slot[row]) << "slot of row " << row;
      EXPECT_EQ(dropped, r.plan.dropped);
      if (c.collapsed) {
        EXPECT_GT(dropped, 0);
      }
    }

    // Losses and the entropy metric from the per-token pieces.
    std::vector<double> prob_sums(E, 0.0);
    double lse_sq = 0, entropy = 0;
    for (int t = 0; t < T; ++t) {
      if (!r.plan.token_mask[t]) continue;
      for (int e = 0; e < E; ++e) prob_sums[e] += static_cast<double>(r.p[t * E + e]);
      lse_sq += static_cast<double>(r.lse[t]) * static_cast<double>(r.lse[t]);
      entropy += cuda::token_entropy(E, r.p.data() + t * E);
    }
    std::vector<double> P(E);
    const double lb = load_balance_loss<float>(cfg, r.plan, r.p.data(), r.counts.data(), P.data());
    EXPECT_LE(rel_diff(cuda::load_balance_value(rp, r.counts.data(), prob_sums.data(), valid), lb),
              1e-12);
    EXPECT_LE(
        rel_diff(cuda::z_loss_value(rp, lse_sq, valid), z_loss<float>(cfg, r.plan, r.lse.data())),
        1e-12);
    MoeMetrics m;
    fill_metrics<float>(cfg, r.plan, r.p.data(), r.counts.data(), m);
    EXPECT_LE(rel_diff(valid ? entropy / static_cast<double>(valid) : 0.0, m.router_entropy),
              1e-12);
  }
}

TEST_P(RoutingMath, RouterBackwardIsTheCpuLayers) {
  const Case& c = GetParam();
  const MoeConfig cfg = config_of(c);
  const RouterParams rp = cuda::router_params(cfg);
  const int T = c.T, E = c.E, k = c.k;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    for (double aux_scale : {1.0, 0.37}) {
      SCOPED_TRACE("seed " + std::to_string(seed) + " aux_scale " + std::to_string(aux_scale));
      const CpuRouting r = run_cpu(cfg, c, seed);
      // The combine's gradient: nonzero only on the kept slots, as scatter_gated_backward.
      Rng rng(seed + 100);
      std::vector<float> dgate(static_cast<size_t>(T) * k);
      rng.fill_normal(dgate.data(), T * k);
      for (int64_t i = 0; i < T * k; ++i)
        if (r.plan.expert[i] < 0) dgate[i] = 0;
      std::vector<double> importance(E, 0.0);
      std::vector<float> dgate_prim(T * k), ds(T * E), dp(T * E), dz(T * E);
      routing_backward<float>(cfg, r.plan, r.z.data(), r.s.data(), r.p.data(), r.norm.data(),
                              r.lse.data(), importance.data(), r.counts.data(), dgate.data(),
                              aux_scale, dgate_prim.data(), ds.data(), dp.data(), dz.data());

      std::vector<float> dz_mine(T * E, 0.0f), ds_row(E);
      for (int t = 0; t < T; ++t) {
        if (!r.plan.token_mask[t]) continue;  // the CPU leaves padding's dz at 0
        cuda::token_routing_backward(
            rp, r.z.data() + t * E, r.s.data() + t * E, r.p.data() + t * E, r.norm[t], r.lse[t],
            r.plan.primary.data() + t * k, r.plan.expert.data() + t * k, dgate.data() + t * k,
            r.counts.data(), r.plan.valid_tokens, aux_scale, ds_row.data(), dz_mine.data() + t * E);
      }
      double max_ref = 0, max_diff = 0;
      for (int64_t i = 0; i < T * E; ++i) {
        max_ref = std::max(max_ref, static_cast<double>(std::abs(dz[i])));
        max_diff = std::max(max_diff, static_cast<double>(std::abs(dz_mine[i] - dz[i])));
      }
      EXPECT_LE(max_diff, 1e-6 * max_ref + 1e-12) << "dz max abs diff " << max_diff;
      test::expect_close("dz", dz_mine.data(), dz.data(), T * E, 1e-6);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, RoutingMath, ::testing::ValuesIn(cases()),
                         [](const auto& p) { return p.param.name; });

TEST(RoutingMath, CapacityRoundsLikeTheCpuLayer) {
  // apply_capacity computes C from the valid tokens alone; padding-like slots (-1) cost nothing.
  int checked = 0;
  for (double cf : {0.01, 0.1, 0.3, 0.7, 1.0, 1.1, 1.2, 1.25, 1.3, 1.5, 2.0, 3.3})
    for (int T = 1; T < 400; T += 13)
      for (int k : {1, 2, 3, 6})
        for (int E : {6, 8, 24, 60, 64}) {
          MoeConfig cfg;
          cfg.hidden_size = 4;
          cfg.moe_intermediate_size = 4;
          cfg.num_experts = E;
          cfg.num_experts_per_tok = k;
          cfg.capacity_factor = cf;
          RoutingPlan plan;
          plan.resize(T, k, E);
          std::vector<float> gate(static_cast<size_t>(T) * k), u(static_cast<size_t>(T) * E);
          apply_capacity<float>(cfg, gate.data(), u.data(), plan);
          ASSERT_EQ(cuda::expert_capacity(cf, T, k, E), plan.capacity)
              << "cf " << cf << " T " << T << " k " << k << " E " << E;
          ++checked;
        }
  EXPECT_GT(checked, 1000);
  EXPECT_EQ(cuda::expert_capacity(0.0, 100, 2, 8), -1);
  EXPECT_EQ(cuda::expert_capacity(-1.0, 100, 2, 8), -1);
}

TEST(RoutingMath, TopKBreaksTiesTowardTheLowerIndex) {
  const float s[6] = {0.25f, 0.5f, 0.25f, 0.5f, 0.1f, 0.5f};
  int32_t top[6];
  cuda::token_top_k(6, 6, s, nullptr, top);
  const int32_t want[6] = {1, 3, 5, 0, 2, 4};
  for (int j = 0; j < 6; ++j) EXPECT_EQ(top[j], want[j]) << j;
  // The bias moves selection, never the gates.
  const float bias[6] = {0.3f, 0, 0, 0, 0, 0};
  cuda::token_top_k(6, 2, s, bias, top);
  EXPECT_EQ(top[0], 0);
  EXPECT_EQ(top[1], 1);
}

TEST(RoutingMath, TopKWithNaNKeepsIndicesInRange) {
  const float s[4] = {NAN, 0.5f, NAN, 0.25f};
  int32_t top[4];
  cuda::token_top_k(4, 4, s, nullptr, top);
  EXPECT_EQ(top[0], 1);
  EXPECT_EQ(top[1], 3);
  for (int j = 0; j < 4; ++j) EXPECT_TRUE(top[j] >= 0 && top[j] < 4) << j;
}

TEST(CudaSupportedSubset, AcceptsTheSubsetAndNamesTheFirstRefusedKey) {
  MoeConfig c;
  c.hidden_size = 8;
  c.moe_intermediate_size = 8;
  c.scoring_func = ScoreFunc::Sigmoid;
  c.use_selection_bias = true;
  c.routed_scaling_factor = 2.5;
  c.capacity_factor = 1.25;
  c.n_shared_experts = 2;
  c.shared_expert_gate = true;
  c.aux_loss_style = AuxLossStyle::HF;
  cuda_check_supported(c);  // no throw

  auto refused = [&](auto change, const char* key) {
    MoeConfig bad = c;
    change(bad);
    EXPECT_MOE_ERROR(cuda_check_supported(bad), key, "not supported by the CUDA backend");
  };
  refused([](MoeConfig& b) { b.noisy_gating = true; }, "noisy_gating");
  refused([](MoeConfig& b) { b.expert_dropout = 0.1; }, "expert_dropout");
  refused([](MoeConfig& b) { b.n_group = 4; }, "n_group");
  refused([](MoeConfig& b) { b.hidden_act = Activation::GELU; }, "hidden_act");
  refused([](MoeConfig& b) { b.drop_policy = DropPolicy::Score; }, "drop_policy");
  refused([](MoeConfig& b) { b.drop_policy = DropPolicy::BatchPriority; }, "drop_policy");
  refused([](MoeConfig& b) { b.overflow = OverflowAction::Reroute; }, "overflow");
  refused([](MoeConfig& b) { b.router_importance_coef = 0.1; }, "router_importance_coef");
}

}  // namespace
}  // namespace moe
