#include "moe/all_to_all_dispatcher.h"

#include <algorithm>

namespace moe {

template <class T>
AllToAllDispatcher<T>::AllToAllDispatcher(Communicator& group, int num_experts, int64_t d)
    : group_(&group),
      P_(group.size()),
      El_(num_experts / group.size()),
      q_(group.rank()),
      d_(d),
      send_counts_(static_cast<size_t>(num_experts), 0),
      recv_counts_(static_cast<size_t>(num_experts), 0),
      send_bytes_(static_cast<size_t>(P_), 0),
      recv_bytes_(static_cast<size_t>(P_), 0),
      count_bytes_(static_cast<size_t>(P_), El_ * static_cast<int64_t>(sizeof(int64_t))),
      block_offsets_(static_cast<size_t>(El_ + 1), 0),
      cursor_(static_cast<size_t>(El_), 0) {}

template <class T>
void AllToAllDispatcher<T>::exchange_counts(const Permutation& local) {
  for (int e = 0; e < P_ * El_; ++e) send_counts_[e] = local.rows_of(e);  // peer e/El, expert e%El
  group_->alltoallv(send_counts_.data(), count_bytes_.data(), recv_counts_.data(),
                    count_bytes_.data());
  R_ = 0;
  for (int64_t c : recv_counts_) R_ += c;
  const int64_t row_bytes = d_ * static_cast<int64_t>(sizeof(T));
  for (int q = 0; q < P_; ++q) {
    int64_t s = 0, r = 0;
    for (int j = 0; j < El_; ++j) {
      s += send_counts_[q * El_ + j];
      r += recv_counts_[q * El_ + j];
    }
    send_bytes_[q] = s * row_bytes;
    recv_bytes_[q] = r * row_bytes;
  }
  block_offsets_[0] = 0;
  for (int j = 0; j < El_; ++j) {
    int64_t n = 0;
    for (int q = 0; q < P_; ++q) n += recv_counts_[q * El_ + j];
    block_offsets_[j + 1] = block_offsets_[j] + n;
  }
  recv_to_block_.resize(static_cast<size_t>(R_));
  std::copy(block_offsets_.begin(), block_offsets_.end() - 1, cursor_.begin());
  int64_t i = 0;
  for (int q = 0; q < P_; ++q)
    for (int j = 0; j < El_; ++j)
      for (int64_t c = 0; c < recv_counts_[q * El_ + j]; ++c) recv_to_block_[i++] = cursor_[j]++;
  if (static_cast<int64_t>(buf_.size()) < R_ * d_) buf_.resize(static_cast<size_t>(R_ * d_));
}

template <class T>
void AllToAllDispatcher<T>::dispatch(const T* rows, T* blocks) {
  group_->alltoallv(rows, send_bytes_.data(), buf_.data(), recv_bytes_.data());
  for (int64_t i = 0; i < R_; ++i)
    std::copy_n(buf_.data() + i * d_, d_, blocks + recv_to_block_[i] * d_);
}

template <class T>
void AllToAllDispatcher<T>::undispatch(const T* blocks, T* rows) {
  for (int64_t i = 0; i < R_; ++i)
    std::copy_n(blocks + recv_to_block_[i] * d_, d_, buf_.data() + i * d_);
  group_->alltoallv(buf_.data(), recv_bytes_.data(), rows, send_bytes_.data());
}

template <class T>
int64_t AllToAllDispatcher<T>::rows_sent() const {
  int64_t n = 0;
  for (int e = 0; e < P_ * El_; ++e)
    if (e / El_ != q_) n += send_counts_[e];
  return n;
}

template <class T>
int64_t AllToAllDispatcher<T>::rows_received() const {
  int64_t n = 0;
  for (int q = 0; q < P_; ++q)
    if (q != q_)
      for (int j = 0; j < El_; ++j) n += recv_counts_[q * El_ + j];
  return n;
}

template class AllToAllDispatcher<float>;
template class AllToAllDispatcher<double>;

}  // namespace moe
