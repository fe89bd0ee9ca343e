// `moe compare` on tiny runs trained here (tests/tiny_run.h), and what a run records for it:
// the routing settings and final balance in summary.json and report.md, the selection bias in
// the validation lines of metrics.jsonl.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "html_checks.h"
#include "moe/compare.h"
#include "moe/report.h"
#include "moe/trainer.h"
#include "test_util.h"
#include "tiny_run.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

// Three tiny runs of 6 steps, validated at steps 3 and 6: variant "base" with seeds 1 and 2,
// and variant "freebias" (seed 1): no aux loss, aux-loss-free balancing instead.
class CompareRuns : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("moe_compare");
    const TokenStream train_data = test::synthetic_stream(4000, 1);
    const TokenStream valid = test::synthetic_stream(1200, 2);
    auto run = [&](const std::string& name, uint64_t seed, bool freebias) {
      ModelConfig c = test::tiny_lm_config(6);
      c.training.eval_every = 3;
      c.training.seed = seed;
      if (freebias) {
        c.moe.router_aux_loss_coef = 0;
        c.moe.use_selection_bias = true;
        c.moe.bias_update_rate = 0.05;
      }
      c.sync_moe();
      train(c, train_data, valid, test::quiet_options(dir_->file(name)));
    };
    run("base_s1", 1, false);
    run("base_s2", 2, false);
    run("freebias", 1, true);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string run(const std::string& name) { return dir_->file(name); }
  static json summary(const std::string& name) {
    std::ifstream f(run(name) + "/summary.json");
    return json::parse(f);
  }
  static TempDir* dir_;
};
TempDir* CompareRuns::dir_ = nullptr;

TEST_F(CompareRuns, SummaryStatesRoutingSettingsAndFinalBalance) {
  const json s = summary("freebias");
  // Fields that were there before keep their names.
  for (const char* key : {"steps", "parameters", "active_parameters", "tokens_per_second",
                          "final_train_loss", "val_loss", "val_loss_per_domain"})
    EXPECT_TRUE(s.contains(key)) << key;
  ASSERT_TRUE(s.contains("routing"));
  const json& r = s["routing"];
  EXPECT_EQ(r["scoring_func"], "softmax");
  EXPECT_EQ(r["num_experts_per_tok"], 2);
  EXPECT_EQ(r["num_experts"], 4);
  EXPECT_EQ(r["use_selection_bias"], true);
  EXPECT_EQ(r["router_aux_loss_coef"], 0.0);
  for (const char* key : {"norm_topk_prob", "capacity_factor", "drop_policy", "overflow",
                          "router_z_loss_coef", "router_importance_coef", "bias_update_rate",
                          "noisy_gating", "expert_dropout", "n_shared_experts", "moe_every"})
    EXPECT_TRUE(r.contains(key)) << key;
  ASSERT_TRUE(s.contains("final_balance"));
  const json& b = s["final_balance"];
  EXPECT_EQ(b["source"], "final validation");
  ASSERT_EQ(b["layer_load_cv"].size(), 2u);
  ASSERT_EQ(b["layer_max_over_mean"].size(), 2u);
  ASSERT_EQ(b["layer_dropped"].size(), 2u);
  const double cv = b["load_cv"].get<double>(), mx = b["max_over_mean"].get<double>();
  EXPECT_NEAR(cv, (b["layer_load_cv"][0].get<double>() + b["layer_load_cv"][1].get<double>()) / 2,
              1e-12);
  EXPECT_GE(cv, 0.0);
  EXPECT_LE(cv, std::sqrt(3.0) + 1e-9);  // sqrt(E - 1)
  EXPECT_GE(mx, 1.0);
  EXPECT_LE(mx, 2.0 + 1e-9);                   // E / k
  EXPECT_EQ(b["dropped"].get<double>(), 0.0);  // dropless

  std::ifstream md(run("freebias") + "/report.md");
  const std::string text{std::istreambuf_iterator<char>(md), {}};
  EXPECT_NE(text.find("use_selection_bias = true"), std::string::npos) << text;
  EXPECT_NE(text.find("| MoE layer | load CV | max / mean | dropped |"), std::string::npos);
}

