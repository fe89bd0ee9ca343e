// The instruction ceilings of one core (bench/instruction_peak.cpp prints them; the GEMM
// benchmark quotes its figures against them): 12 independent chains of vfmadd231ps zmm (fp32)
// and of vdpbf16ps zmm (bf16 pairs, fp32 accumulation), enough to cover both instructions'
// latency on the two FMA pipes. No memory traffic, so no GEMM can beat these.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>

#if defined(__x86_64__)
#include <immintrin.h>

namespace moe::bench {
namespace peak_detail {

constexpr int kChains = 12;

__attribute__((target("avx512f"))) inline float sum_lanes(const __m512 (&acc)[kChains]) {
  alignas(64) float lanes[16];
  float s = 0;
  for (const __m512& a : acc) {
    _mm512_store_ps(lanes, a);
    for (float v : lanes) s += v;
  }
  return s;
}

template <class Step>
inline double gflops(Step step, double flops_per_step, long iters) {
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

__attribute__((target("avx512f"))) inline float fma_chains(long iters) {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512 x = _mm512_set1_ps(1e-7f), y = _mm512_set1_ps(1.0f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(x, y, acc[j]);
  }
  return sum_lanes(acc);
}

__attribute__((target("avx512f,avx512bf16"))) inline float dpbf16_chains(long iters) {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x33D633D6);  // tiny bf16 values: no overflow
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], x, x);
  }
  return sum_lanes(acc);
}

}  // namespace peak_detail

// GFLOP/s of one core (2 per multiply-add), best of 3 rounds.
inline double fp32_fma_peak(long iters = 100'000'000) {
  return peak_detail::gflops(peak_detail::fma_chains, peak_detail::kChains * 32.0, iters);
}
inline double bf16_dot_peak(long iters = 100'000'000) {
  return peak_detail::gflops(peak_detail::dpbf16_chains, peak_detail::kChains * 64.0, iters);
}

}  // namespace moe::bench
#endif
