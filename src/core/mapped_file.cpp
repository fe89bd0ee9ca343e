#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/input_file.h"
#include "moe/error.h"

namespace moe {

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path, uint64_t min_size,
                                                   const char* min_what) {
  uint64_t size = 0;
  const int fd = open_regular_file(path, &size);  // refuses a FIFO, a directory or a device
  if (size < min_size) {
    ::close(fd);
    throw Error(fmt::format("{}: truncated: {} bytes, less than {}", path, size, min_what));
  }
  void* addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file
  if (addr == MAP_FAILED) throw Error(fmt::format("{}: mmap failed", path));
  std::shared_ptr<MappedFile> file(new MappedFile);
  file->addr_ = addr;
  file->size_ = size;
  return file;
}

void MappedFile::release(const void* p, uint64_t bytes) const {
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  const uintptr_t lo = (begin + page - 1) / page * page, hi = end / page * page;
  const auto base = reinterpret_cast<uintptr_t>(addr_);
  if (hi <= lo || lo < base || hi > base + size_) return;
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

void populate_pages(const void* begin, uint64_t bytes) {
#if defined(MADV_POPULATE_READ)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (bytes == 0 || pages <= 0 || page <= 0 ||
      bytes > static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2)
    return;
  const auto start = reinterpret_cast<uintptr_t>(begin) / static_cast<uintptr_t>(page) *
                     static_cast<uintptr_t>(page);  // madvise takes whole pages
  const uintptr_t end = reinterpret_cast<uintptr_t>(begin) + bytes;
  // An error leaves the pages to fault in on first use.
  (void)madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_READ);
#else
  (void)begin, (void)bytes;
#endif
}

MappedFile::~MappedFile() {
  if (addr_ != nullptr) munmap(addr_, size_);
}

}  // namespace moe
