// The int8 kernels of quantized weights (core/quant_dot.h): every SIMD implementation the CPU
// can run (AVX2 is forced on AVX-512 machines too) against the scalar oracle on random blocks,
// the activation quantizers against the rounding rules written out here, and linear_forward on
// each type against dequantized weights in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/linear_rows.h"
#include "core/quant_dot.h"
#include "moe/cpu_features.h"
#include "moe/gemm_bf16.h"
#include "moe/linear.h"
#include "moe/quant.h"
#include "moe/safetensors.h"

namespace moe {
namespace {

constexpr GgmlType kWeightTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K,
                                     GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::MXFP4};

struct KernelGuard {
  ~KernelGuard() { set_quant_kernel(QuantKernel::Auto); }
};

std::vector<QuantKernel> simd_kernels() {
  std::vector<QuantKernel> ks;
  for (QuantKernel k : {QuantKernel::Avx2, QuantKernel::Avx512})
    if (quant_kernel_supported(k)) ks.push_back(k);
  return ks;
}

int64_t block_values(GgmlType t) {
  return ggml_block(static_cast<uint32_t>(t)).values;
}
int64_t block_bytes(GgmlType t) {
  return ggml_block(static_cast<uint32_t>(t)).bytes;
}

// A sane fp16 scale: magnitude 1e-3 to 1e-1, either sign.
uint16_t random_scale(std::mt19937& rng) {
  std::uniform_real_distribution<float> mag(1e-3f, 1e-1f);
  return float_to_f16(rng() % 2 ? mag(rng) : -mag(rng));
}

// Random blocks of a weight type: every byte random, then the fp16 scales made sane. Block
// `zero_block` (if in range) is all zero bytes.
std::vector<uint8_t> random_weights(GgmlType t, int64_t nblocks, std::mt19937& rng,
                                    int64_t zero_block = -1) {
  const int64_t bb = block_bytes(t);
  std::vector<uint8_t> buf(static_cast<size_t>(nblocks * bb));
  for (auto& byte : buf) byte = static_cast<uint8_t>(rng());
  for (int64_t b = 0; b < nblocks; ++b) {
    uint8_t* p = buf.data() + b * bb;
    if (b == zero_block) {
      std::memset(p, 0, static_cast<size_t>(bb));
      continue;
    }
    switch (t) {
      case GgmlType::Q8_0:
        reinterpret_cast<BlockQ8_0*>(p)->d = random_scale(rng);
        break;
      case GgmlType::Q4_0:
        reinterpret_cast<BlockQ4_0*>(p)->d = random_scale(rng);
        break;
      case GgmlType::Q4_K:
        reinterpret_cast<BlockQ4_K*>(p)->d = random_scale(rng);
        reinterpret_cast<BlockQ4_K*>(p)->dmin = random_scale(rng);
        break;
      case GgmlType::Q5_K:
        reinterpret_cast<BlockQ5_K*>(p)->d = random_scale(rng);
        reinterpret_cast<BlockQ5_K*>(p)->dmin = random_scale(rng);
        break;
      case GgmlType::Q6_K:
        reinterpret_cast<BlockQ6_K*>(p)->d = random_scale(rng);
        break;
      case GgmlType::MXFP4:  // 2^-18 .. 2^-8 times the doubled E2M1 values
        reinterpret_cast<BlockMXFP4*>(p)->e = static_cast<uint8_t>(110 + rng() % 11);
        break;
      default:
        ADD_FAILURE() << "not a weight type";
    }
  }
  return buf;
}

// Random activation blocks as the quantizers make them: q within +-127, bsums consistent.
std::vector<uint8_t> random_activations(GgmlType act, int64_t nblocks, std::mt19937& rng,
                                        int64_t zero_block = -1) {
  const int64_t bb = block_bytes(act);
  std::vector<uint8_t> buf(static_cast<size_t>(nblocks * bb), 0);
  std::uniform_int_distribution<int> q(-127, 127);
  for (int64_t b = 0; b < nblocks; ++b) {
    if (b == zero_block) continue;
    if (act == GgmlType::Q8_0) {
      auto* blk = reinterpret_cast<BlockQ8_0*>(buf.data() + b * bb);
      blk->d = random_scale(rng);
      for (auto& v : blk->qs) v = static_cast<int8_t>(q(rng));
    } else {
      auto* blk = reinterpret_cast<BlockQ8_K*>(buf.data() + b * bb);
      blk->d = std::uniform_real_distribution<float>(-0.05f, 0.05f)(rng);
      for (int g = 0; g < kQKK / 16; ++g) {
        int s = 0;
        for (int j = 0; j < 16; ++j) s += blk->qs[16 * g + j] = static_cast<int8_t>(q(rng));
        blk->bsums[g] = static_cast<int16_t>(s);
      }
    }
  }
  return buf;
}

// The activation rows a kernel of t reads, from rows of Q8_0 / Q8_K blocks (nb per row): the
// same bytes, or for Q4_0 and Q8_0 each row regrouped (group_q8_0_blocks).
std::vector<uint8_t> kernel_rows(GgmlType t, const std::vector<uint8_t>& rows, int64_t nrows,
                                 int64_t nb) {
  if (t != GgmlType::Q4_0 && t != GgmlType::Q8_0) return rows;
  const int64_t stride = activation_row_bytes(t, nb * kQK);
  std::vector<uint8_t> out(static_cast<size_t>(nrows * stride), 0xEE);
  for (int64_t i = 0; i < nrows; ++i)
    group_q8_0_blocks(reinterpret_cast<const BlockQ8_0*>(rows.data()) + i * nb, nb,
                      out.data() + i * stride);
  return out;
}

// Tolerance of two float accumulations of the same exact integers: each partial sum is bounded
// by the dot of absolute values (quant_dot_magnitude); a path has at most nb additions across
// blocks, 3 across lanes and a few roundings per block term (scale product, int -> float, the
// product and the mins), so (2 nb + 16) roundings of 2^-24 bound it.
double tolerance(GgmlType t, const uint8_t* w, const uint8_t* act, int64_t nb) {
  return (2.0 * static_cast<double>(nb) + 16) * 0x1p-24 * quant_dot_magnitude(t, w, act, nb) +
         1e-30;
}

TEST(QuantDot, SimdKernelsMatchScalarOracle) {
  const auto kernels = simd_kernels();
  if (kernels.empty()) GTEST_SKIP() << "no SIMD kernels on this CPU";
  std::mt19937 rng(19);
  for (GgmlType t : kWeightTypes) {
    const GgmlType at = quant_dot_activation_type(t);
    const QuantDotFn oracle = quant_dot_fn(t, QuantKernel::Scalar);
    // Q4_0 and Q8_0 kernels take 8 blocks at a time: whole groups, with and without a partial one.
    for (int64_t nb : {1, 2, 3, 7, 8, 12, 16, 19}) {
      for (int trial = 0; trial < 6; ++trial) {
        // Trial 1 has a zero weight block, trial 2 a zero activation block.
        const auto w = random_weights(t, nb, rng, trial == 1 ? nb / 2 : -1);
        const int64_t q8_stride = nb * block_bytes(at);
        std::vector<uint8_t> q8;
        for (int i = 0; i < kMaxDotRows; ++i) {
          const auto a = random_activations(at, nb, rng, trial == 2 ? i % nb : -1);
          q8.insert(q8.end(), a.begin(), a.end());
        }
        const auto acts = kernel_rows(t, q8, kMaxDotRows, nb);
        const int64_t stride = static_cast<int64_t>(acts.size()) / kMaxDotRows;
        for (int nact = 1; nact <= kMaxDotRows; ++nact) {
          float want[kMaxDotRows], got[kMaxDotRows];
          oracle(w.data(), acts.data(), stride, nact, nb, want);
          for (QuantKernel k : kernels) {
            quant_dot_fn(t, k)(w.data(), acts.data(), stride, nact, nb, got);
            for (int i = 0; i < nact; ++i) {
              const double tol = tolerance(t, w.data(), q8.data() + i * q8_stride, nb);
              EXPECT_NEAR(got[i], want[i], tol)
                  << ggml_type_name(static_cast<uint32_t>(t)) << " " << quant_kernel_name(k)
                  << " blocks " << nb << " rows " << nact << " row " << i << " trial " << trial;
            }
          }
        }
      }
    }
  }
}

// Blocks whose integer sums are large (every weight and activation at its extreme): the int16
// pair sums of AVX2 must not saturate (an error of 1 in 32767 per pair, far above the bound).
// Nine equal blocks: the Q4_0 and Q8_0 kernels take whole groups of 8 and a partial one.
TEST(QuantDot, ExtremeValuesAreExact) {
  const auto kernels = simd_kernels();
  if (kernels.empty()) GTEST_SKIP() << "no SIMD kernels on this CPU";
  constexpr int64_t kBlocks = 9;
  for (GgmlType t : kWeightTypes) {
    const GgmlType at = quant_dot_activation_type(t);
    for (int sign : {1, -1}) {
      std::vector<uint8_t> w1(static_cast<size_t>(block_bytes(t)), 0xFF);
      std::vector<uint8_t> a1(static_cast<size_t>(block_bytes(at)), 0);
      // fp16 1.0 scales (0x3C00); Q8_0 weights -128 (0x80) are the largest magnitude.
      if (t == GgmlType::Q8_0) {
        auto* b = reinterpret_cast<BlockQ8_0*>(w1.data());
        std::memset(b->qs, 0x80, sizeof b->qs);
        b->d = 0x3C00;
      } else if (t == GgmlType::Q4_0) {
        reinterpret_cast<BlockQ4_0*>(w1.data())->d = 0x3C00;
      } else if (t == GgmlType::MXFP4) {
        reinterpret_cast<BlockMXFP4*>(w1.data())->e = 128;  // nibbles 0xF: -12, the largest

      } else if (t == GgmlType::Q6_K) {
        auto* b = reinterpret_cast<BlockQ6_K*>(w1.data());
        std::memset(b->scales, 0x7F, sizeof b->scales);
        b->d = 0x3C00;
      } else {
        auto* b = reinterpret_cast<BlockQ4_K*>(w1.data());  // Q5_K starts the same way
        b->d = 0x3C00;
        b->dmin = 0x3C00;
      }
      if (at == GgmlType::Q8_0) {
        auto* b = reinterpret_cast<BlockQ8_0*>(a1.data());
        b->d = 0x3C00;
        for (auto& q : b->qs) q = static_cast<int8_t>(127 * sign);
      } else {
        auto* b = reinterpret_cast<BlockQ8_K*>(a1.data());
        b->d = 1;
        for (auto& q : b->qs) q = static_cast<int8_t>(127 * sign);
        for (auto& s : b->bsums) s = static_cast<int16_t>(16 * 127 * sign);
      }
      std::vector<uint8_t> w, a;
      for (int64_t b = 0; b < kBlocks; ++b) {
        w.insert(w.end(), w1.begin(), w1.end());
        a.insert(a.end(), a1.begin(), a1.end());
      }
      const auto act = kernel_rows(t, a, 1, kBlocks);
      for (int64_t nb : {int64_t{1}, kBlocks}) {
        float want = 0, got = 0;
        quant_dot_fn(t, QuantKernel::Scalar)(w.data(), act.data(), 0, 1, nb, &want);
        for (QuantKernel k : kernels) {
          quant_dot_fn(t, k)(w.data(), act.data(), 0, 1, nb, &got);
          EXPECT_NEAR(got, want, tolerance(t, w.data(), a.data(), nb))
              << ggml_type_name(static_cast<uint32_t>(t)) << " " << quant_kernel_name(k) << " sign "
              << sign << " blocks " << nb;
        }
      }
    }
  }
}

// The activation rounding rules (the contract with quantize_row), written out independently.
TEST(QuantDot, ActivationQuantizersFollowTheRules) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(2 * kQKK);
  for (auto& v : x) v = normal(rng);
  x[3] = -4.5f;  // the largest magnitude of the first Q8_K block is negative
  x[kQKK + 10] = 5.0f;
  // Q8_0
  std::vector<uint8_t> q0(static_cast<size_t>(row_bytes(GgmlType::Q8_0, 2 * kQKK)));
  quantize_activation_row(GgmlType::Q8_0, x.data(), q0.data(), 2 * kQKK);
  for (int b = 0; b < 2 * kQKK / kQK; ++b) {
    const auto& blk = reinterpret_cast<const BlockQ8_0*>(q0.data())[b];
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[b * kQK + j]));
    const float d = amax / 127;
    EXPECT_EQ(blk.d, float_to_f16(d));
    for (int j = 0; j < kQK; ++j) {
      const float v = x[b * kQK + j] / d;  // half away from zero
      const int want = static_cast<int>(v < 0 ? std::ceil(v - 0.5f) : std::floor(v + 0.5f));
      EXPECT_NEAR(blk.qs[j], want, 1) << b << " " << j;  // x * (1/d) vs x / d may differ by 1 ulp
    }
  }
  // Q8_K
  std::vector<uint8_t> qk(static_cast<size_t>(row_bytes(GgmlType::Q8_K, 2 * kQKK)));
  quantize_activation_row(GgmlType::Q8_K, x.data(), qk.data(), 2 * kQKK);
  const float maxes[2] = {-4.5f, 5.0f};
  for (int b = 0; b < 2; ++b) {
    const auto& blk = reinterpret_cast<const BlockQ8_K*>(qk.data())[b];
    const float iscale = -127.f / maxes[b];
    EXPECT_EQ(blk.d, 1 / iscale);
    for (int j = 0; j < kQKK; ++j) {
      const float v = iscale * x[b * kQKK + j];
      EXPECT_EQ(blk.qs[j], std::min(127, static_cast<int>(std::nearbyint(v))));
    }
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += blk.qs[16 * g + j];
      EXPECT_EQ(blk.bsums[g], s);
    }
    // The value of largest magnitude maps to -127 exactly.
    EXPECT_EQ(blk.qs[b == 0 ? 3 : 10], -127);
  }
  // Ties: Q8_0 rounds 0.5 away from zero; Q8_K rounds half to even.
  std::vector<float> tie(kQKK, 0.f);
  tie[0] = 127.f;  // d = 1 (Q8_0) and iscale = -1 (Q8_K)
  tie[1] = 2.5f;
  tie[2] = -0.5f;
  quantize_activation_row(GgmlType::Q8_0, tie.data(), q0.data(), kQK);
  EXPECT_EQ(reinterpret_cast<const BlockQ8_0*>(q0.data())->qs[1], 3);
  EXPECT_EQ(reinterpret_cast<const BlockQ8_0*>(q0.data())->qs[2], -1);
  quantize_activation_row(GgmlType::Q8_K, tie.data(), qk.data(), kQKK);
  EXPECT_EQ(reinterpret_cast<const BlockQ8_K*>(qk.data())->qs[1], -2);
  EXPECT_EQ(reinterpret_cast<const BlockQ8_K*>(qk.data())->qs[2], 0);
  // A zero block: d = 0 and q = 0 in both.
  std::vector<float> zero(kQKK, 0.f);
  quantize_activation_row(GgmlType::Q8_0, zero.data(), q0.data(), kQK);
  EXPECT_EQ(reinterpret_cast<const BlockQ8_0*>(q0.data())->d, 0);
  for (auto q : reinterpret_cast<const BlockQ8_0*>(q0.data())->qs) EXPECT_EQ(q, 0);
  quantize_activation_row(GgmlType::Q8_K, zero.data(), qk.data(), kQKK);
  const auto& zk = *reinterpret_cast<const BlockQ8_K*>(qk.data());
  EXPECT_EQ(zk.d, 0.f);
  for (auto q : zk.qs) EXPECT_EQ(q, 0);
  for (auto s : zk.bsums) EXPECT_EQ(s, 0);
}

