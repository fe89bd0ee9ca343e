// Tokenizers in GGUF metadata, both ways. Key names, token types and the tokenizer.ggml.pre
// regexes are llama.cpp's (gguf-py constants, src/llama-vocab.cpp, convert_hf_to_gguf.py).
// Reading: "llama" becomes a sentencepiece ModelProto (serialized here by hand: Debian's
// libsentencepiece-dev ships no proto headers) run by the sentencepiece library; "gpt2" becomes
// the byte-level BPE of byte_level_bpe.cpp with the pre-tokenizer's regexes as Split steps.
#include "moe/gguf_tokenizer.h"

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/input_file.h"
#include "data/byte_level_bpe.h"
#include "data/sentencepiece_file.h"
#include "moe/error.h"
#include "moe/hf_tokenizer.h"
#include "moe/utf8.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// llama.cpp's token types (gguf-py TokenType); sentencepiece's piece types use the same numbers.
enum TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

// The tokenizer.ggml.pre values llama.cpp knows, with its regexes (llama-vocab.cpp,
// llm_tokenizer_bpe). Names that share regexes share an entry. ignore_merges: llama.cpp takes a
// pre-token that is a whole token as is for the Llama 3 family.
struct PreTokenizer {
  std::vector<const char*> names;
  std::vector<const char*> regexes;
  bool ignore_merges = false;
};

constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const std::vector<PreTokenizer>& pre_tokenizers() {
  static const std::vector<PreTokenizer> table = {
      {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Regex, R"(\p{N}+)", "[0-9][0-9][0-9]"}, false},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {kLlama3Regex}, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Regex}, false},
      {{"chatglm-bpe"}, {kLlama3Regex}, false},
      {{"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en", "jina-v2-es",
        "jina-v2-de", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais"},
       {kGpt2Regex},
       false},
      {{"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"}, {kQwen2Regex}, false},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
       {R"(\p{N})", kGpt2Regex},
       false},
      {{"deepseek-v3"},
       {R"(\p{N}{1,3})", "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
        R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
       false},
      {{"tekken"},
       {R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
       true},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Regex, "[0-9][0-9][0-9]"}, false},
      {{"deepseek-coder"},
       {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+",
        R"(\p{N})"},
       false},
      {{"poro-chat", "bloom", "gpt3-finnish"},
       {" ?[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+"},
       false},
      {{"viking"},
       {" ?[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+", R"(\p{N})"},
       false},
  };
  return table;
}

const PreTokenizer* find_pre_tokenizer(const std::string& name) {
  for (const PreTokenizer& p : pre_tokenizers())
    for (const char* n : p.names)
      if (name == n) return &p;
  return nullptr;
}

std::string supported_pre_names() {
  std::string out;
  for (const PreTokenizer& p : pre_tokenizers())
    for (const char* n : p.names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

[[noreturn]] void fail(const GgufFile& f, const std::string& key, const std::string& what) {
  throw Error(fmt::format("{}: {}: {}", f.path(), key, what));
}

// An optional token id key: -1 when absent; must name a token.
int32_t optional_id(const GgufFile& f, const std::string& key, size_t n_tokens) {
  if (!f.has(key)) return -1;
  int64_t v = 0;
  try {
    v = f.value(key).as_int();
  } catch (const Error& e) {
    fail(f, key, e.what());
  }
  if (v < 0 || static_cast<uint64_t>(v) >= n_tokens)
    fail(f, key, fmt::format("{} is not a token id in [0, {})", v, n_tokens));
  return static_cast<int32_t>(v);
}

std::vector<int32_t> token_types(const GgufFile& f, size_t n_tokens) {
  const std::string key = "tokenizer.ggml.token_type";
  if (!f.has(key)) return std::vector<int32_t>(n_tokens, kNormal);  // optional in llama.cpp
  std::vector<int32_t> types = f.i32s(key);
  if (types.size() != n_tokens)
    fail(f, key, fmt::format("has {} entries for {} tokens", types.size(), n_tokens));
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] == 0) types[i] = kNormal;  // UNDEFINED in llama.cpp, treated as a plain token
    if (types[i] < kNormal || types[i] > kByte)
      fail(f, fmt::format("{}[{}]", key, i), fmt::format("unknown token type {}", types[i]));
  }
  return types;
}

