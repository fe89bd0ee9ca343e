// Tokenizers of downloaded checkpoints: Hugging Face tokenizer.json files with a byte-level BPE
// model (Qwen2/Qwen3-MoE, OLMoE, GPT-2/NeoX style) and plain sentencepiece tokenizer.model
// files (Mixtral/Llama). Like every moe::Tokenizer, encode() adds no BOS/EOS.
#pragma once

#include <memory>
#include <string>

#include "moe/tokenizer.h"

namespace moe {

// A tokenizer.json with model.type "BPE" and the byte-level pipeline, tokenizing as the Rust
// `tokenizers` crate does:
// - added_tokens are cut out of the raw text first, leftmost-longest, and are never split
//   (those with "normalized": true are matched after normalization; single_word, lstrip and
//   rstrip are honoured);
// - normalizer: null, NFC, or a Sequence of those;
// - pre_tokenizer: ByteLevel (use_regex: the GPT-2 pattern; add_prefix_space), or a Sequence of
//   Split(Regex or String, behavior "Isolated", invert false) steps ending in ByteLevel;
// - model BPE: vocab, merges ("a b" strings or [a, b] pairs), ignore_merges, unk_token/fuse_unk;
//   byte_fallback, dropout and subword prefixes/suffixes are rejected;
// - decoder ByteLevel (required); post_processor is ignored (encode adds nothing).
// Regexes run on ICU with \s and \S widened to Unicode White_Space, as in Oniguruma, which the
// crate uses. Text is taken as UTF-8; invalid bytes are replaced by U+FFFD before tokenizing
// (the crate only accepts valid strings), so such text does not round-trip.
// decode() renders every token, special ones included, except bos_id()/eos_id(), which decode
// to nothing; ids in [0, vocab_size()) that name no token decode to nothing (padded embedding
// rows); byte sequences that are not valid UTF-8 (a character cut between tokens) become
// U+FFFD, like the crate's String::from_utf8_lossy.
// vocab_size() is the largest id + 1. bos_id()/eos_id(): "bos_token"/"eos_token" of a sibling
// tokenizer_config.json (a string or {"content": ...}, looked up in added_tokens, then vocab;
// null gives -1), else "bos_token_id"/"eos_token_id" of a sibling config.json (the first if a
// list), else -1.
// Errors (moe::Error, one line) name the file and the JSON field; malformed JSON names the file.
std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& path);

// A generic sentencepiece model (e.g. Mixtral's tokenizer.model), used with the model's own
// normalizer settings (dummy prefix etc.); bos/eos are the model's (-1 when it has none).
// Control pieces decode to nothing. An error names the file if missing or corrupt.
std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path);

// The tokenizer of a checkpoint directory: tokenizer.json if present, else tokenizer.model.
// When tokenizer.json is not a supported byte-level BPE (Mixtral's and Llama's are
// sentencepiece-style BPE with byte_fallback) and tokenizer.model exists, tokenizer.model is
// used. Neither file: an error naming the directory.
std::unique_ptr<Tokenizer> load_tokenizer_dir(const std::string& dir);

// Whether prompts to the checkpoint in `dir` start with BOS: its tokenizer_config.json's
// add_bos_token, or, without that key or file, whether `tok` has a BOS token at all.
bool checkpoint_adds_bos(const std::string& dir, const Tokenizer& tok);

}  // namespace moe
