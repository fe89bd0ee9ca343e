// The emulated CUDA runtime (see emu.h): device memory with guard pages and host-mode
// protection, kernel launches with one fiber per thread, barriers and warp exchanges, streams
// and events as no-ops (every call runs to completion in issue order).
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define MOE_EMU_ASAN 1
#else
#define MOE_EMU_ASAN 0
#endif

namespace moe_emu {

ThreadCoords g_coords;

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kFiberStack = 256 * 1024;  // ASan frames are large; untouched pages cost nothing

// --- errors -------------------------------------------------------------------------------

cudaError_t g_last_error = cudaSuccess;
const char* g_activity = "host code";  // what runs now, for fault messages
const char* g_kernel = nullptr;

// --- device memory ------------------------------------------------------------------------

struct Allocation {
  char* map_base;  // [guard page | data pages | guard page]
  size_t map_size;
  char* data_pages;
  size_t data_size;
  char* user;  // ends within 7 bytes of the trailing guard page
  size_t size;
};

std::map<const char*, Allocation> g_allocations;  // by user pointer
std::map<const void*, size_t> g_pinned;           // cudaMallocHost memory: start -> size
int g_device_depth = 0;

unsigned char fill_byte() {
  static const unsigned char byte = [] {
    const char* env = std::getenv("MOE_CUDA_EMU_FILL");
    return env ? static_cast<unsigned char>(std::strtoul(env, nullptr, 0)) : 0xff;
  }();
  return byte;
}

void protect_all(int prot) {
  for (auto& [user, a] : g_allocations)
    if (mprotect(a.data_pages, a.data_size, prot) != 0) fatal("mprotect failed");
}

// The allocation that p lies in (one past the end included), or null.
const Allocation* find_allocation(const void* p) {
  const char* c = static_cast<const char*>(p);
  auto it = g_allocations.upper_bound(c);
  if (it == g_allocations.begin()) return nullptr;
  --it;
  const Allocation& a = it->second;
  return c >= a.user && c <= a.user + a.size ? &a : nullptr;
}

bool in_pinned(const void* p, size_t bytes) {
  auto it = g_pinned.upper_bound(p);
  if (it == g_pinned.begin()) return false;
  --it;
  const char* base = static_cast<const char*>(it->first);
  const char* c = static_cast<const char*>(p);
  return c >= base && c + bytes <= base + it->second;
}

}  // namespace

bool device_range(const void* p, size_t bytes) {
  const Allocation* a = find_allocation(p);
  return a && static_cast<const char*>(p) + bytes <= a->user + a->size;
}

