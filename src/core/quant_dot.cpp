// Quantized dot products (quant_dot.h): the activation quantizers, the scalar oracle of every
// kernel, and the run-time choice of implementation. The scalar kernels sum each block's (or
// sub-block's) integer products exactly, then add scale x integer sum per block in fp32, in
// block order: the reference the SIMD kernels are tested against.
#include "core/quant_dot.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "moe/cpu_features.h"
#include "moe/error.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

std::atomic<int> g_kernel{static_cast<int>(QuantKernel::Auto)};

// Q8_0 x Q8_0 (regrouped, ActQ8_0Group): sum_i dw * da * sum_j w_j a_j.
void dot_q8_0_scalar(const uint8_t* w, const uint8_t* act, int64_t stride, int nact, int64_t nb,
                     float* out) {
  const auto* wb = reinterpret_cast<const BlockQ8_0*>(w);
  for (int i = 0; i < nact; ++i) {
    const auto* groups = reinterpret_cast<const ActQ8_0Group*>(act + i * stride);
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const ActQ8_0Group& g = groups[b / kActGroupBlocks];
      const int u = static_cast<int>(b % kActGroupBlocks);
      int isum = 0;
      for (int j = 0; j < kQK; ++j) isum += wb[b].qs[j] * g.qs[u / 4][j / 16][u % 4][j % 16];
      sum += f16_to_float(wb[b].d) * g.d[u] * static_cast<float>(isum);
    }
    out[i] = sum;
  }
}

// MXFP4 x Q8_0: sum_i 2^(e-128) * da * sum_j k[w_j] a_j, k the doubled E2M1 values.
void dot_mxfp4_scalar(const uint8_t* w, const uint8_t* act, int64_t stride, int nact, int64_t nb,
                      float* out) {
  const auto* wb = reinterpret_cast<const BlockMXFP4*>(w);
  for (int i = 0; i < nact; ++i) {
    const auto* ab = reinterpret_cast<const BlockQ8_0*>(act + i * stride);
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int isum = 0;
      for (int j = 0; j < kQK / 2; ++j) {
        isum += kMxfp4Values[wb[b].qs[j] & 0xF] * ab[b].qs[j];
        isum += kMxfp4Values[wb[b].qs[j] >> 4] * ab[b].qs[j + kQK / 2];
      }
      sum += e8m0_half_to_float(wb[b].e) * f16_to_float(ab[b].d) * static_cast<float>(isum);
    }
    out[i] = sum;
  }
}

// Q4_0 x Q8_0 (regrouped, ActQ8_0Group): byte t holds value t (low nibble) and t + 16 (high),
// each q - 8.
void dot_q4_0_scalar(const uint8_t* w, const uint8_t* act, int64_t stride, int nact, int64_t nb,
                     float* out) {
  const auto* wb = reinterpret_cast<const BlockQ4_0*>(w);
  for (int i = 0; i < nact; ++i) {
    const auto* groups = reinterpret_cast<const ActQ8_0Group*>(act + i * stride);
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const ActQ8_0Group& g = groups[b / kActGroupBlocks];
      const int u = static_cast<int>(b % kActGroupBlocks);
      const int8_t* lo = g.qs[u / 4][0][u % 4];
      const int8_t* hi = g.qs[u / 4][1][u % 4];
      int isum = 0;
      for (int t = 0; t < kQK / 2; ++t) {
        isum += ((wb[b].qs[t] & 0xF) - 8) * lo[t];
        isum += ((wb[b].qs[t] >> 4) - 8) * hi[t];
      }
      sum += f16_to_float(wb[b].d) * g.d[u] * static_cast<float>(isum);
    }
    out[i] = sum;
  }
}

