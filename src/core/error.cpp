#include "moe/error.h"

#include <cstring>

namespace moe {

void throw_error(const char* file, int line, const std::string& message) {
  // Keep only the path below the project root so messages stay short and stable.
  const char* shown = file;
  for (const char* marker : {"/src/", "/include/", "/tests/", "/bench/"}) {
    if (const char* p = std::strstr(file, marker)) {
      shown = p + 1;
      break;
    }
  }
  throw Error(fmt::format("{}:{}: {}", shown, line, message));
}

}  // namespace moe
