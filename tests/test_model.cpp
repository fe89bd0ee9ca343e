// The decoder LM: config validation, finite-difference gradients of the whole model (each
// Hugging Face family's pieces included), the KV-cache path against the full forward, the
// optimizer against hand-computed PyTorch semantics, and the golden PyTorch fixtures
// (tools/reference/make_model_fixtures.py; family_* from hf_reference.py).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "model_fixture.h"
#include "moe/cpu_features.h"
#include "moe/error.h"
#include "moe/hf_checkpoint.h"
#include "moe/optimizer.h"
#include "moe/rng.h"
#include "moe/safetensors.h"
#include "moe/transformer.h"
#include "test_util.h"

namespace moe {
namespace {

using test::expect_error;

ModelConfig tiny_config(int moe_every = 2, bool tied = false) {
  ModelConfig c;
  c.vocab_size = 23;
  c.hidden_size = 16;
  c.intermediate_size = 8;
  c.dense_intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 16;
  c.tie_word_embeddings = tied;
  c.num_local_experts = 4;
  c.moe_every = moe_every;
  c.moe.num_experts_per_tok = 2;
  c.initializer_range = 0.3;
  c.training.seq_len = 6;
  c.sync_moe();
  return c;
}

std::vector<int32_t> random_tokens(Rng& rng, int64_t n, int V) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.below(V));
  return t;
}

TEST(ModelConfig, DefaultsValidateAndRoundTrip) {
  ModelConfig c;
  c.sync_moe();
  c.validate();
  const nlohmann::json j = model_config_to_json(c);
  EXPECT_EQ(j["num_local_experts"], 8);
  EXPECT_FALSE(j.contains("num_experts"));
  const ModelConfig back = model_config_from_json(j, "roundtrip");
  EXPECT_EQ(model_config_to_json(back), j);
}

TEST(ModelConfig, ShippedDefaultMatchesBuiltIn) {
  // configs/default.json documents what `moe train` trains with no --config: keep them equal.
  const std::string path = std::string(MOE_FIXTURE_DIR) + "/../../configs/default.json";
  ModelConfig builtin;
  builtin.moe.compute_dtype = default_compute_dtype();  // "auto" in the file
  builtin.sync_moe();
  EXPECT_EQ(model_config_to_json(load_model_config(path)), model_config_to_json(builtin));
}

TEST(ModelConfig, ComputeDtypeAutoResolvesAndIsRecorded) {
  // "auto" and a model config without the key both mean this CPU's default; the run's
  // config.json then names the resolved dtype, so a resume elsewhere keeps it.
  nlohmann::json j = model_config_to_json(tiny_config());
  const std::string expected = compute_dtype_name(default_compute_dtype());
  j["compute_dtype"] = "auto";
  EXPECT_EQ(model_config_to_json(model_config_from_json(j, "c.json"))["compute_dtype"], expected);
  j.erase("compute_dtype");
  EXPECT_EQ(model_config_to_json(model_config_from_json(j, "c.json"))["compute_dtype"], expected);
  j["compute_dtype"] = "float32";
  EXPECT_EQ(model_config_from_json(j, "c.json").moe.compute_dtype, ComputeDtype::Float32);
  EXPECT_EQ(default_compute_dtype(),
            cpu_features().bf16_gemm() ? ComputeDtype::BFloat16 : ComputeDtype::Float32);
}

TEST(ModelConfig, BadKeysAreNamed) {
  nlohmann::json j = model_config_to_json(tiny_config());
  auto with = [&](const char* key, nlohmann::json v) {
    nlohmann::json k = j;
    k[key] = v;
    return k;
  };
  expect_error([&] { model_config_from_json(with("num_key_value_heads", 3), "c.json"); },
               {"c.json: num_key_value_heads"});
  expect_error([&] { model_config_from_json(with("hidden_sise", 3), "c.json"); },
               {"unknown key \"hidden_sise\""});
  expect_error([&] { model_config_from_json(with("rope_theta", "big"), "c.json"); },
               {"rope_theta"});
  expect_error([&] { model_config_from_json(with("num_experts_per_tok", 9), "c.json"); },
               {"num_experts_per_tok"});
  nlohmann::json t = j;
  t["training"]["learning_rate"] = -1;
  expect_error([&] { model_config_from_json(t, "c.json"); }, {"training.learning_rate"});
  t = j;
  t["training"]["lr"] = 1;
  expect_error([&] { model_config_from_json(t, "c.json"); },
               {"c.json: training: unknown key \"lr\""});
  t = j;
  t["training"]["seq_len"] = 17;
  expect_error([&] { model_config_from_json(t, "c.json"); }, {"max_position_embeddings"});
}

