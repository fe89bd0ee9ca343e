// Fuzz target: the tokenizer in a GGUF file's metadata (load_gguf_tokenizer on GgufFile::open),
// then encode and decode of a few texts, special tokens and invalid UTF-8 included.
#include "fuzz_common.h"
#include "moe/gguf.h"
#include "moe/gguf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_fuzz::ScratchFile file("input.gguf", data, size);
  moe_fuzz::expect_only_moe_errors([&] {
    const moe::GgufFile f = moe::GgufFile::open(file.path());
    const auto tok = moe::load_gguf_tokenizer(f);
    (void)moe::gguf_adds_bos(f, *tok);
    (void)tok->description();
    (void)tok->chat_template();
    for (const char* text : {"the quick brown fox", " <|endoftext|>x<s>\n\n  ", "\xff\xc3(\xe2\x96",
                             "\xE6\xB7\xB7\xE5\x90\x88 12345 don't"}) {
      const std::vector<int32_t> ids = tok->encode(text);
      for (int32_t id : ids)
        if (id < 0 || id >= tok->vocab_size()) throw std::runtime_error("encode: id out of range");
      (void)tok->decode(ids);
    }
    std::vector<int32_t> all;
    for (int32_t id = 0; id < tok->vocab_size() && id < 4096; ++id) all.push_back(id);
    (void)tok->decode(all);
  });
  return 0;
}
