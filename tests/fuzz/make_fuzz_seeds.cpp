// Writes the seeds of the fuzz targets whose format has no committed fixture (GGUF, a
// sentencepiece model) or lacks a case the fixtures miss (safetensors dtypes and metadata):
//   make_fuzz_seeds OUT_DIR   ->  OUT_DIR/{gguf,sentencepiece,safetensors}/...
// Its output is committed as tests/fuzz/seeds/ (docs/reliability.md "Fuzzing"); the writers are
// deterministic, so rerunning it reproduces those files.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "moe/corpus.h"
#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/safetensors.h"
#include "moe/tokenizer.h"

namespace {

std::vector<float> ramp(int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = 0.25f * static_cast<float>(i) - 1.f;
  return v;
}

void write_gguf(const std::filesystem::path& dir) {
  const std::vector<float> w = ramp(4 * 6), b = ramp(6);
  // Every scalar and array type the writer has, one tensor of each written dtype.
  moe::GgufWriter all(32);
  all.set("general.architecture", moe::GgufValue::string("llama"));
  all.set("general.name", moe::GgufValue::string("fuzz seed h\xC3\xA9llo"));
  all.set("t.u32", moe::GgufValue::u32(4000000000u));
  all.set("t.i32", moe::GgufValue::i32(-7));
  all.set("t.u64", moe::GgufValue::u64(1ull << 40));
  all.set("t.f32", moe::GgufValue::f32(0.25f));
  all.set("t.bool", moe::GgufValue::boolean(true));
  all.set("t.strs", moe::GgufValue::strings({"a", "", "\xE2\x96\x81the"}));
  all.set("t.f32s", moe::GgufValue::f32s({1.5f, -2.0f}));
  all.set("t.i32s", moe::GgufValue::i32s({3, -4, 5}));
  all.set("t.empty", moe::GgufValue::i32s({}));
  all.add_tensor("w.f32", {4, 6}, moe::GgmlType::F32, w.data());
  all.add_tensor("w.f16", {4, 6}, moe::GgmlType::F16, w.data());
  all.add_tensor("w.bf16", {4, 6}, moe::GgmlType::BF16, w.data());
  all.add_tensor("b", {6}, moe::GgmlType::F32, b.data());
  all.write((dir / "all_types.gguf").string());
  // One tensor of each quantized type, for read_f32's block decoders.
  const std::vector<float> q = ramp(2 * 256);
  moe::GgufWriter quant(32);
  quant.set("general.architecture", moe::GgufValue::string("llama"));
  for (const moe::GgmlType t : {moe::GgmlType::Q8_0, moe::GgmlType::Q4_0, moe::GgmlType::Q4_K,
                                moe::GgmlType::Q5_K, moe::GgmlType::Q6_K, moe::GgmlType::Q8_K})
    quant.add_tensor("w." + moe::ggml_type_name(static_cast<uint32_t>(t)), {2, 256}, t, q.data());
  quant.write((dir / "quant_types.gguf").string());
  // A minimal file: no tensors, one key, a larger alignment.
  moe::GgufWriter minimal(64);
  minimal.set("general.architecture", moe::GgufValue::string("llama"));
  minimal.write((dir / "minimal.gguf").string());
}

void write_safetensors(const std::filesystem::path& dir) {
  const std::vector<float> w = ramp(3 * 5);
  const std::vector<int32_t> ids = {0, 1, -2, 2147483647};
  const std::vector<double> d = {1.0, -0.5};
  moe::SafeTensorsWriter st;
  st.add("f32", moe::Shape{3, 5}, w.data(), moe::DType::F32);
  st.add("f16", moe::Shape{3, 5}, w.data(), moe::DType::F16);
  st.add("bf16", moe::Shape{15}, w.data(), moe::DType::BF16);
  st.add("f64", moe::Shape{2}, d.data(), moe::DType::F64);
  st.add("i32", moe::Shape{4}, ids.data(), moe::DType::I32);
  st.add("scalar", moe::Shape{}, w.data(), moe::DType::F32);
  st.add("empty", moe::Shape{0, 5}, w.data(), moe::DType::F32);
  st.set_metadata("format", "pt");
  st.set_metadata("note", "fuzz seed");
  st.write((dir / "dtypes.safetensors").string());
}

void write_sentencepiece(const std::filesystem::path& dir) {
  const std::vector<moe::Document> docs = {
      {"en", "the quick brown fox jumps over the lazy dog\nthe end of the story"},
      {"code", "def f(x):\n    return x * 2\n"},
      {"de", "der schnelle braune Fuchs über den faulen Hund"},
      {"numbers", "12 + 30 = 42"}};
  moe::train_sentencepiece(docs, (dir / "bpe300.model").string(), 300);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path out = argv[1];
    for (const char* sub : {"gguf", "safetensors", "sentencepiece"})
      std::filesystem::create_directories(out / sub);
    write_gguf(out / "gguf");
    write_safetensors(out / "safetensors");
    write_sentencepiece(out / "sentencepiece");
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