// ---- protobuf wire format, the few ModelProto fields sentencepiece needs ----

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_tag(std::string& out, int field, int wire) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire));
}
// int32, bool and enum fields: varints; a negative int32 is sign-extended to 64 bits.
void put_int(std::string& out, int field, int64_t v) {
  put_tag(out, field, 0);
  put_varint(out, static_cast<uint64_t>(v));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_float(std::string& out, int field, float v) {
  put_tag(out, field, 5);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

// Reads the next field of a serialized message; false at the end or on malformed input
// (`ok` tells which).
struct WireField {
  uint64_t field = 0;
  int wire = 0;
  uint64_t varint = 0;
  std::string_view bytes;
};
bool get_varint(std::string_view& in, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    const auto b = static_cast<uint8_t>(in[0]);
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}
bool next_field(std::string_view& in, WireField& f, bool& ok) {
  ok = true;
  if (in.empty()) return false;
  uint64_t key;
  ok = get_varint(in, key);
  if (!ok) return false;
  f.field = key >> 3;
  f.wire = static_cast<int>(key & 7);
  size_t len = 0;
  switch (f.wire) {
    case 0:
      ok = get_varint(in, f.varint);
      return ok;
    case 1:
      len = 8;
      break;
    case 5:
      len = 4;
      break;
    case 2: {
      uint64_t n;
      ok = get_varint(in, n) && n <= in.size();
      if (!ok) return false;
      len = static_cast<size_t>(n);
      break;
    }
    default:
      ok = false;
      return false;
  }
  ok = len <= in.size();
  if (!ok) return false;
  f.bytes = in.substr(0, len);
  in.remove_prefix(len);
  return true;
}

// What the sentencepiece library does not expose of a model file: each piece's type and the
// normalizer's add_dummy_prefix / remove_extra_whitespaces (both default true).
struct SpmFileFacts {
  std::vector<int32_t> types;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true;
};
SpmFileFacts read_spm_file_facts(const std::string& path) {
  const std::string bytes = read_file_bounded(path, kMaxTokenizerFileBytes);
  SpmFileFacts facts;
  std::string_view in(bytes);
  WireField f;
  bool ok = true;
  while (next_field(in, f, ok)) {
    if (f.field == 1 && f.wire == 2) {  // a piece
      int32_t type = kNormal;
      std::string_view p = f.bytes;
      WireField g;
      while (next_field(p, g, ok))
        if (g.field == 3 && g.wire == 0) type = static_cast<int32_t>(g.varint);
      if (!ok) break;
      facts.types.push_back(type);
    } else if (f.field == 3 && f.wire == 2) {  // normalizer_spec
      std::string_view p = f.bytes;
      WireField g;
      while (next_field(p, g, ok)) {
        if (g.field == 3 && g.wire == 0) facts.add_dummy_prefix = g.varint != 0;
        if (g.field == 4 && g.wire == 0) facts.remove_extra_whitespaces = g.varint != 0;
      }
      if (!ok) break;
    }
  }
  if (!ok)
    throw Error(fmt::format("{}: not a valid sentencepiece model (malformed protobuf)", path));
  return facts;
}

struct SpmSettings {
  bool byte_fallback = false, add_dummy_prefix = true, remove_extra_whitespaces = false;
  int32_t unk_id = -1, bos_id = -1, eos_id = -1, pad_id = -1;
};

// sentencepiece_model.proto: ModelProto { repeated SentencePiece pieces = 1 {piece = 1,
// score = 2, type = 3}; TrainerSpec trainer_spec = 2 {model_type = 3 (BPE = 2),
// vocab_size = 4, byte_fallback = 35, unk/bos/eos/pad_id = 40..43, unk/bos/eos/pad_piece =
// 45..48}; NormalizerSpec normalizer_spec = 3 {name = 1, add_dummy_prefix = 3,
// remove_extra_whitespaces = 4, escape_whitespaces = 5} }.
std::string spm_model_proto(const std::vector<std::string>& tokens,
                            const std::vector<float>& scores, const std::vector<int32_t>& types,
                            const SpmSettings& s) {
  std::string model, piece;
  for (size_t i = 0; i < tokens.size(); ++i) {
    piece.clear();
    put_bytes(piece, 1, tokens[i]);
    put_float(piece, 2, scores[i]);
    put_int(piece, 3, types[i]);
    put_bytes(model, 1, piece);
  }
  std::string trainer;
  put_int(trainer, 3, 2);
  put_int(trainer, 4, static_cast<int64_t>(tokens.size()));
  put_int(trainer, 35, s.byte_fallback);
  const int32_t ids[4] = {s.unk_id, s.bos_id, s.eos_id, s.pad_id};
  for (int k = 0; k < 4; ++k) {
    put_int(trainer, 40 + k, ids[k]);
    // The processor finds bos/eos/unk/pad by these piece strings.
    if (ids[k] >= 0) put_bytes(trainer, 45 + k, tokens[static_cast<size_t>(ids[k])]);
  }
  put_bytes(model, 2, trainer);
  std::string norm;
  put_bytes(norm, 1, "identity");
  put_int(norm, 3, s.add_dummy_prefix);
  put_int(norm, 4, s.remove_extra_whitespaces);
  put_int(norm, 5, 1);
  put_bytes(model, 3, norm);
  return model;
}

// A "llama" vocabulary run by the sentencepiece library. bos/eos are the GGUF's.
class GgufSentencePiece final : public Tokenizer {
 public:
  GgufSentencePiece(const GgufFile& f, std::vector<std::string> tokens)
      : path_(f.path()), n_(static_cast<int>(tokens.size())) {
    const size_t n = tokens.size();
    std::vector<float> scores(n, 0.0f);
    if (f.has("tokenizer.ggml.scores")) {
      scores = f.f32s("tokenizer.ggml.scores");
      if (scores.size() != n)
        fail(f, "tokenizer.ggml.scores",
             fmt::format("has {} entries for {} tokens", scores.size(), n));
    }
    std::vector<int32_t> types = token_types(f, n);
    SpmSettings s;
    s.unk_id = optional_id(f, "tokenizer.ggml.unknown_token_id", n);
    s.bos_id = optional_id(f, "tokenizer.ggml.bos_token_id", n);
    s.eos_id = optional_id(f, "tokenizer.ggml.eos_token_id", n);
    // The padding id is only recorded; an out-of-range one is dropped as llama.cpp drops it
    // (published files have them), where a bad bos/eos/unk id is an error.
    if (f.has("tokenizer.ggml.padding_token_id")) {
      int64_t v = -1;
      try {
        v = f.value("tokenizer.ggml.padding_token_id").as_int();
      } catch (const Error&) {
        // not an integer: dropped like an out-of-range one
      }
      s.pad_id = v >= 0 && static_cast<uint64_t>(v) < n ? static_cast<int32_t>(v) : -1;
    }
    if (s.unk_id >= 0) types[static_cast<size_t>(s.unk_id)] = kUnknown;
    int n_unknown = 0, n_byte = 0;
    for (size_t i = 0; i < n; ++i) {
      if (types[i] == kUnknown) {
        ++n_unknown;
        if (s.unk_id < 0) s.unk_id = static_cast<int32_t>(i);
      }
      n_byte += types[i] == kByte;
      // sentencepiece's trie cannot hold an empty piece.
      if (tokens[i].empty()) fail(f, fmt::format("tokenizer.ggml.tokens[{}]", i), "empty token");
    }
    if (n_unknown != 1)
      fail(f, "tokenizer.ggml.token_type",
           fmt::format("a sentencepiece vocabulary needs exactly one unknown token (type 2), "
                       "found {}",
                       n_unknown));
    s.byte_fallback = n_byte == 256;
    if (f.has("tokenizer.ggml.add_space_prefix"))
      s.add_dummy_prefix = f.boolean("tokenizer.ggml.add_space_prefix");
    if (f.has("tokenizer.ggml.remove_extra_whitespaces"))
      s.remove_extra_whitespaces = f.boolean("tokenizer.ggml.remove_extra_whitespaces");
    bos_ = s.bos_id;
    eos_ = s.eos_id;
    if (f.has("tokenizer.chat_template")) chat_template_ = f.string("tokenizer.chat_template");

    const std::string proto = spm_model_proto(tokens, scores, types, s);
    sentencepiece::util::Status status;
    try {
      status = sp_.LoadFromSerializedProto(absl::string_view(proto.data(), proto.size()));
    } catch (const std::exception& e) {
      status = sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal, e.what());
    }
    if (!status.ok())
      fail(f, "tokenizer.ggml.tokens",
           fmt::format("not a valid sentencepiece vocabulary: {}", status.ToString()));
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(absl::string_view(text.data(), text.size()), &ids);
    MOE_CHECK(status.ok(), "{}: encode failed: {}", path_, status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    for (int32_t id : ids)
      MOE_REQUIRE(id >= 0 && id < n_, "{}: id {} out of range [0, {})", path_, id, n_);
    std::string out;
    const auto status = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    MOE_CHECK(status.ok(), "{}: decode failed: {}", path_, status.ToString());
    return out;
  }
  int vocab_size() const override { return n_; }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  std::string description() const override {
    return fmt::format("gguf llama (sentencepiece) {} ({})", n_, path_);
  }
  std::string chat_template() const override { return chat_template_; }

 private:
  std::string path_, chat_template_;
  int n_;
  int32_t bos_ = -1, eos_ = -1;
  sentencepiece::SentencePieceProcessor sp_;
};

// A "gpt2" vocabulary as a ByteLevelBpeSpec: CONTROL and USER_DEFINED tokens are added tokens
// (matched whole first), UNUSED ones (padding rows) name no token.
std::unique_ptr<Tokenizer> load_gguf_bpe(const GgufFile& f, std::vector<std::string> tokens) {
  const size_t n = tokens.size();
  const std::vector<int32_t> types = token_types(f, n);
  ByteLevelBpeSpec spec;
  spec.source = f.path();
  spec.kind = "gguf gpt2 (byte-level bpe)";
  spec.vocab_field = "tokenizer.ggml.tokens";
  spec.merges_field = "tokenizer.ggml.merges";
  spec.min_vocab_size = static_cast<int32_t>(n);

  const std::string pre =
      f.has("tokenizer.ggml.pre") ? f.string("tokenizer.ggml.pre") : std::string("default");
  const PreTokenizer* p = find_pre_tokenizer(pre);
  if (!p)
    fail(f, "tokenizer.ggml.pre",
         fmt::format("unsupported pre-tokenizer \"{}\" (supported: {})", pre,
                     supported_pre_names()));
  for (const char* re : p->regexes) spec.splits.push_back({re, false, "tokenizer.ggml.pre"});
  spec.ignore_merges = p->ignore_merges;

  spec.vocab.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    if (types[i] == kUnused) continue;
    if (types[i] == kControl || types[i] == kUserDefined) {
      BpeAddedToken t;
      t.content = tokens[i];
      t.id = id;
      t.special = types[i] == kControl;
      spec.added.push_back(std::move(t));
    }
    spec.vocab.emplace_back(std::move(tokens[i]), id);
  }
  if (!f.has("tokenizer.ggml.merges")) fail(f, "tokenizer.ggml.merges", "missing");
  const std::vector<std::string> merges = f.strings("tokenizer.ggml.merges");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& m = merges[i];
    const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos)
      fail(f, fmt::format("tokenizer.ggml.merges[{}]", i), fmt::format("\"{}\" is not \"a b\"", m));
    spec.merges.push_back({m.substr(0, sp), m.substr(sp + 1), i});
  }
  spec.unk_id = optional_id(f, "tokenizer.ggml.unknown_token_id", n);
  spec.bos_id = optional_id(f, "tokenizer.ggml.bos_token_id", n);
  spec.eos_id = optional_id(f, "tokenizer.ggml.eos_token_id", n);
  if (f.has("tokenizer.chat_template")) spec.chat_template = f.string("tokenizer.chat_template");
  return make_byte_level_bpe(std::move(spec));
}

