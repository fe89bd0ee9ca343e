// Router kernels (router.cu): everything after the fp32 logits GEMM, one thread per token,
// each step the routing_math.h function that the CPU test checks against src/nn/router.cpp.
// Plain declarations: included by the host-only layer (cuda_moe_layer.cpp) too.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/routing_math.h"

namespace moe::cuda {

// From the logits z [T, E]: scores s and routing probabilities p [T, E], lse and the gate
// normalizer norm [T], the primary experts and their gates [T, k] (top-k of s + bias, bias [E]
// or null), and per token the entropy of p and lse^2 (double, for the metrics and the z-loss).
// token_mask [T] (device, or null: every token is real): a padding token (0) gets scores and
// probabilities but primary -1, gates 0, norm 1 and zero entropy and lse^2, as on the CPU.
void launch_router_forward(const RouterParams& rp, int64_t tokens, const float* z,
                           const float* bias, const uint8_t* token_mask, float* s, float* p,
                           float* lse, float* norm, int32_t* primary, float* gate_primary,
                           double* token_entropy, double* token_lse_sq, cudaStream_t stream);

// From the final-gate gradients dgate [T, k] to the logit gradients dz [T, E] (=), through the
// gates, the load-balance loss and the z-loss (token_routing_backward); ds [T, E] is scratch.
// counts [E]: the forward's primary counts (device memory); padding tokens get dz = 0.
void launch_router_backward(const RouterParams& rp, int64_t tokens, const float* z,
                            const uint8_t* token_mask, const float* s, const float* p,
                            const float* norm, const float* lse, const int32_t* primary,
                            const int32_t* expert, const float* dgate, const int64_t* counts,
                            int64_t valid_tokens, double aux_scale, float* ds, float* dz,
                            cudaStream_t stream);

}  // namespace moe::cuda
