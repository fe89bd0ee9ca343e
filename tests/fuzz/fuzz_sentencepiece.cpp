// Fuzz target: a sentencepiece tokenizer.model, through both loaders (a downloaded
// checkpoint's load_sentencepiece_model and the trained-here load_sentencepiece), each then
// encoding a fixed text and decoding its ids.
#include <string_view>

#include "fuzz_common.h"
#include "moe/hf_tokenizer.h"
#include "moe/tokenizer.h"

namespace {

void exercise(const moe::Tokenizer& tok) {
  constexpr std::string_view kText =
      "Hello, world!\n    def f(x): return x * 2\ncaf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 12345";
  const auto ids = tok.encode(kText);
  (void)tok.decode(ids);
  (void)tok.vocab_size();
  (void)tok.description();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_fuzz::ScratchFile file("tokenizer.model", data, size);
  moe_fuzz::expect_only_moe_errors([&] { exercise(*moe::load_sentencepiece_model(file.path())); });
  moe_fuzz::expect_only_moe_errors([&] { exercise(*moe::load_sentencepiece(file.path())); });
  return 0;
}
