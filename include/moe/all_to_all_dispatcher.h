// The all-to-all token dispatcher of expert parallelism: the MPI twin of the local dispatcher
// (permute.h). P ranks of an expert group each hold E/P experts (rank q: [q*E/P, (q+1)*E/P)).
// A rank's kept rows, already expert-major from its local permutation (so the rows for peer q
// are one contiguous run), travel to the owners of their experts and back:
//   1. counts all-to-all: rows per (peer, local expert), both ways (exchange_counts);
//   2. rows all-to-all (MPI_Alltoallv), then a local regroup by expert: received rows arrive
//      peer-major, blocks are expert-major, within an expert peer-major = token order
//      (dispatch); undispatch is the exact reverse.
// A rank may send or receive zero rows.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/communicator.h"
#include "moe/permute.h"

namespace moe {

template <class T>
class AllToAllDispatcher {
 public:
  // group: the expert group (its rank is the shard index); E experts in all; rows of d values.
  AllToAllDispatcher(Communicator& group, int num_experts, int64_t d);

  // Exchanges the rows per expert of the local permutation; sets the received layout.
  void exchange_counts(const Permutation& local);
  int64_t received_rows() const { return R_; }
  // [E/P + 1]: local expert j owns received block rows [offsets[j], offsets[j+1]).
  const int64_t* block_offsets() const { return block_offsets_.data(); }
  // rows [N, d] of the local permutation -> blocks [R, d] of this rank's experts.
  void dispatch(const T* rows, T* blocks);
  // blocks [R, d] -> rows [N, d] back to the ranks the rows came from.
  void undispatch(const T* blocks, T* rows);
  // Rows to / from other ranks in one direction of the last exchange.
  int64_t rows_sent() const;
  int64_t rows_received() const;

 private:
  Communicator* group_;
  int P_, El_, q_;
  int64_t d_;
  std::vector<int64_t> send_counts_, recv_counts_;  // [P * El]
  std::vector<int64_t> send_bytes_, recv_bytes_;    // [P] row bytes to / from each peer
  std::vector<int64_t> count_bytes_;                // [P] bytes of one peer's counts
  std::vector<int64_t> block_offsets_;              // [El + 1]
  std::vector<int64_t> cursor_;                     // [El]
  std::vector<int64_t> recv_to_block_;              // [R] receive index -> block row
  int64_t R_ = 0;
  std::vector<T> buf_;  // [R, d] rows in arrival order
};

}  // namespace moe