void report(const char* context, const char* format, va_list args) {
  std::fprintf(stderr, "cuda emulator: %s%s", context ? context : "", context ? ": " : "");
  std::vfprintf(stderr, format, args);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

namespace {

// --- fault messages -----------------------------------------------------------------------

void write_message(const char* text) {
  const ssize_t ignored = write(2, text, std::strlen(text));
  (void)ignored;
}

void on_fault(int sig, siginfo_t* info, void*) {
  char text[512];
  const char* addr = static_cast<const char*>(info->si_addr);
  const char* what = "an address outside emulated device memory";
  long offset = 0;
  size_t size = 0;
  for (auto& [user, a] : g_allocations) {
    if (addr >= a.map_base && addr < a.map_base + a.map_size) {
      size = a.size;
      offset = static_cast<long>(addr - a.user);
      what = addr < a.user || addr >= a.user + a.size ? "outside a device allocation (guard page)"
             : g_device_depth == 0                    ? "device memory from host code"
                                                      : "device memory";
      break;
    }
  }
  if (g_kernel) {
    std::snprintf(text, sizeof text,
                  "\ncuda emulator: %s at %p: %s (offset %ld of a %zu-byte allocation), in "
                  "kernel %s, block (%u,%u,%u) thread (%u,%u,%u)\n",
                  sig == SIGSEGV ? "segmentation fault" : "bus error", info->si_addr, what, offset,
                  size, g_kernel, g_coords.block_idx.x, g_coords.block_idx.y, g_coords.block_idx.z,
                  g_coords.thread_idx.x, g_coords.thread_idx.y, g_coords.thread_idx.z);
  } else {
    std::snprintf(text, sizeof text,
                  "\ncuda emulator: %s at %p: %s (offset %ld of a %zu-byte allocation), in %s\n",
                  sig == SIGSEGV ? "segmentation fault" : "bus error", info->si_addr, what, offset,
                  size, g_activity);
  }
  write_message(text);
  signal(sig, SIG_DFL);  // returning re-runs the access, which now ends the process
}

struct FaultHandler {
  FaultHandler() {
    static char alt_stack[64 * 1024];
    stack_t ss{};
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof alt_stack;
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
  }
};

void install_fault_handler() {
  static FaultHandler handler;
}

// --- fibers -------------------------------------------------------------------------------

// A fiber's saved machine state. On x86-64 a switch saves the callee-saved registers, MXCSR
// and the x87 control word on the old stack and pops them from the new one: no system call,
// unlike swapcontext (which also saves the signal mask and made up 90% of the emulator's time).
#if defined(__x86_64__)
extern "C" void moe_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl moe_emu_switch
  .type moe_emu_switch, @function
moe_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size moe_emu_switch, .-moe_emu_switch
  .section .note.GNU-stack, "", @progbits
  .text
)");

struct FiberContext {
  void* sp = nullptr;
};

// A stack whose first switch "returns" into entry with the alignment of a call.
void context_init(FiberContext& c, char* stack, size_t size, void (*entry)()) {
  auto* top =
      reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15});
  top[-1] = 0;                                  // entry's return address: never used
  top[-2] = reinterpret_cast<uint64_t>(entry);  // popped by ret
  for (int r = 3; r <= 8; ++r) top[-r] = 0;     // rbp rbx r12 r13 r14 r15
  top[-9] = 0x1f80ull | (0x037full << 32);      // default MXCSR, x87 control word
  c.sp = top - 9;
}

void context_switch(FiberContext& from, FiberContext& to) {
  moe_emu_switch(&from.sp, to.sp);
}
#else
struct FiberContext {
  ucontext_t uc;
};

void context_init(FiberContext& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;  // entry never returns
  makecontext(&c.uc, entry, 0);
}

void context_switch(FiberContext& from, FiberContext& to) {
  swapcontext(&from.uc, &to.uc);
}
#endif

enum class FiberState { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  FiberContext context;
  char* stack = nullptr;  // kFiberStack bytes above a guard page
  FiberState state = FiberState::kRunnable;
  unsigned warp_mask = 0;
  dim3 thread_idx;
};

struct WarpSlots {
  uint64_t value[32];
};

std::vector<Fiber> g_fibers;
std::vector<WarpSlots> g_warp_slots;
FiberContext g_scheduler;
int g_current = -1;
void (*g_body)(void*) = nullptr;
void* g_body_context = nullptr;
#if MOE_EMU_ASAN
const void* g_main_stack_bottom = nullptr;
size_t g_main_stack_size = 0;
#endif

bool reverse_order() {
  static const bool reverse = [] {
    const char* env = std::getenv("MOE_CUDA_EMU_ORDER");
    return env && std::strcmp(env, "reverse") == 0;
  }();
  return reverse;
}

