#include "moe/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "moe/cross_entropy.h"
#include "moe/error.h"

namespace moe {

std::vector<ScoredWindow> sliding_windows(int64_t tokens, int ctx, int stride) {
  MOE_REQUIRE(ctx >= 1, "--ctx must be at least 1, got {}", ctx);
  MOE_REQUIRE(stride >= 1 && stride <= ctx,
              "--stride {} must be in [1, --ctx = {}] (a larger stride would skip tokens)", stride,
              ctx);
  MOE_REQUIRE(tokens >= 2, "perplexity: the text is {} token(s); it needs at least 2", tokens);
  std::vector<ScoredWindow> w;
  int64_t scored_to = 0;  // the last target scored so far (token 0 is never a target)
  for (int64_t b = 0;; b += stride) {
    const int64_t end = std::min<int64_t>(b + ctx, tokens - 1);  // inputs [b, end)
    w.push_back({b, static_cast<int>(end - b), static_cast<int>(scored_to - b)});
    scored_to = end;
    if (end == tokens - 1) break;
  }
  return w;
}

std::vector<ScoredWindow> full_windows(const std::vector<int64_t>& starts, int seq_len) {
  std::vector<ScoredWindow> w;
  w.reserve(starts.size());
  for (int64_t s : starts) w.push_back({s, seq_len, 0});
  return w;
}

PerplexityResult perplexity(Decoder& model, const TokenStream& stream,
                            const std::vector<ScoredWindow>& windows,
                            const PerplexityOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = model.config();
  const int64_t V = c.vocab_size;
  const size_t D = stream.domain_names.size();
  std::vector<double> dom_sum(std::max<size_t>(D, 1), 0.0);
  std::vector<int64_t> dom_count(dom_sum.size(), 0);
  std::vector<int32_t> inputs, targets;
  std::vector<uint8_t> domains;
  std::vector<float> logits;
  std::vector<float> row_nll;
  PerplexityResult r;
  // The logits of one forward stay under ~512 MB (a 150k vocabulary at ctx 512 is 300 MB a
  // window).
  const int64_t max_rows = std::max<int64_t>(1, (int64_t{512} << 20) / (4 * V));
  for (size_t w0 = 0; w0 < windows.size();) {
    const int n = windows[w0].n;
    MOE_CHECK(n >= 1, "perplexity: an empty window");
    MOE_REQUIRE(n <= c.context_length(),
                "--ctx {} exceeds the model's context (max_position_embeddings = {})", n,
                c.context_length());
    // Consecutive windows of one length share a forward.
    int B = 0;
    const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(opt.batch, max_rows / n));
    while (w0 + B < windows.size() && B < cap && windows[w0 + B].n == n) ++B;
    const int64_t rows = static_cast<int64_t>(B) * n;
    inputs.resize(static_cast<size_t>(rows));
    targets.resize(inputs.size());
    domains.resize(inputs.size());
    logits.resize(static_cast<size_t>(rows * V));
    row_nll.resize(inputs.size());
    for (int b = 0; b < B; ++b) {
      const ScoredWindow& w = windows[w0 + b];
      MOE_CHECK(w.start >= 0 && w.start + w.n < stream.size(),
                "perplexity: window [{}, {}] outside the stream of {}", w.start, w.start + w.n,
                stream.size());
      stream.read(w.start, n, inputs.data() + int64_t(b) * n, nullptr);
      stream.read(w.start + 1, n, targets.data() + int64_t(b) * n, domains.data() + int64_t(b) * n);
    }
    for (int32_t t : targets)
      MOE_REQUIRE(t >= 0 && t < V,
                  "perplexity: token id {} is outside the model's vocabulary [0, {})", t, V);
    auto caches = model.new_caches(B, n);
    model.forward(inputs.data(), B, n, caches, logits.data(), /*all_logits=*/true);
    // -log softmax(logits)[target] per scored row: the cross-entropy of training and
    // evaluate() (ignore index -1 for the rows another window scores).
    for (int64_t i = 0; i < rows; ++i)
      if (i % n < windows[w0 + i / n].first) targets[i] = -1;
    cross_entropy_forward<float>(row_nll.data(), logits.data(), targets.data(), rows, V, nullptr);
    for (int64_t i = 0; i < rows; ++i) {
      if (targets[i] < 0) continue;
      const size_t d = D > 0 ? domains[i] : 0;
      dom_sum[d] += row_nll[i];
      ++dom_count[d];
    }
    w0 += B;
    r.windows += B;
    if (opt.progress) opt.progress(static_cast<int64_t>(w0), static_cast<int64_t>(windows.size()));
  }
  double total = 0;
  for (size_t d = 0; d < dom_sum.size(); ++d) {
    total += dom_sum[d];
    r.tokens += dom_count[d];
    if (dom_count[d] > 0 && D > 0)
      r.per_domain.push_back(
          {stream.domain_names[d], dom_sum[d] / static_cast<double>(dom_count[d]), dom_count[d]});
  }
  MOE_REQUIRE(r.tokens > 0, "perplexity: no token was scored");
  r.loss = total / static_cast<double>(r.tokens);
  r.perplexity = std::exp(r.loss);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

nlohmann::json perplexity_to_json(const PerplexityResult& r) {
  nlohmann::json doms = nlohmann::json::array();
  for (const DomainLoss& d : r.per_domain)
    doms.push_back({{"domain", d.domain},
                    {"loss", d.loss},
                    {"perplexity", std::exp(d.loss)},
                    {"tokens", d.tokens}});
  return {{"loss", r.loss},       {"perplexity", r.perplexity}, {"tokens", r.tokens},
          {"windows", r.windows}, {"seconds", r.seconds},       {"domains", doms}};
}

}  // namespace moe
