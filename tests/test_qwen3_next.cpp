// qwen3_next and qwen3_5_moe (Gated DeltaNet / gated attention hybrids): the delta rule's two
// forms against each other, the layer's state carried across calls, the constant-size state in
// the Decoder's cache, config reading and refusals, and the parameter accounting of the released
// models. The logits, greedy tokens and token-by-token decode against the independent PyTorch
// reference (tools/reference/qwen3_next_reference.py) are the "qwen3_next" and
// "qwen3_5_moe_fused" cases of HfFamily in test_hf_checkpoint.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/error.h"
#include "moe/gated_deltanet.h"
#include "moe/hf_checkpoint.h"
#include "moe/inference_model.h"
#include "moe/rng.h"
#include "moe/trainable_model.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string fixture(const char* name) {
  return std::string(MOE_FIXTURE_DIR) + "/hf/" + name;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

struct DeltaInputs {
  std::vector<float> q, k, v, g, beta;
};

// q, k L2-normalized per head (q also scaled by 1/sqrt(dk)), decays in (-0.5, 0], beta in (0, 1).
DeltaInputs random_inputs(int B, int n, int Hv, int dk, int dv, uint64_t seed) {
  Rng rng(seed);
  DeltaInputs in;
  const int64_t rows = int64_t{B} * n * Hv;
  in.q.resize(rows * dk), in.k.resize(rows * dk), in.v.resize(rows * dv);
  in.g.resize(rows), in.beta.resize(rows);
  rng.fill_normal(in.q.data(), rows * dk, 0, 1);
  rng.fill_normal(in.k.data(), rows * dk, 0, 1);
  rng.fill_normal(in.v.data(), rows * dv, 0, 1);
  for (int64_t r = 0; r < rows; ++r) {
    for (std::vector<float>* x : {&in.q, &in.k}) {
      double ss = 0;
      for (int i = 0; i < dk; ++i) ss += double((*x)[r * dk + i]) * (*x)[r * dk + i];
      const double scale = (x == &in.q ? 1.0 / std::sqrt(double(dk)) : 1.0) / std::sqrt(ss);
      for (int i = 0; i < dk; ++i) (*x)[r * dk + i] = float((*x)[r * dk + i] * scale);
    }
    in.g[r] = -0.5f * float(rng.next_u64() % 1000) / 1000.0f;
    in.beta[r] = float(1 + rng.next_u64() % 999) / 1000.0f;
  }
  return in;
}

// The chunked form (chunks of 64) equals the token-by-token recurrence, output and final state,
// at lengths below, at and past one chunk and over several chunks.
TEST(GatedDeltaNet, ChunkedEqualsRecurrent) {
  const int B = 2, Hv = 3, dk = 16, dv = 8;
  for (int n : {1, 7, 63, 64, 65, 130, 200}) {
    const DeltaInputs in = random_inputs(B, n, Hv, dk, dv, 100 + n);
    std::vector<float> S1(B * Hv * dk * dv, 0.0f), S2 = S1;
    std::vector<float> o1(int64_t{B} * n * Hv * dv), o2(o1.size());
    GatedDeltaNet::delta_rule(in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(), B,
                              n, Hv, dk, dv, S1.data(), o1.data(), GdnMode::Recurrent);
    GatedDeltaNet::delta_rule(in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(), B,
                              n, Hv, dk, dv, S2.data(), o2.data(), GdnMode::Chunked);
    EXPECT_LT(max_abs_diff(o1, o2), 1e-5) << "n = " << n;
    EXPECT_LT(max_abs_diff(S1, S2), 1e-5) << "n = " << n;
  }
}

// One token from a zero state, by hand: S = beta k v^T, o = S^T q = beta (k . q) v.
TEST(GatedDeltaNet, OneTokenByHand) {
  const int dk = 4, dv = 3;
  const DeltaInputs in = random_inputs(1, 1, 1, dk, dv, 5);
  for (GdnMode mode : {GdnMode::Recurrent, GdnMode::Chunked}) {
    std::vector<float> S(dk * dv, 0.0f), o(dv);
    GatedDeltaNet::delta_rule(in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(), 1,
                              1, 1, dk, dv, S.data(), o.data(), mode);
    double kq = 0;
    for (int i = 0; i < dk; ++i) kq += double(in.k[i]) * in.q[i];
    for (int e = 0; e < dv; ++e) EXPECT_NEAR(o[e], in.beta[0] * kq * in.v[e], 1e-6);
  }
}