TEST(ModelConfig, DenseBaselineAndMatchedWidth) {
  ModelConfig c = tiny_config(1);
  EXPECT_EQ(c.matched_dense_width(), 2 * 8);
  c.dense_intermediate_size = c.matched_dense_width();
  c.num_local_experts = 0;
  c.validate();
  Transformer<float> dense(c);
  for (int l = 0; l < c.num_hidden_layers; ++l) EXPECT_EQ(dense.moe_layer(l), nullptr);
  // Active compute of the dense FFN equals the MoE's k experts.
  Transformer<float> sparse(tiny_config(1));
  const double sparse_ffn = sparse.forward_macs_per_token(6),
               dense_ffn = dense.forward_macs_per_token(6);
  const double router = 2.0 * 4 * 16;  // the only difference: two routers of E x d
  EXPECT_NEAR(sparse_ffn - dense_ffn, router, 1e-9);
}

TEST(ModelConfig, MoeEveryPicksLayers) {
  ModelConfig c = tiny_config(2);
  c.num_hidden_layers = 4;
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
}

// Every parameter's gradient against central differences of the float64 model.
void check_model_gradients(const ModelConfig& cfg) {
  Transformer<double> model(cfg);
  Rng rng(7);
  model.init_weights(rng);
  // Norm weights away from 1 so their gradients are exercised.
  for (auto& p : model.parameters())
    if (p.shape.ndim == 1)
      for (int64_t i = 0; i < p.shape.numel(); ++i) p.value[i] = 1.0 + 0.2 * rng.normal();
  const int B = 2, S = 5;
  auto inputs = random_tokens(rng, B * S, cfg.vocab_size);
  auto targets = random_tokens(rng, B * S, cfg.vocab_size);
  targets[3] = -1;  // an ignored target
  auto loss = [&] { return model.forward(inputs.data(), targets.data(), B, S); };
  model.zero_grad();
  loss();
  model.backward(1.0);
  for (auto& p : model.parameters()) {
    std::vector<double> grad(p.grad, p.grad + p.shape.numel());
    const double err = test::fd_gradient_error(p.value, grad.data(), p.shape.numel(), loss, 24);
    EXPECT_LE(err, 1e-6) << p.name;
  }
}

TEST(Transformer, GradientsMatchFiniteDifferencesMixed) {
  check_model_gradients(tiny_config(2));
}

TEST(Transformer, GradientsMatchFiniteDifferencesTiedAllMoe) {
  ModelConfig c = tiny_config(1, true);
  c.num_key_value_heads = 1;
  c.moe.scoring_func = ScoreFunc::Sigmoid;
  c.moe.router_importance_coef = 0.01;
  check_model_gradients(c);
}

TEST(Transformer, GradientsMatchFiniteDifferencesDense) {
  ModelConfig c = tiny_config(1);
  c.num_local_experts = 0;
  check_model_gradients(c);
}

