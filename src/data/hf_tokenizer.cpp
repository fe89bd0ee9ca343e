// Hugging Face tokenizer.json (byte-level BPE), and the choice of a checkpoint's tokenizer.
// The byte-level pipeline follows the Rust `tokenizers` crate step by step (added_vocabulary.rs,
// normalizers, pre_tokenizers/{split,byte_level}.rs, models/bpe/{model,word}.rs,
// decoders/byte_level.rs); tools/reference/hf_tokenizer_reference.py is an independent Python
// implementation that generates the test fixtures.
#include "moe/hf_tokenizer.h"

#include <fmt/format.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/input_file.h"
#include "moe/error.h"
#include "moe/utf8.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// GPT-2's pattern, which ByteLevel(use_regex = true) applies.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

json parse_json_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(fmt::format("{}: file not found", path));
  return read_json_file(path, kMaxTokenizerFileBytes);
}

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

struct AddedToken {
  std::string content;  // what is matched: NFC'd content for normalized tokens
  int32_t id = -1;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
};

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

class HfByteLevelBpe final : public Tokenizer {
 public:
  explicit HfByteLevelBpe(const std::string& path) : path_(path) {
    const json j = parse_json_file(path);
    try {
      load(j);
    } catch (const json::exception& e) {
      // A field of the wrong JSON type; the crate would refuse the file too.
      throw Error(fmt::format("{}: unexpected JSON structure: {}", path_, e.what()));
    }
    load_bos_eos();
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
    return fmt::format("hf byte-level bpe {} ({})", vocab_size(), path_);
  }

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

  // A token id: a JSON integer in [0, 2^31 - 1], as the crate's u32 ids that fit our int32.
  // (get<int64_t>() would truncate a fraction, and converting a float beyond int64's range
  // is undefined behaviour: fuzz finding tests/fuzz/regressions/fuzz_hf_tokenizer/.)
  int32_t token_id(const json& v, const std::string& field, const std::string& what) const {
    if (!v.is_number_integer()) fail(field, fmt::format("{} {} is not an integer", what, v.dump()));
    const bool in_range =
        v.is_number_unsigned()
            ? v.get<uint64_t>() <= std::numeric_limits<int32_t>::max()
            : v.get<int64_t>() >= 0 && v.get<int64_t>() <= std::numeric_limits<int32_t>::max();
    if (!in_range) fail(field, fmt::format("{} {} out of range", what, v.dump()));
    return static_cast<int32_t>(v.get<int64_t>());
  }

