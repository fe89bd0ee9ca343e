// Fuzz target: a GGUF file (GgufFile::open, then every key rendered and read through the typed
// accessors, every F32/F16/BF16 tensor converted to float).
#include "fuzz_common.h"
#include "moe/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_fuzz::ScratchFile file("input.gguf", data, size);
  moe_fuzz::expect_only_moe_errors([&] {
    const moe::GgufFile f = moe::GgufFile::open(file.path());
    for (const auto& kv : f.kvs()) {
      // Not a structured binding: clang 14 cannot capture one in a lambda.
      const std::string& key = kv.first;
      const moe::GgufValue& value = kv.second;
      (void)value.to_string();
      // Each accessor refuses a different stored type with a moe::Error.
      moe_fuzz::expect_only_moe_errors([&] { (void)value.as_int(); });
      moe_fuzz::expect_only_moe_errors([&] { (void)f.f32(key); });
      moe_fuzz::expect_only_moe_errors([&] { (void)f.boolean(key); });
      moe_fuzz::expect_only_moe_errors([&] { (void)f.string(key); });
      moe_fuzz::expect_only_moe_errors([&] { (void)f.strings(key); });
      moe_fuzz::expect_only_moe_errors([&] { (void)f.f32s(key); });
      moe_fuzz::expect_only_moe_errors([&] { (void)f.i32s(key); });
    }
    for (const moe::GgufTensorInfo& t : f.tensors()) {
      (void)t.shape();
      (void)moe::ggml_type_name(t.type);
      moe_fuzz::expect_only_moe_errors([&] { (void)f.read_f32(t.name); });
    }
  });
  return 0;
}
