#include "moe/hf_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/input_file.h"
#include "core/json_keys.h"
#include "moe/error.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

bool is_null_or_absent(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null();
}

constexpr const char* kHfFamilies =
    "mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe, deepseek_v2, deepseek_v3, kimi_k2, gpt_oss, "
    "qwen3_next, qwen3_5_moe, or a dense llama, mistral, qwen2 or qwen3";

}  // namespace

bool is_dense_hf_family(const std::string& model_type) {
  return model_type == "llama" || model_type == "mistral" || model_type == "qwen2" ||
         model_type == "qwen3";
}

bool is_deepseek_family(const std::string& model_type) {
  return model_type == "deepseek_v2" || model_type == "deepseek_v3" || model_type == "kimi_k2";
}

namespace {

// The keys every family shares, over the defaults already set.
void read_common_keys(const JsonKeyReader& get, ModelConfig& c) {
  get("vocab_size", c.vocab_size);
  get("hidden_size", c.hidden_size);
  get("num_hidden_layers", c.num_hidden_layers);
  get("num_attention_heads", c.num_attention_heads);
  get("num_key_value_heads", c.num_key_value_heads);
  get("head_dim", c.head_dim);
  get("max_position_embeddings", c.max_position_embeddings);
  get("rope_theta", c.rope_theta);
  get("rms_norm_eps", c.rms_norm_eps);
  get("tie_word_embeddings", c.tie_word_embeddings);
  get("initializer_range", c.initializer_range);
}

// Hugging Face's MoE blocks as they train: the auxiliary loss as HF computes it, no router
// z-loss (the families' training loss has none), dropless (no capacity).
void use_hf_moe_losses(MoeConfig& m) {
  m.aux_loss_style = AuxLossStyle::HF;
  m.router_z_loss_coef = 0;
  m.capacity_factor = 0;
}

// Training settings start from the defaults (the file fixes the shape, the run the rest), the
// sequence within the model's context; then the shape is checked.
ModelConfig finish_hf_config(ModelConfig& c, const std::string& where) {
  c.training = TrainConfig{};
  c.training.seq_len = std::min(c.training.seq_len, c.max_position_embeddings);
  c.validate_shape(where);
  return c;
}

// Settings that would change the computation but that we do not implement: refuse them rather
// than run something else. `window_switch`: the key that turns the sliding window on (Qwen's
// use_sliding_window), or null where sliding_window alone says it (Mistral, Mixtral).
void refuse_unsupported_keys(const nlohmann::json& j, const JsonKeyReader& get,
                             const std::string& where, const ModelConfig& c,
                             const char* window_switch) {
  std::string act = "silu";
  get("hidden_act", act);
  MOE_REQUIRE(act == "silu", "{}: hidden_act \"{}\" is not supported (expected \"silu\")", where,
              act);
  MOE_REQUIRE(is_null_or_absent(j, "clip_qkv"), "{}: clip_qkv {} is not supported", where,
              j.contains("clip_qkv") ? j["clip_qkv"].dump() : "");
  bool sliding = !window_switch && !is_null_or_absent(j, "sliding_window");
  if (window_switch) get(window_switch, sliding);
  if (sliding) {
    // The window only matters past its length; refuse it rather than attend too far.
    int window = 0;
    get("sliding_window", window);
    MOE_REQUIRE(window >= c.max_position_embeddings,
                "{}: sliding_window = {} (shorter than max_position_embeddings = {}) is not "
                "supported",
                where, window, c.max_position_embeddings);
  }
  // Newer Qwen2/Qwen3 configs list each layer's attention kind.
  std::vector<std::string> layer_types;
  get("layer_types", layer_types);
  for (size_t l = 0; l < layer_types.size(); ++l)
    MOE_REQUIRE(layer_types[l] == "full_attention",
                "{}: layer_types[{}] = \"{}\" is not supported (full attention only)", where, l,
                layer_types[l]);
}

// llama, mistral, qwen2, qwen3: every layer a SwiGLU MLP of intermediate_size
// (model.layers.N.mlp.{gate,up,down}_proj), num_local_experts = 0. Defaults of each family's
// Hugging Face config class.
ModelConfig dense_config_from_hf(const nlohmann::json& j, const std::string& where,
                                 const std::string& type) {
  JsonKeyReader get{j, where};
  ModelConfig c;
  c.model_type = type;
  c.head_dim = 0;
  c.tie_word_embeddings = false;
  c.initializer_range = 0.02;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000;
  c.num_local_experts = 0;
  c.moe_every = 1;
  if (type == "llama" || type == "mistral") {
    c.vocab_size = 32000, c.hidden_size = 4096, c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.intermediate_size = type == "llama" ? 11008 : 14336;
    c.num_key_value_heads = type == "llama" ? 0 : 8;  // llama: null, i.e. num_attention_heads
    c.max_position_embeddings = type == "llama" ? 2048 : 4096 * 32;
  } else {  // qwen2, qwen3
    c.vocab_size = 151936, c.hidden_size = 4096, c.intermediate_size = 22016;
    c.num_hidden_layers = 32, c.num_attention_heads = 32, c.num_key_value_heads = 32;
    c.max_position_embeddings = 32768;
    c.attention_bias = type == "qwen2";  // Qwen2's q/k/v projections always carry a bias
    if (type == "qwen3") c.head_dim = 128, c.qk_norm = QkNorm::PerHead;
  }
  get("num_attention_heads", c.num_attention_heads);
  if (c.num_key_value_heads == 0) c.num_key_value_heads = c.num_attention_heads;
  read_common_keys(get, c);
  read_rope_config(j, where, c);
  get("intermediate_size", c.intermediate_size);
  if (type != "qwen2") {
    // Llama and Qwen3 put attention_bias on o_proj as well, which the decoder has no bias for.
    bool bias = false;
    get("attention_bias", bias);
    MOE_REQUIRE(!bias, "{}: attention_bias = true is not supported for model_type {}", where, type);
  }
  bool mlp_bias = false;
  get("mlp_bias", mlp_bias);
  MOE_REQUIRE(!mlp_bias, "{}: mlp_bias = true is not supported", where);
  // Mistral's default window (4096) is in use when the key is absent.
  if (type == "mistral" && !j.contains("sliding_window"))
    MOE_REQUIRE(4096 >= c.max_position_embeddings,
                "{}: sliding_window (default 4096, shorter than max_position_embeddings = {}) is "
                "not supported",
                where, c.max_position_embeddings);
  refuse_unsupported_keys(j, get, where, c,
                          type == "qwen2" || type == "qwen3" ? "use_sliding_window" : nullptr);
  c.sync_moe();
  c.moe.num_experts = 0;  // no router
  return finish_hf_config(c, where);
}

// deepseek_v2 / deepseek_v3 (kimi_k2 configs are deepseek_v3): MLA attention and DeepSeekMoE
// (routed + ungated shared experts, dense first_k_dense_replace layers). Defaults of the
// Hugging Face config classes (DeepseekV2Config, DeepseekV3Config); the routing as their
// modeling files compute it: V2 softmax scores, greedy or group_limited_greedy (a group's score
// is its best expert), gates scaled by routed_scaling_factor and never renormalized; V3 sigmoid
// scores, selection by score + e_score_correction_bias in the best topk_group groups (a group's
// score is the sum of its best two), gates from the unbiased scores, renormalized when
// norm_topk_prob, then scaled.
ModelConfig deepseek_config_from_hf(const nlohmann::json& j, const std::string& where,
                                    const std::string& type) {
  JsonKeyReader get{j, where};
  const bool v3 = type != "deepseek_v2";
  ModelConfig c;
  MoeConfig& m = c.moe;
  MlaConfig& a = c.mla;
  c.model_type = v3 ? "deepseek_v3" : "deepseek_v2";
  c.tie_word_embeddings = false, c.initializer_range = 0.02, c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000, c.moe_every = 1;
  a.kv_lora_rank = 512, a.q_lora_rank = 1536, a.qk_rope_head_dim = 64, a.qk_nope_head_dim = 128;
  a.v_head_dim = 128, a.rope_interleave = true;
  int dense_width = 0, n_routed = 0, n_shared = 0, first_dense = 0, moe_freq = 1;
  std::string topk_method = v3 ? "noaux_tc" : "greedy";
  std::string scoring = v3 ? "sigmoid" : "softmax";
  if (v3) {
    c.vocab_size = 129280, c.hidden_size = 7168, dense_width = 18432, c.intermediate_size = 2048;
    c.num_hidden_layers = 61, c.num_attention_heads = 128, c.max_position_embeddings = 4096;
    n_routed = 256, n_shared = 1, first_dense = 3, m.num_experts_per_tok = 8;
    m.routed_scaling_factor = 2.5, m.n_group = 8, m.topk_group = 4, m.norm_topk_prob = true;
  } else {
    c.vocab_size = 32000, c.hidden_size = 4096, dense_width = 11008, c.intermediate_size = 1407;
    c.num_hidden_layers = 30, c.num_attention_heads = 32, c.max_position_embeddings = 2048;
    n_routed = 0, n_shared = 0, m.routed_scaling_factor = 1.0, m.norm_topk_prob = false;
  }
  read_common_keys(get, c);
  read_rope_config(j, where, c);
  // Dynamic NTK would re-rotate q_pe/k_pe as the sequence grows; DeepSeek releases use YaRN.
  MOE_REQUIRE(c.rope_scaling.type != RopeType::Dynamic,
              "{}: rope_scaling type \"dynamic\" is not supported for {}", where, type);
  // MLA has as many key/value heads as query heads; another value would make Hugging Face's
  // repeat_kv replicate heads that are already full.
  c.num_key_value_heads = c.num_attention_heads;
  get("num_key_value_heads", c.num_key_value_heads);
  MOE_REQUIRE(c.num_key_value_heads == c.num_attention_heads,
              "{}: num_key_value_heads = {} differs from num_attention_heads = {} (MLA attends "
              "with every head)",
              where, c.num_key_value_heads, c.num_attention_heads);
  get("intermediate_size", dense_width);
  get("moe_intermediate_size", c.intermediate_size);
  // q_lora_rank null: q_proj directly.
  if (j.contains("q_lora_rank") && j["q_lora_rank"].is_null())
    a.q_lora_rank = 0;
  else
    get("q_lora_rank", a.q_lora_rank);
  get("kv_lora_rank", a.kv_lora_rank);
  get("qk_rope_head_dim", a.qk_rope_head_dim);
  get("qk_nope_head_dim", a.qk_nope_head_dim);
  get("v_head_dim", a.v_head_dim);
  get("rope_interleave", a.rope_interleave);
  c.head_dim = a.qk_head_dim();
  get("n_routed_experts", n_routed);
  get("n_shared_experts", n_shared);
  get("num_experts_per_tok", m.num_experts_per_tok);
  get("first_k_dense_replace", first_dense);
  get("moe_layer_freq", moe_freq);
  get("routed_scaling_factor", m.routed_scaling_factor);
  get("norm_topk_prob", m.norm_topk_prob);
  get("topk_method", topk_method);
  get("scoring_func", scoring);
  get("n_group", m.n_group);
  get("topk_group", m.topk_group);
  get("aux_loss_alpha", m.router_aux_loss_coef);

  MOE_REQUIRE(scoring == (v3 ? "sigmoid" : "softmax"),
              "{}: scoring_func \"{}\" is not supported for {} (expected \"{}\")", where, scoring,
              type, v3 ? "sigmoid" : "softmax");
  if (v3) {
    MOE_REQUIRE(topk_method == "noaux_tc",
                "{}: topk_method \"{}\" is not supported for {} (expected \"noaux_tc\")", where,
                topk_method, type);
    m.scoring_func = ScoreFunc::Sigmoid;
    m.use_selection_bias = true;  // e_score_correction_bias
  } else {
    MOE_REQUIRE(topk_method == "greedy" || topk_method == "group_limited_greedy",
                "{}: topk_method \"{}\" is not supported for deepseek_v2 (expected \"greedy\" or "
                "\"group_limited_greedy\")",
                where, topk_method);
    // Hugging Face's DeepseekV2Moe scales the gates and never renormalizes them; DeepSeek's own
    // code renormalizes instead of scaling: a config asking for it has no one answer.
    MOE_REQUIRE(!m.norm_topk_prob,
                "{}: norm_topk_prob = true is not supported for deepseek_v2 (Hugging Face scales "
                "by routed_scaling_factor without renormalizing)",
                where);
    if (topk_method == "greedy") m.n_group = 1, m.topk_group = 1;
    m.group_score_max = true;
  }
  MOE_REQUIRE(is_null_or_absent(j, "quantization_config"),
              "{}: quantization_config {} is not supported (dequantize the checkpoint to bf16 "
              "first)",
              where, j.contains("quantization_config") ? j["quantization_config"].dump() : "");
  bool mlp_bias = false;
  get("mlp_bias", mlp_bias);
  MOE_REQUIRE(!mlp_bias, "{}: mlp_bias = true is not supported", where);
  bool bias = false;
  get("attention_bias", bias);
  MOE_REQUIRE(!bias, "{}: attention_bias = true is not supported for model_type {}", where, type);
  MOE_REQUIRE(moe_freq >= 1, "{}: moe_layer_freq must be positive, got {}", where, moe_freq);
  MOE_REQUIRE(first_dense >= 0, "{}: first_k_dense_replace must be non-negative, got {}", where,
              first_dense);
  MOE_REQUIRE(a.kv_lora_rank > 0 && a.q_lora_rank >= 0 && a.qk_nope_head_dim > 0 &&
                  a.v_head_dim > 0 && a.qk_rope_head_dim > 0 && a.qk_rope_head_dim % 2 == 0,
              "{}: kv_lora_rank = {}, q_lora_rank = {}, qk_nope_head_dim = {}, v_head_dim = {} "
              "must be positive and qk_rope_head_dim = {} positive and even",
              where, a.kv_lora_rank, a.q_lora_rank, a.qk_nope_head_dim, a.v_head_dim,
              a.qk_rope_head_dim);

  c.dense_intermediate_size = dense_width;
  c.num_local_experts = n_routed;
  if (n_routed > 0) {
    MOE_REQUIRE(m.num_experts_per_tok > 0, "{}: num_experts_per_tok is missing", where);
    // The DeepSeek layout: layer l is MoE iff l >= first_k_dense_replace and
    // l % moe_layer_freq == 0; the others are dense MLPs of intermediate_size.
    for (int l = 0; l < c.num_hidden_layers; ++l)
      if (l < first_dense || l % moe_freq != 0) c.mlp_only_layers.push_back(l);
    MOE_REQUIRE(static_cast<int>(c.mlp_only_layers.size()) < c.num_hidden_layers,
                "{}: first_k_dense_replace = {} leaves no MoE layer among {} layers", where,
                first_dense, c.num_hidden_layers);
  }
  m.n_shared_experts = n_shared;  // ungated, n_shared * moe_intermediate_size wide
  m.shared_expert_gate = false;
  use_hf_moe_losses(m);
  refuse_unsupported_keys(j, get, where, c, nullptr);
  c.sync_moe();
  if (n_routed == 0) c.moe.num_experts = 0;
  return finish_hf_config(c, where);
}

// gpt_oss (transformers models/gpt_oss, GptOssConfig's defaults: gpt-oss-120b's shape):
// biased attention with per-head sinks on alternating sliding-window / full layers, YaRN, a
// biased router whose top-k logits are softmaxed (= softmax scores renormalized over the top-k),
// and 32/128 biased experts with the clamped SwiGLU. Inference only.
ModelConfig gpt_oss_config_from_hf(const nlohmann::json& j, const std::string& where) {
  JsonKeyReader get{j, where};
  ModelConfig c;
  c.model_type = "gpt_oss";
  MoeConfig& m = c.moe;
  c.vocab_size = 201088, c.hidden_size = 2880, c.intermediate_size = 2880;
  c.num_hidden_layers = 36, c.num_attention_heads = 64, c.num_key_value_heads = 8;
  c.head_dim = 64, c.max_position_embeddings = 131072, c.rms_norm_eps = 1e-5;
  c.rope_theta = 150000, c.tie_word_embeddings = false, c.initializer_range = 0.02;
  c.num_local_experts = 128, m.num_experts_per_tok = 4, m.router_aux_loss_coef = 0.9;
  c.sliding_window = 128, c.swiglu_limit = 7.0;
  read_common_keys(get, c);
  if (is_null_or_absent(j, "rope_scaling") && is_null_or_absent(j, "rope_parameters")) {
    // GptOssConfig's default rope_scaling (the released configs state the same).
    RopeScaling& r = c.rope_scaling;
    r.type = RopeType::Yarn, r.factor = 32, r.original_max_position_embeddings = 4096;
    r.beta_fast = 32, r.beta_slow = 1, r.truncate = false;
  }
  read_rope_config(j, where, c);
  get("intermediate_size", c.intermediate_size);
  get("num_local_experts", c.num_local_experts);
  get("num_experts_per_tok", m.num_experts_per_tok);
  get("router_aux_loss_coef", m.router_aux_loss_coef);
  get("sliding_window", c.sliding_window);
  get("swiglu_limit", c.swiglu_limit);
  MOE_REQUIRE(c.swiglu_limit > 0, "{}: swiglu_limit = {} must be positive", where, c.swiglu_limit);
  bool bias = true;
  get("attention_bias", bias);
  MOE_REQUIRE(bias, "{}: attention_bias = false is not supported for model_type gpt_oss", where);
  std::string act = "silu";
  get("hidden_act", act);  // unused by gpt-oss's experts (the clamped SwiGLU), stated as silu
  MOE_REQUIRE(act == "silu", "{}: hidden_act \"{}\" is not supported (expected \"silu\")", where,
              act);
  std::vector<std::string> layer_types;
  get("layer_types", layer_types);
  if (!j.contains("layer_types"))  // GptOssConfig's default: sliding first, then alternating
    for (int l = 0; l < c.num_hidden_layers; ++l)
      layer_types.push_back(l % 2 == 0 ? "sliding_attention" : "full_attention");
  MOE_REQUIRE(static_cast<int>(layer_types.size()) == c.num_hidden_layers,
              "{}: layer_types has {} entries for num_hidden_layers = {}", where,
              layer_types.size(), c.num_hidden_layers);
  for (size_t l = 0; l < layer_types.size(); ++l) {
    MOE_REQUIRE(layer_types[l] == "sliding_attention" || layer_types[l] == "full_attention",
                "{}: layer_types[{}] = \"{}\" is not supported (sliding_attention or "
                "full_attention)",
                where, l, layer_types[l]);
    c.sliding_layers.push_back(layer_types[l] == "sliding_attention");
  }
  MOE_REQUIRE(c.sliding_window > 0, "{}: sliding_window = {} must be positive", where,
              c.sliding_window);
  c.attention_bias = c.o_bias = c.attention_sinks = true;
  c.router_bias = c.expert_bias = true;
  m.hidden_act = Activation::ClampedSwiGLU;
  m.scoring_func = ScoreFunc::Softmax;
  m.norm_topk_prob = true;  // softmax over the k selected logits
  use_hf_moe_losses(m);
  c.sync_moe();
  return finish_hf_config(c, where);
}

// qwen3_next and the text model of qwen3_5_moe (transformers models/qwen3_next,
// models/qwen3_5_moe; defaults of Qwen3NextConfig and Qwen3_5MoeTextConfig): Gated DeltaNet
// layers (layer_types "linear_attention", or every layer but each full_attention_interval-th)
// and gated full attention with per-head zero-centred q/k RMSNorm and partial RoPE; routed
// softmax top-k experts plus one sigmoid-gated shared expert. qwen3_5_moe nests the text model
// under text_config (its vision tower and the rest of the file are not read), always
// renormalizes the top-k and has no dense layers. Inference only.
ModelConfig qwen3_next_config_from_hf(const nlohmann::json& top, const std::string& where,
                                      const std::string& type) {
  const bool q35 = type == "qwen3_5_moe";
  std::string w = where;
  const nlohmann::json* jp = &top;
  if (q35) {
    MOE_REQUIRE(top.contains("text_config") && top["text_config"].is_object(),
                "{}: text_config is missing or not an object (model_type qwen3_5_moe)", where);
    jp = &top["text_config"];
    w = where + ": text_config";
  }
  const nlohmann::json& j = *jp;
  JsonKeyReader get{j, w};
  ModelConfig c;
  MoeConfig& m = c.moe;
  LinearAttnConfig& a = c.linear;
  c.model_type = type;
  c.vocab_size = q35 ? 248320 : 151936, c.hidden_size = 2048, c.num_hidden_layers = q35 ? 40 : 48;
  c.num_attention_heads = 16, c.num_key_value_heads = 2, c.head_dim = 256;
  c.max_position_embeddings = 32768, c.rms_norm_eps = 1e-6, c.rope_theta = 10000;
  c.tie_word_embeddings = false, c.initializer_range = 0.02, c.partial_rotary_factor = 0.25;
  a.conv_kernel = 4, a.k_head_dim = 128, a.v_head_dim = 128, a.num_k_heads = 16;
  a.num_v_heads = 32;
  int dense_width = 5632, shared_width = 512, interval = 4;
  c.intermediate_size = 512, c.num_local_experts = q35 ? 256 : 512;
  m.num_experts_per_tok = q35 ? 8 : 10, m.norm_topk_prob = true, m.router_aux_loss_coef = 0.001;
  read_common_keys(get, c);
  get("partial_rotary_factor", c.partial_rotary_factor);
  read_rope_config(j, w, c);  // rope_parameters may carry rope_theta and partial_rotary_factor
  get("linear_conv_kernel_dim", a.conv_kernel);
  get("linear_key_head_dim", a.k_head_dim);
  get("linear_value_head_dim", a.v_head_dim);
  get("linear_num_key_heads", a.num_k_heads);
  get("linear_num_value_heads", a.num_v_heads);
  get("moe_intermediate_size", c.intermediate_size);
  get("shared_expert_intermediate_size", shared_width);
  get("num_experts_per_tok", m.num_experts_per_tok);
  get("num_experts", c.num_local_experts);
  get("router_aux_loss_coef", m.router_aux_loss_coef);
  get("full_attention_interval", interval);
  if (!q35) {
    get("intermediate_size", dense_width);
    get("norm_topk_prob", m.norm_topk_prob);
    get("decoder_sparse_step", c.moe_every);
    get("mlp_only_layers", c.mlp_only_layers);
  } else {
    // Qwen3_5MoeTextConfig deletes these: every layer is MoE and the top-k is renormalized.
    for (const char* k : {"decoder_sparse_step", "mlp_only_layers", "norm_topk_prob"})
      MOE_REQUIRE(is_null_or_absent(j, k),
                  "{}: {} is not a key of qwen3_5_moe (every layer is "
                  "MoE, the top-k always renormalized)",
                  w, k);
  }
  MOE_REQUIRE(interval >= 1, "{}: full_attention_interval must be positive, got {}", w, interval);
  std::vector<std::string> layer_types;
  get("layer_types", layer_types);
  if (!j.contains("layer_types") || j["layer_types"].is_null())
    for (int l = 0; l < c.num_hidden_layers; ++l)
      layer_types.push_back((l + 1) % interval != 0 ? "linear_attention" : "full_attention");
  MOE_REQUIRE(static_cast<int>(layer_types.size()) == c.num_hidden_layers,
              "{}: layer_types has {} entries for num_hidden_layers = {}", w, layer_types.size(),
              c.num_hidden_layers);
  for (size_t l = 0; l < layer_types.size(); ++l) {
    MOE_REQUIRE(layer_types[l] == "linear_attention" || layer_types[l] == "full_attention",
                "{}: layer_types[{}] = \"{}\" is not supported (linear_attention or "
                "full_attention)",
                w, l, layer_types[l]);
    c.linear_layers.push_back(layer_types[l] == "linear_attention");
  }
  bool bias = false;
  get("attention_bias", bias);
  MOE_REQUIRE(!bias, "{}: attention_bias = true is not supported for model_type {}", w, type);
  std::string act = "silu";
  get("hidden_act", act);
  MOE_REQUIRE(act == "silu", "{}: hidden_act \"{}\" is not supported (expected \"silu\")", w, act);
  MOE_REQUIRE(c.rope_scaling.type != RopeType::Dynamic,
              "{}: rope_scaling type \"dynamic\" is not supported for {}", w, type);
  c.dense_intermediate_size = dense_width;
  c.qk_norm = QkNorm::PerHead;
  c.attn_output_gate = true;
  if (shared_width > 0) {
    m.n_shared_experts = 1;
    m.shared_expert_intermediate_size = shared_width;
    m.shared_expert_gate = true;
  }
  m.scoring_func = ScoreFunc::Softmax;
  use_hf_moe_losses(m);
  c.sync_moe();
  return finish_hf_config(c, w);
}

}  // namespace

ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& where) {
  MOE_REQUIRE(j.is_object(), "{}: expected a JSON object", where);
  // Without model_type nothing says which family's defaults and tensor names apply: an empty or
  // unrelated JSON file must not pass as Mixtral-8x7B and fail later on a tensor shape.
  MOE_REQUIRE(j.contains("model_type") && !j["model_type"].is_null(),
              "{}: model_type is missing (expected {})", where, kHfFamilies);
  JsonKeyReader get{j, where};
  ModelConfig c;
  get("model_type", c.model_type);
  const std::string& type = c.model_type;
  if (is_dense_hf_family(type)) return dense_config_from_hf(j, where, type);
  if (is_deepseek_family(type)) return deepseek_config_from_hf(j, where, type);
  if (type == "gpt_oss") return gpt_oss_config_from_hf(j, where);
  if (type == "qwen3_next" || type == "qwen3_5_moe")
    return qwen3_next_config_from_hf(j, where, type);
  MOE_REQUIRE(type == "mixtral" || type == "qwen2_moe" || type == "qwen3_moe" || type == "olmoe" ||
                  type == "granitemoe",
              "{}: model_type \"{}\" is not supported (expected {})", where, type, kHfFamilies);
  const bool granite = type == "granitemoe";
  const bool mixtral = type == "mixtral" || granite;  // Granite-MoE names its keys as Mixtral
  const bool qwen2 = type == "qwen2_moe", qwen3 = type == "qwen3_moe";
  const bool qwen = qwen2 || qwen3;

  // The defaults of each family's Hugging Face config class.
  MoeConfig& m = c.moe;
  int dense_width = 0, shared_width = 0;
  c.head_dim = 0;
  c.tie_word_embeddings = false;
  c.initializer_range = 0.02;
  if (granite) {  // GraniteMoeConfig
    c.vocab_size = 32000, c.hidden_size = 4096, c.intermediate_size = 11008;
    c.num_hidden_layers = 32, c.num_attention_heads = 32, c.num_key_value_heads = 0;
    c.max_position_embeddings = 2048, c.rms_norm_eps = 1e-6, c.rope_theta = 10000;
    c.num_local_experts = 8, m.num_experts_per_tok = 2, m.router_aux_loss_coef = 0.001;
    m.norm_topk_prob = true;  // the softmax over the top-k logits: renormalized top-k
  } else if (mixtral) {
    c.vocab_size = 32000, c.hidden_size = 4096, c.intermediate_size = 14336;
    c.num_hidden_layers = 32, c.num_attention_heads = 32, c.num_key_value_heads = 8;
    c.max_position_embeddings = 4096 * 32, c.rms_norm_eps = 1e-5, c.rope_theta = 1e6;
    c.num_local_experts = 8, m.num_experts_per_tok = 2, m.router_aux_loss_coef = 0.001;
    m.norm_topk_prob = true;  // Mixtral always renormalizes the top-k gates
  } else if (qwen2) {
    c.vocab_size = 151936, c.hidden_size = 2048, dense_width = 5632, c.num_hidden_layers = 24;
    c.num_attention_heads = 16, c.num_key_value_heads = 16, c.max_position_embeddings = 32768;
    c.rms_norm_eps = 1e-6, c.rope_theta = 10000, c.intermediate_size = 1408;
    shared_width = 5632, c.num_local_experts = 60, m.num_experts_per_tok = 4;
    m.norm_topk_prob = false, m.router_aux_loss_coef = 0.001, c.attention_bias = true;
  } else if (qwen3) {
    c.vocab_size = 151936, c.hidden_size = 2048, dense_width = 6144, c.num_hidden_layers = 24;
    c.num_attention_heads = 32, c.num_key_value_heads = 4, c.head_dim = 128;
    c.max_position_embeddings = 32768, c.rms_norm_eps = 1e-6, c.rope_theta = 10000;
    c.intermediate_size = 768, c.num_local_experts = 128, m.num_experts_per_tok = 8;
    m.norm_topk_prob = false, m.router_aux_loss_coef = 0.001, c.qk_norm = QkNorm::PerHead;
  } else {  // olmoe
    c.vocab_size = 50304, c.hidden_size = 2048, c.intermediate_size = 2048;
    c.num_hidden_layers = 16, c.num_attention_heads = 16, c.num_key_value_heads = 0;
    c.max_position_embeddings = 4096, c.rms_norm_eps = 1e-5, c.rope_theta = 10000;
    c.num_local_experts = 64, m.num_experts_per_tok = 8, m.norm_topk_prob = false;
    m.router_aux_loss_coef = 0.01, c.qk_norm = QkNorm::Full;
  }

  get("num_attention_heads", c.num_attention_heads);
  if ((!mixtral || granite) && c.num_key_value_heads == 0)
    c.num_key_value_heads = c.num_attention_heads;
  read_common_keys(get, c);
  read_rope_config(j, where, c);
  get("num_experts_per_tok", m.num_experts_per_tok);
  get("router_aux_loss_coef", m.router_aux_loss_coef);
  if (!mixtral) get("norm_topk_prob", m.norm_topk_prob);
  if (mixtral) {
    get("intermediate_size", c.intermediate_size);
    get("num_local_experts", c.num_local_experts);
  } else if (qwen) {
    get("intermediate_size", dense_width);
    get("moe_intermediate_size", c.intermediate_size);
    get("num_experts", c.num_local_experts);
    get("decoder_sparse_step", c.moe_every);
    // The typed reader checks each element's range: 4294967297 must not become layer 1.
    get("mlp_only_layers", c.mlp_only_layers);
  } else {
    get("intermediate_size", c.intermediate_size);
    get("num_experts", c.num_local_experts);
  }
  if (qwen2) {
    get("shared_expert_intermediate_size", shared_width);
    get("qkv_bias", c.attention_bias);  // newer Hugging Face versions make the bias optional
  }
  if (granite) {
    get("embedding_multiplier", c.embedding_multiplier);
    get("residual_multiplier", c.residual_multiplier);
    get("attention_multiplier", c.attention_multiplier);
    get("logits_scaling", c.logits_scaling);
    // A softmax over one logit is 1, which our k = 1 gate (the raw probability) is not.
    MOE_REQUIRE(m.num_experts_per_tok > 1,
                "{}: num_experts_per_tok = 1 is not supported for granitemoe (its gate is then "
                "1)",
                where);
  }
  if (!qwen2) {
    // Qwen3-MoE, OLMoE and Granite-MoE put attention_bias on o_proj too, which the decoder has no
    // bias for; Mixtral has no such key.
    bool bias = false;
    get("attention_bias", bias);
    MOE_REQUIRE(!bias, "{}: attention_bias = true is not supported for model_type {}", where, type);
  }
  c.dense_intermediate_size = dense_width;
  if (shared_width > 0) {
    m.n_shared_experts = 1;
    m.shared_expert_intermediate_size = shared_width;
    m.shared_expert_gate = true;
  }
  use_hf_moe_losses(m);

  refuse_unsupported_keys(j, get, where, c, qwen ? "use_sliding_window" : nullptr);
  c.sync_moe();
  return finish_hf_config(c, where);
}

