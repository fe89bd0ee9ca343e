#include "moe/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace moe {

namespace {
CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid(1, a, b, c, d);
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  if (osxsave) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    // XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM state all enabled.
    f.os_zmm = (lo & 0xE6u) == 0xE6u;
    f.os_ymm = (lo & 0x6u) == 0x6u;
  }
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = (b >> 5) & 1;
  f.avx512_vnni = (c >> 11) & 1;
  f.avx512_vbmi = (c >> 1) & 1;
  f.avx512f = (b >> 16) & 1;
  f.avx512bw = (b >> 30) & 1;
  f.avx512vl = (b >> 31) & 1;
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512_bf16 = (a >> 5) & 1;
  f.avx_vnni = (a >> 4) & 1;
#endif
  return f;
}
}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

}  // namespace moe
