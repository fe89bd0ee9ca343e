// The blocking and packing driver of our packed GEMM kernels (internal): the fp32 AVX-512 one
// (gemm_f32.cpp) and the bf16 one (gemm_bf16.cpp) differ only in how a panel is packed and in
// the microkernel, so both run this one driver, templated on a Panel that supplies those.
//
// GotoBLAS blocking: for each NC block of columns of C and KC block of k, op(B) is packed once
// (panels of NR columns); for each MC block of rows op(A) is packed (panels of MR rows); the
// MR x NR microkernel then runs over every pair of panels. The transposes the backward needs
// are packing orders, not copies of the operands. Rows of C are split across threads in whole
// panels, each element computed by one thread in one fixed order, so results do not depend on
// the thread count. Inside an OpenMP parallel region (the MoE layer runs experts in parallel)
// the call runs on the calling thread only.
//
// A Panel provides:
//   using Packed;                                 // element of a packed panel
//   static constexpr int kMR, kNR;                // microkernel tile
//   static constexpr int64_t kKC, kMC, kNC;       // k, row and column block sizes
//   static constexpr int64_t packed_k(int64_t kc) // entries along k of one panel of kc values
//   void pack_a(Trans, const SA* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
//               int64_t kc, Packed* dst) const;   // op(A)[i0:+mc, k0:+kc] -> dst[panel][k][r]
//   void pack_b(Trans, const SB* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0,
//               int64_t kc, Packed* dst) const;   // op(B)[k0:+kc, j0:+nc] -> dst[panel][k][c]
// for the element types SA, SB of the operands it is called with (float; the bf16 Panel also
// takes bf16 bits, uint16_t).
//   void kernel(int64_t kp, const Packed* a, const Packed* b, int m, int n, float alpha,
//               float beta, float* C, int64_t ldc) const;  // C[0:m,0:n] = alpha*a.b + beta*C
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "moe/error.h"
#include "moe/gemm.h"

namespace moe::gemm_driver {

constexpr double kParallelMin = 1 << 20;  // multiply-adds below which one thread is faster

// Per-thread packing buffers of fixed size, allocated on a thread's first call and reused: a
// steady-state step allocates nothing. One set per Panel type.
template <class Panel>
struct PackBuffers {
  using Packed = typename Panel::Packed;
  static constexpr int64_t kA = Panel::kMC * Panel::packed_k(Panel::kKC);
  static constexpr int64_t kB = Panel::kNC * Panel::packed_k(Panel::kKC);
  Packed* a = nullptr;  // kMC x packed_k(kKC)
  Packed* b = nullptr;  // kNC x packed_k(kKC)
  PackBuffers() {
    a = static_cast<Packed*>(std::aligned_alloc(64, sizeof(Packed) * kA));
    b = static_cast<Packed*>(std::aligned_alloc(64, sizeof(Packed) * kB));
    MOE_CHECK(a != nullptr && b != nullptr, "gemm: out of memory for packing buffers");
  }
  ~PackBuffers() {
    std::free(a);
    std::free(b);
  }
  PackBuffers(const PackBuffers&) = delete;
  PackBuffers& operator=(const PackBuffers&) = delete;
};

template <class Panel>
PackBuffers<Panel>& pack_buffers() {
  thread_local PackBuffers<Panel> buf;
  return buf;
}

// One thread: rows [i_begin, i_end) of C.
template <class Panel, class SA, class SB>
void gemm_rows(const Panel& panel, Trans ta, Trans tb, int64_t i_begin, int64_t i_end, int64_t N,
               int64_t K, float alpha, const SA* A, int64_t lda, const SB* B, int64_t ldb,
               float beta, float* C, int64_t ldc) {
  constexpr int kMR = Panel::kMR, kNR = Panel::kNR;
  PackBuffers<Panel>& buf = pack_buffers<Panel>();
  for (int64_t jc = 0; jc < N; jc += Panel::kNC) {
    const int64_t nc = std::min(Panel::kNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += Panel::kKC) {
      const int64_t kc = std::min(Panel::kKC, K - pc), kp = Panel::packed_k(kc);
      const float beta_k = pc == 0 ? beta : 1.f;  // later k blocks add to the first
      panel.pack_b(tb, B, ldb, jc, nc, pc, kc, buf.b);
      for (int64_t ic = i_begin; ic < i_end; ic += Panel::kMC) {
        const int64_t mc = std::min(Panel::kMC, i_end - ic);
        panel.pack_a(ta, A, lda, ic, mc, pc, kc, buf.a);
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const auto* bp = buf.b + (jr / kNR) * kp * kNR;
          const int n = static_cast<int>(std::min<int64_t>(kNR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            const auto* ap = buf.a + (ir / kMR) * kp * kMR;
            const int m = static_cast<int>(std::min<int64_t>(kMR, mc - ir));
            panel.kernel(kp, ap, bp, m, n, alpha, beta_k, C + (ic + ir) * ldc + jc + jr, ldc);
          }
        }
      }
    }
  }
}

// The sizes and leading dimensions of a gemm call; `name` starts the error line.
inline void check_args(const char* name, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K,
                       int64_t lda, int64_t ldb, int64_t ldc) {
  MOE_CHECK(M >= 0 && N >= 0 && K >= 0, "{}: negative size M={} N={} K={}", name, M, N, K);
  MOE_CHECK(lda >= (ta == Trans::No ? K : M) && ldb >= (tb == Trans::No ? N : K) && ldc >= N,
            "{}: leading dimension too small (lda={} ldb={} ldc={} for M={} N={} K={})", name, lda,
            ldb, ldc, M, N, K);
}

// C = alpha * op(A) op(B) + beta * C (gemm.h's contract), arguments already checked.
template <class Panel, class SA, class SB>
void gemm(const Panel& panel, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
          const SA* A, int64_t lda, const SB* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta * C, as BLAS does
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double macs = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  if (threads <= 1 || macs < kParallelMin || M < 2 * Panel::kMR) {
    gemm_rows(panel, ta, tb, 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // One contiguous range of rows per thread, in whole panels of kMR rows.
  const int64_t panels = (M + Panel::kMR - 1) / Panel::kMR;
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
    const int64_t i0 = p0 * Panel::kMR, i1 = std::min(M, p1 * Panel::kMR);
    if (i0 < i1) gemm_rows(panel, ta, tb, i0, i1, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
}

}  // namespace moe::gemm_driver
