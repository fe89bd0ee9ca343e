// The packed fp32 AVX-512 GEMM behind gemm<float> (gemm.h): the blocking driver it shares with
// the bf16 kernel (gemm_driver.h) over fp32 panels ([k][NR] per panel of NR columns of B,
// [k][MR] per panel of MR rows of A) and a 12 x 32 microkernel (24 zmm accumulators, two B
// loads and 12 broadcast FMAs per k). Products are summed in k order per element (a fixed order
// per element: results do not depend on the thread count).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "core/gemm_driver.h"
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

std::atomic<int> g_backend{static_cast<int>(SgemmBackend::Auto)};

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

// The fp32 panels for gemm_driver.h: B packed once per (NC, KC) block (a B panel of 64 KiB
// streams from L2), A per MC block (384 KiB, stays in L2).
struct F32Panel {
  using Packed = float;
  static constexpr int kMR = moe::kMR, kNR = moe::kNR;
  static constexpr int64_t kKC = 512;
  static constexpr int64_t kMC = kMR * 16;
  static constexpr int64_t kNC = kNR * 32;
  static constexpr int64_t packed_k(int64_t kc) { return kc; }
  void pack_a(Trans ta, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
              float* dst) const {
    if (ta == Trans::No)
      pack_k_contiguous(A + i0 * lda, lda, mc, kMR, k0, kc, dst);
    else
      pack_k_strided(A + i0, lda, mc, kMR, k0, kc, dst);
  }
  void pack_b(Trans tb, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0, int64_t kc,
              float* dst) const {
    if (tb == Trans::No)
      pack_k_strided(B + j0, ldb, nc, kNR, k0, kc, dst);
    else
      pack_k_contiguous(B + j0 * ldb, ldb, nc, kNR, k0, kc, dst);
  }
  void kernel(int64_t kc, const float* a, const float* b, int m, int n, float alpha, float beta,
              float* C, int64_t ldc) const {
    kernel_avx512(kc, a, b, m, n, alpha, beta, C, ldc);
  }
};
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
  gemm_driver::check_args("sgemm_avx512", ta, tb, M, N, K, lda, ldb, ldc);
#ifdef MOE_HAVE_AVX512_SGEMM
  gemm_driver::gemm(F32Panel{}, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

}  // namespace moe
