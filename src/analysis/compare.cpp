#include "moe/compare.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include "charts.h"
#include "core/input_file.h"
#include "moe/error.h"
#include "moe/report.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();

void flatten(const json& j, const std::string& prefix, json& out) {
  for (const auto& [key, v] : j.items()) {
    const std::string name = prefix.empty() ? key : prefix + "." + key;
    if (v.is_object())
      flatten(v, name, out);
    else
      out[name] = v;
  }
}

// A config value as shown: strings without their quotes.
std::string show(const json& v) {
  if (v.is_null()) return "-";
  return v.is_string() ? v.get<std::string>() : v.dump();
}

double number(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : kMissing;
}

double mean_of(const json& arr) {
  if (!arr.is_array() || arr.empty()) return kMissing;
  double s = 0;
  for (const auto& v : arr) s += v.get<double>();
  return s / static_cast<double>(arr.size());
}

// The last metrics line holding `key`, or null.
const json* last_with(const RunRecord& r, const char* key) {
  for (auto it = r.metrics.rbegin(); it != r.metrics.rend(); ++it)
    if (it->contains(key)) return &*it;
  return nullptr;
}

struct Stats {
  int n = 0;
  double mean = kMissing, sd = kMissing;  // sd: sample standard deviation (n >= 2)
};

Stats stats(const std::vector<double>& v) {
  Stats s;
  double sum = 0;
  for (double x : v)
    if (std::isfinite(x)) sum += x, ++s.n;
  if (s.n == 0) return s;
  s.mean = sum / s.n;
  if (s.n >= 2) {
    double ss = 0;
    for (double x : v)
      if (std::isfinite(x)) ss += (x - s.mean) * (x - s.mean);
    s.sd = std::sqrt(ss / (s.n - 1));
  }
  return s;
}

// Two-sided 5% critical values of Student's t for 1..30 degrees of freedom, then the normal's.
double t_critical_5pct(int df) {
  static constexpr double t[30] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306,
                                   2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
                                   2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                                   2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  return df >= 1 && df <= 30 ? t[df - 1] : 1.960;
}

}  // namespace

void mark_against_first_column(CompareRow& row) {
  row.marked.assign(row.values.size(), false);
  if (!row.marked_ok) return;
  // The seed-to-seed variance pooled over the columns of two or more seeds.
  std::vector<Stats> st;
  double pooled_ss = 0;
  int df = 0;
  for (const auto& v : row.values) {
    st.push_back(stats(v));
    if (st.back().n >= 2) {
      pooled_ss += st.back().sd * st.back().sd * (st.back().n - 1);
      df += st.back().n - 1;
    }
  }
  if (df == 0 || st.empty() || st[0].n == 0) return;
  const double var = pooled_ss / df, t = t_critical_5pct(df);
  for (size_t c = 1; c < st.size(); ++c) {
    if (st[c].n == 0) continue;
    const double diff = std::fabs(st[c].mean - st[0].mean);
    const double se = std::sqrt(var * (1.0 / st[c].n + 1.0 / st[0].n));
    row.marked[c] = diff > t * se && diff > 1e-12 * std::max(1.0, std::fabs(st[0].mean));
  }
}

namespace {

std::string base_name(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const std::string name = fs::path(d).filename().string();
  return name.empty() ? d : name;
}

}  // namespace

RunRecord read_run(const std::string& dir) {
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  MOE_REQUIRE(fs::exists(st), "{}: no such directory", dir);
  MOE_REQUIRE(fs::is_directory(st), "{}: not a directory (expected a run directory)", dir);
  MOE_REQUIRE(fs::exists(dir + "/config.json") && fs::exists(dir + "/metrics.jsonl"),
              "{}: not a run directory (no config.json and metrics.jsonl; `moe train --out DIR` "
              "writes them)",
              dir);
  RunRecord r;
  r.dir = dir;
  r.config = json::object();
  flatten(read_json_file(dir + "/config.json"), "", r.config);
  r.metrics = read_metrics(dir + "/metrics.jsonl");
  r.summary =
      fs::exists(dir + "/summary.json") ? read_json_file(dir + "/summary.json") : json::object();
  MOE_REQUIRE(r.summary.is_object(), "{}/summary.json: expected a JSON object", dir);
  if (fs::exists(dir + "/analysis.json"))
    r.analysis = read_json_file(dir + "/analysis.json", uint64_t{1} << 30);
  return r;
}

