// The byte-level BPE tokenizer built from a ByteLevelBpeSpec. The pipeline follows the Rust
// `tokenizers` crate step by step (added_vocabulary.rs, normalizers, pre_tokenizers/{split,
// byte_level}.rs, models/bpe/{model,word}.rs, decoders/byte_level.rs); llama.cpp's "gpt2"
// vocabulary is the same pipeline with its pre-tokenizer regexes as Split steps.
#include "data/byte_level_bpe.h"

#include <fmt/format.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "moe/error.h"
#include "moe/utf8.h"

namespace moe {
namespace {

// GPT-2's pattern, which ByteLevel(use_regex = true) applies.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Oniguruma (used by the crate) reads \s as Unicode White_Space; ICU's \s is [\t\n\f\r\p{Z}],
// which misses \v and U+0085. Rewrite the escapes so both engines split alike.
std::string onig_to_icu(const std::string& pattern) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      const char c = pattern[++i];
      if (c == 's')
        out += "\\p{White_Space}";
      else if (c == 'S')
        out += "\\P{White_Space}";
      else
        out += {'\\', c};
    } else {
      out += pattern[i];
    }
  }
  return out;
}

// Rust regex's \w: Alphabetic, marks, decimal digits, connector punctuation, joiners.
bool is_word_char(UChar32 c) {
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC)) return true;
  const int8_t t = u_charType(c);
  return t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK || t == U_ENCLOSING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION || c == 0x200C || c == 0x200D;
}
bool is_space_char(UChar32 c) {
  return u_hasBinaryProperty(c, UCHAR_WHITE_SPACE);
}

UChar32 char_before(std::string_view s, size_t pos, size_t* start) {
  int32_t i = static_cast<int32_t>(pos);
  UChar32 c;
  U8_PREV(reinterpret_cast<const uint8_t*>(s.data()), 0, i, c);
  *start = static_cast<size_t>(i);
  return c;
}
UChar32 char_at(std::string_view s, size_t pos, size_t* end) {
  int32_t i = static_cast<int32_t>(pos);
  UChar32 c;
  U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, static_cast<int32_t>(s.size()), c);
  *end = static_cast<size_t>(i);
  return c;
}

// Appends bytes as UTF-8, replacing each maximal invalid subsequence with U+FFFD (the
// Unicode-recommended practice that Rust's from_utf8_lossy and Python's "replace" follow).
std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const int32_t n = static_cast<int32_t>(bytes.size());
  int32_t i = 0;
  while (i < n) {
    const int32_t start = i;
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c < 0)
      out += "\xEF\xBF\xBD";
    else
      out.append(bytes, static_cast<size_t>(start), static_cast<size_t>(i - start));
  }
  return out;
}

using AddedToken = BpeAddedToken;

// Leftmost-longest matching of a set of added tokens, as the crate's aho-corasick
// (MatchKind::LeftmostLongest) does; candidates are bucketed by first byte.
class AddedMatcher {
 public:
  void add(const AddedToken* t) {
    if (t->content.empty()) return;
    auto& bucket = by_first_[static_cast<unsigned char>(t->content[0])];
    bucket.push_back(t);
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken* a, const AddedToken* b) {
      return a->content.size() > b->content.size();
    });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // Calls piece(text, nullptr) for the text between matches and piece(text, token) for each
  // match (widened by lstrip/rstrip), in order.
  template <class Fn>
  void split(std::string_view text, Fn&& piece) const {
    if (empty_) {
      piece(text, nullptr);
      return;
    }
    size_t done = 0, pos = 0;
    while (pos < text.size()) {
      const AddedToken* hit = nullptr;
      for (const AddedToken* t : by_first_[static_cast<unsigned char>(text[pos])]) {
        if (text.compare(pos, t->content.size(), t->content) == 0) {
          hit = t;  // the bucket is longest first
          break;
        }
      }
      if (!hit) {
        ++pos;
        continue;
      }
      size_t start = pos, stop = pos + hit->content.size();
      pos = stop;
      size_t edge;
      if (hit->single_word) {
        const bool word_before = start > 0 && is_word_char(char_before(text, start, &edge));
        const bool word_after = stop < text.size() && is_word_char(char_at(text, stop, &edge));
        if (word_before || word_after) continue;  // the matcher moves on past the discarded match
      }
      if (hit->lstrip) {
        while (start > done && is_space_char(char_before(text, start, &edge))) start = edge;
      }
      if (hit->rstrip) {
        while (stop < text.size() && is_space_char(char_at(text, stop, &edge))) stop = edge;
        pos = stop;
      }
      if (start > done) piece(text.substr(done, start - done), nullptr);
      piece(text.substr(start, stop - start), hit);
      done = stop;
    }
    if (done < text.size()) piece(text.substr(done), nullptr);
  }

 private:
  std::array<std::vector<const AddedToken*>, 256> by_first_;
  bool empty_ = true;
};