// Q4_K / Q5_K x Q8_K: value v of sub-block s is d * sc_s * q_v - dmin * m_s, so per super-block
// da * (d * sum_s sc_s sum_v q_v a_v - dmin * sum_s m_s sum_v a_v), the last sums from bsums.
// `q5` adds the fifth bit (Q5_K); per 64 values the low nibbles are sub-block 2c and the high
// nibbles sub-block 2c + 1, and qh bit 2c / 2c + 1 of byte l is the fifth bit of value l.
template <bool q5>
void k_super_block_ints(const uint8_t* scales, const uint8_t* qs, const uint8_t* qh,
                        const BlockQ8_K& a, int* qsum, int* msum) {
  uint8_t sc[8], m[8];
  unpack_k_scales(scales, sc, m);
  int sq = 0, sm = 0;
  for (int c = 0; c < 4; ++c) {
    int lo = 0, hi = 0;
    for (int l = 0; l < 32; ++l) {
      int ql = qs[32 * c + l] & 0xF, qhi = qs[32 * c + l] >> 4;
      if constexpr (q5) {
        ql += ((qh[l] >> (2 * c)) & 1) << 4;
        qhi += ((qh[l] >> (2 * c + 1)) & 1) << 4;
      }
      lo += ql * a.qs[64 * c + l];
      hi += qhi * a.qs[64 * c + 32 + l];
    }
    sq += sc[2 * c] * lo + sc[2 * c + 1] * hi;
    sm += m[2 * c] * (a.bsums[4 * c] + a.bsums[4 * c + 1]);
    sm += m[2 * c + 1] * (a.bsums[4 * c + 2] + a.bsums[4 * c + 3]);
  }
  *qsum = sq;
  *msum = sm;
}

template <typename Block, bool q5>
void dot_qk_scalar(const uint8_t* w, const uint8_t* act, int64_t stride, int nact, int64_t nb,
                   float* out) {
  const auto* wb = reinterpret_cast<const Block*>(w);
  for (int i = 0; i < nact; ++i) {
    const auto* ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride);
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int qsum = 0, msum = 0;
      const uint8_t* qh = nullptr;
      if constexpr (q5) qh = wb[b].qh;
      k_super_block_ints<q5>(wb[b].scales, wb[b].qs, qh, ab[b], &qsum, &msum);
      sum += ab[b].d * f16_to_float(wb[b].d) * static_cast<float>(qsum);
      sum -= ab[b].d * f16_to_float(wb[b].dmin) * static_cast<float>(msum);
    }
    out[i] = sum;
  }
}

// Q6_K x Q8_K: per 128 values, ql bytes l and l + 32 hold values l, l + 32 (low nibbles) and
// l + 64, l + 96 (high nibbles); qh byte l holds their top 2 bits (bits 0-1, 2-3, 4-5, 6-7).
// One int8 scale per 16 values; q - 32 is done as sum sc q a - 32 sum sc bsum.
int q6_k_super_block_int(const BlockQ6_K& w, const BlockQ8_K& a) {
  int total = 0;
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = w.ql + 64 * h;
    const uint8_t* qh = w.qh + 32 * h;
    const int8_t* sc = w.scales + 8 * h;
    const int8_t* aq = a.qs + 128 * h;
    int sub[8] = {};
    for (int l = 0; l < 32; ++l) {
      const int q1 = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
      const int q2 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
      const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
      const int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
      const int is = l / 16;
      sub[is + 0] += q1 * aq[l];
      sub[is + 2] += q2 * aq[l + 32];
      sub[is + 4] += q3 * aq[l + 64];
      sub[is + 6] += q4 * aq[l + 96];
    }
    for (int s = 0; s < 8; ++s) total += sc[s] * (sub[s] - 32 * a.bsums[8 * h + s]);
  }
  return total;
}

void dot_q6_k_scalar(const uint8_t* w, const uint8_t* act, int64_t stride, int nact, int64_t nb,
                     float* out) {
  const auto* wb = reinterpret_cast<const BlockQ6_K*>(w);
  for (int i = 0; i < nact; ++i) {
    const auto* ab = reinterpret_cast<const BlockQ8_K*>(act + i * stride);
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b)
      sum +=
          ab[b].d * f16_to_float(wb[b].d) * static_cast<float>(q6_k_super_block_int(wb[b], ab[b]));
    out[i] = sum;
  }
}

