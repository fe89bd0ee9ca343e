// Float and bf16 weight matrices times a few activation rows (internal; linear_forward's path for
// an expert's share of a prompt, tens of rows). A GEMM packs the whole weight matrix on every call,
// which for so few rows costs about as much as the multiply; here the weights are read in place:
// tiles of 6 weight rows x 4 activation rows, 24 zmm accumulators of dot products along k (the
// layout both operands have), summed across lanes once per tile. F32 weights: fp32 FMAs (the
// products and sums of a GEMM, in another order). BF16 weights: the activations are rounded to
// bf16 once per call (as the bf16 GEMM's packing rounds them) and vdpbf16ps multiplies pairs.
// AVX-512 only (target attributes, chosen at run time): callers ask linear_rows_supported first.
#pragma once

#include <cstdint>

#include "moe/linear.h"

namespace moe {

// Whether this CPU (and build) runs linear_rows for weights of `type` (F32: AVX-512F; BF16:
// AVX-512 BF16); false for every other type.
bool linear_rows_supported(GgmlType type);

// y[i * w.rows + r] = (y[..] if accumulate) + sum_k x[i * w.cols + k] w[r][k], for i < n and
// r0 <= r < r1. Single-threaded; xb is the activations rounded to bf16 (bf16_activation_rows)
// for BF16 weights, unused for F32.
void linear_rows(const float* x, const uint16_t* xb, int64_t n, const WeightView& w, int64_t r0,
                 int64_t r1, float* y, bool accumulate);

// x's n rows of k values rounded to bf16 (round to nearest even, quantize_row's rule) into dst.
void bf16_activation_rows(const float* x, int64_t n, int64_t k, uint16_t* dst);

}  // namespace moe
