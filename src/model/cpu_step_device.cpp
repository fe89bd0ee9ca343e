// make_cpu_step_device (trainer.h): the trainer's StepDevice on its own Transformer and AdamW,
// also under expert parallelism over MPI (each rank runs its share of every micro-batch).
#include <algorithm>
#include <cmath>

#include "moe/communicator.h"
#include "moe/error.h"
#include "moe/trainer.h"

namespace moe {

namespace {

// Sums the gradients over ranks (data parallelism): expert shards over the replicas of the
// shard, every other tensor over all ranks.
void allreduce_gradients(Transformer<float>& model) {
  ParallelGroups* par = model.parallel_groups();
  if (!par) return;
  for (auto& p : model.parameters()) {
    Communicator& c =
        Transformer<float>::is_expert_param(p.name) ? *par->expert_replicas : *par->world;
    if (c.size() > 1) c.allreduce_sum(p.grad, p.shape.numel());
  }
}

// Global gradient norm under expert parallelism, and clipping by it (torch
// clip_grad_norm_ semantics): after allreduce_gradients the replicated tensors are equal on
// every rank and each expert shard lives once per expert group.
double clip_parallel(Transformer<float>& model, double max_norm) {
  double sq[2] = {0, 0};                    // replicated, expert shards
  for (const auto& p : model.parameters())  // frozen tensors are not in the norm (global_grad_norm)
    if (!p.frozen) sq[Transformer<float>::is_expert_param(p.name) ? 1 : 0] += grad_sum_squares(p);
  model.parallel_groups()->expert_group->allreduce_sum(&sq[1], 1);
  const double norm = std::sqrt(sq[0] + sq[1]);
  // The scaling is clip_grad_norm's, by this norm (frozen gradients, which no update reads,
  // are left as they are).
  return max_norm > 0 ? clip_grad_norm(model.parameters(), max_norm, norm) : norm;
}

class CpuStepDevice final : public StepDevice {
 public:
  CpuStepDevice(Transformer<float>& model, AdamW<float>& adam, Rng& rng)
      : model_(model), adam_(adam), rng_(rng) {}

  std::string describe() const override { return "cpu"; }
  // The trainer's model and optimizer are this device's: nothing to copy.
  void load(Transformer<float>&, const AdamW<float>&) override {}
  void store(Transformer<float>&, AdamW<float>&) override {}
  DeviceStepStats step(const int32_t* inputs, const int32_t* targets, int B, int S,
                       int step) override {
    const TrainConfig& t = model_.config().training;
    ParallelGroups* par = model_.parallel_groups();
    const int W = par ? par->layout.world : 1, A = t.grad_accum_steps;
    // Under expert parallelism this rank's sequences of every batch: rows [b0, b0 + Bl).
    const int Bl = B / W, b0 = (par ? par->layout.rank : 0) * Bl;
    DeviceStepStats st;
    // The model times its forward and backward parts during the step only (not evaluation).
    struct ProfileScope {
      Transformer<float>& m;
      ProfileScope(Transformer<float>& model, StepProfile* p) : m(model) { m.set_profile(p); }
      ~ProfileScope() { m.set_profile(nullptr); }
    } scope(model_, profile_);
    {
      ScopedTimer timer(profile_, StepPart::Optimizer);
      model_.zero_grad();
    }
    for (int a = 0; a < A; ++a) {
      const int64_t off = (static_cast<int64_t>(a) * B + b0) * S;
      double l = model_.forward(inputs + off, targets + off, Bl, S, true, &rng_);
      double ce_scale = 1.0;
      if (W > 1) {
        // One mean over the whole batch: the ranks' cross-entropy sums over all their targets.
        double sums[2] = {model_.ce_loss() * model_.counted_targets(),
                          static_cast<double>(model_.counted_targets())};
        par->world->allreduce_sum(sums, 2);
        ce_scale = sums[1] > 0 ? model_.counted_targets() / sums[1] : 0.0;
        l = (sums[1] > 0 ? sums[0] / sums[1] : 0.0) + model_.aux_loss();
      }
      if (!std::isfinite(l)) {  // the same on every rank
        st.nonfinite = fmt::format("loss is {} (first non-finite values: {})", l,
                                   model_.first_nonfinite_activation());
        return st;
      }
      model_.backward(ce_scale / A, 1.0 / A);
      st.loss += l / A;
      st.ce += (l - model_.aux_loss()) / A;
      st.aux += model_.aux_loss() / A;
    }
    ScopedTimer timer(profile_, StepPart::Optimizer);
    allreduce_gradients(model_);
    // One process with every parameter training: the norm is NaN or inf exactly when a
    // gradient entry is, so the search for the culprit runs only then (it is a serial pass).
    const auto& params = model_.parameters();
    const bool norm_first = W == 1 && std::none_of(params.begin(), params.end(),
                                                   [](const auto& p) { return p.frozen; });
    const double norm = norm_first ? global_grad_norm(params) : -1;
    const auto* bad = !norm_first || !std::isfinite(norm) ? first_nonfinite_grad(params) : nullptr;
    int64_t bad_ranks = bad ? 1 : 0;
    if (W > 1) par->world->allreduce_sum(&bad_ranks, 1);
    if (bad_ranks > 0) {
      st.nonfinite = bad ? fmt::format("the gradient of {} holds NaN or inf", bad->name)
                         : std::string("a gradient on another rank holds NaN or inf");
      return st;
    }
    st.grad_norm = W > 1             ? clip_parallel(model_, t.grad_clip)
                   : t.grad_clip > 0 ? clip_grad_norm(params, t.grad_clip, norm)
                   : norm_first      ? norm
                                     : global_grad_norm(params);
    st.lr = learning_rate_at(t, step);
    adam_.step(st.lr);
    model_.update_selection_bias();
    return st;
  }
  const MoeMetrics* moe_metrics(int layer) const override { return model_.moe_metrics(layer); }
  void set_profile(StepProfile* p) override { profile_ = p; }

 private:
  StepProfile* profile_ = nullptr;
  Transformer<float>& model_;
  AdamW<float>& adam_;
  Rng& rng_;  // noisy routing and expert dropout
};

}  // namespace

std::unique_ptr<StepDevice> make_cpu_step_device(Transformer<float>& model, AdamW<float>& adam,
                                                 Rng& rng) {
  return std::make_unique<CpuStepDevice>(model, adam, rng);
}

}  // namespace moe
