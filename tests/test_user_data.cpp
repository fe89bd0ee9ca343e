// Training on the user's own text (data.h): a directory with subfolders as domains, JSONL with
// and without domains, a text file cut into documents, one-line errors for empty, binary and
// non-UTF-8 input, the cache reused and rebuilt, the input left byte-identical, and the mapped
// token files (uint16 and uint32) read like in-memory streams.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "moe/data.h"
#include "moe/dataset.h"
#include "moe/error.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

using test::TempDir;
using test::write_file;

// Every entry under `root` with its contents and mtime (nanoseconds): equal snapshots mean the
// tree is byte-identical, timestamps included.
std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> s;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    struct stat st {};
    ::lstat(e.path().c_str(), &st);
    std::string v = std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
    if (e.is_regular_file()) {
      std::ifstream in(e.path(), std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      v += "|" + ss.str();
    }
    s[e.path().lexically_relative(root).string()] = v;
  }
  return s;
}

struct Logged {
  std::vector<std::string> lines;
  std::function<void(const std::string&)> fn() {
    return [this](const std::string& l) { lines.push_back(l); };
  }
  std::string take() {
    std::string all;
    for (const auto& l : lines) all += l + "\n";
    lines.clear();
    return all;
  }
};

std::vector<int32_t> all_tokens(const TokenStream& s) {
  std::vector<int32_t> t(static_cast<size_t>(s.size()));
  s.read(0, s.size(), t.data(), nullptr);
  return t;
}

std::vector<uint8_t> all_domains(const TokenStream& s) {
  std::vector<uint8_t> d(static_cast<size_t>(s.size()));
  s.read(0, s.size(), nullptr, d.data());
  return d;
}

// The byte-tokenized documents of a stream, split at BOS (256) ... EOS (257).
std::vector<std::string> documents_of(const TokenStream& s) {
  std::vector<std::string> docs;
  for (int32_t t : all_tokens(s)) {
    if (t == 256)
      docs.emplace_back();
    else if (t != 257)
      docs.back().push_back(static_cast<char>(t));
  }
  return docs;
}

DataOptions byte_options(const TempDir& cache, const std::string& input) {
  DataOptions o;
  o.dir = cache.file("cache");
  o.input = input;
  o.tokenizer = "byte";
  o.valid_fraction = 0.2;
  return o;
}

// A directory: poems/ and code/ are domains, top-level files are "text", other files skipped.
void make_tree(const fs::path& root) {
  for (int i = 0; i < 20; ++i)
    write_file(root / "poems" / fmt::format("p{}.txt", i),
               fmt::format("Roses {}\nare red.\n\nViolets are blue.\n", i));
  for (int i = 0; i < 12; ++i)
    write_file(root / "code" / "deep" / fmt::format("c{}.md", i),
               fmt::format("def f{}():\n    return {}\n", i, i));
  write_file(root / "top.txt", "At the top.\r\nSecond line.\r\n");
  write_file(root / "notes.jsonl",
             "{\"text\": \"from jsonl\"}\n\n{\"text\": \"tagged\", \"domain\": \"poems\"}\n");
  write_file(root / "script.py", "print(1)\n");
  write_file(root / "image.png", std::string("\x89PNG\0\0", 6));
  write_file(root / ".hidden" / "x.txt", "hidden");
}

