// Weights in place times a few activation rows (linear_rows.h): AVX-512 tiles of dot products.
#include "core/linear_rows.h"

#include <algorithm>

#include "moe/cpu_features.h"
#include "moe/error.h"
#include "moe/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_HAVE_LINEAR_ROWS 1
#endif

namespace moe {

namespace {

constexpr int kWr = 6;  // weight rows per tile
constexpr int kXr = 4;  // activation rows per tile

#if defined(MOE_HAVE_LINEAR_ROWS)

#define LR_F32 __attribute__((target("avx2,fma,avx512f")))
#define LR_BF16 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")))

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wmaybe-uninitialized
// reports at every use; the values are never read.
#pragma GCC diagnostic push
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"

// The 24 sums of one tile stored: out[i][j] for weight row j of the tile and activation row i.
template <class Store>
LR_F32 void store_tile(__m512 (&acc)[kXr][kWr], int nw, int nx, const Store& store) {
  for (int i = 0; i < nx; ++i)
    for (int j = 0; j < nw; ++j) store(i, j, _mm512_reduce_add_ps(acc[i][j]));
}

// One tile of F32 weights: w rows wr[j] (k contiguous), activation rows xr[i]; k in steps of 16,
// the last step masked.
template <class Store>
LR_F32 void tile_f32(const float* const (&wr)[kWr], const float* const (&xr)[kXr], int64_t K,
                     int nw, int nx, const Store& store) {
  __m512 acc[kXr][kWr];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[kWr];
    for (int j = 0; j < kWr; ++j) wv[j] = _mm512_loadu_ps(wr[j] + k);
    for (int i = 0; i < kXr; ++i) {
      const __m512 xv = _mm512_loadu_ps(xr[i] + k);
      for (int j = 0; j < kWr; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[kWr];
    for (int j = 0; j < kWr; ++j) wv[j] = _mm512_maskz_loadu_ps(m, wr[j] + k);
    for (int i = 0; i < kXr; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, xr[i] + k);
      for (int j = 0; j < kWr; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  store_tile(acc, nw, nx, store);
}

// One tile of BF16 weights against bf16 activations: vdpbf16ps adds the products of each k pair
// into fp32 lanes; k in steps of 32, the last step masked (by pairs of bf16, 32-bit lanes; an odd
// K's last pair has a zero partner).
template <class Store>
LR_BF16 void tile_bf16(const uint16_t* const (&wr)[kWr], const uint16_t* const (&xr)[kXr],
                       int64_t K, int nw, int nx, const Store& store) {
  __m512 acc[kXr][kWr];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[kWr];
    for (int j = 0; j < kWr; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(wr[j] + k);
    for (int i = 0; i < kXr; ++i) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xr[i] + k);
      for (int j = 0; j < kWr; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  if (k < K) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    __m512bh wv[kWr];
    for (int j = 0; j < kWr; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(m, wr[j] + k);
    for (int i = 0; i < kXr; ++i) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, xr[i] + k);
      for (int j = 0; j < kWr; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  store_tile(acc, nw, nx, store);
}

#pragma GCC diagnostic pop

// Over the tiles of rows [r0, r1) x [0, n): the weight rows of a tile stay in L1 while every
// activation tile passes (the activations, n rows, stay in L2). A partial tile repeats its last
// row in the unused slots and stores only the rows it has.
template <class T, class Tile>
void over_tiles(const T* x, int64_t n, const T* w, int64_t K, int64_t r0, int64_t r1, float* y,
                int64_t ldy, bool accumulate, const Tile& tile) {
  for (int64_t rb = r0; rb < r1; rb += kWr) {
    const int nw = static_cast<int>(std::min<int64_t>(kWr, r1 - rb));
    const T* wr[kWr];
    for (int j = 0; j < kWr; ++j) wr[j] = w + (rb + std::min(j, nw - 1)) * K;
    for (int64_t ib = 0; ib < n; ib += kXr) {
      const int nx = static_cast<int>(std::min<int64_t>(kXr, n - ib));
      const T* xr[kXr];
      for (int i = 0; i < kXr; ++i) xr[i] = x + (ib + std::min(i, nx - 1)) * K;
      tile(wr, xr, K, nw, nx, [&](int i, int j, float v) {
        float& dst = y[(ib + i) * ldy + rb + j];
        dst = accumulate ? dst + v : v;
      });
    }
  }
}

#endif

}  // namespace

bool linear_rows_supported(GgmlType type) {
#if defined(MOE_HAVE_LINEAR_ROWS)
  const CpuFeatures& c = cpu_features();
  if (type == GgmlType::F32) return c.avx512f && c.os_zmm;
  if (type == GgmlType::BF16) return c.bf16_gemm();
#else
  (void)type;
#endif
  return false;
}

void linear_rows(const float* x, const uint16_t* xb, int64_t n, const WeightView& w, int64_t r0,
                 int64_t r1, float* y, bool accumulate) {
  MOE_CHECK(linear_rows_supported(w.type), "linear_rows: no kernel for {} weights on this CPU",
            ggml_type_name(static_cast<uint32_t>(w.type)));
#if defined(MOE_HAVE_LINEAR_ROWS)
  if (w.type == GgmlType::F32) {
    over_tiles(x, n, reinterpret_cast<const float*>(w.data), w.cols, r0, r1, y, w.rows, accumulate,
               [](const auto& wr, const auto& xr, int64_t K, int nw, int nx, const auto& store) {
                 tile_f32(wr, xr, K, nw, nx, store);
               });
  } else {
    over_tiles(xb, n, reinterpret_cast<const uint16_t*>(w.data), w.cols, r0, r1, y, w.rows,
               accumulate,
               [](const auto& wr, const auto& xr, int64_t K, int nw, int nx, const auto& store) {
                 tile_bf16(wr, xr, K, nw, nx, store);
               });
  }
#else
  (void)x, (void)xb, (void)n, (void)r0, (void)r1, (void)y, (void)accumulate;
#endif
}

void bf16_activation_rows(const float* x, int64_t n, int64_t k, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i)
    quantize_row(GgmlType::BF16, x + i * k, reinterpret_cast<uint8_t*>(dst + i * k), k);
}

}  // namespace moe
