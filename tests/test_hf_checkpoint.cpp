// Hugging Face checkpoints: the four MoE families and the four dense ones against tiny
// checkpoints written by an
// independent PyTorch implementation (tools/reference/make_hf_fixtures.py), the round trip of
// a model trained here, parameter accounting, and one clear error per kind of bad file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/cpu_features.h"
#include "moe/hf_checkpoint.h"
#include "moe/inference_model.h"
#include "moe/linear.h"
#include "moe/rng.h"
#include "moe/trainable_model.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string fixture(const std::string& name) {
  return std::string(MOE_FIXTURE_DIR) + "/hf/" + name;
}

// max |a - b| / max |b|: the error relative to the logits' scale.
double normalized_error(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

class HfFamily : public ::testing::TestWithParam<const char*> {};

// Logits of the whole prompt batch, then greedy generation token for token (after a warm-up), then
// the same logits again when the prompt is fed one token at a time through the cache.
TEST_P(HfFamily, MatchesPyTorchReference) {
  test::ExactBf16Path exact;
  const std::string dir = fixture(GetParam());
  auto model = InferenceModel::load(dir);
  const auto expected = SafeTensorsFile::open(dir + "/expected.safetensors");
  const auto ids = expected.read<int32_t>("input_ids");
  const auto ref = expected.read<float>("logits");
  const auto greedy = expected.read<int32_t>("greedy");
  const int B = static_cast<int>(ids.shape()[0]), S = static_cast<int>(ids.shape()[1]);
  const int64_t V = model->config().vocab_size;
  ASSERT_EQ(ref.numel(), B * S * V);

  std::vector<float> logits(static_cast<size_t>(B * S * V));
  auto caches = model->new_caches(B, S);
  model->forward(ids.data(), B, S, caches, logits.data(), /*all_logits=*/true);
  EXPECT_LT(normalized_error(logits.data(), ref.data(), ref.numel()), 1e-4) << GetParam();

  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) prompts[b].assign(ids.data() + b * S, ids.data() + (b + 1) * S);
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int>(greedy.shape()[1]);
  opt.sampling.temperature = 0;
  opt.stop_at_eos = false;
  warm_up(*model, prompts[0]);  // leaves the model as it was: the greedy tokens still agree
  const auto out = generate(*model, prompts, opt, -1);
  for (int b = 0; b < B; ++b) {
    const std::vector<int32_t> want(greedy.data() + b * opt.max_new_tokens,
                                    greedy.data() + (b + 1) * opt.max_new_tokens);
    EXPECT_EQ(out[b], want) << GetParam() << " sequence " << b;
  }

  // One token at a time through the KV cache: the last position's logits agree.
  auto step_caches = model->new_caches(B, S);
  std::vector<float> last(static_cast<size_t>(B * V));
  for (int t = 0; t < S; ++t) {
    std::vector<int32_t> col(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) col[b] = ids.data()[b * S + t];
    model->forward(col.data(), B, 1, step_caches, last.data());
  }
  for (int b = 0; b < B; ++b)
    EXPECT_LT(normalized_error(last.data() + b * V, ref.data() + (b * S + S - 1) * V, V), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Families, HfFamily,
                         ::testing::Values("mixtral", "mixtral_bf16", "qwen2_moe", "qwen3_moe",
                                           "olmoe", "llama", "mistral", "qwen2", "qwen3",
                                           "deepseek_v2", "deepseek_v3"));

// RoPE scaling (rope.h): YaRN (v5's rope_parameters; DeepSeek's mscale / mscale_all_dim under
// the older "type" alias), llama3 and linear, each over an original context shorter than the
// 7 + 8 positions of the fixture.
// Granite-MoE: embedding, residual, attention and logits multipliers; experts fused in
// input_linear / output_linear; softmax over the top-k router logits.
INSTANTIATE_TEST_SUITE_P(Granite, HfFamily, ::testing::Values("granitemoe"));

// transformers v5's fused expert tensors, written by the reference (2 shards).
INSTANTIATE_TEST_SUITE_P(FusedExperts, HfFamily, ::testing::Values("qwen3_moe_fused"));
// gpt_oss: sinks, a sliding window (4) shorter than the prompt plus generation, YaRN, biases,
// the router's softmax over the top-k and the clamped SwiGLU over interleaved gate/up columns.
INSTANTIATE_TEST_SUITE_P(GptOss, HfFamily, ::testing::Values("gpt_oss"));
// Gated DeltaNet hybrids: qwen3_next (in_proj_qkvz / in_proj_ba grouped per key head, per-expert
// tensors, a dense layer) and qwen3_5_moe's text model (split projections, fused experts, a vision
// tower and mtp tensors left unread); gated attention with partial RoPE, zero-centred norms. The
// prompt runs the chunked form, decoding the recurrent one.
INSTANTIATE_TEST_SUITE_P(GatedDeltaNet, HfFamily,
                         ::testing::Values("qwen3_next", "qwen3_5_moe_fused"));

INSTANTIATE_TEST_SUITE_P(RopeScaling, HfFamily,
                         ::testing::Values("qwen3_moe_yarn", "olmoe_yarn_mscale", "mixtral_llama3",
                                           "llama_linear"));

// Dynamic NTK: the prompt (7 tokens) is longer than max_position_embeddings (4), so the prompt's
// forward uses the frequencies of its length. Greedy generation and the one-token-at-a-time
// cache are not compared: as in Hugging Face, each call's new positions use the frequencies of
// the length reached while cached keys keep theirs, which a full forward (the reference) cannot
// reproduce. The single-token step that does reach a new length is checked against the rotation
// a full forward of that length gives its last position.
TEST(HfCheckpoint, DynamicNtkRopeMatchesPyTorchReference) {
  const std::string dir = fixture("qwen2_moe_dynamic");
  auto model = InferenceModel::load(dir);
  const ModelConfig& c = model->config();
  ASSERT_EQ(c.rope_scaling.type, RopeType::Dynamic);
  EXPECT_EQ(c.context_length(), 16);  // factor 4 x max_position_embeddings 4
  const auto expected = SafeTensorsFile::open(dir + "/expected.safetensors");
  const auto ids = expected.read<int32_t>("input_ids");
  const auto ref = expected.read<float>("logits");
  const int B = static_cast<int>(ids.shape()[0]), S = static_cast<int>(ids.shape()[1]);
  ASSERT_GT(S, c.max_position_embeddings);
  const int64_t V = c.vocab_size;
  std::vector<float> logits(static_cast<size_t>(B * S * V));
  auto caches = model->new_caches(B, S);
  model->forward(ids.data(), B, S, caches, logits.data(), /*all_logits=*/true);
  EXPECT_LT(normalized_error(logits.data(), ref.data(), ref.numel()), 1e-4);
}

TEST(HfCheckpoint, FixtureConfigsAreReadPerFamily) {
  const ModelConfig q2 = load_hf_config(fixture("qwen2_moe") + "/config.json");
  EXPECT_TRUE(q2.attention_bias);
  EXPECT_EQ(q2.moe.n_shared_experts, 1);
  EXPECT_TRUE(q2.moe.shared_expert_gate);
  EXPECT_FALSE(q2.is_moe_layer(1));  // mlp_only_layers [1]
  const ModelConfig q3 = load_hf_config(fixture("qwen3_moe") + "/config.json");
  EXPECT_EQ(q3.qk_norm, QkNorm::PerHead);
  EXPECT_NE(q3.head_size() * q3.num_attention_heads, q3.hidden_size);
  const ModelConfig ol = load_hf_config(fixture("olmoe") + "/config.json");
  EXPECT_EQ(ol.qk_norm, QkNorm::Full);
  EXPECT_FALSE(ol.moe.norm_topk_prob);
}

TEST(HfCheckpoint, DenseFamiliesHaveNoExperts) {
  for (const char* family : {"llama", "mistral", "qwen2", "qwen3"}) {
    SCOPED_TRACE(family);
    const ModelConfig c = load_hf_config(fixture(family) + "/config.json");
    EXPECT_EQ(c.model_type, family);
    EXPECT_TRUE(is_dense_hf_family(c.model_type));
    EXPECT_EQ(c.num_local_experts, 0);
    EXPECT_EQ(c.dense_width(), c.intermediate_size);
    for (int l = 0; l < c.num_hidden_layers; ++l) EXPECT_FALSE(c.is_moe_layer(l));
    EXPECT_EQ(hf_tensor_name(c, 1, HfTensor::DenseUp), "model.layers.1.mlp.up_proj.weight");
  }
  EXPECT_TRUE(load_hf_config(fixture("qwen2") + "/config.json").attention_bias);
  const ModelConfig q3 = load_hf_config(fixture("qwen3") + "/config.json");
  EXPECT_EQ(q3.qk_norm, QkNorm::PerHead);
  EXPECT_EQ(q3.head_size(), 24);
  EXPECT_TRUE(q3.tie_word_embeddings);
  EXPECT_FALSE(is_dense_hf_family("mixtral"));
}

// Llama-2-7B by its config class's defaults: 6.74B parameters.
TEST(HfCheckpoint, ParameterAccountingOfLlama2) {
  const ModelConfig c = model_config_from_hf(nlohmann::json{{"model_type", "llama"}}, "llama");
  const ParameterCount n = count_parameters(c);
  EXPECT_EQ(n.total, 6738415616);
  EXPECT_EQ(n.active, n.total);
}

// What the dense families' configs may say that we cannot compute exactly: one line each.
TEST(HfCheckpointErrors, DenseFamilyKeysWeCannotCompute) {
  auto refused = [](const char* family, nlohmann::json edit) {
    nlohmann::json j = nlohmann::json::parse(std::ifstream(fixture(family) + "/config.json"));
    j.update(edit);
    return [j] { model_config_from_hf(j, "config.json"); };
  };
  EXPECT_MOE_ERROR(
      refused("llama", {{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}})(),
      "config.json", "rope_scaling", "llama3");
  EXPECT_MOE_ERROR(refused("llama", {{"attention_bias", true}})(), "config.json", "attention_bias");
  EXPECT_MOE_ERROR(refused("llama", {{"mlp_bias", true}})(), "config.json", "mlp_bias");
  EXPECT_MOE_ERROR(refused("qwen3", {{"attention_bias", true}})(), "config.json", "attention_bias");
  EXPECT_MOE_ERROR(refused("mistral", {{"sliding_window", 16}})(), "config.json",
                   "sliding_window = 16");
  EXPECT_MOE_ERROR(refused("qwen2", {{"use_sliding_window", true}, {"sliding_window", 8}})(),
                   "config.json", "sliding_window = 8");
  EXPECT_MOE_ERROR(refused("qwen3", {{"layer_types", {"full_attention", "sliding_attention"}}})(),
                   "config.json", "layer_types[1]", "sliding_attention");
  EXPECT_MOE_ERROR(refused("qwen2", {{"hidden_act", "gelu"}})(), "config.json", "hidden_act");
  // A window as long as the context changes nothing; Mistral's default window (4096) without
  // the key is in use for a longer context.
  EXPECT_NO_THROW(refused("mistral", {{"sliding_window", 64}})());
  nlohmann::json mistral =
      nlohmann::json::parse(std::ifstream(fixture("mistral") + "/config.json"));
  mistral.erase("sliding_window");
  mistral["max_position_embeddings"] = 8192;
  EXPECT_MOE_ERROR(model_config_from_hf(mistral, "config.json"), "config.json", "sliding_window");
  mistral["max_position_embeddings"] = 4096;
  EXPECT_NO_THROW(model_config_from_hf(mistral, "config.json"));
}

// The seeds' Mixtral 8x7B example: 46.7B parameters, about 12.9B used per token.
TEST(HfCheckpoint, ParameterAccountingOfMixtral8x7B) {
  const ModelConfig c = model_config_from_hf(nlohmann::json{{"model_type", "mixtral"}}, "mixtral");
  const ParameterCount n = count_parameters(c);
  EXPECT_EQ(n.total, 46702792704);
  EXPECT_EQ(n.active, 12879925248);
}

// Qwen/Qwen3-30B-A3B's config.json (the keys that shape it): published 30.5B total, 3.3B
// activated. Per layer: attention 2048 x (4096 + 2 x 512) + 4096 x 2048 and two per-head
// norms of 128, two RMSNorms, the router 128 x 2048, 128 experts of 3 x 2048 x 768.
TEST(HfCheckpoint, ParameterAccountingOfQwen3_30B_A3B) {
  const nlohmann::json j = {{"model_type", "qwen3_moe"},
                            {"vocab_size", 151936},
                            {"hidden_size", 2048},
                            {"intermediate_size", 6144},
                            {"moe_intermediate_size", 768},
                            {"num_hidden_layers", 48},
                            {"num_attention_heads", 32},
                            {"num_key_value_heads", 4},
                            {"head_dim", 128},
                            {"num_experts", 128},
                            {"num_experts_per_tok", 8},
                            {"decoder_sparse_step", 1},
                            {"mlp_only_layers", nlohmann::json::array()},
                            {"norm_topk_prob", true},
                            {"tie_word_embeddings", false},
                            {"max_position_embeddings", 40960}};
  const ParameterCount n = count_parameters(model_config_from_hf(j, "qwen3-30b-a3b"));
  const int64_t attention = 2048LL * (4096 + 2 * 512) + 4096LL * 2048 + 2 * 128;
  const int64_t expert = 3LL * 2048 * 768, shared = attention + 2 * 2048 + 128LL * 2048;
  const int64_t ends = 2 * 151936LL * 2048 + 2048;  // embedding, LM head, final norm
  EXPECT_EQ(n.total, 48 * (shared + 128 * expert) + ends);
  EXPECT_EQ(n.active, 48 * (shared + 8 * expert) + ends);
  EXPECT_EQ(n.total, 30532122624);  // 30.5B
  EXPECT_EQ(n.active, 3353032704);  // 3.3B
}

ModelConfig small_config(bool shared, int moe_every) {
  ModelConfig c;
  c.vocab_size = 40;
  c.hidden_size = 32;
  c.intermediate_size = 16;
  c.dense_intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.num_local_experts = 4;
  c.moe_every = moe_every;
  c.moe.num_experts_per_tok = 2;
  c.initializer_range = 0.2;
  if (shared) {
    c.moe.n_shared_experts = 2;
    c.moe.shared_expert_gate = true;
  }
  c.training.seq_len = 8;
  c.training.batch_size = 2;
  c.sync_moe();
  c.validate();
  return c;
}

// A few AdamW steps on random tokens so that no weight is still at its initial value.
void train_a_little(Transformer<float>& m, Rng& rng) {
  const ModelConfig& c = m.config();
  AdamW<float> opt(m.parameters(), c.training);
  std::vector<int32_t> x(16), y(16);
  for (int step = 0; step < 3; ++step) {
    for (auto& t : x) t = static_cast<int32_t>(rng.uniform() * c.vocab_size);
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[(i + 1) % x.size()];
    m.zero_grad();
    m.forward(x.data(), y.data(), 2, 8, true, &rng);
    m.backward();
    opt.step(1e-2);
  }
}

std::vector<float> logits_of(Transformer<float>& m, const std::vector<int32_t>& x) {
  m.forward(x.data(), nullptr, 1, static_cast<int>(x.size()));
  return std::vector<float>(m.logits(), m.logits() + x.size() * m.config().vocab_size);
}

// With MOE_EXPORT_DIR set, keeps a copy of an exported checkpoint with the prompt and our
// logits, for tools/reference/check_hf_export.py to check against the independent reference.
void keep_export(const std::string& dir, const std::string& name, const std::vector<int32_t>& x,
                 const std::vector<float>& logits) {
  const char* root = std::getenv("MOE_EXPORT_DIR");
  if (!root || !*root) return;
  const fs::path out = fs::path(root) / name;
  fs::create_directories(out);
  for (const auto& e : fs::directory_iterator(dir))
    fs::copy_file(e.path(), out / e.path().filename(), fs::copy_options::overwrite_existing);
  SafeTensorsWriter w;
  const int64_t S = static_cast<int64_t>(x.size());
  w.add<int32_t>("input_ids", {1, S}, x.data(), DType::I32);
  w.add<float>("logits", {1, S, static_cast<int64_t>(logits.size()) / S}, logits.data(),
               DType::F32);
  w.write((out / "expected.safetensors").string());
}

std::vector<float> logits_of(InferenceModel& m, const std::vector<int32_t>& x) {
  std::vector<float> out(x.size() * m.config().vocab_size);
  auto caches = m.new_caches(1, static_cast<int>(x.size()));
  m.forward(x.data(), 1, static_cast<int>(x.size()), caches, out.data(), true);
  return out;
}

TEST(HfCheckpoint, RoundTripOfATrainedMixtral) {
  test::ExactBf16Path exact;
  Rng rng(7);
  Transformer<float> model(small_config(false, 1));
  model.init_weights(rng);
  train_a_little(model, rng);
  const std::vector<int32_t> x = {3, 1, 4, 1, 5, 9, 2, 6};
  const auto ours = logits_of(model, x);

  TempDir tmp("hf_roundtrip");
  save_hf_checkpoint(model, tmp.str(), DType::F32);
  keep_export(tmp.str(), "mixtral", x, ours);
  const ModelConfig back = load_hf_config(tmp.file("config.json"));
  EXPECT_EQ(back.model_type, "mixtral");
  Transformer<float> loaded(back);
  load_hf_weights(loaded, HfWeights::open(tmp.str()));
  EXPECT_EQ(logits_of(loaded, x), ours);  // bit for bit
  auto infer = InferenceModel::load(tmp.str());
  const auto inferred = logits_of(*infer, x);
  EXPECT_LT(normalized_error(inferred.data(), ours.data(), ours.size()), 1e-5);

  TempDir tmp16("hf_roundtrip_bf16");
  save_hf_checkpoint(model, tmp16.str(), DType::BF16);
  EXPECT_EQ(SafeTensorsFile::open(tmp16.file("model.safetensors"))
                .entry("model.layers.0.block_sparse_moe.experts.3.w2.weight")
                .dtype,
            DType::BF16);
  auto infer16 = InferenceModel::load(tmp16.str());
  EXPECT_EQ(infer16->weight_type(), GgmlType::BF16);
  const auto l16 = logits_of(*infer16, x);
  EXPECT_LT(normalized_error(l16.data(), ours.data(), ours.size()), 2e-2);
  Transformer<float> loaded16(load_hf_config(tmp16.file("config.json")));
  load_hf_weights(loaded16, HfWeights::open(tmp16.str()));
  const auto t16 = logits_of(loaded16, x);
  EXPECT_LT(normalized_error(l16.data(), t16.data(), t16.size()), 1e-5);
}

// Shared experts or dense layers make the checkpoint a qwen2_moe one (dense layers through
// decoder_sparse_step; without shared experts a zero one of width 1 stands in).
TEST(HfCheckpoint, SharedExpertsAndDenseLayersSaveAsQwen2Moe) {
  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared ? "shared experts, moe_every 2" : "moe_every 2");
    Rng rng(11);
    Transformer<float> model(small_config(shared, 2));
    model.init_weights(rng);
    train_a_little(model, rng);
    const std::vector<int32_t> x = {2, 7, 1, 8, 2, 8};
    const auto ours = logits_of(model, x);
    TempDir tmp("hf_qwen2");
    save_hf_checkpoint(model, tmp.str(), DType::F32);
    keep_export(tmp.str(), shared ? "qwen2_moe_shared" : "qwen2_moe_dense_layers", x, ours);
    EXPECT_EQ(load_hf_config(tmp.file("config.json")).model_type, "qwen2_moe");
    auto infer = InferenceModel::load(tmp.str());
    const auto inferred = logits_of(*infer, x);
    EXPECT_LT(normalized_error(inferred.data(), ours.data(), ours.size()), 1e-5);
  }
}

