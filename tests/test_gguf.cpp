// GGUF: writer/reader round trip of every value type and tensor type, alignment, one-line
// errors on truncated or corrupt files, and the llama.cpp export of a tiny Transformer (keys,
// ggml-order shapes, stacked experts, the RoPE row permutation, tokenizer vocabularies).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

#include "moe/gguf.h"
#include "moe/gguf_export.h"
#include "moe/tokenizer.h"
#include "moe/transformer.h"
#include "test_util.h"

namespace moe {
namespace {

using test::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The error message of GgufFile::open(path), checked to be one line naming the file.
std::string open_error(const std::string& path) {
  const std::string msg = test::error_of([&] { GgufFile::open(path); });
  EXPECT_NE(msg, "(no error)") << path;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind(path, 0), 0u) << "does not start with the file name: " << msg;
  return msg;
}

void write_sample(const std::string& path, const std::vector<float>& a, const std::vector<float>& b,
                  uint32_t alignment = 32) {
  GgufWriter w(alignment);
  w.set("t.u32", GgufValue::u32(4000000000u));
  w.set("t.i32", GgufValue::i32(-7));
  w.set("t.u64", GgufValue::u64(1ull << 40));
  w.set("t.f32", GgufValue::f32(0.25f));
  w.set("t.bool", GgufValue::boolean(true));
  w.set("t.str", GgufValue::string("h\xC3\xA9llo"));
  w.set("t.strs", GgufValue::strings({"a", "", "\xE2\x96\x81the"}));
  w.set("t.f32s", GgufValue::f32s({1.5f, -2.0f}));
  w.set("t.i32s", GgufValue::i32s({3, -4, 5}));
  w.set("t.empty", GgufValue::i32s({}));
  w.set("t.u32", GgufValue::u32(4000000001u));  // replaced in place
  w.add_tensor("a", {2, 3}, GgmlType::F32, a.data());
  w.add_tensor("b", {5}, GgmlType::F16, b.data());
  w.add_tensor("c", {1, 5}, GgmlType::BF16,
               [&](float* out) { std::copy(b.begin(), b.end(), out); });
  w.write(path);
}

TEST(Gguf, RoundTripsEveryValueAndTensorType) {
  TempDir dir;
  const std::vector<float> a = {1, 2, 3, 4, 5, 6.5f};
  const std::vector<float> b = {0.5f, -1, 1024, 3.140625f, -0.125f};
  const std::string path = dir.file("x.gguf");
  write_sample(path, a, b);

  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.kvs().size(), 11u);
  EXPECT_EQ(f.kvs()[0].first, "general.alignment");
  EXPECT_EQ(f.kvs()[1].first, "t.u32");
  EXPECT_EQ(f.u32("general.alignment"), 32u);
  EXPECT_EQ(f.u32("t.u32"), 4000000001u);
  EXPECT_EQ(f.i32("t.i32"), -7);
  EXPECT_EQ(f.value("t.u64").as_u64(), 1ull << 40);
  EXPECT_EQ(f.value("t.u64").as_int(), int64_t{1} << 40);
  EXPECT_EQ(f.f32("t.f32"), 0.25f);
  EXPECT_TRUE(f.boolean("t.bool"));
  EXPECT_EQ(f.string("t.str"), "h\xC3\xA9llo");
  EXPECT_EQ(f.strings("t.strs"), (std::vector<std::string>{"a", "", "\xE2\x96\x81the"}));
  EXPECT_EQ(f.f32s("t.f32s"), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(f.i32s("t.i32s"), (std::vector<int32_t>{3, -4, 5}));
  EXPECT_TRUE(f.i32s("t.empty").empty());
  EXPECT_EQ(f.value("t.i32s").to_string(2), "[3, -4, ... (3 items)]");
  EXPECT_EQ(f.value("t.str").to_string(), "\"h\xC3\xA9llo\"");

  ASSERT_EQ(f.tensors().size(), 3u);
  const GgufTensorInfo& ta = f.tensor("a");
  EXPECT_EQ(ta.dims, (std::vector<int64_t>{3, 2}));  // ggml order: the row-major shape reversed
  EXPECT_EQ(ta.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta.type, 0u);
  EXPECT_EQ(f.read_f32("a"), a);
  EXPECT_EQ(f.tensor("b").type, 1u);
  EXPECT_EQ(f.tensor("b").nbytes, 10u);
  EXPECT_EQ(f.read_f32("b"), b);  // every value is exact in f16
  EXPECT_EQ(f.tensor("c").type, 30u);
  EXPECT_EQ(f.tensor("c").dims, (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(f.read_f32("c"), b);  // and in bf16
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_EQ((f.data_offset() + t.offset) % 32, 0u) << t.name;
  }
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.file_size(), f.data_offset() + f.tensor("c").offset + f.tensor("c").nbytes);
}

// Quantized tensors: the writer rounds the Fill's floats row by row with quantize_row, the
// reader hands back exactly those bytes and read_f32 their dequantize_row; raw tensors copy a
// file's bytes without rounding twice. Alignment 2 puts some rows off 4-byte boundaries.
TEST(Gguf, QuantizedTensorsRoundTripAndCopyRaw) {
  TempDir dir;
  struct Case {
    const char* name;
    GgmlType type;
    int64_t rows, cols;
  };
  const Case cases[] = {{"q8_0", GgmlType::Q8_0, 3, 64},  {"odd", GgmlType::F16, 1, 1},
                        {"q4_0", GgmlType::Q4_0, 2, 96},  {"q4_k", GgmlType::Q4_K, 3, 512},
                        {"q5_k", GgmlType::Q5_K, 2, 256}, {"q6_k", GgmlType::Q6_K, 2, 512},
                        {"q8_k", GgmlType::Q8_K, 1, 256}, {"f32", GgmlType::F32, 2, 7},
                        {"bf16", GgmlType::BF16, 2, 10}};
  Rng rng(19);
  std::map<std::string, std::vector<float>> values;
  for (const Case& c : cases) values[c.name] = test::random_vector<float>(rng, c.rows * c.cols);
  for (const uint32_t alignment : {32u, 2u}) {
    SCOPED_TRACE(alignment);
    const std::string path = dir.file(fmt::format("q{}.gguf", alignment));
    GgufWriter w(alignment);
    for (const Case& c : cases) {
      const auto& v = values[c.name];
      if (c.rows == 1)
        w.add_tensor(c.name, {c.cols}, c.type, v.data());
      else
        w.add_tensor(c.name, {c.rows, c.cols}, c.type,
                     [&v](float* out) { std::copy(v.begin(), v.end(), out); });
    }
    w.write(path);

    const GgufFile f = GgufFile::open(path);
    GgufWriter copy(alignment);
    for (const Case& c : cases) {
      SCOPED_TRACE(c.name);
      const GgufTensorInfo& t = f.tensor(c.name);
      EXPECT_EQ(t.type, static_cast<uint32_t>(c.type));
      EXPECT_EQ(t.dims[0], c.cols);
      const int64_t rb = row_bytes(c.type, c.cols);
      ASSERT_EQ(t.nbytes, static_cast<uint64_t>(c.rows * rb));
      std::vector<uint8_t> want(t.nbytes);
      std::vector<float> want_values(values[c.name].size());
      for (int64_t r = 0; r < c.rows; ++r) {
        quantize_row(c.type, values[c.name].data() + r * c.cols, want.data() + r * rb, c.cols);
        dequantize_row(c.type, want.data() + r * rb, want_values.data() + r * c.cols, c.cols);
      }
      EXPECT_EQ(std::memcmp(f.data(t), want.data(), want.size()), 0);
      EXPECT_EQ(f.read_f32(c.name), want_values);
      copy.add_raw_tensor(c.name, t.shape(), c.type,
                          [&f, &t](uint8_t* out) { std::memcpy(out, f.data(t), t.nbytes); });
    }
    const std::string copied = dir.file("copy" + std::to_string(alignment) + ".gguf");
    copy.write(copied);
    EXPECT_EQ(read_bytes(copied), read_bytes(path));  // same header, same bytes
  }
}

TEST(Gguf, TypesThatCannotHoldARowAreRefused) {
  GgufWriter w;
  const std::vector<float> v(200);
  const std::string msg = test::error_of([&] {
    w.add_tensor("blk.0.ffn_down.weight", {2, 100}, GgmlType::Q4_K, v.data());
  });
  EXPECT_EQ(msg,
            "GgufWriter: tensor blk.0.ffn_down.weight: rows of 100 values cannot be stored as Q4_K "
            "(blocks of 256)");
  EXPECT_NE(test::error_of([&] {
              w.add_raw_tensor("x", {2, 100}, GgmlType::Q8_0, [](uint8_t*) {});
            }).find("blocks of 32"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              w.add_tensor("y", {4}, static_cast<GgmlType>(3), v.data());
            }).find("cannot store Q4_1"),
            std::string::npos);
}

