// Counts heap allocations by replacing the global operator new. Include it in exactly one
// translation unit of a test binary (each test here is one file), then compare
// moe::test::allocations() before and after the code that must not allocate.
#pragma once

#include <atomic>
#include <cstdlib>
#include <new>

// operator delete frees what our operator new malloc-ed; GCC cannot see the pairing.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace moe::test {
inline std::atomic<long> g_allocations{0};
inline long allocations() {
  return g_allocations.load();
}
}  // namespace moe::test

void* operator new(std::size_t n) {
  moe::test::g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
