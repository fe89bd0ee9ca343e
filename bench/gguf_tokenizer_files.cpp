// The GGUF side of bench/compare_llama_tokenize.sh: writes one vocabulary-only GGUF per
// tokenizer kind (the tokenizer.json fixtures with their checkpoint configs, a sentencepiece
// model with Mixtral's settings, a run's sentencepiece model, the byte tokenizer), each with the
// minimal "llama" hyperparameters llama.cpp reads before its vocabulary, and prints, as JSON,
// each file's path and our ids (load_gguf_tokenizer) for every text of TEXTS_JSON.
//   gguf_tokenizer_files FIXTURES_DIR TEXTS_JSON OUT_DIR
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/gguf_tokenizer.h"
#include "moe/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void set_hparams(moe::GgufWriter& w, int n_tokens) {
  w.set("general.architecture", moe::GgufValue::string("llama"));
  w.set("llama.vocab_size", moe::GgufValue::u32(static_cast<uint32_t>(n_tokens)));
  w.set("llama.context_length", moe::GgufValue::u32(128));
  w.set("llama.embedding_length", moe::GgufValue::u32(16));
  w.set("llama.block_count", moe::GgufValue::u32(1));
  w.set("llama.feed_forward_length", moe::GgufValue::u32(32));
  w.set("llama.attention.head_count", moe::GgufValue::u32(2));
  w.set("llama.attention.head_count_kv", moe::GgufValue::u32(2));
  w.set("llama.rope.dimension_count", moe::GgufValue::u32(8));
  w.set("llama.attention.layer_norm_rms_epsilon", moe::GgufValue::f32(1e-5f));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s FIXTURES_DIR TEXTS_JSON OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string fixtures = argv[1], out = argv[3];
  try {
    std::ifstream tin{std::string(argv[2])};
    const std::vector<std::string> texts = json::parse(tin).get<std::vector<std::string>>();
    fs::create_directories(out);
    json result = json::object();
    // spm: compare with llama-tokenize --no-parse-special (sentencepiece matches no control
    // piece in text).
    auto emit = [&](const std::string& name, bool spm,
                    const std::function<int32_t(moe::GgufWriter&)>& add) {
      moe::GgufWriter w;
      set_hparams(w, add(w));
      const std::string path = out + "/" + name + ".gguf";
      w.write(path);
      const auto tok = moe::load_gguf_tokenizer(moe::GgufFile::open(path));
      json ids = json::array();
      for (const std::string& t : texts) ids.push_back(tok->encode(t));
      result[name] = {{"path", path}, {"spm", spm}, {"ids", ids}};
    };
    // The tokenizer.json fixtures with ignore_merges off (llama.cpp honours it for llama-bpe
    // only, and the writer refuses it otherwise).
    for (const auto& [style, config] :
         {std::pair<std::string, std::string>{"qwen2_style", "qwen2_moe"},
          {"gpt2_style", "olmoe"}}) {
      const std::string dir = out + "/" + style;
      fs::create_directories(dir);
      std::ifstream in(fixtures + "/tokenizer/" + style + "/tokenizer.json");
      json j = json::parse(in);
      j["model"]["ignore_merges"] = false;
      std::ofstream(dir + "/tokenizer.json") << j.dump();
      fs::copy_file(fixtures + "/hf/" + config + "/config.json", dir + "/config.json",
                    fs::copy_options::overwrite_existing);
      emit(style, false,
           [&](moe::GgufWriter& w) { return moe::add_gguf_tokenizer_of_hf_dir(w, dir); });
    }
    const std::string corpus = out + "/corpus.txt";
    {
      std::ofstream c(corpus);
      for (int r = 0; r < 30; ++r)
        c << "the quick brown fox jumps over the lazy dog " << r
          << "\ndef main():    return expert_router(x)  # routing\n"
             "混合专家模型在中央处理器上运行。日本語のテキスト\n"
             "Grüße, café, naïve, Ελληνικά, русский текст\n";
    }
    const std::string mixtral = out + "/mixtral_like";
    fs::create_directories(mixtral);
    const auto status = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + corpus + " --model_prefix=" + mixtral +
        "/tokenizer --model_type=bpe --vocab_size=500 --minloglevel=2 --num_threads=1 "
        "--byte_fallback=true --character_coverage=0.99 --normalization_rule_name=identity "
        "--add_dummy_prefix=true --remove_extra_whitespaces=false --user_defined_symbols=_USER_");
    if (!status.ok()) throw moe::Error("sentencepiece training failed: " + status.ToString());
    emit("mixtral_like", true,
         [&](moe::GgufWriter& w) { return moe::add_gguf_tokenizer_of_hf_dir(w, mixtral); });
    std::vector<moe::Document> docs;
    for (int r = 0; r < 30; ++r) {
      docs.push_back({"en", "the quick brown fox jumps over the lazy dog " + std::to_string(r)});
      docs.push_back({"code", "def main():\n    return expert_router(x)\n"});
      docs.push_back({"zh", "混合专家模型在中央处理器上运行。"});
    }
    moe::train_sentencepiece(docs, out + "/run.model", 400);
    emit("run_sentencepiece", true,
         [&](moe::GgufWriter& w) { return moe::add_gguf_tokenizer_of_run(w, out + "/run.model"); });
    emit("byte", false, [&](moe::GgufWriter& w) { return moe::add_gguf_tokenizer_of_run(w, ""); });
    std::cout << result.dump() << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gguf_tokenizer_files: %s\n", e.what());
    return 1;
  }
  return 0;
}
