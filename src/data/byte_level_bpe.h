// The byte-level BPE tokenizer (GPT-2 style: every byte has a visible stand-in character,
// merges by rank), built from its parts so that one implementation serves both sources:
// a Hugging Face tokenizer.json (hf_tokenizer.cpp) and the tokenizer.ggml.* metadata of a GGUF
// file (gguf_tokenizer.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/tokenizer.h"

namespace moe {

// A token matched whole in the raw text before pre-tokenization and never split (the crate's
// added tokens; llama.cpp's CONTROL and USER_DEFINED tokens).
struct BpeAddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, single_word = false, lstrip = false, rstrip = false;
  bool normalized = false;  // matched after normalization (only meaningful with nfc)
};

// One Split(Isolated) pre-tokenizer step: matches and the gaps between them become pieces.
struct BpeSplit {
  std::string pattern;  // Oniguruma / Rust regex syntax (\s is Unicode White_Space), or a literal
  bool literal = false;
  std::string field;  // named in the error when the pattern does not compile
};

struct BpeMerge {
  std::string left, right;
  size_t index = 0;  // position in the source list, named in errors
};

struct ByteLevelBpeSpec {
  std::string source;                     // the file named in errors and in description()
  std::string kind;                       // description(): "<kind> <vocab_size> (<source>)"
  std::string vocab_field, merges_field;  // source fields named in errors
  // Token strings (in the byte alphabet) and their ids; a repeated string keeps its last id.
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<BpeMerge> merges;  // in rank order; each side and the joined pair must be tokens
  std::vector<BpeAddedToken> added;
  std::vector<BpeSplit> splits;   // applied in order to each piece of the previous step
  bool nfc = false;               // NFC-normalize text outside raw added tokens
  bool add_prefix_space = false;  // ByteLevel's add_prefix_space
  bool gpt2_regex = false;        // ByteLevel(use_regex): the GPT-2 pattern after the splits
  bool ignore_merges = false;     // a piece that is a whole token is taken as is
  bool fuse_unk = false;
  int32_t unk_id = -1, bos_id = -1, eos_id = -1;
  // At least the largest id + 1; more gives ids that name no token (padded embedding rows).
  int32_t min_vocab_size = 0;
  std::string chat_template;
};

// Builds the tokenizer; a merge naming an unknown token, an id out of range or a regex that does
// not compile is one moe::Error "<source>: <field>: ...". See hf_tokenizer.h for the behaviour.
std::unique_ptr<Tokenizer> make_byte_level_bpe(ByteLevelBpeSpec spec);

// The spec of a Hugging Face tokenizer.json (with bos/eos from its sibling
// tokenizer_config.json / config.json; see load_hf_tokenizer_json).
ByteLevelBpeSpec read_hf_byte_level_bpe(const std::string& path);

}  // namespace moe
