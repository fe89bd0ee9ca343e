// One call that gives the trainer its data: builds the corpus and the tokenizer when they are
// missing or stale, then tokenizes both splits.
//
// Files under `dir` (all generated, safe to delete):
//   corpus/train.jsonl, corpus/valid.jsonl, corpus/manifest.json   (build_corpus)
//   tokenizer.model, tokenizer.json                                (sentencepiece only)
// The corpus is rebuilt when manifest.json records different corpus options; the tokenizer is
// retrained when tokenizer.json records a different vocab size or train-split digest.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "moe/corpus.h"
#include "moe/dataset.h"
#include "moe/tokenizer.h"

namespace moe {

struct DataOptions {
  std::string dir = "data";                 // corpus + tokenizer cache
  std::string tokenizer = "sentencepiece";  // or "byte"
  int vocab_size = 4096;                    // sentencepiece only
  CorpusOptions corpus;
};

// The corpus's two splits, read after building the corpus when it is missing or was made with
// other options (the first steps of prepare_data). Empty splits are errors naming the file.
struct CorpusSplits {
  std::vector<Document> train, valid;
  std::vector<std::string> domain_names;  // sorted, the same indices for both splits
  std::string train_digest;               // manifest.json's digest of the train split
};
CorpusSplits load_corpus(const DataOptions& opt,
                         const std::function<void(const std::string&)>& log);

struct PreparedData {
  std::unique_ptr<Tokenizer> tokenizer;
  TokenStream train, valid;
};

// Logs one line per step through `log` (may be empty), with timings.
PreparedData prepare_data(const DataOptions& opt,
                          const std::function<void(const std::string&)>& log);

}  // namespace moe