TEST_F(CompareRuns, ValidationLinesLogTheSelectionBias) {
  int evals = 0;
  for (const auto& j : read_metrics(run("freebias") + "/metrics.jsonl")) {
    if (!j.contains("val_loss")) {
      EXPECT_FALSE(j.contains("val_selection_bias"));
      continue;
    }
    ++evals;
    ASSERT_TRUE(j.contains("val_selection_bias"));
    ASSERT_EQ(j["val_selection_bias"].size(), 2u);  // MoE layers
    double moved = 0;
    for (const auto& layer : j["val_selection_bias"]) {
      ASSERT_EQ(layer.size(), 4u);  // experts
      for (const auto& v : layer) moved += std::fabs(v.get<double>());
    }
    EXPECT_GT(moved, 0.0) << "the bias never moved from 0";
  }
  EXPECT_EQ(evals, 2);
  // Without aux-loss-free balancing there is no bias to log.
  for (const auto& j : read_metrics(run("base_s1") + "/metrics.jsonl"))
    EXPECT_FALSE(j.contains("val_selection_bias"));
  // report.html draws it, one chart per MoE layer.
  int charts = 0;
  const std::string path = write_report_html(run("freebias"), &charts);
  std::ifstream f(path);
  const std::string html{std::istreambuf_iterator<char>(f), {}};
  test::expect_all_charts_drawn(html, charts);
  EXPECT_NE(html.find("data-chart=\"selection_bias_1\" data-marks=\"4\""), std::string::npos);
}

TEST_F(CompareRuns, TableShowsDifferingKeysAndGroupsSeeds) {
  const Comparison c = compare_runs({run("base_s1"), run("freebias"), run("base_s2")});
  // The two base runs differ only in their seed: one column of two.
  ASSERT_EQ(c.columns.size(), 2u);
  EXPECT_EQ(c.columns[0], (std::vector<size_t>{0, 2}));
  EXPECT_EQ(c.columns[1], (std::vector<size_t>{1}));
  EXPECT_EQ(c.column_names[0], "base_s1 (2 seeds)");
  EXPECT_EQ(c.column_names[1], "freebias");
  EXPECT_TRUE(c.any_marks_possible);
  // Exactly the keys that differ, nothing the runs share.
  std::vector<std::string> keys = c.differing_keys;
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"bias_update_rate", "router_aux_loss_coef",
                                            "training.seed", "use_selection_bias"}));
  const CompareRow* seed = nullptr;
  const CompareRow* val = nullptr;
  const CompareRow* params = nullptr;
  for (const auto& r : c.rows) {
    if (r.name == "training.seed") seed = &r;
    if (r.name == "validation loss") val = &r;
    if (r.name == "parameters (M)") params = &r;
  }
  ASSERT_TRUE(seed && val && params);
  EXPECT_EQ(seed->text[0], "1, 2");
  EXPECT_EQ(seed->text[1], "1");
  // A group shows mean ± s; the single run its value.
  ASSERT_EQ(val->values[0].size(), 2u);
  const double a = val->values[0][0], b = val->values[0][1];
  EXPECT_NE(a, b);  // other seeds, other losses
  const std::string cell = format_cell(*val, 0);
  EXPECT_NE(cell.find(fmt::format("{:.4f} \u00b1 {:.4f}", (a + b) / 2,
                                  std::fabs(a - b) / std::sqrt(2.0))),
            std::string::npos)
      << cell;
  EXPECT_EQ(format_cell(*params, 1).find("\u00b1"), std::string::npos);
  EXPECT_FALSE(params->marked[1]);  // parameter counts are not tested against the spread
  // The rows a user asked for are all there.
  for (const char* name :
       {"active parameters (M)", "tokens/s", "final train loss", "  val loss counting",
        "  val loss noise", "load CV", "max / mean load", "dropped fraction"}) {
    bool found = false;
    for (const auto& r : c.rows) found = found || r.name == name;
    EXPECT_TRUE(found) << name;
  }

  const std::string table = format_comparison(c);
  EXPECT_NE(table.find("router_aux_loss_coef"), std::string::npos) << table;
  EXPECT_EQ(table.find("hidden_size"), std::string::npos) << table;  // shared: not shown
  EXPECT_NE(table.find("base_s1 (2 seeds)"), std::string::npos);
  EXPECT_NE(table.find("two-sample t-test"), std::string::npos);
}

