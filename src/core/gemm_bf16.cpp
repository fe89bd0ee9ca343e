// bf16 GEMM (gemm_bf16.h): the blocking driver it shares with the fp32 kernel (gemm_driver.h)
// over bf16-pair panels (B: [k/2][NR] per panel of NR columns; A: [k/2][MR] per panel of MR
// rows) and an MR x NR microkernel. Packing rounds fp32 to bf16, so both kernels see identical
// bf16 operands; only the microkernel differs (vdpbf16ps or portable C++).
#include "moe/gemm_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "core/bf16_pack.h"
#include "core/gemm_driver.h"
#include "moe/cpu_features.h"
#include "moe/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_HAVE_AVX512_KERNEL 1
#endif

namespace moe {

namespace {

constexpr int kMR = 12;  // rows per microkernel tile (24 zmm accumulators)
constexpr int kNR = 32;  // columns per tile: two zmm of 16 fp32
// Large k and row blocks: in the MoE layer's expert GEMMs (K = d, ffn or the expert's rows, all
// up to a few thousand) every k block past the first re-reads the whole C from memory, which
// cost more than keeping the B panel (64 KiB) in L1; L2 streams the packed operands fast enough.
// With kKC = 256 and kMC = 96 the layer's bf16 step was ~20% slower.
constexpr int64_t kKC = 1024;  // k per block (even), 512 bf16 pairs
constexpr int64_t kKP = kKC / 2;
constexpr int64_t kMC = kMR * 16;  // rows per packed A block: 384 KiB, stays in L2
// Wide enough for the whole N of the layer's expert GEMMs (ffn up to 1536): op(A) is packed once
// per MC block and k block, and again for every further NC block, so with kNC = 1024 the
// N = ffn = 1408 GEMMs (gate, up, da, dW2) packed their A twice.
constexpr int64_t kNC = kNR * 48;  // columns per packed B block: 3 MiB

std::atomic<int> g_kernel{static_cast<int>(Bf16Kernel::Auto)};

// A run of operand values as bf16 bits: fp32 rounded (bf16_bits is branchless, so this
// vectorizes), or bf16 bits copied.
void to_bf16(const float* src, int64_t n, uint16_t* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits(src[i]);
}
void to_bf16(const uint16_t* src, int64_t n, uint16_t* dst) {
  std::memcpy(dst, src, sizeof(uint16_t) * static_cast<size_t>(n));
}
inline uint32_t bits_of(float v) {
  return bf16_bits(v);
}
inline uint32_t bits_of(uint16_t v) {
  return v;
}

// Scratch for one row of bf16 values (kKC, or kNC when converting along the columns).
constexpr int64_t kRowMax = kKC > kNC ? kKC : kNC;

}  // namespace

// The scalar packers: the definition of the packed layouts (bf16_pack.h), used with the
// portable kernel and checked against the AVX-512 packers in the tests.
template <class Src>
void pack_k_contiguous_scalar(const Src* src, int64_t ld, int rows, int width, int64_t k0,
                              int64_t kc, uint32_t* dst) {
  const int64_t kp_n = (kc + 1) / 2;
  alignas(64) uint16_t tmp[kKC + 2];
  uint32_t pairs[kKP];
  for (int r = 0; r < width; ++r) {
    if (r >= rows) {
      for (int64_t kp = 0; kp < kp_n; ++kp) dst[kp * width + r] = 0;
      continue;
    }
    to_bf16(src + r * ld + k0, kc, tmp);
    tmp[kc] = 0;  // the odd k's partner
    std::memcpy(pairs, tmp, sizeof(uint32_t) * kp_n);
    for (int64_t kp = 0; kp < kp_n; ++kp) dst[kp * width + r] = pairs[kp];
  }
}

template <class Src>
void pack_k_strided_scalar(const Src* src, int64_t ld, int64_t cols, int width, int64_t k0,
                           int64_t kc, uint32_t* dst) {
  const int64_t kp_n = (kc + 1) / 2;
  const int64_t panels = (cols + width - 1) / width;
  alignas(64) uint16_t lo[kRowMax + kNR], hi[kRowMax + kNR];
  std::fill(lo + cols, lo + panels * width, uint16_t(0));
  for (int64_t kp = 0; kp < kp_n; ++kp) {
    const int64_t k = k0 + 2 * kp;
    to_bf16(src + k * ld, cols, lo);
    if (2 * kp + 1 < kc) {
      to_bf16(src + (k + 1) * ld, cols, hi);
    } else {
      std::fill(hi, hi + cols, uint16_t(0));
    }
    std::fill(hi + cols, hi + panels * width, uint16_t(0));
    for (int64_t p = 0; p < panels; ++p) {
      uint32_t* out = dst + (p * kp_n + kp) * width;
      const uint16_t *l = lo + p * width, *h = hi + p * width;
#pragma omp simd
      for (int c = 0; c < width; ++c) out[c] = uint32_t(l[c]) | (uint32_t(h[c]) << 16);
    }
  }
}

#ifdef MOE_HAVE_AVX512_KERNEL
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_epi32(), which -Wmaybe-uninitialized
// (and, under the sanitizers, -Wuninitialized) report once they are inlined into a
// target("...") function: a false positive.
#pragma GCC diagnostic push
#ifndef __clang__  // a GCC-only warning group (clang, used by scripts/fuzz.sh, does not know it)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#define MOE_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// In-register transpose of 16 rows of 16 uint32: v[i] lane j -> v[j] lane i.
MOE_TARGET_BF16 inline void transpose_16x16(__m512i (&v)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_i32x4(v[h + i], v[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(v[h + i], v[h + i + 4], 0xDD);
    }
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    v[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
  }
}

// vcvtne2ps2bf16 rounds exactly as bf16_bits does (nearest even, denormals to signed zero, NaN
// quieted), so these produce the scalar packers' bits, several times faster: the scalar ones
// took about a fifth of a bf16 expert's time in the MoE layer.
// 32 k values of one row as 16 bf16 pairs.
MOE_TARGET_BF16 inline __m512i row_pairs(const float* p) {
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p));
}
MOE_TARGET_BF16 inline __m512i row_pairs(const uint16_t* p) {
  return _mm512_loadu_si512(p);
}

