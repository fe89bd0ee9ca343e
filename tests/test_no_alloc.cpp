// "Nothing in the hot path allocates per step": after a warm-up call has grown the
// workspaces, a forward+backward of the same or a smaller batch makes no heap allocation.
// Counted by replacing the global operator new for this test binary.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "count_allocations.h"
#include "moe/moe_layer.h"
#include "test_util.h"

namespace moe {
namespace {

void expect_no_allocations(MoeConfig c) {
  MoeLayer<float> layer(c);
  Rng rng(2);
  layer.init_weights(rng, 0.3);
  const int64_t T = 256, d = c.hidden_size;
  const auto x = test::random_vector<float>(rng, T * d);
  const auto dout = test::random_vector<float>(rng, T * d);
  Tensor<float> out({T, d}), dx({T, d});
  ForwardOptions<float> opt;
  opt.training = true;
  opt.rng = &rng;
  auto step = [&](int64_t tokens) {
    layer.forward(View<const float>(x.data(), {tokens, d}), out.view().rows(0, tokens), opt);
    layer.backward(View<const float>(dout.data(), {tokens, d}), dx.view().rows(0, tokens));
    layer.update_selection_bias();
  };
  step(T);  // warm-up grows every workspace
  const long before = test::allocations();
  step(T);
  step(T);
  EXPECT_EQ(test::allocations() - before, 0) << "allocations in a steady-state step";
}

TEST(NoAllocation, DroplessSoftmax) {
  MoeConfig c;
  c.hidden_size = 32;
  c.moe_intermediate_size = 48;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  expect_no_allocations(c);
}

TEST(NoAllocation, EveryFeatureOn) {
  MoeConfig c;
  c.hidden_size = 32;
  c.moe_intermediate_size = 48;
  c.num_experts = 16;
  c.num_experts_per_tok = 4;
  c.scoring_func = ScoreFunc::Sigmoid;
  c.n_group = 4;
  c.topk_group = 2;
  c.use_selection_bias = true;
  c.noisy_gating = true;
  c.expert_dropout = 0.1;
  c.capacity_factor = 1.0;
  c.drop_policy = DropPolicy::Score;
  c.overflow = OverflowAction::Reroute;
  c.n_shared_experts = 2;
  c.shared_expert_gate = true;
  c.router_importance_coef = 0.01;
  expect_no_allocations(c);
}

// The bf16 expert GEMMs pack into per-thread buffers made on a thread's first call only.
TEST(NoAllocation, Bfloat16WithSharedExperts) {
  MoeConfig c;
  c.hidden_size = 32;
  c.moe_intermediate_size = 48;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.compute_dtype = ComputeDtype::BFloat16;
  expect_no_allocations(c);
}

}  // namespace
}  // namespace moe
