// Tokenizers in GGUF metadata (llama.cpp's tokenizer.ggml.* keys), both ways:
//   "llama": a sentencepiece vocabulary (tokens, scores, token_type; byte-fallback pieces
//            <0xNN>; add_space_prefix), run through the sentencepiece library;
//   "gpt2":  a byte-level BPE (tokens, merges "a b", token_type; the pre-tokenizer regex chosen
//            by tokenizer.ggml.pre: "default", "qwen2", "olmo", "llama-bpe", ...).
// bos/eos/unknown ids, add_bos_token and the chat template (tokenizer.chat_template) are kept.
#pragma once

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

// Writes the tokenizer.ggml.* keys (and tokenizer.chat_template when the source has one) for:
// a Hugging Face checkpoint directory (tokenizer.json byte-level BPE, else tokenizer.model), a
// run's sentencepiece tokenizer.model, or "" for the byte tokenizer (ids 0..255, BOS 256,
// EOS 257). Reads the sources only.
void add_gguf_tokenizer_of_hf_dir(GgufWriter& w, const std::string& dir);
void add_gguf_tokenizer_of_run(GgufWriter& w, const std::string& tokenizer_model_path);

}  // namespace moe
