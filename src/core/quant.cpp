#include "moe/quant.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <map>

#include "core/dequant_avx512.h"
#include "moe/error.h"
#include "moe/safetensors.h"

namespace moe {

// Sizes from ggml-common.h's block structs, for every type a GGUF file may hold.
GgmlBlock ggml_block(uint32_t type) {
  switch (type) {
    case 0:
      return {1, 4};  // F32
    case 1:
      return {1, 2};  // F16
    case 2:
      return {32, 18};  // Q4_0
    case 3:
      return {32, 20};  // Q4_1
    case 6:
      return {32, 22};  // Q5_0
    case 7:
      return {32, 24};  // Q5_1
    case 8:
      return {32, 34};  // Q8_0
    case 9:
      return {32, 36};  // Q8_1
    case 10:
      return {256, 84};  // Q2_K
    case 11:
      return {256, 110};  // Q3_K
    case 12:
      return {256, 144};  // Q4_K
    case 13:
      return {256, 176};  // Q5_K
    case 14:
      return {256, 210};  // Q6_K
    case 15:
      return {256, 292};  // Q8_K
    case 24:
      return {1, 1};  // I8
    case 25:
      return {1, 2};  // I16
    case 26:
      return {1, 4};  // I32
    case 27:
      return {1, 8};  // I64
    case 28:
      return {1, 8};  // F64
    case 30:
      return {1, 2};  // BF16
    case 39:
      return {32, 17};  // MXFP4
    default:
      return {0, 0};
  }
}

namespace {
const std::map<uint32_t, const char*>& type_names() {
  static const std::map<uint32_t, const char*> names = {
      {0, "F32"},   {1, "F16"},   {2, "Q4_0"},  {3, "Q4_1"},  {6, "Q5_0"},  {7, "Q5_1"},
      {8, "Q8_0"},  {9, "Q8_1"},  {10, "Q2_K"}, {11, "Q3_K"}, {12, "Q4_K"}, {13, "Q5_K"},
      {14, "Q6_K"}, {15, "Q8_K"}, {24, "I8"},   {25, "I16"},  {26, "I32"},  {27, "I64"},
      {28, "F64"},  {30, "BF16"}, {39, "MXFP4"}};
  return names;
}
}  // namespace

std::string ggml_type_name(uint32_t type) {
  const auto it = type_names().find(type);
  return it != type_names().end() ? it->second : fmt::format("type {}", type);
}

bool parse_ggml_type(const std::string& name, GgmlType* out) {
  std::string upper = name;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const GgmlType t :
       {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
        GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K, GgmlType::MXFP4}) {
    if (upper == ggml_type_name(static_cast<uint32_t>(t))) {
      *out = t;
      return true;
    }
  }
  return false;
}

bool is_weight_type(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::MXFP4:
      return true;
    default:
      return false;
  }
}

int64_t row_bytes(GgmlType type, int64_t cols) {
  const GgmlBlock b = ggml_block(static_cast<uint32_t>(type));
  MOE_CHECK(b.values > 0 && cols % b.values == 0, "row of {} values is not whole {} blocks", cols,
            ggml_type_name(static_cast<uint32_t>(type)));
  return cols / b.values * b.bytes;
}

