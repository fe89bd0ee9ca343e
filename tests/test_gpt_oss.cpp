// gpt_oss (Hugging Face checkpoints of gpt-oss-20b / -120b): the config reading, parameter
// accounting from the published configs, the sliding-window + sink attention through the cache
// over prompts longer than the window, and what is refused. The logits and greedy tokens against
// the independent PyTorch reference (tools/reference/gpt_oss_reference.py) are the "gpt_oss" case
// of HfFamily in test_hf_checkpoint.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gguf_fixture.h"
#include "moe/attention.h"
#include "moe/generate.h"
#include "moe/gguf_model.h"
#include "moe/hf_checkpoint.h"
#include "moe/inference_model.h"
#include "moe/quant.h"
#include "moe/rng.h"
#include "moe/trainable_model.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string fixture() {
  return std::string(MOE_FIXTURE_DIR) + "/hf/gpt_oss";
}

// The config.json keys of openai/gpt-oss-20b (layers 24, experts 32) or -120b (36, 128).
nlohmann::json published_config(int layers, int experts) {
  nlohmann::json types = nlohmann::json::array();
  for (int l = 0; l < layers; ++l)
    types.push_back(l % 2 == 0 ? "sliding_attention" : "full_attention");
  return {{"architectures", {"GptOssForCausalLM"}},
          {"attention_bias", true},
          {"attention_dropout", 0.0},
          {"eos_token_id", 200002},
          {"experts_per_token", 4},
          {"head_dim", 64},
          {"hidden_act", "silu"},
          {"hidden_size", 2880},
          {"initial_context_length", 4096},
          {"initializer_range", 0.02},
          {"intermediate_size", 2880},
          {"layer_types", types},
          {"max_position_embeddings", 131072},
          {"model_type", "gpt_oss"},
          {"num_attention_heads", 64},
          {"num_experts_per_tok", 4},
          {"num_hidden_layers", layers},
          {"num_key_value_heads", 8},
          {"num_local_experts", experts},
          {"output_router_logits", false},
          {"pad_token_id", 199999},
          {"rms_norm_eps", 1e-05},
          {"rope_scaling",
           {{"beta_fast", 32.0},
            {"beta_slow", 1.0},
            {"factor", 32.0},
            {"original_max_position_embeddings", 4096},
            {"rope_type", "yarn"},
            {"truncate", false}}},
          {"rope_theta", 150000},
          {"router_aux_loss_coef", 0.9},
          {"sliding_window", 128},
          {"swiglu_limit", 7.0},
          {"tie_word_embeddings", false},
          {"use_cache", true},
          {"vocab_size", 201088}};
}

TEST(GptOss, PublishedConfigIsRead) {
  const ModelConfig c = model_config_from_hf(published_config(24, 32), "gpt-oss-20b");
  EXPECT_EQ(c.model_type, "gpt_oss");
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.num_local_experts, 32);
  EXPECT_EQ(c.moe.num_experts_per_tok, 4);
  EXPECT_EQ(c.head_size(), 64);
  EXPECT_EQ(c.window_of(0), 128);
  EXPECT_EQ(c.window_of(1), 0);
  EXPECT_EQ(c.window_of(22), 128);
  EXPECT_TRUE(c.attention_sinks && c.o_bias && c.router_bias && c.expert_bias && c.attention_bias);
  EXPECT_EQ(c.moe.hidden_act, Activation::ClampedSwiGLU);
  EXPECT_EQ(c.moe.scoring_func, ScoreFunc::Softmax);
  EXPECT_TRUE(c.moe.norm_topk_prob);  // softmax over the k selected logits
  EXPECT_EQ(c.swiglu_limit, 7.0);
  EXPECT_EQ(c.rope_scaling.type, RopeType::Yarn);
  EXPECT_FALSE(c.rope_scaling.truncate);
  EXPECT_EQ(c.context_length(), 131072);
  // GptOssConfig's defaults are gpt-oss-120b's shape.
  const ModelConfig d = model_config_from_hf(nlohmann::json{{"model_type", "gpt_oss"}}, "defaults");
  EXPECT_EQ(d.num_hidden_layers, 36);
  EXPECT_EQ(d.num_local_experts, 128);
  EXPECT_EQ(d.window_of(0), 128);
  EXPECT_EQ(d.window_of(35), 0);
  EXPECT_EQ(d.rope_scaling.type, RopeType::Yarn);
}