Comparison compare_runs(const std::vector<std::string>& dirs) {
  MOE_REQUIRE(!dirs.empty(), "compare: no run directories given");
  Comparison c;
  for (const auto& d : dirs) c.runs.push_back(read_run(d));

  // Columns: equal configs but for training.seed.
  std::vector<std::string> keys_of_column;
  for (size_t i = 0; i < c.runs.size(); ++i) {
    json key = c.runs[i].config;
    key.erase("training.seed");
    const std::string k = key.dump();
    const auto it = std::find(keys_of_column.begin(), keys_of_column.end(), k);
    if (it == keys_of_column.end()) {
      keys_of_column.push_back(k);
      c.columns.push_back({i});
    } else {
      c.columns[static_cast<size_t>(it - keys_of_column.begin())].push_back(i);
    }
  }
  for (const auto& col : c.columns) {
    c.column_names.push_back(
        col.size() == 1 ? base_name(c.runs[col[0]].dir)
                        : fmt::format("{} ({} seeds)", base_name(c.runs[col[0]].dir), col.size()));
    if (col.size() >= 2) c.any_marks_possible = true;
  }

  // Config keys whose values differ between the runs (flattened keys, in sorted order).
  std::vector<std::string> keys;
  std::set<std::string> seen;
  for (const auto& r : c.runs)
    for (const auto& [k, v] : r.config.items())
      if (seen.insert(k).second) keys.push_back(k);
  for (const auto& k : keys) {
    std::set<std::string> values;
    for (const auto& r : c.runs) values.insert(r.config.contains(k) ? r.config[k].dump() : "-");
    if (values.size() < 2) continue;
    c.differing_keys.push_back(k);
    CompareRow row;
    row.name = k;
    for (const auto& col : c.columns) {
      std::vector<std::string> shown;
      for (size_t i : col) {
        const std::string v = c.runs[i].config.contains(k) ? show(c.runs[i].config[k]) : "-";
        if (std::find(shown.begin(), shown.end(), v) == shown.end()) shown.push_back(v);
      }
      std::string cell;
      for (const auto& v : shown) cell += (cell.empty() ? "" : ", ") + v;
      row.text.push_back(cell);
    }
    c.rows.push_back(row);
  }

  // Numeric rows: value(run) per run of each column.
  auto add = [&](const std::string& name, int decimals, bool marked_ok, auto value) {
    CompareRow row;
    row.name = name;
    row.numeric = true;
    row.decimals = decimals;
    row.marked_ok = marked_ok;
    bool any = false;
    for (const auto& col : c.columns) {
      std::vector<double> v;
      for (size_t i : col) {
        v.push_back(value(c.runs[i]));
        any = any || std::isfinite(v.back());
      }
      row.values.push_back(v);
    }
    if (!any) return;
    mark_against_first_column(row);
    c.rows.push_back(row);
  };
  add("parameters (M)", 3, false,
      [](const RunRecord& r) { return number(r.summary, "parameters") / 1e6; });
  add("active parameters (M)", 3, false,
      [](const RunRecord& r) { return number(r.summary, "active_parameters") / 1e6; });
  add("tokens/s", 0, true,
      [](const RunRecord& r) { return number(r.summary, "tokens_per_second"); });
  add("final train loss", 4, true, [](const RunRecord& r) {
    const double v = number(r.summary, "final_train_loss");
    const json* m = last_with(r, "loss");
    return std::isfinite(v) ? v : m ? number(*m, "loss") : kMissing;
  });
  add("validation loss", 4, true, [](const RunRecord& r) {
    const double v = number(r.summary, "val_loss");
    const json* m = last_with(r, "val_loss");
    return std::isfinite(v) ? v : m ? number(*m, "val_loss") : kMissing;
  });
  std::vector<std::string> domains;
  for (const auto& r : c.runs) {
    if (const json* m = last_with(r, "val_loss"))
      for (const auto& [k, v] : m->items())
        if (k.rfind("val_loss_", 0) == 0 && v.is_number() &&
            std::find(domains.begin(), domains.end(), k.substr(9)) == domains.end())
          domains.push_back(k.substr(9));
    if (r.summary.contains("val_loss_per_domain"))
      for (const auto& [k, v] : r.summary["val_loss_per_domain"].items())
        if (std::find(domains.begin(), domains.end(), k) == domains.end()) domains.push_back(k);
  }
  for (const auto& d : domains)
    add("  val loss " + d, 4, true, [&d](const RunRecord& r) {
      if (r.summary.contains("val_loss_per_domain"))
        return number(r.summary["val_loss_per_domain"], d.c_str());
      const json* m = last_with(r, "val_loss");
      return m ? number(*m, ("val_loss_" + d).c_str()) : kMissing;
    });
  // The balance at the end; older runs without final_balance: the last metrics.
  auto balance = [](const RunRecord& r, const char* key, const char* step_key) {
    if (r.summary.contains("final_balance")) return number(r.summary["final_balance"], key);
    const json* m = last_with(r, step_key);
    return m ? number(*m, step_key) : kMissing;
  };
  add("load CV", 3, true, [&](const RunRecord& r) {
    if (r.summary.contains("final_balance")) return number(r.summary["final_balance"], "load_cv");
    const json* m = last_with(r, "layer_load_cv");
    return m ? mean_of((*m)["layer_load_cv"]) : kMissing;
  });
  add("max / mean load", 2, true,
      [&](const RunRecord& r) { return balance(r, "max_over_mean", "balance"); });
  add("dropped fraction", 4, true,
      [&](const RunRecord& r) { return balance(r, "dropped", "dropped"); });
  add("I(expert; domain), bits", 3, true, [](const RunRecord& r) {
    if (!r.analysis.is_object() || !r.analysis.contains("layers")) return kMissing;
    double s = 0;
    int n = 0;
    for (const auto& l : r.analysis["layers"])
      if (l.contains("mi_domain_bits")) s += l["mi_domain_bits"].get<double>(), ++n;
    return n > 0 ? s / n : kMissing;
  });
  return c;
}

