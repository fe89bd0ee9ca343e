// DeepSeek-V2 / V3 (Multi-head Latent Attention, DeepSeekMoE routing) beyond the family test of
// test_hf_checkpoint.cpp (which checks the fixtures' logits, greedy tokens and one-token cached
// logits against tools/reference/deepseek_reference.py): the compressed latent cache against
// the full-head cache, token by token; the routing pieces the fixtures rely on; the config
// keys; parameter accounting against the published figures; refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/hf_checkpoint.h"
#include "moe/inference_model.h"
#include "moe/router.h"
#include "moe/trainable_model.h"
#include "test_util.h"

namespace moe {
namespace {

std::string fixture(const std::string& name) {
  return std::string(MOE_FIXTURE_DIR) + "/hf/" + name;
}

nlohmann::json fixture_config(const std::string& name) {
  return nlohmann::json::parse(std::ifstream(fixture(name) + "/config.json"));
}

double normalized_error(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

class DeepSeekFamily : public ::testing::TestWithParam<const char*> {};

// The latent cache with the absorbed up-projections against the expanded full-head cache (the
// modeling files' form): a prefill of the prompts, then one token at a time, logits at every
// step; and the cache bytes per token of each layout.
TEST_P(DeepSeekFamily, LatentCacheEqualsFullHeadCache) {
  test::ExactBf16Path exact;
  auto model = InferenceModel::load(fixture(GetParam()));
  const ModelConfig& c = model->config();
  const auto expected = SafeTensorsFile::open(fixture(GetParam()) + "/expected.safetensors");
  const auto ids = expected.read<int32_t>("input_ids");
  const auto greedy = expected.read<int32_t>("greedy");
  const int B = static_cast<int>(ids.shape()[0]), S = static_cast<int>(ids.shape()[1]);
  const int N = static_cast<int>(greedy.shape()[1]);
  const int64_t V = c.vocab_size;
  auto latent = model->new_caches(B, S + N, MlaCache::Latent);
  auto full = model->new_caches(B, S + N, MlaCache::FullHeads);
  std::vector<float> a(static_cast<size_t>(B * S * V)), b(a.size());
  model->forward(ids.data(), B, S, latent, a.data(), /*all_logits=*/true);
  model->forward(ids.data(), B, S, full, b.data(), /*all_logits=*/true);
  EXPECT_LT(normalized_error(a.data(), b.data(), B * S * V), 1e-5);
  std::vector<int32_t> next(static_cast<size_t>(B));
  for (int t = 0; t < N; ++t) {
    for (int s = 0; s < B; ++s) next[s] = greedy.data()[s * N + t];
    model->forward(next.data(), B, 1, latent, a.data());
    model->forward(next.data(), B, 1, full, b.data());
    EXPECT_LT(normalized_error(a.data(), b.data(), B * V), 1e-5) << "step " << t;
  }
  EXPECT_EQ(latent[0].length, S + N);
  const MlaConfig& m = c.mla;
  const int64_t L = c.num_hidden_layers, H = c.num_attention_heads;
  EXPECT_EQ(model->cache_bytes_per_token(MlaCache::Latent),
            L * (m.kv_lora_rank + m.qk_rope_head_dim) * 4);
  EXPECT_EQ(model->cache_bytes_per_token(MlaCache::FullHeads),
            L * H * (m.qk_head_dim() + m.v_head_dim) * 4);
}

// Prefill of the whole prompt and one token at a time agree at every position (the latent
// cache's positions and RoPE offsets).
TEST_P(DeepSeekFamily, OneTokenAtATimeEqualsPrefillAtEveryPosition) {
  test::ExactBf16Path exact;
  auto model = InferenceModel::load(fixture(GetParam()));
  const auto expected = SafeTensorsFile::open(fixture(GetParam()) + "/expected.safetensors");
  const auto ids = expected.read<int32_t>("input_ids");
  const auto ref = expected.read<float>("logits");
  const int B = static_cast<int>(ids.shape()[0]), S = static_cast<int>(ids.shape()[1]);
  const int64_t V = model->config().vocab_size;
  auto caches = model->new_caches(B, S);
  std::vector<float> last(static_cast<size_t>(B * V));
  std::vector<int32_t> col(static_cast<size_t>(B));
  for (int t = 0; t < S; ++t) {
    for (int b = 0; b < B; ++b) col[b] = ids.data()[b * S + t];
    model->forward(col.data(), B, 1, caches, last.data());
    for (int b = 0; b < B; ++b)
      EXPECT_LT(normalized_error(last.data() + b * V, ref.data() + (b * S + t) * V, V), 1e-4)
          << GetParam() << " position " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DeepSeekFamily, ::testing::Values("deepseek_v2", "deepseek_v3"));

TEST(DeepSeekConfig, FixtureConfigsAreRead) {
  const ModelConfig v2 = load_hf_config(fixture("deepseek_v2") + "/config.json");
  EXPECT_TRUE(v2.is_mla());
  EXPECT_EQ(v2.mla.q_lora_rank, 0);  // null: q_proj
  EXPECT_EQ(v2.mla.kv_lora_rank, 16);
  EXPECT_EQ(v2.moe.scoring_func, ScoreFunc::Softmax);
  EXPECT_TRUE(v2.moe.group_score_max);
  EXPECT_FALSE(v2.moe.use_selection_bias);
  EXPECT_EQ(v2.moe.n_group, 2);
  EXPECT_EQ(v2.moe.num_experts_per_tok, 3);
  EXPECT_DOUBLE_EQ(v2.moe.routed_scaling_factor, 2.0);
  EXPECT_EQ(v2.moe.n_shared_experts, 2);
  EXPECT_EQ(v2.moe.shared_hidden(), 16);
  EXPECT_FALSE(v2.moe.shared_expert_gate);
  EXPECT_EQ(v2.mlp_only_layers, std::vector<int>{0});  // first_k_dense_replace = 1
  EXPECT_EQ(v2.dense_width(), 40);

  const ModelConfig v3 = load_hf_config(fixture("deepseek_v3") + "/config.json");
  EXPECT_EQ(v3.mla.q_lora_rank, 24);
  EXPECT_EQ(v3.moe.scoring_func, ScoreFunc::Sigmoid);
  EXPECT_FALSE(v3.moe.group_score_max);
  EXPECT_TRUE(v3.moe.use_selection_bias);
  EXPECT_TRUE(v3.moe.norm_topk_prob);
  EXPECT_DOUBLE_EQ(v3.moe.routed_scaling_factor, 2.5);

  // Kimi K2 names its configs kimi_k2 over the deepseek_v3 architecture.
  nlohmann::json kimi = fixture_config("deepseek_v3");
  kimi["model_type"] = "kimi_k2";
  EXPECT_EQ(model_config_from_hf(kimi, "kimi").model_type, "deepseek_v3");

  // greedy (the V2 default) ignores the group keys, as Hugging Face does.
  nlohmann::json greedy = fixture_config("deepseek_v2");
  greedy["topk_method"] = "greedy";
  EXPECT_EQ(model_config_from_hf(greedy, "g").moe.n_group, 1);
  // moe_layer_freq 2: MoE at the even layers from first_k_dense_replace on.
  nlohmann::json freq = fixture_config("deepseek_v3");
  freq["moe_layer_freq"] = 2;
  freq["first_k_dense_replace"] = 0;
  EXPECT_EQ(model_config_from_hf(freq, "f").mlp_only_layers, std::vector<int>{1});
}

// V3's group score is the sum of the best two biased keys; V2's group_limited_greedy the best
// one: a case where the two rules keep different groups.
TEST(DeepSeekRouting, GroupScoreRules) {
  MoeConfig m;
  m.hidden_size = 4, m.moe_intermediate_size = 4, m.num_experts = 4, m.num_experts_per_tok = 1;
  m.n_group = 2, m.topk_group = 1;
  m.scoring_func = ScoreFunc::Sigmoid;
  // Group 0: one strong expert (0.9, 0.1); group 1: two good ones (0.6, 0.55).
  const float logit[4] = {std::log(0.9f / 0.1f), std::log(0.1f / 0.9f), std::log(0.6f / 0.4f),
                          std::log(0.55f / 0.45f)};
  for (bool max_rule : {false, true}) {
    m.group_score_max = max_rule;
    Router<float> r(m);
    std::copy_n(logit, 4, r.logits(1));
    r.forward(1);
    EXPECT_EQ(r.plan().primary[0], max_rule ? 0 : 2) << max_rule;
  }
}

// DeepSeek-V3's published config (the transformers defaults): 671B parameters, 37B active.
// The count includes the embedding table in both figures; DeepSeek's "activated" excludes the
// input embedding lookup: 37,552,282,624 - 129,280 * 7168 = 36.6B, their "37B".
TEST(DeepSeekConfig, ParameterAccountingOfDeepSeekV3) {
  const ModelConfig c =
      model_config_from_hf(nlohmann::json{{"model_type", "deepseek_v3"}}, "deepseek_v3");
  const ParameterCount n = count_parameters(c);
  EXPECT_EQ(n.total, 671026404352);
  EXPECT_EQ(n.active, 37552282624);
  EXPECT_EQ(std::llround(n.total / 1e9), 671);
  EXPECT_EQ(std::llround((n.active - int64_t{129280} * 7168) / 1e9), 37);
}

// DeepSeek-V2-Lite's config.json: 15.7B parameters, 2.4B active (without the input embedding:
// 2.45B).
TEST(DeepSeekConfig, ParameterAccountingOfDeepSeekV2Lite) {
  const nlohmann::json j = {{"model_type", "deepseek_v2"},
                            {"vocab_size", 102400},
                            {"hidden_size", 2048},
                            {"intermediate_size", 10944},
                            {"moe_intermediate_size", 1408},
                            {"num_hidden_layers", 27},
                            {"num_attention_heads", 16},
                            {"num_key_value_heads", 16},
                            {"n_routed_experts", 64},
                            {"n_shared_experts", 2},
                            {"num_experts_per_tok", 6},
                            {"first_k_dense_replace", 1},
                            {"moe_layer_freq", 1},
                            {"kv_lora_rank", 512},
                            {"q_lora_rank", nullptr},
                            {"qk_rope_head_dim", 64},
                            {"qk_nope_head_dim", 128},
                            {"v_head_dim", 128},
                            {"topk_method", "greedy"},
                            {"n_group", 1},
                            {"topk_group", 1},
                            {"norm_topk_prob", false},
                            {"routed_scaling_factor", 1.0},
                            {"scoring_func", "softmax"},
                            {"max_position_embeddings", 163840}};
  const ParameterCount n = count_parameters(model_config_from_hf(j, "v2-lite"));
  EXPECT_EQ(n.total, 15706484224);
  EXPECT_EQ(n.active, 2661150208);
  EXPECT_EQ(std::llround(n.total / 1e8), 157);
  EXPECT_EQ((n.active - int64_t{102400} * 2048) / int64_t{100000000}, 24);
}

TEST(DeepSeekConfig, KeysWeCannotComputeAreRefused) {
  auto refused = [](nlohmann::json j, const char* key, const nlohmann::json& value) {
    j[key] = value;
    try {
      model_config_from_hf(j, "config.json");
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(key), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      return;
    }
    ADD_FAILURE() << key << " was accepted";
  };
  const nlohmann::json v2 = fixture_config("deepseek_v2"), v3 = fixture_config("deepseek_v3");
  refused(v2, "norm_topk_prob", true);
  refused(v2, "topk_method", "noaux_tc");
  refused(v2, "scoring_func", "sigmoid");
  refused(v3, "topk_method", "group_limited_greedy");
  refused(v3, "quantization_config", {{"quant_method", "fp8"}});
  refused(v3, "num_key_value_heads", 2);
  refused(v3, "attention_bias", true);
  refused(v3, "hidden_act", "gelu");
  refused(v3, "first_k_dense_replace", 3);  // no MoE layer left of 3
  refused(v3, "rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}});
}

// MLA has no backward here: training refuses by name.
TEST(DeepSeekConfig, TrainingIsRefused) {
  try {
    load_trainable_model(fixture("deepseek_v3"));
    ADD_FAILURE() << "a deepseek_v3 checkpoint loaded for training";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deepseek_v3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
