// Identities, hand-worked routing cases, metrics with known answers, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "moe/dense_ffn.h"
#include "moe/moe_layer.h"
#include "moe/safetensors.h"
#include "test_util.h"

namespace moe {
namespace {

using test::error_of;

MoeConfig small_config(int E, int k) {
  MoeConfig c;
  c.hidden_size = 8;
  c.moe_intermediate_size = 6;
  c.num_experts = E;
  c.num_experts_per_tok = k;
  return c;
}

// --- Identities -----------------------------------------------------------------------------

// One expert with k = 1: the gate is softmax over one logit = 1, so the layer is the dense FFN.
TEST(LayerIdentity, OneExpertEqualsDenseFfn) {
  for (Activation act : {Activation::SwiGLU, Activation::GELU}) {
    MoeConfig c = small_config(1, 1);
    c.norm_topk_prob = false;
    c.hidden_act = act;
    c.router_z_loss_coef = 0;  // the z-loss would add a router-only term the dense FFN lacks
    MoeLayer<double> moe(c);
    DenseFfn<double> dense(c.hidden_size, c.moe_intermediate_size, act);
    Rng rng(3);
    moe.init_weights(rng, 0.3);
    for (const char* n : {"w1", "w3", "w2"}) {
      if (act == Activation::GELU && std::string(n) == "w3") continue;
      const auto& s = moe.params().spec(std::string("experts.") + n);
      std::copy_n(moe.params().value(s.name), s.shape.numel(),
                  dense.params().value(std::string("ffn.") + n));
    }
    const int64_t T = 10, d = c.hidden_size;
    const auto x = test::random_vector<double>(rng, T * d);
    const auto dout = test::random_vector<double>(rng, T * d);
    Tensor<double> y_moe({T, d}), y_dense({T, d}), dx_moe({T, d}), dx_dense({T, d});
    moe.forward(View<const double>(x.data(), {T, d}), y_moe.view());
    dense.forward(View<const double>(x.data(), {T, d}), y_dense.view());
    test::expect_close("out", y_moe.data(), y_dense.data(), T * d, 1e-14);
    moe.backward(View<const double>(dout.data(), {T, d}), dx_moe.view());
    dense.backward(View<const double>(dout.data(), {T, d}), dx_dense.view());
    test::expect_close("dx", dx_moe.data(), dx_dense.data(), T * d, 1e-14);
    for (const char* n : {"w1", "w3", "w2"}) {
      if (act == Activation::GELU && std::string(n) == "w3") continue;
      const auto& s = moe.params().spec(std::string("experts.") + n);
      test::expect_close(s.name, moe.params().grad(s.name),
                         dense.params().grad(std::string("ffn.") + n), s.shape.numel(), 1e-14);
    }
    // The router gets no gradient: softmax over one expert is constant.
    const auto& r = moe.params().spec("router.weight");
    for (int64_t i = 0; i < r.shape.numel(); ++i)
      EXPECT_EQ(moe.params().grad("router.weight")[i], 0.0);
  }
}

// k = E without a capacity limit and without renormalization: sum_e s_e(x) * FFN_e(x).
TEST(LayerIdentity, AllExpertsIsProbabilityWeightedSum) {
  MoeConfig c = small_config(4, 4);
  c.norm_topk_prob = false;
  MoeLayer<double> moe(c);
  Rng rng(5);
  moe.init_weights(rng, 0.3);
  const int64_t T = 9, d = c.hidden_size, F = c.moe_intermediate_size, E = c.num_experts;
  const auto x = test::random_vector<double>(rng, T * d);
  Tensor<double> y({T, d});
  moe.forward(View<const double>(x.data(), {T, d}), y.view());
  EXPECT_EQ(moe.metrics().dropped, 0);

  std::vector<double> expected(T * d, 0.0);
  for (int e = 0; e < E; ++e) {
    DenseFfn<double> ffn(d, F, Activation::SwiGLU);
    for (const char* n : {"w1", "w3", "w2"})
      std::copy_n(moe.params().value(std::string("experts.") + n) + e * F * d, F * d,
                  ffn.params().value(std::string("ffn.") + n));
    Tensor<double> ye({T, d});
    ffn.forward(View<const double>(x.data(), {T, d}), ye.view());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < d; ++i)
        expected[t * d + i] += moe.scores()[t * E + e] * ye.data()[t * d + i];
  }
  test::expect_close("out", y.data(), expected.data(), T * d, 1e-13);
}

// --- Routing on hand-built cases ------------------------------------------------------------

// A layer whose router is the identity on the first E input coordinates: token t's logits are
// exactly x[t, 0..E-1], so tests can dictate the routing.
MoeLayer<double> dictated_router(const MoeConfig& c) {
  MoeLayer<double> layer(c);
  Rng rng(11);
  layer.init_weights(rng, 0.1);
  double* wr = layer.params().value("router.weight");
  std::fill(wr, wr + c.num_experts * c.hidden_size, 0.0);
  for (int e = 0; e < c.num_experts; ++e) wr[e * c.hidden_size + e] = 1.0;
  return layer;
}

std::vector<double> logits_to_x(const std::vector<std::vector<double>>& logits, int d) {
  std::vector<double> x;
  for (const auto& row : logits) {
    for (int i = 0; i < d; ++i) x.push_back(i < static_cast<int>(row.size()) ? row[i] : 0.0);
  }
  return x;
}

RoutingPlan route(MoeLayer<double>& layer, const std::vector<std::vector<double>>& logits) {
  const int d = layer.config().hidden_size;
  const auto x = logits_to_x(logits, d);
  const auto T = static_cast<int64_t>(logits.size());
  Tensor<double> out({T, d});
  layer.forward(View<const double>(x.data(), {T, d}), out.view());
  return layer.plan();
}

TEST(Routing, TopKTiesGoToLowerIndex) {
  MoeLayer<double> layer = dictated_router(small_config(4, 2));
  const RoutingPlan p = route(layer, {{1, 1, 1, 1}, {0, 2, 2, 0}});
  EXPECT_EQ(p.primary, (std::vector<int32_t>{0, 1, 1, 2}));
}

TEST(Routing, CapacityByPositionKeepsEarlierTokens) {
  MoeConfig c = small_config(4, 1);
  c.norm_topk_prob = false;
  c.capacity_factor = 1.0;  // C = ceil(1.0 * 4 * 1 / 4) = 1
  MoeLayer<double> layer = dictated_router(c);
  const RoutingPlan p = route(layer, {{1, 0, 0, 0}, {5, 0, 0, 0}, {0, 3, 0, 0}, {4, 0, 0, 0}});
  EXPECT_EQ(p.capacity, 1);
  EXPECT_EQ(p.expert, (std::vector<int32_t>{0, -1, 1, -1}));
  EXPECT_EQ(p.dropped, 2);
  EXPECT_NEAR(layer.metrics().dropped_fraction, 0.5, 1e-15);
}

TEST(Routing, CapacityByScoreKeepsHighestGates) {
  MoeConfig c = small_config(4, 1);
  c.norm_topk_prob = false;
  c.capacity_factor = 1.0;
  c.drop_policy = DropPolicy::Score;
  MoeLayer<double> layer = dictated_router(c);
  // Tokens 0, 1, 3 want expert 0; token 1 has the highest probability for it.
  const RoutingPlan p = route(layer, {{1, 0, 0, 0}, {5, 0, 0, 0}, {0, 3, 0, 0}, {4, 0, 0, 0}});
  EXPECT_EQ(p.expert, (std::vector<int32_t>{-1, 0, 1, -1}));
}

TEST(Routing, RerouteGoesToNextBestExpertWithRoom) {
  MoeConfig c = small_config(4, 1);
  c.norm_topk_prob = false;
  c.capacity_factor = 1.0;
  c.overflow = OverflowAction::Reroute;
  MoeLayer<double> layer = dictated_router(c);
  // All want expert 0. Token 1's next best is 2, token 2's next best is 2 (taken) then 3,
  // token 3's order is 1, then 2 and 3 (both taken by then).
  const RoutingPlan p = route(layer, {{3, 0, 0, 0}, {3, 0, 2, 1}, {3, 0, 2, 1}, {3, 2, 1, 0.5}});
  EXPECT_EQ(p.expert, (std::vector<int32_t>{0, 2, 3, 1}));
  EXPECT_EQ(p.rerouted_count, 3);
  EXPECT_EQ(p.dropped, 0);
  // The rerouted gate is the probability of the new expert (Switch gate, no renormalization).
  const auto& s = layer.scores();
  EXPECT_DOUBLE_EQ(layer.gates()[1], s[1 * 4 + 2]);
}

TEST(Routing, GroupLimitedSelectionStaysInBestGroups) {
  MoeConfig c = small_config(8, 2);
  c.n_group = 4;  // groups {0,1} {2,3} {4,5} {6,7}
  c.topk_group = 1;
  c.scoring_func = ScoreFunc::Sigmoid;
  MoeLayer<double> layer = dictated_router(c);
  // Expert 0 alone is the best single expert, but group {4,5} has the best top-2 sum.
  const RoutingPlan p = route(layer, {{5, -5, 0, 0, 2, 2, 0, 0}});
  EXPECT_EQ(p.primary, (std::vector<int32_t>{4, 5}));
}

TEST(Routing, ExpertDropoutKeepsAtLeastK) {
  const double u[6] = {0.1, 0.05, 0.2, 0.01, 0.3, 0.02};  // p = 0.5 drops all of them
  uint8_t mask[6];
  expert_dropout_mask(6, 2, 0.5, u, mask);
  // The two largest draws (experts 4 and 2) come back.
  EXPECT_EQ(std::vector<int>(mask, mask + 6), (std::vector<int>{0, 0, 1, 0, 1, 0}));
}

TEST(Routing, DroppedOutExpertsAreNeverChosenInTraining) {
  MoeConfig c = small_config(8, 2);
  c.expert_dropout = 0.5;
  MoeLayer<double> layer(c);
  Rng rng(9);
  layer.init_weights(rng, 0.5);
  const int64_t T = 64, d = c.hidden_size;
  const auto x = test::random_vector<double>(rng, T * d);
  Tensor<double> out({T, d});
  ForwardOptions<double> opt;
  opt.training = true;
  opt.rng = &rng;
  for (int step = 0; step < 5; ++step) {
    layer.forward(View<const double>(x.data(), {T, d}), out.view(), opt);
    int available = 0;
    for (int e = 0; e < 8; ++e) {
      available += layer.plan().expert_mask[e];
      if (!layer.plan().expert_mask[e]) {
        EXPECT_EQ(layer.metrics().primary_per_expert[e], 0);
      }
    }
    EXPECT_GE(available, 2);
  }
  // Not in evaluation.
  layer.forward(View<const double>(x.data(), {T, d}), out.view());
  for (int e = 0; e < 8; ++e) EXPECT_EQ(layer.plan().expert_mask[e], 1);
}

TEST(Routing, SelectionBiasSteersSelectionButNotGates) {
  MoeConfig c = small_config(4, 1);
  c.norm_topk_prob = false;
  c.use_selection_bias = true;
  MoeLayer<double> layer = dictated_router(c);
  layer.selection_bias() = {0.0, 0.0, 0.0, 1.0};
  route(layer, {{1, 0, 0, 0}});
  EXPECT_EQ(layer.plan().primary[0], 3);
  EXPECT_DOUBLE_EQ(layer.gates()[0], layer.scores()[3]);  // gate from s, not s + b
}

TEST(Routing, BiasUpdateMovesTowardMeanLoad) {
  const int64_t counts[4] = {10, 2, 4, 0};  // 4 tokens * k=2... mean = 16 * 1 / 4 = 4
  std::vector<double> b = {0, 0, 0, 0};
  update_selection_bias<double>(4, 0.01, counts, 16, 1, b.data());
  EXPECT_EQ(b, (std::vector<double>{-0.01, 0.01, 0.0, 0.01}));
}

// --- Metrics and losses with known answers ----------------------------------------------------

TEST(Metrics, CollapsedRouter) {
  MoeConfig c = small_config(4, 1);
  c.norm_topk_prob = false;
  MoeLayer<double> layer = dictated_router(c);
  route(layer, {{9, 0, 0, 0}, {9, 0, 0, 0}, {9, 0, 0, 0}, {9, 0, 0, 0}});
  const MoeMetrics& m = layer.metrics();
  // Loads (4, 0, 0, 0): mean 1, population std sqrt(3).
  EXPECT_NEAR(m.load_cv, std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(m.load_max_over_mean, 4.0, 1e-12);
  // Entropy of softmax(9, 0, 0, 0) by hand.
  const double z = std::exp(9.0) + 3.0, p0 = std::exp(9.0) / z, p1 = 1.0 / z;
  EXPECT_NEAR(m.router_entropy, -(p0 * std::log(p0) + 3 * p1 * std::log(p1)), 1e-12);
  // Load balance: f = (1, 0, 0, 0), P_0 = p0: alpha * E * p0.
  EXPECT_NEAR(m.load_balance_loss, c.router_aux_loss_coef * 4 * p0, 1e-12);
  // z-loss: logsumexp = log(z).
  EXPECT_NEAR(m.z_loss, c.router_z_loss_coef * std::log(z) * std::log(z), 1e-12);
}

TEST(Metrics, PerfectBalanceGivesExactlyTheCoefficient) {
  for (auto style : {AuxLossStyle::Switch, AuxLossStyle::HF}) {
    MoeConfig c = small_config(4, 2);
    c.aux_loss_style = style;
    c.router_aux_loss_coef = 0.01;
    MoeLayer<double> layer = dictated_router(c);
    // Tokens pick {0,1}, {2,3}, {0,1}, {2,3}: every expert gets exactly T*k/E assignments,
    // whatever the probabilities are.
    route(layer, {{2, 1.5, 0, 0}, {0, 0, 1, 3}, {0.7, 0.9, 0, 0.1}, {0.2, 0, 2, 1}});
    const double expected = style == AuxLossStyle::Switch ? 0.01 : 0.02;  // HF: k * alpha
    EXPECT_NEAR(layer.metrics().load_balance_loss, expected, 1e-15);
  }
}

TEST(Metrics, PaddingTokensNeverCount) {
  MoeConfig c = small_config(4, 1);
  c.norm_topk_prob = false;
  MoeLayer<double> layer = dictated_router(c);
  const auto x = logits_to_x({{9, 0, 0, 0}, {0, 9, 0, 0}, {9, 0, 0, 0}}, c.hidden_size);
  Tensor<double> out({3, c.hidden_size});
  const uint8_t mask[3] = {1, 1, 0};
  ForwardOptions<double> opt;
  opt.token_mask = mask;
  layer.forward(View<const double>(x.data(), {3, c.hidden_size}), out.view(), opt);
  EXPECT_EQ(layer.metrics().tokens, 2);
  EXPECT_EQ(layer.metrics().primary_per_expert, (std::vector<int64_t>{1, 1, 0, 0}));
  for (int i = 0; i < c.hidden_size; ++i) EXPECT_EQ(out.data()[2 * c.hidden_size + i], 0.0);
}

TEST(Layer, DeterministicAcrossCalls) {
  MoeConfig c = small_config(8, 2);
  c.capacity_factor = 1.0;
  c.overflow = OverflowAction::Reroute;
  MoeLayer<float> layer(c);
  Rng rng(1);
  layer.init_weights(rng, 0.5);
  const int64_t T = 200, d = c.hidden_size;
  const auto x = test::random_vector<float>(rng, T * d);
  Tensor<float> a({T, d}), b({T, d});
  layer.forward(View<const float>(x.data(), {T, d}), a.view());
  layer.forward(View<const float>(x.data(), {T, d}), b.view());
  EXPECT_EQ(a.buffer(), b.buffer());
}

// --- Bad arguments ----------------------------------------------------------------------------

TEST(BadArguments, ConfigErrorsNameTheKey) {
  auto bad = [](auto mutate) {
    MoeConfig c = small_config(8, 2);
    mutate(c);
    return error_of([&] { MoeLayer<float> layer(c); });
  };
  EXPECT_NE(bad([](MoeConfig& c) { c.num_experts_per_tok = 9; }).find("num_experts_per_tok"),
            std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.num_experts_per_tok = 0; }).find("num_experts_per_tok"),
            std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.hidden_size = -4; }).find("hidden_size"), std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.moe_intermediate_size = 0; }).find("moe_intermediate_size"),
            std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.num_experts = -1; }).find("num_experts"), std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.n_group = 3; }).find("n_group"), std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) {
              c.n_group = 8;
              c.topk_group = 1;
              c.num_experts_per_tok = 2;
            }).find("topk_group"),
            std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.expert_dropout = 1.0; }).find("expert_dropout"),
            std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.shared_expert_gate = true; }).find("shared_expert_gate"),
            std::string::npos);
  EXPECT_NE(bad([](MoeConfig& c) { c.router_aux_loss_coef = -1; }).find("router_aux_loss_coef"),
            std::string::npos);
}

