// The MoE layer on a CUDA GPU (docs/cuda.md), built only with -DMOE_CUDA=ON (library moe_cuda).
// Same contract as MoeLayer<float> for the configurations it supports: the same parameter
// names and shapes (so a CPU layer's ParamSet can be copied in and gradients compared), the
// same routing decisions (top-k order and ties, capacity with position priority and drop), the
// same losses and metrics. This header needs no CUDA headers: the device state is behind a
// pointer to an incomplete type.
//
// Precision: router logits, scores, gates, counts and losses in fp32 (sums of losses in
// double, as on the CPU); expert and shared-expert GEMMs in bf16 with fp32 accumulation, from
// bf16 copies of the fp32 master weights. The copies are rounded once per weight update: by
// upload_params() / set_params(), or by refresh_compute_weights() after an optimizer has
// changed the device master weights in place. Gradients are fp32 and accumulate (+=) like the
// CPU layer's until zero_grad().
//
// Supported subset (anything else is refused by the constructor, naming the key): softmax or
// sigmoid scores, a selection bias (aux-loss-free balancing), norm_topk_prob,
// routed_scaling_factor, capacity_factor with drop_policy "position" and overflow "drop",
// SwiGLU experts, shared experts with or without the sigmoid gate, the load-balance loss
// (Switch or HF style) and the z-loss. A padding mask as MoeLayer's ForwardOptions::token_mask.
//
// Each forward synchronizes once with the device to learn the per-expert row counts (the
// grouped GEMM takes its problem sizes from the host), as Megatron-Core's grouped GEMM does.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/error.h"
#include "moe/moe_config.h"
#include "moe/moe_losses.h"
#include "moe/params.h"
#include "moe/tensor.h"

namespace moe {

// True when a CUDA device can be used; false (never throws) without a device, a driver or a
// CUDA build (without -DMOE_CUDA=ON the symbol is not built at all).
bool cuda_available();

// Throws moe::Error("<where>: <key> ... not supported by the CUDA backend") for the first key
// of c outside the supported subset. Inline so that CPU-only tests can check it.
inline void cuda_check_supported(const MoeConfig& c, const char* where = "CudaMoeLayer") {
  // A user's configuration, not a broken precondition: no source location in the message.
  auto refuse = [&](const char* key, const char* what) {
    throw Error(fmt::format("{}: {} {} is not supported by the CUDA backend (docs/cuda.md)", where,
                            key, what));
  };
  if (c.noisy_gating) refuse("noisy_gating", "= true");
  if (c.expert_dropout > 0) refuse("expert_dropout", "> 0");
  if (c.n_group > 1) refuse("n_group", "> 1 (group-limited top-k)");
  if (c.hidden_act != Activation::SwiGLU) refuse("hidden_act", "other than silu (SwiGLU)");
  if (c.drop_policy != DropPolicy::Position) refuse("drop_policy", "other than \"position\"");
  if (c.overflow != OverflowAction::Drop) refuse("overflow", "other than \"drop\"");
  if (c.router_importance_coef != 0) refuse("router_importance_coef", "!= 0");
}

class CudaMoeLayer {
 public:
  // Validates config, refuses unsupported keys (cuda_check_supported), then needs a device.
  explicit CudaMoeLayer(const MoeConfig& config);
  ~CudaMoeLayer();
  CudaMoeLayer(CudaMoeLayer&&) noexcept;
  CudaMoeLayer& operator=(CudaMoeLayer&&) noexcept;
  CudaMoeLayer(const CudaMoeLayer&) = delete;
  CudaMoeLayer& operator=(const CudaMoeLayer&) = delete;

  // ---- Parameters: a host ParamSet laid out exactly like MoeLayer<float>'s. ----
  ParamSet<float>& params();
  // Copies params().values() to the device master weights and rounds the bf16 copies.
  void upload_params();
  // Copies the values of src (same names and shapes, else moe::Error naming the tensor) into
  // params() and uploads them.
  void set_params(const ParamSet<float>& src);
  // Device gradients -> params().grads() (=).
  void download_grads();
  // Device gradients -> dst.grads() (=); dst laid out like params().
  void copy_grads_to(ParamSet<float>& dst);
  void zero_grad();

  // ---- Host convenience: copies to and from the device; blocks until done. ----
  // x, out: [T, hidden_size] host tensors. token_mask: host [T], 1 = real token, 0 = padding
  // (never routed, outside capacity, losses and metrics; shared experts still run on it), or
  // null when every token is real, as MoeLayer's ForwardOptions::token_mask.
  void forward(View<const float> x, View<float> out, const uint8_t* token_mask = nullptr);
  // dout, dx: [T, hidden_size] host tensors; aux_scale multiplies the aux-loss gradients.
  void backward(View<const float> dout, View<float> dx, double aux_scale = 1.0);

  // ---- Device entry points (a GPU training step): pointers into device memory. ----
  // Reads x [tokens, d] (copied, so x may be reused afterwards) and writes out [tokens, d],
  // both ordered on stream(). Returns after the routing counts have reached the host; the
  // expert GEMMs and the combine may still be running.
  // token_mask: host [tokens] or null, as in forward().
  void forward_device(const float* x, float* out, int64_t tokens,
                      const uint8_t* token_mask = nullptr);
  // dout, dx [tokens, d] of the last forward; dx (=); device gradients (+=).
  void backward_device(const float* dout, float* dx, double aux_scale = 1.0);
  // The fp32 master weights and the gradients on the device, laid out like params().values().
  float* device_weights();
  float* device_grads();
  // Re-rounds the bf16 expert weights after device_weights() changed (an optimizer step).
  void refresh_compute_weights();
  // The cudaStream_t everything runs on, as an opaque pointer.
  void* stream() const;
  void synchronize() const;

  // ---- Results of the last forward. ----
  double aux_loss() const;  // load balance + z-loss
  const MoeMetrics& metrics() const;
  int64_t tokens() const;
  int64_t kept_rows() const;  // N: assignments that ran through an expert
  int64_t capacity() const;   // C, -1 when dropless
  // Downloaded on request (tests and inspection): [T*k] primary and final experts (-1 where
  // dropped), final gates (0 where dropped), [T*E] scores.
  std::vector<int32_t> primary_experts() const;
  std::vector<int32_t> final_experts() const;
  std::vector<float> gates() const;
  std::vector<float> scores() const;
  // False once the layer fell back from cuBLAS's grouped GEMM to one GEMM per expert (cuBLAS
  // refused it, or MOE_CUDA_GROUPED_GEMM=0).
  bool uses_grouped_gemm() const;
  // Multiply-adds the last forward ran (router, kept assignments, shared experts).
  double last_forward_macs() const;

  // Aux-loss-free balancing, as MoeLayer: call after the optimizer step.
  void update_selection_bias();
  const std::vector<float>& selection_bias() const;
  void set_selection_bias(const std::vector<float>& bias);

  const MoeConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
