#include "moe/feed_forward.h"

#include <cmath>

namespace moe {

template <class T>
void check_finite(View<const T> x, const char* what) {
  const int64_t n = x.numel(), cols = x.ndim() > 1 ? x.size(x.ndim() - 1) : 1;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x.data[i]))
      throw Error(fmt::format("{}: non-finite value {} at row {}, column {}", what,
                              static_cast<double>(x.data[i]), i / cols, i % cols));
}

template void check_finite<float>(View<const float>, const char*);
template void check_finite<double>(View<const double>, const char*);

}  // namespace moe
