// Runtime CPU feature checks, so one binary can use AVX-512 BF16 where the CPU has it and fall
// back to portable code elsewhere (the kernels are compiled with target attributes, not
// -march flags, so the build machine's flags never decide what runs).
#pragma once

namespace moe {

struct CpuFeatures {
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16
  bool os_zmm = false;       // the OS saves zmm/opmask state (XCR0), else AVX-512 faults
  // Everything the bf16 GEMM kernel needs.
  bool bf16_gemm() const { return avx512f && avx512bw && avx512vl && avx512_bf16 && os_zmm; }
};

// Detected once (cpuid + xgetbv) and cached.
const CpuFeatures& cpu_features();

}  // namespace moe