TEST(Gguf, TypedAccessNamesFileAndKey) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  write_sample(path, {1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 5});
  const GgufFile f = GgufFile::open(path);
  EXPECT_MOE_ERROR(f.u32("t.i32"), path, "t.i32", "is int32, not uint32");
  EXPECT_MOE_ERROR(f.f32s("t.i32s"), path, "t.i32s", "array of int32");
  EXPECT_MOE_ERROR(f.string("nope"), path, "missing key nope");
  EXPECT_MOE_ERROR(f.tensor("nope"), path, "missing tensor nope");
}

// A GGUF write killed before its rename leaves a temporary file; the next write removes it.
TEST(Gguf, WriteRemovesStaleTempFilesOfDeadWriters) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  const std::string stale = dir.file(fmt::format("x.gguf.tmp.{}.3", test::dead_pid()));
  write_bytes(stale, "GGUF, cut short");
  write_sample(path, {1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 5});
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_EQ(GgufFile::open(path).read_f32("b"), (std::vector<float>{1, 2, 3, 4, 5}));
}

TEST(Gguf, HonorsAnotherAlignment) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  write_sample(path, {1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 5}, 64);
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  for (const auto& t : f.tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;
  EXPECT_EQ(f.read_f32("b"), (std::vector<float>{1, 2, 3, 4, 5}));
}

