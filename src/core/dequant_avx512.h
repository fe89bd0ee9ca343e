// AVX-512 decoders of the quantized GGUF types for dequantize_row (core/quant.cpp), compiled
// with target attributes so the binary runs anywhere; the caller checks cpu_features(). They
// produce the scalar definitions' bits: with fp16 scales every product before the last
// subtraction is exact in fp32, so vector order and FMA do not change a value (test_quant).
#pragma once

#include <cstdint>

#include "moe/quant.h"

namespace moe {

// Whether this CPU runs the decoders below (AVX-512F and the OS saves zmm state).
bool dequant_avx512_usable();
// Decodes n values (whole blocks) of Q8_0, Q4_0, Q4_K, Q5_K, Q6_K or Q8_K; false (nothing
// written) for any other type.
bool dequantize_row_avx512(GgmlType type, const uint8_t* src, float* dst, int64_t n);

}  // namespace moe
