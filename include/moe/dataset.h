// Token streams and the batches cut from them. A split is tokenized into one stream: every
// document contributes BOS, its tokens, EOS. Training windows of S+1 tokens start at multiples
// of S (consecutive windows share one token, so every token is a target exactly once per
// epoch) and are visited in a fresh shuffled order each epoch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/corpus.h"
#include "moe/tokenizer.h"

namespace moe {

struct TokenStream {
  std::vector<int32_t> tokens;            // [n]
  std::vector<uint8_t> domain;            // [n] domain index of token i
  std::vector<std::string> domain_names;  // index -> name, same order for train and valid
};

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
  std::vector<int64_t> order_;  // [num_windows] window index in visiting order for state_.epoch
};

// Validation: start offsets of non-overlapping windows of S+1 tokens (window j starts at
// j*(S+1)): all of them if max_windows <= 0, else max_windows of them spread evenly over the
// split (window floor(k * total / max_windows) for k = 0..max_windows-1), in order.
std::vector<int64_t> validation_windows(const TokenStream& stream, int seq_len,
                                        int64_t max_windows);

}  // namespace moe
