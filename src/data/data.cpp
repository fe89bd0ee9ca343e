// prepare_data: the corpus and tokenizer cache under one directory, then both token streams.
#include "moe/data.h"

#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/corpus_internal.h"
#include "moe/error.h"
#include "moe/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace moe {
namespace {

// The parsed JSON file, or null when it is missing or unreadable (the cache is then stale).
json read_json_or_null(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return nullptr;
  try {
    return json::parse(in);
  } catch (const json::exception&) {
    return nullptr;
  }
}

class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

int64_t text_bytes(const std::vector<Document>& docs) {
  int64_t n = 0;
  for (const auto& d : docs) n += static_cast<int64_t>(d.text.size());
  return n;
}

}  // namespace

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
  const auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  const fs::path dir(opt.dir);
  const CorpusSplits corpus = load_corpus(opt, log);
  const std::vector<Document>& train_docs = corpus.train;
  const std::vector<Document>& valid_docs = corpus.valid;
  const std::vector<std::string>& names = corpus.domain_names;

  // 3. Tokenizer: retrained when the vocab size or the train split changed.
  PreparedData out;
  if (opt.tokenizer == "byte") {
    out.tokenizer = make_byte_tokenizer();
    say("data: byte tokenizer (vocab 258)");
  } else if (opt.tokenizer == "sentencepiece") {
    const fs::path model_path = dir / "tokenizer.model";
    const fs::path meta_path = dir / "tokenizer.json";
    const json want = {{"type", "sentencepiece bpe"},
                       {"vocab_size", opt.vocab_size},
                       {"train_digest", corpus.train_digest}};
    if (!fs::exists(model_path) || read_json_or_null(meta_path) != want) {
      Stopwatch t;
      train_sentencepiece(train_docs, model_path.string(), opt.vocab_size);
      const std::string meta = want.dump(2) + "\n";
      write_file_atomic(meta_path.string(), meta.data(), meta.size());
      say(fmt::format("data: trained sentencepiece bpe {} on the train split in {:.2f} s -> {}",
                      opt.vocab_size, t.seconds(), model_path.string()));
    } else {
      say(fmt::format("data: tokenizer {} is up to date", model_path.string()));
    }
    out.tokenizer = load_sentencepiece(model_path.string());
  } else {
    throw Error(fmt::format("tokenizer: unknown kind \"{}\" (expected sentencepiece or byte)",
                            opt.tokenizer));
  }

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
