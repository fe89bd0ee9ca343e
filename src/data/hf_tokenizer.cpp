// Hugging Face tokenizer.json (byte-level BPE) read into a ByteLevelBpeSpec, and the choice of
// a checkpoint's tokenizer. tools/reference/hf_tokenizer_reference.py is an independent Python
// implementation that generates the test fixtures.
#include "moe/hf_tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/input_file.h"
#include "data/byte_level_bpe.h"
#include "moe/error.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json parse_json_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(fmt::format("{}: file not found", path));
  return read_json_file(path, kMaxTokenizerFileBytes);
}

// Reads one tokenizer.json; every problem is an Error naming the file and the JSON field.
class HfSpecReader {
 public:
  explicit HfSpecReader(const std::string& path) : path_(path) {
    spec_.source = path;
    spec_.kind = "hf byte-level bpe";
    spec_.vocab_field = "model.vocab";
    spec_.merges_field = "model.merges";
  }

  ByteLevelBpeSpec read() {
    const json j = parse_json_file(path_);
    try {
      load(j);
    } catch (const json::exception& e) {
      // A field of the wrong JSON type; the crate would refuse the file too.
      throw Error(fmt::format("{}: unexpected JSON structure: {}", path_, e.what()));
    }
    load_bos_eos();
    return std::move(spec_);
  }

 private:
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

  void load_normalizer(const json& n, const std::string& field) {
    const std::string type = type_of(n);
    if (n.is_null()) return;
    if (type == "NFC") {
      spec_.nfc = true;
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
          spec_.splits.push_back({pat.at("Regex").get<std::string>(), false, field + ".pattern"});
        else if (pat.contains("String"))
          spec_.splits.push_back({pat.at("String").get<std::string>(), true, field + ".pattern"});
        else
          fail(field + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
      } else if (type == "ByteLevel" && !have_byte_level) {
        have_byte_level = true;
        spec_.add_prefix_space = s.value("add_prefix_space", true);
        spec_.gpt2_regex = s.value("use_regex", true);
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
    spec_.ignore_merges = model.value("ignore_merges", false);
    spec_.fuse_unk = model.value("fuse_unk", false);

    const json& vocab = model.at("vocab");
    if (!vocab.is_object()) fail("model.vocab", "expected an object");
    spec_.vocab.reserve(vocab.size());
    for (const auto& [tok, idj] : vocab.items()) {
      const int32_t id = token_id(idj, "model.vocab", fmt::format("id of \"{}\":", tok));
      spec_.vocab.emplace_back(tok, id);
      max_id_ = std::max(max_id_, id);
    }
    const json& unk = model.value("unk_token", json());
    if (!unk.is_null()) {
      spec_.unk_id = vocab_id(unk.get<std::string>());
      if (spec_.unk_id < 0) fail("model.unk_token", "not in model.vocab");
    }

    const json& merges = model.at("merges");
    if (!merges.is_array()) fail("model.merges", "expected an array");
    spec_.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      BpeMerge mg;
      mg.index = i;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        if (s.rfind("#version", 0) == 0) continue;  // legacy merges.txt header line
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail(fmt::format("model.merges[{}]", i), fmt::format("\"{}\" is not \"a b\"", s));
        mg.left = s.substr(0, sp);
        mg.right = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2) {
        mg.left = m[0].get<std::string>();
        mg.right = m[1].get<std::string>();
      } else {
        fail(fmt::format("model.merges[{}]", i), "expected \"a b\" or [a, b]");
      }
      spec_.merges.push_back(std::move(mg));
    }

    const json& added = j.contains("added_tokens") ? j.at("added_tokens") : kNull;
    if (!added.is_null() && !added.is_array()) fail("added_tokens", "expected an array");
    spec_.added.reserve(added.size());
    for (size_t i = 0; i < added.size(); ++i) {
      const json& a = added[i];
      BpeAddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = token_id(a.at("id"), fmt::format("added_tokens[{}].id", i), "id");
      t.special = a.value("special", false);
      t.single_word = a.value("single_word", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.normalized = a.value("normalized", !t.special);
      max_id_ = std::max(max_id_, t.id);
      spec_.added.push_back(t);
    }
    if (max_id_ < 0) fail("model.vocab", "empty vocabulary");
  }

  int32_t vocab_id(const std::string& tok) const {
    int32_t id = -1;  // the last entry wins, as in the tokenizer's map
    for (const auto& [t, i] : spec_.vocab)
      if (t == tok) id = i;
    return id;
  }
  int32_t vocab_size() const { return max_id_ + 1; }

  // The special tokens' ids from tokenizer_config.json, else config.json, next to the file;
  // the chat template from tokenizer_config.json.
  void load_bos_eos() {
    const fs::path dir = fs::path(path_).parent_path();
    const std::string tc = (dir / "tokenizer_config.json").string();
    const std::string cfg = (dir / "config.json").string();
    std::error_code ec;
    json tcj, cfgj;
    if (fs::is_regular_file(tc, ec)) tcj = parse_json_file(tc);
    if (fs::is_regular_file(cfg, ec)) cfgj = parse_json_file(cfg);
    spec_.bos_id = special_id(tcj, tc, cfgj, cfg, "bos");
    spec_.eos_id = special_id(tcj, tc, cfgj, cfg, "eos");
    if (tcj.is_object() && tcj.contains("chat_template")) {
      const json& ct = tcj.at("chat_template");
      if (ct.is_string()) {
        spec_.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {
        // Named templates [{"name", "template"}]: the "default" one is the chat template.
        for (const json& e : ct)
          if (e.is_object() && e.value("name", json()) == "default" && e.contains("template") &&
              e.at("template").is_string())
            spec_.chat_template = e.at("template").get<std::string>();
      } else if (!ct.is_null()) {
        throw Error(fmt::format("{}: chat_template: expected a string or a list", tc));
      }
    }
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
      for (const BpeAddedToken& t : spec_.added)
        if (t.content == content) return t.id;
      if (const int32_t id = vocab_id(content); id >= 0) return id;
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

  std::string path_;
  ByteLevelBpeSpec spec_;
  int32_t max_id_ = -1;
};

}  // namespace

ByteLevelBpeSpec read_hf_byte_level_bpe(const std::string& path) {
  return HfSpecReader(path).read();
}

std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& path) {
  return make_byte_level_bpe(read_hf_byte_level_bpe(path));
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