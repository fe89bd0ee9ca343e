// Tests of the data pipeline: corpus collection and cleaning on a fixture tree, the
// deterministic split and the files, tokenizers, token streams, the batch sampler, validation
// windows, prepare_data's cache, and one pass over the real installed corpus.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "moe/corpus.h"
#include "moe/data.h"
#include "moe/dataset.h"
#include "moe/error.h"
#include "moe/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

// ---------------------------------------------------------------------------------------------
// Helpers

using test::TempDir;
using test::write_file;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Fortune-style text with `n` records made from `stem`.
std::string records(const std::string& stem, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += stem + " " + std::to_string(i) + "\n%\n";
  return s;
}

// A small tree shaped like the installed packages, with the traps the real one has.
struct Fixture {
  TempDir dir;
  CorpusOptions opt;

  Fixture() {
    const fs::path f = dir.path() / "fortunes";
    // en: records, an empty record, a blank record, an invalid UTF-8 record, CRLF, a
    // backspace overstrike; the .dat index and .u8 link must be ignored.
    write_file(f / "fortunes",
               "First record.\n\t\t-- Someone\n%\n%\n   \n%\nbad \xC3\x28 byte\n%\n"
               "Windows line\r\nend\r\n%\nbold B\bBold\n%\n" +
                   records("An English fortune", 20));
    write_file(f / "fortunes.dat", std::string("\x00\x01\x02\x03", 4));
    fs::create_symlink("fortunes", f / "fortunes.u8");
    // zh: ANSI colour codes around the attribution, as in fortunes-zh.
    write_file(f / "chinese",
               "\xE4\xBD\xA0\xE5\xA5\xBD\n\x1B[33m-- \xE8\x80\x81\xE5\xAD\x90\x1B[m\n%\n" +
                   records("\xE4\xB8\xAD\xE6\x96\x87", 10));
    write_file(f / "song100", records("\xE5\xAE\x8B\xE8\xAF\x8D", 5));
    write_file(f / "tang300", records("\xE5\x94\x90\xE8\xAF\x97", 5));
    for (const char* lang : {"de", "es", "it", "ru", "pl", "cs"})
      write_file(f / lang / "sprueche", records(std::string("Spruch in ") + lang, 20));
    write_file(f / "es" / "off" / "malo.fortunes", "OFFENSIVE RECORD\n%\n");
    write_file(f / "cs" / "klasik-sk", "SLOVAK RECORD\n%\n");
    // A top-level symlink into it/ (fortunes-it does this): not English.
    fs::create_symlink("it/sprueche", f / "sprueche");

    const fs::path py = dir.path() / "python3.11";
    write_file(py / "alpha.py", "import os\n\n\ndef alpha():\n    return os.sep\n");
    write_file(py / "pkg" / "beta.py", "class Beta:\n    pass\n");
    write_file(py / "pkg" / "gamma.py", "GAMMA = 3  \n\n\n");
    write_file(py / "test" / "test_skip.py", "SKIPPED_TEST = 1\n");
    write_file(py / "encodings" / "cp0.py", "SKIPPED_TABLE = 1\n");

    opt.fortunes_dir = f.string();
    opt.python_dir = py.string();
    opt.numbers_bytes = 4000;
    opt.valid_fraction = 0.2;
  }
};

