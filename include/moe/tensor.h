// Tensors: a View is a typed pointer with a shape and strides (in elements, row-major by
// default); a Tensor owns a contiguous buffer and hands out Views of it. Layers take Views
// so they can check shapes at the boundary and work on plain pointers inside.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "moe/error.h"

namespace moe {

constexpr int kMaxDims = 4;

struct Shape {
  int ndim = 0;
  std::array<int64_t, kMaxDims> dims{};

  Shape() = default;
  Shape(std::initializer_list<int64_t> d) {
    MOE_CHECK(d.size() <= kMaxDims, "Shape: at most {} dimensions, got {}", kMaxDims, d.size());
    for (int64_t v : d) {
      MOE_CHECK(v >= 0, "Shape: negative dimension {}", v);
      dims[ndim++] = v;
    }
  }
  static Shape from(const std::vector<int64_t>& d);
  int64_t operator[](int i) const { return dims[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= dims[i];
    return n;
  }
  bool operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  std::string str() const;
};

template <class T>
struct View {
  T* data = nullptr;
  Shape shape;
  std::array<int64_t, kMaxDims> stride{};

  View() = default;
  View(T* p, Shape s) : data(p), shape(s) {
    int64_t st = 1;
    for (int i = s.ndim - 1; i >= 0; --i) {
      stride[i] = st;
      st *= s.dims[i];
    }
  }
  // A const view of a mutable one.
  operator View<const T>() const {
    View<const T> v;
    v.data = data;
    v.shape = shape;
    v.stride = stride;
    return v;
  }
  int ndim() const { return shape.ndim; }
  int64_t size(int i) const { return shape.dims[i]; }
  int64_t numel() const { return shape.numel(); }
  bool contiguous() const {
    int64_t st = 1;
    for (int i = shape.ndim - 1; i >= 0; --i) {
      if (shape.dims[i] != 1 && stride[i] != st) return false;
      st *= shape.dims[i];
    }
    return true;
  }
  T& at(int64_t i) const { return data[i * stride[0]]; }
  T& at(int64_t i, int64_t j) const { return data[i * stride[0] + j * stride[1]]; }
  T& at(int64_t i, int64_t j, int64_t k) const {
    return data[i * stride[0] + j * stride[1] + k * stride[2]];
  }
  // Sub-view of index i along the first dimension.
  View<T> operator[](int64_t i) const {
    View<T> v;
    v.data = data + i * stride[0];
    v.shape.ndim = shape.ndim - 1;
    for (int d = 1; d < shape.ndim; ++d) {
      v.shape.dims[d - 1] = shape.dims[d];
      v.stride[d - 1] = stride[d];
    }
    return v;
  }
  // Rows [begin, end) along the first dimension.
  View<T> rows(int64_t begin, int64_t end) const {
    View<T> v = *this;
    v.data = data + begin * stride[0];
    v.shape.dims[0] = end - begin;
    return v;
  }
  View<T> transposed() const {
    MOE_CHECK(shape.ndim == 2, "transposed: needs a 2-d view, got {}", shape.str());
    View<T> v = *this;
    std::swap(v.shape.dims[0], v.shape.dims[1]);
    std::swap(v.stride[0], v.stride[1]);
    return v;
  }
};

template <class T>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape s, T fill = T(0)) : shape_(s), buf_(static_cast<size_t>(s.numel()), fill) {}
  View<T> view() { return View<T>(buf_.data(), shape_); }
  View<const T> view() const { return View<const T>(buf_.data(), shape_); }
  T* data() { return buf_.data(); }
  const T* data() const { return buf_.data(); }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return shape_.numel(); }
  T& operator[](int64_t i) { return buf_[i]; }
  const T& operator[](int64_t i) const { return buf_[i]; }
  std::vector<T>& buffer() { return buf_; }
  const std::vector<T>& buffer() const { return buf_; }

 private:
  Shape shape_;
  std::vector<T> buf_;
};

// Throws moe::Error naming `what` unless v has exactly `expected` shape and is contiguous.
template <class T>
void check_shape(const View<T>& v, const Shape& expected, const char* what) {
  MOE_CHECK(v.shape == expected, "{}: shape {} does not match the expected {}", what, v.shape.str(),
            expected.str());
  MOE_CHECK(v.contiguous(), "{}: must be a contiguous tensor", what);
}

// A workspace grown to the largest call: v holds at least n elements.
template <class V>
void grow_to(std::vector<V>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace moe
