// `moe compare RUN RUN...`: several training runs side by side, as a table (terminal or HTML)
// and, in HTML, their curves overlaid.
//
// Each run directory is read for config.json and metrics.jsonl (both required: they make it a
// run), summary.json (written at the end of `moe train`) and analysis.json (`moe analyze`).
//
// Columns: runs whose configs are equal except for training.seed form one column (a group of
// seeds); every other run is a column of its own, in the order given. A column of n >= 2 runs
// shows mean ± s, s the sample standard deviation over its seeds (the parameter counts, which
// seeds do not change, show the mean alone). A number is marked "*" when it differs from the
// first column's by more than the seed-to-seed spread allows: a two-sample t-test at 5%
// (two-sided), |m_a - m_b| > t(df) * s_p * sqrt(1/n_a + 1/n_b), with the variance s_p^2 pooled
// over every column of two or more seeds (df = the sum of their n - 1; the variants are
// assumed equally noisy, so a column of one run is judged by the others' spread). Without any
// column of two or more seeds nothing is marked: one run per variant says nothing about noise.
//
// Rows: the config keys (flattened, "training.seed") whose values differ between the runs,
// then parameters (total and active, millions), tokens/s, final training loss, final
// validation loss and per domain, the balance at the end of training (load CV, max / mean,
// dropped fraction: summary.json's final_balance, or the last metrics when an older run has
// none), and I(expert; domain) averaged over the MoE layers where the run has analysis.json.
// Rows no run has a value for are left out.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe {

struct RunRecord {
  std::string dir;
  nlohmann::json config;    // config.json flattened: {"training.seed": 1, "num_experts_per_tok": 2}
  nlohmann::json summary;   // summary.json, or an empty object
  nlohmann::json analysis;  // analysis.json, or null
  std::vector<nlohmann::json> metrics;  // metrics.jsonl, one object per line
};

// Reads a run directory. A missing directory, a file in its place, or a directory without
// config.json and metrics.jsonl is an error of one line naming the directory.
RunRecord read_run(const std::string& dir);

struct CompareRow {
  std::string name;
  bool numeric = false;
  bool marked_ok = true;  // numeric rows that take the "*" test (not the parameter counts)
  int decimals = 3;
  std::vector<std::vector<double>> values;  // numeric: [column][run of the column] (NaN: none)
  std::vector<std::string> text;            // config keys: [column]
  std::vector<bool> marked;                 // numeric: [column], "*" against column 0
};

struct Comparison {
  std::vector<RunRecord> runs;
  std::vector<std::vector<size_t>> columns;  // indices into runs, one group per column
  std::vector<std::string> column_names;
  std::vector<std::string> differing_keys;  // flattened config keys whose values differ
  std::vector<CompareRow> rows;
  bool any_marks_possible = false;  // some column holds two or more seeds
};

// Reads and compares the runs (at least one; see the top of this file).
Comparison compare_runs(const std::vector<std::string>& dirs);

// Sets row.marked (see the top of this file); compare_runs does it for every numeric row.
void mark_against_first_column(CompareRow& row);

// A cell as shown: "3.1416", "3.1416 ± 0.0123", "-" (no value); "*" appended when marked.
std::string format_cell(const CompareRow& row, size_t column);

// The table for a terminal: one column per group of runs, a line per row, notes below.
std::string format_comparison(const Comparison& c);

// One self-contained HTML page (inline SVG, no script): the table, then the runs' curves
// overlaid (training loss, validation loss, aux loss, max / mean, load CV, dropped fraction)
// with a legend. write_compare_html writes it atomically and returns the number of charts.
std::string render_compare_html(const Comparison& c);
int write_compare_html(const Comparison& c, const std::string& path);

}  // namespace moe