  static std::string type_of(const json& j) {
    if (!j.is_object()) return j.is_null() ? "null" : j.dump();
    auto it = j.find("type");
    return it != j.end() && it->is_string() ? it->get<std::string>() : "(no type)";
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

  void load_normalizer(const json& n, const std::string& field) {
    const std::string type = type_of(n);
    if (n.is_null()) return;
    if (type == "NFC") {
      nfc_ = true;
    } else if (type == "Sequence") {
      const json& list = n.at("normalizers");
      for (size_t i = 0; i < list.size(); ++i)
        load_normalizer(list[i], fmt::format("{}.normalizers[{}]", field, i));
    } else {
      fail(field + ".type",
           fmt::format("unsupported normalizer \"{}\" (supported: null, NFC)", type));
    }
  }

  void load_pre_tokenizer(const json& p) {
    std::vector<const json*> steps;
    std::vector<std::string> fields;
    if (type_of(p) == "Sequence") {
      const json& list = p.at("pretokenizers");
      for (size_t i = 0; i < list.size(); ++i) {
        steps.push_back(&list[i]);
        fields.push_back(fmt::format("pre_tokenizer.pretokenizers[{}]", i));
      }
    } else {
      steps.push_back(&p);
      fields.push_back("pre_tokenizer");
    }
    bool have_byte_level = false;
    for (size_t i = 0; i < steps.size(); ++i) {
      const json& s = *steps[i];
      const std::string type = type_of(s);
      const std::string& field = fields[i];
      if (type == "Split" && !have_byte_level) {
        if (s.value("behavior", std::string()) != "Isolated")
          fail(field + ".behavior",
               fmt::format("unsupported Split behavior {} (supported: Isolated)",
                           s.value("behavior", json()).dump()));
        if (s.value("invert", false)) fail(field + ".invert", "inverted Split is not supported");
        const json& pat = s.at("pattern");
        if (pat.contains("Regex"))
          splits_.push_back(compile(pat.at("Regex").get<std::string>(), false, field + ".pattern"));
        else if (pat.contains("String"))
          splits_.push_back(compile(pat.at("String").get<std::string>(), true, field + ".pattern"));
        else
          fail(field + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
      } else if (type == "ByteLevel" && !have_byte_level) {
        have_byte_level = true;
        add_prefix_space_ = s.value("add_prefix_space", true);
        if (s.value("use_regex", true)) gpt2_ = compile(kGpt2Pattern, false, field);
      } else {
        fail(field + ".type",
             fmt::format("unsupported pre-tokenizer \"{}\" (supported: ByteLevel, or a Sequence "
                         "of Split(Isolated) steps ending in ByteLevel)",
                         type));
      }
    }
    if (!have_byte_level) fail("pre_tokenizer", "a byte-level BPE needs a ByteLevel pre-tokenizer");
  }

  void load(const json& j) {
    if (!j.is_object()) fail("(top level)", "expected a JSON object");
    static const json kNull;
    const json& model = j.contains("model") ? j.at("model") : kNull;
    if (type_of(model) != "BPE")
      fail("model.type", fmt::format("unsupported model \"{}\" (supported: BPE)", type_of(model)));
    load_normalizer(j.value("normalizer", json()), "normalizer");
    load_pre_tokenizer(j.value("pre_tokenizer", json()));
    const json& dec = j.value("decoder", json());
    if (type_of(dec) != "ByteLevel")
      fail("decoder.type",
           fmt::format("unsupported decoder \"{}\" (supported: ByteLevel)", type_of(dec)));
    // post_processor only adds special tokens around encodings (and trims offsets), which
    // encode() never does, so any kind is accepted and ignored.

    if (model.value("byte_fallback", false)) fail("model.byte_fallback", "must be false");
    const json& dropout = model.value("dropout", json());
    if (!dropout.is_null() && dropout.get<double>() != 0.0)
      fail("model.dropout", "BPE dropout is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const json& v = model.value(key, json());
      if (!v.is_null() && !v.get<std::string>().empty())
        fail(fmt::format("model.{}", key), "must be null or empty for byte-level BPE");
    }
    ignore_merges_ = model.value("ignore_merges", false);
    fuse_unk_ = model.value("fuse_unk", false);

    const json& vocab = model.at("vocab");
    if (!vocab.is_object()) fail("model.vocab", "expected an object");
    int32_t max_id = -1;
    vocab_.reserve(vocab.size());
    for (const auto& [tok, idj] : vocab.items()) {
      const int32_t id = token_id(idj, "model.vocab", fmt::format("id of \"{}\":", tok));
      vocab_[tok] = id;
      max_id = std::max(max_id, id);
    }
    const json& unk = model.value("unk_token", json());
    if (!unk.is_null()) {
      auto it = vocab_.find(unk.get<std::string>());
      if (it == vocab_.end()) fail("model.unk_token", "not in model.vocab");
      unk_id_ = it->second;
    }

    const json& merges = model.at("merges");
    if (!merges.is_array()) fail("model.merges", "expected an array");
    merges_.reserve(merges.size());
    int32_t rank = 0;
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        if (s.rfind("#version", 0) == 0) continue;  // legacy merges.txt header line
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail(fmt::format("model.merges[{}]", i), fmt::format("\"{}\" is not \"a b\"", s));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        fail(fmt::format("model.merges[{}]", i), "expected \"a b\" or [a, b]");
      }
      const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
      if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end())
        fail(fmt::format("model.merges[{}]", i),
             fmt::format("\"{}\", \"{}\" or \"{}\" is not in model.vocab", a, b, a + b));
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

    const json& added = j.contains("added_tokens") ? j.at("added_tokens") : kNull;
    if (!added.is_null() && !added.is_array()) fail("added_tokens", "expected an array");
    added_.reserve(added.size());  // stable addresses for the matchers
    for (size_t i = 0; i < added.size(); ++i) {
      const json& a = added[i];
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = token_id(a.at("id"), fmt::format("added_tokens[{}].id", i), "id");
      t.special = a.value("special", false);
      t.single_word = a.value("single_word", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.normalized = a.value("normalized", !t.special);
      max_id = std::max(max_id, t.id);
      added_.push_back(t);
    }
    if (max_id < 0) fail("model.vocab", "empty vocabulary");

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

  // The special tokens' ids from tokenizer_config.json, else config.json, next to the file.
  void load_bos_eos() {
    const fs::path dir = fs::path(path_).parent_path();
    const std::string tc = (dir / "tokenizer_config.json").string();
    const std::string cfg = (dir / "config.json").string();
    std::error_code ec;
    json tcj, cfgj;
    if (fs::is_regular_file(tc, ec)) tcj = parse_json_file(tc);
    if (fs::is_regular_file(cfg, ec)) cfgj = parse_json_file(cfg);
    bos_ = special_id(tcj, tc, cfgj, cfg, "bos");
    eos_ = special_id(tcj, tc, cfgj, cfg, "eos");
  }

  int32_t special_id(const json& tcj, const std::string& tc, const json& cfgj,
                     const std::string& cfg, const std::string& which) const {
    const std::string key = which + "_token";
    if (tcj.is_object() && tcj.contains(key)) {
      const json& v = tcj.at(key);
      if (v.is_null()) return -1;
      std::string content;
      if (v.is_string())
        content = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v.at("content").is_string())
        content = v.at("content").get<std::string>();
      else
        throw Error(fmt::format("{}: {}: expected a string or {{\"content\": ...}}", tc, key));
      for (const AddedToken& t : added_)
        if (t.content == content) return t.id;
      auto it = vocab_.find(content);
      if (it != vocab_.end()) return it->second;
      throw Error(fmt::format("{}: {}: \"{}\" is not a token of {}", tc, key, content, path_));
    }
    const std::string idkey = key + "_id";
    if (cfgj.is_object() && cfgj.contains(idkey)) {
      json v = cfgj.at(idkey);
      if (v.is_array() && !v.empty()) v = v[0];  // e.g. several end-of-turn ids
      if (v.is_null()) return -1;
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab_size())
        throw Error(
            fmt::format("{}: {}: {} is not an id in [0, {})", cfg, idkey, v.dump(), vocab_size()));
      return static_cast<int32_t>(v.get<int64_t>());
    }
    return -1;
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

  std::string path_;
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

std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& path) {
  return std::make_unique<HfByteLevelBpe>(path);
}

std::unique_ptr<Tokenizer> load_tokenizer_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(fmt::format("{}: not a directory", dir));
  const std::string json_path = (fs::path(dir) / "tokenizer.json").string();
  const std::string model_path = (fs::path(dir) / "tokenizer.model").string();
  const bool has_model = fs::is_regular_file(model_path, ec);
  if (fs::is_regular_file(json_path, ec)) {
    try {
      return load_hf_tokenizer_json(json_path);
    } catch (const Error&) {
      // Mixtral/Llama ship a sentencepiece-style tokenizer.json next to tokenizer.model.
      if (!has_model) throw;
    }
  }
  if (has_model) return load_sentencepiece_model(model_path);
  throw Error(fmt::format("{}: no tokenizer.json or tokenizer.model in the directory", dir));
}

bool checkpoint_adds_bos(const std::string& dir, const Tokenizer& tok) {
  const std::string path = (fs::path(dir) / "tokenizer_config.json").string();
  std::error_code ec;
  if (fs::exists(path, ec)) {
    const json j = read_json_file(path);
    if (j.is_object() && j.contains("add_bos_token") && j["add_bos_token"].is_boolean())
      return j["add_bos_token"].get<bool>() && tok.bos_id() >= 0;
  }
  return tok.bos_id() >= 0;
}

}  // namespace moe
