#include "moe/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/analysis.h"
#include "moe/error.h"
#include "moe/safetensors.h"
#include "moe/trainer.h"

namespace moe {

namespace {

using nlohmann::json;

std::string esc(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

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

std::string num(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e4 || a < 1e-3) return fmt::format("{:.2g}", v);
  if (a >= 100) return fmt::format("{:.0f}", v);
  if (a >= 10) return fmt::format("{:.1f}", v);
  return fmt::format("{:.3g}", v);
}

// Ten distinguishable series colours (Tableau 10).
constexpr std::array<const char*, 10> kPalette = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                                  "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                                                  "#9c755f", "#bab0ac"};

// Viridis at 0..1, linearly interpolated between five stops: readable in grey and for the
// colour-blind, and dark = large so the eye goes to where tokens go.
std::string heat_color(double t) {
  static constexpr double stops[5][3] = {
      {253, 231, 37}, {94, 201, 98}, {33, 145, 140}, {59, 82, 139}, {68, 1, 84}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  int c[3];
  for (int j = 0; j < 3; ++j)
    c[j] = static_cast<int>(std::lround(stops[i][j] + f * (stops[i + 1][j] - stops[i][j])));
  return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
}

// A tick label with as many decimals as the tick step needs (0.25 -> 2, 2000 -> 0).
std::string tick_label(double v, double step) {
  if (std::fabs(v) >= 1e5 || (v != 0 && std::fabs(v) < 1e-4)) return fmt::format("{:.2g}", v);
  const int decimals = std::clamp(static_cast<int>(std::ceil(-std::log10(step) - 1e-9)), 0, 6);
  const bool quarter = std::fabs(step / std::pow(10.0, -decimals) - 2.5) < 1e-6;
  return fmt::format("{:.{}f}", v, decimals + (quarter ? 1 : 0));
}

double tick_step(const std::vector<double>& t) {
  return t.size() > 1 ? t[1] - t[0] : 1.0;
}

// "Nice" tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi, int want = 5) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / want;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
  bool dots = false;                              // markers instead of a line
};

class Page {
 public:
  int charts = 0;
  std::string body;

