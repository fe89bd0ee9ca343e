// The CPU emulator of tests/cuda_emu checked on its own: barriers and warp shuffles give the
// hardware's results, cuBLAS calls follow cuBLAS's column-major contract on hand-computed
// products, streams run only when waited for (so a missing synchronization or event shows), and
// each misuse it promises to catch (host code touching device memory, a kernel
// writing past an allocation, a host pointer passed to a kernel, a shuffle some lanes never
// reach, the grouped GEMM given host pointer arrays) ends the run with a message naming it.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/device_utils.cuh"

namespace {

using moe::cuda::block_broadcast;
using moe::cuda::block_max;
using moe::cuda::block_sum;

__global__ void block_reductions_kernel(const float* x, int64_t n, float* sums, float* maxes,
                                        float* firsts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const float v = i < n ? x[i] : 0.0f;
  const float total = block_sum(v);
  const float m = block_max(i < n ? v : -INFINITY);
  const float first = block_broadcast(v);
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
  if (threadIdx.x == 1) maxes[blockIdx.x] = m;
  if (threadIdx.x == 2) firsts[blockIdx.x] = first;
}

// Each thread writes its slot, then reads its neighbour's after a barrier: wrong without it.
__global__ void rotate_through_shared_kernel(int* out) {
  __shared__ int slots[64];
  slots[threadIdx.x] = static_cast<int>(threadIdx.x) * 10;
  __syncthreads();
  out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

__global__ void write_kernel(float* p, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) p[i] = 1.0f;
}

__global__ void half_warp_shuffle_kernel(float* out) {
  if (threadIdx.x >= 16) return;  // the full mask names lanes that have exited
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

template <class T>
T* device_alloc(size_t n) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

template <class T>
void upload(T* d, const std::vector<T>& h) {
  EXPECT_EQ(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}

TEST(CudaEmulator, BlockReductionsAndBarriersGiveTheHardwareResults) {
  const int64_t n = 600;  // three blocks of 256, the last one partial
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>((i * 37) % 101) - 50.0f;
  float* dx = device_alloc<float>(n);
  float *sums = device_alloc<float>(3), *maxes = device_alloc<float>(3),
        *firsts = device_alloc<float>(3);
  upload(dx, x);
  MOE_LAUNCH(block_reductions_kernel, 3, 256, nullptr)(dx, n, sums, maxes, firsts);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto s = download(sums, 3), m = download(maxes, 3), f = download(firsts, 3);
  for (int b = 0; b < 3; ++b) {
    float want_sum = 0, want_max = -INFINITY;
    for (int64_t i = b * 256; i < std::min<int64_t>(n, (b + 1) * 256); ++i) {
      want_sum += x[i];
      want_max = std::max(want_max, x[i]);
    }
    EXPECT_EQ(s[b], want_sum) << "block " << b;  // small integers: exact in any order
    EXPECT_EQ(m[b], want_max) << "block " << b;
    EXPECT_EQ(f[b], x[b * 256]) << "block " << b;
  }

  int* rotated = device_alloc<int>(64);
  MOE_LAUNCH(rotate_through_shared_kernel, 1, 64, nullptr)(rotated);
  const auto r = download(rotated, 64);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(r[i], (i + 1) % 64 * 10);
  for (void* p : {static_cast<void*>(dx), static_cast<void*>(sums), static_cast<void*>(maxes),
                  static_cast<void*>(firsts), static_cast<void*>(rotated)})
    EXPECT_EQ(cudaFree(p), cudaSuccess);
}

TEST(CudaEmulator, InvalidLaunchConfigurationIsALaunchError) {
  float* p = device_alloc<float>(1);
  MOE_LAUNCH(write_kernel, 1, 2048, nullptr)(p, 1);  // more than 1024 threads per block
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // the error is cleared once read
  cudaFree(p);
}

TEST(CudaEmulator, NeverWrittenDeviceMemoryReadsAsNaN) {
  float* p = device_alloc<float>(5);
  for (float v : download(p, 5)) EXPECT_TRUE(std::isnan(v));
  cudaFree(p);
}

TEST(CudaEmulator, SgemmIsColumnMajorWithTransposes) {
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  // A column-major 2x3 [[1,2,3],[4,5,6]] is stored 1,4,2,5,3,6; B 3x2 [[1,0],[0,1],[1,1]] is
  // stored 1,0,1,0,1,1. A B = [[4,5],[10,11]], stored 4,10,5,11.
  float *A = device_alloc<float>(6), *B = device_alloc<float>(6), *C = device_alloc<float>(4);
  upload(A, std::vector<float>{1, 4, 2, 5, 3, 6});
  upload(B, std::vector<float>{1, 0, 1, 0, 1, 1});
  const float one = 1, zero = 0;
  ASSERT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 2, B, 3, &zero, C, 2),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(download(C, 4), (std::vector<float>{4, 10, 5, 11}));
  // Both transposed: B^T A^T = (A B)^T = [[4,10],[5,11]], stored 4,5,10,11; beta = 1 adds C.
  upload(C, std::vector<float>{1, 1, 1, 1});
  ASSERT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_T, 2, 2, 3, &one, B, 3, A, 2, &one, C, 2),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(download(C, 4), (std::vector<float>{5, 6, 11, 12}));
  // A leading dimension below the rows is refused, as by cuBLAS.
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 1, B, 3, &zero, C, 2),
            CUBLAS_STATUS_INVALID_VALUE);
  // beta = 0 never reads C: NaN there does not propagate.
  float* fresh = device_alloc<float>(4);
  ASSERT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 2, B, 3, &zero, fresh, 2),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(download(fresh, 4), (std::vector<float>{4, 10, 5, 11}));
  for (float* p : {A, B, C, fresh}) cudaFree(p);
  cublasDestroy(h);
}

