// The metrics of a training run (train_metrics.h): metrics.jsonl lines, summary.json and
// report.md.
#include "moe/train_metrics.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/communicator.h"
#include "moe/error.h"
#include "moe/routing_stats.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

// Keeps the lines of steps <= step.
void truncate_metrics(const std::string& path, int step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.value("step", 0) <= step) kept += line + "\n";
    } catch (const nlohmann::json::parse_error&) {
      // A torn last line from a crash: drop it.
    }
  }
  write_file_atomic(path, kept.data(), kept.size());
}

// The selection bias (aux-loss-free balancing) of every MoE layer, [MoE layer][expert].
nlohmann::json selection_biases(const Transformer<float>& model) {
  nlohmann::json out = nlohmann::json::array();
  for (int l = 0; l < model.num_layers(); ++l) {
    if (const auto* ep = model.expert_parallel_layer(l))  // the one being updated
      out.push_back(ep->selection_bias());
    else if (const auto* m = model.moe_layer(l))
      out.push_back(m->selection_bias());
  }
  return out;
}

std::string describe_ffn(const ModelConfig& cfg) {
  if (cfg.num_local_experts == 0)
    return fmt::format("dense SwiGLU FFN of width {}", cfg.dense_width());
  return fmt::format("{} experts of width {}, top-{}, MoE every {} layer(s)", cfg.num_local_experts,
                     cfg.intermediate_size, cfg.moe.num_experts_per_tok, cfg.moe_every);
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

}  // namespace

MetricsWriter::MetricsWriter(const std::string& dir, int resume_step, bool enabled) {
  if (!enabled) return;
  path_ = dir + "/metrics.jsonl";
  if (resume_step >= 0) truncate_metrics(path_, resume_step);
  out_.open(path_, resume_step >= 0 ? std::ios::app : std::ios::trunc);
  MOE_REQUIRE(out_.good(), "{}: cannot open for writing", path_);
}

void MetricsWriter::write(const nlohmann::json& line) {
  if (!out_.is_open()) return;
  out_ << line.dump() << "\n" << std::flush;
  MOE_REQUIRE(out_.good(), "{}: cannot write (disk full?); the last checkpoint stays", path_);
}

nlohmann::json step_metrics(int step, const DeviceStepStats& st, int64_t tokens,
                            double tokens_per_s, double elapsed_s) {
  return {{"step", step},          {"loss", st.loss},
          {"ce", st.ce},           {"aux", st.aux},
          {"lr", st.lr},           {"grad_norm", st.grad_norm},
          {"tokens", tokens},      {"tokens_per_s", tokens_per_s},
          {"elapsed_s", elapsed_s}};
}

RoutingSummary add_routing_metrics(nlohmann::json& line, const StepDevice& device, int layers) {
  RoutingSummary r;
  nlohmann::json loads = nlohmann::json::array(), drop = loads, ent = loads, cv = loads, mx = loads,
                 lb = loads, imp = loads, zl = loads;
  for (int l = 0; l < layers; ++l)
    if (const MoeMetrics* m = device.moe_metrics(l)) {
      r.balance += m->load_max_over_mean;
      r.dropped += m->dropped_fraction;
      r.entropy += m->router_entropy;
      ++r.layers;
      loads.push_back(m->primary_per_expert);
      drop.push_back(m->dropped_fraction);
      ent.push_back(m->router_entropy / std::log(2.0));
      cv.push_back(m->load_cv);
      mx.push_back(m->load_max_over_mean);
      lb.push_back(m->load_balance_loss);
      imp.push_back(m->importance_loss);
      zl.push_back(m->z_loss);
    }
  if (r.layers == 0) return r;
  r.balance /= r.layers;
  r.dropped /= r.layers;
  r.entropy /= r.layers;
  line["balance"] = r.balance;
  line["dropped"] = r.dropped;
  line["router_entropy"] = r.entropy;  // nats, as it always was
  line["router_entropy_bits"] = r.entropy / std::log(2.0);
  line["expert_load"] = loads;
  line["layer_dropped"] = drop;
  line["layer_entropy_bits"] = ent;
  line["layer_load_cv"] = cv;
  line["layer_max_over_mean"] = mx;
  line["layer_lb_loss"] = lb;
  line["layer_importance_loss"] = imp;
  line["layer_z_loss"] = zl;
  return r;
}

