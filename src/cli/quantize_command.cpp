// `moe quantize IN OUT.gguf --type TYPE`: a Hugging Face checkpoint, a trained run or a GGUF file
// written as a GGUF model of llama.cpp's matching architecture, each matrix in the type the
// scheme gives it; `moe quantize --random CONFIG.json OUT.gguf`: random weights of any shape.
// Parsing and printing only; gguf_model.h writes.
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/error.h"
#include "moe/gguf_export.h"
#include "moe/gguf_model.h"
#include "moe/gguf_tokenizer.h"
#include "moe/hf_checkpoint.h"
#include "moe/model_config.h"
#include "moe/model_path.h"
#include "moe/parallel.h"
#include "moe/trainer.h"

namespace moe::cli {

namespace {

namespace fs = std::filesystem;

struct QuantizeArgs {
  std::string in, out, type = "q8_0", expert_type, other_type, random;
  uint64_t seed = 1;
  int threads = 0;
};

TypeScheme scheme_of(const QuantizeArgs& a) {
  TypeScheme s;
  MOE_REQUIRE(parse_type_scheme(a.type, &s),
              "quantize: --type \"{}\" is not one of f32 f16 bf16 q8_0 q4_0 q4_k q5_k q6_k mxfp4 "
              "q4_k_m q5_k_m",
              a.type);
  auto single = [](const std::string& opt, const std::string& name) {
    TypeScheme t;
    MOE_REQUIRE(parse_type_scheme(name, &t) && !t.k_mix,
                "quantize: {} \"{}\" is not one of f32 f16 bf16 q8_0 q4_0 q4_k q5_k q6_k mxfp4",
                opt, name);
    return t.base;
  };
  if (!a.expert_type.empty()) {
    s.has_expert_type = true;
    s.expert_type = single("--expert-type", a.expert_type);
  }
  if (!a.other_type.empty()) {
    s.has_other_type = true;
    s.other_type = single("--other-type", a.other_type);
  }
  return s;
}

// The user's input is read only: writing over it is refused before anything is read.
void check_not_input(const std::string& in, const std::string& out) {
  std::error_code ec;
  MOE_REQUIRE(!fs::exists(out) || !fs::equivalent(in, out, ec),
              "quantize: the output {} is the input; write to another file", out);
}

int run_quantize(const QuantizeArgs& a) {
  set_num_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  const TypeScheme types = scheme_of(a);
  GgufModelWriteOptions opt;
  opt.types = types;
  opt.name = fs::path(a.out).stem().string();
  opt.note = [](const std::string& line) { fmt::print(stderr, "quantize: {}\n", line); };
  ModelConfig c;
  std::string from;
  if (!a.random.empty()) {
    MOE_REQUIRE(a.in.empty() || a.out.empty(), "quantize: give --random CONFIG and OUT only");
    const std::string out = a.out.empty() ? a.in : a.out;
    // A Hugging Face config.json of the four families, or one of ours.
    const nlohmann::json j = nlohmann::json::parse(std::ifstream(a.random), nullptr, false);
    MOE_REQUIRE(!j.is_discarded() && j.is_object(), "{}: not a JSON object", a.random);
    c = j.contains("training") ? load_model_config(a.random) : model_config_from_hf(j, a.random);
    opt.name = fs::path(out).stem().string();
    opt.add_tokenizer = [&](GgufWriter& w) {
      add_gguf_byte_tokenizer(w, c.vocab_size);
      w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(true));
    };
    write_gguf_model(c, *gguf_source_random(a.seed), out, opt);
    from = "random weights of " + a.random;
    fmt::print("wrote {} ({:.1f} MB, {} of {}, {})\n", out, fs::file_size(out) / 1e6,
               gguf_arch_of(c), from, a.type);
  } else {
    MOE_REQUIRE(!a.in.empty() && !a.out.empty(), "quantize: give IN and OUT.gguf");
    check_not_input(a.in, a.out);
    switch (model_format_of(a.in)) {
      case ModelFormat::Gguf: {
        const GgufFile f = GgufFile::open(a.in);
        c = model_config_from_gguf(f);
        opt.add_tokenizer = [&](GgufWriter& w) {  // the vocabulary and chat template as they are
          for (const auto& [k, v] : f.kvs())
            if (k.rfind("tokenizer.", 0) == 0) w.set(k, v);
        };
        write_gguf_model(c, *gguf_source_of_gguf(c, f), a.out, opt);
        break;
      }
      case ModelFormat::Run: {
        LoadedRun run = load_run(a.in);
        c = run.config;
        c.model_type = "mixtral";
        const bool sp = run.config.training.tokenizer == "sentencepiece";
        export_gguf(*run.model, sp ? a.in + "/tokenizer.model" : "", a.out, types, opt.note);
        break;
      }
      case ModelFormat::HuggingFace: {
        c = load_hf_config(a.in + "/config.json");
        const HfWeights w = HfWeights::open(a.in);
        opt.add_tokenizer = [&](GgufWriter& gw) { add_gguf_tokenizer_of_hf_dir(gw, a.in); };
        write_gguf_model(c, *gguf_source_of_hf(c, w), a.out, opt);
        break;
      }
    }
    fmt::print("wrote {} ({:.1f} MB, {} from {}, {})\n", a.out, fs::file_size(a.out) / 1e6,
               gguf_arch_of(c), a.in, a.type);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr, "quantize: {:.1f} s\n", s);
  return 0;
}

}  // namespace

std::function<int()> add_quantize_command(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  auto* c = app.add_subcommand(
      "quantize",
      "Write a model (Hugging Face directory, run, GGUF file, or --random CONFIG) as a GGUF "
      "file for llama.cpp and moe, its matrices quantized");
  c->add_option("in", a->in, "the model: a Hugging Face checkpoint, a run, or a GGUF file");
  c->add_option("out", a->out, "the GGUF file to write");
  c->add_option("--type", a->type,
                "f32 f16 bf16 q8_0 q4_0 q4_k q5_k q6_k mxfp4, or llama.cpp's mixes q4_k_m q5_k_m")
      ->capture_default_str();
  c->add_option("--expert-type", a->expert_type, "the type of the expert tensors (ffn_*_exps)");
  c->add_option("--other-type", a->other_type, "the type of the other matrices");
  c->add_option("--random", a->random,
                "a config.json: write random weights of its shape (the output is then the one "
                "positional argument)");
  c->add_option("--seed", a->seed, "seed of --random")->capture_default_str();
  add_threads_option(c, a->threads);
  return [a] { return run_quantize(*a); };
}

}  // namespace moe::cli
