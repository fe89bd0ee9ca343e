// Dense FFN layer: the baseline an MoE layer is compared against at equal active compute.
// Parameters: ffn.w1 [F, d], ffn.w3 [F, d] (SwiGLU only), ffn.w2 [d, F].
#pragma once

#include <vector>

#include "moe/feed_forward.h"
#include "moe/grouped_experts.h"
#include "moe/moe_config.h"

namespace moe {

template <class T>
class DenseFfn final : public FeedForward<T> {
 public:
  // dtype: the GEMMs' compute dtype (bf16 needs float: fp32 master weights).
  DenseFfn(int hidden_size, int intermediate_size, Activation act,
           ComputeDtype dtype = ComputeDtype::Float32);
  void init_weights(Rng& rng, double std = 0.02);
  void forward(View<const T> x, View<T> out, const ForwardOptions<T>& opt = {}) override;
  void backward(View<const T> dout, View<T> dx, double aux_scale = 1.0) override;
  double aux_loss() const override { return 0.0; }
  ParamSet<T>& params() override { return params_; }
  double active_macs_per_token() const override;

 private:
  FfnShape shape() const { return {act_, d_, F_, dtype_}; }
  FfnWeights<const T> weights();

  int d_, F_;
  Activation act_;
  ComputeDtype dtype_;
  ParamSet<T> params_;
  int64_t tokens_ = 0;
  std::vector<T> x_;
  FfnRowBuffers<T> saved_, scratch_;
};

}  // namespace moe
