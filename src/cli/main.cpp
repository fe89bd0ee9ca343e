// `moe`: the command-line front end. Thin by design: parsing and printing only.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "commands.h"
#include "moe/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moe: sparse Mixture-of-Experts engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "moe " MOE_VERSION);
  auto run_train = moe::cli::add_train_command(app);
  auto run_eval = moe::cli::add_eval_command(app);
  auto run_perplexity = moe::cli::add_perplexity_command(app);
  auto run_generate = moe::cli::add_generate_command(app);
  auto run_convert = moe::cli::add_convert_command(app);
  auto run_quantize = moe::cli::add_quantize_command(app);
  auto run_layer = moe::cli::add_layer_command(app);
  auto run_analyze = moe::cli::add_analyze_command(app);
  auto run_report = moe::cli::add_report_command(app);
  auto run_route = moe::cli::add_route_command(app);
  auto run_compare = moe::cli::add_compare_command(app);
  auto run_upcycle = moe::cli::add_upcycle_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // A bad option is the user's input: one line, like every other error.
    fmt::print(stderr, "moe: error: {} (see --help)\n", e.what());
    return e.get_exit_code();
  }
  try {
    if (app.got_subcommand("train")) return run_train();
    if (app.got_subcommand("eval")) return run_eval();
    if (app.got_subcommand("perplexity")) return run_perplexity();
    if (app.got_subcommand("generate")) return run_generate();
    if (app.got_subcommand("convert")) return run_convert();
    if (app.got_subcommand("quantize")) return run_quantize();
    if (app.got_subcommand("layer")) return run_layer();
    if (app.got_subcommand("analyze")) return run_analyze();
    if (app.got_subcommand("report")) return run_report();
    if (app.got_subcommand("route")) return run_route();
    if (app.got_subcommand("compare")) return run_compare();
    if (app.got_subcommand("upcycle")) return run_upcycle();
  } catch (const moe::Error& e) {
    // Under mpirun every rank meets the same error: rank 0 says it once.
    const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
    if (!rank || std::string(rank) == "0") fmt::print(stderr, "moe: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "moe: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
