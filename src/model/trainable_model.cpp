#include "moe/trainable_model.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/input_file.h"
#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/gguf_model.h"
#include "moe/hf_checkpoint.h"
#include "moe/model_path.h"
#include "moe/safetensors.h"
#include "moe/trainer.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

// The routing keys that change no parameter's shape: a fine-tuning run may choose them.
const std::set<std::string> kRoutingKeys = {"num_experts_per_tok",
                                            "scoring_func",
                                            "norm_topk_prob",
                                            "routed_scaling_factor",
                                            "n_group",
                                            "topk_group",
                                            "expert_dropout",
                                            "use_selection_bias",
                                            "bias_update_rate",
                                            "capacity_factor",
                                            "drop_policy",
                                            "overflow",
                                            "router_aux_loss_coef",
                                            "router_importance_coef",
                                            "router_z_loss_coef",
                                            "aux_loss_style",
                                            "compute_dtype"};

// The HfTensor of our parameter `what` in block `layer` (after "model.layers.N.").
HfTensor block_tensor(const std::string& what) {
  HfTensor t{};
  MOE_CHECK(hf_tensor_of_param(what, t), "trainable model: no GGUF tensor for parameter {}", what);
  return t;
}

// Every parameter from the GGUF file, dequantized; Q/K rows of the llama architecture back from
// llama.cpp's interleaved RoPE layout.
void load_gguf_weights(Transformer<float>& model, const GgufFile& f) {
  const ModelConfig& c = model.config();
  const std::string layers = "model.layers.";
  std::vector<float> rows;
  for (auto& p : model.parameters()) {
    std::string name;
    HfTensor t = HfTensor::InputNorm;
    int layer = -1;
    if (p.name == "model.embed_tokens.weight") {
      name = "token_embd.weight";
    } else if (p.name == "model.norm.weight") {
      name = "output_norm.weight";
    } else if (p.name == "lm_head.weight") {
      name = "output.weight";
    } else {
      const size_t dot = p.name.find('.', layers.size());
      layer = std::stoi(p.name.substr(layers.size(), dot - layers.size()));
      t = block_tensor(p.name.substr(dot + 1));
      name = gguf_tensor_name(layer, t);
    }
    const GgufTensorInfo& info = f.tensor(name);
    // A shared-expert gate [1, d] may be stored as a vector of d.
    MOE_REQUIRE(info.numel() == p.shape.numel() && (Shape::from(info.shape()) == p.shape ||
                                                    (p.shape.ndim == 2 && p.shape[0] == 1)),
                "{}: tensor {} has shape {}, expected {}", f.path(), name,
                Shape::from(info.shape()).str(), p.shape.str());
    const std::vector<float> v = f.read_f32(name);
    const bool q = t == HfTensor::Q, k = t == HfTensor::K;
    if (layer >= 0 && (q || k) && gguf_rope_interleaved(c)) {
      const int heads = q ? c.num_attention_heads : c.num_key_value_heads;
      unpermute_rope_rows(v.data(), p.value, heads, c.head_size(), c.hidden_size);
    } else {
      std::copy(v.begin(), v.end(), p.value);
    }
  }
}

std::string first_existing(const std::string& dir, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (fs::exists(dir + "/" + n)) return dir + "/" + n;
  return "";
}

}  // namespace

