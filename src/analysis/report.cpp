#include "moe/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "charts.h"
#include "moe/analysis.h"
#include "moe/error.h"
#include "moe/safetensors.h"
#include "moe/trainer.h"

namespace moe {

namespace {

using chart::esc;
using chart::num;
using chart::Page;
using chart::Series;
using nlohmann::json;

// Token text with its whitespace made visible (a leading space matters in a BPE piece).
std::string visible(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ' ')
      out += "\u2423";
    else if (c == '\n')
      out += "\u21b5";
    else if (c == '\t')
      out += "\u2192";
    else
      out += c;
  }
  return esc(out);
}

double get(const json& j, const char* key, double fallback = NAN) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : fallback;
}

// Sum over the layers of a per-layer array key, or NAN when absent.
double layer_sum(const json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_array()) return NAN;
  double s = 0;
  for (const auto& v : j[key]) s += v.get<double>();
  return s;
}

void loss_section(Page& p, const std::vector<json>& steps, const std::vector<json>& evals) {
  Series ce{"task (cross-entropy, train)", {}}, val{"validation", {}, true};
  Series lb{"load balance", {}}, imp{"importance", {}}, z{"router z-loss", {}}, aux{"aux", {}};
  bool per_layer = false, any_imp = false;
  for (const auto& j : steps) {
    const double s = get(j, "step");
    ce.points.emplace_back(s, get(j, "ce", get(j, "loss")));
    if (j.contains("layer_lb_loss")) {
      per_layer = true;
      lb.points.emplace_back(s, layer_sum(j, "layer_lb_loss"));
      z.points.emplace_back(s, layer_sum(j, "layer_z_loss"));
      const double i = layer_sum(j, "layer_importance_loss");
      imp.points.emplace_back(s, i);
      any_imp = any_imp || i > 0;
    }
    if (j.contains("aux")) aux.points.emplace_back(s, get(j, "aux"));
  }
  for (const auto& j : evals) val.points.emplace_back(get(j, "step"), get(j, "val_loss"));
  p.body += "<h2>Losses</h2><div class=\"row\">";
  p.line_chart("loss_task", "Task loss (cross-entropy, nats)", "step", "loss", {ce, val});
  if (per_layer) {
    std::vector<Series> a{lb};
    if (any_imp) a.push_back(imp);
    p.line_chart("loss_aux", "Auxiliary load-balance loss (sum over MoE layers)", "step", "loss",
                 a);
    p.line_chart("loss_z", "Router z-loss (sum over MoE layers)", "step", "loss", {z});
  } else if (!aux.points.empty()) {
    p.line_chart("loss_aux", "Auxiliary losses (sum over MoE layers)", "step", "loss", {aux});
  }
  p.body += "</div>\n";
}

// Per-layer line charts of one array key (e.g. layer_dropped) over the steps.
void per_layer_lines(Page& p, const std::vector<json>& steps, const char* key,
                     const std::string& id, const std::string& title, const std::string& ylabel,
                     int layers, const chart::LineOptions& o = {}) {
  std::vector<Series> s(static_cast<size_t>(layers));
  for (int l = 0; l < layers; ++l) s[l].name = fmt::format("MoE layer {}", l);
  bool any = false;
  for (const auto& j : steps) {
    if (!j.contains(key) || !j[key].is_array()) continue;
    for (int l = 0; l < layers && l < static_cast<int>(j[key].size()); ++l) {
      s[l].points.emplace_back(get(j, "step"), j[key][l].get<double>());
      any = true;
    }
  }
  if (any) p.line_chart(id, title, "step", ylabel, s, o);
}

// Aux-loss-free balancing: each MoE layer's selection bias per expert at every validation
// (val_selection_bias, [layer][expert]).
void selection_bias_section(Page& p, const std::vector<json>& evals) {
  std::vector<std::vector<Series>> layers;  // [layer][expert]
  for (const auto& j : evals) {
    if (!j.contains("val_selection_bias") || !j["val_selection_bias"].is_array()) continue;
    const json& b = j["val_selection_bias"];
    if (layers.size() < b.size()) layers.resize(b.size());
    for (size_t l = 0; l < b.size(); ++l) {
      if (layers[l].size() < b[l].size()) layers[l].resize(b[l].size());
      for (size_t e = 0; e < b[l].size(); ++e) {
        layers[l][e].name = fmt::format("expert {}", e);
        layers[l][e].points.emplace_back(get(j, "step"), b[l][e].get<double>());
      }
    }
  }
  if (layers.empty()) return;
  p.body +=
      "<h2>Selection bias (aux-loss-free balancing)</h2><p>The bias each MoE layer adds to an "
      "expert's score for the top-k choice only (not to the gate), after each validation: it "
      "rises for experts that got less than the even load and falls for busier ones.</p>"
      "<div class=\"row\">";
  for (size_t l = 0; l < layers.size(); ++l)
    p.line_chart(fmt::format("selection_bias_{}", l),
                 fmt::format("Selection bias per expert, MoE layer {}", l), "step", "bias",
                 layers[l]);
  p.body += "</div>\n";
}

