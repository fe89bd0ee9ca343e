#include "moe/generate.h"

#include <algorithm>

#include "moe/error.h"
#include "moe/sampling.h"

namespace moe {

int new_token_budget(int prompt_len, int max_new_tokens, int context) {
  MOE_REQUIRE(prompt_len > 0, "generate: the prompt is empty (it needs at least one token)");
  MOE_REQUIRE(max_new_tokens >= 0, "generate: max_new_tokens must be non-negative, got {}",
              max_new_tokens);
  MOE_REQUIRE(prompt_len < context,
              "generate: the prompt has {} tokens; the context (max_position_embeddings) is {}",
              prompt_len, context);
  return std::min(max_new_tokens, context - prompt_len);
}

std::vector<std::vector<int32_t>> generate(Decoder& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt, int32_t eos_id,
                                           const std::function<void(int, int32_t)>& on_token) {
  MOE_REQUIRE(!prompts.empty() && !prompts[0].empty(), "generate: needs a non-empty prompt");
  const int B = static_cast<int>(prompts.size());
  const int n = static_cast<int>(prompts[0].size());
  for (const auto& p : prompts)
    MOE_REQUIRE(static_cast<int>(p.size()) == n,
                "generate: batched prompts must have the same length ({} and {} tokens)", n,
                p.size());
  const int budget = new_token_budget(n, opt.max_new_tokens, model.config().context_length());
  const int64_t V = model.config().vocab_size;
  auto caches = model.new_caches(B, n + std::max(budget, 1));
  std::vector<int32_t> flat;
  for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
  std::vector<float> logits(static_cast<size_t>(B * V)), scratch;
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  std::vector<uint8_t> done(static_cast<size_t>(B), 0);
  Rng rng(opt.seed);
  model.forward(flat.data(), B, n, caches, logits.data());
  std::vector<int32_t> next(static_cast<size_t>(B));
  for (int step = 0; step < budget; ++step) {
    bool all_done = true;
    for (int b = 0; b < B; ++b) {
      if (done[b]) {
        next[b] = std::max(eos_id, 0);  // keeps the batch in step; never reported
        continue;
      }
      next[b] = sample_token(logits.data() + b * V, V, opt.sampling, rng, scratch);
      out[b].push_back(next[b]);
      if (on_token) on_token(b, next[b]);
      if (opt.stop_at_eos && eos_id >= 0 && next[b] == eos_id) done[b] = 1;
      all_done = all_done && done[b];
    }
    if (all_done || step + 1 == budget) break;
    model.forward(next.data(), B, 1, caches, logits.data());
  }
  return out;
}

void warm_up(Decoder& model, const std::vector<int32_t>& prompt) {
  // generate() itself, greedy, for two tokens: the prefill and one single-token step.
  GenerateOptions opt;
  opt.max_new_tokens = 2;
  opt.sampling.temperature = 0;
  opt.stop_at_eos = false;
  generate(model, {prompt}, opt, -1);
}

}  // namespace moe
