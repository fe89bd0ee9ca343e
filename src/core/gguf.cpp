#include "moe/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/mapped_file.h"
#include "moe/error.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint32_t kGgmlMaxDims = 4;     // GGML_MAX_DIMS

// Byte size of one scalar of a GGUF value type; 0 for String and Array.
uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::Bool:
      return 1;
    case GgufType::U16:
    case GgufType::I16:
      return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32:
      return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64:
      return 8;
    case GgufType::String:
    case GgufType::Array:
      return 0;
  }
  return 0;
}

bool known_type(uint32_t t) {
  return t <= static_cast<uint32_t>(GgufType::F64);
}

uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8:
      return "uint8";
    case GgufType::I8:
      return "int8";
    case GgufType::U16:
      return "uint16";
    case GgufType::I16:
      return "int16";
    case GgufType::U32:
      return "uint32";
    case GgufType::I32:
      return "int32";
    case GgufType::F32:
      return "float32";
    case GgufType::Bool:
      return "bool";
    case GgufType::String:
      return "string";
    case GgufType::Array:
      return "array";
    case GgufType::U64:
      return "uint64";
    case GgufType::I64:
      return "int64";
    case GgufType::F64:
      return "float64";
  }
  return "unknown";
}

// ---- GgufValue ------------------------------------------------------------------------------

namespace {
template <class T>
GgufValue scalar_value(GgufType t, T v) {
  std::vector<uint8_t> b(sizeof(T));
  std::memcpy(b.data(), &v, sizeof(T));
  return GgufValue::raw(t, GgufType::U8, 1, std::move(b));
}
template <class T>
GgufValue array_value(GgufType elem, const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return GgufValue::raw(GgufType::Array, elem, v.size(), std::move(b));
}
}  // namespace

GgufValue GgufValue::raw(GgufType type, GgufType elem, uint64_t count, std::vector<uint8_t> bytes) {
  GgufValue v;
  v.type_ = type;
  v.elem_ = elem;
  v.count_ = count;
  v.bytes_ = std::move(bytes);
  return v;
}

GgufValue GgufValue::u32(uint32_t v) {
  return scalar_value(GgufType::U32, v);
}
GgufValue GgufValue::i32(int32_t v) {
  return scalar_value(GgufType::I32, v);
}
GgufValue GgufValue::u64(uint64_t v) {
  return scalar_value(GgufType::U64, v);
}
GgufValue GgufValue::f32(float v) {
  return scalar_value(GgufType::F32, v);
}
GgufValue GgufValue::boolean(bool v) {
  return scalar_value(GgufType::Bool, static_cast<uint8_t>(v ? 1 : 0));
}
GgufValue GgufValue::string(std::string v) {
  GgufValue r;
  r.type_ = GgufType::String;
  r.strs_.push_back(std::move(v));
  return r;
}
GgufValue GgufValue::strings(std::vector<std::string> v) {
  GgufValue r;
  r.type_ = GgufType::Array;
  r.elem_ = GgufType::String;
  r.count_ = v.size();
  r.strs_ = std::move(v);
  return r;
}
GgufValue GgufValue::f32s(const std::vector<float>& v) {
  return array_value(GgufType::F32, v);
}
GgufValue GgufValue::i32s(const std::vector<int32_t>& v) {
  return array_value(GgufType::I32, v);
}

namespace {
std::string type_str(GgufType type, GgufType elem) {
  return type == GgufType::Array ? fmt::format("array of {}", gguf_type_name(elem))
                                 : gguf_type_name(type);
}
template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
}  // namespace

#define MOE_GGUF_EXPECT(cond, want)                                                         \
  do {                                                                                      \
    if (!(cond)) throw Error(fmt::format("is {}, not {}", type_str(type_, elem_), (want))); \
  } while (0)

