// Subcommands of the `moe` CLI. Each registers its options on the app and returns the
// function to run; the library does the work.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "moe/quant.h"

namespace moe::cli {

std::function<int()> add_layer_command(CLI::App& app);
std::function<int()> add_train_command(CLI::App& app);
std::function<int()> add_eval_command(CLI::App& app);
std::function<int()> add_perplexity_command(CLI::App& app);
std::function<int()> add_generate_command(CLI::App& app);
std::function<int()> add_convert_command(CLI::App& app);
std::function<int()> add_quantize_command(CLI::App& app);
std::function<int()> add_analyze_command(CLI::App& app);
std::function<int()> add_report_command(CLI::App& app);
std::function<int()> add_route_command(CLI::App& app);
std::function<int()> add_compare_command(CLI::App& app);
std::function<int()> add_upcycle_command(CLI::App& app);

// --threads N, the same on every subcommand: 0 (OMP_NUM_THREADS or all cores) up to the cores
// this process may use; more would only oversubscribe them.
CLI::Option* add_threads_option(CLI::App* c, int& threads);

// --quantize's type (F32 for an empty name: the weights as stored); a bad name is an error.
GgmlType quantize_type(const std::string& name);

// A progress line on stderr for a pass over validation windows: redrawn in place on a
// terminal, a line at every quarter otherwise; the last call ends the line.
std::function<void(int64_t, int64_t)> window_progress(const std::string& what);

}  // namespace moe::cli
