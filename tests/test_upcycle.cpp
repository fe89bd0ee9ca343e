// Sparse upcycling (upcycle.h): the upcycled model computes the dense model's function (logits
// to kSameFunction of their scale on a batch of prompts) for each dense Hugging Face family fixture
// and for a dense run, with whole copies and with fine-grained slices; the tensors are the slices
// and routers the header describes; bad input is one clear line and leaves nothing behind.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "moe/hf_checkpoint.h"
#include "moe/inference_model.h"
#include "moe/model_config.h"
#include "moe/rng.h"
#include "moe/safetensors.h"
#include "moe/trainable_model.h"
#include "moe/trainer.h"
#include "moe/transformer.h"
#include "moe/upcycle.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string fixture(const std::string& name) {
  return std::string(MOE_FIXTURE_DIR) + "/hf/" + name;
}

double normalized_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

// "The same function" in fp32: the dense FFN and the experts multiply the same weights with
// different kernels (an expert's few rows run the in-place row tiles of core/linear_rows, the
// dense FFN's many rows the GEMM), so their sums round in other orders: a few units of fp32's
// 6e-8 through the layers. A wrong slice, router or scale moves the logits by 1e-2 or more.
constexpr double kSameFunction = 4e-6;

// B prompts of S random tokens (ids 3..V-1), all positions' logits [B*S, V].
constexpr int kBatch = 3, kLen = 10;
std::vector<int32_t> prompts(int vocab) {
  Rng rng(99);
  std::vector<int32_t> ids(kBatch * kLen);
  for (auto& t : ids) t = static_cast<int32_t>(3 + rng.below(static_cast<uint64_t>(vocab - 3)));
  return ids;
}
std::vector<float> logits_of(Decoder& m, const std::vector<int32_t>& ids) {
  std::vector<float> out(ids.size() * static_cast<size_t>(m.config().vocab_size));
  auto caches = m.new_caches(kBatch, kLen);
  m.forward(ids.data(), kBatch, kLen, caches, out.data(), /*all_logits=*/true);
  return out;
}

// Every file of a directory and its bytes: what "never written" is checked against.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    out[e.path().string()] = ss.str();
  }
  return out;
}

// With MOE_EXPORT_DIR set, keeps a copy of an upcycled checkpoint with the prompts and the
// *dense* model's logits, for tools/reference/check_hf_export.py: the independent reference
// run on the upcycled files must give the dense function (and find exactly the family's
// tensors).
void keep_upcycled(const std::string& dir, const std::string& name, const std::vector<int32_t>& ids,
                   const std::vector<float>& dense_logits) {
  const char* root = std::getenv("MOE_EXPORT_DIR");
  if (!root || !*root) return;
  const fs::path out = fs::path(root) / name;
  fs::create_directories(out);
  for (const auto& e : fs::directory_iterator(dir))
    fs::copy_file(e.path(), out / e.path().filename(), fs::copy_options::overwrite_existing);
  SafeTensorsWriter w;
  const int64_t V = static_cast<int64_t>(dense_logits.size()) / (kBatch * kLen);
  w.add<int32_t>("input_ids", {kBatch, kLen}, ids.data(), DType::I32);
  w.add<float>("logits", {kBatch, kLen, V}, dense_logits.data(), DType::F32);
  w.write((out / "expected.safetensors").string());
}

struct Case {
  const char* family;
  int experts, top_k, granularity;
};
std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  return fmt::format("{}_E{}_K{}_G{}", i.param.family, i.param.experts, i.param.top_k,
                     i.param.granularity);
}

class UpcycleHf : public ::testing::TestWithParam<Case> {};

