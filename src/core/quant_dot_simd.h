// The bodies of the SIMD int8 kernels (quant_dot.h), written once on ymm registers and compiled
// twice: quant_dot_avx2.cpp and quant_dot_avx512.cpp define, before including this file,
//   QD_TARGET  the function target attribute of every function here,
//   QD_NS      the namespace that keeps the two copies apart,
//   dp_u8s8    acc + the sums of each 4 products of unsigned x signed bytes (int32 lanes):
//              vpmaddubsw + vpmaddwd on AVX2 (the int16 pair sums cannot saturate: unsigned
//              operands are at most 128 and activations are within +-127), vpdpbusd on VNNI;
//   kDpWideUnsigned  whether dp_u8s8 is exact for unsigned operands up to 255 (VNNI), not only
//              up to 128 (AVX2);
//   dp_s16     acc + the sums of each 2 products of int16 lanes: vpmaddwd + vpaddd on AVX2,
//              vpdpwssd on VNNI (applies a sub-block's scale to its int16 pair sums).
// Every kernel forms each block's integer sums exactly as the scalar oracle does; the float
// scaling then runs in 8 lanes per activation row, summed across lanes at the end.
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <utility>

#include "moe/safetensors.h"

namespace moe::QD_NS {

QD_TARGET inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

QD_TARGET inline float fp16(uint16_t h) {
  return _cvtsh_ss(h);
}

// Signed x signed bytes through the unsigned x signed product: |w| x (a with w's sign).
QD_TARGET inline __m256i dp_s8s8(__m256i acc, __m256i w, __m256i a) {
  return dp_u8s8(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

#define QD_INLINE QD_TARGET inline __attribute__((always_inline))

// Independent accumulators per activation row, so the fp32 add latency of one block's term does
// not serialize the loop over 32-value blocks (one row: 4 chains, 2 rows: 2 each).
constexpr int chains_for(int na) {
  return na == 1 ? 4 : na == 2 ? 2 : 1;
}

// One 32-value block against row i: acc += dw * da * sum(w a), w given as |w| and itself.
QD_INLINE void block_q8(__m256& acc, __m256i wabs, __m256i wq, float dw, const BlockQ8_0& ab) {
  const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
  const __m256i s = dp_u8s8(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(aq, wq));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw * fp16(ab.d)), acc);
}

QD_INLINE __m256i load_block(const BlockQ8_0& b) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
}
QD_INLINE float block_scale(const BlockQ8_0& b) {
  return fp16(b.d);
}

// An MXFP4 block's 32 values as int8: the nibbles (values 0-15 low, 16-31 high) index the
// doubled E2M1 table through vpshufb, in both 128-bit lanes.
QD_INLINE __m256i load_block(const BlockMXFP4& b) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
  const __m256i idx =
      _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(0xF));
  const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kMxfp4Values));
  return _mm256_shuffle_epi8(_mm256_set_m128i(table, table), idx);
}
QD_INLINE float block_scale(const BlockMXFP4& b) {
  return e8m0_half_to_float(b.e);
}

// A Q4_0 block's nibbles unsigned (0-15), values 0-15 in the low half of the ymm and 16-31 in
// the high half: the products with activations are exact in vpdpbusd / vpmaddubsw, and the
// regrouped activations' sum8 takes the offset of 8 back out.
QD_INLINE __m256i load_nibbles(const BlockQ4_0& b) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(0xF));
}

// Block u of a regrouped activation group, values 0-15 | 16-31 as one ymm.
QD_INLINE __m256i load_grouped(const ActQ8_0Group& g, int u) {
  return _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g.qs[u / 4][1][u % 4])),
                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(g.qs[u / 4][0][u % 4])));
}

// Per-lane sums of 8 int32 vectors, one vector per block, as one vector in block order: a
// transposing add tree (unpack, 64-bit unpack, 128-bit halves) of single-uop steps.
QD_INLINE __m256i pair_sums(__m256i x, __m256i y) {  // lanes x y x y per half
  return _mm256_add_epi32(_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y));
}
QD_INLINE __m256i quad_sums(__m256i xy, __m256i zw) {  // lanes x y z w per half
  return _mm256_add_epi32(_mm256_unpacklo_epi64(xy, zw), _mm256_unpackhi_epi64(xy, zw));
}
QD_INLINE __m256i octet_sums(__m256i lo, __m256i hi) {
  return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20),
                          _mm256_permute2x128_si256(lo, hi, 0x31));
}

