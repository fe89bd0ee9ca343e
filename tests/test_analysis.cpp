// Routing statistics on hand-built routings with answers worked out by hand, token classes,
// the specialization analysis of a tiny trained model, and the HTML report's charts.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "html_checks.h"
#include "moe/analysis.h"
#include "moe/report.h"
#include "moe/routing_stats.h"
#include "moe/trainer.h"
#include "test_util.h"
#include "tiny_run.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::expect_all_charts_drawn;
using test::TempDir;

TEST(RoutingStats, EntropyInBits) {
  const double uniform[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  EXPECT_NEAR(entropy_bits(uniform, 8), 3.0, 1e-12);
  const double one_hot[4] = {0, 5, 0, 0};
  EXPECT_EQ(entropy_bits(one_hot, 4), 0.0);
  const double zeros[3] = {0, 0, 0};
  EXPECT_EQ(entropy_bits(zeros, 3), 0.0);
  // (1/2, 1/4, 1/4): 0.5*1 + 2*0.25*2 = 1.5 bits; weights need not be normalized.
  const double w[3] = {2, 1, 1};
  EXPECT_NEAR(entropy_bits(w, 3), 1.5, 1e-12);
}

TEST(RoutingStats, PerTokenEntropyAgainstEntropyOfTheMean) {
  // Four tokens, each certain of a different expert: no doubt per token (0 bits), yet the
  // experts share the load evenly (log2 4 = 2 bits over the mean distribution).
  const std::vector<float> sure = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  EXPECT_NEAR(mean_token_entropy_bits(sure.data(), 4, 4), 0.0, 1e-12);
  EXPECT_NEAR(mean_distribution_entropy_bits(sure.data(), 4, 4), 2.0, 1e-12);
  // A collapsed router, certain of expert 2 for every token: 0 bits either way.
  const std::vector<double> collapsed = {0, 0, 1, 0, 0, 0, 1, 0};
  EXPECT_NEAR(mean_token_entropy_bits(collapsed.data(), 2, 4), 0.0, 1e-12);
  EXPECT_NEAR(mean_distribution_entropy_bits(collapsed.data(), 2, 4), 0.0, 1e-12);
  // A router undecided over all experts for every token: 2 bits either way.
  const std::vector<double> undecided(8, 0.25);
  EXPECT_NEAR(mean_token_entropy_bits(undecided.data(), 2, 4), 2.0, 1e-12);
  EXPECT_NEAR(mean_distribution_entropy_bits(undecided.data(), 2, 4), 2.0, 1e-12);
}

TEST(RoutingStats, LoadCvAndMaxOverMean) {
  // Collapsed: all T*k = 64 assignments on one of E = 4 experts. mean 16, std sqrt((48^2 +
  // 3*16^2)/4) = 16 sqrt(3): CV = sqrt(E - 1), max/mean = E.
  const int64_t collapsed[4] = {0, 64, 0, 0};
  EXPECT_NEAR(load_cv(collapsed, 4), std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(load_max_over_mean(collapsed, 4), 4.0, 1e-12);
  const int64_t balanced[4] = {16, 16, 16, 16};
  EXPECT_EQ(load_cv(balanced, 4), 0.0);
  EXPECT_EQ(load_max_over_mean(balanced, 4), 1.0);
  // {1, 2, 3, 6}: mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5.
  const int64_t skewed[4] = {1, 2, 3, 6};
  EXPECT_NEAR(load_cv(skewed, 4), std::sqrt(3.5) / 3, 1e-12);
  EXPECT_NEAR(load_max_over_mean(skewed, 4), 2.0, 1e-12);
  const int64_t none[2] = {0, 0};
  EXPECT_EQ(load_cv(none, 2), 0.0);
  EXPECT_EQ(load_max_over_mean(none, 2), 0.0);
  EXPECT_NEAR(dropped_fraction(3, 12), 0.25, 1e-12);
  EXPECT_EQ(dropped_fraction(0, 0), 0.0);
}

TEST(RoutingStats, MutualInformationOfHandBuiltTables) {
  // A router that sends each of 4 equally frequent domains to its own expert: I = log2 4.
  std::vector<int64_t> by_domain(16, 0);
  for (int i = 0; i < 4; ++i) by_domain[i * 4 + i] = 100;
  EXPECT_NEAR(mutual_information_bits(by_domain, 4, 4), 2.0, 1e-12);
  EXPECT_NEAR(max_mutual_information_bits(4, 4), 2.0, 1e-12);
  // Top-2 of 8 experts, each of 4 domains owning two experts: every token's two assignments
  // name its domain, so I = H(domain) = 2 bits = log2(min(8, 4)) again.
  std::vector<int64_t> top2(32, 0);
  for (int d = 0; d < 4; ++d) top2[(2 * d) * 4 + d] = top2[(2 * d + 1) * 4 + d] = 50;
  EXPECT_NEAR(mutual_information_bits(top2, 8, 4), 2.0, 1e-12);
  EXPECT_NEAR(max_mutual_information_bits(8, 4), 2.0, 1e-12);
  // A router that ignores the domain (joint = product of marginals): 0 bits.
  std::vector<int64_t> independent(12);
  const int64_t pe[4] = {1, 2, 3, 4}, pd[3] = {5, 1, 2};
  for (int e = 0; e < 4; ++e)
    for (int d = 0; d < 3; ++d) independent[e * 3 + d] = pe[e] * pd[d];
  EXPECT_NEAR(mutual_information_bits(independent, 4, 3), 0.0, 1e-12);
  // A collapsed router (one expert for everything) says nothing about the domain.
  std::vector<int64_t> collapsed(8, 0);
  collapsed[1 * 2 + 0] = 30, collapsed[1 * 2 + 1] = 70;
  EXPECT_NEAR(mutual_information_bits(collapsed, 4, 2), 0.0, 1e-12);
  // By hand: p = [[1/4, 0], [1/4, 1/2]]: H(E) = H(1/4, 3/4) = 0.811278, H(D) = 1,
  // H(E, D) = 1.5, so I = 0.311278 bits.
  const std::vector<int64_t> partial = {1, 0, 1, 2};
  const double h_e = -(0.25 * std::log2(0.25) + 0.75 * std::log2(0.75));
  EXPECT_NEAR(mutual_information_bits(partial, 2, 2), h_e + 1.0 - 1.5, 1e-12);
}

TEST(RoutingStats, CoactivationCountsPairs) {
  // k = 2 over E = 4; -1 is a dropped or padding slot.
  const int32_t experts[] = {0, 1, 1, 0, 2, 3, 0, -1, 3, 3};
  std::vector<int64_t> c(16, 0);
  add_coactivation(experts, 5, 2, 4, c.data());
  EXPECT_EQ(c[0 * 4 + 1], 2);
  EXPECT_EQ(c[1 * 4 + 0], 2);
  EXPECT_EQ(c[2 * 4 + 3], 1);
  EXPECT_EQ(c[3 * 4 + 2], 1);
  EXPECT_EQ(c[0 * 4 + 0], 3);  // expert 0 chosen by three tokens
  EXPECT_EQ(c[1 * 4 + 1], 2);
  EXPECT_EQ(c[3 * 4 + 3], 3);  // a repeated choice counts on the diagonal, never as a pair
  EXPECT_EQ(c[0 * 4 + 2], 0);
}

TEST(RoutingStats, TokenClasses) {
  const std::pair<const char*, TokenClass> cases[] = {
      {"hello", TokenClass::LettersLatin},
      {" the", TokenClass::LettersLatin},
      {"Zürich", TokenClass::LettersLatin},
      {"český", TokenClass::LettersLatin},
      {"мир", TokenClass::LettersCyrillic},
      {" Привет", TokenClass::LettersCyrillic},
      {"中文", TokenClass::LettersHan},
      {"α", TokenClass::LettersOther},
      {"a1", TokenClass::LettersLatin},
      {"42", TokenClass::Digits},
      {" 7", TokenClass::Digits},
      {"();", TokenClass::Code},
      {"    #", TokenClass::Code},
      {"==", TokenClass::Code},
      {".", TokenClass::Punct},
      {"!\"", TokenClass::Punct},
      {"\u00ab", TokenClass::Punct},  // «
      {"\uff0c", TokenClass::Punct},  // fullwidth comma
      {"\u3002", TokenClass::Punct},  // ideographic full stop
      {" ", TokenClass::Space},
      {"\n\n", TokenClass::Space},
      {"", TokenClass::Special},
      {"\xd0", TokenClass::Byte},  // the first byte of a Cyrillic letter, alone
      {"\xe4\xb8", TokenClass::Byte},
      {"\ufffd", TokenClass::Byte},  // sentencepiece's decoding of a lone byte piece
  };
  for (const auto& [text, expected] : cases)
    EXPECT_EQ(classify_token_text(text), expected)
        << "\"" << text << "\" gave " << token_class_name(classify_token_text(text))
        << ", expected " << token_class_name(expected);
  EXPECT_STREQ(token_class_name(TokenClass::LettersHan), "letters_han");
}

// Printable bytes, so that the report shows the tokens as text.
TokenStream synthetic_stream(int64_t n, uint64_t seed) {
  return test::synthetic_stream(n, seed, {'a', '0', 10});
}

ModelConfig tiny_config(int steps) {
  ModelConfig c = test::tiny_lm_config(steps);
  c.moe.capacity_factor = 1.0;  // some drops, so the dropped counts are exercised
  c.training.eval_every = 10;
  c.sync_moe();
  return c;
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

TEST(Analysis, TinyTrainedRunAnalysisAndReport) {
  const TokenStream train_data = synthetic_stream(6000, 1), valid = synthetic_stream(1200, 2);
  const ModelConfig cfg = tiny_config(30);
  TempDir dir("moe_analysis");
  train(cfg, train_data, valid, test::quiet_options(dir.str()));

  // The metrics carry the per-layer routing statistics of every step.
  std::ifstream m(dir.file("metrics.jsonl"));
  std::string line;
  int steps = 0, evals = 0;
  while (std::getline(m, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) {
      ++steps;
      for (const char* key :
           {"expert_load", "layer_dropped", "layer_entropy_bits", "layer_load_cv",
            "layer_max_over_mean", "layer_lb_loss", "layer_z_loss", "layer_importance_loss"}) {
        ASSERT_TRUE(j.contains(key)) << key;
        EXPECT_EQ(j[key].size(), 2u) << key;
      }
      for (const auto& e : j["layer_entropy_bits"]) {
        EXPECT_GE(e.get<double>(), 0.0);
        EXPECT_LE(e.get<double>(), 2.0 + 1e-9);  // log2 E
      }
      // The layers' loss terms add up to the logged aux loss.
      double aux = 0;
      for (const char* key : {"layer_lb_loss", "layer_z_loss", "layer_importance_loss"})
        for (const auto& v : j[key]) aux += v.get<double>();
      EXPECT_NEAR(aux, j["aux"].get<double>(), 1e-9);
    } else if (j.contains("val_loss")) {
      ++evals;
      ASSERT_TRUE(j.contains("val_expert_load"));
      EXPECT_EQ(j["val_expert_load"].size(), 2u);
      EXPECT_EQ(j["val_load_cv"].size(), 2u);
    }
  }
  EXPECT_EQ(steps, 30);
  EXPECT_GE(evals, 3);

  LoadedRun run = load_run(dir.str());
  AnalysisOptions ao;
  ao.batch = 4;
  ao.seq_len = 16;
  ao.max_windows = 40;
  ao.min_token_count = 5;
  const RoutingAnalysis a = analyze_routing(*run.model, *run.tokenizer, valid, ao);
  EXPECT_EQ(a.tokens, 40 * 16);
  EXPECT_EQ(sum(a.domain_tokens), a.tokens);
  ASSERT_EQ(a.layers.size(), 2u);
  EXPECT_NEAR(a.max_mi_domain_bits, 1.0, 1e-12);  // log2(min(4 experts, 2 domains))
  for (const auto& la : a.layers) {
    // Every assignment is counted once in each matrix.
    EXPECT_EQ(sum(la.load), a.tokens * 2);
    EXPECT_EQ(sum(la.domain_counts), a.tokens * 2);
    EXPECT_EQ(sum(la.class_counts), a.tokens * 2);
    EXPECT_EQ(la.assignments, a.tokens * 2);
    for (int e = 0; e < 4; ++e) EXPECT_EQ(la.coactivation[e * 4 + e], la.load[e]);
    // Top-2 of distinct experts: each token adds one pair (both orders).
    int64_t pairs = 0;
    for (int x = 0; x < 4; ++x)
      for (int y = 0; y < 4; ++y)
        if (x != y) pairs += la.coactivation[x * 4 + y];
    EXPECT_EQ(pairs, a.tokens * 2);
    EXPECT_GE(la.mi_domain_bits, 0.0);
    EXPECT_LE(la.mi_domain_bits, a.max_mi_domain_bits + 1e-12);
    EXPECT_NEAR(la.mi_domain_bits, mutual_information_bits(la.domain_counts, 4, 2), 1e-12);
    EXPECT_NEAR(la.load_cv, load_cv(la.load.data(), 4), 1e-12);
    EXPECT_GE(la.dropped, 0);
    EXPECT_LE(la.token_entropy_bits, la.distribution_entropy_bits + 1e-9);  // concavity
    // Only letters a-g and digits occur, plus the BOS-free windows: two classes.
    const int digits = static_cast<int>(TokenClass::Digits);
    const int latin = static_cast<int>(TokenClass::LettersLatin);
    int64_t other = 0;
    for (int e = 0; e < 4; ++e)
      for (int c = 0; c < kNumTokenClasses; ++c)
        if (c != digits && c != latin) other += la.class_counts[e * kNumTokenClasses + c];
    EXPECT_EQ(other, 0);
    for (int e = 0; e < 4; ++e)
      for (const auto& t : la.top_tokens[e]) {
        EXPECT_GT(t.count, 0);
        EXPECT_GT(t.expert_share, 0.0);
        EXPECT_LE(t.expert_share, 1.0);
      }
  }

  // Files: JSON with the matrices, CSVs whose shares add to 1 per (layer, domain).
  write_analysis(a, dir.str());
  for (const char* f : {"analysis.json", "analysis_domains.csv", "analysis_classes.csv",
                        "analysis_coactivation.csv", "analysis_top_tokens.csv"})
    EXPECT_TRUE(fs::exists(dir.path() / f)) << f;
  std::ifstream csv(dir.file("analysis_domains.csv"));
  std::getline(csv, line);
  EXPECT_EQ(line, "layer,expert,domain,count,share");
  std::map<std::string, double> share_sum;
  while (std::getline(csv, line)) {
    std::stringstream ss(line);
    std::string layer, expert, domain, count, share;
    std::getline(ss, layer, ',');
    std::getline(ss, expert, ',');
    std::getline(ss, domain, ',');
    std::getline(ss, count, ',');
    std::getline(ss, share, ',');
    share_sum[layer + "/" + domain] += std::stod(share);
  }
  EXPECT_EQ(share_sum.size(), 4u);
  for (const auto& [key, s] : share_sum) EXPECT_NEAR(s, 1.0, 1e-5) << key;

  // The report: every chart drawn (losses 2-3, load heatmaps 2, lines 4, MI bars 2, per layer
  // domain, class and co-activation heatmaps).
  int charts = 0;
  const std::string path = write_report_html(dir.str(), &charts);
  std::ifstream h(path);
  const std::string html{std::istreambuf_iterator<char>(h), {}};
  EXPECT_GE(charts, 2 + 2 + 4 + 2 + 2 * 3);
  expect_all_charts_drawn(html, charts);
  EXPECT_NE(html.find("data-chart=\"domain_0\""), std::string::npos);
  EXPECT_NE(html.find("data-chart=\"load_1\""), std::string::npos);
}

// A one-layer model whose router is set by hand to send letters (the "counting" domain) to
// expert 0 and digits ("noise") to expert 1: the analysis must find I(expert; domain) =
// H(domain), the most the domains allow. Zeroing the router instead collapses it.
TEST(Analysis, HandSetDomainRouterReachesTheMaximalInformation) {
  ModelConfig c = tiny_config(1);
  c.num_hidden_layers = 1;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.num_local_experts = 2;
  c.moe.num_experts_per_tok = 1;
  c.moe.capacity_factor = 0;
  c.sync_moe();
  Transformer<float> model(c);
  Rng rng(7);
  model.init_weights(rng);
  for (auto& p : model.parameters()) {
    const int64_t n = p.shape.numel();
    // No attention output: the MoE sees the normalized embedding of its own token.
    if (p.name.find("o_proj") != std::string::npos) std::fill_n(p.value, n, 0.0f);
    if (p.name == "model.embed_tokens.weight")
      for (int v = 0; v < c.vocab_size; ++v) {
        std::fill_n(p.value + int64_t(v) * c.hidden_size, c.hidden_size, 0.0f);
        p.value[int64_t(v) * c.hidden_size] = v >= '0' && v <= '9' ? -1.0f : 1.0f;
      }
  }
  float* router = model.moe_layer(0)->params().value("router.weight");  // [E, d]
  std::fill_n(router, 2 * c.hidden_size, 0.0f);
  router[0] = 1.0f;               // expert 0 <- letters
  router[c.hidden_size] = -1.0f;  // expert 1 <- digits
  const TokenStream valid = synthetic_stream(2000, 3);
  const auto tok = make_byte_tokenizer();
  AnalysisOptions o;
  o.batch = 4;
  o.seq_len = 16;
  o.max_windows = 64;
  const RoutingAnalysis a = analyze_routing(model, *tok, valid, o);
  std::vector<double> dom(a.domain_tokens.begin(), a.domain_tokens.end());
  const double h_domain = entropy_bits(dom.data(), 2);
  ASSERT_EQ(a.layers.size(), 1u);
  const LayerAnalysis& la = a.layers[0];
  EXPECT_GT(h_domain, 0.9);
  EXPECT_NEAR(la.mi_domain_bits, h_domain, 1e-9);
  EXPECT_NEAR(la.mi_class_bits, h_domain, 1e-9);  // letters vs digits: the same split
  EXPECT_EQ(la.domain_counts[0 * 2 + 1], 0);      // expert 0 never sees a digit
  EXPECT_EQ(la.domain_counts[1 * 2 + 0], 0);
  EXPECT_NEAR(la.distribution_entropy_bits, h_domain, 0.05);

  // A zero router scores every expert the same: top-1 takes expert 0 for every token.
  std::fill_n(router, 2 * c.hidden_size, 0.0f);
  const RoutingAnalysis z = analyze_routing(model, *tok, valid, o);
  EXPECT_EQ(z.layers[0].mi_domain_bits, 0.0);
  EXPECT_NEAR(z.layers[0].load_cv, 1.0, 1e-12);  // sqrt(E - 1)
  EXPECT_NEAR(z.layers[0].load_max_over_mean, 2.0, 1e-12);
  EXPECT_NEAR(z.layers[0].token_entropy_bits, 1.0, 1e-6);  // scores uniform over 2 experts
}

TEST(Analysis, ReportOfHandMadeInputs) {
  // Two steps of metrics, one validation line, and an analysis of one layer with E = 2 that
  // routes by domain: the report states the maximal 1 bit.
  std::vector<nlohmann::json> metrics;
  for (int s = 1; s <= 2; ++s)
    metrics.push_back({{"step", s},
                       {"loss", 3.0 - s * 0.1},
                       {"ce", 2.9 - s * 0.1},
                       {"aux", 0.011},
                       {"expert_load", {{10, 22}}},
                       {"layer_dropped", {0.0}},
                       {"layer_entropy_bits", {0.9}},
                       {"layer_load_cv", {0.4}},
                       {"layer_max_over_mean", {1.4}},
                       {"layer_lb_loss", {0.01}},
                       {"layer_importance_loss", {0.0}},
                       {"layer_z_loss", {0.001}}});
  metrics.push_back({{"step", 2}, {"val_loss", 2.5}});
  RoutingAnalysis a;
  a.num_experts = 2;
  a.k = 1;
  a.tokens = 20;
  a.domains = {"code", "en"};
  for (int c = 0; c < kNumTokenClasses; ++c)
    a.classes.push_back(token_class_name(static_cast<TokenClass>(c)));
  a.domain_tokens = {10, 10};
  a.max_mi_domain_bits = 1;
  LayerAnalysis la;
  la.load = {10, 10};
  la.domain_counts = {10, 0, 0, 10};
  la.class_counts.assign(2 * kNumTokenClasses, 0);
  la.class_counts[static_cast<int>(TokenClass::Code)] = 10;
  la.class_counts[kNumTokenClasses + static_cast<int>(TokenClass::LettersLatin)] = 10;
  la.coactivation = {10, 0, 0, 10};
  la.top_tokens = {{{5, "<x>&", 10, 1.0}}, {{6, " the", 10, 1.0}}};
  la.distinctive_tokens = la.top_tokens;
  la.mi_domain_bits = mutual_information_bits(la.domain_counts, 2, 2);
  a.layers.push_back(la);
  EXPECT_NEAR(la.mi_domain_bits, 1.0, 1e-12);
  const nlohmann::json aj = analysis_to_json(a);
  ReportInputs in;
  in.title = "hand <made>";
  in.metrics = metrics;
  in.analysis = &aj;
  in.baseline = &aj;
  const std::string html = render_report_html(in);
  expect_all_charts_drawn(html, 10);
  EXPECT_NE(html.find("I(expert; domain) = 1.000 bits"), std::string::npos);
  EXPECT_NE(html.find("&lt;x&gt;&amp;"), std::string::npos);  // token text escaped
  EXPECT_NE(html.find("hand &lt;made&gt;"), std::string::npos);
  EXPECT_EQ(html.find("<made>"), std::string::npos);
  // Same inputs, same bytes.
  EXPECT_EQ(html, render_report_html(in));
}

// The report's routing charts: a dead expert is drawn black and the busiest dark blue under a
// colour legend, max / mean has its ceiling E/k, step labels are integers, and summary.json's
// routing settings and final balance are shown.
TEST(Analysis, ReportLoadScaleCeilingAndSummary) {
  std::vector<nlohmann::json> metrics;
  for (int s = 10; s <= 16; ++s)
    metrics.push_back({{"step", s},
                       {"loss", 3.0},
                       {"expert_load", {{0, 0, 64, 64}}},  // E = 4, top-2: experts 0, 1 dead
                       {"layer_dropped", {0.0}},
                       {"layer_max_over_mean", {2.0}}});
  const nlohmann::json summary = {
      {"steps", 16},
      {"num_experts_per_tok", 2},
      {"routing", {{"scoring_func", "sigmoid"}, {"num_experts_per_tok", 2}}},
      {"final_balance",
       {{"source", "final validation"},
        {"load_cv", 1.0},
        {"max_over_mean", 2.0},
        {"dropped", 0.0},
        {"layer_load_cv", {1.0}},
        {"layer_max_over_mean", {2.0}},
        {"layer_dropped", {0.0}}}}};
  ReportInputs in;
  in.title = "dead";
  in.metrics = metrics;
  in.summary = &summary;
  const std::string html = render_report_html(in);
  expect_all_charts_drawn(html, 3);
  const auto load = html.find("data-chart=\"load_0\"");
  ASSERT_NE(load, std::string::npos);
  const std::string chart = html.substr(load, html.find("</svg>", load) - load);
  EXPECT_NE(chart.find("fill=\"#000000\"><title>layer 0 expert 0"), std::string::npos);
  EXPECT_NE(chart.find("fill=\"#2166ac\"><title>layer 0 expert 2"), std::string::npos);  // 1/k
  EXPECT_NE(chart.find("0 (dead)"), std::string::npos);
  EXPECT_NE(chart.find("even 1/4"), std::string::npos);
  EXPECT_NE(chart.find(">11</text>"), std::string::npos);
  EXPECT_EQ(chart.find(">11.0<"), std::string::npos);
  EXPECT_NE(html.find("ceiling E/k = 2"), std::string::npos);
  EXPECT_NE(html.find("<td>scoring_func</td><td>sigmoid</td>"), std::string::npos);
  EXPECT_NE(html.find("Balance at the end of training (final validation)"), std::string::npos);
  // Step axes of the line charts: whole steps only.
  const auto dropped = html.find("data-chart=\"dropped\"");
  ASSERT_NE(dropped, std::string::npos);
  const std::string line = html.substr(dropped, html.find("</svg>", dropped) - dropped);
  EXPECT_EQ(line.find(".5</text>"), std::string::npos) << line;
}

TEST(Analysis, ReportErrorsNameTheFile) {
  TempDir dir("moe_report_err");
  EXPECT_MOE_ERROR(write_report_html(dir.str()), "metrics.jsonl");
  {
    std::ofstream(dir.file("metrics.jsonl")) << "{\"step\":1,\"loss\":2.0}\n";
    std::ofstream(dir.file("analysis.json")) << "{\"format\": \"other\"}";
  }
  EXPECT_MOE_ERROR(write_report_html(dir.str()), "analysis.json", "moe-analysis");
}

}  // namespace
}  // namespace moe
