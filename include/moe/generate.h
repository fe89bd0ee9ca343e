// Autoregressive generation with a KV cache: the prompt runs through the model once, then each
// new token costs one single-row step per layer.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "moe/sampling.h"
#include "moe/transformer.h"  // TransformerLm

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

// Greedy or sampled continuation of B prompts of equal length, with batched prefill and a KV
// cache, for a trained run (TransformerLm) or a checkpoint (InferenceModel). Returns
// [B][generated] without the prompts; a sequence stops at eos (when >= 0 and opt.stop_at_eos;
// the eos is its last id) or after opt.max_new_tokens, or when the context ends
// (new_token_budget). on_token(b, id) sees every id as it is drawn.
std::vector<std::vector<int32_t>> generate(Decoder& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt, int32_t eos_id,
                                           const std::function<void(int, int32_t)>& on_token = {});

// One untimed pass as generate() would start it, into caches that are then dropped: the prefill
// of `prompt` and one single-token step (llama-bench's warm-up). It leaves the model as it was;
// what it buys is that the one-time costs of a first pass (the first touch of each weight page
// and working buffer) fall before a timed run rather than inside its prompt.
void warm_up(Decoder& model, const std::vector<int32_t>& prompt);

}  // namespace moe