namespace {

// Round to nearest, ties to even, for |f| < 2^22: adding 1.5 * 2^23 leaves the integer in the
// low mantissa bits (the rounding of that addition is the rounding). This is the rounding every
// k-quant search uses; the SIMD quantizers of activations must reproduce it.
inline int nearest_int(float f) {
  const float biased = f + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &biased, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

// Below this a sub-block counts as all zero (and gets scale 0).
constexpr float kGroupEps = 1e-15f;

// ---- MXFP4 ---------------------------------------------------------------------------------

void dequantize_mxfp4(const BlockMXFP4* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = e8m0_half_to_float(b[i].e);
    for (int j = 0; j < kQK / 2; ++j) {
      y[i * kQK + j] = d * kMxfp4Values[b[i].qs[j] & 0xF];
      y[i * kQK + j + kQK / 2] = d * kMxfp4Values[b[i].qs[j] >> 4];
    }
  }
}

// ggml's quantize_row_mxfp4_ref (the OCP MX rule): the shared exponent puts the block's largest
// magnitude amax in [8, 16) x 2^(e - 128), the top E2M1 octave (values above 12 x 2^(e - 128)
// clip to it); each value takes the code of the nearest doubled value k[q] x 2^(e - 128), the
// first code in table order on a tie (so 0 rather than -0, the smaller magnitude). floor(log2
// amax) is taken exactly from the float's exponent (ggml's floorf(log2f(amax)) agrees except
// within an ulp below a power of two, where log2f can round up); e is clamped to 0..254.
void quantize_mxfp4(const float* x, BlockMXFP4* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    int e = 0;
    if (amax > 0) {
      int exp2 = 0;
      std::frexp(amax, &exp2);  // amax = m x 2^exp2, m in [0.5, 1): floor(log2 amax) = exp2 - 1
      e = std::clamp(exp2 - 1 - 2 + 127, 0, 254);
    }
    b[i].e = static_cast<uint8_t>(e);
    const float d = e8m0_half_to_float(b[i].e);
    auto nearest = [&](float v) {
      int best = 0;
      float err = std::fabs(static_cast<float>(kMxfp4Values[0]) * d - v);
      for (int q = 1; q < 16; ++q) {
        const float eq = std::fabs(static_cast<float>(kMxfp4Values[q]) * d - v);
        if (eq < err) {
          best = q;
          err = eq;
        }
      }
      return static_cast<uint8_t>(best);
    };
    for (int j = 0; j < kQK / 2; ++j)
      b[i].qs[j] = static_cast<uint8_t>(nearest(x[j]) | nearest(x[j + kQK / 2]) << 4);
  }
}

// ---- Q8_0 / Q4_0 --------------------------------------------------------------------------

void dequantize_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = f16_to_float(b[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

// Contract with the SIMD activation quantizer: d = amax / 127 (fp32, stored as fp16), values
// multiplied by 1 / d and rounded half away from zero.
void quantize_q8_0(const float* x, BlockQ8_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    b[i].d = float_to_f16(d);
    // |x * id| <= 127 except where 1 / d overflows (amax below ~4e-37, where d is 0 in fp16
    // and the levels read as 0 anyway): the clamp only keeps that case defined.
    for (int j = 0; j < kQK; ++j)
      b[i].qs[j] = static_cast<int8_t>(std::fmax(-127.f, std::fmin(127.f, std::round(x[j] * id))));
  }
}

void dequantize_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = f16_to_float(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((b[i].qs[j] & 0x0F) - 8) * d;
      y[j + kQK / 2] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

// The scale maps the value of largest magnitude to -8 (the end of [-8, 7] with room), so the
// extreme is exact and the other side keeps 7 steps.
void quantize_q4_0(const float* x, BlockQ4_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < kQK; ++j)
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    const float d = max / -8.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    b[i].d = float_to_f16(d);
    // x * id lies in [-8, 8]; + 8.5 and truncation rounds it to the nearest level 0..16 (16 -> 15).
    // (fmin/fmax rather than a cast of an unchecked float keep an overflowing 1 / d defined.)
    auto level = [id](float v) {
      return static_cast<int>(std::fmax(0.f, std::fmin(15.f, v * id + 8.5f)));
    };
    for (int j = 0; j < kQK / 2; ++j)
      b[i].qs[j] = static_cast<uint8_t>(level(x[j]) | (level(x[j + kQK / 2]) << 4));
  }
}

// ---- k-quant helpers ----------------------------------------------------------------------

// Sub-block j's 6-bit scale and min of the 12 packed bytes: sub-blocks 0..3 in the low 6 bits of
// bytes j and j + 4; sub-blocks 4..7 with their low 4 bits in the nibbles of byte j + 4 and
// their top 2 bits in the spare top bits of bytes j - 4 (scale) and j (min).
inline void unpack_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void pack_scales_mins(const int* sc, const int* m, uint8_t* s) {
  std::memset(s, 0, kKScaleBytes);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = static_cast<uint8_t>(sc[j]);
      s[j + 4] = static_cast<uint8_t>(m[j]);
    } else {
      s[j + 4] = static_cast<uint8_t>((sc[j] & 0x0F) | ((m[j] & 0x0F) << 4));
      s[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      s[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
    }
  }
}

