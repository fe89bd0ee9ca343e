// `moe upcycle DENSE --experts E --top-k K [--granularity G] [--seed S] --out DIR`: a dense
// Hugging Face checkpoint or dense run as an MoE checkpoint whose experts start as copies (or
// slices) of its MLP. Parsing and printing only; upcycle.h does the work.
#include <fmt/core.h>

#include "commands.h"
#include "moe/upcycle.h"

namespace moe::cli {

namespace {

struct UpcycleArgs {
  std::string dense, out;
  UpcycleOptions opt;
};

std::string millions(int64_t n) {
  return fmt::format("{:.2f}M", n / 1e6);
}

int run_upcycle(const UpcycleArgs& a) {
  const UpcycleResult r = upcycle(a.dense, a.out, a.opt);
  fmt::print(
      "wrote {} (model_type {} from {} {}: {} experts of width {}, top-{}, granularity {}; "
      "{} parameters, {} active)\n",
      a.out, r.family, r.source == "run" ? "the dense run" : "the " + r.source + " checkpoint",
      a.dense, a.opt.experts, r.expert_width, a.opt.top_k, a.opt.granularity,
      millions(r.total_parameters), millions(r.active_parameters));
  const int K = a.opt.top_k, G = a.opt.granularity;
  if (r.starts_dense && G == 1)
    fmt::print(
        "every expert is a copy of the dense MLP and the top-{} gates sum to 1: it "
        "computes the dense model's function\n",
        K);
  else if (r.starts_dense)
    fmt::print(
        "each token's top-{} experts are {} whole cop{} of the MLP's {} slices: it computes "
        "the dense model's function\n",
        K, K / G, K / G == 1 ? "y" : "ies", G);
  else
    fmt::print(
        "note: top-{} is not a multiple of granularity {}: each token gets {} of the MLP's "
        "{} slices, so it does not start from the dense model's function\n",
        K, G, K, G);
  return 0;
}

}  // namespace

std::function<int()> add_upcycle_command(CLI::App& app) {
  auto a = std::make_shared<UpcycleArgs>();
  auto* c = app.add_subcommand(
      "upcycle",
      "Turn a dense model (a Hugging Face llama, mistral, qwen2 or qwen3 checkpoint, or a dense "
      "run) into an MoE checkpoint whose experts start as copies of its MLP");
  c->add_option("dense", a->dense, "dense model: run directory or Hugging Face checkpoint")
      ->required();
  c->add_option("--experts", a->opt.experts, "E, the experts per layer")->required();
  c->add_option("--top-k", a->opt.top_k, "K, the experts each token uses")->required();
  c->add_option("--granularity", a->opt.granularity,
                "G: each expert is 1/G of the MLP's width (E a multiple of G)")
      ->capture_default_str();
  c->add_option("--seed", a->opt.seed, "seed of the routers' initialization")
      ->capture_default_str();
  c->add_option("--out", a->out, "the new checkpoint directory (must not exist)")->required();
  return [a] { return run_upcycle(*a); };
}

}  // namespace moe::cli
