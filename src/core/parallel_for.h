// parallel_for: a loop over OpenMP threads only when it is worth it. `#pragma omp parallel for
// if (cond)` still opens a region (a team of one) when cond is false, about 1.5 us each
// (bench: 2 threads, an empty loop: 1.6 us with a false if clause, 3.0 us with two threads,
// 0.01 us plain); a decode step runs dozens of such small loops per layer. Here a small loop is
// a plain loop.
#pragma once

#include <cstdint>

namespace moe {

// Values (rows x width) below which a loop over them is faster in one thread than in a region.
constexpr int64_t kParallelMinValues = 1 << 14;

// body(i) for i in [0, n): split statically over the threads when `parallel` (and n > 1), else
// in order in this thread.
template <class Body>
inline void parallel_for(int64_t n, bool parallel, const Body& body) {
  if (!parallel || n <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace moe
