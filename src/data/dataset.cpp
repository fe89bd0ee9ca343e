// Token streams (in memory or mapped token files), the shuffled training sampler and
// validation windows.
#include "moe/dataset.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "moe/error.h"
#include "moe/rng.h"

namespace moe {

std::vector<std::string> domain_names_of(const std::vector<const std::vector<Document>*>& lists) {
  std::set<std::string> names;
  for (const auto* l : lists)
    for (const auto& d : *l) names.insert(d.domain);
  MOE_REQUIRE(names.size() <= 256, "{} domains do not fit the uint8 domain index", names.size());
  return std::vector<std::string>(names.begin(), names.end());
}

namespace {

constexpr char kTokenMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', 'N', 'S'};
constexpr uint32_t kTokenVersion = 1;
constexpr size_t kHeaderBytes = 64;

struct TokenHeader {
  char magic[8];
  uint32_t version, width;
  int64_t count, runs, tokens_offset, runs_offset;
  int64_t reserved[2];
};
static_assert(sizeof(TokenHeader) == kHeaderBytes);

}  // namespace

std::shared_ptr<const MappedTokens> MappedTokens::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(fmt::format("{}: cannot stat: {}", path, std::strerror(err)));
  }
  std::shared_ptr<MappedTokens> m(new MappedTokens());
  m->path_ = path;
  m->bytes_ = static_cast<size_t>(st.st_size);
  if (m->bytes_ < kHeaderBytes) {
    ::close(fd);
    throw Error(fmt::format("{}: not a moe token file (truncated header)", path));
  }
  void* p = ::mmap(nullptr, m->bytes_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw Error(fmt::format("{}: mmap failed: {}", path, std::strerror(errno)));
  m->base_ = static_cast<const unsigned char*>(p);
  TokenHeader h;
  std::memcpy(&h, m->base_, sizeof h);
  const auto bad = [&](const char* why) { return Error(fmt::format("{}: {}", path, why)); };
  if (std::memcmp(h.magic, kTokenMagic, 8) != 0) throw bad("not a moe token file (bad magic)");
  if (h.version != kTokenVersion) throw bad("unsupported token file version");
  if (h.width != 2 && h.width != 4) throw bad("bad token width");
  if (h.count < 0 || h.runs < 0 || h.tokens_offset != static_cast<int64_t>(kHeaderBytes) ||
      h.runs_offset != h.tokens_offset + h.count * h.width ||
      static_cast<uint64_t>(h.runs_offset) + static_cast<uint64_t>(h.runs) * 9 != m->bytes_ ||
      (h.count > 0) != (h.runs > 0))
    throw bad("truncated or inconsistent token file");
  m->width_ = static_cast<int>(h.width);
  m->count_ = h.count;
  m->run_start_.resize(static_cast<size_t>(h.runs));
  m->run_domain_.resize(static_cast<size_t>(h.runs));
  std::memcpy(m->run_start_.data(), m->base_ + h.runs_offset, m->run_start_.size() * 8);
  std::memcpy(m->run_domain_.data(), m->base_ + h.runs_offset + h.runs * 8, m->run_domain_.size());
  for (size_t r = 0; r < m->run_start_.size(); ++r)
    if (m->run_start_[r] < 0 || m->run_start_[r] >= h.count ||
        (r == 0 ? m->run_start_[r] != 0 : m->run_start_[r] <= m->run_start_[r - 1]))
      throw bad("corrupt domain runs");
  return m;
}

MappedTokens::~MappedTokens() {
  if (base_) ::munmap(const_cast<unsigned char*>(base_), bytes_);
}

void MappedTokens::read(int64_t start, int64_t n, int32_t* tokens, uint8_t* domains) const {
  MOE_CHECK(start >= 0 && n >= 0 && start + n <= count_, "{}: tokens [{}, {}) beyond its {}", path_,
            start, start + n, count_);
  const unsigned char* p = base_ + kHeaderBytes + start * width_;
  if (tokens) {
    if (width_ == 2) {
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        tokens[i] = v;
      }
    } else {
      std::memcpy(tokens, p, static_cast<size_t>(n) * 4);
    }
  }
  if (domains && n > 0) {
    // The run holding `start`, then walk forward.
    size_t r = static_cast<size_t>(std::upper_bound(run_start_.begin(), run_start_.end(), start) -
                                   run_start_.begin() - 1);
    for (int64_t i = start; i < start + n;) {
      const int64_t end =
          r + 1 < run_start_.size() ? std::min(run_start_[r + 1], start + n) : start + n;
      std::memset(domains + (i - start), run_domain_[r], static_cast<size_t>(end - i));
      i = end;
      ++r;
    }
  }
}

