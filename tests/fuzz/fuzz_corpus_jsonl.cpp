// Fuzz target: a corpus split in JSON Lines (read_documents: one {"domain", "text"} object per
// line), then each document's text checked and cleaned as the corpus builder does.
#include "fuzz_common.h"
#include "moe/corpus.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_fuzz::ScratchFile file("train.jsonl", data, size);
  moe_fuzz::expect_only_moe_errors([&] {
    for (const moe::Document& d : moe::read_documents(file.path())) {
      (void)moe::is_valid_utf8(d.text);
      (void)moe::clean_text(d.text);
    }
  });
  return 0;
}
