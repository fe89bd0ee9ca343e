// `moe analyze`, `moe report`, `moe route`: looking inside the router of a trained run;
// `moe compare`: several runs side by side. Parsing and printing only; analysis.h, report.h,
// compare.h and routing_stats.h do the work.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "commands.h"
#include "moe/analysis.h"
#include "moe/compare.h"
#include "moe/data.h"
#include "moe/error.h"
#include "moe/parallel.h"
#include "moe/report.h"
#include "moe/trainer.h"

namespace moe::cli {

namespace {

void log_line(const std::string& s) {
  fmt::print(stderr, "{}\n", s);
}

struct AnalyzeArgs {
  std::string run, data_dir;
  int64_t windows = 0;
  int top = 12, threads = 0;
  bool untrained = false;
};

// The domain (or token class) of which expert e takes the largest share, as "code 61%".
// Columns under 1% of all assignments are left out: BOS alone would otherwise win.
std::string strongest(const std::vector<int64_t>& counts, int E, int e,
                      const std::vector<std::string>& names) {
  const int N = static_cast<int>(names.size());
  int64_t all = 0;
  for (int64_t c : counts) all += c;
  int best = -1;
  double best_share = 0;
  for (int c = 0; c < N; ++c) {
    int64_t col = 0;
    for (int x = 0; x < E; ++x) col += counts[size_t(x) * N + c];
    if (col * 100 < all) continue;
    const double share = col > 0 ? static_cast<double>(counts[size_t(e) * N + c]) / col : 0;
    if (share > best_share) best_share = share, best = c;
  }
  return best < 0 ? "-" : fmt::format("{} {:.0f}%", names[best], 100 * best_share);
}

int run_analyze(const AnalyzeArgs& a) {
  set_num_threads(a.threads);
  LoadedRun run = load_run(a.run);
  if (run.config.num_local_experts == 0)
    throw Error(
        fmt::format("{}: a dense model (num_local_experts = 0) has no router to analyze", a.run));
  const TrainConfig& t = run.config.training;
  if (a.untrained) {
    // The baseline: the weights training started from (same config, same seed, same draw as
    // train()), so the router has seen no data.
    Rng rng(t.seed);
    run.model->init_weights(rng);
  }
  // The validation split of the data the run trained on (config.json's training.data).
  DataOptions d;
  d.dir = a.data_dir.empty() ? t.data_dir : a.data_dir;
  d.input = t.data;
  d.valid_fraction = t.valid_fraction;
  const std::string tok_json = a.run + "/tokenizer.json";
  const std::string tok_file = t.tokenizer == "byte" ? ""
                               : t.tokenizer != "sentencepiece" && std::filesystem::exists(tok_json)
                                   ? tok_json
                                   : a.run + "/tokenizer.model";
  const TokenStream valid = validation_stream(d, *run.tokenizer, tok_file, log_line);
  AnalysisOptions o;
  o.batch = t.batch_size;
  o.seq_len = t.seq_len;
  o.max_windows = a.windows;
  o.top_tokens = a.top;
  o.progress = window_progress("analyze");
  RoutingAnalysis r = analyze_routing(*run.model, *run.tokenizer, valid, o);
  r.label = a.untrained ? a.run + " (untrained)" : a.run;
  const std::string prefix = a.untrained ? "analysis_untrained" : "analysis";
  write_analysis(r, a.run, prefix);

  fmt::print("{}: {} validation tokens, {} experts, top-{}{}\n", a.run, r.tokens, r.num_experts,
             r.k, a.untrained ? " (untrained router: the weights before step 1)" : "");
  fmt::print("I(expert; domain) at most {:.2f} bits, I(expert; class) at most {:.2f} bits\n",
             r.max_mi_domain_bits, r.max_mi_class_bits);
  fmt::print("{:<7} {:>10} {:>10} {:>8} {:>9} {:>12} {:>9}\n", "layer", "MI domain", "MI class",
             "load CV", "max/mean", "entropy/tok", "dropped");
  for (const auto& la : r.layers)
    fmt::print("{:<7} {:>10.3f} {:>10.3f} {:>8.3f} {:>9.2f} {:>12.2f} {:>9.4f}\n", la.layer,
               la.mi_domain_bits, la.mi_class_bits, la.load_cv, la.load_max_over_mean,
               la.token_entropy_bits, la.dropped_fraction);
  for (const auto& la : r.layers) {
    fmt::print("layer {}: expert  load   strongest domain   strongest class        top tokens\n",
               la.layer);
    for (int e = 0; e < r.num_experts; ++e) {
      std::string top;
      for (size_t i = 0; i < std::min<size_t>(6, la.distinctive_tokens[e].size()); ++i) {
        std::string s = la.distinctive_tokens[e][i].text;
        std::replace(s.begin(), s.end(), '\n', ' ');
        top += fmt::format("'{}' ", s);
      }
      fmt::print("         {:>6} {:>5.1f}%  {:<18} {:<22} {}\n", e,
                 100.0 * la.load[e] / std::max<int64_t>(1, la.assignments),
                 strongest(la.domain_counts, r.num_experts, e, r.domains),
                 strongest(la.class_counts, r.num_experts, e, r.classes), top);
    }
  }
  fmt::print("wrote {0}/{1}.json and {0}/{1}_{{domains,classes,coactivation,top_tokens}}.csv\n",
             a.run, prefix);
  return 0;
}

struct ReportArgs {
  std::string run;
};

int run_report(const ReportArgs& a) {
  int charts = 0;
  const std::string path = write_report_html(a.run, &charts);
  fmt::print("wrote {} ({} charts)\n", path, charts);
  return 0;
}

struct CompareArgs {
  std::vector<std::string> runs;
  std::string out;
};

int run_compare(const CompareArgs& a) {
  const Comparison c = compare_runs(a.runs);
  fmt::print("{}", format_comparison(c));
  if (!a.out.empty()) {
    const int charts = write_compare_html(c, a.out);
    fmt::print("wrote {} ({} charts)\n", a.out, charts);
  }
  return 0;
}

struct RouteArgs {
  std::string run, text, color = "auto";
  int threads = 0;
};

// Background colours of the experts (xterm 256-colour indices), light enough for black text.
constexpr int kExpertColors[] = {203, 114, 75, 221, 177, 80, 215, 147, 156, 117, 218, 187};

std::string painted(const std::string& s, int expert, bool color) {
  if (!color) return s;
  const int n = static_cast<int>(std::size(kExpertColors));
  return fmt::format("\033[48;5;{};30m{}\033[0m", kExpertColors[expert % n], s);
}

int run_route(const RouteArgs& a) {
  set_num_threads(a.threads);
  MOE_REQUIRE(a.color == "auto" || a.color == "always" || a.color == "never",
              "--color: \"{}\" is not auto, always or never", a.color);
  const bool color = a.color == "always" || (a.color == "auto" && isatty(1));
  LoadedRun run = load_run(a.run);
  const ModelConfig& cfg = run.config;
  MOE_REQUIRE(cfg.num_local_experts > 0, "{}: a dense model has no router to show", a.run);
  std::vector<int32_t> ids{run.tokenizer->bos_id()};
  const auto text_ids = run.tokenizer->encode(a.text);
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  MOE_REQUIRE(ids.size() > 1, "route: --text is empty");
  MOE_REQUIRE(static_cast<int>(ids.size()) <= cfg.max_position_embeddings,
              "route: the text is {} tokens with BOS, more than max_position_embeddings = {}",
              ids.size(), cfg.max_position_embeddings);
  const int S = static_cast<int>(ids.size()), k = cfg.moe.num_experts_per_tok;
  run.model->forward(ids.data(), nullptr, 1, S, false);
  // Each token's text; pieces that are not whole characters (byte fallback) are shown as hex.
  std::vector<std::string> pieces;
  for (int i = 1; i < S; ++i) {
    std::string s = run.tokenizer->decode({ids[i]});
    if (!is_valid_utf8(s)) {
      std::string hex;
      for (unsigned char c : s) hex += fmt::format("<{:02X}>", c);
      s = hex;
    }
    std::string shown;
    for (char c : s) shown += c == '\n' ? std::string("\u21b5") : std::string(1, c);
    pieces.push_back(shown);
  }
  fmt::print(
      "{}: {} tokens, {} experts, top-{}; each token {}\n", a.run, S - 1, cfg.num_local_experts, k,
      color ? "coloured by its first-choice expert" : "followed by [its first-choice expert]");

  std::string legend;
  for (int e = 0; e < cfg.num_local_experts; ++e)
    legend += painted(fmt::format(" {} ", e), e, color) + " ";
  fmt::print("experts: {}\n", legend);
  std::vector<int> layers;
  for (int l = 0; l < run.model->num_layers(); ++l)
    if (run.model->moe_layer(l)) layers.push_back(l);
  for (int l : layers) {
    const RoutingPlan& plan = run.model->moe_layer(l)->plan();
    std::string line;
    for (int i = 1; i < S; ++i) {
      const int e = plan.primary[size_t(i) * k];
      // Without colour, each token is followed by its expert in brackets.
      line += color ? painted(pieces[i - 1], e, true) : fmt::format("{}[{}]", pieces[i - 1], e);
    }
    fmt::print("layer {}: {}\n", l, line);
  }
  // Per token: every layer's top-k experts with their gate weights.
  fmt::print("\n{:<14}", "token");
  for (int l : layers) fmt::print(" {:<{}}", fmt::format("layer {}", l), 6 * k + 2);
  fmt::print("\n");
  for (int i = 1; i < S; ++i) {
    const std::string& p = pieces[i - 1];
    fmt::print("{:<14}", fmt::format("'{}'", p));
    for (int l : layers) {
      const auto* m = run.model->moe_layer(l);
      std::string cell;
      for (int j = 0; j < k; ++j) {
        const int e = m->plan().primary[size_t(i) * k + j];
        const double g = m->gates()[size_t(i) * k + j];
        cell += painted(fmt::format("{}", e), e, color) + fmt::format(":{:.2f} ", g);
      }
      fmt::print(" {}", cell);
    }
    fmt::print("\n");
  }
  return 0;
}

}  // namespace

std::function<int()> add_analyze_command(CLI::App& app) {
  auto a = std::make_shared<AnalyzeArgs>();
  auto* c = app.add_subcommand(
      "analyze", "Expert specialization of a run on the validation split (JSON and CSV)");
  c->add_option("run", a->run, "run directory")->required();
  c->add_option("--data-dir", a->data_dir,
                "moe's data cache (default: the run's training.data_dir); the data is the run's");
  c->add_option("--windows", a->windows, "validation windows to run (0: the whole split)");
  c->add_option("--top", a->top, "tokens listed per expert")->capture_default_str();
  c->add_flag("--untrained", a->untrained,
              "the baseline: the run's initial weights (same seed), written as "
              "analysis_untrained.*");
  add_threads_option(c, a->threads);
  return [a] { return run_analyze(*a); };
}

std::function<int()> add_report_command(CLI::App& app) {
  auto a = std::make_shared<ReportArgs>();
  auto* c = app.add_subcommand(
      "report", "Write RUN/report.html: loss, routing and specialization charts, self-contained");
  c->add_option("run", a->run, "run directory")->required();
  return [a] { return run_report(*a); };
}

std::function<int()> add_compare_command(CLI::App& app) {
  auto a = std::make_shared<CompareArgs>();
  auto* c = app.add_subcommand(
      "compare",
      "Compare runs: config keys that differ, losses, balance; seeds of one config grouped");
  c->add_option("runs", a->runs, "run directories")->required();
  c->add_option("--out", a->out, "also write an HTML page with the runs' curves overlaid");
  return [a] { return run_compare(*a); };
}

std::function<int()> add_route_command(CLI::App& app) {
  auto a = std::make_shared<RouteArgs>();
  auto* c = app.add_subcommand("route", "Show which experts each token of a text goes to");
  c->add_option("run", a->run, "run directory")->required();
  c->add_option("--text", a->text, "the text to route")->required();
  c->add_option("--color", a->color, "auto, always or never")->capture_default_str();
  add_threads_option(c, a->threads);
  return [a] { return run_route(*a); };
}

}  // namespace moe::cli
