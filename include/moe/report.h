// report.html: one self-contained page per run (`moe report`, and `moe train` at the end),
// charts drawn as inline SVG generated here: no script, no stylesheet or font from elsewhere,
// so it opens offline and the same inputs give the same bytes.
//
// Inputs, all from the run directory, or from an analysis directory of a checkpoint (`moe analyze
// MODEL --out DIR`: analysis files only); missing ones leave their sections out:
//   metrics.jsonl           loss curves (task, load-balance, z), per-layer load heatmaps over
//                           training, dropped fraction, router entropy, load CV
//   analysis.json           `moe analyze`: expert x domain / token-class / co-activation
//                           heatmaps, mutual information per layer, top tokens per expert
//   analysis_random_router.json  `moe analyze`: the baseline of the MI, the same model with its
//                           router weights redrawn (preferred when present)
//   analysis_untrained.json `moe analyze --untrained`: a run's initial weights as the baseline
//   summary.json            the run's outcome, routing settings and final balance (at the top)
//   config.json             the run's config (top-k, when summary.json is missing)
//
// Every chart is an <svg class="chart" data-chart="NAME" data-marks="N"> whose N drawn marks
// (lines, cells, bars) carry class "mark"; tests/report_browser_test.py checks them.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "moe/dataset.h"

namespace moe {

struct ReportInputs {
  std::string title;                    // e.g. the run directory
  std::vector<nlohmann::json> metrics;  // metrics.jsonl, one object per line
  const nlohmann::json* summary = nullptr;
  const nlohmann::json* config = nullptr;  // config.json: top-k for the max/mean ceiling
  const nlohmann::json* analysis = nullptr;
  const nlohmann::json* baseline = nullptr;  // the baseline analysis
  bool baseline_untrained = false;  // the baseline is the initial weights, not a random router
};

std::string render_report_html(const ReportInputs& in);

// metrics.jsonl, one object per line; a torn last line (a killed run) is skipped, as --resume
// does. A missing file is an error naming it.
std::vector<nlohmann::json> read_metrics(const std::string& path);

// Reads the run directory's files and writes <run_dir>/report.html (atomically). A directory
// without metrics.jsonl must hold analysis.json (a checkpoint's analysis directory). Returns the
// path written and the number of charts drawn through `charts` (may be null).
std::string write_report_html(const std::string& run_dir, int* charts = nullptr);

// What `moe train` runs at the end: loads the saved run, analyses `max_windows` windows of the
// validation stream `valid` (tokenized with the run's tokenizer; <= 0: all) into analysis.json
// and its CSVs, then writes report.html. Returns the report's path.
std::string analyze_and_report(const std::string& run_dir, const TokenStream& valid,
                               int64_t max_windows);

}  // namespace moe