// The fp16 scales of 8 consecutive blocks as fp32 lanes.
template <typename Block>
QD_INLINE __m256 scales8(const Block* b) {
  return _mm256_cvtph_ps(_mm_setr_epi16(
      static_cast<int16_t>(b[0].d), static_cast<int16_t>(b[1].d), static_cast<int16_t>(b[2].d),
      static_cast<int16_t>(b[3].d), static_cast<int16_t>(b[4].d), static_cast<int16_t>(b[5].d),
      static_cast<int16_t>(b[6].d), static_cast<int16_t>(b[7].d)));
}

QD_INLINE int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// Q4_0 against regrouped activations (ActQ8_0Group), 8 blocks at a time: each block's unsigned
// nibbles are unpacked once for every activation row; per row, the 8 exact block integers are
// gathered into one vector by the transposing add tree (per 4 blocks, so 8 rows fit the
// registers), less sum8, converted once and scaled by a vector of dw x da.
template <int NA>
QD_TARGET void dot_q4_0_grouped(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                                float* out) {
  const auto* wb = reinterpret_cast<const BlockQ4_0*>(w);
  const auto group = [&](int i, int64_t g) -> const ActQ8_0Group& {
    return reinterpret_cast<const ActQ8_0Group*>(act + i * stride)[g];
  };
  __m256 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const int64_t g = b / 8;
    __m256i quad[NA][2];
    for (int h = 0; h < 2; ++h) {
      __m256i q[4];
      for (int u = 0; u < 4; ++u) q[u] = load_nibbles(wb[b + 4 * h + u]);
      for (int i = 0; i < NA; ++i) {
        __m256i s[4];
        for (int u = 0; u < 4; ++u)
          s[u] = dp_u8s8(_mm256_setzero_si256(), q[u], load_grouped(group(i, g), 4 * h + u));
        quad[i][h] = quad_sums(pair_sums(s[0], s[1]), pair_sums(s[2], s[3]));
      }
    }
    const __m256 dw = scales8(wb + b);
    for (int i = 0; i < NA; ++i) {
      const ActQ8_0Group& ga = group(i, g);
      const __m256i ints =
          _mm256_sub_epi32(octet_sums(quad[i][0], quad[i][1]),
                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ga.sum8)));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), _mm256_mul_ps(dw, _mm256_loadu_ps(ga.d)),
                               acc[i]);
    }
  }
  float tail[NA] = {};
  for (; b < nb; ++b) {
    const __m256i q = load_nibbles(wb[b]);
    const float dw = fp16(wb[b].d);
    const int u = static_cast<int>(b % 8);
    for (int i = 0; i < NA; ++i) {
      const ActQ8_0Group& ga = group(i, b / 8);
      const int isum =
          hsum_epi32(dp_u8s8(_mm256_setzero_si256(), q, load_grouped(ga, u))) - ga.sum8[u];
      tail[i] += dw * ga.d[u] * static_cast<float>(isum);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]) + tail[i];
}

// 16 values of Q8_0 weight blocks b and b + 1 side by side (values 0-15, or 16-31 with half 1):
// the order of 32 bytes of a regrouped activation group, qs[h][half][2p .. 2p + 1].
QD_INLINE __m256i load_q8_0_halves(const BlockQ8_0* wb, int half) {
  return _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[1].qs + 16 * half)),
                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[0].qs + 16 * half)));
}

