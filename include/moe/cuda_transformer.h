// The decoder LM of docs/model.md trained on a CUDA GPU (docs/cuda.md, "The LM on the GPU"),
// built only with -DMOE_CUDA=ON (library moe_cuda). One training step runs on the device from
// the token ids to the updated weights: embedding, pre-norm RMSNorm, grouped-query causal
// attention with RoPE, the FFN of each block (CudaMoeLayer every moe_every layers, a dense
// SwiGLU elsewhere), the final RMSNorm, the LM head (tied or not), cross-entropy plus the MoE
// auxiliary losses, their backward, clipping by global norm and AdamW, with fp32 master
// weights, gradients and moments. This header needs no CUDA headers (pimpl).
//
// Precision: every matrix product outside the MoE layers (q/k/v/o projections, attention
// scores and P V, dense FFN, LM head, and all their gradients) is a cuBLAS fp32 GEMM in the
// default math mode (no TF32), so those parts follow Transformer<float> to float rounding;
// the MoE layers run their experts in bf16 with fp32 accumulation (cuda_moe_layer.h). Reductions
// the CPU does in double (RMSNorm mean square and backward dot, softmax and cross-entropy sums, the
// gradient norm) are in double here too, over fixed trees: results are deterministic.
//
// Parameters have the names, shapes and order of Transformer<float>::parameters(), so a CPU
// model or checkpoint can be copied in, trained here and copied back (copy_from / copy_to,
// load_weights / save_weights, save_optimizer / load_optimizer in AdamW<float>'s layout).
//
// Supported subset (anything else is refused by the constructor with one moe::Error naming
// the key, before any CUDA call): the mixtral family that Transformer trains (validate()),
// hidden_act silu, and for MoE layers the subset of cuda_check_supported(). compute_dtype is
// ignored (experts are always bf16, the rest always fp32). No expert parallelism.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moe/cuda_moe_layer.h"
#include "moe/model_config.h"
#include "moe/optimizer.h"

namespace moe {

template <class T>
class Transformer;
class SafeTensorsFile;
class SafeTensorsWriter;
class StepDevice;
enum class DType;

// Throws moe::Error("CudaTransformer: <key> ... not supported by the CUDA backend") for the
// first key of c outside the supported subset; c must have passed validate(). Inline so that
// CPU-only tests can check it.
inline void cuda_transformer_check_supported(const ModelConfig& c) {
  if (c.moe.hidden_act != Activation::SwiGLU)
    throw Error(
        "CudaTransformer: hidden_act other than silu (SwiGLU) is not supported by the CUDA "
        "backend (docs/cuda.md)");
  if (c.attention_bias)
    throw Error(
        "CudaTransformer: attention_bias (q/k/v biases, qwen2_moe) is not supported by the CUDA "
        "backend (docs/cuda.md); train on the CPU");
  if (c.qk_norm != QkNorm::None)
    throw Error(
        "CudaTransformer: qk_norm (qwen3_moe, olmoe) is not supported by the CUDA backend "
        "(docs/cuda.md); train on the CPU");
  if (c.training.trainable != "all")
    throw Error(
        "CudaTransformer: training.trainable (--train) other than all is not supported by the "
        "CUDA backend (docs/cuda.md); train on the CPU");
  bool has_moe = false;
  for (int l = 0; l < c.num_hidden_layers; ++l) has_moe |= c.is_moe_layer(l);
  if (has_moe) cuda_check_supported(c.moe, "CudaTransformer");
}

// What one optimizer step did.
struct CudaStepStats {
  double loss = 0;  // mean over the micro-batches of ce + aux
  double ce = 0, aux = 0;
  double grad_norm = 0;  // global norm before clipping
  double lr = 0;
};

class CudaTransformer {
 public:
  // Syncs and validates config, refuses unsupported keys, then needs a device. Weights are
  // zero until upload_params(), copy_from() or load_weights().
  explicit CudaTransformer(const ModelConfig& config);
  ~CudaTransformer();
  CudaTransformer(CudaTransformer&&) noexcept;
  CudaTransformer& operator=(CudaTransformer&&) noexcept;
  CudaTransformer(const CudaTransformer&) = delete;
  CudaTransformer& operator=(const CudaTransformer&) = delete;

  const ModelConfig& config() const;

  // ---- Parameters ----
  // Host mirrors, named and ordered as Transformer<float>::parameters(). Values and grads are
  // only as fresh as the last upload / download below.
  std::vector<ParamRef<float>>& parameters();
  // Host mirror values -> device master weights (and the MoE layers' bf16 copies).
  void upload_params();
  // Device master weights -> host mirror values; device gradients -> host mirror grads.
  void download_params();
  void download_grads();
  // Weights and selection biases from / to a CPU model of the same config (names must match).
  void copy_from(Transformer<float>& cpu);
  void copy_to(Transformer<float>& cpu);
  // As Transformer::load_weights / save_weights (names of docs/model.md, selection biases as
  // "state.selection_bias.<l>").
  void load_weights(const SafeTensorsFile& f);
  void save_weights(SafeTensorsWriter& w, DType dtype);
  // AdamW moments and step count as AdamW<float>::save / load ("adam.m.<name>", "adam.v.<name>",
  // metadata "adam.steps").
  void save_optimizer(SafeTensorsWriter& w);
  void load_optimizer(const SafeTensorsFile& f);
  // The same state from / to an AdamW<float> over the same parameters, in memory.
  void copy_optimizer_from(const AdamW<float>& adam);
  void copy_optimizer_to(AdamW<float>& adam);
  int64_t optimizer_steps() const;

  // ---- One step, piece by piece (as Transformer + AdamW) ----
  void zero_grad();
  // inputs, targets: [B, S] host arrays (target -1 = ignored; targets may be null: logits
  // only). Returns ce + aux (0 without targets). Blocks until the loss is on the host.
  double forward(const int32_t* inputs, const int32_t* targets, int B, int S);
  // Gradient of ce_scale * ce + aux_scale * aux of the last forward, accumulated (+=).
  void backward(double ce_scale, double aux_scale);
  void backward(double scale = 1.0) { backward(scale, scale); }
  // clip_grad_norm (training.grad_clip, none when <= 0) fused into AdamW (lr), then the MoE
  // layers' bf16 copies are re-rounded. Returns the global gradient norm before clipping
  // (NaN or inf when a gradient is not finite: the caller decides). Stored gradients stay
  // unclipped.
  double optimizer_step(double lr);
  // Aux-loss-free balancing of every MoE layer (after optimizer_step, as the trainer).
  void update_selection_bias();

  // zero_grad, training.grad_accum_steps micro-batches of B sequences (inputs and targets
  // [grad_accum_steps, B, S], each micro-batch's loss scaled by 1 / grad_accum_steps),
  // optimizer_step(learning_rate_at(training, step)), update_selection_bias: the trainer's
  // step without expert parallelism.
  CudaStepStats train_step(const int32_t* inputs, const int32_t* targets, int B, int S, int step);

  // ---- Results of the last forward ----
  double ce_loss() const;
  double aux_loss() const;
  int64_t counted_targets() const;
  std::vector<float> logits() const;  // [B*S, V], downloaded
  int num_layers() const;
  // The CUDA MoE layer of block l, or null for a dense block.
  CudaMoeLayer* moe_layer(int l);
  const MoeMetrics* moe_metrics(int l) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The trainer's StepDevice (trainer.h) on a CudaTransformer: `moe train --device cuda`. Refuses
// what the constructor refuses, with the same error line.
std::unique_ptr<StepDevice> make_cuda_step_device(const ModelConfig& config);

}  // namespace moe
