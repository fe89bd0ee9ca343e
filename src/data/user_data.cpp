// The user's own text as training data (data.h): the input listed and read read-only, the
// split, the tokenizer's sample, streaming tokenization into mapped token files, and the cache
// under <dir>/user/<key>/ that keeps all of it.
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>

#include "data/corpus_internal.h"
#include "data/user_data_internal.h"
#include "moe/error.h"
#include "moe/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace moe {
namespace {

using Log = std::function<void(const std::string&)>;
constexpr int kCacheVersion = 1;
constexpr const char* kDefaultDomain = "text";
constexpr int64_t kBatchBytes = 16'000'000;  // text per parallel tokenization batch
constexpr size_t kMaxSampleLine = 4192;      // sentencepiece's max_sentence_length

enum class Kind { Text, Jsonl };

struct Source {
  fs::path path;
  std::string rel;     // relative to the input directory (the file name for a file input)
  std::string domain;  // the default domain of its documents
  Kind kind = Kind::Text;
  int64_t size = 0, mtime_ns = 0;
};

struct Input {
  std::string given;  // as the user wrote it, for messages
  fs::path root;      // absolute
  bool directory = false;
  std::vector<Source> files;
  int64_t skipped = 0;
  std::map<std::string, int64_t> skipped_by_ext;
  int64_t bytes() const {
    int64_t n = 0;
    for (const auto& f : files) n += f.size;
    return n;
  }
};

void stat_source(Source& s) {
  struct stat st {};
  if (::stat(s.path.c_str(), &st) != 0)
    throw Error(fmt::format("{}: cannot stat: {}", s.path.string(), std::strerror(errno)));
  s.size = static_cast<int64_t>(st.st_size);
  s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

std::string lower_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

Input list_input(const std::string& path) {
  Input in;
  in.given = path;
  std::error_code ec;
  in.root = fs::absolute(path, ec).lexically_normal();
  if (!in.root.has_filename()) in.root = in.root.parent_path();  // "dir/" -> "dir"
  if (ec || !fs::exists(in.root, ec))
    throw Error(fmt::format("{}: no such file or directory", path));
  if (!fs::is_directory(in.root, ec)) {
    if (!fs::is_regular_file(in.root, ec))
      throw Error(fmt::format("{}: not a regular file or directory", path));
    Source s;
    s.path = in.root;
    s.rel = in.root.filename().string();
    s.domain = kDefaultDomain;
    s.kind = lower_extension(in.root) == ".jsonl" ? Kind::Jsonl : Kind::Text;
    stat_source(s);
    in.files.push_back(std::move(s));
    return in;
  }
  in.directory = true;
  auto it = fs::recursive_directory_iterator(in.root, ec);
  if (ec) throw Error(fmt::format("{}: cannot read the directory: {}", path, ec.message()));
  for (const auto end = fs::end(it); it != end; it.increment(ec)) {
    if (ec) throw Error(fmt::format("{}: cannot read the directory: {}", path, ec.message()));
    const fs::path& p = it->path();
    const std::string name = p.filename().string();
    std::error_code e2;
    if (it->is_directory(e2)) {
      if (name.starts_with(".")) it.disable_recursion_pending();  // .git and friends
      continue;
    }
    const std::string ext = lower_extension(p);
    if (!it->is_regular_file(e2) || name.starts_with(".") ||
        (ext != ".txt" && ext != ".md" && ext != ".jsonl")) {
      ++in.skipped;
      ++in.skipped_by_ext[name.starts_with(".") ? "hidden" : ext.empty() ? "no extension" : ext];
      continue;
    }
    Source s;
    s.path = p;
    const fs::path rel = p.lexically_relative(in.root);
    s.rel = rel.string();
    s.domain = std::distance(rel.begin(), rel.end()) > 1 ? rel.begin()->string() : kDefaultDomain;
    s.kind = ext == ".jsonl" ? Kind::Jsonl : Kind::Text;
    stat_source(s);
    in.files.push_back(std::move(s));
  }
  std::sort(in.files.begin(), in.files.end(),
            [](const Source& a, const Source& b) { return a.rel < b.rel; });
  if (in.files.empty())
    throw Error(fmt::format("{}: no .txt, .md or .jsonl files in the directory ({} other files)",
                            path, in.skipped));
  return in;
}

// One document: its domain and text, in input order.
using DocFn = std::function<void(const std::string& domain, std::string&& text)>;

// A text file, streamed in blocks: cut at blank lines into documents of about `target` bytes.
// A NUL byte (binary or UTF-16) or a line that is not UTF-8 is an error naming the file.
void read_text_file(const Source& s, int64_t target, const DocFn& fn) {
  std::ifstream in(s.path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open: {}", s.path.string(), std::strerror(errno)));
  std::string doc;
  const auto emit = [&] {
    const size_t e = doc.find_last_not_of(" \t\n");
    if (e != std::string::npos) {
      doc.resize(e + 1);
      fn(s.domain, std::move(doc));
    }
    doc.clear();
  };
  int64_t lineno = 0;
  const auto on_line = [&](std::string_view line) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!is_valid_utf8(line))
      throw Error(fmt::format(
          "{}:{}: not valid UTF-8 text (moe reads UTF-8; convert the file, e.g. with iconv)",
          s.path.string(), lineno));
    const bool blank = line.find_first_not_of(" \t") == std::string_view::npos;
    const auto size = static_cast<int64_t>(doc.size());
    if (blank) {
      if (size >= target) return emit();
      if (doc.empty()) return;
    } else if (size >= 4 * target) {
      emit();
    }
    if (!doc.empty()) doc.push_back('\n');
    doc.append(line);
  };
  std::vector<char> buf(size_t{1} << 22);
  std::string carry;
  int64_t offset = 0;
  for (;;) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<size_t>(in.gcount());
    if (n == 0) break;
    if (const void* z = std::memchr(buf.data(), 0, n))
      throw Error(fmt::format("{}: a binary file (a NUL byte at offset {}), not UTF-8 text",
                              s.path.string(),
                              offset + (static_cast<const char*>(z) - buf.data())));
    offset += static_cast<int64_t>(n);
    size_t pos = 0;
    while (const void* nl = std::memchr(buf.data() + pos, '\n', n - pos)) {
      const size_t end = static_cast<size_t>(static_cast<const char*>(nl) - buf.data());
      if (carry.empty()) {
        on_line(std::string_view(buf.data() + pos, end - pos));
      } else {
        carry.append(buf.data() + pos, end - pos);
        on_line(carry);
        carry.clear();
      }
      pos = end + 1;
    }
    carry.append(buf.data() + pos, n - pos);
  }
  if (in.bad()) throw Error(fmt::format("{}: read failed", s.path.string()));
  if (!carry.empty()) on_line(carry);
  emit();
}

