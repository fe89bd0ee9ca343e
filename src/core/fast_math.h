// Vectorizable math kernels shared by the layers (internal, not part of the public API).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace moe {

// exp for float in a form the compiler vectorizes (std::exp is one libm call per element, and
// the softmax over the vocabulary and over the keys is mostly exp): Cephes expf, relative error
// below 2e-7; 0 below -87.3 (so -inf gives 0), NaN stays NaN. Double keeps std::exp.
inline float vexp(float x) {
  float c = x > -87.3f ? x : -87.3f;  // also maps NaN into range (restored below)
  c = c < 88.0f ? c : 88.0f;
  // Round to nearest by adding and removing 1.5 * 2^23 (std::floor is a libm call here).
  const float fx = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = c - fx * 0.693359375f + fx * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(fx) + 127) << 23);
  const float res = y * scale + (x - x);  // + 0, or NaN when x is NaN
  return x < -87.3f ? 0.0f : res;
}
template <class T>
T exp_fast(T x) {
  if constexpr (std::is_same_v<T, float>)
    return vexp(x);
  else
    return std::exp(x);
}

}  // namespace moe
