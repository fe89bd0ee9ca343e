// The C++ layer against the independent PyTorch reference (tools/reference/): every output,
// routing decision, loss and gradient of each fixture, in float (the production path) and in
// double. Fixtures are float64 safetensors written by tools/reference/make_layer_fixtures.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "layer_fixture.h"
#include "moe/moe_layer.h"
#include "moe/safetensors.h"
#include "test_util.h"

namespace moe {
namespace {

const char* kCases[] = {
    "mixtral_top2",    "switch_top1_capacity", "score_reroute", "sigmoid_bias_group_shared",
    "noisy_top2",      "expert_dropout",       "gelu_experts",  "qwen2_shared_gate",
    "one_expert_dense"};

template <class T>
void check_case(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const test::LayerFixture fx(name);
  const int64_t T_ = fx.T, d = fx.d, E = fx.E;
  MoeLayer<T> layer(fx.cfg);
  fx.load_into(layer.params());
  for (int64_t e = 0; e < E; ++e) layer.selection_bias()[e] = static_cast<T>(fx.bias[e]);

  const Tensor<T> x = fx.file.read<T>("x", {T_, d}), dout = fx.file.read<T>("dout", {T_, d});
  const Tensor<T> noise = fx.file.read<T>("noise", {T_, E});
  const Tensor<double> emask = fx.file.read<double>("expert_mask", {E});
  const Tensor<double> tmask = fx.file.read<double>("token_mask", {T_});
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
  fx.expect_routing(layer.plan().primary, layer.plan().expert, layer.metrics());
  fx.expect_values(layer.gates().data(), out.data(), layer.metrics(), tol, tol);

  layer.params().zero_grad();
  layer.backward(dout.view(), dx.view());
  fx.expect_grads(dx.data(), layer.params(), tol);
  if (fx.cfg.use_selection_bias) {
    layer.update_selection_bias();
    fx.expect_bias_after_update(layer.selection_bias().data(), tol);
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
