// `moe train --config <vit config>`: the ViT-MoE image classifier (vit.h). lm_commands.cpp's
// run_train dispatches here when the config's model_type is "vit_moe".
#pragma once

#include <cstdint>
#include <string>

namespace moe::cli {

// steps > 0 and seed >= 0 override the config's training.max_steps and training.seed.
int run_vit_train(const std::string& config_path, const std::string& out, int steps, int64_t seed,
                  int threads, bool quiet);

}  // namespace moe::cli
