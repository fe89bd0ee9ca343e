// The packed fp32 AVX-512 GEMM behind gemm<float> (gemm.h), in the design of the bf16 kernel
// (gemm_bf16.cpp): GotoBLAS blocking, for each NC block of columns and KC block of k, B is
// packed once ([k][NR] per panel of NR columns), for each MC block of rows A is packed ([k][MR]
// per panel of MR rows), and a 12 x 32 microkernel (24 zmm accumulators, two B loads and 12
// broadcast FMAs per k) runs over the panels. The transposes the backward needs are packing
// orders, not copies of the operands. Products are summed in k order per element (a fixed
// order per element: results do not depend on the thread count).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "moe/cpu_features.h"
#include "moe/error.h"
#include "moe/gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_HAVE_AVX512_SGEMM 1
#endif

namespace moe {

namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;
constexpr int64_t kKC = 512;              // k per block: a B panel of 64 KiB streams from L2
constexpr int64_t kMC = kMR * 16;         // rows per packed A block: 384 KiB, stays in L2
constexpr int64_t kNC = kNR * 32;         // columns per packed B block: 2 MiB
constexpr double kParallelMin = 1 << 20;  // multiply-adds below which one thread is faster

std::atomic<int> g_backend{static_cast<int>(SgemmBackend::Auto)};

struct PackBuffers {
  float* a = nullptr;  // kMC x kKC
  float* b = nullptr;  // kNC x kKC
  PackBuffers() {
    a = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kMC * kKC));
    b = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kNC * kKC));
    MOE_CHECK(a != nullptr && b != nullptr, "sgemm_avx512: out of memory for packing buffers");
  }
  ~PackBuffers() {
    std::free(a);
    std::free(b);
  }
  PackBuffers(const PackBuffers&) = delete;
  PackBuffers& operator=(const PackBuffers&) = delete;
};

PackBuffers& pack_buffers() {
  thread_local PackBuffers buf;
  return buf;
}

// Panels of `width` lines from a matrix whose lines run along k (src[line * ld + k]):
// dst[panel][k][line], zero past `lines`. The gather of one k column of a panel is a transpose.
void pack_k_contiguous(const float* src, int64_t ld, int64_t lines, int width, int64_t k0,
                       int64_t kc, float* dst) {
  for (int64_t p0 = 0; p0 < lines; p0 += width) {
    const int n = static_cast<int>(std::min<int64_t>(width, lines - p0));
    float* out = dst + (p0 / width) * kc * width;
    const float* in = src + p0 * ld + k0;
    for (int64_t k = 0; k < kc; k += 8) {  // 8 k at a time: each line's 32 bytes read once
      const int kn = static_cast<int>(std::min<int64_t>(8, kc - k));
      for (int l = 0; l < n; ++l) {
        const float* s = in + l * ld + k;
        for (int j = 0; j < kn; ++j) out[(k + j) * width + l] = s[j];
      }
      for (int l = n; l < width; ++l)
        for (int j = 0; j < kn; ++j) out[(k + j) * width + l] = 0.f;
    }
  }
}

// Panels of `width` lines from a matrix whose lines are its columns (src[k * ld + line]): each
// k row of a panel is a contiguous copy.
void pack_k_strided(const float* src, int64_t ld, int64_t lines, int width, int64_t k0, int64_t kc,
                    float* dst) {
  for (int64_t p0 = 0; p0 < lines; p0 += width) {
    const int n = static_cast<int>(std::min<int64_t>(width, lines - p0));
    float* out = dst + (p0 / width) * kc * width;
    for (int64_t k = 0; k < kc; ++k) {
      std::memcpy(out + k * width, src + (k0 + k) * ld + p0, sizeof(float) * n);
      if (n < width) std::fill(out + k * width + n, out + (k + 1) * width, 0.f);
    }
  }
}

#ifdef MOE_HAVE_AVX512_SGEMM
#pragma GCC diagnostic push
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) void kernel_avx512(int64_t kc, const float* a, const float* b,
                                                      int m, int n, float alpha, float beta,
                                                      float* C, int64_t ldc) {
  for (int r = 0; r < m; ++r) {  // the C tile's lines, fetched while the k loop runs
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + n - 1), _MM_HINT_T0);
  }
  __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b + k * kNR);
    const __m512 b1 = _mm512_load_ps(b + k * kNR + 16);
    const float* ak = a + k * kMR;
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      const __m512 av = _mm512_set1_ps(ak[r]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
  }
  const __mmask16 m0 = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  const __mmask16 m1 = n >= 32 ? __mmask16(0xFFFF) : n <= 16 ? 0 : __mmask16((1u << (n - 16)) - 1);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) {
    if (r >= m) break;
    float* c = C + r * ldc;
    __m512 v0 = _mm512_mul_ps(va, acc0[r]), v1 = _mm512_mul_ps(va, acc1[r]);
    if (beta != 0.f) {  // beta == 0: C is not read, so NaN in it never leaks (BLAS semantics)
      v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), v0);
      v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), v1);
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}
#pragma GCC diagnostic pop

