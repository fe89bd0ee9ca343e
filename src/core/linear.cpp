#include "moe/linear.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/linear_rows.h"
#include "core/parallel_for.h"
#include "core/quant_dot.h"
#include "moe/cpu_features.h"
#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/gemm_bf16.h"

namespace moe {

GgmlType ggml_type_of(DType t) {
  switch (t) {
    case DType::F32:
      return GgmlType::F32;
    case DType::F16:
      return GgmlType::F16;
    case DType::BF16:
      return GgmlType::BF16;
    default:
      MOE_CHECK(false, "no ggml type for dtype {}", dtype_name(t));
  }
}

namespace {

// -1: not set, the CPU decides (on with the AVX-512 BF16 GEMM); 0 / 1: set.
std::atomic<int> g_bf16_activations{-1};

// Few rows (decoding): one pass over the weights, each weight row dotted with every input row
// while it is in cache. A GEMM would first pack (copy) the whole weight matrix, tripling the
// memory traffic of a step that is bound by it.
template <int kMaxRows>
void linear_few_rows(const float* x, int64_t n, const WeightView& w, float* y, bool accumulate) {
  const int64_t K = w.cols;
#pragma omp parallel for schedule(static) if (w.rows * K > (1 << 15))
  for (int64_t r = 0; r < w.rows; ++r) {
    float acc[kMaxRows] = {};
    if (w.type == GgmlType::F32) {
      const float* wr = reinterpret_cast<const float*>(w.data) + r * K;
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * K;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < K; ++j) s += wr[j] * xi[j];
        acc[i] = s;
      }
    } else if (w.type == GgmlType::BF16) {
      const uint16_t* wr = reinterpret_cast<const uint16_t*>(w.data) + r * K;
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * K;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < K; ++j) {
          const uint32_t bits = static_cast<uint32_t>(wr[j]) << 16;
          float wv;
          std::memcpy(&wv, &bits, 4);
          s += wv * xi[j];
        }
        acc[i] = s;
      }
    } else {
      float row[1024];  // F16: widen a chunk at a time, then dot
      for (int64_t j0 = 0; j0 < K; j0 += 1024) {
        const int64_t len = std::min<int64_t>(1024, K - j0);
        dequantize_row(w.type, w.data + (r * K + j0) * 2, row, len);
        for (int64_t i = 0; i < n; ++i) {
          float s = 0;
          for (int64_t j = 0; j < len; ++j) s += row[j] * x[i * K + j0 + j];
          acc[i] += s;
        }
      }
    }
    for (int64_t i = 0; i < n; ++i)
      y[i * w.rows + r] = accumulate ? y[i * w.rows + r] + acc[i] : acc[i];
  }
}

// The activation rows of one call in Q8_0 / Q8_K, in a buffer of the calling thread that only
// grows: a steady state of decoding or prefill allocates nothing.
uint8_t* activation_scratch(size_t bytes) {
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < bytes) scratch.resize(bytes);
  return scratch.data();
}

// Quantized weights: x's rows are quantized once per call (per block, the format the weight
// type's int8 kernel takes), then every weight row is dotted with them by quant_dot.h kernels,
// up to kMaxDotRows activation rows per call so a weight block is unpacked once for all of them.
void linear_quantized(const float* x, int64_t n, const WeightView& w, float* y, bool accumulate) {
  const QuantDotFn dot = quant_dot_fn(w.type);
  const int64_t K = w.cols;
  const int64_t act_bytes = activation_row_bytes(w.type, K), w_bytes = row_bytes(w.type, K);
  const int64_t nb = K / ggml_block(static_cast<uint32_t>(w.type)).values;
  uint8_t* act = activation_scratch(static_cast<size_t>(n * act_bytes));
  parallel_for(n, n * K > (1 << 16), [&](int64_t i) {
    prepare_activation_row(w.type, x + i * K, act + i * act_bytes, K);
  });

  const auto store = [&](int64_t i0, int64_t r, int nact, const float* out) {
    for (int i = 0; i < nact; ++i) {
      float& dst = y[(i0 + i) * w.rows + r];
      dst = accumulate ? dst + out[i] : out[i];
    }
  };
  if (n <= kMaxDotRows) {
    // Decoding: one streaming pass over the weights.
#pragma omp parallel for schedule(static) if (w.rows * K > (1 << 15))
    for (int64_t r = 0; r < w.rows; ++r) {
      float out[kMaxDotRows];
      dot(w.data + r * w_bytes, act, act_bytes, static_cast<int>(n), nb, out);
      store(0, r, static_cast<int>(n), out);
    }
    return;
  }
  // Prefill: blocks of weight rows small enough to stay in L1/L2 while every tile of
  // kMaxDotRows activation rows passes over them; the activations (n rows, ~1.06 bytes a value)
  // stay in L2.
  const int64_t block = std::max<int64_t>(4, (int64_t{24} << 10) / std::max<int64_t>(w_bytes, 1));
  const int64_t blocks = (w.rows + block - 1) / block;
#pragma omp parallel for schedule(static) if (blocks > 1 && n * w.rows * K > (1 << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * block, r1 = std::min(w.rows, r0 + block);
    for (int64_t i0 = 0; i0 < n; i0 += kMaxDotRows) {
      const int nact = static_cast<int>(std::min<int64_t>(kMaxDotRows, n - i0));
      for (int64_t r = r0; r < r1; ++r) {
        float out[kMaxDotRows];
        dot(w.data + r * w_bytes, act + i0 * act_bytes, act_bytes, nact, nb, out);
        store(i0, r, nact, out);
      }
    }
  }
}

}  // namespace

