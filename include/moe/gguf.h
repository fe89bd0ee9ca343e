// GGUF v3, the llama.cpp model file (ggml/docs/gguf.md): "GGUF", version, tensor count and
// key-value count (uint64), the typed key-value pairs, one info per tensor (name, dims in ggml
// order = the row-major shape reversed, ggml type, offset into the data section), padding to
// general.alignment, then the tensor data, each tensor starting at a multiple of the alignment.
// Everything little-endian. The writer streams tensor data to a temporary file that is renamed
// into place (a model is never held twice in memory; a crash leaves no half file). The reader
// maps the file read-only and validates every count, length, offset and size before handing
// anything out; every problem is a moe::Error naming the file and the field.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/quant.h"

namespace moe {

class MappedFile;

enum class GgufType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value: a scalar, a string, or an array of scalars or strings (nested arrays are
// not used by llama.cpp and are rejected).
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue strings(std::vector<std::string> v);
  static GgufValue f32s(const std::vector<float>& v);
  static GgufValue i32s(const std::vector<int32_t>& v);
  // A scalar or numeric array from raw little-endian bytes (the reader's path).
  static GgufValue raw(GgufType type, GgufType elem, uint64_t count, std::vector<uint8_t> bytes);

  GgufType type() const { return type_; }
  GgufType elem_type() const { return elem_; }  // meaningful for arrays only
  uint64_t size() const { return count_; }      // elements of an array; 1 for a scalar

  // Typed access; a different stored type throws moe::Error("is <type>, not <type>").
  uint32_t as_u32() const;
  int32_t as_i32() const;
  uint64_t as_u64() const;
  float as_f32() const;
  bool as_bool() const;
  const std::string& as_string() const;
  const std::vector<std::string>& as_strings() const;
  std::vector<float> as_f32s() const;
  std::vector<int32_t> as_i32s() const;
  // Any integer scalar widened (an error for other types).
  int64_t as_int() const;

  // For listings: `3.5`, `"llama"`, `[1, 2, 3, ... (4096 items)]`.
  std::string to_string(size_t max_items = 6) const;

  // Serialized form (type tag excluded), as the writer emits it.
  void serialize(std::vector<uint8_t>& out) const;

 private:
  GgufType type_ = GgufType::U32;
  GgufType elem_ = GgufType::U8;
  uint64_t count_ = 1;
  std::vector<uint8_t> bytes_;     // scalars and numeric arrays, little-endian
  std::vector<std::string> strs_;  // String (one) and arrays of strings
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous one
  uint32_t type = 0;          // a ggml type id (GgmlType for the ones written here)
  uint64_t offset = 0;        // from the start of the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
  // The row-major shape (dims reversed), as safetensors and Tensor<T> use it.
  std::vector<int64_t> shape() const;
};

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = 32);

  // Sets (or replaces, keeping its place) a key. general.alignment is written by write().
  void set(const std::string& key, GgufValue v);
  // A tensor of row-major `shape`, stored as `type` (a weight type, is_weight_type, or Q8_K).
  // `fill` writes its numel() float values when write() reaches it, so conversion and
  // permutation happen one tensor at a time; the writer then rounds them to `type` row by row
  // (quantize_row; a row is the last dim, which must be whole blocks of the type).
  using Fill = std::function<void(float* out)>;
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                  Fill fill);
  // The same from memory that must stay valid until write().
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                  const float* data);
  // A tensor whose bytes are already in `type` (copied from another GGUF file, say, without
  // rounding twice): `fill` writes exactly row_bytes(type, shape.back()) * rows bytes, the
  // layout GgufFile::data() hands out.
  using RawFill = std::function<void(uint8_t* out)>;
  void add_raw_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                      RawFill fill);
  // Writes atomically: `path` is either the old file or the complete new one.
  void write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    std::vector<int64_t> dims;  // ggml order
    GgmlType type;
    Fill fill;         // floats to round to `type`
    RawFill raw_fill;  // or the bytes themselves
  };
  void check_new_tensor(const std::string& name, const std::vector<int64_t>& shape,
                        GgmlType type) const;
  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::vector<Pending> tensors_;
};

class GgufFile {
 public:
  // Maps and validates `path`; throws moe::Error("<path>: ...") on any problem.
  static GgufFile open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t file_size() const { return size_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section

  // Key-value pairs in file order.
  const std::vector<std::pair<std::string, GgufValue>>& kvs() const { return kvs_; }
  bool has(const std::string& key) const { return kv_index_.count(key) != 0; }
  // Throws naming the file and key when absent.
  const GgufValue& value(const std::string& key) const;
  // Typed access; a missing key or a different type throws naming the file and key.
  uint32_t u32(const std::string& key) const;
  int32_t i32(const std::string& key) const;
  float f32(const std::string& key) const;
  bool boolean(const std::string& key) const;
  std::string string(const std::string& key) const;
  std::vector<std::string> strings(const std::string& key) const;
  std::vector<float> f32s(const std::string& key) const;
  std::vector<int32_t> i32s(const std::string& key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  bool has_tensor(const std::string& name) const { return tensor_index_.count(name) != 0; }
  const GgufTensorInfo& tensor(const std::string& name) const;  // throws naming file and tensor
  const uint8_t* data(const GgufTensorInfo& t) const { return base_ + data_offset_ + t.offset; }
  // Tensor `name` (any type dequantize_row reads: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K,
  // Q6_K, Q8_K) converted to float, numel() values in ggml order (which is the row-major order
  // of shape()).
  std::vector<float> read_f32(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> map_;  // core/mapped_file.h
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0, data_offset_ = 0;
  uint32_t version_ = 0, alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace moe