CommStats comm_totals(ParallelGroups* par) {
  CommStats total;
  if (!par) return total;
  for (Communicator* c : {par->world.get(), par->expert_group.get(), par->expert_replicas.get()}) {
    total.alltoall_bytes_sent += c->stats().alltoall_bytes_sent;
    total.alltoall_bytes_received += c->stats().alltoall_bytes_received;
    total.other_bytes += c->stats().other_bytes;
    total.seconds += c->stats().seconds;
  }
  return total;
}

void add_comm_metrics(nlohmann::json& line, const CommStats& before, const CommStats& after,
                      double step_seconds) {
  line["a2a_sent_bytes"] = after.alltoall_bytes_sent - before.alltoall_bytes_sent;
  line["a2a_recv_bytes"] = after.alltoall_bytes_received - before.alltoall_bytes_received;
  line["allreduce_bytes"] = after.other_bytes - before.other_bytes;
  line["comm_s"] = after.seconds - before.seconds;
  line["compute_s"] = step_seconds - (after.seconds - before.seconds);
  line["step_s"] = step_seconds;
}

nlohmann::json validation_metrics(int step, const EvalResult& e, const Transformer<float>& model) {
  nlohmann::json j{{"step", step},
                   {"val_loss", e.loss},
                   {"val_ppl", std::exp(e.loss)},
                   {"val_tokens", e.tokens}};
  for (const auto& [name, v] : e.per_domain) j["val_loss_" + name] = v.first;
  if (!e.expert_load.empty()) {
    j["val_expert_load"] = e.expert_load;
    j["val_dropped"] = e.dropped_fraction;
    nlohmann::json cv = nlohmann::json::array();
    for (const auto& l : e.expert_load) cv.push_back(load_cv(l.data(), static_cast<int>(l.size())));
    j["val_load_cv"] = cv;
    if (model.config().moe.use_selection_bias) j["val_selection_bias"] = selection_biases(model);
  }
  return j;
}

std::string describe_model(const Transformer<float>& model) {
  const ModelConfig& cfg = model.config();
  return fmt::format("{} layers, d={}, {}, {:.2f}M parameters ({:.2f}M active), compute {}",
                     cfg.num_hidden_layers, cfg.hidden_size, describe_ffn(cfg),
                     model.num_parameters() / 1e6, model.active_parameters() / 1e6,
                     compute_dtype_name(cfg.moe.compute_dtype));
}

void write_summary(const std::string& dir, const nlohmann::json& summary) {
  const std::string text = summary.dump(2) + "\n";
  write_file_atomic(dir + "/summary.json", text.data(), text.size());
}