// OpenAI's model card: gpt-oss-20b 20.9B total / 3.6B active, gpt-oss-120b 116.8B / 5.1B.
// Its active count leaves out the embedding table (a lookup, no compute); the unembedding counts.
TEST(GptOss, ParameterAccountingOfThePublishedModels) {
  struct Case {
    int layers, experts;
    double total_b, active_b;
  };
  for (const Case& k : {Case{24, 32, 20.9, 3.6}, Case{36, 128, 116.8, 5.1}}) {
    const ModelConfig c = model_config_from_hf(published_config(k.layers, k.experts), "published");
    const ParameterCount n = count_parameters(c);
    const int64_t embedding = int64_t{c.vocab_size} * c.hidden_size;
    EXPECT_EQ(std::round(n.total / 1e8) / 10, k.total_b) << k.layers << " layers: " << n.total;
    EXPECT_EQ(std::round((n.active - embedding) / 1e8) / 10, k.active_b)
        << k.layers << " layers: " << n.active;
  }
}

TEST(GptOss, FixtureConfigIsRead) {
  const ModelConfig c = load_hf_config(fixture() + "/config.json");
  EXPECT_EQ(c.window_of(0), 4);  // a window shorter than the fixture's 7 + 8 positions
  EXPECT_EQ(c.window_of(1), 0);
  EXPECT_EQ(c.swiglu_limit, 1.5);
}

// Prompts three times the window: the whole prompt at once, then one token at a time, then in
// chunks of 5 through the cache all give the same logits at every position.
TEST(GptOss, CachedLogitsEqualTheFullForwardPastTheWindow) {
  test::ExactBf16Path exact;  // prefill and decode round x alike (no bf16 GEMM for n > 4)
  auto model = InferenceModel::load(fixture());
  const ModelConfig& c = model->config();
  const int B = 2, S = 3 * c.sliding_window + 1;
  const int64_t V = c.vocab_size;
  Rng rng(7);
  std::vector<int32_t> ids(static_cast<size_t>(B * S));
  for (auto& t : ids) t = 3 + static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(V - 3));
  std::vector<float> full(static_cast<size_t>(B * S * V));
  auto caches = model->new_caches(B, S);
  model->forward(ids.data(), B, S, caches, full.data(), /*all_logits=*/true);

  // Sliding layers keep a ring of their window: its bytes never grow, full layers' hold S.
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const int w = c.window_of(l);
    EXPECT_EQ(caches[l].capacity, w > 0 ? w : S) << "layer " << l;
  }
  for (int chunk : {1, 5}) {
    auto step = model->new_caches(B, S);
    std::vector<int64_t> bytes;
    for (const auto& k : step) bytes.push_back(k.bytes());
    for (int t0 = 0; t0 < S; t0 += chunk) {
      const int n = std::min(chunk, S - t0);
      std::vector<int32_t> part(static_cast<size_t>(B * n));
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < n; ++t) part[b * n + t] = ids[b * S + t0 + t];
      std::vector<float> got(static_cast<size_t>(B * n * V));
      model->forward(part.data(), B, n, step, got.data(), /*all_logits=*/true);
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < n; ++t)
          test::expect_close(
              "chunk " + std::to_string(chunk) + " position " + std::to_string(t0 + t),
              got.data() + (b * n + t) * V, full.data() + (b * S + t0 + t) * V, V, 1e-5);
      for (int l = 0; l < c.num_hidden_layers; ++l) {
        ASSERT_EQ(step[l].bytes(), bytes[l]) << "layer " << l << " grew at " << t0 + n;
        if (c.window_of(l) > 0) {
          ASSERT_EQ(step[l].bytes(),
                    int64_t{B} * c.window_of(l) * 2 * step[l].kv_dim * int64_t{sizeof(float)});
        }
      }
    }
  }
}

