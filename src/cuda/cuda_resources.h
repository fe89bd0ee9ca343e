// Host-side owners of CUDA resources (device and page-locked memory, streams, events, cuBLAS
// handles) for the CUDA layer and model: host code only, compiled by the C++ compiler like
// cuda_moe_layer.cpp and cuda_transformer.cpp. Owners release in their destructors and never
// throw there, so a constructor that fails half way leaks nothing.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/cuda_check.h"

namespace moe::cuda {

// A device array that only grows (cudaMalloc outside the steady state, never per step).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);  // no throw from a destructor
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void grow(int64_t n) {
    if (n <= size_) return;
    if (ptr_) MOE_CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    size_ = 0;
    MOE_CUDA_CHECK(
        cudaMalloc(reinterpret_cast<void**>(&ptr_), sizeof(T) * std::max<int64_t>(n, 1)));
    size_ = n;
  }
  T* get() const { return ptr_; }
  int64_t size() const { return size_; }

 private:
  T* ptr_ = nullptr;
  int64_t size_ = 0;
};

// Page-locked host memory for the per-step device-to-host copies; allocated once.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void allocate(int64_t n) {
    if (ptr_) MOE_CUDA_CHECK(cudaFreeHost(ptr_));
    ptr_ = nullptr;
    MOE_CUDA_CHECK(
        cudaMallocHost(reinterpret_cast<void**>(&ptr_), sizeof(T) * std::max<int64_t>(n, 1)));
  }
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
};

struct StreamOwner {
  cudaStream_t s = nullptr;
  ~StreamOwner() {
    if (s) cudaStreamDestroy(s);
  }
};

struct BlasOwner {
  cublasHandle_t h = nullptr;
  ~BlasOwner() {
    if (h) cublasDestroy(h);
  }
};

struct EventOwner {
  cudaEvent_t e = nullptr;
  ~EventOwner() {
    if (e) cudaEventDestroy(e);
  }
};

}  // namespace moe::cuda
