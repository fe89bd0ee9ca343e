#include "moe/generate.h"

#include "moe/error.h"

namespace moe {

std::vector<int32_t> generate(Transformer<float>& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& opt, int32_t eos_id,
                              const std::function<void(int32_t)>& on_token) {
  const ModelConfig& cfg = model.config();
  MOE_CHECK(!prompt.empty(), "generate: the prompt is empty (it needs at least the BOS token)");
  MOE_CHECK(opt.max_new_tokens >= 0, "generate: max_new_tokens must be non-negative, got {}",
            opt.max_new_tokens);
  const int prompt_len = static_cast<int>(prompt.size());
  MOE_CHECK(prompt_len < cfg.max_position_embeddings,
            "generate: the prompt has {} tokens; max_position_embeddings is {}", prompt_len,
            cfg.max_position_embeddings);
  const int budget = std::min(opt.max_new_tokens, cfg.max_position_embeddings - prompt_len);
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
