#include "moe/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/input_file.h"
#include "core/json_keys.h"
#include "moe/error.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

const std::vector<std::string> kTrainableParts = {
    "routers", "experts", "shared", "dense", "attention", "embeddings", "norms", "head", "all"};

// Hugging Face keys a config.json may carry that describe nothing we compute.
const std::set<std::string> kIgnoredHfKeys = {
    "architectures",  "torch_dtype",          "transformers_version",
    "bos_token_id",   "eos_token_id",         "pad_token_id",
    "use_cache",      "output_router_logits", "attention_dropout",
    "sliding_window", "router_jitter_noise",  "_name_or_path"};

template <class V>
void visit_train_keys(TrainConfig& c, V&& v) {
  visit_optimizer_keys(c, v);
  v("seq_len", c.seq_len);
  v("grad_accum_steps", c.grad_accum_steps);
  v("eval_batches", c.eval_batches);
  v("checkpoint_every", c.checkpoint_every);
  v("tokenizer", c.tokenizer);
  v("data_dir", c.data_dir);
  v("data", c.data);
  v("valid_fraction", c.valid_fraction);
  v("trainable", c.trainable);
}

template <class V>
void visit_model_keys(ModelConfig& c, V&& v) {
  v("model_type", c.model_type);
  v("vocab_size", c.vocab_size);
  v("hidden_size", c.hidden_size);
  v("intermediate_size", c.intermediate_size);
  v("num_hidden_layers", c.num_hidden_layers);
  v("num_attention_heads", c.num_attention_heads);
  v("num_key_value_heads", c.num_key_value_heads);
  v("head_dim", c.head_dim);
  v("max_position_embeddings", c.max_position_embeddings);
  v("rope_theta", c.rope_theta);
  v("rms_norm_eps", c.rms_norm_eps);
  v("tie_word_embeddings", c.tie_word_embeddings);
  v("initializer_range", c.initializer_range);
  v("num_local_experts", c.num_local_experts);
  v("moe_every", c.moe_every);
  v("dense_intermediate_size", c.dense_intermediate_size);
  v("attention_bias", c.attention_bias);
  v("mlp_only_layers", c.mlp_only_layers);
}

const std::initializer_list<std::pair<const char*, QkNorm>> kQkNorm = {
    {"none", QkNorm::None}, {"per_head", QkNorm::PerHead}, {"full", QkNorm::Full}};

void read_qk_norm(const nlohmann::json& j, const std::string& where, QkNorm& out) {
  auto it = j.find("qk_norm");
  if (it == j.end() || it->is_null()) return;
  for (const auto& [name, value] : kQkNorm)
    if (it->is_string() && it->get<std::string>() == name) {
      out = value;
      return;
    }
  throw Error(fmt::format(
      "{}: qk_norm has value {}, expected \"none\", \"per_head\" (qwen3_moe) or \"full\" (olmoe)",
      where, it->dump()));
}

const char* qk_norm_name(QkNorm q) {
  for (const auto& [name, value] : kQkNorm)
    if (value == q) return name;
  return "none";
}

void check_known_keys(const nlohmann::json& j, const std::set<std::string>& known,
                      const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known.count(it.key()))
      throw Error(fmt::format("{}: unknown key \"{}\" (see the config key table in README.md)",
                              where, it.key()));
}

}  // namespace

