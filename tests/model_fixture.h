// The PyTorch golden fixtures of the whole model (tests/fixtures/model, written by
// tools/reference/make_model_fixtures.py): opened the same way by the CPU model's test
// (test_model) and the GPU model's (test_cuda_transformer).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/model_config.h"
#include "moe/safetensors.h"
#include "moe/tensor.h"
#include "test_util.h"

namespace moe::test {

struct Golden {
  SafeTensorsFile file;
  ModelConfig cfg;
  int B, S, steps;  // batch, sequence length, optimizer steps of the recorded trajectory
};

inline Golden open_golden(const std::string& name) {
  const std::string path = fixture_dir() + "/model/" + name + ".safetensors";
  SafeTensorsFile f = SafeTensorsFile::open(path);
  nlohmann::json config = nlohmann::json::parse(f.metadata("config"));
  // The references compute in fp64; a fixture without the key is fp32, whatever this CPU has.
  if (!config.contains("compute_dtype")) config["compute_dtype"] = "float32";
  ModelConfig cfg = model_config_from_json(config, path);
  const int steps = std::stoi(f.metadata("steps"));
  return {std::move(f), cfg, cfg.training.batch_size, cfg.training.seq_len, steps};
}

// inputs = window[:, :-1], targets = window[:, 1:] of the B windows of S + 1 tokens stored
// from `offset` in the int64 tensor `name`.
inline void read_batch(const SafeTensorsFile& f, const std::string& name, int64_t offset, int B,
                       int S, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
  const Tensor<int64_t> t = f.read<int64_t>(name);
  in.resize(static_cast<size_t>(B) * S);
  tg.resize(in.size());
  for (int b = 0; b < B; ++b)
    for (int s = 0; s < S; ++s) {
      const int64_t w = offset + int64_t(b) * (S + 1) + s;
      in[b * S + s] = static_cast<int32_t>(t.data()[w]);
      tg[b * S + s] = static_cast<int32_t>(t.data()[w + 1]);
    }
}

}  // namespace moe::test
