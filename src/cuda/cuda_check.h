// Checked CUDA and cuBLAS calls (as llm.c's cudaCheck / cublasCheck): a failure throws
// moe::Error("file:line: <call> failed: <error string>"). Usable from .cu and .cpp files; the
// throwing helper lives in cuda_check.cpp so that nvcc never sees fmt (see docs/cuda.md).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace moe::cuda {

[[noreturn]] void throw_cuda_error(const char* file, int line, const char* call,
                                   const char* message);

inline void check_cuda(cudaError_t status, const char* file, int line, const char* call) {
  if (status != cudaSuccess) throw_cuda_error(file, line, call, cudaGetErrorString(status));
}

inline void check_cublas(cublasStatus_t status, const char* file, int line, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw_cuda_error(file, line, call, cublasGetStatusString(status));
}

}  // namespace moe::cuda

#define MOE_CUDA_CHECK(call) ::moe::cuda::check_cuda((call), __FILE__, __LINE__, #call)
#define MOE_CUBLAS_CHECK(call) ::moe::cuda::check_cublas((call), __FILE__, __LINE__, #call)
// After a kernel launch: launch-configuration errors surface here, not at the next call.
#define MOE_CUDA_CHECK_LAUNCH() MOE_CUDA_CHECK(cudaGetLastError())