// The SIMD activation quantizers give the scalar quantizer's bytes: random rows at several
// magnitudes, exact ties (x / d = k + 0.5), zero blocks, and +-max in one block (the first wins).
TEST(QuantDot, SimdActivationQuantizersMatchScalar) {
  const auto kernels = simd_kernels();
  if (kernels.empty()) GTEST_SKIP() << "no SIMD kernels on this CPU";
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t n = 4 * kQKK;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> x(static_cast<size_t>(n));
    const float scale = std::pow(10.f, static_cast<float>(trial % 7) - 3);
    for (auto& v : x) v = normal(rng) * scale;
    if (trial % 4 == 1) std::fill(x.begin() + kQKK, x.begin() + 2 * kQKK, 0.f);
    if (trial % 4 == 2) {
      // Halves: 127 sets d = 1 (Q8_0) and iscale = -1 (Q8_K), so v + 0.5 values are ties.
      for (int64_t j = 0; j < n; ++j)
        x[j] = static_cast<float>(static_cast<int>(rng() % 255) - 127) + 0.5f;
      for (int64_t b = 0; b < n; b += kQK) x[b] = 127.f;
    }
    if (trial % 4 == 3) {
      x[2 * kQKK + 5] = -50.f;
      x[2 * kQKK + 9] = 50.f;
    }
    for (GgmlType at : {GgmlType::Q8_0, GgmlType::Q8_K}) {
      std::vector<uint8_t> want(static_cast<size_t>(row_bytes(at, n))), got(want.size());
      quantize_activation_row(at, x.data(), want.data(), n, QuantKernel::Scalar);
      for (QuantKernel k : kernels) {
        std::fill(got.begin(), got.end(), 0xAB);
        quantize_activation_row(at, x.data(), got.data(), n, k);
        EXPECT_EQ(got, want) << ggml_type_name(static_cast<uint32_t>(at)) << " "
                             << quant_kernel_name(k) << " trial " << trial;
      }
    }
  }
}

