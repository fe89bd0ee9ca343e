// Perplexity of any model and the one loader of models: the sliding windows score every token
// once with the most context; `moe eval`'s path (Transformer::forward, evaluate) and the
// Decoder's (perplexity over TransformerLm) give the same loss on the same windows; every
// Hugging Face fixture family's perplexity matches the float64 PyTorch reference
// (tools/reference/make_perplexity_fixture.py, tests/fixtures/perplexity/hf.json); the routing
// observer reports every MoE layer of a checkpoint, and the random router is seeded.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "moe/analysis.h"
#include "moe/any_model.h"
#include "moe/error.h"
#include "moe/inference_model.h"
#include "moe/perplexity.h"
#include "moe/tokenizer.h"
#include "moe/trainer.h"
#include "moe/transformer.h"
#include "test_util.h"

namespace moe {
namespace {

using test::expect_error;

TEST(SlidingWindows, EveryTargetOnceByTheWindowWithTheMostContext) {
  for (int64_t N : {2, 5, 17, 61}) {
    for (int ctx : {1, 3, 16}) {
      for (int stride = 1; stride <= ctx; ++stride) {
        const auto w = sliding_windows(N, ctx, stride);
        std::vector<int> scored(static_cast<size_t>(N), 0);
        for (size_t i = 0; i < w.size(); ++i) {
          EXPECT_EQ(w[i].start, static_cast<int64_t>(i) * stride);
          ASSERT_GE(w[i].n, 1);
          ASSERT_LE(w[i].n, ctx);
          ASSERT_LT(w[i].start + w[i].n, N + 0);  // the last target is inside the stream
          for (int j = w[i].first; j < w[i].n; ++j) {
            const int64_t t = w[i].start + 1 + j;
            ++scored[t];
            // No window that reaches t gives it more context (starts earlier).
            for (const auto& o : w)
              if (o.start < t && t <= o.start + o.n) {
                EXPECT_GE(o.start, w[i].start);
              }
          }
        }
        EXPECT_EQ(scored[0], 0);
        for (int64_t t = 1; t < N; ++t)
          EXPECT_EQ(scored[t], 1) << "N " << N << " ctx " << ctx << " stride " << stride;
      }
    }
  }
  // stride = ctx: targets disjoint, every window full but possibly the last.
  const auto d = sliding_windows(50, 16, 16);
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d[3].n, 1);
  for (const auto& w : d) EXPECT_EQ(w.first, 0);
  expect_error([] { sliding_windows(50, 16, 17); }, {"--stride 17", "--ctx = 16"});
  expect_error([] { sliding_windows(50, 0, 1); }, {"--ctx"});
  expect_error([] { sliding_windows(1, 4, 4); }, {"at least 2"});
}

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 29;
  c.hidden_size = 16;
  c.intermediate_size = 8;
  c.dense_intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 16;
  c.num_local_experts = 4;
  c.moe_every = 1;
  c.moe.num_experts_per_tok = 2;
  c.initializer_range = 0.3;
  c.training.seq_len = 12;
  c.sync_moe();
  return c;
}

// n random tokens in runs of one domain (two domains).
TokenStream random_stream(int64_t n, int V, uint64_t seed) {
  Rng rng(seed);
  TokenStream s;
  s.domain_names = {"code", "prose"};
  for (int64_t i = 0; i < n; ++i) {
    s.tokens.push_back(static_cast<int32_t>(rng.below(V)));
    s.domain.push_back(static_cast<uint8_t>((i / 23) % 2));
  }
  return s;
}