TEST(BadArguments, JsonErrorsNameFileAndKey) {
  const auto j1 = nlohmann::json::parse(
      R"({"hidden_size": 8, "moe_intermediate_size": 4, "num_experts": "eight"})");
  const std::string e1 = error_of([&] { moe_config_from_json(j1, "cfg.json"); });
  EXPECT_NE(e1.find("cfg.json"), std::string::npos) << e1;
  EXPECT_NE(e1.find("num_experts"), std::string::npos) << e1;
  const auto j2 = nlohmann::json::parse(
      R"({"hidden_size": 8, "moe_intermediate_size": 4, "drop_policy": "random"})");
  const std::string e2 = error_of([&] { moe_config_from_json(j2, "cfg.json"); });
  EXPECT_NE(e2.find("drop_policy"), std::string::npos) << e2;
  EXPECT_NE(e2.find("\"position\""), std::string::npos) << e2;
  const auto j3 = nlohmann::json::parse(
      R"({"hidden_size": 8, "moe_intermediate_size": 4, "norm_topk_prob": 1})");
  EXPECT_NE(error_of([&] { moe_config_from_json(j3, "cfg.json"); }).find("norm_topk_prob"),
            std::string::npos);
  // A valid config round-trips.
  MoeConfig c = small_config(8, 2);
  c.drop_policy = DropPolicy::Score;
  c.scoring_func = ScoreFunc::Sigmoid;
  nlohmann::json j;
  moe_config_to_json(c, j);
  const MoeConfig back = moe_config_from_json(j);
  EXPECT_EQ(back.drop_policy, DropPolicy::Score);
  EXPECT_EQ(back.scoring_func, ScoreFunc::Sigmoid);
  EXPECT_EQ(back.num_experts, 8);
}