// The values of one block, from the format definitions in quant.h (an independent reading of
// the layouts, not the kernels' code paths).
void dequantize_block(GgmlType t, const uint8_t* p, double* out) {
  switch (t) {
    case GgmlType::Q8_0: {
      const auto& b = *reinterpret_cast<const BlockQ8_0*>(p);
      for (int j = 0; j < 32; ++j) out[j] = f16_to_float(b.d) * b.qs[j];
      return;
    }
    case GgmlType::Q4_0: {
      const auto& b = *reinterpret_cast<const BlockQ4_0*>(p);
      for (int j = 0; j < 16; ++j) {
        out[j] = f16_to_float(b.d) * ((b.qs[j] & 0xF) - 8);
        out[j + 16] = f16_to_float(b.d) * ((b.qs[j] >> 4) - 8);
      }
      return;
    }
    case GgmlType::MXFP4: {  // E2M1: sign bit 3, exponent bits 2-1, mantissa bit 0
      const auto& b = *reinterpret_cast<const BlockMXFP4*>(p);
      auto e2m1 = [](int code) {
        const int e = (code >> 1) & 3, m = code & 1;
        const double mag = e == 0 ? 0.5 * m : std::ldexp(1.0 + 0.5 * m, e - 1);
        return code & 8 ? -mag : mag;
      };
      const double scale = std::ldexp(1.0, b.e - 127);
      for (int j = 0; j < 16; ++j) {
        out[j] = scale * e2m1(b.qs[j] & 0xF);
        out[j + 16] = scale * e2m1(b.qs[j] >> 4);
      }
      return;
    }
    case GgmlType::Q8_K: {
      const auto& b = *reinterpret_cast<const BlockQ8_K*>(p);
      for (int j = 0; j < 256; ++j) out[j] = static_cast<double>(b.d) * b.qs[j];
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool q5 = t == GgmlType::Q5_K;
      const auto& b4 = *reinterpret_cast<const BlockQ4_K*>(p);
      const auto& b5 = *reinterpret_cast<const BlockQ5_K*>(p);
      const uint8_t* s = q5 ? b5.scales : b4.scales;
      const uint8_t* qs = q5 ? b5.qs : b4.qs;
      for (int sub = 0; sub < 8; ++sub) {
        int sc, m;
        if (sub < 4) {
          sc = s[sub] & 63;
          m = s[sub + 4] & 63;
        } else {
          sc = (s[sub + 4] & 0xF) | ((s[sub - 4] >> 6) << 4);
          m = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
        }
        for (int l = 0; l < 32; ++l) {
          const uint8_t byte = qs[32 * (sub / 2) + l];
          int q = sub % 2 ? byte >> 4 : byte & 0xF;
          if (q5) q |= ((b5.qh[l] >> sub) & 1) << 4;
          out[32 * sub + l] =
              static_cast<double>(f16_to_float(b4.d)) * sc * q - f16_to_float(b4.dmin) * m;
        }
      }
      return;
    }
    case GgmlType::Q6_K: {
      const auto& b = *reinterpret_cast<const BlockQ6_K*>(p);
      for (int v = 0; v < 256; ++v) {
        const int h = v / 128, t4 = (v % 128) / 32, l = v % 32;
        const uint8_t byte = b.ql[64 * h + (t4 % 2) * 32 + l];
        const int low = t4 < 2 ? byte & 0xF : byte >> 4;
        const int high = (b.qh[32 * h + l] >> (2 * t4)) & 3;
        out[v] =
            static_cast<double>(f16_to_float(b.d)) * b.scales[v / 16] * ((low | high << 4) - 32);
      }
      return;
    }
    default:
      ADD_FAILURE() << "dequantize_block: type";
  }
}