// ---- writing ----

void set_id(GgufWriter& w, const char* key, int32_t id) {
  if (id >= 0) w.set(key, GgufValue::u32(static_cast<uint32_t>(id)));
}

// A sentencepiece model file as llama.cpp's SPM vocabulary ("llama"): same pieces, scores and
// types, so sentencepiece's ids come back, and the normalizer's dummy prefix and whitespace
// folding (the NFKC rules of a precompiled charsmap have no GGUF key; llama.cpp ignores them
// too). Padded with UNUSED "[PAD<i>]" tokens up to min_tokens, as convert_hf_to_gguf.py does.
// Returns the token count.
int32_t write_sentencepiece_vocab(GgufWriter& w, const std::string& path, int32_t min_tokens) {
  sentencepiece::SentencePieceProcessor sp;
  load_sentencepiece_file(sp, path);
  const int n = sp.GetPieceSize();
  const int total = std::max(n, min_tokens);
  std::vector<std::string> tokens(total);
  std::vector<float> scores(total, 0.0f);
  std::vector<int32_t> types(total, kUnused);
  for (int i = 0; i < n; ++i) {
    tokens[i] = sp.IdToPiece(i);
    scores[i] = sp.GetScore(i);
    types[i] = sp.IsUnknown(i)   ? kUnknown
               : sp.IsControl(i) ? kControl
               : sp.IsUnused(i)  ? kUnused
               : sp.IsByte(i)    ? kByte
                                 : kNormal;
  }
  const SpmFileFacts facts = read_spm_file_facts(path);
  if (facts.types.size() != static_cast<size_t>(n))
    throw Error(fmt::format("{}: not a valid sentencepiece model: {} pieces, {} read", path, n,
                            facts.types.size()));
  for (int i = 0; i < n; ++i)
    if (facts.types[i] == kUserDefined)
      types[i] = kUserDefined;  // the library has no IsUserDefined
  for (int i = n; i < total; ++i) tokens[i] = fmt::format("[PAD{}]", i);

  w.set("tokenizer.ggml.model", GgufValue::string("llama"));
  w.set("tokenizer.ggml.pre", GgufValue::string("default"));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(std::move(tokens)));
  w.set("tokenizer.ggml.scores", GgufValue::f32s(scores));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
  set_id(w, "tokenizer.ggml.bos_token_id", sp.bos_id());
  set_id(w, "tokenizer.ggml.eos_token_id", sp.eos_id());
  set_id(w, "tokenizer.ggml.unknown_token_id", sp.unk_id());
  set_id(w, "tokenizer.ggml.padding_token_id", sp.pad_id());
  w.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(facts.add_dummy_prefix));
  w.set("tokenizer.ggml.remove_extra_whitespaces",
        GgufValue::boolean(facts.remove_extra_whitespaces));
  return total;
}