TEST(CudaEmulator, GroupedGemmWantsDevicePointerArrays) {
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  float *A = device_alloc<float>(4), *B = device_alloc<float>(4), *C = device_alloc<float>(4);
  upload(A, std::vector<float>{1, 2, 3, 4});
  upload(B, std::vector<float>{1, 0, 0, 1});
  const cublasOperation_t op = CUBLAS_OP_N;
  const int two = 2, group = 1;
  const float one = 1, zero = 0;
  const void* host_a[] = {A};
  const void* host_b[] = {B};
  void* host_c[] = {C};
  EXPECT_EQ(cublasGemmGroupedBatchedEx(h, &op, &op, &two, &two, &two, &one, host_a, CUDA_R_32F,
                                       &two, host_b, CUDA_R_32F, &two, &zero, host_c, CUDA_R_32F,
                                       &two, 1, &group, CUBLAS_COMPUTE_32F),
            CUBLAS_STATUS_INVALID_VALUE);
  void** arrays = device_alloc<void*>(3);
  upload(arrays, std::vector<void*>{A, B, C});
  EXPECT_EQ(cublasGemmGroupedBatchedEx(h, &op, &op, &two, &two, &two, &one, arrays, CUDA_R_32F,
                                       &two, arrays + 1, CUDA_R_32F, &two, &zero, arrays + 2,
                                       CUDA_R_32F, &two, 1, &group, CUBLAS_COMPUTE_32F),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(download(C, 4), (std::vector<float>{1, 2, 3, 4}));
  for (void* p : {static_cast<void*>(A), static_cast<void*>(B), static_cast<void*>(C),
                  static_cast<void*>(arrays)})
    cudaFree(p);
  cublasDestroy(h);
}

TEST(CudaEmulator, StreamsRunOnlyWhenWaitedFor) {
  cudaStream_t a, b;
  ASSERT_EQ(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking), cudaSuccess);
  float* p = device_alloc<float>(64);
  float* q = device_alloc<float>(64);
  ASSERT_EQ(cudaMemset(p, 0, 64 * sizeof(float)), cudaSuccess);
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 64 * sizeof(float)), cudaSuccess);
  pinned[0] = -5.0f;

  // A copy into pinned memory is not done until the stream is synchronized.
  MOE_LAUNCH(write_kernel, 1, 64, a)(p, 64);
  ASSERT_EQ(cudaMemcpyAsync(pinned, p, 64 * sizeof(float), cudaMemcpyDeviceToHost, a), cudaSuccess);
  EXPECT_EQ(pinned[0], -5.0f) << "read before cudaStreamSynchronize: the copy has not run";
  ASSERT_EQ(cudaStreamSynchronize(a), cudaSuccess);
  EXPECT_EQ(pinned[0], 1.0f);

  // Stream b uses a's result: without an event it reads what was there before.
  ASSERT_EQ(cudaMemset(p, 0, 64 * sizeof(float)), cudaSuccess);
  MOE_LAUNCH(write_kernel, 1, 64, a)(p, 64);
  ASSERT_EQ(cudaMemcpyAsync(q, p, 64 * sizeof(float), cudaMemcpyDeviceToDevice, b), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(b), cudaSuccess);
  EXPECT_EQ(download(q, 1)[0], 0.0f) << "no event: b ran before a";
  // With an event recorded on a and waited for on b, it sees a's write.
  cudaEvent_t done;
  ASSERT_EQ(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(done, a), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(b, done, 0), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(q, p, 64 * sizeof(float), cudaMemcpyDeviceToDevice, b), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(b), cudaSuccess);
  EXPECT_EQ(download(q, 1)[0], 1.0f);

  cudaEventDestroy(done);
  cudaFreeHost(pinned);
  cudaFree(p);
  cudaFree(q);
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
}

TEST(CudaEmulatorDeathTest, HostCodeReadingDeviceMemoryFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  float* p = device_alloc<float>(4);
  EXPECT_DEATH(
      {
        volatile float v = p[1];
        (void)v;
      },
      "device memory from host code");
  cudaFree(p);
}

TEST(CudaEmulatorDeathTest, KernelWritingPastTheEndHitsTheGuardPage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  float* p = device_alloc<float>(1024);
  auto launch = [&] {
    MOE_LAUNCH(write_kernel, 5, 256, nullptr)(p, 1024 + 1024);
    cudaDeviceSynchronize();
  };
  EXPECT_DEATH(launch(), "guard page");
  cudaFree(p);
}

TEST(CudaEmulatorDeathTest, HostPointerPassedToAKernelIsNamed) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> host(4);
  auto launch = [&] { MOE_LAUNCH(write_kernel, 1, 32, nullptr)(host.data(), 4); };
  EXPECT_DEATH(launch(), "is host memory");
}

TEST(CudaEmulatorDeathTest, ShuffleWithExitedLanesIsADeadlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  float* p = device_alloc<float>(32);
  auto launch = [&] {
    MOE_LAUNCH(half_warp_shuffle_kernel, 1, 32, nullptr)(p);
    cudaDeviceSynchronize();
  };
  EXPECT_DEATH(launch(), "deadlock");
  cudaFree(p);
}

}  // namespace
