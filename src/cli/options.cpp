// Options shared by several subcommands.
#include <fmt/core.h>
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "commands.h"
#include "moe/error.h"
#include "moe/parallel.h"

namespace moe::cli {

CLI::Option* add_threads_option(CLI::App* c, int& threads) {
  const int cores = available_cores();
  return c
      ->add_option("--threads", threads,
                   fmt::format("threads, 0 to {} (0: OMP_NUM_THREADS or all cores)", cores))
      ->check(CLI::Range(0, cores));
}

GgmlType quantize_type(const std::string& name) {
  if (name.empty()) return GgmlType::F32;
  GgmlType t = GgmlType::F32;
  MOE_REQUIRE(parse_ggml_type(name, &t) && is_weight_type(t),
              "--quantize: \"{}\" is not a weight type (f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, "
              "q6_k)",
              name);
  return t;
}

std::function<void(int64_t, int64_t)> window_progress(const std::string& what) {
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  auto last_quarter = std::make_shared<int64_t>(0);
  return [what, tty, last_quarter](int64_t done, int64_t total) {
    const int64_t quarter = total > 0 ? 4 * done / total : 4;
    if (tty) {
      fmt::print(stderr, "\r{}: {}/{} windows ({}%)", what, done, total,
                 total > 0 ? 100 * done / total : 100);
      if (done >= total) fmt::print(stderr, "\n");
    } else if (quarter > *last_quarter) {
      *last_quarter = quarter;
      fmt::print(stderr, "{}: {}/{} windows\n", what, done, total);
    }
    std::fflush(stderr);
  };
}

}  // namespace moe::cli
