// CudaMoeLayer (built with -DMOE_CUDA=ON) against the PyTorch reference fixtures of the CPU
// layer (tests/fixtures/layer, checked by tests/layer_fixture.h as for the CPU layer) and against
// MoeLayer<float> on random shapes. Skipped (GTEST_SKIP) when no CUDA device is available;
// the refusal of unsupported configurations runs everywhere.
//
// Host code only (the kernels are in moe_cuda), so it is a .cpp: nvcc cannot compile the
// fmt-based moe headers it needs.
//
// Tolerances (normalized error ||a - b|| / ||b||, test_util.h):
//   routing decisions, counts, dropped        exact
//   gates, scores                              1e-5  (router in fp32, as the CPU float layer)
//   load-balance loss, z-loss, entropy         1e-5  relative
//   out                                        2e-2  (bf16 operands, fp32 accumulation; bf16
//                                                     rounding is 2^-9 = 2e-3 per operand)
//   dx and every parameter gradient            3e-2  (two bf16 GEMMs deep, bf16 activations)
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "layer_fixture.h"
#include "moe/cuda_moe_layer.h"
#include "moe/moe_layer.h"
#include "moe/safetensors.h"
#include "test_util.h"

namespace moe {
namespace {

constexpr double kRouterTol = 1e-5;
constexpr double kOutTol = 2e-2;
constexpr double kGradTol = 3e-2;

double rel(double a, double b) {
  return std::abs(a - b) / std::max(std::abs(b), 1e-12);
}

// ---- Reference fixtures -----------------------------------------------------------------------

void check_fixture(const std::string& name) {
  SCOPED_TRACE(name);
  const test::LayerFixture fx(name);
  const int64_t T_ = fx.T, d = fx.d, E = fx.E;
  const Tensor<double> emask = fx.file.read<double>("expert_mask", {E});
  const Tensor<double> tmask = fx.file.read<double>("token_mask", {T_});
  for (int64_t e = 0; e < E; ++e) ASSERT_NE(emask[e], 0.0) << "fixture drops experts";
  std::vector<uint8_t> token_mask(T_);
  int64_t padding = 0;
  for (int64_t t = 0; t < T_; ++t) padding += (token_mask[t] = tmask[t] != 0) == 0;
  EXPECT_GT(padding, 0) << "every fixture pads a token: the mask is part of what is checked";

  CudaMoeLayer layer(fx.cfg);
  fx.load_into(layer.params());
  layer.upload_params();
  std::vector<float> b(E);
  for (int64_t e = 0; e < E; ++e) b[e] = static_cast<float>(fx.bias[e]);
  layer.set_selection_bias(b);

  const Tensor<float> x = fx.file.read<float>("x", {T_, d});
  const Tensor<float> dout = fx.file.read<float>("dout", {T_, d});
  Tensor<float> out({T_, d}), dx({T_, d});
  layer.forward(x.view(), out.view(), token_mask.data());
  fx.expect_routing(layer.primary_experts(), layer.final_experts(), layer.metrics());
  fx.expect_values(layer.gates().data(), out.data(), layer.metrics(), kRouterTol, kOutTol);

  layer.zero_grad();
  layer.backward(dout.view(), dx.view());
  layer.download_grads();
  fx.expect_grads(dx.data(), layer.params(), kGradTol);
  if (fx.cfg.use_selection_bias) {
    layer.update_selection_bias();
    fx.expect_bias_after_update(layer.selection_bias().data(), kRouterTol);
  }
}

class CudaFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaFixture, MatchesPyTorchWithinBf16Tolerance) {
  SKIP_WITHOUT_GPU();
  check_fixture(GetParam());
}

// The fixtures inside the supported subset (the others are checked for refusal below).
const char* kSupported[] = {"mixtral_top2", "switch_top1_capacity", "qwen2_shared_gate",
                            "one_expert_dense"};
INSTANTIATE_TEST_SUITE_P(Layer, CudaFixture, ::testing::ValuesIn(kSupported),
                         [](const auto& p) { return std::string(p.param); });

TEST(CudaMoeLayer, RefusesTheFixturesOutsideTheSubsetNamingTheKey) {
  // Runs without a GPU: the constructor checks the configuration before looking for a device.
  const std::pair<const char*, const char*> refused[] = {{"noisy_top2", "noisy_gating"},
                                                         {"gelu_experts", "hidden_act"},
                                                         {"score_reroute", "drop_policy"},
                                                         {"sigmoid_bias_group_shared", "n_group"}};
  for (const auto& [name, key] : refused) {
    SCOPED_TRACE(name);
    const test::LayerFixture fx(name);
    EXPECT_MOE_ERROR(CudaMoeLayer layer(fx.cfg), key, "not supported by the CUDA backend");
  }
}

TEST(CudaMoeLayer, AvailabilityNeverThrows) {
  EXPECT_NO_THROW((void)cuda_available());
}

// ---- Against the CPU layer on random shapes -------------------------------------------------

struct RandomCase {
  const char* name;
  int T, d, F, E, k;
  ScoreFunc score;
  bool norm_topk;
  double rsf;
  bool bias;
  double capacity_factor;
  int n_shared;
  bool shared_gate;
  AuxLossStyle style;
  double padding;  // fraction of tokens masked out as padding
};

void PrintTo(const RandomCase& c, std::ostream* os) {
  *os << c.name;
}

MoeConfig config_of(const RandomCase& c) {
  MoeConfig cfg;
  cfg.hidden_size = c.d;
  cfg.moe_intermediate_size = c.F;
  cfg.num_experts = c.E;
  cfg.num_experts_per_tok = c.k;
  cfg.scoring_func = c.score;
  cfg.norm_topk_prob = c.norm_topk;
  cfg.routed_scaling_factor = c.rsf;
  cfg.use_selection_bias = c.bias;
  cfg.capacity_factor = c.capacity_factor;
  cfg.n_shared_experts = c.n_shared;
  cfg.shared_expert_intermediate_size = c.n_shared ? 24 : 0;
  cfg.shared_expert_gate = c.shared_gate;
  cfg.aux_loss_style = c.style;
  cfg.router_aux_loss_coef = 0.01;
  cfg.router_z_loss_coef = 1e-3;
  return cfg;
}

class CudaVsCpu : public ::testing::TestWithParam<RandomCase> {};

TEST_P(CudaVsCpu, ForwardAndBackwardMatchTheCpuLayer) {
  SKIP_WITHOUT_GPU();
  const RandomCase& c = GetParam();
  const MoeConfig cfg = config_of(c);
  const int64_t T = c.T, d = c.d, E = c.E, k = c.k;
  Rng rng(42);
  MoeLayer<float> cpu(cfg);
  cpu.init_weights(rng, 0.1);
  if (c.bias)
    for (int64_t e = 0; e < E; ++e)
      cpu.selection_bias()[e] = static_cast<float>(0.02 * rng.normal());
  CudaMoeLayer gpu(cfg);
  gpu.set_params(cpu.params());
  gpu.set_selection_bias(cpu.selection_bias());

  const std::vector<float> xv = test::random_vector<float>(rng, T * d);
  const std::vector<float> dv = test::random_vector<float>(rng, T * d);
  std::vector<uint8_t> mask(T);
  for (auto& m : mask) m = rng.uniform() >= c.padding;
  const uint8_t* token_mask = c.padding > 0 ? mask.data() : nullptr;
  const View<const float> x(xv.data(), {T, d}), dout(dv.data(), {T, d});
  Tensor<float> out_cpu({T, d}), out_gpu({T, d}), dx_cpu({T, d}), dx_gpu({T, d});
  ForwardOptions<float> opt;
  opt.token_mask = token_mask;
  cpu.forward(x, out_cpu.view(), opt);
  gpu.forward(x, out_gpu.view(), token_mask);

  const std::vector<int32_t> primary = gpu.primary_experts(), final_e = gpu.final_experts();
  for (int64_t i = 0; i < T * k; ++i) {
    ASSERT_EQ(primary[i], cpu.plan().primary[i]) << "primary slot " << i;
    ASSERT_EQ(final_e[i], cpu.plan().expert[i]) << "final slot " << i;
  }
  EXPECT_EQ(gpu.capacity(), cpu.plan().capacity);
  EXPECT_EQ(gpu.metrics().primary_per_expert, cpu.metrics().primary_per_expert);
  EXPECT_EQ(gpu.metrics().kept_per_expert, cpu.metrics().kept_per_expert);
  EXPECT_EQ(gpu.metrics().dropped, cpu.metrics().dropped);
  EXPECT_EQ(gpu.metrics().tokens, cpu.metrics().tokens);
  EXPECT_EQ(gpu.metrics().assignments, cpu.metrics().assignments);
  EXPECT_EQ(gpu.kept_rows(), cpu.permutation().rows());
  test::expect_close("scores", gpu.scores().data(), cpu.scores().data(), T * E, kRouterTol);
  test::expect_close("gates", gpu.gates().data(), cpu.gates().data(), T * k, kRouterTol);
  EXPECT_LE(rel(gpu.aux_loss(), cpu.aux_loss()), kRouterTol);
  EXPECT_LE(rel(gpu.metrics().router_entropy, cpu.metrics().router_entropy), kRouterTol);
  EXPECT_DOUBLE_EQ(gpu.metrics().load_cv, cpu.metrics().load_cv);
  test::expect_close("out", out_gpu.data(), out_cpu.data(), T * d, kOutTol);

  cpu.params().zero_grad();
  gpu.zero_grad();
  cpu.backward(dout, dx_cpu.view(), 0.8);
  gpu.backward(dout, dx_gpu.view(), 0.8);
  test::expect_close("dx", dx_gpu.data(), dx_cpu.data(), T * d, kGradTol);
  ParamSet<float> grads = cpu.params();  // same layout; its grads are overwritten
  gpu.copy_grads_to(grads);
  for (const auto& s : cpu.params().specs())
    test::expect_close("grad." + s.name, grads.grad(s.name), cpu.params().grad(s.name),
                       s.shape.numel(), kGradTol);

  // Gradients accumulate (+=) until zero_grad, as on the CPU.
  std::vector<float> once = grads.grads();
  gpu.backward(dout, dx_gpu.view(), 0.8);
  gpu.copy_grads_to(grads);
  for (size_t i = 0; i < once.size(); ++i) once[i] *= 2;
  test::expect_close("accumulated grads", grads.grads().data(), once.data(),
                     static_cast<int64_t>(once.size()), 1e-5);
  gpu.zero_grad();
  gpu.copy_grads_to(grads);
  for (float v : grads.grads()) ASSERT_EQ(v, 0.0f);

  // The device entry points give what the host convenience gives.
  float *x_dev = nullptr, *out_dev = nullptr, *dout_dev = nullptr, *dx_dev = nullptr;
  const size_t bytes = sizeof(float) * T * d;
  ASSERT_EQ(cudaMalloc(&x_dev, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out_dev, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout_dev, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dx_dev, bytes), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(x_dev, xv.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dout_dev, dv.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  gpu.forward_device(x_dev, out_dev, T, token_mask);
  gpu.backward_device(dout_dev, dx_dev, 0.8);
  gpu.synchronize();
  std::vector<float> out_dev_host(T * d), dx_dev_host(T * d);
  ASSERT_EQ(cudaMemcpy(out_dev_host.data(), out_dev, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx_dev_host.data(), dx_dev, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int64_t i = 0; i < T * d; ++i) {
    ASSERT_EQ(out_dev_host[i], out_gpu.data()[i]) << "out " << i;
    ASSERT_EQ(dx_dev_host[i], dx_gpu.data()[i]) << "dx " << i;
  }
  for (float* p : {x_dev, out_dev, dout_dev, dx_dev}) cudaFree(p);

  if (c.bias) {  // aux-loss-free balancing counts the real tokens only
    cpu.update_selection_bias();
    gpu.update_selection_bias();
    for (int64_t e = 0; e < E; ++e)
      EXPECT_FLOAT_EQ(gpu.selection_bias()[e], cpu.selection_bias()[e]) << "bias " << e;
  }
}

const RandomCase kRandomCases[] = {
    {"mixtral_capacity", 64, 32, 48, 8, 2, ScoreFunc::Softmax, true, 1.0, false, 1.25, 0, false,
     AuxLossStyle::Switch, 0.0},
    {"sigmoid_bias_shared_gate_padded", 96, 64, 32, 16, 3, ScoreFunc::Sigmoid, true, 2.5, true, 0.0,
     2, true, AuxLossStyle::Switch, 0.15},
    {"switch_top1_odd_tokens", 257, 48, 64, 4, 1, ScoreFunc::Softmax, false, 1.0, false, 1.0, 0,
     false, AuxLossStyle::HF, 0.0},
    {"deepseek_like_64_experts", 128, 64, 40, 64, 6, ScoreFunc::Softmax, true, 1.0, false, 0.0, 2,
     false, AuxLossStyle::Switch, 0.0},
    {"tight_capacity_padded", 200, 32, 32, 8, 2, ScoreFunc::Softmax, false, 1.0, false, 0.3, 1,
     true, AuxLossStyle::Switch, 0.25},
};
INSTANTIATE_TEST_SUITE_P(Random, CudaVsCpu, ::testing::ValuesIn(kRandomCases),
                         [](const auto& p) { return std::string(p.param.name); });

TEST(CudaMoeLayer, ChecksShapesAndLayouts) {
  SKIP_WITHOUT_GPU();
  MoeConfig cfg = config_of(kRandomCases[0]);
  CudaMoeLayer gpu(cfg);
  Tensor<float> x({4, 31}), out({4, 32});
  EXPECT_MOE_ERROR(gpu.forward(x.view(), out.view()), "CudaMoeLayer::forward", "hidden_size");
  cfg.moe_intermediate_size = 16;
  MoeLayer<float> other(cfg);
  EXPECT_MOE_ERROR(gpu.set_params(other.params()), "experts.w1", "shape");
}

}  // namespace
}  // namespace moe
