// Fuzz target: a Hugging Face tokenizer.json (load_hf_tokenizer_json), then a fixed text
// encoded and its ids decoded, so the vocabulary, merges, added tokens and regexes the input
// declares are exercised. The scratch directory has no tokenizer_config.json or config.json.
#include <string_view>

#include "fuzz_common.h"
#include "moe/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_fuzz::ScratchFile file("tokenizer.json", data, size);
  moe_fuzz::expect_only_moe_errors([&] {
    const auto tok = moe::load_hf_tokenizer_json(file.path());
    constexpr std::string_view kText =
        "Hello, world! It's 2026:  tabs\tand\nnewlines, caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 "
        "<|endoftext|> <s> 12345 \xff bytes";
    const auto ids = tok->encode(kText);
    (void)tok->decode(ids);
    (void)tok->vocab_size();
    (void)tok->bos_id();
    (void)tok->eos_id();
    (void)tok->description();
  });
  return 0;
}
