// fp32 GEMM backends on the exact GEMMs of a model's training step (issue 23): OpenBLAS sgemm,
// our packed AVX-512 kernel (sgemm_avx512, gemm_f32.cpp) and oneDNN's dnnl_sgemm (loaded from
// libdnnl.so.2 at run time when present: Debian's libdnnl2; not a build dependency), each shape
// in the way the engine calls it: "threaded" (one call on all threads: projections, LM head)
// or "per thread" (one call per thread inside a parallel region, as the MoE layer runs its
// experts and attention its heads). Prints GFLOP/s, % of the fp32 FMA peak of the threads
// used (measured first, in this run) and which backend is fastest; medians of --reps.
// --dtype bf16 measures our bf16 kernel (gemm_bf16, compute_dtype "bfloat16") on the same
// shapes instead, against the vdpbf16ps peak (AVX-512 BF16 CPUs only).
//
//   gemm_shapes [--config configs/default.json] [--reps 7] [--threads 2] [--dtype fp32|bf16]
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "moe/cpu_features.h"
#include "moe/gemm.h"
#include "moe/gemm_bf16.h"
#include "moe/model_config.h"
#include "moe/rng.h"
#include "peak.h"

namespace {

using moe::Trans;

struct Shape {
  std::string what;
  Trans ta, tb;
  int64_t M, N, K;
  bool per_thread;  // one call per thread in a parallel region
};

// The fp32 GEMMs of one training step of the config at its batch and sequence length: forward
// and backward of the attention projections, the routed experts (rows per expert at balanced
// routing: n k / E), the per-head attention blocks and the LM head.
std::vector<Shape> model_shapes(const moe::ModelConfig& c) {
  const int64_t n = int64_t(c.training.batch_size) * c.training.seq_len, d = c.hidden_size;
  const int64_t hd = c.head_size(), qd = c.num_attention_heads * hd,
                kvd = c.num_key_value_heads * hd, V = c.vocab_size, S = c.training.seq_len;
  const int64_t E = std::max(1, c.num_local_experts), k = c.moe.num_experts_per_tok;
  const int64_t rows = c.num_local_experts > 0 ? n * k / E : n;
  const int64_t F = c.num_local_experts > 0 ? c.intermediate_size : c.dense_width();
  const auto N = Trans::No, Y = Trans::Yes;
  return {
      {"attn q/o proj fwd  x W^T", N, Y, n, qd, d, false},
      {"attn k/v proj fwd  x W^T", N, Y, n, kvd, d, false},
      {"attn proj bwd dx   dq W", N, N, n, d, qd, false},
      {"attn proj bwd dW   dq^T x", Y, N, qd, d, n, false},
      {"attn scores fwd    q k^T", N, Y, 64, S, hd, true},
      {"attn values fwd    P v", N, N, 64, hd, S, true},
      {"attn bwd dV        P^T dO", Y, N, S, hd, 64, true},
      {"expert up fwd      x W1^T", N, Y, rows, F, d, true},
      {"expert down fwd    a W2^T", N, Y, rows, d, F, true},
      {"expert bwd da      dy W2", N, N, rows, F, d, true},
      {"expert bwd dW2     dy^T a", Y, N, d, F, rows, true},
      {"expert bwd dx      dh W1", N, N, rows, d, F, true},
      {"expert bwd dW1     dh^T x", Y, N, F, d, rows, true},
      {"head fwd           h W^T", N, Y, n, V, d, false},
      {"head bwd dW        dl^T h", Y, N, V, d, n, false},
      {"head bwd dh        dl W", N, N, n, d, V, false},
  };
}

using Sgemm = std::function<void(Trans, Trans, int64_t, int64_t, int64_t, const float*, int64_t,
                                 const float*, int64_t, float*, int64_t)>;

// dnnl_sgemm(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc): row-major, status 0
// on success.
using DnnlSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);

DnnlSgemm load_dnnl() {
  for (const char* lib : {"libdnnl.so.2", "libdnnl.so"})
    if (void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL))
      if (void* f = dlsym(h, "dnnl_sgemm")) return reinterpret_cast<DnnlSgemm>(f);
  return nullptr;
}