// Fits x ~ scale * l - min_out with l in [0, nmax] on n values, weighted least squares: the
// starting grid spans [min(x, 0), max(x)]; then nstep + 1 grids of nmax + rmin + rdelta * is
// steps are tried, each refitted in closed form (scale and offset of the weighted regression,
// offset clamped so that the min stays >= 0), keeping the one of least weighted squared error.
// Returns the scale; *min_out is the (non-negative) amount subtracted.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* min_out,
                    float rmin, float rdelta, int nstep) {
  float lo = x[0], hi = x[0], sum_w = w[0], sum_x = w[0] * x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  lo = std::min(lo, 0.f);
  if (hi == lo) {
    std::fill(L, L + n, 0);
    *min_out = -lo;
    return 0.f;
  }
  float iscale = static_cast<float>(nmax) / (hi - lo);
  float scale = 1.f / iscale;
  float best = 0.f;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<uint8_t>(std::clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax));
    const float diff = scale * static_cast<float>(L[i]) + lo - x[i];
    best += w[i] * (diff * diff);
  }
  uint8_t trial[32];
  MOE_CHECK(n <= 32, "fit_scale_min: {} values", n);
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (hi - lo);
    float sum_l = 0.f, sum_l2 = 0.f, sum_xl = 0.f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      const float fl = static_cast<float>(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det <= 0.f) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0.f) {
      this_min = 0.f;
      this_scale = sum_xl / sum_l2;
    }
    float err = 0.f;
    for (int i = 0; i < n; ++i) {
      const float diff = this_scale * static_cast<float>(trial[i]) + this_min - x[i];
      err += w[i] * (diff * diff);
    }
    if (err < best) {
      std::copy_n(trial, n, L);
      best = err;
      scale = this_scale;
      lo = this_min;
    }
  }
  *min_out = -lo;
  return scale;
}

// Fits x ~ scale * l with l in [-nmax, nmax - 1] on n values, weighted by x^2: the scale that
// maps the value of largest magnitude to -nmax, refitted in closed form, then 18 nearby grids
// (nmax +- 0.1 * is) are refitted and the best weighted fit kept. L receives l + nmax.
float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0.f, max = 0.f;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  if (amax < kGroupEps) {
    std::fill(L, L + n, 0);
    return 0.f;
  }
  auto level = [nmax](float iscale, float v) {
    return std::clamp(nearest_int(iscale * v), -nmax, nmax - 1);
  };
  float iscale = static_cast<float>(-nmax) / max;
  float sum_lx = 0.f, sum_l2 = 0.f;
  for (int i = 0; i < n; ++i) {
    const int l = level(iscale, x[i]);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i], fl = static_cast<float>(l);
    sum_lx += w * x[i] * fl;
    sum_l2 += w * fl * fl;
  }
  float scale = sum_l2 != 0.f ? sum_lx / sum_l2 : 0.f;
  float best = scale * sum_lx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sum_lx = sum_l2 = 0.f;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i], fl = static_cast<float>(level(iscale, x[i]));
      sum_lx += w * x[i] * fl;
      sum_l2 += w * fl * fl;
    }
    if (sum_l2 > 0.f && sum_lx * sum_lx > best * sum_l2) {
      for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(level(iscale, x[i]) + nmax);
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

// ---- Q4_K / Q5_K ----------------------------------------------------------------------------

// Shared by Q4_K (bits 4) and Q5_K (bits 5): per sub-block of 32 a scale and min fitted with
// weights rms(x) + |x|, both quantized to 6 bits against the largest of the block (fp16 d and
// dmin), then every value requantized with the scale and min it will be read with. L gets the
// 256 levels.
template <int kBits>
void quantize_k_scales(const float* x, uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales,
                       uint8_t* L) {
  constexpr int nmax = (1 << kBits) - 1;
  constexpr float rmin = kBits == 4 ? -1.f : -0.5f;
  constexpr int nstep = kBits == 4 ? 20 : 15;
  float sub_scale[8], sub_min[8], w[32];
  float max_scale = 0.f, max_min = 0.f;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0.f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float rms = std::sqrt(sum_x2 / 32.f);
    for (int l = 0; l < 32; ++l) w[l] = rms + std::fabs(xs[l]);
    sub_scale[j] = fit_scale_min(32, nmax, xs, w, L + 32 * j, &sub_min[j], rmin, 0.1f, nstep);
    max_scale = std::max(max_scale, sub_scale[j]);
    max_min = std::max(max_min, sub_min[j]);
  }
  const float inv_scale = max_scale > 0.f ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0.f ? 63.f / max_min : 0.f;
  int sc[8], m[8];
  for (int j = 0; j < 8; ++j) {
    // The reference stores these through uint8_t before clamping to 63, so keep the low byte.
    sc[j] = std::min(63, nearest_int(inv_scale * sub_scale[j]) & 0xFF);
    m[j] = std::min(63, nearest_int(inv_min * sub_min[j]) & 0xFF);
  }
  pack_scales_mins(sc, m, scales);
  *d_out = float_to_f16(max_scale / 63.f);
  *dmin_out = float_to_f16(max_min / 63.f);
  const float d = f16_to_float(*d_out), dmin = f16_to_float(*dmin_out);
  for (int j = 0; j < 8; ++j) {
    const float ds = d * static_cast<float>(sc[j]);
    if (ds == 0.f) continue;
    const float dm = dmin * static_cast<float>(m[j]);
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] =
          static_cast<uint8_t>(std::clamp(nearest_int((x[32 * j + l] + dm) / ds), 0, nmax));
  }
}