ModelConfig load_hf_config(const std::string& path) {
  return model_config_from_hf(read_json_file(path), path);
}

std::string hf_model_prefix(const ModelConfig& c) {
  return c.model_type == "qwen3_5_moe" ? "model.language_model." : "model.";
}

std::string hf_tensor_name(const ModelConfig& c, int layer, HfTensor t, int expert) {
  if (c.model_type == "granitemoe") {
    // Its experts exist fused only (input_linear, output_linear); the router is a module.
    const std::string b = fmt::format("model.layers.{}.block_sparse_moe.", layer);
    if (t == HfTensor::Router) return b + "router.layer.weight";
    if (t == HfTensor::ExpertGate || t == HfTensor::ExpertUp || t == HfTensor::ExpertDown)
      return hf_fused_experts_name(c, layer, t != HfTensor::ExpertDown);
  }
  const bool mixtral = c.model_type == "mixtral" || c.model_type == "granitemoe";
  const std::string p = fmt::format("{}layers.{}.", hf_model_prefix(c), layer);
  const std::string moe = mixtral ? p + "block_sparse_moe." : p + "mlp.";
  const std::string ex = fmt::format("{}experts.{}.", moe, expert);
  const std::string shared = moe + (c.is_mla() ? "shared_experts." : "shared_expert.");
  switch (t) {
    case HfTensor::InputNorm:
      return p + "input_layernorm.weight";
    case HfTensor::PostAttentionNorm:
      return p + "post_attention_layernorm.weight";
    case HfTensor::Q:
      return p + "self_attn.q_proj.weight";
    case HfTensor::K:
      return p + "self_attn.k_proj.weight";
    case HfTensor::V:
      return p + "self_attn.v_proj.weight";
    case HfTensor::O:
      return p + "self_attn.o_proj.weight";
    case HfTensor::QBias:
      return p + "self_attn.q_proj.bias";
    case HfTensor::KBias:
      return p + "self_attn.k_proj.bias";
    case HfTensor::VBias:
      return p + "self_attn.v_proj.bias";
    case HfTensor::QNorm:
      return p + "self_attn.q_norm.weight";
    case HfTensor::KNorm:
      return p + "self_attn.k_norm.weight";
    case HfTensor::Router:
      return moe + (c.model_type == "gpt_oss" ? "router.weight" : "gate.weight");
    case HfTensor::ExpertGate:
      return ex + (mixtral ? "w1.weight" : "gate_proj.weight");
    case HfTensor::ExpertUp:
      return ex + (mixtral ? "w3.weight" : "up_proj.weight");
    case HfTensor::ExpertDown:
      return ex + (mixtral ? "w2.weight" : "down_proj.weight");
    case HfTensor::SharedGate:
      return shared + "gate_proj.weight";
    case HfTensor::SharedUp:
      return shared + "up_proj.weight";
    case HfTensor::SharedDown:
      return shared + "down_proj.weight";
    case HfTensor::SharedExpertGate:
      return moe + "shared_expert_gate.weight";
    case HfTensor::DenseGate:
      return p + "mlp.gate_proj.weight";
    case HfTensor::DenseUp:
      return p + "mlp.up_proj.weight";
    case HfTensor::DenseDown:
      return p + "mlp.down_proj.weight";
    case HfTensor::QA:
      return p + "self_attn.q_a_proj.weight";
    case HfTensor::QANorm:
      return p + "self_attn.q_a_layernorm.weight";
    case HfTensor::QB:
      return p + "self_attn.q_b_proj.weight";
    case HfTensor::KvA:
      return p + "self_attn.kv_a_proj_with_mqa.weight";
    case HfTensor::KvANorm:
      return p + "self_attn.kv_a_layernorm.weight";
    case HfTensor::KvB:
      return p + "self_attn.kv_b_proj.weight";
    case HfTensor::RouterBias:
      return moe + "gate.e_score_correction_bias";
  }
  return "";
}