uint32_t GgufValue::as_u32() const {
  MOE_GGUF_EXPECT(type_ == GgufType::U32, "uint32");
  return load<uint32_t>(bytes_.data());
}
int32_t GgufValue::as_i32() const {
  MOE_GGUF_EXPECT(type_ == GgufType::I32, "int32");
  return load<int32_t>(bytes_.data());
}
uint64_t GgufValue::as_u64() const {
  MOE_GGUF_EXPECT(type_ == GgufType::U64, "uint64");
  return load<uint64_t>(bytes_.data());
}
float GgufValue::as_f32() const {
  MOE_GGUF_EXPECT(type_ == GgufType::F32, "float32");
  return load<float>(bytes_.data());
}
bool GgufValue::as_bool() const {
  MOE_GGUF_EXPECT(type_ == GgufType::Bool, "bool");
  return bytes_[0] != 0;
}
const std::string& GgufValue::as_string() const {
  MOE_GGUF_EXPECT(type_ == GgufType::String, "string");
  return strs_[0];
}
const std::vector<std::string>& GgufValue::as_strings() const {
  MOE_GGUF_EXPECT(type_ == GgufType::Array && elem_ == GgufType::String, "array of string");
  return strs_;
}
std::vector<float> GgufValue::as_f32s() const {
  MOE_GGUF_EXPECT(type_ == GgufType::Array && elem_ == GgufType::F32, "array of float32");
  std::vector<float> v(count_);
  if (count_) std::memcpy(v.data(), bytes_.data(), count_ * sizeof(float));
  return v;
}
std::vector<int32_t> GgufValue::as_i32s() const {
  MOE_GGUF_EXPECT(type_ == GgufType::Array && elem_ == GgufType::I32, "array of int32");
  std::vector<int32_t> v(count_);
  if (count_) std::memcpy(v.data(), bytes_.data(), count_ * sizeof(int32_t));
  return v;
}
int64_t GgufValue::as_int() const {
  const uint8_t* p = bytes_.data();
  switch (type_) {
    case GgufType::U8:
      return load<uint8_t>(p);
    case GgufType::I8:
      return load<int8_t>(p);
    case GgufType::U16:
      return load<uint16_t>(p);
    case GgufType::I16:
      return load<int16_t>(p);
    case GgufType::U32:
      return load<uint32_t>(p);
    case GgufType::I32:
      return load<int32_t>(p);
    case GgufType::I64:
      return load<int64_t>(p);
    case GgufType::U64: {
      const uint64_t v = load<uint64_t>(p);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Error(fmt::format("uint64 value {} does not fit int64", v));
      return static_cast<int64_t>(v);
    }
    default:
      break;
  }
  MOE_GGUF_EXPECT(false, "an integer");
  return 0;
}

#undef MOE_GGUF_EXPECT

namespace {
// One element of a numeric scalar or array as text.
std::string scalar_text(GgufType t, const uint8_t* p) {
  switch (t) {
    case GgufType::U8:
      return fmt::format("{}", load<uint8_t>(p));
    case GgufType::I8:
      return fmt::format("{}", load<int8_t>(p));
    case GgufType::U16:
      return fmt::format("{}", load<uint16_t>(p));
    case GgufType::I16:
      return fmt::format("{}", load<int16_t>(p));
    case GgufType::U32:
      return fmt::format("{}", load<uint32_t>(p));
    case GgufType::I32:
      return fmt::format("{}", load<int32_t>(p));
    case GgufType::U64:
      return fmt::format("{}", load<uint64_t>(p));
    case GgufType::I64:
      return fmt::format("{}", load<int64_t>(p));
    case GgufType::F32:
      return fmt::format("{}", load<float>(p));
    case GgufType::F64:
      return fmt::format("{}", load<double>(p));
    case GgufType::Bool:
      return *p ? "true" : "false";
    default:
      return "?";
  }
}
std::string quoted(const std::string& s) {
  std::string r = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      r += '\\';
      r += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      r += fmt::format("\\x{:02x}", c);
    } else {
      r += static_cast<char>(c);
    }
  }
  return r + "\"";
}
}  // namespace

