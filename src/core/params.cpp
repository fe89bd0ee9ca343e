#include "moe/params.h"

#include <algorithm>

#include "moe/safetensors.h"

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

template <class T>
void load_params(ParamSet<T>& params, const SafeTensorsFile& file, const std::string& prefix) {
  for (const auto& s : params.specs())
    file.read_into<T>(prefix + s.name, s.shape, params.value(s.name));
}

template <class T>
void save_params(const ParamSet<T>& params, SafeTensorsWriter& writer, DType dtype,
                 const std::string& prefix) {
  for (const auto& s : params.specs())
    writer.add<T>(prefix + s.name, s.shape, params.value(s.name), dtype);
}

template void load_params<float>(ParamSet<float>&, const SafeTensorsFile&, const std::string&);
template void load_params<double>(ParamSet<double>&, const SafeTensorsFile&, const std::string&);
template void save_params<float>(const ParamSet<float>&, SafeTensorsWriter&, DType,
                                 const std::string&);
template void save_params<double>(const ParamSet<double>&, SafeTensorsWriter&, DType,
                                  const std::string&);

template class ParamSet<float>;
template class ParamSet<double>;

}  // namespace moe