bool parse_hf_expert_layout(const std::string& name, HfExpertLayout& out) {
  if (name == "per-expert")
    out = HfExpertLayout::PerExpert;
  else if (name == "fused")
    out = HfExpertLayout::Fused;
  else
    return false;
  return true;
}

std::string hf_fused_experts_name(const ModelConfig& c, int layer, bool gate_up) {
  // Granite-MoE's GraniteMoeParallelExperts: input_linear [E, 2F, d] (gate rows, then up
  // rows, as v5's gate_up_proj) and output_linear [E, d, F].
  if (c.model_type == "granitemoe")
    return fmt::format("model.layers.{}.block_sparse_moe.{}.weight", layer,
                       gate_up ? "input_linear" : "output_linear");
  const std::string block = c.model_type == "mixtral" ? "block_sparse_moe" : "mlp";
  return fmt::format("{}layers.{}.{}.experts.{}", hf_model_prefix(c), layer, block,
                     gate_up ? "gate_up_proj" : "down_proj");
}

std::string hf_fused_experts_in(const HfWeights& w, const ModelConfig& c, int layer, bool gate_up) {
  std::string name = hf_fused_experts_name(c, layer, gate_up);
  if (w.has(name)) return name;
  if (c.model_type == "mixtral") {
    name = fmt::format("model.layers.{}.mlp.experts.{}", layer,
                       gate_up ? "gate_up_proj" : "down_proj");
    if (w.has(name)) return name;
  }
  return "";
}

