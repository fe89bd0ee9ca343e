// RMSNorm forward and backward (lm_kernels.cuh), as src/nn/rmsnorm.cpp: the mean square and
// the backward's dot product in double, the elementwise math in float.
#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/lm_kernels.cuh"

namespace moe::cuda {

namespace {

__device__ float broadcast_from_thread0(float v) {
  __shared__ float value;
  if (threadIdx.x == 0) value = v;
  __syncthreads();
  const float out = value;
  __syncthreads();
  return out;
}

// One block per row (grid-strided).
__global__ void rmsnorm_forward_kernel(int64_t n, int64_t d, const float* x, const float* w,
                                       double eps, float* out, float* rstd) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* xr = x + r * d;
    double ss = 0.0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) ss += static_cast<double>(xr[c]) * xr[c];
    ss = block_sum(ss);
    const float inv = broadcast_from_thread0(
        threadIdx.x == 0 ? static_cast<float>(1.0 / sqrt(ss / static_cast<double>(d) + eps))
                         : 0.0f);
    if (threadIdx.x == 0) rstd[r] = inv;
    float* o = out + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) o[c] = xr[c] * inv * w[c];
  }
}

// dx, one block per row: dx_j += r w_j g_j - c x_j, c = r^3 / d * sum_k g_k w_k x_k.
__global__ void rmsnorm_backward_dx_kernel(int64_t n, int64_t d, const float* dout, const float* x,
                                           const float* w, const float* rstd, float* dx) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* xr = x + r * d;
    const float* g = dout + r * d;
    const float rs = rstd[r];
    double dot = 0.0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x)
      dot += static_cast<double>(g[c]) * w[c] * xr[c];
    dot = block_sum(dot);
    const double rd = rs;
    const float coef = broadcast_from_thread0(
        threadIdx.x == 0 ? static_cast<float>(dot * rd * rd * rd / static_cast<double>(d)) : 0.0f);
    float* o = dx + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) o[c] += rs * w[c] * g[c] - coef * xr[c];
  }
}

// partial[chunk, c] = sum over the chunk's rows (in order) of g x r: thread per column.
__global__ void rmsnorm_backward_dw_partial_kernel(int64_t n, int64_t d, const float* dout,
                                                   const float* x, const float* rstd,
                                                   float* partial) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (c >= d) return;
  const int64_t r0 = chunk * kRmsnormRowsPerChunk;
  const int64_t r1 = r0 + kRmsnormRowsPerChunk < n ? r0 + kRmsnormRowsPerChunk : n;
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; ++r) acc += dout[r * d + c] * x[r * d + c] * rstd[r];
  partial[chunk * d + c] = acc;
}

// dw[c] += sum over chunks in chunk order.
__global__ void column_sum_into_kernel(int64_t chunks, int64_t d, const float* partial, float* dw) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= d) return;
  float acc = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * d + c];
  dw[c] += acc;
}

}  // namespace

void launch_rmsnorm_forward(int64_t n, int64_t d, const float* x, const float* w, double eps,
                            float* out, float* rstd, cudaStream_t stream) {
  if (n * d == 0) return;
  MOE_LAUNCH(rmsnorm_forward_kernel, row_grid(n), kThreads, stream)(n, d, x, w, eps, out, rstd);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_rmsnorm_backward(int64_t n, int64_t d, const float* dout, const float* x,
                             const float* w, const float* rstd, float* dx, float* dw,
                             float* partial, cudaStream_t stream) {
  if (n * d == 0) return;
  MOE_LAUNCH(rmsnorm_backward_dx_kernel, row_grid(n), kThreads, stream)(n, d, dout, x, w, rstd, dx);
  MOE_CUDA_CHECK_LAUNCH();
  const int64_t chunks = rmsnorm_chunks(n);
  if (chunks > 65535)
    throw_cuda_error(__FILE__, __LINE__, "launch_rmsnorm_backward",
                     "too many rows for the dw partial-sum grid (at most 65535 * 64)");
  const dim3 grid(blocks_for(d), static_cast<unsigned>(chunks));
  MOE_LAUNCH(rmsnorm_backward_dw_partial_kernel, grid, kThreads, stream)
  (n, d, dout, x, rstd, partial);
  MOE_CUDA_CHECK_LAUNCH();
  MOE_LAUNCH(column_sum_into_kernel, blocks_for(d), kThreads, stream)(chunks, d, partial, dw);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
