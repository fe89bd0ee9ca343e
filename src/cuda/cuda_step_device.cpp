// make_cuda_step_device (cuda_transformer.h): the trainer's StepDevice on a CudaTransformer.
// Host code, compiled by the C++ compiler like the rest of the CUDA backend's host side.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>

#include "moe/cuda_transformer.h"
#include "moe/trainer.h"
#include "moe/transformer.h"

namespace moe {

namespace {

class CudaStepDevice final : public StepDevice {
 public:
  explicit CudaStepDevice(const ModelConfig& config) : gpu_(config) {
    cudaDeviceProp prop{};
    name_ = cudaGetDeviceProperties(&prop, 0) == cudaSuccess
                ? fmt::format("cuda ({}, sm_{}{})", prop.name, prop.major, prop.minor)
                : std::string("cuda");
  }

  std::string describe() const override { return name_; }

  void load(Transformer<float>& model, const AdamW<float>& adam) override {
    gpu_.copy_from(model);
    gpu_.copy_optimizer_from(adam);
  }

  void store(Transformer<float>& model, AdamW<float>& adam) override {
    gpu_.copy_to(model);
    gpu_.copy_optimizer_to(adam);
  }

  DeviceStepStats step(const int32_t* inputs, const int32_t* targets, int B, int S,
                       int step) override {
    const CudaStepStats s = gpu_.train_step(inputs, targets, B, S, step);
    DeviceStepStats st{s.loss, s.ce, s.aux, s.grad_norm, s.lr, {}};
    if (!std::isfinite(s.loss))
      st.nonfinite = fmt::format("loss is {} on {}", s.loss, name_);
    else if (!std::isfinite(s.grad_norm))
      st.nonfinite =
          fmt::format("a gradient holds NaN or inf (global norm {}) on {}", s.grad_norm, name_);
    return st;
  }

  const MoeMetrics* moe_metrics(int layer) const override { return gpu_.moe_metrics(layer); }

 private:
  CudaTransformer gpu_;
  std::string name_;
};

}  // namespace

std::unique_ptr<StepDevice> make_cuda_step_device(const ModelConfig& config) {
  return std::make_unique<CudaStepDevice>(config);
}

}  // namespace moe
