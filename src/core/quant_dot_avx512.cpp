// The AVX-512 VNNI int8 kernels (quant_dot_simd.h): each 4 byte products summed into int32 by
// one vpdpbusd (VL encoding, on ymm). Compiled with a target attribute, chosen at run time.
#include "core/quant_dot.h"

#if defined(__x86_64__)

#define QD_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define QD_NS quant_avx512

#include <immintrin.h>

namespace moe::QD_NS {
QD_TARGET inline __m256i dp_u8s8(__m256i acc, __m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(acc, u, s);
}
// vpdpbusd sums into int32: unsigned operands may take the full 0-255.
constexpr bool kDpWideUnsigned = true;
QD_TARGET inline __m256i dp_s16(__m256i acc, __m256i p, __m256i s) {
  return _mm256_dpwssd_epi32(acc, p, s);
}
}  // namespace moe::QD_NS

#include "core/quant_dot_simd.h"
#include "moe/cpu_features.h"

namespace moe::quant_avx512 {

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wmaybe-uninitialized
// reports at every use; the values are never read.
#pragma GCC diagnostic push
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"

#define QD_VBMI \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))

// One activation row against 8 weight blocks held as unsigned bytes (lo03 / hi03: the values
// 0-15 / 16-31 of blocks 0-3, block j in 128-bit lane j; lo47 / hi47 those of blocks 4-7) and
// their scales dw: 4 vpdpbusd, the add tree, the unsigned offset taken back out exactly
// (2^kOffsetShift x the group's sum8), then acc + ints * dw * d. Shared by Q4_0 (nibbles, offset
// 8: sum8 already holds 8 x each block's sum) and Q8_0 (xor 0x80, offset 128 = 16 x 8).
template <int kOffsetShift>
QD_VBMI inline __attribute__((always_inline)) __m256 group_row_fma(__m512i lo03, __m512i hi03,
                                                                   __m512i lo47, __m512i hi47,
                                                                   __m256 dw, const ActQ8_0Group& g,
                                                                   __m512i order, __m256 acc) {
  __m512i s03 =
      _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo03, _mm512_loadu_si512(g.qs[0][0][0]));
  s03 = _mm512_dpbusd_epi32(s03, hi03, _mm512_loadu_si512(g.qs[0][1][0]));
  __m512i s47 =
      _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo47, _mm512_loadu_si512(g.qs[1][0][0]));
  s47 = _mm512_dpbusd_epi32(s47, hi47, _mm512_loadu_si512(g.qs[1][1][0]));
  // Per 128-bit lane j: [s03 0+2, s47 0+2, s03 1+3, s47 1+3], then the two halves added.
  const __m512i pairs =
      _mm512_add_epi32(_mm512_unpacklo_epi32(s03, s47), _mm512_unpackhi_epi32(s03, s47));
  const __m512i sums = _mm512_add_epi32(pairs, _mm512_shuffle_epi32(pairs, _MM_PERM_BADC));
  const __m256i offset =
      _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.sum8)), kOffsetShift);
  const __m256i ints =
      _mm256_sub_epi32(_mm512_castsi512_si256(_mm512_permutexvar_epi32(order, sums)), offset);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), _mm256_mul_ps(dw, _mm256_loadu_ps(g.d)), acc);
}

// Q4_0 on zmm with byte permutes (AVX-512 VBMI): the 144 bytes of 8 weight blocks are three
// loads; one vpermt2b gathers the 16 nibble bytes of blocks 0-3 into a zmm, one those of blocks
// 4-7, one the 8 fp16 scales. Masked, the low nibbles meet the regrouped activations' values
// 0-15 of 4 blocks and the shifted high nibbles their values 16-31 (ActQ8_0Group), so 4
// vpdpbusd leave each block's integer in 4 int32 lanes of one 128-bit lane; two adds of
// unpacked lanes and one dword permute give the 8 block integers in order.
struct Q4_0PermuteBytes {
  alignas(64) uint8_t qs03[64] = {}, qs47[64] = {}, scales[64] = {};
};