ParameterCount count_parameters(const ModelConfig& c) {
  const int64_t d = c.hidden_size, V = c.vocab_size, hd = c.head_size();
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  ParameterCount n;
  int64_t shared = V * d * (c.tie_word_embeddings ? 1 : 2) + d;  // embedding, head, final norm
  const MlaConfig& a = c.mla;
  const int64_t H = c.num_attention_heads, r = a.kv_lora_rank, qr = a.q_lora_rank;
  const int64_t mla = (qr > 0 ? d * qr + qr + qr * H * a.qk_head_dim() : d * H * a.qk_head_dim()) +
                      d * (r + a.qk_rope_head_dim) + r +
                      r * H * (a.qk_nope_head_dim + a.v_head_dim) + H * a.v_head_dim * d;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LinearAttnConfig& g = c.linear;
    // in_proj_qkv(z), in_proj_b(a), conv1d, A_log, dt_bias, the gated norm, out_proj.
    const int64_t gdn = d * (g.conv_dim() + g.value_dim() + 2 * g.num_v_heads) +
                        g.conv_dim() * g.conv_kernel + 2 * g.num_v_heads + g.v_head_dim +
                        g.value_dim() * d;
    const int64_t gqa = d * ((c.attn_output_gate ? 3 : 2) * qd + 2 * kvd);
    shared += 2 * d + (c.is_linear_layer(l) ? gdn : c.is_mla() ? mla : gqa);
    if (c.attention_bias) shared += qd + 2 * kvd;
    if (c.o_bias) shared += d;
    if (c.attention_sinks) shared += c.num_attention_heads;
    if (c.qk_norm == QkNorm::PerHead && !c.is_linear_layer(l)) shared += 2 * hd;
    if (c.qk_norm == QkNorm::Full) shared += qd + kvd;
    if (c.is_moe_layer(l)) {
      const int64_t E = c.num_local_experts, k = c.moe.num_experts_per_tok;
      const int64_t expert =
          3 * d * c.intermediate_size + (c.expert_bias ? 2 * c.intermediate_size + d : 0);
      shared += E * d + 3 * d * c.moe.shared_hidden() + (c.moe.shared_expert_gate ? d : 0);
      if (c.router_bias) shared += E;
      n.total += E * expert;
      n.active += k * expert;
    } else {
      shared += 3 * d * c.dense_width();
    }
  }
  n.total += shared;
  n.active += shared;
  return n;
}