// k: the run's top-k (0 when unknown: no ceiling marked).
void routing_section(Page& p, const std::vector<json>& steps, const json* analysis, int k) {
  std::vector<const json*> with_load;
  for (const auto& j : steps)
    if (j.contains("expert_load") && j["expert_load"].is_array() && !j["expert_load"].empty())
      with_load.push_back(&j);
  if (with_load.empty()) return;
  const int L = static_cast<int>((*with_load[0])["expert_load"].size());
  const int E = static_cast<int>((*with_load[0])["expert_load"][0].size());
  // The MoE layers' block indices, when the analysis names them.
  std::vector<std::string> names;
  for (int l = 0; l < L; ++l) {
    int block = l;
    if (analysis && (*analysis)["layers"].size() == static_cast<size_t>(L))
      block = (*analysis)["layers"][l]["layer"].get<int>();
    names.push_back(fmt::format("layer {}", block));
  }
  p.body += "<h2>Routing over training</h2>";
  p.body +=
      "<p>Share of each MoE layer's router assignments that went to each expert, per step "
      "(steps grouped into at most 120 columns). Colour: the share against the even share 1/E, "
      "on a log scale: white is even, red below it, blue above it up to the ceiling E/k times "
      "even (an expert in every token's top-k); black is an expert that got no assignment at "
      "all. A collapsed router shows one dark blue row and black ones.</p><div class=\"row\">";
  const size_t cols = std::min<size_t>(120, with_load.size());
  for (int l = 0; l < L; ++l) {
    std::vector<double> share(static_cast<size_t>(E) * cols, 0.0);
    std::vector<int> in_bin(cols, 0);
    std::vector<std::string> col_names(cols);
    for (size_t i = 0; i < with_load.size(); ++i) {
      const size_t c = i * cols / with_load.size();
      const auto& load = (*with_load[i])["expert_load"][l];
      double total = 0;
      for (const auto& v : load) total += v.get<double>();
      for (int e = 0; e < E && total > 0; ++e)
        share[size_t(e) * cols + c] += load[e].get<double>() / total;
      ++in_bin[c];
      if (col_names[c].empty())
        col_names[c] = fmt::format("{:.0f}", get(*with_load[i], "step", 0.0));
    }
    for (size_t c = 0; c < cols; ++c)
      for (int e = 0; e < E; ++e) share[size_t(e) * cols + c] /= std::max(1, in_bin[c]);
    std::vector<std::string> rows, tips;
    for (int e = 0; e < E; ++e) rows.push_back(fmt::format("expert {}", e));
    for (int e = 0; e < E; ++e)
      for (size_t c = 0; c < cols; ++c) {
        tips.push_back(fmt::format("{} expert {} from step {}: {:.1f}% of assignments", names[l], e,
                                   col_names[c], 100 * share[size_t(e) * cols + c]));
      }
    const chart::ColorScale scale = chart::load_share_scale(E, std::max(1, k));
    p.heatmap(fmt::format("load_{}", l), fmt::format("Expert load over training, {}", names[l]),
              rows, col_names, share, tips, false, "step", &scale);
  }
  p.body += "</div><div class=\"row\">";
  per_layer_lines(p, steps, "layer_dropped", "dropped", "Dropped fraction of assignments",
                  "fraction", L);
  per_layer_lines(p, steps, "layer_entropy_bits", "entropy",
                  "Router entropy (mean per-token, bits; max log2 E)", "bits", L);
  per_layer_lines(p, steps, "layer_load_cv", "load_cv", "Load coefficient of variation", "CV", L);
  // One expert in every token's top-k takes T of the T*k assignments: max / mean = E / k.
  chart::LineOptions ceiling;
  if (k > 0)
    ceiling.ref_lines.emplace_back(
        static_cast<double>(E) / k,
        fmt::format("ceiling E/k = {}", num(static_cast<double>(E) / k)));
  per_layer_lines(p, steps, "layer_max_over_mean", "load_max_mean", "Busiest expert / mean load",
                  "max / mean", L, ceiling);
  p.body += "</div>\n";
}

