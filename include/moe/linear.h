// A matrix in its stored format and y = x W^T over it: fp32 in place, or a checkpoint's mapped
// BF16/F16 widened exactly to fp32 inside the product, or a GGUF block-quantized type
// (quant.h). A weight format plugs in here: a type of the view and its dot product.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/quant.h"
#include "moe/safetensors.h"

namespace moe {

// A matrix [rows, cols] (Linear layout: out x in) where its owner keeps it: a run's fp32
// parameters, or a checkpoint's mapped tensors. Rows are row_bytes(type, cols) apart.
struct WeightView {
  const uint8_t* data = nullptr;
  GgmlType type = GgmlType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t* row(int64_t r) const { return data + r * row_bytes(type, cols); }
};

// y [n, W.rows] = x [n, W.cols] W^T (+ y when accumulate), in fp32 with the 16-bit weights
// widened exactly. Up to 4 rows (decoding) take one pass over the weights with the widening in
// registers; 5 to 64 rows (an expert's share of a prompt) of F32 / BF16 weights run AVX-512
// tiles over the weights in place where the CPU has them (core/linear_rows.h); more rows widen a
// block of weight rows at a time and run a GEMM on it. For BF16 weights both round x to bf16 by
// default (the bf16 GEMM, vdpbf16ps); set_bf16_activations(false) keeps x in fp32.
// Block-quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) take int8 dot products instead: x's
// rows are quantized per block (Q8_0 or Q8_K, as llama.cpp does) once per call, so the result
// carries that rounding of the activations too.
// The storage type of a safetensors dtype that weights may have (F32, F16, BF16).
GgmlType ggml_type_of(DType t);

void linear_forward(const float* x, int64_t n, const WeightView& w, float* y,
                    bool accumulate = false);

// The type a matrix of `cols` columns is quantized to when `type` is asked for: `type` itself,
// or, as llama.cpp's quantizer does for rows that are not whole blocks, Q8_0 for a k-quant
// whose rows are whole 32-blocks, else F16.
GgmlType quantizable_type(GgmlType type, int64_t cols);

// Load-time quantization: `src` (any weight type) widened row by row and rounded with
// quantize_row to quantizable_type(type, cols) into `storage` (resized; the caller owns it and
// keeps it as long as the view), in parallel over rows. Returns the view of `storage`.
WeightView quantize_view(const WeightView& src, GgmlType type, std::vector<uint8_t>& storage);

// How BF16 weights meet more than 4 rows of x (prefill). On (the default where
// cpu_features().bf16_gemm()): x is rounded to bf16 (round to nearest even, a relative error of
// at most 2^-8 per element) and the block runs on the AVX-512 BF16 GEMM (gemm_bf16.h), whose
// bf16 x bf16 products are exact and summed in fp32. Off: the exact path, x stays fp32 and the
// widened weights go through the fp32 GEMM (what a comparison with an fp32 reference needs).
// Decoding (up to 4 rows) and every other weight type are the same either way. Process-wide.
void set_bf16_activations(bool on);
bool bf16_activations();

}  // namespace moe
