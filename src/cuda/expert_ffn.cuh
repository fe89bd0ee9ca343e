// Expert FFNs on the GPU (expert_ffn.cu): bf16 GEMMs with fp32 accumulation through cuBLAS,
// the fused SwiGLU over the gate-up product and its backward, and the bf16 weight copies.
//
// Each expert's w1 and w3 are packed into one gate-up matrix w13 [2F, d] (rows [0, F) = w1,
// [F, 2F) = w3), so one GEMM gives h = [h1 | h3] [n, 2F] and one GEMM gives dx = dh w13.
// All experts' products run as one cuBLAS grouped GEMM (cublasGemmGroupedBatchedEx, one group
// per expert with rows); weight gradients accumulate into the fp32 master gradients through
// one cublasGemmEx per expert (bf16 operands, fp32 C, beta = 1).
// Plain declarations (see router.cuh).
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace moe::cuda {

using bf16 = __nv_bfloat16;

// dst [n] = bf16(src) (round to nearest even).
void launch_to_bf16(const float* src, int64_t n, bf16* dst, cudaStream_t stream);
// w13 [experts, 2F, d] from w1 and w3 [experts, F, d] (fp32 master weights), rounded to bf16.
void launch_pack_gate_up(const float* w1, const float* w3, int64_t experts, int64_t F, int64_t d,
                         bf16* w13, cudaStream_t stream);
// a [rows, F] = silu(h1) * h3 with h = [h1 | h3] [rows, 2F]; fp32 math on bf16 storage.
void launch_swiglu_forward(int64_t rows, int64_t F, const bf16* h, bf16* a, cudaStream_t stream);
// dh = [dh1 | dh3] [rows, 2F] from da [rows, F] and the saved h.
void launch_swiglu_backward(int64_t rows, int64_t F, const bf16* h, const bf16* da, bf16* dh,
                            cudaStream_t stream);

// Row-major C [M, N] = op(A) op(B) + beta C with bf16 A and B, fp32 accumulation; C is fp32
// when c_fp32, else bf16. ta: A is stored [K, M] (else [M, K]); tb: B is stored [N, K] (else
// [K, N]). M, N or K may be 0 (K = 0 scales C by beta; M or N = 0 does nothing).
void gemm_bf16(cublasHandle_t handle, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
               const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta, void* C,
               bool c_fp32, int64_t ldc);

// One product per expert with rows: C_e [rows_e, N] = A_e [rows_e, K] op(B_e), bf16 in and
// out, fp32 accumulation, B_e stored [N, K] when tb (the weights, x W^T) else [K, N].
struct ExpertProblem {
  int64_t rows;
  const bf16* a;
  const bf16* b;
  bf16* c;
};

class GroupedGemm {
 public:
  GroupedGemm() = default;
  ~GroupedGemm();
  GroupedGemm(const GroupedGemm&) = delete;
  GroupedGemm& operator=(const GroupedGemm&) = delete;

  // Runs the non-empty problems as one grouped GEMM on the handle's stream. Falls back to one
  // cublasGemmEx per expert where cuBLAS refuses the grouped call (not supported or invalid
  // value: the per-expert calls then name any real argument error), or when the
  // environment sets MOE_CUDA_GROUPED_GEMM=0 (for comparing the two on a GPU).
  void run(cublasHandle_t handle, cudaStream_t stream, bool tb, int64_t N, int64_t K,
           const std::vector<ExpertProblem>& problems, int64_t lda, int64_t ldb, int64_t ldc);
  bool grouped() const { return grouped_; }

 private:
  void reserve(int64_t groups);
  bool grouped_ = true;
  bool env_checked_ = false;
  int64_t capacity_ = 0;
  void** device_pointers_ = nullptr;  // [3 * capacity_]: A, B and C arrays of the call
  // Host-side per-group arrays, reused so that a steady-state call does not allocate.
  std::vector<cublasOperation_t> op_a_, op_b_;
  std::vector<int> m_, n_, k_, lda_, ldb_, ldc_, group_size_;
  std::vector<float> alpha_, beta_;
  std::vector<const void*> host_pointers_;
};

}  // namespace moe::cuda
