#include "moe/model_path.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/error.h"

namespace moe {

namespace fs = std::filesystem;

ModelFormat model_format_of(const std::string& path) {
  MOE_REQUIRE(fs::exists(path), "{}: no such file or directory", path);
  if (fs::is_regular_file(path)) return ModelFormat::Gguf;
  const std::string config = path + "/config.json";
  MOE_REQUIRE(fs::exists(config),
              "{}: cannot open: {} is not a model (neither a GGUF file nor a directory with "
              "config.json: a run or a Hugging Face checkpoint)",
              config, path);
  // A run's config holds its training settings; a Hugging Face config does not.
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(config), nullptr, false);
  MOE_REQUIRE(!j.is_discarded() && j.is_object(), "{}: not a JSON object", config);
  return j.contains("training") ? ModelFormat::Run : ModelFormat::HuggingFace;
}

const char* model_format_name(ModelFormat f) {
  switch (f) {
    case ModelFormat::Run:
      return "run";
    case ModelFormat::HuggingFace:
      return "Hugging Face checkpoint";
    case ModelFormat::Gguf:
      return "GGUF file";
  }
  return "?";
}

}  // namespace moe