constexpr Q4_0PermuteBytes q4_0_permute_bytes() {
  Q4_0PermuteBytes p;
  for (int j = 0; j < 4; ++j)
    for (int t = 0; t < 16; ++t) {
      p.qs03[16 * j + t] = static_cast<uint8_t>(18 * j + 2 + t);  // from bytes 0-127
      const int o = 18 * (4 + j) + 2 + t;                         // bytes 64-127 | 80-143
      p.qs47[16 * j + t] = static_cast<uint8_t>(o < 128 ? o - 64 : o - 16);
    }
  for (int u = 0; u < 8; ++u) {
    p.scales[2 * u] = static_cast<uint8_t>(18 * u);
    p.scales[2 * u + 1] = static_cast<uint8_t>(18 * u + 1);
  }
  return p;
}
constexpr Q4_0PermuteBytes kQ4_0Permutes = q4_0_permute_bytes();

template <int NA>
QD_VBMI void dot_q4_0_vbmi(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                           float* out) {
  const __m512i perm_qs03 = _mm512_load_si512(kQ4_0Permutes.qs03),
                perm_qs47 = _mm512_load_si512(kQ4_0Permutes.qs47),
                perm_scales = _mm512_load_si512(kQ4_0Permutes.scales);
  // After the adds, 128-bit lane j holds block j in dword 0 and block 4 + j in dword 1.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i low4 = _mm512_set1_epi8(0xF);
  __m256 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const uint8_t* p = w + b * static_cast<int64_t>(sizeof(BlockQ4_0));
    const __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64),
                  x2 = _mm512_loadu_si512(p + 80);
    const __m512i q03 = _mm512_permutex2var_epi8(x0, perm_qs03, x1);
    const __m512i q47 = _mm512_permutex2var_epi8(x1, perm_qs47, x2);
    const __m256 dw =
        _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi8(x0, perm_scales, x1)));
    const __m512i lo03 = _mm512_and_si512(q03, low4),
                  hi03 = _mm512_and_si512(_mm512_srli_epi16(q03, 4), low4);
    const __m512i lo47 = _mm512_and_si512(q47, low4),
                  hi47 = _mm512_and_si512(_mm512_srli_epi16(q47, 4), low4);
    for (int i = 0; i < NA; ++i)
      acc[i] = group_row_fma<0>(lo03, hi03, lo47, hi47, dw,
                                reinterpret_cast<const ActQ8_0Group*>(act + i * stride)[b / 8],
                                order, acc[i]);
  }
  float tail[NA] = {};
  if (b < nb)
    dot_q4_0_grouped<NA>(w + b * static_cast<int64_t>(sizeof(BlockQ4_0)),
                         act + b / 8 * static_cast<int64_t>(sizeof(ActQ8_0Group)), stride, nb - b,
                         tail);
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]) + tail[i];
}

struct Q4_0VbmiRows {
  template <int NA>
  QD_VBMI static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_q4_0_vbmi<NA>(w, a, st, nb, o);
  }
};

// Q8_0 on zmm with byte permutes: the values 0-15 of 4 weight blocks (bytes 34 j + 2 + t) lie
// in the 128 bytes from the first block, their values 16-31 in the 128 from byte 8, and those
// of the next 4 blocks likewise from bytes 128 and 144 (all within the 272 bytes of 8 blocks):
// one vpermt2b each puts block j's 16 values in 128-bit lane j, as the regrouped activations
// hold them. Offset to unsigned by one xor, so 4 vpdpbusd per row and group; the add tree is
// the Q4_0 one, and 16 sum8 takes the offset of 128 back out.
struct Q8_0PermuteBytes {
  alignas(64) uint8_t first[64] = {}, rest[64] = {};
};

constexpr Q8_0PermuteBytes q8_0_permute_bytes() {
  Q8_0PermuteBytes p;
  for (int j = 0; j < 4; ++j)
    for (int t = 0; t < 16; ++t) {
      p.first[16 * j + t] = static_cast<uint8_t>(34 * j + 2 + t);  // from byte 0
      p.rest[16 * j + t] = static_cast<uint8_t>(34 * j + 10 + t);  // from byte 8, 128 or 144
    }
  return p;
}
constexpr Q8_0PermuteBytes kQ8_0Permutes = q8_0_permute_bytes();

