// The C++ half of bench/compare_torch.sh (run by bench/compare_torch.py, once per shape and
// round): for each shape, times MoeLayer<float> forward+backward in fp32 and in bf16 (with the
// per-part breakdown of LayerTimings) and plain OpenBLAS sgemm on the same expert GEMM work,
// and writes the shared weights, inputs and our outputs and gradients as safetensors so that
// the PyTorch block runs on identical data and is checked against ours.
//
//   compare_torch OUT_DIR [--reps N] [--warmup N] [--shapes 0,1,2]
//
// Writes OUT_DIR/shape<i>.safetensors and OUT_DIR/results.json; prints a summary.
// MOE_EXPERT_SCHEDULE=0/1 forces the layer's expert schedule (default: the layer decides).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "expert_sgemm.h"
#include "moe/gemm.h"
#include "moe/gemm_bf16.h"
#include "moe/moe_layer.h"
#include "moe/parallel.h"
#include "moe/rng.h"
#include "moe/safetensors.h"
#include "moe/tensor.h"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct Shape {
  int d, ffn, experts, top_k;
  int64_t tokens;
};
constexpr Shape kShapes[] = {
    {512, 1408, 8, 2, 4096}, {1024, 2816, 8, 2, 2048}, {1024, 704, 64, 8, 2048},  // fine-grained
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

moe::MoeConfig make_config(const Shape& s, moe::ComputeDtype dt) {
  moe::MoeConfig c;
  c.hidden_size = s.d;
  c.moe_intermediate_size = s.ffn;
  c.num_experts = s.experts;
  c.num_experts_per_tok = s.top_k;
  c.capacity_factor = 0;  // dropless, like the Hugging Face block
  // The HF block computes its aux loss outside the block: leave ours out so gradients match.
  c.router_aux_loss_coef = 0;
  c.router_z_loss_coef = 0;
  c.compute_dtype = dt;
  return c;
}

json pass_json(const moe::LayerTimings::Pass& p, int64_t calls) {
  const double n = static_cast<double>(std::max<int64_t>(calls, 1));
  return {{"routing", p.routing / n}, {"gather", p.gather / n}, {"experts", p.experts / n},
          {"combine", p.combine / n}, {"shared", p.shared / n}, {"total", p.total / n}};
}

// Times forward+backward `reps` times after `warmup` untimed steps; returns per-step seconds
// and the mean breakdown of the timed steps.
json time_layer(moe::MoeLayer<float>& layer, const moe::Tensor<float>& x,
                const moe::Tensor<float>& dout, moe::Tensor<float>& out, moe::Tensor<float>& dx,
                int warmup, int reps) {
  moe::ForwardOptions<float> opt;
  opt.training = true;
  auto step = [&] {
    layer.forward(x.view(), out.view(), opt);
    layer.backward(dout.view(), dx.view());
  };
  for (int i = 0; i < warmup; ++i) step();
  moe::LayerTimings timings;
  layer.set_timings(&timings);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    step();
    times.push_back(seconds_since(t0));
  }
  layer.set_timings(nullptr);
  return {{"times", times},
          {"median", median(times)},
          {"forward", pass_json(timings.forward, timings.forward_calls)},
          {"backward", pass_json(timings.backward, timings.backward_calls)}};
}

