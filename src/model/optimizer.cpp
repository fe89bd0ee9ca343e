#include "moe/optimizer.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "moe/error.h"
#include "moe/safetensors.h"

namespace moe {

double learning_rate_at(const TrainConfig& t, int step) {
  const double lr = t.learning_rate, lr_min = t.learning_rate * t.min_lr_ratio;
  if (step < t.warmup_steps) return lr * (step + 1) / t.warmup_steps;
  const double span = std::max(1, t.max_steps - t.warmup_steps);
  const double progress = std::min(1.0, (step - t.warmup_steps) / span);
  return lr_min + 0.5 * (lr - lr_min) * (1.0 + std::cos(std::numbers::pi * progress));
}

template <class T>
double grad_sum_squares(const ParamRef<T>& p) {
  // Fixed blocks summed in order: the same result for any thread count (an OpenMP reduction
  // combines partial sums in whatever order threads finish). Within a block, simd lanes of
  // partial sums: one chain of double adds ran at a quarter of the adder's rate.
  constexpr int64_t kBlock = 1 << 14;
  const int64_t n = p.shape.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    double s = 0.0;
    const T* g = p.grad;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
      s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    partial[static_cast<size_t>(b)] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

template <class T>
double global_grad_norm(const std::vector<ParamRef<T>>& params) {
  double total = 0.0;
  for (const auto& p : params)
    if (!p.frozen) total += grad_sum_squares(p);
  return std::sqrt(total);
}

template <class T>
double clip_grad_norm(const std::vector<ParamRef<T>>& params, double max_norm, double norm) {
  if (norm < 0) norm = global_grad_norm(params);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    const T c = static_cast<T>(coef);
    for (const auto& p : params) {
      if (p.frozen) continue;
      const int64_t n = p.shape.numel();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) p.grad[i] *= c;
    }
  }
  return norm;
}

template <class T>
const ParamRef<T>* first_nonfinite_grad(const std::vector<ParamRef<T>>& params) {
  for (const auto& p : params) {
    const int64_t n = p.shape.numel();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p.grad[i])) return &p;
  }
  return nullptr;
}

template <class T>
AdamW<T>::AdamW(const std::vector<ParamRef<T>>& params, const TrainConfig& t)
    : params_(params), b1_(t.adam_beta1), b2_(t.adam_beta2), eps_(t.adam_eps), wd_(t.weight_decay) {
  for (const auto& p : params_) {  // a frozen parameter has no moments
    m_.emplace_back(p.frozen ? 0 : p.shape.numel(), T(0));
    v_.emplace_back(p.frozen ? 0 : p.shape.numel(), T(0));
  }
}

template <class T>
void AdamW<T>::step(double lr) {
  ++steps_;
  const double bc1 = 1.0 - std::pow(b1_, static_cast<double>(steps_));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2_, static_cast<double>(steps_)));
  const T step_size = static_cast<T>(lr / bc1);
  const T b1 = static_cast<T>(b1_), b2 = static_cast<T>(b2_);
  const T eps = static_cast<T>(eps_), inv_bc2 = static_cast<T>(1.0 / bc2_sqrt);
  for (size_t k = 0; k < params_.size(); ++k) {
    const auto& p = params_[k];
    if (p.frozen) continue;
    const T shrink = static_cast<T>(p.decay ? 1.0 - lr * wd_ : 1.0);
    T* m = m_[k].data();
    T* v = v_[k].data();
    const int64_t n = p.shape.numel();
    // Vectorized (this file is built with -fno-math-errno: std::sqrt may set errno, which kept
    // the loop scalar, one vsqrtss and one vdivss per entry, slower than the memory it streams).
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T g = p.grad[i];
      p.value[i] *= shrink;
      m[i] = b1 * m[i] + (T(1) - b1) * g;
      v[i] = b2 * v[i] + (T(1) - b2) * g * g;
      p.value[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_bc2 + eps);
    }
  }
}

template <class T>
void AdamW<T>::save(SafeTensorsWriter& w) const {
  for (size_t k = 0; k < params_.size(); ++k) {
    if (params_[k].frozen) continue;
    const DType dt = std::is_same_v<T, double> ? DType::F64 : DType::F32;
    w.add("adam.m." + params_[k].name, params_[k].shape, m_[k].data(), dt);
    w.add("adam.v." + params_[k].name, params_[k].shape, v_[k].data(), dt);
  }
  w.set_metadata("adam.steps", std::to_string(steps_));
}

template <class T>
void AdamW<T>::load(const SafeTensorsFile& f) {
  for (size_t k = 0; k < params_.size(); ++k) {
    if (params_[k].frozen) continue;
    f.read_into("adam.m." + params_[k].name, params_[k].shape, m_[k].data());
    f.read_into("adam.v." + params_[k].name, params_[k].shape, v_[k].data());
  }
  const std::string& s = f.metadata("adam.steps");
  try {
    steps_ = std::stoll(s);
  } catch (const std::exception&) {
    throw Error(fmt::format("{}: metadata adam.steps = \"{}\" is not an integer", f.path(), s));
  }
}

template double global_grad_norm(const std::vector<ParamRef<float>>&);
template double global_grad_norm(const std::vector<ParamRef<double>>&);
template double clip_grad_norm(const std::vector<ParamRef<float>>&, double, double);
template double clip_grad_norm(const std::vector<ParamRef<double>>&, double, double);
template double grad_sum_squares(const ParamRef<float>&);
template double grad_sum_squares(const ParamRef<double>&);
template const ParamRef<float>* first_nonfinite_grad(const std::vector<ParamRef<float>>&);
template const ParamRef<double>* first_nonfinite_grad(const std::vector<ParamRef<double>>&);
template class AdamW<float>;
template class AdamW<double>;

}  // namespace moe