// compute_dtype bfloat16 beyond the experts: a dense model (no expert at all) computes its
// attention projections, dense FFN and LM head in bf16, so its logits and gradients move off
// the fp32 model's by about bf16's rounding, never more; weights stay fp32.
TEST(Transformer, Bf16ComputeCoversAttentionDenseFfnAndHead) {
  ModelConfig c = tiny_config(1);
  c.num_local_experts = 0;
  c.hidden_size = 32;
  c.vocab_size = 64;
  c.initializer_range = 0.1;
  c.sync_moe();
  ModelConfig cb = c;
  cb.moe.compute_dtype = ComputeDtype::BFloat16;
  cb.sync_moe();
  Transformer<float> f32(c), b16(cb);
  Rng rng(3);
  f32.init_weights(rng);
  ASSERT_EQ(f32.parameters().size(), b16.parameters().size());
  for (size_t i = 0; i < f32.parameters().size(); ++i)
    std::copy_n(f32.parameters()[i].value, f32.parameters()[i].shape.numel(),
                b16.parameters()[i].value);
  const int B = 2, S = 6;
  const auto inputs = random_tokens(rng, B * S, c.vocab_size);
  const auto targets = random_tokens(rng, B * S, c.vocab_size);
  auto rel = [](const float* a, const float* b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; ++i) {
      num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
      den += double(a[i]) * a[i];
    }
    return std::sqrt(num / den);
  };
  f32.zero_grad();
  b16.zero_grad();
  f32.forward(inputs.data(), targets.data(), B, S);
  b16.forward(inputs.data(), targets.data(), B, S);
  const double logits = rel(f32.logits(), b16.logits(), int64_t(B) * S * c.vocab_size);
  EXPECT_GT(logits, 1e-5) << "the bf16 model computed its logits in fp32";
  EXPECT_LT(logits, 3e-2);
  f32.backward();
  b16.backward();
  for (size_t i = 0; i < f32.parameters().size(); ++i) {
    const auto& p = f32.parameters()[i];
    if (p.shape.ndim < 2) continue;
    const double g = rel(p.grad, b16.parameters()[i].grad, p.shape.numel());
    const bool gemm_weight = p.name.find("proj") != std::string::npos ||
                             p.name.find("lm_head") != std::string::npos ||
                             p.name.find("mlp") != std::string::npos;
    if (gemm_weight) {
      EXPECT_GT(g, 1e-5) << p.name << ": its GEMMs ran in fp32";
    }
    EXPECT_LT(g, 5e-2) << p.name;
  }
}

// The pieces of the Hugging Face families (hf_checkpoint.h) in the trainable model.
ModelConfig qwen2_moe_like() {
  ModelConfig c = tiny_config(1);
  c.model_type = "qwen2_moe";
  c.attention_bias = true;
  c.mlp_only_layers = {0};
  c.moe.n_shared_experts = 1;
  c.moe.shared_expert_intermediate_size = 6;
  c.moe.shared_expert_gate = true;
  c.moe.norm_topk_prob = false;
  c.moe.aux_loss_style = AuxLossStyle::HF;
  c.sync_moe();
  return c;
}

ModelConfig qwen3_moe_like() {
  ModelConfig c = tiny_config(1);
  c.model_type = "qwen3_moe";
  c.head_dim = 6;  // H * hd = 24 != hidden_size = 16
  c.qk_norm = QkNorm::PerHead;
  c.mlp_only_layers = {1};
  c.moe.norm_topk_prob = true;
  c.sync_moe();
  return c;
}

ModelConfig olmoe_like() {
  ModelConfig c = tiny_config(1);
  c.model_type = "olmoe";
  c.qk_norm = QkNorm::Full;
  c.moe.norm_topk_prob = false;
  c.sync_moe();
  return c;
}

TEST(Transformer, GradientsMatchFiniteDifferencesQkvBiasSharedGateDenseLayer) {
  check_model_gradients(qwen2_moe_like());
}

TEST(Transformer, GradientsMatchFiniteDifferencesPerHeadQkNormHeadDim) {
  check_model_gradients(qwen3_moe_like());
}

TEST(Transformer, GradientsMatchFiniteDifferencesFullQkNorm) {
  check_model_gradients(olmoe_like());
}

