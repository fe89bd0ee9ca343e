// The training loop: bit-exact resume, loss going down, NaN stopping with the last checkpoint
// kept, refusing to overwrite a run, evaluation per domain, and generation from a saved run.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/error.h"
#include "moe/generate.h"
#include "moe/safetensors.h"
#include "moe/train_metrics.h"
#include "moe/trainer.h"
#include "test_util.h"
#include "tiny_run.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

using test::quiet_options;
using test::synthetic_stream;

ModelConfig small_config(int steps) {
  ModelConfig c = test::tiny_lm_config(steps);
  c.moe.noisy_gating = true;  // exercises the RNG state in the checkpoint
  c.moe.use_selection_bias = true;
  c.sync_moe();
  return c;
}

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void expect_same_weights(const std::string& a, const std::string& b) {
  const SafeTensorsFile fa = SafeTensorsFile::open(a), fb = SafeTensorsFile::open(b);
  ASSERT_EQ(fa.names(), fb.names());
  for (const auto& name : fa.names()) {
    const auto& ea = fa.entry(name);
    const auto& eb = fb.entry(name);
    ASSERT_EQ(ea.end - ea.begin, eb.end - eb.begin) << name;
    EXPECT_EQ(0, std::memcmp(fa.raw(ea), fb.raw(eb), ea.end - ea.begin)) << name << " differs";
  }
}

TEST(Trainer, ResumeIsBitExact) {
  const TokenStream train_data = synthetic_stream(4000, 1), valid = synthetic_stream(600, 2);
  ModelConfig cfg = small_config(8);
  cfg.training.grad_accum_steps = 2;  // the accumulation path resumes exactly too
  TempDir full("moe_trainer_full"), half("moe_trainer_half");
  train(cfg, train_data, valid, quiet_options(full.str()));
  TrainOptions first = quiet_options(half.str());
  first.stop_after = 4;
  EXPECT_EQ(train(cfg, train_data, valid, first).steps, 4);
  TrainOptions second = quiet_options(half.str());
  second.resume = true;
  EXPECT_EQ(train(cfg, train_data, valid, second).steps, 8);
  expect_same_weights(full.str() + "/checkpoint.safetensors",
                      half.str() + "/checkpoint.safetensors");
  // The metrics of both runs agree line by line on the training steps.
  std::ifstream fa(full.str() + "/metrics.jsonl"), fb(half.str() + "/metrics.jsonl");
  std::string la, lb;
  int lines = 0;
  while (std::getline(fa, la) && std::getline(fb, lb)) {
    const auto ja = nlohmann::json::parse(la), jb = nlohmann::json::parse(lb);
    EXPECT_EQ(ja["step"], jb["step"]);
    if (ja.contains("loss")) {
      EXPECT_EQ(ja["loss"], jb["loss"]);
      EXPECT_EQ(ja["expert_load"], jb["expert_load"]);
    }
    ++lines;
  }
  EXPECT_GE(lines, 8);
}

