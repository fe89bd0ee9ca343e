// CudaTransformer (built with -DMOE_CUDA=ON): the LM's training step on the GPU against the
// PyTorch reference fixtures of the whole model (tests/fixtures/model, read as
// tests/test_model.cpp does) and against Transformer<float> + AdamW<float> over a few steps.
// The GPU tests skip (GTEST_SKIP) without a CUDA device; the refusal of unsupported
// configurations and the "no device" error run everywhere.
//
// Host code only (the kernels are in moe_cuda), so it is a .cpp (see test_cuda_moe.cpp).
//
// Tolerances (normalized error ||a - b|| / ||b||, test_util.h, unless noted). Everything but
// the MoE experts is fp32 (cuBLAS sgemm without TF32, double reductions), so a dense model
// would match to float rounding; the MoE layers' experts are bf16 with fp32 accumulation
// (2^-9 = 2e-3 relative rounding per operand, docs/cuda.md), and their error reaches every
// later activation through the residual stream and every gradient through the backward:
//   logits                                  1e-2
//   ce, loss                                2e-3 relative (a log-sum-exp: first-order
//                                                        insensitive to logit noise)
//   every parameter gradient                3e-2 (as the layer's dx and gradients)
//   loss of each AdamW step vs the CPU       5e-3 relative
//   weights after the steps vs the CPU       2e-2 (Adam's first steps move each weight by
//                                                  about lr * sign(g): gradients that bf16
//                                                  noise flips move by 2 lr)
//   determinism (two identical runs)         exact
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "model_fixture.h"
#include "moe/cuda_transformer.h"
#include "moe/safetensors.h"
#include "moe/transformer.h"
#include "test_util.h"

namespace moe {
namespace {

constexpr double kLogitsTol = 1e-2;
constexpr double kLossTol = 2e-3;
constexpr double kGradTol = 3e-2;
constexpr double kStepLossTol = 5e-3;
constexpr double kWeightsTol = 2e-2;

// ---- Configurations (no GPU needed) ----------------------------------------------------------

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 16;
  c.intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 32;
  c.num_local_experts = 4;
  c.moe.num_experts_per_tok = 2;
  c.moe_every = 2;
  c.dense_intermediate_size = 24;
  c.training.seq_len = 8;
  c.training.batch_size = 2;
  c.sync_moe();
  return c;
}

TEST(CudaTransformerConfig, RefusesUnsupportedKeysNamingThem) {
  struct Case {
    const char* key;
    void (*set)(ModelConfig&);
  };
  const Case cases[] = {
      {"noisy_gating", [](ModelConfig& c) { c.moe.noisy_gating = true; }},
      {"expert_dropout", [](ModelConfig& c) { c.moe.expert_dropout = 0.1; }},
      {"hidden_act", [](ModelConfig& c) { c.moe.hidden_act = Activation::GELU; }},
      {"drop_policy",
       [](ModelConfig& c) {
         c.moe.capacity_factor = 1.0;
         c.moe.drop_policy = DropPolicy::Score;
       }},
      {"overflow",
       [](ModelConfig& c) {
         c.moe.capacity_factor = 1.0;
         c.moe.overflow = OverflowAction::Reroute;
       }},
      {"router_importance_coef", [](ModelConfig& c) { c.moe.router_importance_coef = 0.01; }},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.key);
    ModelConfig c = small_config();
    k.set(c);
    // The config itself is valid for the CPU model: only the CUDA backend refuses it.
    EXPECT_NO_THROW(Transformer<float>{c});
    EXPECT_MOE_ERROR(CudaTransformer{c}, "CudaTransformer", k.key, "not supported");
  }
}

TEST(CudaTransformerConfig, DenseModelWithGeluIsRefused) {
  ModelConfig c = small_config();
  c.num_local_experts = 0;
  c.moe.hidden_act = Activation::GELU;
  c.sync_moe();
  EXPECT_NO_THROW(Transformer<float>{c});
  EXPECT_MOE_ERROR(CudaTransformer{c}, "CudaTransformer", "hidden_act", "not supported");
}

TEST(CudaTransformerConfig, InvalidConfigIsRefusedBeforeTheDevice) {
  ModelConfig c = small_config();
  c.num_key_value_heads = 3;  // does not divide 4 heads
  EXPECT_MOE_ERROR(CudaTransformer{c}, "num_key_value_heads");
}

TEST(CudaTransformerConfig, SupportedConfigNeedsADevice) {
  if (cuda_available()) GTEST_SKIP() << "a device is present: covered by the GPU tests";
  EXPECT_MOE_ERROR(CudaTransformer{small_config()}, "CudaTransformer", "no CUDA device");
}

// ---- Golden fixtures (GPU) --------------------------------------------------------------------

