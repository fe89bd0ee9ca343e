// A Hugging Face fixture directory written as GGUF, the way `moe quantize DIR OUT.gguf` writes
// it: used by the GGUF tests of every family (test_gguf_model, test_gpt_oss).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "moe/gguf_model.h"
#include "moe/hf_checkpoint.h"

namespace moe::test {

// Writes the directory `dir` to `out` with the type scheme `types` ("f32", "q8_0", "q4_k_m",
// ...), the routed experts as `expert_type` when not empty; each note the writer prints goes to
// `note` when given. Returns `out`.
inline std::string write_hf_as_gguf(const std::string& dir, const std::string& out,
                                    const std::string& types, const std::string& expert_type = "",
                                    const std::function<void(const std::string&)>& note = {}) {
  const ModelConfig c = load_hf_config(dir + "/config.json");
  const HfWeights w = HfWeights::open(dir);
  GgufModelWriteOptions opt;
  EXPECT_TRUE(parse_type_scheme(types, &opt.types)) << types;
  if (!expert_type.empty()) {
    TypeScheme e;
    EXPECT_TRUE(parse_type_scheme(expert_type, &e)) << expert_type;
    opt.types.has_expert_type = true;
    opt.types.expert_type = e.base;
  }
  opt.name = "fixture";
  opt.note = note;
  write_gguf_model(c, *gguf_source_of_hf(c, w), out, opt);
  return out;
}

}  // namespace moe::test
