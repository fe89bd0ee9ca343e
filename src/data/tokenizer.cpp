// Byte and sentencepiece tokenizers; sentencepiece training on corpus documents.
#include "moe/tokenizer.h"

#include <fmt/format.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <string>
#include <unordered_map>

#include "data/sentencepiece_file.h"
#include "moe/error.h"
#include "moe/hf_tokenizer.h"
#include "moe/safetensors.h"

namespace moe {

void load_sentencepiece_file(sentencepiece::SentencePieceProcessor& sp, const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error(fmt::format("{}: tokenizer model not found", path));
  sentencepiece::util::Status status;
  try {
    status = sp.Load(path);
  } catch (const std::exception& e) {
    // sentencepiece's trie builder (darts-clone) throws on some malformed models, e.g. an
    // empty piece (a fuzz finding): that is the file's fault, like a bad status.
    throw Error(fmt::format("{}: not a valid sentencepiece model: {}", path, e.what()));
  }
  if (!status.ok())
    throw Error(fmt::format("{}: not a valid sentencepiece model: {}", path, status.ToString()));
}

namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) {
      MOE_REQUIRE(id >= 0 && id < kVocab, "byte tokenizer: id {} out of range [0, {})", id, kVocab);
      if (id < 256) out.push_back(static_cast<char>(id));
    }
    return out;
  }
  int vocab_size() const override { return kVocab; }
  int32_t bos_id() const override { return 256; }
  int32_t eos_id() const override { return 257; }
  std::string description() const override { return "byte"; }

 private:
  static constexpr int kVocab = 258;
};

// Our trained model (BOS and EOS required: training frames every document with them) or any
// sentencepiece model of a downloaded checkpoint, with the model's own settings.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& path, bool trained_here)
      : path_(path), kind_(trained_here ? "sentencepiece bpe" : "sentencepiece") {
    load_sentencepiece_file(sp_, path);
    if (trained_here && (sp_.bos_id() < 0 || sp_.eos_id() < 0))
      throw Error(fmt::format("{}: the sentencepiece model has no BOS/EOS pieces", path));
  }
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(absl::string_view(text.data(), text.size()), &ids);
    MOE_CHECK(status.ok(), "{}: encode failed: {}", path_, status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    const int n = sp_.GetPieceSize();
    for (int32_t id : ids)
      MOE_REQUIRE(id >= 0 && id < n, "{}: id {} out of range [0, {})", path_, id, n);
    std::string out;
    const auto status = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    MOE_CHECK(status.ok(), "{}: decode failed: {}", path_, status.ToString());
    return out;
  }
  int vocab_size() const override { return sp_.GetPieceSize(); }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }
  std::string description() const override {
    return fmt::format("{} {} ({})", kind_, sp_.GetPieceSize(), path_);
  }

 private:
  std::string path_, kind_;
  sentencepiece::SentencePieceProcessor sp_;
};

// Feeds the trainer one line per sentence without copying the corpus into a file.
class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<Document>& docs) : docs_(docs) { advance(); }
  bool done() const override { return doc_ >= docs_.size(); }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  // Moves to the next non-empty line short enough for the trainer (it skips longer ones
  // with a log line each).
  void advance() {
    while (doc_ < docs_.size()) {
      const std::string& t = docs_[doc_].text;
      if (pos_ > t.size()) {
        ++doc_;
        pos_ = 0;
        continue;
      }
      size_t nl = t.find('\n', pos_);
      if (nl == std::string::npos) nl = t.size();
      const size_t begin = pos_;
      pos_ = nl + 1;
      if (nl > begin && nl - begin <= kMaxSentenceBytes) {
        line_.assign(t, begin, nl - begin);
        return;
      }
    }
  }

  static constexpr size_t kMaxSentenceBytes = 4192;  // sentencepiece's max_sentence_length
  const std::vector<Document>& docs_;
  size_t doc_ = 0, pos_ = 0;
  std::string line_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() {
  return std::make_unique<ByteTokenizer>();
}

void train_sentencepiece(const std::vector<Document>& docs, const std::string& model_path,
                         int vocab_size) {
  MOE_CHECK(!docs.empty(), "train_sentencepiece: no documents");
  // 3 control pieces + 256 byte pieces must fit with room for characters and merges.
  MOE_REQUIRE(vocab_size >= 300, "train_sentencepiece: vocab_size {} is below 300", vocab_size);
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "0.995"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"max_sentence_length", "4192"},
      // Stored in the model: fixed, so the bytes do not depend on the machine. (The output
      // goes to a string, so no model_prefix: a path would be stored too.)
      {"num_threads", "2"},
      {"minloglevel", "2"},  // the trainer's progress lines would flood the caller's log
  };
  LineIterator it(docs);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  if (!status.ok())
    throw Error(
        fmt::format("{}: sentencepiece training failed: {}", model_path, status.ToString()));
  write_file_atomic(model_path, model.data(), model.size());
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path, true);
}

std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path) {
  return std::make_unique<SentencePieceTokenizer>(path, false);
}

}  // namespace moe
