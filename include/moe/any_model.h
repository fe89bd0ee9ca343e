// One way to open a model for every command that takes one (generate, eval, perplexity,
// analyze, route, report): a run directory, a Hugging Face checkpoint directory or a GGUF file
// (model_path.h says which), opened as the same thing: its config, its tokenizer and a Decoder
// (TransformerLm over the run's Transformer<float>, or InferenceModel). Load-time quantization
// (--quantize) applies to all three.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "moe/decoder.h"
#include "moe/model_path.h"
#include "moe/quant.h"
#include "moe/tokenizer.h"
#include "moe/trainer.h"

namespace moe {

class InferenceModel;

struct AnyModel {
  std::string path;  // as given
  ModelFormat format = ModelFormat::Run;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;  // null: a checkpoint without one (token ids only)
  // The token a text starts with, or -1: a run's documents start with document_frame's first
  // token; a checkpoint's with BOS when its tokenizer config says so (checkpoint_adds_bos,
  // gguf_adds_bos).
  int32_t start_token = -1;
  // A run's tokenizer file (what its token caches are keyed by; empty for the byte
  // tokenizer); a Hugging Face directory's tokenizer.json; empty for a GGUF file.
  std::string tokenizer_file;
  std::optional<LoadedRun> run;  // a run: the trainable model the decoder views
  std::unique_ptr<Decoder> decoder;
  InferenceModel* checkpoint = nullptr;  // the decoder when it is an InferenceModel
  // "qwen2_moe (Hugging Face checkpoint)", "mixtral (GGUF file, llama)", "mixtral (run)".
  std::string description() const;
  // The tokenizer, or an error naming the model when it has none.
  const Tokenizer& text_tokenizer() const;
};

// Opens `path` (any of the three). Errors name the path and what is wrong with it.
AnyModel load_any_model(const std::string& path, GgmlType quantize = GgmlType::F32);

// The name of a model for its output directory: the run directory's, the checkpoint
// directory's, or the GGUF file's without .gguf ("runs/x/" -> "x").
std::string model_name(const std::string& path);

}  // namespace moe
