#include "moe/moe_config.h"

#include <nlohmann/json.hpp>

#include "core/input_file.h"
#include "moe/cpu_features.h"
#include "moe/error.h"

namespace moe {

void MoeConfig::validate(const std::string& where) const {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: {} {}", where, key, why));
  };
  if (hidden_size <= 0) fail("hidden_size", fmt::format("must be positive, got {}", hidden_size));
  if (moe_intermediate_size <= 0)
    fail("moe_intermediate_size", fmt::format("must be positive, got {}", moe_intermediate_size));
  if (num_experts <= 0) fail("num_experts", fmt::format("must be positive, got {}", num_experts));
  if (num_experts_per_tok <= 0)
    fail("num_experts_per_tok", fmt::format("must be at least 1, got {}", num_experts_per_tok));
  if (num_experts_per_tok > num_experts)
    fail("num_experts_per_tok",
         fmt::format("= {} exceeds num_experts = {}", num_experts_per_tok, num_experts));
  if (!(routed_scaling_factor > 0))
    fail("routed_scaling_factor", fmt::format("must be positive, got {}", routed_scaling_factor));
  if (n_group <= 0 || n_group > 512 || num_experts % n_group != 0)
    fail("n_group",
         fmt::format("= {} must be in [1, 512] and divide num_experts = {}", n_group, num_experts));
  if (topk_group <= 0 || topk_group > n_group)
    fail("topk_group", fmt::format("= {} must be in [1, n_group = {}]", topk_group, n_group));
  if (n_group > 1 && topk_group * (num_experts / n_group) < num_experts_per_tok)
    fail("topk_group", fmt::format("= {} groups of {} experts cannot hold num_experts_per_tok = {}",
                                   topk_group, num_experts / n_group, num_experts_per_tok));
  if (!(expert_dropout >= 0 && expert_dropout < 1))
    fail("expert_dropout", fmt::format("must be in [0, 1), got {}", expert_dropout));
  if (!(bias_update_rate >= 0))
    fail("bias_update_rate", fmt::format("must be non-negative, got {}", bias_update_rate));
  if (capacity_factor != capacity_factor) fail("capacity_factor", "is NaN");
  if (n_shared_experts < 0)
    fail("n_shared_experts", fmt::format("must be non-negative, got {}", n_shared_experts));
  if (shared_expert_intermediate_size < 0)
    fail("shared_expert_intermediate_size",
         fmt::format("must be non-negative, got {}", shared_expert_intermediate_size));
  if (shared_expert_gate && n_shared_experts == 0)
    fail("shared_expert_gate", "is set but n_shared_experts is 0");
  if (!(router_aux_loss_coef >= 0))
    fail("router_aux_loss_coef", fmt::format("must be non-negative, got {}", router_aux_loss_coef));
  if (!(router_importance_coef >= 0))
    fail("router_importance_coef",
         fmt::format("must be non-negative, got {}", router_importance_coef));
  if (!(router_z_loss_coef >= 0))
    fail("router_z_loss_coef", fmt::format("must be non-negative, got {}", router_z_loss_coef));
}

namespace {

template <class T>
void get(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) throw std::runtime_error("expected true or false");
    } else if constexpr (std::is_integral_v<T>) {
      if (!it->is_number_integer()) throw std::runtime_error("expected an integer");
    } else {
      if (!it->is_number()) throw std::runtime_error("expected a number");
    }
    out = it->get<T>();
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: {} has value {}: {}", where, key, it->dump(), e.what()));
  }
}

template <class E>
void get_enum(const nlohmann::json& j, const char* key, E& out,
              std::initializer_list<std::pair<const char*, E>> names, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  std::string allowed;
  if (it->is_string()) {
    for (const auto& [name, value] : names) {
      if (*it == name) {
        out = value;
        return;
      }
    }
  }
  for (const auto& [name, value] : names)
    allowed += fmt::format("{}\"{}\"", allowed.empty() ? "" : " or ", name);
  throw Error(fmt::format("{}: {} has value {}, expected {}", where, key, it->dump(), allowed));
}

template <class E>
const char* enum_name(E v, std::initializer_list<std::pair<const char*, E>> names) {
  for (const auto& [name, value] : names)
    if (value == v) return name;
  return "?";
}

const std::initializer_list<std::pair<const char*, ScoreFunc>> kScore = {
    {"softmax", ScoreFunc::Softmax}, {"sigmoid", ScoreFunc::Sigmoid}};