  void line_chart(const std::string& id, const std::string& title, const std::string& xlabel,
                  const std::string& ylabel, const std::vector<Series>& series) {
    constexpr double W = 560, H = 270, ml = 62, mr = 12, mt = 30, mb = 40;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto& s : series)
      for (const auto& [x, y] : s.points) {
        if (!std::isfinite(y)) continue;
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
      }
    if (x0 > x1) return;  // nothing to draw: leave the chart out
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y0 -= 0.5, y1 += 0.5;
    const double pad = (y1 - y0) * 0.05;
    y0 -= pad, y1 += pad;
    auto X = [&](double x) { return ml + (x - x0) / (x1 - x0) * (W - ml - mr); };
    auto Y = [&](double y) { return mt + (y1 - y) / (y1 - y0) * (H - mt - mb); };
    std::string marks;
    int n = 0;
    for (size_t i = 0; i < series.size(); ++i) {
      const char* color = kPalette[i % kPalette.size()];
      const auto& s = series[i];
      if (s.points.empty()) continue;
      if (s.dots) {
        for (const auto& [x, y] : s.points) {
          if (!std::isfinite(y)) continue;
          marks += fmt::format(
              "<circle class=\"mark\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\">"
              "<title>{} at {}: {}</title></circle>",
              X(x), Y(y), color, esc(s.name), num(x), num(y));
          ++n;
        }
        continue;
      }
      std::string d;
      for (const auto& [x, y] : s.points)
        if (std::isfinite(y))
          d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : "L", X(x), Y(y));
      marks += fmt::format(
          "<path class=\"mark\" d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\">"
          "<title>{}</title></path>",
          d, color, esc(s.name));
      ++n;
    }
    std::string axes = fmt::format(
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#444\"/>"
        "<line x1=\"{0}\" y1=\"{3}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#444\"/>",
        ml, H - mb, W - mr, mt);
    const std::vector<double> xt = ticks(x0, x1), yt = ticks(y0, y1);
    for (double t : xt)
      axes += fmt::format(
          "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#444\"/>"
          "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>",
          X(t), H - mb, H - mb + 4, H - mb + 16, tick_label(t, tick_step(xt)));
    for (double t : yt)
      axes += fmt::format(
          "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#eee\"/>"
          "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>",
          ml, Y(t), W - mr, ml - 4, Y(t) + 4, tick_label(t, tick_step(yt)));
    axes += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                        (ml + W - mr) / 2, H - 6, esc(xlabel));
    axes += fmt::format(
        "<text x=\"14\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {0})\">{1}"
        "</text>",
        (mt + H - mb) / 2, esc(ylabel));
    std::string legend;
    double lx = ml + 4;
    for (size_t i = 0; i < series.size() && series.size() > 1; ++i) {
      legend += fmt::format(
          "<rect x=\"{:.0f}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>"
          "<text x=\"{:.0f}\" y=\"{}\">{}</text>",
          lx, 4, kPalette[i % kPalette.size()], lx + 13, 13, esc(series[i].name));
      lx += 22 + 7.0 * static_cast<double>(series[i].name.size());
    }
    open_chart(id, title, W, H + 14, n, legend.empty() ? 0 : 14);
    body += axes + marks + "</g>" + legend_block(legend) + "</svg></figure>\n";
  }

  // values [rows, cols] in [0, 1] (colour); labels for each; text shown in cells when small.
  void heatmap(const std::string& id, const std::string& title,
               const std::vector<std::string>& rows, const std::vector<std::string>& cols,
               const std::vector<double>& values, const std::vector<std::string>& tips,
               bool cell_text, const std::string& xlabel = "") {
    if (rows.empty() || cols.empty()) return;
    const double ml = 108, mt = 90, mb = xlabel.empty() ? 8 : 24;
    const double cw = std::clamp(460.0 / cols.size(), 3.0, 44.0), ch = rows.size() > 16 ? 12 : 22;
    const double W = ml + cw * cols.size() + 10, H = mt + ch * rows.size() + mb;
    std::string g;
    int n = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      for (size_t c = 0; c < cols.size(); ++c) {
        const double v = values[r * cols.size() + c];
        g += fmt::format(
            "<rect class=\"mark\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.1f}\" "
            "fill=\"{}\"><title>{}</title></rect>",
            ml + c * cw, mt + r * ch, cw + 0.05, ch, heat_color(v), esc(tips[r * cols.size() + c]));
        ++n;
        if (cell_text && cw >= 26)
          g += fmt::format(
              "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"{}\" "
              "font-size=\"9\">{:.0f}</text>",
              ml + (c + 0.5) * cw, mt + r * ch + ch / 2 + 3, v > 0.45 ? "#fff" : "#000", v * 100);
      }
      g += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>", ml - 4,
                       mt + r * ch + ch / 2 + 4, esc(rows[r]));
    }
    // Column labels rotated, or every few when the columns are narrow (steps over training).
    const size_t every = cw >= 12 ? 1 : static_cast<size_t>(std::ceil(40.0 / cw));
    for (size_t c = 0; c < cols.size(); c += every)
      g += fmt::format(
          "<text x=\"{0:.1f}\" y=\"{1}\" transform=\"rotate(-50 {0:.1f} {1})\">{2}</text>",
          ml + (c + 0.5) * cw, mt - 4, esc(cols[c]));
    if (!xlabel.empty())
      g += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>",
                       ml + cw * cols.size() / 2, H - 6, esc(xlabel));
    open_chart(id, title, W, H, n, 0);
    body += g + "</g></svg></figure>\n";
  }

  void bar_chart(const std::string& id, const std::string& title, const std::string& ylabel,
                 const std::vector<std::string>& groups, const std::vector<Series>& series,
                 double ymax) {
    constexpr double W = 560, H = 260, ml = 62, mr = 12, mt = 30, mb = 36;
    if (groups.empty() || series.empty()) return;
    if (!(ymax > 0)) ymax = 1;
    const double gw = (W - ml - mr) / groups.size(), bw = gw * 0.8 / series.size();
    auto Y = [&](double y) { return mt + (ymax - y) / ymax * (H - mt - mb); };
    std::string g = fmt::format(
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#444\"/>", ml, H - mb, W - mr);
    const std::vector<double> yt = ticks(0, ymax);
    for (double t : yt)
      g += fmt::format(
          "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#eee\"/>"
          "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>",
          ml, Y(t), W - mr, ml - 4, Y(t) + 4, tick_label(t, tick_step(yt)));
    int n = 0;
    std::string legend;
    for (size_t s = 0; s < series.size(); ++s) {
      for (size_t i = 0; i < series[s].points.size() && i < groups.size(); ++i) {
        const double v = std::max(0.0, series[s].points[i].second);
        const double x = ml + i * gw + gw * 0.1 + s * bw;
        g += fmt::format(
            "<rect class=\"mark\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
            "fill=\"{}\"><title>{} {}: {:.3f}</title></rect>"
            "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"9\">{:.2f}</text>",
            x, Y(v), bw, std::max(0.5, H - mb - Y(v)), kPalette[s % kPalette.size()],
            esc(series[s].name), esc(groups[i]), v, x + bw / 2, Y(v) - 2, v);
        ++n;
      }
      legend += fmt::format(
          "<rect x=\"{:.0f}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{}\"/>"
          "<text x=\"{:.0f}\" y=\"13\">{}</text>",
          ml + 4 + s * 230.0, kPalette[s % kPalette.size()], ml + 17 + s * 230.0,
          esc(series[s].name));
    }
    for (size_t i = 0; i < groups.size(); ++i)
      g += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                       ml + (i + 0.5) * gw, H - mb + 16, esc(groups[i]));
    g += fmt::format(
        "<text x=\"14\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {0})\">{1}"
        "</text>",
        (mt + H - mb) / 2, esc(ylabel));
    open_chart(id, title, W, H + 14, n, 14);
    body += g + "</g>" + legend_block(legend) + "</svg></figure>\n";
  }

 private:
  // Opens <figure><svg class="chart"> and a group shifted down by `legend_h`.
  void open_chart(const std::string& id, const std::string& title, double W, double H, int marks,
                  double legend_h) {
    ++charts;
    body += fmt::format(
        "<figure><figcaption>{}</figcaption><svg class=\"chart\" data-chart=\"{}\" "
        "data-marks=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" "
        "height=\"{:.0f}\" viewBox=\"0 0 {:.0f} {:.0f}\" role=\"img\" aria-label=\"{}\">"
        "<g transform=\"translate(0 {})\">",
        esc(title), esc(id), marks, W, H, W, H, esc(title), legend_h);
  }
  static std::string legend_block(const std::string& legend) {
    return legend.empty() ? "" : "<g class=\"legend\">" + legend + "</g>";
  }
};

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
                     int layers) {
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
  if (any) p.line_chart(id, title, "step", ylabel, s);
}

