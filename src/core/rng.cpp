#include "moe/rng.h"

#include <cmath>

#include "moe/error.h"

namespace moe {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}
}  // namespace

void Rng::reseed(uint64_t seed) {
  uint64_t x = seed;
  for (auto& w : state_.s) w = splitmix64(x);
  state_.has_spare = false;
  state_.spare_normal = 0.0;
}

uint64_t Rng::next_u64() {
  auto& s = state_.s;
  const uint64_t result = rotl(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double Rng::uniform() {
  return static_cast<double>(next_u64() >> 11) * 0x1.0p-53;
}

double Rng::normal() {
  if (state_.has_spare) {
    state_.has_spare = false;
    return state_.spare_normal;
  }
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 2.0 * M_PI * u2;
  state_.spare_normal = r * std::sin(theta);
  state_.has_spare = true;
  return r * std::cos(theta);
}

uint64_t Rng::below(uint64_t n) {
  MOE_CHECK(n > 0, "Rng::below: n must be positive");
  // Lemire's multiply-shift; the tiny bias is irrelevant for sampling masks and batches.
  __extension__ using u128 = unsigned __int128;
  return static_cast<uint64_t>((static_cast<u128>(next_u64()) * n) >> 64);
}

}  // namespace moe