TEST(Transformer, FamilyPiecesHaveTheirParameters) {
  Transformer<float> q2(qwen2_moe_like()), q3(qwen3_moe_like()), ol(olmoe_like());
  auto shape_of = [](Transformer<float>& m, const std::string& name) {
    for (const auto& p : m.parameters())
      if (p.name == name) return p.shape.str();
    return std::string("absent");
  };
  EXPECT_EQ(shape_of(q2, "model.layers.0.self_attn.q_proj.bias"), Shape({16}).str());
  EXPECT_EQ(shape_of(q2, "model.layers.0.self_attn.k_proj.bias"), Shape({8}).str());
  EXPECT_EQ(shape_of(q2, "model.layers.0.mlp.ffn.w1"), Shape({12, 16}).str());  // dense layer 0
  EXPECT_EQ(shape_of(q2, "model.layers.1.block_sparse_moe.shared.gate"), Shape({1, 16}).str());
  EXPECT_EQ(shape_of(q3, "model.layers.0.self_attn.q_proj.weight"), Shape({24, 16}).str());
  EXPECT_EQ(shape_of(q3, "model.layers.0.self_attn.o_proj.weight"), Shape({16, 24}).str());
  EXPECT_EQ(shape_of(q3, "model.layers.0.self_attn.q_norm.weight"), Shape({6}).str());
  EXPECT_EQ(shape_of(q3, "model.layers.1.mlp.ffn.w1"), Shape({12, 16}).str());  // mlp_only_layers
  EXPECT_EQ(shape_of(ol, "model.layers.0.self_attn.q_norm.weight"), Shape({16}).str());
  EXPECT_EQ(shape_of(ol, "model.layers.0.self_attn.k_norm.weight"), Shape({8}).str());
  EXPECT_EQ(shape_of(ol, "model.layers.0.self_attn.q_proj.bias"), "absent");
}

TEST(ModelConfig, FamilyKeysRoundTrip) {
  for (const ModelConfig& c : {qwen2_moe_like(), qwen3_moe_like(), olmoe_like()}) {
    const nlohmann::json j = model_config_to_json(c);
    const ModelConfig back = model_config_from_json(j, "roundtrip");
    EXPECT_EQ(back.attention_bias, c.attention_bias);
    EXPECT_EQ(back.qk_norm, c.qk_norm);
    EXPECT_EQ(back.mlp_only_layers, c.mlp_only_layers);
    EXPECT_EQ(model_config_to_json(back), j);
  }
  nlohmann::json j = model_config_to_json(olmoe_like());
  j["qk_norm"] = "per_token";
  expect_error([&] { model_config_from_json(j, "c.json"); }, {"c.json: qk_norm"});
}

// --train PARTS: the frozen parameters keep their values through AdamW steps (no update, no
// decay) and stay out of the gradient norm; the trainable ones move.
TEST(Transformer, FrozenPartsDoNotChange) {
  ModelConfig c = qwen2_moe_like();
  c.training.trainable = "routers,attention";
  c.validate();
  Transformer<float> model(c);
  Rng rng(4);
  model.init_weights(rng);
  std::vector<std::vector<float>> before;
  for (auto& p : model.parameters()) before.emplace_back(p.value, p.value + p.shape.numel());
  AdamW<float> opt(model.parameters(), c.training);
  auto inputs = random_tokens(rng, 12, c.vocab_size),
       targets = random_tokens(rng, 12, c.vocab_size);
  double frozen_norm = 0;
  for (int step = 0; step < 3; ++step) {
    model.zero_grad();
    model.forward(inputs.data(), targets.data(), 2, 6, true, &rng);
    model.backward();
    frozen_norm = 0;
    for (const auto& p : model.parameters())
      if (p.frozen)
        for (int64_t i = 0; i < p.shape.numel(); ++i) frozen_norm += double(p.grad[i]) * p.grad[i];
    clip_grad_norm(model.parameters(), 1.0);
    opt.step(1e-2);
  }
  EXPECT_GT(frozen_norm, 0);  // their gradients exist (experts, ...); they are not applied
  for (const auto& p : model.parameters()) {  // the frozen head's gradient is not computed
    if (p.name != "lm_head.weight" && p.name != "model.embed_tokens.weight") continue;
    for (int64_t i = 0; i < p.shape.numel(); ++i) {
      ASSERT_EQ(p.grad[i], 0.0f) << p.name;
    }
  }
  int frozen = 0, trained = 0;
  for (size_t k = 0; k < model.parameters().size(); ++k) {
    const auto& p = model.parameters()[k];
    const bool same = std::equal(before[k].begin(), before[k].end(), p.value);
    const std::string part = parameter_part(p.name);
    EXPECT_EQ(p.frozen, part != "routers" && part != "attention") << p.name;
    EXPECT_EQ(same, p.frozen) << p.name;
    (p.frozen ? frozen : trained)++;
  }
  EXPECT_GT(frozen, 0);
  EXPECT_GT(trained, 0);
  EXPECT_LT(model.trainable_parameters(), model.num_parameters());
  c.training.trainable = "routers,gates";
  expect_error([&] { c.validate("c.json"); }, {"c.json: training.trainable", "gates"});
}