TEST(UserData, DirectorySubfoldersAreDomainsAndTheInputIsUntouched) {
  TempDir in, cache;
  make_tree(in.path());
  const auto before = snapshot(in.path());
  Logged log;
  const DataOptions opt = byte_options(cache, in.str());
  const PreparedData p = prepare_data(opt, log.fn());
  const std::string l = log.take();
  EXPECT_NE(l.find("skipped 2 other files (1 .png, 1 .py)"), std::string::npos) << l;
  EXPECT_NE(l.find("building cache"), std::string::npos) << l;
  EXPECT_NE(l.find("MB/s"), std::string::npos) << l;
  EXPECT_NE(l.find("peak resident memory"), std::string::npos) << l;
  EXPECT_EQ(p.train.domain_names, (std::vector<std::string>{"code", "poems", "text"}));
  EXPECT_EQ(p.valid.domain_names, p.train.domain_names);
  ASSERT_TRUE(p.train.mapped && p.valid.mapped);
  EXPECT_EQ(p.train.mapped->width(), 2);
  EXPECT_TRUE(p.tokenizer_file.empty());

  // Every document once, in one of the splits, with the domain of its folder or JSONL line.
  std::multiset<std::string> docs;
  for (const TokenStream* s : {&p.train, &p.valid}) {
    const auto tokens = all_tokens(*s);
    const auto domains = all_domains(*s);
    std::string cur;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] == 256) cur.clear();
      if (tokens[i] < 256) cur.push_back(static_cast<char>(tokens[i]));
      if (tokens[i] == 257) docs.insert(s->domain_names[domains[i]] + ":" + cur);
    }
  }
  EXPECT_EQ(docs.size(), 20u + 12u + 3u);
  EXPECT_EQ(docs.count("poems:Roses 3\nare red.\n\nViolets are blue."), 1u);
  EXPECT_EQ(docs.count("code:def f5():\n    return 5"), 1u);
  EXPECT_EQ(docs.count("text:At the top.\nSecond line."), 1u) << "CRLF read as LF";
  EXPECT_EQ(docs.count("text:from jsonl"), 1u);
  EXPECT_EQ(docs.count("poems:tagged"), 1u) << "the JSONL domain wins";
  EXPECT_EQ(documents_of(p.valid).size() + documents_of(p.train).size(), 35u);
  EXPECT_GT(documents_of(p.valid).size(), 0u);

  // Nothing in the input changed or appeared; everything moe made is under the cache.
  EXPECT_EQ(snapshot(in.path()), before);
  EXPECT_TRUE(fs::exists(opt.dir + "/user"));
}

TEST(UserData, JsonlWithAndWithoutDomains) {
  TempDir in, cache;
  std::string jsonl;
  for (int i = 0; i < 30; ++i)
    jsonl += i % 3 == 0 ? "{\"text\": \"plain " + std::to_string(i) + "\"}\n"
                        : "{\"domain\": \"" + std::string(i % 3 == 1 ? "news" : "chat") +
                              "\", \"text\": \"doc " + std::to_string(i) + "\"}\n";
  write_file(in.path() / "data.jsonl", jsonl);
  const PreparedData p = prepare_data(byte_options(cache, in.file("data.jsonl")), nullptr);
  EXPECT_EQ(p.train.domain_names, (std::vector<std::string>{"chat", "news", "text"}));
  std::set<uint8_t> valid_domains;
  for (uint8_t d : all_domains(p.valid)) valid_domains.insert(d);
  EXPECT_EQ(valid_domains.size(), 3u) << "every domain with 2+ documents is validated";
  EXPECT_EQ(documents_of(p.train).size() + documents_of(p.valid).size(), 30u);
}

TEST(UserData, ATextFileIsCutAtBlankLinesIntoDocuments) {
  TempDir in, cache;
  std::string text;
  for (int i = 0; i < 400; ++i) text += "Paragraph " + std::to_string(i) + " has some words.\n\n";
  write_file(in.path() / "book.txt", text);
  DataOptions opt = byte_options(cache, in.file("book.txt"));
  opt.document_bytes = 300;
  const PreparedData p = prepare_data(opt, nullptr);
  auto docs = documents_of(p.train);
  for (const auto& d : documents_of(p.valid)) docs.push_back(d);
  EXPECT_GT(docs.size(), 20u);
  int short_docs = 0;
  for (const auto& d : docs) {
    short_docs += d.size() < 250;  // whole paragraphs until about 300 bytes, but the last
    EXPECT_LT(d.size(), 400u) << d;
    EXPECT_EQ(d.rfind("Paragraph ", 0), 0u) << "cut at a paragraph: " << d;
  }
  EXPECT_LE(short_docs, 1);
}

