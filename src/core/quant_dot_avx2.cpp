// The AVX2 int8 kernels (quant_dot_simd.h): byte products through vpmaddubsw (pairs into int16)
// and vpmaddwd (pairs into int32). Compiled with a target attribute, chosen at run time.
#include "core/quant_dot.h"

#if defined(__x86_64__)

#define QD_TARGET __attribute__((target("avx2,fma,f16c")))
#define QD_NS quant_avx2

#include <immintrin.h>

namespace moe::QD_NS {
QD_TARGET inline __m256i dp_u8s8(__m256i acc, __m256i u, __m256i s) {
  const __m256i pairs = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
// vpmaddubsw saturates its int16 pair sums above 32767: unsigned operands stay at most 128.
constexpr bool kDpWideUnsigned = false;
QD_TARGET inline __m256i dp_s16(__m256i acc, __m256i p, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
}
}  // namespace moe::QD_NS

#include "core/quant_dot_simd.h"

namespace moe {
const QuantDotTable* quant_dot_avx2_table() {
  return &quant_avx2::kTable;
}
}  // namespace moe

#else

namespace moe {
const QuantDotTable* quant_dot_avx2_table() {
  return nullptr;
}
}  // namespace moe

#endif
