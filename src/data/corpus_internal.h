// Helpers shared by the files of src/data (not part of the public API).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "moe/corpus.h"

namespace moe {

// FNV-1a 64 (continues from h), for digests and document hashes stored in files.
uint64_t fnv1a64(std::string_view s, uint64_t h = 0xcbf29ce484222325ULL);
// splitmix64 finalizer: turns structured 64-bit values into well-mixed ones.
uint64_t mix64(uint64_t z);
// The options that determine the corpus bytes, as stored in manifest.json.
nlohmann::json corpus_options_json(const CorpusOptions& opt);

}  // namespace moe
