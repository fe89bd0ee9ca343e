#include "moe/any_model.h"

#include <fmt/core.h>

#include <filesystem>

#include "moe/dataset.h"
#include "moe/error.h"
#include "moe/gguf_tokenizer.h"
#include "moe/hf_tokenizer.h"
#include "moe/inference_model.h"

namespace fs = std::filesystem;

namespace moe {

std::string AnyModel::description() const {
  const GgufFile* g = checkpoint ? checkpoint->gguf() : nullptr;
  return g ? fmt::format("{} (GGUF file, {})", config.model_type, g->string("general.architecture"))
           : fmt::format("{} ({})", config.model_type, model_format_name(format));
}

AnyModel load_any_model(const std::string& path, GgmlType quantize) {
  AnyModel m;
  m.path = path;
  m.format = model_format_of(path);
  if (m.format == ModelFormat::Run) {
    m.run.emplace(load_run(path));
    m.config = m.run->config;
    m.tokenizer = std::move(m.run->tokenizer);
    m.tokenizer_file = m.run->tokenizer_file;
    m.start_token = document_frame(*m.tokenizer).first;
    m.decoder = std::make_unique<TransformerLm>(*m.run->model, quantize);
    return m;
  }
  std::unique_ptr<InferenceModel> im = InferenceModel::load(path, quantize);
  m.config = im->config();
  // A checkpoint may come without a tokenizer (then only token ids go in: text_tokenizer()).
  if (const GgufFile* g = im->gguf()) {
    if (g->has("tokenizer.ggml.model")) {
      m.tokenizer = load_gguf_tokenizer(*g);
      if (gguf_adds_bos(*g, *m.tokenizer)) m.start_token = m.tokenizer->bos_id();
    }
  } else if (fs::exists(path + "/tokenizer.json") || fs::exists(path + "/tokenizer.model")) {
    m.tokenizer = load_tokenizer_dir(path);
    if (checkpoint_adds_bos(path, *m.tokenizer)) m.start_token = m.tokenizer->bos_id();
    if (fs::exists(path + "/tokenizer.json")) m.tokenizer_file = path + "/tokenizer.json";
  }
  m.checkpoint = im.get();
  m.decoder = std::move(im);
  return m;
}

const Tokenizer& AnyModel::text_tokenizer() const {
  MOE_REQUIRE(tokenizer != nullptr, "{}: the {} has no tokenizer ({}): it takes token ids only",
              path, model_format_name(format),
              format == ModelFormat::Gguf ? "no tokenizer.ggml.model in its metadata"
                                          : "no tokenizer.json or tokenizer.model");
  return *tokenizer;
}

std::string model_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  std::string name = p.filename().string();
  if (name.ends_with(".gguf")) name.resize(name.size() - 5);
  return name.empty() || name == "." || name == ".." ? "model" : name;
}

}  // namespace moe
