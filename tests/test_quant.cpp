// The GGUF quantized types (include/moe/quant.h): dequantize_row bit for bit against the
// independent numpy decoder (tools/reference/gguf_quants.py, fixtures in tests/fixtures/quant/
// written by make_quant_fixtures.py), quantize_row's round-trip error on gaussian rows and rows
// with outliers, zero rows, the Q8_0 / Q8_K contracts with the SIMD activation quantizers on
// hand-worked blocks, Q8_0's fixed point, and quantize_row's bytes against llama.cpp's own
// reference quantizers (tests/fixtures/quant/llama/, make_llama_quant_fixtures.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dequant_avx512.h"
#include "moe/quant.h"
#include "moe/safetensors.h"
#include "test_util.h"

namespace moe {
namespace {

constexpr GgmlType kQuantTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K,
                                    GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K};

std::string type_name(GgmlType t) {
  return ggml_type_name(static_cast<uint32_t>(t));
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

TEST(Quant, DequantizeMatchesNumpyReferenceBitForBit) {
  // MXFP4's quantizer is checked against the numpy one below (llama.cpp's fixture predates it).
  for (const GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q5_K,
                           GgmlType::Q6_K, GgmlType::Q8_K, GgmlType::MXFP4}) {
    SCOPED_TRACE(type_name(t));
    const auto f = SafeTensorsFile::open(test::fixture_dir() + "/quant/" + lower(type_name(t)) +
                                         ".safetensors");
    ASSERT_EQ(f.metadata("type"), type_name(t));
    const TensorEntry& blocks = f.entry("blocks");
    const TensorEntry& values = f.entry("values");
    const GgmlBlock b = ggml_block(static_cast<uint32_t>(t));
    ASSERT_EQ(blocks.shape.size(), 2u);
    ASSERT_EQ(blocks.shape[1], b.bytes);
    const int64_t n = blocks.shape[0] * b.values;
    ASSERT_EQ(values.numel(), n);
    ASSERT_EQ(values.end - values.begin, n * 4);

    // The whole fixture as one row, and block by block (a row of one block).
    std::vector<float> got(static_cast<size_t>(n)), one(static_cast<size_t>(n));
    dequantize_row(t, f.raw(blocks), got.data(), n);
    for (int64_t i = 0; i < blocks.shape[0]; ++i)
      dequantize_row(t, f.raw(blocks) + i * b.bytes, one.data() + i * b.values, b.values);
    EXPECT_EQ(std::memcmp(got.data(), f.raw(values), static_cast<size_t>(n) * 4), 0);
    EXPECT_EQ(std::memcmp(one.data(), f.raw(values), static_cast<size_t>(n) * 4), 0);
    const float* want = reinterpret_cast<const float*>(f.raw(values));
    int shown = 0;
    for (int64_t i = 0; i < n && shown < 5; ++i)
      if (std::memcmp(&got[i], &want[i], 4) != 0) {
        ADD_FAILURE() << "value " << i << " (block " << i / b.values << "): " << got[i]
                      << " != " << want[i];
        ++shown;
      }
  }
}

TEST(Quant, QuantizeMatchesLlamaCppBytes) {
  // tests/fixtures/quant/llama/quantized.safetensors: rows and the bytes llama.cpp's reference
  // quantizers made of them (tools/reference/make_llama_quant_fixtures.py). Same bytes means
  // the files written here are the files llama-quantize writes (and it pins the rounding:
  // a contracted FMA in the scale searches changes some blocks).
  const auto f = SafeTensorsFile::open(test::fixture_dir() + "/quant/llama/quantized.safetensors");
  const TensorEntry& in = f.entry("input");
  ASSERT_EQ(in.shape.size(), 2u);
  const int64_t rows = in.shape[0], cols = in.shape[1];
  const float* x = reinterpret_cast<const float*>(f.raw(in));
  for (const GgmlType t : kQuantTypes) {
    SCOPED_TRACE(type_name(t));
    const TensorEntry& want = f.entry(lower(type_name(t)));
    const int64_t rb = row_bytes(t, cols);
    ASSERT_EQ(want.end - want.begin, rows * rb);
    const GgmlBlock b = ggml_block(static_cast<uint32_t>(t));
    std::vector<uint8_t> got(static_cast<size_t>(rb));
    for (int64_t r = 0; r < rows; ++r) {
      quantize_row(t, x + r * cols, got.data(), cols);
      const uint8_t* w = f.raw(want) + r * rb;
      for (int64_t k = 0; k < cols / b.values; ++k)
        EXPECT_EQ(std::memcmp(got.data() + k * b.bytes, w + k * b.bytes, b.bytes), 0)
            << "row " << r << " block " << k;
    }
  }
}

TEST(Quant, QuantizeMxfp4MatchesNumpyReference) {
  // tests/fixtures/quant/mxfp4_quantized.safetensors: rows and the blocks gguf_quants.py's
  // quantize_mxfp4 (ggml's quantize_row_mxfp4_ref rule, written from the spec) makes of them:
  // ties, the exponent's edges, clipping, tiny and huge scales, a zero block.
  const auto f = SafeTensorsFile::open(test::fixture_dir() + "/quant/mxfp4_quantized.safetensors");
  const TensorEntry& in = f.entry("input");
  const TensorEntry& want = f.entry("blocks");
  ASSERT_EQ(in.shape.size(), 2u);
  const int64_t rows = in.shape[0], cols = in.shape[1];
  const int64_t rb = row_bytes(GgmlType::MXFP4, cols);
  ASSERT_EQ(want.end - want.begin, rows * rb);
  const float* x = reinterpret_cast<const float*>(f.raw(in));
  std::vector<uint8_t> got(static_cast<size_t>(rb));
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row(GgmlType::MXFP4, x + r * cols, got.data(), cols);
    for (int64_t k = 0; k < cols / 32; ++k)
      EXPECT_EQ(std::memcmp(got.data() + k * 17, f.raw(want) + r * rb + k * 17, 17), 0)
          << "row " << r << " block " << k;
  }
}