// Q8_0 against regrouped activations (ActQ8_0Group), 8 blocks at a time. Per 4 blocks the weights
// are gathered into the activations' order once for every row (4 ymm: values 0-15 and 16-31 of
// two blocks each); per row, 4 products whose 128-bit lanes each hold one block, and the add
// tree leaves the 8 exact block integers in one vector. With VNNI the weights are offset to
// unsigned (w + 128) and 16 sum8 = 128 sum a is taken out; on AVX2 (int16 pair sums) the product
// is |w| x (a with w's sign).
template <int NA>
QD_TARGET void dot_q8_0_grouped(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                                float* out) {
  const auto* wb = reinterpret_cast<const BlockQ8_0*>(w);
  const auto group = [&](int i, int64_t g) -> const ActQ8_0Group& {
    return reinterpret_cast<const ActQ8_0Group*>(act + i * stride)[g];
  };
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  // Lanes [0 2 4 6 | 1 3 5 7] after the add tree back into block order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const int64_t g = b / 8;
    __m256i pair[NA][2];
    for (int h = 0; h < 2; ++h) {
      __m256i wq[2][2], wu[2][2];  // [values 0-15 | 16-31][blocks 4h, 4h+1 | 4h+2, 4h+3]
      for (int half = 0; half < 2; ++half)
        for (int p = 0; p < 2; ++p) {
          wq[half][p] = load_q8_0_halves(wb + b + 4 * h + 2 * p, half);
          wu[half][p] = kDpWideUnsigned ? _mm256_xor_si256(wq[half][p], flip)
                                        : _mm256_sign_epi8(wq[half][p], wq[half][p]);
        }
      for (int i = 0; i < NA; ++i) {
        const ActQ8_0Group& ga = group(i, g);
        __m256i s[2];
        for (int p = 0; p < 2; ++p) {
          s[p] = _mm256_setzero_si256();
          for (int half = 0; half < 2; ++half) {
            __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ga.qs[h][half][2 * p]));
            if (!kDpWideUnsigned) a = _mm256_sign_epi8(a, wq[half][p]);
            s[p] = dp_u8s8(s[p], wu[half][p], a);
          }
        }
        pair[i][h] = pair_sums(s[0], s[1]);
      }
    }
    const __m256 dw = scales8(wb + b);
    for (int i = 0; i < NA; ++i) {
      const ActQ8_0Group& ga = group(i, g);
      __m256i ints = _mm256_permutevar8x32_epi32(quad_sums(pair[i][0], pair[i][1]), order);
      if (kDpWideUnsigned)
        ints = _mm256_sub_epi32(
            ints,
            _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ga.sum8)), 4));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), _mm256_mul_ps(dw, _mm256_loadu_ps(ga.d)),
                               acc[i]);
    }
  }
  float tail[NA] = {};
  for (; b < nb; ++b) {
    const __m256i q = load_block(wb[b]);
    const float dw = fp16(wb[b].d);
    const int u = static_cast<int>(b % 8);
    for (int i = 0; i < NA; ++i) {
      const ActQ8_0Group& ga = group(i, b / 8);
      tail[i] +=
          dw * ga.d[u] *
          static_cast<float>(hsum_epi32(dp_s8s8(_mm256_setzero_si256(), q, load_grouped(ga, u))));
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]) + tail[i];
}

template <int NA, typename Block>
QD_TARGET void dot_q32(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                       float* out) {
  constexpr int C = chains_for(NA);
  const auto* wb = reinterpret_cast<const Block*>(w);
  __m256 acc[NA][C];
  for (int i = 0; i < NA; ++i)
    for (int u = 0; u < C; ++u) acc[i][u] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + C <= nb; b += C) {
#pragma GCC unroll 4
    for (int u = 0; u < C; ++u) {
      const __m256i wq = load_block(wb[b + u]);
      const __m256i wabs = _mm256_sign_epi8(wq, wq);
      const float dw = block_scale(wb[b + u]);
#pragma GCC unroll 4
      for (int i = 0; i < NA; ++i)
        block_q8(acc[i][u], wabs, wq, dw,
                 reinterpret_cast<const BlockQ8_0*>(act + i * stride)[b + u]);
    }
  }
  for (; b < nb; ++b) {
    const __m256i wq = load_block(wb[b]);
    const __m256i wabs = _mm256_sign_epi8(wq, wq);
    const float dw = block_scale(wb[b]);
    for (int i = 0; i < NA; ++i)
      block_q8(acc[i][0], wabs, wq, dw, reinterpret_cast<const BlockQ8_0*>(act + i * stride)[b]);
  }
  for (int i = 0; i < NA; ++i) {
    __m256 s = acc[i][0];
    for (int u = 1; u < C; ++u) s = _mm256_add_ps(s, acc[i][u]);
    out[i] = hsum(s);
  }
}

// The int16 scale of sub-block s (of 8 int16 in each 128-bit half) in every int16 lane.
QD_INLINE __m256i pick_word(__m256i words, int lo_word, int hi_word) {
  const __m256i sel =
      _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(0x0100 + 0x0202 * hi_word)),
                       _mm_set1_epi16(static_cast<int16_t>(0x0100 + 0x0202 * lo_word)));
  return _mm256_shuffle_epi8(words, sel);
}