HfWeights HfWeights::open(const std::string& dir) {
  HfWeights w;
  w.dir_ = dir;
  const std::string index = dir + "/model.safetensors.index.json";
  if (fs::exists(index)) {
    const nlohmann::json j = read_json_file(index);
    MOE_REQUIRE(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                "{}: weight_map is missing or not an object", index);
    std::map<std::string, int> file_index;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      MOE_REQUIRE(it->is_string(), "{}: weight_map[\"{}\"] is {}, expected a file name", index,
                  it.key(), it->dump());
      const std::string file = it->get<std::string>();
      MOE_REQUIRE(file.find('/') == std::string::npos && file != ".." && !file.empty(),
                  "{}: weight_map[\"{}\"] = \"{}\" is not a file in the directory", index, it.key(),
                  file);
      auto [pos, fresh] = file_index.emplace(file, static_cast<int>(w.files_.size()));
      if (fresh) w.files_.push_back(SafeTensorsFile::open(dir + "/" + file));
      const SafeTensorsFile& f = w.files_[pos->second];
      MOE_REQUIRE(f.has(it.key()), "{}: tensor {} is listed in {} but not stored there", index,
                  it.key(), f.path());
      w.where_[it.key()] = pos->second;
    }
    // A shard's tensor that the index does not list is a sign of a mismatched index.
    for (const auto& f : w.files_)
      for (const auto& name : f.names())
        MOE_REQUIRE(w.where_.count(name), "{}: tensor {} of {} is not in weight_map", index, name,
                    f.path());
    return w;
  }
  const std::string single = dir + "/model.safetensors";
  MOE_REQUIRE(fs::exists(single), "{}: no model.safetensors or model.safetensors.index.json", dir);
  w.files_.push_back(SafeTensorsFile::open(single));
  for (const auto& name : w.files_[0].names()) w.where_[name] = 0;
  return w;
}

