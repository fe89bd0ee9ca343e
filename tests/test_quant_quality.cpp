// Load-time quantization of a trained model (TransformerLm with a weight type) and the quality
// comparison of quant_quality.h: identical models agree exactly; a perturbed model's KL
// divergence, perplexities and top-1 agreement equal a direct computation from the training
// forward's logits; a quantized model equals the f32 model with its matrices rounded to the
// type (and only them: router, norms and embedding table untouched).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "moe/error.h"
#include "moe/linear.h"
#include "moe/quant.h"
#include "moe/quant_quality.h"
#include "moe/transformer.h"
#include "test_util.h"

namespace moe {
namespace {

// Rows of 32 values everywhere (d = 32, F = 32, attention 4 x 8), so the 32-blocks apply to
// every matrix; layer 0 is an MoE layer, layer 1 dense.
ModelConfig config() {
  ModelConfig c;
  c.vocab_size = 29;
  c.hidden_size = 32;
  c.intermediate_size = 32;
  c.dense_intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.num_local_experts = 4;
  c.moe_every = 2;
  c.moe.num_experts_per_tok = 2;
  c.initializer_range = 0.3;
  c.training.seq_len = 16;
  c.sync_moe();
  return c;
}

std::vector<int32_t> random_tokens(Rng& rng, int64_t n, int V) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.below(V));
  return t;
}

// The matrices load-time quantization rounds (not the router, norms or embedding table).
bool is_quantized_matrix(const std::string& name) {
  for (const char* s : {"_proj.weight", "experts.w", "shared.w", "ffn.w", "lm_head.weight"})
    if (name.find(s) != std::string::npos) return true;
  return false;
}

// Every quantized matrix of `m` replaced by its rounding to `type` (quantize, dequantize).
void round_matrices(Transformer<float>& m, GgmlType type) {
  for (ParamRef<float>& p : m.parameters()) {
    if (!is_quantized_matrix(p.name)) continue;
    const int64_t cols = p.shape[p.shape.ndim - 1], rows = p.shape.numel() / cols;
    const GgmlType t = quantizable_type(type, cols);
    std::vector<uint8_t> q(static_cast<size_t>(row_bytes(t, cols)));
    for (int64_t r = 0; r < rows; ++r) {
      quantize_row(t, p.value + r * cols, q.data(), cols);
      dequantize_row(t, q.data(), p.value + r * cols, cols);
    }
  }
}

void copy_weights(Transformer<float>& from, Transformer<float>& to) {
  for (size_t k = 0; k < from.parameters().size(); ++k)
    std::copy_n(from.parameters()[k].value, from.parameters()[k].shape.numel(),
                to.parameters()[k].value);
}

struct Direct {
  double base_nll = 0, test_nll = 0, kl = 0, max_kl = 0, top1 = 0;
  int64_t scored = 0;
};

// compare_models written out over the training forward's logits (no KV cache).
Direct direct_comparison(Transformer<float>& base, Transformer<float>& test,
                         const std::vector<int32_t>& tokens, int ctx, int64_t windows) {
  const int V = base.config().vocab_size;
  Direct d;
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* win = tokens.data() + w * ctx;
    base.forward(win, nullptr, 1, ctx);
    const std::vector<float> zb(base.logits(), base.logits() + ctx * V);
    test.forward(win, nullptr, 1, ctx);
    const std::vector<float> zt(test.logits(), test.logits() + ctx * V);
    for (int pos = ctx / 2; pos < ctx - 1; ++pos) {
      std::vector<double> pb(V), pt(V);
      double sb = 0, st = 0;
      for (int v = 0; v < V; ++v) {
        pb[v] = std::exp(static_cast<double>(zb[pos * V + v]));
        pt[v] = std::exp(static_cast<double>(zt[pos * V + v]));
        sb += pb[v];
        st += pt[v];
      }
      double kl = 0;
      int ab = 0, at = 0;
      for (int v = 0; v < V; ++v) {
        pb[v] /= sb;
        pt[v] /= st;
        kl += pb[v] * std::log(pb[v] / pt[v]);
        if (zb[pos * V + v] > zb[pos * V + ab]) ab = v;
        if (zt[pos * V + v] > zt[pos * V + at]) at = v;
      }
      d.base_nll -= std::log(pb[win[pos + 1]]);
      d.test_nll -= std::log(pt[win[pos + 1]]);
      d.kl += kl;
      d.max_kl = std::max(d.max_kl, kl);
      d.top1 += ab == at;
      ++d.scored;
    }
  }
  d.base_nll /= d.scored;
  d.test_nll /= d.scored;
  d.kl /= d.scored;
  d.top1 /= d.scored;
  return d;
}