TEST(Transformer, BackwardScaleIsLinear) {
  const ModelConfig cfg = tiny_config(2);
  Transformer<double> model(cfg);
  Rng rng(3);
  model.init_weights(rng);
  auto inputs = random_tokens(rng, 12, cfg.vocab_size),
       targets = random_tokens(rng, 12, cfg.vocab_size);
  model.zero_grad();
  model.forward(inputs.data(), targets.data(), 2, 6);
  model.backward(1.0);
  std::vector<std::vector<double>> g1;
  for (auto& p : model.parameters()) g1.emplace_back(p.grad, p.grad + p.shape.numel());
  model.zero_grad();
  model.forward(inputs.data(), targets.data(), 2, 6);
  model.backward(0.25);
  model.forward(inputs.data(), targets.data(), 2, 6);
  model.backward(0.75);
  for (size_t k = 0; k < g1.size(); ++k)
    test::expect_close(model.parameters()[k].name, model.parameters()[k].grad, g1[k].data(),
                       static_cast<int64_t>(g1[k].size()), 1e-12);
}

TEST(Transformer, CachedGenerationMatchesFullForward) {
  const ModelConfig cfg = tiny_config(2);
  Transformer<float> model(cfg);
  Rng rng(11);
  model.init_weights(rng);
  const int S = 9;
  auto tokens = random_tokens(rng, S, cfg.vocab_size);
  model.forward(tokens.data(), nullptr, 1, S);
  std::vector<float> full(model.logits(), model.logits() + S * cfg.vocab_size);
  TransformerLm lm(model);
  auto caches = lm.new_caches(1, S);
  std::vector<float> last(cfg.vocab_size);
  lm.forward(tokens.data(), 1, 4, caches, last.data());  // a 4-token prompt
  test::expect_close("prompt", last.data(), full.data() + 3 * cfg.vocab_size, cfg.vocab_size, 1e-5);
  for (int s = 4; s < S; ++s) {
    lm.forward(tokens.data() + s, 1, 1, caches, last.data());
    test::expect_close("step " + std::to_string(s), last.data(), full.data() + s * cfg.vocab_size,
                       cfg.vocab_size, 1e-5);
  }
}

TEST(Transformer, CachedGenerationMatchesFullForwardForEachFamily) {
  for (const ModelConfig& cfg : {qwen2_moe_like(), qwen3_moe_like(), olmoe_like()}) {
    Transformer<float> model(cfg);
    Rng rng(12);
    model.init_weights(rng);
    for (auto& p : model.parameters())  // biases and norm weights away from 0 and 1
      if (p.shape.ndim == 1)
        for (int64_t i = 0; i < p.shape.numel(); ++i) p.value[i] += 0.3f * float(rng.normal());
    const int S = 7;
    auto tokens = random_tokens(rng, S, cfg.vocab_size);
    model.forward(tokens.data(), nullptr, 1, S);
    std::vector<float> full(model.logits(), model.logits() + S * cfg.vocab_size);
    TransformerLm lm(model);
    auto caches = lm.new_caches(1, S);
    std::vector<float> last(cfg.vocab_size);
    lm.forward(tokens.data(), 1, 3, caches, last.data());
    test::expect_close(cfg.model_type + " prompt", last.data(), full.data() + 2 * cfg.vocab_size,
                       cfg.vocab_size, 1e-5);
    for (int s = 3; s < S; ++s) {
      lm.forward(tokens.data() + s, 1, 1, caches, last.data());
      test::expect_close(cfg.model_type + " step " + std::to_string(s), last.data(),
                         full.data() + s * cfg.vocab_size, cfg.vocab_size, 1e-5);
    }
  }
}

