#include "moe/safetensors.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "core/mapped_file.h"

namespace moe {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::U8:
      return "U8";
  }
  return "?";
}

int64_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::U8:
      return 1;
  }
  return 0;
}

namespace {
bool parse_dtype(const std::string& s, DType* out) {
  for (DType t :
       {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::U8}) {
    if (s == dtype_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

template <class T>
T load_as(const uint8_t* p, DType t) {
  switch (t) {
    case DType::F64: {
      double v;
      std::memcpy(&v, p, 8);
      return static_cast<T>(v);
    }
    case DType::F32: {
      float v;
      std::memcpy(&v, p, 4);
      return static_cast<T>(v);
    }
    case DType::F16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return static_cast<T>(f16_to_float(v));
    }
    case DType::BF16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return static_cast<T>(bf16_to_float(v));
    }
    case DType::I64: {
      int64_t v;
      std::memcpy(&v, p, 8);
      return static_cast<T>(v);
    }
    case DType::I32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      return static_cast<T>(v);
    }
    case DType::U8:
      return static_cast<T>(*p);
  }
  return T(0);
}

template <class T>
void store_as(T v, DType t, uint8_t* p) {
  switch (t) {
    case DType::F64: {
      double x = static_cast<double>(v);
      std::memcpy(p, &x, 8);
      break;
    }
    case DType::F32: {
      float x = static_cast<float>(v);
      std::memcpy(p, &x, 4);
      break;
    }
    case DType::F16: {
      uint16_t x = float_to_f16(static_cast<float>(v));
      std::memcpy(p, &x, 2);
      break;
    }
    case DType::BF16: {
      uint16_t x = float_to_bf16(static_cast<float>(v));
      std::memcpy(p, &x, 2);
      break;
    }
    case DType::I64: {
      int64_t x = static_cast<int64_t>(v);
      std::memcpy(p, &x, 8);
      break;
    }
    case DType::I32: {
      int32_t x = static_cast<int32_t>(v);
      std::memcpy(p, &x, 4);
      break;
    }
    case DType::U8:
      *p = static_cast<uint8_t>(v);
      break;
  }
}
}  // namespace

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafeTensorsFile SafeTensorsFile::open(const std::string& path) {
  SafeTensorsFile f;
  f.path_ = path;
  f.map_ = MappedFile::open(path, 8, "the 8-byte header length");
  const uint64_t file_size = f.map_->size();
  const uint8_t* base = f.map_->data();

  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);
  if (header_len > file_size - 8)
    throw Error(fmt::format("{}: truncated: header length {} exceeds the {} bytes after it", path,
                            header_len, file_size - 8));
  const uint64_t data_size = file_size - 8 - header_len;
  f.data_ = base + 8 + header_len;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(base + 8, base + 8 + header_len);
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: header is not valid JSON: {}", path, e.what()));
  }
  if (!header.is_object()) throw Error(fmt::format("{}: header is not a JSON object", path));

  std::vector<std::pair<int64_t, int64_t>> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw Error(fmt::format("{}: __metadata__ is not an object", path));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw Error(fmt::format("{}: __metadata__.{} is not a string", path, m.key()));
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) {
      return Error(fmt::format("{}: tensor '{}': {}", path, name, why));
    };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      throw bad("entry needs dtype, shape and data_offsets");
    TensorEntry e;
    e.name = name;
    if (!v["dtype"].is_string() || !parse_dtype(v["dtype"].get<std::string>(), &e.dtype))
      throw bad(fmt::format("unsupported dtype {}", v["dtype"].dump()));
    if (!v["shape"].is_array()) throw bad("shape is not an array");
    if (v["shape"].size() > static_cast<size_t>(kMaxDims))
      throw bad(fmt::format("shape {} has more than {} dimensions", v["shape"].dump(), kMaxDims));
    // Byte size with overflow checks: a crafted shape must not wrap to a small number.
    uint64_t bytes = static_cast<uint64_t>(dtype_size(e.dtype));
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        throw bad(fmt::format("bad shape {}", v["shape"].dump()));
      e.shape.push_back(d.get<int64_t>());
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(e.shape.back()), &bytes))
        throw bad(fmt::format("shape {} is too large", v["shape"].dump()));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      throw bad("data_offsets must be two non-negative integers");
    // Compare as unsigned before converting, so huge offsets cannot wrap negative.
    const auto begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end) throw bad(fmt::format("data_offsets [{}, {}] are reversed", begin, end));
    if (end > data_size)
      throw bad(
          fmt::format("data_offsets end {} is past the end of the data ({} bytes): "
                      "file truncated?",
                      end, data_size));
    if (end - begin != bytes)
      throw bad(fmt::format("{} bytes stored but shape {} of {} needs {}", end - begin,
                            v["shape"].dump(), dtype_name(e.dtype), bytes));
    e.begin = static_cast<int64_t>(begin);
    e.end = static_cast<int64_t>(end);
    if (e.end > e.begin) spans.emplace_back(e.begin, e.end);
    f.entries_.emplace(name, std::move(e));
  }
  // Tensors tile the data section exactly, as the format requires: no overlap, no hole.
  std::sort(spans.begin(), spans.end());
  auto owner = [&](int64_t begin) {
    for (const auto& [n, e] : f.entries_)
      if (e.begin == begin && e.end > e.begin) return n;
    return std::string("?");
  };
  int64_t covered = 0;
  for (const auto& [begin, end] : spans) {
    if (begin < covered)
      throw Error(fmt::format("{}: tensor '{}': data overlaps another tensor", path, owner(begin)));
    if (begin > covered)
      throw Error(
          fmt::format("{}: tensor '{}': {} unused bytes before its data (hole in the "
                      "data section)",
                      path, owner(begin), begin - covered));
    covered = end;
  }
  if (static_cast<uint64_t>(covered) != data_size)
    throw Error(fmt::format("{}: {} bytes after the last tensor's data", path,
                            data_size - static_cast<uint64_t>(covered)));
  return f;
}