// The scalar activation quantizers are quantize_row's (quant.cpp): the definition the SIMD ones
// must reproduce byte for byte.
void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  quantize_row(GgmlType::Q8_0, x, reinterpret_cast<uint8_t*>(y), nb * kQK);
}
void quantize_q8_k(const float* x, BlockQ8_K* y, int64_t nb) {
  quantize_row(GgmlType::Q8_K, x, reinterpret_cast<uint8_t*>(y), nb * kQKK);
}

constexpr QuantDotTable kScalarTable = {dot_q8_0_scalar,
                                        dot_q4_0_scalar,
                                        dot_qk_scalar<BlockQ4_K, false>,
                                        dot_qk_scalar<BlockQ5_K, true>,
                                        dot_q6_k_scalar,
                                        quantize_q8_0,
                                        quantize_q8_k,
                                        dot_mxfp4_scalar};

const QuantDotTable* table_of(QuantKernel k) {
  switch (k) {
    case QuantKernel::Scalar:
      return &kScalarTable;
    case QuantKernel::Avx2:
      return quant_dot_avx2_table();
    case QuantKernel::Avx512:
      return quant_dot_avx512_table();
    case QuantKernel::Auto:
      break;
  }
  return table_of(quant_kernel());
}

}  // namespace

bool quant_kernel_supported(QuantKernel k) {
  switch (k) {
    case QuantKernel::Auto:
    case QuantKernel::Scalar:
      return true;
    case QuantKernel::Avx2:
      return quant_dot_avx2_table() != nullptr && cpu_features().avx2_int8();
    case QuantKernel::Avx512:
      return quant_dot_avx512_table() != nullptr && cpu_features().avx512_int8();
  }
  return false;
}

void set_quant_kernel(QuantKernel k) {
  MOE_CHECK(quant_kernel_supported(k), "set_quant_kernel: {} is not available on this CPU",
            quant_kernel_name(k));
  g_kernel.store(static_cast<int>(k));
}

QuantKernel quant_kernel() {
  const auto k = static_cast<QuantKernel>(g_kernel.load());
  if (k != QuantKernel::Auto) return k;
  static const QuantKernel best = quant_kernel_supported(QuantKernel::Avx512) ? QuantKernel::Avx512
                                  : quant_kernel_supported(QuantKernel::Avx2) ? QuantKernel::Avx2
                                                                              : QuantKernel::Scalar;
  return best;
}

const char* quant_kernel_name(QuantKernel k) {
  switch (k) {
    case QuantKernel::Auto:
      return "auto";
    case QuantKernel::Scalar:
      return "scalar";
    case QuantKernel::Avx2:
      return "avx2";
    case QuantKernel::Avx512:
      return "avx512-vnni";
  }
  return "?";
}

GgmlType quant_dot_activation_type(GgmlType weight) {
  switch (weight) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::MXFP4:
      return GgmlType::Q8_0;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return GgmlType::Q8_K;
    default:
      MOE_CHECK(false, "no int8 kernel for {} weights",
                ggml_type_name(static_cast<uint32_t>(weight)));
  }
}

QuantDotFn quant_dot_fn(GgmlType weight, QuantKernel k) {
  const QuantDotTable* t = table_of(k);
  MOE_CHECK(t != nullptr, "quant_dot_fn: no {} kernels in this build", quant_kernel_name(k));
  switch (weight) {
    case GgmlType::Q8_0:
      return t->q8_0;
    case GgmlType::Q4_0:
      return t->q4_0;
    case GgmlType::Q4_K:
      return t->q4_k;
    case GgmlType::Q5_K:
      return t->q5_k;
    case GgmlType::Q6_K:
      return t->q6_k;
    case GgmlType::MXFP4:
      return t->mxfp4;
    default:
      MOE_CHECK(false, "no int8 kernel for {} weights",
                ggml_type_name(static_cast<uint32_t>(weight)));
  }
}

