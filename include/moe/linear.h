// A matrix in its stored format and y = x W^T over it: fp32 in place, or a checkpoint's mapped
// BF16/F16 widened exactly to fp32 inside the product. A new weight format (a quantized one)
// plugs in here: a dtype of the view and its dot product.
#pragma once

#include <cstdint>

#include "moe/safetensors.h"

namespace moe {

// A matrix [rows, cols] (Linear layout: out x in) where its owner keeps it: a run's fp32
// parameters, or a checkpoint's mapped tensors.
struct WeightView {
  const uint8_t* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
};

// y [n, W.rows] = x [n, W.cols] W^T (+ y when accumulate), in fp32 with the 16-bit weights
// widened exactly. Up to 4 rows (decoding) take one pass over the weights with the widening in
// registers; more rows (prefill) widen a block of weight rows at a time and run a GEMM on it.
void linear_forward(const float* x, int64_t n, const WeightView& w, float* y,
                    bool accumulate = false);

// dst[n] = n stored values of a 16-bit dtype (BF16, F16) as fp32.
void widen_to_float(const uint8_t* src, DType t, int64_t n, float* dst);

}  // namespace moe
