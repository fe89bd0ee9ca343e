// Configuration of the decoder LM (docs/model.md): one Hugging Face-style config.json holds
// what the file fixes (the model shape, Mixtral key names) and, under "training", what a run
// chooses. Every key is validated; an unknown key is an error naming it (typos must not
// silently fall back to a default), except the Hugging Face keys listed as accepted-and-ignored.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "moe/attention.h"       // QkNorm
#include "moe/gated_deltanet.h"  // LinearAttnConfig
#include "moe/moe_config.h"
#include "moe/rope.h"

namespace moe {

// Bounds on vocab_size: any config (4x the largest released vocabulary), and a sentencepiece
// tokenizer trained by `moe train`.
inline constexpr int kMaxVocabSize = 1 << 20;
inline constexpr int kMaxTrainedVocabSize = 1 << 18;

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
  // "sentencepiece" (trained on the train split), "byte", or a tokenizer file: a sentencepiece
  // .model or a Hugging Face tokenizer.json.
  std::string tokenizer = "sentencepiece";
  std::string data_dir = "data";  // moe's data cache (data.h); relative: to the config file
  std::string data;               // the user's text (file or directory); "": the bundled corpus
  double valid_fraction = 0.05;   // held-out share of the user's documents (data.h)
  // The parts that train (comma list of routers, experts, shared, dense, attention, embeddings,
  // norms, head, all); the others are frozen: no AdamW update, no weight decay.
  std::string trainable = "all";

  void validate(const std::string& where) const;
};

// Multi-head Latent Attention (DeepSeek-V2/V3, mla_attention.h): on when kv_lora_rank > 0.
// Queries: q_proj [H*(nope+rope), d], or with q_lora_rank > 0 q_a_proj [q_lora_rank, d],
// RMSNorm, q_b_proj; keys and values from one latent per token: kv_a_proj_with_mqa
// [kv_lora_rank + rope, d], RMSNorm of the first kv_lora_rank, kv_b_proj [H*(nope+v),
// kv_lora_rank].
struct MlaConfig {
  int q_lora_rank = 0;  // 0: Hugging Face's null (q_proj directly)
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  bool rope_interleave = true;  // RoPE pairs (2i, 2i+1) as DeepSeek stores q_pe/k_pe
  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

// The defaults are the default small MoE `moe train` trains (configs/default.json holds the same).
struct ModelConfig {
  std::string model_type = "mixtral";
  int vocab_size = 4096;  // at most kMaxVocabSize (kMaxTrainedVocabSize for a trained tokenizer)
  int hidden_size = 256;
  int intermediate_size = 512;  // Mixtral meaning: the width of one expert
  int num_hidden_layers = 4;
  int num_attention_heads = 8;
  int num_key_value_heads = 4;
  int head_dim = 0;  // 0: hidden_size / num_attention_heads
  int max_position_embeddings = 256;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;  // config.json "rope_scaling" / "rope_parameters" (rope.h)
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  int num_local_experts = 8;        // 0: a dense model (the baseline)
  int moe_every = 1;                // layer l is MoE iff (l + 1) % moe_every == 0
  int dense_intermediate_size = 0;  // width of the dense layers; 0: intermediate_size
  MoeConfig moe;                    // routing keys; hidden_size/width/experts mirror the above
  // Variants of the Hugging Face families (hf_checkpoint.h), trained and run alike.
  bool attention_bias = false;       // q/k/v projections carry a bias (qwen2_moe)
  QkNorm qk_norm = QkNorm::None;     // qwen3_moe: PerHead, olmoe: Full
  std::vector<int> mlp_only_layers;  // dense layers whatever moe_every says (qwen2/3_moe)
  // Granite-MoE's multipliers (the identity elsewhere): embeddings times embedding_multiplier,
  // each attention and FFN output times residual_multiplier before its residual add, attention
  // scores times attention_multiplier instead of 1/sqrt(head_dim) (0: that default), logits
  // divided by logits_scaling. Read from a granitemoe config.json; inference only.
  double embedding_multiplier = 1.0, residual_multiplier = 1.0, attention_multiplier = 0.0;
  double logits_scaling = 1.0;
  MlaConfig mla;  // deepseek_v2/v3 (Hugging Face configs only; not trained)
  // gpt_oss (inference only): layers marked in sliding_layers attend to the last sliding_window
  // positions only; a learned sink logit per head joins every softmax denominator; o_proj,
  // router and experts carry biases; the experts run Activation::ClampedSwiGLU at swiglu_limit.
  int sliding_window = 0;
  std::vector<bool> sliding_layers;  // [L], empty: every layer attends to the whole context
  bool attention_sinks = false;
  bool o_bias = false;
  bool router_bias = false;
  bool expert_bias = false;
  double swiglu_limit = 7.0;
  // qwen3_next / qwen3_5_moe (inference only): layers marked in linear_layers are Gated DeltaNet
  // layers (layer_types "linear_attention"), the others gated full attention: q_proj yields per
  // head a query and an output gate [H, 2*hd], the attention output times sigmoid(gate) before
  // o_proj; RoPE turns the first partial_rotary_factor * head_dim entries of each head. Their
  // RMSNorms scale by (1 + weight) (read as such at load).
  LinearAttnConfig linear;
  std::vector<bool> linear_layers;  // [L], empty: none
  bool attn_output_gate = false;
  double partial_rotary_factor = 1.0;
  TrainConfig training;

