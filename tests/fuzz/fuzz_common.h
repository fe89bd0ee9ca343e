// Shared by the fuzz targets (docs/reliability.md "Fuzzing"). Each target defines
// LLVMFuzzerTestOneInput, feeds the bytes to one public reader and catches moe::Error only:
// any other exception escapes and is a finding (libFuzzer reports it as a crash, the replay
// driver fuzz_main.cpp as a failed test). Readers that take a path get the bytes in a file of
// a per-process scratch directory under /tmp, removed after each input.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "moe/error.h"

namespace moe_fuzz {

// /tmp/moe-fuzz-<pid>: created on first use, removed at exit (a crash may leave it behind).
inline const std::filesystem::path& scratch_dir() {
  struct Dir {
    std::filesystem::path path;
    Dir()
        : path(std::filesystem::temp_directory_path() / ("moe-fuzz-" + std::to_string(getpid()))) {
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

// The input written to scratch_dir()/name, removed when this goes out of scope.
class ScratchFile {
 public:
  ScratchFile(const std::string& name, const uint8_t* data, size_t size)
      : path_((scratch_dir() / name).string()) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) throw std::runtime_error("fuzz harness: cannot write " + path_);
  }
  ~ScratchFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs f(); a moe::Error is the reader's documented refusal and is swallowed.
template <class F>
void expect_only_moe_errors(F&& f) {
  try {
    f();
  } catch (const moe::Error&) {
  }
}

}  // namespace moe_fuzz
