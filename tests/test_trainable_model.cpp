// Fine-tuning's starting point (trainable_model.h): a GGUF file loads into the trainable model
// with the logits of the model it was written from (Q/K rows un-permuted), a --config given
// with --init-from applies its training and routing keys and refuses shape keys that contradict
// the model, and `moe train --config` reads a Hugging Face family config.json.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/gguf_export.h"
#include "moe/rng.h"
#include "moe/trainable_model.h"
#include "test_util.h"

namespace moe {
namespace {

using test::expect_error;

ModelConfig small_mixtral() {
  ModelConfig c;
  c.vocab_size = 258;  // the byte tokenizer's, which the GGUF export writes
  c.hidden_size = 32;
  c.intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.num_local_experts = 4;
  c.moe.num_experts_per_tok = 2;
  c.initializer_range = 0.2;
  c.training.seq_len = 16;
  c.training.tokenizer = "byte";
  c.sync_moe();
  return c;
}

std::vector<float> logits_of(Transformer<float>& m, const std::vector<int32_t>& x) {
  m.forward(x.data(), nullptr, 1, static_cast<int>(x.size()));
  return std::vector<float>(m.logits(), m.logits() + x.size() * m.config().vocab_size);
}

TEST(TrainableModel, GgufLoadsWithItsLogits) {
  Transformer<float> model(small_mixtral());
  Rng rng(9);
  model.init_weights(rng);
  const test::TempDir dir("trainable_gguf");
  export_gguf(model, "", dir.file("m.gguf"), DType::F32);
  TrainableModel loaded = load_trainable_model(dir.file("m.gguf"));
  EXPECT_EQ(loaded.config.model_type, "mixtral");
  EXPECT_EQ(loaded.tokenizer, "");
  const std::vector<int32_t> x = {1, 5, 9, 2, 6, 5, 3, 5};
  const auto want = logits_of(model, x), got = logits_of(*loaded.model, x);
  test::expect_close("gguf logits", got.data(), want.data(), static_cast<int64_t>(want.size()),
                     1e-6);
  // The weights themselves, Q and K included, are the exported ones.
  for (size_t k = 0; k < model.parameters().size(); ++k) {
    const auto& a = model.parameters()[k];
    const auto& b = loaded.model->parameters()[k];
    ASSERT_EQ(a.name, b.name);
    EXPECT_TRUE(std::equal(a.value, a.value + a.shape.numel(), b.value)) << a.name;
  }
}

TEST(TrainableModel, TrainingSettingsApplyAndShapeKeysMustAgree) {
  const ModelConfig model = small_mixtral();
  const nlohmann::json ok = {{"router_aux_loss_coef", 0.05},
                             {"capacity_factor", 1.25},
                             {"use_selection_bias", true},
                             {"hidden_size", 32},  // equal to the model's: accepted
                             {"training", {{"learning_rate", 1e-4}, {"trainable", "routers"}}}};
  const ModelConfig c = with_training_settings(model, ok, "ft.json");
  EXPECT_DOUBLE_EQ(c.moe.router_aux_loss_coef, 0.05);
  EXPECT_DOUBLE_EQ(c.moe.capacity_factor, 1.25);
  EXPECT_TRUE(c.moe.use_selection_bias);
  EXPECT_DOUBLE_EQ(c.training.learning_rate, 1e-4);
  EXPECT_EQ(c.training.trainable, "routers");
  EXPECT_EQ(c.hidden_size, 32);
  expect_error(
      [&] {
        with_training_settings(model, {{"hidden_size", 64}}, "ft.json");
      },
      {"ft.json: hidden_size = 64 contradicts the model's 32"});
  expect_error(
      [&] {
        with_training_settings(model, {{"n_shared_experts", 1}}, "ft.json");
      },
      {"ft.json: n_shared_experts"});
  expect_error(
      [&] {
        with_training_settings(model, {{"decoder_sparse_stp", 1}}, "ft.json");
      },
      {"unknown key \"decoder_sparse_stp\""});
}

TEST(TrainableModel, HuggingFaceConfigTrainsFromScratch) {
  const std::string path = std::string(MOE_FIXTURE_DIR) + "/hf/qwen2_moe/config.json";
  const ModelConfig c = load_train_config(path);
  EXPECT_EQ(c.model_type, "qwen2_moe");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_GT(c.moe.n_shared_experts, 0);
  Transformer<float> model(c);  // builds: every family piece trains
  EXPECT_GT(model.num_parameters(), 0);
}

}  // namespace
}  // namespace moe