void switch_to_scheduler() {
#if MOE_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, g_main_stack_bottom, g_main_stack_size);
#endif
  context_switch(g_fibers[static_cast<size_t>(g_current)].context, g_scheduler);
#if MOE_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

void fiber_entry() {
#if MOE_EMU_ASAN
  // First entry, from the scheduler: learn the scheduler's stack to switch back to.
  __sanitizer_finish_switch_fiber(nullptr, &g_main_stack_bottom, &g_main_stack_size);
#endif
  g_body(g_body_context);
  g_fibers[static_cast<size_t>(g_current)].state = FiberState::kDone;
#if MOE_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, g_main_stack_bottom, g_main_stack_size);
#endif
  // Never resumed again: the next run_block re-initializes this context.
  context_switch(g_fibers[static_cast<size_t>(g_current)].context, g_scheduler);
  __builtin_unreachable();
}

void resume(int index) {
  Fiber& f = g_fibers[static_cast<size_t>(index)];
  g_current = index;
  g_coords.thread_idx = f.thread_idx;
#if MOE_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, f.stack, kFiberStack);
#endif
  context_switch(g_scheduler, f.context);
#if MOE_EMU_ASAN
  // Back on the scheduler's stack; the out-parameters would name the fiber's: not needed.
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  g_current = -1;
}

void ensure_fibers(size_t n) {
  while (g_fibers.size() < n) {
    Fiber f{};
    char* map = static_cast<char*>(mmap(nullptr, kFiberStack + kPage, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (map == MAP_FAILED) fatal("cannot map a fiber stack");
    mprotect(map, kPage, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    f.stack = map + kPage;
    g_fibers.push_back(f);
  }
}

// Runs one block: resumes runnable fibers until each is done or waits at a barrier, then
// releases the barrier whose participants have all arrived. Exited threads count as arrived
// at __syncthreads (as on the hardware); a warp exchange needs every lane of its mask alive.
void run_block(const char* kernel, dim3 block, size_t threads) {
  for (size_t i = 0; i < threads; ++i) {
    Fiber& f = g_fibers[i];
    f.state = FiberState::kRunnable;
    f.thread_idx =
        dim3(static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
             static_cast<unsigned>(i / (block.x * block.y)));
    context_init(f.context, f.stack, kFiberStack, fiber_entry);
  }
  const bool reverse = reverse_order();
  size_t live = threads;
  while (live > 0) {
    for (size_t j = 0; j < threads; ++j) {
      const size_t i = reverse ? threads - 1 - j : j;
      if (g_fibers[i].state != FiberState::kRunnable) continue;
      resume(static_cast<int>(i));
      if (g_fibers[i].state == FiberState::kDone) --live;
    }
    if (live == 0) break;
    size_t at_block = 0;
    for (size_t i = 0; i < threads; ++i) at_block += g_fibers[i].state == FiberState::kBlockBarrier;
    if (at_block == live) {
      for (size_t i = 0; i < threads; ++i)
        if (g_fibers[i].state == FiberState::kBlockBarrier)
          g_fibers[i].state = FiberState::kRunnable;
      continue;
    }
    bool released = false;
    for (size_t w = 0; w * 32 < threads; ++w) {
      unsigned waiting = 0, mask = 0;
      bool consistent = true;
      for (size_t lane = 0; lane < 32 && w * 32 + lane < threads; ++lane) {
        const Fiber& f = g_fibers[w * 32 + lane];
        if (f.state != FiberState::kWarpBarrier) continue;
        waiting |= 1u << lane;
        if (mask == 0) mask = f.warp_mask;
        consistent = consistent && f.warp_mask == mask;
      }
      if (waiting == 0) continue;
      if (!consistent)
        fatal("kernel %s, block (%u,%u,%u), warp %zu: lanes wait in shuffles with different masks",
              kernel, g_coords.block_idx.x, g_coords.block_idx.y, g_coords.block_idx.z, w);
      if ((waiting & mask) != mask) continue;  // some lanes of the mask have not arrived yet
      for (size_t lane = 0; lane < 32; ++lane)
        if (waiting >> lane & 1u) g_fibers[w * 32 + lane].state = FiberState::kRunnable;
      released = true;
    }
    if (released) continue;
    size_t done = threads - live;
    fatal(
        "kernel %s, block (%u,%u,%u): deadlock: %zu threads wait at __syncthreads, %zu in a warp "
        "shuffle whose lanes never all arrive, %zu have exited",
        kernel, g_coords.block_idx.x, g_coords.block_idx.y, g_coords.block_idx.z, at_block,
        live - at_block, done);
  }
}

}  // namespace

void fatal(const char* format, ...) {
  std::fprintf(stderr, "\n");
  va_list args;
  va_start(args, format);
  report(nullptr, format, args);
  va_end(args);
  std::abort();
}

DeviceScope::DeviceScope(const char* what) {
  install_fault_handler();
  if (g_device_depth++ == 0) {
    protect_all(PROT_READ | PROT_WRITE);
    g_activity = what;
  }
}

DeviceScope::~DeviceScope() {
  if (--g_device_depth == 0) {
    protect_all(PROT_NONE);
    g_activity = "host code";
  }
}

bool device_accessible(const void* p) {
  if (p == nullptr || find_allocation(p) != nullptr) return true;
  return in_pinned(p, 0);
}

void sync_threads() {
  if (g_current < 0) fatal("__syncthreads outside a kernel");
  g_fibers[static_cast<size_t>(g_current)].state = FiberState::kBlockBarrier;
  switch_to_scheduler();
}

void warp_exchange(unsigned mask, const void* value, int size, int source, void* out) {
  if (g_current < 0) fatal("warp shuffle outside a kernel");
  const size_t me = static_cast<size_t>(g_current);
  const size_t warp = me / 32, lane = me % 32;
  if (!(mask >> lane & 1u))
    fatal("kernel %s: lane %zu shuffles with mask %#x that does not name it", g_kernel, lane, mask);
  if (source >= 0 && !(mask >> source & 1u))
    fatal("kernel %s: lane %zu reads lane %d, outside the shuffle mask %#x", g_kernel, lane, source,
          mask);
  WarpSlots& slots = g_warp_slots[warp];
  std::memcpy(&slots.value[lane], value, static_cast<size_t>(size));
  Fiber& f = g_fibers[me];
  f.state = FiberState::kWarpBarrier;  // every lane has deposited its value
  f.warp_mask = mask;
  switch_to_scheduler();
  std::memcpy(out, source >= 0 ? &slots.value[source] : value, static_cast<size_t>(size));
  g_fibers[me].state = FiberState::kWarpBarrier;  // every lane has read before slots are reused
  g_fibers[me].warp_mask = mask;
  switch_to_scheduler();
}

bool launch_config_ok(const char* kernel, dim3 grid, dim3 block) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535 || threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 ||
      block.z > 64) {
    std::fprintf(stderr,
                 "cuda emulator: kernel %s: invalid launch configuration grid (%u,%u,%u) block "
                 "(%u,%u,%u)\n",
                 kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    g_last_error = cudaErrorInvalidConfiguration;
    return false;
  }
  return true;
}

void run_grid(const char* kernel, dim3 grid, dim3 block, void (*body)(void*), void* context) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  DeviceScope scope(kernel);
  ensure_fibers(threads);
  g_warp_slots.resize((threads + 31) / 32);
  g_body = body;
  g_body_context = context;
  g_kernel = kernel;
  g_coords.block_dim = block;
  g_coords.grid_dim = grid;
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  for (unsigned long long j = 0; j < blocks; ++j) {
    const unsigned long long b = reverse_order() ? blocks - 1 - j : j;
    g_coords.block_idx =
        dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
             static_cast<unsigned>(b / (1ull * grid.x * grid.y)));
    run_block(kernel, block, static_cast<size_t>(threads));
  }
  g_kernel = nullptr;
}

