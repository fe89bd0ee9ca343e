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
#include "moe/optimizer.h"
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
  MOE_CHECK(!in.fail(), "{}: metadata rng = \"{}\" is malformed", where, text);
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

RoutingSummary routing_summary(const Transformer<float>& model) {
  RoutingSummary r;
  for (int l = 0; l < model.num_layers(); ++l) {
    const auto* m = model.moe_layer(l);
    if (!m) continue;
    r.balance += m->metrics().load_max_over_mean;
    r.dropped += m->metrics().dropped_fraction;
    r.entropy += m->metrics().router_entropy;
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
  explicit Checkpointer(std::string dir) : dir_(std::move(dir)) {}
  std::string path() const { return dir_ + "/checkpoint.safetensors"; }

  void save(const ModelConfig& cfg, const Transformer<float>& model, const AdamW<float>& opt,
            int step, const Rng& rng, const BatchSampler::State& sampler) const {
    SafeTensorsWriter w;
    model.save_weights(w, DType::F32);
    opt.save(w);
    const std::string config = model_config_to_json(cfg).dump();
    w.set_metadata("format", "moe-checkpoint");
    w.set_metadata("version", "1");
    w.set_metadata("config", config);
    w.set_metadata("step", std::to_string(step));
    w.set_metadata("rng", rng_to_string(rng.state()));
    w.set_metadata("sampler.epoch", std::to_string(sampler.epoch));
    w.set_metadata("sampler.cursor", std::to_string(sampler.cursor));
    w.write(path());
    // The weights alone, for eval, generate and export.
    SafeTensorsWriter m;
    model.save_weights(m, DType::F32);
    m.set_metadata("format", "pt");
    m.set_metadata("config", config);
    m.write(dir_ + "/model.safetensors");
  }

  // Returns the step the checkpoint was taken after.
  int load(const ModelConfig& cfg, Transformer<float>& model, AdamW<float>& opt, Rng& rng,
           BatchSampler::State& sampler) const {
    const SafeTensorsFile f = SafeTensorsFile::open(path());
    MOE_CHECK(f.metadata().count("format") && f.metadata("format") == "moe-checkpoint",
              "{}: not a moe checkpoint (metadata format is missing or wrong)", f.path());
    MOE_CHECK(f.metadata("version") == "1",
              "{}: checkpoint version {} is not supported (expected 1)", f.path(),
              f.metadata("version"));
    // The model must be the same shape; training keys (steps, lr) may change on resume.
    nlohmann::json saved = nlohmann::json::parse(f.metadata("config"));
    nlohmann::json now = model_config_to_json(cfg);
    saved.erase("training");
    now.erase("training");
    for (auto it = now.begin(); it != now.end(); ++it)
      MOE_CHECK(saved.contains(it.key()) && saved[it.key()] == it.value(),
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

void write_report(const std::string& dir, const ModelConfig& cfg, const Transformer<float>& model,
                  const TrainResult& r, int64_t tokens_per_step) {
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
      "- final training loss: {:.4f}\n",
      dir, cfg.num_hidden_layers, cfg.hidden_size, describe_ffn(cfg), model.num_parameters() / 1e6,
      model.active_parameters() / 1e6, r.steps, tokens_per_step, r.wall_seconds,
      r.tokens_per_second, r.final_train_loss);
  if (r.final_eval.tokens > 0)
    md += fmt::format(
        "- validation loss: {:.4f} (perplexity {:.1f}) over {} tokens\n\n"
        "| domain | loss | perplexity | tokens |\n|---|---|---|---|\n{}",
        r.final_eval.loss, std::exp(r.final_eval.loss), r.final_eval.tokens, domains);
  md +=
      "\nPer-step figures (loss, aux loss, learning rate, expert load per layer) are in "
      "metrics.jsonl.\n";
  write_file_atomic(dir + "/report.md", md.data(), md.size());
}

}  // namespace

EvalResult evaluate(Transformer<float>& model, const TokenStream& valid, int batch, int seq_len,
                    int64_t max_windows) {
  const std::vector<int64_t> starts = validation_windows(valid, seq_len, max_windows);
  MOE_CHECK(!starts.empty(), "evaluate: the validation split is shorter than one window of {}",
            seq_len + 1);
  std::vector<int32_t> inputs(static_cast<size_t>(batch) * seq_len);
  std::vector<int32_t> targets(inputs.size());
  std::vector<double> dom_sum(valid.domain_names.size(), 0.0);
  std::vector<int64_t> dom_count(valid.domain_names.size(), 0);
  double total = 0;
  int64_t count = 0;
  for (size_t w0 = 0; w0 < starts.size(); w0 += batch) {
    const int B = static_cast<int>(std::min<size_t>(batch, starts.size() - w0));
    for (int b = 0; b < B; ++b) {
      const int64_t s0 = starts[w0 + b];
      std::copy_n(valid.tokens.data() + s0, seq_len,
                  inputs.data() + static_cast<int64_t>(b) * seq_len);
      std::copy_n(valid.tokens.data() + s0 + 1, seq_len,
                  targets.data() + static_cast<int64_t>(b) * seq_len);
    }
    model.forward(inputs.data(), targets.data(), B, seq_len, false);
    const auto& rows = model.row_losses();
    for (int b = 0; b < B; ++b) {
      for (int s = 0; s < seq_len; ++s) {
        const double loss = rows[static_cast<int64_t>(b) * seq_len + s];
        const uint8_t dom = valid.domain[starts[w0 + b] + 1 + s];
        total += loss;
        ++count;
        dom_sum[dom] += loss;
        ++dom_count[dom];
      }
    }
  }
  EvalResult r;
  r.loss = total / count;
  r.tokens = count;
  for (size_t d = 0; d < dom_sum.size(); ++d)
    if (dom_count[d] > 0)
      r.per_domain[valid.domain_names[d]] = {dom_sum[d] / dom_count[d], dom_count[d]};
  return r;
}

TrainResult train(const ModelConfig& cfg_in, const TokenStream& train_data,
                  const TokenStream& valid_data, const TrainOptions& opt) {
  ModelConfig cfg = cfg_in;
  cfg.sync_moe();
  cfg.validate("config");
  const TrainConfig& t = cfg.training;
  Progress progress(opt.progress, t.max_steps);
  auto log = [&](const std::string& s) {
    if (opt.log)
      opt.log(s);
    else
      progress.line(s);
  };

  fs::create_directories(opt.out_dir);
  const Checkpointer ckpt(opt.out_dir);
  const std::string metrics_path = opt.out_dir + "/metrics.jsonl";
  if (!opt.resume && fs::exists(ckpt.path()))
    throw Error(
        fmt::format("{}: a checkpoint exists; pass --resume to continue it or choose another --out",
                    ckpt.path()));
  if (opt.resume && !fs::exists(ckpt.path()))
    throw Error(fmt::format("{}: no checkpoint to resume from", ckpt.path()));

  Transformer<float> model(cfg);
  Rng rng(t.seed);
  model.init_weights(rng);
  AdamW<float> adam(model.parameters(), t);
  BatchSampler sampler(train_data, t.batch_size, t.seq_len, t.seed);
  BatchSampler::State sampler_state = sampler.state();
  int step = 0;
  if (opt.resume) {
    step = ckpt.load(cfg, model, adam, rng, sampler_state);
    sampler.restore(sampler_state);
    truncate_metrics(metrics_path, step);
    log(fmt::format("resumed {} at step {}", ckpt.path(), step));
  } else {
    std::error_code ec;
    fs::remove(metrics_path, ec);
  }
  save_model_config(cfg, opt.out_dir + "/config.json");
  if (!opt.tokenizer_path.empty() && opt.tokenizer_path != opt.out_dir + "/tokenizer.model")
    fs::copy_file(opt.tokenizer_path, opt.out_dir + "/tokenizer.model",
                  fs::copy_options::overwrite_existing);

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
  std::ofstream metrics(metrics_path, std::ios::app);
  MOE_CHECK(metrics.good(), "{}: cannot open for writing", metrics_path);

  const int last_step = opt.stop_after > 0 ? std::min(opt.stop_after, t.max_steps) : t.max_steps;
  const auto start = Clock::now();
  const int first_step = step;
  TrainResult result;
  int last_saved = opt.resume ? step : -1;
  auto save = [&] {
    ckpt.save(cfg, model, adam, step, rng, sampler.state());
    last_saved = step;
  };
  auto run_eval = [&] {
    const EvalResult e = evaluate(
        model, valid_data, B, S, t.eval_batches > 0 ? static_cast<int64_t>(t.eval_batches) * B : 0);
    nlohmann::json j{{"step", step},
                     {"val_loss", e.loss},
                     {"val_ppl", std::exp(e.loss)},
                     {"val_tokens", e.tokens}};
    for (const auto& [name, v] : e.per_domain) j["val_loss_" + name] = v.first;
    metrics << j.dump() << "\n" << std::flush;
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
    model.zero_grad();
    double loss = 0, ce = 0, aux = 0;
    for (int a = 0; a < A; ++a) {
      sampler.next(window.data(), domains.data());
      split_windows(window.data(), B, S, inputs.data(), targets.data());
      const double l = model.forward(inputs.data(), targets.data(), B, S, true, &rng);
      if (!std::isfinite(l)) {
        fail_nonfinite(fmt::format("loss is {} (first non-finite values: {})", l,
                                   model.first_nonfinite_activation()));
      }
      model.backward(1.0 / A);
      loss += l / A;
      ce += model.ce_loss() / A;
      aux += model.aux_loss() / A;
    }
    if (const auto* bad = first_nonfinite_grad(model.parameters()))
      fail_nonfinite(fmt::format("the gradient of {} holds NaN or inf", bad->name));
    const double norm = t.grad_clip > 0 ? clip_grad_norm(model.parameters(), t.grad_clip)
                                        : global_grad_norm(model.parameters());
    const double lr = learning_rate_at(t, step);
    adam.step(lr);
    model.update_selection_bias();
    ++step;

    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double tok_s = (step - first_step) * tokens_per_step / std::max(elapsed, 1e-9);
    const RoutingSummary r = routing_summary(model);
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
    if (r.layers > 0) {
      j["balance"] = r.balance;
      j["dropped"] = r.dropped;
      j["router_entropy"] = r.entropy;
      nlohmann::json loads = nlohmann::json::array();
      for (int l = 0; l < model.num_layers(); ++l)
        if (const auto* m = model.moe_layer(l)) loads.push_back(m->metrics().primary_per_expert);
      j["expert_load"] = loads;
    }
    metrics << j.dump() << "\n" << std::flush;
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
    if ((t.checkpoint_every > 0 && step % t.checkpoint_every == 0) || end) save();
  }
  progress.finish();
  if (last_saved != step) save();
  result.steps = step;
  result.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.tokens_per_second =
      (step - first_step) * tokens_per_step / std::max(result.wall_seconds, 1e-9);
  write_report(opt.out_dir, cfg, model, result, tokens_per_step);
  return result;
}

LoadedRun load_run(const std::string& dir) {
  LoadedRun run;
  run.config = load_model_config(dir + "/config.json");
  run.model = std::make_unique<Transformer<float>>(run.config);
  run.model->load_weights(SafeTensorsFile::open(dir + "/model.safetensors"));
  if (run.config.training.tokenizer == "byte") {
    run.tokenizer = make_byte_tokenizer();
  } else {
    run.tokenizer = load_sentencepiece(dir + "/tokenizer.model");
  }
  MOE_CHECK(run.tokenizer->vocab_size() <= run.config.vocab_size,
            "{}/config.json: vocab_size = {} is smaller than the tokenizer's {} ({})", dir,
            run.config.vocab_size, run.tokenizer->vocab_size(), run.tokenizer->description());
  return run;
}

}  // namespace moe