void quantize_activation_row(GgmlType act, const float* x, uint8_t* dst, int64_t n, QuantKernel k) {
  const QuantDotTable* t = table_of(k);
  MOE_CHECK(t != nullptr, "quantize_activation_row: no {} kernels in this build",
            quant_kernel_name(k));
  if (act == GgmlType::Q8_0) {
    MOE_CHECK(n % kQK == 0, "quantize_activation_row: {} values are not whole blocks", n);
    t->quantize_q8_0(x, reinterpret_cast<BlockQ8_0*>(dst), n / kQK);
  } else {
    MOE_CHECK(act == GgmlType::Q8_K && n % kQKK == 0,
              "quantize_activation_row: {} values of {} are not whole blocks", n,
              ggml_type_name(static_cast<uint32_t>(act)));
    t->quantize_q8_k(x, reinterpret_cast<BlockQ8_K*>(dst), n / kQKK);
  }
}

int64_t activation_row_bytes(GgmlType weight, int64_t n) {
  if (weight == GgmlType::Q4_0 || weight == GgmlType::Q8_0) {
    const int64_t groups = (n / kQK + kActGroupBlocks - 1) / kActGroupBlocks;
    return groups * static_cast<int64_t>(sizeof(ActQ8_0Group));
  }
  return row_bytes(quant_dot_activation_type(weight), n);
}

void group_q8_0_blocks(const BlockQ8_0* blocks, int64_t nblocks, uint8_t* dst) {
  auto* groups = reinterpret_cast<ActQ8_0Group*>(dst);
  const int64_t ngroups = (nblocks + kActGroupBlocks - 1) / kActGroupBlocks;
  if (nblocks % kActGroupBlocks != 0) groups[ngroups - 1] = ActQ8_0Group{};
  for (int64_t b = 0; b < nblocks; ++b) {
    ActQ8_0Group& g = groups[b / kActGroupBlocks];
    const int u = static_cast<int>(b % kActGroupBlocks);
    std::memcpy(g.qs[u / 4][0][u % 4], blocks[b].qs, kQK / 2);
    std::memcpy(g.qs[u / 4][1][u % 4], blocks[b].qs + kQK / 2, kQK / 2);
    g.d[u] = f16_to_float(blocks[b].d);
    int sum = 0;
    for (int8_t q : blocks[b].qs) sum += q;
    g.sum8[u] = 8 * sum;
  }
}

void prepare_activation_row(GgmlType weight, const float* x, uint8_t* dst, int64_t n,
                            QuantKernel k) {
  const GgmlType act = quant_dot_activation_type(weight);
  if (weight != GgmlType::Q4_0 && weight != GgmlType::Q8_0) {
    quantize_activation_row(act, x, dst, n, k);
    return;
  }
  // Through one group of Q8_0 blocks at a time (on the stack), then regrouped.
  BlockQ8_0 blocks[kActGroupBlocks];
  const int64_t nb = n / kQK;
  MOE_CHECK(n % kQK == 0, "prepare_activation_row: {} values are not whole blocks", n);
  for (int64_t b0 = 0; b0 < nb; b0 += kActGroupBlocks) {
    const int64_t len = std::min<int64_t>(kActGroupBlocks, nb - b0);
    quantize_activation_row(act, x + b0 * kQK, reinterpret_cast<uint8_t*>(blocks), len * kQK, k);
    group_q8_0_blocks(blocks, len, dst + b0 / kActGroupBlocks * sizeof(ActQ8_0Group));
  }
}