// The ring of a sliding layer against the plain cache of the same window, through
// cached_attention: one token at a time and in chunks (shorter and longer than the window), with
// and without sinks, 4x past the window.
TEST(GptOss, RingCacheEqualsThePlainCache) {
  const int B = 2, H = 4, G = 2, hd = 8, window = 5, S = 4 * window + 3;
  const int64_t qd = H * hd, kvd = G * hd;
  Rng rng(11);
  std::vector<float> q(B * S * qd), k(B * S * kvd), v(B * S * kvd);
  for (auto* x : {&q, &k, &v}) rng.fill_normal(x->data(), static_cast<int64_t>(x->size()), 0, 1);
  const float sinks[H] = {0.3f, -0.7f, 1.1f, 0.0f};
  // rows of positions t0..t0+n of every sequence, row-major [B*n, width]
  auto rows = [&](const std::vector<float>& x, int64_t width, int t0, int n) {
    std::vector<float> r(static_cast<size_t>(B * n * width));
    for (int b = 0; b < B; ++b)
      std::copy_n(x.data() + (b * S + t0) * width, n * width, r.data() + b * n * width);
    return r;
  };
  for (const float* sk : {static_cast<const float*>(nullptr), sinks})
    for (int chunk : {1, 3, 7, S}) {
      KvCache<float> plain, ring;
      plain.reset(B, S, static_cast<int>(kvd));
      ring.reset(B, S, static_cast<int>(kvd), -1, window);
      ASSERT_EQ(ring.capacity, window);
      const int64_t ring_bytes = ring.bytes();
      std::vector<float> scratch, a, b2;
      for (int t0 = 0; t0 < S; t0 += chunk) {
        const int n = std::min(chunk, S - t0);
        const auto qq = rows(q, qd, t0, n), kk = rows(k, kvd, t0, n), vv = rows(v, kvd, t0, n);
        a.assign(qq.size(), 0.0f);
        b2.assign(qq.size(), 1.0f);
        cached_attention(qq.data(), kk.data(), vv.data(), B, n, H, G, hd, plain, a.data(), scratch,
                         window, sk);
        cached_attention(qq.data(), kk.data(), vv.data(), B, n, H, G, hd, ring, b2.data(), scratch,
                         window, sk);
        test::expect_close("chunk " + std::to_string(chunk) + " at " + std::to_string(t0),
                           b2.data(), a.data(), static_cast<int64_t>(a.size()), 1e-6);
        EXPECT_EQ(ring.length, t0 + n);
        EXPECT_EQ(ring.bytes(), ring_bytes);
      }
    }
  KvCache<float> ring;
  ring.reset(1, 16, static_cast<int>(kvd), -1, window);
  std::vector<float> scratch, o(qd);
  EXPECT_THROW(cached_attention(q.data(), k.data(), v.data(), 1, 1, H, G, hd, ring, o.data(),
                                scratch, window + 1),
               Error);
}

// The sink and the window change what cached_attention computes (and nothing else does).
TEST(GptOss, SinksAndWindowInCachedAttention) {
  const int B = 1, n = 6, H = 2, G = 1, hd = 4;
  Rng rng(3);
  std::vector<float> q(n * H * hd), k(n * G * hd), v(n * G * hd);
  rng.fill_normal(q.data(), static_cast<int64_t>(q.size()), 0, 1);
  rng.fill_normal(k.data(), static_cast<int64_t>(k.size()), 0, 1);
  rng.fill_normal(v.data(), static_cast<int64_t>(v.size()), 0, 1);
  const float sinks[H] = {0.5f, -1.0f};
  std::vector<float> scratch, o(n * H * hd);
  KvCache<float> cache;
  cache.reset(B, n, G * hd);
  const int window = 3;
  cached_attention(q.data(), k.data(), v.data(), B, n, H, G, hd, cache, o.data(), scratch, window,
                   sinks);
  for (int h = 0; h < H; ++h)
    for (int t = 0; t < n; ++t) {
      // softmax over keys max(0, t - 2)..t and the sink, in double
      double m = sinks[h], den = 0;
      std::vector<double> z;
      for (int j = std::max(0, t - window + 1); j <= t; ++j) {
        double s = 0;
        for (int i = 0; i < hd; ++i) s += double(q[(t * H + h) * hd + i]) * k[j * hd + i];
        z.push_back(s / 2.0);  // 1 / sqrt(hd)
        m = std::max(m, z.back());
      }
      den = std::exp(sinks[h] - m);
      for (double s : z) den += std::exp(s - m);
      for (int i = 0; i < hd; ++i) {
        double want = 0;
        for (size_t a = 0; a < z.size(); ++a)
          want += std::exp(z[a] - m) / den * v[(std::max(0, t - window + 1) + a) * hd + i];
        EXPECT_NEAR(o[(t * H + h) * hd + i], want, 1e-5) << "head " << h << " t " << t;
      }
    }
}

