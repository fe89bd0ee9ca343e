// bf16 GEMM with fp32 accumulation: C = alpha * op(A) op(B) + beta * C, where A and B are fp32
// in memory (or bf16 bits, below) and rounded to bf16 (round to nearest even) as they are
// packed, so fp32 master weights and activations never need a bf16 copy of their own. Every product
// of two bf16 values is exact in fp32; products are summed in fp32 in a fixed order (per k pair:
// the odd element, then the even one, as vdpbf16ps does), so the result does not depend on the
// thread count or on which kernel ran.
//
// Kernels: AVX-512 BF16 (vdpbf16ps) where the CPU has it (checked at run time, see
// cpu_features.h), else a portable C++ kernel that forms the same bf16 products, slower.
// Threads: outside an OpenMP parallel region the rows of C are split across the threads; inside
// one (the MoE layer runs experts in parallel) it runs on the calling thread only.
#pragma once

#include <bit>
#include <cstdint>

#include "moe/gemm.h"

namespace moe {

enum class Bf16Kernel { Auto, Avx512, Portable };

// Auto (default) picks Avx512 when cpu_features().bf16_gemm(), else Portable. Forcing Avx512
// on a CPU without it is an error. Process-wide; for tests and benchmarks.
void set_bf16_kernel(Bf16Kernel k);
// The kernel gemm_bf16 will use (never Auto).
Bf16Kernel bf16_kernel();
const char* bf16_kernel_name(Bf16Kernel k);

// fp32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN; denormals flush to a
// signed zero (as vdpbf16ps treats denormal inputs). Branchless, so loops over it vectorize.
inline uint16_t bf16_bits(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  uint32_t r = (u & 0x7F800000u) == 0 ? (u >> 16) & 0x8000u : rounded;
  r = (u & 0x7FFFFFFFu) > 0x7F800000u ? (u >> 16) | 0x0040u : r;
  return static_cast<uint16_t>(r);
}
// dst[i] = bf16_bits(src[i]) for i < n; one vcvtneps2bf16 per 16 values where the CPU has AVX-512
// BF16 (the same rounding), several times faster than the integer rounding it replaces.
void round_to_bf16(const float* src, int64_t n, uint16_t* dst);
inline float bf16_value(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}
inline float round_bf16(float f) {
  return bf16_value(bf16_bits(f));
}

void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same over operands a producer already rounded, stored as bf16 bits (bf16_bits, laid out
// as the fp32 operand would be): the results of passing the fp32 values they came from. Packing
// them moves half the bytes and rounds nothing, which is why the FFN keeps the rows only its
// GEMMs read (the activation, the gradients of h1 and h3) in bf16.
void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The oracle: bf16-rounded inputs, products summed in double, one rounding at the end.
void gemm_bf16_naive(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                     int64_t ldc);

}  // namespace moe
