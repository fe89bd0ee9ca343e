// Cross-entropy over the vocabulary with its gradient in one pass (lm_kernels.cuh), as
// src/nn/cross_entropy.cpp: row max in float, sum of exps in double.
#include <cfloat>

#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/lm_kernels.cuh"

namespace moe::cuda {

namespace {

// One block per row (grid-strided).
__global__ void cross_entropy_kernel(int64_t n, int64_t V, const float* logits,
                                     const int32_t* targets, double scale, float* row_loss,
                                     float* dlogits) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int32_t t = targets[r];
    float* dz = dlogits ? dlogits + r * V : nullptr;
    if (t < 0) {
      if (threadIdx.x == 0) row_loss[r] = 0.0f;
      if (dz)
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dz[j] = 0.0f;
      continue;
    }
    const float* z = logits + r * V;
    float mx = -FLT_MAX;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, z[j]);
    mx = block_max(mx);
    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
      sum += static_cast<double>(expf(z[j] - mx));
    sum = block_broadcast(block_sum(sum));
    if (threadIdx.x == 0)
      row_loss[r] = static_cast<float>(log(sum) + static_cast<double>(mx) - z[t]);
    if (dz) {
      const float f = static_cast<float>(scale / sum);
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
        dz[j] = expf(z[j] - mx) * f - (j == t ? static_cast<float>(scale) : 0.0f);
    }
  }
}

}  // namespace

void launch_cross_entropy(int64_t n, int64_t V, const float* logits, const int32_t* targets,
                          double scale, float* row_loss, float* dlogits, cudaStream_t stream) {
  if (n == 0) return;
  MOE_LAUNCH(cross_entropy_kernel, row_grid(n), kThreads, stream)
  (n, V, logits, targets, scale, row_loss, dlogits);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
