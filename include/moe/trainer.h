// Training and evaluation of the decoder LM on tokenized data. A run directory holds:
//   config.json              the model + training config (Hugging Face style)
//   model.safetensors        weights only, docs/model.md names (for eval, generate, export)
//   checkpoint.safetensors   weights + AdamW moments + RNG + data position: --resume is bit-exact
//   tokenizer.model          the sentencepiece model (absent for the byte tokenizer; a Hugging
//                            Face tokenizer given to `moe train --tokenizer` is tokenizer.json)
//   metrics.jsonl            one JSON object per step, and one per validation
//   report.md, summary.json  the run's outcome
// Every file is written atomically; a failure (NaN, bad input) never touches what was saved.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "moe/dataset.h"
#include "moe/model_config.h"
#include "moe/optimizer.h"
#include "moe/step_profile.h"
#include "moe/tokenizer.h"
#include "moe/transformer.h"

namespace moe {

// What one optimizer step on a StepDevice did.
struct DeviceStepStats {
  double loss = 0;  // mean over the micro-batches of ce + aux
  double ce = 0, aux = 0;
  double grad_norm = 0;  // global norm before clipping
  double lr = 0;
  // Not empty when a loss or gradient was NaN or inf: what and where (layer or tensor). The
  // trainer then stops and keeps its last checkpoint.
  std::string nonfinite;
};

// Where the training steps run: the CPU model (make_cpu_step_device) or the CUDA backend
// behind `moe train --device cuda` (cuda_transformer.h, make_cuda_step_device). The CPU
// Transformer and AdamW stay the checkpoint format and evaluate the validation set: the trainer
// calls load() once they are initialized or resumed, and store() before every evaluation and
// checkpoint, so run directories are the same whichever device trained them.
class StepDevice {
 public:
  virtual ~StepDevice() = default;
  virtual std::string describe() const = 0;  // for the log, e.g. "cuda (NVIDIA H100 80GB HBM3)"
  // Weights, selection biases and AdamW state (moments and step count) from / to the CPU side.
  virtual void load(Transformer<float>& model, const AdamW<float>& adam) = 0;
  virtual void store(Transformer<float>& model, AdamW<float>& adam) = 0;
  // One optimizer step: zero_grad, training.grad_accum_steps micro-batches of B sequences
  // (inputs and targets [grad_accum_steps, B, S]), clipping and AdamW at
  // learning_rate_at(training, step), the selection-bias update.
  virtual DeviceStepStats step(const int32_t* inputs, const int32_t* targets, int B, int S,
                               int step) = 0;
  // The routing metrics of block l's last micro-batch, or null for a dense block.
  virtual const MoeMetrics* moe_metrics(int layer) const = 0;
  // Times the parts of each step() into p (null: off). A device that cannot time its parts
  // ignores it (the trainer's profile then shows only data and the unaccounted rest).
  virtual void set_profile(StepProfile* p) { (void)p; }
};

// The steps on the trainer's own model and optimizer (load and store copy nothing); under
// expert parallelism (model.parallel_groups()) each rank runs its B / W sequences of every
// micro-batch and the step is collective. rng: noisy routing and expert dropout.
std::unique_ptr<StepDevice> make_cpu_step_device(Transformer<float>& model, AdamW<float>& adam,
                                                 Rng& rng);

struct TrainOptions {
  std::string out_dir = "runs/default";
  bool resume = false;   // continue from out_dir/checkpoint.safetensors (refused when no step
                         // is left to train: nothing is written then)
  int stop_after = 0;    // > 0: stop (with a checkpoint) once this many steps are done
  bool progress = true;  // progress bar on stderr (a line every few steps when not a tty)
  // Copied into the run directory as tokenizer.model (tokenizer.json when it ends in .json);
  // empty: the byte tokenizer.
  std::string tokenizer_path;
  std::function<void(const std::string&)> log;  // one line per event; null: stderr
  // Expert (and data) parallelism over MPI: every rank calls train() with the same config
  // and data; each takes batch_size / W sequences of every batch. Rank 0 writes the run
  // directory (model.safetensors whole) and each rank its own checkpoint-rank<r>-of-<W>.
  ParallelGroups* parallel = nullptr;
  // Builds the device that runs each step (null: make_cpu_step_device); called once the config
  // is final. Not with expert parallelism.
  std::function<std::unique_ptr<StepDevice>(const ModelConfig&)> device;
  // Fine-tuning (moe train --init-from): sets the initial weights after the random init (a
  // resumed run then takes its checkpoint's). Null: the random init.
  std::function<void(Transformer<float>&)> init_weights;
  // `moe train --profile`: time the parts of every step (step_profile.h); the table goes to the
  // log at the end and out_dir/profile.json.
  bool profile = false;
};

// The memory training needs (bytes): weights, their gradients, the AdamW moments of the
// trainable part and the activations of one micro-batch.
struct TrainingMemory {
  int64_t weights = 0, gradients = 0, moments = 0, activations = 0;
  int64_t total() const { return weights + gradients + moments + activations; }
};
TrainingMemory training_memory(const Transformer<float>& model, int batch, int seq_len);
// MemAvailable of /proc/meminfo in bytes, or -1 where it cannot be read.
int64_t available_memory();

struct EvalResult {
  double loss = 0;  // mean cross-entropy over all counted targets
  int64_t tokens = 0;
  std::map<std::string, std::pair<double, int64_t>> per_domain;  // name -> (mean loss, tokens)
  // Router demand summed over the evaluated batches: [MoE layer][expert] primary assignments,
  // and dropped / all assignments per MoE layer (routing statistics of the evaluation).
  std::vector<std::vector<int64_t>> expert_load;
  std::vector<double> dropped_fraction;
};

struct TrainResult {
  int steps = 0;
  double final_train_loss = 0;
  EvalResult final_eval;
  double wall_seconds = 0;
  double tokens_per_second = 0;
  StepProfile profile;  // with TrainOptions::profile, else empty
};

// Cross-entropy over the first `max_windows` validation windows (all when <= 0), attributed
// to the domain of each target token. Under expert parallelism (model.expert_parallel()) a
// collective: every rank evaluates its share of each batch and the sums are combined.
EvalResult evaluate(Transformer<float>& model, const TokenStream& valid, int batch, int seq_len,
                    int64_t max_windows, const WindowProgress& progress = {});

// What train() refuses about a one-process run directory, for a caller to say before any slow
// work: a checkpoint in out_dir without resume (the run would be lost), or none with resume.
void check_run_directory(const std::string& out_dir, bool resume);

// Trains cfg on the data, writing the run directory. Throws moe::Error on bad input or a
// non-finite loss or gradient (naming step, layer and tensor); the last checkpoint stays.
TrainResult train(const ModelConfig& cfg, const TokenStream& train_data,
                  const TokenStream& valid_data, const TrainOptions& opt);

// A finished (or checkpointed) run: config.json, model.safetensors and its tokenizer.
struct LoadedRun {
  ModelConfig config;
  std::unique_ptr<Transformer<float>> model;
  std::unique_ptr<Tokenizer> tokenizer;
  // The run's copy of its tokenizer file (what token caches are keyed by, what a fine-tune
  // from the run tokenizes with): dir/tokenizer.model or dir/tokenizer.json; "" for the byte
  // tokenizer.
  std::string tokenizer_file;
};
LoadedRun load_run(const std::string& dir);

}  // namespace moe
