// One way to name a model: a run directory (ours: config.json with a "training" section and
// model.safetensors), a Hugging Face checkpoint directory (config.json of a supported family and
// its safetensors), or a GGUF file. Every command that takes a model classifies it here.
#pragma once

#include <string>

namespace moe {

enum class ModelFormat { Run, HuggingFace, Gguf };

// Which of the three `path` is, from what is on disk (nothing is loaded): a regular file is a
// GGUF file; a directory holds config.json, which a run's has a "training" section in. A path
// that is none of them is one error line naming it.
ModelFormat model_format_of(const std::string& path);
const char* model_format_name(ModelFormat f);  // "run", "Hugging Face checkpoint", "GGUF file"

}  // namespace moe