template <class Src>
MOE_TARGET_BF16 void pack_k_contiguous_avx512(const Src* src, int64_t ld, int rows, int width,
                                              int64_t k0, int64_t kc, uint32_t* dst) {
  const int64_t kp_n = (kc + 1) / 2, chunks = kc / 32;  // 32 k values = 16 pairs per chunk
  for (int r0 = 0; r0 < width; r0 += 16) {
    const int lanes = std::min(16, width - r0), valid = std::clamp(rows - r0, 0, lanes);
    const __mmask16 store_mask = static_cast<__mmask16>((1u << lanes) - 1);
    for (int64_t c = 0; c < chunks; ++c) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        if (i < valid) {
          v[i] = row_pairs(src + (r0 + i) * ld + k0 + 32 * c);
        } else {
          v[i] = _mm512_setzero_si512();
        }
      }
      transpose_16x16(v);
      for (int j = 0; j < 16; ++j)
        _mm512_mask_storeu_epi32(dst + (16 * c + j) * width + r0, store_mask, v[j]);
    }
    for (int64_t kp = 16 * chunks; kp < kp_n; ++kp) {
      const int64_t k = k0 + 2 * kp;
      for (int i = 0; i < lanes; ++i) {
        uint32_t pair = 0;
        if (i < valid) {
          const Src* p = src + (r0 + i) * ld;
          pair = bits_of(p[k]) | (2 * kp + 1 < kc ? bits_of(p[k + 1]) << 16 : 0u);
        }
        dst[kp * width + r0 + i] = pair;
      }
    }
  }
}

// The first `valid` of 16 lanes (none at or below 0, all at 16 and above).
MOE_TARGET_BF16 inline __mmask16 first_lanes(int64_t valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

// 16 columns of rows k (lo) and k + 1 (hi, null past kc) as bf16 pairs; lanes at and past
// `valid` are zero. One vcvtne2ps2bf16 rounds both rows (lo's 16 values in words 0-15, hi's in
// 16-31) and one vpermw interleaves them into pairs.
MOE_TARGET_BF16 inline __m512i strided_pairs(const float* lo_row, const float* hi_row,
                                             int64_t valid) {
  const __mmask16 m = first_lanes(valid);
  const __m512 lo = _mm512_maskz_loadu_ps(m, lo_row);
  const __m512 hi = hi_row == nullptr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, hi_row);
  const __m512i interleave =
      _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}
// The same from rows of bf16 bits: widened, hi's shifted into the upper words.
MOE_TARGET_BF16 inline __m512i strided_pairs(const uint16_t* lo_row, const uint16_t* hi_row,
                                             int64_t valid) {
  const __mmask16 m = first_lanes(valid);
  const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo_row));
  if (hi_row == nullptr) return lo;
  const __m512i hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, hi_row));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