TEST_P(UpcycleHf, ComputesTheDenseFunction) {
  test::ExactBf16Path exact;
  const Case& p = GetParam();
  TempDir tmp("upcycle");
  const std::string out = tmp.file("moe");
  const UpcycleResult r =
      upcycle(fixture(p.family), out, {p.experts, p.top_k, p.granularity, /*seed=*/7});
  EXPECT_TRUE(r.starts_dense);
  EXPECT_EQ(r.family, upcycled_family(p.family));
  auto dense = InferenceModel::load(fixture(p.family));
  auto moe = InferenceModel::load(out);
  EXPECT_EQ(moe->config().model_type, r.family);
  EXPECT_EQ(moe->config().num_local_experts, p.experts);
  EXPECT_EQ(moe->config().intermediate_size, dense->config().intermediate_size / p.granularity);
  const auto ids = prompts(dense->config().vocab_size);
  const auto want = logits_of(*dense, ids);
  EXPECT_LT(normalized_error(logits_of(*moe, ids), want), kSameFunction);
  keep_upcycled(out, "upcycled_" + case_name({p, 0}), ids, want);
}

// All logits [B*S, V] of the trainable model (what `moe train --init-from` starts from).
std::vector<float> logits_of(Transformer<float>& m, const std::vector<int32_t>& ids) {
  m.forward(ids.data(), nullptr, kBatch, kLen);
  return std::vector<float>(m.logits(), m.logits() + ids.size() * m.config().vocab_size);
}

// `moe train --init-from` the upcycled checkpoint starts from the dense function too.
TEST_P(UpcycleHf, TrainingStartsFromTheDenseFunction) {
  test::ExactBf16Path exact;
  const Case& p = GetParam();
  TempDir tmp("upcycle");
  if (p.top_k == 1) {
    // The trainable Router gates k = 1 by the raw probability (the Switch gate) where Hugging
    // Face's families renormalize it to 1 (InferenceModel does): refused in one line.
    upcycle(fixture(p.family), tmp.file("moe"), {p.experts, p.top_k, p.granularity, 7});
    test::expect_error([&] { load_trainable_model(tmp.file("moe")); },
                       {"num_experts_per_tok = 1", "cannot be fine-tuned"});
    return;
  }
  upcycle(fixture(p.family), tmp.file("moe"), {p.experts, p.top_k, p.granularity, 7});
  TrainableModel t = load_trainable_model(tmp.file("moe"));
  auto dense = InferenceModel::load(fixture(p.family));
  const auto ids = prompts(dense->config().vocab_size);
  EXPECT_LT(normalized_error(logits_of(*t.model, ids), logits_of(*dense, ids)), kSameFunction);
}

INSTANTIATE_TEST_SUITE_P(Families, UpcycleHf,
                         ::testing::Values(Case{"llama", 4, 2, 1}, Case{"llama", 8, 2, 2},
                                           Case{"llama", 8, 4, 4}, Case{"mistral", 4, 2, 1},
                                           Case{"mistral", 8, 2, 2}, Case{"qwen2", 4, 2, 1},
                                           Case{"qwen2", 8, 4, 2}, Case{"qwen3", 4, 1, 1},
                                           Case{"qwen3", 8, 2, 2}),
                         case_name);

// Top-k not a multiple of the granularity: each token gets part of the MLP, so the function
// moves (the identity above is not vacuous).
TEST(Upcycle, PartialSlicesDoNotStartDense) {
  TempDir tmp("upcycle");
  const UpcycleResult r = upcycle(fixture("llama"), tmp.file("moe"), {4, 1, 2, 7});
  EXPECT_FALSE(r.starts_dense);
  auto dense = InferenceModel::load(fixture("llama"));
  auto moe = InferenceModel::load(tmp.file("moe"));
  const auto ids = prompts(dense->config().vocab_size);
  EXPECT_GT(normalized_error(logits_of(*moe, ids), logits_of(*dense, ids)), 1e-3);
}

