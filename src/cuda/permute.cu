#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/permute.cuh"
#include "cuda/routing_math.h"

namespace moe::cuda {

namespace {

__global__ void chunk_counts_kernel(const int32_t* primary, int64_t slots, int E,
                                    int32_t* chunk_counts) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= slot_chunks(slots)) return;
  const int64_t begin = c * kSlotsPerChunk;
  const int64_t end = begin + kSlotsPerChunk < slots ? begin + kSlotsPerChunk : slots;
  chunk_expert_counts(primary, begin, end, E, chunk_counts + c * E);
}

// One block: a thread per expert scans its column, then thread 0 lays out the kept rows.
__global__ void scan_counts_kernel(int32_t* chunk_counts, int64_t chunks, int E, int64_t capacity,
                                   int64_t* counts, int64_t* offsets) {
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    counts[e] = exclusive_scan_column(chunk_counts, chunks, E, e);
  __syncthreads();
  if (threadIdx.x == 0) kept_offsets(counts, E, capacity, offsets);
}

__global__ void assign_rows_kernel(const int32_t* primary, int64_t slots, int E, int64_t capacity,
                                   int32_t* chunk_counts, const int64_t* offsets, int32_t* slot_row,
                                   int32_t* row_slot) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= slot_chunks(slots)) return;
  const int64_t begin = c * kSlotsPerChunk;
  const int64_t end = begin + kSlotsPerChunk < slots ? begin + kSlotsPerChunk : slots;
  assign_chunk_rows(primary, begin, end, chunk_counts + c * E, offsets, capacity, slot_row,
                    row_slot);
}

__global__ void final_slots_kernel(const int32_t* primary, const float* gate_primary,
                                   const int32_t* slot_row, int64_t slots, int32_t* expert,
                                   float* gate) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= slots) return;
  const bool kept = slot_row[i] >= 0;
  expert[i] = kept ? primary[i] : -1;
  gate[i] = kept ? gate_primary[i] : 0.0f;
}

// One block per row (grid-strided), threads across the row: coalesced loads and stores.
__global__ void gather_rows_kernel(const int32_t* row_slot, int k, int64_t rows, int64_t d,
                                   const bf16* x, bf16* xp) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const bf16* src = x + static_cast<int64_t>(row_slot[r] / k) * d;
    bf16* dst = xp + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
  }
}

__global__ void gather_rows_backward_kernel(int64_t tokens, int k, int64_t d,
                                            const int32_t* slot_row, const bf16* dxp,
                                            const float* shared_dpre, const float* shared_wg,
                                            const bf16* shared_dx, float* dx) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0;
      for (int j = 0; j < k; ++j) {
        const int32_t r = slot_row[t * k + j];
        if (r >= 0) acc += to_float(dxp[static_cast<int64_t>(r) * d + c]);
      }
      if (shared_dpre) acc += shared_dpre[t] * shared_wg[c];
      if (shared_dx) acc += to_float(shared_dx[t * d + c]);
      dx[t * d + c] = acc;
    }
  }
}

__global__ void combine_kernel(int64_t tokens, int k, int64_t d, const int32_t* slot_row,
                               const float* gate, const bf16* y, const bf16* shared_y,
                               const float* shared_gate, float* out) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float gs = shared_gate ? shared_gate[t] : 1.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0;
      for (int j = 0; j < k; ++j) {
        const int32_t r = slot_row[t * k + j];
        if (r >= 0) acc += gate[t * k + j] * to_float(y[static_cast<int64_t>(r) * d + c]);
      }
      if (shared_y) acc += gs * to_float(shared_y[t * d + c]);
      out[t * d + c] = acc;
    }
  }
}