std::map<std::string, std::vector<std::string>> by_domain(const std::vector<Document>& docs) {
  std::map<std::string, std::vector<std::string>> m;
  for (const auto& d : docs) m[d.domain].push_back(d.text);
  return m;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// ---------------------------------------------------------------------------------------------
// Records, cleaning, UTF-8

TEST(Corpus, SplitsFortuneRecordsAtPercentLines) {
  EXPECT_EQ(split_fortune_records("a\n%\n\n%\nb\nc\n%\n"),
            (std::vector<std::string>{"a\n", "b\nc\n"}));
  // CRLF separators (CRs dropped), a % inside a line, no final separator, blank records dropped.
  EXPECT_EQ(split_fortune_records("x 100%\r\n%\r\n  \n%\ny"),
            (std::vector<std::string>{"x 100%\n", "y\n"}));
  EXPECT_TRUE(split_fortune_records("%\n%\n").empty());
  EXPECT_TRUE(split_fortune_records("").empty());
}

TEST(Corpus, CleanTextRemovesControlsAndTrims) {
  EXPECT_EQ(clean_text("\n\nhello  \r\nworld\t\n\n"), "hello\nworld");
  EXPECT_EQ(clean_text("\x1B[33m-- who\x1B[m"), "-- who");
  EXPECT_EQ(clean_text("_\bX and B\bB"), "X and B");
  EXPECT_EQ(clean_text("bell\x07 ff\x0C"), "bell ff");
  EXPECT_EQ(clean_text("\xD0\xB6\b!"), "!");  // backspace removes a whole code point
  EXPECT_EQ(clean_text("  indented\n\tkept"), "  indented\n\tkept");
  EXPECT_EQ(clean_text(" \n\t\n"), "");
}

TEST(Corpus, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("\xD0\xB6 \xE4\xB8\xAD \xF0\x9F\x98\x80"));  // ж 中 😀
  EXPECT_FALSE(is_valid_utf8("\xC3\x28"));                               // bad continuation
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));                               // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));                           // surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));                       // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xE4\xB8"));                               // truncated
  EXPECT_FALSE(is_valid_utf8("\xFF"));
}

// ---------------------------------------------------------------------------------------------
// Collection, split, files

TEST(Corpus, CollectsFixtureWithDomainTagsAndSkips) {
  Fixture fx;
  std::vector<SourceStats> stats;
  const auto docs = collect_documents(fx.opt, &stats);
  const auto m = by_domain(docs);
  std::set<std::string> domains;
  for (const auto& [d, v] : m) domains.insert(d);
  EXPECT_EQ(domains, (std::set<std::string>{"code", "cs", "de", "en", "es", "it", "numbers", "pl",
                                            "ru", "zh"}));

  const auto& en = m.at("en");
  EXPECT_EQ(en.size(), 23u);  // 20 generated + first + CRLF + overstrike; no link duplicates
  EXPECT_TRUE(contains(en, "First record.\n\t\t-- Someone"));
  EXPECT_TRUE(contains(en, "Windows line\nend"));
  EXPECT_TRUE(contains(en, "bold Bold"));
  for (const auto& t : en) {
    EXPECT_EQ(t.find("bad"), std::string::npos) << "invalid UTF-8 record kept";
    EXPECT_EQ(t.find("Spruch"), std::string::npos) << "symlink into it/ read as English";
  }
  const auto& stat_en = stats[0];
  EXPECT_EQ(stat_en.domain, "en");
  EXPECT_EQ(stat_en.files, 1);
  EXPECT_EQ(stat_en.invalid_utf8, 1);

  EXPECT_TRUE(contains(m.at("zh"), "\xE4\xBD\xA0\xE5\xA5\xBD\n-- \xE8\x80\x81\xE5\xAD\x90"));
  EXPECT_EQ(m.at("zh").size(), 21u);
  for (const char* lang : {"de", "es", "it", "ru", "pl", "cs"}) {
    EXPECT_EQ(m.at(lang).size(), 20u) << lang;
    EXPECT_TRUE(contains(m.at(lang), std::string("Spruch in ") + lang + " 7")) << lang;
  }
  for (const auto& d : docs) {
    EXPECT_EQ(d.text.find("OFFENSIVE"), std::string::npos);
    EXPECT_EQ(d.text.find("SLOVAK"), std::string::npos);
    EXPECT_EQ(d.text.find("SKIPPED"), std::string::npos);
    EXPECT_TRUE(is_valid_utf8(d.text));
  }
  const auto& code = m.at("code");
  EXPECT_EQ(code.size(), 3u);
  EXPECT_TRUE(contains(code, "import os\n\n\ndef alpha():\n    return os.sep"));
  EXPECT_TRUE(contains(code, "GAMMA = 3"));

  // Numbers: about the cap, and every line of arithmetic is right.
  int64_t numbers_bytes = 0;
  for (const auto& t : m.at("numbers")) numbers_bytes += static_cast<int64_t>(t.size());
  EXPECT_GE(numbers_bytes, fx.opt.numbers_bytes);
  EXPECT_LT(numbers_bytes, fx.opt.numbers_bytes + 2000);
}