// The released checkpoints' MXFP4 experts (*_blocks + *_scales), regrouped into ggml's MXFP4 at
// load and computed by the int8 kernels against Q8_0 activations, as llama.cpp runs them. The
// reference computes in float64 with unrounded activations; rounding the expert inputs to Q8_0
// in the reference alone moves this fixture's logits by 1.2e-2 (L2-normalized; its experts are
// 64 wide), and the engine is measured at 1.4e-2. The layout (nibble order, scales, the
// interleaved rows) is what makes the greedy tokens agree; the decoder of the blocks is checked
// bit for bit in test_quant and the kernels against their oracle in test_quant_kernels.
TEST(GptOss, Mxfp4CheckpointMatchesReference) {
  test::ExactBf16Path exact;
  const std::string dir = std::string(MOE_FIXTURE_DIR) + "/hf/gpt_oss_mxfp4";
  auto model = InferenceModel::load(dir);
  EXPECT_EQ(model->weight_type(), GgmlType::MXFP4);
  EXPECT_NE(model->weight_types().find("MXFP4"), std::string::npos) << model->weight_types();
  const auto expected = SafeTensorsFile::open(dir + "/expected.safetensors");
  const auto ids = expected.read<int32_t>("input_ids");
  const auto ref = expected.read<float>("logits");
  const auto greedy = expected.read<int32_t>("greedy");
  const int B = static_cast<int>(ids.shape()[0]), S = static_cast<int>(ids.shape()[1]);
  const int64_t V = model->config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(B * S * V));
  auto caches = model->new_caches(B, S);
  model->forward(ids.data(), B, S, caches, logits.data(), /*all_logits=*/true);
  test::expect_close("mxfp4 logits", logits.data(), ref.data(), ref.numel(), 3e-2);

  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) prompts[b].assign(ids.data() + b * S, ids.data() + (b + 1) * S);
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int>(greedy.shape()[1]);
  opt.sampling.temperature = 0;
  opt.stop_at_eos = false;
  const auto out = generate(*model, prompts, opt, -1);
  for (int b = 0; b < B; ++b)
    EXPECT_EQ(out[b], std::vector<int32_t>(greedy.data() + b * opt.max_new_tokens,
                                           greedy.data() + (b + 1) * opt.max_new_tokens))
        << "sequence " << b;
}

void copy_fixture(const TempDir& to) {
  test::copy_dir_files(fixture(), to);
}
using test::edit_config;

