// The rules every reader of a user's file follows (src/core/input_file.h), each a regression
// test of a defect the reliability audit found (docs/reliability.md): JSON numbers that overflow
// a double, a config.json without model_type, a FIFO in place of a file, a config file of a
// gigabyte, an absurd vocab_size, and generation past the model's context.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>

#include "core/input_file.h"
#include "moe/generate.h"
#include "moe/hf_checkpoint.h"
#include "moe/hf_tokenizer.h"
#include "moe/inference_model.h"
#include "moe/model_config.h"
#include "moe/safetensors.h"
#include "moe/vit.h"
#include "test_util.h"
#include "tiny_run.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

using test::error_of;
using test::fixture_dir;
using test::TempDir;
using test::write_file;

// A user's error names the input, never a place in our sources ("src/x.cpp:12:").
void expect_no_source_location(const std::string& msg) {
  static const std::regex location(R"((src|include)/[A-Za-z0-9_/]+\.(cpp|h):[0-9]+)");
  EXPECT_FALSE(std::regex_search(msg, location)) << msg;
}

void copy_dir(const std::string& from, const std::string& to) {
  fs::copy(from, to, fs::copy_options::recursive);
}

// Defect 1: `1e999` parses as a number too large for a double, which nlohmann reports as
// out_of_range, not parse_error; it escaped every reader without naming the file.
TEST(InputFiles, NumberOverflowInEveryJsonReaderNamesTheFile) {
  TempDir dir;
  const std::string train = dir.file("train.json");
  write_file(train, R"({"model_type": "mixtral", "hidden_size": 1e999})");
  const std::string msg = error_of([&] { load_model_config(train); });
  EXPECT_NE(msg.find("train.json: not valid JSON"), std::string::npos) << msg;
  EXPECT_NE(msg.find("overflow"), std::string::npos) << msg;
  expect_no_source_location(msg);

  const std::string hf = dir.str() + "/hf";
  copy_dir(fixture_dir() + "/hf/qwen2_moe", hf);
  write_file(hf + "/config.json", R"({"model_type": "qwen2_moe", "rope_theta": -1e999})");
  EXPECT_MOE_ERROR(load_hf_config(hf + "/config.json"), "config.json: not valid JSON");

  // A sharded checkpoint's index.
  fs::remove(hf + "/model.safetensors");
  write_file(hf + "/model.safetensors.index.json",
             R"({"metadata": {"total_size": 1e999}, "weight_map": {}})");
  EXPECT_MOE_ERROR(HfWeights::open(hf), "model.safetensors.index.json: not valid JSON");

  const std::string tok = dir.file("tokenizer.json");
  write_file(tok, R"({"model": {"type": "BPE", "dropout": 1e999}})");
  EXPECT_MOE_ERROR(load_hf_tokenizer_json(tok), "tokenizer.json: not valid JSON");

  const std::string vit = dir.file("vit.json");
  write_file(vit, R"({"model_type": "vit_moe", "hidden_size": 1e999})");
  EXPECT_FALSE(is_vit_config(vit));
  EXPECT_MOE_ERROR(load_vit_config(vit), "vit.json: not valid JSON");

  // Invalid UTF-8 inside a string is nlohmann's type_error 316 on dump and a parse error on
  // parse: either way an Error naming the file.
  write_file(train, "{\"model_type\": \"mix\xff\"}");
  EXPECT_MOE_ERROR(load_model_config(train), "train.json: not valid JSON");
}

// Defect 5: `{}` was read as Mixtral-8x7B's defaults and failed later on a tensor shape.
TEST(InputFiles, ConfigJsonWithoutModelTypeIsRefused) {
  TempDir dir;
  for (const char* text :
       {"{}", R"({"hidden_size": 64, "some_key": 1})", R"({"model_type": null})"}) {
    write_file(dir.file("config.json"), text);
    const std::string msg = error_of([&] { load_hf_config(dir.file("config.json")); });
    EXPECT_NE(msg.find("config.json: model_type is missing"), std::string::npos) << msg;
    expect_no_source_location(msg);
  }
}

// A fuzz finding: mlp_only_layers was read with get<int>() after an is-integer check, so
// 4294967297 silently became layer 1.
TEST(InputFiles, MlpOnlyLayersOutOfIntRangeIsRefused) {
  TempDir dir;
  write_file(dir.file("config.json"),
             R"({"model_type": "qwen2_moe", "mlp_only_layers": [0, 4294967297]})");
  EXPECT_MOE_ERROR(load_hf_config(dir.file("config.json")), "config.json", "mlp_only_layers[1]");
  write_file(dir.file("config.json"), R"({"model_type": "qwen2_moe", "mlp_only_layers": [1.5]})");
  EXPECT_MOE_ERROR(load_hf_config(dir.file("config.json")), "mlp_only_layers[0]");
}