const SafeTensorsFile& HfWeights::file_of(const std::string& name) const {
  auto it = where_.find(name);
  MOE_REQUIRE(it != where_.end(), "{}: missing tensor {}", dir_, name);
  return files_[it->second];
}

std::vector<std::string> HfWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

int64_t HfWeights::data_bytes() const {
  int64_t total = 0;
  for (const auto& [name, i] : where_) {
    const TensorEntry& e = files_[i].entry(name);
    total += e.end - e.begin;
  }
  return total;
}

std::string hf_family_for(const ModelConfig& c) {
  const MoeConfig& m = c.moe;
  auto refuse = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("cannot save as a Hugging Face checkpoint: {} {}", key, why));
  };
  if (c.num_local_experts > 0) {
    if (m.scoring_func != ScoreFunc::Softmax)
      refuse("scoring_func", "is sigmoid; the Hugging Face families route by softmax");
    if (m.use_selection_bias)
      refuse("use_selection_bias", "is true; the families have no selection bias");
    if (m.n_group > 1) refuse("n_group", "> 1; the families have no group-limited routing");
    if (m.routed_scaling_factor != 1.0)
      refuse("routed_scaling_factor", "is not 1; the families have no gate scaling");
    if (m.hidden_act != Activation::SwiGLU) refuse("hidden_act", "is gelu; the families use silu");
    if (m.n_shared_experts > 0 && !m.shared_expert_gate)
      refuse("shared_expert_gate", "is false; Qwen2-MoE's shared expert is always gated");
  }
  bool all_moe = c.num_local_experts > 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) all_moe = all_moe && c.is_moe_layer(l);
  const bool shared = c.num_local_experts > 0 && m.n_shared_experts > 0;
  // q/k norms exist in one family each: the model is saved in that family or not at all.
  if (c.qk_norm == QkNorm::PerHead) {
    if (shared)
      refuse("n_shared_experts", "> 0; qwen3_moe (per-head q/k norm) has no shared expert");
    if (c.attention_bias)
      refuse("attention_bias", "is true; qwen3_moe's bias would include o_proj, which we lack");
    return "qwen3_moe";
  }
  if (c.qk_norm == QkNorm::Full) {
    if (shared) refuse("n_shared_experts", "> 0; olmoe (whole-projection q/k norm) has none");
    if (!all_moe) refuse("mlp_only_layers / moe_every", "make dense layers; olmoe has none");
    if (c.attention_bias) refuse("attention_bias", "is true; olmoe's bias would include o_proj");
    return "olmoe";
  }
  if (c.num_local_experts == 0) return "qwen2_moe";  // dense: every layer in mlp_only_layers
  // Mixtral always renormalizes; we renormalize only when k > 1 (a k = 1 gate is the raw
  // probability, the Switch gate), which qwen2_moe with norm_topk_prob false reproduces.
  // A qwen2_moe model stays one (its config keys, its tensor names) even when mixtral could
  // hold it too.
  if (c.model_type != "qwen2_moe" && all_moe && !shared && !c.attention_bias && m.norm_topk_prob &&
      m.num_experts_per_tok > 1)
    return "mixtral";
  return "qwen2_moe";
}

