#include "core/input_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "moe/error.h"

namespace moe {
namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a plain file";
}

}  // namespace

int open_regular_file(const std::string& path, uint64_t* size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes nothing
  // for a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    throw Error(fmt::format("{}: cannot stat: {}", path, err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(fmt::format("{}: not a regular file ({})", path, file_kind(st.st_mode)));
  }
  if (size) *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

void check_regular_file(const std::string& path) {
  ::close(open_regular_file(path, nullptr));
}

std::string read_file_bounded(const std::string& path, uint64_t max_bytes) {
  uint64_t size = 0;
  const int fd = open_regular_file(path, &size);
  if (size > max_bytes) {
    ::close(fd);
    throw Error(
        fmt::format("{}: {} bytes, more than the {} allowed for this file", path, size, max_bytes));
  }
  std::string text(size, '\0');
  uint64_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd, text.data() + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string err = n < 0 ? std::strerror(errno) : "the file shrank while being read";
      ::close(fd);
      throw Error(fmt::format("{}: cannot read: {}", path, err));
    }
    got += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return text;
}

nlohmann::json parse_json_text(std::string_view text, const std::string& where) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    // parse_error, and also out_of_range (a number that overflows a double) and type_error
    // (invalid UTF-8 in a string): all the input's fault.
    throw Error(fmt::format("{}: not valid JSON: {}", where, e.what()));
  }
}

nlohmann::json read_json_file(const std::string& path, uint64_t max_bytes) {
  return parse_json_text(read_file_bounded(path, max_bytes), path);
}

}  // namespace moe
