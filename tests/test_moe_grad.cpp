// Finite-difference gradient checks of the MoE layer in double precision, for every routing
// variant. Routing decisions (selection, capacity drops, reroutes) are held fixed by replaying
// the plan of the unperturbed forward, so the loss is smooth in every parameter.
// Loss: L = sum(out * R) + load-balance + importance + z-loss.
#include <gtest/gtest.h>

#include <functional>

#include "moe/moe_layer.h"
#include "test_util.h"

namespace moe {
namespace {

struct GradCase {
  const char* name;
  std::function<void(MoeConfig&)> setup;
  bool padding = false;                   // two padding tokens
  std::vector<int> dropped_experts = {};  // injected expert-dropout mask
  bool expect_drops = false, expect_reroutes = false;
};

MoeConfig base_config() {
  MoeConfig c;
  c.hidden_size = 6;
  c.moe_intermediate_size = 5;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.router_aux_loss_coef = 0.05;  // larger than usual so the aux gradients are visible
  c.router_z_loss_coef = 0.01;
  return c;
}

std::vector<GradCase> cases() {
  return {
      {.name = "softmax_top2_renorm", .setup = [](MoeConfig&) {}, .padding = true},
      {.name = "switch_top1_capacity_position_drop",
       .setup =
           [](MoeConfig& c) {
             c.num_experts_per_tok = 1;
             c.norm_topk_prob = false;
             c.capacity_factor = 1.0;
           },
       .expect_drops = true},
      {.name = "position_reroute",
       .setup =
           [](MoeConfig& c) {
             c.capacity_factor = 1.0;
             c.overflow = OverflowAction::Reroute;
           },
       .padding = true,
       .expect_reroutes = true},
      {.name = "score_drop",
       .setup =
           [](MoeConfig& c) {
             c.capacity_factor = 0.75;
             c.drop_policy = DropPolicy::Score;
           },
       .expect_drops = true},
      {.name = "score_reroute",
       .setup =
           [](MoeConfig& c) {
             c.capacity_factor = 1.0;
             c.drop_policy = DropPolicy::Score;
             c.overflow = OverflowAction::Reroute;
           },
       .expect_reroutes = true},
      {.name = "sigmoid_bias_group_shared",
       .setup =
           [](MoeConfig& c) {
             c.scoring_func = ScoreFunc::Sigmoid;
             c.use_selection_bias = true;
             c.n_group = 4;
             c.topk_group = 2;
             c.routed_scaling_factor = 2.5;
             c.n_shared_experts = 2;
             c.shared_expert_intermediate_size = 3;
           }},
      {.name = "noisy_importance",
       .setup =
           [](MoeConfig& c) {
             c.noisy_gating = true;
             c.router_importance_coef = 0.1;
           },
       .padding = true},
      {.name = "expert_dropout", .setup = [](MoeConfig&) {}, .dropped_experts = {1, 4, 6}},
      {.name = "gelu_capacity_hf_shared",
       .setup =
           [](MoeConfig& c) {
             c.hidden_act = Activation::GELU;
             c.capacity_factor = 1.0;
             c.aux_loss_style = AuxLossStyle::HF;
             c.n_shared_experts = 1;
           },
       .expect_drops = true},
      {.name = "qwen2_shared_gate_top4",
       .setup =
           [](MoeConfig& c) {
             c.num_experts_per_tok = 4;
             c.norm_topk_prob = false;
             c.n_shared_experts = 1;
             c.shared_expert_intermediate_size = 7;
             c.shared_expert_gate = true;
           }},
      {.name = "all_experts_sigmoid_importance",
       .setup =
           [](MoeConfig& c) {
             c.num_experts_per_tok = 8;
             c.scoring_func = ScoreFunc::Sigmoid;
             c.router_importance_coef = 0.2;
           }},
  };
}

class LayerGradient : public ::testing::TestWithParam<GradCase> {};

TEST_P(LayerGradient, MatchesFiniteDifferences) {
  const GradCase& gc = GetParam();
  MoeConfig cfg = base_config();
  gc.setup(cfg);
  const int64_t T = 16, d = cfg.hidden_size, E = cfg.num_experts;
  MoeLayer<double> layer(cfg);
  Rng rng(7);
  layer.init_weights(rng, 0.5);
  // A strong router so loads are uneven and capacity actually binds.
  rng.fill_normal(layer.params().value("router.weight"), E * d, 0.0, 1.0);
  if (cfg.use_selection_bias) rng.fill_normal(layer.selection_bias().data(), E, 0.0, 0.1);

  auto x = test::random_vector<double>(rng, T * d);
  const auto R = test::random_vector<double>(rng, T * d);
  const auto noise = test::random_vector<double>(rng, T * E);
  std::vector<uint8_t> token_mask(T, 1), expert_mask(E, 1);
  if (gc.padding) token_mask[3] = token_mask[10] = 0;
  for (int e : gc.dropped_experts) expert_mask[e] = 0;

  ForwardOptions<double> opt;
  opt.training = true;
  opt.noise = noise.data();
  opt.token_mask = token_mask.data();
  opt.expert_mask = expert_mask.data();
  Tensor<double> out({T, d}), dx({T, d});
  layer.forward(View<const double>(x.data(), {T, d}), out.view(), opt);
  const RoutingPlan plan = layer.plan();
  if (gc.expect_drops) {
    EXPECT_GT(plan.dropped, 0) << "case does not exercise dropping";
  }
  if (gc.expect_reroutes) {
    EXPECT_GT(plan.rerouted_count, 0) << "case does not exercise rerouting";
  }
  for (int e : gc.dropped_experts)
    EXPECT_EQ(layer.metrics().primary_per_expert[e], 0) << "dropped-out expert was chosen";
  layer.params().zero_grad();
  layer.backward(View<const double>(R.data(), {T, d}), dx.view());

  opt.replay = &plan;
  auto loss = [&]() {
    layer.forward(View<const double>(x.data(), {T, d}), out.view(), opt);
    double l = layer.aux_loss();
    for (int64_t i = 0; i < T * d; ++i) l += out.data()[i] * R[i];
    return l;
  };
  const double kTol = 1e-6;
  EXPECT_LE(test::fd_gradient_error(x.data(), dx.data(), T * d, loss), kTol) << "grad x";
  for (const auto& s : layer.params().specs()) {
    const double err = test::fd_gradient_error(layer.params().value(s.name),
                                               layer.params().grad(s.name), s.shape.numel(), loss);
    EXPECT_LE(err, kTol) << "grad " << s.name;
  }
  // The aux losses alone, so their gradients are not hidden behind the larger output term.
  layer.forward(View<const double>(x.data(), {T, d}), out.view(), opt);
  layer.params().zero_grad();
  std::vector<double> zeros(T * d, 0.0);
  layer.backward(View<const double>(zeros.data(), {T, d}), dx.view());
  auto aux_only = [&]() {
    layer.forward(View<const double>(x.data(), {T, d}), out.view(), opt);
    return layer.aux_loss();
  };
  EXPECT_GT(layer.aux_loss(), 0.0);
  EXPECT_LE(test::fd_gradient_error(layer.params().value("router.weight"),
                                    layer.params().grad("router.weight"), E * d, aux_only),
            kTol)
      << "aux-loss grad of router.weight";
}

INSTANTIATE_TEST_SUITE_P(Variants, LayerGradient, ::testing::ValuesIn(cases()),
                         [](const auto& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace moe