// Column-normalized shares of an [E, N] count matrix: the share of each column's (domain's or
// class's) assignments that went to each expert.
void share_heatmap(Page& p, const std::string& id, const std::string& title, const json& counts,
                   const std::vector<std::string>& col_names, const std::string& what) {
  const size_t E = counts.size(), N = col_names.size();
  std::vector<double> col(N, 0.0), v(E * N);
  for (size_t e = 0; e < E; ++e)
    for (size_t c = 0; c < N; ++c) col[c] += counts[e][c].get<double>();
  std::vector<std::string> rows, tips, cols;
  std::vector<size_t> keep;  // columns with any assignment (a class the corpus never shows)
  for (size_t c = 0; c < N; ++c)
    if (col[c] > 0) keep.push_back(c), cols.push_back(col_names[c]);
  v.assign(E * keep.size(), 0);
  for (size_t e = 0; e < E; ++e) {
    rows.push_back(fmt::format("expert {}", e));
    for (size_t i = 0; i < keep.size(); ++i) {
      const double x = counts[e][keep[i]].get<double>();
      v[e * keep.size() + i] = x / col[keep[i]];
      tips.push_back(fmt::format("expert {} takes {:.1f}% of {} {} assignments ({} of {})", e,
                                 100 * x / col[keep[i]], col_names[keep[i]], what, x,
                                 col[keep[i]]));
    }
  }
  const chart::ColorScale scale = chart::viridis_scale("0%", "100% of the column");
  p.heatmap(id, title, rows, cols, v, tips, true, "", &scale);
}

void specialization_section(Page& p, const json& a, const json* base, bool untrained) {
  const auto domains = a["domains"].get<std::vector<std::string>>();
  const auto classes = a["classes"].get<std::vector<std::string>>();
  const int E = a["num_experts"].get<int>();
  const chart::ColorScale coact_scale = chart::viridis_scale("0", "the most frequent pair");
  p.body += "<h2>Expert specialization (validation split)</h2>";
  p.body += fmt::format(
      "<p>{} validation tokens, {} experts, top-{}. Each of a token's k router choices counts "
      "once, so with top-k one expert takes at most 1/k of a domain's assignments (50% for "
      "top-2: every token of the domain chose it). Mutual information between the expert chosen "
      "and the token's domain, in bits "
      "(at most log2(min(E, D)) = {:.2f}); between the expert and the token class (at most "
      "{:.2f}).{}</p>",
      a["tokens"].get<int64_t>(), E, a["k"].get<int>(), a["max_mi_domain_bits"].get<double>(),
      a["max_mi_class_bits"].get<double>(),
      !base       ? ""
      : untrained ? " The baseline is the same model with its freshly initialized weights (the "
                    "router before training)."
                  : " The baseline is the same model with its router weights redrawn at random "
                    "(N(0, initializer_range)): the specialization the rest of the model alone "
                    "gives.");
  const std::string bname = untrained ? "untrained" : "random router";
  std::vector<std::string> groups;
  Series mi{"I(expert; domain), trained", {}}, mic{"I(expert; class), trained", {}};
  Series bmi{"I(expert; domain), " + bname, {}}, bmic{"I(expert; class), " + bname, {}};
  for (size_t l = 0; l < a["layers"].size(); ++l) {
    const json& la = a["layers"][l];
    groups.push_back(fmt::format("layer {}", la["layer"].get<int>()));
    mi.points.emplace_back(l, la["mi_domain_bits"].get<double>());
    mic.points.emplace_back(l, la["mi_class_bits"].get<double>());
    if (base && l < (*base)["layers"].size()) {
      bmi.points.emplace_back(l, (*base)["layers"][l]["mi_domain_bits"].get<double>());
      bmic.points.emplace_back(l, (*base)["layers"][l]["mi_class_bits"].get<double>());
    }
  }
  p.body += "<div class=\"row\">";
  std::vector<Series> dom{mi}, cls{mic};
  if (base) dom.push_back(bmi), cls.push_back(bmic);
  double ymax = 0;
  for (const auto* s : {&mi, &mic, &bmi, &bmic})
    for (const auto& pt : s->points) ymax = std::max(ymax, pt.second);
  p.bar_chart("mi_domain", "Specialization by domain: I(expert; domain) per layer", "bits", groups,
              dom, ymax * 1.15);
  p.bar_chart("mi_class", "Specialization by token class: I(expert; class) per layer", "bits",
              groups, cls, ymax * 1.15);
  p.body += "</div>";
  for (size_t l = 0; l < a["layers"].size(); ++l) {
    const json& la = a["layers"][l];
    const int block = la["layer"].get<int>();
    p.body += fmt::format(
        "<h3>Layer {}: I(expert; domain) = {:.3f} bits, I(expert; class) = {:.3f} bits, load CV "
        "{:.3f}, router entropy {:.2f} bits per token</h3><div class=\"row\">",
        block, la["mi_domain_bits"].get<double>(), la["mi_class_bits"].get<double>(),
        la["load_cv"].get<double>(), la["token_entropy_bits"].get<double>());
    share_heatmap(p, fmt::format("domain_{}", block),
                  fmt::format("Layer {}: share of each domain's assignments per expert (%)", block),
                  la["domain_counts"], domains, "domain");
    share_heatmap(
        p, fmt::format("class_{}", block),
        fmt::format("Layer {}: share of each token class's assignments per expert (%)", block),
        la["class_counts"], classes, "class");
    // Co-activation: tokens that chose both, over the tokens that chose the row expert.
    std::vector<std::string> names, tips;
    std::vector<double> v;
    for (int e = 0; e < E; ++e) names.push_back(fmt::format("expert {}", e));
    double mx = 0;
    for (int x = 0; x < E; ++x)
      for (int y = 0; y < E; ++y)
        if (x != y) mx = std::max(mx, la["coactivation"][x][y].get<double>());
    for (int x = 0; x < E; ++x)
      for (int y = 0; y < E; ++y) {
        const double c = la["coactivation"][x][y].get<double>();
        v.push_back(x == y ? 0 : mx > 0 ? c / mx : 0);
        tips.push_back(
            x == y ? fmt::format("expert {} chosen for {} tokens", x, c)
                   : fmt::format("experts {} and {} chosen together for {} tokens", x, y, c));
      }
    p.heatmap(
        fmt::format("coact_{}", block),
        fmt::format("Layer {}: co-activation (pairs chosen together; colour / max pair)", block),
        names, names, v, tips, false, "", &coact_scale);
    p.body += "</div>";
    // Top tokens per expert.
    p.body +=
        "<table class=\"tokens\"><tr><th>expert</th><th>load</th><th>most frequent tokens "
        "(count)</th><th>most distinctive tokens (share of the token's occurrences routed "
        "here)</th></tr>";
    for (int e = 0; e < E; ++e) {
      std::string freq, dist;
      for (const auto& t : la["top_tokens"][e])
        freq += fmt::format("<code>{}</code>&nbsp;{} ", visible(t["text"].get<std::string>()),
                            t["count"].get<int64_t>());
      for (const auto& t : la["distinctive_tokens"][e])
        dist += fmt::format("<code>{}</code>&nbsp;{:.0f}% ", visible(t["text"].get<std::string>()),
                            100 * t["share"].get<double>());
      p.body += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", e,
                            la["load"][e].get<int64_t>(), freq, dist);
    }
    p.body += "</table>\n";
  }
}

