// Loading a sentencepiece model file with one error policy for every reader in data/ (the
// tokenizer of a run or checkpoint, and the GGUF writer of a "llama" vocabulary).
#pragma once

#include <sentencepiece_processor.h>

#include <string>

namespace moe {

// Loads `path` into sp; a missing file or a model the library rejects (by status or by throwing)
// is one moe::Error naming the file.
void load_sentencepiece_file(sentencepiece::SentencePieceProcessor& sp, const std::string& path);

}  // namespace moe
