// Perplexity of any model (a Decoder) on a token stream, as Hugging Face's perplexity recipe and
// llama.cpp's perplexity tool measure it: windows of ctx input tokens, each predicting the token
// after each of its inputs; windows start every `stride` tokens and each target is scored once,
// by the window that gives it the most context (the first window that reaches it, since later
// windows start later). stride = ctx: disjoint windows (every target scored with 0..ctx-1
// tokens of context); a smaller stride costs ctx / stride forwards per token and gives every
// target after the first window at least ctx - stride tokens of context. The stream's first
// token is never a target. Losses are natural-log cross-entropies, summed in double; a
// target's domain is the stream's domain of that token.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "moe/dataset.h"
#include "moe/decoder.h"

namespace moe {

// Inputs tokens[start, start + n), targets tokens[start + 1, start + n]; targets j >= first
// (0-based) are scored.
struct ScoredWindow {
  int64_t start = 0;
  int n = 0;
  int first = 0;
};

// The sliding windows over a stream of `tokens` tokens (every target 1..tokens-1 scored once).
// ctx >= 1, 1 <= stride <= ctx (a larger stride would skip targets: an error naming --stride).
std::vector<ScoredWindow> sliding_windows(int64_t tokens, int ctx, int stride);

// Windows of seq_len inputs at the given starts, every target scored (`moe eval`'s validation
// windows, validation_windows()).
std::vector<ScoredWindow> full_windows(const std::vector<int64_t>& starts, int seq_len);

struct PerplexityOptions {
  int batch = 4;  // windows per forward (fewer when the logits would pass ~512 MB)
  WindowProgress progress;
};

struct DomainLoss {
  std::string domain;
  double loss = 0;  // mean nats per scored token
  int64_t tokens = 0;
};

struct PerplexityResult {
  double loss = 0;  // mean nats per scored token
  double perplexity = 0;
  int64_t tokens = 0;                  // scored targets
  int64_t windows = 0;                 // forwards of one window
  std::vector<DomainLoss> per_domain;  // the domains with scored tokens, in the stream's order
  double seconds = 0;
};

// Runs the windows through model.forward(all_logits = true), B at a time.
PerplexityResult perplexity(Decoder& model, const TokenStream& stream,
                            const std::vector<ScoredWindow>& windows,
                            const PerplexityOptions& opt = {});

nlohmann::json perplexity_to_json(const PerplexityResult& r);

}  // namespace moe