// The run's outcome, its routing settings and its balance at the end (summary.json).
void summary_section(Page& p, const json& s) {
  p.body += fmt::format(
      "<p class=\"summary\">{} steps, {:.2f}M parameters ({:.2f}M active), final training "
      "loss {:.4f}{}, {:.0f} tokens/s.</p>",
      s.value("steps", 0), s.value("parameters", 0.0) / 1e6,
      s.value("active_parameters", 0.0) / 1e6, s.value("final_train_loss", 0.0),
      s.contains("val_loss") ? fmt::format(", validation loss {:.4f}", s["val_loss"].get<double>())
                             : std::string(),
      s.value("tokens_per_second", 0.0));
  if (s.contains("routing") && s["routing"].is_object()) {
    std::string cells;
    for (const auto& [key, v] : s["routing"].items())
      cells += fmt::format("<tr><td>{}</td><td>{}</td></tr>", esc(key),
                           esc(v.is_string() ? v.get<std::string>() : v.dump()));
    p.body += "<details><summary>Routing settings</summary><table class=\"tokens\">" + cells +
              "</table></details>";
  }
  if (s.contains("final_balance") && s["final_balance"].is_object()) {
    const json& b = s["final_balance"];
    std::string rows;
    auto row = [&](const std::string& name, double cv, double mx, double dr) {
      rows += fmt::format("<tr><td>{}</td><td>{:.3f}</td><td>{:.2f}</td><td>{:.4f}</td></tr>",
                          esc(name), cv, mx, dr);
    };
    const size_t L = b.value("layer_load_cv", json::array()).size();
    for (size_t l = 0; l < L; ++l)
      row(fmt::format("MoE layer {}", l), b["layer_load_cv"][l].get<double>(),
          b["layer_max_over_mean"][l].get<double>(), b["layer_dropped"][l].get<double>());
    row("mean", b.value("load_cv", 0.0), b.value("max_over_mean", 0.0), b.value("dropped", 0.0));
    p.body += fmt::format(
        "<p class=\"summary\">Balance at the end of training ({}):</p><table class=\"tokens\">"
        "<tr><th></th><th>load CV</th><th>max / mean</th><th>dropped</th></tr>{}</table>",
        esc(b.value("source", "")), rows);
  }
}

}  // namespace

