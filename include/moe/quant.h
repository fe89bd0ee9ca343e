// ggml's tensor types, the storage formats of GGUF files, and their block layouts exactly as
// GGUF defines them (ggml-common.h), so files go both ways with llama.cpp:
//   Q8_0  32 values: fp16 d, int8 q[32]                      x = d * q
//   Q4_0  32 values: fp16 d, 16 bytes of nibbles             x = d * (q - 8); byte j holds
//         value j in its low nibble and value j + 16 in its high nibble
//   Q4_K 256 values: fp16 d, fp16 dmin, 12 bytes of 6-bit sub-block scales and mins (8 sub-blocks
//         of 32), 128 bytes of nibbles                        x = d * sc * q - dmin * m
//   Q5_K  Q4_K plus 32 bytes holding the fifth bit of every value
//   Q6_K 256 values: 128 bytes of low nibbles, 64 bytes of the high 2 bits, int8 scales[16]
//         (16 sub-blocks of 16), fp16 d                       x = d * sc * (q - 32)
//   Q8_K 256 values: fp32 d, int8 q[256], int16 sums of each 16 values (activations only)
//   MXFP4 32 values: E8M0 e, 16 bytes of FP4 E2M1 nibbles     x = 2^(e-128) * k[q], k the E2M1
//         values doubled (0 1 2 3 4 6 8 12, bit 3 the sign); byte j holds value j in its low
//         nibble and value j + 16 in its high nibble (gpt-oss's expert weights; read, not written)
// Weights are quantized along a row (the contiguous dimension, ggml's dims[0]), so a row of
// `cols` values is cols / block_size blocks and rows stay addressable.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

// ggml type ids as GGUF stores them.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
  MXFP4 = 39,
};

constexpr int kQK = 32;    // values per Q8_0 / Q4_0 block
constexpr int kQKK = 256;  // values per k-quant super-block
constexpr int kKScaleBytes = 12;

struct BlockQ8_0 {
  uint16_t d;  // fp16
  int8_t qs[kQK];
};
struct BlockQ4_0 {
  uint16_t d;  // fp16
  uint8_t qs[kQK / 2];
};
struct BlockQ4_K {
  uint16_t d, dmin;  // fp16 super-block scale of the scales and of the mins
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQKK / 2];
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;  // fp16
};
struct BlockQ8_K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};
struct BlockMXFP4 {
  uint8_t e;  // E8M0 exponent: the block's scale is 2^(e - 127), of the doubled values 2^(e - 128)
  uint8_t qs[kQK / 2];
};
// The E2M1 values doubled, by nibble (bit 3 the sign): integers, so the int8 kernels use them.
inline constexpr int8_t kMxfp4Values[16] = {0, 1,  2,  3,  4,  6,  8,  12,
                                            0, -1, -2, -3, -4, -6, -8, -12};
// 2^(e - 128) exactly (down to the subnormal 2^-128 of e = 0): the scale of the doubled values.
inline float e8m0_half_to_float(uint8_t e) {
  const uint32_t bits = e < 2 ? 0x00200000u << e : static_cast<uint32_t>(e - 1) << 23;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
// One row of the Hugging Face / OpenAI MXFP4 layout (transformers integrations/mxfp4.py:
// `codes` [nb, 16] with value 2j in the low nibble of byte j and 2j + 1 in the high one,
// `scales` [nb] E8M0) as ggml's blocks (value j and j + 16 in byte j): the same bits regrouped.
void mxfp4_from_hf_row(const uint8_t* codes, const uint8_t* scales, int64_t nb, BlockMXFP4* out);
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockMXFP4) == 17);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

// Values per block and bytes per block of any type GGUF files use (including the ones this
// code cannot compute with, so a reader can size and list them); {0, 0} for an unknown id.
struct GgmlBlock {
  int64_t values = 0, bytes = 0;
};
GgmlBlock ggml_block(uint32_t type);
// "F32", "Q4_K", ... or "type N" for an id this code does not know.
std::string ggml_type_name(uint32_t type);
// "q4_k" / "Q4_K" / "bf16" ... -> the type; false for a name that is not one of GgmlType.
bool parse_ggml_type(const std::string& name, GgmlType* out);

// Whether the weights of a linear layer can be stored in `type` (F32, F16, BF16, Q8_0, Q4_0,
// Q4_K, Q5_K, Q6_K, MXFP4), and the bytes of one row of `cols` values (cols a multiple of the
// block).
bool is_weight_type(GgmlType type);
int64_t row_bytes(GgmlType type, int64_t cols);

// Conversions of one row of n values (n a multiple of the block size). dequantize_row uses
// AVX-512 where cpu_features() has it and gives the bits of dequantize_row_scalar, the plain
// definition the kernels are tested against.
void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n);
void dequantize_row_scalar(GgmlType type, const uint8_t* src, float* dst, int64_t n);
// Rounds n values to `type` (any weight type, and Q8_K): per block the scale that minimizes the
// error as llama.cpp's reference quantizers choose it, so the files it writes read the same in
// llama.cpp.
void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n);

}  // namespace moe