void read_rope_config(const nlohmann::json& j, const std::string& where, ModelConfig& c) {
  const char* name = "rope_parameters";
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) {
    name = "rope_scaling";
    it = j.find(name);
    if (it == j.end() || it->is_null()) return;
  }
  MOE_REQUIRE(it->is_object(), "{}: {} has value {}, expected an object", where, name, it->dump());
  const nlohmann::json& r = *it;
  const std::string key = std::string(name);
  for (auto k = r.begin(); k != r.end(); ++k) {
    static const std::set<std::string> known = {
        "rope_type", "type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
        "attention_factor", "mscale", "mscale_all_dim", "truncate", "low_freq_factor",
        "high_freq_factor", "rope_theta", "partial_rotary_factor",
        // Qwen3.5's M-RoPE sections: text positions are the same in all three sections, which
        // makes it the plain RoPE of the rotary dimensions.
        "mrope_section", "mrope_interleaved"};
    MOE_REQUIRE(known.count(k.key()), "{}: {}.{} is not supported", where, key, k.key());
  }
  // Errors name the nested key as "rope_scaling.factor": the reader sees it under that name.
  auto get = [&](const char* k, auto& out) {
    auto v = r.find(k);
    if (v == r.end() || v->is_null()) return false;
    const std::string full = key + "." + k;
    const nlohmann::json one = {{full, *v}};
    JsonKeyReader{one, where}(full.c_str(), out);
    return true;
  };
  get("rope_theta", c.rope_theta);
  get("partial_rotary_factor", c.partial_rotary_factor);  // validate_shape checks it
  std::string type_name;
  if (!get("rope_type", type_name) && !get("type", type_name)) {
    // transformers v5 may list only rope_theta; a 4.x rope_scaling always names its type.
    MOE_REQUIRE(key == "rope_parameters", "{}: {}.rope_type is missing", where, key);
    type_name = "default";
  }
  RopeScaling s;
  MOE_REQUIRE(rope_type_from_name(type_name, s.type),
              "{}: {}.rope_type \"{}\" is not supported (expected default, linear, dynamic, yarn "
              "or llama3)",
              where, key, type_name);
  if (!s.scaled()) {
    c.rope_scaling = s;
    return;
  }
  const bool has_factor = get("factor", s.factor);
  const bool has_original =
      get("original_max_position_embeddings", s.original_max_position_embeddings);
  auto require = [&](bool present, const char* k) {
    MOE_REQUIRE(present, "{}: {}.{} is missing (required by rope_type {})", where, key, k,
                type_name);
  };
  switch (s.type) {
    case RopeType::Yarn:
      // transformers v5: without a factor, the ratio of the context to the original one.
      if (!has_factor && has_original && s.original_max_position_embeddings > 0)
        s.factor =
            static_cast<double>(c.max_position_embeddings) / s.original_max_position_embeddings;
      else
        require(has_factor, "factor");
      if (!has_original) s.original_max_position_embeddings = c.max_position_embeddings;
      get("beta_fast", s.beta_fast);
      get("beta_slow", s.beta_slow);
      get("attention_factor", s.attention_factor);
      get("mscale", s.mscale);
      get("mscale_all_dim", s.mscale_all_dim);
      get("truncate", s.truncate);
      break;
    case RopeType::Llama3:
      require(has_factor, "factor");
      require(has_original, "original_max_position_embeddings");
      require(get("low_freq_factor", s.low_freq_factor), "low_freq_factor");
      require(get("high_freq_factor", s.high_freq_factor), "high_freq_factor");
      break;
    default:  // linear, dynamic: the original context is max_position_embeddings
      require(has_factor, "factor");
      s.original_max_position_embeddings = c.max_position_embeddings;
      break;
  }
  s.validate(where);
  c.rope_scaling = s;
}

nlohmann::json rope_scaling_to_json(const RopeScaling& s) {
  if (!s.scaled()) return nullptr;
  nlohmann::json r;
  r["rope_type"] = rope_type_name(s.type);
  r["factor"] = s.factor;
  if (s.type == RopeType::Yarn) {
    r["original_max_position_embeddings"] = s.original_max_position_embeddings;
    r["beta_fast"] = s.beta_fast;
    r["beta_slow"] = s.beta_slow;
    if (s.attention_factor > 0) r["attention_factor"] = s.attention_factor;
    if (s.mscale > 0) r["mscale"] = s.mscale;
    if (s.mscale_all_dim > 0) r["mscale_all_dim"] = s.mscale_all_dim;
    if (!s.truncate) r["truncate"] = false;
  } else if (s.type == RopeType::Llama3) {
    r["original_max_position_embeddings"] = s.original_max_position_embeddings;
    r["low_freq_factor"] = s.low_freq_factor;
    r["high_freq_factor"] = s.high_freq_factor;
  }
  return r;
}

