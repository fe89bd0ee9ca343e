// `moe convert RUN --to hf|gguf [--layout per-expert|fused]`: a trained run as a Hugging Face
// checkpoint directory or a GGUF file for llama.cpp. Parsing and printing only; hf_checkpoint.h and
// gguf_export.h write.
#include <fmt/core.h>

#include <filesystem>

#include "commands.h"
#include "moe/error.h"
#include "moe/gguf_export.h"
#include "moe/hf_checkpoint.h"
#include "moe/hf_tokenizer_export.h"
#include "moe/trainer.h"

namespace moe::cli {

namespace {

namespace fs = std::filesystem;

struct ConvertArgs {
  std::string run, to, out, dtype = "f32", layout = "per-expert";
};

DType parse_dtype(const std::string& s) {
  if (s == "f32") return DType::F32;
  if (s == "bf16") return DType::BF16;
  if (s == "f16") return DType::F16;
  throw Error(fmt::format("convert: --dtype \"{}\" is not one of f32, bf16, f16", s));
}

int run_convert(const ConvertArgs& a) {
  const DType dtype = parse_dtype(a.dtype);
  HfExpertLayout layout{};
  MOE_REQUIRE(parse_hf_expert_layout(a.layout, layout),
              "convert: --layout \"{}\" is not one of per-expert, fused", a.layout);
  MOE_REQUIRE(a.to == "hf" || layout == HfExpertLayout::PerExpert,
              "convert: --layout applies to --to hf (GGUF stacks the experts its own way)");
  LoadedRun run = load_run(a.run);
  const std::string sp_model = a.run + "/tokenizer.model";
  const bool sentencepiece = run.config.training.tokenizer == "sentencepiece";
  if (a.to == "gguf") {
    const std::string out = a.out.empty() ? a.run + "/model.gguf" : a.out;
    export_gguf(*run.model, sentencepiece ? sp_model : "", out, dtype);
    fmt::print("wrote {} ({:.1f} MB, llama.cpp architecture \"llama\")\n", out,
               fs::file_size(out) / 1e6);
    return 0;
  }
  const std::string out = a.out.empty() ? a.run + "/hf" : a.out;
  save_hf_checkpoint(*run.model, out, dtype, layout);
  write_run_tokenizer_files(a.run, run.config.training, out);
  const ModelConfig saved = load_hf_config(out + "/config.json");
  const ParameterCount n = count_parameters(saved);
  fmt::print("wrote {} (model_type {}, {} weights{}, {:.2f}M parameters, {:.2f}M active)\n", out,
             saved.model_type, dtype_name(dtype),
             layout == HfExpertLayout::Fused ? ", fused experts" : "", n.total / 1e6,
             n.active / 1e6);
  return 0;
}

}  // namespace

std::function<int()> add_convert_command(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  auto* c = app.add_subcommand(
      "convert", "Save a trained run as a Hugging Face checkpoint or a GGUF file for llama.cpp");
  c->add_option("run", a->run, "run directory")->required();
  c->add_option("--to", a->to, "hf or gguf")->required()->check(CLI::IsMember({"hf", "gguf"}));
  c->add_option("--out", a->out, "output (default: RUN/hf or RUN/model.gguf)");
  c->add_option("--dtype", a->dtype, "f32, bf16 or f16 for the matrices")->capture_default_str();
  c->add_option("--layout", a->layout,
                "--to hf: the experts one tensor each (per-expert, transformers 4.x) or fused "
                "(transformers v5: experts.gate_up_proj [E, 2F, d], experts.down_proj [E, d, F])")
      ->capture_default_str();
  return [a] { return run_convert(*a); };
}

}  // namespace moe::cli