void put_hf_shape_keys(nlohmann::json& j, const ModelConfig& c) {
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_size();
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.scaled()) j["rope_scaling"] = rope_scaling_to_json(c.rope_scaling);
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["hidden_act"] = "silu";
}

nlohmann::json hf_config_json(const ModelConfig& c, DType dtype) {
  const std::string family = hf_family_for(c);
  const MoeConfig& m = c.moe;
  nlohmann::json j;
  j["model_type"] = family;
  j["architectures"] = {family == "mixtral"     ? "MixtralForCausalLM"
                        : family == "qwen3_moe" ? "Qwen3MoeForCausalLM"
                        : family == "olmoe"     ? "OlmoeForCausalLM"
                                                : "Qwen2MoeForCausalLM"};
  j["torch_dtype"] = dtype == DType::BF16  ? "bfloat16"
                     : dtype == DType::F16 ? "float16"
                                           : "float32";
  put_hf_shape_keys(j, c);
  j["attention_dropout"] = 0.0;
  j["num_experts_per_tok"] = c.num_local_experts > 0 ? m.num_experts_per_tok : 1;
  // Hugging Face normalizes the load-balance f by T, not T*k: the same loss needs alpha / k.
  const double k = c.num_local_experts > 0 ? m.num_experts_per_tok : 1;
  j["router_aux_loss_coef"] =
      m.aux_loss_style == AuxLossStyle::HF ? m.router_aux_loss_coef : m.router_aux_loss_coef / k;
  j["output_router_logits"] = false;
  j["use_cache"] = true;
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  std::vector<int> dense_layers = c.mlp_only_layers;
  if (c.num_local_experts == 0) {
    dense_layers.clear();
    for (int l = 0; l < c.num_hidden_layers; ++l) dense_layers.push_back(l);
  }
  if (family == "mixtral") {
    j["intermediate_size"] = c.intermediate_size;
    j["num_local_experts"] = c.num_local_experts;
    j["sliding_window"] = nullptr;
    j["router_jitter_noise"] = 0.0;
  } else if (family == "olmoe") {
    j["intermediate_size"] = c.intermediate_size;
    j["num_experts"] = c.num_local_experts;
    j["norm_topk_prob"] = m.norm_topk_prob;
    j["attention_bias"] = false;
    j["clip_qkv"] = nullptr;
  } else {
    j["intermediate_size"] = c.dense_width();
    j["moe_intermediate_size"] = c.intermediate_size;
    j["num_experts"] = std::max(c.num_local_experts, 1);
    j["norm_topk_prob"] = m.norm_topk_prob;
    j["decoder_sparse_step"] = c.moe_every;
    j["mlp_only_layers"] = dense_layers;
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
    j["max_window_layers"] = c.num_hidden_layers;
    if (family == "qwen3_moe") {
      j["attention_bias"] = false;
    } else {
      // Without a shared expert we write one of width 1 whose output projection is zero.
      j["shared_expert_intermediate_size"] = m.n_shared_experts > 0 ? m.shared_hidden() : 1;
      j["qkv_bias"] = true;  // zero biases when the model has none
    }
  }
  return j;
}

void save_hf_checkpoint(Transformer<float>& model, const std::string& dir, DType dtype,
                        HfExpertLayout layout) {
  MOE_REQUIRE(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
              "{}: weights can be saved as F32, BF16 or F16, not {}", dir, dtype_name(dtype));
  const ModelConfig& c = model.config();
  const nlohmann::json config = hf_config_json(c, dtype);
  ModelConfig hc = c;
  hc.model_type = config["model_type"].get<std::string>();
  const bool qwen2 = hc.model_type == "qwen2_moe";
  const int64_t d = c.hidden_size, F = c.intermediate_size;

  std::map<std::string, const ParamRef<float>*> ours;
  for (const auto& p : model.parameters()) ours[p.name] = &p;
  auto param = [&](const std::string& name) -> const ParamRef<float>& {
    auto it = ours.find(name);
    MOE_CHECK(it != ours.end(), "save_hf_checkpoint: the model has no parameter {}", name);
    return *it->second;
  };
  SafeTensorsWriter w;
  auto put = [&](const std::string& name, const Shape& shape, const float* data, bool matrix) {
    w.add(name, shape, data, matrix ? dtype : DType::F32);
  };
  auto copy = [&](const std::string& hf, const std::string& our, bool matrix) {
    const auto& p = param(our);
    put(hf, p.shape, p.value, matrix);
  };
  w.set_metadata("format", "pt");
  copy("model.embed_tokens.weight", "model.embed_tokens.weight", true);
  copy("model.norm.weight", "model.norm.weight", false);
  if (!c.tie_word_embeddings) copy("lm_head.weight", "lm_head.weight", true);
  std::vector<float> zeros, fused;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    auto name = [&](HfTensor t, int e = -1) { return hf_tensor_name(hc, l, t, e); };
    copy(name(HfTensor::InputNorm), p + "input_layernorm.weight", false);
    copy(name(HfTensor::PostAttentionNorm), p + "post_attention_layernorm.weight", false);
    copy(name(HfTensor::Q), p + "self_attn.q_proj.weight", true);
    copy(name(HfTensor::K), p + "self_attn.k_proj.weight", true);
    copy(name(HfTensor::V), p + "self_attn.v_proj.weight", true);
    copy(name(HfTensor::O), p + "self_attn.o_proj.weight", true);
    if (c.attention_bias) {
      copy(name(HfTensor::QBias), p + "self_attn.q_proj.bias", false);
      copy(name(HfTensor::KBias), p + "self_attn.k_proj.bias", false);
      copy(name(HfTensor::VBias), p + "self_attn.v_proj.bias", false);
    } else if (qwen2) {
      const int64_t qd = c.num_attention_heads * c.head_size();
      const int64_t kvd = c.num_key_value_heads * c.head_size();
      zeros.assign(std::max(qd, d), 0.0f);
      put(name(HfTensor::QBias), {qd}, zeros.data(), false);
      put(name(HfTensor::KBias), {kvd}, zeros.data(), false);
      put(name(HfTensor::VBias), {kvd}, zeros.data(), false);
    }
    if (c.qk_norm != QkNorm::None) {
      copy(name(HfTensor::QNorm), p + "self_attn.q_norm.weight", false);
      copy(name(HfTensor::KNorm), p + "self_attn.k_norm.weight", false);
    }
    if (!c.is_moe_layer(l)) {
      copy(name(HfTensor::DenseGate), p + "mlp.ffn.w1", true);
      copy(name(HfTensor::DenseUp), p + "mlp.ffn.w3", true);
      copy(name(HfTensor::DenseDown), p + "mlp.ffn.w2", true);
      continue;
    }
    const std::string b = p + "block_sparse_moe.";
    copy(name(HfTensor::Router), b + "router.weight", false);
    const auto& w1 = param(b + "experts.w1");
    const auto& w3 = param(b + "experts.w3");
    const auto& w2 = param(b + "experts.w2");
    const int64_t E = c.num_local_experts;
    if (layout == HfExpertLayout::Fused) {
      // gate_up_proj [E, 2F, d]: expert e's gate rows, then its up rows. down_proj [E, d, F]
      // is our stacked w2 as it is.
      fused.resize(static_cast<size_t>(E * 2 * F * d));
      for (int64_t e = 0; e < E; ++e) {
        std::copy_n(w1.value + e * F * d, F * d, fused.data() + e * 2 * F * d);
        std::copy_n(w3.value + e * F * d, F * d, fused.data() + (e * 2 + 1) * F * d);
      }
      put(hf_fused_experts_name(hc, l, true), {E, 2 * F, d}, fused.data(), true);
      put(hf_fused_experts_name(hc, l, false), {E, d, F}, w2.value, true);
    } else {
      for (int e = 0; e < E; ++e) {
        put(name(HfTensor::ExpertGate, e), {F, d}, w1.value + e * F * d, true);
        put(name(HfTensor::ExpertUp, e), {F, d}, w3.value + e * F * d, true);
        put(name(HfTensor::ExpertDown, e), {d, F}, w2.value + e * d * F, true);
      }
    }
    if (!qwen2) continue;
    if (c.moe.n_shared_experts > 0) {
      // Our shared experts are one wider SwiGLU: their hidden units concatenate.
      copy(name(HfTensor::SharedGate), b + "shared.w1", true);
      copy(name(HfTensor::SharedUp), b + "shared.w3", true);
      copy(name(HfTensor::SharedDown), b + "shared.w2", true);
      copy(name(HfTensor::SharedExpertGate), b + "shared.gate", false);
    } else {
      zeros.assign(std::max(int64_t{2} * d, d + 1), 0.0f);
      put(name(HfTensor::SharedGate), {1, d}, zeros.data(), true);
      put(name(HfTensor::SharedUp), {1, d}, zeros.data(), true);
      put(name(HfTensor::SharedDown), {d, 1}, zeros.data(), true);
      put(name(HfTensor::SharedExpertGate), {1, d}, zeros.data(), false);
    }
  }
  fs::create_directories(dir);
  w.write(dir + "/model.safetensors");
  const std::string text = config.dump(2) + "\n";
  write_file_atomic(dir + "/config.json", text.data(), text.size());
}

