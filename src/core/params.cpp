#include "moe/params.h"

#include <algorithm>

namespace moe {

template <class T>
void ParamSet<T>::declare(const std::string& name, const Shape& shape) {
  MOE_CHECK(values_.empty(), "ParamSet: declare('{}') after allocate()", name);
  MOE_CHECK(!has(name), "ParamSet: '{}' declared twice", name);
  specs_.push_back({name, shape, total_});
  total_ += shape.numel();
}

template <class T>
void ParamSet<T>::allocate() {
  values_.assign(static_cast<size_t>(total_), T(0));
  grads_.assign(static_cast<size_t>(total_), T(0));
}

template <class T>
const ParamSpec* ParamSet<T>::find(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return &s;
  return nullptr;
}

template <class T>
const ParamSpec& ParamSet<T>::spec(const std::string& name) const {
  const ParamSpec* s = find(name);
  MOE_CHECK(s != nullptr, "no parameter named '{}'", name);
  return *s;
}

template <class T>
void ParamSet<T>::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

template class ParamSet<float>;
template class ParamSet<double>;

}  // namespace moe