TEST(HfCheckpoint, UnnormalizedTopKSavesAsQwen2Moe) {
  ModelConfig c = small_config(false, 1);
  c.moe.norm_topk_prob = false;
  Rng rng(5);
  Transformer<float> model(c);
  model.init_weights(rng);
  const std::vector<int32_t> x = {1, 2, 3, 4, 5};
  const auto ours = logits_of(model, x);
  TempDir tmp("hf_unnorm");
  save_hf_checkpoint(model, tmp.str(), DType::F32);
  keep_export(tmp.str(), "qwen2_moe_unnormalized", x, ours);
  EXPECT_EQ(load_hf_config(tmp.file("config.json")).model_type, "qwen2_moe");
  auto infer = InferenceModel::load(tmp.str());
  const auto inferred = logits_of(*infer, x);
  EXPECT_LT(normalized_error(inferred.data(), ours.data(), ours.size()), 1e-5);
}

// Every family loads into the trainable model (bf16 widened), which computes the reference's
// logits; after a few training steps it is saved back in its own family, and the inference
// model and a reload compute what the trained model does.
class HfFamilyTraining : public ::testing::TestWithParam<const char*> {};

TEST_P(HfFamilyTraining, LoadsTrainsAndSavesInItsFamily) {
  test::ExactBf16Path exact;
  const std::string dir = fixture(GetParam());
  const ModelConfig cfg = load_hf_config(dir + "/config.json");
  Transformer<float> model(cfg);
  load_hf_weights(model, HfWeights::open(dir));
  const auto expected = SafeTensorsFile::open(dir + "/expected.safetensors");
  const auto ids = expected.read<int32_t>("input_ids");
  const auto ref = expected.read<float>("logits");
  const int64_t S = ids.shape()[1], V = cfg.vocab_size;
  const std::vector<int32_t> x(ids.data(), ids.data() + S);  // the first sequence
  const auto loaded_logits = logits_of(model, x);
  EXPECT_LT(normalized_error(loaded_logits.data(), ref.data(), S * V), 1e-4) << GetParam();

  Rng rng(3);
  train_a_little(model, rng);
  const auto ours = logits_of(model, x);
  TempDir tmp(std::string("hf_family_") + GetParam());
  save_hf_checkpoint(model, tmp.str(), DType::F32);
  const ModelConfig back = load_hf_config(tmp.file("config.json"));
  EXPECT_EQ(back.model_type, cfg.model_type);
  EXPECT_EQ(back.qk_norm, cfg.qk_norm);
  EXPECT_EQ(back.attention_bias, cfg.attention_bias);
  EXPECT_EQ(rope_scaling_to_json(back.rope_scaling), rope_scaling_to_json(cfg.rope_scaling));
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    EXPECT_EQ(back.is_moe_layer(l), cfg.is_moe_layer(l));
  auto infer = InferenceModel::load(tmp.str());
  const auto inferred = logits_of(*infer, x);
  EXPECT_LT(normalized_error(inferred.data(), ours.data(), ours.size()), 1e-5) << GetParam();
  Transformer<float> reloaded(back);
  load_hf_weights(reloaded, HfWeights::open(tmp.str()));
  EXPECT_EQ(logits_of(reloaded, x), ours);  // bit for bit
}