// The tensors: slices of the dense MLP (down_proj scaled by G), one router row per virtual
// group, a qwen2_moe shared expert that adds zero, everything else copied in its stored type.
TEST(Upcycle, TensorsAreSlicesAndGroupedRouters) {
  TempDir tmp("upcycle");
  const int E = 8, K = 2, G = 2;
  upcycle(fixture("qwen2"), tmp.file("a"), {E, K, G, 5});
  const ModelConfig dc = load_hf_config(fixture("qwen2") + "/config.json");
  const ModelConfig oc = load_hf_config(tmp.file("a") + "/config.json");
  EXPECT_EQ(oc.model_type, "qwen2_moe");
  EXPECT_TRUE(oc.moe.norm_topk_prob);
  EXPECT_TRUE(oc.attention_bias);
  EXPECT_EQ(oc.moe.n_shared_experts, 1);
  EXPECT_EQ(oc.moe.shared_expert_intermediate_size, oc.intermediate_size);
  const HfWeights dw = HfWeights::open(fixture("qwen2"));
  const HfWeights ow = HfWeights::open(tmp.file("a"));
  const int64_t d = dc.hidden_size, I = dc.intermediate_size, W = I / G;
  for (int l = 0; l < dc.num_hidden_layers; ++l) {
    auto dense = [&](HfTensor t, Shape s) {
      const std::string n = hf_tensor_name(dc, l, t);
      EXPECT_EQ(dw.entry(n).dtype, DType::F16);
      return dw.file_of(n).read<float>(n, s);
    };
    auto moe = [&](HfTensor t, Shape s, int e = -1) {
      const std::string n = hf_tensor_name(oc, l, t, e);
      return ow.file_of(n).read<float>(n, s);
    };
    const auto gate = dense(HfTensor::DenseGate, {I, d});
    const auto down = dense(HfTensor::DenseDown, {d, I});
    for (int e = 0; e < E; ++e) {
      const int s = e % G;
      const auto eg = moe(HfTensor::ExpertGate, {W, d}, e);
      const auto ed = moe(HfTensor::ExpertDown, {d, W}, e);
      EXPECT_EQ(ow.entry(hf_tensor_name(oc, l, HfTensor::ExpertDown, e)).dtype, DType::F16);
      for (int64_t i = 0; i < W * d; ++i) ASSERT_EQ(eg.data()[i], gate.data()[s * W * d + i]);
      for (int64_t r = 0; r < d; ++r)
        for (int64_t c = 0; c < W; ++c)
          ASSERT_EQ(ed.data()[r * W + c], G * down.data()[r * I + s * W + c]);
    }
    const auto router = moe(HfTensor::Router, {E, d});
    for (int e = 0; e < E; ++e) {
      const float* row = router.data() + e * d;
      const float* first = router.data() + (e / G) * G * d;  // its group's first row
      for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[j], first[j]);
      if (e % G == 0 && e > 0) {
        EXPECT_NE(row[0], router.data()[(e - G) * d]);
      }
    }
    const auto shared_down = moe(HfTensor::SharedDown, {d, W});
    const auto shared_gate = moe(HfTensor::SharedExpertGate, {1, d});
    for (float v : shared_down.buffer()) ASSERT_EQ(v, 0.0f);
    for (float v : shared_gate.buffer()) ASSERT_EQ(v, 0.0f);
    EXPECT_EQ(moe(HfTensor::QBias, {d}).buffer(), dense(HfTensor::QBias, {d}).buffer());
  }
  // The same seed draws the same routers; another seed others.
  upcycle(fixture("qwen2"), tmp.file("b"), {E, K, G, 5});
  upcycle(fixture("qwen2"), tmp.file("c"), {E, K, G, 6});
  const std::string router0 = hf_tensor_name(oc, 0, HfTensor::Router);
  const auto a = ow.file_of(router0).read<float>(router0).buffer();
  EXPECT_EQ(HfWeights::open(tmp.file("b")).file_of(router0).read<float>(router0).buffer(), a);
  EXPECT_NE(HfWeights::open(tmp.file("c")).file_of(router0).read<float>(router0).buffer(), a);
}