double seconds(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = "configs/default.json";
  std::string dtype = "fp32";
  int reps = 7, threads = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--config")) config = argv[i + 1];
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--dtype")) dtype = argv[i + 1];
  }
  if (dtype != "fp32" && dtype != "bf16") {
    std::fprintf(stderr, "gemm_shapes: --dtype %s: expected fp32 or bf16\n", dtype.c_str());
    return 1;
  }
  const bool bf16 = dtype == "bf16";
  if (bf16 && !moe::cpu_features().bf16_gemm()) {
    std::fprintf(stderr, "gemm_shapes: --dtype bf16: this CPU has no AVX-512 BF16\n");
    return 1;
  }
  omp_set_num_threads(threads);
  const moe::ModelConfig cfg = moe::load_model_config(config);
  const bool avx512 = moe::sgemm_avx512_available();
  const double peak = bf16     ? moe::bench::bf16_dot_peak(30'000'000)
                      : avx512 ? moe::bench::fp32_fma_peak(30'000'000)
                               : 0.0;
  std::printf("%s: %s peak %.0f GFLOP/s per core (this run), %d threads\n", config.c_str(),
              bf16 ? "bf16 vdpbf16ps" : "fp32 FMA", peak, threads);

  std::vector<std::pair<std::string, Sgemm>> backends;
  if (bf16)
    backends.push_back(
        {"bf16 (ours)", [](Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* A,
                           int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc) {
           moe::gemm_bf16(ta, tb, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
         }});
  else
    backends.push_back(
        {"openblas", [](Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* A,
                        int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc) {
           moe::set_sgemm_backend(moe::SgemmBackend::OpenBlas);
           moe::gemm<float>(ta, tb, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
         }});
  if (avx512 && !bf16)
    backends.push_back(
        {"avx512 (ours)", [](Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* A,
                             int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc) {
           moe::sgemm_avx512(ta, tb, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
         }});
  if (DnnlSgemm dnnl = bf16 ? nullptr : load_dnnl())  // dnnl_sgemm is fp32 only
    backends.push_back(
        {"onednn", [dnnl](Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* A,
                          int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc) {
           dnnl(ta == Trans::Yes ? 'T' : 'N', tb == Trans::Yes ? 'T' : 'N', M, N, K, 1.f, A, lda, B,
                ldb, 0.f, C, ldc);
         }});
  else if (!bf16)
    std::printf("(oneDNN: libdnnl.so.2 not found, not measured)\n");

  std::printf("\n| GEMM | op | M | N | K | mode |");
  for (const auto& b : backends) std::printf(" %s GFLOP/s (%% peak) |", b.first.c_str());
  std::printf(" fastest |\n|---|---|---:|---:|---:|---|");
  for (size_t i = 0; i < backends.size(); ++i) std::printf("---:|");
  std::printf("---|\n");
  moe::Rng rng(1);
  for (const Shape& s : model_shapes(cfg)) {
    const int copies = s.per_thread ? threads : 1;
    const int64_t a_size = s.M * s.K, b_size = s.K * s.N, c_size = s.M * s.N;
    std::vector<float> A(a_size * copies), B(b_size * copies), C(c_size * copies);
    rng.fill_normal(A.data(), int64_t(A.size()));
    rng.fill_normal(B.data(), int64_t(B.size()));
    const int64_t lda = s.ta == Trans::No ? s.K : s.M, ldb = s.tb == Trans::No ? s.N : s.K;
    const double flops = 2.0 * s.M * s.N * s.K * copies;
    std::vector<double> gf;
    for (const auto& b : backends) {
      auto run = [&] {
        if (!s.per_thread) {
          b.second(s.ta, s.tb, s.M, s.N, s.K, A.data(), lda, B.data(), ldb, C.data(), s.N);
          return;
        }
#pragma omp parallel num_threads(copies)
        {
          const int t = omp_get_thread_num();
          b.second(s.ta, s.tb, s.M, s.N, s.K, A.data() + t * a_size, lda, B.data() + t * b_size,
                   ldb, C.data() + t * c_size, s.N);
        }
      };
      // Enough calls per rep to run ~20 ms, so that the clock and the thread start do not count.
      const int calls = std::max(1, static_cast<int>(2e9 / flops));
      run();
      std::vector<double> t;
      for (int r = 0; r < reps; ++r)
        t.push_back(seconds([&] {
                      for (int i = 0; i < calls; ++i) run();
                    }) /
                    calls);
      std::nth_element(t.begin(), t.begin() + reps / 2, t.end());
      gf.push_back(flops / t[reps / 2] * 1e-9);
    }
    moe::set_sgemm_backend(moe::SgemmBackend::Auto);
    std::printf("| %s | %s%s | %lld | %lld | %lld | %s |", s.what.c_str(),
                s.ta == Trans::Yes ? "T" : "N", s.tb == Trans::Yes ? "T" : "N",
                static_cast<long long>(s.M), static_cast<long long>(s.N),
                static_cast<long long>(s.K), s.per_thread ? "per thread" : "threaded");
    for (double g : gf)
      std::printf(" %.0f (%.0f%%) |", g, peak > 0 ? 100.0 * g / (peak * threads) : 0.0);
    const size_t best = size_t(std::max_element(gf.begin(), gf.end()) - gf.begin());
    std::printf(" %s |\n", backends[best].first.c_str());
  }
}
