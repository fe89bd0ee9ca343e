// A ViT encoder with sparse MoE (V-MoE, Riquelme et al. 2021) for the glyph images of
// images.h: patches as tokens, linear patch embedding, learned absolute positions, an optional
// class token (else mean pooling), L pre-norm blocks (RMSNorm, bidirectional attention without
// RoPE, RMSNorm, FFN), final RMSNorm, linear classification head.
// The FFN of block l is chosen by "router_type" when (l + 1) % moe_every == 0, else dense:
//   "top_k"          MoeLayer (docs/moe-layer.md) over the whole batch's tokens, with capacity
//                    and drop_policy "position" | "score" | "batch_priority" (V-MoE's BPR)
//   "soft"           SoftMoe, slots_per_expert per expert, token groups = one image
//   "expert_choice"  ExpertChoice, capacity_factor = experts per token, groups = one image
//   "dense"          DenseFfn of width dense_intermediate_size in every block (the baseline)
// forward() saves what backward() needs; backward() accumulates parameter gradients (+=).
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "moe/attention.h"
#include "moe/feed_forward.h"
#include "moe/images.h"
#include "moe/model_config.h"
#include "moe/moe_config.h"
#include "moe/optimizer.h"

namespace moe {

class SafeTensorsWriter;
class SafeTensorsFile;

enum class VitRouter { TopK, Soft, ExpertChoice, Dense };
enum class VitPooling { Cls, Mean };

struct VitTrainConfig {
  double learning_rate = 2e-3;
  double min_lr_ratio = 0.05;
  int warmup_steps = 50;
  int max_steps = 600;
  double weight_decay = 0.05;
  double adam_beta1 = 0.9, adam_beta2 = 0.99, adam_eps = 1e-8;
  double grad_clip = 1.0;
  int batch_size = 64;   // images per step; capacity (top_k) is computed over the whole batch
  int eval_every = 200;  // test accuracy every N steps (0: only at the end)
  uint64_t seed = 1234;  // initialization and batch order
  // top_k only: after training, the same weights are tested again at each of these capacity
  // factors with drop_policy "batch_priority" and "position" (V-MoE's inference-time
  // capacity sweep); results in summary.json "capacity_sweep".
  std::vector<double> eval_capacity_factors;
  // The TrainConfig that learning_rate_at and AdamW read.
  TrainConfig as_train_config() const;
};

struct VitConfig {
  std::string model_type = "vit_moe";
  int patch_size = 7;
  int hidden_size = 64;
  int num_hidden_layers = 4;
  int num_attention_heads = 4;
  int intermediate_size = 128;      // width of one expert
  int dense_intermediate_size = 0;  // width of dense FFNs; 0: intermediate_size
  VitRouter router_type = VitRouter::TopK;
  int moe_every = 2;         // block l is MoE iff (l + 1) % moe_every == 0
  int slots_per_expert = 1;  // soft
  VitPooling pooling = VitPooling::Mean;
  double rms_norm_eps = 1e-6;
  double initializer_range = 0.02;
  // Routing keys (num_experts, num_experts_per_tok, capacity_factor, drop_policy, hidden_act,
  // router_aux_loss_coef, router_z_loss_coef, ...) under their MoeConfig names, same file.
  MoeConfig moe;
  ImageDataConfig dataset;  // "dataset": {...}
  VitTrainConfig training;  // "training": {...}

  int num_patches() const {
    const int g = dataset.image_size / patch_size;
    return g * g;
  }
  int seq_len() const { return num_patches() + (pooling == VitPooling::Cls ? 1 : 0); }
  int num_classes() const { return static_cast<int>(dataset.classes.size()); }
  int dense_width() const {
    return dense_intermediate_size > 0 ? dense_intermediate_size : intermediate_size;
  }
  bool is_moe_layer(int l) const {
    return router_type != VitRouter::Dense && (l + 1) % moe_every == 0;
  }
  // Throws moe::Error "<where>: <key> ..." for the first bad key.
  void validate(const std::string& where = "config") const;
};

// Reads a ViT config object: every key must be known (its own, MoeConfig's, "dataset",
// "training"); an unknown key or a wrong type is an error naming `where` and the key.
VitConfig vit_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json vit_config_to_json(const VitConfig& c);
VitConfig load_vit_config(const std::string& path);
// Whether `path` is a JSON config with model_type "vit_moe" (false for anything unreadable: the
// language-model loader then names the problem).
bool is_vit_config(const std::string& path);

template <class T>
class VitModel {
 public:
  explicit VitModel(const VitConfig& c);
  void init_weights(Rng& rng);  // matrices and embeddings ~ N(0, initializer_range), norms 1

  // images [B, image_size^2] in [0, 1]; labels [B] (null: logits only). Returns mean
  // cross-entropy + the MoE layers' auxiliary losses.
  double forward(const float* images, const int32_t* labels, int B, bool training = false,
                 Rng* rng = nullptr);
  void backward(double scale = 1.0);  // gradient of scale * loss of the last forward

  const VitConfig& config() const { return cfg_; }
  std::vector<ParamRef<T>>& parameters() { return params_; }
  int64_t num_parameters() const;
  void zero_grad();
  const std::vector<T>& logits() const { return logits_; }  // [B, K]
  double ce_loss() const { return ce_; }
  double aux_loss() const { return aux_; }
  int num_layers() const { return cfg_.num_hidden_layers; }
  FeedForward<T>& ffn(int l) { return *ffn_[l]; }
  // Routing of block l's FFN in the last forward, per token [B*S]: how many of the token's
  // assignments an expert ran (top_k: kept of k; expert_choice: experts that took it; soft and
  // dense: -1, nothing is dropped), and for each token its main expert (top_k: primary
  // choice 0; expert_choice: the highest gate that took it, -1 if none; soft: the slot of
  // largest combine weight / p; dense: -1).
  void token_routing(int l, std::vector<int>& kept, std::vector<int>& expert) const;
  double dropped_fraction() const;  // over the MoE layers of the last forward

  void save_weights(SafeTensorsWriter& w) const;
  void load_weights(const SafeTensorsFile& f);

 private:
  VitConfig cfg_;
  int d_, L_, P_, N_, S_, K_, pix_;
  ParamSet<T> base_;  // patch_embed.{weight,bias}, pos_embed, cls_token, norms, head
  std::vector<std::unique_ptr<Attention<T>>> attn_;
  std::vector<std::unique_ptr<FeedForward<T>>> ffn_;
  std::vector<ParamRef<T>> params_;

  int B_ = 0;
  int64_t n_ = 0;
  std::vector<T> patches_;       // [B*N, P*P]
  std::vector<int32_t> labels_;  // [B]
  bool has_labels_ = false;
  std::vector<T> h_;                // [L+1, n, d] residual stream entering each block, and out
  std::vector<T> hmid_;             // [L, n, d]
  std::vector<T> xa_, xm_;          // [L, n, d]
  std::vector<T> rstd_a_, rstd_m_;  // [L, n]
  std::vector<T> hf_, rstd_f_;      // [n, d], [n]
  std::vector<T> pooled_;           // [B, d]
  std::vector<T> logits_, dlogits_, row_loss_;  // [B, K], [B, K], [B]
  std::vector<T> tmp_, dh_, dtmp_, dhf_, dpooled_;
  double ce_ = 0, aux_ = 0;
};

}  // namespace moe
