// Helpers shared by the files of src/data (not part of the public API).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "moe/corpus.h"

namespace moe {

// FNV-1a 64 (continues from h), for digests and document hashes stored in files.
uint64_t fnv1a64(std::string_view s, uint64_t h = 0xcbf29ce484222325ULL);
// splitmix64 finalizer: turns structured 64-bit values into well-mixed ones.
uint64_t mix64(uint64_t z);
// The 64-bit hash of a document that decides its split: (seed, domain, text).
uint64_t document_hash(std::string_view domain, std::string_view text, uint64_t seed);
// Which documents go to validation: hash below valid_fraction (top 53 bits), then every domain
// (an index per document) with two or more documents gets at least one in each split by moving
// the document whose hash is closest to the threshold (the rule of corpus.h).
std::vector<char> validation_flags(const std::vector<uint64_t>& hashes,
                                   const std::vector<uint32_t>& domains, double valid_fraction);
// The options that determine the corpus bytes, as stored in manifest.json.
nlohmann::json corpus_options_json(const CorpusOptions& opt);

}  // namespace moe
