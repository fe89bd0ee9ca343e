// The tokenizer files of a run, written into a Hugging Face checkpoint directory made from it
// (`moe convert --to hf`, `moe upcycle` of a dense run), so that Hugging Face and
// `moe generate --model` tokenize exactly as training did:
//   sentencepiece (trained here)                                     tokenizer.model
//   a tokenizer file given to --tokenizer, or a fine-tuned model's   the run's copy as it is:
//                                       tokenizer.json if there is one, else tokenizer.model,
//                                       with the run's tokenizer_config.json names
//   byte                                                             tokenizer.json: byte-level
//                                       BPE without merges (byte b is token b), BOS 256, EOS 257
// plus tokenizer_config.json (add_bos_token: our runs train with a BOS before every document).
// Each file is written atomically.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>

#include "moe/model_config.h"

namespace moe {

void write_run_tokenizer_files(const std::string& run_dir, const TrainConfig& t,
                               const std::string& out_dir);

// The byte tokenizer as a tokenizer.json (byte b spelled with GPT-2's byte-to-character table).
nlohmann::json byte_tokenizer_json();

}  // namespace moe