// The byte tokenizer (ids 0..255 the bytes, 256 BOS, 257 EOS) as a GPT-2 byte-level BPE
// vocabulary ("gpt2") with no merges: every byte is its own token. Not the "llama" SPM type:
// llama.cpp's SPM path rewrites ' ' as U+2581 before lookup, which would give the three bytes
// of U+2581 instead of byte 0x20.
// Ids past 257 (a random-weight model's larger vocabulary) are printable fillers "<tN>": normal
// tokens that text never tokenizes to, so generated ids show in llama.cpp's and moe's output alike.
int32_t write_byte_vocab(GgufWriter& w, int vocab_size = 258) {
  MOE_CHECK(vocab_size >= 258, "byte vocabulary of {} < 258 tokens", vocab_size);
  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  for (int b = 0; b < 256; ++b) tokens[b] = utf8_encode(gpt2_byte_chars()[b]);
  tokens[256] = "<s>";
  tokens[257] = "</s>";
  for (int i = 258; i < vocab_size; ++i) tokens[i] = fmt::format("<t{}>", i);
  std::vector<int32_t> types(static_cast<size_t>(vocab_size), kNormal);
  types[256] = types[257] = kControl;
  w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.set("tokenizer.ggml.pre", GgufValue::string("default"));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(std::move(tokens)));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
  w.set("tokenizer.ggml.merges", GgufValue::strings({}));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(256));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(257));
  return vocab_size;
}

