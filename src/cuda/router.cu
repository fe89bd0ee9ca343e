#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/router.cuh"

namespace moe::cuda {

namespace {

// One thread per token: its rows of z, s and p stay in L1 across the passes over E.
__global__ void router_forward_kernel(RouterParams rp, int64_t tokens, const float* z,
                                      const float* bias, const uint8_t* token_mask, float* s,
                                      float* p, float* lse, float* norm, int32_t* primary,
                                      float* gate_primary, double* token_entropy,
                                      double* token_lse_sq) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const int E = rp.num_experts, k = rp.k;
  float* st = s + t * E;
  float* pt = p + t * E;
  const float l = token_scores(rp.softmax, E, z + t * E, st);
  lse[t] = l;
  token_probs(rp.softmax, E, st, pt);
  if (token_mask && !token_mask[t]) {  // padding: scores kept, never routed, counts nowhere
    for (int j = 0; j < k; ++j) {
      primary[t * k + j] = -1;
      gate_primary[t * k + j] = 0.0f;
    }
    norm[t] = 1.0f;
    token_entropy[t] = 0.0;
    token_lse_sq[t] = 0.0;
    return;
  }
  token_top_k(E, k, st, bias, primary + t * k);
  norm[t] = token_gates(rp, st, primary + t * k, gate_primary + t * k);
  token_entropy[t] = moe::cuda::token_entropy(E, pt);
  token_lse_sq[t] = static_cast<double>(l) * static_cast<double>(l);
}

__global__ void router_backward_kernel(RouterParams rp, int64_t tokens, const float* z,
                                       const uint8_t* token_mask, const float* s, const float* p,
                                       const float* norm, const float* lse, const int32_t* primary,
                                       const int32_t* expert, const float* dgate,
                                       const int64_t* counts, int64_t valid_tokens,
                                       double aux_scale, float* ds, float* dz) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const int E = rp.num_experts, k = rp.k;
  if (token_mask && !token_mask[t]) {  // padding: no gradient reaches its logits
    for (int e = 0; e < E; ++e) ds[t * E + e] = dz[t * E + e] = 0.0f;
    return;
  }
  token_routing_backward(rp, z + t * E, s + t * E, p + t * E, norm[t], lse[t], primary + t * k,
                         expert + t * k, dgate + t * k, counts, valid_tokens, aux_scale, ds + t * E,
                         dz + t * E);
}

}  // namespace

void launch_router_forward(const RouterParams& rp, int64_t tokens, const float* z,
                           const float* bias, const uint8_t* token_mask, float* s, float* p,
                           float* lse, float* norm, int32_t* primary, float* gate_primary,
                           double* token_entropy, double* token_lse_sq, cudaStream_t stream) {
  if (tokens == 0) return;
  MOE_LAUNCH(router_forward_kernel, blocks_for(tokens), kThreads, stream)
  (rp, tokens, z, bias, token_mask, s, p, lse, norm, primary, gate_primary, token_entropy,
   token_lse_sq);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_router_backward(const RouterParams& rp, int64_t tokens, const float* z,
                            const uint8_t* token_mask, const float* s, const float* p,
                            const float* norm, const float* lse, const int32_t* primary,
                            const int32_t* expert, const float* dgate, const int64_t* counts,
                            int64_t valid_tokens, double aux_scale, float* ds, float* dz,
                            cudaStream_t stream) {
  if (tokens == 0) return;
  MOE_LAUNCH(router_backward_kernel, blocks_for(tokens), kThreads, stream)
  (rp, tokens, z, token_mask, s, p, norm, lse, primary, expert, dgate, counts, valid_tokens,
   aux_scale, ds, dz);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
