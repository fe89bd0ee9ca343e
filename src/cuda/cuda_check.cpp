#include "cuda/cuda_check.h"

#include <fmt/format.h>

#include "moe/error.h"

namespace moe::cuda {

void throw_cuda_error(const char* file, int line, const char* call, const char* message) {
  throw_error(file, line, fmt::format("{} failed: {}", call, message));
}

}  // namespace moe::cuda