class ByteLevelBpe final : public Tokenizer {
 public:
  explicit ByteLevelBpe(ByteLevelBpeSpec spec)
      : path_(std::move(spec.source)),
        kind_(std::move(spec.kind)),
        chat_template_(std::move(spec.chat_template)) {
    build(spec);
  }
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    Matchers m = make_matchers();
    raw_added_.split(text, [&](std::string_view piece, const AddedToken* t) {
      if (t) {
        ids.push_back(t->id);
        return;
      }
      icu::UnicodeString u = icu::UnicodeString::fromUTF8(
          icu::StringPiece(piece.data(), static_cast<int32_t>(piece.size())));
      if (nfc_) u = normalize(u);
      if (normalized_added_.empty()) {
        encode_normalized(u, m, ids);
        return;
      }
      std::string norm;
      u.toUTF8String(norm);
      normalized_added_.split(norm, [&](std::string_view piece2, const AddedToken* t2) {
        if (t2)
          ids.push_back(t2->id);
        else
          encode_normalized(icu::UnicodeString::fromUTF8(icu::StringPiece(
                                piece2.data(), static_cast<int32_t>(piece2.size()))),
                            m, ids);
      });
    });
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string bytes;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size())
        throw Error(fmt::format("{}: id {} out of range [0, {})", path_, id, vocab_size()));
      if (id == bos_ || id == eos_) continue;
      bytes += decoded_[static_cast<size_t>(id)];
    }
    return utf8_lossy(bytes);
  }
  int vocab_size() const override { return static_cast<int>(decoded_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  std::string description() const override {
    return fmt::format("{} {} ({})", kind_, vocab_size(), path_);
  }
  std::string chat_template() const override { return chat_template_; }

 private:
  struct Merge {
    int32_t rank, new_id;
  };
  // ICU matchers are stateful, so every encode() call makes its own from the shared patterns.
  struct Matchers {
    std::vector<std::unique_ptr<icu::RegexMatcher>> splits;
    std::unique_ptr<icu::RegexMatcher> gpt2;
  };

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(fmt::format("{}: {}: {}", path_, field, what));
  }

  std::unique_ptr<icu::RegexPattern> compile(const std::string& pattern, bool literal,
                                             const std::string& field) const {
    UErrorCode status = U_ZERO_ERROR;
    UParseError pe;
    const std::string p = literal ? pattern : onig_to_icu(pattern);
    std::unique_ptr<icu::RegexPattern> re(icu::RegexPattern::compile(
        icu::UnicodeString::fromUTF8(p), literal ? UREGEX_LITERAL : 0, pe, status));
    if (U_FAILURE(status))
      fail(field,
           fmt::format("regex does not compile ({} at offset {})", u_errorName(status), pe.offset));
    return re;
  }

  void build(ByteLevelBpeSpec& spec) {
    nfc_ = spec.nfc;
    for (const BpeSplit& s : spec.splits) splits_.push_back(compile(s.pattern, s.literal, s.field));
    add_prefix_space_ = spec.add_prefix_space;
    if (spec.gpt2_regex) gpt2_ = compile(kGpt2Pattern, false, "pre_tokenizer");
    ignore_merges_ = spec.ignore_merges;
    fuse_unk_ = spec.fuse_unk;
    unk_id_ = spec.unk_id;
    bos_ = spec.bos_id;
    eos_ = spec.eos_id;

    int32_t max_id = spec.min_vocab_size - 1;
    vocab_.reserve(spec.vocab.size());
    for (const auto& [tok, id] : spec.vocab) {
      if (id < 0) fail(spec.vocab_field, fmt::format("id {} of \"{}\" is negative", id, tok));
      vocab_[tok] = id;
      max_id = std::max(max_id, id);
    }

    merges_.reserve(spec.merges.size());
    int32_t rank = 0;
    for (const BpeMerge& m : spec.merges) {
      const auto ia = vocab_.find(m.left), ib = vocab_.find(m.right),
                 iab = vocab_.find(m.left + m.right);
      if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end())
        fail(fmt::format("{}[{}]", spec.merges_field, m.index),
             fmt::format("\"{}\", \"{}\" or \"{}\" is not in {}", m.left, m.right, m.left + m.right,
                         spec.vocab_field));
      // A repeated pair keeps its last rank, as the crate's map does.
      merges_[pair_key(ia->second, ib->second)] = Merge{rank++, iab->second};
    }

    // Byte-level stand-ins: each byte's id (the crate looks the character up per byte).
    const auto& table = gpt2_byte_chars();
    std::unordered_map<char32_t, uint8_t> char_to_byte;
    for (int b = 0; b < 256; ++b) {
      byte_str_[b] = utf8_encode(table[b]);
      auto it = vocab_.find(byte_str_[b]);
      byte_id_[b] = it == vocab_.end() ? -1 : it->second;
      char_to_byte[table[b]] = static_cast<uint8_t>(b);
    }

    added_ = std::move(spec.added);  // stable addresses for the matchers from here on
    for (const AddedToken& t : added_) {
      if (t.id < 0) fail(spec.vocab_field, fmt::format("added token id {} is negative", t.id));
      max_id = std::max(max_id, t.id);
    }
    if (max_id < 0) fail(spec.vocab_field, "empty vocabulary");
    for (int32_t* id : {&bos_, &eos_, &unk_id_})
      if (*id > max_id) fail(spec.vocab_field, fmt::format("special id {} is not a token", *id));

    // Decoded bytes per id: the ByteLevel decoder maps each character back to its byte; a
    // token with any other character (an added token like "<|im_start|>" has none, but one
    // with a space would) contributes its UTF-8 as is.
    decoded_.assign(static_cast<size_t>(max_id) + 1, std::string());
    auto set_decoded = [&](int32_t id, const std::string& tok) {
      std::string out;
      const auto* p = reinterpret_cast<const uint8_t*>(tok.data());
      const int32_t n = static_cast<int32_t>(tok.size());
      for (int32_t i = 0; i < n;) {
        UChar32 c;
        U8_NEXT(p, i, n, c);
        auto it = c < 0 ? char_to_byte.end() : char_to_byte.find(static_cast<char32_t>(c));
        if (it == char_to_byte.end()) {
          out = tok;
          break;
        }
        out.push_back(static_cast<char>(it->second));
      }
      decoded_[static_cast<size_t>(id)] = out;
    };
    for (const auto& [tok, id] : vocab_) set_decoded(id, tok);
    for (AddedToken& t : added_) {
      set_decoded(t.id, t.content);
      if (t.normalized && nfc_) {
        std::string s;
        normalize(icu::UnicodeString::fromUTF8(t.content)).toUTF8String(s);
        t.content = s;
      }
    }
    for (const AddedToken& t : added_) (t.normalized ? normalized_added_ : raw_added_).add(&t);
  }

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  icu::UnicodeString normalize(const icu::UnicodeString& u) const {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    MOE_CHECK(U_SUCCESS(status), "ICU NFC normalizer unavailable: {}", u_errorName(status));
    if (nfc->isNormalized(u, status) && U_SUCCESS(status)) return u;
    status = U_ZERO_ERROR;
    icu::UnicodeString out = nfc->normalize(u, status);
    MOE_CHECK(U_SUCCESS(status), "ICU NFC normalization failed: {}", u_errorName(status));
    return out;
  }

  Matchers make_matchers() const {
    Matchers m;
    UErrorCode status = U_ZERO_ERROR;
    for (const auto& p : splits_) m.splits.emplace_back(p->matcher(status));
    if (gpt2_) m.gpt2.reset(gpt2_->matcher(status));
    MOE_CHECK(U_SUCCESS(status), "ICU matcher creation failed: {}", u_errorName(status));
    return m;
  }

  // Split(Isolated): matches and the gaps between them, in order; empty pieces vanish.
  static void split_isolated(const icu::UnicodeString& s, icu::RegexMatcher& re,
                             std::vector<icu::UnicodeString>& out) {
    UErrorCode status = U_ZERO_ERROR;
    re.reset(s);
    int32_t last = 0;
    while (re.find(status) && U_SUCCESS(status)) {
      const int32_t b = re.start(status), e = re.end(status);
      if (b > last) out.emplace_back(s, last, b - last);
      if (e > b) out.emplace_back(s, b, e - b);
      last = e;
    }
    MOE_CHECK(U_SUCCESS(status), "ICU regex search failed: {}", u_errorName(status));
    if (last < s.length()) out.emplace_back(s, last, s.length() - last);
    // The matcher keeps a reference to its input; point it at a string that outlives it.
    static const icu::UnicodeString kEmpty;
    re.reset(kEmpty);
  }

  // Pre-tokenizes normalized text and appends the BPE ids of every piece.
  void encode_normalized(const icu::UnicodeString& text, Matchers& m,
                         std::vector<int32_t>& ids) const {
    if (text.isEmpty()) return;
    std::vector<icu::UnicodeString> pieces{text}, next;
    for (auto& re : m.splits) {
      next.clear();
      for (const auto& p : pieces) split_isolated(p, *re, next);
      pieces.swap(next);
    }
    // ByteLevel: the prefix space goes on every piece that lacks one, as in the crate.
    if (add_prefix_space_)
      for (auto& p : pieces)
        if (!p.startsWith(icu::UnicodeString(u' '))) p.insert(0, u' ');
    if (m.gpt2) {
      next.clear();
      for (const auto& p : pieces) split_isolated(p, *m.gpt2, next);
      pieces.swap(next);
    }
    std::string bytes;
    for (const auto& p : pieces) {
      bytes.clear();
      p.toUTF8String(bytes);
      bpe(bytes, ids);
    }
  }

  // BPE of one pre-token given as raw UTF-8 bytes (the byte-level stand-ins are implied):
  // repeatedly merge the adjacent pair of lowest rank, leftmost first, with a heap and a linked
  // list as the crate's Word::merge_all does. Results are cached per piece.
  void bpe(const std::string& bytes, std::vector<int32_t>& ids) const {
    if (bytes.empty()) return;
    const bool cacheable = bytes.size() <= kMaxCachedBytes;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(bytes);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> out;
    bpe_uncached(bytes, out);
    ids.insert(ids.end(), out.begin(), out.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (cache_.size() >= kMaxCacheEntries) cache_.clear();
      cache_.emplace(bytes, std::move(out));
    }
  }

  void bpe_uncached(const std::string& bytes, std::vector<int32_t>& out) const {
    if (ignore_merges_) {
      std::string word;
      for (unsigned char b : bytes) word += byte_str_[b];
      auto it = vocab_.find(word);
      if (it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    struct Sym {
      int32_t id, prev, next;
      bool alive;
    };
    std::vector<Sym> sym;
    sym.reserve(bytes.size());
    bool last_unk = false;
    for (unsigned char b : bytes) {
      const int32_t id = byte_id_[b];
      if (id < 0) {
        // Not in the vocabulary: unk (fused with a preceding unk when fuse_unk), or dropped
        // when there is no unk_token, as the crate does.
        if (unk_id_ < 0 || (fuse_unk_ && last_unk)) continue;
        last_unk = true;
        sym.push_back({unk_id_, 0, 0, true});
        continue;
      }
      last_unk = false;
      sym.push_back({id, 0, 0, true});
    }
    const int32_t n = static_cast<int32_t>(sym.size());
    for (int32_t i = 0; i < n; ++i) {
      sym[i].prev = i - 1;
      sym[i].next = i + 1 < n ? i + 1 : -1;
    }
    struct Cand {
      int32_t rank, pos, new_id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int32_t pos) {
      const int32_t nx = sym[pos].next;
      if (nx < 0) return;
      auto it = merges_.find(pair_key(sym[pos].id, sym[nx].id));
      if (it != merges_.end()) heap.push({it->second.rank, pos, it->second.new_id});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& s = sym[c.pos];
      if (!s.alive || s.next < 0) continue;
      // Skip entries made stale by an earlier merge at this position.
      auto it = merges_.find(pair_key(s.id, sym[s.next].id));
      if (it == merges_.end() || it->second.new_id != c.new_id) continue;
      Sym& r = sym[s.next];
      s.id = c.new_id;
      r.alive = false;
      s.next = r.next;
      if (s.next >= 0) sym[s.next].prev = c.pos;
      if (s.prev >= 0) push(s.prev);
      push(c.pos);
    }
    for (const Sym& s : sym)
      if (s.alive) out.push_back(s.id);
  }

  static constexpr size_t kMaxCachedBytes = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 16;

  std::string path_, kind_, chat_template_;
  bool nfc_ = false;
  std::vector<std::unique_ptr<icu::RegexPattern>> splits_;
  std::unique_ptr<icu::RegexPattern> gpt2_;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false, fuse_unk_ = false;
  int32_t unk_id_ = -1;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_id_{};
  std::array<std::string, 256> byte_str_;
  std::vector<AddedToken> added_;
  AddedMatcher raw_added_, normalized_added_;
  std::vector<std::string> decoded_;  // per id; empty for ids that name no token
  int32_t bos_ = -1, eos_ = -1;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_level_bpe(ByteLevelBpeSpec spec) {
  return std::make_unique<ByteLevelBpe>(std::move(spec));
}

}  // namespace moe