// A JSONL file, line by line: {"text": ..., "domain": ...} ("domain" optional).
void read_jsonl_file(const Source& s, const DocFn& fn) {
  std::ifstream in(s.path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open: {}", s.path.string(), std::strerror(errno)));
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    const auto bad = [&](const std::string& why) {
      return Error(fmt::format("{}:{}: {}", s.path.string(), lineno, why));
    };
    if (line.find('\0') != std::string::npos)
      throw bad("a NUL byte: a binary file, not UTF-8 JSON lines");
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (!is_valid_utf8(line)) throw bad("not valid UTF-8 (moe reads UTF-8; convert the file)");
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw bad(fmt::format("not valid JSON ({})", e.what()));
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      throw bad("expected an object with a string field \"text\" (and optionally \"domain\")");
    std::string domain = s.domain;
    if (j.contains("domain")) {
      if (!j["domain"].is_string() || j["domain"].get_ref<const std::string&>().empty())
        throw bad("\"domain\" must be a non-empty string");
      domain = j["domain"].get<std::string>();
    }
    auto text = j["text"].get<std::string>();
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) continue;  // empty document
    fn(domain, std::move(text));
  }
  if (in.bad()) throw Error(fmt::format("{}: read failed", s.path.string()));
}

void for_each_document(const Input& in, int64_t target, const DocFn& fn) {
  for (const auto& s : in.files) {
    if (s.kind == Kind::Jsonl)
      read_jsonl_file(s, fn);
    else
      read_text_file(s, target, fn);
  }
}