// Width is the panel width, 12 (A) or 32 (B), fixed at compile time so that the panel stores
// are a few vector moves rather than a call per panel and k pair.
template <int Width, class Src>
MOE_TARGET_BF16 void pack_k_strided_avx512(const Src* src, int64_t ld, int64_t cols, int64_t k0,
                                           int64_t kc, uint32_t* dst) {
  const int64_t kp_n = (kc + 1) / 2;
  // A few panels at a time, every k pair of them, then the next few: the panels of one k pair
  // lie kp_n * Width * 4 bytes apart (64 KiB for B), so writing all of them per k pair hit one
  // L1 set from every panel and thrashed it (this packer ran at half the contiguous one's speed).
  constexpr int kGroup = (128 / Width) * Width;  // 128 columns of B, 120 of A
  for (int64_t c0 = 0; c0 < cols; c0 += kGroup) {
    const int64_t gc = std::min<int64_t>(kGroup, cols - c0);
    const int64_t padded = (gc + Width - 1) / Width * Width;  // whole panels, zero past gc
    uint32_t* out = dst + (c0 / Width) * kp_n * Width;
    for (int64_t kp = 0; kp < kp_n; ++kp) {
      const Src* lo_row = src + (k0 + 2 * kp) * ld + c0;
      const Src* hi_row = 2 * kp + 1 < kc ? lo_row + ld : nullptr;
      if constexpr (Width % 16 == 0) {  // 16 columns never straddle two panels: store in place
        for (int64_t c = 0; c < padded; c += 16)
          _mm512_storeu_si512(out + ((c / Width) * kp_n + kp) * Width + c % Width,
                              strided_pairs(lo_row + c, hi_row ? hi_row + c : nullptr, gc - c));
      } else {  // one panel's Width (< 16) columns per load, stored in place under a mask
        for (int64_t c = 0; c < padded; c += Width)
          _mm512_mask_storeu_epi32(out + ((c / Width) * kp_n + kp) * Width,
                                   static_cast<__mmask16>((1u << Width) - 1),
                                   strided_pairs(lo_row + c, hi_row ? hi_row + c : nullptr,
                                                 std::min<int64_t>(Width, gc - c)));
      }
    }
  }
}