std::string GgufValue::to_string(size_t max_items) const {
  if (type_ == GgufType::String) return quoted(strs_[0]);
  if (type_ != GgufType::Array) return scalar_text(type_, bytes_.data());
  std::string r = "[";
  const uint64_t shown = std::min<uint64_t>(count_, max_items);
  const uint64_t es = scalar_size(elem_);
  for (uint64_t i = 0; i < shown; ++i) {
    if (i) r += ", ";
    r += elem_ == GgufType::String ? quoted(strs_[i]) : scalar_text(elem_, bytes_.data() + i * es);
  }
  if (shown < count_) r += fmt::format(", ... ({} items)", count_);
  return r + "]";
}

void GgufValue::serialize(std::vector<uint8_t>& out) const {
  if (type_ == GgufType::String) {
    put_string(out, strs_[0]);
    return;
  }
  if (type_ == GgufType::Array) {
    put<uint32_t>(out, static_cast<uint32_t>(elem_));
    put<uint64_t>(out, count_);
    if (elem_ == GgufType::String)
      for (const auto& s : strs_) put_string(out, s);
    else
      out.insert(out.end(), bytes_.begin(), bytes_.end());
    return;
  }
  out.insert(out.end(), bytes_.begin(), bytes_.end());
}

// ---- tensor info ----------------------------------------------------------------------------

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const {
  return {dims.rbegin(), dims.rend()};
}

// ---- writer ---------------------------------------------------------------------------------

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  MOE_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0,
            "GgufWriter: alignment {} is not a power of two", alignment);
}

void GgufWriter::set(const std::string& key, GgufValue v) {
  MOE_CHECK(key != "general.alignment", "GgufWriter: general.alignment is set by the writer");
  for (auto& kv : kvs_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kvs_.emplace_back(key, std::move(v));
}

void GgufWriter::check_new_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                  GgmlType type) const {
  MOE_CHECK(!shape.empty() && shape.size() <= kGgmlMaxDims, "GgufWriter: tensor {} has {} dims",
            name, shape.size());
  for (int64_t d : shape) MOE_CHECK(d > 0, "GgufWriter: tensor {} has a dim of {}", name, d);
  for (const auto& t : tensors_)
    MOE_CHECK(t.name != name, "GgufWriter: tensor {} added twice", name);
  const auto tname = ggml_type_name(static_cast<uint32_t>(type));
  MOE_REQUIRE(is_weight_type(type) || type == GgmlType::Q8_K,
              "GgufWriter: tensor {}: cannot store {}", name, tname);
  // A row of a block type is whole blocks (ggml's dims[0]); say so before any byte is written.
  const int64_t block = ggml_block(static_cast<uint32_t>(type)).values;
  MOE_REQUIRE(shape.back() % block == 0,
              "GgufWriter: tensor {}: rows of {} values cannot be stored as {} (blocks of {})",
              name, shape.back(), tname, block);
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape,
                            GgmlType type, Fill fill) {
  check_new_tensor(name, shape, type);
  tensors_.push_back({name, {shape.rbegin(), shape.rend()}, type, std::move(fill), nullptr});
}

void GgufWriter::add_raw_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                GgmlType type, RawFill fill) {
  check_new_tensor(name, shape, type);
  tensors_.push_back({name, {shape.rbegin(), shape.rend()}, type, nullptr, std::move(fill)});
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape,
                            GgmlType type, const float* data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  add_tensor(name, shape, type, [data, n](float* out) { std::copy_n(data, n, out); });
}