TokenFileWriter::TokenFileWriter(const std::string& path, int vocab_size)
    : path_(path), tmp_(path + ".tmp"), width_(vocab_size <= 65536 ? 2 : 4) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) throw Error(fmt::format("{}: cannot create: {}", tmp_, std::strerror(errno)));
  const unsigned char zero[kHeaderBytes] = {};
  if (std::fwrite(zero, 1, kHeaderBytes, f_) != kHeaderBytes)
    throw Error(fmt::format("{}: write failed", tmp_));
}

TokenFileWriter::~TokenFileWriter() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void TokenFileWriter::add(const int32_t* ids, size_t n, uint8_t domain) {
  if (n == 0) return;
  if (run_domain_.empty() || run_domain_.back() != domain) {
    run_start_.push_back(count_);
    run_domain_.push_back(domain);
  }
  buf_.resize(n * static_cast<size_t>(width_));
  for (size_t i = 0; i < n; ++i) {
    MOE_CHECK(ids[i] >= 0 && (width_ == 4 || ids[i] < 65536), "{}: token id {} does not fit", tmp_,
              ids[i]);
    if (width_ == 2) {
      const auto v = static_cast<uint16_t>(ids[i]);
      std::memcpy(buf_.data() + 2 * i, &v, 2);
    } else {
      std::memcpy(buf_.data() + 4 * i, ids + i, 4);
    }
  }
  if (std::fwrite(buf_.data(), 1, buf_.size(), f_) != buf_.size())
    throw Error(fmt::format("{}: write failed (disk full?)", tmp_));
  count_ += static_cast<int64_t>(n);
}

void TokenFileWriter::finish() {
  MOE_CHECK(f_, "{}: finish() called twice", path_);
  TokenHeader h{};
  std::memcpy(h.magic, kTokenMagic, 8);
  h.version = kTokenVersion;
  h.width = static_cast<uint32_t>(width_);
  h.count = count_;
  h.runs = static_cast<int64_t>(run_start_.size());
  h.tokens_offset = kHeaderBytes;
  h.runs_offset = h.tokens_offset + count_ * width_;
  bool ok = std::fwrite(run_start_.data(), 8, run_start_.size(), f_) == run_start_.size() &&
            std::fwrite(run_domain_.data(), 1, run_domain_.size(), f_) == run_domain_.size() &&
            std::fseek(f_, 0, SEEK_SET) == 0 && std::fwrite(&h, sizeof h, 1, f_) == 1 &&
            std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  ok = std::fclose(f_) == 0 && ok;
  f_ = nullptr;
  if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_.c_str());
    throw Error(fmt::format("{}: write failed: {}", path_, std::strerror(errno)));
  }
}

void TokenStream::read(int64_t start, int64_t n, int32_t* tokens_out, uint8_t* domains_out) const {
  if (mapped) return mapped->read(start, n, tokens_out, domains_out);
  MOE_CHECK(start >= 0 && n >= 0 && start + n <= size(), "TokenStream: tokens [{}, {}) beyond {}",
            start, start + n, size());
  if (tokens_out) std::memcpy(tokens_out, tokens.data() + start, static_cast<size_t>(n) * 4);
  if (domains_out) std::memcpy(domains_out, domain.data() + start, static_cast<size_t>(n));
}

std::pair<int32_t, int32_t> document_frame(const Tokenizer& tok) {
  if (tok.eos_id() < 0)
    throw Error(fmt::format(
        "{}: the tokenizer has no end-of-text (EOS) token; moe ends every document with one",
        tok.description()));
  return {tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id(), tok.eos_id()};
}

