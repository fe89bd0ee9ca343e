#include "moe/embedding.h"

#include <algorithm>

#include "core/parallel_for.h"
#include "moe/error.h"

namespace moe {

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t n, int64_t V,
                       int64_t d) {
  // Validate first so no thread throws inside the parallel region.
  for (int64_t i = 0; i < n; ++i)
    MOE_REQUIRE(tokens[i] >= 0 && tokens[i] < V,
                "embedding_forward: token id {} at row {} is outside the vocabulary [0, {})",
                tokens[i], i, V);
  parallel_for(n, n * d > kParallelMinValues, [&](int64_t i) {
    const T* src = table + static_cast<int64_t>(tokens[i]) * d;
    std::copy(src, src + d, out + i * d);
  });
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int64_t n, int64_t d) {
  // Threads own disjoint column ranges and walk the rows in order, so repeated tokens are
  // summed in the same order on every run, whatever the thread count.
  constexpr int64_t kCols = 64;
  const int64_t blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for if (n * d > kParallelMinValues)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kCols, c1 = std::min(d, c0 + kCols);
    for (int64_t i = 0; i < n; ++i) {
      T* dst = dtable + static_cast<int64_t>(tokens[i]) * d;
      const T* src = dout + i * d;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t,
                                       int64_t);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t,
                                        int64_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t);

}  // namespace moe
