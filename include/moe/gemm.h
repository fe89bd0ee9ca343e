// The one dense-GEMM interface of the engine: row-major C = alpha * op(A) op(B) + beta * C,
// with op = identity or transpose. Backed by OpenBLAS (cblas_sgemm / cblas_dgemm).
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

template <class T>
void gemm_naive(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace moe