INSTANTIATE_TEST_SUITE_P(Families, HfFamilyTraining,
                         ::testing::Values("mixtral", "mixtral_bf16", "qwen2_moe", "qwen3_moe",
                                           "olmoe"));
// The training Transformer takes its RoPE tables from the same rope_frequencies: a rope-scaled
// checkpoint fine-tunes and saves (its rope_scaling written back) alike.
INSTANTIATE_TEST_SUITE_P(RopeScaling, HfFamilyTraining,
                         ::testing::Values("qwen3_moe_yarn", "olmoe_yarn_mscale", "mixtral_llama3",
                                           "qwen2_moe_dynamic", "qwen3_moe_fused"));

// transformers v5's fused expert tensors: each family's fixture saved both ways gives the same
// logits (inference views into gate_up_proj / down_proj, and the trainable model), and the fused
// checkpoint loaded and saved per expert gives back the per-expert file byte for byte.
TEST(HfCheckpoint, FusedExpertLayoutIsTheSameModel) {
  test::ExactBf16Path exact;
  for (const char* name : {"mixtral", "mixtral_bf16", "qwen2_moe", "qwen3_moe", "olmoe"}) {
    SCOPED_TRACE(name);
    const std::string dir = fixture(name);
    const ModelConfig cfg = load_hf_config(dir + "/config.json");
    Transformer<float> model(cfg);
    load_hf_weights(model, HfWeights::open(dir));
    TempDir per("hf_per_expert"), fused("hf_fused"), back("hf_back");
    save_hf_checkpoint(model, per.str(), DType::BF16, HfExpertLayout::PerExpert);
    save_hf_checkpoint(model, fused.str(), DType::BF16, HfExpertLayout::Fused);
    const HfWeights wf = HfWeights::open(fused.str());
    int fused_layers = 0;
    for (int l = 0; l < cfg.num_hidden_layers; ++l) {
      if (!cfg.is_moe_layer(l)) continue;
      ++fused_layers;
      const std::string gate_up = hf_fused_experts_in(wf, cfg, l, true);
      ASSERT_EQ(gate_up, hf_fused_experts_name(cfg, l, true));
      EXPECT_EQ(wf.entry(gate_up).shape,
                std::vector<int64_t>(
                    {cfg.num_local_experts, 2 * cfg.intermediate_size, cfg.hidden_size}));
      EXPECT_EQ(
          wf.entry(hf_fused_experts_name(cfg, l, false)).shape,
          std::vector<int64_t>({cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size}));
      EXPECT_FALSE(wf.has(hf_tensor_name(cfg, l, HfTensor::ExpertGate, 0)));
    }
    EXPECT_GT(fused_layers, 0);
    const std::vector<int32_t> x = {5, 17, 3, 40, 41, 8, 77, 12};
    auto a = InferenceModel::load(per.str());
    auto b = InferenceModel::load(fused.str());
    EXPECT_EQ(logits_of(*a, x), logits_of(*b, x));  // the same stored values, bit for bit
    Transformer<float> reloaded(load_hf_config(fused.file("config.json")));
    load_hf_weights(reloaded, wf);
    save_hf_checkpoint(reloaded, back.str(), DType::BF16, HfExpertLayout::PerExpert);
    std::ifstream f1(per.file("model.safetensors"), std::ios::binary),
        f2(back.file("model.safetensors"), std::ios::binary);
    const std::string b1{std::istreambuf_iterator<char>(f1), {}},
        b2{std::istreambuf_iterator<char>(f2), {}};
    EXPECT_TRUE(b1 == b2);
  }
}

