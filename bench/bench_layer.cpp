// Google Benchmark program for the MoE layer (bench/README.md explains every benchmark and
// holds the measured figures).
//
//   MoE/fwd, MoE/fwdbwd      MoeLayer<float>, softmax top-k, dropless, at three shapes
//   MoE-bf16/...             the same layers with compute_dtype = "bfloat16"
//   Dense/fwd, Dense/fwdbwd  DenseFfn<float> SwiGLU with ffn = k * 1408: the same active compute
//                            per token as the first MoE shape
//   Sgemm/block/...          the expert GEMMs of the first shape as one M = T*k block
//                            (the upper bound for grouped execution)
//   Sgemm/experts/...        the same GEMMs per expert on the row counts the router produced
//                            for the first shape (what the layer's GEMMs cost without routing)
//
// Counters: flops (rate, so it reads as FLOP/s), tokens (rate: tokens/s), load_max/mean (the
// busiest expert's load over the mean, MoE only); MoE fwdbwd also router_ms, gather_ms,
// experts_ms, combine_ms (the layer's LayerTimings laps, ms per forward+backward). FLOPs are 2 per
// multiply-add: the router's d*E per token plus 3*d*ffn per kept assignment (SwiGLU); a backward
// pass counts twice its forward. Times are wall-clock (UseRealTime): the work is multi-threaded.
// Each benchmark reports the mean, median, stddev and cv of 3 repetitions of at least 1 s each;
// quote the median.
//
// Threads: moe::set_num_threads(MOE_BENCH_THREADS), default 2, once before any benchmark runs.
// OpenBLAS picks its kernels from OPENBLAS_CORETYPE (e.g. SkylakeX) or detects the CPU; the
// value is recorded in the benchmark context.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "expert_sgemm.h"
#include "moe/dense_ffn.h"
#include "moe/gemm.h"
#include "moe/moe_config.h"
#include "moe/moe_layer.h"
#include "moe/parallel.h"
#include "moe/rng.h"
#include "moe/tensor.h"

namespace {

constexpr uint64_t kSeed = 1;
constexpr double kMinTime = 1.0;  // seconds per repetition
constexpr int kRepetitions = 3;

// Concatenation by appending (GCC 12 gives a false -Wrestrict on "literal" + std::string&&).
std::string cat(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (std::string_view p : parts) s.append(p);
  return s;
}

struct LayerShape {
  int d, ffn, experts, top_k;
  int64_t tokens;
  std::string name() const {
    return cat({"d", std::to_string(d), "_ffn", std::to_string(ffn), "_E", std::to_string(experts),
                "_k", std::to_string(top_k), "_T", std::to_string(tokens)});
  }
};

constexpr LayerShape kShapes[] = {
    {512, 1408, 8, 2, 4096},
    {1024, 2816, 8, 2, 2048},
    {1024, 704, 64, 8, 2048},  // fine-grained (DeepSeek/Qwen-MoE style)
};
constexpr int kNumShapes = static_cast<int>(std::size(kShapes));

// Sets the rate counters. flops_per_iter counts one call of the timed body.
void set_counters(benchmark::State& state, double flops_per_iter, int64_t tokens_per_iter) {
  const auto iters = static_cast<double>(state.iterations());
  state.counters["flops"] = benchmark::Counter(flops_per_iter * iters, benchmark::Counter::kIsRate);
  state.counters["tokens"] =
      benchmark::Counter(static_cast<double>(tokens_per_iter) * iters, benchmark::Counter::kIsRate);
}

// ---------------------------------------------------------------------------------------------
// MoE layer

struct MoeCase {
  MoeCase(const LayerShape& s, moe::ComputeDtype dt) : shape(s), layer(make_config(s, dt)) {
    moe::Rng rng(kSeed);
    layer.init_weights(rng, 0.02);
    // Router weights larger than the experts', as in the demo: routing is uneven, as after
    // training, rather than near-uniform.
    rng.fill_normal(layer.params().value("router.weight"), int64_t(s.experts) * s.d, 0.0, 0.1);
    const int64_t T = s.tokens, d = s.d;
    x = moe::Tensor<float>({T, d});
    out = moe::Tensor<float>({T, d});
    dout = moe::Tensor<float>({T, d});
    dx = moe::Tensor<float>({T, d});
    rng.fill_normal(x.data(), x.shape().numel());
    rng.fill_normal(dout.data(), dout.shape().numel(), 0.0, 1.0 / std::sqrt(double(T * d)));

    // Warm-up: the first call grows the workspaces.
    moe::ForwardOptions<float> opt;
    opt.training = true;
    layer.forward(x.view(), out.view(), opt);
    layer.backward(dout.view(), dx.view());

    const moe::MoeMetrics& m = layer.metrics();
    kept_per_expert = m.kept_per_expert;
    const int64_t kept =
        std::accumulate(kept_per_expert.begin(), kept_per_expert.end(), int64_t(0));
    flops_fwd = 2.0 * (double(T) * d * s.experts + 3.0 * double(kept) * d * s.ffn);
    load_max_over_mean = m.load_max_over_mean;
  }

