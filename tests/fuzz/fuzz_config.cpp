// Fuzz target: config files. The same bytes go to the three readers of a config.json: the
// model and training config of `moe train` (load_model_config), a Hugging Face checkpoint's
// config (load_hf_config) and the ViT training config (load_vit_config).
#include "fuzz_common.h"
#include "moe/hf_checkpoint.h"
#include "moe/model_config.h"
#include "moe/vit.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_fuzz::ScratchFile file("config.json", data, size);
  moe_fuzz::expect_only_moe_errors([&] { (void)moe::load_model_config(file.path()); });
  moe_fuzz::expect_only_moe_errors([&] { (void)moe::load_hf_config(file.path()); });
  moe_fuzz::expect_only_moe_errors([&] { (void)moe::load_vit_config(file.path()); });
  return 0;
}