// A Q4_K / Q5_K super-block's 8 six-bit scales in bytes 0-7 and 8 mins in bytes 8-15, from their
// 12 packed bytes (the layout of unpack_k_scales): bytes 0-3 hold scales 0-3 and the top 2 bits
// of scales 4-7, bytes 4-7 mins 0-3 and the top 2 bits of mins 4-7, bytes 8-11 the low 4 bits of
// scales 4-7 (low nibbles) and mins 4-7 (high nibbles). Two byte shuffles and masks, no general
// register work: the 16-byte load reads 4 bytes past the 12, which lie in the same block (qh or
// qs follow the scales in both block types; checked at compile time).
template <typename Block>
QD_INLINE __m128i k_scales_mins(const Block& b) {
  static_assert(offsetof(Block, scales) + sizeof(__m128i) <= sizeof(Block));
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
  // Per output byte: its low bits' source (the 6-bit fields or the nibbles) ...
  const __m128i low =
      _mm_shuffle_epi8(x, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  // ... and the byte whose top 2 bits are its bits 4-5 (scales and mins 4-7 only).
  const __m128i top =
      _mm_shuffle_epi8(x, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  const __m128i lo6_lo4 = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
  const __m128i hi4 = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
  // 16-bit shifts: bits crossing from the neighbouring byte are masked off.
  const __m128i v =
      _mm_or_si128(_mm_and_si128(low, lo6_lo4), _mm_and_si128(_mm_srli_epi16(low, 4), hi4));
  return _mm_or_si128(v, _mm_and_si128(_mm_srli_epi16(top, 2), _mm_set1_epi8(0x30)));
}

// The 8 mins of k_scales_mins as int16, each twice: one per bsum (a Q8_K block has 2 bsums of
// 16 values per sub-block of 32), for a vpmaddwd with the 16 bsums.
QD_INLINE __m256i k_mins_per_bsum(__m128i scales_mins) {
  const __m128i m16 = _mm_cvtepu8_epi16(_mm_srli_si128(scales_mins, 8));
  return _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16));
}

// The mins' share of one super-block (min x bsum over the 16 bsums) accumulated into macc:
// macc + (sum of min x bsum) x the activation scale x dmin, in 8 lanes.
// dmin_scale: ab.d x the super-block's dmin in every lane.
QD_INLINE __m256 k_mins_fma(const BlockQ8_K& ab, __m256i mins2, __m256 dmin_scale, __m256 macc) {
  const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.bsums));
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins2)), dmin_scale, macc);
}

// A Q4_K / Q5_K super-block's fp16 d and dmin (adjacent in both) as fp32 in lanes 0 and 1, by
// one load and one conversion; times an activation block's scale they give both fp32 factors.
template <typename Block>
QD_INLINE __m128 k_d_dmin(const Block& b) {
  static_assert(offsetof(Block, dmin) == offsetof(Block, d) + sizeof(uint16_t));
  int32_t both;
  std::memcpy(&both, reinterpret_cast<const uint8_t*>(&b) + offsetof(Block, d), sizeof(both));
  return _mm_cvtph_ps(_mm_cvtsi32_si128(both));
}