// Defect 6: open() of a FIFO blocks until a writer appears, so `moe generate --model DIR` hung
// forever on a model.safetensors that was one. Every reader refuses non-regular files.
TEST(InputFiles, FifoAndDirectoryAreRefusedWithoutBlocking) {
  TempDir dir;
  const std::string fifo = dir.file("model.safetensors");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto opened = std::async(std::launch::async,
                           [&] { return error_of([&] { SafeTensorsFile::open(fifo); }); });
  if (opened.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    // Unblock the reader so the test can end, then fail.
    const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (w >= 0) ::close(w);
    ADD_FAILURE() << "opening a FIFO blocked";
  }
  const std::string msg = opened.get();
  EXPECT_NE(msg.find("model.safetensors: not a regular file (a FIFO)"), std::string::npos) << msg;
  expect_no_source_location(msg);

  const std::string cfg = dir.file("config.json");
  ASSERT_EQ(mkfifo(cfg.c_str(), 0600), 0);
  EXPECT_MOE_ERROR(load_hf_config(cfg), "config.json: not a regular file (a FIFO)");
  EXPECT_MOE_ERROR(load_model_config(dir.str()), "not a regular file (a directory)");
}

// Defect 10: a 1 GB config.json of spaces took up to a minute and 5 GB of memory before its
// error. Files read whole are bounded; a sparse file costs no disk here.
TEST(InputFiles, OversizedConfigIsRefusedBeforeReading) {
  TempDir dir;
  const std::string big = dir.file("config.json");
  { std::ofstream(big) << "{"; }
  fs::resize_file(big, uint64_t{1} << 30);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string msg = error_of([&] { load_model_config(big); });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(msg.find("config.json: 1073741824 bytes, more than the 67108864 allowed"),
            std::string::npos)
      << msg;
  EXPECT_LT(seconds, 1.0) << "the size is known from stat(): nothing should be read";
  // tokenizer.json has a larger bound of its own; a file within it parses as before.
  EXPECT_GT(kMaxTokenizerFileBytes, kMaxConfigFileBytes);
  write_file(dir.file("small.json"), R"({"a": [1, 2.5, "x"]})");
  EXPECT_EQ(read_json_file(dir.file("small.json"))["a"][1].get<double>(), 2.5);
}

// Defect 4: vocab_size 2147483647 started a sentencepiece training that ran for minutes in the
// shared data directory. Refused by validate(), which `moe train` runs before any data work.
TEST(InputFiles, AbsurdVocabSizeIsRefusedByValidate) {
  ModelConfig c = test::tiny_lm_config(2);
  c.training.tokenizer = "sentencepiece";
  ASSERT_NO_THROW(c.validate("cfg.json"));
  c.vocab_size = 2147483647;
  EXPECT_MOE_ERROR(c.validate("cfg.json"), "cfg.json: vocab_size must be in [1, 1048576]");
  c.vocab_size = kMaxTrainedVocabSize + 1;
  EXPECT_MOE_ERROR(c.validate("cfg.json"), "vocab_size = 262145 is more than the 262144");
  c.training.tokenizer = "byte";  // no tokenizer is trained: only the general bound applies
  EXPECT_NO_THROW(c.validate("cfg.json"));
}

// Defect 8: generation asked for more tokens than the context holds stopped early without a
// word on a run, and failed on a checkpoint. Both now draw new_token_budget() tokens.
TEST(InputFiles, GenerationStopsAtTheContext) {
  EXPECT_EQ(new_token_budget(5, 10, 64), 10);
  EXPECT_EQ(new_token_budget(5, 2000000000, 64), 59);
  EXPECT_EQ(new_token_budget(63, 4, 64), 1);
  EXPECT_MOE_ERROR(new_token_budget(64, 4, 64), "the prompt has 64 tokens", "is 64");
  EXPECT_MOE_ERROR(new_token_budget(0, 4, 64), "the prompt is empty");
  EXPECT_MOE_ERROR(new_token_budget(3, -1, 64), "max_new_tokens must be non-negative");

  auto model = InferenceModel::load(fixture_dir() + "/hf/mixtral");
  const int context = model->config().max_position_embeddings;
  GenerateOptions opt;
  opt.max_new_tokens = 2000000000;
  opt.sampling.temperature = 0;
  const std::vector<int32_t> prompt{1, 5, 9};
  const auto out = generate(*model, {prompt}, opt, /*eos_id=*/-1);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(static_cast<int>(out[0].size()), context - 3);
}

}  // namespace
}  // namespace moe
