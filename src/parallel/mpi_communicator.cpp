// The MPI communicator (Open MPI). Compiled only when CMake finds MPI (MOE_HAVE_MPI); the
// single-process stubs of mpi_available/make_mpi_communicator are at the bottom otherwise.
#include <fmt/core.h>

#include <chrono>
#include <climits>
#include <cstdio>

#include "moe/communicator.h"
#include "moe/error.h"

#ifdef MOE_HAVE_MPI
#include <mpi.h>

namespace moe {

namespace {

// MPI calls return an error code; with MPI_ERRORS_RETURN set on the world communicator, turn
// a failure into a moe::Error naming the call.
void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(fmt::format("MPI: {} failed: {}", what, std::string(text, len)));
}

int to_int(int64_t v, const char* what) {
  MOE_CHECK(v >= 0 && v <= INT_MAX, "MPI: {} = {} does not fit MPI's int count", what, v);
  return static_cast<int>(v);
}

class Timer {
 public:
  explicit Timer(CommStats& s) : s_(s), t0_(std::chrono::steady_clock::now()) {}
  ~Timer() {
    s_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    ++s_.calls;
  }

 private:
  CommStats& s_;
  std::chrono::steady_clock::time_point t0_;
};

class Mpi final : public Communicator {
 public:
  explicit Mpi(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~Mpi() override {
    if (owned_) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(float* data, int64_t n) override { reduce(data, n, MPI_FLOAT, 4); }
  void allreduce_sum(double* data, int64_t n) override { reduce(data, n, MPI_DOUBLE, 8); }
  void allreduce_sum(int64_t* data, int64_t n) override { reduce(data, n, MPI_INT64_T, 8); }

  void allgather(const void* send, int64_t bytes, void* recv) override {
    Timer t(stats_);
    stats_.other_bytes += bytes * size_;
    mpi_check(MPI_Allgather(send, to_int(bytes, "allgather bytes"), MPI_BYTE, recv,
                            to_int(bytes, "allgather bytes"), MPI_BYTE, comm_),
              "MPI_Allgather");
  }
  void alltoall_counts(const int64_t* send_counts, int64_t* recv_counts) override {
    Timer t(stats_);
    mpi_check(MPI_Alltoall(send_counts, 1, MPI_INT64_T, recv_counts, 1, MPI_INT64_T, comm_),
              "MPI_Alltoall (counts)");
  }
  void alltoallv(const void* send, const int64_t* send_bytes, void* recv,
                 const int64_t* recv_bytes) override {
    Timer t(stats_);
    std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size_; ++r) {
      sc[r] = to_int(send_bytes[r], "alltoallv send bytes");
      rc[r] = to_int(recv_bytes[r], "alltoallv receive bytes");
      sd[r] = to_int(so, "alltoallv send offset");
      rd[r] = to_int(ro, "alltoallv receive offset");
      so += send_bytes[r];
      ro += recv_bytes[r];
      if (r != rank_) {  // what crosses the network; the self block is a local copy
        stats_.alltoall_bytes_sent += send_bytes[r];
        stats_.alltoall_bytes_received += recv_bytes[r];
      }
    }
    mpi_check(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(),
                            MPI_BYTE, comm_),
              "MPI_Alltoallv");
  }
  void barrier() override { mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    mpi_check(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    return std::make_unique<Mpi>(sub, true);
  }
  [[noreturn]] void abort(const std::string& message, int code) override {
    if (rank_ == 0) {
      std::fprintf(stderr, "%s\n", message.c_str());
      std::fflush(stderr);
    }
    // Every rank reaches the same check, so all leave with the same code; MPI_Abort would
    // also do, but prints a banner per rank.
    MPI_Barrier(comm_);
    MPI_Finalize();
    std::exit(code);
  }

 private:
  void reduce(void* data, int64_t n, MPI_Datatype type, int64_t esize) {
    Timer t(stats_);
    stats_.other_bytes += n * esize;
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, data, to_int(n, "allreduce count"), type, MPI_SUM, comm_),
              "MPI_Allreduce");
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool mpi_available() {
  return true;
}

std::unique_ptr<Communicator> make_mpi_communicator() {
  int init = 0;
  MPI_Initialized(&init);
  if (!init) {
    int provided = 0;
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init");
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return std::make_unique<Mpi>(MPI_COMM_WORLD, false);
}

}  // namespace moe

#else  // !MOE_HAVE_MPI

namespace moe {
bool mpi_available() {
  return false;
}
std::unique_ptr<Communicator> make_mpi_communicator() {
  throw Error(
      "this moe was built without MPI (install libopenmpi-dev, scripts/setup.sh does, and "
      "rebuild)");
}
}  // namespace moe

#endif
