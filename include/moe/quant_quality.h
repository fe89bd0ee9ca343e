// What quantization costs in quality, measured the way llama.cpp's perplexity tool reports it
// (its --kl-divergence mode): two decoders, a base (e.g. f32) and a test model (e.g. the same
// weights at q4_k), run over the same non-overlapping windows of `ctx` tokens of a token
// stream. In each window only the second half is scored (positions ctx/2 .. ctx-2 predict the
// next token), so every scored token has at least ctx/2 tokens of context. Per scored token:
// the negative log-likelihood of the true next token under each model, the KL divergence
// KL(base || test) = sum_v p_base(v) (log p_base(v) - log p_test(v)) of the next-token
// distributions, and whether both models' most likely token is the same. Sums in double.
#pragma once

#include <cstdint>
#include <functional>

#include "moe/decoder.h"

namespace moe {

struct ModelComparison {
  int64_t windows = 0;                // windows run
  int64_t scored = 0;                 // tokens scored (windows * (ctx - 1 - ctx / 2))
  double base_nll = 0, test_nll = 0;  // mean negative log-likelihood (nats)
  double mean_kl = 0;                 // mean KL(base || test) (nats)
  double max_kl = 0;                  // the largest per-token KL
  double top1_agreement = 0;          // share of scored tokens with the same argmax, [0, 1]
  double base_ppl() const;            // exp(base_nll)
  double test_ppl() const;
};

// Runs the first `max_windows` windows (all whole windows of the n tokens when max_windows <= 0).
// Both decoders must have the same vocabulary; ctx >= 4 and at most their context. Fewer than
// ctx tokens is an error. on_window(done, total) reports progress (may be empty).
ModelComparison compare_models(Decoder& base, Decoder& test, const int32_t* tokens, int64_t n,
                               int ctx, int64_t max_windows = 0,
                               const std::function<void(int64_t, int64_t)>& on_window = {});

}  // namespace moe
