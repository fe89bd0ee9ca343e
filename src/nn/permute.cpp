#include "moe/permute.h"

#include <algorithm>

#include "core/parallel_for.h"

namespace moe {

void build_permutation(const RoutingPlan& plan, Permutation& p) {
  const int E = plan.num_experts;
  const int64_t slots = plan.tokens * plan.k;
  p.offsets.assign(E + 1, 0);
  p.slot_row.assign(static_cast<size_t>(slots), -1);
  for (int64_t i = 0; i < slots; ++i)
    if (plan.expert[i] >= 0) ++p.offsets[plan.expert[i] + 1];
  for (int e = 0; e < E; ++e) p.offsets[e + 1] += p.offsets[e];
  p.row_slot.resize(static_cast<size_t>(p.offsets[E]));
  auto& cursor = p.cursor;
  cursor.assign(p.offsets.begin(), p.offsets.end() - 1);
  for (int64_t i = 0; i < slots; ++i) {
    const int32_t e = plan.expert[i];
    if (e < 0) continue;
    const int64_t r = cursor[e]++;
    p.row_slot[r] = i;
    p.slot_row[i] = r;
  }
}

template <class T>
void gather_rows(const Permutation& p, int k, int64_t d, const T* x, T* xp) {
  const int64_t n = p.rows();
  parallel_for(n, n * d > kParallelMinValues,
               [&](int64_t r) { std::copy_n(x + (p.row_slot[r] / k) * d, d, xp + r * d); });
}

template <class T>
void gather_rows_backward(const Permutation& p, int64_t tokens, int k, int64_t d, const T* dxp,
                          T* dx) {
#pragma omp parallel for if (tokens * d > kParallelMinValues)
  for (int64_t t = 0; t < tokens; ++t) {
    T* dst = dx + t * d;
    for (int j = 0; j < k; ++j) {
      const int64_t r = p.slot_row[t * k + j];
      if (r < 0) continue;
      const T* src = dxp + r * d;
      for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
    }
  }
}

template <class T>
void scatter_gated(const Permutation& p, int64_t tokens, int k, int64_t d, const T* y,
                   const T* gate, T* out) {
  parallel_for(tokens, tokens * d > kParallelMinValues, [&](int64_t t) {
    T* dst = out + t * d;
    std::fill(dst, dst + d, T(0));
    for (int j = 0; j < k; ++j) {
      const int64_t r = p.slot_row[t * k + j];
      if (r < 0) continue;
      const T g = gate[t * k + j];
      const T* src = y + r * d;
      for (int64_t c = 0; c < d; ++c) dst[c] += g * src[c];
    }
  });
}

template <class T>
void scatter_gated_backward(const Permutation& p, int64_t tokens, int k, int64_t d, const T* dout,
                            const T* y, const T* gate, T* dy, T* dgate) {
#pragma omp parallel for if (tokens * d > kParallelMinValues)
  for (int64_t t = 0; t < tokens; ++t) {
    const T* g_out = dout + t * d;
    for (int j = 0; j < k; ++j) {
      const int64_t slot = t * k + j;
      const int64_t r = p.slot_row[slot];
      if (r < 0) {
        dgate[slot] = T(0);
        continue;
      }
      const T g = gate[slot];
      const T* yr = y + r * d;
      T* dyr = dy + r * d;
      T dot = 0;
      for (int64_t c = 0; c < d; ++c) {
        dot += g_out[c] * yr[c];
        dyr[c] = g * g_out[c];
      }
      dgate[slot] = dot;
    }
  }
}

#define MOE_INSTANTIATE(T)                                                                        \
  template void gather_rows<T>(const Permutation&, int, int64_t, const T*, T*);                   \
  template void gather_rows_backward<T>(const Permutation&, int64_t, int, int64_t, const T*, T*); \
  template void scatter_gated<T>(const Permutation&, int64_t, int, int64_t, const T*, const T*,   \
                                 T*);                                                             \
  template void scatter_gated_backward<T>(const Permutation&, int64_t, int, int64_t, const T*,    \
                                          const T*, const T*, T*, T*);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
#undef MOE_INSTANTIATE

}  // namespace moe