json read_json_if_present(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec) ? read_json_file(path) : json();
}

// The tokenizer.ggml.pre name convert_hf_to_gguf.py would give this pre-tokenizer. It picks by
// a hash of the tokenization of a check text; we pick by the pre-tokenizer definition, which
// is what that hash tells apart (names with identical regexes differ only by model family).
std::string pre_name_of(const ByteLevelBpeSpec& s, const std::string& model_type,
                        const std::string& json_path) {
  std::string name;
  if (s.splits.empty() && s.gpt2_regex && !s.add_prefix_space) {
    name = model_type.rfind("olmo", 0) == 0 ? "olmo" : "gpt-2";
  } else if (s.splits.size() == 1 && !s.gpt2_regex && !s.add_prefix_space && !s.splits[0].literal) {
    // The patterns as tokenizer.json spells them (llama.cpp rewrites (?i:...) by hand).
    const std::string& p = s.splits[0].pattern;
    const std::string contractions = R"((?i:'s|'t|'re|'ve|'m|'ll|'d))";
    const std::string tail = R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    if (p == contractions + R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|)" + tail) {
      name = "qwen2";
    } else if (p == contractions + R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)" + tail) {
      // Llama 3 takes whole-word tokens as is (ignore_merges); DBRX's tokenizer does not.
      name = s.ignore_merges ? "llama-bpe" : model_type == "dbrx" ? "dbrx" : "smaug-bpe";
    }
  }
  if (name.empty())
    throw Error(fmt::format(
        "{}: pre_tokenizer: matches none of llama.cpp's pre-tokenizers (tokenizer.ggml.pre); "
        "supported here: ByteLevel with the GPT-2 regex, or one Split with the Qwen2 or Llama 3 "
        "regex before ByteLevel",
        json_path));
  if (s.ignore_merges && !find_pre_tokenizer(name)->ignore_merges)
    throw Error(fmt::format(
        "{}: model.ignore_merges: true, but llama.cpp's pre-tokenizer \"{}\" applies the merges "
        "to every word, so its ids would differ",
        json_path, name));
  return name;
}