// Q4_K and Q5_K: per 64 values, the low nibbles (plus qh bit 2c) are sub-block 2c and the high
// nibbles (plus qh bit 2c + 1) sub-block 2c + 1. Byte products go to int16 pairs (vpmaddubsw:
// at most 2 x 31 x 127, no saturation), which the sub-block's 6-bit scale multiplies into int32
// (dp_s16); the mins enter through the activations' bsums. All of a super-block's integers are
// exact before its one fp32 scaling.
template <int NA, typename Block, bool q5>
QD_TARGET void dot_qk(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                      float* out) {
  const auto* wb = reinterpret_cast<const Block*>(w);
  const __m256i low4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
  __m256 acc[NA], macc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = macc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i sm = k_scales_mins(wb[b]);
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    const __m256i mins2 = k_mins_per_bsum(sm);
    const __m128 d_dmin = k_d_dmin(wb[b]);
    __m256i isum[NA];
    for (int i = 0; i < NA; ++i) isum[i] = _mm256_setzero_si256();
    __m256i hbits = _mm256_setzero_si256();
    if constexpr (q5) hbits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[b].qh));
    for (int c = 0; c < 4; ++c) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[b].qs + 32 * c));
      __m256i lo = _mm256_and_si256(bytes, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      if constexpr (q5) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hbits, one), 4));
        hi = _mm256_or_si256(
            hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 1), one), 4));
        hbits = _mm256_srli_epi16(hbits, 2);
      }
      const __m256i sc_lo = pick_word(sc16, 2 * c, 2 * c),
                    sc_hi = pick_word(sc16, 2 * c + 1, 2 * c + 1);
      for (int i = 0; i < NA; ++i) {
        const int8_t* aq = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b].qs + 64 * c;
        const __m256i a_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq));
        const __m256i a_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + 32));
        isum[i] = dp_s16(isum[i], _mm256_maddubs_epi16(lo, a_lo), sc_lo);
        isum[i] = dp_s16(isum[i], _mm256_maddubs_epi16(hi, a_hi), sc_hi);
      }
    }
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      const __m128 scales = _mm_mul_ps(d_dmin, _mm_set1_ps(ab.d));  // d x ab.d, dmin x ab.d
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_broadcastss_ps(scales), acc[i]);
      macc[i] = k_mins_fma(ab, mins2, _mm256_broadcastss_ps(_mm_movehdup_ps(scales)), macc[i]);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]) - hsum(macc[i]);
}

// Q6_K: 6-bit values 0-63 from a nibble of ql and 2 bits of qh; one int8 scale per 16 values,
// so a 32-value chunk carries two scales (the ymm halves); the -32 offset is taken out with the
// bsums (sum of sc x bsum) before the block's integer is scaled.
template <int NA>
QD_TARGET void dot_q6_k(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                        float* out) {
  const auto* wb = reinterpret_cast<const BlockQ6_K*>(w);
  const __m256i low4 = _mm256_set1_epi8(0xF), two_bits = _mm256_set1_epi8(3);
  __m256 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ6_K& blk = wb[b];
    const float d = fp16(blk.d);
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales));
    __m256i isum[NA];
    for (int i = 0; i < NA; ++i) {
      // -32 x sum over sub-blocks of sc x bsum.
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.bsums));
      isum[i] =
          _mm256_sub_epi32(_mm256_setzero_si256(),
                           _mm256_slli_epi32(_mm256_madd_epi16(bs, _mm256_cvtepi8_epi16(sc8)), 5));
    }
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h));
      const __m256i ql1 =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * h));
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, two_bits), 4));
      q[1] = _mm256_or_si256(
          _mm256_and_si256(ql1, low4),
          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two_bits), 4));
      q[2] = _mm256_or_si256(
          _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two_bits), 4));
      q[3] = _mm256_or_si256(
          _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two_bits), 4));
      // The 8 scales of this half as int16, in both 128-bit halves.
      const __m256i sc16 = _mm256_broadcastsi128_si256(
          _mm_cvtepi8_epi16(h == 0 ? sc8 : _mm_unpackhi_epi64(sc8, sc8)));
      for (int t = 0; t < 4; ++t) {
        const __m256i scv = pick_word(sc16, 2 * t, 2 * t + 1);
        for (int i = 0; i < NA; ++i) {
          const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
          const __m256i aq =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs + 128 * h + 32 * t));
          isum[i] = dp_s16(isum[i], _mm256_maddubs_epi16(q[t], aq), scv);
        }
      }
    }
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_set1_ps(ab.d * d), acc[i]);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]);
}

QD_INLINE float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// 4 x 8 int32 (values in int8 range) to 32 int8 in order.
QD_INLINE __m256i pack_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  // packs works per 128-bit half: bytes come out as 4-value groups in the order 0 2 4 6 1 3 5 7.
  return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd),
                                     _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// The Q8_0 rules of quantize_q8_0 (quant_dot.cpp) in 8 lanes: the same fp32 products, and
// roundf's half away from zero as trunc(|v|) + (fraction >= 0.5) with the sign put back.
QD_TARGET void quant_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1);
  const __m256 lim = _mm256_set1_ps(127), zero = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, x += kQK) {
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(x + 8 * k);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
    }
    const float d = hmax(amax) / 127;
    const float id = d != 0 ? 1 / d : 0;
    y[b].d = float_to_f16(d);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 s = _mm256_mul_ps(v[k], _mm256_set1_ps(id));
      const __m256 a = _mm256_andnot_ps(sign, s);
      const __m256 t = _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, t), half, _CMP_GE_OQ), one);
      const __m256 r = _mm256_or_ps(_mm256_add_ps(t, up), _mm256_and_ps(s, sign));
      // The scalar rule's clamp (min with r first: a NaN of 0 x inf becomes 127, as fmin does).
      q[k] = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(r, lim), _mm256_sub_ps(zero, lim)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), pack_i8(q[0], q[1], q[2], q[3]));
  }
}

