// The training loop (trainer.h): check the config, build or resume, make the step device, then
// per step {batch, device->step, metrics line, evaluation, checkpoint}, and the run's report.
#include "moe/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/input_file.h"
#include "moe/checkpoint.h"
#include "moe/communicator.h"
#include "moe/error.h"
#include "moe/hf_tokenizer.h"
#include "moe/routing_stats.h"
#include "moe/safetensors.h"
#include "moe/train_metrics.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The inputs and targets [A, B, S] of a step's A micro-batches, split from the sampler's
// [B, S+1] windows.
struct StepBatch {
  StepBatch(int micro_batches, int batch, int seq_len)
      : A(micro_batches),
        B(batch),
        S(seq_len),
        window(static_cast<size_t>(B) * (S + 1)),
        domains(window.size()),
        inputs(static_cast<size_t>(A) * B * S),
        targets(inputs.size()) {}
  void next(BatchSampler& sampler) {
    for (int a = 0; a < A; ++a) {
      sampler.next(window.data(), domains.data());
      for (int b = 0; b < B; ++b) {
        const int32_t* w = window.data() + static_cast<int64_t>(b) * (S + 1);
        const int64_t row = (static_cast<int64_t>(a) * B + b) * S;
        std::copy_n(w, S, inputs.data() + row);
        std::copy_n(w + 1, S, targets.data() + row);
      }
    }
  }
  int A, B, S;
  std::vector<int32_t> window;
  std::vector<uint8_t> domains;
  std::vector<int32_t> inputs, targets;
};

std::string format_duration(double seconds) {
  const int s = static_cast<int>(std::lround(std::max(0.0, seconds)));
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  return fmt::format("{}m{:02}s", s / 60, s % 60);
}