// Pass 1: every document's hash and domain, the split, and the tokenizer's sample.
struct Scan {
  std::vector<uint64_t> hashes;
  std::vector<uint8_t> domain;     // index into names (sorted)
  std::vector<char> valid;         // split of each document
  std::vector<std::string> names;  // sorted domain names
  int64_t text_bytes = 0;
  std::array<int64_t, 2> docs{}, bytes{};  // {train, valid}
  std::string train_digest;
  std::vector<Document> sample;  // train-split lines for sentencepiece
  double seconds = 0;
};

Scan scan_input(const Input& in, const DataOptions& opt, bool want_sample) {
  Stopwatch t;
  Scan sc;
  std::unordered_map<std::string, uint32_t> index;
  std::vector<std::string> seen;  // encounter order
  std::vector<uint32_t> dom;
  std::vector<int64_t> doc_bytes;
  // Bottom-k sample by line hash: keep lines whose hash is below `limit`, halving it while
  // the kept bytes exceed the cap. Deterministic, bounded memory, one pass.
  struct Line {
    uint64_t key;
    size_t doc;
    std::string text;
  };
  std::vector<Line> lines;
  int64_t line_bytes = 0;
  uint64_t limit = ~uint64_t{0};
  const auto threshold = static_cast<uint64_t>(opt.valid_fraction * 9007199254740992.0);
  for_each_document(in, opt.document_bytes, [&](const std::string& domain, std::string&& text) {
    auto [it, added] = index.emplace(domain, static_cast<uint32_t>(seen.size()));
    if (added) {
      seen.push_back(domain);
      if (seen.size() > 256)
        throw Error(fmt::format("{}: more than 256 domains (subfolders or JSONL \"domain\" values)",
                                in.given));
    }
    const uint64_t h = document_hash(domain, text, opt.corpus.seed);
    sc.hashes.push_back(h);
    dom.push_back(it->second);
    doc_bytes.push_back(static_cast<int64_t>(text.size()));
    sc.text_bytes += static_cast<int64_t>(text.size());
    if (!want_sample || (h >> 11) < threshold) return;  // validation documents: not sampled
    for (size_t pos = 0; pos < text.size();) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      const std::string_view l(text.data() + pos, nl - pos);
      pos = nl + 1;
      if (l.empty() || l.size() > kMaxSampleLine) continue;
      const uint64_t key = mix64(fnv1a64(l));
      if (key >= limit) continue;
      lines.push_back({key, sc.hashes.size() - 1, std::string(l)});
      line_bytes += static_cast<int64_t>(l.size());
      while (line_bytes > opt.tokenizer_sample_bytes) {
        limit /= 2;
        std::erase_if(lines, [&](const Line& x) { return x.key >= limit; });
        line_bytes = 0;
        for (const auto& x : lines) line_bytes += static_cast<int64_t>(x.text.size());
      }
    }
  });
  if (sc.hashes.empty())
    throw Error(fmt::format("{}: no text ({})", in.given,
                            in.directory ? "every file is empty" : "the file is empty"));
  if (sc.hashes.size() < 2)
    throw Error(fmt::format(
        "{}: one document only; a train and a validation split need two or more (a text file "
        "is cut at blank lines into documents of about {} bytes)",
        in.given, opt.document_bytes));
  sc.valid = validation_flags(sc.hashes, dom, opt.valid_fraction);
  // Domain indices in sorted name order.
  sc.names = seen;
  std::sort(sc.names.begin(), sc.names.end());
  std::vector<uint8_t> rank(seen.size());
  for (size_t i = 0; i < seen.size(); ++i)
    rank[i] = static_cast<uint8_t>(std::lower_bound(sc.names.begin(), sc.names.end(), seen[i]) -
                                   sc.names.begin());
  sc.domain.resize(dom.size());
  uint64_t digest = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < dom.size(); ++i) {
    sc.domain[i] = rank[dom[i]];
    const int v = sc.valid[i] ? 1 : 0;
    ++sc.docs[v];
    sc.bytes[v] += doc_bytes[i];
    if (!v)
      digest = fnv1a64(std::string_view(reinterpret_cast<const char*>(&sc.hashes[i]), 8), digest);
  }
  if (sc.docs[1] == 0)
    throw Error(fmt::format(
        "{}: no document fell into the validation split ({} documents, valid_fraction {}); "
        "raise valid_fraction",
        in.given, sc.hashes.size(), opt.valid_fraction));
  if (sc.docs[0] == 0)
    throw Error(
        fmt::format("{}: no document fell into the train split; lower valid_fraction", in.given));
  sc.train_digest = fmt::format("fnv1a64:{:016x}", digest);
  for (auto& l : lines)
    if (!sc.valid[l.doc]) sc.sample.push_back(Document{"", std::move(l.text)});
  sc.seconds = t.seconds();
  return sc;
}

