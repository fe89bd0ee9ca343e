#include <cstdlib>
#include <cstring>
#include <limits>

#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/expert_ffn.cuh"

namespace moe::cuda {

namespace {

__global__ void to_bf16_kernel(const float* src, int64_t n, bf16* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = to_bf16(src[i]);
}

__global__ void pack_gate_up_kernel(const float* w1, const float* w3, int64_t experts, int64_t F,
                                    int64_t d, bf16* w13) {
  const int64_t n = experts * 2 * F * d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i / (2 * F * d), rest = i % (2 * F * d);
    const int64_t row = rest / d, col = rest % d;
    const float v = row < F ? w1[(e * F + row) * d + col] : w3[(e * F + row - F) * d + col];
    w13[i] = to_bf16(v);
  }
}

__device__ inline float sigmoidf_(float v) {
  return 1.0f / (1.0f + expf(-v));
}

// As src/nn/ffn.cpp: a = h1 * sigmoid(h1) * h3. A block per row (grid-strided), threads
// across the row: coalesced, and no 64-bit division per element.
__global__ void swiglu_forward_kernel(int64_t rows, int64_t F, const bf16* h, bf16* a) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const bf16* h1 = h + r * 2 * F;
    const bf16* h3 = h1 + F;
    bf16* ar = a + r * F;
    for (int64_t c = threadIdx.x; c < F; c += blockDim.x) {
      const float v1 = to_float(h1[c]), v3 = to_float(h3[c]);
      ar[c] = to_bf16(v1 * sigmoidf_(v1) * v3);
    }
  }
}

// dh3 = da * silu(h1); dh1 = da * h3 * s * (1 + h1 (1 - s)), s = sigmoid(h1).
__global__ void swiglu_backward_kernel(int64_t rows, int64_t F, const bf16* h, const bf16* da,
                                       bf16* dh) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const bf16* h1 = h + r * 2 * F;
    const bf16* h3 = h1 + F;
    const bf16* dar = da + r * F;
    bf16* dh1 = dh + r * 2 * F;
    bf16* dh3 = dh1 + F;
    for (int64_t c = threadIdx.x; c < F; c += blockDim.x) {
      const float v1 = to_float(h1[c]), v3 = to_float(h3[c]), g = to_float(dar[c]);
      const float s = sigmoidf_(v1);
      dh3[c] = to_bf16(g * v1 * s);
      dh1[c] = to_bf16(g * v3 * s * (1.0f + v1 * (1.0f - s)));
    }
  }
}

int to_int(int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max())
    throw_cuda_error(__FILE__, __LINE__, what, "does not fit the int of a cuBLAS call");
  return static_cast<int>(v);
}

}  // namespace

