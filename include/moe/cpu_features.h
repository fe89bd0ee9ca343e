// Runtime CPU feature checks, so one binary can use AVX-512 BF16 where the CPU has it and fall
// back to portable code elsewhere (the kernels are compiled with target attributes, not
// -march flags, so the build machine's flags never decide what runs).
#pragma once

namespace moe {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;      // vcvtph2ps: fp16 scales of quantized blocks
  bool os_ymm = false;    // the OS saves ymm state (XCR0), else AVX faults
  bool avx_vnni = false;  // vpdpbusd on ymm without AVX-512 (VEX encoding)
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16
  bool avx512_vnni = false;  // vpdpbusd: int8 dot products
  bool avx512_vbmi = false;  // vpermt2b: byte permutes across a zmm pair (the Q4_0 kernel)
  bool os_zmm = false;       // the OS saves zmm/opmask state (XCR0), else AVX-512 faults
  // Everything the bf16 GEMM kernel needs.
  bool bf16_gemm() const { return avx512f && avx512bw && avx512vl && avx512_bf16 && os_zmm; }
  // What the int8 kernels of quantized weights need (quant_dot.h): AVX2, and AVX-512 VNNI.
  bool avx2_int8() const { return avx2 && fma && f16c && os_ymm; }
  bool avx512_int8() const {
    return avx2_int8() && avx512f && avx512bw && avx512vl && avx512_vnni && os_zmm;
  }
};

// Detected once (cpuid + xgetbv) and cached.
const CpuFeatures& cpu_features();

}  // namespace moe