namespace {

// Our block parameters (docs/model.md) and the HfTensor each one is.
const std::pair<const char*, HfTensor> kBlockParams[] = {
    {"input_layernorm.weight", HfTensor::InputNorm},
    {"post_attention_layernorm.weight", HfTensor::PostAttentionNorm},
    {"self_attn.q_proj.weight", HfTensor::Q},
    {"self_attn.k_proj.weight", HfTensor::K},
    {"self_attn.v_proj.weight", HfTensor::V},
    {"self_attn.o_proj.weight", HfTensor::O},
    {"self_attn.q_proj.bias", HfTensor::QBias},
    {"self_attn.k_proj.bias", HfTensor::KBias},
    {"self_attn.v_proj.bias", HfTensor::VBias},
    {"self_attn.q_norm.weight", HfTensor::QNorm},
    {"self_attn.k_norm.weight", HfTensor::KNorm},
    {"block_sparse_moe.router.weight", HfTensor::Router},
    {"block_sparse_moe.experts.w1", HfTensor::ExpertGate},  // stacked [E, F, d]
    {"block_sparse_moe.experts.w3", HfTensor::ExpertUp},
    {"block_sparse_moe.experts.w2", HfTensor::ExpertDown},
    {"block_sparse_moe.shared.w1", HfTensor::SharedGate},
    {"block_sparse_moe.shared.w3", HfTensor::SharedUp},
    {"block_sparse_moe.shared.w2", HfTensor::SharedDown},
    {"block_sparse_moe.shared.gate", HfTensor::SharedExpertGate},
    {"mlp.ffn.w1", HfTensor::DenseGate},
    {"mlp.ffn.w3", HfTensor::DenseUp},
    {"mlp.ffn.w2", HfTensor::DenseDown}};

}  // namespace

bool hf_tensor_of_param(const std::string& what, HfTensor& t) {
  for (const auto& [name, tensor] : kBlockParams)
    if (what == name) {
      t = tensor;
      return true;
    }
  return false;
}

const char* param_of_hf_tensor(HfTensor t) {
  for (const auto& [name, tensor] : kBlockParams)
    if (tensor == t) return name;
  MOE_CHECK(false, "param_of_hf_tensor: no parameter for HfTensor {}", static_cast<int>(t));
  return "";
}

void load_hf_weights(Transformer<float>& model, const HfWeights& w) {
  const ModelConfig& c = model.config();
  const std::string layers = "model.layers.";
  for (auto& p : model.parameters()) {
    const std::string& n = p.name;
    HfTensor t{};
    if (!n.starts_with(layers)) {  // embedding, final norm, head: the same names
      w.file_of(n).read_into(n, p.shape, p.value);
      continue;
    }
    const size_t dot = n.find('.', layers.size());
    const int layer = std::stoi(n.substr(layers.size(), dot - layers.size()));
    const std::string what = n.substr(dot + 1);
    MOE_CHECK(hf_tensor_of_param(what, t), "load_hf_weights: no Hugging Face tensor for {}", n);
    if (t != HfTensor::ExpertGate && t != HfTensor::ExpertUp && t != HfTensor::ExpertDown) {
      const std::string hf = hf_tensor_name(c, layer, t);
      w.file_of(hf).read_into(hf, p.shape, p.value);
      continue;
    }
    const int64_t E = p.shape[0], rows = p.shape[1], cols = p.shape[2];
    const std::string fused = hf_fused_experts_in(w, c, layer, t != HfTensor::ExpertDown);
    if (!fused.empty() && t == HfTensor::ExpertDown) {  // down_proj [E, d, F] is our w2
      w.file_of(fused).read_into(fused, p.shape, p.value);
      continue;
    }
    if (!fused.empty()) {  // gate_up_proj [E, 2F, d]: w1 the first F rows of each, w3 the rest
      std::vector<float> both(static_cast<size_t>(E * 2 * rows * cols));
      w.file_of(fused).read_into(fused, Shape{E, 2 * rows, cols}, both.data());
      const int64_t half = t == HfTensor::ExpertGate ? 0 : 1;
      for (int64_t e = 0; e < E; ++e)
        std::copy_n(both.data() + (e * 2 + half) * rows * cols, rows * cols,
                    p.value + e * rows * cols);
      continue;
    }
    // experts.w1 [E, F, d] etc.: one Hugging Face tensor per expert.
    const Shape one{rows, cols};
    for (int e = 0; e < c.num_local_experts; ++e) {
      const std::string hf = hf_tensor_name(c, layer, t, e);
      w.file_of(hf).read_into(hf, one, p.value + e * one.numel());
    }
  }
}

}  // namespace moe
