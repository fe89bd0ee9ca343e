// Next-token sampling for generation: temperature, top-k and top-p (nucleus), in that order.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/rng.h"

namespace moe {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy (argmax, lowest id on ties; draws nothing from rng)
  int top_k = 0;             // 0: off
  double top_p = 1.0;        // 1: off; in (0, 1]
};

// Draws a token from logits [V]: divide by temperature, keep the top_k largest (ties: lower
// id), then the smallest prefix of the descending-probability order (ties: lower id first)
// whose mass >= top_p, renormalize, and draw with one rng.uniform(). Deterministic for a given
// rng state. scratch (resized to V) is reused so generation does not allocate per token.
// Invalid options are a moe::Error naming the option; a NaN or +inf logit is an error naming
// its id (-inf is allowed: a masked token).
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, Rng& rng,
                     std::vector<float>& scratch);

}  // namespace moe
