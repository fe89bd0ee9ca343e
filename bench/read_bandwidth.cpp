// The host's memory read bandwidth as a streaming weight pass sees it: T threads (OpenMP) each
// sum their share of a buffer far larger than the caches, best of several passes. The ceiling
// that decode speed (weight bytes per token x tokens/s) is measured against.
//
//   read_bandwidth [MiB=1024] [passes=5]   (threads: OMP_NUM_THREADS)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const int64_t mib = argc > 1 ? std::atoll(argv[1]) : 1024;
  const int passes = argc > 2 ? std::atoi(argv[2]) : 5;
  const int64_t n = mib * (1 << 20) / static_cast<int64_t>(sizeof(uint64_t));
  std::vector<uint64_t> buf(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<uint64_t>(i);  // first touch per thread
  double best = 0;
  uint64_t check = 0;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = std::chrono::steady_clock::now();
    uint64_t sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += buf[i];
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s / 1e9);
    check += sum;
  }
  std::printf("read bandwidth: %.2f GB/s (%d threads, %lld MiB, best of %d; checksum %llu)\n", best,
              omp_get_max_threads(), static_cast<long long>(mib), passes,
              static_cast<unsigned long long>(check % 1000));
  return 0;
}