// The experts' GEMM work as plain sgemm (bench/expert_sgemm.h), timed like the layer.
struct SgemmWork : moe::bench::ExpertSgemm {
  SgemmWork(int d_, int F_, std::vector<int64_t> group_rows)
      : ExpertSgemm(d_, F_, std::move(group_rows), 3) {}
  void run() { ExpertSgemm::run(true); }
  json time(int warmup, int reps) {
    for (int i = 0; i < warmup; ++i) run();
    std::vector<double> times;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = Clock::now();
      run();
      times.push_back(seconds_since(t0));
    }
    return {{"times", times}, {"median", median(times)}};
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR [--reps N] [--warmup N] [--shapes 0,1,2]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int reps = 7, warmup = 2;
  std::vector<int> shapes = {0, 1, 2};
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], val = argv[i + 1];
    if (flag == "--reps") {
      reps = std::atoi(val.c_str());
    } else if (flag == "--warmup") {
      warmup = std::atoi(val.c_str());
    } else if (flag == "--shapes") {
      shapes.clear();
      for (size_t p = 0; p < val.size(); p = val.find(',', p) + 1) {
        shapes.push_back(std::atoi(val.c_str() + p));
        if (val.find(',', p) == std::string::npos) break;
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::filesystem::create_directories(dir);
  // OMP_NUM_THREADS decides (the script sets 2); BLAS follows.
  moe::set_num_threads(omp_get_max_threads());
  json results = {{"threads", moe::num_threads()},
                  {"bf16_kernel", moe::bf16_kernel_name(moe::bf16_kernel())},
                  {"reps", reps},
                  {"warmup", warmup},
                  {"shapes", json::array()}};

  for (int si : shapes) {
    const Shape& s = kShapes[si];
    const int64_t T = s.tokens, d = s.d;
    moe::MoeLayer<float> fp32(make_config(s, moe::ComputeDtype::Float32));
    moe::MoeLayer<float> bf16(make_config(s, moe::ComputeDtype::BFloat16));
    moe::Rng rng(1);
    fp32.init_weights(rng, 0.02);
    // Router weights larger than the experts' (as bench_layer): realistic, uneven routing.
    rng.fill_normal(fp32.params().value("router.weight"), int64_t(s.experts) * d, 0.0, 0.1);
    bf16.params().values() = fp32.params().values();
    if (const char* mode = std::getenv("MOE_EXPERT_SCHEDULE")) {
      fp32.set_expert_schedule(std::atoi(mode));
      bf16.set_expert_schedule(std::atoi(mode));
    }
    moe::Tensor<float> x({T, d}), dout({T, d}), out({T, d}), dx({T, d});
    rng.fill_normal(x.data(), T * d);
    rng.fill_normal(dout.data(), T * d, 0.0, 1.0 / std::sqrt(double(T * d)));

    // One checked step each, on zeroed gradients: the outputs PyTorch must reproduce.
    moe::SafeTensorsWriter w;
    moe::save_params(fp32.params(), w, moe::DType::F32);
    w.add("x", {T, d}, x.data(), moe::DType::F32);
    w.add("dout", {T, d}, dout.data(), moe::DType::F32);
    moe::ForwardOptions<float> opt;
    opt.training = true;
    int64_t kept = 0;
    for (auto* layer : {&fp32, &bf16}) {
      const std::string tag = layer == &fp32 ? "fp32" : "bf16";
      auto& g = layer->params().grads();
      std::fill(g.begin(), g.end(), 0.f);
      layer->forward(x.view(), out.view(), opt);
      layer->backward(dout.view(), dx.view());
      w.add("out." + tag, {T, d}, out.data(), moe::DType::F32);
      w.add("dx." + tag, {T, d}, dx.data(), moe::DType::F32);
      w.add("grad.router.weight." + tag, {s.experts, d}, layer->params().grad("router.weight"),
            moe::DType::F32);
      // Expert 0's gradients only (the whole stack would be hundreds of MB).
      for (const char* n : {"experts.w1", "experts.w3", "experts.w2"}) {
        const bool w2 = std::string(n) == "experts.w2";
        w.add(std::string("grad.") + n + ".0." + tag,
              {w2 ? d : int64_t(s.ffn), w2 ? int64_t(s.ffn) : d}, layer->params().grad(n),
              moe::DType::F32);
      }
      kept = layer->permutation().rows();
    }
    const std::string file = dir + "/shape" + std::to_string(si) + ".safetensors";
    w.write(file);

    const double flops = 3.0 * 2.0 * (double(T) * d * s.experts + 3.0 * double(kept) * d * s.ffn);
    const double gemm_flops = 3.0 * 2.0 * 3.0 * double(kept) * d * s.ffn;
    json r = {{"d", s.d},
              {"ffn", s.ffn},
              {"experts", s.experts},
              {"top_k", s.top_k},
              {"tokens", T},
              {"kept", kept},
              {"flops", flops},
              {"gemm_flops", gemm_flops},
              {"file", file},
              {"load_max_over_mean", fp32.metrics().load_max_over_mean}};
    std::printf("shape %d: d=%d ffn=%d E=%d k=%d T=%ld  (load max/mean %.3f)\n", si, s.d, s.ffn,
                s.experts, s.top_k, long(T), fp32.metrics().load_max_over_mean);
    std::fflush(stdout);
    r["fp32"] = time_layer(fp32, x, dout, out, dx, warmup, reps);
    std::printf("  ours fp32     %8.1f ms\n", 1e3 * r["fp32"]["median"].get<double>());
    std::fflush(stdout);
    r["bf16"] = time_layer(bf16, x, dout, out, dx, warmup, reps);
    std::printf("  ours bf16     %8.1f ms\n", 1e3 * r["bf16"]["median"].get<double>());
    std::fflush(stdout);
    {
      SgemmWork experts(s.d, s.ffn, fp32.metrics().kept_per_expert);
      r["sgemm_experts"] = experts.time(1, reps);
    }
    std::printf("  sgemm/expert  %8.1f ms\n", 1e3 * r["sgemm_experts"]["median"].get<double>());
    std::fflush(stdout);
    {
      SgemmWork block(s.d, s.ffn, {kept});
      r["sgemm_block"] = block.time(1, reps);
    }
    std::printf("  sgemm/block   %8.1f ms\n", 1e3 * r["sgemm_block"]["median"].get<double>());
    std::fflush(stdout);
    results["shapes"].push_back(r);
  }
  std::ofstream(dir + "/results.json") << results.dump(2) << "\n";
  return 0;
}