template <int NA>
QD_VBMI void dot_q8_0_vbmi(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                           float* out) {
  const __m512i perm_first = _mm512_load_si512(kQ8_0Permutes.first),
                perm_rest = _mm512_load_si512(kQ8_0Permutes.rest);
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i scale_words = _mm512_castsi128_si512(_mm_setr_epi16(0, 17, 34, 51, 0, 0, 0, 0)),
                scale_words_hi = _mm512_castsi128_si512(_mm_setr_epi16(4, 21, 38, 55, 0, 0, 0, 0));
  __m256 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const uint8_t* p = w + b * static_cast<int64_t>(sizeof(BlockQ8_0));
    const __m512i x0 = _mm512_loadu_si512(p), x64 = _mm512_loadu_si512(p + 64),
                  x128 = _mm512_loadu_si512(p + 128), x192 = _mm512_loadu_si512(p + 192);
    const __m512i lo03 = _mm512_xor_si512(_mm512_permutex2var_epi8(x0, perm_first, x64), flip),
                  hi03 = _mm512_xor_si512(
                      _mm512_permutex2var_epi8(_mm512_loadu_si512(p + 8), perm_rest,
                                               _mm512_loadu_si512(p + 72)),
                      flip),
                  lo47 = _mm512_xor_si512(_mm512_permutex2var_epi8(x128, perm_rest, x192), flip),
                  hi47 = _mm512_xor_si512(
                      _mm512_permutex2var_epi8(_mm512_loadu_si512(p + 144), perm_rest,
                                               _mm512_loadu_si512(p + 208)),
                      flip);
    // The fp16 scales (words 0, 17, .., 119): 4 from bytes 0-127, 4 from bytes 128-255.
    const __m256 dw = _mm256_cvtph_ps(_mm_unpacklo_epi64(
        _mm512_castsi512_si128(_mm512_permutex2var_epi16(x0, scale_words, x64)),
        _mm512_castsi512_si128(_mm512_permutex2var_epi16(x128, scale_words_hi, x192))));
    for (int i = 0; i < NA; ++i)
      acc[i] = group_row_fma<4>(lo03, hi03, lo47, hi47, dw,
                                reinterpret_cast<const ActQ8_0Group*>(act + i * stride)[b / 8],
                                order, acc[i]);
  }
  float tail[NA] = {};
  if (b < nb)
    dot_q8_0_grouped<NA>(w + b * static_cast<int64_t>(sizeof(BlockQ8_0)),
                         act + b / 8 * static_cast<int64_t>(sizeof(ActQ8_0Group)), stride, nb - b,
                         tail);
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]) + tail[i];
}

struct Q8_0VbmiRows {
  template <int NA>
  QD_VBMI static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_q8_0_vbmi<NA>(w, a, st, nb, o);
  }
};

// Q4_K and Q5_K on zmm (AVX-512 BW and VNNI): a 32-byte chunk of qs holds sub-block 2c in its
// low nibbles and 2c + 1 in its high ones, and the activations hold those 64 values in order, so
// the chunk broadcast to both halves and shifted by 0 / 4 (vpsrlvw) meets one 64-byte activation
// load: one vpdpbusd per row and chunk (nibbles unsigned, at most 4 x 31 x 128 per dword, so
// each dword is its own int16). One vpdpwssd then multiplies each dword by its sub-block's 6-bit
// scale (the dword's high word meets 0) into the super-block's int32 sum, exact as the oracle's.
// The mins enter through the bsums as in dot_qk.
// The constant vectors of dot_qk_zmm, loaded rather than built: a decode call covers a single
// row of 4-11 super-blocks, so building them (16 instructions) was a tenth of its work.
struct QkZmmConstants {
  // Words of the low half shift by 0 (low nibbles, qh bit 2c), of the high half by 4 (high
  // nibbles) or 1 (qh bit 2c + 1).
  alignas(64) uint16_t nibble_shift[32] = {}, qh_shift[32] = {};
  alignas(64) int32_t pick[4][16] = {};  // chunk c: dwords 0-7 sub-block 2c, 8-15 2c + 1
};
constexpr QkZmmConstants qk_zmm_constants() {
  QkZmmConstants k;
  for (int j = 16; j < 32; ++j) {
    k.nibble_shift[j] = 4;
    k.qh_shift[j] = 1;
  }
  for (int c = 0; c < 4; ++c)
    for (int j = 0; j < 16; ++j) k.pick[c][j] = j < 8 ? 2 * c : 2 * c + 1;
  return k;
}
constexpr QkZmmConstants kQkZmm = qk_zmm_constants();

