// Where the time of a training step goes (`moe train --profile`): wall-clock seconds per part of
// the step (embedding, norms, attention, router, dispatch, experts, combine, head and loss, the
// backward of each, optimizer, data), accumulated over the steps of a run. The parts are timed
// on the thread that drives the step (the OpenMP regions they start run inside a part), so the
// parts of a step are disjoint and sum to the step; the difference is printed as unaccounted.
// Profiling off is a null StepProfile pointer: a ScopedTimer then reads no clock.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace moe {

// The forward parts in model order, then their backwards in the same order, then the rest.
enum class StepPart : int {
  Embedding,
  Norms,  // RMSNorms and the residual adds
  Attention,
  Router,         // MoE: copy of x, logits, scores, top-k, gates, capacity, losses, metrics
  Dispatch,       // MoE: the permutation and the gather of rows into expert blocks
  Experts,        // MoE: the routed expert FFNs (GEMMs and activations)
  Combine,        // MoE: the gate-weighted scatter back
  SharedExperts,  // MoE: shared experts and their gate
  DenseFfn,       // blocks with a dense FFN
  HeadLoss,       // final norm, LM head GEMM, cross-entropy
  EmbeddingBackward,
  NormsBackward,
  AttentionBackward,
  RouterBackward,
  DispatchBackward,
  ExpertsBackward,
  CombineBackward,
  SharedExpertsBackward,
  DenseFfnBackward,
  HeadLossBackward,
  Optimizer,  // zero_grad, gradient checks, clipping, AdamW, selection-bias update
  Data,       // the next batch from the sampler
  Count
};
constexpr int kStepParts = static_cast<int>(StepPart::Count);
constexpr int kForwardParts = static_cast<int>(StepPart::EmbeddingBackward);

// The backward part of a forward part.
constexpr StepPart backward_of(StepPart p) {
  return static_cast<StepPart>(static_cast<int>(p) + kForwardParts);
}
// e.g. "experts", "experts backward".
const char* step_part_name(StepPart p);

class StepProfile {
 public:
  void add(StepPart p, double seconds) { seconds_[static_cast<int>(p)] += seconds; }
  // One whole step (the reference the parts are compared with).
  void add_step(double seconds) {
    step_seconds_ += seconds;
    ++steps_;
  }
  double seconds(StepPart p) const { return seconds_[static_cast<int>(p)]; }
  double step_seconds() const { return step_seconds_; }
  int64_t steps() const { return steps_; }
  // Sum of the parts.
  double accounted_seconds() const;

  // A table: part, ms per step, % of the step; the unaccounted rest and the step last.
  std::string table() const;
  // {"steps", "step_ms", "accounted_ms", "unaccounted_ms", "parts": {name: {"ms", "percent"}},
  // "order": [the part names in step order]} with ms per step.
  nlohmann::json to_json() const;

 private:
  std::array<double, kStepParts> seconds_{};
  double step_seconds_ = 0;
  int64_t steps_ = 0;
};

// Adds the time from construction to destruction to one part; a null profile reads no clock.
class ScopedTimer {
 public:
  using Clock = std::chrono::steady_clock;
  ScopedTimer(StepProfile* profile, StepPart part) : profile_(profile), part_(part) {
    if (profile_) start_ = Clock::now();
  }
  ~ScopedTimer() {
    if (profile_)
      profile_->add(part_, std::chrono::duration<double>(Clock::now() - start_).count());
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  StepProfile* profile_;
  StepPart part_;
  Clock::time_point start_;
};

}  // namespace moe