// Pass 2: streams the documents again, tokenizes them in parallel batches and appends them to
// the writer of their split (a null writer: that split is not wanted).
void tokenize_input(const Input& in, const DataOptions& opt, const Scan& sc, const Tokenizer& tok,
                    TokenFileWriter* train, TokenFileWriter* valid, const Log& say) {
  // Not a structured binding: clang 14 cannot capture one in the lambda below.
  const std::pair<int32_t, int32_t> frame = document_frame(tok);
  const int32_t bos = frame.first, eos = frame.second;
  Stopwatch t;
  double last_report = 0;
  int64_t done_bytes = 0;
  const int64_t total_bytes = sc.text_bytes;
  std::vector<std::string> texts;
  std::vector<size_t> docs;
  int64_t batch_bytes = 0;
  const auto flush = [&] {
    std::vector<std::vector<int32_t>> enc(texts.size());
    const auto n = static_cast<int64_t>(texts.size());
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t k = 0; k < n; ++k) {
      std::vector<int32_t> ids = tok.encode(texts[k]);
      enc[k].reserve(ids.size() + 2);
      enc[k].push_back(bos);
      enc[k].insert(enc[k].end(), ids.begin(), ids.end());
      enc[k].push_back(eos);
    }
    for (size_t k = 0; k < texts.size(); ++k)
      (sc.valid[docs[k]] ? valid : train)->add(enc[k].data(), enc[k].size(), sc.domain[docs[k]]);
    texts.clear();
    docs.clear();
    batch_bytes = 0;
    if (say && t.seconds() - last_report >= 5) {
      last_report = t.seconds();
      say(fmt::format("data: tokenizing {:.1f} / {:.1f} MB ({:.1f} MB/s)", done_bytes / 1e6,
                      total_bytes / 1e6, done_bytes / 1e6 / std::max(t.seconds(), 1e-9)));
    }
  };
  size_t i = 0;
  for_each_document(in, opt.document_bytes, [&](const std::string& domain, std::string&& text) {
    if (i >= sc.hashes.size() || document_hash(domain, text, opt.corpus.seed) != sc.hashes[i])
      throw Error(fmt::format("{}: changed while moe was reading it; run again", in.given));
    done_bytes += static_cast<int64_t>(text.size());
    if ((sc.valid[i] ? valid : train) != nullptr) {
      batch_bytes += static_cast<int64_t>(text.size());
      texts.push_back(std::move(text));
      docs.push_back(i);
      if (batch_bytes >= kBatchBytes) flush();
    }
    ++i;
  });
  if (i != sc.hashes.size())
    throw Error(fmt::format("{}: changed while moe was reading it; run again", in.given));
  flush();
}

// "a b c", or the first 12 names and how many more.
std::string names_text(const std::vector<std::string>& names) {
  if (names.size() <= 12) return fmt::format("{}", fmt::join(names, " "));
  return fmt::format("{} ... {} more",
                     fmt::join(std::vector<std::string>(names.begin(), names.begin() + 12), " "),
                     names.size() - 12);
}

