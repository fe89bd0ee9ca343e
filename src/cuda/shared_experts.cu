#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/shared_experts.cuh"

namespace moe::cuda {

namespace {

__global__ void sigmoid_inplace_kernel(int64_t n, float* v) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) v[i] = 1.0f / (1.0f + expf(-v[i]));
}

__global__ void shared_gate_backward_kernel(int64_t tokens, int64_t d, const float* dout,
                                            const bf16* y, const float* gate, bf16* dy,
                                            float* dpre) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float g = gate[t];
    float dg = 0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const float go = dout[t * d + c];
      dg += go * to_float(y[t * d + c]);
      dy[t * d + c] = to_bf16(g * go);
    }
    dg = block_sum(dg);
    if (threadIdx.x == 0) dpre[t] = dg * g * (1.0f - g);
  }
}

}  // namespace

void launch_sigmoid_inplace(int64_t n, float* gate, cudaStream_t stream) {
  if (n == 0) return;
  MOE_LAUNCH(sigmoid_inplace_kernel, blocks_for(n), kThreads, stream)(n, gate);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_shared_gate_backward(int64_t tokens, int64_t d, const float* dout, const bf16* y,
                                 const float* gate, bf16* dy, float* dpre, cudaStream_t stream) {
  if (tokens == 0) return;
  MOE_LAUNCH(shared_gate_backward_kernel, row_grid(tokens), kThreads, stream)
  (tokens, d, dout, y, gate, dy, dpre);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
