// Token streams, the shuffled training sampler and validation windows.
#include "moe/dataset.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "moe/error.h"
#include "moe/rng.h"

namespace moe {

std::vector<std::string> domain_names_of(const std::vector<const std::vector<Document>*>& lists) {
  std::set<std::string> names;
  for (const auto* l : lists)
    for (const auto& d : *l) names.insert(d.domain);
  MOE_CHECK(names.size() <= 256, "{} domains do not fit the uint8 domain index", names.size());
  return std::vector<std::string>(names.begin(), names.end());
}

TokenStream tokenize_documents(const std::vector<Document>& docs, const Tokenizer& tok,
                               const std::vector<std::string>& domain_names) {
  MOE_CHECK(domain_names.size() <= 256, "{} domains do not fit the uint8 domain index",
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

  TokenStream s;
  s.domain_names = domain_names;
  size_t total = 0;
  for (const auto& e : encoded) total += e.size() + 2;
  s.tokens.reserve(total);
  s.domain.reserve(total);
  for (size_t i = 0; i < docs.size(); ++i) {
    s.tokens.push_back(tok.bos_id());
    s.tokens.insert(s.tokens.end(), encoded[i].begin(), encoded[i].end());
    s.tokens.push_back(tok.eos_id());
    s.domain.insert(s.domain.end(), encoded[i].size() + 2, doc_domain[i]);
  }
  return s;
}

BatchSampler::BatchSampler(const TokenStream& stream, int batch, int seq_len, uint64_t seed)
    : stream_(stream), batch_(batch), seq_len_(seq_len), seed_(seed) {
  MOE_CHECK(batch > 0 && seq_len > 0, "BatchSampler: batch {} and seq_len {} must be positive",
            batch, seq_len);
  MOE_CHECK(stream.domain.size() == stream.tokens.size(),
            "BatchSampler: {} domain entries for {} tokens", stream.domain.size(),
            stream.tokens.size());
  const auto n = static_cast<int64_t>(stream.tokens.size());
  MOE_CHECK(n >= seq_len + 1, "BatchSampler: the stream has {} tokens, fewer than one window of {}",
            n, seq_len + 1);
  // Window w covers tokens [w*S, w*S + S]; the last one must end inside the stream.
  num_windows_ = (n - 1) / seq_len;
  shuffle_epoch();
}

void BatchSampler::shuffle_epoch() {
  order_.resize(static_cast<size_t>(num_windows_));
  for (int64_t i = 0; i < num_windows_; ++i) order_[i] = i;
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
    const int64_t start = order_[state_.cursor++] * seq_len_;
    std::memcpy(tokens + b * w, stream_.tokens.data() + start, w * sizeof(int32_t));
    std::memcpy(domains + b * w, stream_.domain.data() + start, w);
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
  const int64_t total = static_cast<int64_t>(stream.tokens.size()) / w;
  const int64_t count = max_windows > 0 ? std::min(total, max_windows) : total;
  // A subset is spread evenly over the split, so every domain is measured, not only the first.
  std::vector<int64_t> starts(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) starts[k] = (k * total / count) * w;
  return starts;
}

}  // namespace moe