using test::Golden;
using test::open_golden;
using test::read_batch;

void load_fixture_params(const Golden& g, std::vector<ParamRef<float>>& params) {
  for (auto& p : params) g.file.read_into("param." + p.name, p.shape, p.value);
}

void check_fixture(const std::string& name) {
  SCOPED_TRACE(name);
  Golden g = open_golden(name);
  CudaTransformer model(g.cfg);
  {
    Transformer<float> cpu(g.cfg);  // same names, shapes and order
    ASSERT_EQ(cpu.parameters().size(), model.parameters().size());
    for (size_t i = 0; i < cpu.parameters().size(); ++i) {
      EXPECT_EQ(cpu.parameters()[i].name, model.parameters()[i].name);
      EXPECT_EQ(cpu.parameters()[i].shape, model.parameters()[i].shape);
      EXPECT_EQ(cpu.parameters()[i].decay, model.parameters()[i].decay);
    }
  }
  load_fixture_params(g, model.parameters());
  model.upload_params();
  std::vector<int32_t> in, tg;
  read_batch(g.file, "tokens", 0, g.B, g.S, in, tg);
  model.zero_grad();
  const double loss = model.forward(in.data(), tg.data(), g.B, g.S);
  const auto ref_logits = g.file.read<double>("logits");
  const std::vector<float> logits = model.logits();
  test::expect_close("logits", logits.data(), ref_logits.data(),
                     static_cast<int64_t>(logits.size()), kLogitsTol);
  const double ref_ce = g.file.read<double>("ce").data()[0];
  const double ref_loss = g.file.read<double>("loss").data()[0];
  EXPECT_NEAR(model.ce_loss(), ref_ce, kLossTol * std::abs(ref_ce));
  EXPECT_NEAR(loss, ref_loss, kLossTol * std::abs(ref_loss));
  model.backward(1.0);
  model.download_grads();
  for (auto& p : model.parameters()) {
    const auto ref = g.file.read<double>("grad." + p.name, p.shape);
    test::expect_close("grad " + p.name, p.grad, ref.data(), p.shape.numel(), kGradTol);
  }
}

TEST(CudaTransformerGolden, TinyMixed) {
  SKIP_WITHOUT_GPU();
  check_fixture("tiny_mixed");
}

TEST(CudaTransformerGolden, TinyTiedAllMoe) {
  SKIP_WITHOUT_GPU();
  check_fixture("tiny_tied_all_moe");
}

// ---- AdamW trajectory against the CPU model and the fixture -------------------------------------

void check_trajectory(const std::string& name) {
  SCOPED_TRACE(name);
  Golden g = open_golden(name);
  ASSERT_EQ(g.cfg.training.grad_accum_steps, 1);
  Transformer<float> cpu(g.cfg);
  load_fixture_params(g, cpu.parameters());
  CudaTransformer gpu(g.cfg);
  gpu.copy_from(cpu);
  AdamW<float> opt(cpu.parameters(), g.cfg.training);
  const auto ref_traj = g.file.read<double>("trajectory.loss");
  std::vector<int32_t> in, tg;
  for (int step = 0; step < g.steps; ++step) {
    read_batch(g.file, "trajectory.tokens", int64_t(step) * g.B * (g.S + 1), g.B, g.S, in, tg);
    cpu.zero_grad();
    const double cpu_loss = cpu.forward(in.data(), tg.data(), g.B, g.S, true);
    cpu.backward(1.0);
    const double cpu_norm = g.cfg.training.grad_clip > 0
                                ? clip_grad_norm(cpu.parameters(), g.cfg.training.grad_clip)
                                : global_grad_norm(cpu.parameters());
    opt.step(learning_rate_at(g.cfg.training, step));
    cpu.update_selection_bias();

    const CudaStepStats st = gpu.train_step(in.data(), tg.data(), g.B, g.S, step);
    EXPECT_NEAR(st.loss, cpu_loss, kStepLossTol * std::abs(cpu_loss)) << "step " << step;
    EXPECT_NEAR(st.loss, ref_traj.data()[step], kStepLossTol * std::abs(ref_traj.data()[step]))
        << "step " << step;
    EXPECT_NEAR(st.grad_norm, cpu_norm, kGradTol * cpu_norm) << "step " << step;
    EXPECT_DOUBLE_EQ(st.lr, learning_rate_at(g.cfg.training, step));
  }
  EXPECT_EQ(gpu.optimizer_steps(), g.steps);
  gpu.download_params();
  for (size_t i = 0; i < cpu.parameters().size(); ++i) {
    const auto& c = cpu.parameters()[i];
    const auto& d = gpu.parameters()[i];
    test::expect_close("final " + c.name + " vs CPU", d.value, c.value, c.shape.numel(),
                       kWeightsTol);
    const auto ref = g.file.read<double>("final." + c.name, c.shape);
    test::expect_close("final " + c.name + " vs fixture", d.value, ref.data(), c.shape.numel(),
                       kWeightsTol);
  }
}