__global__ void combine_backward_kernel(int64_t tokens, int k, int64_t d, const int32_t* slot_row,
                                        const float* gate, const bf16* y, const float* dout,
                                        bf16* dy, float* dgate) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float* dout_t = dout + t * d;
    for (int j = 0; j < k; ++j) {
      const int64_t slot = t * k + j;
      const int32_t r = slot_row[slot];
      if (r < 0) {  // uniform across the block: no thread skips the block_sum below
        if (threadIdx.x == 0) dgate[slot] = 0.0f;
        continue;
      }
      const float g = gate[slot];
      const bf16* yr = y + static_cast<int64_t>(r) * d;
      bf16* dyr = dy + static_cast<int64_t>(r) * d;
      float dot = 0;
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        dot += dout_t[c] * to_float(yr[c]);
        dyr[c] = to_bf16(g * dout_t[c]);
      }
      dot = block_sum(dot);
      if (threadIdx.x == 0) dgate[slot] = dot;
    }
  }
}

}  // namespace

void launch_route_counts(const int32_t* primary, int64_t slots, int E, int64_t capacity,
                         int32_t* chunk_counts, int64_t* counts, int64_t* offsets,
                         cudaStream_t stream) {
  const int64_t chunks = slot_chunks(slots);
  if (chunks > 0) {
    MOE_LAUNCH(chunk_counts_kernel, blocks_for(chunks), kThreads, stream)
    (primary, slots, E, chunk_counts);
    MOE_CUDA_CHECK_LAUNCH();
  }
  MOE_LAUNCH(scan_counts_kernel, 1, kThreads, stream)
  (chunk_counts, chunks, E, capacity, counts, offsets);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_assign_rows(const int32_t* primary, const float* gate_primary, int64_t slots, int E,
                        int64_t capacity, int32_t* chunk_counts, const int64_t* offsets,
                        int32_t* slot_row, int32_t* row_slot, int32_t* expert, float* gate,
                        cudaStream_t stream) {
  if (slots == 0) return;
  const int64_t chunks = slot_chunks(slots);
  MOE_LAUNCH(assign_rows_kernel, blocks_for(chunks), kThreads, stream)
  (primary, slots, E, capacity, chunk_counts, offsets, slot_row, row_slot);
  MOE_CUDA_CHECK_LAUNCH();
  MOE_LAUNCH(final_slots_kernel, blocks_for(slots), kThreads, stream)
  (primary, gate_primary, slot_row, slots, expert, gate);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_gather_rows(const int32_t* row_slot, int k, int64_t rows, int64_t d, const bf16* x,
                        bf16* xp, cudaStream_t stream) {
  if (rows == 0) return;
  MOE_LAUNCH(gather_rows_kernel, row_grid(rows), kThreads, stream)(row_slot, k, rows, d, x, xp);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_gather_rows_backward(int64_t tokens, int k, int64_t d, const int32_t* slot_row,
                                 const bf16* dxp, const float* shared_dpre, const float* shared_wg,
                                 const bf16* shared_dx, float* dx, cudaStream_t stream) {
  if (tokens == 0) return;
  MOE_LAUNCH(gather_rows_backward_kernel, row_grid(tokens), kThreads, stream)
  (tokens, k, d, slot_row, dxp, shared_dpre, shared_wg, shared_dx, dx);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_combine(int64_t tokens, int k, int64_t d, const int32_t* slot_row, const float* gate,
                    const bf16* y, const bf16* shared_y, const float* shared_gate, float* out,
                    cudaStream_t stream) {
  if (tokens == 0) return;
  MOE_LAUNCH(combine_kernel, row_grid(tokens), kThreads, stream)
  (tokens, k, d, slot_row, gate, y, shared_y, shared_gate, out);
  MOE_CUDA_CHECK_LAUNCH();
}

void launch_combine_backward(int64_t tokens, int k, int64_t d, const int32_t* slot_row,
                             const float* gate, const bf16* y, const float* dout, bf16* dy,
                             float* dgate, cudaStream_t stream) {
  if (tokens == 0) return;
  MOE_LAUNCH(combine_backward_kernel, row_grid(tokens), kThreads, stream)
  (tokens, k, d, slot_row, gate, y, dout, dy, dgate);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