TEST(Gguf, EveryTruncationIsAOneLineError) {
  TempDir dir;
  const std::string good = dir.file("good.gguf");
  write_sample(good, {1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 5});
  const std::string bytes = read_bytes(good);
  const std::string cut = dir.file("cut.gguf");
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_bytes(cut, bytes.substr(0, n));
    SCOPED_TRACE(n);
    const std::string msg = open_error(cut);
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  }
}

TEST(Gguf, CorruptFieldsAreNamed) {
  TempDir dir;
  const std::string good = dir.file("good.gguf");
  write_sample(good, {1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 5});
  const std::string bytes = read_bytes(good);
  const std::string bad = dir.file("bad.gguf");
  auto patched = [&](size_t at, const void* v, size_t n) {
    std::string b = bytes;
    std::memcpy(b.data() + at, v, n);
    write_bytes(bad, b);
    return open_error(bad);
  };
  const uint64_t huge = 1ull << 60;
  const uint32_t nine = 9, seven = 7, five = 5;
  EXPECT_NE(patched(0, "GGUX", 4).find("not a GGUF file"), std::string::npos);
  EXPECT_NE(patched(4, &nine, 4).find("version 9"), std::string::npos);
  EXPECT_NE(patched(8, &huge, 8).find("tensor count"), std::string::npos);
  EXPECT_NE(patched(16, &huge, 8).find("key-value count"), std::string::npos);
  EXPECT_NE(patched(24, &huge, 8).find("key 0"), std::string::npos);
  // The first key is general.alignment (17 bytes): its type tag, then its value.
  EXPECT_NE(patched(24 + 8 + 17, &nine, 4).find("general.alignment"), std::string::npos);
  EXPECT_NE(patched(24 + 8 + 17 + 4, &seven, 4).find("not a power of two"), std::string::npos);

  // Tensor "b": name, n_dims, dims, type, offset.
  const size_t b_info = bytes.find(std::string("\x01\0\0\0\0\0\0\0b", 9)) + 9;
  const size_t b_type = b_info + 4 + 8, b_offset = b_type + 4;
  EXPECT_NE(patched(b_info, &five, 4).find("tensor 1 (b) has 5 dims"), std::string::npos);
  EXPECT_NE(patched(b_type, &five, 4).find("unsupported ggml type 5"), std::string::npos);
  const uint64_t odd = 3, past = 1 << 20, onto_a = 0;
  EXPECT_NE(patched(b_offset, &odd, 8).find("not a multiple of the alignment"), std::string::npos);
  EXPECT_NE(patched(b_offset, &past, 8).find("truncated: tensor b"), std::string::npos);
  EXPECT_NE(patched(b_offset, &onto_a, 8).find("overlap"), std::string::npos);
  const uint64_t zero = 0;
  EXPECT_NE(patched(b_info + 4, &zero, 8).find("dim 0 = 0"), std::string::npos);
  write_bytes(bad, "");
  EXPECT_NE(open_error(bad).find("truncated"), std::string::npos);
  EXPECT_NE(open_error(dir.file("absent.gguf")).find("cannot open"), std::string::npos);
}