std::vector<double> dequantize(GgmlType t, const uint8_t* p, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  const int64_t bv = block_values(t), bb = block_bytes(t);
  for (int64_t b = 0; b < n / bv; ++b) dequantize_block(t, p + b * bb, out.data() + b * bv);
  return out;
}

// linear_forward on quantized weights, every implementation, decode and prefill row counts:
//  - against dequantized weights x dequantized (quantized) activations in double, within the
//    float accumulation bound;
//  - against dequantized weights x the fp32 activations, within the activation rounding error
//    (sum |w| |x - x_q|) plus that bound.
// The activation quantizers and quantize_row (the file writer's quantizer, quant.h) are one
// rounding rule: the same bytes for Q8_0 and Q8_K, in every implementation, on random rows at
// several magnitudes, rows with exact ties, zero blocks and +-max in one block.
TEST(QuantDot, ActivationQuantizersMatchQuantizeRow) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t n = 4 * kQKK;
  std::vector<QuantKernel> kernels = simd_kernels();
  kernels.push_back(QuantKernel::Scalar);
  for (int trial = 0; trial < 16; ++trial) {
    std::vector<float> x(static_cast<size_t>(n));
    const float scale = std::pow(10.f, static_cast<float>(trial % 9) - 4);
    for (auto& v : x) v = normal(rng) * scale;
    if (trial % 4 == 1) std::fill(x.begin(), x.begin() + kQKK, 0.f);
    if (trial % 4 == 2) {
      for (int64_t j = 0; j < n; ++j)
        x[j] = static_cast<float>(static_cast<int>(rng() % 255) - 127) + 0.5f;
      for (int64_t b = 0; b < n; b += kQK) x[b] = 127.f;
    }
    if (trial % 4 == 3) {
      x[kQKK + 7] = 60.f * scale;
      x[kQKK + 3] = -60.f * scale;
    }
    if (trial == 5) {
      // A block so small that 1 / d overflows (Q8_0's clamp), with a zero in it (0 x inf).
      for (int j = 0; j < kQK; ++j) x[static_cast<size_t>(2 * kQKK + j)] = normal(rng) * 1e-38f;
      x[2 * kQKK + 4] = 0.f;
    }
    for (GgmlType at : {GgmlType::Q8_0, GgmlType::Q8_K}) {
      std::vector<uint8_t> want(static_cast<size_t>(row_bytes(at, n))), got(want.size());
      quantize_row(at, x.data(), want.data(), n);
      for (QuantKernel k : kernels) {
        std::fill(got.begin(), got.end(), 0xCD);
        quantize_activation_row(at, x.data(), got.data(), n, k);
        EXPECT_EQ(got, want) << ggml_type_name(static_cast<uint32_t>(at)) << " "
                             << quant_kernel_name(k) << " trial " << trial;
      }
    }
  }
}

