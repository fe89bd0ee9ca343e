#include "vit_commands.h"

#include <fmt/core.h>

#include "moe/parallel.h"
#include "moe/vit.h"
#include "moe/vit_trainer.h"

namespace moe::cli {

int run_vit_train(const std::string& config_path, const std::string& out, int steps, int64_t seed,
                  int threads, bool quiet) {
  set_num_threads(threads);
  VitConfig cfg = load_vit_config(config_path);
  if (steps > 0) cfg.training.max_steps = steps;
  if (seed >= 0) cfg.training.seed = static_cast<uint64_t>(seed);
  VitTrainOptions opt;
  opt.out_dir = out;
  if (!quiet) opt.log = [](const std::string& s) { fmt::print(stderr, "{}\n", s); };
  const VitRunResult r = train_vit(cfg, opt);
  fmt::print(
      "test accuracy {:.4f}  test loss {:.4f}  dropped {:.3f}  ({} steps, {} parameters, "
      "{:.1f} s) -> {}\n",
      r.test_accuracy, r.test_loss, r.test_dropped_fraction, r.steps, r.parameters, r.train_seconds,
      out);
  return 0;
}

}  // namespace moe::cli
