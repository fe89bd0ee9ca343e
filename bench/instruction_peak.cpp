// The instruction ceilings of one core, for reading bench/compare_torch.sh's figures: 12
// independent chains of vfmadd231ps zmm (fp32) and of vdpbf16ps zmm (bf16 pairs, fp32
// accumulation), enough to cover both instructions' latency on the two FMA pipes. No memory
// traffic, so no GEMM can beat these; a CPU that splits 512-bit operations in two (Zen 4)
// shows half of what one with full-width pipes (Zen 5) does.
//
//   instruction_peak            prints one line: GFLOP/s per core (2 per multiply-add)
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "moe/cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace {

constexpr int kChains = 12;

__attribute__((target("avx512f"))) float sum_lanes(const __m512 (&acc)[kChains]) {
  alignas(64) float lanes[16];
  float s = 0;
  for (const __m512& a : acc) {
    _mm512_store_ps(lanes, a);
    for (float v : lanes) s += v;
  }
  return s;
}

template <class Step>
double gflops(Step step, double flops_per_step, long iters) {
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    const float sink = step(iters);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sink == 1234.5f) std::puts("");  // keeps the chains alive
    best = std::max(best, flops_per_step * static_cast<double>(iters) / s * 1e-9);
  }
  return best;
}

__attribute__((target("avx512f"))) float fma_chains(long iters) {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512 x = _mm512_set1_ps(1e-7f), y = _mm512_set1_ps(1.0f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(x, y, acc[j]);
  }
  return sum_lanes(acc);
}

__attribute__((target("avx512f,avx512bf16"))) float dpbf16_chains(long iters) {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x33D633D6);  // tiny bf16 values: no overflow
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], x, x);
  }
  return sum_lanes(acc);
}

}  // namespace

int main() {
  const long iters = 100'000'000;
  const moe::CpuFeatures& cpu = moe::cpu_features();
  if (!cpu.avx512f || !cpu.os_zmm) {
    std::puts("instruction peak: this CPU (or OS) has no AVX-512; not measured");
    return 0;
  }
  const double fp32 = gflops(fma_chains, kChains * 32.0, iters);  // 16 lanes x 2
  if (!cpu.bf16_gemm()) {
    std::printf("instruction peak per core: fp32 FMA zmm %.0f GFLOP/s; no AVX-512 BF16\n", fp32);
    return 0;
  }
  const double bf16 = gflops(dpbf16_chains, kChains * 64.0, iters);  // 16 lanes x 2 pairs x 2
  std::printf(
      "instruction peak per core: fp32 FMA zmm %.0f GFLOP/s, vdpbf16ps zmm %.0f GFLOP/s "
      "(bf16/fp32 %.2f)\n",
      fp32, bf16, bf16 / fp32);
}
#else
int main() {
  std::puts("instruction peak: only measured on x86-64");
}
#endif
