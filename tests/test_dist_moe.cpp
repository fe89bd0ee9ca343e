// Expert parallelism against one process: run under `mpirun -np W` (ctest does W = 2 and 4;
// alone it runs W = 1). Every rank builds the same full layer and runs it on the whole global
// batch; the expert-parallel layer runs on this rank's slice with this rank's experts. Outputs,
// dx, the auxiliary loss, the routing decisions and every gradient (summed over ranks as the
// trainer sums them) must equal the one-process layer.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "moe/communicator.h"
#include "moe/moe_layer.h"
#include "moe/rng.h"

namespace moe {
namespace {

std::unique_ptr<Communicator> world() {
  return mpi_available() ? make_mpi_communicator() : make_single_process_communicator();
}

double rel_error(const double* a, const double* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return diff / std::max(scale, 1e-300);
}

struct Case {
  const char* name;
  MoeConfig cfg;
  std::vector<double> bias;  // selection bias (empty: none)
};

MoeConfig base_config() {
  MoeConfig c;
  c.hidden_size = 12;
  c.moe_intermediate_size = 10;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.router_z_loss_coef = 1e-2;
  c.router_importance_coef = 0.1;
  return c;
}

std::vector<Case> cases() {
  std::vector<Case> out;
  out.push_back({"dropless top-2 with a gated shared expert", base_config(), {}});
  out.back().cfg.n_shared_experts = 1;
  out.back().cfg.shared_expert_gate = true;
  out.push_back({"capacity 1.0, position policy", base_config(), {}});
  out.back().cfg.capacity_factor = 1.0;
  out.push_back({"capacity 0.75, score policy, reroute", base_config(), {}});
  out.back().cfg.capacity_factor = 0.75;
  out.back().cfg.drop_policy = DropPolicy::Score;
  out.back().cfg.overflow = OverflowAction::Reroute;
  out.push_back({"sigmoid, k = 1", base_config(), {}});
  out.back().cfg.scoring_func = ScoreFunc::Sigmoid;
  out.back().cfg.num_experts_per_tok = 1;
  // Every token selects experts 0 and 1 (the bias moves selection, not gates): the ranks
  // owning the other experts receive zero rows.
  out.push_back({"collapsed onto experts 0 and 1", base_config(), {}});
  out.back().cfg.use_selection_bias = true;
  out.back().bias = {10, 10, -10, -10, -10, -10, -10, -10};
  return out;
}

// The expert-parallel layer on communicator w (this rank's slice) against the full layer.
void expect_equals_one_process(Communicator& world_comm) {
  Communicator* w = &world_comm;
  const int W = w->size(), rank = w->rank();
  const int64_t Tl = 24, Tg = Tl * W;
  for (int P : {1, 2, 4, 8}) {
    if (W % P != 0) continue;
    for (const Case& c : cases()) {
      SCOPED_TRACE(::testing::Message() << c.name << ", W=" << W << " P=" << P);
      const MoeConfig& cfg = c.cfg;
      const int d = cfg.hidden_size, E = cfg.num_experts;
      Rng rng(42);
      MoeLayer<double> full(cfg);
      full.init_weights(rng, 0.3);
      if (!c.bias.empty()) full.selection_bias() = c.bias;
      std::vector<double> x(Tg * d), dout(Tg * d), out(Tg * d), dx(Tg * d);
      rng.fill_normal(x.data(), Tg * d, 0.0, 1.0);
      rng.fill_normal(dout.data(), Tg * d, 0.0, 1.0);
      full.forward(View<const double>(x.data(), {Tg, d}), View<double>(out.data(), {Tg, d}));
      full.params().zero_grad();
      full.backward(View<const double>(dout.data(), {Tg, d}), View<double>(dx.data(), {Tg, d}));

      ParallelGroups groups = make_parallel_groups(w->split(0, rank), P);
      MoeLayer<double> ep(cfg, &groups);
      ep.copy_from(full);
      std::vector<double> out_l(Tl * d), dx_l(Tl * d);
      const int64_t t0 = rank * Tl;
      ep.forward(View<const double>(x.data() + t0 * d, {Tl, d}),
                 View<double>(out_l.data(), {Tl, d}));
      ep.params().zero_grad();
      ep.backward(View<const double>(dout.data() + t0 * d, {Tl, d}),
                  View<double>(dx_l.data(), {Tl, d}));

      EXPECT_EQ(ep.plan().expert, full.plan().expert);
      EXPECT_EQ(ep.metrics().dropped, full.metrics().dropped);
      EXPECT_NEAR(ep.aux_loss(), full.aux_loss(), 1e-12 * std::max(1.0, full.aux_loss()));
      EXPECT_LT(rel_error(out_l.data(), out.data() + t0 * d, Tl * d), 1e-10);
      EXPECT_LT(rel_error(dx_l.data(), dx.data() + t0 * d, Tl * d), 1e-10);
      // Router and shared gradients summed over all ranks; expert gradients over the replicas.
      for (const auto& spec : ep.params().specs()) {
        const int64_t n = spec.shape.numel();
        std::vector<double> g(ep.params().grad(spec.name), ep.params().grad(spec.name) + n);
        const bool expert = spec.name.rfind("experts.", 0) == 0;
        if (expert)
          groups.expert_replicas->allreduce_sum(g.data(), n);
        else
          groups.world->allreduce_sum(g.data(), n);
        const double* ref =
            full.params().grad(spec.name) + (expert ? ep.first_expert() * (n / (E / P)) : 0);
        EXPECT_LT(rel_error(g.data(), ref, n), 1e-10) << spec.name;
      }
      if (c.bias.empty()) continue;
      // The collapsed case really leaves ranks without rows.
      int64_t got = ep.stats().rows_received;
      groups.world->allreduce_sum(&got, 1);
      if (P > 1) {
        EXPECT_GT(got, 0);
      }
    }
  }
}

TEST(ExpertParallel, EqualsOneProcess) {
  auto w = world();
  expect_equals_one_process(*w);
}

// With Open MPI built in, world() is MPI even without mpirun; the communicator a build without
// MPI uses must work on its own too.
TEST(ExpertParallel, SingleProcessCommunicator) {
  auto one = make_single_process_communicator();
  ASSERT_EQ(one->size(), 1);
  ASSERT_EQ(one->rank(), 0);
  double d[3] = {1, 2, 3};
  one->allreduce_sum(d, 3);
  EXPECT_EQ(d[2], 3.0);
  const int64_t counts[1] = {7};
  int64_t got[1] = {0};
  one->alltoall_counts(counts, got);
  EXPECT_EQ(got[0], 7);
  const char send[4] = {'a', 'b', 'c', 'd'};
  char recv[4] = {};
  const int64_t bytes[1] = {4};
  one->alltoallv(send, bytes, recv, bytes);
  EXPECT_EQ(std::string(recv, 4), "abcd");
  char gathered[4] = {};
  one->allgather(send, 4, gathered);
  EXPECT_EQ(std::string(gathered, 4), "abcd");
  EXPECT_EQ(one->split(0, 0)->size(), 1);
  expect_equals_one_process(*one);
}

TEST(ExpertParallel, WrongLayoutIsNamed) {
  EXPECT_NE(ParallelLayout::check(4, 3, 8).find("does not divide the 4 processes"),
            std::string::npos);
  EXPECT_NE(ParallelLayout::check(4, 4, 6).find("does not divide num_local_experts = 6"),
            std::string::npos);
  EXPECT_EQ(ParallelLayout::check(4, 2, 8), "");
}

}  // namespace
}  // namespace moe
