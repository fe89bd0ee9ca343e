// Hugging Face checkpoints of the four MoE families and four dense ones: a directory with
// config.json (model_type "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"; dense "llama",
// "mistral", "qwen2", "qwen3") and the weights in model.safetensors, or in shards listed by
// model.safetensors.index.json, under each family's tensor names:
//   mixtral  model.layers.N.block_sparse_moe.gate.weight            router [E, d]
//            model.layers.N.block_sparse_moe.experts.M.w1/w3/w2      gate/up/down of expert M
//   others   model.layers.N.mlp.gate.weight                          router [E, d]
//            model.layers.N.mlp.experts.M.{gate,up,down}_proj.weight
//            model.layers.N.mlp.{gate,up,down}_proj.weight           dense layers (qwen)
//            model.layers.N.mlp.shared_expert.*, mlp.shared_expert_gate.weight (qwen2_moe)
//            self_attn.{q,k,v}_proj.bias (qwen2_moe), self_attn.{q,k}_norm.weight (qwen3, olmoe)
//   dense    model.layers.N.mlp.{gate,up,down}_proj.weight in every layer; q/k/v biases (qwen2),
//            per-head q/k norms (qwen3)
//   deepseek_v2, deepseek_v3 (kimi_k2 reads as deepseek_v3): Multi-head Latent Attention
//            self_attn.{q_proj | q_a_proj, q_a_layernorm, q_b_proj}, kv_a_proj_with_mqa,
//            kv_a_layernorm, kv_b_proj, o_proj; mlp.gate.weight (+ e_score_correction_bias, v3),
//            mlp.experts.M.*, mlp.shared_experts.{gate,up,down}_proj.weight; dense mlp.* in the
//            first first_k_dense_replace layers. Inference only (no MLA backward).
//   qwen3_next, qwen3_5_moe (text model, under model.language_model.): Gated DeltaNet layers
//            linear_attn.{in_proj_qkvz, in_proj_ba | in_proj_qkv, in_proj_z, in_proj_b,
//            in_proj_a}, conv1d.weight, A_log, dt_bias, norm.weight, out_proj.weight; gated
//            attention self_attn.q_proj [H*2*hd, d], k/v/o_proj, q_norm/k_norm [hd]; mlp.gate,
//            experts (per expert or fused), shared_expert.*, shared_expert_gate. RMSNorm
//            weights w are stored zero-centred (the scale is 1 + w). Inference only.
// Every problem is a one-line moe::Error naming the file and the key or tensor.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "moe/model_config.h"
#include "moe/safetensors.h"
#include "moe/transformer.h"

namespace moe {

// Reads a Hugging Face config.json of one of the eight families. A missing key takes the
// default of that family's Hugging Face config class; rope_scaling (linear, dynamic, yarn,
// llama3) is read by read_rope_config; a key we cannot compute exactly (another rope_type,
// clip_qkv, a sliding window shorter than the context, a bias on o_proj or the
// MLP, an activation other than silu, ...) is an error naming it. A dense family has
// num_local_experts = 0 and intermediate_size the MLP width. The auxiliary-loss coefficient is
// read in Hugging Face's convention (aux_loss_style "hf").
ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& where);
// deepseek_v2, deepseek_v3 or kimi_k2.
bool is_deepseek_family(const std::string& model_type);
// llama, mistral, qwen2 or qwen3.
bool is_dense_hf_family(const std::string& model_type);
ModelConfig load_hf_config(const std::string& path);

// What the tensors of one block are called.
enum class HfTensor {
  InputNorm,
  PostAttentionNorm,
  Q,
  K,
  V,
  O,
  QBias,
  KBias,
  VBias,
  QNorm,
  KNorm,
  Router,
  ExpertGate,  // w1 / gate_proj of expert `expert`
  ExpertUp,    // w3 / up_proj
  ExpertDown,  // w2 / down_proj
  SharedGate,
  SharedUp,
  SharedDown,
  SharedExpertGate,  // the sigmoid gate [1, d] on the shared output (qwen2_moe)
  DenseGate,
  DenseUp,
  DenseDown,
  // Multi-head Latent Attention (deepseek_v2/v3): Q is q_proj when q_lora_rank is null.
  QA,          // self_attn.q_a_proj [q_lora_rank, d]
  QANorm,      // self_attn.q_a_layernorm [q_lora_rank]
  QB,          // self_attn.q_b_proj [H*(nope+rope), q_lora_rank]
  KvA,         // self_attn.kv_a_proj_with_mqa [kv_lora_rank + rope, d]
  KvANorm,     // self_attn.kv_a_layernorm [kv_lora_rank]
  KvB,         // self_attn.kv_b_proj [H*(nope+v), kv_lora_rank]
  RouterBias,  // mlp.gate.e_score_correction_bias [E] (deepseek_v3 selection bias)
};
std::string hf_tensor_name(const ModelConfig& c, int layer, HfTensor t, int expert = -1);
// Where the decoder's tensors start: "model." ("model.language_model." for qwen3_5_moe, whose
// checkpoints also hold a vision tower under model.visual, never read).
std::string hf_model_prefix(const ModelConfig& c);
// Which HfTensor our parameter of a block is, by its name after "model.layers.N." (docs/model.md:
// "self_attn.q_proj.weight", "block_sparse_moe.experts.w1", "mlp.ffn.w2", ...); false for a
// name that is none.
bool hf_tensor_of_param(const std::string& what, HfTensor& t);
// The reverse: our name of HfTensor t within a block (after "model.layers.N.").
const char* param_of_hf_tensor(HfTensor t);