void launch_to_bf16(const float* src, int64_t n, bf16* dst, cudaStream_t stream) {
  if (n == 0) return;
  MOE_LAUNCH(to_bf16_kernel, elementwise_grid(n), kThreads, stream)(src, n, dst);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_pack_gate_up(const float* w1, const float* w3, int64_t experts, int64_t F, int64_t d,
                         bf16* w13, cudaStream_t stream) {
  const int64_t n = experts * 2 * F * d;
  if (n == 0) return;
  MOE_LAUNCH(pack_gate_up_kernel, elementwise_grid(n), kThreads, stream)
  (w1, w3, experts, F, d, w13);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_swiglu_forward(int64_t rows, int64_t F, const bf16* h, bf16* a, cudaStream_t stream) {
  if (rows * F == 0) return;
  MOE_LAUNCH(swiglu_forward_kernel, row_grid(rows), kThreads, stream)(rows, F, h, a);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_swiglu_backward(int64_t rows, int64_t F, const bf16* h, const bf16* da, bf16* dh,
                            cudaStream_t stream) {
  if (rows * F == 0) return;
  MOE_LAUNCH(swiglu_backward_kernel, row_grid(rows), kThreads, stream)(rows, F, h, da, dh);
  MOE_CUDA_CHECK_LAUNCH();
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix is
// its own transpose in column-major: so cuBLAS gets B first, A second, the same flags.
void gemm_bf16(cublasHandle_t handle, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
               const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta, void* C,
               bool c_fp32, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const float alpha = 1.0f;
  MOE_CUBLAS_CHECK(cublasGemmEx(
      handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, to_int(N, "N"),
      to_int(M, "M"), to_int(K, "K"), &alpha, B, CUDA_R_16BF, to_int(ldb, "ldb"), A, CUDA_R_16BF,
      to_int(lda, "lda"), &beta, C, c_fp32 ? CUDA_R_32F : CUDA_R_16BF, to_int(ldc, "ldc"),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

GroupedGemm::~GroupedGemm() {
  if (device_pointers_) cudaFree(device_pointers_);  // no throw from a destructor
}

void GroupedGemm::reserve(int64_t groups) {
  if (groups <= capacity_) return;
  if (device_pointers_) MOE_CUDA_CHECK(cudaFree(device_pointers_));
  device_pointers_ = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&device_pointers_, sizeof(void*) * 3 * groups));
  capacity_ = groups;
}

void GroupedGemm::run(cublasHandle_t handle, cudaStream_t stream, bool tb, int64_t N, int64_t K,
                      const std::vector<ExpertProblem>& problems, int64_t lda, int64_t ldb,
                      int64_t ldc) {
  if (!env_checked_) {
    const char* env = std::getenv("MOE_CUDA_GROUPED_GEMM");
    if (env && std::strcmp(env, "0") == 0) grouped_ = false;
    env_checked_ = true;
  }
  auto run_looped = [&] {
    for (const ExpertProblem& p : problems)
      if (p.rows > 0)
        gemm_bf16(handle, false, tb, p.rows, N, K, p.a, lda, p.b, ldb, 0.0f, p.c, false, ldc);
  };
  if (!grouped_) {
    run_looped();
    return;
  }
  // One group per expert with rows (cuBLAS groups share m, n, k; our experts differ in rows).
  for (auto* v : {&m_, &n_, &k_, &lda_, &ldb_, &ldc_, &group_size_}) v->clear();
  op_a_.clear();
  op_b_.clear();
  alpha_.clear();
  beta_.clear();
  std::vector<const void*>& ptrs = host_pointers_;
  ptrs.clear();
  for (const ExpertProblem& p : problems) {
    if (p.rows == 0) continue;
    op_a_.push_back(tb ? CUBLAS_OP_T : CUBLAS_OP_N);  // cuBLAS's A is our B (see gemm_bf16)
    op_b_.push_back(CUBLAS_OP_N);
    m_.push_back(to_int(N, "N"));
    n_.push_back(to_int(p.rows, "rows"));
    k_.push_back(to_int(K, "K"));
    lda_.push_back(to_int(ldb, "ldb"));
    ldb_.push_back(to_int(lda, "lda"));
    ldc_.push_back(to_int(ldc, "ldc"));
    group_size_.push_back(1);
    alpha_.push_back(1.0f);
    beta_.push_back(0.0f);
  }
  const int64_t groups = static_cast<int64_t>(m_.size());
  if (groups == 0) return;
  // Pointer arrays in device memory: [A... | B... | C...] with cuBLAS's A = our B.
  ptrs.resize(3 * groups);
  int64_t g = 0;
  for (const ExpertProblem& p : problems) {
    if (p.rows == 0) continue;
    ptrs[g] = p.b;
    ptrs[groups + g] = p.a;
    ptrs[2 * groups + g] = p.c;
    ++g;
  }
  reserve(groups);
  // From pageable memory the copy is staged before cudaMemcpyAsync returns, so ptrs may be
  // reused at once; stream order keeps the previous grouped call's arrays until it has run.
  MOE_CUDA_CHECK(cudaMemcpyAsync(device_pointers_, ptrs.data(), sizeof(void*) * 3 * groups,
                                 cudaMemcpyHostToDevice, stream));
  const void* const* a_array = const_cast<const void* const*>(device_pointers_);
  const void* const* b_array = const_cast<const void* const*>(device_pointers_ + groups);
  void* const* c_array = device_pointers_ + 2 * groups;
  const cublasStatus_t status = cublasGemmGroupedBatchedEx(
      handle, op_a_.data(), op_b_.data(), m_.data(), n_.data(), k_.data(), alpha_.data(), a_array,
      CUDA_R_16BF, lda_.data(), b_array, CUDA_R_16BF, ldb_.data(), beta_.data(), c_array,
      CUDA_R_16BF, ldc_.data(), static_cast<int>(groups), group_size_.data(), CUBLAS_COMPUTE_32F);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
    // This cuBLAS or GPU refuses the bf16 grouped GEMM: loop from now on. Arguments that are
    // really invalid then fail in cublasGemmEx with a message naming the call.
    grouped_ = false;
    run_looped();
    return;
  }
  MOE_CUBLAS_CHECK(status);
}

}  // namespace moe::cuda