void routing_section(Page& p, const std::vector<json>& steps, const json* analysis) {
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
      "(steps grouped into at most 120 columns). An even router gives every cell 1/E; a collapsed "
      "one, one dark row. Colour: share / max share in the chart.</p><div class=\"row\">";
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
      if (col_names[c].empty()) col_names[c] = num(get(*with_load[i], "step"));
    }
    double mx = 0;
    for (size_t c = 0; c < cols; ++c)
      for (int e = 0; e < E; ++e) {
        share[size_t(e) * cols + c] /= std::max(1, in_bin[c]);
        mx = std::max(mx, share[size_t(e) * cols + c]);
      }
    std::vector<std::string> rows, tips;
    std::vector<double> color(share.size());
    for (int e = 0; e < E; ++e) rows.push_back(fmt::format("expert {}", e));
    for (int e = 0; e < E; ++e)
      for (size_t c = 0; c < cols; ++c) {
        color[size_t(e) * cols + c] = mx > 0 ? share[size_t(e) * cols + c] / mx : 0;
        tips.push_back(fmt::format("{} expert {} from step {}: {:.1f}% of assignments", names[l], e,
                                   col_names[c], 100 * share[size_t(e) * cols + c]));
      }
    p.heatmap(fmt::format("load_{}", l), fmt::format("Expert load over training, {}", names[l]),
              rows, col_names, color, tips, false, "step");
  }
  p.body += "</div><div class=\"row\">";
  per_layer_lines(p, steps, "layer_dropped", "dropped", "Dropped fraction of assignments",
                  "fraction", L);
  per_layer_lines(p, steps, "layer_entropy_bits", "entropy",
                  "Router entropy (mean per-token, bits; max log2 E)", "bits", L);
  per_layer_lines(p, steps, "layer_load_cv", "load_cv", "Load coefficient of variation", "CV", L);
  per_layer_lines(p, steps, "layer_max_over_mean", "load_max_mean", "Busiest expert / mean load",
                  "max / mean", L);
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
  p.heatmap(id, title, rows, cols, v, tips, true);
}