// Past max_shard_bytes the weights go to shards cut between layers, with the index, as
// save_pretrained writes them; the loader reads them and the function is the same.
TEST(Upcycle, ShardsLikeSavePretrained) {
  test::ExactBf16Path exact;
  TempDir tmp("upcycle");
  UpcycleOptions opt{4, 2, 1, 7};
  opt.max_shard_bytes = 100'000;  // one layer's experts are 147 KB
  upcycle(fixture("llama"), tmp.file("moe"), opt);
  EXPECT_FALSE(fs::exists(tmp.file("moe/model.safetensors")));
  const nlohmann::json index =
      nlohmann::json::parse(std::ifstream(tmp.file("moe/model.safetensors.index.json")));
  const auto& map = index["weight_map"];
  EXPECT_EQ(map["model.embed_tokens.weight"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(map["model.layers.0.block_sparse_moe.experts.3.w2.weight"],
            "model-00001-of-00002.safetensors");
  EXPECT_EQ(map["model.layers.1.block_sparse_moe.gate.weight"], "model-00002-of-00002.safetensors");
  int64_t total = 0;
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    const auto file = SafeTensorsFile::open(tmp.file("moe/") + f);
    for (const auto& n : file.names()) total += file.entry(n).end - file.entry(n).begin;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  auto dense = InferenceModel::load(fixture("llama"));
  auto moe = InferenceModel::load(tmp.file("moe"));
  const auto ids = prompts(dense->config().vocab_size);
  EXPECT_LT(normalized_error(logits_of(*moe, ids), logits_of(*dense, ids)), kSameFunction);
}

// A key the dense config leaves out has the dense class's default, not the MoE class's: the
// upcycled config says it explicitly (llama: rope_theta 1e4, rms_norm_eps 1e-6; Mixtral's
// would be 1e6 and 1e-5).
TEST(Upcycle, AbsentKeysKeepTheDenseDefaults) {
  test::ExactBf16Path exact;
  TempDir tmp("upcycle");
  const std::string src = tmp.file("llama");
  fs::copy(fixture("llama"), src);
  nlohmann::json j = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  j.erase("rope_theta");
  j.erase("rms_norm_eps");
  j.erase("max_position_embeddings");
  std::ofstream(src + "/config.json") << j.dump();
  upcycle(src, tmp.file("moe"), {4, 2, 1, 0});
  const ModelConfig c = load_hf_config(tmp.file("moe") + "/config.json");
  EXPECT_EQ(c.rope_theta, 10000);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  auto dense = InferenceModel::load(src);
  auto moe = InferenceModel::load(tmp.file("moe"));
  const auto ids = prompts(dense->config().vocab_size);
  EXPECT_LT(normalized_error(logits_of(*moe, ids), logits_of(*dense, ids)), kSameFunction);
}

// Tokenizer and generation files travel with the checkpoint, byte for byte.
TEST(Upcycle, CopiesTheTokenizerFiles) {
  TempDir tmp("upcycle");
  const std::string src = tmp.file("llama");
  fs::copy(fixture("llama"), src);
  const std::map<std::string, std::string> files = {
      {"tokenizer.json", "{\"model\": {}}\n"},
      {"tokenizer_config.json", "{\"add_bos_token\": true}\n"},
      {"generation_config.json", "{\"do_sample\": false}\n"}};
  for (const auto& [f, text] : files) std::ofstream(src + "/" + f) << text;
  upcycle(src, tmp.file("moe") + "/", {4, 2, 1, 0});  // a trailing slash names the same
  for (const auto& [f, text] : files) {
    std::ifstream in(tmp.file("moe") + "/" + f);
    std::stringstream ss;
    ss << in.rdbuf();
    EXPECT_EQ(ss.str(), text) << f;
  }
}

ModelConfig dense_run_config() {
  ModelConfig c;
  c.vocab_size = 258;  // the byte tokenizer's
  c.hidden_size = 32;
  c.intermediate_size = 16;
  c.dense_intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.num_local_experts = 0;
  c.initializer_range = 0.2;  // layers that move the logits
  c.training.tokenizer = "byte";
  c.training.seq_len = 16;
  c.sync_moe();
  return c;
}

// A run directory as `moe train` leaves it: config.json and model.safetensors.
void write_run(const ModelConfig& c, const std::string& dir) {
  fs::create_directories(dir);
  Rng rng(3);
  Transformer<float> model(c);
  model.init_weights(rng);
  save_model_config(c, dir + "/config.json");
  SafeTensorsWriter w;
  model.save_weights(w, DType::F32);
  w.write(dir + "/model.safetensors");
}

TEST(Upcycle, DenseRunBecomesMixtral) {
  test::ExactBf16Path exact;
  TempDir tmp("upcycle");
  const ModelConfig c = dense_run_config();
  write_run(c, tmp.file("run"));
  LoadedRun run = load_run(tmp.file("run"));
  TransformerLm dense(*run.model);
  const auto ids = prompts(c.vocab_size);
  const auto want = logits_of(dense, ids);
  for (auto [E, K, G] : {std::tuple{4, 2, 1}, std::tuple{8, 2, 2}, std::tuple{6, 3, 3}}) {
    SCOPED_TRACE(fmt::format("E {} K {} G {}", E, K, G));
    const std::string out = tmp.file(fmt::format("moe{}{}{}", E, K, G));
    const UpcycleResult r = upcycle(tmp.file("run"), out, {E, K, G, 1});
    EXPECT_EQ(r.source, "run");
    EXPECT_EQ(r.family, "mixtral");
    EXPECT_TRUE(r.starts_dense);
    EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));  // the byte tokenizer, for generate
    auto moe = InferenceModel::load(out);
    EXPECT_EQ(moe->config().intermediate_size, 48 / G);
    EXPECT_LT(normalized_error(logits_of(*moe, ids), want), kSameFunction);
    keep_upcycled(out, fmt::format("upcycled_run_E{}_K{}_G{}", E, K, G), ids, want);
    TrainableModel t = load_trainable_model(out);  // what `moe train --init-from` starts from
    EXPECT_LT(normalized_error(logits_of(*t.model, ids), want), kSameFunction);
  }
}

