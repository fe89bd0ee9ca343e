// `moe layer`: builds one MoE layer, runs forward+backward on random tokens, and prints what
// the router did (load per expert, drops, losses, entropy) and how fast it ran.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/moe_layer.h"
#include "moe/parallel.h"
#include "moe/safetensors.h"

namespace moe::cli {

namespace {

struct LayerArgs {
  std::string config_path;
  int hidden = 512, ffn = 1408, experts = 8, top_k = 2;
  int64_t tokens = 4096;
  int iters = 10, threads = 0;
  double capacity_factor = 0.0;
  uint64_t seed = 1;
  std::string out;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void progress(int i, int n, double last_ms) {
  static const bool tty = isatty(2);
  if (!tty && i != n) return;  // in a log, one line at the end rather than a stream of \r
  const int width = 30, filled = n ? width * i / n : width;
  fmt::print(stderr, "\r  [{}{}] {:>3}/{} iterations  last {:.1f} ms", std::string(filled, '#'),
             std::string(width - filled, '.'), i, n, last_ms);
  if (i == n) fmt::print(stderr, "\n");
  std::fflush(stderr);
}

int run(const LayerArgs& a) {
  set_num_threads(a.threads);
  MoeConfig cfg;
  if (!a.config_path.empty()) {
    cfg = load_moe_config(a.config_path);
  } else {
    cfg.hidden_size = a.hidden;
    cfg.moe_intermediate_size = a.ffn;
    cfg.num_experts = a.experts;
    cfg.num_experts_per_tok = a.top_k;
    cfg.capacity_factor = a.capacity_factor;
    cfg.validate("moe layer");
  }
  MOE_REQUIRE(a.tokens > 0, "--tokens must be positive, got {}", a.tokens);
  MOE_REQUIRE(a.iters > 0, "--iters must be positive, got {}", a.iters);

  MoeLayer<float> layer(cfg);
  Rng rng(a.seed);
  layer.init_weights(rng, 0.02);
  // Router weights larger than the experts' so that routing is far from uniform, as in a
  // trained model; the auxiliary losses then have something to say.
  rng.fill_normal(layer.params().value("router.weight"), int64_t(cfg.num_experts) * cfg.hidden_size,
                  0.0, 0.1);
  const int64_t T = a.tokens, d = cfg.hidden_size;
  Tensor<float> x({T, d}), out({T, d}), dout({T, d}), dx({T, d});
  rng.fill_normal(x.data(), x.numel());
  rng.fill_normal(dout.data(), dout.numel(), 0.0, 1.0 / std::sqrt(double(T * d)));

  fmt::print("moe layer: d={} ffn={} experts={} top_k={} shared={} tokens={} threads={}\n", d,
             cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok,
             cfg.n_shared_experts, T, num_threads());
  std::fflush(stdout);
  ForwardOptions<float> opt;
  opt.training = true;
  opt.rng = &rng;
  std::vector<double> fwd_ms, step_ms;
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::duration dt) {
    return std::chrono::duration<double, std::milli>(dt).count();
  };
  layer.forward(x.view(), out.view(), opt);  // warm-up: grows the workspaces once
  layer.backward(dout.view(), dx.view());
  for (int i = 0; i < a.iters; ++i) {
    const auto t0 = clock::now();
    layer.forward(x.view(), out.view(), opt);
    const auto t1 = clock::now();
    layer.backward(dout.view(), dx.view());
    const auto t2 = clock::now();
    fwd_ms.push_back(ms(t1 - t0));
    step_ms.push_back(ms(t2 - t0));
    progress(i + 1, a.iters, step_ms.back());
  }