// --- streams and events -------------------------------------------------------------------

namespace {

struct Stream {
  bool blocking = true;  // synchronizes with the legacy default stream
  std::deque<std::function<void()>> ops;
  uint64_t enqueued = 0, executed = 0;
};

struct Event {
  Stream* stream = nullptr;
  uint64_t position = 0;  // the stream's work up to here precedes the event
};

Stream g_default_stream;
std::set<Stream*> g_streams = {&g_default_stream};
int g_flush_depth = 0;

Stream* stream_of(const void* s) {
  return s ? static_cast<Stream*>(const_cast<void*>(s)) : &g_default_stream;
}

// Runs the stream's queued work up to position `upto` (of all it ever enqueued).
void flush(Stream* st, uint64_t upto) {
  if (++g_flush_depth > 64) fatal("streams wait on each other in a cycle");
  while (st->executed < upto && !st->ops.empty()) {
    std::function<void()> op = std::move(st->ops.front());
    st->ops.pop_front();
    ++st->executed;
    op();
  }
  --g_flush_depth;
}
void flush_all(Stream* st) {
  flush(st, st->enqueued);
}
void flush_every_stream() {
  for (bool again = true; again;) {  // a flush may enqueue nothing, but may drain others
    again = false;
    for (Stream* st : g_streams)
      if (st->executed < st->enqueued) {
        flush_all(st);
        again = true;
      }
  }
}
// The legacy default stream and the blocking streams: what a synchronous call waits for.
void flush_legacy() {
  for (Stream* st : g_streams)
    if (st->blocking) flush_all(st);
}

}  // namespace

