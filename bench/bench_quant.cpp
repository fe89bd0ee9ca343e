// Google Benchmark program for linear_forward on every weight type (bench/README.md,
// "bench_quant"):
//
//   Linear/<type>/<kernel>/n:<rows of x>/out:<W rows>/in:<W cols>
//
// at n = 1 (decode) and n = 128 (prefill), on an expert's two shapes (2816 x 1024 and
// 1024 x 2816), for F32, BF16 and the quantized types (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) with each
// int8 implementation this CPU runs (avx2, avx512-vnni).
//
// Each iteration multiplies by the next of a pool of matrices that together exceed the last-level
// cache (128 MiB of weights), so a decode step reads its weights from memory as a model's decode
// does, not from L3. Quantized blocks hold random bytes with fp16 scales of a sane size (the speed
// does not depend on the values).
//
// Counters: weight_GB/s (bytes of weights read per second: the figure to hold against the memory
// bandwidth in decode), GOP/s (2 per multiply-add). Wall-clock time (UseRealTime), 3 repetitions;
// quote the median. Threads: moe::set_num_threads(MOE_BENCH_THREADS), default 2.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/quant_dot.h"
#include "moe/linear.h"
#include "moe/parallel.h"
#include "moe/quant.h"
#include "moe/safetensors.h"

namespace {

constexpr int64_t kPoolBytes = int64_t{128} << 20;

// xorshift64: fast enough to fill the pools.
uint64_t next(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

// A pool of matrices [rows, cols] of `type`, random values (fp32/bf16 in +-1; block scales
// replaced by fp16 0.01 so every block is finite).
struct Pool {
  std::vector<uint8_t> bytes;
  int64_t matrix_bytes = 0, count = 0;
};

Pool make_pool(moe::GgmlType type, int64_t rows, int64_t cols) {
  Pool p;
  p.matrix_bytes = moe::row_bytes(type, cols) * rows;
  p.count = std::max<int64_t>(2, kPoolBytes / p.matrix_bytes);
  p.bytes.resize(static_cast<size_t>(p.matrix_bytes * p.count));
  uint64_t s = 0x9E3779B97F4A7C15ull;
  if (type == moe::GgmlType::F32 || type == moe::GgmlType::BF16) {
    std::vector<float> row(static_cast<size_t>(cols));
    const int64_t rb = moe::row_bytes(type, cols);
    for (int64_t r = 0; r < rows * p.count; ++r) {
      for (auto& v : row) v = static_cast<float>(next(s) % 2001) / 1000.f - 1.f;
      moe::quantize_row(type, row.data(), p.bytes.data() + r * rb, cols);
    }
    return p;
  }
  for (size_t i = 0; i + 8 <= p.bytes.size(); i += 8) {
    const uint64_t v = next(s);
    std::memcpy(p.bytes.data() + i, &v, 8);
  }
  const moe::GgmlBlock blk = moe::ggml_block(static_cast<uint32_t>(type));
  const uint16_t scale = moe::float_to_f16(0.01f);
  for (int64_t off = 0; off < static_cast<int64_t>(p.bytes.size()); off += blk.bytes) {
    uint8_t* b = p.bytes.data() + off;
    switch (type) {
      case moe::GgmlType::Q8_0:
      case moe::GgmlType::Q4_0:
        std::memcpy(b, &scale, 2);
        break;
      case moe::GgmlType::Q4_K:
      case moe::GgmlType::Q5_K:
        std::memcpy(b, &scale, 2);
        std::memcpy(b + 2, &scale, 2);
        break;
      case moe::GgmlType::Q6_K:
        std::memcpy(b + offsetof(moe::BlockQ6_K, d), &scale, 2);
        break;
      default:
        break;
    }
  }
  return p;
}

void linear(benchmark::State& state, moe::GgmlType type, moe::QuantKernel kernel) {
  const int64_t n = state.range(0), rows = state.range(1), cols = state.range(2);
  moe::set_quant_kernel(kernel);
  const Pool pool = make_pool(type, rows, cols);
  std::vector<float> x(static_cast<size_t>(n * cols)), y(static_cast<size_t>(n * rows));
  uint64_t s = 42;
  for (auto& v : x) v = static_cast<float>(next(s) % 2001) / 1000.f - 1.f;
  int64_t m = 0;
  for (auto _ : state) {
    const moe::WeightView w{pool.bytes.data() + m * pool.matrix_bytes, type, rows, cols};
    moe::linear_forward(x.data(), n, w, y.data());
    benchmark::DoNotOptimize(y.data());
    m = (m + 1) % pool.count;
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_GB/s"] = benchmark::Counter(
      static_cast<double>(pool.matrix_bytes) * iters * 1e-9, benchmark::Counter::kIsRate);
  state.counters["GOP/s"] =
      benchmark::Counter(2.0 * n * rows * cols * iters * 1e-9, benchmark::Counter::kIsRate);
  moe::set_quant_kernel(moe::QuantKernel::Auto);
}

void register_all() {
  const char* threads = std::getenv("MOE_BENCH_THREADS");
  moe::set_num_threads(threads ? std::atoi(threads) : 2);
  struct Case {
    moe::GgmlType type;
    moe::QuantKernel kernel;
  };
  std::vector<Case> cases = {{moe::GgmlType::F32, moe::QuantKernel::Auto},
                             {moe::GgmlType::BF16, moe::QuantKernel::Auto}};
  for (moe::GgmlType t : {moe::GgmlType::Q8_0, moe::GgmlType::Q4_0, moe::GgmlType::Q4_K,
                          moe::GgmlType::Q5_K, moe::GgmlType::Q6_K})
    for (moe::QuantKernel k : {moe::QuantKernel::Avx512, moe::QuantKernel::Avx2})
      if (moe::quant_kernel_supported(k)) cases.push_back({t, k});
  for (const Case& c : cases) {
    std::string name = "Linear/" + moe::ggml_type_name(static_cast<uint32_t>(c.type));
    if (c.kernel != moe::QuantKernel::Auto)
      name += std::string("/") + moe::quant_kernel_name(c.kernel);
    auto* b = benchmark::RegisterBenchmark(name.c_str(), linear, c.type, c.kernel);
    b->ArgNames({"n", "out", "in"});
    for (int64_t n : {1, 128}) {
      b->Args({n, 2816, 1024});
      b->Args({n, 1024, 2816});
    }
    b->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5)->Repetitions(3);
    b->ReportAggregatesOnly(true);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
