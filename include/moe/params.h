// One parameter arena per layer (llm.c ParameterTensors): declare every tensor's name and
// shape, allocate once, then hand out pointers into the value and gradient arenas.
// Names follow docs/moe-layer.md, so checkpoints and fixtures map one to one.
#pragma once

#include <string>
#include <vector>

#include "moe/tensor.h"

namespace moe {

struct ParamSpec {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // into the arena, in elements
};

template <class T>
class ParamSet {
 public:
  void declare(const std::string& name, const Shape& shape);
  void allocate();  // zero-filled values and gradients
  bool has(const std::string& name) const { return find(name) != nullptr; }
  const ParamSpec* find(const std::string& name) const;
  const ParamSpec& spec(const std::string& name) const;  // throws naming the tensor
  // Arena offset of `name`, or -1 when it was not declared (optional tensors).
  int64_t offset_or_none(const std::string& name) const {
    const ParamSpec* s = find(name);
    return s ? s->offset : -1;
  }
  T* value(const std::string& name) { return values_.data() + spec(name).offset; }
  T* grad(const std::string& name) { return grads_.data() + spec(name).offset; }
  View<T> value_view(const std::string& name) { return View<T>(value(name), spec(name).shape); }
  View<T> grad_view(const std::string& name) { return View<T>(grad(name), spec(name).shape); }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const T* value(const std::string& name) const { return values_.data() + spec(name).offset; }
  const T* grad(const std::string& name) const { return grads_.data() + spec(name).offset; }
  std::vector<T>& values() { return values_; }
  const std::vector<T>& values() const { return values_; }
  std::vector<T>& grads() { return grads_; }
  int64_t numel() const { return static_cast<int64_t>(values_.size()); }
  void zero_grad();

 private:
  std::vector<ParamSpec> specs_;
  std::vector<T> values_, grads_;
  int64_t total_ = 0;
};

class SafeTensorsFile;
class SafeTensorsWriter;
enum class DType;

// Loads every declared parameter from `file` as `prefix + name`, converting dtype. A missing
// tensor or a shape different from the declared one is a moe::Error naming the file, the
// tensor and both shapes.
template <class T>
void load_params(ParamSet<T>& params, const SafeTensorsFile& file, const std::string& prefix = "");
// Adds every parameter to `writer` as `prefix + name`, stored as `dtype`.
template <class T>
void save_params(const ParamSet<T>& params, SafeTensorsWriter& writer, DType dtype,
                 const std::string& prefix = "");

}  // namespace moe
