// prepare_data on the bundled corpus: the corpus and tokenizer cache under one directory, then
// both token streams (the user's own text: user_data.cpp).
#include "moe/data.h"

#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/corpus_internal.h"
#include "data/user_data_internal.h"
#include "moe/error.h"
#include "moe/hf_tokenizer.h"
#include "moe/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace moe {
namespace {

int64_t text_bytes(const std::vector<Document>& docs) {
  int64_t n = 0;
  for (const auto& d : docs) n += static_cast<int64_t>(d.text.size());
  return n;
}

// The digest build_corpus records for a split file: FNV-1a 64 of its bytes.
std::string file_digest(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open", path.string()));
  uint64_t h = 0xcbf29ce484222325ULL;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = fnv1a64(std::string_view(buf.data(), static_cast<size_t>(in.gcount())), h);
  }
  return fmt::format("fnv1a64:{:016x}", h);
}

// Refuses to rebuild over split files moe did not write: each existing one must match the
// digest manifest.json recorded for it.
void check_corpus_is_ours(const fs::path& corpus_dir, const json& manifest) {
  const fs::path manifest_path = corpus_dir / "manifest.json";
  if (fs::exists(manifest_path) &&
      !(manifest.is_object() && manifest.value("format", "") == "moe-corpus"))
    throw Error(fmt::format(
        "{}: not a manifest moe wrote; moe will not overwrite the corpus there (move it away, or "
        "set training.data_dir to another directory; to train on your own text use --data)",
        manifest_path.string()));
  for (const char* split : {"train", "valid"}) {
    const fs::path path = corpus_dir / (std::string(split) + ".jsonl");
    if (!fs::exists(path)) continue;
    const std::string want =
        manifest.is_object() && manifest.contains(split) && manifest[split].is_object()
            ? manifest[split].value("digest", "")
            : "";
    if (want.empty() || file_digest(path) != want)
      throw Error(fmt::format(
          "{}: not written by moe ({}); moe will not overwrite it: move it away, or set "
          "training.data_dir to another directory (to train on your own text, use --data {})",
          path.string(),
          want.empty() ? "no manifest.json records it" : "it differs from manifest.json's digest",
          path.string()));
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw Error(
        fmt::format("{}: tokenizer file not found (the tokenizer is \"sentencepiece\", \"byte\", a "
                    "sentencepiece .model file or a Hugging Face tokenizer.json)",
                    path));
  if (path.ends_with(".json")) return load_hf_tokenizer_json(path);
  return load_sentencepiece_model(path);
}

CorpusSplits load_corpus(const DataOptions& opt,
                         const std::function<void(const std::string&)>& log) {
  const auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  const fs::path corpus_dir = fs::path(opt.dir) / "corpus";
  const fs::path train_path = corpus_dir / "train.jsonl";
  const fs::path valid_path = corpus_dir / "valid.jsonl";
  const fs::path manifest_path = corpus_dir / "manifest.json";

  // 1. Corpus: rebuilt when missing or made with other options.
  json manifest = read_json_or_null(manifest_path);
  const bool corpus_fresh = manifest.is_object() && fs::exists(train_path) &&
                            fs::exists(valid_path) &&
                            manifest.value("options", json()) == corpus_options_json(opt.corpus);
  if (!corpus_fresh) {
    check_corpus_is_ours(corpus_dir, manifest);
    Stopwatch t;
    build_corpus(opt.corpus, corpus_dir.string());
    manifest = read_json_or_null(manifest_path);
    MOE_CHECK(manifest.is_object(), "{}: unreadable right after writing it",
              manifest_path.string());
    say(fmt::format("data: built corpus {} from the Debian packages in {:.2f} s",
                    corpus_dir.string(), t.seconds()));
  } else {
    say(fmt::format("data: corpus {} is up to date (seed {})", corpus_dir.string(),
                    opt.corpus.seed));
  }

  // 2. Documents.
  Stopwatch t_read;
  CorpusSplits c;
  c.train = read_documents(train_path.string());
  c.valid = read_documents(valid_path.string());
  if (c.train.empty())
    throw Error(fmt::format("{}: no documents (empty split); delete {} to rebuild it",
                            train_path.string(), corpus_dir.string()));
  if (c.valid.empty())
    throw Error(fmt::format("{}: no documents (empty split); delete {} to rebuild it",
                            valid_path.string(), corpus_dir.string()));
  c.domain_names = domain_names_of({&c.train, &c.valid});
  c.train_digest = manifest.contains("train") && manifest["train"].is_object()
                       ? manifest["train"].value("digest", "")
                       : "";
  say(fmt::format(
      "data: read {} train documents ({:.2f} MB) and {} valid ({:.2f} MB), "
      "{} domains [{}] in {:.2f} s",
      c.train.size(), text_bytes(c.train) / 1e6, c.valid.size(), text_bytes(c.valid) / 1e6,
      c.domain_names.size(), fmt::join(c.domain_names, " "), t_read.seconds()));
  return c;
}

PreparedData prepare_data(const DataOptions& opt,
                          const std::function<void(const std::string&)>& log) {
  if (!opt.input.empty()) return prepare_user_data(opt, log);
  const auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  const fs::path dir(opt.dir);
  const CorpusSplits corpus = load_corpus(opt, log);
  const std::vector<Document>& train_docs = corpus.train;
  const std::vector<Document>& valid_docs = corpus.valid;
  const std::vector<std::string>& names = corpus.domain_names;

  // 3. Tokenizer: one file per vocab size and train split, trained when missing.
  PreparedData out;
  out.tokenizer = resolve_tokenizer(opt, dir, corpus.train_digest, &out.tokenizer_file, log,
                                    [&](const std::string& model_path) {
                                      train_sentencepiece(train_docs, model_path, opt.vocab_size);
                                    });
  // 4. Token streams.
  for (const auto& [name, docs, stream] : {std::tuple{"train", &train_docs, &out.train},
                                           std::tuple{"valid", &valid_docs, &out.valid}}) {
    Stopwatch t;
    *stream = tokenize_documents(*docs, *out.tokenizer, names);
    say(fmt::format("data: tokenized {}: {} tokens ({:.2f} bytes/token) in {:.2f} s", name,
                    stream->tokens.size(),
                    static_cast<double>(text_bytes(*docs)) /
                        static_cast<double>(std::max<size_t>(1, stream->tokens.size())),
                    t.seconds()));
  }
  return out;
}

}  // namespace moe