// ibm-granite/granite-3.0-1b-a400m's published config.json: 24 layers of d = 1024, 16 heads of
// 64 (8 kv heads), 32 experts of width 512, top-8, vocabulary 49155, tied embeddings. Per layer:
// attention 1024 x (2 x 1024 + 2 x 512) = 3145728, two norms 2048, router 32768, experts
// 32 x 3 x 1024 x 512 = 50331648 (8 of them active: 12582912); plus the embedding 50334720 and
// the final norm 1024: 1334628352 total (the "1b"), 428658688 active (the "a400m").
TEST(HfCheckpoint, ParameterAccountingOfGranite3_1bA400m) {
  const nlohmann::json j = {{"model_type", "granitemoe"},
                            {"architectures", {"GraniteMoeForCausalLM"}},
                            {"attention_bias", false},
                            {"attention_dropout", 0.1},
                            {"attention_multiplier", 0.015625},
                            {"bos_token_id", 0},
                            {"embedding_multiplier", 12.0},
                            {"eos_token_id", 0},
                            {"hidden_act", "silu"},
                            {"hidden_size", 1024},
                            {"initializer_range", 0.02},
                            {"intermediate_size", 512},
                            {"logits_scaling", 6.0},
                            {"max_position_embeddings", 4096},
                            {"num_attention_heads", 16},
                            {"num_experts_per_tok", 8},
                            {"num_hidden_layers", 24},
                            {"num_key_value_heads", 8},
                            {"num_local_experts", 32},
                            {"output_router_logits", false},
                            {"pad_token_id", 0},
                            {"residual_multiplier", 0.22},
                            {"rms_norm_eps", 1e-6},
                            {"rope_scaling", nullptr},
                            {"rope_theta", 10000},
                            {"router_aux_loss_coef", 0.0},
                            {"tie_word_embeddings", true},
                            {"torch_dtype", "bfloat16"},
                            {"use_cache", true},
                            {"vocab_size", 49155}};
  const ModelConfig c = model_config_from_hf(j, "config.json");
  EXPECT_EQ(c.embedding_multiplier, 12.0);
  EXPECT_EQ(c.residual_multiplier, 0.22);
  EXPECT_EQ(c.attention_multiplier, 0.015625);
  EXPECT_EQ(c.logits_scaling, 6.0);
  EXPECT_TRUE(c.moe.norm_topk_prob);
  const ParameterCount n = count_parameters(c);
  EXPECT_EQ(n.total, 1334628352);
  EXPECT_EQ(n.active, 428658688);
  EXPECT_EQ(hf_tensor_name(c, 3, HfTensor::Router),
            "model.layers.3.block_sparse_moe.router.layer.weight");
  EXPECT_EQ(hf_fused_experts_name(c, 3, true),
            "model.layers.3.block_sparse_moe.input_linear.weight");
}