// One thread: rows [i_begin, i_end) of C.
void gemm_rows(Trans ta, Trans tb, int64_t i_begin, int64_t i_end, int64_t N, int64_t K,
               float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
               float* C, int64_t ldc) {
  PackBuffers& buf = pack_buffers();
  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      const float beta_k = pc == 0 ? beta : 1.f;  // later k blocks add to the first
      if (tb == Trans::No)
        pack_k_strided(B + jc, ldb, nc, kNR, pc, kc, buf.b);
      else
        pack_k_contiguous(B + jc * ldb, ldb, nc, kNR, pc, kc, buf.b);
      for (int64_t ic = i_begin; ic < i_end; ic += kMC) {
        const int64_t mc = std::min(kMC, i_end - ic);
        if (ta == Trans::No)
          pack_k_contiguous(A + ic * lda, lda, mc, kMR, pc, kc, buf.a);
        else
          pack_k_strided(A + ic, lda, mc, kMR, pc, kc, buf.a);
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const float* bp = buf.b + (jr / kNR) * kc * kNR;
          const int n = static_cast<int>(std::min<int64_t>(kNR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            const float* ap = buf.a + (ir / kMR) * kc * kMR;
            const int m = static_cast<int>(std::min<int64_t>(kMR, mc - ir));
            kernel_avx512(kc, ap, bp, m, n, alpha, beta_k, C + (ic + ir) * ldc + jc + jr, ldc);
          }
        }
      }
    }
  }
}
#endif

}  // namespace

bool sgemm_avx512_available() {
#ifdef MOE_HAVE_AVX512_SGEMM
  return cpu_features().avx512f && cpu_features().os_zmm;
#else
  return false;
#endif
}

void set_sgemm_backend(SgemmBackend b) {
  MOE_CHECK(b != SgemmBackend::Avx512 || sgemm_avx512_available(),
            "set_sgemm_backend: this CPU or build has no AVX-512 fp32 kernel");
  g_backend.store(static_cast<int>(b));
}

SgemmBackend sgemm_backend_setting() {
  const auto b = static_cast<SgemmBackend>(g_backend.load());
  if (b != SgemmBackend::Auto) return b;
  // Auto: OpenBLAS on every shape (on this project's Zen 4 host, under load, neither backend
  // won a shape class clearly: bench/README.md), unless MOE_SGEMM names one for the process
  // (for A/B runs of whole trainings without a rebuild).
  static const SgemmBackend from_env = [] {
    const char* v = std::getenv("MOE_SGEMM");
    if (v == nullptr || *v == 0 || !std::strcmp(v, "openblas")) return SgemmBackend::OpenBlas;
    MOE_REQUIRE(!std::strcmp(v, "avx512"),
                "MOE_SGEMM={}: expected openblas or avx512 (the fp32 GEMM backend)", v);
    MOE_REQUIRE(sgemm_avx512_available(),
                "MOE_SGEMM=avx512: this CPU or build has no AVX-512 fp32 kernel");
    return SgemmBackend::Avx512;
  }();
  return from_env;
}

const char* sgemm_backend_name(SgemmBackend b) {
  switch (b) {
    case SgemmBackend::Auto:
      return "auto";
    case SgemmBackend::OpenBlas:
      return "openblas";
    case SgemmBackend::Avx512:
      return "avx512";
  }
  return "?";
}

void sgemm_avx512(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  MOE_CHECK(sgemm_avx512_available(), "sgemm_avx512: this CPU or build has no AVX-512");
  MOE_CHECK(M >= 0 && N >= 0 && K >= 0, "sgemm_avx512: negative size M={} N={} K={}", M, N, K);
  MOE_CHECK(lda >= (ta == Trans::No ? K : M) && ldb >= (tb == Trans::No ? N : K) && ldc >= N,
            "sgemm_avx512: leading dimension too small (lda={} ldb={} ldc={} for M={} N={} K={})",
            lda, ldb, ldc, M, N, K);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta * C, as BLAS does
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
#ifdef MOE_HAVE_AVX512_SGEMM
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double macs = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  if (threads <= 1 || macs < kParallelMin || M < 2 * kMR) {
    gemm_rows(ta, tb, 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // One contiguous range of rows per thread (whole panels): each element is computed by one
  // thread in the same order whatever the thread count.
  const int64_t panels = (M + kMR - 1) / kMR;
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
    const int64_t i0 = p0 * kMR, i1 = std::min(M, p1 * kMR);
    if (i0 < i1) gemm_rows(ta, tb, i0, i1, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
#endif
}

}  // namespace moe