TEST_F(CompareRuns, MarksFollowTheSeedSpread) {
  // Hand-made: column 0 has four seeds, mean 1.1, s^2 = 0.04 / 3 (df 3, t = 3.182); a column
  // of one run is judged by that spread: 3.182 * sqrt(0.04 / 3 * (1 / 4 + 1)) = 0.411.
  CompareRow r;
  r.numeric = true;
  r.values = {{1.0, 1.2, 1.0, 1.2}, {1.45}};
  mark_against_first_column(r);
  EXPECT_FALSE(r.marked[1]);  // 0.35: within the spread
  r.values = {{1.0, 1.2, 1.0, 1.2}, {1.6}};
  mark_against_first_column(r);
  EXPECT_TRUE(r.marked[1]);  // 0.5
  EXPECT_EQ(format_cell(r, 1), "1.600 *");
  EXPECT_EQ(format_cell(r, 0), "1.100 \u00b1 0.115");
  r.values = {{1.0}, {1.5}};  // no seeds anywhere: no spread, no mark
  mark_against_first_column(r);
  EXPECT_FALSE(r.marked[1]);

  const Comparison real = compare_runs({run("base_s1"), run("base_s2"), run("freebias")});
  for (const auto& row : real.rows)
    if (row.numeric) {
      ASSERT_EQ(row.marked.size(), 2u) << row.name;
      EXPECT_FALSE(row.marked[0]) << row.name;  // the reference column is never marked
    }
  // Without a column of two seeds, nothing can be marked.
  const Comparison single = compare_runs({run("base_s1"), run("freebias")});
  EXPECT_FALSE(single.any_marks_possible);
  for (const auto& row : single.rows)
    for (bool m : row.marked) EXPECT_FALSE(m) << row.name;
  EXPECT_NE(format_comparison(single).find("no seed-to-seed spread"), std::string::npos);
}

TEST_F(CompareRuns, HtmlOverlaysTheCurves) {
  const Comparison c = compare_runs({run("base_s1"), run("base_s2"), run("freebias")});
  const std::string path = dir_->file("compare.html");
  const int charts = write_compare_html(c, path);
  std::ifstream f(path);
  const std::string html{std::istreambuf_iterator<char>(f), {}};
  EXPECT_EQ(charts, 6);
  test::expect_all_charts_drawn(html, 6);
  for (const char* id : {"train_loss", "val_loss", "aux_loss", "balance", "load_cv", "dropped"})
    EXPECT_NE(html.find(fmt::format("data-chart=\"{}\"", id)), std::string::npos) << id;
  // Three runs: three lines per chart, the seeds of one column in one colour, dashed apart.
  EXPECT_NE(html.find("data-chart=\"train_loss\" data-marks=\"3\""), std::string::npos);
  EXPECT_NE(html.find("stroke-dasharray=\"6 3\""), std::string::npos);
  EXPECT_NE(html.find("ceiling E/k = 2"), std::string::npos);
  EXPECT_EQ(html, render_compare_html(c));  // same inputs, same bytes
}

// A run stopped before its last step has no final validation: the balance comes from the last
// training step, and says so.
TEST(Compare, FinalBalanceOfARunWithoutFinalValidation) {
  TempDir dir("moe_compare_stop");
  ModelConfig c = test::tiny_lm_config(6);
  TrainOptions o = test::quiet_options(dir.str());
  o.stop_after = 3;
  train(c, test::synthetic_stream(4000, 1), test::synthetic_stream(1200, 2), o);
  std::ifstream f(dir.file("summary.json"));
  const json s = json::parse(f);
  EXPECT_FALSE(s.contains("val_loss"));
  ASSERT_TRUE(s.contains("final_balance"));
  EXPECT_EQ(s["final_balance"]["source"], "last training step");
  EXPECT_EQ(s["final_balance"]["layer_load_cv"].size(), 2u);
  // compare reads it; the validation rows are left out, as no run has them.
  const Comparison cmp = compare_runs({dir.str()});
  bool load_cv = false, val = false;
  for (const auto& r : cmp.rows) {
    load_cv = load_cv || r.name == "load CV";
    val = val || r.name == "validation loss";
  }
  EXPECT_TRUE(load_cv);
  EXPECT_FALSE(val);
}

TEST(Compare, BadDirectoriesAreOneLineNamingThem) {
  TempDir dir("moe_compare_bad");
  auto one_line = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      EXPECT_EQ(msg.find(".cpp"), std::string::npos) << msg;  // no source location
    }
  };
  const std::string missing = dir.file("nope");
  one_line([&] { compare_runs({missing}); }, missing + ": no such directory");
  fs::create_directories(dir.file("empty"));
  one_line([&] { compare_runs({dir.file("empty")}); }, dir.file("empty") + ": not a run directory");
  std::ofstream(dir.file("file")) << "x";
  one_line([&] { compare_runs({dir.file("file")}); }, dir.file("file") + ": not a directory");
  one_line([&] { compare_runs({}); }, "no run directories");
}

}  // namespace
}  // namespace moe