void SafeTensorsFile::release(const TensorEntry& e) const {
  map_->release(raw(e), static_cast<uint64_t>(e.end - e.begin));
}

const TensorEntry& SafeTensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(fmt::format("{}: missing tensor '{}'", path_, name));
  return it->second;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [n, e] : entries_) out.push_back(n);
  return out;
}

const std::string& SafeTensorsFile::metadata(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end())
    throw Error(fmt::format("{}: missing __metadata__ key '{}'", path_, key));
  return it->second;
}

template <class T>
void SafeTensorsFile::read_into(const std::string& name, const Shape& expected, T* out) const {
  const TensorEntry& e = entry(name);
  const Shape stored = Shape::from(e.shape);
  if (!(stored == expected))
    throw Error(fmt::format("{}: tensor '{}': shape {} does not match the expected {}", path_, name,
                            stored.str(), expected.str()));
  const int64_t n = e.numel(), sz = dtype_size(e.dtype);
  const uint8_t* p = raw(e);
  for (int64_t i = 0; i < n; ++i) out[i] = load_as<T>(p + i * sz, e.dtype);
}

template <class T>
Tensor<T> SafeTensorsFile::read(const std::string& name, const Shape& expected) const {
  const Shape stored = Shape::from(entry(name).shape);
  Tensor<T> t(expected.ndim > 0 ? expected : stored);
  read_into(name, t.shape(), t.data());
  return t;
}

template <class T>
void SafeTensorsWriter::add(const std::string& name, const Shape& shape, const T* data,
                            DType stored) {
  MOE_CHECK(name != "__metadata__",
            "SafeTensorsWriter: '__metadata__' is reserved, not a tensor name");
  for (const auto& p : tensors_)
    MOE_CHECK(p.name != name, "SafeTensorsWriter: tensor '{}' added twice", name);
  Pending p;
  p.name = name;
  p.dtype = stored;
  for (int i = 0; i < shape.ndim; ++i) p.shape.push_back(shape[i]);
  const int64_t n = shape.numel(), sz = dtype_size(stored);
  p.bytes.resize(static_cast<size_t>(n * sz));
  for (int64_t i = 0; i < n; ++i) store_as<T>(data[i], stored, p.bytes.data() + i * sz);
  tensors_.push_back(std::move(p));
}

void SafeTensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json header;
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  int64_t offset = 0;
  for (const auto& p : tensors_) {
    const auto n = static_cast<int64_t>(p.bytes.size());
    header[p.name] = {
        {"dtype", dtype_name(p.dtype)}, {"shape", p.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // keep the data 8-byte aligned
  std::vector<uint8_t> out(8 + h.size() + static_cast<size_t>(offset));
  const uint64_t len = h.size();
  std::memcpy(out.data(), &len, 8);
  std::memcpy(out.data() + 8, h.data(), h.size());
  size_t pos = 8 + h.size();
  for (const auto& p : tensors_) {
    if (!p.bytes.empty()) std::memcpy(out.data() + pos, p.bytes.data(), p.bytes.size());
    pos += p.bytes.size();
  }
  write_file_atomic(path, out.data(), out.size());
}

namespace {

// The <n> of every temporary file this process is writing now, in any thread: a temporary
// with this process's pid and another <n> was left by an earlier process with the same pid.
std::mutex g_in_flight_mutex;
std::set<uint64_t> g_in_flight;

bool in_flight(uint64_t id) {
  std::lock_guard<std::mutex> lock(g_in_flight_mutex);
  return g_in_flight.count(id) > 0;
}

// A decimal number of 1 to 18 digits, or -1.
int64_t parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 18) return -1;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// Removes the temporaries <name>.tmp.<pid>.<n> next to `path` whose writer has exited: a
// process killed between creating its temporary and renaming it. A pid that names a live
// process (or one this process may not signal) is left alone; so are other files.
void remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string prefix = target.filename().string() + ".tmp.";
  std::vector<fs::path> stale;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string_view rest = std::string_view(name).substr(prefix.size());
    const size_t dot = rest.find('.');
    if (dot == std::string_view::npos) continue;
    const int64_t pid = parse_decimal(rest.substr(0, dot)),
                  id = parse_decimal(rest.substr(dot + 1));
    if (pid <= 0 || pid > std::numeric_limits<pid_t>::max() || id < 0) continue;
    const bool dead = pid == ::getpid() ? !in_flight(static_cast<uint64_t>(id))
                                        : ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
    if (dead) stale.push_back(it->path());
  }
  // Best effort: a temporary that cannot be removed is no reason to fail the write.
  for (const auto& p : stale) fs::remove(p, ec);
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  // pid + a per-process counter: concurrent writers (threads or processes) never share a name.
  static std::atomic<uint64_t> counter{0};
  id_ = counter.fetch_add(1, std::memory_order_relaxed);
  tmp_ = fmt::format("{}.tmp.{}.{}", path_, ::getpid(), id_);
  {
    std::lock_guard<std::mutex> lock(g_in_flight_mutex);
    g_in_flight.insert(id_);
  }
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) {
    const int err = errno;
    std::lock_guard<std::mutex> lock(g_in_flight_mutex);
    g_in_flight.erase(id_);
    throw Error(fmt::format("{}: cannot create: {}", tmp_, std::strerror(err)));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (f_) std::fclose(f_);
  if (!committed_) std::remove(tmp_.c_str());
  std::lock_guard<std::mutex> lock(g_in_flight_mutex);
  g_in_flight.erase(id_);
}

void AtomicFileWriter::fail(const std::string& what) {
  const int err = errno;
  if (f_) std::fclose(f_);
  f_ = nullptr;
  std::remove(tmp_.c_str());
  throw Error(fmt::format("{}: {}: {}", tmp_, what, std::strerror(err)));
}

void AtomicFileWriter::write(const void* data, size_t size) {
  MOE_CHECK(f_ && !committed_, "{}: write after commit or failure", tmp_);
  if (size > 0 && std::fwrite(data, 1, size, f_) != size) fail("write failed");
}

void AtomicFileWriter::commit() {
  MOE_CHECK(f_ && !committed_, "{}: commit after commit or failure", tmp_);
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0) fail("write failed");
  const int closed = std::fclose(f_);
  f_ = nullptr;
  if (closed != 0) fail("write failed");
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp_.c_str());
    throw Error(fmt::format("{}: cannot rename into place: {}", path_, std::strerror(err)));
  }
  committed_ = true;
  remove_stale_temporaries(path_);
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFileWriter f(path);
  f.write(data, size);
  f.commit();
}

float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // overflow to inf
  if (a < 0x38800000u) {                        // subnormal or zero
    if (a < 0x33000000u) return sign;
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    const int shift = 113 - static_cast<int>(a >> 23) + 13;
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = a - 0x38000000u;  // rebias exponent
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

template Tensor<float> SafeTensorsFile::read<float>(const std::string&, const Shape&) const;
template Tensor<double> SafeTensorsFile::read<double>(const std::string&, const Shape&) const;
template void SafeTensorsFile::read_into<float>(const std::string&, const Shape&, float*) const;
template void SafeTensorsFile::read_into<double>(const std::string&, const Shape&, double*) const;
// Token ids and counts.
template Tensor<int64_t> SafeTensorsFile::read<int64_t>(const std::string&, const Shape&) const;
template Tensor<int32_t> SafeTensorsFile::read<int32_t>(const std::string&, const Shape&) const;
template void SafeTensorsFile::read_into<int64_t>(const std::string&, const Shape&, int64_t*) const;
template void SafeTensorsFile::read_into<int32_t>(const std::string&, const Shape&, int32_t*) const;
template void SafeTensorsWriter::add<float>(const std::string&, const Shape&, const float*, DType);
template void SafeTensorsWriter::add<int32_t>(const std::string&, const Shape&, const int32_t*,
                                              DType);
template void SafeTensorsWriter::add<double>(const std::string&, const Shape&, const double*,
                                             DType);

}  // namespace moe
