#include "moe/generate.h"

#include <algorithm>

#include "moe/error.h"

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

std::vector<int32_t> generate(Transformer<float>& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& opt, int32_t eos_id,
                              const std::function<void(int32_t)>& on_token) {
  const ModelConfig& cfg = model.config();
  const int prompt_len = static_cast<int>(prompt.size());
  const int budget = new_token_budget(prompt_len, opt.max_new_tokens, cfg.max_position_embeddings);
  auto caches = model.new_caches(1, prompt_len + budget);
  std::vector<float> logits(cfg.vocab_size), scratch;
  Rng rng(opt.seed);
  std::vector<int32_t> out;
  model.forward_cached(prompt.data(), 1, prompt_len, caches, logits.data());
  for (int i = 0; i < budget; ++i) {
    const int32_t id = sample_token(logits.data(), cfg.vocab_size, opt.sampling, rng, scratch);
    if (opt.stop_at_eos && id == eos_id) break;
    out.push_back(id);
    if (on_token) on_token(id);
    if (i + 1 < budget) model.forward_cached(&id, 1, 1, caches, logits.data());
  }
  return out;
}

}  // namespace moe
