// Permutation as first-class ops (as in MegaBlocks ops/gather, ops/scatter): the kept slots
// are counting-sorted by expert so each expert's tokens form one contiguous block of rows.
//   gather:  xp[r] = x[token(r)]                 backward: dx[t] += sum of its rows of dxp
//   scatter: out[t] = sum_j gate[t,j] * y[row]   backward: dy[row] = gate * dout[t],
//                                                          dgate[t,j] = dout[t] . y[row]
// Scatter is written per token (a gather of its k rows), so it needs no atomics and sums in
// slot order: results are deterministic for any thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/router.h"

namespace moe {

struct Permutation {
  std::vector<int64_t> offsets;   // [E+1] expert e owns rows [offsets[e], offsets[e+1])
  std::vector<int64_t> row_slot;  // [N]   slot index t*k+j of each row
  std::vector<int64_t> slot_row;  // [T*k] row of each slot, -1 when dropped or padding
  std::vector<int64_t> cursor;    // [E]   scratch of build_permutation
  int64_t rows() const { return offsets.empty() ? 0 : offsets.back(); }
  int64_t rows_of(int e) const { return offsets[e + 1] - offsets[e]; }
};

// Stable counting sort of plan.expert (rows of one expert stay in token order).
void build_permutation(const RoutingPlan& plan, Permutation& p);

template <class T>
void gather_rows(const Permutation& p, int k, int64_t d, const T* x, T* xp);
template <class T>
void gather_rows_backward(const Permutation& p, int64_t tokens, int k, int64_t d, const T* dxp,
                          T* dx);
template <class T>
void scatter_gated(const Permutation& p, int64_t tokens, int k, int64_t d, const T* y,
                   const T* gate, T* out);
template <class T>
void scatter_gated_backward(const Permutation& p, int64_t tokens, int k, int64_t d, const T* dout,
                            const T* y, const T* gate, T* dy, T* dgate);

}  // namespace moe