TEST(QuantQuality, IdenticalModelsAgreeExactly) {
  const ModelConfig cfg = config();
  Transformer<float> model(cfg);
  Rng rng(3);
  model.init_weights(rng);
  const auto tokens = random_tokens(rng, 100, cfg.vocab_size);
  TransformerLm a(model), b(model);
  const ModelComparison c = compare_models(a, b, tokens.data(), 100, 16);
  EXPECT_EQ(c.windows, 6);            // 100 / 16 whole windows
  EXPECT_EQ(c.scored, 6 * (15 - 8));  // positions 8 .. 14 of each
  EXPECT_EQ(c.mean_kl, 0.0);
  EXPECT_EQ(c.max_kl, 0.0);
  EXPECT_EQ(c.top1_agreement, 1.0);
  EXPECT_EQ(c.base_nll, c.test_nll);
  EXPECT_GT(c.base_ppl(), 1.0);
  EXPECT_EQ(compare_models(a, b, tokens.data(), 100, 16, 2).windows, 2);
}

TEST(QuantQuality, PerturbedModelMatchesDirectComputation) {
  const ModelConfig cfg = config();
  Transformer<float> base(cfg), test(cfg);
  Rng rng(11);
  base.init_weights(rng);
  copy_weights(base, test);
  for (ParamRef<float>& p : test.parameters())  // 5% noise on every parameter
    for (int64_t i = 0; i < p.shape.numel(); ++i)
      p.value[i] *= static_cast<float>(1.0 + 0.05 * rng.normal());
  const int ctx = 12;
  const auto tokens = random_tokens(rng, 5 * ctx + 7, cfg.vocab_size);
  TransformerLm a(base), b(test);
  const ModelComparison c =
      compare_models(a, b, tokens.data(), static_cast<int64_t>(tokens.size()), ctx);
  const Direct d = direct_comparison(base, test, tokens, ctx, 5);
  ASSERT_EQ(c.scored, d.scored);
  EXPECT_GT(c.mean_kl, 1e-4);
  EXPECT_NEAR(c.mean_kl, d.kl, 1e-4 * d.kl + 1e-9);
  EXPECT_NEAR(c.max_kl, d.max_kl, 1e-4 * d.max_kl + 1e-9);
  EXPECT_NEAR(c.base_nll, d.base_nll, 1e-5 * d.base_nll);
  EXPECT_NEAR(c.test_nll, d.test_nll, 1e-5 * d.test_nll);
  EXPECT_NEAR(c.top1_agreement, d.top1, 1e-12);
  EXPECT_LT(c.top1_agreement, 1.0);
}

TEST(QuantQuality, Errors) {
  const ModelConfig cfg = config();
  ModelConfig other = cfg;
  other.vocab_size = 30;
  Transformer<float> m(cfg), n(other);
  Rng rng(1);
  m.init_weights(rng);
  n.init_weights(rng);
  TransformerLm a(m), b(n);
  const auto tokens = random_tokens(rng, 40, cfg.vocab_size);
  test::expect_error([&] { compare_models(a, b, tokens.data(), 40, 16); },
                     {"vocabularies differ", "29", "30"});
  test::expect_error([&] { compare_models(a, a, tokens.data(), 10, 16); },
                     {"10 tokens", "window of 16"});
  std::vector<int32_t> bad = tokens;
  bad[20] = 29;
  test::expect_error([&] { compare_models(a, a, bad.data(), 40, 16); }, {"token 29 at 20"});
}

