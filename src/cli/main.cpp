// `moe`: the command-line front end. Thin by design: parsing and printing only.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "commands.h"
#include "moe/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moe: sparse Mixture-of-Experts engine"};
  app.require_subcommand(1);
  auto run_train = moe::cli::add_train_command(app);
  auto run_eval = moe::cli::add_eval_command(app);
  auto run_generate = moe::cli::add_generate_command(app);
  auto run_convert = moe::cli::add_convert_command(app);
  auto run_layer = moe::cli::add_layer_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (app.got_subcommand("train")) return run_train();
    if (app.got_subcommand("eval")) return run_eval();
    if (app.got_subcommand("generate")) return run_generate();
    if (app.got_subcommand("convert")) return run_convert();
    if (app.got_subcommand("layer")) return run_layer();
  } catch (const moe::Error& e) {
    fmt::print(stderr, "moe: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "moe: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