const std::initializer_list<std::pair<const char*, DropPolicy>> kDrop = {
    {"position", DropPolicy::Position},
    {"score", DropPolicy::Score},
    {"batch_priority", DropPolicy::BatchPriority}};
const std::initializer_list<std::pair<const char*, OverflowAction>> kOverflow = {
    {"drop", OverflowAction::Drop}, {"reroute", OverflowAction::Reroute}};
// "silu" is Hugging Face's name for the SwiGLU expert's activation.
const std::initializer_list<std::pair<const char*, Activation>> kAct = {
    {"silu", Activation::SwiGLU}, {"swiglu", Activation::SwiGLU}, {"gelu", Activation::GELU}};
const std::initializer_list<std::pair<const char*, AuxLossStyle>> kAux = {
    {"switch", AuxLossStyle::Switch}, {"hf", AuxLossStyle::HF}};
const std::initializer_list<std::pair<const char*, ComputeDtype>> kDtype = {
    {"float32", ComputeDtype::Float32}, {"bfloat16", ComputeDtype::BFloat16}};

// The one list of keys: every reader and writer walks it, so none can forget a key.
template <class Config, class Visitor>
void visit_keys(Config& c, Visitor&& v) {
  v("hidden_size", c.hidden_size);
  v("moe_intermediate_size", c.moe_intermediate_size);
  v("num_experts", c.num_experts);
  v("num_experts_per_tok", c.num_experts_per_tok);
  v("scoring_func", c.scoring_func, kScore);
  v("norm_topk_prob", c.norm_topk_prob);
  v("routed_scaling_factor", c.routed_scaling_factor);
  v("n_group", c.n_group);
  v("topk_group", c.topk_group);
  v("noisy_gating", c.noisy_gating);
  v("expert_dropout", c.expert_dropout);
  v("use_selection_bias", c.use_selection_bias);
  v("bias_update_rate", c.bias_update_rate);
  v("capacity_factor", c.capacity_factor);
  v("drop_policy", c.drop_policy, kDrop);
  v("overflow", c.overflow, kOverflow);
  v("hidden_act", c.hidden_act, kAct);
  v("n_shared_experts", c.n_shared_experts);
  v("shared_expert_intermediate_size", c.shared_expert_intermediate_size);
  v("shared_expert_gate", c.shared_expert_gate);
  v("router_aux_loss_coef", c.router_aux_loss_coef);
  v("router_importance_coef", c.router_importance_coef);
  v("router_z_loss_coef", c.router_z_loss_coef);
  v("aux_loss_style", c.aux_loss_style, kAux);
  v("compute_dtype", c.compute_dtype, kDtype);
}

struct Reader {
  const nlohmann::json& j;
  const std::string& where;
  template <class T>
  void operator()(const char* key, T& value) const {
    get(j, key, value, where);
  }
  template <class E>
  void operator()(const char* key, E& value,
                  std::initializer_list<std::pair<const char*, E>> names) const {
    get_enum(j, key, value, names, where);
  }
};

struct Writer {
  nlohmann::json& j;
  template <class T>
  void operator()(const char* key, const T& value) const {
    j[key] = value;
  }
  template <class E>
  void operator()(const char* key, const E& value,
                  std::initializer_list<std::pair<const char*, E>> names) const {
    j[key] = enum_name(value, names);
  }
};

}  // namespace

ComputeDtype default_compute_dtype() {
  return cpu_features().bf16_gemm() ? ComputeDtype::BFloat16 : ComputeDtype::Float32;
}

const char* compute_dtype_name(ComputeDtype d) {
  return enum_name(d, kDtype);
}

MoeConfig moe_config_from_json(const nlohmann::json& j, const std::string& where) {
  MOE_REQUIRE(j.is_object(), "{}: expected a JSON object", where);
  MoeConfig c;
  if (auto d = j.find("compute_dtype"); d != j.end() && *d == "auto") {
    nlohmann::json resolved = j;
    resolved["compute_dtype"] = compute_dtype_name(default_compute_dtype());
    visit_keys(c, Reader{resolved, where});
  } else {
    visit_keys(c, Reader{j, where});
  }
  c.validate(where);
  return c;
}

void moe_config_to_json(const MoeConfig& c, nlohmann::json& j) {
  visit_keys(c, Writer{j});
}

MoeConfig load_moe_config(const std::string& path) {
  return moe_config_from_json(read_json_file(path), path);
}

}  // namespace moe
