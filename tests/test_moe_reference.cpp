// The C++ layer against the independent PyTorch reference (tools/reference/): every output,
// routing decision, loss and gradient of each fixture, in float (the production path) and in
// double. Fixtures are float64 safetensors written by tools/reference/make_layer_fixtures.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "moe/moe_layer.h"
#include "moe/safetensors.h"
#include "test_util.h"

namespace moe {
namespace {

const char* kCases[] = {
    "mixtral_top2",    "switch_top1_capacity", "score_reroute", "sigmoid_bias_group_shared",
    "noisy_top2",      "expert_dropout",       "gelu_experts",  "qwen2_shared_gate",
    "one_expert_dense"};

std::string fixture_path(const std::string& name) {
  return std::string(MOE_FIXTURE_DIR) + "/layer/" + name + ".safetensors";
}

template <class T>
void check_case(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const SafeTensorsFile f = SafeTensorsFile::open(fixture_path(name));
  const auto cj = nlohmann::json::parse(f.metadata("config"));
  MoeConfig cfg = moe_config_from_json(cj, name);
  const int64_t T_ = cj.at("tokens").get<int64_t>();
  const int64_t d = cfg.hidden_size, E = cfg.num_experts, k = cfg.num_experts_per_tok;
  const Tensor<double> bias = f.read<double>("selection_bias", {E});
  for (int64_t e = 0; e < E; ++e) cfg.use_selection_bias |= bias[e] != 0.0;

  MoeLayer<T> layer(cfg);
  // Every parameter the layer declares is in the fixture, and vice versa.
  int64_t fixture_params = 0;
  for (const auto& n : f.names())
    if (n.rfind("router.", 0) == 0 || n.rfind("experts.", 0) == 0 || n.rfind("shared.", 0) == 0)
      ++fixture_params;
  ASSERT_EQ(fixture_params, static_cast<int64_t>(layer.params().specs().size()));
  load_params(layer.params(), f);
  for (int64_t e = 0; e < E; ++e) layer.selection_bias()[e] = static_cast<T>(bias[e]);

  const Tensor<T> x = f.read<T>("x", {T_, d}), dout = f.read<T>("dout", {T_, d});
  const Tensor<T> noise = f.read<T>("noise", {T_, E});
  const Tensor<double> emask = f.read<double>("expert_mask", {E});
  const Tensor<double> tmask = f.read<double>("token_mask", {T_});
  std::vector<uint8_t> expert_mask(E), token_mask(T_);
  for (int64_t e = 0; e < E; ++e) expert_mask[e] = emask[e] != 0;
  for (int64_t t = 0; t < T_; ++t) token_mask[t] = tmask[t] != 0;

  ForwardOptions<T> opt;
  opt.training = true;
  opt.noise = noise.data();
  opt.expert_mask = expert_mask.data();
  opt.token_mask = token_mask.data();
  Tensor<T> out({T_, d}), dx({T_, d});
  layer.forward(x.view(), out.view(), opt);

  // Discrete decisions must agree exactly.
  const Tensor<double> prim = f.read<double>("routing.primary_expert", {T_, k});
  const Tensor<double> fin = f.read<double>("routing.expert", {T_, k});
  for (int64_t i = 0; i < T_ * k; ++i) {
    ASSERT_EQ(layer.plan().primary[i], static_cast<int32_t>(prim[i])) << "primary slot " << i;
    ASSERT_EQ(layer.plan().expert[i], static_cast<int32_t>(fin[i])) << "final slot " << i;
  }
  const MoeMetrics& m = layer.metrics();
  const Tensor<double> cp = f.read<double>("counts.primary", {E}),
                       ck = f.read<double>("counts.kept", {E});
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(m.primary_per_expert[e], static_cast<int64_t>(cp[e]));
    EXPECT_EQ(m.kept_per_expert[e], static_cast<int64_t>(ck[e]));
  }
  EXPECT_EQ(m.dropped, static_cast<int64_t>(f.read<double>("stats.dropped", {1})[0]));
  EXPECT_EQ(m.rerouted, static_cast<int64_t>(f.read<double>("stats.rerouted", {1})[0]));

  // Values.
  test::expect_close("routing.gate", layer.gates().data(),
                     f.read<double>("routing.gate", {T_, k}).data(), T_ * k, tol);
  test::expect_close("out", out.data(), f.read<double>("out", {T_, d}).data(), T_ * d, tol);
  auto scalar = [&](const char* n) { return f.read<double>(n, {1})[0]; };
  EXPECT_NEAR(m.load_balance_loss, scalar("loss.load_balance"),
              tol * std::abs(scalar("loss.load_balance")) + 1e-12);
  EXPECT_NEAR(m.importance_loss, scalar("loss.importance"),
              tol * std::abs(scalar("loss.importance")) + 1e-12);
  EXPECT_NEAR(m.z_loss, scalar("loss.z"), tol * std::abs(scalar("loss.z")) + 1e-12);
  EXPECT_NEAR(m.router_entropy, scalar("stats.entropy"),
              tol * std::abs(scalar("stats.entropy")) + 1e-12);

  // Gradients of L = sum(out * dout) + aux losses.
  layer.params().zero_grad();
  layer.backward(dout.view(), dx.view());
  test::expect_close("grad.x", dx.data(), f.read<double>("grad.x", {T_, d}).data(), T_ * d, tol);
  for (const auto& s : layer.params().specs()) {
    const Tensor<double> g = f.read<double>("grad." + s.name, s.shape);
    test::expect_close("grad." + s.name, layer.params().grad(s.name), g.data(), s.shape.numel(),
                       tol);
  }

  // Aux-loss-free bias update from this step's loads.
  if (cfg.use_selection_bias) {
    layer.update_selection_bias();
    const Tensor<double> b = f.read<double>("bias_after_update", {E});
    test::expect_close("bias_after_update", layer.selection_bias().data(), b.data(), E, tol);
  }
}

class ReferenceFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(ReferenceFixture, FloatMatchesPyTorch) {
  check_case<float>(GetParam(), 1e-5);
}
TEST_P(ReferenceFixture, DoubleMatchesPyTorch) {
  check_case<double>(GetParam(), 1e-11);
}

INSTANTIATE_TEST_SUITE_P(Layer, ReferenceFixture, ::testing::ValuesIn(kCases),
                         [](const auto& p) { return std::string(p.param); });

}  // namespace
}  // namespace moe