// Without a multiplier the granitemoe fixture is far from the reference (each one matters), and
// the trainable model refuses it by name.
TEST(HfCheckpoint, GraniteMultipliersMatterAndTrainingIsRefused) {
  const std::string dir = fixture("granitemoe");
  const auto expected = SafeTensorsFile::open(dir + "/expected.safetensors");
  const auto ids = expected.read<int32_t>("input_ids");
  const auto ref = expected.read<float>("logits");
  const std::vector<int32_t> x(ids.data(), ids.data() + ids.shape()[1]);
  const int64_t V = ref.shape()[2];
  for (const char* key :
       {"embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"}) {
    TempDir d("granite_mult");
    for (const auto& e : fs::directory_iterator(dir))
      fs::copy_file(e.path(), d.file(e.path().filename().string()));
    nlohmann::json j = nlohmann::json::parse(std::ifstream(d.file("config.json")));
    j.erase(key);
    std::ofstream(d.file("config.json")) << j.dump(2);
    auto m = InferenceModel::load(d.str());
    const auto got = logits_of(*m, x);
    EXPECT_GT(normalized_error(got.data(), ref.data(), static_cast<int64_t>(x.size()) * V), 1e-3)
        << key;
  }
  EXPECT_MOE_ERROR(load_trainable_model(dir), "granitemoe", "not trainable");
}

