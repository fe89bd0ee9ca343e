// GGUF models (gguf_model.h): every Hugging Face fixture family written to GGUF gives the logits
// of its directory through InferenceModel (exactly at f32, within a stated bound at q8_0); the
// Q4_K_M / Q5_K_M mixes and the type overrides choose llama.cpp's types; a GGUF -> GGUF round
// trip keeps the stored blocks; bad files are one error line naming the file and the field;
// the input is never written; llama.cpp's qwen3next / qwen35moe hybrids: keys, names, the
// converter's transforms, the legacy ssm_in, GGUF -> GGUF, random weights, refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <tuple>

#include "gguf_fixture.h"
#include "moe/gguf_model.h"
#include "moe/hf_checkpoint.h"
#include "moe/inference_model.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string fixture(const std::string& name) {
  return test::fixture_dir() + "/hf/" + name;
}

double normalized_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;  // a NaN must not pass as no difference
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

// All logits of two sequences of 9 tokens: prefill in one call, then one token through the cache.
std::vector<float> logits_of(InferenceModel& m) {
  const int B = 2, S = 9;
  const int64_t V = m.config().vocab_size;
  std::vector<int32_t> ids(B * S);
  for (int i = 0; i < B * S; ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % V);
  std::vector<float> out(static_cast<size_t>(B * (S + 1) * V));
  auto caches = m.new_caches(B, S + 1);
  m.forward(ids.data(), B, S, caches, out.data(), /*all_logits=*/true);
  const int32_t next[2] = {3, 7};
  m.forward(next, B, 1, caches, out.data() + B * S * V, /*all_logits=*/true);
  return out;
}

using test::write_hf_as_gguf;

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

class GgufFamily : public ::testing::TestWithParam<const char*> {};

TEST_P(GgufFamily, F32GivesTheLogitsOfTheDirectory) {
  test::ExactBf16Path exact;  // the bf16 directory against its f32 copy: no rounding of x
  TempDir dir;
  const std::string hf = fixture(GetParam());
  const std::string before = bytes_of(hf + "/config.json");
  const std::string path = write_hf_as_gguf(hf, dir.file("m.gguf"), "f32");
  auto a = InferenceModel::load(hf);
  auto b = InferenceModel::load(path);
  const ModelConfig &ca = a->config(), &cb = b->config();
  // llama.cpp stores Mistral as its llama architecture: it reads back as llama.
  EXPECT_EQ(cb.model_type, ca.model_type == "mistral" ? "llama" : ca.model_type);
  EXPECT_EQ(cb.num_hidden_layers, ca.num_hidden_layers);
  EXPECT_EQ(cb.intermediate_size, ca.intermediate_size);
  EXPECT_EQ(cb.dense_width(), ca.dense_width());
  EXPECT_EQ(cb.moe.shared_hidden(), ca.moe.shared_hidden());
  EXPECT_EQ(cb.moe.norm_topk_prob, ca.moe.norm_topk_prob);
  EXPECT_EQ(cb.head_size(), ca.head_size());
  EXPECT_EQ(cb.tie_word_embeddings, ca.tie_word_embeddings);
  EXPECT_EQ(count_parameters(cb).total, count_parameters(ca).total);
  EXPECT_EQ(b->weight_type(), GgmlType::F32);
  const auto la = logits_of(*a), lb = logits_of(*b);
  // Exact math in another summation order (the llama architecture's interleaved RoPE). deepseek2:
  // DeepSeek's YaRN factors travel as f32 keys (attn_factor, yarn_log_multiplier = 0.1 x
  // mscale_all_dim), so the rotation and softmax scales move by ~1e-7 (measured 1.0e-6 on V2).
  // qwen3next / qwen35moe: A_log comes back as log(-ssm_a) of the stored -exp(A_log), and
  // qwen35moe's tiled value heads sum out_proj in another order.
  EXPECT_LT(normalized_error(lb, la), ca.is_mla() || ca.has_linear_layers() ? 1e-5 : 1e-6)
      << GetParam();
  EXPECT_EQ(bytes_of(hf + "/config.json"), before);
}

