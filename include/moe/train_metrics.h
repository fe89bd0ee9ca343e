// What a training run says about itself (trainer.h; the ViT trainer writes its lines and
// summary.json through the same writer):
//   metrics.jsonl   one JSON object per line: one per optimizer step (step_metrics, with the
//                   fields of add_routing_metrics and add_comm_metrics), one per validation
//                   (validation_metrics)
//   summary.json, report.md   the run's outcome (write_run_report)
// `moe report` and `moe compare` read these keys: keep them.
#pragma once

#include <cstdint>
#include <fstream>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "moe/trainer.h"

namespace moe {

struct CommStats;

// <dir>/metrics.jsonl, each line flushed as it is written (a killed run keeps its steps).
class MetricsWriter {
 public:
  // Starts the file afresh, or when resuming after step `resume_step` (>= 0) keeps the lines of
  // steps <= resume_step (a resumed run rewrites what came after; a torn last line is dropped).
  // Not enabled: writes nothing (the ranks other than 0).
  explicit MetricsWriter(const std::string& dir, int resume_step = -1, bool enabled = true);
  // A line that cannot be written (a full disk) is an error naming the file: the run stops
  // with its last checkpoint rather than train on with a silently truncated record.
  void write(const nlohmann::json& line);

 private:
  std::string path_;
  std::ofstream out_;
};

// A step line without its routing and communication fields.
nlohmann::json step_metrics(int step, const DeviceStepStats& st, int64_t tokens,
                            double tokens_per_s, double elapsed_s);

// Means over the MoE layers of one step (layers = 0 without MoE layers).
struct RoutingSummary {
  double balance = 0;  // max load / mean load (1 = perfect)
  double dropped = 0;  // dropped fraction
  double entropy = 0;  // router entropy (nats)
  int layers = 0;
};

// A step line's routing fields, from each MoE layer's metrics of the step's last micro-batch
// (no extra pass): the means (balance, dropped, router_entropy in nats, router_entropy_bits)
// and per MoE layer expert_load, layer_dropped, layer_entropy_bits, layer_load_cv,
// layer_max_over_mean and the layer's loss terms (coefficients applied) layer_lb_loss,
// layer_importance_loss, layer_z_loss. Nothing without MoE layers.
RoutingSummary add_routing_metrics(nlohmann::json& line, const StepDevice& device, int layers);

// The communication of all three communicators so far (bytes of the all-to-alls, seconds);
// zero without expert parallelism.
CommStats comm_totals(ParallelGroups* par);
// A step line's traffic and time of this rank (rank 0) under expert parallelism: all-to-all
// bytes of the step, seconds in collectives (waiting for peers included) and the rest.
void add_comm_metrics(nlohmann::json& line, const CommStats& before, const CommStats& after,
                      double step_seconds);

// The validation line: val_loss, val_ppl, val_tokens, val_loss_<domain>, and with MoE layers
// val_expert_load, val_dropped, val_load_cv (and val_selection_bias, [layer][expert] after the
// step, under aux-loss-free balancing).
nlohmann::json validation_metrics(int step, const EvalResult& e, const Transformer<float>& model);

// The model in words for the log, e.g. "2 layers, d=64, 4 experts of width 64, top-2, MoE
// every 1 layer(s), 0.12M parameters (0.07M active)".
std::string describe_model(const Transformer<float>& model);

// <dir>/summary.json, indented, atomically.
void write_summary(const std::string& dir, const nlohmann::json& summary);
// summary.json and report.md of a finished LM run: size, speed, losses per domain, the routing
// settings and the balance per MoE layer (of the final validation when there was one, else
// of the device's last micro-batch).
void write_run_report(const std::string& dir, const ModelConfig& cfg,
                      const Transformer<float>& model, const TrainResult& r,
                      int64_t tokens_per_step, const StepDevice& device);

}  // namespace moe
