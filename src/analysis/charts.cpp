#include "charts.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace moe::chart {

namespace {

// Ten distinguishable series colours (Tableau 10).
constexpr std::array<const char*, 10> kPalette = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                                  "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                                                  "#9c755f", "#bab0ac"};

struct Rgb {
  double r, g, b;
};

std::string hex(Rgb c) {
  auto byte = [](double v) { return static_cast<int>(std::lround(std::clamp(v, 0.0, 255.0))); };
  return fmt::format("#{:02x}{:02x}{:02x}", byte(c.r), byte(c.g), byte(c.b));
}

Rgb mix(Rgb a, Rgb b, double f) {
  return {a.r + f * (b.r - a.r), a.g + f * (b.g - a.g), a.b + f * (b.b - a.b)};
}

// Viridis at 0..1, linearly interpolated between five stops: readable in grey and for the
// colour-blind, and dark = large so the eye goes to where tokens go.
std::string viridis(double t) {
  static constexpr Rgb stops[5] = {
      {253, 231, 37}, {94, 201, 98}, {33, 145, 140}, {59, 82, 139}, {68, 1, 84}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(t));
  return hex(mix(stops[i], stops[i + 1], t - i));
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

// "Nice" tick values covering [lo, hi]; with `integer` only whole numbers (steps of training).
std::vector<double> ticks(double lo, double hi, bool integer = false, int want = 5) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / want;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (integer && m == 2.5 && mag < 10) continue;  // 2.5, 25 would need decimals
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  if (integer) step = std::max(1.0, std::round(step));
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

std::string legend_block(const std::string& legend) {
  return legend.empty() ? "" : "<g class=\"legend\">" + legend + "</g>";
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

std::string num(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e4 || a < 1e-3) return fmt::format("{:.2g}", v);
  if (a >= 100) return fmt::format("{:.0f}", v);
  if (a >= 10) return fmt::format("{:.1f}", v);
  return fmt::format("{:.3g}", v);
}

const char* palette(size_t i) {
  return kPalette[i % kPalette.size()];
}

ColorScale viridis_scale(const std::string& label0, const std::string& label1) {
  ColorScale s;
  s.color = viridis;
  s.bar = viridis;
  s.ticks = {{0.0, label0}, {1.0, label1}};
  return s;
}

ColorScale load_share_scale(int E, int k) {
  const double even = 1.0 / std::max(1, E);
  const double span = std::log(std::max(1.0 + 1e-9, static_cast<double>(E) / std::max(1, k)));
  ColorScale s;
  // t in [-1, 1]: log(share / even) / log(E / k), clamped; the legend bar is linear in t.
  auto diverging = [](double t) {
    static constexpr Rgb red{178, 24, 43}, white{247, 247, 247}, blue{33, 102, 172};
    return hex(t < 0 ? mix(white, red, -t) : mix(white, blue, t));
  };
  s.color = [even, span, diverging](double share) {
    if (!(share > 0)) return std::string("#000000");
    return diverging(std::clamp(std::log(share / even) / span, -1.0, 1.0));
  };
  s.bar = [diverging](double u) { return diverging(2 * u - 1); };
  const double ceiling = static_cast<double>(E) / std::max(1, k);
  s.ticks = {{0.0, fmt::format("\u2264{}\u00d7", num(1 / ceiling))},
             {0.5, fmt::format("even 1/{}", E)},
             {1.0, fmt::format("{}\u00d7 = E/k", num(ceiling))}};
  s.zero_label = "0 (dead)";
  s.text_white_above = 2;  // no cell text on this chart
  return s;
}

void Page::line_chart(const std::string& id, const std::string& title, const std::string& xlabel,
                      const std::string& ylabel, const std::vector<Series>& series,
                      const LineOptions& o) {
  constexpr double W = 560, H = 270, ml = 62, mr = 12, mt = 30, mb = 40;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (x0 > x1) return;  // nothing to draw: leave the chart out
  for (const auto& [y, label] : o.ref_lines) y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y0 -= 0.5, y1 += 0.5;
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad, y1 += pad;
  auto X = [&](double x) { return ml + (x - x0) / (x1 - x0) * (W - ml - mr); };
  auto Y = [&](double y) { return mt + (y1 - y) / (y1 - y0) * (H - mt - mb); };
  std::string marks;
  int n = 0;
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& s = series[i];
    const char* color = palette(s.color >= 0 ? static_cast<size_t>(s.color) : i);
    if (s.points.empty()) continue;
    int finite = 0;
    for (const auto& pt : s.points) finite += std::isfinite(pt.second) ? 1 : 0;
    if (s.dots || finite == 1) {  // one point draws no line: a marker instead
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
      if (std::isfinite(y)) d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : "L", X(x), Y(y));
    if (d.empty()) continue;
    marks += fmt::format(
        "<path class=\"mark\" d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"{}>"
        "<title>{}</title></path>",
        d, color, s.dash.empty() ? "" : fmt::format(" stroke-dasharray=\"{}\"", s.dash),
        esc(s.name));
    ++n;
  }
  std::string axes = fmt::format(
      "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#444\"/>"
      "<line x1=\"{0}\" y1=\"{3}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#444\"/>",
      ml, H - mb, W - mr, mt);
  const std::vector<double> xt = ticks(x0, x1, xlabel == "step"), yt = ticks(y0, y1);
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
  for (const auto& [y, label] : o.ref_lines)
    axes += fmt::format(
        "<line class=\"ref\" x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#c00\" "
        "stroke-dasharray=\"5 3\"/><text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\" "
        "fill=\"#c00\">{5}</text>",
        ml, Y(y), W - mr, W - mr - 2, Y(y) - 3, esc(label));
  axes += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", (ml + W - mr) / 2,
                      H - 6, esc(xlabel));
  axes += fmt::format(
      "<text x=\"14\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {0})\">{1}"
      "</text>",
      (mt + H - mb) / 2, esc(ylabel));
  std::string legend;
  double lx = ml + 4;
  for (size_t i = 0; o.legend && i < series.size() && series.size() > 1; ++i) {
    const int c = series[i].color;
    legend += fmt::format(
        "<rect x=\"{:.0f}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>"
        "<text x=\"{:.0f}\" y=\"{}\">{}</text>",
        lx, 4, palette(c >= 0 ? static_cast<size_t>(c) : i), lx + 13, 13, esc(series[i].name));
    lx += 22 + 7.0 * static_cast<double>(series[i].name.size());
  }
  open_chart(id, title, W, H + 14, n, legend.empty() ? 0 : 14);
  body += axes + marks + "</g>" + legend_block(legend) + "</svg></figure>\n";
}

