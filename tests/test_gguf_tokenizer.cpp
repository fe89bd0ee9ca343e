// Tokenizers through GGUF metadata: each source tokenizer (the Hugging Face byte-level BPE
// fixtures with the checkpoint fixtures' configs, sentencepiece models with the settings of a
// run and of Mixtral/Llama, the byte tokenizer) is written with add_gguf_tokenizer_*, read back
// with load_gguf_tokenizer, and must give the original tokenizer's ids and decodes on a varied
// text set; the keys written are llama.cpp's; bad metadata is one error line naming the file
// and the key.
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "moe/gguf.h"
#include "moe/gguf_tokenizer.h"
#include "moe/hf_tokenizer.h"
#include "moe/tokenizer.h"
#include "test_util.h"

namespace moe {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::string kFixtures = MOE_FIXTURE_DIR;

// Texts every tokenizer must encode identically through GGUF. All are NFC-stable and free of
// NFKC-only forms: llama.cpp's "gpt2" applies no normalizer, and GGUF has no key for one.
const std::vector<std::string>& texts() {
  static const std::vector<std::string> t = {
      "Hello, world! The quick brown fox jumps over the lazy dog.",
      "I'm sure you'll see they've said DON'T and we'd go",
      "def route(x):\n    if x > 0:\n        return [i * 2 for i in range(10)]\n\treturn None\n",
      "混合专家模型在中央处理器上运行。日本語のテキストも。한국어 문장",
      "emoji 🙂 family 👨\u200d👩\u200d👧 flag 🇩🇪 done",
      "   three leading spaces and two trailing  ",
      " one leading space",
      "\n\nnewlines\r\n\r\nend\n",
      "digits 1234567 and 3.14159, 2026-12-06",
      "punctuation!!! ... ??? --- (([{}])) <tag> a/b\\c",
      "Grüße, café, naïve, Ελληνικά, русский текст",
      "tabs\tand\t\tspaces    mixed \t end",
      "x",
      "",
  };
  return t;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json read_json(const std::string& path) {
  return json::parse(read_text(path));
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string write_gguf(const test::TempDir& dir, const std::string& name,
                       const std::function<void(GgufWriter&)>& fill) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  fill(w);
  const std::string path = dir.file(name);
  w.write(path);
  return path;
}

// The original and the GGUF-read tokenizer agree on every text (and on `extra`): ids, and the
// decode of those ids.
void expect_same_tokenizer(const Tokenizer& orig, const Tokenizer& gg,
                           const std::vector<std::string>& extra = {}) {
  EXPECT_EQ(gg.vocab_size(), orig.vocab_size());
  EXPECT_EQ(gg.bos_id(), orig.bos_id());
  EXPECT_EQ(gg.eos_id(), orig.eos_id());
  std::vector<std::string> all = texts();
  all.insert(all.end(), extra.begin(), extra.end());
  for (const std::string& s : all) {
    SCOPED_TRACE(s);
    const auto ids = orig.encode(s);
    EXPECT_EQ(gg.encode(s), ids);
    EXPECT_EQ(gg.decode(ids), orig.decode(ids));
  }
}

// A checkpoint directory: a tokenizer fixture's tokenizer.json next to a checkpoint fixture's
// config.json.
// The gpt2_style fixture takes whole-word tokens as is (ignore_merges, as Llama 3 does), which
// llama.cpp does only for "llama-bpe": it goes through GGUF with ignore_merges off (and the
// writer refuses it as is: BadMetadataNamesFileAndKey).
void make_hf_dir(const test::TempDir& d, const std::string& style, const std::string& checkpoint) {
  json j = read_json(kFixtures + "/tokenizer/" + style + "/tokenizer.json");
  j["model"]["ignore_merges"] = false;
  write_text(d.file("tokenizer.json"), j.dump());
  fs::copy_file(kFixtures + "/hf/" + checkpoint + "/config.json", d.file("config.json"));
}

TEST(GgufTokenizer, HfByteLevelBpeFixturesRoundTrip) {
  struct Case {
    const char *style, *checkpoint, *pre;
    std::vector<std::string> specials;
  };
  const Case cases[] = {
      {"qwen2_style",
       "qwen2_moe",
       "qwen2",
       {"<|im_start|>user\nhello<|im_end|>\n", "text<|endoftext|>more", "<|im_end|><|im_end|>"}},
      {"gpt2_style", "olmoe", "olmo", {"a<|endoftext|>b <|padding|>", "<|endoftext|>"}},
      {"qwen2_style", "qwen3_moe", "qwen2", {"<|im_start|>assistant"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.style) + " with " + c.checkpoint);
    test::TempDir d("gguf_tok_hf");
    make_hf_dir(d, c.style, c.checkpoint);
    const auto orig = load_tokenizer_dir(d.str());
    int32_t n = 0;
    const std::string path = write_gguf(
        d, "t.gguf", [&](GgufWriter& w) { n = add_gguf_tokenizer_of_hf_dir(w, d.str()); });
    EXPECT_EQ(n, orig->vocab_size());
    const GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.string("tokenizer.ggml.model"), "gpt2");
    EXPECT_EQ(f.string("tokenizer.ggml.pre"), c.pre);
    const auto tokens = f.strings("tokenizer.ggml.tokens");
    const auto types = f.i32s("tokenizer.ggml.token_type");
    ASSERT_EQ(tokens.size(), static_cast<size_t>(n));
    ASSERT_EQ(types.size(), tokens.size());
    // Added special tokens are CONTROL (3), the rest NORMAL (1).
    const json tj = read_json(d.file("tokenizer.json"));
    for (const auto& a : tj["added_tokens"]) {
      const int id = a["id"].get<int>();
      EXPECT_EQ(tokens[id], a["content"].get<std::string>());
      EXPECT_EQ(types[id], 3);
    }
    EXPECT_EQ(types[0], 1);
    // Merges exactly as tokenizer.json lists them.
    const auto merges = f.strings("tokenizer.ggml.merges");
    ASSERT_EQ(merges.size(), tj["model"]["merges"].size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = tj["model"]["merges"][i];
      EXPECT_EQ(merges[i], m.is_string() ? m.get<std::string>()
                                         : m[0].get<std::string>() + " " + m[1].get<std::string>());
    }

    const auto gg = load_gguf_tokenizer(f);
    EXPECT_NE(gg->description().find("gguf gpt2"), std::string::npos);
    expect_same_tokenizer(*orig, *gg, c.specials);
    // Plain text round-trips.
    for (const std::string& s : texts()) EXPECT_EQ(gg->decode(gg->encode(s)), s);
    // Invalid UTF-8: both replace the bad bytes by U+FFFD before tokenizing.
    const std::string bad = "bad \xff\xfe bytes \xc3 end";
    EXPECT_EQ(gg->encode(bad), orig->encode(bad));
  }
}

TEST(GgufTokenizer, HfDirPaddingTemplateAndAddBos) {
  test::TempDir d("gguf_tok_cfg");
  fs::copy_file(kFixtures + "/tokenizer/qwen2_style/tokenizer.json", d.file("tokenizer.json"));
  // More embedding rows than tokens (as Qwen2's 151936 > 151665 tokens).
  write_text(d.file("config.json"), R"({"model_type": "qwen2_moe", "vocab_size": 870})");
  const std::string tmpl =
      "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}";
  json tc = {{"bos_token", nullptr},
             {"eos_token", "<|im_end|>"},
             {"pad_token", "<|endoftext|>"},
             {"add_bos_token", false},
             {"chat_template", tmpl}};
  write_text(d.file("tokenizer_config.json"), tc.dump());
  const auto orig = load_tokenizer_dir(d.str());
  const std::string path = write_gguf(d, "t.gguf", [&](GgufWriter& w) {
    EXPECT_EQ(add_gguf_tokenizer_of_hf_dir(w, d.str()), 870);
  });
  const GgufFile f = GgufFile::open(path);
  const auto tokens = f.strings("tokenizer.ggml.tokens");
  const auto types = f.i32s("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 870u);
  EXPECT_EQ(tokens[869], "[PAD869]");
  EXPECT_EQ(types[869], 5);  // UNUSED
  EXPECT_FALSE(f.has("tokenizer.ggml.bos_token_id"));
  EXPECT_EQ(f.u32("tokenizer.ggml.eos_token_id"), 858u);
  EXPECT_EQ(f.u32("tokenizer.ggml.padding_token_id"), 856u);
  EXPECT_FALSE(f.boolean("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(f.string("tokenizer.chat_template"), tmpl);

  const auto gg = load_gguf_tokenizer(f);
  EXPECT_EQ(gg->vocab_size(), 870);
  EXPECT_EQ(gg->bos_id(), -1);
  EXPECT_EQ(gg->eos_id(), 858);
  EXPECT_EQ(gg->chat_template(), tmpl);
  EXPECT_EQ(orig->chat_template(), tmpl);
  EXPECT_FALSE(gguf_adds_bos(f, *gg));
  EXPECT_EQ(gg->decode({869}), "");  // a padding row names no token
  for (const std::string& s : texts()) EXPECT_EQ(gg->encode(s), orig->encode(s)) << s;
}

// A sentencepiece BPE model trained on a small mixed corpus with the given extra options.
std::string train_spm(const test::TempDir& dir, const std::string& name, const std::string& opts) {
  const std::string corpus = dir.file(name + ".txt");
  std::ofstream out(corpus);
  for (int r = 0; r < 30; ++r) {
    out << "the quick brown fox jumps over the lazy dog " << r << "\n";
    out << "def main():    return expert_router(x)  # routing\n";
    out << "混合专家模型在中央处理器上运行。日本語のテキスト\n";
    out << "Grüße, café, naïve, Ελληνικά, русский текст\n";
  }
  out.close();
  const std::string prefix = dir.file(name);
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + corpus + " --model_prefix=" + prefix +
      " --model_type=bpe --vocab_size=500 --minloglevel=2 --num_threads=1 --byte_fallback=true "
      "--character_coverage=0.99 " +
      opts);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return prefix + ".model";
}

void expect_spm_round_trip(const test::TempDir& dir, const std::string& model, bool run) {
  const auto orig = load_sentencepiece_model(model);
  const std::string path =
      write_gguf(dir, fs::path(model).stem().string() + ".gguf", [&](GgufWriter& w) {
        const int32_t n =
            run ? add_gguf_tokenizer_of_run(w, model)
                : add_gguf_tokenizer_of_hf_dir(w, fs::path(model).parent_path().string());
        EXPECT_EQ(n, orig->vocab_size());
      });
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.string("tokenizer.ggml.model"), "llama");
  const auto gg = load_gguf_tokenizer(f);
  EXPECT_NE(gg->description().find("gguf llama"), std::string::npos);
  expect_same_tokenizer(
      *orig, *gg, {"bad \xff\xfe bytes \xc3 end", "<s> and </s> in text", "tokens_USER_here"});
}

TEST(GgufTokenizer, SentencePieceModelsRoundTrip) {
  test::TempDir dir("gguf_tok_spm");
  {
    SCOPED_TRACE("a run's model (train_sentencepiece settings)");
    std::vector<Document> docs;
    for (int r = 0; r < 30; ++r) {
      docs.push_back({"en", "the quick brown fox jumps over the lazy dog " + std::to_string(r)});
      docs.push_back({"code", "def main():\n    return expert_router(x)\n"});
      docs.push_back({"zh", "混合专家模型在中央处理器上运行。"});
    }
    const std::string model = dir.file("run.model");
    train_sentencepiece(docs, model, 400);
    expect_spm_round_trip(dir, model, true);
    const std::string path =
        write_gguf(dir, "run2.gguf", [&](GgufWriter& w) { add_gguf_tokenizer_of_run(w, model); });
    const GgufFile f = GgufFile::open(path);
    EXPECT_FALSE(f.boolean("tokenizer.ggml.add_space_prefix"));
    EXPECT_FALSE(f.boolean("tokenizer.ggml.remove_extra_whitespaces"));
    EXPECT_TRUE(gguf_adds_bos(f, *load_gguf_tokenizer(f)));
    // A run's model round-trips text exactly, through GGUF too.
    const auto gg = load_gguf_tokenizer(f);
    for (const std::string& s : texts()) EXPECT_EQ(gg->decode(gg->encode(s)), s) << s;
  }
  struct Variant {
    const char* name;
    std::string opts;
    bool prefix, fold;
  };
  const Variant variants[] = {
      // Mixtral/Llama: identity normalizer, dummy prefix, spaces kept, byte fallback.
      {"mixtral_like",
       "--normalization_rule_name=identity --add_dummy_prefix=true "
       "--remove_extra_whitespaces=false --user_defined_symbols=_USER_",
       true, false},
      // Whitespace folding on, no dummy prefix.
      {"folding", "--normalization_rule_name=identity --add_dummy_prefix=false", false, true},
  };
  for (const Variant& v : variants) {
    SCOPED_TRACE(v.name);
    test::TempDir d(std::string("gguf_tok_") + v.name);
    const std::string model = train_spm(d, "tokenizer", v.opts);
    expect_spm_round_trip(d, model, false);
    const std::string path =
        write_gguf(d, "k.gguf", [&](GgufWriter& w) { add_gguf_tokenizer_of_hf_dir(w, d.str()); });
    const GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.boolean("tokenizer.ggml.add_space_prefix"), v.prefix);
    EXPECT_EQ(f.boolean("tokenizer.ggml.remove_extra_whitespaces"), v.fold);
    const auto tokens = f.strings("tokenizer.ggml.tokens");
    const auto types = f.i32s("tokenizer.ggml.token_type");
    EXPECT_EQ(types[0], 2);
    EXPECT_EQ(types[1], 3);
    const auto it = std::find(tokens.begin(), tokens.end(), "_USER_");
    if (std::string(v.name) == "mixtral_like") {
      ASSERT_NE(it, tokens.end());
      EXPECT_EQ(types[it - tokens.begin()], 4);  // USER_DEFINED
    }
  }
}

TEST(GgufTokenizer, ByteTokenizerRoundTrip) {
  test::TempDir dir("gguf_tok_byte");
  const auto orig = make_byte_tokenizer();
  const std::string path = write_gguf(
      dir, "b.gguf", [&](GgufWriter& w) { EXPECT_EQ(add_gguf_tokenizer_of_run(w, ""), 258); });
  const GgufFile f = GgufFile::open(path);
  const auto gg = load_gguf_tokenizer(f);
  expect_same_tokenizer(*orig, *gg);
  for (const std::string& s : texts()) EXPECT_EQ(gg->decode(gg->encode(s)), s);
  // As in llama.cpp (special tokens parsed), BOS/EOS text is the control token, and invalid
  // UTF-8 is replaced before tokenizing: the two places the byte tokenizer differs.
  EXPECT_EQ(gg->encode("<s>"), std::vector<int32_t>{256});
  EXPECT_EQ(gg->encode("\xff"), orig->encode("\xEF\xBF\xBD"));
  EXPECT_TRUE(gguf_adds_bos(f, *gg));
}

// Every tokenizer.ggml.pre llama.cpp knows (llama-vocab.cpp) compiles and splits text into
// pieces that cover it: with the byte vocabulary (no merges) the ids are the text's bytes.
TEST(GgufTokenizer, EveryPreTokenizerCompiles) {
  test::TempDir d("gguf_tok_pre");
  const auto byte = make_byte_tokenizer();
  for (const char* pre : {"default",
                          "llama3",
                          "llama-v3",
                          "llama-bpe",
                          "falcon3",
                          "dbrx",
                          "smaug-bpe",
                          "chatglm-bpe",
                          "gpt-2",
                          "phi-2",
                          "jina-es",
                          "jina-de",
                          "gigachat",
                          "jina-v1-en",
                          "jina-v2-es",
                          "jina-v2-de",
                          "jina-v2-code",
                          "roberta-bpe",
                          "mpt",
                          "olmo",
                          "jais",
                          "qwen2",
                          "deepseek-r1-qwen",
                          "megrez",
                          "stablelm2",
                          "starcoder",
                          "refact",
                          "command-r",
                          "smollm",
                          "codeshell",
                          "exaone",
                          "minerva-7b",
                          "deepseek-v3",
                          "tekken",
                          "falcon",
                          "deepseek-coder",
                          "poro-chat",
                          "bloom",
                          "gpt3-finnish",
                          "viking"}) {
    SCOPED_TRACE(pre);
    const std::string path = write_gguf(d, std::string(pre) + ".gguf", [&](GgufWriter& w) {
      add_gguf_tokenizer_of_run(w, "");
      w.set("tokenizer.ggml.pre", GgufValue::string(pre));
    });
    const auto t = load_gguf_tokenizer(GgufFile::open(path));
    for (const std::string& s : texts()) EXPECT_EQ(t->encode(s), byte->encode(s)) << s;
  }
}

// Every bad file is one line naming the file and the key.
void expect_bad(const std::string& path, const std::string& key, const std::string& what = "") {
  const std::string msg = test::error_of([&] { load_gguf_tokenizer(GgufFile::open(path)); });
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find(key), std::string::npos) << msg;
  EXPECT_NE(msg.find(what), std::string::npos) << msg;
}

