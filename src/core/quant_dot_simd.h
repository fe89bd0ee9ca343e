// The bodies of the SIMD int8 kernels (quant_dot.h), written once on ymm registers and compiled
// twice: quant_dot_avx2.cpp and quant_dot_avx512.cpp define, before including this file,
//   QD_TARGET  the function target attribute of every function here,
//   QD_NS      the namespace that keeps the two copies apart,
//   dp_u8s8    acc + the sums of each 4 products of unsigned x signed bytes (int32 lanes):
//              vpmaddubsw + vpmaddwd on AVX2 (the int16 pair sums cannot saturate: unsigned
//              operands are at most 128 and activations are within +-127), vpdpbusd on VNNI.
// Every kernel forms each block's integer sums exactly as the scalar oracle does; the float
// scaling then runs in 8 lanes per activation row, summed across lanes at the end.
#include <immintrin.h>

#include <cstring>

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

template <int NA>
QD_TARGET void dot_q8_0(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                        float* out) {
  const auto* wb = reinterpret_cast<const BlockQ8_0*>(w);
  __m256 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[b].qs));
    const __m256i wabs = _mm256_sign_epi8(wq, wq);
    const float dw = fp16(wb[b].d);
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_0*>(act + i * stride)[b];
      const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
      const __m256i s = dp_u8s8(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(aq, wq));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw * fp16(ab.d)), acc[i]);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]);
}

template <int NA>
QD_TARGET void dot_q4_0(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                        float* out) {
  const auto* wb = reinterpret_cast<const BlockQ4_0*>(w);
  const __m256i low4 = _mm256_set1_epi8(0xF), eight = _mm256_set1_epi8(8);
  __m256 acc[NA];
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    // Low nibbles are values 0-15, high nibbles 16-31: the two halves of the ymm.
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[b].qs));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
    const __m256i wq = _mm256_sub_epi8(_mm256_and_si256(both, low4), eight);
    const __m256i wabs = _mm256_sign_epi8(wq, wq);
    const float dw = fp16(wb[b].d);
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_0*>(act + i * stride)[b];
      const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
      const __m256i s = dp_u8s8(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(aq, wq));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw * fp16(ab.d)), acc[i]);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]);
}

// Q4_K and Q5_K: per 64 values, the low nibbles (plus qh bit 2c) are sub-block 2c and the high
// nibbles (plus qh bit 2c + 1) sub-block 2c + 1; each sub-block's sum is scaled by its 6-bit
// scale in int32 (exact), the mins enter through the activations' bsums.
template <int NA, typename Block, bool q5>
QD_TARGET void dot_qk(const uint8_t* w, const uint8_t* act, int64_t stride, int64_t nb,
                      float* out) {
  const auto* wb = reinterpret_cast<const Block*>(w);
  const __m256i low4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
  __m256 acc[NA];
  float mins[NA] = {};
  for (int i = 0; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t sc[8], m[8];
    unpack_k_scales(wb[b].scales, sc, m);
    const float d = fp16(wb[b].d), dmin = fp16(wb[b].dmin);
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
      const __m256i sc_lo = _mm256_set1_epi32(sc[2 * c]), sc_hi = _mm256_set1_epi32(sc[2 * c + 1]);
      for (int i = 0; i < NA; ++i) {
        const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
        const int8_t* aq = ab.qs + 64 * c;
        const __m256i a_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq));
        const __m256i a_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + 32));
        const __m256i p_lo = dp_u8s8(_mm256_setzero_si256(), lo, a_lo);
        const __m256i p_hi = dp_u8s8(_mm256_setzero_si256(), hi, a_hi);
        isum[i] = _mm256_add_epi32(isum[i], _mm256_mullo_epi32(p_lo, sc_lo));
        isum[i] = _mm256_add_epi32(isum[i], _mm256_mullo_epi32(p_hi, sc_hi));
      }
    }
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      int msum = 0;
      for (int s = 0; s < 8; ++s) msum += m[s] * (ab.bsums[2 * s] + ab.bsums[2 * s + 1]);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_set1_ps(ab.d * d), acc[i]);
      mins[i] += ab.d * dmin * static_cast<float>(msum);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]) - mins[i];
}

// Q6_K: 6-bit values 0-63 from a nibble of ql and 2 bits of qh; one int8 scale per 16 values,
// so a 32-value product vector carries two scales (lanes 0-3 and 4-7); the -32 offset is taken
// out with the bsums.
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
    __m256i isum[NA];
    for (int i = 0; i < NA; ++i) isum[i] = _mm256_setzero_si256();
    // Per activation row: sum_s sc_s * bsum_s, for the offset.
    int offset[NA] = {};
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      for (int s = 0; s < 16; ++s) offset[i] += blk.scales[s] * ab.bsums[s];
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
      const int8_t* sc = blk.scales + 8 * h;
      for (int t = 0; t < 4; ++t) {
        const __m256i scv =
            _mm256_set_m128i(_mm_set1_epi32(sc[2 * t + 1]), _mm_set1_epi32(sc[2 * t]));
        for (int i = 0; i < NA; ++i) {
          const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
          const __m256i aq =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs + 128 * h + 32 * t));
          const __m256i p = dp_u8s8(_mm256_setzero_si256(), q[t], aq);
          isum[i] = _mm256_add_epi32(isum[i], _mm256_mullo_epi32(p, scv));
        }
      }
    }
    for (int i = 0; i < NA; ++i) {
      const auto& ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride)[b];
      // The offset (an int of the same exact sum) goes into lane 0 so the block's integer is
      // whole before it is scaled.
      const __m256i total =
          _mm256_sub_epi32(isum[i], _mm256_setr_epi32(32 * offset[i], 0, 0, 0, 0, 0, 0, 0));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(ab.d * d), acc[i]);
    }
  }
  for (int i = 0; i < NA; ++i) out[i] = hsum(acc[i]);
}

// Dispatch on the number of activation rows, so each count has its registers unrolled.
template <void (*K1)(const uint8_t*, const uint8_t*, int64_t, int64_t, float*),
          void (*K2)(const uint8_t*, const uint8_t*, int64_t, int64_t, float*),
          void (*K3)(const uint8_t*, const uint8_t*, int64_t, int64_t, float*),
          void (*K4)(const uint8_t*, const uint8_t*, int64_t, int64_t, float*)>
QD_TARGET void by_rows(const uint8_t* w, const uint8_t* act, int64_t stride, int nact, int64_t nb,
                       float* out) {
  switch (nact) {
    case 1:
      return K1(w, act, stride, nb, out);
    case 2:
      return K2(w, act, stride, nb, out);
    case 3:
      return K3(w, act, stride, nb, out);
    default:
      return K4(w, act, stride, nb, out);
  }
}

const QuantDotTable kTable = {
    by_rows<dot_q8_0<1>, dot_q8_0<2>, dot_q8_0<3>, dot_q8_0<4>>,
    by_rows<dot_q4_0<1>, dot_q4_0<2>, dot_q4_0<3>, dot_q4_0<4>>,
    by_rows<dot_qk<1, BlockQ4_K, false>, dot_qk<2, BlockQ4_K, false>, dot_qk<3, BlockQ4_K, false>,
            dot_qk<4, BlockQ4_K, false>>,
    by_rows<dot_qk<1, BlockQ5_K, true>, dot_qk<2, BlockQ5_K, true>, dot_qk<3, BlockQ5_K, true>,
            dot_qk<4, BlockQ5_K, true>>,
    by_rows<dot_q6_k<1>, dot_q6_k<2>, dot_q6_k<3>, dot_q6_k<4>>,
};

}  // namespace moe::QD_NS
