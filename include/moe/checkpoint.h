// The weight files of a run directory (trainer.h), written atomically:
//   model.safetensors        the weights alone (for eval, generate and export; the ViT trainer's
//                            too), metadata "format" and the config
//   checkpoint.safetensors   weights + AdamW moments + RNG state + data position (metadata
//                            "step", "rng", "sampler.epoch", "sampler.cursor"): --resume goes on
//                            bit for bit
// Under expert parallelism with W > 1 ranks each rank keeps its own optimizer state:
// checkpoint-rank<r>-of-<W>.safetensors (whole weights + this rank's AdamW moments).
#pragma once

#include <string>

#include "moe/dataset.h"
#include "moe/model_config.h"
#include "moe/optimizer.h"
#include "moe/rng.h"
#include "moe/transformer.h"

namespace moe {

class Communicator;
class SafeTensorsWriter;

class Checkpointer {
 public:
  explicit Checkpointer(std::string dir, int rank = 0, int world = 1)
      : dir_(std::move(dir)), rank_(rank), world_(world) {}
  // This rank's checkpoint file.
  std::string path() const;

  // Refuses a checkpoint without resume (the run would be lost), or with resume a rank without
  // its own. Collective over `world` when given.
  void check_resume(bool resume, Communicator* world = nullptr) const;

  // model.safetensors: `weights` with metadata format = `format` (and config when not empty).
  void save_model(SafeTensorsWriter& weights, const std::string& format,
                  const std::string& config = {}) const;

  // Rank 0's model.safetensors, then this rank's checkpoint (a checkpoint of step N means the
  // weights of step N are written too). Collective under expert parallelism (the experts are
  // gathered first).
  void save(const ModelConfig& cfg, Transformer<float>& model, const AdamW<float>& opt, int step,
            const Rng& rng, const BatchSampler::State& sampler) const;
  // Returns the step the checkpoint was taken after. The model must have cfg's shape; training
  // keys (steps, lr) may differ.
  int load(const ModelConfig& cfg, Transformer<float>& model, AdamW<float>& opt, Rng& rng,
           BatchSampler::State& sampler) const;

 private:
  std::string dir_;
  int rank_, world_;
};

}  // namespace moe
