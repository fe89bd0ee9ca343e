#include "moe/tensor.h"

namespace moe {

Shape Shape::from(const std::vector<int64_t>& d) {
  MOE_CHECK(d.size() <= kMaxDims, "Shape: at most {} dimensions, got {}", kMaxDims, d.size());
  Shape s;
  for (int64_t v : d) {
    MOE_CHECK(v >= 0, "Shape: negative dimension {}", v);
    s.dims[s.ndim++] = v;
  }
  return s;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) {
    if (i) s += ',';
    s += std::to_string(dims[i]);
  }
  s += ']';
  return s;
}

}  // namespace moe