// --profile: every part of the step is timed, on every kind of block (MoE with a shared expert,
// dense), and the parts add up to the measured step (a share, not a timing threshold).
TEST(Trainer, ProfileHasEveryPartAndSumsToTheStep) {
  const TokenStream train_data = synthetic_stream(8000, 5), valid = synthetic_stream(600, 6);
  ModelConfig cfg = test::tiny_lm_config(6);
  cfg.hidden_size = 64;
  cfg.intermediate_size = 64;
  cfg.moe_every = 2;  // layer 0 dense, layer 1 MoE
  cfg.moe.n_shared_experts = 1;
  cfg.training.seq_len = 32;
  cfg.sync_moe();
  TempDir dir("moe_trainer_profile");
  TrainOptions o = quiet_options(dir.str());
  o.profile = true;
  const TrainResult r = train(cfg, train_data, valid, o);
  const StepProfile& p = r.profile;
  EXPECT_EQ(p.steps(), 5);  // the first step (allocation, first touch) is left out
  ASSERT_GT(p.step_seconds(), 0);
  for (int i = 0; i < kStepParts; ++i)
    EXPECT_GT(p.seconds(static_cast<StepPart>(i)), 0) << step_part_name(static_cast<StepPart>(i));
  EXPECT_LE(p.accounted_seconds(), p.step_seconds() * (1 + 1e-9));
  EXPECT_GE(p.accounted_seconds(), 0.9 * p.step_seconds());

  // The same in the run directory's profile.json, in ms per step.
  std::ifstream in(dir.path() / "profile.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("steps"), 5);
  EXPECT_EQ(j.at("parts").size(), static_cast<size_t>(kStepParts));
  double sum = 0;
  for (const auto& [name, part] : j.at("parts").items()) sum += part.at("ms").get<double>();
  EXPECT_NEAR(sum + j.at("unaccounted_ms").get<double>(), j.at("step_ms").get<double>(), 1e-6);

  // Without --profile nothing is timed and no profile.json is written.
  TempDir plain("moe_trainer_no_profile");
  EXPECT_EQ(train(cfg, train_data, valid, quiet_options(plain.str())).profile.steps(), 0);
  EXPECT_FALSE(fs::exists(plain.path() / "profile.json"));
}

TEST(Trainer, LossFallsAndEvalIsPerDomain) {
  const TokenStream train_data = synthetic_stream(8000, 3), valid = synthetic_stream(1200, 4);
  ModelConfig cfg = small_config(60);
  cfg.training.eval_every = 30;
  TempDir dir("moe_trainer_loss");
  const TrainResult r = train(cfg, train_data, valid, quiet_options(dir.str()));
  ASSERT_GT(r.final_eval.tokens, 0);
  // The counting domain is predictable, the noise one is not: uniform over 20 tokens.
  const double counting = r.final_eval.per_domain.at("counting").first;
  const double noise = r.final_eval.per_domain.at("noise").first;
  EXPECT_LT(counting, 1.0);
  EXPECT_GT(noise, 2.5);
  EXPECT_LT(r.final_eval.loss, std::log(24.0));
  for (const char* f : {"config.json", "model.safetensors", "checkpoint.safetensors",
                        "metrics.jsonl", "report.md", "summary.json"})
    EXPECT_TRUE(fs::exists(dir.path() / f)) << f;

  // A saved run loads back and evaluates to the same loss.
  LoadedRun run = load_run(dir.str());
  const EvalResult again =
      evaluate(*run.model, valid, cfg.training.batch_size, cfg.training.seq_len,
               cfg.training.eval_batches * cfg.training.batch_size);
  EXPECT_NEAR(again.loss, r.final_eval.loss, 1e-6);
  // Greedy generation continues the counting pattern.
  GenerateOptions g;
  g.max_new_tokens = 6;
  g.sampling.temperature = 0;
  g.stop_at_eos = false;
  TransformerLm lm(*run.model);
  const auto out = generate(lm, {{2, 3, 4, 5, 6, 7, 8, 2, 3}}, g, -1)[0];
  ASSERT_EQ(out.size(), 6u);
  EXPECT_EQ(out[0], 4);
  EXPECT_EQ(out[1], 5);
}

TEST(Trainer, NanStopsAndKeepsTheLastCheckpoint) {
  const TokenStream train_data = synthetic_stream(4000, 5), valid = synthetic_stream(600, 6);
  ModelConfig cfg = small_config(6);
  cfg.training.checkpoint_every = 2;
  TempDir dir("moe_trainer_nan");
  TrainOptions o = quiet_options(dir.str());
  o.stop_after = 2;
  train(cfg, train_data, valid, o);
  const auto saved = file_bytes(dir.str() + "/checkpoint.safetensors");
  // An absurd learning rate drives the weights to inf within a step or two.
  cfg.training.learning_rate = 1e38;
  cfg.training.warmup_steps = 0;
  o.stop_after = 0;
  o.resume = true;
  try {
    train(cfg, train_data, valid, o);
    ADD_FAILURE() << "expected training to stop on a non-finite loss";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("step "), std::string::npos) << msg;
    // Names the layer (a non-finite loss) or the tensor (a non-finite gradient).
    EXPECT_TRUE(msg.find("model.") != std::string::npos ||
                msg.find("lm_head") != std::string::npos || msg.find("logits") != std::string::npos)
        << msg;
    EXPECT_NE(msg.find("checkpoint of step 2"), std::string::npos) << msg;
  }
  EXPECT_EQ(file_bytes(dir.str() + "/checkpoint.safetensors"), saved);
}

TEST(Trainer, RefusesToOverwriteARun) {
  const TokenStream train_data = synthetic_stream(4000, 7), valid = synthetic_stream(600, 8);
  const ModelConfig cfg = small_config(2);
  TempDir dir("moe_trainer_overwrite");
  train(cfg, train_data, valid, quiet_options(dir.str()));
  EXPECT_THROW(train(cfg, train_data, valid, quiet_options(dir.str())), Error);
  ModelConfig other = cfg;
  other.hidden_size = 16;
  other.sync_moe();
  TrainOptions o = quiet_options(dir.str());
  o.resume = true;
  // Resuming with another config is refused, naming the mismatch.
  test::expect_error([&] { train(other, train_data, valid, o); }, {"hidden_size"});
}

