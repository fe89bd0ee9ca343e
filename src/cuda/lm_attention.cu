// Attention's elementwise parts (lm_kernels.cuh): RoPE and the causal softmax with their
// backward, as src/nn/attention.cpp. The products (scores, P V and their gradients) are cuBLAS
// batched GEMMs in cuda_transformer.cpp.
#include <cfloat>

#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/lm_kernels.cuh"

namespace moe::cuda {

namespace {

// Thread per (row, head, pair i < head_dim / 2).
__global__ void rope_kernel(float* x, const float* cos_table, const float* sin_table, int64_t n,
                            int heads, int head_dim, int64_t seq_len, float sign) {
  const int half = head_dim / 2;
  const int64_t per_row = static_cast<int64_t>(heads) * half, total = n * per_row;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / per_row, rest = t % per_row;
    const int64_t h = rest / half, i = rest % half;
    const int64_t p = r % seq_len;
    const float c = cos_table[p * half + i], s = sign * sin_table[p * half + i];
    float* y = x + r * heads * static_cast<int64_t>(head_dim) + h * head_dim;
    const float a = y[i], b = y[i + half];
    y[i] = a * c - b * s;
    y[i + half] = b * c + a * s;
  }
}

// One block per row of P; len = pos + 1 keys are visible.
__global__ void causal_softmax_kernel(float* P, int64_t rows, int64_t S) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float* p = P + r * S;
    const int64_t len = r % S + 1;
    float mx = -FLT_MAX;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) mx = fmaxf(mx, p[j]);
    mx = block_max(mx);
    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
      const float e = expf(p[j] - mx);
      p[j] = e;
      sum += static_cast<double>(e);
    }
    sum = block_broadcast(block_sum(sum));
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = threadIdx.x; j < S; j += blockDim.x) p[j] = j < len ? p[j] * inv : 0.0f;
  }
}

// dS_j = P_j (dP_j - sum_k P_k dP_k) for j <= pos, 0 beyond.
__global__ void causal_softmax_backward_kernel(const float* P, float* dS, int64_t rows, int64_t S) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* p = P + r * S;
    float* ds = dS + r * S;
    const int64_t len = r % S + 1;
    double dot = 0.0;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
      dot += static_cast<double>(p[j]) * ds[j];
    const float c = static_cast<float>(block_broadcast(block_sum(dot)));
    for (int64_t j = threadIdx.x; j < S; j += blockDim.x)
      ds[j] = j < len ? p[j] * (ds[j] - c) : 0.0f;
  }
}

}  // namespace

void launch_rope(float* x, const float* cos_table, const float* sin_table, int64_t n, int heads,
                 int head_dim, int64_t seq_len, float sign, cudaStream_t stream) {
  const int64_t total = n * heads * (head_dim / 2);
  if (total == 0) return;
  MOE_LAUNCH(rope_kernel, elementwise_grid(total), kThreads, stream)
  (x, cos_table, sin_table, n, heads, head_dim, seq_len, sign);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_causal_softmax(float* P, int64_t rows, int64_t S, cudaStream_t stream) {
  if (rows * S == 0) return;
  MOE_LAUNCH(causal_softmax_kernel, row_grid(rows), kThreads, stream)(P, rows, S);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_causal_softmax_backward(const float* P, float* dS, int64_t rows, int64_t S,
                                    cudaStream_t stream) {
  if (rows * S == 0) return;
  MOE_LAUNCH(causal_softmax_backward_kernel, row_grid(rows), kThreads, stream)(P, dS, rows, S);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
