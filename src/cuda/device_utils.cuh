// Device-only helpers shared by the kernels (nvcc only): block sums and launch shapes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

// kernel<<<grid, block, 0, stream>>>(args...) is written MOE_LAUNCH(kernel, grid, block,
// stream)(args...), so that the CPU emulator (tests/cuda_emu, built with MOE_CUDA_EMULATION)
// runs the same kernels with one fiber per thread.
#if defined(MOE_CUDA_EMULATION)
#define MOE_LAUNCH(kernel, grid, block, stream)                       \
  ::moe_emu::Launch{#kernel, dim3(grid), dim3(block), (stream)}.bind( \
      [](auto&... kernel_args) { kernel(kernel_args...); })
#else
#define MOE_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#endif

namespace moe::cuda {

constexpr int kThreads = 256;  // every kernel's block size (a multiple of the warp size)

// Grid caps: past them a kernel is grid-strided (one block per row, or one thread per element,
// looping). The emulator build (tests/cuda_emu) shrinks them so that its small tests run every
// grid-stride loop.
#ifndef MOE_CUDA_ROW_GRID_CAP
#define MOE_CUDA_ROW_GRID_CAP (1 << 16)
#endif
#ifndef MOE_CUDA_ELEMENTWISE_GRID_CAP
#define MOE_CUDA_ELEMENTWISE_GRID_CAP (1 << 20)
#endif

// Blocks for one block per row (grid-strided beyond the cap), at least one.
inline unsigned row_grid(int64_t rows) {
  const int64_t cap = MOE_CUDA_ROW_GRID_CAP;
  return static_cast<unsigned>(rows < 1 ? 1 : (rows < cap ? rows : cap));
}

// Blocks of kThreads for one thread per element (grid-strided beyond the cap), at least one.
inline unsigned elementwise_grid(int64_t n) {
  const int64_t cap = MOE_CUDA_ELEMENTWISE_GRID_CAP;
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b < cap ? b : cap));
}

// Blocks to cover n items with one thread each, at least one (no grid stride).
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b > 0 ? b : 1);
}

template <class T>
__device__ inline T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in
// thread 0. Ends with a barrier, so it may be called again right away.
template <class T>
__device__ inline T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T total = 0;
  if (warp == 0) {
    const int warps = (blockDim.x + 31) / 32;
    total = lane < warps ? partial[lane] : T(0);
    total = warp_sum(total);
  }
  __syncthreads();
  return total;
}

// Max of v over the block, returned to every thread (same launch shape as block_sum).
__device__ inline float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, offset));
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    const int warps = (blockDim.x + 31) / 32;
    float m = partial[0];
    for (int k = 1; k < warps; ++k) m = fmaxf(m, partial[k]);
    partial[0] = m;
  }
  __syncthreads();
  const float out = partial[0];
  __syncthreads();
  return out;
}

// Thread 0's v, returned to every thread of the block.
template <class T>
__device__ inline T block_broadcast(T v) {
  __shared__ T value;
  if (threadIdx.x == 0) value = v;
  __syncthreads();
  const T out = value;
  __syncthreads();
  return out;
}

__device__ inline float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
__device__ inline __nv_bfloat16 to_bf16(float v) {
  return __float2bfloat16_rn(v);
}

}  // namespace moe::cuda
