#include "moe/sampling.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "moe/error.h"

namespace moe {

// Kept tokens are described by a cut instead of a sorted index list, so scratch needs only
// the sorted logits: every token with a logit above `cut` is kept, plus the `ties` lowest ids
// whose logit equals `cut`. Ordering by logit equals ordering by probability (temperature > 0),
// and working on raw logits keeps exact ties exact and cannot overflow for tiny temperatures.
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, Rng& rng,
                     std::vector<float>& scratch) {
  MOE_CHECK(V > 0, "sample_token: vocabulary size must be positive, got {}", V);
  MOE_REQUIRE(opt.temperature >= 0 && std::isfinite(opt.temperature),
              "sample_token: temperature must be finite and >= 0, got {}", opt.temperature);
  MOE_REQUIRE(opt.top_k >= 0, "sample_token: top_k must be >= 0 (0 = off), got {}", opt.top_k);
  MOE_REQUIRE(opt.top_p > 0 && opt.top_p <= 1,
              "sample_token: top_p must be in (0, 1] (1 = off), got {}", opt.top_p);
  int64_t best = 0;
  for (int64_t i = 0; i < V; ++i) {
    MOE_CHECK(!std::isnan(logits[i]) && logits[i] != std::numeric_limits<float>::infinity(),
              "sample_token: logit of token {} is {}", i, logits[i]);
    if (logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
  }
  MOE_CHECK(logits[best] > -std::numeric_limits<float>::infinity(),
            "sample_token: every logit is -inf");
  if (opt.temperature == 0) return static_cast<int32_t>(best);

  const double mx = logits[best];
  const double inv_t = 1.0 / opt.temperature;
  auto weight = [&](float z) { return std::exp((static_cast<double>(z) - mx) * inv_t); };
  const int64_t k = opt.top_k > 0 ? std::min<int64_t>(opt.top_k, V) : V;

  // m = number of kept tokens; when m < V, cut = the smallest kept logit and ties = how many
  // tokens at exactly the cut the sorted prefix holds (the lowest ids among them are kept).
  int64_t m = k, ties = 0;
  float cut = 0;
  if (k < V || opt.top_p < 1) {
    scratch.assign(logits, logits + V);
    if (k == V)
      std::sort(scratch.begin(), scratch.end(), std::greater<float>());
    else
      std::partial_sort(scratch.begin(), scratch.begin() + k, scratch.end(), std::greater<float>());
    if (opt.top_p < 1) {
      double mass = 0;
      for (int64_t j = 0; j < k; ++j) mass += weight(scratch[j]);
      double cum = 0;
      m = 0;
      while (m < k) {
        cum += weight(scratch[m++]);
        if (cum >= opt.top_p * mass) break;
      }
    }
    cut = scratch[m - 1];
    for (int64_t j = m - 1; j >= 0 && scratch[j] == cut; --j) ++ties;
  }
  // Two passes in id order over the same kept set: its total mass, then the draw.
  auto pass = [&](double u, double* total) -> int64_t {
    int64_t left = ties, last = best;
    double cum = 0;
    for (int64_t i = 0; i < V; ++i) {
      if (m < V && !(logits[i] > cut || (logits[i] == cut && left-- > 0))) continue;
      const double w = weight(logits[i]);
      cum += w;
      if (!total && u < cum) return i;
      if (w > 0) last = i;
    }
    if (total) *total = cum;
    return last;  // u rounded up to the total: the last kept token with mass
  };
  double total = 0;
  pass(0, &total);
  const double u = rng.uniform() * total;
  return static_cast<int32_t>(pass(u, nullptr));
}

}  // namespace moe
