#include "moe/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "moe/error.h"
#include "moe/hf_tokenizer.h"
#include "moe/optimizer.h"
#include "moe/routing_stats.h"
#include "moe/safetensors.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::string rng_to_string(const Rng::State& s) {
  uint64_t spare;
  std::memcpy(&spare, &s.spare_normal, sizeof spare);
  return fmt::format("{:016x} {:016x} {:016x} {:016x} {:016x} {}", s.s[0], s.s[1], s.s[2], s.s[3],
                     spare, s.has_spare ? 1 : 0);
}

Rng::State rng_from_string(const std::string& text, const std::string& where) {
  Rng::State s;
  std::istringstream in(text);
  uint64_t spare = 0;
  int has = 0;
  in >> std::hex >> s.s[0] >> s.s[1] >> s.s[2] >> s.s[3] >> spare >> std::dec >> has;
  MOE_REQUIRE(!in.fail(), "{}: metadata rng = \"{}\" is malformed", where, text);
  std::memcpy(&s.spare_normal, &spare, sizeof spare);
  s.has_spare = has != 0;
  return s;
}

int64_t metadata_int(const SafeTensorsFile& f, const std::string& key) {
  const std::string& v = f.metadata(key);
  try {
    size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw Error(fmt::format("{}: metadata {} = \"{}\" is not an integer", f.path(), key, v));
}

// Splits a [B, S+1] window batch into inputs and targets [B, S].
void split_windows(const int32_t* window, int B, int S, int32_t* inputs, int32_t* targets) {
  for (int b = 0; b < B; ++b) {
    const int32_t* w = window + static_cast<int64_t>(b) * (S + 1);
    std::copy_n(w, S, inputs + static_cast<int64_t>(b) * S);
    std::copy_n(w + 1, S, targets + static_cast<int64_t>(b) * S);
  }
}

std::string format_duration(double seconds) {
  const int s = static_cast<int>(std::lround(std::max(0.0, seconds)));
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  return fmt::format("{}m{:02}s", s / 60, s % 60);
}

struct RoutingSummary {
  double balance = 0;  // mean over MoE layers of max load / mean load (1 = perfect)
  double dropped = 0;  // mean dropped fraction
  double entropy = 0;  // mean router entropy (nats)
  int layers = 0;
};

// metrics_of(l): block l's MoeMetrics, or null for a dense block.
RoutingSummary routing_summary(int layers,
                               const std::function<const MoeMetrics*(int)>& metrics_of) {
  RoutingSummary r;
  for (int l = 0; l < layers; ++l) {
    const MoeMetrics* m = metrics_of(l);
    if (!m) continue;
    r.balance += m->load_max_over_mean;
    r.dropped += m->dropped_fraction;
    r.entropy += m->router_entropy;
    ++r.layers;
  }
  if (r.layers > 0) {
    r.balance /= r.layers;
    r.dropped /= r.layers;
    r.entropy /= r.layers;
  }
  return r;
}

class Checkpointer {
 public:
  // Under expert parallelism with W > 1 ranks each rank keeps its own optimizer state:
  // checkpoint-rank<r>-of-<W>.safetensors (whole weights + this rank's AdamW moments).
  explicit Checkpointer(std::string dir, int rank = 0, int world = 1)
      : dir_(std::move(dir)), rank_(rank), world_(world) {}
  std::string path() const {
    return world_ == 1 ? dir_ + "/checkpoint.safetensors"
                       : fmt::format("{}/checkpoint-rank{}-of-{}.safetensors", dir_, rank_, world_);
  }

  // Collective under expert parallelism (the experts are gathered first).
  void save(const ModelConfig& cfg, Transformer<float>& model, const AdamW<float>& opt, int step,
            const Rng& rng, const BatchSampler::State& sampler) const {
    model.gather_full_weights();
    const std::string config = model_config_to_json(cfg).dump();
    if (rank_ == 0) {
      // The weights alone, for eval, generate and export; before the checkpoint, so that a
      // checkpoint of step N means the weights of step N are written too (a process killed
      // between the two leaves newer weights, which --resume writes again identically).
      SafeTensorsWriter m;
      model.save_weights(m, DType::F32);
      m.set_metadata("format", "pt");
      m.set_metadata("config", config);
      m.write(dir_ + "/model.safetensors");
    }
    SafeTensorsWriter w;
    model.save_weights(w, DType::F32);
    opt.save(w);
    w.set_metadata("format", "moe-checkpoint");
    w.set_metadata("version", "1");
    w.set_metadata("config", config);
    w.set_metadata("step", std::to_string(step));
    w.set_metadata("rng", rng_to_string(rng.state()));
    w.set_metadata("sampler.epoch", std::to_string(sampler.epoch));
    w.set_metadata("sampler.cursor", std::to_string(sampler.cursor));
    w.write(path());
  }

  // Returns the step the checkpoint was taken after.
  int load(const ModelConfig& cfg, Transformer<float>& model, AdamW<float>& opt, Rng& rng,
           BatchSampler::State& sampler) const {
    const SafeTensorsFile f = SafeTensorsFile::open(path());
    MOE_REQUIRE(f.metadata().count("format") && f.metadata("format") == "moe-checkpoint",
                "{}: not a moe checkpoint (metadata format is missing or wrong)", f.path());
    MOE_REQUIRE(f.metadata("version") == "1",
                "{}: checkpoint version {} is not supported (expected 1)", f.path(),
                f.metadata("version"));
    // The model must be the same shape; training keys (steps, lr) may change on resume.
    nlohmann::json saved = nlohmann::json::parse(f.metadata("config"));
    nlohmann::json now = model_config_to_json(cfg);
    saved.erase("training");
    now.erase("training");
    for (auto it = now.begin(); it != now.end(); ++it)
      MOE_REQUIRE(saved.contains(it.key()) && saved[it.key()] == it.value(),
                  "{}: config key {} is {} in the checkpoint but {} now", f.path(), it.key(),
                  saved.contains(it.key()) ? saved[it.key()].dump() : "absent", it.value().dump());
    model.load_weights(f);
    opt.load(f);
    rng.set_state(rng_from_string(f.metadata("rng"), f.path()));
    sampler.epoch = static_cast<uint64_t>(metadata_int(f, "sampler.epoch"));
    sampler.cursor = static_cast<uint64_t>(metadata_int(f, "sampler.cursor"));
    return static_cast<int>(metadata_int(f, "step"));
  }

 private:
  std::string dir_;
  int rank_, world_;
};

// Keeps the metrics lines of steps <= step (a resumed run rewrites what came after).
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

class Progress {
 public:
  Progress(bool enabled, int total) : enabled_(enabled), tty_(isatty(2)), total_(total) {}
  void update(int step, const std::string& text) {
    if (!enabled_) return;
    if (tty_) {
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(static_cast<int64_t>(kWidth) * step / total_);
      fmt::print(stderr, "\r[{}{}] {}/{} {}\033[K", std::string(filled, '#'),
                 std::string(kWidth - filled, '.'), step, total_, text);
      std::fflush(stderr);
    } else if (step == total_ || step % std::max(1, total_ / 20) == 0) {
      fmt::print(stderr, "step {}/{} {}\n", step, total_, text);
    }
  }
  void line(const std::string& text) {
    if (tty_ && enabled_) fmt::print(stderr, "\r\033[K");
    fmt::print(stderr, "{}\n", text);
  }
  void finish() {
    if (tty_ && enabled_) fmt::print(stderr, "\n");
  }

 private:
  bool enabled_, tty_;
  int total_;
};

std::string describe_ffn(const ModelConfig& cfg) {
  if (cfg.num_local_experts == 0)
    return fmt::format("dense SwiGLU FFN of width {}", cfg.dense_width());
  return fmt::format("{} experts of width {}, top-{}, MoE every {} layer(s)", cfg.num_local_experts,
                     cfg.intermediate_size, cfg.moe.num_experts_per_tok, cfg.moe_every);
}

// Load CV, max / mean and dropped fraction per MoE layer at the end of training: over the final
// validation when there was one (the loads summed over every evaluated batch), else from the
// last step's last micro-batch.
struct FinalBalance {
  std::string source;
  std::vector<double> cv, max_over_mean, dropped;
};

FinalBalance final_balance(const EvalResult& e, int layers,
                           const std::function<const MoeMetrics*(int)>& metrics_of) {
  FinalBalance b;
  if (!e.expert_load.empty()) {
    b.source = "final validation";
    for (size_t l = 0; l < e.expert_load.size(); ++l) {
      const auto& load = e.expert_load[l];
      b.cv.push_back(load_cv(load.data(), static_cast<int>(load.size())));
      b.max_over_mean.push_back(load_max_over_mean(load.data(), static_cast<int>(load.size())));
      b.dropped.push_back(l < e.dropped_fraction.size() ? e.dropped_fraction[l] : 0.0);
    }
    return b;
  }
  b.source = "last training step";
  for (int l = 0; l < layers; ++l)
    if (const MoeMetrics* m = metrics_of(l)) {
      b.cv.push_back(m->load_cv);
      b.max_over_mean.push_back(m->load_max_over_mean);
      b.dropped.push_back(m->dropped_fraction);
    }
  return b;
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
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

void write_report(const std::string& dir, const ModelConfig& cfg, const Transformer<float>& model,
                  const TrainResult& r, int64_t tokens_per_step, const FinalBalance& balance) {
  nlohmann::json j{{"steps", r.steps},
                   {"wall_seconds", r.wall_seconds},
                   {"tokens_per_second", r.tokens_per_second},
                   {"tokens_per_step", tokens_per_step},
                   {"final_train_loss", r.final_train_loss},
                   {"parameters", model.num_parameters()},
                   {"active_parameters", model.active_parameters()},
                   {"forward_macs_per_token", model.forward_macs_per_token(cfg.training.seq_len)},
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
  std::string balance_md;
  if (!balance.cv.empty()) {
    j["final_balance"] = {{"source", balance.source},
                          {"load_cv", mean_of(balance.cv)},
                          {"max_over_mean", mean_of(balance.max_over_mean)},
                          {"dropped", mean_of(balance.dropped)},
                          {"layer_load_cv", balance.cv},
                          {"layer_max_over_mean", balance.max_over_mean},
                          {"layer_dropped", balance.dropped}};
    balance_md = fmt::format(
        "\nBalance at the end of training ({}):\n\n"
        "| MoE layer | load CV | max / mean | dropped |\n|---|---|---|---|\n",
        balance.source);
    for (size_t l = 0; l < balance.cv.size(); ++l)
      balance_md += fmt::format("| {} | {:.3f} | {:.2f} | {:.4f} |\n", l, balance.cv[l],
                                balance.max_over_mean[l], balance.dropped[l]);
    balance_md += fmt::format("| mean | {:.3f} | {:.2f} | {:.4f} |\n", mean_of(balance.cv),
                              mean_of(balance.max_over_mean), mean_of(balance.dropped));
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
  const std::string summary = j.dump(2) + "\n";
  write_file_atomic(dir + "/summary.json", summary.data(), summary.size());
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

}  // namespace

EvalResult evaluate(Transformer<float>& model, const TokenStream& valid, int batch, int seq_len,
                    int64_t max_windows, const WindowProgress& progress) {
  std::vector<int64_t> starts = validation_windows(valid, seq_len, max_windows);
  MOE_REQUIRE(!starts.empty(), "evaluate: the validation split is shorter than one window of {}",
              seq_len + 1);
  // Expert parallelism: W ranks take equal shares of every batch (so whole multiples of W).
  ParallelGroups* par = model.parallel_groups();
  const int W = par ? par->layout.world : 1, rank = par ? par->layout.rank : 0;
  if (W > 1) {
    MOE_REQUIRE(batch % W == 0 && static_cast<int64_t>(starts.size()) >= W,
                "evaluate: batch {} and {} windows do not split over {} ranks", batch,
                starts.size(), W);
    starts.resize(starts.size() / W * W);
  }
  std::vector<int32_t> inputs(static_cast<size_t>(batch) * seq_len);
  std::vector<int32_t> targets(inputs.size());
  std::vector<uint8_t> target_domains(inputs.size());
  std::vector<double> dom_sum(valid.domain_names.size(), 0.0);
  std::vector<int64_t> dom_count(valid.domain_names.size(), 0);
  double total = 0;
  int64_t count = 0;
  std::vector<std::vector<int64_t>> load;                // [MoE layer][expert]
  std::vector<std::pair<int64_t, int64_t>> drop_assign;  // [MoE layer] dropped, assignments
  for (size_t w0 = 0; w0 < starts.size(); w0 += batch) {
    const int Bg = static_cast<int>(std::min<size_t>(batch, starts.size() - w0));
    const int B = Bg / W, b0 = rank * B;  // this rank's windows of the batch
    for (int b = 0; b < B; ++b) {
      const int64_t s0 = starts[w0 + b0 + b];
      valid.read(s0, seq_len, inputs.data() + static_cast<int64_t>(b) * seq_len, nullptr);
      valid.read(s0 + 1, seq_len, targets.data() + static_cast<int64_t>(b) * seq_len,
                 target_domains.data() + static_cast<int64_t>(b) * seq_len);
    }
    model.forward(inputs.data(), targets.data(), B, seq_len, false);
    if (progress) progress(static_cast<int64_t>(w0 + Bg), static_cast<int64_t>(starts.size()));
    for (int l = 0, m = 0; l < model.num_layers(); ++l)
      if (const MoeMetrics* metrics = model.moe_metrics(l)) {
        const MoeMetrics& mm = *metrics;  // of the whole batch, also under expert parallelism
        if (load.size() <= static_cast<size_t>(m)) {
          load.emplace_back(mm.primary_per_expert.size(), 0);
          drop_assign.emplace_back(0, 0);
        }
        for (size_t e = 0; e < mm.primary_per_expert.size(); ++e)
          load[m][e] += mm.primary_per_expert[e];
        drop_assign[m].first += mm.dropped;
        drop_assign[m].second += mm.assignments;
        ++m;
      }
    const auto& rows = model.row_losses();
    for (int b = 0; b < B; ++b) {
      for (int s = 0; s < seq_len; ++s) {
        const double loss = rows[static_cast<int64_t>(b) * seq_len + s];
        const uint8_t dom = target_domains[static_cast<int64_t>(b) * seq_len + s];
        total += loss;
        ++count;
        dom_sum[dom] += loss;
        ++dom_count[dom];
      }
    }
  }
  if (W > 1) {
    par->world->allreduce_sum(&total, 1);
    par->world->allreduce_sum(&count, 1);
    par->world->allreduce_sum(dom_sum.data(), static_cast<int64_t>(dom_sum.size()));
    par->world->allreduce_sum(dom_count.data(), static_cast<int64_t>(dom_count.size()));
  }
  EvalResult r;
  r.loss = total / count;
  r.tokens = count;
  r.expert_load = std::move(load);
  for (const auto& [dropped, assignments] : drop_assign)
    r.dropped_fraction.push_back(moe::dropped_fraction(dropped, assignments));
  for (size_t d = 0; d < dom_sum.size(); ++d)
    if (dom_count[d] > 0)
      r.per_domain[valid.domain_names[d]] = {dom_sum[d] / dom_count[d], dom_count[d]};
  return r;
}

// Global gradient norm under expert parallelism, and clipping by it (torch
// clip_grad_norm_ semantics): after allreduce_gradients the replicated tensors are equal on
// every rank and each expert shard lives once per expert group.
double clip_parallel(Transformer<float>& model, double max_norm) {
  double sq[2] = {0, 0};  // replicated, expert shards
  for (const auto& p : model.parameters()) {
    double s = 0;
    const int64_t n = p.shape.numel();
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(p.grad[i]) * p.grad[i];
    sq[Transformer<float>::is_expert_param(p.name) ? 1 : 0] += s;
  }
  model.parallel_groups()->expert_group->allreduce_sum(&sq[1], 1);
  const double norm = std::sqrt(sq[0] + sq[1]);
  const double coef = max_norm / (norm + 1e-6);
  if (max_norm > 0 && coef < 1.0) {
    const float c = static_cast<float>(coef);
    for (auto& p : model.parameters())
      for (int64_t i = 0, n = p.shape.numel(); i < n; ++i) p.grad[i] *= c;
  }
  return norm;
}

// The communication of all three communicators so far (bytes of the all-to-alls, seconds).
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

namespace {

// have: how many of the `world` ranks have their checkpoint at `path` (this rank's).
void refuse_run_directory(const std::string& path, bool resume, int64_t have, int world) {
  if (!resume && have > 0)
    throw Error(fmt::format(
        "{}: a checkpoint exists; pass --resume to continue it or choose another --out", path));
  if (resume && have < world)
    throw Error(fmt::format("{}: no checkpoint to resume from{}", path,
                            world > 1 ? " (for every rank)" : ""));
}

}  // namespace

void check_run_directory(const std::string& out_dir, bool resume) {
  const std::string path = Checkpointer(out_dir).path();
  refuse_run_directory(path, resume, fs::exists(path) ? 1 : 0, 1);
}

TrainResult train(const ModelConfig& cfg_in, const TokenStream& train_data,
                  const TokenStream& valid_data, const TrainOptions& opt) {
  ModelConfig cfg = cfg_in;
  cfg.sync_moe();
  cfg.validate("config");
  const TrainConfig& t = cfg.training;
  // Expert parallelism: rank 0 leads (progress, logs, run files); every decision that could
  // stop a rank is taken from values all ranks share, so no rank is left in a collective.
  ParallelGroups* par = opt.parallel;
  const int W = par ? par->layout.world : 1, rank = par ? par->layout.rank : 0;
  const bool lead = rank == 0;
  if (par) {
    const std::string bad =
        ParallelLayout::check(W, par->layout.expert_parallel, cfg.num_local_experts);
    MOE_REQUIRE(bad.empty(), "{}", bad);
    MOE_REQUIRE(t.batch_size % W == 0,
                "config: training.batch_size = {} does not split over the {} processes (make it a "
                "multiple of mpirun -np)",
                t.batch_size, W);
    // The same config on every rank: compare a hash of its JSON.
    const std::string text = model_config_to_json(cfg).dump();
    const int64_t mine = static_cast<int64_t>(std::hash<std::string>{}(text)&0x7fffffffffff);
    std::vector<int64_t> all(static_cast<size_t>(W));
    par->world->allgather(&mine, sizeof(mine), all.data());
    for (int r = 1; r < W; ++r)
      MOE_REQUIRE(all[r] == all[0],
                  "config differs between ranks: rank {} was launched with another config.json "
                  "or other flags than rank 0",
                  r);
  }
  Progress progress(opt.progress && lead, t.max_steps);
  auto log = [&](const std::string& s) {
    if (!lead) return;
    if (opt.log)
      opt.log(s);
    else
      progress.line(s);
  };

  // The device is built (and refuses what it cannot run) before anything is written.
  MOE_REQUIRE(!opt.device || !par,
              "{}: a training device (--device) cannot be combined with expert parallelism",
              opt.out_dir);
  std::unique_ptr<StepDevice> device = opt.device ? opt.device(cfg) : nullptr;

  fs::create_directories(opt.out_dir);
  const Checkpointer ckpt(opt.out_dir, rank, W);
  const std::string metrics_path = opt.out_dir + "/metrics.jsonl";
  int64_t have_checkpoint = fs::exists(ckpt.path()) ? 1 : 0;
  if (par) par->world->allreduce_sum(&have_checkpoint, 1);
  refuse_run_directory(ckpt.path(), opt.resume, have_checkpoint, W);

  Transformer<float> model(cfg);
  Rng rng(t.seed);
  model.init_weights(rng);
  if (par) model.enable_expert_parallel(*par);
  AdamW<float> adam(model.parameters(), t);
  BatchSampler sampler(train_data, t.batch_size, t.seq_len, t.seed);
  BatchSampler::State sampler_state = sampler.state();
  int step = 0;
  if (opt.resume) {
    step = ckpt.load(cfg, model, adam, rng, sampler_state);
    // Nothing left to train: refused before anything is written, so that the finished run's
    // metrics, summary and report stay as they are.
    if (step == t.max_steps)
      throw Error(fmt::format(
          "{}: already finished at step {} of {}; nothing to resume (raise --steps to train on)",
          opt.out_dir, step, t.max_steps));
    if (step > t.max_steps)
      throw Error(
          fmt::format("{}: the checkpoint is at step {}, past max_steps = {}; nothing to "
                      "resume",
                      opt.out_dir, step, t.max_steps));
    if (opt.stop_after > 0 && step >= opt.stop_after)
      throw Error(
          fmt::format("{}: the checkpoint is at step {} already; nothing to resume with "
                      "--stop-after {}",
                      opt.out_dir, step, opt.stop_after));
    sampler.restore(sampler_state);
    if (lead) truncate_metrics(metrics_path, step);
    log(fmt::format("resumed {} at step {}", ckpt.path(), step));
  } else if (lead) {
    std::error_code ec;
    fs::remove(metrics_path, ec);
  }
  if (device) {
    device->load(model, adam);
    log(fmt::format("training steps run on {}", device->describe()));
  }
  if (lead) save_model_config(cfg, opt.out_dir + "/config.json");
  // A Hugging Face tokenizer.json stays one; any other tokenizer file is a sentencepiece model.
  const std::string tokenizer_copy =
      opt.out_dir +
      (opt.tokenizer_path.ends_with(".json") ? "/tokenizer.json" : "/tokenizer.model");
  if (lead && !opt.tokenizer_path.empty() && opt.tokenizer_path != tokenizer_copy) {
    fs::copy_file(opt.tokenizer_path, tokenizer_copy, fs::copy_options::overwrite_existing);
    // A tokenizer.json's BOS/EOS names live in the tokenizer_config.json beside it.
    const fs::path sibling = fs::path(opt.tokenizer_path).parent_path() / "tokenizer_config.json";
    if (opt.tokenizer_path.ends_with(".json") && fs::exists(sibling))
      fs::copy_file(sibling, opt.out_dir + "/tokenizer_config.json",
                    fs::copy_options::overwrite_existing);
  }

  const int B = t.batch_size, S = t.seq_len, A = t.grad_accum_steps;
  const int64_t tokens_per_step = static_cast<int64_t>(A) * B * S;
  log(
      fmt::format("model: {} layers, d={}, {}, {:.2f}M parameters ({:.2f}M active), {} "
                  "tokens/step",
                  cfg.num_hidden_layers, cfg.hidden_size, describe_ffn(cfg),
                  model.num_parameters() / 1e6, model.active_parameters() / 1e6, tokens_per_step));

  std::vector<int32_t> window(static_cast<size_t>(B) * (S + 1));
  std::vector<uint8_t> domains(window.size());
  std::vector<int32_t> inputs(static_cast<size_t>(B) * S), targets(inputs.size());
  // With a device: the inputs and targets of all A micro-batches of a step, [A, B, S].
  std::vector<int32_t> step_inputs(device ? inputs.size() * A : 0),
      step_targets(step_inputs.size());
  auto metrics_of = [&](int l) { return device ? device->moe_metrics(l) : model.moe_metrics(l); };
  std::ofstream metrics;
  if (lead) {
    metrics.open(metrics_path, std::ios::app);
    MOE_REQUIRE(metrics.good(), "{}: cannot open for writing", metrics_path);
  }
  // Under expert parallelism this rank's sequences of every batch: rows [b0, b0 + Bl).
  const int Bl = B / W, b0 = rank * Bl;

  const int last_step = opt.stop_after > 0 ? std::min(opt.stop_after, t.max_steps) : t.max_steps;
  const auto start = Clock::now();
  const int first_step = step;
  TrainResult result;
  int last_saved = opt.resume ? step : -1;
  // The device's state into the CPU model and AdamW, once per step however many readers follow.
  int device_stored = device ? step : -1;
  auto store_device = [&] {
    if (device && device_stored != step) {
      device->store(model, adam);
      device_stored = step;
    }
  };
  auto save = [&] {
    store_device();
    ckpt.save(cfg, model, adam, step, rng, sampler.state());
    last_saved = step;
  };
  auto run_eval = [&] {
    store_device();
    const EvalResult e = evaluate(
        model, valid_data, B, S, t.eval_batches > 0 ? static_cast<int64_t>(t.eval_batches) * B : 0);
    nlohmann::json j{{"step", step},
                     {"val_loss", e.loss},
                     {"val_ppl", std::exp(e.loss)},
                     {"val_tokens", e.tokens}};
    for (const auto& [name, v] : e.per_domain) j["val_loss_" + name] = v.first;
    if (!e.expert_load.empty()) {
      j["val_expert_load"] = e.expert_load;
      j["val_dropped"] = e.dropped_fraction;
      nlohmann::json cv = nlohmann::json::array();
      for (const auto& l : e.expert_load)
        cv.push_back(load_cv(l.data(), static_cast<int>(l.size())));
      j["val_load_cv"] = cv;
      // Aux-loss-free balancing: each MoE layer's selection bias after the step, [layer][expert].
      if (cfg.moe.use_selection_bias) j["val_selection_bias"] = selection_biases(model);
    }
    if (lead) metrics << j.dump() << "\n" << std::flush;
    log(fmt::format("step {}: validation loss {:.4f} (perplexity {:.1f}) over {} tokens", step,
                    e.loss, std::exp(e.loss), e.tokens));
    return e;
  };
  auto fail_nonfinite = [&](const std::string& what) {
    progress.finish();
    throw Error(fmt::format("{}: step {}: {}; training stopped, {}", opt.out_dir, step + 1, what,
                            last_saved >= 0 ? fmt::format("the checkpoint of step {} in {} is kept",
                                                          last_saved, ckpt.path())
                                            : std::string("no checkpoint was written yet")));
  };

  double loss_avg = 0;
  while (step < last_step) {
    const CommStats comm0 = comm_totals(par);
    const auto step_start = Clock::now();
    double loss = 0, ce = 0, aux = 0, norm = 0, lr = 0;
    if (device) {
      const size_t n = inputs.size();
      for (int a = 0; a < A; ++a) {
        sampler.next(window.data(), domains.data());
        split_windows(window.data(), B, S, step_inputs.data() + a * n, step_targets.data() + a * n);
      }
      const DeviceStepStats st = device->step(step_inputs.data(), step_targets.data(), B, S, step);
      if (!std::isfinite(st.loss))
        fail_nonfinite(fmt::format("loss is {} on {}", st.loss, device->describe()));
      if (!std::isfinite(st.grad_norm))
        fail_nonfinite(fmt::format("a gradient holds NaN or inf (global norm {}) on {}",
                                   st.grad_norm, device->describe()));
      loss = st.loss;
      ce = st.ce;
      aux = st.aux;
      norm = st.grad_norm;
      lr = st.lr;
    } else {
      model.zero_grad();
      for (int a = 0; a < A; ++a) {
        sampler.next(window.data(), domains.data());
        split_windows(window.data(), B, S, inputs.data(), targets.data());
        const int64_t off = static_cast<int64_t>(b0) * S;
        double l = model.forward(inputs.data() + off, targets.data() + off, Bl, S, true, &rng);
        double ce_scale = 1.0;
        if (W > 1) {
          // One mean over the whole batch: the ranks' cross-entropy sums over all their targets.
          double sums[2] = {model.ce_loss() * model.counted_targets(),
                            static_cast<double>(model.counted_targets())};
          par->world->allreduce_sum(sums, 2);
          ce_scale = sums[1] > 0 ? model.counted_targets() / sums[1] : 0.0;
          l = (sums[1] > 0 ? sums[0] / sums[1] : 0.0) + model.aux_loss();
        }
        if (!std::isfinite(l)) {
          fail_nonfinite(fmt::format("loss is {} (first non-finite values: {})", l,
                                     model.first_nonfinite_activation()));
        }
        model.backward(ce_scale / A, 1.0 / A);
        loss += l / A;
        ce += (l - model.aux_loss()) / A;
        aux += model.aux_loss() / A;
      }
      model.allreduce_gradients();
      const auto* bad = first_nonfinite_grad(model.parameters());
      int64_t bad_ranks = bad ? 1 : 0;
      if (W > 1) par->world->allreduce_sum(&bad_ranks, 1);
      if (bad_ranks > 0)
        fail_nonfinite(bad ? fmt::format("the gradient of {} holds NaN or inf", bad->name)
                           : std::string("a gradient on another rank holds NaN or inf"));
      norm = W > 1             ? clip_parallel(model, t.grad_clip)
             : t.grad_clip > 0 ? clip_grad_norm(model.parameters(), t.grad_clip)
                               : global_grad_norm(model.parameters());
      lr = learning_rate_at(t, step);
      adam.step(lr);
      model.update_selection_bias();
    }
    ++step;

    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double tok_s = (step - first_step) * tokens_per_step / std::max(elapsed, 1e-9);
    const RoutingSummary r = routing_summary(model.num_layers(), metrics_of);
    loss_avg = step - first_step == 1 ? loss : 0.9 * loss_avg + 0.1 * loss;
    nlohmann::json j{{"step", step},
                     {"loss", loss},
                     {"ce", ce},
                     {"aux", aux},
                     {"lr", lr},
                     {"grad_norm", norm},
                     {"tokens", static_cast<int64_t>(step) * tokens_per_step},
                     {"tokens_per_s", tok_s},
                     {"elapsed_s", elapsed}};
    if (par) {
      // This rank's (rank 0's) traffic and time: all-to-all bytes of the step, seconds in
      // collectives (waiting for peers included) and the rest of the step.
      const CommStats comm1 = comm_totals(par);
      const double step_s = std::chrono::duration<double>(Clock::now() - step_start).count();
      j["a2a_sent_bytes"] = comm1.alltoall_bytes_sent - comm0.alltoall_bytes_sent;
      j["a2a_recv_bytes"] = comm1.alltoall_bytes_received - comm0.alltoall_bytes_received;
      j["allreduce_bytes"] = comm1.other_bytes - comm0.other_bytes;
      j["comm_s"] = comm1.seconds - comm0.seconds;
      j["compute_s"] = step_s - (comm1.seconds - comm0.seconds);
      j["step_s"] = step_s;
    }
    if (r.layers > 0) {
      j["balance"] = r.balance;
      j["dropped"] = r.dropped;
      j["router_entropy"] = r.entropy;  // nats, as it always was
      j["router_entropy_bits"] = r.entropy / std::log(2.0);
      // Per MoE layer, from the layer's own metrics of the last micro-batch (no extra pass):
      // loads, dropped fraction, mean per-token router entropy (bits), CV and max/mean of the
      // load, and the layer's loss terms (coefficients applied; "aux" is their sum).
      nlohmann::json loads = nlohmann::json::array(), drop = loads, ent = loads, cv = loads,
                     mx = loads, lb = loads, imp = loads, zl = loads;
      for (int l = 0; l < model.num_layers(); ++l)
        if (const MoeMetrics* m = metrics_of(l)) {
          const MoeMetrics& mm = *m;
          loads.push_back(mm.primary_per_expert);
          drop.push_back(mm.dropped_fraction);
          ent.push_back(mm.router_entropy / std::log(2.0));
          cv.push_back(mm.load_cv);
          mx.push_back(mm.load_max_over_mean);
          lb.push_back(mm.load_balance_loss);
          imp.push_back(mm.importance_loss);
          zl.push_back(mm.z_loss);
        }
      j["expert_load"] = loads;
      j["layer_dropped"] = drop;
      j["layer_entropy_bits"] = ent;
      j["layer_load_cv"] = cv;
      j["layer_max_over_mean"] = mx;
      j["layer_lb_loss"] = lb;
      j["layer_importance_loss"] = imp;
      j["layer_z_loss"] = zl;
    }
    if (lead) metrics << j.dump() << "\n" << std::flush;
    const double eta = (last_step - step) * elapsed / std::max(1, step - first_step);
    progress.update(
        step, fmt::format("loss {:.4f} aux {:.4f} {:.0f} tok/s{} ETA {}", loss_avg, aux, tok_s,
                          r.layers > 0 ? fmt::format(" bal {:.2f}", r.balance) : "",
                          format_duration(eta)));
    result.final_train_loss = loss;

    const bool end = step == last_step;
    if ((t.eval_every > 0 && step % t.eval_every == 0) || (end && step == t.max_steps)) {
      result.final_eval = run_eval();
    }
    if (t.checkpoint_every > 0 && step % t.checkpoint_every == 0 && !end) save();
  }
  progress.finish();
  result.steps = step;
  result.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.tokens_per_second =
      (step - first_step) * tokens_per_step / std::max(result.wall_seconds, 1e-9);
  if (lead)
    write_report(opt.out_dir, cfg, model, result, tokens_per_step,
                 final_balance(result.final_eval, model.num_layers(), metrics_of));
  // The last checkpoint comes after the report: a checkpoint of the last step means the run's
  // files are complete, and a run killed before it redoes its last steps on --resume.
  if (last_saved != step) save();
  return result;
}

LoadedRun load_run(const std::string& dir) {
  LoadedRun run;
  run.config = load_model_config(dir + "/config.json");
  run.model = std::make_unique<Transformer<float>>(run.config);
  run.model->load_weights(SafeTensorsFile::open(dir + "/model.safetensors"));
  if (run.config.training.tokenizer == "byte") {
    run.tokenizer = make_byte_tokenizer();
  } else if (run.config.training.tokenizer == "sentencepiece") {
    run.tokenizer = load_sentencepiece(dir + "/tokenizer.model");
  } else {  // a tokenizer file given to `moe train --tokenizer`: its copy in the run
    run.tokenizer = load_tokenizer_dir(dir);
  }
  MOE_REQUIRE(run.tokenizer->vocab_size() <= run.config.vocab_size,
              "{}/config.json: vocab_size = {} is smaller than the tokenizer's {} ({})", dir,
              run.config.vocab_size, run.tokenizer->vocab_size(), run.tokenizer->description());
  return run;
}

}  // namespace moe