TEST(Quant, SimdDequantizeEqualsScalar) {
  // Every bit pattern of the blocks, scales included (inf and NaN too: NaN must stay NaN).
  std::printf("dequantize_row: %s\n", dequant_avx512_usable() ? "AVX-512" : "scalar only");
  Rng rng(5);
  for (const GgmlType t : kQuantTypes) {
    const GgmlBlock b = ggml_block(static_cast<uint32_t>(t));
    const int64_t nb = 96, n = nb * b.values;
    std::vector<uint8_t> raw(static_cast<size_t>(nb * b.bytes));
    for (auto& v : raw) v = static_cast<uint8_t>(rng.below(256));
    std::vector<float> fast(n), slow(n);
    dequantize_row(t, raw.data(), fast.data(), n);
    dequantize_row_scalar(t, raw.data(), slow.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const bool same =
          std::memcmp(&fast[i], &slow[i], 4) == 0 || (std::isnan(fast[i]) && std::isnan(slow[i]));
      ASSERT_TRUE(same) << type_name(t) << " value " << i << ": " << fast[i] << " vs " << slow[i];
    }
  }
}

// ||dequantize(quantize(x)) - x|| / ||x|| over `rows` rows of `cols` values.
double round_trip_error(GgmlType t, const std::vector<float>& x, int64_t cols) {
  const int64_t rows = static_cast<int64_t>(x.size()) / cols;
  std::vector<uint8_t> q(static_cast<size_t>(row_bytes(t, cols)));
  std::vector<float> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row(t, x.data() + r * cols, q.data(), cols);
    dequantize_row(t, q.data(), y.data() + r * cols, cols);
  }
  return test::normalized_error(y.data(), x.data(), static_cast<int64_t>(x.size()));
}

std::vector<float> gaussian_rows(uint64_t seed, int64_t n) {
  Rng rng(seed);
  return test::random_vector<float>(rng, n);
}

// One value in 64 scaled by 20: the heavy tails of real weight rows (and of activations).
std::vector<float> outlier_rows(uint64_t seed, int64_t n) {
  Rng rng(seed);
  std::vector<float> x = test::random_vector<float>(rng, n);
  for (int64_t i = 0; i < n; ++i)
    if (rng.below(64) == 0) x[i] *= 20.f;
  return x;
}

// Bounds about 10% above what these rows give (measured, relative RMS error in percent,
// gaussian / outliers): Q8_0 0.535 / 1.144, Q6_K 1.772 / 3.265, Q5_K 3.603 / 5.190,
// Q4_K 7.123 / 10.053, Q4_0 8.561 / 14.778, Q8_K 0.700 / 2.579. These are what the formats
// give on gaussian data (a uniform step of range / levels has RMS step / sqrt(12): for Q8_0,
// amax ~ 2.3 sigma over 32 values gives 2.3 / 127 / sqrt(12) = 0.52%), and the same bytes as
// llama.cpp's reference quantizers produce.
struct Bound {
  GgmlType type;
  double gaussian, outliers;
};
constexpr Bound kBounds[] = {
    {GgmlType::Q8_0, 0.0059, 0.0126}, {GgmlType::Q6_K, 0.0195, 0.0360},
    {GgmlType::Q5_K, 0.0396, 0.0571}, {GgmlType::Q4_K, 0.0784, 0.1106},
    {GgmlType::Q4_0, 0.0942, 0.1626}, {GgmlType::Q8_K, 0.0077, 0.0284},
};

