// The decoder LM of docs/model.md: token embedding, L pre-norm blocks (RMSNorm, grouped-query
// causal attention with RoPE, RMSNorm, MoE or dense SwiGLU FFN), final RMSNorm, LM head (tied
// optional); with the pieces of the Hugging Face MoE families (hf_checkpoint.h): q/k/v biases,
// q/k RMSNorm per head or over the projection, explicit head_dim, dense layers by moe_every and
// mlp_only_layers, the gated shared expert, gates renormalized or not. forward() saves every
// activation the backward needs; backward() accumulates parameter gradients (+=) of scale * loss.
// Buffers grow to the largest batch seen and are reused, so steady-state training steps do not
// reallocate them.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/attention.h"
#include "moe/communicator.h"
#include "moe/decoder.h"
#include "moe/feed_forward.h"
#include "moe/model_config.h"
#include "moe/moe_layer.h"
#include "moe/optimizer.h"
#include "moe/step_profile.h"

namespace moe {

class SafeTensorsFile;
class SafeTensorsWriter;

template <class T>
class Transformer {
 public:
  explicit Transformer(const ModelConfig& config);

  // Matrices ~ N(0, initializer_range), norms = 1, selection biases = 0.
  void init_weights(Rng& rng);

  // inputs, targets: [B, S] (target -1 = ignored; targets may be null: logits only).
  // Returns loss = mean cross-entropy + the MoE layers' auxiliary losses (0 without targets).
  double forward(const int32_t* inputs, const int32_t* targets, int B, int S, bool training = false,
                 Rng* rng = nullptr);
  // Gradient of scale * loss of the last forward, accumulated into the parameter gradients.
  void backward(double scale = 1.0) { backward(scale, scale); }
  // Gradient of ce_scale * cross-entropy + aux_scale * auxiliary losses. Under expert
  // parallelism the ranks' cross-entropies are parts of one mean (ce_scale = local / global
  // targets) while every rank holds the whole auxiliary loss and applies its tokens' share.
  void backward(double ce_scale, double aux_scale);

  const ModelConfig& config() const { return cfg_; }
  std::vector<ParamRef<T>>& parameters() { return params_; }
  int64_t num_parameters() const;
  // Parameters that train (not frozen by training.trainable).
  int64_t trainable_parameters() const;
  // Bytes of activations forward() saves for the backward of a [B, S] micro-batch (estimate
  // from the buffers' shapes, for the memory check before training).
  int64_t activation_bytes(int B, int S) const;
  // Parameters a token actually uses (experts counted k of E), for FLOP accounting.
  int64_t active_parameters() const;
  // Forward multiply-adds per token at sequence length S (matrices + attention scores).
  double forward_macs_per_token(int S) const;
  void zero_grad();
  // Times the parts of forward() and backward() into p (the MoE layers' parts included); null
  // (the default) turns it off. Not owned.
  void set_profile(StepProfile* p);

  // Of the last forward:
  double ce_loss() const { return ce_; }
  double aux_loss() const { return aux_; }
  int64_t counted_targets() const { return counted_; }
  const std::vector<T>& row_losses() const { return row_loss_; }  // [B*S], 0 where ignored
  const T* logits() const { return logits_.data(); }              // [B*S, V]
  // Where the last forward first produced NaN or inf, in forward order: e.g.
  // "model.layers.2.block_sparse_moe output", "logits", or "none".
  std::string first_nonfinite_activation() const;

  int num_layers() const { return cfg_.num_hidden_layers; }
  // The MoE layer of block l, or null for a dense block.
  MoeLayer<T>* moe_layer(int l);
  const MoeLayer<T>* moe_layer(int l) const;
  // Aux-loss-free balancing: every MoE layer updates its selection bias (after the optimizer).
  void update_selection_bias();
  // Routing metrics of the last forward of block l (of the global batch under expert
  // parallelism), or null for a dense block.
  const MoeMetrics* moe_metrics(int l) const;

