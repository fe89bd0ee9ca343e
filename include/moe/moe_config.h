// Configuration of one MoE layer: a plain struct with the defaults of DESIGN.md, one
// validate() that names the offending key, and JSON (de)serialization with Hugging Face
// key names where Hugging Face has one (docs/moe-layer.md lists them all).
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>

namespace moe {

enum class ScoreFunc { Softmax, Sigmoid };
// Position: slot order (t, j). Score: the assignment's gate, descending (Megatron-Core "probs").
// BatchPriority: V-MoE batch-priority routing (Riquelme et al. 2021): every token's first choice
// before any second choice, and within one choice rank j tokens by their top gate across the
// whole batch (descending), so the patches the router is surest about are never the dropped ones.
enum class DropPolicy { Position, Score, BatchPriority };
enum class OverflowAction { Drop, Reroute };
// ClampedSwiGLU is gpt-oss's expert activation (inference only, not a config.json choice):
// g = min(h1, limit), u = clamp(h3, -limit, limit), a = g * sigmoid(1.702 g) * (u + 1).
enum class Activation { SwiGLU, GELU, ClampedSwiGLU };
// Switch: f normalized by T*k (perfect balance gives exactly the coefficient).
// HF: Hugging Face Mixtral's variant, f normalized by T (k times larger).
enum class AuxLossStyle { Switch, HF };
// Precision of the expert (and shared expert) GEMMs. The router is always fp32 or wider.
enum class ComputeDtype { Float32, BFloat16 };

struct MoeConfig {
  int hidden_size = 0;            // d
  int moe_intermediate_size = 0;  // F, hidden width of one expert
  int num_experts = 8;            // E
  int num_experts_per_tok = 2;    // k
  ScoreFunc scoring_func = ScoreFunc::Softmax;
  bool norm_topk_prob = true;  // renormalize top-k gates to sum 1 (only when k > 1)
  double routed_scaling_factor = 1.0;
  int n_group = 1;  // group-limited selection (DeepSeek-V3)
  int topk_group = 1;
  // A group's score: the sum of its best two selection keys (DeepSeek-V3 noaux_tc), or with
  // group_score_max its best one (DeepSeek-V2 group_limited_greedy). Set by the deepseek_v2
  // config reader only, not a JSON key.
  bool group_score_max = false;
  bool noisy_gating = false;        // Shazeer 2017 noisy top-k, training only
  double expert_dropout = 0.0;      // whole-expert dropout probability, training only
  bool use_selection_bias = false;  // aux-loss-free balancing (DeepSeek-V3)
  double bias_update_rate = 1e-3;
  double capacity_factor = 0.0;  // <= 0: dropless
  DropPolicy drop_policy = DropPolicy::Position;
  OverflowAction overflow = OverflowAction::Drop;
  Activation hidden_act = Activation::SwiGLU;
  int n_shared_experts = 0;
  int shared_expert_intermediate_size = 0;  // per shared expert; 0 means moe_intermediate_size
  bool shared_expert_gate = false;          // Qwen2-MoE sigmoid gate on the shared output
  double router_aux_loss_coef = 0.01;
  double router_importance_coef = 0.0;
  double router_z_loss_coef = 1e-3;
  AuxLossStyle aux_loss_style = AuxLossStyle::Switch;
  // "bfloat16": expert GEMMs round their operands to bf16 and accumulate in fp32 (fp32 master
  // weights; MoeLayer<float> only). Routing and everything else stay in T.
  // A config file's "auto" (and a model config file without the key) resolves at reading to
  // default_compute_dtype(); what is written back is the resolved name.
  ComputeDtype compute_dtype = ComputeDtype::Float32;

  int shared_hidden() const {
    return n_shared_experts * (shared_expert_intermediate_size > 0 ? shared_expert_intermediate_size
                                                                   : moe_intermediate_size);
  }
  // Throws moe::Error("<where>: <key> ...") for the first invalid key.
  void validate(const std::string& where = "MoeConfig") const;
};

// bf16 where the CPU has the AVX-512 BF16 GEMM, fp32 elsewhere: what "compute_dtype": "auto"
// means. Over the full default schedule bf16 trains like fp32 (README, "bf16 beyond the experts").
ComputeDtype default_compute_dtype();
// "float32" / "bfloat16", as a config file names it.
const char* compute_dtype_name(ComputeDtype d);

// Reads the keys present in j over the defaults; unknown enum strings and wrong JSON types are
// errors naming `where` and the key. Unknown keys are ignored (configs carry model keys too).
MoeConfig moe_config_from_json(const nlohmann::json& j, const std::string& where = "config");
// The layer config in a JSON file (a bad file or key is an error naming the file).
MoeConfig load_moe_config(const std::string& path);
void moe_config_to_json(const MoeConfig& c, nlohmann::json& j);

}  // namespace moe