TEST(Quant, RoundTripErrorWithinTypeBound) {
  const int64_t cols = 4096, rows = 16;
  const std::vector<float> g = gaussian_rows(7, cols * rows), o = outlier_rows(8, cols * rows);
  for (const Bound& b : kBounds) {
    const double eg = round_trip_error(b.type, g, cols), eo = round_trip_error(b.type, o, cols);
    std::printf("%-5s relative RMS error: gaussian %.4f%%, outliers %.4f%%\n",
                type_name(b.type).c_str(), 100 * eg, 100 * eo);
    EXPECT_LT(eg, b.gaussian) << type_name(b.type);
    EXPECT_LT(eo, b.outliers) << type_name(b.type);
  }
}

// MXFP4 from floats: every value decodes to the nearest value its block's scale offers (no
// other code of the block is closer), the error stays within the format's bound on gaussian
// rows and rows with outliers, and decoded blocks quantize to the same bytes (a fixed point: a
// tensor read and written again does not drift).
TEST(Quant, Mxfp4NearestErrorBoundAndFixedPoint) {
  const int64_t cols = 4096, rows = 16;
  for (const bool outliers : {false, true}) {
    const std::vector<float> x =
        outliers ? outlier_rows(8, cols * rows) : gaussian_rows(7, cols * rows);
    std::vector<uint8_t> q(static_cast<size_t>(row_bytes(GgmlType::MXFP4, cols))), q2(q.size());
    std::vector<float> y(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x.data() + r * cols;
      quantize_row(GgmlType::MXFP4, xr, q.data(), cols);
      dequantize_row(GgmlType::MXFP4, q.data(), y.data(), cols);
      for (int64_t i = 0; i < cols; ++i) {
        const float d = e8m0_half_to_float(q[static_cast<size_t>(i / 32 * 17)]);
        for (const int8_t k : kMxfp4Values)
          ASSERT_LE(std::fabs(y[i] - xr[i]), std::fabs(k * d - xr[i])) << "value " << i;
      }
      quantize_row(GgmlType::MXFP4, y.data(), q2.data(), cols);
      ASSERT_EQ(q, q2) << "row " << r;
    }
    // Relative RMS error measured 11.5% (gaussian) / 16.7% (outliers): E2M1 has 8 magnitudes, the
    // top one 12/16 of the octave. Bounds about 10% above.
    const double e = round_trip_error(GgmlType::MXFP4, x, cols);
    std::printf("MXFP4 relative RMS error (%s): %.4f%%\n", outliers ? "outliers" : "gaussian",
                100 * e);
    EXPECT_LT(e, outliers ? 0.184 : 0.127);
  }
  const std::vector<float> zeros(64, 0.f);
  std::vector<uint8_t> q(34, 0xAB);
  quantize_row(GgmlType::MXFP4, zeros.data(), q.data(), 64);
  EXPECT_EQ(q, std::vector<uint8_t>(34, 0));
}

TEST(Quant, ZeroRowsStayZero) {
  const int64_t n = 512;
  const std::vector<float> zeros(n, 0.f);
  for (const GgmlType t : kQuantTypes) {
    std::vector<uint8_t> q(static_cast<size_t>(row_bytes(t, n)), 0xAB);
    std::vector<float> y(n, 1.f);
    quantize_row(t, zeros.data(), q.data(), n);
    dequantize_row(t, q.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], 0.f) << type_name(t) << " value " << i;
  }
}

