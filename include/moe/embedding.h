// Token embedding lookup (llm.c encoder_forward / encoder_backward without positions: the
// model uses RoPE). Shapes: tokens [n], table [V, d], out / dout [n, d].
// The backward ACCUMULATES into dtable (+=), so a tied lm_head can add its gradient too.
#pragma once

#include <cstdint>

namespace moe {

// out[i, :] = table[tokens[i], :]. A token outside [0, V) is a moe::Error naming the row and
// the value.
template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t n, int64_t V,
                       int64_t d);

// dtable[tokens[i], :] += dout[i, :]. Deterministic (rows are added in order, no atomics);
// tokens must be the ones the forward validated.
template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tokens, int64_t n, int64_t d);

}  // namespace moe