TEST(Transformer, SaveLoadRoundTripAndErrors) {
  const ModelConfig cfg = tiny_config(2);
  Transformer<float> a(cfg), b(cfg);
  Rng rng(5);
  a.init_weights(rng);
  const test::TempDir dir("moe_test_model");
  const std::string path = dir.file("model.safetensors");
  SafeTensorsWriter w;
  a.save_weights(w, DType::F32);
  w.write(path);
  b.load_weights(SafeTensorsFile::open(path));
  for (size_t k = 0; k < a.parameters().size(); ++k)
    EXPECT_EQ(0, std::memcmp(a.parameters()[k].value, b.parameters()[k].value,
                             a.parameters()[k].shape.numel() * sizeof(float)));
  ModelConfig other = cfg;
  other.hidden_size = 8;
  other.sync_moe();
  Transformer<float> c(other);
  expect_error([&] { c.load_weights(SafeTensorsFile::open(path)); }, {"model.embed_tokens.weight"});
}

TEST(Optimizer, LearningRateSchedule) {
  TrainConfig t;
  t.learning_rate = 1.0;
  t.min_lr_ratio = 0.1;
  t.warmup_steps = 4;
  t.max_steps = 14;
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 0), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 3), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 4), 1.0);
  EXPECT_NEAR(learning_rate_at(t, 9), 0.1 + 0.45, 1e-12);  // half way down the cosine
  EXPECT_NEAR(learning_rate_at(t, 14), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate_at(t, 100), 0.1, 1e-12);
}

TEST(Optimizer, AdamWMatchesTorchFormulaAndClips) {
  TrainConfig t;
  t.adam_beta1 = 0.9;
  t.adam_beta2 = 0.95;
  t.adam_eps = 1e-8;
  t.weight_decay = 0.1;
  std::vector<double> w{1.0, -2.0}, g{0.5, 0.0}, norm_w{3.0}, norm_g{-1.0};
  std::vector<ParamRef<double>> params{{"w", w.data(), g.data(), {2}, true},
                                       {"n", norm_w.data(), norm_g.data(), {1}, false}};
  AdamW<double> opt(params, t);
  EXPECT_NEAR(global_grad_norm(params), std::sqrt(1.25), 1e-15);
  const double norm = clip_grad_norm(params, 0.5);
  EXPECT_NEAR(norm, std::sqrt(1.25), 1e-15);
  const double c = 0.5 / (std::sqrt(1.25) + 1e-6);
  EXPECT_NEAR(g[0], 0.5 * c, 1e-15);
  {  // a norm already computed (the step's) is the one the scaling uses
    std::vector<double> g2{0.5, 0.0}, n2{-1.0};
    const std::vector<ParamRef<double>> p2{{"w", w.data(), g2.data(), {2}, true},
                                           {"n", norm_w.data(), n2.data(), {1}, false}};
    EXPECT_EQ(clip_grad_norm(p2, 0.5, 2.0), 2.0);
    EXPECT_NEAR(g2[0], 0.5 * (0.5 / (2.0 + 1e-6)), 1e-15);
    EXPECT_NEAR(n2[0], -1.0 * (0.5 / (2.0 + 1e-6)), 1e-15);
  }
  opt.step(0.01);
  // Step 1: m = 0.1 g, v = 0.05 g^2, so the update is lr * g/|g| (up to eps).
  const double g0 = 0.5 * c;
  const double m = 0.1 * g0, v = 0.05 * g0 * g0;
  const double expected =
      1.0 * (1 - 0.01 * 0.1) - 0.01 / 0.1 * m / (std::sqrt(v) / std::sqrt(0.05) + 1e-8);
  EXPECT_NEAR(w[0], expected, 1e-15);
  EXPECT_NEAR(w[1], -2.0 * (1 - 0.001), 1e-15);  // zero gradient: decay only
  EXPECT_NEAR(norm_w[0],
              3.0 + 0.01 * (1 - 1e-8 / (std::sqrt(0.05 * c * c) / std::sqrt(0.05) + 1e-8)),
              1e-12);  // no decay
  g[0] = std::nan("");
  EXPECT_EQ(first_nonfinite_grad(params), &params[0]);
  EXPECT_TRUE(std::isnan(global_grad_norm(params)));  // what the step's check relies on
}