std::vector<std::string> split_parts(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    out.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::string parameter_part(const std::string& name) {
  if (name == "model.embed_tokens.weight") return "embeddings";
  if (name == "lm_head.weight") return "head";
  if (name.ends_with("norm.weight")) return "norms";  // block, final and q/k norms
  if (name.find(".self_attn.") != std::string::npos) return "attention";
  if (name.find(".router.") != std::string::npos) return "routers";
  if (name.find(".experts.") != std::string::npos) return "experts";
  if (name.find(".shared.") != std::string::npos) return "shared";
  return "dense";  // the dense FFN layers
}

bool is_trainable(const std::string& name, const std::string& trainable, bool tied) {
  const std::string part = parameter_part(name);
  for (const std::string& p : split_parts(trainable))
    if (p == "all" || p == part || (tied && p == "head" && part == "embeddings")) return true;
  return false;
}

void TrainConfig::validate(const std::string& where) const {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: training.{} {}", where, key, why));
  };
  if (!(learning_rate > 0))
    fail("learning_rate", fmt::format("must be positive, got {}", learning_rate));
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
    fail("min_lr_ratio", fmt::format("must be in [0, 1], got {}", min_lr_ratio));
  if (warmup_steps < 0)
    fail("warmup_steps", fmt::format("must be non-negative, got {}", warmup_steps));
  if (max_steps <= 0) fail("max_steps", fmt::format("must be positive, got {}", max_steps));
  if (!(weight_decay >= 0))
    fail("weight_decay", fmt::format("must be non-negative, got {}", weight_decay));
  if (!(adam_beta1 >= 0 && adam_beta1 < 1))
    fail("adam_beta1", fmt::format("must be in [0, 1), got {}", adam_beta1));
  if (!(adam_beta2 >= 0 && adam_beta2 < 1))
    fail("adam_beta2", fmt::format("must be in [0, 1), got {}", adam_beta2));
  if (!(adam_eps > 0)) fail("adam_eps", fmt::format("must be positive, got {}", adam_eps));
  if (grad_clip != grad_clip) fail("grad_clip", "is NaN");
  if (batch_size <= 0) fail("batch_size", fmt::format("must be positive, got {}", batch_size));
  if (seq_len <= 0) fail("seq_len", fmt::format("must be positive, got {}", seq_len));
  if (grad_accum_steps <= 0)
    fail("grad_accum_steps", fmt::format("must be positive, got {}", grad_accum_steps));
  if (eval_every < 0) fail("eval_every", fmt::format("must be non-negative, got {}", eval_every));
  if (eval_batches < 0)
    fail("eval_batches", fmt::format("must be non-negative, got {}", eval_batches));
  if (checkpoint_every < 0)
    fail("checkpoint_every", fmt::format("must be non-negative, got {}", checkpoint_every));
  if (tokenizer != "sentencepiece" && tokenizer != "byte" && !tokenizer.ends_with(".model") &&
      !tokenizer.ends_with(".json"))
    fail("tokenizer", fmt::format("has value \"{}\", expected \"sentencepiece\", \"byte\" or a "
                                  "tokenizer file (.model or tokenizer.json)",
                                  tokenizer));
  for (const std::string& part : split_parts(trainable))
    if (std::find(kTrainableParts.begin(), kTrainableParts.end(), part) == kTrainableParts.end())
      fail("trainable", fmt::format("names \"{}\"; the parts are routers, experts, shared, "
                                    "dense, attention, embeddings, norms, head and all",
                                    part));
  if (!(valid_fraction > 0 && valid_fraction < 1))
    fail("valid_fraction", fmt::format("must be in (0, 1), got {}", valid_fraction));
}

void ModelConfig::sync_moe() {
  moe.hidden_size = hidden_size;
  moe.moe_intermediate_size = intermediate_size;
  moe.num_experts = num_local_experts > 0 ? num_local_experts : moe.num_experts;
}

int ModelConfig::matched_dense_width() const {
  if (num_local_experts == 0) return dense_width();
  return moe.num_experts_per_tok * intermediate_size + moe.shared_hidden();
}

bool ModelConfig::is_moe_layer(int l) const {
  if (num_local_experts <= 0 || (l + 1) % moe_every != 0) return false;
  for (int m : mlp_only_layers)
    if (m == l) return false;
  return true;
}

void ModelConfig::validate(const std::string& where) const {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: {} {}", where, key, why));
  };
  // The family names how the model is exported (hf_checkpoint.h); the pieces are flags.
  if (model_type != "mixtral" && model_type != "qwen2_moe" && model_type != "qwen3_moe" &&
      model_type != "olmoe")
    fail("model_type", fmt::format("has value \"{}\", expected mixtral, qwen2_moe, qwen3_moe or "
                                   "olmoe",
                                   model_type));
  validate_shape(where);
  training.validate(where);
  // Training sentencepiece on a vocabulary far beyond what a corpus of this scale can fill
  // runs for many minutes before it fails: refuse it up front.
  if (training.tokenizer == "sentencepiece" && vocab_size > kMaxTrainedVocabSize)
    fail("vocab_size", fmt::format("= {} is more than the {} a sentencepiece tokenizer is trained "
                                   "to here (training.tokenizer = \"sentencepiece\")",
                                   vocab_size, kMaxTrainedVocabSize));
  if (training.seq_len > context_length())
    fail("training.seq_len", fmt::format("= {} exceeds the context of {} positions "
                                         "(max_position_embeddings, rope_scaling)",
                                         training.seq_len, context_length()));
}

