// Helpers shared by data.cpp (the bundled corpus) and user_data.cpp (the user's own text).
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/data.h"

namespace moe {

class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// The parsed JSON file, or null when it is missing or unreadable (the cache is then stale).
inline nlohmann::json read_json_or_null(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return nullptr;
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  }
}

// A sentencepiece vocab_size below 300 is an error (raised before any slow work).
void check_tokenizer_options(const DataOptions& opt);

// The tokenizer opt.tokenizer names. "sentencepiece": dir/tokenizer-<vocab>-<digest8>.model,
// made by train(path) when missing. *file: the tokenizer's file (empty for byte).
std::unique_ptr<Tokenizer> resolve_tokenizer(const DataOptions& opt,
                                             const std::filesystem::path& dir,
                                             const std::string& train_digest, std::string* file,
                                             const std::function<void(const std::string&)>& log,
                                             const std::function<void(const std::string&)>& train);

PreparedData prepare_user_data(const DataOptions& opt,
                               const std::function<void(const std::string&)>& log);
TokenStream user_validation_stream(const DataOptions& opt, const Tokenizer& tok,
                                   const std::string& tokenizer_file,
                                   const std::function<void(const std::string&)>& log);

}  // namespace moe