// vcvtneps2bf16 rounds as bf16_bits does (see the packers above).
MOE_TARGET_BF16 void round_to_bf16_avx512(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    _mm256_mask_storeu_epi16(dst + i, m,
                             (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
  }
}
#pragma GCC diagnostic pop
#endif

template <class Src>
void pack_k_contiguous(bool simd, const Src* src, int64_t ld, int rows, int width, int64_t k0,
                       int64_t kc, uint32_t* dst) {
  MOE_CHECK(kc <= kKC, "pack_k_contiguous: {} k values over the limit", kc);
#ifdef MOE_HAVE_AVX512_KERNEL
  if (simd) return pack_k_contiguous_avx512(src, ld, rows, width, k0, kc, dst);
#endif
  MOE_CHECK(!simd, "gemm_bf16: built without the AVX-512 packers");
  pack_k_contiguous_scalar(src, ld, rows, width, k0, kc, dst);
}

template <class Src>
void pack_k_strided(bool simd, const Src* src, int64_t ld, int64_t cols, int width, int64_t k0,
                    int64_t kc, uint32_t* dst) {
  MOE_CHECK(cols <= kRowMax && kc <= kKC, "pack_k_strided: block of {} x {} over the limit", kc,
            cols);
#ifdef MOE_HAVE_AVX512_KERNEL
  if (simd && width == kMR) return pack_k_strided_avx512<kMR>(src, ld, cols, k0, kc, dst);
  if (simd && width == kNR) return pack_k_strided_avx512<kNR>(src, ld, cols, k0, kc, dst);
#endif
  MOE_CHECK(!simd, "pack_k_strided: no AVX-512 packer for panels of {} in this build", width);
  pack_k_strided_scalar(src, ld, cols, width, k0, kc, dst);
}

#define MOE_INSTANTIATE_PACKERS(Src)                                                           \
  template void pack_k_contiguous<Src>(bool, const Src*, int64_t, int, int, int64_t, int64_t,  \
                                       uint32_t*);                                             \
  template void pack_k_strided<Src>(bool, const Src*, int64_t, int64_t, int, int64_t, int64_t, \
                                    uint32_t*);
MOE_INSTANTIATE_PACKERS(float)
MOE_INSTANTIATE_PACKERS(uint16_t)
#undef MOE_INSTANTIATE_PACKERS

void round_to_bf16(const float* src, int64_t n, uint16_t* dst) {
#ifdef MOE_HAVE_AVX512_KERNEL
  static const bool simd = cpu_features().bf16_gemm();
  if (simd) return round_to_bf16_avx512(src, n, dst);
#endif
  to_bf16(src, n, dst);
}

namespace {

// Packs op(A)[i0:i0+mc, k0:k0+kc] as panels of kMR rows: dst[panel][kp][r].
template <class Src>
void pack_a(bool simd, Trans ta, const Src* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
            int64_t kc, uint32_t* dst) {
  const int64_t kp_n = (kc + 1) / 2;
  if (ta == Trans::Yes) {
    pack_k_strided(simd, A + i0, lda, mc, kMR, k0, kc, dst);
    return;
  }
  for (int64_t p = 0; p < mc; p += kMR) {
    const int rows = static_cast<int>(std::min<int64_t>(kMR, mc - p));
    pack_k_contiguous(simd, A + (i0 + p) * lda, lda, rows, kMR, k0, kc,
                      dst + (p / kMR) * kp_n * kMR);
  }
}

// Packs op(B)[k0:k0+kc, j0:j0+nc] as panels of kNR columns: dst[panel][kp][c].
template <class Src>
void pack_b(bool simd, Trans tb, const Src* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0,
            int64_t kc, uint32_t* dst) {
  const int64_t kp_n = (kc + 1) / 2;
  if (tb == Trans::No) {
    pack_k_strided(simd, B + j0, ldb, nc, kNR, k0, kc, dst);
    return;
  }
  for (int64_t q = 0; q < nc; q += kNR) {
    const int cols = static_cast<int>(std::min<int64_t>(kNR, nc - q));
    pack_k_contiguous(simd, B + (j0 + q) * ldb, ldb, cols, kNR, k0, kc,
                      dst + (q / kNR) * kp_n * kNR);
  }
}

// C[0:m, 0:n] = alpha * acc + beta * C (beta == 0: C is not read, so NaN in it never leaks).
void store_tile(const float (&acc)[kMR][kNR], int m, int n, float alpha, float beta, float* C,
                int64_t ldc) {
  for (int r = 0; r < m; ++r) {
    float* c = C + r * ldc;
    if (beta == 0.f) {
      for (int j = 0; j < n; ++j) c[j] = alpha * acc[r][j];
    } else {
      for (int j = 0; j < n; ++j) c[j] = alpha * acc[r][j] + beta * c[j];
    }
  }
}

inline float bf16_lo(uint32_t p) {
  return std::bit_cast<float>(p << 16);
}
inline float bf16_hi(uint32_t p) {
  return std::bit_cast<float>(p & 0xFFFF0000u);
}

// Portable microkernel: the same bf16 products and the same summation order as vdpbf16ps.
void kernel_portable(int64_t kp_n, const uint32_t* a, const uint32_t* b, int m, int n, float alpha,
                     float beta, float* C, int64_t ldc) {
  float acc[kMR][kNR] = {};
  for (int64_t kp = 0; kp < kp_n; ++kp) {
    const uint32_t* ak = a + kp * kMR;
    const uint32_t* bk = b + kp * kNR;
    for (int r = 0; r < kMR; ++r) {
      const float ahi = bf16_hi(ak[r]), alo = bf16_lo(ak[r]);
      for (int j = 0; j < kNR; ++j) {
        float s = acc[r][j] + ahi * bf16_hi(bk[j]);
        acc[r][j] = s + alo * bf16_lo(bk[j]);
      }
    }
  }
  store_tile(acc, m, n, alpha, beta, C, ldc);
}

#ifdef MOE_HAVE_AVX512_KERNEL
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void kernel_avx512(
    int64_t kp_n, const uint32_t* a, const uint32_t* b, int m, int n, float alpha, float beta,
    float* C, int64_t ldc) {
  // The C tile is read (beta != 0: a later k block, or a gradient that accumulates) or written
  // after the k loop; in the layer's expert GEMMs it is rarely still in cache, and the loads
  // stalled the store loop. Prefetching its (up to 3) lines per row now overlaps the misses
  // with the k loop.
  for (int r = 0; r < m; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + n / 2), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + n - 1), _MM_HINT_T0);
  }
  __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < kp_n; ++kp) {
    const __m512i b0 = _mm512_load_si512(b + kp * kNR);
    const __m512i b1 = _mm512_load_si512(b + kp * kNR + 16);
    const uint32_t* ak = a + kp * kMR;
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(ak[r]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], (__m512bh)av, (__m512bh)b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], (__m512bh)av, (__m512bh)b1);
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
    if (beta != 0.f) {
      v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), v0);
      v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), v1);
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}
#endif