// The gradient norm's blocked, vectorized sum: the same bits for 1 and 2 threads, within double
// rounding of a long double sum, NaN / inf when an entry is one.
TEST(Optimizer, GradSumSquaresIsFixedOrderAndExact) {
  const int64_t n = 3 * (1 << 14) + 5;
  std::vector<float> w(n), g(n);
  Rng rng(3);
  for (auto& v : g) v = static_cast<float>(rng.normal()) * 1e-3f;
  const ParamRef<float> p{"w", w.data(), g.data(), {n}, true};
  long double want = 0;
  for (float v : g) want += static_cast<long double>(v) * v;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = grad_sum_squares(p);
  omp_set_num_threads(2);
  const double two = grad_sum_squares(p);
  omp_set_num_threads(threads);
  EXPECT_EQ(one, two);
  EXPECT_NEAR(one, static_cast<double>(want), 1e-13 * static_cast<double>(want));
  g[n - 1] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(grad_sum_squares(p)));
  g[7] = std::nanf("");
  EXPECT_TRUE(std::isnan(grad_sum_squares(p)));
}

// ---- Golden fixtures from the PyTorch reference ------------------------------------------

using test::Golden;
using test::open_golden;
using test::read_batch;

template <class T>
void check_golden_model(Golden& g, const std::string& name, double grad_tol, double loss_tol,
                        double traj_tol) {
  Transformer<T> model(g.cfg);
  for (auto& p : model.parameters()) g.file.read_into("param." + p.name, p.shape, p.value);
  std::vector<int32_t> in, tg;
  read_batch(g.file, "tokens", 0, g.B, g.S, in, tg);
  model.zero_grad();
  const double loss = model.forward(in.data(), tg.data(), g.B, g.S);
  const auto logits = g.file.read<double>("logits");
  test::expect_close(name + " logits", model.logits(), logits.data(),
                     static_cast<int64_t>(g.B) * g.S * g.cfg.vocab_size, loss_tol * 10);
  EXPECT_NEAR(model.ce_loss(), g.file.read<double>("ce").data()[0],
              loss_tol * std::abs(g.file.read<double>("ce").data()[0]));
  const double ref_loss = g.file.read<double>("loss").data()[0];
  EXPECT_NEAR(loss, ref_loss, loss_tol * std::abs(ref_loss)) << name;
  model.backward(1.0);
  for (auto& p : model.parameters()) {
    const auto ref = g.file.read<double>("grad." + p.name, p.shape);
    test::expect_close(name + " grad " + p.name, p.grad, ref.data(), p.shape.numel(), grad_tol);
  }

  // The trajectory: fresh weights, g.steps optimizer steps on the recorded batches.
  for (auto& p : model.parameters()) g.file.read_into("param." + p.name, p.shape, p.value);
  const auto ref_traj = g.file.read<double>("trajectory.loss");
  AdamW<T> opt(model.parameters(), g.cfg.training);
  for (int step = 0; step < g.steps; ++step) {
    read_batch(g.file, "trajectory.tokens", static_cast<int64_t>(step) * g.B * (g.S + 1), g.B, g.S,
               in, tg);
    model.zero_grad();
    const double l = model.forward(in.data(), tg.data(), g.B, g.S, true);
    EXPECT_NEAR(l, ref_traj.data()[step], traj_tol * std::abs(ref_traj.data()[step]))
        << name << " step " << step;
    model.backward(1.0);
    if (g.cfg.training.grad_clip > 0) clip_grad_norm(model.parameters(), g.cfg.training.grad_clip);
    opt.step(learning_rate_at(g.cfg.training, step));
  }
  for (auto& p : model.parameters()) {
    const auto ref = g.file.read<double>("final." + p.name, p.shape);
    test::expect_close(name + " final " + p.name, p.value, ref.data(), p.shape.numel(),
                       traj_tol * 10);
  }
}

