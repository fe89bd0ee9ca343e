// A whole file mapped read-only (internal). The safetensors and GGUF readers hold one through a
// shared_ptr, so tensor views stay valid while any copy of a reader is alive.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace moe {

class MappedFile {
 public:
  // Maps `path`; a file shorter than min_size is an error "<path>: truncated: N bytes, less
  // than <min_what>" (so an empty file is never mapped). Every error names the file.
  static std::shared_ptr<const MappedFile> open(const std::string& path, uint64_t min_size,
                                                const char* min_what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
  uint64_t size() const { return size_; }
  // Drops the resident pages wholly inside [p, p + bytes) (madvise MADV_DONTNEED; the partial
  // pages at either end stay): for a tensor copied out at load, whose file pages would otherwise
  // stay resident. The mapping is read-only and private, so a later read of the range faults the
  // file's bytes back in, unchanged. Best effort: a refusal of the kernel is ignored.
  void release(const void* p, uint64_t bytes) const;

 private:
  MappedFile() = default;
  void* addr_ = nullptr;
  uint64_t size_ = 0;
};

// Maps the pages of [begin, begin + bytes) of a mapped file now (madvise MADV_POPULATE_READ,
// Linux 5.14 and later), as llama.cpp maps its models (MAP_POPULATE): the first pass over the
// weights, a prompt, then takes no page faults. Best effort: nothing happens on an older kernel
// or for a range larger than half of the physical memory (it would push out what it read first).
void populate_pages(const void* begin, uint64_t bytes);

}  // namespace moe