void GgufWriter::write(const std::string& path) const {
  // Layout first: offsets of every tensor in the data section.
  std::vector<uint64_t> offsets, sizes;
  uint64_t data_size = 0, max_bytes = 0;
  int64_t max_numel = 0;
  for (const auto& t : tensors_) {
    int64_t n = 1;
    for (int64_t d : t.dims) n *= d;
    if (t.fill) max_numel = std::max(max_numel, n);
    data_size = align_up(data_size, alignment_);
    offsets.push_back(data_size);
    sizes.push_back(static_cast<uint64_t>(n / t.dims[0] * row_bytes(t.type, t.dims[0])));
    if (t.raw_fill || t.type != GgmlType::F32) max_bytes = std::max(max_bytes, sizes.back());
    data_size += sizes.back();
  }

  std::vector<uint8_t> head;
  put<uint32_t>(head, kMagic);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kvs_.size() + 1);
  put_string(head, "general.alignment");
  put<uint32_t>(head, static_cast<uint32_t>(GgufType::U32));
  put<uint32_t>(head, alignment_);
  for (const auto& [key, v] : kvs_) {
    put_string(head, key);
    put<uint32_t>(head, static_cast<uint32_t>(v.type()));
    v.serialize(head);
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) put<uint64_t>(head, static_cast<uint64_t>(d));
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offsets[i]);
  }
  head.resize(align_up(head.size(), alignment_), 0);

  // Streamed tensor by tensor into an atomic file (removed again if anything throws).
  AtomicFileWriter out(path);
  out.write(head.data(), head.size());
  // One tensor's floats and one tensor's stored bytes at a time.
  std::vector<float> values(static_cast<size_t>(max_numel));
  std::vector<uint8_t> stored(static_cast<size_t>(max_bytes));
  const std::vector<uint8_t> zeros(alignment_, 0);
  uint64_t pos = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    if (offsets[i] > pos) out.write(zeros.data(), offsets[i] - pos);
    const void* src = stored.data();
    if (t.raw_fill) {
      t.raw_fill(stored.data());
    } else {
      t.fill(values.data());
      const int64_t cols = t.dims[0],
                    rows = static_cast<int64_t>(sizes[i]) / row_bytes(t.type, cols);
      if (t.type == GgmlType::F32) {
        src = values.data();
      } else {
        const int64_t rb = row_bytes(t.type, cols);
        // Rows are independent; the k-quant scale searches make this the slow part of a write.
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
        for (int64_t r = 0; r < rows; ++r)
          quantize_row(t.type, values.data() + r * cols, stored.data() + r * rb, cols);
      }
    }
    out.write(src, sizes[i]);
    pos = offsets[i] + sizes[i];
  }
  out.commit();
}

// ---- reader ---------------------------------------------------------------------------------

namespace {

// Bounds-checked reading of the header; every error names the file, the field and the offset.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* base, uint64_t size)
      : path_(path), base_(base), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t n, const std::string& field) const {
    if (n > left())
      throw Error(fmt::format("{}: truncated: {} needs {} bytes at offset {}, file has {} bytes",
                              path_, field, n, pos_, size_));
  }
  template <class T>
  T get(const std::string& field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const std::string& field) {
    const uint64_t n = get<uint64_t>(field + " length");
    need(n, field);
    std::string s(reinterpret_cast<const char*>(base_ + pos_), n);
    pos_ += n;
    return s;
  }
  std::vector<uint8_t> bytes(uint64_t n, const std::string& field) {
    need(n, field);
    std::vector<uint8_t> v(base_ + pos_, base_ + pos_ + n);
    pos_ += n;
    return v;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("{}: {}", path_, what));
  }

 private:
  const std::string& path_;
  const uint8_t* base_;
  uint64_t size_, pos_ = 0;
};

GgufValue read_value(Cursor& c, uint32_t type, const std::string& field) {
  if (!known_type(type)) c.fail(fmt::format("{} has unknown value type {}", field, type));
  const auto t = static_cast<GgufType>(type);
  if (t == GgufType::String) return GgufValue::string(c.str(field));
  if (t != GgufType::Array)
    return GgufValue::raw(t, GgufType::U8, 1, c.bytes(scalar_size(t), field));
  const uint32_t et = c.get<uint32_t>(field + " element type");
  if (!known_type(et)) c.fail(fmt::format("{} has unknown element type {}", field, et));
  const auto e = static_cast<GgufType>(et);
  if (e == GgufType::Array) c.fail(fmt::format("{} is a nested array (not supported)", field));
  const uint64_t n = c.get<uint64_t>(field + " element count");
  if (e == GgufType::String) {
    // Each string takes at least its 8-byte length: bound n before reserving.
    if (n > c.left() / 8)
      c.fail(fmt::format("truncated: {} claims {} strings but only {} bytes remain", field, n,
                         c.left()));
    std::vector<std::string> v;
    v.reserve(n);
    for (uint64_t i = 0; i < n; ++i) v.push_back(c.str(fmt::format("{}[{}]", field, i)));
    return GgufValue::strings(std::move(v));
  }
  const uint64_t es = scalar_size(e);
  if (n > c.left() / es)
    c.fail(fmt::format("truncated: {} claims {} elements of {} bytes but only {} bytes remain",
                       field, n, es, c.left()));
  return GgufValue::raw(GgufType::Array, e, n, c.bytes(n * es, field));
}

}  // namespace

GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.path_ = path;
  f.map_ = MappedFile::open(path, 24, "the 24-byte GGUF header");
  f.size_ = f.map_->size();
  f.base_ = f.map_->data();

  Cursor c(f.path_, f.base_, f.size_);
  const uint32_t magic = c.get<uint32_t>("magic");
  if (magic != kMagic) c.fail("not a GGUF file (magic is not \"GGUF\")");
  f.version_ = c.get<uint32_t>("version");
  // v2 has the same layout as v3 (v3 only added big-endian files, marked by the version).
  if (f.version_ != 2 && f.version_ != 3)
    c.fail(fmt::format("GGUF version {} is not supported (expected 2 or 3)", f.version_));
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("key-value count");
  // A key-value pair takes at least 12 bytes, a tensor info at least 24.
  if (n_kv > c.left() / 12)
    c.fail(fmt::format("truncated: key-value count {} exceeds the file", n_kv));
  if (n_tensors > c.left() / 24)
    c.fail(fmt::format("truncated: tensor count {} exceeds the file", n_tensors));

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str(fmt::format("key {}", i));
    const std::string field = fmt::format("key {} ({})", i, key);
    const uint32_t type = c.get<uint32_t>(field + " type");
    GgufValue v = read_value(c, type, field);
    if (f.kv_index_.count(key)) c.fail(fmt::format("duplicate key {}", key));
    f.kv_index_[key] = f.kvs_.size();
    f.kvs_.emplace_back(std::move(key), std::move(v));
  }
  if (f.has("general.alignment")) {
    const GgufValue& a = f.value("general.alignment");
    if (a.type() != GgufType::U32)
      c.fail(fmt::format("general.alignment is {}, not uint32", gguf_type_name(a.type())));
    f.alignment_ = a.as_u32();
    if (f.alignment_ == 0 || (f.alignment_ & (f.alignment_ - 1)) != 0)
      c.fail(fmt::format("general.alignment {} is not a power of two", f.alignment_));
  }

  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str(fmt::format("tensor {} name", i));
    const std::string field = fmt::format("tensor {} ({})", i, t.name);
    const uint32_t nd = c.get<uint32_t>(field + " n_dims");
    if (nd == 0 || nd > kGgmlMaxDims)
      c.fail(fmt::format("{} has {} dims (1..4 allowed)", field, nd));
    uint64_t numel = 1;
    for (uint32_t k = 0; k < nd; ++k) {
      const uint64_t d = c.get<uint64_t>(fmt::format("{} dim {}", field, k));
      // ggml's own limit; it also keeps the product below 2^63.
      if (d == 0 || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / numel)
        c.fail(fmt::format("{} dim {} = {} is zero or too large", field, k, d));
      numel *= d;
      t.dims.push_back(static_cast<int64_t>(d));
    }
    t.type = c.get<uint32_t>(field + " type");
    const auto [block, block_bytes] = ggml_block(t.type);
    if (block == 0) c.fail(fmt::format("{} has unsupported ggml type {}", field, t.type));
    if (t.dims[0] % block != 0)
      c.fail(fmt::format("{} dim 0 = {} is not a multiple of the {} block size {}", field,
                         t.dims[0], ggml_type_name(t.type), block));
    t.offset = c.get<uint64_t>(field + " offset");
    const uint64_t blocks = numel / static_cast<uint64_t>(block);
    if (blocks > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(block_bytes))
      c.fail(fmt::format("{} is too large", field));
    t.nbytes = blocks * static_cast<uint64_t>(block_bytes);
    if (f.tensor_index_.count(t.name)) c.fail(fmt::format("duplicate tensor {}", t.name));
    f.tensor_index_[t.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }

  f.data_offset_ = align_up(c.pos(), f.alignment_);
  if (n_tensors > 0 && f.data_offset_ > f.size_)
    c.fail(fmt::format("truncated: the data section would start at {}, file has {} bytes",
                       f.data_offset_, f.size_));
  const uint64_t data_size = f.size_ - std::min(f.data_offset_, f.size_);
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : f.tensors_) {
    if (t.offset % f.alignment_ != 0)
      c.fail(fmt::format("tensor {} offset {} is not a multiple of the alignment {}", t.name,
                         t.offset, f.alignment_));
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      c.fail(fmt::format(
          "truncated: tensor {} needs bytes [{}, {}) of the data section, which has {} bytes",
          t.name, t.offset, t.offset + t.nbytes, data_size));
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->nbytes > by_offset[i]->offset)
      c.fail(fmt::format("tensors {} and {} overlap", by_offset[i - 1]->name, by_offset[i]->name));
  return f;
}