template <class T>
void check_golden(const std::string& name, double grad_tol, double loss_tol, double traj_tol) {
  Golden g = open_golden(name);
  check_golden_model<T>(g, name, grad_tol, loss_tol, traj_tol);
}

// A family fixture: the model config is what model_config_from_hf reads from the checkpoint's
// config.json, with the recorded training keys.
Golden open_family_golden(const std::string& name) {
  const std::string path = test::fixture_dir() + "/model/" + name + ".safetensors";
  SafeTensorsFile f = SafeTensorsFile::open(path);
  const ModelConfig hf = model_config_from_hf(nlohmann::json::parse(f.metadata("hf_config")), path);
  nlohmann::json j = model_config_to_json(hf);
  const nlohmann::json training = nlohmann::json::parse(f.metadata("training"));
  for (const auto& [key, value] : training.items()) j["training"][key] = value;
  ModelConfig cfg = model_config_from_json(j, path);
  const int steps = std::stoi(f.metadata("steps"));
  return {std::move(f), cfg, cfg.training.batch_size, cfg.training.seq_len, steps};
}

template <class T>
void check_family_golden(const std::string& model_type, double grad_tol, double loss_tol,
                         double traj_tol) {
  Golden g = open_family_golden("family_" + model_type);
  ASSERT_EQ(g.cfg.model_type, model_type);
  check_golden_model<T>(g, "family_" + model_type, grad_tol, loss_tol, traj_tol);
}

TEST(GoldenFamily, MixtralFloat) {
  check_family_golden<float>("mixtral", 1e-4, 1e-5, 1e-5);
}
TEST(GoldenFamily, MixtralDouble) {
  check_family_golden<double>("mixtral", 1e-10, 1e-12, 1e-10);
}
TEST(GoldenFamily, Qwen2MoeFloat) {
  check_family_golden<float>("qwen2_moe", 1e-4, 1e-5, 1e-5);
}
TEST(GoldenFamily, Qwen2MoeDouble) {
  check_family_golden<double>("qwen2_moe", 1e-10, 1e-12, 1e-10);
}
TEST(GoldenFamily, Qwen3MoeFloat) {
  check_family_golden<float>("qwen3_moe", 1e-4, 1e-5, 1e-5);
}
TEST(GoldenFamily, Qwen3MoeDouble) {
  check_family_golden<double>("qwen3_moe", 1e-10, 1e-12, 1e-10);
}
TEST(GoldenFamily, OlmoeFloat) {
  check_family_golden<float>("olmoe", 1e-4, 1e-5, 1e-5);
}
TEST(GoldenFamily, OlmoeDouble) {
  check_family_golden<double>("olmoe", 1e-10, 1e-12, 1e-10);
}

TEST(Golden, TinyMixedFloat) {
  check_golden<float>("tiny_mixed", 1e-4, 1e-5, 1e-5);
}
TEST(Golden, TinyMixedDouble) {
  check_golden<double>("tiny_mixed", 1e-10, 1e-12, 1e-10);
}
TEST(Golden, TinyTiedAllMoeFloat) {
  check_golden<float>("tiny_tied_all_moe", 1e-4, 1e-5, 1e-5);
}
TEST(Golden, TinyTiedAllMoeDouble) {
  check_golden<double>("tiny_tied_all_moe", 1e-10, 1e-12, 1e-10);
}

}  // namespace
}  // namespace moe
