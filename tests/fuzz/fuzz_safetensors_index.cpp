// Fuzz target: model.safetensors.index.json of a sharded checkpoint (HfWeights::open). The
// input is the index; the scratch directory also holds links to the two committed shards of
// tests/fixtures/hf/qwen2_moe, so an index that names them is checked against their tensors.
#include <filesystem>

#include "fuzz_common.h"
#include "moe/hf_checkpoint.h"

#ifndef MOE_FIXTURE_DIR
#error "MOE_FIXTURE_DIR must name tests/fixtures"
#endif

namespace {

const std::string& checkpoint_dir() {
  static const std::string dir = [] {
    const std::filesystem::path d = moe_fuzz::scratch_dir() / "checkpoint";
    std::filesystem::create_directories(d);
    for (const char* shard :
         {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
      std::error_code ec;
      std::filesystem::create_symlink(
          std::filesystem::path(MOE_FIXTURE_DIR) / "hf" / "qwen2_moe" / shard, d / shard, ec);
    }
    return d.string();
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = checkpoint_dir();
  const moe_fuzz::ScratchFile index("checkpoint/model.safetensors.index.json", data, size);
  moe_fuzz::expect_only_moe_errors([&] {
    const moe::HfWeights w = moe::HfWeights::open(dir);
    for (const std::string& name : w.names()) (void)w.entry(name);
    (void)w.data_bytes();
  });
  return 0;
}
