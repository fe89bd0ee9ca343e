// Errors: every failure in the library is a moe::Error thrown at the boundary, carrying a
// one-line message that names what was wrong (file and field for I/O, key for configs, option
// for the command line). Only a broken internal invariant (MOE_CHECK) carries the source file
// and line: a user's bad input (MOE_REQUIRE, or a plain throw) never does, since the place in
// our code means nothing to them. The library never calls exit().
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& message);

}  // namespace moe

// Always-on check of an internal invariant: throws moe::Error("file:line: message").
#define MOE_CHECK(cond, ...)                                                       \
  do {                                                                             \
    if (!(cond)) ::moe::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

// Always-on check of what a user gave us (a file, a config key, an option, a token id): throws
// moe::Error(message); the message names the input, not our source.
#define MOE_REQUIRE(cond, ...)                                 \
  do {                                                         \
    if (!(cond)) throw ::moe::Error(fmt::format(__VA_ARGS__)); \
  } while (0)

// Debug-only check for hot loops; compiled out when NDEBUG is set.
#ifdef NDEBUG
#define MOE_DCHECK(cond, ...) \
  do {                        \
  } while (0)
#else
#define MOE_DCHECK(cond, ...) MOE_CHECK(cond, __VA_ARGS__)
#endif
