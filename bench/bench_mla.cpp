// Decode speed and KV-cache memory of a Multi-head Latent Attention model (a deepseek_v2 / v3
// checkpoint directory) in its two cache layouts (mla_attention.h): the compressed latent
// cache with the up-projections absorbed, and the full-head cache of expanded keys and values.
// Each layout: prefill a prompt of P fixed pseudo-random tokens, then decode N tokens one at a
// time (greedy); prints prefill and decode tokens/s, the cache bytes per token of the model's
// layers, and whether both layouts chose the same tokens.
//   bench_mla MODEL_DIR [P=512] [N=64]
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "moe/error.h"
#include "moe/inference_model.h"

using namespace moe;

namespace {

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int32_t> run(InferenceModel& m, MlaCache layout, const std::vector<int32_t>& prompt,
                         int N) {
  const int P = static_cast<int>(prompt.size());
  const int64_t V = m.config().vocab_size;
  auto caches = m.new_caches(1, P + N, layout);
  std::vector<float> logits(static_cast<size_t>(V));
  auto t0 = std::chrono::steady_clock::now();
  m.forward(prompt.data(), 1, P, caches, logits.data());
  const double prefill = seconds(t0);
  std::vector<int32_t> out;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < N; ++i) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    m.forward(&next, 1, 1, caches, logits.data());
  }
  const double decode = seconds(t0);
  const int64_t bytes = m.cache_bytes_per_token(layout);
  fmt::print(
      "{:<10} prefill {:4d} tokens {:8.1f} tokens/s   decode {:3d} tokens {:7.2f} tokens/s   "
      "cache {:8d} bytes/token ({:.1f} MB at {} tokens)\n",
      layout == MlaCache::Latent ? "latent" : "full-head", P, P / prefill, N, N / decode, bytes,
      bytes * double(P + N) / 1e6, P + N);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: bench_mla MODEL_DIR [P=512] [N=64]\n");
    return 2;
  }
  try {
    const int P = argc > 2 ? std::atoi(argv[2]) : 512, N = argc > 3 ? std::atoi(argv[3]) : 64;
    auto m = InferenceModel::load(argv[1]);
    MOE_REQUIRE(m->config().is_mla(), "{}: not a Multi-head Latent Attention model", argv[1]);
    MOE_REQUIRE(P > 0 && N > 0 && P + N <= m->config().max_position_embeddings,
                "P = {} and N = {} must be positive and fit max_position_embeddings = {}", P, N,
                m->config().max_position_embeddings);
    std::vector<int32_t> prompt(static_cast<size_t>(P));
    uint32_t x = 12345;
    for (int32_t& t : prompt) {
      x = x * 1664525u + 1013904223u;
      t = static_cast<int32_t>((x >> 8) % static_cast<uint32_t>(m->config().vocab_size));
    }
    const auto a = run(*m, MlaCache::Latent, prompt, N);
    const auto b = run(*m, MlaCache::FullHeads, prompt, N);
    fmt::print("same greedy tokens in both layouts: {}\n", a == b ? "yes" : "no");
  } catch (const Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
  return 0;
}