  const MoeMetrics& m = layer.metrics();
  const double fwd = median(fwd_ms), step = median(step_ms);
  // 2 flops per multiply-add; backward does twice the forward's GEMM work.
  const double flops_fwd =
      2.0 * layer.active_macs_per_token() * double(T) * (1.0 - m.dropped_fraction * 0.999999);
  fmt::print("\nrouting (last step)\n");
  const int64_t max_load =
      *std::max_element(m.primary_per_expert.begin(), m.primary_per_expert.end());
  for (int e = 0; e < cfg.num_experts; ++e) {
    const int bar = max_load ? int(40 * m.primary_per_expert[e] / max_load) : 0;
    fmt::print("  expert {:>3}  {:>7} chosen  {:>7} kept  {}\n", e, m.primary_per_expert[e],
               m.kept_per_expert[e], std::string(bar, '#'));
  }
  fmt::print("  capacity per expert     {}\n",
             m.capacity < 0 ? std::string("unlimited (dropless)") : std::to_string(m.capacity));
  fmt::print("  dropped assignments     {} of {} ({:.2f}%), rerouted {}\n", m.dropped,
             m.assignments, 100.0 * m.dropped_fraction, m.rerouted);
  fmt::print("  load CV / max:mean      {:.3f} / {:.3f}\n", m.load_cv, m.load_max_over_mean);
  // Bits, as everywhere else (MoeMetrics keeps nats): log2 E when the router is undecided.
  fmt::print("  router entropy          {:.4f} bits per token (uniform: {:.4f})\n",
             m.router_entropy / std::log(2.0), std::log2(double(cfg.num_experts)));
  fmt::print("  load-balance loss       {:.6f} (perfect balance: {:.6f})\n", m.load_balance_loss,
             cfg.router_aux_loss_coef);
  fmt::print("  z-loss                  {:.6f}\n", m.z_loss);
  fmt::print("\nspeed (median of {} iterations)\n", a.iters);
  fmt::print("  forward           {:8.2f} ms  {:9.0f} tokens/s  {:6.1f} GFLOP/s\n", fwd,
             T / fwd * 1e3, flops_fwd / fwd * 1e-6);
  fmt::print("  forward+backward  {:8.2f} ms  {:9.0f} tokens/s  {:6.1f} GFLOP/s\n", step,
             T / step * 1e3, 3.0 * flops_fwd / step * 1e-6);

  if (!a.out.empty()) {
    nlohmann::json j;
    moe_config_to_json(cfg, j["config"]);
    j["tokens"] = T;
    j["threads"] = num_threads();
    j["forward_ms_median"] = fwd;
    j["step_ms_median"] = step;
    j["tokens_per_s"] = T / step * 1e3;
    j["gflops"] = 3.0 * flops_fwd / step * 1e-6;
    j["primary_per_expert"] = m.primary_per_expert;
    j["kept_per_expert"] = m.kept_per_expert;
    j["dropped_fraction"] = m.dropped_fraction;
    j["load_balance_loss"] = m.load_balance_loss;
    j["z_loss"] = m.z_loss;
    j["router_entropy"] = m.router_entropy;  // nats, as it always was
    j["router_entropy_bits"] = m.router_entropy / std::log(2.0);
    j["load_cv"] = m.load_cv;
    const std::string s = j.dump(2) + "\n";
    write_file_atomic(a.out, s.data(), s.size());
    fmt::print("\nwrote {}\n", a.out);
  }
  return 0;
}

}  // namespace

std::function<int()> add_layer_command(CLI::App& app) {
  auto args = std::make_shared<LayerArgs>();
  auto* cmd =
      app.add_subcommand("layer", "Run one MoE layer forward+backward; print routing and speed");
  cmd->add_option("--config", args->config_path, "MoE layer config JSON (keys: docs/moe-layer.md)");
  cmd->add_option("--hidden", args->hidden, "hidden size d")->capture_default_str();
  cmd->add_option("--ffn", args->ffn, "expert intermediate size")->capture_default_str();
  cmd->add_option("--experts", args->experts, "number of experts E")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "experts per token k")->capture_default_str();
  cmd->add_option("--capacity-factor", args->capacity_factor, "<= 0 means dropless")
      ->capture_default_str();
  cmd->add_option("--tokens", args->tokens, "tokens per batch T")->capture_default_str();
  cmd->add_option("--iters", args->iters, "timed iterations")->capture_default_str();
  add_threads_option(cmd, args->threads);
  cmd->add_option("--seed", args->seed, "random seed")->capture_default_str();
  cmd->add_option("--out", args->out, "write the summary as JSON here");
  return [args] { return run(*args); };
}

}  // namespace moe::cli