template <int NA, typename Block, bool q5>
QD_TARGET void dot_qk_zmm(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                          float* out) {
  const auto* wb = reinterpret_cast<const Block*>(w);
  const __m512i low4 = _mm512_set1_epi8(0xF), one = _mm512_set1_epi8(1);
  const __m512i nibble_shift = _mm512_load_si512(kQkZmm.nibble_shift),
                qh_shift = _mm512_load_si512(kQkZmm.qh_shift);
  __m512i pick[4];
  for (int c = 0; c < 4; ++c) pick[c] = _mm512_load_si512(kQkZmm.pick[c]);
  __m512 acc[NA];
  __m256 macc[NA];
  for (int i = 0; i < NA; ++i) {
    acc[i] = _mm512_setzero_ps();
    macc[i] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i sm = k_scales_mins(wb[b]);
    const __m512i sc32 = _mm512_cvtepu8_epi32(sm);  // dwords 0-7 scales, 8-15 mins
    const __m256i mins2 = k_mins_per_bsum(sm);
    const __m128 d_dmin = k_d_dmin(wb[b]);
    __m512i isum[NA];
    for (int i = 0; i < NA; ++i) isum[i] = _mm512_setzero_si512();
    __m512i hbits = _mm512_setzero_si512();
    if constexpr (q5)
      hbits = _mm512_srlv_epi16(
          _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[b].qh))),
          qh_shift);
    for (int c = 0; c < 4; ++c) {
      const __m512i bytes = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[b].qs + 32 * c)));
      __m512i q = _mm512_and_si512(_mm512_srlv_epi16(bytes, nibble_shift), low4);
      if constexpr (q5) {
        q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(hbits, one), 4));
        hbits = _mm512_srli_epi16(hbits, 2);
      }
      const __m512i sc = _mm512_permutexvar_epi32(pick[c], sc32);
      for (int i = 0; i < NA; ++i) {
        const int8_t* aq = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b].qs + 64 * c;
        const __m512i dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(aq));
        isum[i] = _mm512_dpwssd_epi32(isum[i], dots, sc);
      }
    }
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      const __m128 scales = _mm_mul_ps(d_dmin, _mm_set1_ps(ab.d));  // d x ab.d, dmin x ab.d
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_broadcastss_ps(scales), acc[i]);
      macc[i] = k_mins_fma(ab, mins2, _mm256_broadcastss_ps(_mm_movehdup_ps(scales)), macc[i]);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = _mm512_reduce_add_ps(acc[i]) - hsum(macc[i]);
}

struct Q4_KZmmRows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_qk_zmm<NA, BlockQ4_K, false>(w, a, st, nb, o);
  }
};
struct Q5_KZmmRows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_qk_zmm<NA, BlockQ5_K, true>(w, a, st, nb, o);
  }
};