using Kernel = void (*)(int64_t, const uint32_t*, const uint32_t*, int, int, float, float, float*,
                        int64_t);

Kernel pick_kernel() {
#ifdef MOE_HAVE_AVX512_KERNEL
  if (bf16_kernel() == Bf16Kernel::Avx512) return kernel_avx512;
#endif
  return kernel_portable;
}

// The bf16-pair panels for gemm_driver.h; the portable kernel packs portably too.
struct Bf16Panel {
  using Packed = uint32_t;
  static constexpr int kMR = moe::kMR, kNR = moe::kNR;
  static constexpr int64_t kKC = moe::kKC, kMC = moe::kMC, kNC = moe::kNC;
  static constexpr int64_t packed_k(int64_t kc) { return (kc + 1) / 2; }
  Kernel kern;
  bool simd;
  template <class Src>
  void pack_a(Trans ta, const Src* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
              uint32_t* dst) const {
    moe::pack_a(simd, ta, A, lda, i0, mc, k0, kc, dst);
  }
  template <class Src>
  void pack_b(Trans tb, const Src* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0, int64_t kc,
              uint32_t* dst) const {
    moe::pack_b(simd, tb, B, ldb, j0, nc, k0, kc, dst);
  }
  void kernel(int64_t kp, const uint32_t* a, const uint32_t* b, int m, int n, float alpha,
              float beta, float* C, int64_t ldc) const {
    kern(kp, a, b, m, n, alpha, beta, C, ldc);
  }
};

}  // namespace

void set_bf16_kernel(Bf16Kernel k) {
  MOE_CHECK(k != Bf16Kernel::Avx512 || cpu_features().bf16_gemm(),
            "set_bf16_kernel: this CPU has no AVX-512 BF16");
#ifndef MOE_HAVE_AVX512_KERNEL
  MOE_CHECK(k != Bf16Kernel::Avx512, "set_bf16_kernel: built without the AVX-512 kernel");
#endif
  g_kernel.store(static_cast<int>(k));
}

Bf16Kernel bf16_kernel() {
  const auto k = static_cast<Bf16Kernel>(g_kernel.load());
  if (k != Bf16Kernel::Auto) return k;
#ifdef MOE_HAVE_AVX512_KERNEL
  if (cpu_features().bf16_gemm()) return Bf16Kernel::Avx512;
#endif
  return Bf16Kernel::Portable;
}

const char* bf16_kernel_name(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::Auto:
      return "auto";
    case Bf16Kernel::Avx512:
      return "avx512_bf16";
    case Bf16Kernel::Portable:
      return "portable";
  }
  return "?";
}

namespace {
template <class SA, class SB>
void gemm_bf16_any(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const SA* A,
                   int64_t lda, const SB* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_driver::check_args("gemm_bf16", ta, tb, M, N, K, lda, ldb, ldc);
  const Kernel kernel = pick_kernel();
  gemm_driver::gemm(Bf16Panel{kernel, kernel != kernel_portable}, ta, tb, M, N, K, alpha, A, lda, B,
                    ldb, beta, C, ldc);
}
}  // namespace

void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_bf16_any(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_bf16_any(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_bf16_any(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_bf16_naive(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                     int64_t ldc) {
  gemm_driver::check_args("gemm_bf16", ta, tb, M, N, K, lda, ldb, ldc);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < K; ++p) {
        const float a = round_bf16(ta == Trans::No ? A[i * lda + p] : A[p * lda + i]);
        const float b = round_bf16(tb == Trans::No ? B[p * ldb + j] : B[j * ldb + p]);
        acc += static_cast<double>(a) * static_cast<double>(b);
      }
      float& c = C[i * ldc + j];
      c = static_cast<float>(alpha * acc + (beta == 0.f ? 0.0 : static_cast<double>(beta) * c));
    }
  }
}

}  // namespace moe