TEST(GgufTokenizer, BadMetadataNamesFileAndKey) {
  test::TempDir d("gguf_tok_bad");
  make_hf_dir(d, "qwen2_style", "qwen2_moe");
  GgufWriter good;
  add_gguf_tokenizer_of_hf_dir(good, d.str());
  auto variant = [&](const std::string& name, const std::function<void(GgufWriter&)>& edit) {
    GgufWriter w = good;
    edit(w);
    const std::string path = d.file(name);
    w.write(path);
    return path;
  };
  const GgufFile ok = GgufFile::open(variant("ok.gguf", [](GgufWriter&) {}));
  ASSERT_NO_THROW(load_gguf_tokenizer(ok));
  const auto tokens = ok.strings("tokenizer.ggml.tokens");
  auto merges = ok.strings("tokenizer.ggml.merges");

  expect_bad(write_gguf(d, "none.gguf", [](GgufWriter&) {}), "tokenizer.ggml.model");
  expect_bad(
      write_gguf(d, "notokens.gguf",
                 [](GgufWriter& w) { w.set("tokenizer.ggml.model", GgufValue::string("gpt2")); }),
      "tokenizer.ggml.tokens");
  expect_bad(
      variant("model.gguf",
              [](GgufWriter& w) { w.set("tokenizer.ggml.model", GgufValue::string("bert")); }),
      "tokenizer.ggml.model", "bert");
  expect_bad(
      variant("pre.gguf",
              [](GgufWriter& w) { w.set("tokenizer.ggml.pre", GgufValue::string("mystery-7b")); }),
      "tokenizer.ggml.pre", "mystery-7b");
  merges[3] = "no_such_token x";
  expect_bad(
      variant("merge.gguf",
              [&](GgufWriter& w) { w.set("tokenizer.ggml.merges", GgufValue::strings(merges)); }),
      "tokenizer.ggml.merges[3]", "no_such_token");
  merges[3] = "nospace";
  expect_bad(
      variant("merge2.gguf",
              [&](GgufWriter& w) { w.set("tokenizer.ggml.merges", GgufValue::strings(merges)); }),
      "tokenizer.ggml.merges[3]");
  expect_bad(variant("nomerges.gguf",
                     [&](GgufWriter& w) { w.set("tokenizer.ggml.merges", GgufValue::u32(1)); }),
             "tokenizer.ggml.merges");
  expect_bad(variant("types.gguf",
                     [](GgufWriter& w) {
                       w.set("tokenizer.ggml.token_type", GgufValue::i32s({1, 1}));
                     }),
             "tokenizer.ggml.token_type");
  std::vector<int32_t> types(tokens.size(), 1);
  types[7] = 9;
  expect_bad(
      variant("type9.gguf",
              [&](GgufWriter& w) { w.set("tokenizer.ggml.token_type", GgufValue::i32s(types)); }),
      "tokenizer.ggml.token_type[7]");
  expect_bad(
      variant("bos.gguf",
              [](GgufWriter& w) { w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(100000)); }),
      "tokenizer.ggml.bos_token_id", "100000");
  expect_bad(variant("tokens.gguf",
                     [](GgufWriter& w) { w.set("tokenizer.ggml.tokens", GgufValue::strings({})); }),
             "tokenizer.ggml.tokens");

  // "llama": needs one unknown piece; pieces must be unique.
  auto spm = [&](const std::string& name, std::vector<std::string> toks, std::vector<int32_t> ty) {
    return write_gguf(d, name, [&](GgufWriter& w) {
      w.set("tokenizer.ggml.model", GgufValue::string("llama"));
      w.set("tokenizer.ggml.scores", GgufValue::f32s(std::vector<float>(toks.size(), 0.0f)));
      w.set("tokenizer.ggml.tokens", GgufValue::strings(toks));
      w.set("tokenizer.ggml.token_type", GgufValue::i32s(ty));
    });
  };
  expect_bad(spm("nounk.gguf", {"a", "b", "c"}, {1, 1, 1}), "tokenizer.ggml.token_type", "unknown");
  expect_bad(spm("dup.gguf", {"<unk>", "a", "a"}, {2, 1, 1}), "tokenizer.ggml.tokens");
  expect_bad(spm("empty.gguf", {"<unk>", "", "a"}, {2, 1, 1}), "tokenizer.ggml.tokens[1]");
  // A minimal valid one works.
  const auto t = load_gguf_tokenizer(
      GgufFile::open(spm("min.gguf", {"<unk>", "\xE2\x96\x81", "a"}, {2, 1, 1})));
  EXPECT_EQ(t->encode("a a"), (std::vector<int32_t>{1, 2, 1, 2}));
  // An out-of-range padding id is dropped (llama.cpp does the same; published files have
  // them); a bad bos id is an error.
  auto min_with = [&](const std::string& name, const char* key) {
    return write_gguf(d, name, [&](GgufWriter& w) {
      w.set("tokenizer.ggml.model", GgufValue::string("llama"));
      w.set("tokenizer.ggml.tokens", GgufValue::strings({"<unk>", "\xE2\x96\x81", "a"}));
      w.set("tokenizer.ggml.token_type", GgufValue::i32s({2, 1, 1}));
      w.set(key, GgufValue::u32(3));
    });
  };
  EXPECT_EQ(
      load_gguf_tokenizer(GgufFile::open(min_with("pad.gguf", "tokenizer.ggml.padding_token_id")))
          ->encode("a"),
      (std::vector<int32_t>{1, 2}));
  expect_bad(min_with("badbos.gguf", "tokenizer.ggml.bos_token_id"), "tokenizer.ggml.bos_token_id");

  // Writing: a tokenizer.json whose pre-tokenizer llama.cpp has no name for.
  test::TempDir d2("gguf_tok_bad_pre");
  json j = read_json(kFixtures + "/tokenizer/gpt2_style/tokenizer.json");
  GgufWriter w;
  write_text(d2.file("tokenizer.json"), j.dump());
  EXPECT_MOE_ERROR(add_gguf_tokenizer_of_hf_dir(w, d2.str()), "tokenizer.json",
                   "model.ignore_merges", "gpt-2");
  j["model"]["ignore_merges"] = false;
  j["pre_tokenizer"]["add_prefix_space"] = true;
  write_text(d2.file("tokenizer.json"), j.dump());
  EXPECT_MOE_ERROR(add_gguf_tokenizer_of_hf_dir(w, d2.str()), "tokenizer.json", "pre_tokenizer");
  EXPECT_MOE_ERROR(add_gguf_tokenizer_of_hf_dir(w, d2.file("nodir")), "nodir");
  EXPECT_MOE_ERROR(add_gguf_tokenizer_of_run(w, d2.file("missing.model")), "missing.model");
}

// The fuzz seeds are working tokenizers, so fuzzing starts from files that get past the checks.
TEST(GgufTokenizer, FuzzSeedsLoad) {
  const std::string seeds =
      fs::path(kFixtures).parent_path().string() + "/fuzz/seeds/gguf_tokenizer";
  const auto gpt2 = load_gguf_tokenizer(GgufFile::open(seeds + "/gpt2.gguf"));
  EXPECT_EQ(gpt2->encode(" the<|endoftext|>"), (std::vector<int32_t>{260, 261}));
  EXPECT_EQ(gpt2->chat_template(), "{{ messages }}");
  const auto llama = load_gguf_tokenizer(GgufFile::open(seeds + "/llama.gguf"));
  EXPECT_EQ(llama->encode("the"), std::vector<int32_t>{265});
  EXPECT_EQ(llama->encode("\n"), (std::vector<int32_t>{259, 3 + '\n'}));  // byte fallback
  EXPECT_EQ(llama->decode({1, 265, 2}), "the");
  const auto byte = load_gguf_tokenizer(GgufFile::open(seeds + "/byte.gguf"));
  EXPECT_EQ(byte->encode("ab"), (std::vector<int32_t>{'a', 'b'}));
}

}  // namespace
}  // namespace moe
