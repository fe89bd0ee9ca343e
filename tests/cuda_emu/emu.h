// A CPU emulator for the part of the CUDA runtime and cuBLAS that src/cuda uses, so that the
// CUDA backend's kernels and host code run, unchanged, in every CPU build and CI run
// (test_cuda_moe_emulated, test_cuda_transformer_emulated; docs/cuda.md "The CPU emulator").
//
// What it checks: indexing and layouts, cuBLAS argument conventions (column-major, leading
// dimensions, which arrays live on the device), __syncthreads and warp-shuffle protocols
// (each emulated thread is a fiber; a barrier that not every live thread reaches is reported),
// reads of device memory that was never written (cudaMalloc fills it with NaN bytes), device
// memory touched from host code or host memory passed to a kernel (device memory is
// PROT_NONE outside kernels, copies and cuBLAS calls), and out-of-bounds accesses past the end
// of a device allocation (each one ends at a guard page).
// What it cannot check: timing, real-GPU concurrency (streams run in issue order, blocks run
// one after another, threads of a block interleave only at barriers), device libm ulps, and
// the real cuBLAS kernels. It is test infrastructure, never part of the library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace moe_emu {

// The launch coordinates of the emulated thread that runs now.
struct ThreadCoords {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
extern ThreadCoords g_coords;

// Barriers, called from kernel code.
void sync_threads();
// Exchange of up to 8 bytes among the lanes of the caller's warp named in mask: every lane
// deposits `value`, waits for the others, and reads lane `source` (or its own value when
// `source` is out of range, as __shfl_down_sync does past the end of its segment).
void warp_exchange(unsigned mask, const void* value, int size, int source, void* out);

// Whether p (a kernel argument or a cuBLAS operand) may be dereferenced on the device:
// null, inside a cudaMalloc allocation (one past its end included), or cudaMallocHost memory.
bool device_accessible(const void* p);
[[noreturn]] void fatal(const char* format, ...);

// While a Device scope is alive, device memory is readable and writable (kernels, copies,
// cuBLAS); outside, it is PROT_NONE, so host code that dereferences it faults with a message.
class DeviceScope {
 public:
  explicit DeviceScope(const char* what);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
};

// Runs body(context) once per thread of the grid. Returns false (and sets the error that
// cudaGetLastError reports) when the launch configuration is invalid.
bool run_grid(const char* kernel, dim3 grid, dim3 block, void (*body)(void*), void* context);

template <class Fn>
struct BoundLaunch {
  const char* kernel;
  dim3 grid, block;
  Fn fn;

  template <class... Args>
  void operator()(Args... args) {
    int index = 0;
    (check_argument(args, index++), ...);
    auto call = [&] { fn(args...); };
    run_grid(
        kernel, grid, block, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  }

  template <class A>
  void check_argument(const A& a, int index) {
    if constexpr (std::is_pointer_v<A>) {
      if (!device_accessible(a))
        fatal("kernel %s: argument %d (%p) is host memory, not a device pointer", kernel, index,
              static_cast<const void*>(a));
    }
  }
};

struct Launch {
  const char* kernel;
  dim3 grid, block;
  const void* stream;  // streams run in issue order: kept only for the signature
  template <class Fn>
  BoundLaunch<Fn> bind(Fn fn) const {
    return BoundLaunch<Fn>{kernel, grid, block, fn};
  }
};

}  // namespace moe_emu
