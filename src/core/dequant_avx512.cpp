// AVX-512 decoders of the GGUF block types (see dequant_avx512.h): 16 values per zmm, levels
// widened from bytes to int32, converted, scaled. Block layouts as in include/moe/quant.h.
#include "core/dequant_avx512.h"

#include "moe/cpu_features.h"
#include "moe/safetensors.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_HAVE_AVX512_DEQUANT 1
#endif

namespace moe {

#ifdef MOE_HAVE_AVX512_DEQUANT

bool dequant_avx512_usable() {
  const CpuFeatures& f = cpu_features();
  return f.avx512f && f.os_zmm;
}

namespace {

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wmaybe-uninitialized
// reports once inlined into a target("...") function: a false positive.
#pragma GCC diagnostic push
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#define MOE_TARGET_AVX512 __attribute__((target("avx512f")))

// 16 unsigned bytes at p widened to int32 lanes.
MOE_TARGET_AVX512 inline __m512i load_u8x16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
MOE_TARGET_AVX512 inline __m512i load_i8x16(const int8_t* p) {
  return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

MOE_TARGET_AVX512 void q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m512 d = _mm512_set1_ps(f16_to_float(b[i].d));
    for (int h = 0; h < 2; ++h)
      _mm512_storeu_ps(y + 16 * h,
                       _mm512_mul_ps(_mm512_cvtepi32_ps(load_i8x16(b[i].qs + 16 * h)), d));
  }
}

MOE_TARGET_AVX512 void q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  const __m512i low4 = _mm512_set1_epi32(0x0F), eight = _mm512_set1_epi32(8);
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m512 d = _mm512_set1_ps(f16_to_float(b[i].d));
    const __m512i q = load_u8x16(b[i].qs);
    const __m512i lo = _mm512_sub_epi32(_mm512_and_si512(q, low4), eight);
    const __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(q, 4), eight);
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
  }
}

// Q4_K / Q5_K: sub-block scales and mins as the scalar decoder unpacks them.
inline void scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// kFifth: Q5_K (qh holds the fifth bit of every value), else Q4_K.
template <bool kFifth>
MOE_TARGET_AVX512 void k_quant(uint16_t d16, uint16_t dmin16, const uint8_t* scales,
                               const uint8_t* qh, const uint8_t* qs, float* y) {
  const float d = f16_to_float(d16), dmin = f16_to_float(dmin16);
  const __m512i low4 = _mm512_set1_epi32(0x0F), one = _mm512_set1_epi32(1);
  for (int j = 0; j < 8; ++j, y += 32) {
    int sc, m;
    scale_min(scales, j, &sc, &m);
    const __m512 ds = _mm512_set1_ps(d * static_cast<float>(sc));
    const __m512 dm = _mm512_set1_ps(dmin * static_cast<float>(m));
    const uint8_t* q = qs + 32 * (j / 2);
    for (int h = 0; h < 2; ++h) {
      __m512i v = load_u8x16(q + 16 * h);
      v = (j & 1) ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, low4);
      if constexpr (kFifth) {
        const __m512i bit = _mm512_and_si512(_mm512_srli_epi32(load_u8x16(qh + 16 * h), j), one);
        v = _mm512_or_si512(v, _mm512_slli_epi32(bit, 4));
      }
      _mm512_storeu_ps(y + 16 * h, _mm512_sub_ps(_mm512_mul_ps(ds, _mm512_cvtepi32_ps(v)), dm));
    }
  }
}

MOE_TARGET_AVX512 void q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  const __m512i low4 = _mm512_set1_epi32(0x0F), three = _mm512_set1_epi32(3),
                bias = _mm512_set1_epi32(32);
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_float(b[i].d);
    for (int h = 0; h < 2; ++h, y += 128) {
      const uint8_t* ql = b[i].ql + 64 * h;
      const uint8_t* qh = b[i].qh + 32 * h;
      const int8_t* sc = b[i].scales + 8 * h;
      for (int g = 0; g < 4; ++g)
        for (int c = 0; c < 2; ++c) {  // values 32g + 16c .. + 15: one sub-block
          const __m512i lo = _mm512_and_si512(
              _mm512_srli_epi32(load_u8x16(ql + 32 * (g & 1) + 16 * c), 4 * (g >> 1)), low4);
          const __m512i hi =
              _mm512_and_si512(_mm512_srli_epi32(load_u8x16(qh + 16 * c), 2 * g), three);
          const __m512i q = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), bias);
          const __m512 s = _mm512_set1_ps(d * static_cast<float>(sc[2 * g + c]));
          _mm512_storeu_ps(y + 32 * g + 16 * c, _mm512_mul_ps(s, _mm512_cvtepi32_ps(q)));
        }
    }
  }
}

MOE_TARGET_AVX512 void q8_k(const BlockQ8_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const __m512 d = _mm512_set1_ps(b[i].d);
    for (int c = 0; c < kQKK; c += 16)
      _mm512_storeu_ps(y + c, _mm512_mul_ps(d, _mm512_cvtepi32_ps(load_i8x16(b[i].qs + c))));
  }
}

#pragma GCC diagnostic pop

}  // namespace

bool dequantize_row_avx512(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::Q8_0:
      q8_0(reinterpret_cast<const BlockQ8_0*>(src), dst, n / kQK);
      return true;
    case GgmlType::Q4_0:
      q4_0(reinterpret_cast<const BlockQ4_0*>(src), dst, n / kQK);
      return true;
    case GgmlType::Q4_K:
      for (int64_t i = 0; i < n / kQKK; ++i) {
        const auto& b = reinterpret_cast<const BlockQ4_K*>(src)[i];
        k_quant<false>(b.d, b.dmin, b.scales, nullptr, b.qs, dst + i * kQKK);
      }
      return true;
    case GgmlType::Q5_K:
      for (int64_t i = 0; i < n / kQKK; ++i) {
        const auto& b = reinterpret_cast<const BlockQ5_K*>(src)[i];
        k_quant<true>(b.d, b.dmin, b.scales, b.qh, b.qs, dst + i * kQKK);
      }
      return true;
    case GgmlType::Q6_K:
      q6_k(reinterpret_cast<const BlockQ6_K*>(src), dst, n / kQKK);
      return true;
    case GgmlType::Q8_K:
      q8_k(reinterpret_cast<const BlockQ8_K*>(src), dst, n / kQKK);
      return true;
    default:
      return false;
  }
}

#else

bool dequant_avx512_usable() {
  return false;
}
bool dequantize_row_avx512(GgmlType, const uint8_t*, float*, int64_t) {
  return false;
}

#endif

}  // namespace moe
