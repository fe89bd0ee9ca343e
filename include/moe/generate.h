// Autoregressive generation with a KV cache: the prompt runs through the model once, then each
// new token costs one single-row step per layer.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "moe/sampling.h"
#include "moe/tokenizer.h"
#include "moe/transformer.h"

namespace moe {

struct GenerateOptions {
  int max_new_tokens = 200;
  SamplingOptions sampling;
  uint64_t seed = 1;
  bool stop_at_eos = true;
};

// How many new tokens generation draws after a prompt of prompt_len tokens in a model of
// `context` positions: max_new_tokens, or fewer when the context ends first (generation then
// stops there; the caller may say so). A negative max_new_tokens, an empty prompt or one that
// already fills the context is an error.
int new_token_budget(int prompt_len, int max_new_tokens, int context);

// Returns the generated ids (without the prompt). on_token, if set, sees each id as drawn.
std::vector<int32_t> generate(Transformer<float>& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& opt, int32_t eos_id,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace moe