TEST(UserData, BadInputIsOneErrorLineNamingTheFile) {
  TempDir in, cache;
  write_file(in.path() / "empty.txt", "");
  write_file(in.path() / "binary.txt", std::string("ab\0cd", 5));
  write_file(in.path() / "latin1.txt", "ok line\ncaf\xe9\n");
  write_file(in.path() / "latin1.jsonl", "{\"text\": \"caf\xe9\"}\n");
  write_file(in.path() / "bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n");
  fs::create_directories(in.path() / "nothing");
  write_file(in.path() / "nothing" / "a.py", "x = 1\n");
  write_file(in.path() / "one.txt", "just one paragraph\n");
  const auto check = [&](const std::string& name, const std::string& part) {
    const std::string msg =
        test::error_of([&] { prepare_data(byte_options(cache, in.file(name)), nullptr); });
    EXPECT_NE(msg.find(in.file(name)), std::string::npos) << msg;
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.find(".cpp:"), std::string::npos) << "no source location: " << msg;
  };
  check("empty.txt", "no text (the file is empty)");
  check("binary.txt", "a binary file (a NUL byte at offset 2)");
  check("latin1.txt", ":2: not valid UTF-8");
  check("latin1.jsonl", ":1: not valid UTF-8");
  check("bad.jsonl", ":2: expected an object with a string field \"text\"");
  check("nothing", "no .txt, .md or .jsonl files in the directory (1 other files)");
  check("one.txt", "one document only");
  check("missing", "no such file or directory");
  EXPECT_FALSE(fs::exists(cache.file("cache/user")) && !fs::is_empty(cache.file("cache/user")))
      << "no cache is made for input that fails its scan";
  // A cache inside the input would write into the user's data: refused.
  DataOptions inside = byte_options(cache, in.str());
  inside.dir = in.file("nothing/cache");
  EXPECT_MOE_ERROR(prepare_data(inside, nullptr), "inside the input");
  EXPECT_FALSE(fs::exists(in.file("nothing/cache")));
}

TEST(UserData, CacheIsReusedThenRebuiltWhenAFileChanges) {
  TempDir in, cache;
  make_tree(in.path());
  Logged log;
  const DataOptions opt = byte_options(cache, in.str());
  const PreparedData first = prepare_data(opt, log.fn());
  log.take();
  const PreparedData again = prepare_data(opt, log.fn());
  std::string l = log.take();
  EXPECT_NE(l.find("is up to date"), std::string::npos) << l;
  EXPECT_NE(l.find("token cache is up to date"), std::string::npos) << l;
  EXPECT_EQ(l.find("scanned"), std::string::npos) << "nothing re-read: " << l;
  EXPECT_EQ(all_tokens(again.train), all_tokens(first.train));
  EXPECT_EQ(all_tokens(again.valid), all_tokens(first.valid));

  write_file(in.path() / "poems" / "p3.txt",
             "A longer poem now.\nWith more lines.\nAnd more lines still.\n");
  const PreparedData changed = prepare_data(opt, log.fn());
  l = log.take();
  EXPECT_NE(l.find("building cache"), std::string::npos) << l;
  EXPECT_NE(l.find("poems/p3.txt changed"), std::string::npos) << l;
  EXPECT_NE(all_tokens(changed.train).size() + all_tokens(changed.valid).size(),
            all_tokens(first.train).size() + all_tokens(first.valid).size());

  // Another split fraction is another cache; the first stays valid.
  DataOptions other = opt;
  other.valid_fraction = 0.5;
  prepare_data(other, log.fn());
  l = log.take();
  EXPECT_NE(l.find("no cache yet"), std::string::npos) << l;
}