void ModelConfig::validate_shape(const std::string& where) const {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: {} {}", where, key, why));
  };
  // The largest released vocabularies are about 262k; a bound keeps a typo from sizing an
  // embedding of billions of rows.
  if (vocab_size <= 0 || vocab_size > kMaxVocabSize)
    fail("vocab_size", fmt::format("must be in [1, {}], got {}", kMaxVocabSize, vocab_size));
  if (hidden_size <= 0) fail("hidden_size", fmt::format("must be positive, got {}", hidden_size));
  if (intermediate_size <= 0)
    fail("intermediate_size", fmt::format("must be positive, got {}", intermediate_size));
  if (num_hidden_layers <= 0)
    fail("num_hidden_layers", fmt::format("must be positive, got {}", num_hidden_layers));
  if (num_attention_heads <= 0)
    fail("num_attention_heads", fmt::format("must be positive, got {}", num_attention_heads));
  if (num_key_value_heads <= 0 || num_attention_heads % num_key_value_heads != 0)
    fail("num_key_value_heads",
         fmt::format("= {} must be positive and divide num_attention_heads = {}",
                     num_key_value_heads, num_attention_heads));
  if (head_dim < 0) fail("head_dim", fmt::format("must be non-negative, got {}", head_dim));
  if (head_dim == 0 && hidden_size % num_attention_heads != 0)
    fail("num_attention_heads", fmt::format("= {} does not divide hidden_size = {} (set head_dim)",
                                            num_attention_heads, hidden_size));
  if (!is_mla() && head_size() % 2 != 0)  // MLA rotates qk_rope_head_dim (checked on reading)
    fail("head_dim", fmt::format("must be even for RoPE, got {}", head_size()));
  if (max_position_embeddings <= 0)
    fail("max_position_embeddings",
         fmt::format("must be positive, got {}", max_position_embeddings));
  if (!(rope_theta > 0)) fail("rope_theta", fmt::format("must be positive, got {}", rope_theta));
  rope_scaling.validate(where);
  for (const auto& [key, value] :
       {std::pair<const char*, double>{"embedding_multiplier", embedding_multiplier},
        {"residual_multiplier", residual_multiplier},
        {"logits_scaling", logits_scaling}})
    if (!(value > 0) || !std::isfinite(value))
      fail(key, fmt::format("must be positive and finite, got {}", value));
  if (!(attention_multiplier >= 0) || !std::isfinite(attention_multiplier))
    fail("attention_multiplier",
         fmt::format("must be positive and finite, got {}", attention_multiplier));
  if (partial_rotary_factor != 1.0 && linear_layers.empty())
    fail("partial_rotary_factor", fmt::format("= {} is not supported (full RoPE only outside "
                                              "qwen3_next and qwen3_5_moe)",
                                              partial_rotary_factor));
  if (!(partial_rotary_factor > 0 && partial_rotary_factor <= 1) || rotary_dim() < 2)
    fail("partial_rotary_factor",
         fmt::format("= {} must be in (0, 1] and leave at least 2 rotary entries of head_dim {}",
                     partial_rotary_factor, head_size()));
  if (!linear_layers.empty()) {
    if (static_cast<int>(linear_layers.size()) != num_hidden_layers)
      fail("layer_types", fmt::format("has {} entries for num_hidden_layers = {}",
                                      linear_layers.size(), num_hidden_layers));
    const LinearAttnConfig& a = linear;
    if (a.num_k_heads <= 0 || a.num_v_heads <= 0 || a.num_v_heads % a.num_k_heads != 0)
      fail("linear_num_value_heads",
           fmt::format("= {} must be a positive multiple of linear_num_key_heads = {}",
                       a.num_v_heads, a.num_k_heads));
    if (a.k_head_dim <= 0 || a.v_head_dim <= 0)
      fail("linear_key_head_dim",
           fmt::format("= {} and linear_value_head_dim = {} must be positive", a.k_head_dim,
                       a.v_head_dim));
    if (a.conv_kernel < 1 || a.conv_kernel > 64)
      fail("linear_conv_kernel_dim", fmt::format("must be in [1, 64], got {}", a.conv_kernel));
  }
  if (rope_scaling.type == RopeType::Dynamic && head_size() <= 2)
    fail("head_dim", "must be more than 2 for dynamic NTK RoPE (its exponent is hd / (hd - 2))");
  if (!(rms_norm_eps > 0))
    fail("rms_norm_eps", fmt::format("must be positive, got {}", rms_norm_eps));
  if (!(initializer_range > 0))
    fail("initializer_range", fmt::format("must be positive, got {}", initializer_range));
  if (num_local_experts < 0)
    fail("num_local_experts", fmt::format("must be non-negative, got {}", num_local_experts));
  if (moe_every <= 0) fail("moe_every", fmt::format("must be positive, got {}", moe_every));
  if (dense_intermediate_size < 0)
    fail("dense_intermediate_size",
         fmt::format("must be non-negative, got {}", dense_intermediate_size));
  if (num_local_experts > 0) {
    if (moe_every > num_hidden_layers)
      fail("moe_every",
           fmt::format("= {} leaves no MoE layer among {} layers", moe_every, num_hidden_layers));
    moe.validate(where);
  }
  for (int m : mlp_only_layers)
    if (m < 0 || m >= num_hidden_layers)
      fail("mlp_only_layers", fmt::format("names layer {} of {}", m, num_hidden_layers));
}

ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where) {
  MOE_REQUIRE(j.is_object(), "{}: expected a JSON object", where);
  ModelConfig c;
  visit_model_keys(c, JsonKeyReader{j, where});
  read_qk_norm(j, where, c.qk_norm);
  read_rope_config(j, where, c);

  std::set<std::string> known = kIgnoredHfKeys;
  visit_model_keys(c, JsonKeyCollector{known});
  known.insert("qk_norm");
  known.insert("rope_scaling");
  known.insert("rope_parameters");
  nlohmann::json moe_keys;
  moe_config_to_json(MoeConfig{}, moe_keys);
  for (auto it = moe_keys.begin(); it != moe_keys.end(); ++it) known.insert(it.key());
  known.insert("training");
  check_known_keys(j, known, where);

  // Mixtral names the expert count and width differently from the layer config.
  nlohmann::json mj = j;
  mj.erase("training");
  // A model config without the key computes in what the CPU runs best (moe_config.h).
  if (!mj.contains("compute_dtype")) mj["compute_dtype"] = "auto";
  mj["hidden_size"] = c.hidden_size;
  mj["moe_intermediate_size"] = c.intermediate_size;
  mj["num_experts"] = c.num_local_experts > 0 ? c.num_local_experts : 1;
  if (c.num_local_experts > 0) {
    c.moe = moe_config_from_json(mj, where);
  } else {
    // A dense model still reads the routing keys (so a typo is caught) but has no router.
    mj["num_experts_per_tok"] = 1;
    mj["n_group"] = 1;
    mj["topk_group"] = 1;
    c.moe = moe_config_from_json(mj, where);
    c.moe.num_experts = 0;
  }
  if (auto t = j.find("training"); t != j.end()) {
    const std::string tw = where + ": training";
    MOE_REQUIRE(t->is_object(), "{}: expected a JSON object", tw);
    std::set<std::string> tk;
    visit_train_keys(c.training, JsonKeyCollector{tk});
    check_known_keys(*t, tk, tw);
    visit_train_keys(c.training, JsonKeyReader{*t, tw});
  }
  c.sync_moe();
  c.validate(where);
  return c;
}

nlohmann::json model_config_to_json(const ModelConfig& c) {
  nlohmann::json j;
  ModelConfig copy = c;
  if (c.num_local_experts > 0) {
    moe_config_to_json(c.moe, j);
    // The Mixtral names carry these; the layer names would only confuse a reader.
    j.erase("num_experts");
    j.erase("moe_intermediate_size");
  } else {
    // A dense model computes its attention, FFN and head GEMMs in it too.
    j["compute_dtype"] = compute_dtype_name(c.moe.compute_dtype);
  }
  visit_model_keys(copy, JsonKeyWriter{j});
  j["qk_norm"] = qk_norm_name(c.qk_norm);
  if (c.rope_scaling.scaled()) j["rope_scaling"] = rope_scaling_to_json(c.rope_scaling);
  nlohmann::json t;
  visit_train_keys(copy.training, JsonKeyWriter{t});
  j["training"] = t;
  return j;
}

ModelConfig load_model_config(const std::string& path) {
  return model_config_from_json(read_json_file(path), path);
}

void save_model_config(const ModelConfig& c, const std::string& path) {
  const std::string text = model_config_to_json(c).dump(2) + "\n";
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace moe
