#include "moe/quant.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>

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
    default:
      return {0, 0};
  }
}

namespace {
const std::map<uint32_t, const char*>& type_names() {
  static const std::map<uint32_t, const char*> names = {
      {0, "F32"},   {1, "F16"},   {2, "Q4_0"},  {3, "Q4_1"},  {6, "Q5_0"},
      {7, "Q5_1"},  {8, "Q8_0"},  {9, "Q8_1"},  {10, "Q2_K"}, {11, "Q3_K"},
      {12, "Q4_K"}, {13, "Q5_K"}, {14, "Q6_K"}, {15, "Q8_K"}, {24, "I8"},
      {25, "I16"},  {26, "I32"},  {27, "I64"},  {28, "F64"},  {30, "BF16"}};
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
        GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K}) {
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

void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const auto* h = reinterpret_cast<const uint16_t*>(src);
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
    default:
      MOE_CHECK(false, "dequantize_row: {} not implemented",
                ggml_type_name(static_cast<uint32_t>(type)));
  }
}

void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n) {
  auto* h = reinterpret_cast<uint16_t*>(dst);
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
    default:
      MOE_CHECK(false, "quantize_row: {} not implemented",
                ggml_type_name(static_cast<uint32_t>(type)));
  }
}

}  // namespace moe