TEST(UserData, SentencepieceTrainedOnTheTrainSplitAndKeyedByVocab) {
  TempDir in, cache;
  std::string text;
  const char* words[] = {"apple", "banana", "cherry", "delta", "echo", "foxtrot", "golf"};
  for (int i = 0; i < 300; ++i)
    text += std::string(words[i % 7]) + " " + words[(i * 3) % 7] + " " + std::to_string(i) +
            (i % 4 == 3 ? "\n\n" : "\n");
  write_file(in.path() / "words.txt", text);
  DataOptions opt = byte_options(cache, in.file("words.txt"));
  opt.tokenizer = "sentencepiece";
  opt.vocab_size = 258;  // too small: refused before anything is read
  EXPECT_MOE_ERROR(prepare_data(opt, nullptr), "vocab_size 258 is too small");
  EXPECT_FALSE(fs::exists(opt.dir));
  opt.vocab_size = 300;
  opt.document_bytes = 200;
  Logged log;
  const PreparedData p = prepare_data(opt, log.fn());
  std::string l = log.take();
  EXPECT_NE(l.find("trained sentencepiece bpe 300"), std::string::npos) << l;
  EXPECT_TRUE(fs::path(p.tokenizer_file).filename().string().starts_with("tokenizer-300-"))
      << p.tokenizer_file;
  EXPECT_EQ(p.tokenizer->vocab_size(), 300);
  EXPECT_EQ(all_tokens(p.train).front(), p.tokenizer->bos_id());

  // A run's validation with its own copy of the tokenizer: the cached token file is reused.
  const std::string copy = cache.file("run_tokenizer.model");
  fs::copy_file(p.tokenizer_file, copy);
  const auto tok = load_sentencepiece(copy);
  const TokenStream v = validation_stream(opt, *tok, copy, log.fn());
  l = log.take();
  EXPECT_NE(l.find("token cache is up to date"), std::string::npos) << l;
  EXPECT_EQ(all_tokens(v), all_tokens(p.valid));
  EXPECT_EQ(v.domain_names, p.valid.domain_names);
}

TEST(TokenFile, MappedStreamsReadLikeInMemoryOnes) {
  TempDir dir;
  for (const int vocab : {258, 70000}) {
    const std::string path = dir.file("t" + std::to_string(vocab) + ".tokens");
    TokenStream mem;
    mem.domain_names = {"a", "b", "c"};
    {
      TokenFileWriter w(path, vocab);
      for (int d = 0; d < 40; ++d) {
        std::vector<int32_t> ids;
        for (int k = 0; k < 3 + d % 7; ++k) ids.push_back((d * 7919 + k * 104729) % vocab);
        const auto dom = static_cast<uint8_t>((d / 3) % 3);
        w.add(ids.data(), ids.size(), dom);
        mem.tokens.insert(mem.tokens.end(), ids.begin(), ids.end());
        mem.domain.insert(mem.domain.end(), ids.size(), dom);
      }
      EXPECT_FALSE(fs::exists(path)) << "written to a temp file until finish()";
      w.finish();
    }
    TokenStream mapped;
    mapped.domain_names = mem.domain_names;
    mapped.mapped = MappedTokens::open(path);
    EXPECT_EQ(mapped.mapped->width(), vocab <= 65536 ? 2 : 4);
    ASSERT_EQ(mapped.size(), static_cast<int64_t>(mem.tokens.size()));
    EXPECT_EQ(all_tokens(mapped), mem.tokens);
    EXPECT_EQ(all_domains(mapped), mem.domain);
    std::vector<int32_t> t(5);
    std::vector<uint8_t> d(5);
    mapped.read(17, 5, t.data(), d.data());
    EXPECT_EQ(t, std::vector<int32_t>(mem.tokens.begin() + 17, mem.tokens.begin() + 22));
    EXPECT_EQ(d, std::vector<uint8_t>(mem.domain.begin() + 17, mem.domain.begin() + 22));
    // The sampler and validation windows see the same stream.
    BatchSampler a(mem, 2, 8, 5), b(mapped, 2, 8, 5);
    std::vector<int32_t> ta(18), tb(18);
    std::vector<uint8_t> da(18), db(18);
    for (int i = 0; i < 30; ++i) {
      a.next(ta.data(), da.data());
      b.next(tb.data(), db.data());
      ASSERT_EQ(ta, tb);
      ASSERT_EQ(da, db);
    }
    EXPECT_EQ(validation_windows(mapped, 8, 3), validation_windows(mem, 8, 3));
  }
  // A truncated file is an error naming it.
  const std::string path = dir.file("t258.tokens");
  fs::resize_file(path, fs::file_size(path) - 3);
  EXPECT_MOE_ERROR(MappedTokens::open(path), "t258.tokens", "truncated");
}

}  // namespace
}  // namespace moe
