// The PyTorch reference fixtures of the MoE layer (tests/fixtures/layer, written by
// tools/reference/make_layer_fixtures.py) and the checks every implementation of the layer
// must pass on them: the CPU MoeLayer (test_moe_reference) and the CUDA layer (test_cuda_moe)
// open a fixture, run it through their own API, and hand what they got to these functions.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/moe_config.h"
#include "moe/moe_losses.h"
#include "moe/params.h"
#include "moe/safetensors.h"
#include "moe/tensor.h"
#include "test_util.h"

namespace moe::test {

struct LayerFixture {
  SafeTensorsFile file;
  MoeConfig cfg;  // use_selection_bias set when the fixture's bias is nonzero
  int64_t T = 0, d = 0, E = 0, k = 0;
  Tensor<double> bias;  // [E] selection bias

  explicit LayerFixture(const std::string& name)
      : file(SafeTensorsFile::open(fixture_dir() + "/layer/" + name + ".safetensors")) {
    const auto cj = nlohmann::json::parse(file.metadata("config"));
    cfg = moe_config_from_json(cj, name);
    T = cj.at("tokens").get<int64_t>();
    d = cfg.hidden_size;
    E = cfg.num_experts;
    k = cfg.num_experts_per_tok;
    bias = file.read<double>("selection_bias", {E});
    for (int64_t e = 0; e < E; ++e) cfg.use_selection_bias |= bias[e] != 0.0;
  }

  double scalar(const std::string& name) const { return file.read<double>(name, {1})[0]; }

  // Loads the layer's parameters after checking that the fixture has exactly the tensors the
  // layer declares (router.*, experts.*, shared.*), no more and no fewer.
  template <class T>
  void load_into(ParamSet<T>& params) const {
    int64_t fixture_params = 0;
    for (const auto& n : file.names())
      if (n.rfind("router.", 0) == 0 || n.rfind("experts.", 0) == 0 || n.rfind("shared.", 0) == 0)
        ++fixture_params;
    ASSERT_EQ(fixture_params, static_cast<int64_t>(params.specs().size()));
    load_params(params, file);
  }

  // Routing decisions (primary and final expert per slot, [T, k]) and counts: exact.
  void expect_routing(const std::vector<int32_t>& primary, const std::vector<int32_t>& final_e,
                      const MoeMetrics& m) const {
    const Tensor<double> prim = file.read<double>("routing.primary_expert", {T, k});
    const Tensor<double> fin = file.read<double>("routing.expert", {T, k});
    for (int64_t i = 0; i < T * k; ++i) {
      ASSERT_EQ(primary[i], static_cast<int32_t>(prim[i])) << "primary slot " << i;
      ASSERT_EQ(final_e[i], static_cast<int32_t>(fin[i])) << "final slot " << i;
    }
    const Tensor<double> cp = file.read<double>("counts.primary", {E}),
                         ck = file.read<double>("counts.kept", {E});
    for (int64_t e = 0; e < E; ++e) {
      EXPECT_EQ(m.primary_per_expert[e], static_cast<int64_t>(cp[e]));
      EXPECT_EQ(m.kept_per_expert[e], static_cast<int64_t>(ck[e]));
    }
    EXPECT_EQ(m.dropped, static_cast<int64_t>(scalar("stats.dropped")));
    EXPECT_EQ(m.rerouted, static_cast<int64_t>(scalar("stats.rerouted")));
  }

  // Gates [T, k] and the losses and entropy within router_tol (relative), out within out_tol.
  template <class T_, class G>
  void expect_values(const G* gates, const T_* out, const MoeMetrics& m, double router_tol,
                     double out_tol) const {
    expect_close("routing.gate", gates, file.read<double>("routing.gate", {T, k}).data(), T * k,
                 router_tol);
    expect_close("out", out, file.read<double>("out", {T, d}).data(), T * d, out_tol);
    auto near = [&](double got, const char* name) {
      const double want = scalar(name);
      EXPECT_NEAR(got, want, router_tol * std::abs(want) + 1e-12) << name;
    };
    near(m.load_balance_loss, "loss.load_balance");
    near(m.importance_loss, "loss.importance");
    near(m.z_loss, "loss.z");
    near(m.router_entropy, "stats.entropy");
  }

  // Gradients of L = sum(out * dout) + aux losses: dx [T, d] and every parameter's.
  template <class T_, class P>
  void expect_grads(const T_* dx, const ParamSet<P>& params, double tol) const {
    expect_close("grad.x", dx, file.read<double>("grad.x", {T, d}).data(), T * d, tol);
    for (const auto& s : params.specs()) {
      const Tensor<double> g = file.read<double>("grad." + s.name, s.shape);
      expect_close("grad." + s.name, params.grad(s.name), g.data(), s.shape.numel(), tol);
    }
  }

  // The aux-loss-free bias after update_selection_bias on this step's loads.
  template <class B>
  void expect_bias_after_update(const B* bias_after, double tol) const {
    const Tensor<double> b = file.read<double>("bias_after_update", {E});
    expect_close("bias_after_update", bias_after, b.data(), E, tol);
  }
};

}  // namespace moe::test