const GgufValue& GgufFile::value(const std::string& key) const {
  const auto it = kv_index_.find(key);
  if (it == kv_index_.end()) throw Error(fmt::format("{}: missing key {}", path_, key));
  return kvs_[it->second].second;
}

namespace {
template <class Fn>
auto typed(const GgufFile& f, const std::string& key, Fn fn) {
  const GgufValue& v = f.value(key);
  try {
    return fn(v);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: key {} {}", f.path(), key, e.what()));
  }
}
}  // namespace

uint32_t GgufFile::u32(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_u32(); });
}
int32_t GgufFile::i32(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_i32(); });
}
float GgufFile::f32(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_f32(); });
}
bool GgufFile::boolean(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_bool(); });
}
std::string GgufFile::string(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_string(); });
}
std::vector<std::string> GgufFile::strings(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_strings(); });
}
std::vector<float> GgufFile::f32s(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_f32s(); });
}
std::vector<int32_t> GgufFile::i32s(const std::string& key) const {
  return typed(*this, key, [](const GgufValue& v) { return v.as_i32s(); });
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) throw Error(fmt::format("{}: missing tensor {}", path_, name));
  return tensors_[it->second];
}

std::vector<float> GgufFile::read_f32(const std::string& name) const {
  const GgufTensorInfo& t = tensor(name);
  const auto type = static_cast<GgmlType>(t.type);
  if (!is_weight_type(type) && type != GgmlType::Q8_K)
    throw Error(fmt::format("{}: tensor {} is {}, which cannot be read as float", path_, name,
                            ggml_type_name(t.type)));
  const int64_t n = t.numel(), cols = t.dims[0], rows = n / cols;
  const int64_t rb = row_bytes(type, cols);
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* p = data(t);
  // The block structs want 4-byte alignment (Q8_K's fp32 scale), which a file with a small
  // general.alignment need not give: such rows go through an aligned copy.
  if (reinterpret_cast<uintptr_t>(p) % alignof(float) == 0 && rb % alignof(float) == 0) {
#pragma omp parallel for schedule(static) if (n >= (1 << 20))
    for (int64_t r = 0; r < rows; ++r)
      dequantize_row(type, p + r * rb, out.data() + r * cols, cols);
    return out;
  }
  std::vector<uint32_t> aligned(static_cast<size_t>((rb + 3) / 4));
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(aligned.data(), p + r * rb, static_cast<size_t>(rb));
    dequantize_row(type, reinterpret_cast<const uint8_t*>(aligned.data()), out.data() + r * cols,
                   cols);
  }
  return out;
}

}  // namespace moe
