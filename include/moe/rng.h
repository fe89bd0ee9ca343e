// Seeded random numbers that are identical on every platform and compiler: xoshiro256**
// seeded through splitmix64, Box-Muller normals. (std::normal_distribution is
// implementation-defined, so it cannot be used where runs must be reproducible.)
// The whole state is a plain struct so checkpoints can save and restore it.
#pragma once

#include <array>
#include <cstdint>

namespace moe {

class Rng {
 public:
  struct State {
    std::array<uint64_t, 4> s{};
    double spare_normal = 0.0;
    bool has_spare = false;
  };

  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed);

  uint64_t next_u64();
  double uniform();            // [0, 1)
  double normal();             // N(0, 1)
  uint64_t below(uint64_t n);  // uniform integer in [0, n)

  template <class T>
  void fill_normal(T* out, int64_t n, double mean = 0.0, double std = 1.0) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(mean + std * normal());
  }
  template <class T>
  void fill_uniform(T* out, int64_t n, double lo, double hi) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(lo + (hi - lo) * uniform());
  }

  const State& state() const { return state_; }
  void set_state(const State& s) { state_ = s; }

 private:
  State state_;
};

}  // namespace moe