TEST(Corpus, NumbersAreCorrect) {
  Fixture fx;
  fx.opt.numbers_bytes = 200'000;
  int checked = 0;
  for (const auto& d : collect_documents(fx.opt)) {
    if (d.domain != "numbers") continue;
    std::istringstream lines(d.text);
    std::string line;
    while (std::getline(lines, line)) {
      long long a, b, c, r;
      char op;
      char rest[32];
      if (std::sscanf(line.c_str(), "%lld %c %lld = %lld remainder %lld", &a, &op, &b, &c, &r) ==
          5) {
        EXPECT_EQ(a, b * c + r) << line;
        ++checked;
      } else if (std::sscanf(line.c_str(), "%lld %c %lld = %lld%31s", &a, &op, &b, &c, rest) == 4) {
        const long long want = op == '+' ? a + b : op == '-' ? a - b : a * b;
        EXPECT_EQ(c, want) << line;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 100);
}

TEST(Corpus, DeterministicAndBalancedSplit) {
  Fixture fx;
  const auto a = collect_documents(fx.opt);
  const auto b = collect_documents(fx.opt);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].domain, b[i].domain);
    EXPECT_EQ(a[i].text, b[i].text);
  }
  std::vector<Document> train, valid;
  split_documents(a, fx.opt, &train, &valid);
  EXPECT_EQ(train.size() + valid.size(), a.size());
  const auto mt = by_domain(train), mv = by_domain(valid);
  for (const auto& [d, v] : by_domain(a)) {
    EXPECT_TRUE(mt.count(d)) << d << " missing from train";
    EXPECT_TRUE(mv.count(d)) << d << " missing from valid";
  }
  // The split follows the document, not its position: a reordered list splits the same way.
  std::vector<Document> reversed(a.rbegin(), a.rend()), train2, valid2;
  split_documents(reversed, fx.opt, &train2, &valid2);
  std::set<std::string> v1, v2;
  for (const auto& d : valid) v1.insert(d.domain + "|" + d.text);
  for (const auto& d : valid2) v2.insert(d.domain + "|" + d.text);
  EXPECT_EQ(v1, v2);

  // Another seed gives another corpus order and split.
  CorpusOptions other = fx.opt;
  other.seed = fx.opt.seed + 1;
  const auto c = collect_documents(other);
  bool same_order = c.size() == a.size();
  for (size_t i = 0; same_order && i < a.size(); ++i) same_order = a[i].text == c[i].text;
  EXPECT_FALSE(same_order);
}

TEST(Corpus, BuildCorpusIsByteIdenticalAndReadable) {
  Fixture fx;
  TempDir out;
  build_corpus(fx.opt, out.file("a"));
  build_corpus(fx.opt, out.file("b"));
  for (const char* f : {"train.jsonl", "valid.jsonl", "manifest.json"}) {
    const std::string x = read_file(out.path() / "a" / f);
    EXPECT_FALSE(x.empty()) << f;
    EXPECT_EQ(x, read_file(out.path() / "b" / f)) << f;
  }
  const auto train = read_documents(out.file("a/train.jsonl"));
  const auto valid = read_documents(out.file("a/valid.jsonl"));
  std::vector<Document> want_train, want_valid;
  split_documents(collect_documents(fx.opt), fx.opt, &want_train, &want_valid);
  ASSERT_EQ(train.size(), want_train.size());
  ASSERT_EQ(valid.size(), want_valid.size());
  for (size_t i = 0; i < train.size(); ++i) EXPECT_EQ(train[i].text, want_train[i].text);
  const std::string manifest = read_file(out.path() / "a" / "manifest.json");
  EXPECT_NE(manifest.find("\"valid_fraction\""), std::string::npos);
  EXPECT_NE(manifest.find("\"invalid_utf8_dropped\": 1"), std::string::npos);
  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(out.path() / "a"))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

TEST(Corpus, ReadDocumentsNamesFileAndLine) {
  TempDir dir;
  const std::string path = dir.file("bad.jsonl");
  write_file(path, "{\"domain\":\"en\",\"text\":\"ok\"}\n{\"domain\":\"en\",\"text\":\n");
  EXPECT_MOE_ERROR(read_documents(path), path + ":2:", "JSON");
  write_file(path, "{\"domain\":\"en\",\"text\":\"ok\"}\n{\"domain\":\"en\"}\n");
  EXPECT_MOE_ERROR(read_documents(path), path + ":2:", "\"text\"");
  write_file(path, "[1,2]\n");
  EXPECT_MOE_ERROR(read_documents(path), path + ":1:");
  EXPECT_MOE_ERROR(read_documents(dir.file("missing.jsonl")), "missing.jsonl", "cannot open");
  write_file(path, "");
  EXPECT_TRUE(read_documents(path).empty());
}

