// `moe analyze`, `moe report`, `moe route`: looking inside the routers of any model (a run, a
// Hugging Face checkpoint, a GGUF file; any_model.h);
// `moe compare`: several runs side by side. Parsing and printing only; analysis.h, report.h,
// compare.h and routing_stats.h do the work.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>

#include "commands.h"
#include "moe/analysis.h"
#include "moe/any_model.h"
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
  std::string model, data_dir, data, out, quantize;
  int64_t windows = 0;
  int top = 12, threads = 0, seq_len = 0, batch = 0;
  uint64_t seed = 1;
  bool untrained = false, no_baseline = false;
};

// Where the analysis of a model goes: a run's own directory; for a checkpoint (the user's
// input, never written) --out or runs/analysis/<name>.
std::string analysis_dir(const AnyModel& m, const std::string& out) {
  if (!out.empty()) return out;
  if (m.run) return m.path;
  return "runs/analysis/" + model_name(m.path);
}

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

void print_analysis(const RoutingAnalysis& r, const RoutingAnalysis* base) {
  fmt::print("I(expert; domain) at most {:.2f} bits, I(expert; class) at most {:.2f} bits\n",
             r.max_mi_domain_bits, r.max_mi_class_bits);
  fmt::print("{:<7} {:>10} {:>10} {:>8} {:>9} {:>12} {:>9}{}\n", "layer", "MI domain", "MI class",
             "load CV", "max/mean", "entropy/tok", "dropped",
             base ? fmt::format("  {:>15} {:>14}", "baseline domain", "baseline class") : "");
  for (size_t i = 0; i < r.layers.size(); ++i) {
    const LayerAnalysis& la = r.layers[i];
    fmt::print("{:<7} {:>10.3f} {:>10.3f} {:>8.3f} {:>9.2f} {:>12.2f} {:>9.4f}{}\n", la.layer,
               la.mi_domain_bits, la.mi_class_bits, la.load_cv, la.load_max_over_mean,
               la.token_entropy_bits, la.dropped_fraction,
               base ? fmt::format("  {:>15.3f} {:>14.3f}", base->layers[i].mi_domain_bits,
                                  base->layers[i].mi_class_bits)
                    : "");
  }
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
}

int run_analyze(const AnalyzeArgs& a) {
  set_num_threads(a.threads);
  AnyModel m = load_any_model(a.model, quantize_type(a.quantize));
  if (m.config.num_local_experts == 0)
    throw Error(
        fmt::format("{}: a dense model (num_local_experts = 0) has no router to analyze", a.model));
  MOE_REQUIRE(m.run || !a.data.empty(),
              "analyze: {} is a {}: give --data PATH (the text to route; a run has its "
              "validation split)",
              a.model, model_format_name(m.format));
  MOE_REQUIRE(m.run || !a.untrained,
              "analyze: --untrained is a run's initial weights; {} is a {} (its baseline is the "
              "random router)",
              a.model, model_format_name(m.format));
  const TrainConfig& t = m.config.training;
  if (a.untrained) {
    // The baseline: the weights training started from (same config, same seed, same draw as
    // train()), so the router has seen no data.
    Rng rng(t.seed);
    m.run->model->init_weights(rng);
  }
  TokenStream stream;
  if (a.data.empty()) {
    // The validation split of the data the run trained on (config.json's training.data).
    DataOptions d;
    d.dir = a.data_dir.empty() ? t.data_dir : a.data_dir;
    d.input = t.data;
    d.valid_fraction = t.valid_fraction;
    stream = validation_stream(d, m.text_tokenizer(), m.tokenizer_file, log_line);
  } else {
    stream = read_text_tokens(a.data, m.text_tokenizer(), DataOptions{}.document_bytes, log_line);
  }
  AnalysisOptions o;
  o.batch = a.batch > 0 ? a.batch : m.run ? t.batch_size : 8;
  o.seq_len = a.seq_len > 0 ? a.seq_len
              : m.run       ? t.seq_len
                            : std::min(256, m.config.context_length());
  o.max_windows = a.windows;
  o.top_tokens = a.top;
  o.progress = window_progress("analyze");
  RoutingAnalysis r = analyze_routing(*m.decoder, m.text_tokenizer(), stream, o);
  r.label = a.untrained ? a.model + " (untrained)" : a.model;
  const std::string dir = analysis_dir(m, a.out);
  std::filesystem::create_directories(dir);
  const std::string prefix = a.untrained ? "analysis_untrained" : "analysis";
  write_analysis(r, dir, prefix);
  std::optional<RoutingAnalysis> base;
  if (!a.untrained && !a.no_baseline) {
    // The same model with its routers redrawn ~ N(0, initializer_range), seeded.
    Rng rng(a.seed);
    m.decoder->randomize_routers(rng, m.config.initializer_range);
    o.progress = window_progress("analyze (random router)");
    base = analyze_routing(*m.decoder, m.text_tokenizer(), stream, o);
    base->label = a.model + " (random router)";
    write_analysis(*base, dir, "analysis_random_router");
  }

  fmt::print("{}: {}, {} tokens, {} experts, top-{}{}\n", a.model, m.description(), r.tokens,
             r.num_experts, r.k,
             a.untrained ? " (untrained router: the weights before step 1)" : "");
  print_analysis(r, base ? &*base : nullptr);
  fmt::print("wrote {0}/{1}.json and {0}/{1}_{{domains,classes,coactivation,top_tokens}}.csv{2}\n",
             dir, prefix, base ? fmt::format(", {}/analysis_random_router.*", dir) : "");
  return 0;
}

