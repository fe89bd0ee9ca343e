// Fine-tuning's starting point (`moe train --init-from MODEL`): any model that model_path.h
// names, as a trainable Transformer<float> with its config and its own tokenizer, and the
// training settings a --config file may add to it.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "moe/model_config.h"
#include "moe/transformer.h"

namespace moe {

struct TrainableModel {
  ModelConfig config;  // the model's; a checkpoint's training keys are the defaults
  std::unique_ptr<Transformer<float>> model;
  // The TrainConfig::tokenizer that tokenizes as the model does: "byte", or the path of its
  // tokenizer file (a run's tokenizer.model / tokenizer.json, a checkpoint's tokenizer.json or
  // tokenizer.model); "" when a checkpoint directory has none, and for a GGUF file (its
  // vocabulary is metadata, not a file a run can keep).
  std::string tokenizer;
};

// A run directory (config.json + model.safetensors), a Hugging Face checkpoint directory of
// the four families (bf16/f16 widened) or a GGUF file of their architectures (dequantized;
// the llama architecture's Q/K rows un-permuted from interleaved RoPE). Errors name the file
// and the tensor.
TrainableModel load_trainable_model(const std::string& path);

// The model's config with the keys of `settings` (a --config file given with --init-from):
// "training" keys and routing keys (aux coefficients, z-loss, capacity factor, drop policy,
// selection bias, ...) apply; a key that fixes the model's shape must equal the model's, else
// an error names it; an unknown key is an error as in model_config_from_json.
ModelConfig with_training_settings(const ModelConfig& model, const nlohmann::json& settings,
                                   const std::string& where);

// with_training_settings of the JSON file at `path`.
ModelConfig with_training_settings_file(const ModelConfig& model, const std::string& path);

// Copies every parameter (and MoE selection bias) of `from` into `to`, by name; the shapes
// must agree (the same model shape: the training keys may differ).
void copy_weights(Transformer<float>& from, Transformer<float>& to);

// A config for `moe train --config`: ours (model_config.h), or a Hugging Face config.json of
// the four families (its "architectures" key, or a qwen2_moe / qwen3_moe / olmoe model_type
// without our "qk_norm" key), read by model_config_from_hf with an optional "training" object.
ModelConfig load_train_config(const std::string& path);

}  // namespace moe
