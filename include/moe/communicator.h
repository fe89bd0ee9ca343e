// The collective operations expert and data parallelism need, behind one small interface with
// two implementations: a single process (every collective is a copy) and MPI (Open MPI). The
// library builds and runs without MPI; make_mpi_communicator() then throws.
//
// Every call is collective: all ranks of the communicator make it, in the same order, with
// matching sizes. Counts and byte sizes are int64 here and checked to fit MPI's int.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moe {

// Bytes and seconds spent in collectives since the last reset (per rank).
struct CommStats {
  int64_t alltoall_bytes_sent = 0, alltoall_bytes_received = 0;
  int64_t other_bytes = 0;  // allreduce / allgather payloads
  double seconds = 0;       // wall time inside collectives (includes waiting for peers)
  int64_t calls = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: data = sum over ranks.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  virtual void allreduce_sum(int64_t* data, int64_t n) = 0;
  // recv = the ranks' `bytes`-byte blocks concatenated in rank order (size() * bytes).
  virtual void allgather(const void* send, int64_t bytes, void* recv) = 0;
  // recv_counts[r] = what rank r put in send_counts[this rank] (size() entries each).
  virtual void alltoall_counts(const int64_t* send_counts, int64_t* recv_counts) = 0;
  // Block r of send (send_bytes[r] bytes, back to back) goes to rank r; block r of recv comes
  // from rank r. A rank may send or receive zero bytes.
  virtual void alltoallv(const void* send, const int64_t* send_bytes, void* recv,
                         const int64_t* recv_bytes) = 0;
  virtual void barrier() = 0;
  // A communicator of the ranks that pass the same color, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Ends every rank of the job (MPI_Abort) after rank 0 printed `message`; used when a
  // wrong launch must not leave other ranks waiting in a collective.
  [[noreturn]] virtual void abort(const std::string& message, int code) = 0;

  CommStats& stats() { return stats_; }

 protected:
  CommStats stats_;
};

std::unique_ptr<Communicator> make_single_process_communicator();

// True when the library was built with MPI.
bool mpi_available();
// Initializes MPI (once per process) and returns the world communicator. Throws when built
// without MPI.
std::unique_ptr<Communicator> make_mpi_communicator();
// True when this process was started by mpirun/mpiexec (Open MPI's environment is set).
bool launched_by_mpirun();

// The layout of expert parallelism: world size W = P * (W / P); ranks r = g * P + e hold the
// experts of expert-parallel rank e and the data of replica group g.
struct ParallelLayout {
  int world = 1, rank = 0;
  int expert_parallel = 1;  // P
  int ep_rank() const { return rank % expert_parallel; }
  int dp_group() const { return rank / expert_parallel; }
  int dp_groups() const { return world / expert_parallel; }
  // One line naming what is wrong with P for E experts on W ranks, or "".
  static std::string check(int world, int expert_parallel, int num_experts);
};

// The communicators one rank uses: all ranks (data parallelism of non-expert weights and the
// global routing), its expert-parallel group (the all-to-all), and the replicas of its
// experts (expert gradients).
struct ParallelGroups {
  ParallelLayout layout;
  std::unique_ptr<Communicator> world, expert_group, expert_replicas;
};
ParallelGroups make_parallel_groups(std::unique_ptr<Communicator> world, int expert_parallel);

// The groups of this launch: null for one process (where expert_parallel > 1 is refused: it
// needs mpirun), else the MPI world split for expert_parallel (0 counts as 1) with checks of
// the layout against num_experts. Every rank decides from values they all share, so a wrong
// launch stops every rank the same way.
std::unique_ptr<ParallelGroups> parallel_groups_of_launch(int expert_parallel, int num_experts);

// Runs work(true) on rank 0 and, once it has succeeded, work(false) on the other ranks: for a
// step that prepares files rank 0 writes and the others read (a corpus, a tokenizer). A
// moe::Error on rank 0 is shared first, so no rank waits for a peer that has stopped: rank 0
// rethrows it and the others return false. Returns true when the work ran on this rank.
bool rank0_first(Communicator& world, const std::function<void(bool rank0)>& work);

}  // namespace moe
