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
// What it cannot check: timing, real-GPU concurrency (queued work runs one operation at a time,
// blocks run one after another, threads of a block interleave only at barriers), device libm ulps,
// and the real cuBLAS kernels. It is test infrastructure, never part of the library.
//
// Streams are queues that run only when something waits for them (a stream or event
// synchronization, a copy into pageable host memory, cudaFree, a stream waiting on an event):
// the latest moment CUDA allows. So a host read of a pinned buffer before its copy was
// awaited, a host write into a pinned buffer an earlier copy still reads, or a stream using
// another stream's results without an event in between, all see stale data here.
#pragma once

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
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
// Whether [p, p + bytes) lies inside one cudaMalloc allocation.
bool device_range(const void* p, size_t bytes);
// One line on stderr: "cuda emulator: [context: ]<format...>".
void report(const char* context, const char* format, va_list args);
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

// False (and sets the error that cudaGetLastError reports) for an invalid launch configuration.
bool launch_config_ok(const char* kernel, dim3 grid, dim3 block);
// Runs body(context) once per thread of the grid, now.
void run_grid(const char* kernel, dim3 grid, dim3 block, void (*body)(void*), void* context);
// Appends op to the stream's queue (a cudaStream_t; null is the legacy default stream).
void enqueue(const void* stream, std::function<void()> op);

template <class Fn>
struct BoundLaunch {
  const char* kernel;
  dim3 grid, block;
  const void* stream;
  Fn fn;

  template <class... Args>
  void operator()(Args... args) {
    int index = 0;
    (check_argument(args, index++), ...);
    if (!launch_config_ok(kernel, grid, block)) return;
    // The arguments are copied now, as a launch does; the grid runs when the stream does.
    enqueue(stream, [k = kernel, g = grid, b = block, f = fn, args...]() mutable {
      auto call = [&] { f(args...); };
      run_grid(
          k, g, b, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
    });
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
  const void* stream;
  template <class Fn>
  BoundLaunch<Fn> bind(Fn fn) const {
    return BoundLaunch<Fn>{kernel, grid, block, stream, fn};
  }
};

}  // namespace moe_emu