TEST(BadArguments, ShapesNaNAndMissingRng) {
  MoeConfig c = small_config(4, 2);
  MoeLayer<float> layer(c);
  Tensor<float> x({5, 7}), out({5, 8}), good_x({5, 8}), bad_out({4, 8});
  EXPECT_NE(error_of([&] { layer.forward(x.view(), out.view()); }).find("x has shape [5,7]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { layer.forward(good_x.view(), bad_out.view()); }).find("out"),
            std::string::npos);
  good_x[13] = std::nanf("");
  ForwardOptions<float> opt;
  opt.check_finite = true;
  const std::string nan_err = error_of([&] { layer.forward(good_x.view(), out.view(), opt); });
  EXPECT_NE(nan_err.find("row 1, column 5"), std::string::npos) << nan_err;
  good_x[13] = 0;
  MoeConfig noisy = c;
  noisy.noisy_gating = true;
  MoeLayer<float> noisy_layer(noisy);
  ForwardOptions<float> train;
  train.training = true;
  EXPECT_NE(error_of([&] { noisy_layer.forward(good_x.view(), out.view(), train); }).find("Rng"),
            std::string::npos);
  // Backward with a dout of the wrong shape.
  layer.forward(good_x.view(), out.view());
  EXPECT_NE(error_of([&] { layer.backward(bad_out.view(), out.view()); }).find("dout"),
            std::string::npos);
  // Replaying a plan made for another batch size.
  RoutingPlan other;
  other.resize(3, 2, 4);
  opt.check_finite = false;
  opt.replay = &other;
  EXPECT_NE(error_of([&] { layer.forward(good_x.view(), out.view(), opt); }).find("replayed plan"),
            std::string::npos);
  // An injected expert mask that leaves fewer than k experts.
  const uint8_t mask[4] = {1, 0, 0, 0};
  ForwardOptions<float> masked;
  masked.expert_mask = mask;
  EXPECT_NE(error_of([&] { layer.forward(good_x.view(), out.view(), masked); }).find("available"),
            std::string::npos);
}

TEST(BadArguments, MismatchedOrMissingWeightsNameFileAndTensor) {
  const std::string dir = ::testing::TempDir();
  MoeConfig c = small_config(4, 2);
  MoeLayer<float> layer(c);
  Rng rng(4);
  layer.init_weights(rng);
  // Round trip first: save, load into a fresh layer, identical values.
  SafeTensorsWriter w;
  save_params(layer.params(), w, DType::F32, "model.layers.0.moe.");
  w.write(dir + "/moe_ok.safetensors");
  MoeLayer<float> copy(c);
  load_params(copy.params(), SafeTensorsFile::open(dir + "/moe_ok.safetensors"),
              "model.layers.0.moe.");
  EXPECT_EQ(copy.params().values(), layer.params().values());
  // A layer with a different expert width finds every expert weight the wrong shape.
  MoeConfig wider = c;
  wider.moe_intermediate_size = 7;
  MoeLayer<float> other(wider);
  const std::string e1 = error_of([&] {
    load_params(other.params(), SafeTensorsFile::open(dir + "/moe_ok.safetensors"),
                "model.layers.0.moe.");
  });
  EXPECT_NE(e1.find("moe_ok.safetensors"), std::string::npos) << e1;
  EXPECT_NE(e1.find("'model.layers.0.moe.experts.w1'"), std::string::npos) << e1;
  EXPECT_NE(e1.find("[4,6,8]"), std::string::npos) << e1;
  EXPECT_NE(e1.find("[4,7,8]"), std::string::npos) << e1;
  // A layer with shared experts finds their weights missing.
  MoeConfig shared = c;
  shared.n_shared_experts = 1;
  MoeLayer<float> with_shared(shared);
  const std::string e2 = error_of([&] {
    load_params(with_shared.params(), SafeTensorsFile::open(dir + "/moe_ok.safetensors"),
                "model.layers.0.moe.");
  });
  EXPECT_NE(e2.find("missing tensor 'model.layers.0.moe.shared.w1'"), std::string::npos) << e2;
}

}  // namespace
}  // namespace moe