// The test's own dequantizer (above, in double) and dequantize_row (quant.h, the formats'
// decoder) are two independent readings of the layouts: they agree on random blocks of every
// weight type to fp32 rounding of the decoder's few float operations (d x sc, x q, dmin x m, -:
// at most 4 roundings of terms no larger than the block's largest term).
TEST(QuantDot, TestDequantizerAgreesWithDequantizeRow) {
  std::mt19937 rng(29);
  const int64_t nblocks = 16;
  for (GgmlType t : kWeightTypes) {
    const int64_t bv = block_values(t), n = nblocks * bv;
    const auto w = random_weights(t, nblocks, rng, 3);
    const auto want = dequantize(t, w.data(), n);
    std::vector<float> got(static_cast<size_t>(n));
    dequantize_row(t, w.data(), got.data(), n);
    for (int64_t b = 0; b < nblocks; ++b) {
      // Largest term of the block: |d| x 63 x 63 bounds d x sc x q and dmin x m of every type.
      double dmax = 0;
      const uint8_t* p = w.data() + b * block_bytes(t);
      const uint16_t* halves = reinterpret_cast<const uint16_t*>(p);
      if (t == GgmlType::Q4_K || t == GgmlType::Q5_K)
        dmax = std::max(std::fabs(f16_to_float(halves[0])), std::fabs(f16_to_float(halves[1])));
      else if (t == GgmlType::Q6_K)
        dmax = std::fabs(f16_to_float(reinterpret_cast<const BlockQ6_K*>(p)->d));
      else if (t == GgmlType::MXFP4)
        dmax = std::ldexp(1.0, reinterpret_cast<const BlockMXFP4*>(p)->e - 128);
      else
        dmax = std::fabs(f16_to_float(halves[0]));
      const double tol = 4 * std::ldexp(dmax * 128 * 64, -24);
      for (int64_t j = b * bv; j < (b + 1) * bv; ++j)
        ASSERT_NEAR(got[static_cast<size_t>(j)], want[static_cast<size_t>(j)], tol)
            << ggml_type_name(static_cast<uint32_t>(t)) << " value " << j;
    }
  }
}

