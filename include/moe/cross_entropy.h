// Softmax cross-entropy over the vocabulary with ignore index -1 (PyTorch ignore_index).
// Shapes: logits, dlogits [n, V]; targets [n]; losses [n].
// The forward saves nothing: the backward recomputes the softmax from the logits, which the
// model keeps anyway, so no second [n, V] buffer is needed.
#pragma once

#include <cstdint>

namespace moe {

// losses[i] = logsumexp(logits[i]) - logits[i, targets[i]] for targets[i] >= 0 and 0 where
// targets[i] == -1. Returns the sum over the counted rows and writes their number to *counted
// (may be null). A target outside [-1, V) is a moe::Error naming the row. Max-subtracted, with
// the sum of exponentials in double.
template <class T>
double cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t n,
                             int64_t V, int64_t* counted);

// dlogits[i] = scale * (softmax(logits[i]) - onehot(targets[i])) for counted rows and 0 for
// ignored rows. WRITES (=): the logits feed nothing else. Use scale = 1 / counted for the mean.
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const int32_t* targets, int64_t n,
                            int64_t V, double scale);

}  // namespace moe
