// Options shared by several subcommands.
#include <fmt/core.h>

#include "commands.h"
#include "moe/parallel.h"

namespace moe::cli {

CLI::Option* add_threads_option(CLI::App* c, int& threads) {
  const int cores = available_cores();
  return c
      ->add_option("--threads", threads,
                   fmt::format("threads, 0 to {} (0: OMP_NUM_THREADS or all cores)", cores))
      ->check(CLI::Range(0, cores));
}

}  // namespace moe::cli