// The layer over a random model's weights: a prefill of 150 tokens in one chunked call equals
// 100 tokens chunked, then 50 one at a time through the state (conv window and S), and the
// recurrent form over all 150.
TEST(GatedDeltaNet, StateCarriesAcrossCalls) {
  LinearAttnConfig c;
  c.num_k_heads = 2, c.num_v_heads = 4, c.k_head_dim = 8, c.v_head_dim = 6, c.conv_kernel = 4;
  const int d = 24, B = 2, n = 150;
  Rng rng(11);
  auto fill = [&](std::vector<float>& v, int64_t size, double std) {
    v.resize(static_cast<size_t>(size));
    rng.fill_normal(v.data(), size, 0, std);
  };
  std::vector<float> qkv, z, b, a, conv, A_log, dt, norm, out, x;
  fill(qkv, c.conv_dim() * d, 0.2), fill(z, c.value_dim() * d, 0.2);
  fill(b, c.num_v_heads * d, 0.2), fill(a, c.num_v_heads * d, 0.2);
  fill(conv, c.conv_dim() * c.conv_kernel, 0.3), fill(A_log, c.num_v_heads, 0.2);
  fill(dt, c.num_v_heads, 0.1), fill(norm, c.v_head_dim, 0.1), fill(out, d * c.value_dim(), 0.2);
  for (float& w : norm) w += 1.0f;
  fill(x, int64_t{B} * n * d, 1.0);
  auto view = [](const std::vector<float>& v, int64_t rows, int64_t cols) {
    return WeightView{reinterpret_cast<const uint8_t*>(v.data()), GgmlType::F32, rows, cols};
  };
  GdnWeights w;
  w.qkv = view(qkv, c.conv_dim(), d), w.z = view(z, c.value_dim(), d);
  w.b = view(b, c.num_v_heads, d), w.a = view(a, c.num_v_heads, d);
  w.conv = conv.data(), w.A_log = A_log.data(), w.dt_bias = dt.data(), w.norm = norm.data();
  w.out = view(out, d, c.value_dim());
  GatedDeltaNet layer(c, d, 1e-6);

  auto run = [&](const std::vector<int>& parts, GdnMode mode) {
    KvCache<float> cache;
    reset_gdn_cache(c, B, n, cache);
    const int64_t state = cache.state_bytes();
    std::vector<float> y(static_cast<size_t>(B) * n * d, 0.0f);
    int t0 = 0;
    for (int len : parts) {
      const int t = t0;
      {
        std::vector<float> xs(static_cast<size_t>(B) * len * d), ys(xs.size(), 0.0f);
        for (int s = 0; s < B; ++s)
          std::copy_n(x.data() + (int64_t{s} * n + t) * d, len * d,
                      xs.data() + int64_t{s} * len * d);
        layer.forward(w, xs.data(), B, len, cache, ys.data(), mode);
        for (int s = 0; s < B; ++s)
          std::copy_n(ys.data() + int64_t{s} * len * d, len * d,
                      y.data() + (int64_t{s} * n + t) * d);
        t0 += len;
      }
    }
    EXPECT_EQ(cache.length, n);
    EXPECT_EQ(cache.state_bytes(), state);  // nothing grew
    return y;
  };
  const std::vector<float> whole = run({n}, GdnMode::Chunked);
  std::vector<int> split = {100};
  split.insert(split.end(), 50, 1);
  EXPECT_LT(max_abs_diff(run(split, GdnMode::Auto), whole), 1e-5);
  EXPECT_LT(max_abs_diff(run({n}, GdnMode::Recurrent), whole), 1e-5);
  double scale = 0;
  for (float v : whole) scale = std::max(scale, double(std::abs(v)));
  EXPECT_GT(scale, 1e-2);  // the comparison is not between zeros
}

