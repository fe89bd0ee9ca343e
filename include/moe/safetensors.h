// safetensors (https://github.com/huggingface/safetensors format): 8-byte little-endian
// header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {..}},
// then the raw little-endian data. The reader maps the file read-only and validates the
// whole header before handing anything out; every problem is a moe::Error naming the file
// and the tensor. The writer is atomic (temporary file, then rename).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/tensor.h"

namespace moe {

class MappedFile;

enum class DType { F64, F32, F16, BF16, I64, I32, U8 };

const char* dtype_name(DType t);
int64_t dtype_size(DType t);

struct TensorEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // byte offsets into the data section
  int64_t numel() const;
};

class SafeTensorsFile {
 public:
  // Maps and validates `path`; throws moe::Error("<path>: ...") on any problem.
  static SafeTensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorEntry& entry(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The metadata value for key; throws naming the file and key if absent.
  const std::string& metadata(const std::string& key) const;

  // Copies tensor `name` converted to T. If `expected` has ndim > 0, the stored shape must
  // match it exactly (error names file, tensor and both shapes).
  template <class T>
  Tensor<T> read(const std::string& name, const Shape& expected = Shape()) const;
  // Same, into caller memory of exactly numel(expected) elements.
  template <class T>
  void read_into(const std::string& name, const Shape& expected, T* out) const;

  const uint8_t* raw(const TensorEntry& e) const { return data_ + e.begin; }
  // Drops the resident file pages of tensor e (MappedFile::release): after it was copied out.
  void release(const TensorEntry& e) const;

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> map_;  // core/mapped_file.h
  const uint8_t* data_ = nullptr;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

class SafeTensorsWriter {
 public:
  // Stores `data` (numel(shape) values of T) converted to `stored`.
  template <class T>
  void add(const std::string& name, const Shape& shape, const T* data, DType stored);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Writes atomically: `path` is either the old file or the complete new one.
  void write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A file written through a temporary sibling, <path>.tmp.<pid>.<n>, renamed over `path` by
// commit(): `path` is either the old file or the complete new one. Destroyed without commit()
// (an error, an exception), it removes the temporary. Every atomic write in moe goes through
// it (write_file_atomic, SafeTensorsWriter, GgufWriter). A process killed mid-write cannot
// remove its temporary, so after each successful commit() the temporaries of `path` left by
// processes that no longer run are removed; those of live writers (another process, or
// another thread of this one) are kept.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);  // creates the temporary file
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  // Flushes, fsyncs and renames into place, then removes stale temporaries of the same path.
  void commit();
  const std::string& temp_path() const { return tmp_; }

 private:
  [[noreturn]] void fail(const std::string& what);  // removes the temporary, throws naming it

  std::string path_, tmp_;
  uint64_t id_;  // the <n> of the temporary's name, unique in this process
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

// Writes bytes to path through a temporary file in the same directory and a rename
// (AtomicFileWriter).
void write_file_atomic(const std::string& path, const void* data, size_t size);

// bf16 / f16 conversions (round to nearest even on the way down).
float bf16_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);

}  // namespace moe