  bool is_mla() const { return mla.kv_lora_rank > 0; }
  bool is_linear_layer(int l) const {
    return l < static_cast<int>(linear_layers.size()) && linear_layers[static_cast<size_t>(l)];
  }
  bool has_linear_layers() const {
    for (bool b : linear_layers)
      if (b) return true;
    return false;
  }
  // The entries of a head RoPE turns: head_dim times partial_rotary_factor (even).
  int rotary_dim() const { return static_cast<int>(head_size() * partial_rotary_factor) / 2 * 2; }
  // The positions the model runs: max_position_embeddings, longer where rope_scaling says so.
  int context_length() const { return rope_scaling.context_length(max_position_embeddings); }
  int head_size() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  int dense_width() const {
    return dense_intermediate_size > 0 ? dense_intermediate_size : intermediate_size;
  }
  bool is_moe_layer(int l) const;
  // Whether any Granite-MoE multiplier differs from the identity.
  bool has_multipliers() const {
    return embedding_multiplier != 1.0 || residual_multiplier != 1.0 ||
           attention_multiplier != 0.0 || logits_scaling != 1.0;
  }
  // The positions layer l attends to: sliding_window on a sliding layer, else 0 (all).
  int window_of(int l) const {
    return l < static_cast<int>(sliding_layers.size()) && sliding_layers[static_cast<size_t>(l)]
               ? sliding_window
               : 0;
  }
  // Mirrors hidden_size, intermediate_size and num_local_experts into `moe`.
  void sync_moe();
  void validate(const std::string& where = "config") const;
  // The checks of validate() that concern the model's shape only (no training keys, any of
  // the four families): what a loaded Hugging Face config must pass.
  void validate_shape(const std::string& where) const;
  // The dense width that matches the MoE's active FFN compute per token: k experts of width
  // intermediate_size plus the shared experts (the router's E*d is left out: under 1%).
  int matched_dense_width() const;
};

// "a,b" -> {"a", "b"}.
std::vector<std::string> split_parts(const std::string& list);
// Which part of TrainConfig::trainable a parameter (docs/model.md names) belongs to.
std::string parameter_part(const std::string& name);
// Whether parameter `name` trains under `trainable` (with tied embeddings "head" trains the
// shared embedding too).
bool is_trainable(const std::string& name, const std::string& trainable, bool tied);

// Reads the RoPE keys of a config.json into c.rope_theta and c.rope_scaling (after
// max_position_embeddings is read): "rope_scaling" {"rope_type" or its older alias "type", ...}
// or transformers v5's "rope_parameters" (which may carry rope_theta). An unknown type or key, or
// a missing required one, is an error naming the file and the key.
void read_rope_config(const nlohmann::json& j, const std::string& where, ModelConfig& c);
// The "rope_scaling" object Hugging Face reads (4.x spelling, which v5 reads too); null when
// unscaled.
nlohmann::json rope_scaling_to_json(const RopeScaling& s);

ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json model_config_to_json(const ModelConfig& c);
// Reads and validates a config.json; errors name the file and the key.
ModelConfig load_model_config(const std::string& path);
void save_model_config(const ModelConfig& c, const std::string& path);  // atomic

}  // namespace moe