std::string format_cell(const CompareRow& row, size_t column) {
  if (!row.numeric) return row.text[column];
  std::vector<double> v;
  for (double x : row.values[column])
    if (std::isfinite(x)) v.push_back(x);
  if (v.empty()) return "-";
  const Stats s = stats(v);
  std::string out = fmt::format("{:.{}f}", s.mean, row.decimals);
  if (s.n >= 2 && row.marked_ok) out += fmt::format(" \u00b1 {:.{}f}", s.sd, row.decimals);
  if (column < row.marked.size() && row.marked[column]) out += " *";
  return out;
}

namespace {

// Display width of UTF-8 text (code points; the table holds no wide characters).
size_t width(const std::string& s) {
  size_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

std::string pad(const std::string& s, size_t w) {
  return s + std::string(w > width(s) ? w - width(s) : 0, ' ');
}

std::string notes(const Comparison& c) {
  std::string out;
  for (size_t k = 0; k < c.columns.size(); ++k) {
    std::string dirs;
    for (size_t i : c.columns[k]) {
      dirs += (dirs.empty() ? "" : ", ") + c.runs[i].dir;
      if (c.columns[k].size() > 1 && c.runs[i].config.contains("training.seed"))
        dirs += fmt::format(" (seed {})", show(c.runs[i].config["training.seed"]));
    }
    out += fmt::format("{}: {}\n", c.column_names[k], dirs);
  }
  if (c.differing_keys.empty()) out += "the configs are identical\n";
  if (c.any_marks_possible)
    out +=
        "mean \u00b1 sample standard deviation over a column's seeds; * differs from the first "
        "column beyond the seed-to-seed spread (two-sample t-test at 5%, the variance pooled "
        "over the columns of two or more seeds)\n";
  else if (c.columns.size() > 1)
    out +=
        "one run per column: no seed-to-seed spread to judge the differences by (train the "
        "variants with two or more training.seed values)\n";
  return out;
}

}  // namespace

std::string format_comparison(const Comparison& c) {
  size_t w0 = 0;
  for (const auto& r : c.rows) w0 = std::max(w0, width(r.name));
  std::vector<size_t> w(c.columns.size());
  for (size_t k = 0; k < c.columns.size(); ++k) {
    w[k] = width(c.column_names[k]);
    for (const auto& r : c.rows) w[k] = std::max(w[k], width(format_cell(r, k)));
  }
  std::string out = pad("", w0);
  for (size_t k = 0; k < c.columns.size(); ++k) out += "  " + pad(c.column_names[k], w[k]);
  out += "\n";
  for (const auto& r : c.rows) {
    std::string line = pad(r.name, w0);
    for (size_t k = 0; k < c.columns.size(); ++k) line += "  " + pad(format_cell(r, k), w[k]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out + "\n" + notes(c);
}

std::string render_compare_html(const Comparison& c) {
  using chart::esc;
  chart::Page p;
  p.body += "<h1>moe compare</h1><table class=\"tokens\"><tr><th></th>";
  for (const auto& n : c.column_names) p.body += "<th>" + esc(n) + "</th>";
  p.body += "</tr>";
  for (const auto& r : c.rows) {
    p.body += "<tr><td>" + esc(r.name) + "</td>";
    for (size_t k = 0; k < c.columns.size(); ++k)
      p.body += "<td>" + esc(format_cell(r, k)) + "</td>";
    p.body += "</tr>";
  }
  p.body += "</table><pre class=\"summary\">" + esc(notes(c)) + "</pre>";

  // One series per run: the column's colour, a dash pattern per seed within the column.
  static const char* kDash[] = {"", "6 3", "2 2", "8 3 2 3", "1 3"};
  std::string legend;
  struct Line {
    const RunRecord* run;
    int color;
    std::string dash, name;
  };
  std::vector<Line> lines;
  for (size_t k = 0; k < c.columns.size(); ++k)
    for (size_t s = 0; s < c.columns[k].size(); ++s) {
      const RunRecord& r = c.runs[c.columns[k][s]];
      Line l{&r, static_cast<int>(k), kDash[s % std::size(kDash)], r.dir};
      lines.push_back(l);
      legend += fmt::format(
          "<span class=\"key\"><svg width=\"30\" height=\"10\"><line x1=\"0\" y1=\"5\" x2=\"30\" "
          "y2=\"5\" stroke=\"{}\" stroke-width=\"2.5\"{}/></svg> {}</span>",
          chart::palette(static_cast<size_t>(k)),
          l.dash.empty() ? "" : fmt::format(" stroke-dasharray=\"{}\"", l.dash), esc(r.dir));
    }
  p.body += "<h2>Curves</h2><div class=\"legend\">" + legend + "</div><div class=\"row\">";
  auto curves = [&](const std::string& id, const std::string& title, const std::string& ylabel,
                    auto value, const chart::LineOptions& o) {
    std::vector<chart::Series> series;
    for (const auto& l : lines) {
      chart::Series s;
      s.name = l.name;
      s.color = l.color;
      s.dash = l.dash;
      for (const auto& j : l.run->metrics) {
        const double v = value(j);
        if (j.contains("step") && std::isfinite(v)) s.points.emplace_back(number(j, "step"), v);
      }
      series.push_back(s);
    }
    p.line_chart(id, title, "step", ylabel, series, o);
  };
  chart::LineOptions plain;
  plain.legend = false;
  curves(
      "train_loss", "Training loss (task + aux)", "loss",
      [](const json& j) { return number(j, "loss"); }, plain);
  curves(
      "val_loss", "Validation loss (cross-entropy, nats)", "loss",
      [](const json& j) { return number(j, "val_loss"); }, plain);
  curves(
      "aux_loss", "Auxiliary losses (sum over MoE layers)", "loss",
      [](const json& j) { return number(j, "aux"); }, plain);
  // The max / mean ceiling E/k, when every run has the same.
  std::set<double> ceilings;
  for (const auto& r : c.runs) {
    const double E = number(r.config, "num_local_experts"),
                 k = number(r.config, "num_experts_per_tok");
    ceilings.insert(E > 0 && k > 0 ? E / k : kMissing);
  }
  chart::LineOptions bal = plain;
  if (ceilings.size() == 1 && std::isfinite(*ceilings.begin()))
    bal.ref_lines.emplace_back(*ceilings.begin(),
                               fmt::format("ceiling E/k = {}", chart::num(*ceilings.begin())));
  curves(
      "balance", "Busiest expert / mean load (mean over MoE layers)", "max / mean",
      [](const json& j) { return number(j, "balance"); }, bal);
  curves(
      "load_cv", "Load coefficient of variation (mean over MoE layers)", "CV",
      [](const json& j) {
        return j.contains("layer_load_cv") ? mean_of(j["layer_load_cv"]) : kMissing;
      },
      plain);
  curves(
      "dropped", "Dropped fraction of assignments (mean over MoE layers)", "fraction",
      [](const json& j) { return number(j, "dropped"); }, plain);
  p.body += "</div>\n";
  return chart::html_document(
      "moe compare", p,
      ".legend .key{display:inline-block;margin-right:16px;white-space:nowrap}"
      "table.tokens td{text-align:right;white-space:nowrap}"
      "table.tokens td:first-child{text-align:left;white-space:pre}");
}

int write_compare_html(const Comparison& c, const std::string& path) {
  const std::string html = render_compare_html(c);
  write_file_atomic(path, html.data(), html.size());
  return chart::count_charts(html);
}

}  // namespace moe