void write_run_report(const std::string& dir, const ModelConfig& cfg,
                      const Transformer<float>& model, const TrainResult& r,
                      int64_t tokens_per_step, const StepDevice& device) {
  nlohmann::json j{{"steps", r.steps},
                   {"wall_seconds", r.wall_seconds},
                   {"tokens_per_second", r.tokens_per_second},
                   {"tokens_per_step", tokens_per_step},
                   {"final_train_loss", r.final_train_loss},
                   {"parameters", model.num_parameters()},
                   {"active_parameters", model.active_parameters()},
                   {"forward_macs_per_token", model.forward_macs_per_token(cfg.training.seq_len)},
                   {"compute_dtype", compute_dtype_name(cfg.moe.compute_dtype)},
                   {"num_local_experts", cfg.num_local_experts},
                   {"num_experts_per_tok", cfg.moe.num_experts_per_tok}};
  // The routing settings: the MoE layer's keys as config.json names them, and which layers
  // are MoE.
  std::string routing;
  if (cfg.num_local_experts > 0) {
    nlohmann::json rs;
    moe_config_to_json(cfg.moe, rs);
    rs.erase("hidden_size");
    rs["moe_every"] = cfg.moe_every;
    j["routing"] = rs;
    for (const auto& [key, v] : rs.items())
      routing += fmt::format("{}{} = {}", routing.empty() ? "" : ", ", key,
                             v.is_string() ? v.get<std::string>() : v.dump());
  }
  // Load CV, max / mean and dropped fraction per MoE layer at the end: over the final
  // validation when there was one (the loads summed over every evaluated batch), else of the
  // last step's last micro-batch.
  const EvalResult& e = r.final_eval;
  const std::string source = e.expert_load.empty() ? "last training step" : "final validation";
  std::vector<double> cv, mx, dropped;
  for (size_t l = 0; l < e.expert_load.size(); ++l) {
    const auto& load = e.expert_load[l];
    cv.push_back(load_cv(load.data(), static_cast<int>(load.size())));
    mx.push_back(load_max_over_mean(load.data(), static_cast<int>(load.size())));
    dropped.push_back(l < e.dropped_fraction.size() ? e.dropped_fraction[l] : 0.0);
  }
  for (int l = 0; e.expert_load.empty() && l < model.num_layers(); ++l)
    if (const MoeMetrics* m = device.moe_metrics(l)) {
      cv.push_back(m->load_cv);
      mx.push_back(m->load_max_over_mean);
      dropped.push_back(m->dropped_fraction);
    }
  std::string balance_md;
  if (!cv.empty()) {
    j["final_balance"] = {{"source", source},
                          {"load_cv", mean_of(cv)},
                          {"max_over_mean", mean_of(mx)},
                          {"dropped", mean_of(dropped)},
                          {"layer_load_cv", cv},
                          {"layer_max_over_mean", mx},
                          {"layer_dropped", dropped}};
    balance_md = fmt::format(
        "\nBalance at the end of training ({}):\n\n"
        "| MoE layer | load CV | max / mean | dropped |\n|---|---|---|---|\n",
        source);
    for (size_t l = 0; l < cv.size(); ++l)
      balance_md += fmt::format("| {} | {:.3f} | {:.2f} | {:.4f} |\n", l, cv[l], mx[l], dropped[l]);
    balance_md += fmt::format("| mean | {:.3f} | {:.2f} | {:.4f} |\n", mean_of(cv), mean_of(mx),
                              mean_of(dropped));
  }
  std::string domains;
  if (r.final_eval.tokens > 0) {
    j["val_loss"] = r.final_eval.loss;
    j["val_ppl"] = std::exp(r.final_eval.loss);
    for (const auto& [name, v] : r.final_eval.per_domain) {
      j["val_loss_per_domain"][name] = v.first;
      domains += fmt::format("| {} | {:.4f} | {:.1f} | {} |\n", name, v.first, std::exp(v.first),
                             v.second);
    }
  }
  write_summary(dir, j);
  std::string md = fmt::format(
      "# Training run `{}`\n\n"
      "- model: {} layers, hidden {}, {}, {:.2f}M parameters, "
      "{:.2f}M active per token\n"
      "- steps: {} of {} tokens, wall {:.1f} s, {:.0f} tokens/s\n"
      "- final training loss: {:.4f}\n{}",
      dir, cfg.num_hidden_layers, cfg.hidden_size, describe_ffn(cfg), model.num_parameters() / 1e6,
      model.active_parameters() / 1e6, r.steps, tokens_per_step, r.wall_seconds,
      r.tokens_per_second, r.final_train_loss,
      routing.empty() ? std::string() : fmt::format("- routing: {}\n", routing));
  if (r.final_eval.tokens > 0)
    md += fmt::format(
        "- validation loss: {:.4f} (perplexity {:.1f}) over {} tokens\n\n"
        "| domain | loss | perplexity | tokens |\n|---|---|---|---|\n{}",
        r.final_eval.loss, std::exp(r.final_eval.loss), r.final_eval.tokens, domains);
  md += balance_md;
  md +=
      "\nPer-step figures (loss, aux loss, learning rate, expert load per layer) are in "
      "metrics.jsonl.\n";
  write_file_atomic(dir + "/report.md", md.data(), md.size());
}

}  // namespace moe