TEST(CudaTransformerTrajectory, TinyMixed) {
  SKIP_WITHOUT_GPU();
  check_trajectory("tiny_mixed");
}

TEST(CudaTransformerTrajectory, TinyTiedAllMoe) {
  SKIP_WITHOUT_GPU();
  check_trajectory("tiny_tied_all_moe");
}

// ---- Determinism, checkpoints, CPU round trip ---------------------------------------------------

TEST(CudaTransformer, TwoRunsAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  Golden g = open_golden("tiny_mixed");
  std::vector<int32_t> in, tg;
  read_batch(g.file, "tokens", 0, g.B, g.S, in, tg);
  std::vector<std::vector<float>> weights(2);
  std::vector<double> losses(2);
  for (int run = 0; run < 2; ++run) {
    CudaTransformer model(g.cfg);
    load_fixture_params(g, model.parameters());
    model.upload_params();
    for (int step = 0; step < 3; ++step)
      losses[run] = model.train_step(in.data(), tg.data(), g.B, g.S, step).loss;
    model.download_params();
    for (const auto& p : model.parameters())
      weights[run].insert(weights[run].end(), p.value, p.value + p.shape.numel());
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(weights[0], weights[1]);
}

TEST(CudaTransformer, CheckpointRoundTripThroughTheCpuModel) {
  SKIP_WITHOUT_GPU();
  Golden g = open_golden("tiny_tied_all_moe");
  CudaTransformer gpu(g.cfg);
  load_fixture_params(g, gpu.parameters());
  gpu.upload_params();
  std::vector<int32_t> in, tg;
  read_batch(g.file, "tokens", 0, g.B, g.S, in, tg);
  gpu.train_step(in.data(), tg.data(), g.B, g.S, 0);

  test::TempDir dir("cuda_transformer");
  SafeTensorsWriter w;
  gpu.save_weights(w, DType::F32);
  gpu.save_optimizer(w);
  w.write(dir.file("ckpt.safetensors"));
  const SafeTensorsFile f = SafeTensorsFile::open(dir.file("ckpt.safetensors"));

  // The CPU model and optimizer read the GPU checkpoint...
  Transformer<float> cpu(g.cfg);
  cpu.load_weights(f);
  AdamW<float> opt(cpu.parameters(), g.cfg.training);
  opt.load(f);
  EXPECT_EQ(opt.steps_taken(), 1);
  for (size_t i = 0; i < cpu.parameters().size(); ++i) {
    const auto& c = cpu.parameters()[i];
    const auto& d = gpu.parameters()[i];
    for (int64_t j = 0; j < c.shape.numel(); ++j) ASSERT_EQ(c.value[j], d.value[j]) << c.name;
  }
  // ...and a second GPU model resumes from it with the same next step.
  CudaTransformer resumed(g.cfg);
  resumed.load_weights(f);
  resumed.load_optimizer(f);
  EXPECT_EQ(resumed.optimizer_steps(), 1);
  const double a = gpu.train_step(in.data(), tg.data(), g.B, g.S, 1).loss;
  const double b = resumed.train_step(in.data(), tg.data(), g.B, g.S, 1).loss;
  EXPECT_EQ(a, b);

  // copy_to writes the GPU weights into a CPU model.
  Transformer<float> back(g.cfg);
  gpu.copy_to(back);
  for (size_t i = 0; i < back.parameters().size(); ++i) {
    const auto& c = back.parameters()[i];
    const auto& d = gpu.parameters()[i];
    for (int64_t j = 0; j < c.shape.numel(); ++j) ASSERT_EQ(c.value[j], d.value[j]) << c.name;
  }
}

TEST(CudaTransformer, RejectsBadTokensAndLengths) {
  SKIP_WITHOUT_GPU();
  CudaTransformer model(small_config());
  std::vector<int32_t> in(8, 1), tg(8, 2);
  in[3] = 64;
  EXPECT_MOE_ERROR(model.forward(in.data(), tg.data(), 1, 8), "token id 64", "row 3");
  in[3] = 1;
  tg[5] = -2;
  EXPECT_MOE_ERROR(model.forward(in.data(), tg.data(), 1, 8), "target -2", "row 5");
  std::vector<int32_t> long_in(33, 1);
  EXPECT_MOE_ERROR(model.forward(long_in.data(), nullptr, 1, 33), "max_position_embeddings");
  EXPECT_MOE_ERROR(model.backward(), "needs a forward with targets");
}

}  // namespace
}  // namespace moe