namespace moe {

void check_tokenizer_options(const DataOptions& opt) {
  if (opt.tokenizer == "sentencepiece" && opt.vocab_size < 300)  // 3 control + 256 bytes
    throw Error(fmt::format(
        "vocab_size {} is too small for a sentencepiece tokenizer (at least 300: 3 control and "
        "256 byte pieces, then merges); raise vocab_size or use the byte tokenizer",
        opt.vocab_size));
}

std::unique_ptr<Tokenizer> resolve_tokenizer(const DataOptions& opt, const fs::path& dir,
                                             const std::string& train_digest, std::string* file,
                                             const std::function<void(const std::string&)>& log,
                                             const std::function<void(const std::string&)>& train) {
  const auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  check_tokenizer_options(opt);
  file->clear();
  if (opt.tokenizer == "byte") {
    say("data: byte tokenizer (vocab 258)");
    return make_byte_tokenizer();
  }
  if (opt.tokenizer != "sentencepiece") {
    if (opt.tokenizer.find('/') == std::string::npos &&
        opt.tokenizer.find('.') == std::string::npos)
      throw Error(fmt::format(
          "tokenizer: unknown kind \"{}\" (expected sentencepiece, byte, or a tokenizer file: "
          "a sentencepiece .model or a Hugging Face tokenizer.json)",
          opt.tokenizer));
    auto tok = load_tokenizer_file(opt.tokenizer);
    document_frame(*tok);  // no EOS: refused now, before the slow work
    *file = opt.tokenizer;
    say(fmt::format("data: tokenizer {} (vocab {})", tok->description(), tok->vocab_size()));
    return tok;
  }
  // "fnv1a64:0123abcd..." -> "0123abcd"
  const std::string hex = train_digest.substr(train_digest.find(':') + 1);
  const fs::path model_path =
      dir / fmt::format("tokenizer-{}-{}.model", opt.vocab_size, hex.substr(0, 8));
  if (!fs::exists(model_path)) {
    Stopwatch t;
    train(model_path.string());
    say(fmt::format("data: trained sentencepiece bpe {} on the train split in {:.2f} s -> {}",
                    opt.vocab_size, t.seconds(), model_path.string()));
  } else {
    say(fmt::format("data: tokenizer {} is up to date", model_path.string()));
  }
  *file = model_path.string();
  return load_sentencepiece(model_path.string());
}

TokenStream validation_stream(const DataOptions& opt, const Tokenizer& tok,
                              const std::string& tokenizer_file,
                              const std::function<void(const std::string&)>& log) {
  if (!opt.input.empty()) return user_validation_stream(opt, tok, tokenizer_file, log);
  const CorpusSplits corpus = load_corpus(opt, log);
  return tokenize_documents(corpus.valid, tok, corpus.domain_names);
}

int64_t peak_resident_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

}  // namespace moe
