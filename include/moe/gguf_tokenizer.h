// Tokenizers in GGUF metadata (llama.cpp's tokenizer.ggml.* keys), both ways:
//   "llama": a sentencepiece vocabulary (tokens, scores, token_type; byte-fallback pieces
//            <0xNN>; add_space_prefix), run through the sentencepiece library;
//   "gpt2":  a byte-level BPE (tokens, merges "a b", token_type; the pre-tokenizer regex chosen
//            by tokenizer.ggml.pre: "default", "qwen2", "olmo", "llama-bpe", ...).
// bos/eos/unknown ids, add_bos_token and the chat template (tokenizer.chat_template) are kept.
// Tokenization: "llama" exactly as the sentencepiece library runs the same pieces (so ids equal
// the original tokenizer.model's; user-defined pieces are matched whole, control pieces in text
// are not); "gpt2" as llama.cpp does: CONTROL and USER_DEFINED tokens cut out of the text first
// (leftmost-longest), the pre's regexes as Split steps, then byte-level BPE; no normalizer
// (llama.cpp has none: a tokenizer.json's NFC is not applied).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "moe/gguf.h"
#include "moe/tokenizer.h"

namespace moe {

// The tokenizer a GGUF file's metadata describes. An unsupported tokenizer.ggml.model or pre, or
// a missing or inconsistent key, is one moe::Error naming the file and the key.
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufFile& f);
// tokenizer.ggml.add_bos_token when present, else whether the tokenizer has a BOS token.
bool gguf_adds_bos(const GgufFile& f, const Tokenizer& tok);

// Writes the tokenizer.ggml.* keys (and tokenizer.chat_template when the source has one) as
// convert_hf_to_gguf.py does, and returns the number of tokens written (the vocabulary the
// model's embedding must match):
// - a Hugging Face checkpoint directory: tokenizer.json byte-level BPE -> "gpt2" with merges and
//   the tokenizer.ggml.pre its pre-tokenizer matches ("qwen2", "llama-bpe", "dbrx", "gpt-2",
//   "olmo" for OLMo/OLMoE configs); else tokenizer.model -> "llama". Ids missing below
//   config.json's vocab_size become UNUSED "[PAD<i>]" tokens; add_bos_token / add_eos_token and
//   chat_template come from tokenizer_config.json;
// - a run: its sentencepiece tokenizer.model -> "llama", or "" for the byte tokenizer (ids
//   0..255, BOS 256, EOS 257) -> "gpt2" without merges; add_bos_token true.
// Reads the sources only; errors name the file and field.
int32_t add_gguf_tokenizer_of_hf_dir(GgufWriter& w, const std::string& dir);
int32_t add_gguf_tokenizer_of_run(GgufWriter& w, const std::string& tokenizer_model_path);
// The byte tokenizer padded with filler tokens "<tN>" to vocab_size (>= 258): the vocabulary of
// a random-weight model.
void add_gguf_byte_tokenizer(GgufWriter& w, int vocab_size);

}  // namespace moe