TEST(GptOssErrors, BadKeysAreOneLineNamingThem) {
  TempDir d("gpt_oss_bad");
  copy_fixture(d);
  edit_config(d, [](nlohmann::json& j) { j["layer_types"] = {"sliding_attention"}; });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", "layer_types");
  edit_config(d, [](nlohmann::json& j) {
    j["layer_types"] = {"sliding_attention", "chunked_attention"};
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", "layer_types[1]",
                   "chunked_attention");
  edit_config(d, [](nlohmann::json& j) {
    j["layer_types"] = {"sliding_attention", "full_attention"};
    j["attention_bias"] = false;
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", "attention_bias");
  edit_config(d, [](nlohmann::json& j) {
    j["attention_bias"] = true;
    j["swiglu_limit"] = -1.0;
  });
  EXPECT_MOE_ERROR(InferenceModel::load(d.str()), "config.json", "swiglu_limit");
}

// ---- GGUF (llama.cpp's gpt-oss architecture) -------------------------------------------------

using test::write_hf_as_gguf;

// All logits of two sequences of 3 windows and a bit, in one prefill, then one token through the
// cache.
std::vector<float> all_logits(InferenceModel& m) {
  const ModelConfig& c = m.config();
  const int B = 2, S = 3 * c.sliding_window + 1;
  const int64_t V = c.vocab_size;
  std::vector<int32_t> ids(static_cast<size_t>(B * S));
  for (int i = 0; i < B * S; ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % V);
  std::vector<float> out(static_cast<size_t>(B * (S + 1) * V));
  auto caches = m.new_caches(B, S + 1);
  m.forward(ids.data(), B, S, caches, out.data(), /*all_logits=*/true);
  const int32_t next[2] = {3, 7};
  m.forward(next, B, 1, caches, out.data() + B * S * V, /*all_logits=*/true);
  return out;
}

// HF -> GGUF f32 -> the same config and the same logits (the weights are the same values).
TEST(GptOssGguf, F32GivesTheLogitsOfTheDirectory) {
  test::ExactBf16Path exact;
  TempDir dir;
  const std::string path = write_hf_as_gguf(fixture(), dir.file("m.gguf"), "f32");
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.string("general.architecture"), "gpt-oss");
  for (const char* t :
       {"blk.0.attn_sinks.weight", "blk.0.attn_output.bias", "blk.0.post_attention_norm.weight",
        "blk.1.ffn_gate_inp.bias", "blk.1.ffn_gate_exps.bias", "blk.1.ffn_up_exps.bias",
        "blk.1.ffn_down_exps.bias", "blk.1.ffn_gate_exps.weight"})
    EXPECT_TRUE(f.has_tensor(t)) << t;
  EXPECT_EQ(f.value("gpt-oss.attention.sliding_window").as_int(), 4);
  EXPECT_EQ(f.value("gpt-oss.expert_feed_forward_length").as_int(), 32);
  auto a = InferenceModel::load(fixture());
  auto b = InferenceModel::load(path);
  const ModelConfig &ca = a->config(), &cb = b->config();
  EXPECT_EQ(cb.model_type, "gpt_oss");
  EXPECT_EQ(cb.window_of(0), 4);
  EXPECT_EQ(cb.window_of(1), 0);
  EXPECT_EQ(cb.swiglu_limit, ca.swiglu_limit);
  EXPECT_EQ(cb.rope_scaling.type, RopeType::Yarn);
  EXPECT_FALSE(cb.rope_scaling.truncate);
  EXPECT_EQ(cb.rope_scaling.factor, ca.rope_scaling.factor);
  EXPECT_EQ(cb.rope_scaling.original_max_position_embeddings,
            ca.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(count_parameters(cb).total, count_parameters(ca).total);
  const auto la = all_logits(*a), lb = all_logits(*b);
  test::expect_close("gguf f32 logits", lb.data(), la.data(), static_cast<int64_t>(la.size()),
                     1e-5);
}

// The released MXFP4 experts go into the GGUF file bit for bit (no requantization): the model
// read back has the same expert blocks and the same logits as the directory. The same experts
// widened to f32 in one file and quantized to MXFP4 from those floats in the next decode to the
// same values again (a block whose largest code is not 8 or 12 gets a smaller exponent and the
// same values: E2M1's grid doubled or quadrupled holds the smaller one).
TEST(GptOssGguf, Mxfp4ExpertsAreCopiedBitForBit) {
  test::ExactBf16Path exact;
  TempDir dir;
  const std::string hf = std::string(MOE_FIXTURE_DIR) + "/hf/gpt_oss_mxfp4";
  const std::string path = write_hf_as_gguf(hf, dir.file("m.gguf"), "f32", "mxfp4");
  auto a = InferenceModel::load(hf);
  auto b = InferenceModel::load(path);
  EXPECT_EQ(b->weight_type(), GgmlType::MXFP4);
  const GgufFile* f = b->gguf();
  ASSERT_NE(f, nullptr);
  int mxfp4 = 0;
  for (const GgufTensorInfo& t : f->tensors()) mxfp4 += t.type == 39 ? 1 : 0;
  EXPECT_EQ(mxfp4, 3 * a->config().num_hidden_layers);
  const auto la = all_logits(*a), lb = all_logits(*b);
  test::expect_close("gguf mxfp4 logits", lb.data(), la.data(), static_cast<int64_t>(la.size()),
                     1e-6);

  // f32 experts (decoded), then MXFP4 from those floats through the GGUF -> GGUF path.
  const std::string wide = write_hf_as_gguf(hf, dir.file("wide.gguf"), "f32");
  const GgufFile w = GgufFile::open(wide);
  const ModelConfig cw = model_config_from_gguf(w);
  GgufModelWriteOptions opt;
  ASSERT_TRUE(parse_type_scheme("f32", &opt.types));
  opt.types.has_expert_type = true;
  opt.types.expert_type = GgmlType::MXFP4;
  write_gguf_model(cw, *gguf_source_of_gguf(cw, w), dir.file("again.gguf"), opt);
  const GgufFile again = GgufFile::open(dir.file("again.gguf"));
  for (const GgufTensorInfo& t : f->tensors()) {
    if (t.type != 39) continue;
    const GgufTensorInfo& u = again.tensor(t.name);
    ASSERT_EQ(u.type, 39u) << t.name;
    ASSERT_EQ(u.nbytes, t.nbytes) << t.name;
    const int64_t n = t.numel();
    std::vector<float> x(static_cast<size_t>(n)), y(x.size());
    dequantize_row(GgmlType::MXFP4, f->data(t), x.data(), n);
    dequantize_row(GgmlType::MXFP4, again.data(u), y.data(), n);
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * 4), 0) << t.name;
  }
}

TEST(GptOssGguf, OtherLayerPatternsAreRefusedByName) {
  TempDir d("gpt_oss_pattern");
  copy_fixture(d);
  edit_config(d, [](nlohmann::json& j) {
    j["layer_types"] = {"full_attention", "sliding_attention"};
  });
  EXPECT_MOE_ERROR(write_hf_as_gguf(d.str(), d.file("m.gguf"), "f32"), "layer_types[0]", "even");
}

TEST(GptOssErrors, TrainingIsRefusedByName) {
  EXPECT_MOE_ERROR(load_trainable_model(fixture()), "gpt_oss", "inference only");
}

}  // namespace
}  // namespace moe