// q8_0 where a row is whole blocks (F16 elsewhere, llama.cpp's fallback): the logits move by
// the rounding of 8-bit weights and of the int8 kernels' Q8_0 activations. Measured: 1.0%
// (mixtral, qwen2_moe), 1.1% (mixtral_bf16), 0.07% (olmoe: F16 only), 2.9% (qwen3_moe, 15
// Q8_0 tensors) of the logits' scale; the bound is 5%.
TEST_P(GgufFamily, Q8_0IsCloseToTheDirectory) {
  TempDir dir;
  const std::string hf = fixture(GetParam());
  std::vector<std::string> notes;
  const std::string path = write_hf_as_gguf(hf, dir.file("m.gguf"), "q8_0", "",
                                            [&](const std::string& l) { notes.push_back(l); });
  auto a = InferenceModel::load(hf);
  auto b = InferenceModel::load(path);
  if (a->config().has_linear_layers()) {
    // The hybrids' fixtures move far under 8-bit rounding (of ssm_out, the one matrix with rows
    // of whole blocks; measured 34% for qwen3_next, 8.8% for qwen3_5_moe_fused of the logits'
    // scale, the same when the directory is quantized at load): the file must give exactly the
    // logits of the directory quantized to q8_0 at load, which rounds the same weights.
    test::ExactBf16Path exact;
    auto q = InferenceModel::load(hf, GgmlType::Q8_0);
    EXPECT_LT(normalized_error(logits_of(*b), logits_of(*q)), 1e-6) << GetParam();
    EXPECT_GT(normalized_error(logits_of(*b), logits_of(*a)), 1e-3) << GetParam();
    return;
  }
  const GgufFile* f = b->gguf();
  ASSERT_NE(f, nullptr);
  int q8 = 0;
  for (const GgufTensorInfo& t : f->tensors()) q8 += t.type == 8 ? 1 : 0;
  const int64_t d = a->config().hidden_size;
  if (d % 32 == 0) {
    EXPECT_GT(q8, 0);
  } else {
    EXPECT_FALSE(notes.empty()) << "the fallback is said";
  }
  const double err = normalized_error(logits_of(*b), logits_of(*a));
  EXPECT_LT(err, 0.05) << GetParam();
  // bf16 weights are exact in f16, the fallback of rows of 48: then nothing is rounded.
  if (q8 > 0) {
    EXPECT_GT(err, 0.0) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufFamily,
                         ::testing::Values("mixtral", "mixtral_bf16", "olmoe", "qwen2_moe",
                                           "qwen3_moe", "llama", "mistral", "qwen2", "qwen3"));

// RoPE scaling in llama.cpp's keys (<arch>.rope.scaling.type, .factor, .original_context_length,
// .attn_factor): linear and YaRN (DeepSeek's mscale ratio included, as attn_factor) round trip;
// llama3 (a rope_freqs tensor in llama.cpp) and dynamic NTK (none there) are refused by name.
// transformers v5's fused experts and Granite-MoE (llama.cpp's granitemoe architecture with its
// embedding_scale, residual_scale, attention.scale and logit_scale keys).
INSTANTIATE_TEST_SUITE_P(FusedAndGranite, GgufFamily,
                         ::testing::Values("qwen3_moe_fused", "granitemoe"));

// llama.cpp's deepseek2: MLA (q_lora_rank null in V2, attn_q_a/_b in V3), YaRN with DeepSeek's
// mscale ratio (attn_factor) and mscale_all_dim (yarn_log_multiplier), a leading dense layer,
// shared experts, V2's group-limited softmax routing with routed_scaling_factor, V3's sigmoid
// gating with exp_probs_b and groups.
INSTANTIATE_TEST_SUITE_P(Deepseek2, GgufFamily, ::testing::Values("deepseek_v2", "deepseek_v3"));

// llama.cpp's qwen3next (Qwen3-Next: fused in_proj_ba as ssm_ba, a dense layer) and qwen35moe
// (Qwen3.5-MoE's text model, transformers v5's fused experts: value heads stored tiled).
INSTANTIATE_TEST_SUITE_P(Qwen3Next, GgufFamily,
                         ::testing::Values("qwen3_next", "qwen3_5_moe_fused"));

INSTANTIATE_TEST_SUITE_P(RopeScaling, GgufFamily,
                         ::testing::Values("qwen3_moe_yarn", "olmoe_yarn_mscale", "llama_linear"));

TEST(GgufModelRope, ScalingKeysRoundTrip) {
  for (const char* name : {"qwen3_moe_yarn", "olmoe_yarn_mscale", "llama_linear"}) {
    TempDir dir;
    const std::string hf = fixture(name);
    const ModelConfig a = load_hf_config(hf + "/config.json");
    const std::string path = write_hf_as_gguf(hf, dir.file("m.gguf"), "f32");
    const GgufFile f = GgufFile::open(path);
    const std::string arch = f.string("general.architecture");
    EXPECT_EQ(f.string(arch + ".rope.scaling.type"), rope_type_name(a.rope_scaling.type));
    const ModelConfig b = model_config_from_gguf(f);
    EXPECT_EQ(b.rope_scaling.type, a.rope_scaling.type) << name;
    EXPECT_EQ(b.rope_scaling.factor, a.rope_scaling.factor) << name;
    EXPECT_EQ(b.rope_scaling.original_max_position_embeddings,
              a.rope_scaling.original_max_position_embeddings)
        << name;
    const RopeFrequencies fa = rope_frequencies(a.head_size(), a.rope_theta, a.rope_scaling);
    const RopeFrequencies fb = rope_frequencies(b.head_size(), b.rope_theta, b.rope_scaling);
    EXPECT_NEAR(fb.attention_factor, fa.attention_factor, 1e-6) << name;
  }
  for (const char* name : {"mixtral_llama3", "qwen2_moe_dynamic"}) {
    TempDir dir;
    const std::string hf = fixture(name);
    const ModelConfig c = load_hf_config(hf + "/config.json");
    EXPECT_MOE_ERROR(write_hf_as_gguf(hf, dir.file("m.gguf"), "f32"), "m.gguf", "rope_scaling",
                     rope_type_name(c.rope_scaling.type));
  }
}

// A Mixtral-shaped config with 8 experts and rows of 256 (k-quant blocks) and 96 (not).
ModelConfig mixtral_config(int layers) {
  ModelConfig c;
  c.model_type = "mixtral";
  c.vocab_size = 300;
  c.hidden_size = 256;
  c.intermediate_size = 96;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.num_local_experts = 8;
  c.moe.num_experts_per_tok = 2;
  c.sync_moe();
  return c;
}

std::string type_of(const GgufFile& f, const std::string& name) {
  return ggml_type_name(f.tensor(name).type);
}

TEST(GgufModelTypes, KMixesFollowLlamaCpp) {
  TempDir dir;
  const ModelConfig c = mixtral_config(8);
  GgufModelWriteOptions opt;
  ASSERT_TRUE(parse_type_scheme("q4_k_m", &opt.types));
  std::vector<std::string> notes;
  opt.note = [&](const std::string& s) { notes.push_back(s); };
  write_gguf_model(c, *gguf_source_random(5), dir.file("m.gguf"), opt);
  const GgufFile f = GgufFile::open(dir.file("m.gguf"));
  EXPECT_EQ(f.u32("general.file_type"), 15u);
  EXPECT_EQ(type_of(f, "output.weight"), "Q6_K");
  EXPECT_EQ(type_of(f, "token_embd.weight"), "Q4_K");
  for (int l = 0; l < 8; ++l) {
    SCOPED_TRACE(l);
    const std::string b = fmt::format("blk.{}.", l);
    // 8 experts: llama.cpp gives attn_v and attn_k Q8_0 and attn_output Q5_K.
    EXPECT_EQ(type_of(f, b + "attn_v.weight"), "Q8_0");
    EXPECT_EQ(type_of(f, b + "attn_k.weight"), "Q8_0");
    EXPECT_EQ(type_of(f, b + "attn_output.weight"), "Q5_K");
    EXPECT_EQ(type_of(f, b + "attn_q.weight"), "Q4_K");
    EXPECT_EQ(type_of(f, b + "ffn_gate_exps.weight"), "Q4_K");
    // ffn_down rows are 96 long: Q6_K (layers 0, 2, 5, 7 of 8) or Q4_K would not fit; Q6_K
    // falls back to Q8_0 and Q4_K to Q4_0.
    const bool more = l < 1 || l >= 7 || (l - 1) % 3 == 2;
    EXPECT_EQ(type_of(f, b + "ffn_down_exps.weight"), more ? "Q8_0" : "Q4_0");
    EXPECT_EQ(type_of(f, b + "ffn_gate_inp.weight"), "F32") << "the router stays F32";
    EXPECT_EQ(type_of(f, b + "attn_norm.weight"), "F32");
  }
  EXPECT_EQ(notes.size(), 8u) << "one line per fallback";

  // The overrides: experts and the rest each in their own type.
  opt.types = {};
  ASSERT_TRUE(parse_type_scheme("q4_k_m", &opt.types));
  opt.types.has_expert_type = true;
  opt.types.expert_type = GgmlType::Q8_0;
  opt.types.has_other_type = true;
  opt.types.other_type = GgmlType::BF16;
  write_gguf_model(c, *gguf_source_random(5), dir.file("o.gguf"), opt);
  const GgufFile o = GgufFile::open(dir.file("o.gguf"));
  EXPECT_EQ(type_of(o, "blk.0.ffn_down_exps.weight"), "Q8_0");
  EXPECT_EQ(type_of(o, "blk.3.ffn_up_exps.weight"), "Q8_0");
  EXPECT_EQ(type_of(o, "blk.3.attn_v.weight"), "BF16");
  EXPECT_EQ(type_of(o, "output.weight"), "BF16");
  EXPECT_EQ(type_of(o, "blk.3.ffn_gate_inp.weight"), "F32");

  TypeScheme s;
  EXPECT_FALSE(parse_type_scheme("q3_k", &s));
  EXPECT_FALSE(parse_type_scheme("q8_k", &s)) << "Q8_K is not a weight type";
}

// --random draws quantized blocks directly: every type's values have mean ~0 and std ~0.02, and
// the model runs to finite logits.
TEST(GgufModelRandom, BlocksAreSaneInEveryType) {
  TempDir dir;
  const ModelConfig c = mixtral_config(1);
  for (const char* type : {"q8_0", "q4_0", "q4_k", "q5_k", "q6_k"}) {
    SCOPED_TRACE(type);
    GgufModelWriteOptions opt;
    ASSERT_TRUE(parse_type_scheme(type, &opt.types));
    opt.types.has_expert_type = true;  // rows of 96: the experts in Q8_0 for every type
    opt.types.expert_type = GgmlType::Q8_0;
    const std::string path = dir.file(std::string(type) + ".gguf");
    write_gguf_model(c, *gguf_source_random(3), path, opt);
    const GgufFile f = GgufFile::open(path);
    const GgufTensorInfo& t = f.tensor("blk.0.attn_q.weight");
    EXPECT_EQ(ggml_type_name(t.type), ggml_type_name(static_cast<uint32_t>(opt.types.base)));
    std::vector<float> v(static_cast<size_t>(t.numel()));
    const int64_t cols = t.dims[0], rb = row_bytes(static_cast<GgmlType>(t.type), cols);
    for (int64_t r = 0; r < t.numel() / cols; ++r)
      dequantize_row(static_cast<GgmlType>(t.type), f.data(t) + r * rb, &v[r * cols], cols);
    double sum = 0, sq = 0;
    for (float x : v) sum += x, sq += static_cast<double>(x) * x;
    const double mean = sum / v.size(), sd = std::sqrt(sq / v.size() - mean * mean);
    EXPECT_LT(std::abs(mean), 0.002);
    EXPECT_NEAR(sd, 0.02, 0.004);
    auto m = InferenceModel::load(path);
    for (float x : logits_of(*m)) ASSERT_TRUE(std::isfinite(x));
  }
}

// q8_0 -> q8_0 keeps every stored block; q8_0 -> f32 gives the dequantized values (the llama
// architecture's Q/K rows permuted back and forth: the file is the same).
TEST(GgufModelRoundTrip, KeepsBlocksWhenTheTypeStays) {
  TempDir dir;
  const ModelConfig c = mixtral_config(2);
  GgufModelWriteOptions opt;
  ASSERT_TRUE(parse_type_scheme("q8_0", &opt.types));
  write_gguf_model(c, *gguf_source_random(9), dir.file("a.gguf"), opt);
  const GgufFile a = GgufFile::open(dir.file("a.gguf"));
  const ModelConfig ca = model_config_from_gguf(a);
  write_gguf_model(ca, *gguf_source_of_gguf(ca, a), dir.file("b.gguf"), opt);
  const GgufFile b = GgufFile::open(dir.file("b.gguf"));
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const GgufTensorInfo& t : a.tensors()) {
    SCOPED_TRACE(t.name);
    const GgufTensorInfo& u = b.tensor(t.name);
    ASSERT_EQ(u.type, t.type);
    ASSERT_EQ(u.nbytes, t.nbytes);
    EXPECT_EQ(std::memcmp(a.data(t), b.data(u), t.nbytes), 0);
  }
  ASSERT_TRUE(parse_type_scheme("f32", &opt.types));
  write_gguf_model(ca, *gguf_source_of_gguf(ca, a), dir.file("c.gguf"), opt);
  const GgufFile cf = GgufFile::open(dir.file("c.gguf"));
  for (const char* name : {"blk.1.attn_q.weight", "blk.0.ffn_down_exps.weight"}) {
    const GgufTensorInfo& t = a.tensor(name);
    std::vector<float> want(static_cast<size_t>(t.numel()));
    const int64_t cols = t.dims[0], rb = row_bytes(static_cast<GgmlType>(t.type), cols);
    for (int64_t r = 0; r < t.numel() / cols; ++r)
      dequantize_row(static_cast<GgmlType>(t.type), a.data(t) + r * rb, &want[r * cols], cols);
    EXPECT_EQ(cf.read_f32(name), want) << name;
  }
  // Both run as the same model, up to the int8 kernels' rounding of the activations (Q8_0
  // blocks) on the q8_0 side: 5.7% of this random model's small logits.
  auto ma = InferenceModel::load(dir.file("a.gguf"));
  auto mc = InferenceModel::load(dir.file("c.gguf"));
  EXPECT_LT(normalized_error(logits_of(*mc), logits_of(*ma)), 0.1);
}