int32_t write_hf_bpe_vocab(GgufWriter& w, const std::string& json_path, const json& config,
                           const json& tok_config) {
  ByteLevelBpeSpec spec = read_hf_byte_level_bpe(json_path);
  const std::string model_type = config.is_object() ? config.value("model_type", "") : "";
  const std::string pre = pre_name_of(spec, model_type, json_path);

  int32_t n = 0;
  for (const auto& [tok, id] : spec.vocab) n = std::max(n, id + 1);
  for (const auto& t : spec.added) n = std::max(n, t.id + 1);
  if (config.is_object() && config.contains("vocab_size") &&
      config.at("vocab_size").is_number_integer()) {
    const int64_t v = config.at("vocab_size").get<int64_t>();
    if (v > n && v <= std::numeric_limits<int32_t>::max()) n = static_cast<int32_t>(v);
  }
  std::vector<std::string> tokens(static_cast<size_t>(n));
  std::vector<int32_t> types(static_cast<size_t>(n), kUnused);
  for (auto& [tok, id] : spec.vocab) {
    tokens[static_cast<size_t>(id)] = tok;
    types[static_cast<size_t>(id)] = kNormal;
  }
  for (const auto& t : spec.added) {
    const bool looks_special = t.content.rfind("<|", 0) == 0 && t.content.size() >= 4 &&
                               t.content.compare(t.content.size() - 2, 2, "|>") == 0;
    tokens[static_cast<size_t>(t.id)] = t.content;
    types[static_cast<size_t>(t.id)] = t.special || looks_special ? kControl : kUserDefined;
  }
  for (int32_t i = 0; i < n; ++i)
    if (types[static_cast<size_t>(i)] == kUnused)
      tokens[static_cast<size_t>(i)] = fmt::format("[PAD{}]", i);
  std::vector<std::string> merges;
  merges.reserve(spec.merges.size());
  for (const BpeMerge& m : spec.merges) merges.push_back(m.left + " " + m.right);

  w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.set("tokenizer.ggml.pre", GgufValue::string(pre));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(std::move(tokens)));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
  w.set("tokenizer.ggml.merges", GgufValue::strings(std::move(merges)));
  set_id(w, "tokenizer.ggml.bos_token_id", spec.bos_id);
  set_id(w, "tokenizer.ggml.eos_token_id", spec.eos_id);
  set_id(w, "tokenizer.ggml.unknown_token_id", spec.unk_id);
  if (tok_config.is_object()) {
    // pad_token, as gguf-py's SpecialVocab reads it: a token string looked up among the tokens.
    const json& pad = tok_config.value("pad_token", json());
    std::string content = pad.is_string() ? pad.get<std::string>()
                          : pad.is_object() && pad.value("content", json()).is_string()
                              ? pad.at("content").get<std::string>()
                              : std::string();
    if (!content.empty())
      for (const auto& t : spec.added)
        if (t.content == content) set_id(w, "tokenizer.ggml.padding_token_id", t.id);
  }
  if (!spec.chat_template.empty())
    w.set("tokenizer.chat_template", GgufValue::string(spec.chat_template));
  return n;
}

}  // namespace

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufFile& f) {
  const std::string model = f.string("tokenizer.ggml.model");
  std::vector<std::string> tokens = f.strings("tokenizer.ggml.tokens");
  if (tokens.empty()) fail(f, "tokenizer.ggml.tokens", "no tokens");
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    fail(f, "tokenizer.ggml.tokens", "too many tokens");
  if (model == "llama") return std::make_unique<GgufSentencePiece>(f, std::move(tokens));
  if (model == "gpt2") return load_gguf_bpe(f, std::move(tokens));
  fail(f, "tokenizer.ggml.model",
       fmt::format("unsupported tokenizer \"{}\" (supported: llama, gpt2)", model));
}