// The cache of one input and set of options.
class UserCache {
 public:
  UserCache(const DataOptions& opt, const Log& log)
      : opt_(opt), say_([log](const std::string& l) {
          if (log) log(l);
        }) {
    MOE_REQUIRE(opt.valid_fraction > 0 && opt.valid_fraction < 1,
                "valid_fraction must be in (0, 1), got {}", opt.valid_fraction);
    in_ = list_input(opt.input);
    // Nothing may be written inside the user's input.
    std::error_code ec;
    const fs::path cache_root = fs::weakly_canonical(fs::absolute(opt.dir), ec);
    const fs::path input_root = fs::weakly_canonical(in_.root, ec);
    const auto [a, b] =
        std::mismatch(input_root.begin(), input_root.end(), cache_root.begin(), cache_root.end());
    if (in_.directory && a == input_root.end())
      throw Error(fmt::format(
          "{}: the cache directory (training.data_dir) {} is inside the input; moe never writes "
          "into your data: choose another data directory",
          opt.input, opt.dir));
    options_ = {{"valid_fraction", opt.valid_fraction},
                {"seed", opt.corpus.seed},
                {"document_bytes", opt.document_bytes},
                {"version", kCacheVersion}};
    dir_ = fs::path(opt.dir) / "user" /
           fmt::format("{:016x}", fnv1a64(in_.root.string() + "\n" + options_.dump()));
    files_ = json::array();
    for (const auto& f : in_.files) files_.push_back({f.rel, f.size, f.mtime_ns});
    std::string skipped;
    if (in_.skipped > 0) {
      // The most frequent kinds first, at most six of them.
      std::vector<std::pair<int64_t, std::string>> kinds;
      for (const auto& [ext, n] : in_.skipped_by_ext) kinds.emplace_back(-n, ext);
      std::sort(kinds.begin(), kinds.end());
      std::vector<std::string> parts;
      for (size_t k = 0; k < kinds.size() && k < 6; ++k)
        parts.push_back(fmt::format("{} {}", -kinds[k].first, kinds[k].second));
      if (kinds.size() > 6) parts.push_back(fmt::format("{} more kinds", kinds.size() - 6));
      skipped = fmt::format("; skipped {} other files ({})", in_.skipped, fmt::join(parts, ", "));
    }
    say_(fmt::format("data: {}: {} {} ({:.2f} MB){}", opt.input, in_.files.size(),
                     in_.files.size() == 1 ? "file" : "files", in_.bytes() / 1e6, skipped));
    check_manifest();
  }

  // The split's facts, from the manifest or a fresh scan.
  const json& manifest() const { return manifest_; }
  const fs::path& dir() const { return dir_; }
  std::vector<std::string> domain_names() const {
    return manifest_["domains"].get<std::vector<std::string>>();
  }
  std::string train_digest() const { return manifest_["train"]["digest"].get<std::string>(); }

  const Scan& scan(bool want_sample) {
    if (!scan_ || (want_sample && !sampled_)) {
      scan_ = scan_input(in_, opt_, want_sample);
      sampled_ = want_sample;
      const Scan& sc = *scan_;
      say_(fmt::format(
          "data: scanned {} documents ({:.2f} MB) in {:.2f} s ({:.1f} MB/s): train {} ({:.2f} "
          "MB), valid {} ({:.2f} MB), {} domains [{}]",
          sc.hashes.size(), sc.text_bytes / 1e6, sc.seconds,
          sc.text_bytes / 1e6 / std::max(sc.seconds, 1e-9), sc.docs[0], sc.bytes[0] / 1e6,
          sc.docs[1], sc.bytes[1] / 1e6, sc.names.size(), names_text(sc.names)));
      if (!fresh_) write_manifest(sc);
    }
    return *scan_;
  }

