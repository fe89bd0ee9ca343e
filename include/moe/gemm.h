// The one dense-GEMM interface of the engine: row-major C = alpha * op(A) op(B) + beta * C,
// with op = identity or transpose. Backed by OpenBLAS (cblas_sgemm / cblas_dgemm) or, for fp32,
// our packed AVX-512 kernel when asked for (SgemmBackend below).
// gemm_naive is the slow, obviously-correct oracle the tests check the backend against.
#pragma once

#include <cstdint>

namespace moe {

enum class Trans { No, Yes };

// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are row strides of the stored
// (untransposed) matrices.
template <class T>
void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// fp32 backends of gemm<float>: OpenBLAS sgemm, or our packed AVX-512 kernel (gemm_f32.cpp,
// the design of the bf16 kernel). Auto (default) picks per shape class what measured fastest
// (bench/gemm_shapes.cpp); forcing Avx512 on a CPU without AVX-512 is an error. Process-wide;
// for tests and benchmarks.
enum class SgemmBackend { Auto, OpenBlas, Avx512 };
void set_sgemm_backend(SgemmBackend b);
// The backend gemm<float> uses now (Auto resolved: OpenBlas or Avx512).
SgemmBackend sgemm_backend_setting();
const char* sgemm_backend_name(SgemmBackend b);
bool sgemm_avx512_available();
// The packed AVX-512 kernel itself (same contract as gemm<float>).
void sgemm_avx512(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

template <class T>
void gemm_naive(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace moe