TokenStream tokenize_documents(const std::vector<Document>& docs, const Tokenizer& tok,
                               const std::vector<std::string>& domain_names) {
  MOE_REQUIRE(domain_names.size() <= 256, "{} domains do not fit the uint8 domain index",
              domain_names.size());
  std::vector<uint8_t> doc_domain(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto it = std::find(domain_names.begin(), domain_names.end(), docs[i].domain);
    MOE_CHECK(it != domain_names.end(), "document {} has domain \"{}\", not among the {} names", i,
              docs[i].domain, domain_names.size());
    doc_domain[i] = static_cast<uint8_t>(it - domain_names.begin());
  }
  // Encode in parallel into per-document vectors, then concatenate in order: the stream does
  // not depend on the thread count.
  std::vector<std::vector<int32_t>> encoded(docs.size());
  const auto n = static_cast<int64_t>(docs.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) encoded[i] = tok.encode(docs[i].text);

  const auto [bos, eos] = document_frame(tok);
  TokenStream s;
  s.domain_names = domain_names;
  size_t total = 0;
  for (const auto& e : encoded) total += e.size() + 2;
  s.tokens.reserve(total);
  s.domain.reserve(total);
  for (size_t i = 0; i < docs.size(); ++i) {
    s.tokens.push_back(bos);
    s.tokens.insert(s.tokens.end(), encoded[i].begin(), encoded[i].end());
    s.tokens.push_back(eos);
    s.domain.insert(s.domain.end(), encoded[i].size() + 2, doc_domain[i]);
  }
  return s;
}

BatchSampler::BatchSampler(const TokenStream& stream, int batch, int seq_len, uint64_t seed)
    : stream_(stream), batch_(batch), seq_len_(seq_len), seed_(seed) {
  MOE_CHECK(batch > 0 && seq_len > 0, "BatchSampler: batch {} and seq_len {} must be positive",
            batch, seq_len);
  MOE_CHECK(stream.mapped || stream.domain.size() == stream.tokens.size(),
            "BatchSampler: {} domain entries for {} tokens", stream.domain.size(),
            stream.tokens.size());
  const int64_t n = stream.size();
  MOE_REQUIRE(n >= seq_len + 1,
              "BatchSampler: the stream has {} tokens, fewer than one window of {}", n,
              seq_len + 1);
  // Window w covers tokens [w*S, w*S + S]; the last one must end inside the stream.
  num_windows_ = (n - 1) / seq_len;
  MOE_CHECK(num_windows_ < (int64_t{1} << 32), "BatchSampler: {} windows of {} tokens exceed 2^32",
            num_windows_, seq_len);
  shuffle_epoch();
}

void BatchSampler::shuffle_epoch() {
  order_.resize(static_cast<size_t>(num_windows_));
  for (int64_t i = 0; i < num_windows_; ++i) order_[i] = static_cast<uint32_t>(i);
  Rng rng(seed_ + state_.epoch);
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
}

void BatchSampler::next(int32_t* tokens, uint8_t* domains) {
  const size_t w = static_cast<size_t>(seq_len_) + 1;
  for (int b = 0; b < batch_; ++b) {
    if (state_.cursor >= static_cast<uint64_t>(num_windows_)) {  // only after a restore
      ++state_.epoch;
      state_.cursor = 0;
      shuffle_epoch();
    }
    const int64_t start = static_cast<int64_t>(order_[state_.cursor++]) * seq_len_;
    stream_.read(start, static_cast<int64_t>(w), tokens + b * w, domains + b * w);
    // Roll over at once, so that state() reports the epoch the next window comes from.
    if (state_.cursor == static_cast<uint64_t>(num_windows_)) {
      ++state_.epoch;
      state_.cursor = 0;
      shuffle_epoch();
    }
  }
}

void BatchSampler::restore(const State& s) {
  MOE_CHECK(s.cursor <= static_cast<uint64_t>(num_windows_),
            "BatchSampler::restore: cursor {} beyond the {} windows of an epoch", s.cursor,
            num_windows_);
  const uint64_t old_epoch = state_.epoch;
  state_ = s;
  if (s.epoch != old_epoch) shuffle_epoch();
}

std::vector<int64_t> validation_windows(const TokenStream& stream, int seq_len,
                                        int64_t max_windows) {
  MOE_CHECK(seq_len > 0, "validation_windows: seq_len {} must be positive", seq_len);
  const int64_t w = seq_len + 1;
  const int64_t total = stream.size() / w;
  const int64_t count = max_windows > 0 ? std::min(total, max_windows) : total;
  // A subset is spread evenly over the split, so every domain is measured, not only the first.
  std::vector<int64_t> starts(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) starts[k] = (k * total / count) * w;
  return starts;
}

}  // namespace moe