void specialization_section(Page& p, const json& a, const json* base) {
  const auto domains = a["domains"].get<std::vector<std::string>>();
  const auto classes = a["classes"].get<std::vector<std::string>>();
  const int E = a["num_experts"].get<int>();
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
      base ? " The baseline is the same model with its freshly initialized weights (the "
             "router before training)."
           : "");
  std::vector<std::string> groups;
  Series mi{"I(expert; domain), trained", {}}, mic{"I(expert; class), trained", {}};
  Series bmi{"I(expert; domain), untrained", {}}, bmic{"I(expert; class), untrained", {}};
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
        names, names, v, tips, false);
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

constexpr const char* kStyle = R"(
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1800px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
.row{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;padding:6px;border:1px solid #eee;border-radius:4px}
figcaption{font-weight:600;font-size:13px;margin-bottom:2px}
svg.chart text{font-size:11px;fill:#333}
table.tokens{border-collapse:collapse;margin:8px 0 16px}
table.tokens td,table.tokens th{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
code{background:#f3f3f3;padding:0 2px;border-radius:2px;white-space:pre}
.summary{color:#444}
)";

}  // namespace

std::string render_report_html(const ReportInputs& in) {
  std::vector<json> steps, evals;
  for (const auto& j : in.metrics) {
    if (j.contains("loss")) steps.push_back(j);
    if (j.contains("val_loss")) evals.push_back(j);
  }
  Page p;
  p.body += fmt::format("<h1>moe run report: {}</h1>", esc(in.title));
  if (in.summary) {
    const json& s = *in.summary;
    p.body += fmt::format(
        "<p class=\"summary\">{} steps, {:.2f}M parameters ({:.2f}M active), final training "
        "loss {:.4f}{}, {:.0f} tokens/s.</p>",
        s.value("steps", 0), s.value("parameters", 0.0) / 1e6,
        s.value("active_parameters", 0.0) / 1e6, s.value("final_train_loss", 0.0),
        s.contains("val_loss")
            ? fmt::format(", validation loss {:.4f}", s["val_loss"].get<double>())
            : std::string(),
        s.value("tokens_per_second", 0.0));
  }
  if (!steps.empty() || !evals.empty()) loss_section(p, steps, evals);
  routing_section(p, steps, in.analysis);
  if (in.analysis)
    specialization_section(p, *in.analysis, in.baseline);
  else
    p.body +=
        "<p>No analysis.json in the run: <code>moe analyze RUN</code> adds the expert "
        "specialization section.</p>";
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>"
      "<style>{}</style></head><body data-charts=\"{}\">\n{}\n</body></html>\n",
      esc("moe report: " + in.title), kStyle, p.charts, p.body);
}

std::string write_report_html(const std::string& run_dir, int* charts) {
  ReportInputs in;
  in.title = run_dir;
  const std::string metrics_path = run_dir + "/metrics.jsonl";
  std::ifstream m(metrics_path);
  MOE_REQUIRE(m.good(), "{}: cannot open (is {} a run directory?)", metrics_path, run_dir);
  std::string line;
  while (std::getline(m, line)) {
    if (line.empty()) continue;
    try {
      in.metrics.push_back(json::parse(line));
    } catch (const json::exception&) {
      // A torn last line of a run that was killed: skip it, as --resume does.
    }
  }
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
  json summary, analysis, baseline;
  in.summary = read_json("summary.json", summary);
  in.analysis = read_json("analysis.json", analysis);
  in.baseline = in.analysis ? read_json("analysis_untrained.json", baseline) : nullptr;
  std::string html;
  try {
    html = render_report_html(in);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: a metrics or analysis file has an unexpected shape ({})", run_dir,
                            e.what()));
  }
  const std::string out = run_dir + "/report.html";
  write_file_atomic(out, html.data(), html.size());
  if (charts) {
    *charts = 0;
    for (size_t pos = 0; (pos = html.find("<svg class=\"chart\"", pos)) != std::string::npos; ++pos)
      ++*charts;
  }
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
