#include "moe/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <limits>

#include "moe/error.h"

namespace moe {

namespace {
CBLAS_TRANSPOSE cblas_trans(Trans t) {
  return t == Trans::Yes ? CblasTrans : CblasNoTrans;
}

void check_args(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                int64_t ldc) {
  MOE_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M={} N={} K={}", M, N, K);
  constexpr int64_t kBlasMax = std::numeric_limits<int>::max();  // cblas takes 32-bit ints
  MOE_CHECK(M <= kBlasMax && N <= kBlasMax && K <= kBlasMax && lda <= kBlasMax && ldb <= kBlasMax &&
                ldc <= kBlasMax,
            "gemm: size above the 32-bit BLAS limit (M={} N={} K={})", M, N, K);
  MOE_CHECK(lda >= (ta == Trans::No ? K : M) && ldb >= (tb == Trans::No ? N : K) && ldc >= N,
            "gemm: leading dimension too small (lda={} ldb={} ldc={} for M={} N={} K={})", lda, ldb,
            ldc, M, N, K);
}
}  // namespace

template <>
void gemm<float>(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  check_args(ta, tb, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (M == 1 && K > 0) {
    // One row (a decode step's attention and router): a matrix-vector product. A GEMM would
    // first pack (copy) all of B for it. beta = 0 overwrites C, so clear it first: gemv scales
    // y by beta, and 0 x NaN in an unset C is NaN.
    if (beta == 0.0f) std::fill(C, C + N, 0.0f);
    const int64_t inc_a = ta == Trans::No ? 1 : lda;
    // C = A B^T (B is N x K): y = B a; C = A B (B is K x N): y = B^T a.
    if (tb == Trans::Yes)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N), static_cast<int>(K), alpha, B,
                  static_cast<int>(ldb), A, static_cast<int>(inc_a), beta, C, 1);
    else
      cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(K), static_cast<int>(N), alpha, B,
                  static_cast<int>(ldb), A, static_cast<int>(inc_a), beta, C, 1);
    return;
  }
  const SgemmBackend b = sgemm_backend_setting();
  if (b == SgemmBackend::Avx512)
    return sgemm_avx512(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  cblas_sgemm(CblasRowMajor, cblas_trans(ta), cblas_trans(tb), M, N, K, alpha, A, lda, B, ldb, beta,
              C, ldc);
}

template <>
void gemm<double>(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
  check_args(ta, tb, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, cblas_trans(ta), cblas_trans(tb), M, N, K, alpha, A, lda, B, ldb, beta,
              C, ldc);
}

template <class T>
void gemm_naive(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  check_args(ta, tb, M, N, K, lda, ldb, ldc);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < K; ++p) {
        const T a = ta == Trans::No ? A[i * lda + p] : A[p * lda + i];
        const T b = tb == Trans::No ? B[p * ldb + j] : B[j * ldb + p];
        acc += static_cast<double>(a) * static_cast<double>(b);
      }
      T& c = C[i * ldc + j];
      // beta == 0 overwrites, so NaN in an uninitialized C never leaks (BLAS semantics).
      c = static_cast<T>(alpha * acc + (beta == T(0) ? T(0) : beta * c));
    }
  }
}

template void gemm_naive<float>(Trans, Trans, int64_t, int64_t, int64_t, float, const float*,
                                int64_t, const float*, int64_t, float, float*, int64_t);
template void gemm_naive<double>(Trans, Trans, int64_t, int64_t, int64_t, double, const double*,
                                 int64_t, const double*, int64_t, double, double*, int64_t);

}  // namespace moe