// How a checkpoint stores an MoE layer's routed experts: one tensor per expert and matrix
// (transformers 4.x, experts.M.{gate,up,down}_proj or Mixtral's w1/w3/w2), or transformers v5's
// fused experts.gate_up_proj [E, 2F, d] (each expert's F gate rows, then its F up rows: v5's
// Experts modules chunk the product in two, gate first) and experts.down_proj [E, d, F].
enum class HfExpertLayout { PerExpert, Fused };
// "per-expert" or "fused"; false for another name.
bool parse_hf_expert_layout(const std::string& name, HfExpertLayout& out);
// The fused tensor of layer `layer` as we write it: gate_up_proj (gate_up) or down_proj, under
// the family's MoE block (Mixtral's block_sparse_moe).
std::string hf_fused_experts_name(const ModelConfig& c, int layer, bool gate_up);
class HfWeights;
// The name of layer `layer`'s fused tensor in w, or "" when the layer stores one tensor per
// expert. Mixtral's block is also read as "mlp", the module name of transformers v5.
std::string hf_fused_experts_in(const HfWeights& w, const ModelConfig& c, int layer, bool gate_up);

// Parameter counts: total, and the part one token uses (k of E experts per MoE layer).
struct ParameterCount {
  int64_t total = 0, active = 0;
};
ParameterCount count_parameters(const ModelConfig& c);

// The weights of a checkpoint directory, mapped read-only (nothing is copied).
class HfWeights {
 public:
  // model.safetensors.index.json if present (every shard it names must exist and hold the
  // tensors listed for it), else model.safetensors.
  static HfWeights open(const std::string& dir);
  const std::string& dir() const { return dir_; }
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  // Error naming the directory and the tensor when missing.
  const SafeTensorsFile& file_of(const std::string& name) const;
  const TensorEntry& entry(const std::string& name) const { return file_of(name).entry(name); }
  std::vector<std::string> names() const;
  int64_t data_bytes() const;  // sum of the tensors' stored sizes

 private:
  std::string dir_;
  std::vector<SafeTensorsFile> files_;
  std::map<std::string, int> where_;  // tensor -> index into files_
};

// The Hugging Face family that represents a model trained here exactly: a per-head q/k norm
// makes it "qwen3_moe" and a whole-projection one "olmoe" (a fine-tuned checkpoint goes back
// to its own family); else "mixtral" when every layer is MoE and there is no shared expert or
// bias, else "qwen2_moe" (dense layers through decoder_sparse_step / mlp_only_layers; shared
// experts merged into its one gated shared expert; zero q/k/v biases when the model has none).
// A setting the family cannot hold (sigmoid scoring, a selection bias, group-limited routing,
// ungated shared experts, GELU experts, a shared expert with q/k norms, ...) is an error
// naming the key.
std::string hf_family_for(const ModelConfig& c);

// The shape and numeric keys every family's config.json states (vocab_size .. hidden_act), from c.
void put_hf_shape_keys(nlohmann::json& j, const ModelConfig& c);
// Writes config.json and model.safetensors (matrices in `dtype`: F32, BF16 or F16; norms and
// the router always F32) into dir, each file atomically; the experts in `layout`.
void save_hf_checkpoint(Transformer<float>& model, const std::string& dir, DType dtype,
                        HfExpertLayout layout = HfExpertLayout::PerExpert);
// The config.json save_hf_checkpoint writes.
nlohmann::json hf_config_json(const ModelConfig& c, DType dtype);

// Loads a checkpoint of any of the four families into a trainable model built from
// load_hf_config(), BF16/F16 widened to float: every tensor must be present with its shape
// (error names the file and tensor). Experts in either HfExpertLayout, layer by layer.
void load_hf_weights(Transformer<float>& model, const HfWeights& w);

}  // namespace moe
