// `moe convert RUN --to hf|gguf`: a trained run as a Hugging Face checkpoint directory or a
// GGUF file for llama.cpp. Parsing and printing only; hf_checkpoint.h and gguf_export.h write.
#include <fmt/core.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/error.h"
#include "moe/gguf_export.h"
#include "moe/hf_checkpoint.h"
#include "moe/trainer.h"
#include "moe/utf8.h"

namespace moe::cli {

namespace {

namespace fs = std::filesystem;

struct ConvertArgs {
  std::string run, to, out, dtype = "f32";
};

DType parse_dtype(const std::string& s) {
  if (s == "f32") return DType::F32;
  if (s == "bf16") return DType::BF16;
  if (s == "f16") return DType::F16;
  throw Error(fmt::format("convert: --dtype \"{}\" is not one of f32, bf16, f16", s));
}

void write_text(const std::string& path, const std::string& text) {
  write_file_atomic(path, text.data(), text.size());
}

// The byte tokenizer as a tokenizer.json (byte-level BPE without merges: byte b is token b,
// spelled with GPT-2's byte-to-character table; BOS 256 and EOS 257 as added tokens), so
// Hugging Face and `moe generate --model` tokenize exactly as training did.
nlohmann::json byte_tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[utf8_encode(gpt2_byte_chars()[b])] = b;
  auto added = [](int id, const char* text) {
    return nlohmann::json{{"id", id},        {"content", text}, {"single_word", false},
                          {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                          {"special", true}};
  };
  return {{"version", "1.0"},
          {"added_tokens", {added(256, "<s>"), added(257, "</s>")}},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "ByteLevel"},
            {"add_prefix_space", false},
            {"trim_offsets", false},
            {"use_regex", false}}},
          {"post_processor", nullptr},
          {"decoder",
           {{"type", "ByteLevel"},
            {"add_prefix_space", false},
            {"trim_offsets", false},
            {"use_regex", false}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", nlohmann::json::array()}}}};
}

int run_convert(const ConvertArgs& a) {
  const DType dtype = parse_dtype(a.dtype);
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
  save_hf_checkpoint(*run.model, out, dtype);
  // tokenizer_config.json: our runs train with a BOS before every document.
  nlohmann::json tc = {{"add_bos_token", true}, {"add_eos_token", false}};
  auto copy_into_out = [&](const std::string& file) {
    const std::string name = fs::path(file).filename().string();
    fs::copy_file(file, out + "/" + name + ".tmp", fs::copy_options::overwrite_existing);
    fs::rename(out + "/" + name + ".tmp", out + "/" + name);
  };
  const std::string& tok = run.config.training.tokenizer;
  const std::string own_json = a.run + "/tokenizer.json";
  if (tok != "sentencepiece" && tok != "byte") {
    // A model's own tokenizer (a fine-tuned checkpoint's): the run's copy goes along as is.
    const bool json = fs::exists(own_json);
    copy_into_out(json ? own_json : sp_model);
    tc["tokenizer_class"] = json ? "PreTrainedTokenizerFast" : "LlamaTokenizer";
  } else if (sentencepiece) {
    copy_into_out(sp_model);
    tc["tokenizer_class"] = "LlamaTokenizer";
    tc["bos_token"] = "<s>";
    tc["eos_token"] = "</s>";
    tc["unk_token"] = "<unk>";
  } else {
    write_text(out + "/tokenizer.json", byte_tokenizer_json().dump() + "\n");
    tc["tokenizer_class"] = "PreTrainedTokenizerFast";
    tc["bos_token"] = "<s>";
    tc["eos_token"] = "</s>";
  }
  write_text(out + "/tokenizer_config.json", tc.dump(2) + "\n");
  const ModelConfig saved = load_hf_config(out + "/config.json");
  const ParameterCount n = count_parameters(saved);
  fmt::print("wrote {} (model_type {}, {} weights, {:.2f}M parameters, {:.2f}M active)\n", out,
             saved.model_type, dtype_name(dtype), n.total / 1e6, n.active / 1e6);
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
  return [a] { return run_convert(*a); };
}

}  // namespace moe::cli