// The Q8_K rules of quantize_q8_k: the first value of the largest magnitude sets the scale;
// rounding half to even (the default rounding mode), clamped at 127.
QD_TARGET void quant_q8_k(const float* x, BlockQ8_K* y, int64_t nb) {
  const __m256 sign = _mm256_set1_ps(-0.0f), top = _mm256_set1_ps(127);
  for (int64_t b = 0; b < nb; ++b, x += kQKK) {
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < kQKK / 8; ++k)
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
    const float am = hmax(amax);
    if (am == 0) {
      y[b] = BlockQ8_K{};
      continue;
    }
    int first = 0;
    while (std::fabs(x[first]) != am) ++first;
    const float iscale = -127.f / x[first];
    const __m256 vs = _mm256_set1_ps(iscale);
    for (int k = 0; k < kQKK / 32; ++k) {
      __m256i q[4];
      for (int j = 0; j < 4; ++j) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 32 * k + 8 * j), vs);
        const __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q[j] = _mm256_cvtps_epi32(_mm256_min_ps(r, top));
      }
      const __m256i packed = pack_i8(q[0], q[1], q[2], q[3]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs + 32 * k), packed);
      // Sums of each 16: int16 pair sums, then pairs to int32, then within each 128-bit half.
      const __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), packed),
                                            _mm256_set1_epi16(1));
      const __m256i s64 = _mm256_add_epi32(s32, _mm256_shuffle_epi32(s32, 0x4E));
      const __m256i s128 = _mm256_add_epi32(s64, _mm256_shuffle_epi32(s64, 0xB1));
      y[b].bsums[2 * k] = static_cast<int16_t>(_mm256_extract_epi32(s128, 0));
      y[b].bsums[2 * k + 1] = static_cast<int16_t>(_mm256_extract_epi32(s128, 4));
    }
    y[b].d = 1 / iscale;
  }
}

// The kernels of one weight type as a family over the number of activation rows.
struct Q8_0Rows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_q8_0_grouped<NA>(w, a, st, nb, o);
  }
};
struct MXFP4Rows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_q32<NA, BlockMXFP4>(w, a, st, nb, o);
  }
};
struct Q4_0Rows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_q4_0_grouped<NA>(w, a, st, nb, o);
  }
};
struct Q4_KRows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_qk<NA, BlockQ4_K, false>(w, a, st, nb, o);
  }
};
struct Q5_KRows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_qk<NA, BlockQ5_K, true>(w, a, st, nb, o);
  }
};
struct Q6_KRows {
  template <int NA>
  QD_TARGET static void run(const uint8_t* w, const uint8_t* a, int64_t st, int64_t nb, float* o) {
    dot_q6_k<NA>(w, a, st, nb, o);
  }
};

// Dispatch on the number of activation rows (1..kMaxDotRows), so each count has its registers
// unrolled.
template <typename Family, int... N>
QD_TARGET void dispatch_rows(std::integer_sequence<int, N...>, const uint8_t* w, const uint8_t* act,
                             int64_t stride, int nact, int64_t nb, float* out) {
  (void)((nact == N + 1 ? (Family::template run<N + 1>(w, act, stride, nb, out), true) : false) ||
         ...);
}

template <typename Family>
QD_TARGET void by_rows(const uint8_t* w, const uint8_t* act, int64_t stride, int nact, int64_t nb,
                       float* out) {
  dispatch_rows<Family>(std::make_integer_sequence<int, kMaxDotRows>{}, w, act, stride, nact, nb,
                        out);
}

const QuantDotTable kTable = {
    by_rows<Q8_0Rows>, by_rows<Q4_0Rows>, by_rows<Q4_KRows>, by_rows<Q5_KRows>,
    by_rows<Q6_KRows>, quant_q8_0,        quant_q8_k,        by_rows<MXFP4Rows>,
};

}  // namespace moe::QD_NS