ModelConfig tiny_config(bool tied = false, int experts = 4) {
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
  c.num_local_experts = experts;
  c.moe.num_experts_per_tok = 2;
  c.rope_theta = 500.0;
  c.initializer_range = 0.3;
  c.training.seq_len = 6;
  c.sync_moe();
  c.validate();
  return c;
}

std::map<std::string, const ParamRef<float>*> params_of(Transformer<float>& m) {
  std::map<std::string, const ParamRef<float>*> r;
  for (const auto& p : m.parameters()) r[p.name] = &p;
  return r;
}

std::vector<float> values_of(const ParamRef<float>& p) {
  return {p.value, p.value + p.shape.numel()};
}

// The inverse of permute_rope_rows, written out independently: src row i + j*hd/2 of a head
// comes back from dst row 2i + j.
std::vector<float> unpermute(const std::vector<float>& v, int heads, int hd, int cols) {
  std::vector<float> r(v.size());
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd / 2; ++i)
      for (int j = 0; j < 2; ++j)
        for (int c = 0; c < cols; ++c)
          r[(h * hd + i + j * hd / 2) * cols + c] = v[(h * hd + 2 * i + j) * cols + c];
  return r;
}

TEST(GgufExport, TinyMoeRoundTrips) {
  TempDir dir;
  {
    // vocab 23 is not the byte tokenizer's 258: export must say so.
    Transformer<float> small(tiny_config(false, 4));
    EXPECT_MOE_ERROR(export_gguf(small, "", dir.file("bad.gguf"), DType::F32), "vocab_size = 23",
                     "258");
  }
  ModelConfig c = tiny_config(false, 4);
  c.vocab_size = 258;
  Transformer<float> m(c);
  Rng rng(7);
  m.init_weights(rng);
  // Non-trivial norms, so a swapped norm would show.
  for (auto& p : m.parameters())
    if (p.shape.ndim == 1) rng.fill_normal(p.value, p.shape.numel(), 1.0, 0.1);
  const std::string path = dir.file("tiny.gguf");
  export_gguf(m, "", path, DType::F32);

  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.string("general.architecture"), "llama");
  EXPECT_EQ(f.string("general.name"), "tiny");
  EXPECT_EQ(f.u32("llama.vocab_size"), 258u);
  EXPECT_EQ(f.u32("llama.context_length"), 16u);
  EXPECT_EQ(f.u32("llama.embedding_length"), 16u);
  EXPECT_EQ(f.u32("llama.block_count"), 2u);
  EXPECT_EQ(f.u32("llama.feed_forward_length"), 8u);
  EXPECT_EQ(f.u32("llama.attention.head_count"), 4u);
  EXPECT_EQ(f.u32("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(f.u32("llama.rope.dimension_count"), 4u);
  EXPECT_EQ(f.f32("llama.rope.freq_base"), 500.0f);
  EXPECT_EQ(f.f32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(f.u32("llama.expert_count"), 4u);
  EXPECT_EQ(f.u32("llama.expert_used_count"), 2u);
  EXPECT_EQ(f.string("tokenizer.ggml.model"), "gpt2");
  EXPECT_TRUE(f.strings("tokenizer.ggml.merges").empty());
  const auto tokens = f.strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 258u);
  EXPECT_EQ(tokens['A'], "A");
  EXPECT_EQ(tokens[' '], "\xC4\xA0");   // GPT-2's byte-level space, U+0120
  EXPECT_EQ(tokens['\n'], "\xC4\x8A");  // U+010A
  EXPECT_EQ(tokens[256], "<s>");
  EXPECT_EQ(f.i32s("tokenizer.ggml.token_type")[257], 3);
  EXPECT_EQ(f.u32("tokenizer.ggml.bos_token_id"), 256u);
  EXPECT_EQ(f.u32("tokenizer.ggml.eos_token_id"), 257u);
  EXPECT_TRUE(f.boolean("tokenizer.ggml.add_bos_token"));

  // 1 embedding + 2 * (2 norms + 4 attention + router + 3 experts) + final norm + output.
  EXPECT_EQ(f.tensors().size(), 1u + 2 * 10 + 2);
  auto p = params_of(m);
  const int d = 16, V = 258, E = 4, F = 8, H = 4, G = 2, hd = 4;
  auto check = [&](const std::string& name, std::vector<int64_t> dims, uint32_t type,
                   const std::vector<float>& want) {
    SCOPED_TRACE(name);
    const GgufTensorInfo& t = f.tensor(name);
    EXPECT_EQ(t.dims, dims);
    EXPECT_EQ(t.type, type);
    EXPECT_EQ(f.read_f32(name), want);
  };
  check("token_embd.weight", {d, V}, 0, values_of(*p["model.embed_tokens.weight"]));
  check("output.weight", {d, V}, 0, values_of(*p["lm_head.weight"]));
  check("output_norm.weight", {d}, 0, values_of(*p["model.norm.weight"]));
  for (int l = 0; l < 2; ++l) {
    const std::string b = fmt::format("blk.{}.", l), ml = fmt::format("model.layers.{}.", l);
    check(b + "attn_norm.weight", {d}, 0, values_of(*p[ml + "input_layernorm.weight"]));
    check(b + "ffn_norm.weight", {d}, 0, values_of(*p[ml + "post_attention_layernorm.weight"]));
    check(b + "attn_v.weight", {d, G * hd}, 0, values_of(*p[ml + "self_attn.v_proj.weight"]));
    check(b + "attn_output.weight", {H * hd, d}, 0, values_of(*p[ml + "self_attn.o_proj.weight"]));
    check(b + "ffn_gate_inp.weight", {d, E}, 0,
          values_of(*p[ml + "block_sparse_moe.router.weight"]));
    check(b + "ffn_gate_exps.weight", {d, F, E}, 0,
          values_of(*p[ml + "block_sparse_moe.experts.w1"]));
    check(b + "ffn_up_exps.weight", {d, F, E}, 0,
          values_of(*p[ml + "block_sparse_moe.experts.w3"]));
    check(b + "ffn_down_exps.weight", {F, d, E}, 0,
          values_of(*p[ml + "block_sparse_moe.experts.w2"]));
    // Q and K are permuted (and the permutation is not the identity).
    for (const auto& [gg, ours, heads] :
         {std::tuple{"attn_q.weight", "self_attn.q_proj.weight", H},
          std::tuple{"attn_k.weight", "self_attn.k_proj.weight", G}}) {
      const auto stored = f.read_f32(b + gg);
      const auto want = values_of(*p[ml + ours]);
      EXPECT_EQ(f.tensor(b + gg).dims, (std::vector<int64_t>{d, heads * hd}));
      EXPECT_NE(stored, want) << gg;
      EXPECT_EQ(unpermute(stored, heads, hd, d), want) << gg;
    }
  }
}

// HF rotate_half RoPE on x, then the permutation, equals llama.cpp's interleaved RoPE (ggml
// rope mode 0: pairs (2i, 2i+1), theta_i = base^(-2i/hd)) on the permuted x: the exported
// q.k scores are those of our model.
TEST(GgufExport, PermutationMapsRotateHalfToInterleavedRope) {
  const int hd = 8;
  const double base = 10000;
  Rng rng(3);
  const auto x = test::random_vector<float>(rng, hd);
  for (int pos : {0, 1, 5, 37}) {
    std::vector<float> hf(hd), ll(hd), xp(hd), hfp(hd);
    for (int i = 0; i < hd / 2; ++i) {
      const double th = pos * std::pow(base, -2.0 * i / hd), cs = std::cos(th), sn = std::sin(th);
      hf[i] = static_cast<float>(x[i] * cs - x[i + hd / 2] * sn);
      hf[i + hd / 2] = static_cast<float>(x[i + hd / 2] * cs + x[i] * sn);
    }
    permute_rope_rows(x.data(), xp.data(), 1, hd, 1);
    permute_rope_rows(hf.data(), hfp.data(), 1, hd, 1);
    for (int i = 0; i < hd / 2; ++i) {
      const double th = pos * std::pow(base, -2.0 * i / hd), cs = std::cos(th), sn = std::sin(th);
      ll[2 * i] = static_cast<float>(xp[2 * i] * cs - xp[2 * i + 1] * sn);
      ll[2 * i + 1] = static_cast<float>(xp[2 * i + 1] * cs + xp[2 * i] * sn);
    }
    for (int i = 0; i < hd; ++i) EXPECT_NEAR(ll[i], hfp[i], 1e-6) << "pos " << pos << " i " << i;
  }
}

TEST(GgufExport, HalfPrecisionTiedAndDense) {
  TempDir dir;
  Rng rng(11);
  {
    ModelConfig c = tiny_config(true, 4);
    c.vocab_size = 258;
    Transformer<float> m(c);
    m.init_weights(rng);
    const std::string path = dir.file("bf16.gguf");
    export_gguf(m, "", path, DType::BF16);
    const GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.u32("general.file_type"), 32u);
    EXPECT_FALSE(f.has_tensor("output.weight")) << "tied: llama.cpp falls back to token_embd";
    EXPECT_EQ(f.tensor("token_embd.weight").type, 30u);
    EXPECT_EQ(f.tensor("blk.0.ffn_down_exps.weight").type, 30u);
    EXPECT_EQ(f.tensor("blk.0.ffn_gate_inp.weight").type, 0u) << "the router stays F32";
    EXPECT_EQ(f.tensor("blk.1.attn_norm.weight").type, 0u) << "norms stay F32";
    auto p = params_of(m);
    const auto want = values_of(*p["model.layers.1.block_sparse_moe.experts.w2"]);
    const auto got = f.read_f32("blk.1.ffn_down_exps.weight");
    test::expect_close("bf16 experts", got.data(), want.data(), got.size(), 4e-3);
  }
  {
    ModelConfig c = tiny_config(false, 0);
    c.vocab_size = 258;
    c.sync_moe();
    Transformer<float> m(c);
    m.init_weights(rng);
    const std::string path = dir.file("dense.gguf");
    export_gguf(m, "", path, DType::F16);
    const GgufFile f = GgufFile::open(path);
    EXPECT_FALSE(f.has("llama.expert_count"));
    EXPECT_EQ(f.u32("llama.feed_forward_length"), 12u);
    EXPECT_EQ(f.tensor("blk.0.ffn_gate.weight").dims, (std::vector<int64_t>{16, 12}));
    EXPECT_EQ(f.tensor("blk.0.ffn_down.weight").dims, (std::vector<int64_t>{12, 16}));
    EXPECT_EQ(f.tensor("blk.0.ffn_up.weight").type, 1u);
    auto p = params_of(m);
    const auto want = values_of(*p["model.layers.0.mlp.ffn.w3"]);
    const auto got = f.read_f32("blk.0.ffn_up.weight");
    test::expect_close("f16 dense", got.data(), want.data(), got.size(), 1e-3);
  }
}