TEST(HfCheckpoint, RoutingHuggingFaceCannotExpressIsRefused) {
  ModelConfig c = small_config(false, 1);
  c.moe.scoring_func = ScoreFunc::Sigmoid;
  EXPECT_MOE_ERROR(hf_family_for(c), "scoring_func");
  c = small_config(false, 1);
  c.moe.use_selection_bias = true;
  EXPECT_MOE_ERROR(hf_family_for(c), "use_selection_bias");
}

// --- bad files: each one error line naming the file and the field -------------------------

void copy_fixture(const std::string& name, const TempDir& to) {
  test::copy_dir_files(fixture(name), to);
}
using test::edit_config;

void expect_one_line(const std::string& msg) {
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST(HfCheckpointErrors, TruncatedFile) {
  TempDir d("hf_bad");
  copy_fixture("mixtral", d);
  const auto size = fs::file_size(d.file("model.safetensors"));
  fs::resize_file(d.file("model.safetensors"), size - 100);
  const std::string e = test::error_of([&] { InferenceModel::load(d.str()); });
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  expect_one_line(e);
}

// Rewrites the JSON header of a safetensors file; the data section is kept byte for byte (its
// offsets are relative to its start).
void edit_header(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json h = nlohmann::json::parse(bytes.substr(8, n));
  edit(h);
  std::string text = h.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  const uint64_t m = text.size();
  std::string out(reinterpret_cast<const char*>(&m), 8);
  out += text + bytes.substr(8 + n);
  std::ofstream(path, std::ios::binary).write(out.data(), static_cast<std::streamsize>(out.size()));
}

TEST(HfCheckpointErrors, OffsetPastTheEnd) {
  TempDir d("hf_bad");
  copy_fixture("mixtral", d);
  edit_header(d.file("model.safetensors"),
              [](nlohmann::json& h) { h["model.norm.weight"]["data_offsets"][1] = 1 << 30; });
  const std::string e = test::error_of([&] { InferenceModel::load(d.str()); });
  EXPECT_NE(e.find("model.norm.weight"), std::string::npos) << e;
  expect_one_line(e);
}

TEST(HfCheckpointErrors, WrongDtype) {
  TempDir d("hf_bad");
  copy_fixture("mixtral", d);
  edit_header(d.file("model.safetensors"), [](nlohmann::json& h) {
    h["model.layers.0.self_attn.q_proj.weight"]["dtype"] = "I32";
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "model.safetensors",
                   "model.layers.0.self_attn.q_proj.weight", "I32");
}

TEST(HfCheckpointErrors, MissingTensorAndWrongShape) {
  TempDir d("hf_bad");
  copy_fixture("mixtral", d);
  const std::string name = "model.layers.1.block_sparse_moe.experts.2.w3.weight";
  edit_header(d.file("model.safetensors"), [&](nlohmann::json& h) {
    h[name + "_renamed"] = h[name];
    h.erase(name);
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "missing tensor", name);
  TempDir d2("hf_bad");
  copy_fixture("mixtral", d2);
  edit_config(d2, [](nlohmann::json& j) {
    j["intermediate_size"] = j["intermediate_size"].get<int>() * 2;
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d2.str()), "model.safetensors", "w1.weight", "shape");
}

TEST(HfCheckpointErrors, UnknownModelTypeAndUnsupportedKeys) {
  TempDir d("hf_bad");
  copy_fixture("mixtral", d);
  edit_config(d, [](nlohmann::json& j) { j["model_type"] = "dbrx"; });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", "model_type", "dbrx");
  edit_config(d, [](nlohmann::json& j) {
    j["model_type"] = "mixtral";
    j["rope_scaling"] = {{"type", "yarn"}};
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", "rope_scaling");
  edit_config(d, [](nlohmann::json& j) {
    j.erase("rope_scaling");
    j["hidden_size"] = "wide";
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", "hidden_size");
}

// Without its rope_scaling a fixture's model is far from the reference: the scaling is what
// matches (and the fixtures are ones where it matters).
TEST(HfCheckpoint, RopeScalingIsWhatMatchesTheReference) {
  for (const char* name : {"qwen3_moe_yarn", "olmoe_yarn_mscale", "mixtral_llama3", "llama_linear",
                           "qwen2_moe_dynamic"}) {
    TempDir d("hf_rope");
    copy_fixture(name, d);
    edit_config(d, [](nlohmann::json& j) {
      j.erase("rope_scaling");
      j.erase("rope_parameters");
      j["max_position_embeddings"] = 64;
    });
    auto model = InferenceModel::load(d.str());
    const auto expected = SafeTensorsFile::open(d.file("expected.safetensors"));
    const auto ids = expected.read<int32_t>("input_ids");
    const auto ref = expected.read<float>("logits");
    const int B = static_cast<int>(ids.shape()[0]), S = static_cast<int>(ids.shape()[1]);
    std::vector<float> logits(static_cast<size_t>(ref.numel()));
    auto caches = model->new_caches(B, S);
    model->forward(ids.data(), B, S, caches, logits.data(), /*all_logits=*/true);
    EXPECT_GT(normalized_error(logits.data(), ref.data(), ref.numel()), 1e-3) << name;
  }
}

TEST(HfCheckpointErrors, RopeScalingKeys) {
  TempDir d("hf_bad_rope");
  copy_fixture("mixtral", d);
  auto fails = [&](const nlohmann::json& rope, const char* key) {
    edit_config(d, [&](nlohmann::json& j) { j["rope_scaling"] = rope; });
    EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", key);
  };
  fails({{"rope_type", "longrope"}, {"factor", 2.0}}, "longrope");
  fails({{"rope_type", "yarn"}}, "rope_scaling.factor");
  fails({{"type", "linear"}, {"factor", "two"}}, "rope_scaling.factor");
  fails({{"type", "linear"}, {"factor", 0.5}}, "rope_scaling.factor");
  fails({{"rope_type", "llama3"},
         {"factor", 8.0},
         {"low_freq_factor", 1.0},
         {"high_freq_factor", 4.0}},
        "rope_scaling.original_max_position_embeddings");
  fails({{"rope_type", "llama3"},
         {"factor", 8.0},
         {"low_freq_factor", 4.0},
         {"high_freq_factor", 1.0},
         {"original_max_position_embeddings", 16}},
        "rope_scaling.high_freq_factor");
  fails({{"rope_type", "yarn"}, {"factor", 4.0}, {"short_factor", {1.0}}},
        "rope_scaling.short_factor");
  fails({{"factor", 4.0}}, "rope_scaling.rope_type");
  fails({{"rope_type", "linear"}, {"factor", 2.0}, {"partial_rotary_factor", 0.5}},
        "partial_rotary_factor");
  fails("yarn", "rope_scaling");
  // The accepted spellings: v5's rope_parameters (which may carry rope_theta) and "default".
  edit_config(d, [](nlohmann::json& j) {
    j.erase("rope_scaling");
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5e5}};
  });
  const ModelConfig c = load_hf_config(d.file("config.json"));
  EXPECT_FALSE(c.rope_scaling.scaled());
  EXPECT_EQ(c.rope_theta, 5e5);
}

// A fused expert tensor of the wrong shape is one error naming it.
TEST(HfCheckpointErrors, FusedExpertsOfTheWrongShape) {
  TempDir d("hf_fused_bad");
  Transformer<float> model(load_hf_config(fixture("mixtral") + "/config.json"));
  load_hf_weights(model, HfWeights::open(fixture("mixtral")));
  save_hf_checkpoint(model, d.str(), DType::F32, HfExpertLayout::Fused);
  edit_config(
      d, [](nlohmann::json& j) { j["intermediate_size"] = j["intermediate_size"].get<int>() + 2; });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "model.safetensors", "experts.gate_up_proj",
                   "shape");
  Transformer<float> wider(load_hf_config(d.file("config.json")));
  EXPECT_MOE_ERROR(load_hf_weights(wider, HfWeights::open(d.str())), "model.safetensors",
                   "gate_up_proj");
}

TEST(HfCheckpointErrors, ShardIndexProblems) {
  TempDir d("hf_bad");
  copy_fixture("qwen2_moe", d);
  ASSERT_TRUE(fs::exists(d.file("model.safetensors.index.json")));
  fs::remove(d.file("model-00002-of-00002.safetensors"));
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "model-00002-of-00002.safetensors");
  TempDir d2("hf_bad");
  copy_fixture("qwen2_moe", d2);
  std::ifstream in(d2.file("model.safetensors.index.json"));
  nlohmann::json idx = nlohmann::json::parse(in);
  in.close();
  // Point one tensor at the shard that does not hold it.
  auto& map = idx["weight_map"];
  const std::string name = "model.norm.weight";
  const std::string other = map[name] == "model-00001-of-00002.safetensors"
                                ? "model-00002-of-00002.safetensors"
                                : "model-00001-of-00002.safetensors";
  map[name] = other;
  std::ofstream(d2.file("model.safetensors.index.json")) << idx.dump();
  EXPECT_MOE_ERROR(InferenceModel::load(d2.str()), "index.json", name, "not stored there");
}

}  // namespace
}  // namespace moe