  // The token files of `tok` (key: "byte" or a digest of the tokenizer file), built when
  // missing; train is skipped when !with_train.
  std::pair<TokenStream, TokenStream> streams(const Tokenizer& tok, const std::string& tok_file,
                                              bool with_train) {
    const std::string key = tok_file.empty() ? "byte" : file_key(tok_file);
    const fs::path train_path = dir_ / fmt::format("train-{}.tokens", key);
    const fs::path valid_path = dir_ / fmt::format("valid-{}.tokens", key);
    auto train = with_train ? try_map(train_path) : nullptr;
    auto valid = try_map(valid_path);
    if ((with_train && !train) || !valid) {
      const Scan& sc = scan(false);
      std::optional<TokenFileWriter> tw, vw;
      if (with_train && !train) tw.emplace(train_path.string(), tok.vocab_size());
      if (!valid) vw.emplace(valid_path.string(), tok.vocab_size());
      Stopwatch t;
      tokenize_input(in_, opt_, sc, tok, tw ? &*tw : nullptr, vw ? &*vw : nullptr, say_);
      const int64_t n_train = tw ? tw->tokens() : 0, n_valid = vw ? vw->tokens() : 0;
      if (tw) tw->finish();
      if (vw) vw->finish();
      const double s = t.seconds();
      say_(fmt::format(
          "data: tokenized {:.2f} MB in {:.2f} s ({:.1f} MB/s): {} -> {}{}; peak resident memory "
          "{:.1f} MB",
          sc.text_bytes / 1e6, s, sc.text_bytes / 1e6 / std::max(s, 1e-9), tok.description(),
          tw ? fmt::format("{} ({} tokens, {:.2f} bytes/token)", train_path.string(), n_train,
                           static_cast<double>(sc.bytes[0]) / std::max<int64_t>(1, n_train))
             : "",
          vw ? fmt::format("{}{} ({} tokens)", tw ? ", " : "", valid_path.string(), n_valid) : "",
          peak_resident_bytes() / 1e6));
      if (tw) train = MappedTokens::open(train_path.string());
      if (vw) valid = MappedTokens::open(valid_path.string());
    } else {
      say_(fmt::format("data: token cache is up to date: {}{} ({} tokens{})",
                       with_train ? train_path.string() + ", " : "", valid_path.string(),
                       valid->size(), with_train ? fmt::format(", train {}", train->size()) : ""));
    }
    std::pair<TokenStream, TokenStream> out;
    out.first.mapped = train;
    out.second.mapped = valid;
    out.first.domain_names = out.second.domain_names = domain_names();
    return out;
  }

 private:
  void check_manifest() {
    manifest_ = read_json_or_null(dir_ / "manifest.json");
    fresh_ = manifest_.is_object() && manifest_.value("format", "") == "moe-user-data" &&
             manifest_.value("options", json()) == options_ &&
             manifest_.value("input", "") == in_.root.string() &&
             manifest_.value("files", json()) == files_ && manifest_.contains("domains") &&
             manifest_.contains("train");
    if (fresh_) {
      say_(fmt::format("data: cache {} is up to date", dir_.string()));
      return;
    }
    std::string why = "no cache yet";
    if (manifest_.is_object() && manifest_.value("files", json()).is_array()) {
      std::map<std::string, json> old;
      for (const auto& f : manifest_["files"])
        if (f.is_array() && f.size() == 3 && f[0].is_string()) old[f[0].get<std::string>()] = f;
      int64_t added = 0, changed = 0;
      std::string first;
      for (const auto& f : files_) {
        const auto it = old.find(f[0].get<std::string>());
        if (it == old.end()) {
          ++added;
        } else {
          if (it->second != f && ++changed == 1) first = f[0].get<std::string>();
          old.erase(it);
        }
      }
      why = fmt::format("{} changed, {} added, {} removed{}", changed, added, old.size(),
                        first.empty() ? "" : fmt::format(" ({} changed)", first));
    }
    say_(fmt::format("data: building cache {} ({})", dir_.string(), why));
    // Everything there was made from the old files: remove it (the cache is ours). The
    // directory is made again once the input has passed its scan.
    std::error_code ec;
    fs::remove_all(dir_, ec);
    manifest_ = nullptr;
  }