// Q6_K on zmm: the 64 ql bytes of a half super-block hold values 0-63 in their low nibbles and
// 64-127 in their high ones, in order, and qh byte l holds the top 2 bits of values l, l + 32,
// l + 64 and l + 96; the 32 qh bytes broadcast to both halves and shifted by 0 / 2 (values 0-63)
// or 4 / 6 (64-127) give them, so each 64 values are one 64-byte activation load and one
// vpdpbusd (6-bit unsigned values: at most 4 x 63 x 128 per dword, an int16). One vpdpwssd
// multiplies each dword by its sub-block's int8 scale, zero-extended from int16 so the dword's
// high word meets 0; the -32 offset comes out through the bsums as in dot_q6_k.
template <int NA>
QD_TARGET void dot_q6_k_zmm(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                            float* out) {
  const auto* wb = reinterpret_cast<const BlockQ6_K*>(w);
  const __m512i low4 = _mm512_set1_epi8(0xF), two_bits = _mm512_set1_epi8(3);
  // Words of the low half shift by 0 / 4, of the high half by 2 / 6 (constants: one load each).
  constexpr int64_t k0 = 0, k2 = 0x0002000200020002, k4 = 0x0004000400040004,
                    k6 = 0x0006000600060006;
  const __m512i shift_lo = _mm512_set_epi64(k2, k2, k2, k2, k0, k0, k0, k0),
                shift_hi = _mm512_set_epi64(k6, k6, k6, k6, k4, k4, k4, k4);
  __m512i pick[4];  // chunk c (64 values): dwords 4s..4s+3 take the scale of sub-block 4c + s
  for (int c = 0; c < 4; ++c)
    pick[c] = _mm512_setr_epi32(4 * c, 4 * c, 4 * c, 4 * c, 4 * c + 1, 4 * c + 1, 4 * c + 1,
                                4 * c + 1, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 3,
                                4 * c + 3, 4 * c + 3, 4 * c + 3);
  __m512 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ6_K& blk = wb[b];
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales)));
    const __m512i sc32 = _mm512_cvtepu16_epi32(sc16);  // int16 scale, high word 0
    __m512i isum[NA];
    for (int i = 0; i < NA; ++i) {
      // -32 x sum over sub-blocks of sc x bsum, in the low 8 dwords.
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.bsums));
      isum[i] = _mm512_zextsi256_si512(_mm256_sub_epi32(
          _mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5)));
    }
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(blk.ql + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * h)));
      const __m512i q_lo = _mm512_or_si512(
          _mm512_and_si512(ql, low4),
          _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift_lo), two_bits), 4));
      const __m512i q_hi = _mm512_or_si512(
          _mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
          _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift_hi), two_bits), 4));
      const __m512i sc_lo = _mm512_permutexvar_epi32(pick[2 * h], sc32),
                    sc_hi = _mm512_permutexvar_epi32(pick[2 * h + 1], sc32);
      for (int i = 0; i < NA; ++i) {
        const int8_t* aq = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b].qs + 128 * h;
        isum[i] = _mm512_dpwssd_epi32(
            isum[i], _mm512_dpbusd_epi32(_mm512_setzero_si512(), q_lo, _mm512_loadu_si512(aq)),
            sc_lo);
        isum[i] = _mm512_dpwssd_epi32(
            isum[i], _mm512_dpbusd_epi32(_mm512_setzero_si512(), q_hi, _mm512_loadu_si512(aq + 64)),
            sc_hi);
      }
    }
    const float d = fp16(blk.d);
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_set1_ps(ab.d * d), acc[i]);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

struct Q6_KZmmRows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_q6_k_zmm<NA>(w, a, st, nb, o);
  }
};

#pragma GCC diagnostic pop

// The AVX-512 table: the shared kernels (quant_dot_simd.h) with the zmm k-quant kernels (Q4_K,
// Q5_K, Q6_K), and with the VBMI Q4_0 and Q8_0 kernels on CPUs that have it (Ice Lake, Zen 4 and
// later).
QuantDotTable avx512_table(bool vbmi) {
  QuantDotTable t = kTable;
  t.q4_k = by_rows<Q4_KZmmRows>;
  t.q5_k = by_rows<Q5_KZmmRows>;
  t.q6_k = by_rows<Q6_KZmmRows>;
  if (vbmi) {
    t.q4_0 = by_rows<Q4_0VbmiRows>;
    t.q8_0 = by_rows<Q8_0VbmiRows>;
  }
  return t;
}

}  // namespace moe::quant_avx512

namespace moe {
const QuantDotTable* quant_dot_avx512_table() {
  static const QuantDotTable table = quant_avx512::avx512_table(cpu_features().avx512_vbmi);
  return &table;
}
}  // namespace moe

#else

namespace moe {
const QuantDotTable* quant_dot_avx512_table() {
  return nullptr;
}
}  // namespace moe

#endif
