// Fuzz target: a safetensors file (SafeTensorsFile::open, then every tensor read as float and
// every metadata value looked up).
#include "fuzz_common.h"
#include "moe/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_fuzz::ScratchFile file("input.safetensors", data, size);
  moe_fuzz::expect_only_moe_errors([&] {
    const moe::SafeTensorsFile f = moe::SafeTensorsFile::open(file.path());
    for (const auto& [key, value] : f.metadata()) (void)f.metadata(key);
    for (const std::string& name : f.names()) {
      const moe::TensorEntry& e = f.entry(name);
      if (e.dtype == moe::DType::I64 || e.dtype == moe::DType::I32)
        (void)f.read<int64_t>(name);
      else
        (void)f.read<float>(name);
    }
  });
  return 0;
}
