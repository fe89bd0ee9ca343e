// The inline-SVG chart code shared by report.html (report.cpp) and `moe compare --out`
// (compare.cpp): line, bar and heatmap charts appended to one HTML body, and the page around
// them. Internal to src/analysis; no script, stylesheet or font from elsewhere.
//
// Every chart is an <svg class="chart" data-chart="NAME" data-marks="N"> whose N drawn marks
// (lines, cells, bars) carry class "mark"; legends and reference lines are not marks.
// tests/report_browser_test.py checks both pages in Chromium.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace moe::chart {

std::string esc(const std::string& s);  // HTML-escaped
std::string num(double v);              // a short number: 3 significant digits or so
const char* palette(size_t i);          // ten distinguishable series colours, cycled

struct Series {
  Series() = default;
  explicit Series(std::string n, std::vector<std::pair<double, double>> p = {}, bool d = false)
      : name(std::move(n)), points(std::move(p)), dots(d) {}
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
  bool dots = false;                              // markers instead of a line
  int color = -1;                                 // palette index; -1: the series' position
  std::string dash;                               // SVG stroke-dasharray, "" for solid
};

struct LineOptions {
  bool legend = true;  // a legend row at the top (when there are two or more series)
  // Dashed horizontal reference lines with their labels, e.g. a ceiling; kept in the y range.
  std::vector<std::pair<double, std::string>> ref_lines;
};

// How a heatmap colours its values, and the legend that explains it.
struct ColorScale {
  std::function<std::string(double)> color;  // a cell's value -> "#rrggbb"
  // The legend: a bar over u in [0, 1] coloured by bar(u), and labels at positions u.
  std::function<std::string(double)> bar;
  std::vector<std::pair<double, std::string>> ticks;
  std::string zero_label;          // non-empty: an exact 0 gets its own swatch with this label
  double text_white_above = 0.45;  // cell text is white on values above this (dark cells)
};
// Viridis over [0, 1] (0 light yellow, 1 dark purple), legend labels at 0 and 1.
ColorScale viridis_scale(const std::string& label0, const std::string& label1);
// Router load as a share of the assignments, for E experts with top-k: an exact 0 (a dead
// expert) black; below the even share 1/E red, above it blue, white at 1/E, both saturating
// at a factor E/k away from even on a log scale (E/k x even is the ceiling: one expert in
// every token's top-k).
ColorScale load_share_scale(int E, int k);

class Page {
 public:
  int charts = 0;
  std::string body;

  // A chart whose x axis is labelled "step" gets integer ticks.
  void line_chart(const std::string& id, const std::string& title, const std::string& xlabel,
                  const std::string& ylabel, const std::vector<Series>& series,
                  const LineOptions& o = {});
  // values [rows, cols], coloured by `scale` (viridis over [0, 1] when null); the cells show
  // value * 100 when cell_text and wide enough.
  void heatmap(const std::string& id, const std::string& title,
               const std::vector<std::string>& rows, const std::vector<std::string>& cols,
               const std::vector<double>& values, const std::vector<std::string>& tips,
               bool cell_text, const std::string& xlabel = "", const ColorScale* scale = nullptr);
  void bar_chart(const std::string& id, const std::string& title, const std::string& ylabel,
                 const std::vector<std::string>& groups, const std::vector<Series>& series,
                 double ymax);

 private:
  void open_chart(const std::string& id, const std::string& title, double W, double H, int marks,
                  double legend_h);
};

// The whole document: <title>, the shared style sheet plus `extra_style`, <body
// data-charts="N">.
std::string html_document(const std::string& title, const Page& page,
                          const std::string& extra_style = "");

// The number of charts in an HTML page written by html_document.
int count_charts(const std::string& html);

}  // namespace moe::chart