void Page::heatmap(const std::string& id, const std::string& title,
                   const std::vector<std::string>& rows, const std::vector<std::string>& cols,
                   const std::vector<double>& values, const std::vector<std::string>& tips,
                   bool cell_text, const std::string& xlabel, const ColorScale* scale) {
  if (rows.empty() || cols.empty()) return;
  const ColorScale fallback = viridis_scale("0", "1");
  const ColorScale& sc = scale ? *scale : fallback;
  constexpr double legend_h = 40;
  const double ml = 108, mt = 90, mb = xlabel.empty() ? 8 : 24;
  const double cw = std::clamp(460.0 / cols.size(), 3.0, 44.0), ch = rows.size() > 16 ? 12 : 22;
  const double W = std::max(ml + cw * cols.size() + 10, 290.0);
  const double H = mt + ch * rows.size() + mb + legend_h;
  std::string g;
  int n = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < cols.size(); ++c) {
      const double v = values[r * cols.size() + c];
      g += fmt::format(
          "<rect class=\"mark\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.1f}\" "
          "fill=\"{}\"><title>{}</title></rect>",
          ml + c * cw, mt + r * ch, cw + 0.05, ch, sc.color(v), esc(tips[r * cols.size() + c]));
      ++n;
      if (cell_text && cw >= 26)
        g += fmt::format(
            "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"{}\" "
            "font-size=\"9\">{:.0f}</text>",
            ml + (c + 0.5) * cw, mt + r * ch + ch / 2 + 3,
            v > sc.text_white_above ? "#fff" : "#000", v * 100);
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
                     ml + cw * cols.size() / 2, H - legend_h - 6, esc(xlabel));
  // The legend under the cells: the exact-0 swatch, then the scale as a bar of 40 steps.
  std::string legend;
  const double ly = H - legend_h + 6;
  double lx = 8;
  if (!sc.zero_label.empty()) {
    legend += fmt::format(
        "<rect x=\"{0}\" y=\"{1}\" width=\"12\" height=\"12\" fill=\"{2}\" stroke=\"#888\"/>"
        "<text x=\"{3}\" y=\"{4}\">{5}</text>",
        lx, ly, sc.color(0.0), lx + 16, ly + 10, esc(sc.zero_label));
    lx += 24 + 6.5 * static_cast<double>(sc.zero_label.size());
  }
  if (sc.bar) {
    constexpr int kSteps = 40;
    constexpr double bar = 180;
    for (int i = 0; i < kSteps; ++i)
      legend +=
          fmt::format("<rect x=\"{:.1f}\" y=\"{}\" width=\"{:.2f}\" height=\"12\" fill=\"{}\"/>",
                      lx + bar * i / kSteps, ly, bar / kSteps + 0.05, sc.bar((i + 0.5) / kSteps));
    for (size_t i = 0; i < sc.ticks.size(); ++i) {
      const double x = lx + bar * sc.ticks[i].first;
      const char* anchor = i == 0 ? "start" : i + 1 == sc.ticks.size() ? "end" : "middle";
      legend += fmt::format(
          "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#444\"/>"
          "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"{4}\">{5}</text>",
          x, ly + 12, ly + 16, ly + 27, anchor, esc(sc.ticks[i].second));
    }
  }
  open_chart(id, title, W, H, n, 0);
  body += g + "</g>" + legend_block(legend) + "</svg></figure>\n";
}