// The Decoder's cache: the DeltaNet layers hold a state whose size does not depend on the
// context; only the full-attention layer grows per token.
TEST(Qwen3Next, CacheStateIndependentOfContext) {
  auto model = InferenceModel::load(fixture("qwen3_next"));
  const ModelConfig& c = model->config();
  auto small = model->new_caches(1, 8);
  auto large = model->new_caches(1, c.context_length());
  int64_t state = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const auto L = static_cast<size_t>(l);
    EXPECT_EQ(small[L].state_bytes(), large[L].state_bytes()) << l;
    if (c.is_linear_layer(l)) {
      EXPECT_GT(small[L].state_bytes(), 0) << l;
      EXPECT_EQ(small[L].bytes_per_token(), 0) << l;
      state += small[L].state_bytes();
    } else {
      EXPECT_EQ(small[L].bytes_per_token(),
                int64_t{2} * c.num_key_value_heads * c.head_size() * int64_t{sizeof(float)});
    }
  }
  const LinearAttnConfig& a = c.linear;
  EXPECT_EQ(state, 3 * int64_t{sizeof(float)} *
                       ((a.conv_kernel - 1) * a.conv_dim() +
                        int64_t{a.num_v_heads} * a.k_head_dim * a.v_head_dim));
  EXPECT_EQ(model->cache_state_bytes(), state);
  EXPECT_EQ(model->cache_bytes_per_token(), small[3].bytes_per_token());

  // A run through the cache leaves the state's size as it was.
  const int B = 1, n = 12;
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = 3 + i;
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  model->forward(ids.data(), B, n, large, logits.data());
  int64_t after = 0;
  for (const auto& k : large) after += k.state_bytes();
  EXPECT_EQ(after, state);
}

TEST(Qwen3Next, FixtureConfigsAreRead) {
  const ModelConfig c = load_hf_config(fixture("qwen3_next") + "/config.json");
  EXPECT_EQ(c.model_type, "qwen3_next");
  EXPECT_EQ(c.linear_layers, (std::vector<bool>{true, true, true, false}));
  EXPECT_TRUE(c.attn_output_gate);
  EXPECT_EQ(c.rotary_dim(), 6);  // 0.5 of head_dim 12
  EXPECT_EQ(c.linear.num_k_heads, 2);
  EXPECT_EQ(c.linear.num_v_heads, 4);
  EXPECT_FALSE(c.is_moe_layer(1));  // mlp_only_layers
  EXPECT_TRUE(c.moe.shared_expert_gate);
  EXPECT_TRUE(c.moe.norm_topk_prob);
  const ModelConfig q = load_hf_config(fixture("qwen3_5_moe_fused") + "/config.json");
  EXPECT_EQ(q.model_type, "qwen3_5_moe");
  EXPECT_EQ(q.rope_theta, 1e7);  // from rope_parameters
  EXPECT_EQ(q.rotary_dim(), 6);
  EXPECT_EQ(hf_model_prefix(q), "model.language_model.");
  for (int l = 0; l < q.num_hidden_layers; ++l) EXPECT_TRUE(q.is_moe_layer(l));
}

// Defaults of Qwen3NextConfig (documented as Qwen3-Next-80B-A3B's shape: 48 layers, d 2048,
// 512 experts of 512, top-10, one shared expert of 512, vocabulary 151936) and
// Qwen3_5MoeTextConfig (Qwen3.5-35B-A3B: 40 layers, 256 experts, top-8, vocabulary 248320; the
// dimensions the Qwen3.5 / 3.6-35B-A3B model cards list: DeltaNet 16 QK / 32 V heads of 128,
// attention 16 Q / 2 KV heads of 256, RoPE on 64 of them, every 4th layer full attention).
// Published: 80B total / 3B active and 35B / 3B. The totals round to the names; "A3B" names the
// billions a token uses rounded down (every parameter it touches, embedding row and head
// included: 3.87B and 3.45B by this count).
TEST(Qwen3Next, ParameterAccountingOfThePublishedModels) {
  const ModelConfig next =
      model_config_from_hf(nlohmann::json{{"model_type", "qwen3_next"}}, "80b");
  EXPECT_EQ(next.num_hidden_layers, 48);
  EXPECT_EQ(next.rotary_dim(), 64);
  const ModelConfig q35 = model_config_from_hf(
      nlohmann::json{{"model_type", "qwen3_5_moe"}, {"text_config", nlohmann::json::object()}},
      "35b");
  EXPECT_EQ(q35.num_local_experts, 256);
  struct Case {
    const ModelConfig& c;
    double total_b, active_b;
  };
  for (const Case& k : {Case{next, 80, 3}, Case{q35, 35, 3}}) {
    const ParameterCount n = count_parameters(k.c);
    EXPECT_EQ(std::round(n.total / 1e9), k.total_b) << k.c.model_type << ": " << n.total;
    EXPECT_EQ(std::floor(n.active / 1e9), k.active_b) << k.c.model_type << ": " << n.active;
  }
  // The pieces by hand for one DeltaNet layer of Qwen3-Next: in_proj_qkvz 2048 x 12288,
  // in_proj_ba 2048 x 64, conv 8192 x 4, A_log + dt_bias 64, norm 128, out_proj 4096 x 2048.
  ModelConfig one = next;
  one.num_hidden_layers = 1;
  one.linear_layers = {true};
  one.num_local_experts = 0;
  one.mlp_only_layers.clear();
  const int64_t gdn = 2048LL * 12288 + 2048 * 64 + 8192 * 4 + 64 + 128 + 4096LL * 2048;
  const int64_t rest = 2 * 151936LL * 2048 + 2048 + 2 * 2048 + 3 * 2048LL * 5632;
  EXPECT_EQ(count_parameters(one).total, gdn + rest);
}

