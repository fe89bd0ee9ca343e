#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/losses.cuh"

namespace moe::cuda {

namespace {

// Block b < E sums column b of p; block E sums the entropies, block E + 1 the lse^2.
__global__ void routing_stats_kernel(int64_t tokens, int E, const float* p,
                                     const uint8_t* token_mask, const double* token_entropy,
                                     const double* token_lse_sq, double* stats) {
  const int b = blockIdx.x;
  double acc = 0;
  if (b < E) {
    for (int64_t t = threadIdx.x; t < tokens; t += blockDim.x)
      if (!token_mask || token_mask[t]) acc += static_cast<double>(p[t * E + b]);
  } else {
    const double* v = b == E ? token_entropy : token_lse_sq;
    for (int64_t t = threadIdx.x; t < tokens; t += blockDim.x) acc += v[t];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) stats[b] = acc;
}

}  // namespace

void launch_routing_stats(int64_t tokens, int E, const float* p, const uint8_t* token_mask,
                          const double* token_entropy, const double* token_lse_sq, double* stats,
                          cudaStream_t stream) {
  MOE_LAUNCH(routing_stats_kernel, E + 2, kThreads, stream)
  (tokens, E, p, token_mask, token_entropy, token_lse_sq, stats);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
