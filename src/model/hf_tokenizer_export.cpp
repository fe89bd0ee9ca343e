#include "moe/hf_tokenizer_export.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/input_file.h"
#include "moe/error.h"
#include "moe/safetensors.h"
#include "moe/utf8.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

void write_text(const std::string& path, const std::string& text) {
  write_file_atomic(path, text.data(), text.size());
}

void copy_atomic(const std::string& from, const std::string& to) {
  MOE_REQUIRE(fs::exists(from), "{}: missing (the run's tokenizer)", from);
  fs::copy_file(from, to + ".tmp", fs::copy_options::overwrite_existing);
  fs::rename(to + ".tmp", to);
}

}  // namespace

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

void write_run_tokenizer_files(const std::string& run_dir, const TrainConfig& t,
                               const std::string& out_dir) {
  nlohmann::json tc = {{"add_bos_token", true}, {"add_eos_token", false}};
  if (t.tokenizer == "byte") {
    write_text(out_dir + "/tokenizer.json", byte_tokenizer_json().dump() + "\n");
    tc["tokenizer_class"] = "PreTrainedTokenizerFast";
    tc["bos_token"] = "<s>";
    tc["eos_token"] = "</s>";
  } else if (t.tokenizer == "sentencepiece") {
    copy_atomic(run_dir + "/tokenizer.model", out_dir + "/tokenizer.model");
    tc["tokenizer_class"] = "LlamaTokenizer";
    tc["bos_token"] = "<s>";  // the pieces our trained models define
    tc["eos_token"] = "</s>";
    tc["unk_token"] = "<unk>";
  } else {
    // A tokenizer file given to --tokenizer, or a model's own (a fine-tuned checkpoint's): the
    // run's copy goes along as it is, with the BOS/EOS names of its tokenizer_config.json.
    const bool json = fs::exists(run_dir + "/tokenizer.json");
    const std::string file = json ? "/tokenizer.json" : "/tokenizer.model";
    copy_atomic(run_dir + file, out_dir + file);
    tc["tokenizer_class"] = json ? "PreTrainedTokenizerFast" : "LlamaTokenizer";
    const std::string sibling = run_dir + "/tokenizer_config.json";
    if (fs::exists(sibling)) {
      const nlohmann::json theirs = read_json_file(sibling);
      if (theirs.is_object()) {
        tc.update(theirs);
        tc["add_bos_token"] = true;
      }
    }
  }
  write_text(out_dir + "/tokenizer_config.json", tc.dump(2) + "\n");
}

}  // namespace moe