struct ReportArgs {
  std::string model, out;
};

// `moe report RUN`, `moe report DIR` (an analysis directory), or `moe report MODEL` for a
// checkpoint: its analysis directory (--out, as analyze's).
int run_report(const ReportArgs& a) {
  namespace fs = std::filesystem;
  std::string dir = a.out;
  if (dir.empty()) {
    const bool has_results =
        fs::exists(a.model + "/metrics.jsonl") || fs::exists(a.model + "/analysis.json");
    if (has_results || model_format_of(a.model) == ModelFormat::Run)
      dir = a.model;
    else
      dir = "runs/analysis/" + model_name(a.model);
  }
  int charts = 0;
  const std::string path = write_report_html(dir, &charts);
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
  std::string model, text, color = "auto", quantize;
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
  AnyModel m = load_any_model(a.model, quantize_type(a.quantize));
  const ModelConfig& cfg = m.config;
  MOE_REQUIRE(cfg.num_local_experts > 0, "{}: a dense model has no router to show", a.model);
  const Tokenizer& tok = m.text_tokenizer();
  // The text starts as the model's documents do; that first token is not shown.
  std::vector<int32_t> ids;
  if (m.start_token >= 0) ids.push_back(m.start_token);
  const int first = static_cast<int>(ids.size());
  const auto text_ids = tok.encode(a.text);
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  MOE_REQUIRE(!text_ids.empty(), "route: --text is empty");
  MOE_REQUIRE(static_cast<int>(ids.size()) <= cfg.context_length(),
              "route: the text is {} tokens{}, more than max_position_embeddings = {}", ids.size(),
              first > 0 ? " with BOS" : "", cfg.context_length());
  const int S = static_cast<int>(ids.size()), k = cfg.moe.num_experts_per_tok;
  // Each MoE layer's primary top-k and gates, kept from the forward's routing observer.
  std::vector<int> layers;
  std::vector<std::vector<int32_t>> chosen(static_cast<size_t>(cfg.num_hidden_layers));
  std::vector<std::vector<float>> gates(chosen.size());
  m.decoder->set_routing_observer([&](const RoutingChoice& rc) {
    layers.push_back(rc.layer);
    chosen[rc.layer].assign(rc.experts, rc.experts + rc.rows * rc.k);
    gates[rc.layer].assign(rc.gates, rc.gates + rc.rows * rc.k);
  });
  auto caches = m.decoder->new_caches(1, S);
  std::vector<float> logits(static_cast<size_t>(cfg.vocab_size));
  m.decoder->forward(ids.data(), 1, S, caches, logits.data());
  m.decoder->set_routing_observer({});
  // Each token's text; pieces that are not whole characters (byte fallback) are shown as hex.
  std::vector<std::string> pieces;
  for (int i = first; i < S; ++i) {
    std::string s = tok.decode({ids[i]});
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
      "{}: {} tokens, {} experts, top-{}; each token {}\n", a.model, S - first,
      cfg.num_local_experts, k,
      color ? "coloured by its first-choice expert" : "followed by [its first-choice expert]");

  std::string legend;
  for (int e = 0; e < cfg.num_local_experts; ++e)
    legend += painted(fmt::format(" {} ", e), e, color) + " ";
  fmt::print("experts: {}\n", legend);
  for (int l : layers) {
    std::string line;
    for (int i = first; i < S; ++i) {
      const int e = chosen[l][size_t(i) * k];
      const std::string& p = pieces[i - first];
      // Without colour, each token is followed by its expert in brackets.
      line += color ? painted(p, e, true) : fmt::format("{}[{}]", p, e);
    }
    fmt::print("layer {}: {}\n", l, line);
  }
  // Per token: every layer's top-k experts with their gate weights.
  fmt::print("\n{:<14}", "token");
  for (int l : layers) fmt::print(" {:<{}}", fmt::format("layer {}", l), 6 * k + 2);
  fmt::print("\n");
  for (int i = first; i < S; ++i) {
    fmt::print("{:<14}", fmt::format("'{}'", pieces[i - first]));
    for (int l : layers) {
      std::string cell;
      for (int j = 0; j < k; ++j) {
        const int e = chosen[l][size_t(i) * k + j];
        const double g = gates[l][size_t(i) * k + j];
        cell += painted(fmt::format("{}", e), e, color) + fmt::format(":{:.2f} ", g);
      }
      fmt::print(" {}", cell);
    }
    fmt::print("\n");
  }
  return 0;
}

}  // namespace