class Progress {
 public:
  Progress(bool enabled, int total) : enabled_(enabled), tty_(isatty(2)), total_(total) {}
  // Shows the loss as a running mean from the first update on.
  void update(int step, double loss, double aux, double tok_s, const RoutingSummary& r,
              double eta) {
    loss_avg_ = updates_++ == 0 ? loss : 0.9 * loss_avg_ + 0.1 * loss;
    if (!enabled_) return;
    const std::string text = fmt::format(
        "loss {:.4f} aux {:.4f} {:.0f} tok/s{} ETA {}", loss_avg_, aux, tok_s,
        r.layers > 0 ? fmt::format(" bal {:.2f}", r.balance) : "", format_duration(eta));
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
  int total_, updates_ = 0;
  double loss_avg_ = 0;
};

// The config train() runs, synced and validated. Expert parallelism: the layout fits the
// experts, the batch splits over the W ranks, every rank runs the same config (a hash of its
// JSON is compared), and no other device steps.
ModelConfig checked_config(const ModelConfig& in, const TrainOptions& opt) {
  ModelConfig cfg = in;
  cfg.sync_moe();
  cfg.validate("config");
  if (!opt.parallel) return cfg;
  MOE_REQUIRE(!opt.device,
              "{}: a training device (--device) cannot be combined with expert parallelism",
              opt.out_dir);
  ParallelGroups& par = *opt.parallel;
  const int W = par.layout.world;
  const std::string bad =
      ParallelLayout::check(W, par.layout.expert_parallel, cfg.num_local_experts);
  MOE_REQUIRE(bad.empty(), "{}", bad);
  MOE_REQUIRE(cfg.training.batch_size % W == 0,
              "config: training.batch_size = {} does not split over the {} processes (make it a "
              "multiple of mpirun -np)",
              cfg.training.batch_size, W);
  const std::string text = model_config_to_json(cfg).dump();
  const int64_t mine = static_cast<int64_t>(std::hash<std::string>{}(text)&0x7fffffffffff);
  std::vector<int64_t> all(static_cast<size_t>(W));
  par.world->allgather(&mine, sizeof(mine), all.data());
  for (int r = 1; r < W; ++r)
    MOE_REQUIRE(all[r] == all[0],
                "config differs between ranks: rank {} was launched with another config.json "
                "or other flags than rank 0",
                r);
  return cfg;
}

// Loads the checkpoint and returns its step. Nothing left to train is refused before anything
// is written, so that the finished run's metrics, summary and report stay as they are.
int resume_from(const Checkpointer& ckpt, const ModelConfig& cfg, const TrainOptions& opt,
                Transformer<float>& model, AdamW<float>& adam, Rng& rng, BatchSampler& sampler) {
  BatchSampler::State sampler_state = sampler.state();
  const int step = ckpt.load(cfg, model, adam, rng, sampler_state);
  const int max_steps = cfg.training.max_steps;
  if (step == max_steps)
    throw Error(fmt::format(
        "{}: already finished at step {} of {}; nothing to resume (raise --steps to train on)",
        opt.out_dir, step, max_steps));
  if (step > max_steps)
    throw Error(
        fmt::format("{}: the checkpoint is at step {}, past max_steps = {}; nothing to "
                    "resume",
                    opt.out_dir, step, max_steps));
  if (opt.stop_after > 0 && step >= opt.stop_after)
    throw Error(
        fmt::format("{}: the checkpoint is at step {} already; nothing to resume with "
                    "--stop-after {}",
                    opt.out_dir, step, opt.stop_after));
  sampler.restore(sampler_state);
  return step;
}

// config.json and the copy of the tokenizer file. A Hugging Face tokenizer.json stays one; any
// other tokenizer file is a sentencepiece model.
void write_run_setup(const ModelConfig& cfg, const TrainOptions& opt) {
  // A checkpoint's tokenizer.json without a tokenizer_config.json takes its BOS/EOS ids from
  // the config.json beside it (hf_tokenizer.h): the run's config.json carries them on (keys
  // our config reader accepts and ignores).
  const fs::path source_dir = fs::path(opt.tokenizer_path).parent_path();
  if (opt.tokenizer_path.ends_with(".json") && !fs::exists(source_dir / "tokenizer_config.json") &&
      fs::exists(source_dir / "config.json")) {
    const nlohmann::json source = read_json_file((source_dir / "config.json").string());
    nlohmann::json j = model_config_to_json(cfg);
    for (const char* key : {"bos_token_id", "eos_token_id"})
      if (source.is_object() && source.contains(key)) j[key] = source[key];
    const std::string text = j.dump(2) + "\n";
    write_file_atomic(opt.out_dir + "/config.json", text.data(), text.size());
  } else {
    save_model_config(cfg, opt.out_dir + "/config.json");
  }
  const std::string tokenizer_copy =
      opt.out_dir +
      (opt.tokenizer_path.ends_with(".json") ? "/tokenizer.json" : "/tokenizer.model");
  if (opt.tokenizer_path.empty() || opt.tokenizer_path == tokenizer_copy) return;
  fs::copy_file(opt.tokenizer_path, tokenizer_copy, fs::copy_options::overwrite_existing);
  // A tokenizer.json's BOS/EOS names live in the tokenizer_config.json beside it.
  const fs::path sibling = fs::path(opt.tokenizer_path).parent_path() / "tokenizer_config.json";
  if (opt.tokenizer_path.ends_with(".json") && fs::exists(sibling))
    fs::copy_file(sibling, opt.out_dir + "/tokenizer_config.json",
                  fs::copy_options::overwrite_existing);
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

void check_run_directory(const std::string& out_dir, bool resume) {
  Checkpointer(out_dir).check_resume(resume);
}

TrainResult train(const ModelConfig& cfg_in, const TokenStream& train_data,
                  const TokenStream& valid_data, const TrainOptions& opt) {
  const ModelConfig cfg = checked_config(cfg_in, opt);
  const TrainConfig& t = cfg.training;
  // Expert parallelism: rank 0 leads (progress, logs, run files); every decision that could
  // stop a rank is taken from values all ranks share, so no rank is left in a collective.
  ParallelGroups* par = opt.parallel;
  const int W = par ? par->layout.world : 1, rank = par ? par->layout.rank : 0;
  const bool lead = rank == 0;
  Progress progress(opt.progress && lead, t.max_steps);
  auto log = [&](const std::string& s) {
    if (lead) opt.log ? opt.log(s) : progress.line(s);
  };

  // The device is built (and refuses what it cannot run) before anything is written.
  std::unique_ptr<StepDevice> device = opt.device ? opt.device(cfg) : nullptr;
  const int64_t available = available_memory();  // before this run's model takes its share
  fs::create_directories(opt.out_dir);
  const Checkpointer ckpt(opt.out_dir, rank, W);
  ckpt.check_resume(opt.resume, par ? par->world.get() : nullptr);

  Transformer<float> model(cfg);
  Rng rng(t.seed);
  model.init_weights(rng);
  if (opt.init_weights) opt.init_weights(model);
  if (par) model.enable_expert_parallel(*par);
  {
    const TrainingMemory mem = training_memory(model, t.batch_size, t.seq_len);
    const auto mb = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
    const std::string need = fmt::format(
        "{:.1f} MB: weights {:.1f} + gradients {:.1f} + AdamW moments {:.1f} ({:.2f}M of {:.2f}M "
        "parameters train) + activations {:.1f} (one micro-batch of {} x {})",
        mb(mem.total()), mb(mem.weights), mb(mem.gradients), mb(mem.moments),
        model.trainable_parameters() / 1e6, model.num_parameters() / 1e6, mb(mem.activations),
        t.batch_size, t.seq_len);
    log(fmt::format(
        "memory: {}; MemAvailable {}", need,
        available < 0 ? std::string("unknown") : fmt::format("{:.0f} MB", mb(available))));
    MOE_REQUIRE(available < 0 || mem.total() <= available,
                "{}: training needs {}, more than the {:.0f} MB available: lower "
                "training.batch_size or seq_len, or train fewer parts (--train)",
                opt.out_dir, need, mb(available));
  }
  AdamW<float> adam(model.parameters(), t);
  BatchSampler sampler(train_data, t.batch_size, t.seq_len, t.seed);
  int step = opt.resume ? resume_from(ckpt, cfg, opt, model, adam, rng, sampler) : 0;
  MetricsWriter metrics(opt.out_dir, opt.resume ? step : -1, lead);
  if (opt.resume) log(fmt::format("resumed {} at step {}", ckpt.path(), step));
  if (!device) device = make_cpu_step_device(model, adam, rng);
  device->load(model, adam);
  if (opt.device) log(fmt::format("training steps run on {}", device->describe()));
  if (lead) write_run_setup(cfg, opt);

  const int B = t.batch_size, S = t.seq_len, A = t.grad_accum_steps;
  const int64_t tokens_per_step = static_cast<int64_t>(A) * B * S;
  log(fmt::format("model: {}, {} tokens/step", describe_model(model), tokens_per_step));
  StepBatch batch(A, B, S);

  const int last_step = opt.stop_after > 0 ? std::min(opt.stop_after, t.max_steps) : t.max_steps;
  const auto start = Clock::now();
  const int first_step = step;
  TrainResult result;
  StepProfile* profile = opt.profile ? &result.profile : nullptr;
  device->set_profile(profile);
  int last_saved = opt.resume ? step : -1;
  // The device's state into the CPU model and AdamW, once per step however many readers follow.
  int device_stored = step;
  auto store_device = [&] {
    if (std::exchange(device_stored, step) != step) device->store(model, adam);
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
    metrics.write(validation_metrics(step, e, model));
    log(fmt::format("step {}: validation loss {:.4f} (perplexity {:.1f}) over {} tokens", step,
                    e.loss, std::exp(e.loss), e.tokens));
    return e;
  };

  while (step < last_step) {
    const CommStats comm0 = comm_totals(par);
    const auto step_start = Clock::now();
    {
      ScopedTimer timer(profile, StepPart::Data);
      batch.next(sampler);
    }
    const DeviceStepStats st = device->step(batch.inputs.data(), batch.targets.data(), B, S, step);
    if (profile) {
      // The first step allocates and first-touches every buffer (hundreds of ms of page faults
      // on a VM): the profile is of the steady state, so it starts over after it.
      if (step == first_step && last_step - first_step > 1)
        *profile = StepProfile{};
      else
        profile->add_step(seconds_since(step_start));
    }
    if (!st.nonfinite.empty()) {
      progress.finish();
      throw Error(fmt::format(
          "{}: step {}: {}; training stopped, {}", opt.out_dir, step + 1, st.nonfinite,
          last_saved >= 0
              ? fmt::format("the checkpoint of step {} in {} is kept", last_saved, ckpt.path())
              : std::string("no checkpoint was written yet")));
    }
    ++step;

    const double elapsed = seconds_since(start);
    const double tok_s = (step - first_step) * tokens_per_step / std::max(elapsed, 1e-9);
    nlohmann::json j = step_metrics(step, st, step * tokens_per_step, tok_s, elapsed);
    if (par) add_comm_metrics(j, comm0, comm_totals(par), seconds_since(step_start));
    const RoutingSummary r = add_routing_metrics(j, *device, model.num_layers());
    metrics.write(j);
    const double eta = (last_step - step) * elapsed / std::max(1, step - first_step);
    progress.update(step, st.loss, st.aux, tok_s, r, eta);
    result.final_train_loss = st.loss;

    const bool end = step == last_step;
    if ((t.eval_every > 0 && step % t.eval_every == 0) || (end && step == t.max_steps))
      result.final_eval = run_eval();
    if (t.checkpoint_every > 0 && step % t.checkpoint_every == 0 && !end) save();
  }
  progress.finish();
  result.steps = step;
  result.wall_seconds = seconds_since(start);
  result.tokens_per_second =
      (step - first_step) * tokens_per_step / std::max(result.wall_seconds, 1e-9);
  if (lead) write_run_report(opt.out_dir, cfg, model, result, tokens_per_step, *device);
  if (profile && lead) {
    device->set_profile(nullptr);
    log(fmt::format("profile of {} steps (ms per step, share of the step):\n{}", profile->steps(),
                    profile->table()));
    const std::string text = profile->to_json().dump(2) + "\n";
    write_file_atomic(opt.out_dir + "/profile.json", text.data(), text.size());
  }
  // The last checkpoint comes after the report: a checkpoint of the last step means the run's
  // files are complete, and a run killed before it redoes its last steps on --resume.
  if (last_saved != step) save();
  return result;
}

TrainingMemory training_memory(const Transformer<float>& model, int batch, int seq_len) {
  TrainingMemory m;
  m.weights = model.num_parameters() * int64_t{sizeof(float)};
  m.gradients = m.weights;  // every parameter has its gradient buffer
  m.moments = 2 * model.trainable_parameters() * int64_t{sizeof(float)};
  m.activations = model.activation_bytes(batch, seq_len);
  return m;
}

int64_t available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return -1;
}

LoadedRun load_run(const std::string& dir) {
  LoadedRun run;
  run.config = load_model_config(dir + "/config.json");
  run.model = std::make_unique<Transformer<float>>(run.config);
  run.model->load_weights(SafeTensorsFile::open(dir + "/model.safetensors"));
  const std::string& t = run.config.training.tokenizer;
  if (t == "byte") {
    run.tokenizer = make_byte_tokenizer();
  } else if (t == "sentencepiece") {
    run.tokenizer_file = dir + "/tokenizer.model";
    run.tokenizer = load_sentencepiece(run.tokenizer_file);
  } else {  // a tokenizer file given to `moe train --tokenizer`: its copy in the run
    run.tokenizer = load_tokenizer_dir(dir);
    run.tokenizer_file = std::filesystem::exists(dir + "/tokenizer.json")
                             ? dir + "/tokenizer.json"
                             : dir + "/tokenizer.model";
  }
  MOE_REQUIRE(run.tokenizer->vocab_size() <= run.config.vocab_size,
              "{}/config.json: vocab_size = {} is smaller than the tokenizer's {} ({})", dir,
              run.config.vocab_size, run.tokenizer->vocab_size(), run.tokenizer->description());
  return run;
}

}  // namespace moe