// Resuming a run that has nothing left to train is refused with one line before anything is
// written: summary.json and report.md keep the finished run's numbers, not a 0-step run's.
TEST(Trainer, ResumingAFinishedRunIsRefusedAndChangesNothing) {
  const TokenStream train_data = synthetic_stream(4000, 9), valid = synthetic_stream(600, 10);
  const ModelConfig cfg = small_config(3);
  TempDir dir("moe_trainer_finished");
  train(cfg, train_data, valid, quiet_options(dir.str()));
  const std::vector<std::string> files = {"summary.json",           "report.md",
                                          "metrics.jsonl",          "config.json",
                                          "checkpoint.safetensors", "model.safetensors"};
  std::vector<std::vector<char>> before;
  for (const auto& f : files) before.push_back(file_bytes(dir.str() + "/" + f));
  TrainOptions o = quiet_options(dir.str());
  o.resume = true;
  const std::string msg = test::error_of([&] { train(cfg, train_data, valid, o); });
  EXPECT_NE(msg.find("already finished at step 3 of 3; nothing to resume"), std::string::npos)
      << msg;
  EXPECT_EQ(msg.rfind(dir.str(), 0), 0u) << "does not start with the run directory: " << msg;
  EXPECT_EQ(msg.find(".cpp"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  // --stop-after at or before the checkpoint's step, and fewer max_steps than were done.
  o.stop_after = 2;
  ModelConfig longer = cfg;
  longer.training.max_steps = 5;
  EXPECT_NE(test::error_of([&] { train(longer, train_data, valid, o); }).find("nothing to resume"),
            std::string::npos);
  o.stop_after = 0;
  ModelConfig shorter = cfg;
  shorter.training.max_steps = 2;
  EXPECT_NE(test::error_of([&] { train(shorter, train_data, valid, o); }).find("nothing to resume"),
            std::string::npos);
  for (size_t i = 0; i < files.size(); ++i)
    EXPECT_TRUE(file_bytes(dir.str() + "/" + files[i]) == before[i]) << files[i] << " changed";
  // With more steps the run continues.
  EXPECT_EQ(train(longer, train_data, valid, o).steps, 5);
}

// A write that fails at the end of a run (as a kill between two files would stop it) leaves
// the checkpoint at the previous save: the weights, summary and report are written before the
// last checkpoint, so --resume redoes the last steps instead of refusing a run whose files are
// incomplete.
TEST(Trainer, TheLastCheckpointFollowsTheWeightsAndTheReport) {
  const TokenStream train_data = synthetic_stream(4000, 11), valid = synthetic_stream(600, 12);
  ModelConfig cfg = small_config(4);
  cfg.training.checkpoint_every = 2;
  TempDir dir("moe_trainer_order");
  TrainOptions o = quiet_options(dir.str());
  o.stop_after = 2;
  EXPECT_EQ(train(cfg, train_data, valid, o).steps, 2);
  const std::string ckpt = dir.str() + "/checkpoint.safetensors";
  o.stop_after = 0;
  o.resume = true;
  for (const std::string blocked : {"model.safetensors", "summary.json"}) {
    const fs::path p = dir.path() / blocked;
    fs::remove(p);
    fs::create_directories(p / "x");  // a non-empty directory: renaming onto it fails
    test::expect_error([&] { train(cfg, train_data, valid, o); }, {blocked});
    EXPECT_EQ(SafeTensorsFile::open(ckpt).metadata("step"), "2") << blocked << " was blocked";
    fs::remove_all(p);
  }
  EXPECT_EQ(train(cfg, train_data, valid, o).steps, 4);
  EXPECT_EQ(SafeTensorsFile::open(ckpt).metadata("step"), "4");
  EXPECT_EQ(nlohmann::json::parse(file_bytes(dir.str() + "/summary.json"))["steps"], 4);
  EXPECT_TRUE(fs::exists(dir.path() / "model.safetensors"));
}

// A metrics line that cannot be written (the disk is full: /dev/full fails every write) is one
// error naming the file, not a run that trains on with a silently truncated record.
TEST(Trainer, AMetricsLineThatCannotBeWrittenIsAnError) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  TempDir dir("moe_trainer_full_disk");
  std::filesystem::create_symlink("/dev/full", dir.file("metrics.jsonl"));
  MetricsWriter w(dir.str());
  test::expect_error(
      [&] {
        w.write(nlohmann::json{{"step", 1}});
      },
      {"metrics.jsonl", "cannot write"});
}

}  // namespace
}  // namespace moe
