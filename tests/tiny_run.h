// A tiny language-model run for the tests that train (test_trainer, test_analysis): a
// 2-layer model with 4 experts, top-2, over the byte tokenizer, and a learnable synthetic token
// stream of two domains.
#pragma once

#include <cstdint>
#include <string>

#include "moe/dataset.h"
#include "moe/model_config.h"
#include "moe/rng.h"
#include "moe/trainer.h"

namespace moe::test {

// Domain 0 ("counting") repeats the 7 tokens first, first + 1, ... in order; domain 1 ("noise")
// draws uniformly from noise_count tokens from noise_first on; they alternate every 64 tokens.
struct SyntheticStream {
  int32_t first = 2, noise_first = 2, noise_count = 20;
};
inline TokenStream synthetic_stream(int64_t n, uint64_t seed, SyntheticStream v = {}) {
  TokenStream s;
  s.domain_names = {"counting", "noise"};
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) {
    const bool counting = (i / 64) % 2 == 0;
    s.tokens.push_back(counting ? static_cast<int32_t>(v.first + i % 7)
                                : static_cast<int32_t>(v.noise_first + rng.below(v.noise_count)));
    s.domain.push_back(counting ? 0 : 1);
  }
  return s;
}

// No evaluation and no periodic checkpoints unless a test turns them on.
inline ModelConfig tiny_lm_config(int steps) {
  ModelConfig c;
  c.vocab_size = 258;  // the byte tokenizer's, so load_run accepts the run
  c.hidden_size = 32;
  c.intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.num_local_experts = 4;
  c.moe.num_experts_per_tok = 2;
  c.training.batch_size = 4;
  c.training.seq_len = 16;
  c.training.max_steps = steps;
  c.training.warmup_steps = 2;
  c.training.learning_rate = 1e-2;
  c.training.eval_every = 0;
  c.training.eval_batches = 2;
  c.training.checkpoint_every = 0;
  c.training.tokenizer = "byte";
  c.sync_moe();
  return c;
}

// Writes into dir without a progress bar or log lines.
inline TrainOptions quiet_options(const std::string& dir) {
  TrainOptions o;
  o.out_dir = dir;
  o.progress = false;
  o.log = [](const std::string&) {};
  return o;
}

}  // namespace moe::test