TEST(GgufExport, ConfigsLlamaCannotRunAreOneLineErrorsNamingTheKey) {
  TempDir dir;
  auto reason = [](auto edit) {
    ModelConfig c = tiny_config();
    edit(c);
    c.sync_moe();
    return gguf_unsupported_reason(c);
  };
  EXPECT_EQ(reason([](ModelConfig&) {}), "");
  EXPECT_EQ(reason([](ModelConfig& c) { c.moe.noisy_gating = true; }), "") << "training only";
  EXPECT_NE(reason([](ModelConfig& c) { c.moe_every = 2; }).find("moe_every = 2"),
            std::string::npos);
  EXPECT_NE(reason([](ModelConfig& c) { c.moe.n_shared_experts = 1; }).find("n_shared_experts"),
            std::string::npos);
  EXPECT_NE(
      reason([](ModelConfig& c) { c.moe.scoring_func = ScoreFunc::Sigmoid; }).find("scoring_func"),
      std::string::npos);
  EXPECT_NE(
      reason([](ModelConfig& c) { c.moe.use_selection_bias = true; }).find("use_selection_bias"),
      std::string::npos);
  EXPECT_NE(reason([](ModelConfig& c) {
              c.moe.n_group = 2;
              c.moe.topk_group = 1;
            }).find("n_group"),
            std::string::npos);
  EXPECT_NE(reason([](ModelConfig& c) { c.moe.norm_topk_prob = false; }).find("norm_topk_prob"),
            std::string::npos);
  EXPECT_NE(
      reason([](ModelConfig& c) { c.moe.num_experts_per_tok = 1; }).find("num_experts_per_tok"),
      std::string::npos);
  EXPECT_NE(reason([](ModelConfig& c) { c.moe.capacity_factor = 1.25; }).find("capacity_factor"),
            std::string::npos);
  EXPECT_NE(reason([](ModelConfig& c) { c.moe.hidden_act = Activation::GELU; }).find("hidden_act"),
            std::string::npos);

  ModelConfig c = tiny_config();
  c.moe_every = 2;
  c.vocab_size = 258;
  Transformer<float> m(c);
  const std::string path = dir.file("x.gguf");
  const std::string msg = test::error_of([&] { export_gguf(m, "", path, DType::F32); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("moe_every"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(GgufExport, SentencePieceVocabulary) {
  TempDir dir;
  std::vector<Document> docs;
  for (int r = 0; r < 30; ++r) {
    docs.push_back({"en", "the quick brown fox jumps over the lazy dog " + std::to_string(r)});
    docs.push_back({"en", "a stitch in time saves nine, the early bird catches the worm"});
    docs.push_back({"code", "def main():\n    return 0\n"});
  }
  const std::string model_path = dir.file("tokenizer.model");
  train_sentencepiece(docs, model_path, 300);
  const auto tok = load_sentencepiece(model_path);

  ModelConfig c = tiny_config();
  c.vocab_size = 300;
  Transformer<float> m(c);
  Rng rng(5);
  m.init_weights(rng);
  const std::string path = dir.file("sp.gguf");
  export_gguf(m, model_path, path, DType::F16);
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.string("tokenizer.ggml.model"), "llama");
  const auto tokens = f.strings("tokenizer.ggml.tokens");
  const auto types = f.i32s("tokenizer.ggml.token_type");
  const auto scores = f.f32s("tokenizer.ggml.scores");
  ASSERT_EQ(tokens.size(), 300u);
  ASSERT_EQ(types.size(), 300u);
  ASSERT_EQ(scores.size(), 300u);
  EXPECT_EQ(types[0], 2);  // unk
  EXPECT_EQ(types[1], 3);  // bos
  EXPECT_EQ(types[2], 3);  // eos
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(types[3 + '\n'], 6);
  EXPECT_EQ(tokens[3 + '\n'], "<0x0A>");
  EXPECT_EQ(types[299], 1);
  EXPECT_EQ(f.u32("tokenizer.ggml.bos_token_id"), static_cast<uint32_t>(tok->bos_id()));
  EXPECT_EQ(f.u32("tokenizer.ggml.eos_token_id"), static_cast<uint32_t>(tok->eos_id()));
  EXPECT_EQ(f.u32("tokenizer.ggml.unknown_token_id"), 0u);
  EXPECT_FALSE(f.boolean("tokenizer.ggml.add_space_prefix"));
  // A piece of the model decodes to its text with U+2581 for spaces.
  const auto ids = tok->encode("the quick");
  std::string joined;
  for (int32_t id : ids) joined += tokens[id];
  EXPECT_EQ(joined, "the\xE2\x96\x81quick");

  EXPECT_MOE_ERROR(export_gguf(m, dir.file("missing.model"), dir.file("y.gguf"), DType::F32),
                   "missing.model");
  c.vocab_size = 301;
  Transformer<float> m301(c);
  EXPECT_MOE_ERROR(export_gguf(m301, model_path, dir.file("y.gguf"), DType::F32), "300 pieces",
                   "vocab_size is 301");
}

}  // namespace
}  // namespace moe
