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
}  // namespace moe::QD_NS

#include "core/quant_dot_simd.h"

namespace moe {
const QuantDotTable* quant_dot_avx512_table() {
  return &quant_avx512::kTable;
}
}  // namespace moe

#else

namespace moe {
const QuantDotTable* quant_dot_avx512_table() {
  return nullptr;
}
}  // namespace moe

#endif