// Load-time quantization equals rounding the f32 model's matrices to the type: the same
// logits through the cached decoder, and bits per weight as the type's blocks say. The 16-bit
// types are widened exactly (tolerance: summation order); the block types' int8 kernels also
// round the activations to 8 bits per block, so their logits are near the rounded model's, and
// far nearer to it than to the f32 model's.
void expect_quantized_equals_rounded(GgmlType type, double tol) {
  SCOPED_TRACE(ggml_type_name(static_cast<uint32_t>(type)));
  test::ExactBf16Path exact;  // the rounding of the weights only, not of x
  const ModelConfig cfg = config();
  Transformer<float> model(cfg), rounded(cfg);
  Rng rng(7);
  model.init_weights(rng);
  copy_weights(model, rounded);
  round_matrices(rounded, type);
  TransformerLm q(model, type), r(rounded);
  const GgmlBlock blk = ggml_block(static_cast<uint32_t>(type));
  EXPECT_EQ(8 * q.quantized_bytes() * blk.values, q.quantized_values() * 8 * blk.bytes);
  EXPECT_EQ(r.quantized_bytes(), 0);
  const int S = 14, V = cfg.vocab_size;
  const auto tokens = random_tokens(rng, S, V);
  std::vector<float> zq(S * V), zr(S * V);
  auto cq = q.new_caches(1, S), cr = r.new_caches(1, S);
  q.forward(tokens.data(), 1, 10, cq, zq.data(), true);  // a prompt, then single steps
  r.forward(tokens.data(), 1, 10, cr, zr.data(), true);
  for (int s = 10; s < S; ++s) {
    q.forward(tokens.data() + s, 1, 1, cq, zq.data() + s * V);
    r.forward(tokens.data() + s, 1, 1, cr, zr.data() + s * V);
  }
  test::expect_close("logits", zq.data(), zr.data(), S * V, tol);
  // And they differ from the f32 model's (the rounding reached the matrices).
  TransformerLm f(model);
  std::vector<float> zf(S * V);
  auto cf = f.new_caches(1, S);
  f.forward(tokens.data(), 1, S, cf, zf.data(), true);
  const double to_f32 = test::normalized_error(zq.data(), zf.data(), S * V);
  EXPECT_GT(to_f32, 1e-6);
  if (tol > 1e-5) {
    EXPECT_LT(test::normalized_error(zq.data(), zr.data(), S * V), 0.25 * to_f32);
  }
}

TEST(QuantQuality, LoadTimeQuantizationEqualsRoundedWeights) {
  expect_quantized_equals_rounded(GgmlType::BF16, 1e-5);
  expect_quantized_equals_rounded(GgmlType::F16, 1e-5);
  expect_quantized_equals_rounded(GgmlType::Q4_0, 5e-2);
}

TEST(QuantQuality, RowsThatAreNotWholeBlocksFallBack) {
  EXPECT_EQ(quantizable_type(GgmlType::Q4_K, 512), GgmlType::Q4_K);
  EXPECT_EQ(quantizable_type(GgmlType::Q4_K, 96), GgmlType::Q8_0);
  EXPECT_EQ(quantizable_type(GgmlType::Q6_K, 100), GgmlType::F16);
  EXPECT_EQ(quantizable_type(GgmlType::Q8_0, 64), GgmlType::Q8_0);
  EXPECT_EQ(quantizable_type(GgmlType::BF16, 7), GgmlType::BF16);
}

}  // namespace
}  // namespace moe