TEST(Quant, ConstantRowsKeepTheirValue) {
  // A constant block is the degenerate case of the min/scale searches (max == min).
  const int64_t n = 256;
  for (const float c : {1.5f, -2.25f, 40.f}) {
    const std::vector<float> x(n, c);
    for (const GgmlType t : kQuantTypes) {
      std::vector<uint8_t> q(static_cast<size_t>(row_bytes(t, n)));
      std::vector<float> y(n);
      quantize_row(t, x.data(), q.data(), n);
      dequantize_row(t, q.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_NEAR(y[i], c, std::fabs(c) * 0.02) << type_name(t) << " c " << c;
    }
  }
}

TEST(Quant, Q8_0FixedPoint) {
  // Blocks that are already Q8_0 values quantize to themselves (d is exact in fp16 and
  // 127 * d / 127 == d), so a tensor read and written again does not drift.
  const int64_t n = 32 * 64;
  const std::vector<float> x = outlier_rows(3, n);
  std::vector<uint8_t> q(static_cast<size_t>(row_bytes(GgmlType::Q8_0, n)));
  std::vector<uint8_t> q2(q.size());
  std::vector<float> y(n);
  quantize_row(GgmlType::Q8_0, x.data(), q.data(), n);
  dequantize_row(GgmlType::Q8_0, q.data(), y.data(), n);
  quantize_row(GgmlType::Q8_0, y.data(), q2.data(), n);
  EXPECT_EQ(q, q2);
}

TEST(Quant, Q8_0ContractRoundsHalfAwayFromZero) {
  // amax 127 gives d = 1 exactly: the levels are the values rounded half away from zero.
  std::vector<float> x(32, 0.f);
  x[0] = 127.f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.5f;
  x[4] = -126.5f;
  x[5] = 3.49f;
  BlockQ8_0 b;
  quantize_row(GgmlType::Q8_0, x.data(), reinterpret_cast<uint8_t*>(&b), 32);
  EXPECT_EQ(b.d, float_to_f16(1.f));
  const int8_t want[] = {127, 3, -3, 1, -127, 3};
  for (int j = 0; j < 6; ++j) EXPECT_EQ(b.qs[j], want[j]) << j;
}

TEST(Quant, Q8_KContractRoundsHalfToEvenAndKeepsSign) {
  // max = 127 (largest magnitude, positive): iscale = -1, d = -1, levels = nearest-even of -x.
  std::vector<float> x(256, 0.f);
  x[0] = 127.f;
  x[1] = 2.5f;
  x[2] = 3.5f;
  x[3] = -0.5f;
  x[4] = -127.f;  // same magnitude, later: the first one sets the sign
  x[17] = 100.f;
  BlockQ8_K b;
  quantize_row(GgmlType::Q8_K, x.data(), reinterpret_cast<uint8_t*>(&b), 256);
  EXPECT_EQ(b.d, -1.f);
  const int8_t want[] = {-127, -2, -4, 0, 127};
  for (int j = 0; j < 5; ++j) EXPECT_EQ(b.qs[j], want[j]) << j;
  EXPECT_EQ(b.bsums[0], -127 - 2 - 4 + 127);
  EXPECT_EQ(b.bsums[1], -100);
  for (int s = 2; s < 16; ++s) EXPECT_EQ(b.bsums[s], 0);

  // Negative extreme: iscale = +1 and the cap at 127 is not hit.
  std::vector<float> z(256, 0.f);
  z[5] = -64.f;
  z[6] = 64.f;
  quantize_row(GgmlType::Q8_K, z.data(), reinterpret_cast<uint8_t*>(&b), 256);
  EXPECT_EQ(b.d, 1.f / (127.f / 64.f));
  EXPECT_EQ(b.qs[5], -127);
  EXPECT_EQ(b.qs[6], 127);
}

TEST(Quant, Q4_0ScaleFromSignedExtreme) {
  // The value of largest magnitude maps to level 0 (-8 * d); d is its value / -8, so a
  // positive extreme gives a negative d.
  std::vector<float> x(32, 0.f);
  x[0] = 8.f;
  x[1] = -7.f;
  x[2] = 1.f;
  x[20] = 4.4f;
  BlockQ4_0 b;
  quantize_row(GgmlType::Q4_0, x.data(), reinterpret_cast<uint8_t*>(&b), 32);
  EXPECT_EQ(f16_to_float(b.d), -1.f);
  EXPECT_EQ(b.qs[0] & 15, 0);   // 8 / -1 + 8
  EXPECT_EQ(b.qs[1] & 15, 15);  // 7 + 8
  EXPECT_EQ(b.qs[2] & 15, 7);   // -1 + 8
  EXPECT_EQ(b.qs[4] >> 4, 4);   // value 20: -4.4 + 8.5 truncated
  EXPECT_EQ(b.qs[3] & 15, 8);   // 0
}

TEST(Quant, PartialBlocksAreRefused) {
  std::vector<float> x(48);
  std::vector<uint8_t> q(1024);
  for (const GgmlType t : kQuantTypes) {
    EXPECT_THROW(quantize_row(t, x.data(), q.data(), 48), Error) << type_name(t);
    EXPECT_THROW(dequantize_row(t, q.data(), x.data(), 48), Error) << type_name(t);
  }
}

}  // namespace
}  // namespace moe