  // Expert parallelism (moe_layer.h): every MoE layer becomes a MoeLayer with the all-to-all
  // dispatcher and this rank's experts, copied from the current weights; parameters() then lists
  // the local shards (expert tensors [E/P, ...]). The full layers are kept for
  // gather_full_weights().
  void enable_expert_parallel(ParallelGroups& groups);
  bool expert_parallel() const { return groups_ != nullptr; }
  ParallelGroups* parallel_groups() { return groups_; }
  // Whether parameter p is an expert shard (summed over replicas, not over all ranks).
  static bool is_expert_param(const std::string& name);
  // Copies the shards back into the full layers on every rank (MoeLayer::gather_into), so
  // save_weights() writes the whole model. Collective.
  void gather_full_weights();
  const MoeLayer<T>* expert_parallel_layer(int l) const;  // the shard layer

  // Weights (and selection biases as "state.selection_bias.<l>") as named in docs/model.md.
  void save_weights(SafeTensorsWriter& w, DType dtype) const;
  // Loads every parameter; a missing tensor or a wrong shape is an error naming file and tensor.
  void load_weights(const SafeTensorsFile& f);

 private:
  friend class TransformerLm;
  T* base(const std::string& name) { return base_.value(name); }
  T* base_grad(const std::string& name) { return base_.grad(name); }
  void reserve(int64_t rows);
  std::string layer_name(int l, const char* what) const;

  ModelConfig cfg_;
  int d_, V_, L_;
  ParamSet<T> base_;  // embedding, norms, LM head
  std::vector<std::unique_ptr<Attention<T>>> attn_;
  std::vector<std::unique_ptr<FeedForward<T>>> ffn_;
  std::vector<ParamRef<T>> params_;
  // Expert parallelism: the full parameter list (for saving) and the sharded MoE layers.
  ParallelGroups* groups_ = nullptr;
  StepProfile* profile_ = nullptr;
  std::vector<ParamRef<T>> full_params_;
  std::vector<std::unique_ptr<FeedForward<T>>> full_ffn_;  // the replaced full MoE layers

  // Activations of the last forward (n = B*S rows).
  int B_ = 0, S_ = 0;
  int64_t n_ = 0, capacity_ = 0;
  std::vector<int32_t> inputs_, targets_;  // [n]
  bool has_targets_ = false;
  std::vector<T> h_;                // [L+1, n, d] residual stream entering each block, and the last
  std::vector<T> hmid_;             // [L, n, d] after attention
  std::vector<T> xa_, xm_;          // [L, n, d] normalized inputs of attention and FFN
  std::vector<T> rstd_a_, rstd_m_;  // [L, n]
  std::vector<T> hf_, rstd_f_;      // [n, d], [n] final norm
  std::vector<T> tmp_;              // [n, d]
  std::vector<T> logits_, dlogits_;  // [n, V]
  std::vector<T> row_loss_;          // [n]
  std::vector<T> dh_, dtmp_, dhf_;   // [n, d]
  double ce_ = 0, aux_ = 0;
  int64_t counted_ = 0;
};

// A trained model for generation (generate.h): the one cached decoder forward over F32 views of
// its parameters (no copy) with its FeedForward layers as the FFNs. The model must outlive it.
// With `quantize` other than F32 every matrix (attention, experts, shared expert, dense FFN, LM
// head; not the router or the embedding table) is quantized once to that type (SwiGLU FFNs
// only) and the FFNs run over those copies: the MoE layers route with their own router and
// take the expert weights as views (ForwardOptions::expert_views).
class TransformerLm : public Decoder {
 public:
  explicit TransformerLm(Transformer<float>& model, GgmlType quantize = GgmlType::F32);
  // Redraws the routers of the model itself (the views see it).
  void randomize_routers(Rng& rng, double std) override;

 private:
  // A layer's FFN weights in the quantized type.
  struct QuantizedFfn {
    std::vector<FfnViews> experts;  // [E] (MoE layers)
    FfnViews shared;                // the shared expert, or the dense FFN
    bool has_shared = false;
  };
  void quantize_ffns(GgmlType type);
  void ffn(int l, int64_t rows) override;

  Transformer<float>& model_;
  std::vector<float> y_;                        // [rows, d] FFN output
  std::vector<QuantizedFfn> qffn_;              // [L] with quantize, else empty
  std::optional<GroupedExperts<float>> dense_;  // runs the quantized dense FFNs
};

}  // namespace moe
