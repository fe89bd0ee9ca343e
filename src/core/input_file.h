// Opening the files a user hands us (internal): configs, tokenizers, checkpoints. Every reader of
// a user's file goes through here, so the same rules hold everywhere:
// - only regular files are opened (a FIFO would block open() forever, a directory or a device
//   is not a file to parse), and they are opened read-only;
// - whatever is read whole into memory has a size bound (a 1 GB config of spaces must not cost
//   5 GB of memory and a minute before its error);
// - every failure, including every JSON error (syntax, a number that overflows a double, bad
//   UTF-8), is one moe::Error naming the file and without a source location.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace moe {

// Size bounds for files read whole: configuration files (config.json, a training config, a
// sharded checkpoint's index, tokenizer_config.json) and tokenizer.json (the largest released
// ones are about 35 MB).
inline constexpr uint64_t kMaxConfigFileBytes = uint64_t{64} << 20;
inline constexpr uint64_t kMaxTokenizerFileBytes = uint64_t{512} << 20;

// An open read-only descriptor of a regular file; "<path>: cannot open: <reason>" or
// "<path>: not a regular file (a FIFO)" otherwise. Never blocks on a FIFO. *size gets its size.
int open_regular_file(const std::string& path, uint64_t* size);

// Throws unless `path` names a regular file (for paths handed to a library that opens them
// itself, such as sentencepiece).
void check_regular_file(const std::string& path);

// The whole file, at most max_bytes ("<path>: N bytes, more than the M allowed for this file").
std::string read_file_bounded(const std::string& path, uint64_t max_bytes);

// The parsed JSON of a file read with read_file_bounded; a JSON error is
// "<path>: not valid JSON: <what>".
nlohmann::json read_json_file(const std::string& path, uint64_t max_bytes = kMaxConfigFileBytes);

// The parsed JSON of text that came from `where` (a file name, or "file: header").
nlohmann::json parse_json_text(std::string_view text, const std::string& where);

}  // namespace moe
