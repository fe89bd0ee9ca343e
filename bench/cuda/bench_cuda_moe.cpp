// CudaMoeLayer forward + backward against cuBLAS dense bf16 GEMMs of the same FLOPs, on the
// two shapes of the CUDA issue (docs/cuda.md "Benchmark"):
//   mixtral   T=8192 d=4096 F=14336 E=8  k=2
//   deepseek  T=8192 d=2048 F=1408  E=64 k=6, 2 shared experts (Hs = 2 x 1408)
// The dense baseline runs the same GEMM chain as the layer with every kept row in one block
// (no routing, no permutation, no grouped GEMM): per FFN 2 forward + 4 backward products on
// [N, d] x [d, 2F] / [N, F] x [F, d] in bf16 with fp32 accumulation (weight gradients into
// fp32), plus the three fp32 router GEMMs. So "ratio" is what routing, permutation, the
// grouped GEMM and the elementwise kernels cost over ideal dense math.
// Times are cudaEvent medians on the layer's stream; the layer's forward includes its one
// device-to-host synchronization (the grouped GEMM's row counts).
//
// Usage: bench_cuda_moe [--iters N] [--warmup N] [--shape mixtral|deepseek|tiny|all]
// The PyTorch Hugging Face-style loop block on the same shapes: bench/cuda/compare_torch_cuda.py.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "moe/cuda_moe_layer.h"
#include "moe/rng.h"

namespace {

using moe::MoeConfig;
using bf16 = __nv_bfloat16;

struct Shape {
  const char* name;
  int T, d, F, E, k, n_shared;
};

// "tiny" is not part of "all": it checks the program end to end in seconds (ctest runs it on
// the CPU emulator, where the times mean nothing).
const Shape kShapes[] = {{"mixtral", 8192, 4096, 14336, 8, 2, 0},
                         {"deepseek", 8192, 2048, 1408, 64, 6, 2},
                         {"tiny", 256, 64, 96, 8, 2, 1}};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Times fn (enqueued on stream) `iters` times after `warmup` runs; median milliseconds.
template <class Fn>
double time_ms(cudaStream_t stream, int warmup, int iters, const Fn& fn) {
  cudaEvent_t start, stop;
  MOE_CUDA_CHECK(cudaEventCreate(&start));
  MOE_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) fn();
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    MOE_CUDA_CHECK(cudaEventRecord(start, stream));
    fn();
    MOE_CUDA_CHECK(cudaEventRecord(stop, stream));
    MOE_CUDA_CHECK(cudaEventSynchronize(stop));
    float elapsed = 0;
    MOE_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start, stop));
    ms.push_back(elapsed);
  }
  MOE_CUDA_CHECK(cudaEventDestroy(start));
  MOE_CUDA_CHECK(cudaEventDestroy(stop));
  return median(ms);
}

template <class T>
T* device_alloc(int64_t n, int byte_pattern) {
  T* p = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), sizeof(T) * std::max<int64_t>(n, 1)));
  // A nonzero pattern (0x3C3C as bf16 is about 0.0115): all-zero operands run GEMMs at
  // unrepresentatively low power.
  MOE_CUDA_CHECK(cudaMemset(p, byte_pattern, sizeof(T) * std::max<int64_t>(n, 1)));
  return p;
}