void dequantize_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_float(b[i].d), dmin = f16_to_float(b[i].dmin);
    const uint8_t* q = b[i].qs;
    // 64 values per 32 bytes: low nibbles are sub-block 2k, high nibbles sub-block 2k + 1.
    for (int j = 0; j < 8; j += 2, q += 32) {
      int sc, m;
      unpack_scale_min(b[i].scales, j, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      unpack_scale_min(b[i].scales, j + 1, &sc, &m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void quantize_q4_k(const float* x, BlockQ4_K* b, int64_t nb) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    quantize_k_scales<4>(x, &b[i].d, &b[i].dmin, b[i].scales, L);
    for (int j = 0; j < kQKK; j += 64)
      for (int l = 0; l < 32; ++l)
        b[i].qs[j / 2 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
  }
}

void dequantize_q5_k(const BlockQ5_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_float(b[i].d), dmin = f16_to_float(b[i].dmin);
    const uint8_t* q = b[i].qs;
    // As Q4_K; bit 2k of qh[l] is the fifth bit of value l of sub-block 2k, bit 2k + 1 of
    // sub-block 2k + 1.
    for (int j = 0; j < 8; j += 2, q += 32) {
      int sc, m;
      unpack_scale_min(b[i].scales, j, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      unpack_scale_min(b[i].scales, j + 1, &sc, &m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l)
        *y++ = d1 * static_cast<float>((q[l] & 0x0F) | (((b[i].qh[l] >> j) & 1) << 4)) - m1;
      for (int l = 0; l < 32; ++l)
        *y++ = d2 * static_cast<float>((q[l] >> 4) | (((b[i].qh[l] >> (j + 1)) & 1) << 4)) - m2;
    }
  }
}

void quantize_q5_k(const float* x, BlockQ5_K* b, int64_t nb) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    quantize_k_scales<5>(x, &b[i].d, &b[i].dmin, b[i].scales, L);
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int j = 0; j < kQKK; j += 64)
      for (int l = 0; l < 32; ++l) {
        const int lo = L[j + l], hi = L[j + l + 32];
        b[i].qs[j / 2 + l] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
        b[i].qh[l] |= static_cast<uint8_t>(((lo >> 4) << (j / 32)) | ((hi >> 4) << (j / 32 + 1)));
      }
  }
}

// ---- Q6_K -----------------------------------------------------------------------------------