constexpr const char* kModelHelp =
    "a run directory, a Hugging Face checkpoint directory or a GGUF file";

std::function<int()> add_analyze_command(CLI::App& app) {
  auto a = std::make_shared<AnalyzeArgs>();
  auto* c = app.add_subcommand(
      "analyze",
      "Expert specialization of any model on a run's validation split or your text (JSON, CSV), "
      "against the same model with a random router");
  c->add_option("model", a->model, kModelHelp)->required();
  c->add_option("--data", a->data,
                "your text (a file, a directory or JSONL; subfolder or \"domain\" = domain), "
                "all of it; required for a checkpoint (default for a run: its validation split)");
  c->add_option("--out", a->out,
                "where analysis.* go (default: a run's directory; a checkpoint's "
                "runs/analysis/<name>)");
  c->add_option("--data-dir", a->data_dir,
                "moe's data cache (default: the run's training.data_dir); the data is the run's");
  c->add_option("--windows", a->windows, "windows to run (0: all)");
  c->add_option("--seq-len", a->seq_len,
                "tokens per window (default: a run's seq_len, else up to 256)")
      ->check(CLI::PositiveNumber);
  c->add_option("--batch", a->batch, "windows per forward (default: a run's batch_size, else 8)")
      ->check(CLI::PositiveNumber);
  c->add_option("--top", a->top, "tokens listed per expert")->capture_default_str();
  c->add_option("--seed", a->seed, "seed of the random router")->capture_default_str();
  c->add_flag("--no-baseline", a->no_baseline,
              "skip the random-router baseline (analysis_random_router.*)");
  c->add_flag("--untrained", a->untrained,
              "a run only: analyze its initial weights (same seed) instead, written as "
              "analysis_untrained.*");
  c->add_option("--quantize", a->quantize, "quantize every matrix at load (as generate)");
  add_threads_option(c, a->threads);
  return [a] { return run_analyze(*a); };
}

std::function<int()> add_report_command(CLI::App& app) {
  auto a = std::make_shared<ReportArgs>();
  auto* c = app.add_subcommand(
      "report",
      "Write report.html (loss, routing and specialization charts, self-contained) of a run, "
      "or of a checkpoint's analysis");
  c->add_option("model", a->model,
                "a run directory, an analysis directory, or the checkpoint analyzed")
      ->required();
  c->add_option("--out", a->out,
                "the analysis directory of a checkpoint (default: runs/analysis/<name>)");
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
  c->add_option("model", a->model, kModelHelp)->required();
  c->add_option("--text", a->text, "the text to route")->required();
  c->add_option("--quantize", a->quantize, "quantize every matrix at load (as generate)");
  c->add_option("--color", a->color, "auto, always or never")->capture_default_str();
  add_threads_option(c, a->threads);
  return [a] { return run_route(*a); };
}

}  // namespace moe::cli
