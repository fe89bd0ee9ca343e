// The instruction ceilings of one core, for reading bench/compare_torch.sh's figures: 12
// independent chains of vfmadd231ps zmm (fp32) and of vdpbf16ps zmm (bf16 pairs, fp32
// accumulation), enough to cover both instructions' latency on the two FMA pipes. No memory
// traffic, so no GEMM can beat these; a CPU that splits 512-bit operations in two (Zen 4)
// shows half of what one with full-width pipes (Zen 5) does.
//
//   instruction_peak            prints one line: GFLOP/s per core (2 per multiply-add)
#include <cstdio>

#include "moe/cpu_features.h"
#include "peak.h"

#if defined(__x86_64__)
int main() {
  const long iters = 100'000'000;
  const moe::CpuFeatures& cpu = moe::cpu_features();
  if (!cpu.avx512f || !cpu.os_zmm) {
    std::puts("instruction peak: this CPU (or OS) has no AVX-512; not measured");
    return 0;
  }
  const double fp32 = moe::bench::fp32_fma_peak(iters);
  if (!cpu.bf16_gemm()) {
    std::printf("instruction peak per core: fp32 FMA zmm %.0f GFLOP/s; no AVX-512 BF16\n", fp32);
    return 0;
  }
  const double bf16 = moe::bench::bf16_dot_peak(iters);
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