void enqueue(const void* stream, std::function<void()> op) {
  Stream* st = stream_of(stream);
  if (st->blocking) {
    // Legacy semantics: default-stream work waits for the blocking streams' earlier work, and
    // theirs for the default stream's.
    std::vector<std::pair<Stream*, uint64_t>> before;
    for (Stream* other : g_streams)
      if (other != st && other->blocking && (st == &g_default_stream || other == &g_default_stream))
        before.emplace_back(other, other->enqueued);
    if (!before.empty()) {
      st->ops.push_back([before] {
        for (auto [other, pos] : before) flush(other, pos);
      });
      ++st->enqueued;
    }
  }
  st->ops.push_back(std::move(op));
  ++st->enqueued;
}

}  // namespace moe_emu

using moe_emu::DeviceScope;

// --- runtime API ------------------------------------------------------------------------------

namespace {

cudaError_t fail(cudaError_t error, const char* format, ...) {
  va_list args;
  va_start(args, format);
  moe_emu::report(nullptr, format, args);
  va_end(args);
  return error;
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  const char* env = std::getenv("MOE_CUDA_EMU_DEVICES");
  *count = env ? std::atoi(env) : 1;
  return *count > 0 ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "moe CPU emulator");
  prop->major = 9;
  prop->multiProcessorCount = 1;
  prop->totalGlobalMem = size_t{1} << 34;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = moe_emu::g_last_error;
  moe_emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  return moe_emu::g_last_error;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection:
      return "invalid copy direction for memcpy";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  moe_emu::install_fault_handler();
  const size_t data_size =
      std::max<size_t>((size + moe_emu::kPage - 1) / moe_emu::kPage, 1) * moe_emu::kPage;
  const size_t map_size = data_size + 2 * moe_emu::kPage;
  char* base = static_cast<char*>(
      mmap(nullptr, map_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (base == MAP_FAILED) return cudaErrorMemoryAllocation;
  moe_emu::Allocation a;
  a.map_base = base;
  a.map_size = map_size;
  a.data_pages = base + moe_emu::kPage;
  a.data_size = data_size;
  a.size = size;
  a.user = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(a.data_pages + data_size - size) &
                                   ~uintptr_t{7});
  mprotect(a.data_pages, a.data_size, PROT_READ | PROT_WRITE);
  std::memset(a.data_pages, moe_emu::fill_byte(), a.data_size);  // never-written reads are NaN
  if (moe_emu::g_device_depth == 0) mprotect(a.data_pages, a.data_size, PROT_NONE);
  moe_emu::g_allocations.emplace(a.user, a);
  *ptr = a.user;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  moe_emu::flush_every_stream();  // cudaFree synchronizes the device
  auto it = moe_emu::g_allocations.find(static_cast<const char*>(ptr));
  if (it == moe_emu::g_allocations.end())
    return fail(cudaErrorInvalidValue, "cudaFree(%p): not the start of a device allocation", ptr);
  munmap(it->second.map_base, it->second.map_size);
  moe_emu::g_allocations.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  void* p = std::aligned_alloc(256, std::max<size_t>((size + 255) / 256 * 256, 256));
  if (!p) return cudaErrorMemoryAllocation;
  moe_emu::g_pinned[p] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (!ptr) return cudaSuccess;
  moe_emu::flush_every_stream();
  if (!moe_emu::g_pinned.erase(ptr))
    return fail(cudaErrorInvalidValue, "cudaFreeHost(%p): not from cudaMallocHost", ptr);
  std::free(ptr);
  return cudaSuccess;
}

namespace {

// The checks of a copy; false (after a message) when the pointers do not fit the kind.
bool copy_ok(void* dst, const void* src, size_t count, cudaMemcpyKind& kind) {
  const bool dst_dev = moe_emu::device_range(dst, count),
             src_dev = moe_emu::device_range(src, count);
  if (kind == cudaMemcpyDefault)
    kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                   : (src_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  bool ok = false;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      ok = dst_dev && !src_dev;
      break;
    case cudaMemcpyDeviceToHost:
      ok = src_dev && !dst_dev;
      break;
    case cudaMemcpyDeviceToDevice:
      ok = src_dev && dst_dev;
      break;
    case cudaMemcpyHostToHost:
      ok = !src_dev && !dst_dev;
      break;
    case cudaMemcpyDefault:
      break;
  }
  if (!ok)
    fail(cudaErrorInvalidValue,
         "cudaMemcpy of %zu bytes, kind %d: destination %p is %s, source %p is %s", count,
         static_cast<int>(kind), dst, dst_dev ? "device memory" : "not a device range of that size",
         src, src_dev ? "device memory" : "not a device range of that size");
  return ok;
}

void copy_now(void* dst, const void* src, size_t count) {
  DeviceScope scope("cudaMemcpy");
  std::memmove(dst, src, count);
}

}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (count == 0) return cudaSuccess;
  if (!copy_ok(dst, src, count, kind)) return cudaErrorInvalidValue;
  moe_emu::flush_legacy();  // a legacy-stream call: after the blocking streams' work, not others'
  copy_now(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (!copy_ok(dst, src, count, kind)) return cudaErrorInvalidValue;
  if (kind == cudaMemcpyHostToDevice && !moe_emu::in_pinned(src, count)) {
    // Pageable source: staged before the call returns, so the caller may reuse it at once.
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                      static_cast<const char*>(src) + count);
    moe_emu::enqueue(stream, [dst, staged, count] { copy_now(dst, staged->data(), count); });
  } else if (kind == cudaMemcpyDeviceToHost && !moe_emu::in_pinned(dst, count)) {
    // Pageable destination: the call returns once the stream's work and the copy are done.
    moe_emu::flush_all(moe_emu::stream_of(stream));
    copy_now(dst, src, count);
  } else {
    moe_emu::enqueue(stream, [dst, src, count] { copy_now(dst, src, count); });
  }
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  if (!moe_emu::device_range(ptr, count))
    return fail(cudaErrorInvalidValue, "cudaMemset(%p, %zu bytes): not a device range", ptr, count);
  moe_emu::flush_legacy();
  DeviceScope scope("cudaMemset");
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (!moe_emu::device_range(ptr, count))
    return fail(cudaErrorInvalidValue, "cudaMemsetAsync(%p, %zu bytes): not a device range", ptr,
                count);
  moe_emu::enqueue(stream, [ptr, value, count] {
    DeviceScope scope("cudaMemsetAsync");
    std::memset(ptr, value, count);
  });
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  auto* st = new moe_emu::Stream;
  st->blocking = !(flags & cudaStreamNonBlocking);
  moe_emu::g_streams.insert(st);
  *stream = reinterpret_cast<cudaStream_t>(st);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  moe_emu::Stream* st = moe_emu::stream_of(stream);
  if (st == &moe_emu::g_default_stream || !moe_emu::g_streams.count(st))
    return fail(cudaErrorInvalidValue, "cudaStreamDestroy(%p): not a stream",
                static_cast<void*>(stream));
  moe_emu::flush_all(st);  // its work still completes
  moe_emu::g_streams.erase(st);
  delete st;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  moe_emu::Stream* st = moe_emu::stream_of(stream);
  if (st == &moe_emu::g_default_stream)
    moe_emu::flush_legacy();
  else
    moe_emu::flush_all(st);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  moe_emu::flush_every_stream();
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  const auto* e = reinterpret_cast<moe_emu::Event*>(event);
  if (!e) return cudaErrorInvalidValue;
  if (!e->stream) return cudaSuccess;  // never recorded: nothing to wait for
  moe_emu::Stream* other = e->stream;
  const uint64_t pos = e->position;
  moe_emu::enqueue(stream, [other, pos] { moe_emu::flush(other, pos); });
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new moe_emu::Event);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  return cudaEventCreate(event);
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<moe_emu::Event*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  auto* e = reinterpret_cast<moe_emu::Event*>(event);
  if (!e) return cudaErrorInvalidValue;
  e->stream = moe_emu::stream_of(stream);
  e->position = e->stream->enqueued;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  const auto* e = reinterpret_cast<moe_emu::Event*>(event);
  if (!e) return cudaErrorInvalidValue;
  if (e->stream) moe_emu::flush(e->stream, e->position);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.0f;
  return cudaSuccess;
}

float __fadd_rn(float a, float b) {
  return a + b;
}
float __fsub_rn(float a, float b) {
  return a - b;
}
float __fmul_rn(float a, float b) {
  return a * b;
}
float __fdiv_rn(float a, float b) {
  return a / b;
}
float __fsqrt_rn(float a) {
  return std::sqrt(a);
}