  void write_manifest(const Scan& sc) {
    manifest_ = {
        {"format", "moe-user-data"},
        {"version", kCacheVersion},
        {"input", in_.root.string()},
        {"options", options_},
        {"files", files_},
        {"skipped_files", in_.skipped},
        {"documents", sc.hashes.size()},
        {"text_bytes", sc.text_bytes},
        {"domains", sc.names},
        {"train", {{"documents", sc.docs[0]}, {"bytes", sc.bytes[0]}, {"digest", sc.train_digest}}},
        {"valid", {{"documents", sc.docs[1]}, {"bytes", sc.bytes[1]}}}};
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec)
      throw Error(
          fmt::format("{}: cannot create the cache directory: {}", dir_.string(), ec.message()));
    const std::string m = manifest_.dump(2) + "\n";
    write_file_atomic((dir_ / "manifest.json").string(), m.data(), m.size());
    fresh_ = true;
  }

  static std::string file_key(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fmt::format("{}: cannot open", path));
    uint64_t h = 0xcbf29ce484222325ULL;
    std::vector<char> buf(1 << 20);
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      h = fnv1a64(std::string_view(buf.data(), static_cast<size_t>(in.gcount())), h);
    }
    return fmt::format("{:016x}", h).substr(0, 12);
  }

  // The mapped file, or null when it is missing or unreadable (then rebuilt).
  std::shared_ptr<const MappedTokens> try_map(const fs::path& path) const {
    if (!fresh_ || !fs::exists(path)) return nullptr;
    try {
      return MappedTokens::open(path.string());
    } catch (const Error& e) {
      say_(fmt::format("data: {}; rebuilding it", e.what()));
      return nullptr;
    }
  }

  DataOptions opt_;
  Log say_;
  Input in_;
  json options_, files_, manifest_;
  fs::path dir_;
  bool fresh_ = false, sampled_ = false;
  std::optional<Scan> scan_;
};

}  // namespace

PreparedData prepare_user_data(const DataOptions& opt, const Log& log) {
  check_tokenizer_options(opt);  // before reading anything
  UserCache cache(opt, log);
  if (!cache.manifest().is_object()) cache.scan(opt.tokenizer == "sentencepiece");
  PreparedData out;
  out.tokenizer = resolve_tokenizer(opt, cache.dir(), cache.train_digest(), &out.tokenizer_file,
                                    log, [&](const std::string& model_path) {
                                      const Scan& sc = cache.scan(true);
                                      train_sentencepiece(sc.sample, model_path, opt.vocab_size);
                                    });
  auto [train, valid] = cache.streams(*out.tokenizer, out.tokenizer_file, true);
  out.train = std::move(train);
  out.valid = std::move(valid);
  return out;
}

TokenStream read_text_tokens(const std::string& input, const Tokenizer& tok, int64_t document_bytes,
                             const Log& log) {
  Stopwatch t;
  const Input in = list_input(input);
  std::vector<Document> docs;
  int64_t bytes = 0;
  for_each_document(in, document_bytes, [&](const std::string& domain, std::string&& text) {
    bytes += static_cast<int64_t>(text.size());
    docs.push_back({domain, std::move(text)});
  });
  MOE_REQUIRE(!docs.empty(), "{}: holds no text", input);
  TokenStream s = tokenize_documents(docs, tok, domain_names_of({&docs}));
  if (log)
    log(
        fmt::format("data: {}: {} {}, {} documents ({:.2f} MB), {} domains [{}] -> {} tokens "
                    "({}) in {:.2f} s",
                    input, in.files.size(), in.files.size() == 1 ? "file" : "files", docs.size(),
                    bytes / 1e6, s.domain_names.size(), names_text(s.domain_names), s.size(),
                    tok.description(), t.seconds()));
  return s;
}

TokenStream user_validation_stream(const DataOptions& opt, const Tokenizer& tok,
                                   const std::string& tokenizer_file, const Log& log) {
  UserCache cache(opt, log);
  if (!cache.manifest().is_object()) cache.scan(false);
  return cache.streams(tok, tokenizer_file, false).second;
}

}  // namespace moe