// A copy of GGUF file `in` with the metadata edited (a value replaced, or removed when null)
// and tensor `retype` stored under another type id of the same size.
void rewrite(const std::string& in, const std::string& out,
             const std::vector<std::pair<std::string, std::optional<GgufValue>>>& edits,
             const std::string& retype = "", uint32_t new_type = 0) {
  const GgufFile f = GgufFile::open(in);
  GgufWriter w;
  for (const auto& [k, v] : f.kvs()) {
    if (k == "general.alignment") continue;
    bool edited = false;
    for (const auto& [ek, ev] : edits)
      if (ek == k) {
        edited = true;
        if (ev) w.set(k, *ev);
      }
    if (!edited) w.set(k, v);
  }
  for (const auto& [ek, ev] : edits)
    if (ev && !f.has(ek)) w.set(ek, *ev);
  for (const GgufTensorInfo& t : f.tensors()) {
    const uint8_t* data = f.data(t);
    const uint64_t n = t.nbytes;
    w.add_raw_tensor(t.name, t.shape(), static_cast<GgmlType>(t.type),
                     [data, n](uint8_t* o) { std::memcpy(o, data, n); });
  }
  w.write(out);
  if (retype.empty()) return;
  // Patch the type id in place: the info's name, dims, then the type.
  std::string bytes = bytes_of(out);
  const GgufTensorInfo& t = f.tensor(retype);
  std::string key(8, '\0');
  const uint64_t len = retype.size();
  std::memcpy(key.data(), &len, 8);
  key += retype;
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  const size_t type_at = at + key.size() + 4 + 8 * t.dims.size();
  std::memcpy(&bytes[type_at], &new_type, 4);
  std::ofstream(out, std::ios::binary) << bytes;
}

