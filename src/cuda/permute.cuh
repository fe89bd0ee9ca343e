// Permutation kernels (permute.cu): capacity and rows from the primary experts (histogram per
// chunk of slots, prefix sums, stable ranks: routing_math.h), the gather into expert-major
// order and the gate-weighted combine, each with its backward. The combine and the gather
// backward are written per token (a gather of its k rows), so they need no atomics and sum in
// slot order, as src/nn/permute.cpp does. Plain declarations (see router.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/routing_math.h"

namespace moe::cuda {

using bf16 = __nv_bfloat16;

// Slots per chunk of the rank computation: one thread walks one chunk.
constexpr int64_t kSlotsPerChunk = 256;
MOE_HD inline int64_t slot_chunks(int64_t slots) {
  return (slots + kSlotsPerChunk - 1) / kSlotsPerChunk;
}

// 1-3. chunk_counts [chunks, E] (scratch) -> counts [E] (primary per expert) and the kept
// rows' offsets [E+1] under capacity C (-1: dropless).
void launch_route_counts(const int32_t* primary, int64_t slots, int E, int64_t capacity,
                         int32_t* chunk_counts, int64_t* counts, int64_t* offsets,
                         cudaStream_t stream);
// 4. slot_row [T*k] (-1 = dropped), row_slot [N], final experts [T*k] (-1 = dropped) and final
// gates [T*k] (the primary gate, 0 where dropped). Consumes chunk_counts.
void launch_assign_rows(const int32_t* primary, const float* gate_primary, int64_t slots, int E,
                        int64_t capacity, int32_t* chunk_counts, const int64_t* offsets,
                        int32_t* slot_row, int32_t* row_slot, int32_t* expert, float* gate,
                        cudaStream_t stream);

// xp [N, d] = x [token(row), d].
void launch_gather_rows(const int32_t* row_slot, int k, int64_t rows, int64_t d, const bf16* x,
                        bf16* xp, cudaStream_t stream);
// dx [T, d] (=) = sum of the token's kept rows of dxp, + shared_dpre[t] * shared_wg (gate of
// the shared experts; both null without it), + shared_dx [T, d] (null without shared experts).
void launch_gather_rows_backward(int64_t tokens, int k, int64_t d, const int32_t* slot_row,
                                 const bf16* dxp, const float* shared_dpre, const float* shared_wg,
                                 const bf16* shared_dx, float* dx, cudaStream_t stream);

// out [T, d] (=) = sum_j gate[t,j] y[row(t,j)] + shared_gate[t] * shared_y[t] (shared_y null
// without shared experts, shared_gate null when ungated).
void launch_combine(int64_t tokens, int k, int64_t d, const int32_t* slot_row, const float* gate,
                    const bf16* y, const bf16* shared_y, const float* shared_gate, float* out,
                    cudaStream_t stream);
// dy [N, d] = gate * dout[token]; dgate [T, k] = dout[t] . y[row] (0 where dropped).
void launch_combine_backward(int64_t tokens, int k, int64_t d, const int32_t* slot_row,
                             const float* gate, const bf16* y, const float* dout, bf16* dy,
                             float* dgate, cudaStream_t stream);

}  // namespace moe::cuda