  static moe::MoeConfig make_config(const LayerShape& s, moe::ComputeDtype dt) {
    moe::MoeConfig cfg;
    cfg.hidden_size = s.d;
    cfg.moe_intermediate_size = s.ffn;
    cfg.num_experts = s.experts;
    cfg.num_experts_per_tok = s.top_k;
    cfg.scoring_func = moe::ScoreFunc::Softmax;
    cfg.capacity_factor = 0.0;  // dropless
    cfg.hidden_act = moe::Activation::SwiGLU;
    cfg.compute_dtype = dt;
    cfg.validate("bench_layer");
    return cfg;
  }

  LayerShape shape;
  moe::MoeLayer<float> layer;
  moe::Tensor<float> x, out, dout, dx;
  std::vector<int64_t> kept_per_expert;
  double flops_fwd = 0, load_max_over_mean = 0;
};

// Built on first use and kept: the forward and forward+backward benchmarks of a shape share one
// layer, and the per-expert sgemm reads the first shape's routing.
// bf16: the same layer (same seed, same weights) with compute_dtype = "bfloat16".
MoeCase& moe_case(int i, bool bf16 = false) {
  static std::unique_ptr<MoeCase> cases[2][kNumShapes];
  if (!cases[bf16][i])
    cases[bf16][i] = std::make_unique<MoeCase>(
        kShapes[i], bf16 ? moe::ComputeDtype::BFloat16 : moe::ComputeDtype::Float32);
  return *cases[bf16][i];
}

void BM_MoeForward(benchmark::State& state, int shape, bool bf16) {
  MoeCase& c = moe_case(shape, bf16);
  const moe::ForwardOptions<float> opt;  // inference: no noise, no dropout configured anyway
  for (auto _ : state) {
    c.layer.forward(c.x.view(), c.out.view(), opt);
    benchmark::DoNotOptimize(c.out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, c.flops_fwd, c.shape.tokens);
  state.counters["load_max/mean"] = c.load_max_over_mean;
}

void BM_MoeForwardBackward(benchmark::State& state, int shape, bool bf16) {
  MoeCase& c = moe_case(shape, bf16);
  moe::ForwardOptions<float> opt;
  opt.training = true;
  // Parameter gradients accumulate (+=) across iterations, as within one optimizer step.
  // The layer's own laps (a few clock reads per pass) give the per-part counters.
  moe::LayerTimings t;
  c.layer.set_timings(&t);
  for (auto _ : state) {
    c.layer.forward(c.x.view(), c.out.view(), opt);
    c.layer.backward(c.dout.view(), c.dx.view());
    benchmark::DoNotOptimize(c.dx.data());
    benchmark::ClobberMemory();
  }
  c.layer.set_timings(nullptr);
  set_counters(state, 3.0 * c.flops_fwd, c.shape.tokens);
  state.counters["load_max/mean"] = c.load_max_over_mean;
  // ms per forward+backward: router, dispatch (gather), experts (GEMMs and SwiGLU), combine.
  const double per = 1e3 / static_cast<double>(std::max<int64_t>(1, t.forward_calls));
  state.counters["router_ms"] = (t.forward.routing + t.backward.routing) * per;
  state.counters["gather_ms"] = (t.forward.gather + t.backward.gather) * per;
  state.counters["experts_ms"] = (t.forward.experts + t.backward.experts) * per;
  state.counters["combine_ms"] = (t.forward.combine + t.backward.combine) * per;
}

// ---------------------------------------------------------------------------------------------
// Dense FFN at equal active compute: ffn = k * expert ffn.

struct DenseCase {
  explicit DenseCase(const LayerShape& s)
      : d(s.d), ffn(s.top_k * s.ffn), tokens(s.tokens), layer(d, ffn, moe::Activation::SwiGLU) {
    moe::Rng rng(kSeed);
    layer.init_weights(rng, 0.02);
    x = moe::Tensor<float>({tokens, int64_t(d)});
    out = moe::Tensor<float>({tokens, int64_t(d)});
    dout = moe::Tensor<float>({tokens, int64_t(d)});
    dx = moe::Tensor<float>({tokens, int64_t(d)});
    rng.fill_normal(x.data(), x.shape().numel());
    rng.fill_normal(dout.data(), dout.shape().numel(), 0.0, 1.0 / std::sqrt(double(tokens * d)));
    moe::ForwardOptions<float> opt;
    opt.training = true;
    layer.forward(x.view(), out.view(), opt);  // warm-up
    layer.backward(dout.view(), dx.view());
    flops_fwd = 2.0 * 3.0 * double(tokens) * d * ffn;
  }
  int d, ffn;
  int64_t tokens;
  moe::DenseFfn<float> layer;
  moe::Tensor<float> x, out, dout, dx;
  double flops_fwd = 0;
};

DenseCase& dense_case() {
  static std::unique_ptr<DenseCase> c;
  if (!c) c = std::make_unique<DenseCase>(kShapes[0]);
  return *c;
}

void BM_DenseForward(benchmark::State& state) {
  DenseCase& c = dense_case();
  const moe::ForwardOptions<float> opt;
  for (auto _ : state) {
    c.layer.forward(c.x.view(), c.out.view(), opt);
    benchmark::DoNotOptimize(c.out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, c.flops_fwd, c.tokens);
}

void BM_DenseForwardBackward(benchmark::State& state) {
  DenseCase& c = dense_case();
  moe::ForwardOptions<float> opt;
  opt.training = true;
  for (auto _ : state) {
    c.layer.forward(c.x.view(), c.out.view(), opt);
    c.layer.backward(c.dout.view(), c.dx.view());
    benchmark::DoNotOptimize(c.dx.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 3.0 * c.flops_fwd, c.tokens);
}

// ---------------------------------------------------------------------------------------------
// Plain sgemm on the expert GEMM work of the first shape (bench/expert_sgemm.h).

struct SgemmCase : moe::bench::ExpertSgemm {
  SgemmCase(const LayerShape& s, std::vector<int64_t> group_rows)
      : ExpertSgemm(s.d, s.ffn, std::move(group_rows), kSeed), tokens(s.tokens) {
    run(true);  // warm-up
  }
  int64_t tokens;
};

// One block of T*k rows and one weight set.
SgemmCase& sgemm_block_case() {
  static std::unique_ptr<SgemmCase> c;
  const LayerShape& s = kShapes[0];
  if (!c) c = std::make_unique<SgemmCase>(s, std::vector<int64_t>{s.tokens * s.top_k});
  return *c;
}

// One block per expert, of the row counts the router produced for the first shape.
SgemmCase& sgemm_experts_case() {
  static std::unique_ptr<SgemmCase> c;
  if (!c) c = std::make_unique<SgemmCase>(kShapes[0], moe_case(0).kept_per_expert);
  return *c;
}

void BM_Sgemm(benchmark::State& state, SgemmCase& (*get)(), bool backward) {
  SgemmCase& c = get();
  for (auto _ : state) {
    c.run(backward);
    benchmark::DoNotOptimize(c.y.data());
    benchmark::DoNotOptimize(c.dx.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (backward ? 3.0 : 1.0) * c.flops_fwd, c.tokens);
}

benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* b) {
  return b->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->MinTime(kMinTime)
      ->Repetitions(kRepetitions)
      ->ReportAggregatesOnly(true);
}

int threads_from_env() {
  const char* s = std::getenv("MOE_BENCH_THREADS");
  if (s == nullptr || *s == '\0') return 2;
  const int n = std::atoi(s);
  return n > 0 ? n : 2;
}

}  // namespace

int main(int argc, char** argv) {
  moe::set_num_threads(threads_from_env());
  benchmark::AddCustomContext("moe_threads", std::to_string(moe::num_threads()));
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  benchmark::AddCustomContext("OPENBLAS_CORETYPE", coretype ? coretype : "(unset)");

  for (int i = 0; i < kNumShapes; ++i) {
    const std::string n = kShapes[i].name();
    for (bool bf16 : {false, true}) {
      const char* tag = bf16 ? "MoE-bf16/" : "MoE/";
      configure(
          benchmark::RegisterBenchmark(cat({tag, "fwd/", n}).c_str(), BM_MoeForward, i, bf16));
      configure(benchmark::RegisterBenchmark(cat({tag, "fwdbwd/", n}).c_str(),
                                             BM_MoeForwardBackward, i, bf16));
    }
  }
  const LayerShape& s0 = kShapes[0];
  const std::string dense =
      cat({"d", std::to_string(s0.d), "_ffn", std::to_string(s0.top_k * s0.ffn), "_T",
           std::to_string(s0.tokens)});
  configure(benchmark::RegisterBenchmark(cat({"Dense/fwd/", dense}).c_str(), BM_DenseForward));
  configure(
      benchmark::RegisterBenchmark(cat({"Dense/fwdbwd/", dense}).c_str(), BM_DenseForwardBackward));
  const std::string sg = s0.name();
  configure(benchmark::RegisterBenchmark(cat({"Sgemm/block/fwd/", sg}).c_str(), BM_Sgemm,
                                         sgemm_block_case, false));
  configure(benchmark::RegisterBenchmark(cat({"Sgemm/block/fwdbwd/", sg}).c_str(), BM_Sgemm,
                                         sgemm_block_case, true));
  configure(benchmark::RegisterBenchmark(cat({"Sgemm/experts/fwd/", sg}).c_str(), BM_Sgemm,
                                         sgemm_experts_case, false));
  configure(benchmark::RegisterBenchmark(cat({"Sgemm/experts/fwdbwd/", sg}).c_str(), BM_Sgemm,
                                         sgemm_experts_case, true));

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
