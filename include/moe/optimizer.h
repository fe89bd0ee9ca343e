// Training-step machinery with PyTorch semantics (docs/model.md): the warmup + cosine learning
// rate, clipping by global gradient norm (torch clip_grad_norm_) and AdamW with decoupled weight
// decay (torch.optim.AdamW). Moments are fp32/fp64 like the master weights.
#pragma once

#include <string>
#include <vector>

#include "moe/model_config.h"
#include "moe/tensor.h"

namespace moe {

class SafeTensorsFile;
class SafeTensorsWriter;

// One trainable tensor of a model: its checkpoint name, value and gradient storage.
template <class T>
struct ParamRef {
  std::string name;
  T* value = nullptr;  // [shape]
  T* grad = nullptr;   // [shape]
  Shape shape;
  bool decay = true;  // weight decay applies (not to 1-d tensors: the norms)
  // Left out of training (TrainConfig::trainable): no AdamW update or moments, no decay, and
  // not in the gradient norm (torch: requires_grad = false).
  bool frozen = false;
};

// Learning rate of optimizer step `step` (0-based).
double learning_rate_at(const TrainConfig& t, int step);

// The sum of p's squared gradient entries in double, in fixed blocks and a fixed order of
// vector lanes: the same result for any thread count. NaN or inf when an entry is one (squares
// of finite floats cannot overflow a double's sum).
template <class T>
double grad_sum_squares(const ParamRef<T>& p);
// sqrt(sum of all squared gradient entries of the parameters that train), grad_sum_squares'
// order.
template <class T>
double global_grad_norm(const std::vector<ParamRef<T>>& params);
// torch clip_grad_norm_: scales every gradient by max_norm / (norm + 1e-6) when that is < 1.
// Returns the norm before clipping; `norm`, when not negative, is global_grad_norm(params)
// already computed.
template <class T>
double clip_grad_norm(const std::vector<ParamRef<T>>& params, double max_norm, double norm = -1);
// The first parameter whose gradient holds NaN or inf, or nullptr.
template <class T>
const ParamRef<T>* first_nonfinite_grad(const std::vector<ParamRef<T>>& params);

template <class T>
class AdamW {
 public:
  AdamW(const std::vector<ParamRef<T>>& params, const TrainConfig& t);
  void step(double lr);
  int64_t steps_taken() const { return steps_; }
  // Moments as "adam.m.<name>" / "adam.v.<name>" plus the step count in metadata.
  void save(SafeTensorsWriter& w) const;
  void load(const SafeTensorsFile& f);
  // Moments of parameter i ([numel], the order of the constructor's params) and the step
  // count, for a device that runs the same update elsewhere (trainer.h's StepDevice).
  const std::vector<T>& first_moment(size_t i) const { return m_[i]; }
  const std::vector<T>& second_moment(size_t i) const { return v_[i]; }
  std::vector<T>& first_moment(size_t i) { return m_[i]; }
  std::vector<T>& second_moment(size_t i) { return v_[i]; }
  size_t num_params() const { return params_.size(); }
  void set_steps_taken(int64_t steps) { steps_ = steps; }

 private:
  std::vector<ParamRef<T>> params_;
  double b1_, b2_, eps_, wd_;
  int64_t steps_ = 0;
  std::vector<std::vector<T>> m_, v_;  // per parameter, [numel]
};

}  // namespace moe