TEST(Perplexity, EvalOfARunEqualsThePerplexityOfItsDecoder) {
  const ModelConfig cfg = small_config();
  Transformer<float> model(cfg);
  Rng rng(7);
  model.init_weights(rng);
  const TokenStream s = random_stream(300, cfg.vocab_size, 3);
  const int S = 12, B = 3;
  const EvalResult e = evaluate(model, s, B, S, 0);
  TransformerLm lm(model);
  PerplexityOptions o;
  o.batch = B;
  const PerplexityResult p = perplexity(lm, s, full_windows(validation_windows(s, S, 0), S), o);
  EXPECT_EQ(p.tokens, e.tokens);
  EXPECT_NEAR(p.loss, e.loss, 1e-5 * e.loss);
  EXPECT_NEAR(p.perplexity, std::exp(e.loss), 1e-5 * std::exp(e.loss));
  ASSERT_EQ(p.per_domain.size(), e.per_domain.size());
  for (const DomainLoss& d : p.per_domain) {
    const auto& [loss, tokens] = e.per_domain.at(d.domain);
    EXPECT_EQ(d.tokens, tokens) << d.domain;
    EXPECT_NEAR(d.loss, loss, 1e-5 * loss) << d.domain;
  }
  // The batch size only groups windows.
  o.batch = 1;
  const PerplexityResult one = perplexity(lm, s, full_windows(validation_windows(s, S, 0), S), o);
  EXPECT_NEAR(one.loss, p.loss, 1e-6 * p.loss);
  EXPECT_EQ(one.windows, p.windows);
  // Overlapping windows see more context: a different (finite) figure over the same targets.
  const PerplexityResult slide = perplexity(lm, s, sliding_windows(s.size(), S, 4), o);
  EXPECT_EQ(slide.tokens, s.size() - 1);
  EXPECT_TRUE(std::isfinite(slide.loss));
  // A window longer than the model's context: one error naming --ctx.
  expect_error([&] { perplexity(lm, s, sliding_windows(s.size(), 17, 17), o); },
               {"--ctx 17", "max_position_embeddings = 16"});
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

TEST(Perplexity, HuggingFaceFamiliesMatchThePyTorchReference) {
  test::ExactBf16Path exact;  // BF16 weights times fp32 activations, as the reference
  const nlohmann::json j = read_json(test::fixture_dir() + "/perplexity/hf.json");
  TokenStream s;
  s.tokens = j["tokens"].get<std::vector<int32_t>>();
  s.domain.assign(s.tokens.size(), 0);
  s.domain_names = {"text"};
  std::map<std::string, std::unique_ptr<InferenceModel>> models;
  std::set<std::string> families;
  ASSERT_GE(j["cases"].size(), 20u);
  for (const auto& c : j["cases"]) {
    const std::string name = c["model"].get<std::string>();
    auto& m = models[name];
    if (!m) m = InferenceModel::load(test::fixture_dir() + "/hf/" + name);
    families.insert(m->config().model_type);
    const int ctx = c["ctx"].get<int>(), stride = c["stride"].get<int>();
    PerplexityOptions o;
    o.batch = 3;
    const PerplexityResult r = perplexity(*m, s, sliding_windows(s.size(), ctx, stride), o);
    const double want = c["loss"].get<double>();
    EXPECT_EQ(r.tokens, c["tokens"].get<int64_t>()) << name << " ctx " << ctx;
    EXPECT_NEAR(r.loss, want, 1e-5 * want) << name << " ctx " << ctx << " stride " << stride;
    ASSERT_EQ(r.per_domain.size(), 1u);
    EXPECT_EQ(r.per_domain[0].tokens, r.tokens);
  }
  // The MoE families and the dense ones upcycling starts from.
  EXPECT_EQ(families, (std::set<std::string>{"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "llama",
                                             "mistral", "qwen2", "qwen3"}));
}

TEST(AnyModel, OpensACheckpointWithoutATokenizer) {
  const std::string dir = test::fixture_dir() + "/hf/qwen2_moe";
  const AnyModel m = load_any_model(dir);
  EXPECT_EQ(m.format, ModelFormat::HuggingFace);
  EXPECT_EQ(m.config.model_type, "qwen2_moe");
  ASSERT_NE(m.checkpoint, nullptr);
  EXPECT_EQ(static_cast<Decoder*>(m.checkpoint), m.decoder.get());
  EXPECT_FALSE(m.run.has_value());
  EXPECT_EQ(m.tokenizer, nullptr);
  expect_error([&] { m.text_tokenizer(); }, {dir, "no tokenizer"});
  EXPECT_EQ(m.description(), "qwen2_moe (Hugging Face checkpoint)");
  expect_error([] { load_any_model(test::fixture_dir() + "/hf"); },
               {"hf/config.json: cannot open", "not a model"});
  EXPECT_EQ(model_name("runs/x/"), "x");
  EXPECT_EQ(model_name("/a/b/model-q4.gguf"), "model-q4");
  EXPECT_EQ(model_name("tests/fixtures/hf/olmoe"), "olmoe");
}

// A byte tokenizer over the fixtures' 96 ids is enough for the analysis's token classes.
TEST(RoutingObserver, EveryMoeLayerOfEveryFamilyAndTheRandomRouter) {
  for (const char* name : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}) {
    SCOPED_TRACE(name);
    auto m = InferenceModel::load(test::fixture_dir() + "/hf/" + name);
    const ModelConfig& c = m->config();
    const int k = c.moe.num_experts_per_tok, E = c.num_local_experts;
    std::vector<int> layers;
    std::vector<int32_t> first;
    m->set_routing_observer([&](const RoutingChoice& rc) {
      layers.push_back(rc.layer);
      EXPECT_EQ(rc.rows, 10);
      EXPECT_EQ(rc.k, k);
      EXPECT_EQ(rc.num_experts, E);
      EXPECT_EQ(rc.scoring, c.moe.scoring_func);
      EXPECT_EQ(rc.dropped, 0);  // inference is dropless
      for (int64_t t = 0; t < rc.rows; ++t) {
        // k distinct experts, gates from the scores: renormalized ones sum to 1.
        double sum = 0;
        for (int j = 0; j < k; ++j) {
          const int e = rc.experts[t * k + j];
          ASSERT_GE(e, 0);
          ASSERT_LT(e, E);
          for (int i = 0; i < j; ++i) EXPECT_NE(rc.experts[t * k + i], e);
          // Primary choices in descending score.
          if (j > 0) {
            EXPECT_GE(rc.scores[t * E + rc.experts[t * k + j - 1]], rc.scores[t * E + e]);
          }
          sum += rc.gates[t * k + j];
          if (!c.moe.norm_topk_prob) {
            EXPECT_FLOAT_EQ(rc.gates[t * k + j], rc.scores[t * E + e]);
          }
        }
        if (c.moe.norm_topk_prob) {
          EXPECT_NEAR(sum, 1.0, 1e-5);
        }
      }
      if (first.empty()) first.assign(rc.experts, rc.experts + rc.rows * k);
    });
    std::vector<int32_t> ids(10);
    for (int i = 0; i < 10; ++i) ids[i] = 3 + 7 * i;
    auto caches = m->new_caches(1, 10);
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    m->forward(ids.data(), 1, 10, caches, logits.data());
    std::vector<int> want;
    for (int l = 0; l < c.num_hidden_layers; ++l)
      if (c.is_moe_layer(l)) want.push_back(l);
    EXPECT_EQ(layers, want);  // qwen2_moe's layer 1 is dense (mlp_only_layers)

    // The analysis of the same model counts what the observer sees; the random router is
    // seeded (same seed, same analysis) and moves the choices.
    m->set_routing_observer({});
    TokenStream s = random_stream(200, c.vocab_size, 5);
    const auto tok = make_byte_tokenizer();
    AnalysisOptions o;
    o.batch = 2;
    o.seq_len = 16;
    const RoutingAnalysis a = analyze_routing(*m, *tok, s, o);
    ASSERT_EQ(a.layers.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(a.layers[i].layer, want[i]);
      int64_t load = 0;
      for (int64_t x : a.layers[i].load) load += x;
      EXPECT_EQ(load, a.tokens * k);
    }
    Rng r1(9);
    m->randomize_routers(r1, c.initializer_range);
    const RoutingAnalysis b = analyze_routing(*m, *tok, s, o);
    Rng r2(9);
    m->randomize_routers(r2, c.initializer_range);
    const RoutingAnalysis b2 = analyze_routing(*m, *tok, s, o);
    EXPECT_EQ(b.layers[0].load, b2.layers[0].load);
    EXPECT_EQ(b.layers[0].coactivation, b2.layers[0].coactivation);
    EXPECT_NE(b.layers[0].domain_counts, a.layers[0].domain_counts);
  }
}

}  // namespace
}  // namespace moe