TrainableModel load_trainable_model(const std::string& path) {
  TrainableModel m;
  switch (model_format_of(path)) {
    case ModelFormat::Run: {
      LoadedRun run = load_run(path);
      m.config = run.config;
      m.model = std::move(run.model);
      m.tokenizer = run.tokenizer_file.empty() ? "byte" : run.tokenizer_file;
      break;
    }
    case ModelFormat::HuggingFace: {
      m.config = load_hf_config(path + "/config.json");
      // The multipliers would need their backward in the Transformer; inference runs them.
      MOE_REQUIRE(m.config.model_type != "granitemoe",
                  "{}: model_type granitemoe is not trainable here (its embedding, residual, "
                  "attention and logits multipliers run in generate, eval, perplexity, analyze "
                  "and route only)",
                  path);
      MOE_REQUIRE(!m.config.is_mla(),
                  "{}: training {} is not supported (Multi-head Latent Attention has no "
                  "backward here); generate, eval, perplexity, analyze and route run it",
                  path, m.config.model_type);
      // Sinks, sliding windows, biases and the clamped SwiGLU exist in the Decoder only.
      MOE_REQUIRE(m.config.model_type != "gpt_oss",
                  "{}/config.json: model_type gpt_oss runs for inference only (generate, eval, "
                  "perplexity, analyze, route); training it is not supported",
                  path);
      // Gated DeltaNet and gated attention exist in the Decoder only (forward).
      MOE_REQUIRE(!m.config.has_linear_layers(),
                  "{}/config.json: model_type {} runs for inference only (generate, eval, "
                  "perplexity, analyze, route); training it is not supported (Gated DeltaNet has "
                  "no backward here)",
                  path, m.config.model_type);
      m.model = std::make_unique<Transformer<float>>(m.config);
      load_hf_weights(*m.model, HfWeights::open(path));
      m.tokenizer = first_existing(path, {"tokenizer.json", "tokenizer.model"});
      break;
    }
    case ModelFormat::Gguf: {
      const GgufFile f = GgufFile::open(path);
      m.config = model_config_from_gguf(f);
      m.model = std::make_unique<Transformer<float>>(m.config);
      load_gguf_weights(*m.model, f);
      // The vocabulary lives in the file's metadata; a run keeps a tokenizer file of its own,
      // so the caller names one (--tokenizer).
      m.tokenizer = "";
      break;
    }
  }
  // Hugging Face's families renormalize a single top-1 gate to 1 (the router then learns from
  // the auxiliary loss only); the trainable Router keeps the k = 1 gate at the raw score (the
  // Switch gate) and would train another function than the checkpoint's.
  MOE_REQUIRE(m.config.moe.num_experts_per_tok > 1 || !m.config.moe.norm_topk_prob ||
                  model_format_of(path) == ModelFormat::Run,
              "{}: num_experts_per_tok = 1 with renormalized gates (gate = 1) cannot be "
              "fine-tuned yet: the trainable router's top-1 gate is the probability",
              path);
  return m;
}

ModelConfig with_training_settings(const ModelConfig& model, const nlohmann::json& settings,
                                   const std::string& where) {
  MOE_REQUIRE(settings.is_object(), "{}: expected a JSON object", where);
  nlohmann::json j = model_config_to_json(model);
  for (auto it = settings.begin(); it != settings.end(); ++it) {
    const std::string& key = it.key();
    if (key == "training") {
      MOE_REQUIRE(it->is_object(), "{}: training: expected a JSON object", where);
      for (auto t = it->begin(); t != it->end(); ++t) j["training"][t.key()] = *t;
    } else if (kRoutingKeys.count(key) || !j.contains(key)) {
      j[key] = *it;  // an unknown key is refused by model_config_from_json, naming it
    } else {
      MOE_REQUIRE(j[key] == *it,
                  "{}: {} = {} contradicts the model's {} (with --init-from the config holds "
                  "training and routing keys only)",
                  where, key, it->dump(), j[key].dump());
    }
  }
  return model_config_from_json(j, where);
}

ModelConfig with_training_settings_file(const ModelConfig& model, const std::string& path) {
  return with_training_settings(model, read_json_file(path), path);
}

void copy_weights(Transformer<float>& from, Transformer<float>& to) {
  std::map<std::string, const ParamRef<float>*> src;
  for (const auto& p : from.parameters()) src[p.name] = &p;
  for (auto& p : to.parameters()) {
    auto it = src.find(p.name);
    MOE_CHECK(it != src.end() && it->second->shape == p.shape,
              "copy_weights: parameter {} {} has no counterpart of that shape", p.name,
              p.shape.str());
    std::copy_n(it->second->value, p.shape.numel(), p.value);
  }
  for (int l = 0; l < to.num_layers(); ++l)
    if (auto* m = to.moe_layer(l); m && from.moe_layer(l))
      m->selection_bias() = from.moe_layer(l)->selection_bias();
}

ModelConfig load_train_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  const std::string type = j.is_object() ? j.value("model_type", std::string()) : "";
  const bool hf = j.is_object() && !j.contains("qk_norm") &&
                  (j.contains("architectures") || type == "qwen2_moe" || type == "qwen3_moe" ||
                   type == "olmoe");
  if (!hf) return load_model_config(path);
  nlohmann::json shape = j;
  shape.erase("training");
  const ModelConfig c = model_config_from_hf(shape, path);
  nlohmann::json training = nlohmann::json::object();
  if (j.contains("training")) training["training"] = j["training"];
  // As for a config of ours, the compute dtype is this CPU's unless the file names one.
  training["compute_dtype"] = j.value("compute_dtype", nlohmann::json("auto"));
  return with_training_settings(c, training, path);
}

}  // namespace moe
