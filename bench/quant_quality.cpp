// What load-time quantization costs a trained run in quality, as llama.cpp's perplexity tool
// reports it (compare_models, quant_quality.h): the run in f32 against the same run with every
// matrix quantized to each type, over non-overlapping windows of its validation split (the
// second half of each window scored). One table: type, bits per weight of the quantized
// matrices, perplexity, its change against f32, mean KL divergence from f32, top-1 agreement.
// A single type quantizes the run at load (TransformerLm); llama.cpp's mixes (q4_k_m, q5_k_m)
// go through the GGUF file `moe quantize` would write (a temporary file, read back by
// InferenceModel), since their types differ per tensor.
//
//   quant_quality [RUN=runs/default] [--types q8_0,q6_k,...] [--ctx N] [--windows N]
//                 [--data-dir DIR] [--threads N]
#include "moe/quant_quality.h"

#include <fmt/core.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "moe/data.h"
#include "moe/error.h"
#include "moe/gguf_model.h"
#include "moe/inference_model.h"
#include "moe/parallel.h"
#include "moe/trainer.h"

namespace {

// The validation split the run trained against, tokenized with the run's own tokenizer (what
// `moe eval` reads).
moe::TokenStream run_validation(const std::string& run_dir, const moe::LoadedRun& run,
                                const std::string& data_dir) {
  const moe::TrainConfig& t = run.config.training;
  moe::DataOptions d;
  d.dir = data_dir.empty() ? t.data_dir : data_dir;
  d.input = t.data;
  d.tokenizer = t.tokenizer;
  d.vocab_size = run.config.vocab_size;
  d.valid_fraction = t.valid_fraction;
  std::string tok_file;
  if (t.tokenizer != "byte") {
    const std::string json = run_dir + "/tokenizer.json";
    tok_file = t.tokenizer != "sentencepiece" && std::filesystem::exists(json)
                   ? json
                   : run_dir + "/tokenizer.model";
  }
  return moe::validation_stream(d, *run.tokenizer, tok_file,
                                [](const std::string& s) { fmt::print(stderr, "{}\n", s); });
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"Perplexity, KL divergence and top-1 agreement of quantized runs against f32"};
  std::string run_dir = "runs/default", types = "q8_0,q6_k,q5_k,q5_k_m,q4_k,q4_k_m,q4_0", data_dir;
  int ctx = 0, threads = 0;
  int64_t windows = 0;
  app.add_option("run", run_dir, "run directory (moe train --out)")->capture_default_str();
  app.add_option("--types", types, "comma-separated weight types to compare with f32")
      ->capture_default_str();
  app.add_option("--ctx", ctx, "window length (default: the run's seq_len)");
  app.add_option("--windows", windows, "windows to score (default: every whole window)");
  app.add_option("--data-dir", data_dir, "moe's data cache (default: the run's)");
  app.add_option("--threads", threads, "OpenMP threads (default: all)");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) moe::set_num_threads(threads);

  moe::LoadedRun run = moe::load_run(run_dir);
  const moe::TokenStream valid = run_validation(run_dir, run, data_dir);
  if (ctx <= 0) ctx = std::min(run.config.training.seq_len, run.config.max_position_embeddings);
  std::vector<int32_t> tokens(static_cast<size_t>(valid.size()));
  valid.read(0, valid.size(), tokens.data(), nullptr);

  moe::TransformerLm base(*run.model);
  fmt::print("{}: {} validation tokens, windows of {} (second half scored)\n", run_dir,
             tokens.size(), ctx);
  fmt::print("| type | bits/weight | ppl | ppl change | mean KL | max KL | top-1 |\n");
  fmt::print("|---|---:|---:|---:|---:|---:|---:|\n");
  std::stringstream list(types);
  std::string name;
  bool first_row = true;
  while (std::getline(list, name, ',')) {
    moe::GgmlType t = moe::GgmlType::F32;
    moe::TypeScheme scheme;
    std::unique_ptr<moe::Decoder> test;
    double bits = 0;
    if (moe::parse_ggml_type(name, &t) && moe::is_weight_type(t) && t != moe::GgmlType::F32) {
      auto lm = std::make_unique<moe::TransformerLm>(*run.model, t);
      bits = 8.0 * static_cast<double>(lm->quantized_bytes()) /
             static_cast<double>(lm->quantized_values());
      test = std::move(lm);
    } else {
      MOE_REQUIRE(moe::parse_type_scheme(name, &scheme) && scheme.k_mix,
                  "--types: \"{}\" is not a quantized weight type or a k-quant mix", name);
      const std::string gguf = (std::filesystem::temp_directory_path() /
                                fmt::format("quant_quality_{}_{}.gguf", getpid(), name))
                                   .string();
      moe::GgufModelWriteOptions opt;
      opt.types = scheme;
      moe::write_gguf_model(run.config, *moe::gguf_source_of_run(*run.model), gguf, opt);
      auto m = moe::InferenceModel::load(gguf);
      std::filesystem::remove(gguf);  // the mapping stays valid until the model closes it
      // Bits of the matrices the mix quantizes (not the f32 router and norms, nor the
      // embedding table, so the figure compares with the single types').
      int64_t bytes = 0, values = 0;
      for (const moe::GgufTensorInfo& ti : m->gguf()->tensors()) {
        if (ti.type == static_cast<uint32_t>(moe::GgmlType::F32) || ti.name == "token_embd.weight")
          continue;
        bytes += static_cast<int64_t>(ti.nbytes);
        values += ti.numel();
      }
      bits = 8.0 * static_cast<double>(bytes) / static_cast<double>(values);
      test = std::move(m);
    }
    const moe::ModelComparison c = moe::compare_models(
        base, *test, tokens.data(), static_cast<int64_t>(tokens.size()), ctx, windows);
    if (first_row) {
      fmt::print("| f32 | 32.00 | {:.4f} | | | | |\n", c.base_ppl());
      first_row = false;
    }
    fmt::print("| {} | {:.2f} | {:.4f} | {:+.3f}% | {:.6f} | {:.4f} | {:.2f}% |\n", name, bits,
               c.test_ppl(), 100.0 * (c.test_ppl() / c.base_ppl() - 1.0), c.mean_kl, c.max_kl,
               100.0 * c.top1_agreement);
    std::fflush(stdout);
  }
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "quant_quality: {}\n", e.what());
  return 1;
}
