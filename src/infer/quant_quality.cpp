#include "moe/quant_quality.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "moe/error.h"

namespace moe {

double ModelComparison::base_ppl() const {
  return std::exp(base_nll);
}
double ModelComparison::test_ppl() const {
  return std::exp(test_nll);
}

namespace {

// log-softmax of one row of logits in double: out[v] = z[v] - logsumexp(z).
void log_softmax(const float* z, int64_t V, double* out) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(z[v]));
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(z[v]) - mx);
  const double lse = mx + std::log(sum);
  for (int64_t v = 0; v < V; ++v) out[v] = static_cast<double>(z[v]) - lse;
}

// The first index of the largest value (llama.cpp's top-1 takes the first on ties as well).
int64_t argmax(const float* z, int64_t V) {
  return std::max_element(z, z + V) - z;
}

}  // namespace

ModelComparison compare_models(Decoder& base, Decoder& test, const int32_t* tokens, int64_t n,
                               int ctx, int64_t max_windows,
                               const std::function<void(int64_t, int64_t)>& on_window) {
  const int64_t V = base.config().vocab_size;
  MOE_REQUIRE(test.config().vocab_size == V,
              "compare_models: the vocabularies differ ({} and {} tokens)", V,
              test.config().vocab_size);
  MOE_REQUIRE(ctx >= 4, "compare_models: a window of {} tokens is too short (at least 4)", ctx);
  MOE_REQUIRE(n >= ctx, "compare_models: {} tokens are fewer than one window of {}", n, ctx);
  int64_t windows = n / ctx;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  const int first = ctx / 2;  // scored: logits of positions first .. ctx - 2
  std::vector<KvCache<float>> base_cache = base.new_caches(1, ctx);
  std::vector<KvCache<float>> test_cache = test.new_caches(1, ctx);
  std::vector<float> base_logits(static_cast<size_t>(ctx * V)), test_logits(base_logits.size());
  const int rows = ctx - 1 - first;
  std::vector<double> lp_base(static_cast<size_t>(rows * V)), lp_test(lp_base.size());

  ModelComparison r;
  double nll_b = 0, nll_t = 0, kl_sum = 0, kl_max = 0;
  int64_t same = 0;
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* win = tokens + w * ctx;
    for (int32_t i = 0; i < ctx; ++i)
      MOE_REQUIRE(win[i] >= 0 && win[i] < V, "compare_models: token {} at {} is outside [0, {})",
                  win[i], w * ctx + i, V);
    for (auto* caches : {&base_cache, &test_cache})
      for (KvCache<float>& c : *caches) {  // empty again (a Gated DeltaNet state to zeros too)
        c.length = 0;
        std::fill(c.conv.begin(), c.conv.end(), 0.0f);
        std::fill(c.ssm.begin(), c.ssm.end(), 0.0f);
      }
    base.forward(win, 1, ctx, base_cache, base_logits.data(), /*all_logits=*/true);
    test.forward(win, 1, ctx, test_cache, test_logits.data(), /*all_logits=*/true);
#pragma omp parallel for schedule(static) reduction(+ : nll_b, nll_t, kl_sum, same) \
    reduction(max : kl_max)
    for (int j = 0; j < rows; ++j) {
      const int64_t pos = first + j;
      const float* zb = base_logits.data() + pos * V;
      const float* zt = test_logits.data() + pos * V;
      double* lb = lp_base.data() + j * V;
      double* lt = lp_test.data() + j * V;
      log_softmax(zb, V, lb);
      log_softmax(zt, V, lt);
      const int32_t next = win[pos + 1];
      nll_b -= lb[next];
      nll_t -= lt[next];
      double kl = 0;
      for (int64_t v = 0; v < V; ++v) kl += std::exp(lb[v]) * (lb[v] - lt[v]);
      kl_sum += kl;
      kl_max = std::max(kl_max, kl);
      same += argmax(zb, V) == argmax(zt, V);
    }
    if (on_window) on_window(w + 1, windows);
  }
  r.windows = windows;
  r.scored = windows * rows;
  const double s = static_cast<double>(r.scored);
  r.base_nll = nll_b / s;
  r.test_nll = nll_t / s;
  r.mean_kl = kl_sum / s;
  r.max_kl = kl_max;
  r.top1_agreement = static_cast<double>(same) / s;
  return r;
}

}  // namespace moe
