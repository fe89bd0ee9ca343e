// The dense FFN's SwiGLU in fp32 and the residual adds (lm_kernels.cuh), as src/nn/ffn.cpp.
// (The MoE experts' SwiGLU is bf16, in expert_ffn.cu.)
#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/lm_kernels.cuh"

namespace moe::cuda {

namespace {

__device__ inline float sigmoid_f32(float v) {
  return 1.0f / (1.0f + expf(-v));
}

__global__ void swiglu_f32_forward_kernel(int64_t n, const float* h1, const float* h3, float* a) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    a[i] = h1[i] * sigmoid_f32(h1[i]) * h3[i];
}

__global__ void swiglu_f32_backward_kernel(int64_t n, const float* h1, const float* h3,
                                           const float* da, float* dh1, float* dh3) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float s = sigmoid_f32(h1[i]);
    dh3[i] = da[i] * (h1[i] * s);
    dh1[i] = da[i] * h3[i] * s * (1.0f + h1[i] * (1.0f - s));
  }
}

__global__ void add_kernel(int64_t n, const float* a, const float* b, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

}  // namespace

void launch_swiglu_f32_forward(int64_t n, const float* h1, const float* h3, float* a,
                               cudaStream_t stream) {
  if (n == 0) return;
  MOE_LAUNCH(swiglu_f32_forward_kernel, elementwise_grid(n), kThreads, stream)(n, h1, h3, a);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_swiglu_f32_backward(int64_t n, const float* h1, const float* h3, const float* da,
                                float* dh1, float* dh3, cudaStream_t stream) {
  if (n == 0) return;
  MOE_LAUNCH(swiglu_f32_backward_kernel, elementwise_grid(n), kThreads, stream)
  (n, h1, h3, da, dh1, dh3);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_add(int64_t n, const float* a, const float* b, float* out, cudaStream_t stream) {
  if (n == 0) return;
  MOE_LAUNCH(add_kernel, elementwise_grid(n), kThreads, stream)(n, a, b, out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