void Page::bar_chart(const std::string& id, const std::string& title, const std::string& ylabel,
                     const std::vector<std::string>& groups, const std::vector<Series>& series,
                     double ymax) {
  constexpr double W = 560, H = 260, ml = 62, mr = 12, mt = 30, mb = 36;
  if (groups.empty() || series.empty()) return;
  if (!(ymax > 0)) ymax = 1;
  const double gw = (W - ml - mr) / groups.size(), bw = gw * 0.8 / series.size();
  auto Y = [&](double y) { return mt + (ymax - y) / ymax * (H - mt - mb); };
  std::string g = fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#444\"/>",
                              ml, H - mb, W - mr);
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
          x, Y(v), bw, std::max(0.5, H - mb - Y(v)), palette(s), esc(series[s].name),
          esc(groups[i]), v, x + bw / 2, Y(v) - 2, v);
      ++n;
    }
    legend += fmt::format(
        "<rect x=\"{:.0f}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{}\"/>"
        "<text x=\"{:.0f}\" y=\"13\">{}</text>",
        ml + 4 + s * 230.0, palette(s), ml + 17 + s * 230.0, esc(series[s].name));
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

// Opens <figure><svg class="chart"> and a group shifted down by `legend_h`.
void Page::open_chart(const std::string& id, const std::string& title, double W, double H,
                      int marks, double legend_h) {
  ++charts;
  body += fmt::format(
      "<figure><figcaption>{}</figcaption><svg class=\"chart\" data-chart=\"{}\" "
      "data-marks=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" "
      "height=\"{:.0f}\" viewBox=\"0 0 {:.0f} {:.0f}\" role=\"img\" aria-label=\"{}\">"
      "<g transform=\"translate(0 {})\">",
      esc(title), esc(id), marks, W, H, W, H, esc(title), legend_h);
}

std::string html_document(const std::string& title, const Page& page,
                          const std::string& extra_style) {
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>"
      "<style>{}{}</style></head><body data-charts=\"{}\">\n{}\n</body></html>\n",
      esc(title), kStyle, extra_style, page.charts, page.body);
}

int count_charts(const std::string& html) {
  int n = 0;
  for (size_t pos = 0; (pos = html.find("<svg class=\"chart\"", pos)) != std::string::npos; ++pos)
    ++n;
  return n;
}

}  // namespace moe::chart
