// Int8 dot products of block-quantized weight rows (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, MXFP4) with
// activation rows quantized per block (Q8_0 for Q8_0/Q4_0/MXFP4 weights, Q8_K for the k-quants; for
// Q8_0 and Q4_0 the Q8_0 blocks are regrouped, ActQ8_0Group below), as linear_forward runs
// quantized weights. Within a block every product is an exact integer sum; only the per-block
// scaling (weight scale x activation scale) and the sum over blocks are float. Three
// implementations of each kernel, chosen at run time (cpu_features()):
//   Scalar: plain C++, the oracle the others are tested against;
//   Avx2:   vpmaddubsw / vpmaddwd on ymm;
//   Avx512: vpdpbusd (AVX-512 VNNI, VL encoding on ymm: decode is bound by memory, and 32-value
//           blocks map onto ymm one to one), with zmm kernels where a layout fills them: Q4_K
//           and Q5_K (64 values per chunk), Q4_0 and Q8_0 (8 blocks, with AVX-512 VBMI).
// A kernel takes one weight row and up to kMaxDotRows activation rows, so a weight block is
// unpacked once and used for several tokens (prefill).
#pragma once

#include <cstdint>

#include "moe/quant.h"

namespace moe {

enum class QuantKernel { Auto, Scalar, Avx2, Avx512 };

// Auto (default) picks Avx512, else Avx2, else Scalar by what the CPU has. Forcing one the CPU
// lacks is an error. Process-wide; for tests and benchmarks.
void set_quant_kernel(QuantKernel k);
// The implementation in use (never Auto).
QuantKernel quant_kernel();
bool quant_kernel_supported(QuantKernel k);
const char* quant_kernel_name(QuantKernel k);

constexpr int kMaxDotRows = 8;

// out[i] = sum over the row of weight x activation i, for i < nact (1..kMaxDotRows); activation
// row i starts at act + i * act_stride bytes and is a prepared row (prepare_activation_row) of
// the weight type; the weight row is nblocks blocks of its type.
using QuantDotFn = void (*)(const uint8_t* w, const uint8_t* act, int64_t act_stride, int nact,
                            int64_t nblocks, float* out);

// The block quantization of the activations a weight type is multiplied with (Q8_0 or Q8_K:
// its rounding rules and values); an error for a type that has no int8 kernel.
GgmlType quant_dot_activation_type(GgmlType weight);
// The kernel of `weight` in implementation k (Auto: quant_kernel()).
QuantDotFn quant_dot_fn(GgmlType weight, QuantKernel k = QuantKernel::Auto);

// Q8_0 activations regrouped for the Q4_0 and Q8_0 kernels, 8 blocks (256 values) per group.
// A Q4_0 weight byte holds value t of its block in the low nibble and t + 16 in the high one, so
// the 64 weight bytes of 4 blocks, masked or shifted, meet 64 activation bytes in place: the
// values 0-15 of those 4 blocks, or their values 16-31. The nibbles multiply unsigned (q, not
// q - 8), and sum8 takes the 8 back out: sum (q - 8) a = sum q a - 8 sum a, exactly, in int32.
// Q8_0 weights are gathered into the same order (byte permutes or 16-byte loads) and, where
// vpdpbusd multiplies them, offset to unsigned (w + 128, one xor per weight block): 16 sum8
// takes the 128 back out. A last partial group is zero-padded (d = 0, values 0).
struct ActQ8_0Group {
  int8_t qs[2][2][4][16];  // [blocks 0-3 | 4-7][values 0-15 | 16-31][block of the four][value]
  float d[8];              // the blocks' fp16 scales, widened
  int32_t sum8[8];         // 8 x the sum of each block's values
};
static_assert(sizeof(ActQ8_0Group) == 320);
constexpr int kActGroupBlocks = 8;

// Bytes of one prepared activation row of n values for `weight`'s kernel.
int64_t activation_row_bytes(GgmlType weight, int64_t n);
// One activation row of n values (a multiple of the block) as `weight`'s kernel reads it: Q8_0
// or Q8_K blocks, regrouped for Q4_0 and Q8_0 (ActQ8_0Group). The rounding rules are those of
// quantize_row (quant.h), so the bytes are the same in every implementation.
void prepare_activation_row(GgmlType weight, const float* x, uint8_t* dst, int64_t n,
                            QuantKernel k = QuantKernel::Auto);
// Q8_0 blocks regrouped (nblocks of them; dst holds activation_row_bytes(Q4_0, 32 nblocks)), as
// the Q4_0 and Q8_0 kernels read them.
void group_q8_0_blocks(const BlockQ8_0* blocks, int64_t nblocks, uint8_t* dst);

// One activation row of n values (a multiple of the block) to Q8_0 or Q8_K blocks.
void quantize_activation_row(GgmlType act, const float* x, uint8_t* dst, int64_t n,
                             QuantKernel k = QuantKernel::Auto);

// Sum over the blocks of |each block's float term| of the scalar kernel for one activation row
// of Q8_0 / Q8_K blocks (before any regrouping): the scale that bounds how far the float
// accumulation of two implementations may differ.
double quant_dot_magnitude(GgmlType weight, const uint8_t* w, const uint8_t* act, int64_t nblocks);

// The 8 six-bit scales and 8 six-bit mins of a Q4_K / Q5_K super-block, one per 32 values,
// from their 12 packed bytes: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7
// (mins); sub-blocks 4-7 in the nibbles of bytes 8-11 plus the top 2 bits of bytes 0-3 / 4-7.
inline void unpack_k_scales(const uint8_t* s, uint8_t* sc, uint8_t* m) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    m[j] = s[j + 4] & 63;
    sc[j + 4] = static_cast<uint8_t>((s[j + 8] & 0xF) | ((s[j] >> 6) << 4));
    m[j + 4] = static_cast<uint8_t>((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

// The implementations, one per file (quant_dot_avx2.cpp, quant_dot_avx512.cpp); null where the
// build has no such code (not x86-64).
struct QuantDotTable {
  QuantDotFn q8_0, q4_0, q4_k, q5_k, q6_k;
  void (*quantize_q8_0)(const float* x, BlockQ8_0* y, int64_t nblocks);
  void (*quantize_q8_k)(const float* x, BlockQ8_K* y, int64_t nblocks);
  QuantDotFn mxfp4;
};
const QuantDotTable* quant_dot_avx2_table();
const QuantDotTable* quant_dot_avx512_table();

}  // namespace moe
