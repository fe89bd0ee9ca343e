// One call that gives the trainer its data: the bundled corpus, or the user's own text, with a
// tokenizer, tokenized into two streams. Everything derived lives in a cache directory owned
// by moe (`dir`, training.data_dir); the user's files are only ever opened read-only.
//
// The bundled corpus (input empty), under `dir`:
//   corpus/train.jsonl, corpus/valid.jsonl, corpus/manifest.json   (build_corpus)
//   tokenizer-<vocab>-<digest8>.model                              (sentencepiece only)
// The corpus is rebuilt when manifest.json records different corpus options, but never over a
// train.jsonl or valid.jsonl that moe did not write (no manifest.json, or a digest that differs
// from the one it records): that is an error naming the file. The tokenizer file is keyed by
// vocab size and train-split digest, so runs with other vocabularies sharing `dir` keep theirs.
//
// The user's text (input = a path), under `dir`/user/<key>/ (key: a hash of the absolute path
// and the options that shape the split):
//   manifest.json                    the input's files (path, size, mtime), documents, domains
//   tokenizer-<vocab>-<digest8>.model
//   train-<tok>.tokens, valid-<tok>.tokens   memory-mapped token files (dataset.h MappedTokens);
//                                            <tok> is "byte" or a digest of the tokenizer file
// The input is one of
//   - a directory, walked recursively: .txt and .md files are text, .jsonl files are JSONL;
//     a file's domain is its first-level subfolder ("text" for files at the top); other files
//     are counted and skipped (one log line);
//   - a .jsonl file: one {"text": ..., "domain": ...} object per line ("domain" optional,
//     default "text"; in a directory the JSONL domain wins over the subfolder);
//   - any other file: text.
// A text file is cut at blank lines into documents of about document_bytes (paragraphs are
// never split; a shorter file is one document; a paragraph run past 4x the size is cut at a
// line), so one big file still gives many documents for the split. CRLF becomes LF.
// Split: the document hash rule of corpus.h with `valid_fraction` and corpus.seed.
// The cache is reused while every file's size and mtime match manifest.json, else rebuilt
// (log lines say which). Empty input, a binary file (a NUL byte) or text that is not UTF-8
// is one error line naming the file, raised while scanning, before any slow work. The scan
// streams (bounded memory); so does tokenization (documents in batches into the token
// files), with a progress line, MB/s and the peak resident memory (VmHWM) logged.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "moe/corpus.h"
#include "moe/dataset.h"
#include "moe/tokenizer.h"

namespace moe {

struct DataOptions {
  std::string dir = "data";  // the cache: bundled corpus, tokenizers, user/<key>/
  std::string input;         // the user's text (file or directory); empty: the bundled corpus
  // "sentencepiece" (trained here), "byte", or a tokenizer file: a sentencepiece .model or a
  // Hugging Face tokenizer.json.
  std::string tokenizer = "sentencepiece";
  int vocab_size = 4096;         // sentencepiece only
  double valid_fraction = 0.05;  // user text (the bundled corpus: corpus.valid_fraction)
  // User text: sentencepiece trains on a deterministic sample (by line hash) of at most this
  // many bytes of train-split lines.
  int64_t tokenizer_sample_bytes = 64'000'000;
  int64_t document_bytes = 8192;  // user text files: target document size
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
  std::string tokenizer_file;  // the file a run copies (empty: the byte tokenizer)
  TokenStream train, valid;    // user text: mapped token files
};

// Logs one line per step through `log` (may be empty), with timings.
PreparedData prepare_data(const DataOptions& opt,
                          const std::function<void(const std::string&)>& log);

// The validation split of the data `opt` names, tokenized with a run's own tokenizer
// (`tokenizer_file`: its file, empty for byte), for `moe eval` and `moe analyze`.
TokenStream validation_stream(const DataOptions& opt, const Tokenizer& tok,
                              const std::string& tokenizer_file,
                              const std::function<void(const std::string&)>& log);

// All of the user's text `input` (a file, a directory or JSONL, read as prepare_data reads it:
// documents of about document_bytes, domains from subfolders or the JSONL "domain" field),
// tokenized with `tok` in memory in input order, each document framed as in training (BOS,
// tokens, EOS: document_frame), for measuring a model on it (`moe perplexity`, `moe analyze
// --data`): no split, no cache. Logs one line through `log` (may be empty).
TokenStream read_text_tokens(const std::string& input, const Tokenizer& tok, int64_t document_bytes,
                             const std::function<void(const std::string&)>& log);

// The tokenizer a spec names when it is a file (not "sentencepiece" or "byte"): a .json is a
// Hugging Face tokenizer.json, anything else a sentencepiece model. Missing: an error.
std::unique_ptr<Tokenizer> load_tokenizer_file(const std::string& path);

// The peak resident memory of this process (Linux VmHWM) in bytes; 0 when unknown.
int64_t peak_resident_bytes();

}  // namespace moe
