// RouterParams (routing_math.h) from a MoeConfig: host only (moe_config.h is not for nvcc).
#pragma once

#include "cuda/routing_math.h"
#include "moe/moe_config.h"

namespace moe::cuda {

inline RouterParams router_params(const MoeConfig& c) {
  RouterParams rp;
  rp.num_experts = c.num_experts;
  rp.k = c.num_experts_per_tok;
  rp.softmax = c.scoring_func == ScoreFunc::Softmax;
  rp.renormalize = c.norm_topk_prob && c.num_experts_per_tok > 1;
  rp.routed_scaling = static_cast<float>(c.routed_scaling_factor);
  rp.aux_coef = c.router_aux_loss_coef;
  rp.aux_switch_style = c.aux_loss_style == AuxLossStyle::Switch;
  rp.z_coef = c.router_z_loss_coef;
  return rp;
}

}  // namespace moe::cuda