double quant_dot_magnitude(GgmlType weight, const uint8_t* w, const uint8_t* act, int64_t nblocks) {
  // Every partial sum an implementation forms (lane, block, sub-block, in any order) is bounded
  // by this dot of absolute values, so (roundings on the longest path) x 2^-24 x it bounds the
  // difference of two float accumulations of the same exact integers.
  double mag = 0;
  for (int64_t b = 0; b < nblocks; ++b) {
    switch (weight) {
      case GgmlType::Q8_0:
      case GgmlType::Q4_0: {
        const auto& ab = reinterpret_cast<const BlockQ8_0*>(act)[b];
        double s = 0, scale = 0;
        for (int j = 0; j < kQK; ++j) {
          int q = 0;
          if (weight == GgmlType::Q8_0) {
            q = reinterpret_cast<const BlockQ8_0*>(w)[b].qs[j];
          } else {
            const uint8_t byte = reinterpret_cast<const BlockQ4_0*>(w)[b].qs[j % 16];
            q = (j < 16 ? byte & 0xF : byte >> 4) - 8;
          }
          s += std::abs(q * ab.qs[j]);
        }
        scale = weight == GgmlType::Q8_0 ? f16_to_float(reinterpret_cast<const BlockQ8_0*>(w)[b].d)
                                         : f16_to_float(reinterpret_cast<const BlockQ4_0*>(w)[b].d);
        mag += std::fabs(scale * f16_to_float(ab.d)) * s;
        break;
      }
      case GgmlType::MXFP4: {
        const auto& ab = reinterpret_cast<const BlockQ8_0*>(act)[b];
        const auto& wb = reinterpret_cast<const BlockMXFP4*>(w)[b];
        double s = 0;
        for (int j = 0; j < kQK; ++j)
          s += std::abs(kMxfp4Values[j < 16 ? wb.qs[j] & 0xF : wb.qs[j - 16] >> 4] * ab.qs[j]);
        mag += std::fabs(e8m0_half_to_float(wb.e) * f16_to_float(ab.d)) * s;
        break;
      }
      case GgmlType::Q4_K:
      case GgmlType::Q5_K: {
        const auto& ab = reinterpret_cast<const BlockQ8_K*>(act)[b];
        const bool q5 = weight == GgmlType::Q5_K;
        const uint8_t *scales, *qs, *qh = nullptr;
        uint16_t d, dmin;
        if (q5) {
          const auto& wb = reinterpret_cast<const BlockQ5_K*>(w)[b];
          scales = wb.scales, qs = wb.qs, qh = wb.qh, d = wb.d, dmin = wb.dmin;
        } else {
          const auto& wb = reinterpret_cast<const BlockQ4_K*>(w)[b];
          scales = wb.scales, qs = wb.qs, d = wb.d, dmin = wb.dmin;
        }
        uint8_t sc[8], m[8];
        unpack_k_scales(scales, sc, m);
        double sq = 0, sm = 0;
        for (int v = 0; v < kQKK; ++v) {
          const int c = v / 64, l = v % 32, high = (v / 32) % 2;
          int q = high ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 0xF;
          if (q5) q += ((qh[l] >> (2 * c + high)) & 1) << 4;
          sq += sc[v / 32] * std::abs(q * ab.qs[v]);
        }
        for (int s = 0; s < 8; ++s) sm += m[s] * std::abs(ab.bsums[2 * s] + ab.bsums[2 * s + 1]);
        mag += std::fabs(ab.d * f16_to_float(d)) * sq + std::fabs(ab.d * f16_to_float(dmin)) * sm;
        break;
      }
      case GgmlType::Q6_K: {
        const auto& ab = reinterpret_cast<const BlockQ8_K*>(act)[b];
        const auto& wb = reinterpret_cast<const BlockQ6_K*>(w)[b];
        double s = 0;
        for (int v = 0; v < kQKK; ++v) {
          const int h = v / 128, t = (v % 128) / 32, l = v % 32;
          const uint8_t byte = wb.ql[64 * h + 32 * (t % 2) + l];
          const int q =
              (t < 2 ? byte & 0xF : byte >> 4) | (((wb.qh[32 * h + l] >> (2 * t)) & 3) << 4);
          s += std::abs(wb.scales[v / 16]) *
               (std::abs(q * ab.qs[v]) + 2 * std::abs(ab.bsums[v / 16]));
        }
        mag += std::fabs(ab.d * f16_to_float(wb.d)) * s;
        break;
      }
      default:
        MOE_CHECK(false, "quant_dot_magnitude: {}", ggml_type_name(static_cast<uint32_t>(weight)));
    }
  }
  return mag;
}

}  // namespace moe