// Row-major C [M, N] = op(A) op(B) (+ beta C), bf16 operands, fp32 accumulation.
void gemm(cublasHandle_t h, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const bf16* A,
          int64_t lda, const bf16* B, int64_t ldb, float beta, void* C, bool c_fp32, int64_t ldc) {
  const float alpha = 1.0f;
  MOE_CUBLAS_CHECK(cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                                &alpha, B, CUDA_R_16BF, static_cast<int>(ldb), A, CUDA_R_16BF,
                                static_cast<int>(lda), &beta, C, c_fp32 ? CUDA_R_32F : CUDA_R_16BF,
                                static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// The dense GEMMs of one SwiGLU FFN over M rows, forward and backward (9 M d F multiply-adds x 2).
struct DenseFfn {
  int64_t M, d, F;
  bf16 *x, *w13, *w2, *h, *a, *y, *dy, *da, *dh, *dx;
  float *dw13, *dw2;

  DenseFfn(int64_t M_, int64_t d_, int64_t F_) : M(M_), d(d_), F(F_) {
    x = device_alloc<bf16>(M * d, 0x3C);
    w13 = device_alloc<bf16>(2 * F * d, 0x3C);
    w2 = device_alloc<bf16>(d * F, 0x3C);
    h = device_alloc<bf16>(M * 2 * F, 0x3C);
    a = device_alloc<bf16>(M * F, 0x3C);
    y = device_alloc<bf16>(M * d, 0x3C);
    dy = device_alloc<bf16>(M * d, 0x3C);
    da = device_alloc<bf16>(M * F, 0x3C);
    dh = device_alloc<bf16>(M * 2 * F, 0x3C);
    dx = device_alloc<bf16>(M * d, 0x3C);
    dw13 = device_alloc<float>(2 * F * d, 0);
    dw2 = device_alloc<float>(d * F, 0);
  }
  ~DenseFfn() {
    for (void* p : {static_cast<void*>(x), static_cast<void*>(w13), static_cast<void*>(w2),
                    static_cast<void*>(h), static_cast<void*>(a), static_cast<void*>(y),
                    static_cast<void*>(dy), static_cast<void*>(da), static_cast<void*>(dh),
                    static_cast<void*>(dx), static_cast<void*>(dw13), static_cast<void*>(dw2)})
      cudaFree(p);
  }
  DenseFfn(const DenseFfn&) = delete;
  DenseFfn& operator=(const DenseFfn&) = delete;

  void run(cublasHandle_t hd) const {
    if (M == 0) return;
    gemm(hd, false, true, M, 2 * F, d, x, d, w13, d, 0, h, false, 2 * F);     // h = x W13^T
    gemm(hd, false, true, M, d, F, a, F, w2, F, 0, y, false, d);              // y = a W2^T
    gemm(hd, false, false, M, F, d, dy, d, w2, F, 0, da, false, F);           // da = dy W2
    gemm(hd, true, false, d, F, M, dy, d, a, F, 1, dw2, true, F);             // dW2 += dy^T a
    gemm(hd, false, false, M, d, 2 * F, dh, 2 * F, w13, d, 0, dx, false, d);  // dx = dh W13
    gemm(hd, true, false, 2 * F, d, M, dh, 2 * F, x, d, 1, dw13, true, d);    // dW13 += dh^T x
  }
};

void bench_shape(const Shape& s, int warmup, int iters) {
  MoeConfig cfg;
  cfg.hidden_size = s.d;
  cfg.moe_intermediate_size = s.F;
  cfg.num_experts = s.E;
  cfg.num_experts_per_tok = s.k;
  cfg.n_shared_experts = s.n_shared;
  cfg.capacity_factor = 0;  // dropless, as Mixtral and DeepSeek run
  cfg.compute_dtype = moe::ComputeDtype::BFloat16;
  std::printf("== %s: T=%d d=%d F=%d E=%d k=%d shared=%d ==\n", s.name, s.T, s.d, s.F, s.E, s.k,
              s.n_shared);

  moe::CudaMoeLayer layer(cfg);
  // N(0, 0.02) weights: the router fully random; the (large) expert arenas tile one random
  // block, which is all the timing needs.
  {
    std::vector<float>& w = layer.params().values();
    moe::Rng rng(7);
    const int64_t block = std::min<int64_t>(static_cast<int64_t>(w.size()), int64_t(1) << 22);
    rng.fill_normal(w.data(), block, 0.0, 0.02);
    for (int64_t i = block; i < static_cast<int64_t>(w.size()); i += block)
      std::memcpy(w.data() + i, w.data(),
                  sizeof(float) * std::min<int64_t>(block, static_cast<int64_t>(w.size()) - i));
    const moe::ParamSpec& router = layer.params().spec("router.weight");
    rng.fill_normal(w.data() + router.offset, router.shape.numel(), 0.0, 0.02);
    layer.upload_params();
  }
  const int64_t Td = int64_t(s.T) * s.d;
  std::vector<float> host(Td);
  moe::Rng rng(11);
  rng.fill_normal(host.data(), Td);
  float* x = device_alloc<float>(Td, 0);
  float* out = device_alloc<float>(Td, 0);
  float* dout = device_alloc<float>(Td, 0);
  float* dx = device_alloc<float>(Td, 0);
  MOE_CUDA_CHECK(cudaMemcpy(x, host.data(), sizeof(float) * Td, cudaMemcpyHostToDevice));
  rng.fill_normal(host.data(), Td, 0.0, 1e-3);
  MOE_CUDA_CHECK(cudaMemcpy(dout, host.data(), sizeof(float) * Td, cudaMemcpyHostToDevice));
  cudaStream_t stream = static_cast<cudaStream_t>(layer.stream());

  const double ours_ms = time_ms(stream, warmup, iters, [&] {
    layer.forward_device(x, out, s.T);
    layer.backward_device(dout, dx);
  });
  const int64_t N = layer.kept_rows();
  const int64_t Hs = cfg.shared_hidden();
  const double router_flops = 3 * 2.0 * s.T * s.d * s.E;
  const double ffn_flops = 3 * 2.0 * 3.0 * s.d * (double(N) * s.F + double(s.T) * Hs);
  const double flops = router_flops + ffn_flops;
  const moe::MoeMetrics& m = layer.metrics();
  std::printf("  routing: N=%lld kept rows, load max/mean %.3f, aux loss %.5f; experts by %s\n",
              static_cast<long long>(N), m.load_max_over_mean, layer.aux_loss(),
              layer.uses_grouped_gemm() ? "cublasGemmGroupedBatchedEx" : "one cublasGemmEx each");

  // Dense baseline with the same FLOPs on the same stream.
  cublasHandle_t blas;
  MOE_CUBLAS_CHECK(cublasCreate(&blas));
  MOE_CUBLAS_CHECK(cublasSetStream(blas, stream));
  double dense_ms = 0;
  {
    DenseFfn routed(N, s.d, s.F);
    DenseFfn shared(Hs > 0 ? s.T : 0, s.d, std::max<int64_t>(Hs, 1));
    float* wr = device_alloc<float>(int64_t(s.E) * s.d, 0);
    float* z = device_alloc<float>(int64_t(s.T) * s.E, 0);
    float* dwr = device_alloc<float>(int64_t(s.E) * s.d, 0);
    const float one = 1.0f, zero = 0.0f;
    dense_ms = time_ms(stream, warmup, iters, [&] {
      MOE_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.E, s.T, s.d, &one, wr, s.d, x,
                                   s.d, &zero, z, s.E));
      routed.run(blas);
      shared.run(blas);
      MOE_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, s.d, s.E, s.T, &one, x, s.d, z,
                                   s.E, &one, dwr, s.d));
      MOE_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, s.d, s.T, s.E, &one, wr, s.d, z,
                                   s.E, &one, dx, s.d));
    });
    for (float* p : {wr, z, dwr}) cudaFree(p);
  }
  cublasDestroy(blas);

  const double ours_tflops = flops / (ours_ms * 1e-3) / 1e12;
  const double dense_tflops = flops / (dense_ms * 1e-3) / 1e12;
  std::printf("  FLOPs per fwd+bwd: %.3f T (router %.3f T)\n", flops / 1e12, router_flops / 1e12);
  std::printf("  ours  fwd+bwd  %9.3f ms  %7.1f TFLOP/s\n", ours_ms, ours_tflops);
  std::printf("  dense bf16     %9.3f ms  %7.1f TFLOP/s\n", dense_ms, dense_tflops);
  std::printf("  ratio ours/dense time %.2fx (ours reaches %.0f%% of dense throughput)\n",
              ours_ms / dense_ms, 100.0 * dense_ms / ours_ms);
  for (float* p : {x, out, dout, dx}) cudaFree(p);
}

}  // namespace

int main(int argc, char** argv) {
  int warmup = 3, iters = 20;
  std::string which = "all";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) {
      iters = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--warmup" && i + 1 < argc) {
      warmup = std::max(0, std::atoi(argv[++i]));
    } else if (a == "--shape" && i + 1 < argc) {
      which = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--iters N] [--warmup N] [--shape mixtral|deepseek|tiny|all]\n",
                   argv[0]);
      return 2;
    }
  }
  if (!moe::cuda_available()) {
    std::fprintf(stderr, "bench_cuda_moe: no CUDA device available\n");
    return 1;
  }
  try {
    cudaDeviceProp prop;
    MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s (sm_%d%d), %d warmup, median of %d\n", prop.name, prop.major,
                prop.minor, warmup, iters);
    bool ran = false;
    for (const Shape& s : kShapes)
      if (which == s.name || (which == "all" && std::strcmp(s.name, "tiny") != 0)) {
        bench_shape(s, warmup, iters);
        ran = true;
      }
    if (!ran) {
      std::fprintf(stderr, "bench_cuda_moe: unknown shape \"%s\" (mixtral, deepseek, tiny, all)\n",
                   which.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_moe: %s\n", e.what());
    return 1;
  }
  return 0;
}
