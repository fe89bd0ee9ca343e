// Global gradient norm and AdamW (lm_kernels.cuh), with the formulas of
// src/model/optimizer.cpp (torch clip_grad_norm_ and torch.optim.AdamW).
#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/lm_kernels.cuh"

namespace moe::cuda {

namespace {

// Values per block of the squared-norm partial sums: each thread sums kPerThread values.
constexpr int64_t kPerThread = 16;
constexpr int64_t kPerBlock = kThreads * kPerThread;

__global__ void sum_squares_kernel(const float* g, int64_t n, double* partial) {
  const int64_t begin = blockIdx.x * kPerBlock;
  double s = 0.0;
  for (int64_t k = 0; k < kPerThread; ++k) {
    const int64_t i = begin + k * blockDim.x + threadIdx.x;  // coalesced
    if (i < n) s += static_cast<double>(g[i]) * g[i];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_in_order_kernel(const double* partial, int64_t count, double* out) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double s = 0.0;
  for (int64_t i = 0; i < count; ++i) s += partial[i];
  *out = s;
}

// Explicit _rn intrinsics: no fused multiply-adds, so each operation rounds as the CPU's
// float code does (the host build does not contract either: ISO C++ mode).
__global__ void adamw_kernel(AdamWStep s, const double* norm_sq, int64_t n, const float* g,
                             float* p, float* m, float* v) {
  float clip = 1.0f;
  bool clipped = false;
  if (s.max_norm > 0) {
    const double coef = s.max_norm / (sqrt(*norm_sq) + 1e-6);
    if (coef < 1.0) {
      clip = static_cast<float>(coef);
      clipped = true;
    }
  }
  const float one_minus_b1 = __fsub_rn(1.0f, s.b1), one_minus_b2 = __fsub_rn(1.0f, s.b2);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = clipped ? __fmul_rn(g[i], clip) : g[i];
    const float pi = __fmul_rn(p[i], s.shrink);
    const float mi = __fadd_rn(__fmul_rn(s.b1, m[i]), __fmul_rn(one_minus_b1, gi));
    const float vi = __fadd_rn(__fmul_rn(s.b2, v[i]), __fmul_rn(__fmul_rn(one_minus_b2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), s.inv_bc2), s.eps);
    p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(s.step_size, mi), denom));
  }
}

}  // namespace

int64_t sum_squares_blocks(int64_t n) {
  return n > 0 ? (n + kPerBlock - 1) / kPerBlock : 0;
}

void launch_sum_squares(const float* g, int64_t n, double* partial, cudaStream_t stream) {
  const int64_t blocks = sum_squares_blocks(n);
  if (blocks == 0) return;
  if (blocks > 0x7fffffffLL)
    throw_cuda_error(__FILE__, __LINE__, "launch_sum_squares", "tensor too large for one grid");
  MOE_LAUNCH(sum_squares_kernel, static_cast<unsigned>(blocks), kThreads, stream)(g, n, partial);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_sum_in_order(const double* partial, int64_t count, double* out, cudaStream_t stream) {
  MOE_LAUNCH(sum_in_order_kernel, 1, 32, stream)(partial, count, out);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_adamw(const AdamWStep& s, const double* norm_sq, int64_t n, const float* g, float* p,
                  float* m, float* v, cudaStream_t stream) {
  if (n == 0) return;
  MOE_LAUNCH(adamw_kernel, elementwise_grid(n), kThreads, stream)(s, norm_sq, n, g, p, m, v);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