void copy_fixture(const char* name, const TempDir& to) {
  test::copy_dir_files(fixture(name), to);
}
using test::edit_config;
using test::error_of;

TEST(Qwen3Next, BadConfigsAreRefusedByName) {
  struct Case {
    const char* fixture;
    std::function<void(nlohmann::json&)> edit;
    const char* key;
  };
  const std::vector<Case> cases = {
      {"qwen3_next", [](nlohmann::json& j) { j["layer_types"][1] = "mamba"; }, "layer_types[1]"},
      {"qwen3_next", [](nlohmann::json& j) { j["layer_types"].erase(0); }, "layer_types"},
      {"qwen3_next", [](nlohmann::json& j) { j["linear_num_value_heads"] = 3; },
       "linear_num_value_heads"},
      {"qwen3_next", [](nlohmann::json& j) { j["linear_conv_kernel_dim"] = 0; },
       "linear_conv_kernel_dim"},
      {"qwen3_next", [](nlohmann::json& j) { j["attention_bias"] = true; }, "attention_bias"},
      {"qwen3_next", [](nlohmann::json& j) { j["hidden_act"] = "gelu"; }, "hidden_act"},
      {"qwen3_next", [](nlohmann::json& j) { j["partial_rotary_factor"] = 0.01; },
       "partial_rotary_factor"},
      {"qwen3_5_moe_fused", [](nlohmann::json& j) { j.erase("text_config"); }, "text_config"},
      {"qwen3_5_moe_fused", [](nlohmann::json& j) { j["text_config"]["mlp_only_layers"] = {1}; },
       "mlp_only_layers"},
  };
  for (const Case& k : cases) {
    TempDir dir;
    copy_fixture(k.fixture, dir);
    edit_config(dir, k.edit);
    const std::string msg = error_of([&] { InferenceModel::load(dir.path().string()); });
    EXPECT_NE(msg.find(k.key), std::string::npos) << k.key << ": " << msg;
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(".cpp"), std::string::npos) << msg;  // no source location
  }
}

TEST(Qwen3Next, MissingDeltaNetTensorIsNamed) {
  TempDir dir;
  copy_fixture("qwen3_5_moe_fused", dir);
  // Rename one tensor in the header in place: the loader must name the one it misses.
  const std::string path = dir.file("model.safetensors");
  std::string blob;
  {
    std::ifstream in(path, std::ios::binary);
    blob.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string from = "layers.1.linear_attn.A_log", to = "layers.1.linear_attn.B_log";
  const size_t at = blob.find(from);
  ASSERT_NE(at, std::string::npos);
  blob.replace(at, from.size(), to);
  std::ofstream(path, std::ios::binary) << blob;
  const std::string msg = error_of([&] { InferenceModel::load(dir.path().string()); });
  EXPECT_NE(msg.find("model.language_model.layers.1.linear_attn.A_log"), std::string::npos) << msg;
}

TEST(Qwen3Next, TrainingIsRefused) {
  for (const char* name : {"qwen3_next", "qwen3_5_moe_fused"}) {
    const std::string msg = error_of([&] { load_trainable_model(fixture(name)); });
    EXPECT_NE(msg.find("inference only"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace moe