TEST(QuantLinear, MatchesDequantizedWeights) {
  KernelGuard guard;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<QuantKernel> kernels = simd_kernels();
  kernels.push_back(QuantKernel::Scalar);
  for (GgmlType t : kWeightTypes) {
    const GgmlType at = quant_dot_activation_type(t);
    // Q8_0 / Q4_0 rows also end in a partial group of 8 blocks (their kernels take groups of 8).
    const int64_t K = block_values(t) == kQK ? 3 * kQKK + 5 * kQK : 3 * kQKK, rows = 37;
    const auto wbytes = random_weights(t, rows * K / block_values(t), rng, 5);
    const WeightView w{wbytes.data(), t, rows, K};
    std::vector<double> wd(static_cast<size_t>(rows * K));
    for (int64_t r = 0; r < rows; ++r) {
      const auto row = dequantize(t, w.row(r), K);
      std::copy(row.begin(), row.end(), wd.begin() + r * K);
    }
    for (int64_t n : {1, 3, 4, 5, 13}) {
      std::vector<float> x(static_cast<size_t>(n * K));
      for (auto& v : x) v = normal(rng);
      std::vector<uint8_t> xq(static_cast<size_t>(row_bytes(at, K)));
      std::vector<double> want_q(static_cast<size_t>(n * rows)), want_x(want_q.size()),
          bound_q(want_q.size()), bound_x(want_q.size());
      for (int64_t i = 0; i < n; ++i) {
        quantize_activation_row(at, x.data() + i * K, xq.data(), K);
        const auto xd = dequantize(at, xq.data(), K);
        for (int64_t r = 0; r < rows; ++r) {
          double sq = 0, sx = 0, mag = 0, aerr = 0;
          for (int64_t j = 0; j < K; ++j) {
            const double wv = wd[r * K + j];
            sq += wv * xd[j];
            sx += wv * x[i * K + j];
            aerr += std::fabs(wv) * std::fabs(x[i * K + j] - xd[j]);
            mag += std::fabs(wv) * std::fabs(xd[j]);
          }
          // Dequantized products (w = d sc q - dmin m) bound the partial sums only up to the
          // split into the scale and min parts; 1e-5 relative covers that and fp16 scales.
          const double tol =
              1e-5 * mag + (2.0 * K / 32 + 16) * 0x1p-24 *
                               quant_dot_magnitude(t, w.row(r), xq.data(), K / block_values(t));
          want_q[i * rows + r] = sq;
          bound_q[i * rows + r] = tol;
          want_x[i * rows + r] = sx;
          bound_x[i * rows + r] = tol + aerr * 1.0001;
        }
      }
      for (QuantKernel k : kernels) {
        set_quant_kernel(k);
        std::vector<float> y(static_cast<size_t>(n * rows), 1.0f);
        linear_forward(x.data(), n, w, y.data(), /*accumulate=*/true);
        for (size_t e = 0; e < y.size(); ++e) {
          EXPECT_NEAR(y[e] - 1.0, want_q[e], bound_q[e] + 1e-6)
              << ggml_type_name(static_cast<uint32_t>(t)) << " " << quant_kernel_name(k) << " n "
              << n << " element " << e;
          EXPECT_NEAR(y[e] - 1.0, want_x[e], bound_x[e] + 1e-6);
        }
        std::vector<float> y2(y.size());
        linear_forward(x.data(), n, w, y2.data());
        for (size_t e = 0; e < y.size(); ++e)
          EXPECT_NEAR(y2[e], y[e] - 1.0f, 1e-6 + 1e-6 * std::fabs(y2[e]));
      }
    }
  }
}

