// Token streams and the batches cut from them. A split is tokenized into one stream: every
// document contributes BOS, its tokens, EOS. Training windows of S+1 tokens start at multiples
// of S (consecutive windows share one token, so every token is a target exactly once per
// epoch) and are visited in a fresh shuffled order each epoch.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moe/corpus.h"
#include "moe/tokenizer.h"

namespace moe {

// A token file (written by TokenFileWriter) mapped read-only: the tokens stay on disk and in
// the page cache, not in this process's heap, so a corpus of several GB trains in little
// memory. Layout (little-endian): a 64-byte header ("MOETOKNS", version 1, token width 2
// (uint16, vocab <= 65536) or 4 (uint32), token count, domain-run count, offsets), the tokens,
// then the domain runs (int64 first token of each run, then one uint8 domain per run): a run
// is a stretch of consecutive tokens of one domain, so domains cost bytes per document, not
// per token. A truncated or foreign file is an error naming it.
class MappedTokens {
 public:
  static std::shared_ptr<const MappedTokens> open(const std::string& path);
  ~MappedTokens();
  MappedTokens(const MappedTokens&) = delete;
  MappedTokens& operator=(const MappedTokens&) = delete;
  int64_t size() const { return count_; }
  int width() const { return width_; }
  // tokens[start, start + n) and their domains; either output may be null.
  void read(int64_t start, int64_t n, int32_t* tokens, uint8_t* domains) const;
  const std::string& path() const { return path_; }

 private:
  MappedTokens() = default;
  std::string path_;
  const unsigned char* base_ = nullptr;
  size_t bytes_ = 0;
  int width_ = 0;
  int64_t count_ = 0;
  std::vector<int64_t> run_start_;  // [runs] ascending, run_start_[0] == 0
  std::vector<uint8_t> run_domain_;
};

// Writes a token file document by document (streaming: nothing but a write buffer is held) to
// path + ".tmp", renamed to path by finish(); destroyed unfinished, it removes the temp file.
class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, int vocab_size);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;
  void add(const int32_t* ids, size_t n, uint8_t domain);  // one document, BOS/EOS included
  int64_t tokens() const { return count_; }
  void finish();

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  int width_;
  int64_t count_ = 0;
  std::vector<int64_t> run_start_;
  std::vector<uint8_t> run_domain_;
  std::vector<unsigned char> buf_;
};

// A split's tokens: in memory (tokens/domain), or in a mapped token file (`mapped` set,
// tokens/domain empty). Consumers read through size() and read(), which serve both.
struct TokenStream {
  std::vector<int32_t> tokens;            // [n]
  std::vector<uint8_t> domain;            // [n] domain index of token i
  std::vector<std::string> domain_names;  // index -> name, same order for train and valid
  std::shared_ptr<const MappedTokens> mapped;

  int64_t size() const { return mapped ? mapped->size() : static_cast<int64_t>(tokens.size()); }
  // tokens[start, start + n) and their domains; either output may be null.
  void read(int64_t start, int64_t n, int32_t* tokens_out, uint8_t* domains_out) const;
};

// The BOS/EOS pair that frames each document: the tokenizer's BOS, or its EOS when it has
// none (GPT-2 style tokenizers separate documents with one end-of-text token). A tokenizer
// without an EOS is an error naming its description.
std::pair<int32_t, int32_t> document_frame(const Tokenizer& tok);

// The sorted domain names occurring in any of the lists (at most 256).
std::vector<std::string> domain_names_of(const std::vector<const std::vector<Document>*>& lists);

// Tokenizes the documents in order (in parallel, result independent of the thread count). A
// document whose domain is not in domain_names is an error.
TokenStream tokenize_documents(const std::vector<Document>& docs, const Tokenizer& tok,
                               const std::vector<std::string>& domain_names);

// Deterministic training batches: windows of S+1 tokens at shuffled window starts (stride S),
// a new shuffle per epoch from seed+epoch. Holds a reference: `stream` must outlive it.
class BatchSampler {
 public:
  struct State {
    uint64_t epoch = 0;
    uint64_t cursor = 0;  // windows of this epoch already handed out
  };
  // Error if the stream is shorter than one window of seq_len + 1 tokens.
  BatchSampler(const TokenStream& stream, int batch, int seq_len, uint64_t seed);
  BatchSampler(TokenStream&&, int, int, uint64_t) = delete;  // would dangle
  void next(int32_t* tokens, uint8_t* domains);              // both [batch, seq_len + 1]
  State state() const { return state_; }
  void restore(const State& s);  // resume bit-exactly
  int64_t windows_per_epoch() const { return num_windows_; }

 private:
  void shuffle_epoch();

  const TokenStream& stream_;
  int batch_, seq_len_;
  uint64_t seed_;
  int64_t num_windows_;
  State state_;
  // [num_windows] window index in visiting order for state_.epoch; 32-bit, so a corpus of
  // billions of tokens costs 4 bytes per window here.
  std::vector<uint32_t> order_;
};

// Called after each batch of validation windows with (windows done, windows in all): the
// progress of evaluate() and analyze_routing(); may be empty.
using WindowProgress = std::function<void(int64_t done, int64_t total)>;

// Validation: start offsets of non-overlapping windows of S+1 tokens (window j starts at
// j*(S+1)): all of them if max_windows <= 0, else max_windows of them spread evenly over the
// split (window floor(k * total / max_windows) for k = 0..max_windows-1), in order.
std::vector<int64_t> validation_windows(const TokenStream& stream, int seq_len,
                                        int64_t max_windows);

}  // namespace moe
