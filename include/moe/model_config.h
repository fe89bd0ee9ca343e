// Configuration of the decoder LM (docs/model.md): one Hugging Face-style config.json holds
// what the file fixes (the model shape, Mixtral key names) and, under "training", what a run
// chooses. Every key is validated; an unknown key is an error naming it (typos must not
// silently fall back to a default), except the Hugging Face keys listed as accepted-and-ignored.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "moe/moe_config.h"

namespace moe {

struct TrainConfig {
  double learning_rate = 3e-3;
  double min_lr_ratio = 0.1;  // cosine decays to learning_rate * min_lr_ratio
  int warmup_steps = 50;
  int max_steps = 1200;
  double weight_decay = 0.1;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;  // <= 0: no clipping
  int batch_size = 8;      // sequences per micro-batch
  int seq_len = 256;
  int grad_accum_steps = 1;
  int eval_every = 200;        // validation every N steps (0: only at the end)
  int eval_batches = 16;       // validation micro-batches per evaluation (0: whole split)
  int checkpoint_every = 200;  // 0: only at the end
  uint64_t seed = 1234;
  std::string tokenizer = "sentencepiece";  // or "byte"
  std::string data_dir = "data";

  void validate(const std::string& where) const;
};

// The defaults are the default small MoE `moe train` trains (configs/default.json holds the same).
struct ModelConfig {
  std::string model_type = "mixtral";
  int vocab_size = 4096;
  int hidden_size = 256;
  int intermediate_size = 512;  // Mixtral meaning: the width of one expert
  int num_hidden_layers = 4;
  int num_attention_heads = 8;
  int num_key_value_heads = 4;
  int head_dim = 0;  // 0: hidden_size / num_attention_heads
  int max_position_embeddings = 256;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  int num_local_experts = 8;        // 0: a dense model (the baseline)
  int moe_every = 1;                // layer l is MoE iff (l + 1) % moe_every == 0
  int dense_intermediate_size = 0;  // width of the dense layers; 0: intermediate_size
  MoeConfig moe;                    // routing keys; hidden_size/width/experts mirror the above
  TrainConfig training;

  int head_size() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  int dense_width() const {
    return dense_intermediate_size > 0 ? dense_intermediate_size : intermediate_size;
  }
  bool is_moe_layer(int l) const { return num_local_experts > 0 && (l + 1) % moe_every == 0; }
  // Mirrors hidden_size, intermediate_size and num_local_experts into `moe`.
  void sync_moe();
  void validate(const std::string& where = "config") const;
  // The dense width that matches the MoE's active FFN compute per token: k experts of width
  // intermediate_size plus the shared experts (the router's E*d is left out: under 1%).
  int matched_dense_width() const;
};

ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json model_config_to_json(const ModelConfig& c);
// Reads and validates a config.json; errors name the file and the key.
ModelConfig load_model_config(const std::string& path);
void save_model_config(const ModelConfig& c, const std::string& path);  // atomic

}  // namespace moe
