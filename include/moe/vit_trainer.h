// Training and evaluation of the ViT-MoE encoder (vit.h) on the glyph images (images.h):
// AdamW with warmup + cosine (optimizer.h), one metrics.jsonl line per step, test accuracy
// every eval_every steps, and at the end in the run directory: config.json, model.safetensors
// (atomic writes), summary.json, expert_classes.json (which experts take which classes) and,
// when routing can skip patches, patches.svg (kept vs dropped patches of test images).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moe/images.h"
#include "moe/vit.h"

namespace moe {

struct VitEval {
  double accuracy = 0, loss = 0;
  double dropped_fraction = 0;  // mean over test batches (vit.h VitModel::dropped_fraction)
  // Per MoE layer: [E, K] tokens of each class whose main expert is e (VitModel::token_routing).
  std::vector<std::vector<int64_t>> expert_class;
  std::vector<int> moe_layers;
};

// Test accuracy in fixed batches of batch_size (top-k capacity is per batch, as in training).
VitEval evaluate_vit(VitModel<float>& model, const ImageSet& set, int batch_size);

// Runs the first batch_size images of `set` through the model and writes an SVG of `count` of
// them, spread evenly over the batch (image i * B / count), with each
// patch of MoE layer `layer` outlined: green = all its assignments ran, orange = some dropped,
// red = every assignment dropped (the residual alone carries it). Returns the number of fully
// dropped patches drawn.
int write_patch_svg(VitModel<float>& model, const ImageSet& set, int layer, int count,
                    int batch_size, const std::string& path, const std::string& title);

struct VitTrainOptions {
  std::string out_dir = "runs/vit";
  std::function<void(const std::string&)> log;  // progress lines (may be empty)
};

struct VitRunResult {
  double test_accuracy = 0, test_loss = 0, test_dropped_fraction = 0;
  double train_seconds = 0;
  int steps = 0;
  int64_t parameters = 0;
};

VitRunResult train_vit(const VitConfig& config, const VitTrainOptions& opt);

}  // namespace moe