void set_bf16_activations(bool on) {
  g_bf16_activations.store(on ? 1 : 0);
}

bool bf16_activations() {
  const int v = g_bf16_activations.load();
  return v < 0 ? cpu_features().bf16_gemm() : v == 1;
}

void linear_forward(const float* x, int64_t n, const WeightView& w, float* y, bool accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  if (n == 0 || w.rows == 0) return;
  switch (w.type) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::MXFP4:
      linear_quantized(x, n, w, y, accumulate);
      return;
    default:
      break;
  }
  constexpr int kFewRows = 4;
  if (n <= kFewRows) {
    linear_few_rows<kFewRows>(x, n, w, y, accumulate);
    return;
  }
  // Tens of rows (an expert's share of a prompt): tiles over the weights in place, no packing.
  // BF16 weights only where x may be rounded to bf16 (as the bf16 GEMM would).
  constexpr int64_t kTileRowsMax = 64;
  if (n <= kTileRowsMax && linear_rows_supported(w.type) &&
      (w.type == GgmlType::F32 || bf16_activations())) {
    uint16_t* xb = nullptr;
    if (w.type == GgmlType::BF16) {
      xb = reinterpret_cast<uint16_t*>(activation_scratch(static_cast<size_t>(n * w.cols) * 2));
      bf16_activation_rows(x, n, w.cols, xb);
    }
    constexpr int64_t kBlockRows = 96;  // weight rows per task
    const int64_t blocks = (w.rows + kBlockRows - 1) / kBlockRows;
#pragma omp parallel for schedule(static) if (blocks > 1 && n * w.rows * w.cols > (1 << 16))
    for (int64_t b = 0; b < blocks; ++b)
      linear_rows(x, xb, n, w, b * kBlockRows, std::min(w.rows, (b + 1) * kBlockRows), y,
                  accumulate);
    return;
  }
  if (w.type == GgmlType::F32) {
    gemm<float>(Trans::No, Trans::Yes, n, w.rows, w.cols, 1.0f, x, w.cols,
                reinterpret_cast<const float*>(w.data), w.cols, beta, y, w.rows);
    return;
  }
  // BF16 weights on the bf16 GEMM: widening is exact and gemm_bf16's rounding of the tile back
  // to bf16 gives the stored bits; x is rounded once per tile as gemm_bf16 packs it, so the
  // tiles are larger (~512 KB, half of L2) to pack x fewer times.
  const bool bf16_gemm = w.type == GgmlType::BF16 && bf16_activations();
  // Blocks of rows small enough that the widened tile stays in L2 (~128 KB).
  const int64_t tile_floats = bf16_gemm ? (int64_t{128} << 10) : (int64_t{32} << 10);
  const int64_t block = std::max<int64_t>(8, tile_floats / std::max<int64_t>(w.cols, 1));
  const int64_t blocks = (w.rows + block - 1) / block;
#pragma omp parallel if (blocks > 1 && n * w.rows * w.cols > (1 << 16))
  {
    std::vector<float> tile(static_cast<size_t>(block * w.cols));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * block, rb = std::min(block, w.rows - r0);
      for (int64_t r = 0; r < rb; ++r)
        dequantize_row(w.type, w.row(r0 + r), tile.data() + r * w.cols, w.cols);
      if (bf16_gemm)
        gemm_bf16(Trans::No, Trans::Yes, n, rb, w.cols, 1.0f, x, w.cols, tile.data(), w.cols, beta,
                  y + r0, w.rows);
      else
        gemm<float>(Trans::No, Trans::Yes, n, rb, w.cols, 1.0f, x, w.cols, tile.data(), w.cols,
                    beta, y + r0, w.rows);
    }
  }
}

GgmlType quantizable_type(GgmlType type, int64_t cols) {
  if (cols % ggml_block(static_cast<uint32_t>(type)).values == 0) return type;
  return cols % kQK == 0 ? GgmlType::Q8_0 : GgmlType::F16;
}

WeightView quantize_view(const WeightView& src, GgmlType type, std::vector<uint8_t>& storage) {
  MOE_CHECK(is_weight_type(type), "quantize_view: {} is not a weight type",
            ggml_type_name(static_cast<uint32_t>(type)));
  const GgmlType t = quantizable_type(type, src.cols);
  const int64_t out_row = row_bytes(t, src.cols);
  storage.resize(static_cast<size_t>(src.rows * out_row));
  const WeightView out{storage.data(), t, src.rows, src.cols};
#pragma omp parallel
  {
    std::vector<float> wide(src.type == GgmlType::F32 ? 0 : static_cast<size_t>(src.cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < src.rows; ++r) {
      const float* row = reinterpret_cast<const float*>(src.row(r));
      if (src.type != GgmlType::F32) {
        dequantize_row(src.type, src.row(r), wide.data(), src.cols);
        row = wide.data();
      }
      quantize_row(t, row, storage.data() + r * out_row, src.cols);
    }
  }
  return out;
}

}  // namespace moe