// BF16 weights with more than 4 rows of x (set_bf16_activations, linear.h). The default is the
// bf16 GEMM where the CPU has it. Exact mode: x stays fp32, so the result is the fp32 sum of
// exact products (within K x 2^-24 of sum |w x|). bf16 mode: x is rounded to bf16 (round to
// nearest even: |x^ - x| <= 2^-8 |x| per element), so |y - sum w x| <= 2^-8 sum |w x| plus the
// same fp32 accumulation term; with x already bf16 values that rounding is the identity, and
// the bf16 result must then be as close as the exact one.
TEST(Bf16Linear, Bf16GemmPathWithinTheRoundingOfX) {
  EXPECT_EQ(bf16_activations(), cpu_features().bf16_gemm());  // not yet set in this process
  struct Restore {
    ~Restore() { set_bf16_activations(cpu_features().bf16_gemm()); }
  } restore;
  std::mt19937 rng(41);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t K = 512, rows = 300, n = 37;  // two tiles of rows in the bf16 path
  std::vector<uint16_t> wbits(static_cast<size_t>(rows * K));
  for (auto& b : wbits) b = bf16_bits(normal(rng) * 0.05f);
  const WeightView w{reinterpret_cast<const uint8_t*>(wbits.data()), GgmlType::BF16, rows, K};
  std::vector<float> x(static_cast<size_t>(n * K)), xr(x.size());
  for (size_t e = 0; e < x.size(); ++e) {
    x[e] = normal(rng);
    xr[e] = round_bf16(x[e]);
  }
  // In double: sum w x, sum w x^ (x^ = bf16(x)) and sum |w x|.
  std::vector<double> ref(static_cast<size_t>(n * rows)), ref_r(ref.size()), mag(ref.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0, sr = 0, m = 0;
      for (int64_t j = 0; j < K; ++j) {
        const double wv = bf16_value(wbits[r * K + j]);
        s += wv * x[i * K + j];
        sr += wv * xr[i * K + j];
        m += std::fabs(wv * x[i * K + j]);
      }
      ref[i * rows + r] = s;
      ref_r[i * rows + r] = sr;
      mag[i * rows + r] = m;
    }
  const double accumulation = K * 0x1p-23, rounding = 0x1p-8;
  std::vector<float> exact(ref.size()), fast(ref.size()), fast_r(ref.size());
  set_bf16_activations(false);
  EXPECT_FALSE(bf16_activations());
  linear_forward(x.data(), n, w, exact.data());
  set_bf16_activations(true);
  EXPECT_TRUE(bf16_activations());
  linear_forward(x.data(), n, w, fast.data());
  linear_forward(xr.data(), n, w, fast_r.data());
  int differ = 0;
  for (size_t e = 0; e < ref.size(); ++e) {
    EXPECT_NEAR(exact[e], ref[e], accumulation * mag[e]) << e;
    EXPECT_NEAR(fast[e], ref[e], (rounding + accumulation) * mag[e]) << e;
    EXPECT_NEAR(fast_r[e], ref_r[e], accumulation * mag[e]) << e;
    differ += fast[e] != exact[e];
  }
  // The bf16 path really rounded x (and is not the exact path under another name).
  EXPECT_GT(differ, static_cast<int>(ref.size() / 2));
}