TEST(UpcycleErrors, OneLineEachAndNothingWritten) {
  TempDir tmp("upcycle");
  const auto before = snapshot(fixture("llama"));
  auto leftovers = [&] {
    int n = 0;
    for (const auto& e : fs::directory_iterator(tmp.str()))
      n += e.path().filename().string().find(".upcycle-") != std::string::npos;
    return n;
  };
  const std::string out = tmp.file("moe");
  EXPECT_MOE_ERROR(upcycle(fixture("mixtral"), out, {8, 2, 1, 0}), "model_type mixtral",
                   "Mixture of Experts");
  EXPECT_MOE_ERROR(upcycle(fixture("qwen3_moe"), out, {8, 2, 1, 0}), "qwen3_moe");
  EXPECT_MOE_ERROR(upcycle(fixture("llama"), out, {6, 2, 4, 0}), "--experts = 6",
                   "multiple of --granularity = 4");
  EXPECT_MOE_ERROR(upcycle(fixture("llama"), out, {4, 5, 1, 0}), "--top-k = 5");
  EXPECT_MOE_ERROR(upcycle(fixture("llama"), out, {6, 2, 3, 0}), "--granularity = 3",
                   "intermediate_size = 64");
  EXPECT_MOE_ERROR(upcycle(tmp.file("nothing"), out, {4, 2, 1, 0}), "nothing");
  std::ofstream(tmp.file("model.gguf")) << "GGUF";
  EXPECT_MOE_ERROR(upcycle(tmp.file("model.gguf"), out, {4, 2, 1, 0}), "GGUF");
  fs::create_directory(out);
  EXPECT_MOE_ERROR(upcycle(fixture("llama"), out, {4, 2, 1, 0}), "moe", "already exists");
  fs::remove(out);
  // An MoE run.
  ModelConfig moe_run = dense_run_config();
  moe_run.num_local_experts = 4;
  moe_run.sync_moe();
  write_run(moe_run, tmp.file("moe_run"));
  EXPECT_MOE_ERROR(upcycle(tmp.file("moe_run"), out, {8, 2, 1, 0}), "num_local_experts = 4",
                   "dense run");
  // A checkpoint whose tensors do not match its config fails before anything is written.
  fs::copy(fixture("llama"), tmp.file("bad"));
  nlohmann::json j = nlohmann::json::parse(std::ifstream(tmp.file("bad") + "/config.json"));
  j["intermediate_size"] = 128;
  std::ofstream(tmp.file("bad") + "/config.json") << j.dump();
  EXPECT_MOE_ERROR(upcycle(tmp.file("bad"), out, {4, 2, 1, 0}), "gate_proj", "does not match");
  EXPECT_FALSE(fs::exists(out));
  EXPECT_EQ(leftovers(), 0);
  EXPECT_EQ(snapshot(fixture("llama")), before);
}

}  // namespace
}  // namespace moe