std::string render_report_html(const ReportInputs& in) {
  std::vector<json> steps, evals;
  for (const auto& j : in.metrics) {
    if (j.contains("loss")) steps.push_back(j);
    if (j.contains("val_loss")) evals.push_back(j);
  }
  Page p;
  p.body += fmt::format("<h1>moe run report: {}</h1>", esc(in.title));
  if (in.summary) summary_section(p, *in.summary);
  if (!steps.empty() || !evals.empty()) loss_section(p, steps, evals);
  int k = 0;
  for (const json* j : {in.summary, in.config})
    if (j && k == 0 && j->contains("num_experts_per_tok"))
      k = (*j)["num_experts_per_tok"].get<int>();
  routing_section(p, steps, in.analysis, k);
  selection_bias_section(p, evals);
  if (in.analysis)
    specialization_section(p, *in.analysis, in.baseline, in.baseline_untrained);
  else
    p.body +=
        "<p>No analysis.json in the run: <code>moe analyze RUN</code> adds the expert "
        "specialization section.</p>";
  return chart::html_document("moe report: " + in.title, p);
}

std::vector<json> read_metrics(const std::string& path) {
  std::ifstream m(path);
  MOE_REQUIRE(m.good(), "{}: cannot open", path);
  std::vector<json> out;
  std::string line;
  while (std::getline(m, line)) {
    if (line.empty()) continue;
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception&) {
      // A torn last line of a run that was killed: skip it, as --resume does.
    }
  }
  return out;
}

std::string write_report_html(const std::string& run_dir, int* charts) {
  ReportInputs in;
  in.title = run_dir;
  const std::string metrics_path = run_dir + "/metrics.jsonl";
  const bool has_metrics = std::ifstream(metrics_path).good();
  MOE_REQUIRE(has_metrics || std::ifstream(run_dir + "/analysis.json").good(),
              "{}: cannot open (is {} a run directory, or an analysis directory of `moe analyze "
              "MODEL --out`?)",
              metrics_path, run_dir);
  if (has_metrics) in.metrics = read_metrics(metrics_path);
  auto read_json = [&](const std::string& name, json& out) -> const json* {
    const std::string path = run_dir + "/" + name;
    std::ifstream f(path);
    if (!f.good()) return nullptr;
    try {
      out = json::parse(f);
    } catch (const json::exception& e) {  // also a number that overflows a double
      throw Error(fmt::format("{}: not valid JSON ({})", path, e.what()));
    }
    if (name.rfind("analysis", 0) == 0)
      MOE_REQUIRE(out.value("format", "") == "moe-analysis" && out.contains("layers"),
                  "{}: not a moe analysis file (format is not \"moe-analysis\")", path);
    return &out;
  };
  json summary, config, analysis, baseline;
  in.summary = read_json("summary.json", summary);
  in.config = read_json("config.json", config);
  in.analysis = read_json("analysis.json", analysis);
  if (in.analysis) {
    in.baseline = read_json("analysis_random_router.json", baseline);
    if (!in.baseline) {
      in.baseline = read_json("analysis_untrained.json", baseline);
      in.baseline_untrained = in.baseline != nullptr;
    }
  }
  std::string html;
  try {
    html = render_report_html(in);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: a metrics or analysis file has an unexpected shape ({})", run_dir,
                            e.what()));
  }
  const std::string out = run_dir + "/report.html";
  write_file_atomic(out, html.data(), html.size());
  if (charts) *charts = chart::count_charts(html);
  return out;
}

std::string analyze_and_report(const std::string& run_dir, const TokenStream& valid,
                               int64_t max_windows) {
  LoadedRun run = load_run(run_dir);
  if (run.config.num_local_experts > 0) {
    AnalysisOptions o;
    o.batch = run.config.training.batch_size;
    o.seq_len = run.config.training.seq_len;
    o.max_windows = max_windows;
    RoutingAnalysis a = analyze_routing(*run.model, *run.tokenizer, valid, o);
    a.label = run_dir;
    write_analysis(a, run_dir);
  }
  return write_report_html(run_dir);
}

}  // namespace moe