// The weight-in-place tiles of F32 and BF16 weights (core/linear_rows.h) on shapes that leave
// partial tiles of weight rows (6) and activation rows (4) and a masked last step of k, against
// double sums of the same operands (F32: x; BF16: x rounded to bf16, as the kernel takes it):
// within K fp32 roundings of sum |w x|. Stored or added to y, over a middle range of rows only.
TEST(LinearRows, TilesMatchDoubleSums) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (GgmlType t : {GgmlType::F32, GgmlType::BF16}) {
    if (!linear_rows_supported(t)) continue;
    const int64_t rows = 29, K = t == GgmlType::F32 ? 16 * 5 + 7 : 32 * 3 + 5, r0 = 2, r1 = 27;
    std::vector<float> wf(static_cast<size_t>(rows * K));
    std::vector<uint16_t> wb(wf.size());
    for (size_t e = 0; e < wf.size(); ++e) {
      wf[e] = normal(rng);
      wb[e] = bf16_bits(wf[e]);
      if (t == GgmlType::BF16) wf[e] = bf16_value(wb[e]);
    }
    const WeightView w{t == GgmlType::F32 ? reinterpret_cast<const uint8_t*>(wf.data())
                                          : reinterpret_cast<const uint8_t*>(wb.data()),
                       t, rows, K};
    for (int64_t n : {1, 2, 3, 4, 5, 7, 9, 33}) {
      std::vector<float> x(static_cast<size_t>(n * K));
      for (auto& v : x) v = normal(rng);
      std::vector<uint16_t> xb(x.size());
      bf16_activation_rows(x.data(), n, K, xb.data());
      for (bool accumulate : {false, true}) {
        std::vector<float> y(static_cast<size_t>(n * rows), 0.5f);
        linear_rows(x.data(), xb.data(), n, w, r0, r1, y.data(), accumulate);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = 0; r < rows; ++r) {
            const float got = y[i * rows + r];
            if (r < r0 || r >= r1) {
              EXPECT_EQ(got, 0.5f) << "row " << r << " outside the range was written";
              continue;
            }
            double s = 0, m = 0;
            for (int64_t j = 0; j < K; ++j) {
              const double xv = t == GgmlType::F32 ? x[i * K + j] : bf16_value(xb[i * K + j]);
              s += wf[r * K + j] * xv;
              m += std::fabs(wf[r * K + j] * xv);
            }
            EXPECT_NEAR(got, s + (accumulate ? 0.5 : 0.0), K * 0x1p-23 * m + 1e-6)
                << ggml_type_name(static_cast<uint32_t>(t)) << " n " << n << " i " << i << " r "
                << r << " accumulate " << accumulate;
          }
      }
    }
  }
}

// linear_forward on F32 weights around the switch from the tiles (up to 64 rows of x) to the
// GEMM, against double sums.
TEST(LinearRows, F32LinearForwardOnBothSidesOfTheSwitch) {
  std::mt19937 rng(29);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t rows = 70, K = 200;
  std::vector<float> wf(static_cast<size_t>(rows * K));
  for (auto& v : wf) v = normal(rng);
  const WeightView w{reinterpret_cast<const uint8_t*>(wf.data()), GgmlType::F32, rows, K};
  for (int64_t n : {5, 37, 64, 65}) {
    std::vector<float> x(static_cast<size_t>(n * K)), y(static_cast<size_t>(n * rows));
    for (auto& v : x) v = normal(rng);
    linear_forward(x.data(), n, w, y.data());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0, m = 0;
        for (int64_t j = 0; j < K; ++j) {
          s += static_cast<double>(wf[r * K + j]) * x[i * K + j];
          m += std::fabs(static_cast<double>(wf[r * K + j]) * x[i * K + j]);
        }
        EXPECT_NEAR(y[i * rows + r], s, K * 0x1p-23 * m + 1e-6) << "n " << n;
      }
  }
}

TEST(QuantDot, RefusesTypesWithoutKernels) {
  EXPECT_THROW(quant_dot_activation_type(GgmlType::F32), std::exception);
  EXPECT_THROW(quant_dot_fn(GgmlType::BF16), std::exception);
  EXPECT_EQ(quant_dot_activation_type(GgmlType::Q4_0), GgmlType::Q8_0);
  EXPECT_EQ(quant_dot_activation_type(GgmlType::Q6_K), GgmlType::Q8_K);
}

}  // namespace
}  // namespace moe
