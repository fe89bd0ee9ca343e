// The bundled training corpus: documents gathered from Debian packages on the build machine,
// each tagged with its domain, split deterministically into train and validation.
//
// Domains and sources (the Debian package that provides each is named in the error when missing):
//   en                         fortunes, fortunes-min: regular files at the top of fortunes_dir
//                              (symlinks there point into it/; chinese, tang300, song100 are zh)
//   de es it ru pl cs          fortunes-<lang>: fortunes_dir/<lang>/ (cz/ is a symlink copy of
//                              cs/; off/ subdirectories and the Slovak klasik-sk are skipped)
//   zh                         fortunes-zh: chinese, tang300, song100 at the top of fortunes_dir
//   code                       libpython3.11-stdlib: python_dir/**/*.py without tests, encodings
//                              tables, pydoc_data and third-party packages, cut into chunks
//   numbers                    generated from the seed: arithmetic, times tables, sequences,
//                              dates and unit conversions
// One fortune record (text between lines holding only `%`) is one document. Text is cleaned
// (CR/LF to LF, ANSI colour codes and other control characters removed, backspace overstrikes
// resolved, trailing blanks trimmed); a record that is not valid UTF-8 is dropped and counted.
// Exact duplicates within a domain are kept once.
//
// Determinism: the same installed packages and seed give a byte-identical corpus. Each domain's
// candidates are shuffled with the seed and taken until its byte cap; the documents of all
// domains are then shuffled together, so any prefix of a split mixes every domain.
// Split: a document goes to validation when a 64-bit hash of (seed, domain, text) falls below
// valid_fraction; a domain with two or more documents always has at least one in each split.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "moe/utf8.h"  // is_valid_utf8, used by the cleaning

namespace moe {

struct Document {
  std::string domain;
  std::string text;
  bool operator==(const Document&) const = default;
};

// The prose languages, in the order they are collected.
inline constexpr const char* kProseDomains[] = {"en", "de", "es", "it", "ru", "pl", "cs", "zh"};

struct CorpusOptions {
  std::string fortunes_dir = "/usr/share/games/fortunes";
  std::string python_dir = "/usr/lib/python3.11";
  uint64_t seed = 1234;
  double valid_fraction = 0.05;  // in (0, 1)
  // Byte caps per domain (UTF-8 bytes of document text). The defaults give about 11 MB in all:
  // every language but es (0.9 MB installed) fills its cap, so the prose languages weigh
  // the same; code gets more because it is the most varied domain; numbers are cheap to model.
  int64_t prose_bytes = 1'000'000;  // per language
  int64_t code_bytes = 3'000'000;
  int64_t numbers_bytes = 1'000'000;
  int64_t max_record_bytes = 16'384;  // longer fortune records (mostly ASCII art) are skipped
  int64_t code_chunk_bytes = 8'192;   // code documents are cut near this size at top-level lines
};

// What one domain's source held and what was taken (written to manifest.json).
struct SourceStats {
  std::string domain;
  int64_t files = 0;            // files read
  int64_t records = 0;          // records (code: chunks, numbers: generated documents)
  int64_t invalid_utf8 = 0;     // dropped records (code: whole files) that are not UTF-8
  int64_t empty = 0;            // dropped: nothing left after cleaning
  int64_t too_long = 0;         // dropped: longer than max_record_bytes
  int64_t duplicates = 0;       // dropped: same text seen before in this domain
  int64_t available_bytes = 0;  // bytes of the candidates left
  int64_t taken = 0, taken_bytes = 0;
};

// All documents of every domain, in the deterministic shuffled order described above. A
// missing source is an error naming the directory and the Debian package to install.
std::vector<Document> collect_documents(const CorpusOptions& opt,
                                        std::vector<SourceStats>* stats = nullptr);

// Splits `docs` into (train, valid) by the document hash described above.
void split_documents(const std::vector<Document>& docs, const CorpusOptions& opt,
                     std::vector<Document>* train, std::vector<Document>* valid);

// Writes out_dir/train.jsonl, out_dir/valid.jsonl (one {"domain":..., "text":...} per line) and
// out_dir/manifest.json (documents and bytes per domain and split, the options used and a digest
// of each split), each atomically (temp file + rename). Creates out_dir if needed.
void build_corpus(const CorpusOptions& opt, const std::string& out_dir);

// Reads a .jsonl written above; a bad line is an error naming file:line.
std::vector<Document> read_documents(const std::string& path);

// Splits fortune-file text into records at lines holding only `%` (exposed for the tests).
std::vector<std::string> split_fortune_records(const std::string& file_text);
// The cleaning applied to every document (see above); "" when nothing is left.
std::string clean_text(std::string_view raw);

}  // namespace moe