bool gguf_adds_bos(const GgufFile& f, const Tokenizer& tok) {
  if (f.has("tokenizer.ggml.add_bos_token"))
    return f.boolean("tokenizer.ggml.add_bos_token") && tok.bos_id() >= 0;
  return tok.bos_id() >= 0;
}

int32_t add_gguf_tokenizer_of_hf_dir(GgufWriter& w, const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(fmt::format("{}: not a directory", dir));
  const std::string json_path = (fs::path(dir) / "tokenizer.json").string();
  const std::string model_path = (fs::path(dir) / "tokenizer.model").string();
  const json config = read_json_if_present((fs::path(dir) / "config.json").string());
  const json tok_config = read_json_if_present((fs::path(dir) / "tokenizer_config.json").string());
  const bool has_model = fs::is_regular_file(model_path, ec);
  int32_t n = -1;
  if (fs::is_regular_file(json_path, ec)) {
    try {
      n = write_hf_bpe_vocab(w, json_path, config, tok_config);
    } catch (const Error&) {
      // Mixtral/Llama ship a sentencepiece-style tokenizer.json next to tokenizer.model.
      if (!has_model) throw;
    }
  }
  if (n < 0) {
    if (!has_model)
      throw Error(fmt::format("{}: no tokenizer.json or tokenizer.model in the directory", dir));
    int32_t min_tokens = 0;
    if (config.is_object() && config.contains("vocab_size") &&
        config.at("vocab_size").is_number_integer())
      min_tokens = static_cast<int32_t>(std::clamp<int64_t>(
          config.at("vocab_size").get<int64_t>(), 0, std::numeric_limits<int32_t>::max()));
    n = write_sentencepiece_vocab(w, model_path, min_tokens);
    if (tok_config.is_object() && tok_config.value("chat_template", json()).is_string())
      w.set("tokenizer.chat_template",
            GgufValue::string(tok_config.at("chat_template").get<std::string>()));
  }
  if (tok_config.is_object())
    for (const char* k : {"add_bos_token", "add_eos_token"})
      if (tok_config.value(k, json()).is_boolean())
        w.set(fmt::format("tokenizer.ggml.{}", k),
              GgufValue::boolean(tok_config.at(k).get<bool>()));
  return n;
}

int32_t add_gguf_tokenizer_of_run(GgufWriter& w, const std::string& tokenizer_model_path) {
  const int32_t n = tokenizer_model_path.empty()
                        ? write_byte_vocab(w)
                        : write_sentencepiece_vocab(w, tokenizer_model_path, 0);
  // Training documents are BOS + text + EOS and `moe generate` starts from BOS.
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(true));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
  return n;
}

void add_gguf_byte_tokenizer(GgufWriter& w, int vocab_size) {
  write_byte_vocab(w, vocab_size);
}

}  // namespace moe
