// Token embedding forward and backward (lm_kernels.cuh), as src/nn/embedding.cpp.
#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/lm_kernels.cuh"

namespace moe::cuda {

namespace {

// Grid-strided over rows, threads across the row: coalesced copies.
__global__ void embedding_forward_kernel(const int32_t* tokens, int64_t n, int64_t d,
                                         const float* table, float* out) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* src = table + static_cast<int64_t>(tokens[r]) * d;
    float* dst = out + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
  }
}

// One block per distinct token: its rows are summed in increasing row order, so repeated
// tokens give the same sum on every run and in the CPU's order; no two blocks touch the same
// table row, so no atomics.
__global__ void embedding_backward_kernel(int64_t unique, int64_t d, const int32_t* unique_tokens,
                                          const int32_t* row_start, const int32_t* rows_by_token,
                                          const float* dout, float* dtable) {
  for (int64_t u = blockIdx.x; u < unique; u += gridDim.x) {
    float* dst = dtable + static_cast<int64_t>(unique_tokens[u]) * d;
    const int32_t begin = row_start[u], end = row_start[u + 1];
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = dst[c];
      for (int32_t i = begin; i < end; ++i)
        acc += dout[static_cast<int64_t>(rows_by_token[i]) * d + c];
      dst[c] = acc;
    }
  }
}

}  // namespace

void launch_embedding_forward(const int32_t* tokens, int64_t n, int64_t d, const float* table,
                              float* out, cudaStream_t stream) {
  if (n * d == 0) return;
  MOE_LAUNCH(embedding_forward_kernel, row_grid(n), kThreads, stream)(tokens, n, d, table, out);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_embedding_backward(int64_t unique, int64_t d, const int32_t* unique_tokens,
                               const int32_t* row_start, const int32_t* rows_by_token,
                               const float* dout, float* dtable, cudaStream_t stream) {
  if (unique * d == 0) return;
  MOE_LAUNCH(embedding_backward_kernel, row_grid(unique), kThreads, stream)
  (unique, d, unique_tokens, row_start, rows_by_token, dout, dtable);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