// Value v of a 128-value half: v = 32 * g + l (g = 0..3, l = 0..31). Its low nibble is in
// ql[l + 32 * (g & 1)] (low nibble for g < 2, high for g >= 2), its top 2 bits in qh[l] at bit
// 2 * g; sub-block (16 values) v / 16.
void dequantize_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_float(b[i].d);
    for (int h = 0; h < 2; ++h, y += 128) {
      const uint8_t* ql = b[i].ql + 64 * h;
      const uint8_t* qh = b[i].qh + 32 * h;
      const int8_t* sc = b[i].scales + 8 * h;
      for (int g = 0; g < 4; ++g)
        for (int l = 0; l < 32; ++l) {
          const int lowq = (ql[l + 32 * (g & 1)] >> (4 * (g >> 1))) & 0x0F;
          const int q = (lowq | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
          y[32 * g + l] = d * static_cast<float>(sc[2 * g + l / 16]) * static_cast<float>(q);
        }
    }
  }
}

// Per sub-block of 16 a symmetric 6-bit fit (x^2-weighted), the 16 scales quantized to int8
// against the one of largest magnitude (-128 * d), then values requantized with the scale they
// will be read with.
void quantize_q6_k(const float* x, BlockQ6_K* b, int64_t nb) {
  int8_t L[kQKK];
  float sub_scale[16];
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float max_scale = 0.f, max_abs = 0.f;
    for (int s = 0; s < 16; ++s) {
      sub_scale[s] = fit_scale_symmetric(16, 32, x + 16 * s, L + 16 * s);
      if (std::fabs(sub_scale[s]) > max_abs) {
        max_abs = std::fabs(sub_scale[s]);
        max_scale = sub_scale[s];
      }
    }
    if (max_abs < kGroupEps) {
      std::memset(&b[i], 0, sizeof(BlockQ6_K));
      continue;
    }
    const float iscale = -128.f / max_scale;
    b[i].d = float_to_f16(1.f / iscale);
    for (int s = 0; s < 16; ++s)
      b[i].scales[s] = static_cast<int8_t>(std::min(127, nearest_int(iscale * sub_scale[s])));
    const float d = f16_to_float(b[i].d);
    for (int s = 0; s < 16; ++s) {
      const float ds = d * static_cast<float>(b[i].scales[s]);
      if (ds == 0.f) continue;  // the search's levels stay (they read as 0 anyway)
      for (int l = 0; l < 16; ++l)
        L[16 * s + l] =
            static_cast<int8_t>(std::clamp(nearest_int(x[16 * s + l] / ds), -32, 31) + 32);
    }
    for (int h = 0; h < 2; ++h) {
      uint8_t* ql = b[i].ql + 64 * h;
      uint8_t* qh = b[i].qh + 32 * h;
      const int8_t* Lh = L + 128 * h;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((Lh[l] & 0x0F) | ((Lh[l + 64] & 0x0F) << 4));
        ql[l + 32] = static_cast<uint8_t>((Lh[l + 32] & 0x0F) | ((Lh[l + 96] & 0x0F) << 4));
        qh[l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) |
                                     ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

// ---- Q8_K -----------------------------------------------------------------------------------

void dequantize_q8_k(const BlockQ8_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK)
    for (int j = 0; j < kQKK; ++j) y[j] = b[i].d * static_cast<float>(b[i].qs[j]);
}

// Contract with the SIMD activation quantizer: the value of largest magnitude (sign kept) maps
// to -127, levels rounded half to even and capped at 127, d = 1 / iscale in fp32, and bsums
// the sums of each 16 levels (the k-quant dot products fold the weights' mins in with them).
void quantize_q8_k(const float* x, BlockQ8_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < kQKK; ++j)
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    if (amax == 0.f) {
      std::memset(&b[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < kQKK; ++j)
      b[i].qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * x[j])));
    for (int s = 0; s < kQKK / 16; ++s) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b[i].qs[16 * s + l];
      b[i].bsums[s] = static_cast<int16_t>(sum);
    }
    b[i].d = 1.f / iscale;
  }
}