TEST(Corpus, MissingSourcesNameDirectoryAndPackage) {
  {
    Fixture fx;
    fs::remove_all(fs::path(fx.opt.fortunes_dir) / "ru");
    EXPECT_MOE_ERROR(collect_documents(fx.opt), fx.opt.fortunes_dir + "/ru", "fortunes-ru");
  }
  {
    Fixture fx;
    fs::remove(fs::path(fx.opt.fortunes_dir) / "tang300");
    EXPECT_MOE_ERROR(collect_documents(fx.opt), "tang300", "fortunes-zh");
  }
  {
    Fixture fx;
    fx.opt.python_dir += "-missing";
    EXPECT_MOE_ERROR(collect_documents(fx.opt), fx.opt.python_dir, "libpython3.11-stdlib");
  }
  {
    Fixture fx;
    fx.opt.fortunes_dir += "-missing";
    EXPECT_MOE_ERROR(collect_documents(fx.opt), fx.opt.fortunes_dir, "fortunes");
  }
}

TEST(Corpus, EmptyCorpusIsAnError) {
  // A language whose files hold only blank records.
  Fixture fx;
  write_file(fs::path(fx.opt.fortunes_dir) / "de" / "sprueche", "%\n\n%\n   \n");
  EXPECT_MOE_ERROR(collect_documents(fx.opt), fx.opt.fortunes_dir + "/de", "no de fortune");

  // An empty split file found by prepare_data names the file.
  Fixture fx2;
  TempDir data;
  DataOptions opt;
  opt.dir = data.file("d");
  opt.tokenizer = "byte";
  opt.corpus = fx2.opt;
  prepare_data(opt, nullptr);
  write_file(data.path() / "d" / "corpus" / "train.jsonl", "");
  EXPECT_MOE_ERROR(prepare_data(opt, nullptr), "train.jsonl", "empty");
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

const std::vector<std::string> kRoundTrip = {
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "\xE5\xBA\x8A\xE5\x89\x8D\xE6\x98\x8E\xE6\x9C\x88\xE5\x85\x89\xEF\xBC\x8C\xE7\x96\x91\xE6"
    "\x98\xAF\xE5\x9C\xB0\xE4\xB8\x8A\xE9\x9C\x9C\xE3\x80\x82",  // 床前明月光，疑是地上霜。
    "def f(x):\n    if x:\n\t\treturn  {'a': [1, 2]}  # two  spaces\n\n",
    "  leading and trailing spaces  ",
    "emoji \xF0\x9F\x98\x80 and unseen \xE2\x88\x80 chars, Zürich 12345.678",
    "\n",
    "",
};

TEST(Tokenizer, ByteRoundTrip) {
  const auto tok = make_byte_tokenizer();
  EXPECT_EQ(tok->vocab_size(), 258);
  EXPECT_EQ(tok->bos_id(), 256);
  EXPECT_EQ(tok->eos_id(), 257);
  EXPECT_EQ(tok->description(), "byte");
  for (const auto& s : kRoundTrip) {
    const auto ids = tok->encode(s);
    EXPECT_EQ(ids.size(), s.size());
    for (auto id : ids) EXPECT_TRUE(id >= 0 && id < 256);
    EXPECT_EQ(tok->decode(ids), s);
  }
  EXPECT_EQ(tok->encode("\xD0\xB6"), (std::vector<int32_t>{0xD0, 0xB6}));
  EXPECT_EQ(tok->decode({256, 'h', 'i', 257}), "hi");
  EXPECT_MOE_ERROR(tok->decode({258}), "out of range");
  EXPECT_MOE_ERROR(tok->decode({-1}), "out of range");
}

// A small multilingual corpus with enough repetition for some BPE merges. (The vocabulary
// must hold 3 control + 256 byte pieces + the characters kept, 331 here: tests use 400.)
std::vector<Document> small_corpus() {
  std::vector<Document> docs;
  const char* en[] = {"the cat sat on the mat", "a fortune a day keeps the doctor away",
                      "where there is a will there is a way", "the quick brown fox"};
  const char* ru[] = {"мама мыла раму", "тише едешь дальше будешь", "без труда не выловишь рыбку",
                      "делу время потехе час"};
  const char* zh[] = {"\xE5\xAD\xA6\xE8\x80\x8C\xE6\x97\xB6\xE4\xB9\xA0\xE4\xB9\x8B",
                      "\xE4\xB8\x89\xE4\xBA\xBA\xE8\xA1\x8C\xE5\xBF\x85\xE6\x9C\x89\xE6\x88\x91"
                      "\xE5\xB8\x88"};
  const char* code[] = {"def main():\n    return 0\n", "for i in range(10):\n    print(i)\n",
                        "class Foo:\n    def __init__(self):\n        self.x = 1\n"};
  for (int r = 0; r < 40; ++r) {
    for (const char* s : en) docs.push_back({"en", std::string(s) + " " + std::to_string(r)});
    for (const char* s : ru) docs.push_back({"ru", s});
    for (const char* s : zh) docs.push_back({"zh", s});
    for (const char* s : code) docs.push_back({"code", s});
  }
  return docs;
}

TEST(Tokenizer, SentencePieceRoundTripsAndIsDeterministic) {
  TempDir dir;
  const auto docs = small_corpus();
  train_sentencepiece(docs, dir.file("a.model"), 400);
  train_sentencepiece(docs, dir.file("b.model"), 400);
  const std::string a = read_file(dir.path() / "a.model");
  EXPECT_FALSE(a.empty());
  EXPECT_EQ(a, read_file(dir.path() / "b.model")) << "training is not deterministic";

  const auto tok = load_sentencepiece(dir.file("a.model"));
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_NE(tok->description().find("sentencepiece bpe 400"), std::string::npos);
  EXPECT_NE(tok->description().find("a.model"), std::string::npos);
  for (const auto& s : kRoundTrip) {
    const auto ids = tok->encode(s);
    for (auto id : ids) EXPECT_TRUE(id >= 0 && id < 400);
    EXPECT_EQ(tok->decode(ids), s);
  }
  for (const auto& d : docs) ASSERT_EQ(tok->decode(tok->encode(d.text)), d.text);
  // Merges were learned: trained text takes fewer tokens than bytes.
  const std::string seen = "the cat sat on the mat";
  EXPECT_LT(tok->encode(seen).size(), seen.size() * 2 / 3);
  // BOS/EOS decode to nothing; ids outside the vocabulary are errors.
  auto ids = tok->encode("hi");
  ids.insert(ids.begin(), tok->bos_id());
  ids.push_back(tok->eos_id());
  EXPECT_EQ(tok->decode(ids), "hi");
  EXPECT_MOE_ERROR(tok->decode({400}), "out of range");
}

TEST(Tokenizer, SentencePieceLoadErrorsNameTheFile) {
  TempDir dir;
  EXPECT_MOE_ERROR(load_sentencepiece(dir.file("none.model")), "none.model", "not found");
  write_file(dir.path() / "junk.model", "this is not a protobuf \x01\x02\x03");
  EXPECT_MOE_ERROR(load_sentencepiece(dir.file("junk.model")), "junk.model");
  EXPECT_MOE_ERROR(train_sentencepiece({}, dir.file("x.model"), 320), "no documents");
}

// ---------------------------------------------------------------------------------------------
// Token streams and batches

TEST(Dataset, TokenizeDocumentsPutsBosEosAndDomains) {
  const auto tok = make_byte_tokenizer();
  const std::vector<Document> docs = {{"zz", "ab"}, {"aa", ""}, {"zz", "\xD0\xB6"}};
  const auto names = domain_names_of({&docs});
  EXPECT_EQ(names, (std::vector<std::string>{"aa", "zz"}));
  const auto s = tokenize_documents(docs, *tok, names);
  EXPECT_EQ(s.tokens, (std::vector<int32_t>{256, 'a', 'b', 257, 256, 257, 256, 0xD0, 0xB6, 257}));
  EXPECT_EQ(s.domain, (std::vector<uint8_t>{1, 1, 1, 1, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(s.domain_names, names);
  EXPECT_MOE_ERROR(tokenize_documents(docs, *tok, {"aa"}), "\"zz\"");
}

// A stream where token i is i and its domain is i % 5, so windows can be checked exactly.
TokenStream counting_stream(int n) {
  TokenStream s;
  for (int i = 0; i < n; ++i) {
    s.tokens.push_back(i);
    s.domain.push_back(static_cast<uint8_t>(i % 5));
  }
  s.domain_names = {"a", "b", "c", "d", "e"};
  return s;
}

TEST(Dataset, BatchSamplerWindowsCoverTheStream) {
  const int S = 8, B = 3;
  const auto stream = counting_stream(101);  // (101 - 1) / 8 = 12 windows
  BatchSampler sampler(stream, B, S, 7);
  EXPECT_EQ(sampler.windows_per_epoch(), 12);
  std::vector<int32_t> tok(B * (S + 1));
  std::vector<uint8_t> dom(B * (S + 1));
  std::multiset<int32_t> starts;
  for (int step = 0; step < 4; ++step) {  // 4 * 3 = 12 windows = one epoch
    sampler.next(tok.data(), dom.data());
    for (int b = 0; b < B; ++b) {
      const int32_t start = tok[b * (S + 1)];
      EXPECT_EQ(start % S, 0);
      starts.insert(start);
      for (int j = 0; j <= S; ++j) {
        EXPECT_EQ(tok[b * (S + 1) + j], start + j);
        EXPECT_EQ(dom[b * (S + 1) + j], (start + j) % 5);
      }
    }
  }
  std::multiset<int32_t> want;
  for (int w = 0; w < 12; ++w) want.insert(w * S);
  EXPECT_EQ(starts, want) << "one epoch visits every window once";
  EXPECT_EQ(sampler.state().epoch, 1u);
  EXPECT_EQ(sampler.state().cursor, 0u);
}

std::vector<int32_t> draw(BatchSampler& s, int steps, int B, int S) {
  std::vector<int32_t> all, tok(B * (S + 1));
  std::vector<uint8_t> dom(B * (S + 1));
  for (int i = 0; i < steps; ++i) {
    s.next(tok.data(), dom.data());
    all.insert(all.end(), tok.begin(), tok.end());
  }
  return all;
}

TEST(Dataset, BatchSamplerIsDeterministicAndRestores) {
  const int S = 4, B = 5;
  const auto stream = counting_stream(203);  // 50 windows: epochs end mid-batch
  BatchSampler a(stream, B, S, 99), b(stream, B, S, 99), c(stream, B, S, 100);
  const auto xa = draw(a, 30, B, S);
  EXPECT_EQ(xa, draw(b, 30, B, S));
  EXPECT_NE(xa, draw(c, 30, B, S));
  // Epochs are reshuffled: epoch 1 does not repeat epoch 0's order.
  const size_t epoch_len = 50 * (S + 1);
  EXPECT_NE(std::vector<int32_t>(xa.begin(), xa.begin() + epoch_len),
            std::vector<int32_t>(xa.begin() + epoch_len, xa.begin() + 2 * epoch_len));

  for (int skip : {0, 7, 10, 23}) {
    BatchSampler first(stream, B, S, 99);
    draw(first, skip, B, S);
    const auto saved = first.state();
    const auto rest = draw(first, 15, B, S);
    BatchSampler resumed(stream, B, S, 99);
    draw(resumed, 3, B, S);  // some other position, then jump
    resumed.restore(saved);
    EXPECT_EQ(draw(resumed, 15, B, S), rest) << "skip " << skip;
  }
  BatchSampler bad(stream, B, S, 1);
  EXPECT_MOE_ERROR(bad.restore(BatchSampler::State{0, 51}), "cursor");
  const auto short_stream = counting_stream(8), one_window = counting_stream(9);
  EXPECT_MOE_ERROR(BatchSampler(short_stream, 1, 8, 1), "fewer than one window");
  BatchSampler exact(one_window, 2, 8, 1);  // exactly one window, drawn twice
  EXPECT_EQ(draw(exact, 1, 2, 8),
            (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Dataset, ValidationWindows) {
  const auto stream = counting_stream(100);
  EXPECT_EQ(validation_windows(stream, 9, 0),
            (std::vector<int64_t>{0, 10, 20, 30, 40, 50, 60, 70, 80, 90}));
  // A subset is spread over the stream: windows 0, 3 and 6 of 10.
  EXPECT_EQ(validation_windows(stream, 9, 3), (std::vector<int64_t>{0, 30, 60}));
  EXPECT_EQ(validation_windows(stream, 10, -1).size(), 9u);
  EXPECT_TRUE(validation_windows(stream, 100, 0).empty());
}

// ---------------------------------------------------------------------------------------------
// prepare_data

TEST(Data, PrepareDataCachesCorpusAndTokenizer) {
  Fixture fx;
  TempDir data;
  DataOptions opt;
  opt.dir = data.file("d");
  opt.corpus = fx.opt;
  opt.vocab_size = 400;
  std::vector<std::string> log;
  const auto logger = [&](const std::string& s) { log.push_back(s); };
  const auto joined = [&] {
    std::string all;
    for (const auto& l : log) all += l + "\n";
    log.clear();
    return all;
  };

  auto p = prepare_data(opt, logger);
  std::string l = joined();
  EXPECT_NE(l.find("built corpus"), std::string::npos) << l;
  EXPECT_NE(l.find("trained sentencepiece bpe 400"), std::string::npos) << l;
  EXPECT_EQ(p.tokenizer->vocab_size(), 400);
  EXPECT_EQ(p.train.domain_names.size(), 10u);
  EXPECT_EQ(p.train.domain_names, p.valid.domain_names);
  EXPECT_EQ(p.train.tokens.size(), p.train.domain.size());
  EXPECT_EQ(p.train.tokens.front(), p.tokenizer->bos_id());
  EXPECT_EQ(p.valid.tokens.back(), p.tokenizer->eos_id());
  std::set<uint8_t> valid_domains(p.valid.domain.begin(), p.valid.domain.end());
  EXPECT_EQ(valid_domains.size(), 10u) << "every domain is in the validation stream";

  const auto again = prepare_data(opt, logger);
  l = joined();
  EXPECT_NE(l.find("corpus " + opt.dir + "/corpus is up to date"), std::string::npos) << l;
  EXPECT_NE(l.find("tokenizer " + opt.dir + "/tokenizer-400-"), std::string::npos) << l;
  EXPECT_NE(l.find(".model is up to date"), std::string::npos) << l;
  EXPECT_EQ(again.train.tokens, p.train.tokens);
  EXPECT_EQ(again.tokenizer_file, p.tokenizer_file);
  EXPECT_TRUE(fs::path(p.tokenizer_file).filename().string().starts_with("tokenizer-400-"))
      << p.tokenizer_file;

  opt.vocab_size = 410;  // another vocabulary: a tokenizer of its own, the corpus kept
  p = prepare_data(opt, logger);
  l = joined();
  EXPECT_NE(l.find("corpus " + opt.dir + "/corpus is up to date"), std::string::npos) << l;
  EXPECT_NE(l.find("trained sentencepiece bpe 410"), std::string::npos) << l;
  EXPECT_EQ(p.tokenizer->vocab_size(), 410);
  // ... and the 400 one is still there for the runs that use it: not retrained.
  opt.vocab_size = 400;
  p = prepare_data(opt, logger);
  l = joined();
  EXPECT_EQ(l.find("trained sentencepiece"), std::string::npos) << l;
  EXPECT_EQ(p.tokenizer->vocab_size(), 400);
  opt.vocab_size = 410;

  opt.corpus.seed += 1;  // other corpus options: rebuild both
  opt.tokenizer = "byte";
  p = prepare_data(opt, logger);
  l = joined();
  EXPECT_NE(l.find("built corpus"), std::string::npos) << l;
  EXPECT_EQ(p.tokenizer->description(), "byte");

  opt.tokenizer = "wordpiece";
  EXPECT_MOE_ERROR(prepare_data(opt, nullptr), "wordpiece");
}

// The corpus cache never overwrites split files it did not write.
TEST(Data, CorpusCacheRefusesToOverwriteFilesItDidNotWrite) {
  Fixture fx;
  TempDir data;
  DataOptions opt;
  opt.dir = data.file("d");
  opt.corpus = fx.opt;
  // The user's own train.jsonl (no manifest): refused, left as it was.
  const std::string mine = "{\"domain\": \"x\", \"text\": \"my own\"}\n";
  write_file(opt.dir + "/corpus/train.jsonl", mine);
  EXPECT_MOE_ERROR(load_corpus(opt, nullptr), opt.dir + "/corpus/train.jsonl", "not written by moe",
                   "will not overwrite");
  EXPECT_EQ(read_file(opt.dir + "/corpus/train.jsonl"), mine);
  fs::remove(opt.dir + "/corpus/train.jsonl");

  // Built by moe, then edited by hand: refused when the options change and it would rebuild.
  load_corpus(opt, nullptr);
  write_file(opt.dir + "/corpus/valid.jsonl", mine);
  opt.corpus.seed += 1;
  EXPECT_MOE_ERROR(load_corpus(opt, nullptr), opt.dir + "/corpus/valid.jsonl",
                   "differs from manifest.json");
  EXPECT_EQ(read_file(opt.dir + "/corpus/valid.jsonl"), mine);
  // What moe wrote itself is rebuilt as before.
  fs::remove(opt.dir + "/corpus/valid.jsonl");
  std::vector<std::string> log;
  load_corpus(opt, [&](const std::string& l) { log.push_back(l); });
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.front().find("built corpus"), std::string::npos) << log.front();
}

TEST(Data, LoadCorpusBuildsOnceAndReadsBothSplits) {
  Fixture fx;
  TempDir data;
  DataOptions opt;
  opt.dir = data.file("d");
  opt.corpus = fx.opt;
  std::vector<std::string> log;
  const auto logger = [&](const std::string& s) { log.push_back(s); };
  const CorpusSplits c = load_corpus(opt, logger);
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.front().find("built corpus"), std::string::npos) << log.front();
  EXPECT_EQ(c.train, read_documents(opt.dir + "/corpus/train.jsonl"));
  EXPECT_EQ(c.valid, read_documents(opt.dir + "/corpus/valid.jsonl"));
  EXPECT_EQ(c.domain_names, domain_names_of({&c.train, &c.valid}));
  EXPECT_EQ(c.domain_names.size(), 10u);
  EXPECT_FALSE(c.train_digest.empty());
  log.clear();
  const CorpusSplits again = load_corpus(opt, logger);
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.front().find("is up to date"), std::string::npos) << log.front();
  EXPECT_EQ(again.train_digest, c.train_digest);
}

// ---------------------------------------------------------------------------------------------
// The real corpus from the installed Debian packages (scripts/setup.sh installs them).

TEST(RealCorpus, EveryDomainPresentAndNonTrivial) {
  const CorpusOptions opt;
  std::vector<SourceStats> stats;
  const auto docs = collect_documents(opt, &stats);
  std::map<std::string, std::pair<int64_t, int64_t>> per;  // domain -> {documents, bytes}
  int64_t total = 0;
  for (const auto& d : docs) {
    ++per[d.domain].first;
    per[d.domain].second += static_cast<int64_t>(d.text.size());
    total += static_cast<int64_t>(d.text.size());
  }
  ASSERT_EQ(per.size(), 10u);
  for (const auto& [domain, c] : per) {
    SCOPED_TRACE(domain);
    EXPECT_GE(c.first, 100);
    EXPECT_GE(c.second, 500'000);
    const int64_t cap = domain == "code"      ? opt.code_bytes
                        : domain == "numbers" ? opt.numbers_bytes
                                              : opt.prose_bytes;
    EXPECT_LE(c.second, cap + opt.max_record_bytes + 4 * opt.code_chunk_bytes);
  }
  EXPECT_GT(total, 8'000'000);
  EXPECT_LT(total, 12'500'000);
  // Scripts are where they belong: nearly every ru document has Cyrillic (U+04xx lead bytes
  // D0/D1), nearly every zh document a 3-byte (CJK) sequence.
  std::map<std::string, int64_t> script_hits;
  for (const auto& d : docs) {
    if (d.domain == "ru" && d.text.find_first_of("\xD0\xD1") != std::string::npos)
      ++script_hits["ru"];
    if (d.domain == "zh" && d.text.find_first_of("\xE4\xE5\xE6\xE7\xE8\xE9") != std::string::npos)
      ++script_hits["zh"];
  }
  EXPECT_GE(script_hits["ru"], per["ru"].first * 95 / 100);
  EXPECT_GE(script_hits["zh"], per["zh"].first * 95 / 100);
  std::vector<Document> train, valid;
  split_documents(docs, opt, &train, &valid);
  const double frac = static_cast<double>(valid.size()) / static_cast<double>(docs.size());
  EXPECT_NEAR(frac, 0.05, 0.01);
  std::set<std::string> vd;
  for (const auto& d : valid) vd.insert(d.domain);
  EXPECT_EQ(vd.size(), 10u);
}

}  // namespace
}  // namespace moe