TEST(GgufModelErrors, OneLineNamingTheFileAndTheField) {
  TempDir dir;
  const std::string good = write_hf_as_gguf(fixture("mixtral"), dir.file("good.gguf"), "f16");
  ASSERT_NO_THROW(InferenceModel::load(good));
  {
    const std::string p = dir.file("arch.gguf");
    rewrite(good, p, {{"general.architecture", GgufValue::string("jamba")}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "general.architecture", "jamba", "not supported");
  }
  {
    const std::string p = dir.file("missing.gguf");
    rewrite(good, p, {{"llama.block_count", std::nullopt}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "llama.block_count");
  }
  {
    const std::string p = dir.file("experts.gguf");
    rewrite(good, p, {{"llama.expert_count", GgufValue::u32(3)}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "llama.expert_count", "blk.0.ffn_gate_inp");
  }
  {
    const std::string p = dir.file("width.gguf");
    rewrite(good, p, {{"llama.embedding_length", GgufValue::u32(64)}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "llama.embedding_length", "token_embd.weight");
  }
  {
    const std::string p = dir.file("ff.gguf");
    rewrite(good, p, {{"llama.feed_forward_length", GgufValue::u32(16)}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "llama.feed_forward_length", "ffn_gate_exps");
  }
  {
    const std::string p = dir.file("heads.gguf");
    rewrite(good, p, {{"llama.attention.head_count_kv", GgufValue::u32(4)}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "blk.0.attn_k.weight", "metadata");
  }
  {
    const std::string p = dir.file("rope.gguf");
    rewrite(good, p, {{"llama.rope.scaling.type", GgufValue::string("longrope")}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "llama.rope.scaling.type", "not supported");
    // A supported type without its factor names the missing key.
    rewrite(good, p, {{"llama.rope.scaling.type", GgufValue::string("yarn")}});
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "llama.rope.scaling.factor");
  }
  {
    // I16 has F16's size: the file is valid, its type is not a weight type.
    const std::string p = dir.file("type.gguf");
    rewrite(good, p, {}, "blk.1.attn_v.weight", 25);
    EXPECT_MOE_ERROR(InferenceModel::load(p), p, "blk.1.attn_v.weight", "I16");
  }
  {
    const std::string p = dir.file("truncated.gguf");
    const std::string bytes = bytes_of(good);
    std::ofstream(p, std::ios::binary) << bytes.substr(0, bytes.size() - 100);
    EXPECT_MOE_ERROR(InferenceModel::load(p), p);
  }
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

int64_t key_int(const GgufFile& f, const std::string& k) {
  return f.value(k).as_int();
}

std::vector<int64_t> dims_of(const GgufFile& f, const std::string& name) {
  return f.tensor(name).dims;
}

// The keys and tensors of llama.cpp's qwen3next / qwen35moe (src/models/qwen3next.cpp,
// qwen35moe.cpp; conversion/qwen.py), for the fixtures' shape: d 48, DeltaNet key heads 2 and
// value heads 4 of 8, kernel 4, head_dim 12 with half of it rotated, every 4th layer attention.
TEST(GgufModelQwen3Next, KeysAndTensorsAsLlamaCpp) {
  TempDir dir;
  for (const char* name : {"qwen3_next", "qwen3_5_moe_fused"}) {
    SCOPED_TRACE(name);
    const bool q35 = std::string(name) == "qwen3_5_moe_fused";
    const std::string path = write_hf_as_gguf(fixture(name), dir.file("m.gguf"), "f32");
    // With MOE_EXPORT_DIR set, keeps the file for tools/reference/read_gguf.py --check-hybrid.
    if (const char* root = std::getenv("MOE_EXPORT_DIR")) {
      fs::create_directories(root);
      fs::copy_file(path, fs::path(root) / (std::string(name) + ".gguf"),
                    fs::copy_options::overwrite_existing);
    }
    const GgufFile f = GgufFile::open(path);
    const std::string arch = q35 ? "qwen35moe" : "qwen3next";
    EXPECT_EQ(f.string("general.architecture"), arch);
    const std::pair<const char*, int64_t> keys[] = {{"ssm.conv_kernel", 4},
                                                    {"ssm.state_size", 8},
                                                    {"ssm.group_count", 2},
                                                    {"ssm.time_step_rank", 4},
                                                    {"ssm.inner_size", 32},
                                                    {"full_attention_interval", 4},
                                                    {"rope.dimension_count", 6},
                                                    {"attention.key_length", 12},
                                                    {"expert_count", 4},
                                                    {"expert_used_count", 2},
                                                    {"expert_feed_forward_length", 16},
                                                    {"expert_shared_feed_forward_length", 24}};
    for (const auto& [k, v] : keys) EXPECT_EQ(key_int(f, arch + "." + k), v) << k;
    EXPECT_EQ(f.has(arch + ".feed_forward_length"), !q35);
    if (q35) {
      EXPECT_EQ(f.value(arch + ".rope.dimension_sections").to_string(), "[1, 1, 1, 0]");
    }
    using D = std::vector<int64_t>;
    EXPECT_EQ(dims_of(f, "blk.0.attn_qkv.weight"), (D{48, 64}));
    EXPECT_EQ(dims_of(f, "blk.0.attn_gate.weight"), (D{48, 32}));
    EXPECT_EQ(dims_of(f, "blk.0.ssm_conv1d.weight"), (D{4, 64}));
    EXPECT_EQ(dims_of(f, "blk.0.ssm_a"), (D{4}));
    EXPECT_EQ(dims_of(f, "blk.0.ssm_dt.bias"), (D{4}));
    EXPECT_EQ(dims_of(f, "blk.0.ssm_norm.weight"), (D{8}));
    EXPECT_EQ(dims_of(f, "blk.0.ssm_out.weight"), (D{32, 48}));
    EXPECT_EQ(dims_of(f, "blk.0.post_attention_norm.weight"), (D{48}));
    EXPECT_EQ(dims_of(f, "blk.3.attn_q.weight"), (D{48, 96}));  // query and gate
    EXPECT_EQ(dims_of(f, "blk.3.attn_q_norm.weight"), (D{12}));
    EXPECT_EQ(dims_of(f, "blk.0.ffn_gate_inp_shexp.weight"), (D{48}));
    if (q35) {
      EXPECT_EQ(dims_of(f, "blk.0.ssm_beta.weight"), (D{48, 4}));
      EXPECT_EQ(dims_of(f, "blk.0.ssm_alpha.weight"), (D{48, 4}));
      EXPECT_FALSE(f.has_tensor("blk.0.ssm_ba.weight"));
    } else {
      EXPECT_EQ(dims_of(f, "blk.0.ssm_ba.weight"), (D{48, 8}));
    }
    EXPECT_FALSE(f.has_tensor("blk.0.attn_q.weight"));
    EXPECT_FALSE(f.has_tensor("blk.3.ssm_a"));
    // Values as the converter stores them: ssm_a = -exp(A_log) (tiled in qwen35moe: stored
    // head j * Hk + kh is Hugging Face's kh * r + j), norms 1 + w.
    const ModelConfig c = load_hf_config(fixture(name) + "/config.json");
    const HfWeights w = HfWeights::open(fixture(name));
    const std::string p = hf_model_prefix(c) + "layers.0.";
    std::vector<float> A_log(4), norm(48);
    w.file_of(p + "linear_attn.A_log")
        .read_into<float>(p + "linear_attn.A_log", Shape{4}, A_log.data());
    w.file_of(p + "input_layernorm.weight")
        .read_into<float>(p + "input_layernorm.weight", Shape{48}, norm.data());
    const auto* a = reinterpret_cast<const float*>(f.data(f.tensor("blk.0.ssm_a")));
    const auto* n = reinterpret_cast<const float*>(f.data(f.tensor("blk.0.attn_norm.weight")));
    for (int kh = 0; kh < 2; ++kh)
      for (int j = 0; j < 2; ++j) {
        const int stored = q35 ? j * 2 + kh : kh * 2 + j;
        EXPECT_FLOAT_EQ(a[stored], -std::exp(A_log[static_cast<size_t>(kh * 2 + j)]));
      }
    for (int i = 0; i < 48; ++i) EXPECT_FLOAT_EQ(n[i], 1.0f + norm[static_cast<size_t>(i)]);
  }
}

// GGUF -> GGUF in other types goes through Hugging Face's form and back (gguf_hybrid_values):
// f32 -> f16 keeps the logits (bf16 weights are exact in f16; norms and ssm_a stay F32; the
// f16 kernels sum in another order: measured 1.0e-6 and 1.4e-6).
TEST(GgufModelQwen3Next, GgufToGgufKeepsTheLogits) {
  test::ExactBf16Path exact;
  TempDir dir;
  for (const char* name : {"qwen3_next", "qwen3_5_moe_fused"}) {
    SCOPED_TRACE(name);
    const std::string a = write_hf_as_gguf(fixture(name), dir.file("a.gguf"), "f32");
    const GgufFile f = GgufFile::open(a);
    const ModelConfig c = model_config_from_gguf(f);
    GgufModelWriteOptions opt;
    ASSERT_TRUE(parse_type_scheme("f16", &opt.types));
    write_gguf_model(c, *gguf_source_of_gguf(c, f), dir.file("b.gguf"), opt);
    auto ma = InferenceModel::load(a);
    auto mb = InferenceModel::load(dir.file("b.gguf"));
    EXPECT_EQ(mb->weight_type(), GgmlType::F16);
    EXPECT_LT(normalized_error(logits_of(*mb), logits_of(*ma)), 1e-5);
  }
}

// qwen3next files of the converter's first form hold the fused ssm_in (Hugging Face's grouped
// in_proj_qkvz: per key head q, k, v, z) instead of attn_qkv + attn_gate: read as well.
TEST(GgufModelQwen3Next, LegacySsmInIsRead) {
  TempDir dir;
  const std::string split = write_hf_as_gguf(fixture("qwen3_next"), dir.file("a.gguf"), "f32");
  const GgufFile f = GgufFile::open(split);
  const ModelConfig c = model_config_from_gguf(f);
  const int64_t d = c.hidden_size, Hk = c.linear.num_k_heads, dk = c.linear.k_head_dim;
  const int64_t rdv = c.linear.value_dim() / Hk, kd = c.linear.key_dim();
  GgufWriter w;
  for (const auto& [k, v] : f.kvs())
    if (k != "general.alignment") w.set(k, v);
  std::deque<std::vector<float>> fused;
  for (const GgufTensorInfo& t : f.tensors()) {
    const bool qkv = t.name.ends_with(".attn_qkv.weight");
    if (t.name.ends_with(".attn_gate.weight")) continue;
    if (qkv) {  // [q, k, v of all heads] + z -> per key head [q, k, v, z]
      const std::string gate = t.name.substr(0, t.name.size() - 15) + "attn_gate.weight";
      const auto* a = reinterpret_cast<const float*>(f.data(t));
      const auto* z = reinterpret_cast<const float*>(f.data(f.tensor(gate)));
      std::vector<float>& out = fused.emplace_back();
      for (int64_t h = 0; h < Hk; ++h)
        for (const auto& [src, row0, rows] :
             {std::tuple{a, h * dk, dk}, std::tuple{a, kd + h * dk, dk},
              std::tuple{a, 2 * kd + h * rdv, rdv}, std::tuple{z, h * rdv, rdv}})
          out.insert(out.end(), src + row0 * d, src + (row0 + rows) * d);
      const float* data = out.data();
      const size_t n = out.size();
      const std::string name = t.name.substr(0, t.name.size() - 15) + "ssm_in.weight";
      w.add_raw_tensor(name, {static_cast<int64_t>(n) / d, d}, GgmlType::F32,
                       [data, n](uint8_t* o) { std::memcpy(o, data, n * sizeof(float)); });
      continue;
    }
    const uint8_t* data = f.data(t);
    const uint64_t n = t.nbytes;
    w.add_raw_tensor(t.name, t.shape(), static_cast<GgmlType>(t.type),
                     [data, n](uint8_t* o) { std::memcpy(o, data, n); });
  }
  w.write(dir.file("legacy.gguf"));
  ASSERT_TRUE(GgufFile::open(dir.file("legacy.gguf")).has_tensor("blk.0.ssm_in.weight"));
  auto a = InferenceModel::load(split);
  auto b = InferenceModel::load(dir.file("legacy.gguf"));
  EXPECT_LT(normalized_error(logits_of(*b), logits_of(*a)), 1e-6);
}

// llama.cpp's fused ffn_gate_up_exps [E, 2F, d] (expert e's gate rows, then its up rows) is read
// for ffn_gate_exps + ffn_up_exps, and written back split.
TEST(GgufModelQwen3Next, FusedGateUpExpertsAreRead) {
  TempDir dir;
  const std::string split =
      write_hf_as_gguf(fixture("qwen3_5_moe_fused"), dir.file("a.gguf"), "f32");
  const GgufFile f = GgufFile::open(split);
  GgufWriter w;
  for (const auto& [k, v] : f.kvs())
    if (k != "general.alignment") w.set(k, v);
  for (const GgufTensorInfo& t : f.tensors()) {
    if (t.name.ends_with(".ffn_up_exps.weight")) continue;
    if (t.name.ends_with(".ffn_gate_exps.weight")) {
      const std::string prefix = t.name.substr(0, t.name.size() - 20);
      const uint8_t* gate = f.data(t);
      const uint8_t* up = f.data(f.tensor(prefix + "ffn_up_exps.weight"));
      const std::vector<int64_t> shape = t.shape();  // [E, F, d]
      const uint64_t per = t.nbytes / static_cast<uint64_t>(shape[0]);
      w.add_raw_tensor(prefix + "ffn_gate_up_exps.weight", {shape[0], 2 * shape[1], shape[2]},
                       GgmlType::F32, [gate, up, per, E = shape[0]](uint8_t* o) {
                         for (int64_t e = 0; e < E; ++e) {
                           std::memcpy(o + 2 * e * per, gate + e * per, per);
                           std::memcpy(o + (2 * e + 1) * per, up + e * per, per);
                         }
                       });
      continue;
    }
    const uint8_t* data = f.data(t);
    const uint64_t n = t.nbytes;
    w.add_raw_tensor(t.name, t.shape(), static_cast<GgmlType>(t.type),
                     [data, n](uint8_t* o) { std::memcpy(o, data, n); });
  }
  const std::string fused = dir.file("fused.gguf");
  w.write(fused);
  ASSERT_FALSE(GgufFile::open(fused).has_tensor("blk.0.ffn_gate_exps.weight"));
  auto a = InferenceModel::load(split);
  auto b = InferenceModel::load(fused);
  const auto la = logits_of(*a);
  EXPECT_LT(normalized_error(logits_of(*b), la), 1e-6);
  const GgufFile g = GgufFile::open(fused);
  const ModelConfig c = model_config_from_gguf(g);
  GgufModelWriteOptions opt;
  ASSERT_TRUE(parse_type_scheme("f32", &opt.types));
  write_gguf_model(c, *gguf_source_of_gguf(c, g), dir.file("back.gguf"), opt);
  EXPECT_TRUE(GgufFile::open(dir.file("back.gguf")).has_tensor("blk.0.ffn_up_exps.weight"));
  EXPECT_LT(normalized_error(logits_of(*InferenceModel::load(dir.file("back.gguf"))), la), 1e-6);
}

// gguf_fused_gate_up: the fused tensor when gate and up are not stored apart, its shape checked
// against [E, 2F, d] in one error line naming the file and the tensor; null otherwise.
TEST(GgufModel, FusedGateUpIsFoundAndItsShapeChecked) {
  TempDir dir;
  const std::vector<float> v(2 * 8 * 4, 0.5f);
  GgufWriter fused;
  fused.add_tensor("blk.0.ffn_gate_up_exps.weight", {2, 8, 4}, GgmlType::F32, v.data());
  fused.write(dir.file("fused.gguf"));
  const GgufFile f = GgufFile::open(dir.file("fused.gguf"));
  const GgufTensorInfo* info = gguf_fused_gate_up(f, 0, 2, 4, 4);
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->name, "blk.0.ffn_gate_up_exps.weight");
  EXPECT_EQ(gguf_fused_gate_up(f, 1, 2, 4, 4), nullptr);  // no such layer in the file
  EXPECT_MOE_ERROR(gguf_fused_gate_up(f, 0, 2, 3, 4), dir.file("fused.gguf"),
                   "blk.0.ffn_gate_up_exps.weight", "[2, 8, 4]", "[2, 6, 4]");
  EXPECT_MOE_ERROR(gguf_fused_gate_up(f, 0, 2, 4, 5), "blk.0.ffn_gate_up_exps.weight", "[2, 8, 5]");
  // Gate stored apart: the fused tensor is not the one to read.
  GgufWriter both;
  both.add_tensor("blk.0.ffn_gate_up_exps.weight", {2, 8, 4}, GgmlType::F32, v.data());
  both.add_tensor("blk.0.ffn_gate_exps.weight", {2, 4, 4}, GgmlType::F32, v.data());
  both.write(dir.file("both.gguf"));
  EXPECT_EQ(gguf_fused_gate_up(GgufFile::open(dir.file("both.gguf")), 0, 2, 4, 4), nullptr);
}

// Random weights of the hybrids at q4_k (rows of 48 fall back as llama.cpp does) decode to
// finite logits.
TEST(GgufModelQwen3Next, RandomWeightsDecode) {
  TempDir dir;
  for (const char* name : {"qwen3_next", "qwen3_5_moe_fused"}) {
    const ModelConfig c = load_hf_config(fixture(name) + "/config.json");
    GgufModelWriteOptions opt;
    ASSERT_TRUE(parse_type_scheme("q4_k", &opt.types));
    write_gguf_model(c, *gguf_source_random(7), dir.file("r.gguf"), opt);
    auto m = InferenceModel::load(dir.file("r.gguf"));
    for (float v : logits_of(*m)) ASSERT_TRUE(std::isfinite(v)) << name;
  }
}

TEST(GgufModelQwen3Next, BadFilesAreOneLineNamingTheField) {
  TempDir dir;
  for (const char* name : {"qwen3_next", "qwen3_5_moe_fused"}) {
    SCOPED_TRACE(name);
    const std::string good = write_hf_as_gguf(fixture(name), dir.file("good.gguf"), "f32");
    const std::string arch = GgufFile::open(good).string("general.architecture");
    ASSERT_NO_THROW(InferenceModel::load(good));
    auto error_with = [&](const std::vector<std::pair<std::string, std::optional<GgufValue>>>& e) {
      const std::string p = dir.file("bad.gguf");
      rewrite(good, p, e);
      return test::error_of([&] { InferenceModel::load(p); });
    };
    std::string e = error_with({{arch + ".ssm.state_size", std::nullopt}});
    EXPECT_NE(e.find("bad.gguf"), std::string::npos) << e;
    EXPECT_NE(e.find(arch + ".ssm.state_size"), std::string::npos) << e;
    e = error_with({{arch + ".ssm.conv_kernel", GgufValue::u32(3)}});
    EXPECT_NE(e.find(arch + ".ssm.conv_kernel = 3 contradicts tensor blk.0.ssm_conv1d.weight"),
              std::string::npos)
        << e;
    e = error_with({{arch + ".ssm.time_step_rank", GgufValue::u32(2)}});
    EXPECT_NE(e.find(arch + ".ssm.time_step_rank = 2 contradicts tensor blk.0.ssm_a"),
              std::string::npos)
        << e;
    e = error_with({{arch + ".full_attention_interval", GgufValue::u32(2)}});
    EXPECT_NE(e.find("tensor blk.1.attn_q.weight is missing"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    // ssm_a = -exp(A_log) must be negative: a positive value is refused, naming the tensor,
    // both where the model is run and where a converting writer reads the tensor back into
    // Hugging Face's form (GgufModelSource::fill; a type change, since an F32 ssm_a is copied
    // as it is), never NaN.
    const std::string positive = dir.file("positive_a.gguf");
    fs::copy_file(good, positive, fs::copy_options::overwrite_existing);
    {
      const GgufFile f = GgufFile::open(positive);
      const uint64_t at = f.data_offset() + f.tensor("blk.0.ssm_a").offset;
      std::fstream io(positive, std::ios::in | std::ios::out | std::ios::binary);
      const float value = 0.5f;
      io.seekp(static_cast<std::streamoff>(at + sizeof(float)));  // index 1
      io.write(reinterpret_cast<const char*>(&value), sizeof value);
    }
    const std::string want = "positive_a.gguf: tensor blk.0.ssm_a holds 0.5 at 1";
    e = test::error_of([&] { InferenceModel::load(positive); });
    EXPECT_NE(e.find(want), std::string::npos) << e;
    const GgufFile f = GgufFile::open(positive);
    const ModelConfig c = model_config_from_gguf(f);
    const auto source = gguf_source_of_gguf(c, f);
    for (const GgufModelTensor& t : gguf_model_tensors(c))
      if (t.name == "blk.0.ssm_a") {
        std::vector<float> out(4);
        e = test::error_of([&] { source->fill(t, out.data()); });
        EXPECT_NE(e.find(want), std::string::npos) << e;
      }
  }
}

}  // namespace
}  // namespace moe
