// Reading and writing the plain keys of our JSON configs (internal). A config lists its keys
// once, in a visit function `visit(cfg, v)` calling v("key", cfg.field) for each, and the same
// list serves reading, writing and collecting the known keys.
#pragma once

#include <fmt/core.h>

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/error.h"

namespace moe {

// Reads each visited key present in j (absent or null keeps the default). A value of the wrong
// JSON type, or an integer out of the field's range, is an Error "<where>: <key> has value ...,
// expected ..." naming the key.
struct JsonKeyReader {
  const nlohmann::json& j;
  const std::string& where;

  template <class T>
  void operator()(const char* key, T& out) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    read(*it, key, out);
  }

 private:
  template <class T>
  void read(const nlohmann::json& v, const std::string& key, T& out) const {
    if constexpr (is_vector<T>::value) {
      if (!v.is_array())
        throw Error(fmt::format("{}: {} has value {}, expected an array", where, key, v.dump()));
      out.resize(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        typename T::value_type x{};
        read(v[i], fmt::format("{}[{}]", key, i), x);
        out[i] = x;
      }
      return;
    } else {
      const char* expected = nullptr;
      if constexpr (std::is_same_v<T, bool>) {
        if (!v.is_boolean()) expected = "true or false";
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (!v.is_string()) expected = "a string";
      } else if constexpr (std::is_unsigned_v<T>) {
        if (!v.is_number_unsigned()) expected = "a non-negative integer";
      } else if constexpr (std::is_integral_v<T>) {
        if (!v.is_number_integer()) expected = "an integer";
      } else {
        if (!v.is_number()) expected = "a number";
      }
      if (expected)
        throw Error(
            fmt::format("{}: {} has value {}, expected {}", where, key, v.dump(), expected));
      if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        // Reject values that do not fit rather than wrapping them.
        if (v.is_number_unsigned() &&
            v.template get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<T>::max()))
          throw Error(fmt::format("{}: {} = {} is out of range", where, key, v.dump()));
        if (v.is_number_integer() && !v.is_number_unsigned() &&
            (v.template get<int64_t>() < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
             v.template get<int64_t>() > static_cast<int64_t>(std::numeric_limits<T>::max())))
          throw Error(fmt::format("{}: {} = {} is out of range", where, key, v.dump()));
      }
      out = v.template get<T>();
    }
  }

  template <class T>
  struct is_vector : std::false_type {};
  template <class T, class A>
  struct is_vector<std::vector<T, A>> : std::true_type {};
};

struct JsonKeyWriter {
  nlohmann::json& j;
  template <class T>
  void operator()(const char* key, const T& value) const {
    j[key] = value;
  }
};

struct JsonKeyCollector {
  std::set<std::string>& keys;
  template <class T>
  void operator()(const char* key, const T&) const {
    keys.insert(key);
  }
};

// The optimizer and schedule keys that the language model's and the ViT's "training" objects
// share (TrainConfig, VitTrainConfig: the same member names).
template <class C, class V>
void visit_optimizer_keys(C& c, V&& v) {
  v("learning_rate", c.learning_rate);
  v("min_lr_ratio", c.min_lr_ratio);
  v("warmup_steps", c.warmup_steps);
  v("max_steps", c.max_steps);
  v("weight_decay", c.weight_decay);
  v("adam_beta1", c.adam_beta1);
  v("adam_beta2", c.adam_beta2);
  v("adam_eps", c.adam_eps);
  v("grad_clip", c.grad_clip);
  v("batch_size", c.batch_size);
  v("eval_every", c.eval_every);
  v("seed", c.seed);
}

}  // namespace moe
