// The single-process communicator and the parallel layout; the MPI one is in
// mpi_communicator.cpp (built only when MPI is found).
#include "moe/communicator.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "moe/error.h"

namespace moe {

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, int64_t) override {}
  void allreduce_sum(double*, int64_t) override {}
  void allreduce_sum(int64_t*, int64_t) override {}
  void allgather(const void* send, int64_t bytes, void* recv) override {
    if (bytes > 0 && recv != send) std::memmove(recv, send, static_cast<size_t>(bytes));
  }
  void alltoall_counts(const int64_t* send_counts, int64_t* recv_counts) override {
    recv_counts[0] = send_counts[0];
  }
  void alltoallv(const void* send, const int64_t* send_bytes, void* recv,
                 const int64_t* recv_bytes) override {
    MOE_CHECK(send_bytes[0] == recv_bytes[0], "alltoallv: sending {} bytes to self, receiving {}",
              send_bytes[0], recv_bytes[0]);
    if (send_bytes[0] > 0 && recv != send)
      std::memmove(recv, send, static_cast<size_t>(send_bytes[0]));
    stats_.alltoall_bytes_sent += send_bytes[0];
    stats_.alltoall_bytes_received += recv_bytes[0];
  }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override {
    return std::make_unique<SingleProcess>();
  }
  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::exit(code);
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcess>();
}

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr;
}

std::string ParallelLayout::check(int world, int expert_parallel, int num_experts) {
  if (expert_parallel < 1)
    return fmt::format("--expert-parallel = {} must be at least 1", expert_parallel);
  if (world % expert_parallel != 0)
    return fmt::format(
        "--expert-parallel = {} does not divide the {} processes (mpirun -np must be a "
        "multiple of it)",
        expert_parallel, world);
  if (num_experts > 0 && num_experts % expert_parallel != 0)
    return fmt::format("--expert-parallel = {} does not divide num_local_experts = {}",
                       expert_parallel, num_experts);
  if (num_experts == 0 && expert_parallel > 1)
    return fmt::format("--expert-parallel = {} needs experts, but num_local_experts = 0",
                       expert_parallel);
  return "";
}

ParallelGroups make_parallel_groups(std::unique_ptr<Communicator> world, int expert_parallel) {
  ParallelGroups g;
  g.layout.world = world->size();
  g.layout.rank = world->rank();
  g.layout.expert_parallel = expert_parallel;
  MOE_REQUIRE(g.layout.world % expert_parallel == 0, "{}",
              ParallelLayout::check(g.layout.world, expert_parallel, 0));
  // Expert group: the P consecutive ranks of one replica; replicas: equal ep_rank.
  g.expert_group = world->split(g.layout.dp_group(), g.layout.ep_rank());
  g.expert_replicas = world->split(g.layout.ep_rank(), g.layout.dp_group());
  g.world = std::move(world);
  return g;
}

std::unique_ptr<ParallelGroups> parallel_groups_of_launch(int expert_parallel, int num_experts) {
  if (!launched_by_mpirun()) {
    MOE_REQUIRE(expert_parallel <= 1,
                "--expert-parallel {} needs several processes: launch with mpirun -np N (N a "
                "multiple of {})",
                expert_parallel, expert_parallel);
    return nullptr;
  }
  auto world = make_mpi_communicator();
  const int P = std::max(expert_parallel, 1);
  const std::string bad = ParallelLayout::check(world->size(), P, num_experts);
  MOE_REQUIRE(bad.empty(), "{}", bad);
  return std::make_unique<ParallelGroups>(make_parallel_groups(std::move(world), P));
}

bool rank0_first(Communicator& world, const std::function<void(bool rank0)>& work) {
  const bool rank0 = world.rank() == 0;
  std::string failure;
  if (rank0) {
    try {
      work(true);
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  int64_t failed = failure.empty() ? 0 : 1;
  world.allreduce_sum(&failed, 1);
  if (failed) {
    MOE_REQUIRE(!rank0, "{}", failure);
    return false;
  }
  if (!rank0) work(false);
  return true;
}

}  // namespace moe