int64_t whole_blocks(GgmlType type, int64_t n, const char* what) {
  const GgmlBlock blk = ggml_block(static_cast<uint32_t>(type));
  MOE_CHECK(blk.values > 0 && n % blk.values == 0, "{}: {} values are not whole {} blocks", what, n,
            ggml_type_name(static_cast<uint32_t>(type)));
  return n / blk.values;
}

}  // namespace

void mxfp4_from_hf_row(const uint8_t* codes, const uint8_t* scales, int64_t nb, BlockMXFP4* out) {
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* q = codes + b * (kQK / 2);
    out[b].e = scales[b];
    auto code = [&](int v) { return v % 2 == 0 ? q[v / 2] & 0xF : q[v / 2] >> 4; };
    for (int j = 0; j < kQK / 2; ++j)
      out[b].qs[j] = static_cast<uint8_t>(code(j) | (code(j + kQK / 2) << 4));
  }
}

void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  static const bool simd = dequant_avx512_usable();
  const int64_t block = ggml_block(static_cast<uint32_t>(type)).values;
  if (simd && block > 1 && n % block == 0 && dequantize_row_avx512(type, src, dst, n)) return;
  dequantize_row_scalar(type, src, dst, n);
}

void dequantize_row_scalar(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const auto* h = reinterpret_cast<const uint16_t*>(src);
  const int64_t nb = whole_blocks(type, n, "dequantize_row");
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_float(h[i]);
      return;
    case GgmlType::BF16:
      // bf16 is the top half of an fp32, so widening it is a shift the compiler vectorizes.
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(h[i]) << 16;
        std::memcpy(dst + i, &bits, 4);
      }
      return;
    case GgmlType::Q8_0:
      return dequantize_q8_0(reinterpret_cast<const BlockQ8_0*>(src), dst, nb);
    case GgmlType::Q4_0:
      return dequantize_q4_0(reinterpret_cast<const BlockQ4_0*>(src), dst, nb);
    case GgmlType::Q4_K:
      return dequantize_q4_k(reinterpret_cast<const BlockQ4_K*>(src), dst, nb);
    case GgmlType::Q5_K:
      return dequantize_q5_k(reinterpret_cast<const BlockQ5_K*>(src), dst, nb);
    case GgmlType::Q6_K:
      return dequantize_q6_k(reinterpret_cast<const BlockQ6_K*>(src), dst, nb);
    case GgmlType::Q8_K:
      return dequantize_q8_k(reinterpret_cast<const BlockQ8_K*>(src), dst, nb);
    case GgmlType::MXFP4:
      return dequantize_mxfp4(reinterpret_cast<const BlockMXFP4*>(src), dst, nb);
  }
  MOE_CHECK(false, "dequantize_row: type {}", static_cast<uint32_t>(type));
}

void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n) {
  auto* h = reinterpret_cast<uint16_t*>(dst);
  const int64_t nb = whole_blocks(type, n, "quantize_row");
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) h[i] = float_to_f16(src[i]);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) h[i] = float_to_bf16(src[i]);
      return;
    case GgmlType::Q8_0:
      return quantize_q8_0(src, reinterpret_cast<BlockQ8_0*>(dst), nb);
    case GgmlType::Q4_0:
      return quantize_q4_0(src, reinterpret_cast<BlockQ4_0*>(dst), nb);
    case GgmlType::Q4_K:
      return quantize_q4_k(src, reinterpret_cast<BlockQ4_K*>(dst), nb);
    case GgmlType::Q5_K:
      return quantize_q5_k(src, reinterpret_cast<BlockQ5_K*>(dst), nb);
    case GgmlType::Q6_K:
      return quantize_q6_k(src, reinterpret_cast<BlockQ6_K*>(dst), nb);
    case GgmlType::Q8_K:
      return quantize_q8_k(src, reinterpret_cast<BlockQ8_K*>(dst), nb);
    case GgmlType::MXFP4:
      return quantize_mxfp4(src, reinterpret_cast<BlockMXFP4*>(dst), nb);
  }
  MOE_CHECK(false, "quantize_row: type {}", static_cast<uint32_t>(type));
}

}  // namespace moe
