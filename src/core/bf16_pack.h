// Packing for gemm_bf16 (internal). Operands are rounded to bf16 and laid out as k pairs:
// pair = bf16(x[k]) | bf16(x[k + 1]) << 16, k even, the partner past kc being zero.
//   k_contiguous (k runs along a row of memory: A, or B transposed):
//     dst[kp * width + r] = pair of src row r at k0 + 2kp, zero for rows <= r < width.
//   k_strided (k runs down the rows of memory: A transposed, or B), all panels of `width`
//   columns at once: dst[c / width][kp][c % width], zero past cols in the last panel.
// simd = true uses AVX-512 BF16 (vcvtne2ps2bf16) and must give the scalar packers' bits; it is
// an error where the CPU or the build lacks it. Limits: kc <= 1024 and cols <= 1024
// (gemm_bf16's block sizes).
#pragma once

#include <cstdint>

namespace moe {

// Src: float (rounded with bf16_bits), or uint16_t holding bf16 bits (gemm_bf16.h's pre-rounded
// operands: no rounding, the bits as they are). Instantiated for those two.
template <class Src>
void pack_k_contiguous(bool simd, const Src* src, int64_t ld, int rows, int width, int64_t k0,
                       int64_t kc, uint32_t* dst);
template <class Src>
void pack_k_strided(bool simd, const Src* src, int64_t ld, int64_t cols, int width, int64_t k0,
                    int64_t kc, uint32_t* dst);

}  // namespace moe
