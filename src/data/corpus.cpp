// The bundled corpus: collection from the Debian packages, cleaning, caps, the deterministic
// split and the .jsonl / manifest files. See include/moe/corpus.h for the rules.
#include "moe/corpus.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_set>

#include "data/corpus_internal.h"
#include "moe/error.h"
#include "moe/rng.h"
#include "moe/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace moe {

// ---------------------------------------------------------------------------------------------
// Hashing

uint64_t fnv1a64(std::string_view s, uint64_t h) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t document_hash(std::string_view domain, std::string_view text, uint64_t seed) {
  uint64_t h = fnv1a64(domain);
  h = fnv1a64(std::string_view("\0", 1), h);
  h = fnv1a64(text, h);
  return mix64(h ^ mix64(seed));
}

std::vector<char> validation_flags(const std::vector<uint64_t>& hashes,
                                   const std::vector<uint32_t>& domains, double valid_fraction) {
  MOE_REQUIRE(valid_fraction > 0 && valid_fraction < 1, "valid_fraction must be in (0, 1), got {}",
              valid_fraction);
  MOE_CHECK(hashes.size() == domains.size(), "validation_flags: {} hashes for {} domains",
            hashes.size(), domains.size());
  const size_t n = hashes.size();
  std::vector<char> is_valid(n);
  // Threshold compare on the top 53 bits: exact and platform-independent.
  const auto threshold = static_cast<uint64_t>(valid_fraction * 9007199254740992.0);
  std::map<uint32_t, std::array<int64_t, 2>> count;  // domain -> {train, valid}
  for (size_t i = 0; i < n; ++i) {
    is_valid[i] = (hashes[i] >> 11) < threshold;
    ++count[domains[i]][is_valid[i] ? 1 : 0];
  }
  // Every domain with two or more documents appears in both splits: move the document whose
  // hash is closest to the threshold from the other side.
  for (const auto& [domain, c] : count) {
    if (c[0] + c[1] < 2 || (c[0] > 0 && c[1] > 0)) continue;
    const bool need_valid = c[1] == 0;
    size_t best = n;
    for (size_t i = 0; i < n; ++i) {
      if (domains[i] != domain) continue;
      if (best == n || (need_valid ? hashes[i] < hashes[best] : hashes[i] > hashes[best])) best = i;
    }
    is_valid[best] = need_valid;
  }
  return is_valid;
}

namespace {

// Fisher-Yates with our platform-independent Rng (std::shuffle is implementation-defined).
template <class T>
void shuffle_in_place(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

std::string read_whole_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("{}: read failed", path.string()));
  return ss.str();
}

[[noreturn]] void throw_missing(const fs::path& path, const char* package) {
  throw Error(
      fmt::format("{}: not found; install the Debian package {} (scripts/setup.sh installs it)",
                  path.string(), package));
}

// ---------------------------------------------------------------------------------------------
// Text cleaning

// Erases the last code point of `out` unless that would cross a newline.
void erase_last_code_point(std::string& out) {
  if (out.empty() || out.back() == '\n') return;
  size_t i = out.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(out[i]) & 0xC0) == 0x80) --i;
  out.resize(i);
}

}  // namespace

std::string clean_text(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(in[i]);
    if (c == '\r') {
      if (i + 1 < in.size() && in[i + 1] == '\n') continue;
      out.push_back('\n');
    } else if (c == 0x1B) {
      // ANSI CSI sequence (the zh files colour their attributions): ESC [ params final.
      if (i + 1 < in.size() && in[i + 1] == '[') {
        size_t j = i + 2;
        while (j < in.size() && static_cast<unsigned char>(in[j]) >= 0x20 &&
               static_cast<unsigned char>(in[j]) <= 0x3F)
          ++j;
        while (j < in.size() && static_cast<unsigned char>(in[j]) >= 0x20 &&
               static_cast<unsigned char>(in[j]) <= 0x2F)
          ++j;
        i = (j < in.size() && static_cast<unsigned char>(in[j]) >= 0x40 &&
             static_cast<unsigned char>(in[j]) <= 0x7E)
                ? j
                : j - 1;
      }
    } else if (c == 0x08) {
      // Typewriter overstrike ("_\bX" underline, "X\bX" bold): keep what was struck last.
      erase_last_code_point(out);
    } else if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7F) {
      // bell, form feed, IRC colour codes: invisible noise
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  // Trailing blanks of every line, then leading and trailing blank lines.
  std::string trimmed;
  trimmed.reserve(out.size());
  size_t line_start = 0;
  while (line_start <= out.size()) {
    size_t nl = out.find('\n', line_start);
    if (nl == std::string::npos) nl = out.size();
    size_t end = nl;
    while (end > line_start && (out[end - 1] == ' ' || out[end - 1] == '\t')) --end;
    trimmed.append(out, line_start, end - line_start);
    if (nl < out.size()) trimmed.push_back('\n');
    line_start = nl + 1;
  }
  size_t b = trimmed.find_first_not_of('\n');
  if (b == std::string::npos) return std::string();
  size_t e = trimmed.find_last_not_of('\n');
  return trimmed.substr(b, e - b + 1);
}

std::vector<std::string> split_fortune_records(const std::string& file_text) {
  std::vector<std::string> records;
  std::string current;
  size_t pos = 0;
  while (pos < file_text.size()) {
    size_t nl = file_text.find('\n', pos);
    const size_t end = nl == std::string::npos ? file_text.size() : nl;
    std::string_view line(file_text.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line == "%") {
      records.push_back(std::move(current));
      current.clear();
    } else {
      current.append(line);
      current.push_back('\n');
    }
    pos = nl == std::string::npos ? file_text.size() : nl + 1;
  }
  records.push_back(std::move(current));
  // Blank records (between consecutive % lines, or a file ending in %) are no documents.
  std::erase_if(records, [](const std::string& r) {
    return r.find_first_not_of(" \t\r\n") == std::string::npos;
  });
  return records;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Sources

struct Candidates {
  SourceStats stats;
  std::vector<std::string> texts;
  std::unordered_set<std::string> seen;

  // Cleans and adds one text unless it is invalid, empty, too long or a duplicate.
  void add(std::string_view raw, int64_t max_bytes) {
    ++stats.records;
    if (!is_valid_utf8(raw)) {
      ++stats.invalid_utf8;
      return;
    }
    std::string t = clean_text(raw);
    if (t.empty()) {
      ++stats.empty;
      return;
    }
    if (max_bytes > 0 && static_cast<int64_t>(t.size()) > max_bytes) {
      ++stats.too_long;
      return;
    }
    if (!seen.insert(t).second) {
      ++stats.duplicates;
      return;
    }
    stats.available_bytes += static_cast<int64_t>(t.size());
    texts.push_back(std::move(t));
  }
};

// Regular files directly in `dir`, sorted by name: no symlinks (the .u8 names, cz/ and the
// top-level links into it/ are copies), no .dat indexes.
std::vector<fs::path> fortune_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_symlink() || !e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name.ends_with(".dat") || name.ends_with(".u8")) continue;
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

constexpr std::array<const char*, 3> kZhFiles = {"chinese", "song100", "tang300"};

void add_fortune_file(Candidates& c, const fs::path& file, int64_t max_record_bytes) {
  ++c.stats.files;
  for (const auto& r : split_fortune_records(read_whole_file(file))) c.add(r, max_record_bytes);
}

Candidates collect_fortunes(const std::string& domain, const CorpusOptions& opt) {
  Candidates c;
  c.stats.domain = domain;
  const fs::path root(opt.fortunes_dir);
  const char* package = domain == "en"   ? "fortunes"
                        : domain == "zh" ? "fortunes-zh"
                        : domain == "de" ? "fortunes-de"
                        : domain == "es" ? "fortunes-es"
                        : domain == "it" ? "fortunes-it"
                        : domain == "ru" ? "fortunes-ru"
                        : domain == "pl" ? "fortunes-pl"
                                         : "fortunes-cs";
  if (!fs::is_directory(root)) throw_missing(root, package);
  if (domain == "en") {
    for (const auto& f : fortune_files(root)) {
      const std::string name = f.filename().string();
      if (std::find(kZhFiles.begin(), kZhFiles.end(), name) != kZhFiles.end()) continue;
      add_fortune_file(c, f, opt.max_record_bytes);
    }
  } else if (domain == "zh") {
    for (const char* name : kZhFiles) {
      const fs::path f = root / name;
      if (!fs::is_regular_file(f)) throw_missing(f, package);
      add_fortune_file(c, f, opt.max_record_bytes);
    }
  } else {
    const fs::path dir = root / domain;
    if (!fs::is_directory(dir)) throw_missing(dir, package);
    for (const auto& f : fortune_files(dir)) {
      if (f.filename() == "klasik-sk") continue;  // Slovak, not Czech
      add_fortune_file(c, f, opt.max_record_bytes);
    }
  }
  if (c.texts.empty())
    throw Error(
        fmt::format("{}: no {} fortune records found; install the Debian package {}",
                    domain == "en" || domain == "zh" ? root.string() : (root / domain).string(),
                    domain, package));
  return c;
}

// Cuts a source file into documents of about `target` bytes at top-level statements (a line
// starting in column 0 after a blank line), so that chunks stay readable units of code.
std::vector<std::string> chunk_code(const std::string& text, int64_t target) {
  std::vector<std::string> chunks;
  std::string current;
  bool prev_blank = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    const size_t end = nl == std::string::npos ? text.size() : nl + 1;
    std::string_view line(text.data() + pos, end - pos);
    const bool top_level = !line.empty() && line[0] != ' ' && line[0] != '\t' && line[0] != '\n';
    const auto size = static_cast<int64_t>(current.size());
    if ((size >= target && top_level && prev_blank) || size >= 4 * target) {
      chunks.push_back(std::move(current));
      current.clear();
    }
    current.append(line);
    prev_blank = line.find_first_not_of(" \t\n") == std::string_view::npos;
    pos = end;
  }
  if (!current.empty()) chunks.push_back(std::move(current));
  return chunks;
}

Candidates collect_code(const CorpusOptions& opt) {
  Candidates c;
  c.stats.domain = "code";
  const fs::path root(opt.python_dir);
  if (!fs::is_directory(root)) throw_missing(root, "libpython3.11-stdlib");
  // Tests are huge and repetitive, encodings/ are generated charmap tables, pydoc_data is
  // documentation text, *-packages hold other packages.
  static const std::set<std::string> kSkipDirs = {"test",          "tests",         "idle_test",
                                                  "__pycache__",   "encodings",     "pydoc_data",
                                                  "site-packages", "dist-packages", "lib-dynload"};
  std::vector<fs::path> files;
  auto it = fs::recursive_directory_iterator(root);
  for (auto end = fs::end(it); it != end; ++it) {
    const std::string name = it->path().filename().string();
    if (it->is_directory()) {
      if (it->is_symlink() || kSkipDirs.count(name) || name.starts_with("config-"))
        it.disable_recursion_pending();
      continue;
    }
    if (it->is_symlink() || !it->is_regular_file() || !name.ends_with(".py")) continue;
    if (name.starts_with("_sysconfigdata")) continue;  // generated build configuration
    files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    ++c.stats.files;
    const std::string text = read_whole_file(f);
    if (!is_valid_utf8(text)) {
      ++c.stats.invalid_utf8;
      continue;
    }
    for (const auto& chunk : chunk_code(text, opt.code_chunk_bytes)) c.add(chunk, 0);
  }
  if (c.texts.empty())
    throw Error(
        fmt::format("{}: no Python sources found; install the Debian package libpython3.11-stdlib",
                    root.string()));
  return c;
}

// ---------------------------------------------------------------------------------------------
// Numbers: small documents of checked facts, one kind per document.

int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {  // Howard Hinnant's algorithm
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

std::string civil_from_days(int64_t z) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  const int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const int64_t y = yoe + era * 400 + (m <= 2);
  return fmt::format("{:04}-{:02}-{:02}", y, m, d);
}

const char* weekday(int64_t days) {
  static const char* kNames[] = {"Thursday", "Friday",  "Saturday", "Sunday",
                                 "Monday",   "Tuesday", "Wednesday"};  // day 0 = 1970-01-01
  return kNames[((days % 7) + 7) % 7];
}

// Fixed-point decimal: value / 10^digits, trailing zeros kept off.
std::string decimal(int64_t value, int digits) {
  int64_t scale = 1;
  for (int i = 0; i < digits; ++i) scale *= 10;
  std::string s = fmt::format("{}{}", value < 0 ? "-" : "", std::abs(value) / scale);
  int64_t frac = std::abs(value) % scale;
  if (frac == 0) return s;
  std::string f = fmt::format("{:0{}}", frac, digits);
  while (!f.empty() && f.back() == '0') f.pop_back();
  return s + "." + f;
}

int64_t range(Rng& rng, int64_t lo, int64_t hi) {  // inclusive
  return lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(hi - lo + 1)));
}

std::string numbers_document(Rng& rng) {
  std::string out;
  switch (rng.below(6)) {
    case 0: {  // arithmetic
      const int64_t mag = range(rng, 1, 4);
      int64_t hi = 1;
      for (int i = 0; i < mag; ++i) hi *= 10;
      for (int i = 0; i < 12; ++i) {
        const int64_t a = range(rng, 0, hi), b = range(rng, 1, hi);
        switch (rng.below(4)) {
          case 0:
            out += fmt::format("{} + {} = {}\n", a, b, a + b);
            break;
          case 1:
            out += fmt::format("{} - {} = {}\n", a, b, a - b);
            break;
          case 2:
            out += fmt::format("{} * {} = {}\n", a, b, a * b);
            break;
          default:
            out += fmt::format("{} / {} = {} remainder {}\n", a, b, a / b, a % b);
            break;
        }
      }
      break;
    }
    case 1: {  // times table
      const int64_t n = range(rng, 2, 99);
      out += fmt::format("Multiplication table of {}:\n", n);
      for (int64_t k = 1; k <= 12; ++k) out += fmt::format("{} x {} = {}\n", n, k, n * k);
      break;
    }
    case 2: {  // sequences
      for (int s = 0; s < 3; ++s) {
        std::vector<int64_t> v;
        std::string name;
        const int64_t terms = range(rng, 10, 16);
        switch (rng.below(6)) {
          case 0: {
            name = "Fibonacci-like";
            int64_t a = range(rng, 0, 9), b = range(rng, 1, 9);
            for (int64_t i = 0; i < terms; ++i, b = a + b, a = b - a) v.push_back(a);
            break;
          }
          case 1: {
            name = "Primes";
            for (int64_t p = range(rng, 2, 5000); static_cast<int64_t>(v.size()) < terms; ++p) {
              bool prime = p >= 2;
              for (int64_t d = 2; d * d <= p && prime; ++d) prime = p % d != 0;
              if (prime) v.push_back(p);
            }
            break;
          }
          case 2: {
            const int64_t start = range(rng, 1, 200);
            name = "Squares";
            for (int64_t i = 0; i < terms; ++i) v.push_back((start + i) * (start + i));
            break;
          }
          case 3: {
            const int64_t k = range(rng, 2, 9);
            name = fmt::format("Powers of {}", k);
            int64_t p = 1;
            for (int64_t i = 0; i < terms && p < (int64_t{1} << 50); ++i, p *= k) v.push_back(p);
            break;
          }
          case 4: {
            const int64_t a = range(rng, -100, 100), d = range(rng, -25, 25);
            name = fmt::format("Arithmetic progression, step {}", d);
            for (int64_t i = 0; i < terms; ++i) v.push_back(a + i * d);
            break;
          }
          default: {
            name = "Triangular numbers";
            const int64_t start = range(rng, 1, 500);
            for (int64_t i = start; i < start + terms; ++i) v.push_back(i * (i + 1) / 2);
            break;
          }
        }
        out += name + ": ";
        for (size_t i = 0; i < v.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", v[i]);
        out += "\n";
      }
      break;
    }
    case 3: {  // dates
      const int64_t lo = days_from_civil(1900, 1, 1), hi = days_from_civil(2099, 12, 31);
      for (int i = 0; i < 8; ++i) {
        const int64_t d = range(rng, lo, hi - 1000);
        switch (rng.below(3)) {
          case 0:
            out += fmt::format("{} is a {}.\n", civil_from_days(d), weekday(d));
            break;
          case 1: {
            const int64_t n = range(rng, 1, 400);
            out += fmt::format("{} days after {} is {}.\n", n, civil_from_days(d),
                               civil_from_days(d + n));
            break;
          }
          default: {
            const int64_t n = range(rng, 1, 999);
            out += fmt::format("From {} to {} is {} days.\n", civil_from_days(d),
                               civil_from_days(d + n), n);
            break;
          }
        }
      }
      break;
    }
    case 4: {  // units
      for (int i = 0; i < 8; ++i) {
        const int64_t t = range(rng, 1, 9999);  // tenths
        switch (rng.below(6)) {
          case 0:
            out += fmt::format("{} km = {} m\n", decimal(t, 1), t * 100);
            break;
          case 1:
            out += fmt::format("{} kg = {} g\n", decimal(t, 1), t * 100);
            break;
          case 2:
            out += fmt::format("{} cm = {} m\n", t, decimal(t, 2));
            break;
          case 3: {
            const int64_t m = range(rng, 1, 2000);
            out += fmt::format("{} min = {} h {} min\n", m, m / 60, m % 60);
            break;
          }
          case 4: {
            const int64_t c = range(rng, -40, 200) / 5 * 5;  // multiples of 5 convert exactly
            out += fmt::format("{} degrees C = {} degrees F\n", c, c * 9 / 5 + 32);
            break;
          }
          default: {
            const int64_t g = range(rng, 1, 64);
            out += fmt::format("{} GiB = {} MiB = {} KiB\n", g, g * 1024, g * 1024 * 1024);
            break;
          }
        }
      }
      break;
    }
    default: {  // decimals
      for (int i = 0; i < 10; ++i) {
        const int64_t a = range(rng, 1, 99999), b = range(rng, 1, 9999);  // hundredths
        if (rng.below(2))
          out += fmt::format("{} + {} = {}\n", decimal(a, 2), decimal(b, 2), decimal(a + b, 2));
        else
          out += fmt::format("{} * {} = {}\n", decimal(a, 2), decimal(b, 2), decimal(a * b, 4));
      }
      break;
    }
  }
  out.pop_back();  // documents carry no trailing newline, like the cleaned prose
  return out;
}

Candidates generate_numbers(const CorpusOptions& opt) {
  Candidates c;
  c.stats.domain = "numbers";
  Rng rng(mix64(opt.seed ^ fnv1a64("numbers")));
  // Generate somewhat more than the cap so that the shared take-until-cap step applies.
  int64_t bytes = 0;
  while (bytes < opt.numbers_bytes + 4096) {
    c.add(numbers_document(rng), 0);
    bytes = c.stats.available_bytes;
    if (c.stats.records > 10'000'000) break;  // unreachable with sane caps
  }
  return c;
}

// Shuffles the candidates with a per-domain stream and takes them until `cap` bytes.
void take_until_cap(Candidates& c, int64_t cap, uint64_t seed, std::vector<Document>& out) {
  Rng rng(mix64(seed ^ fnv1a64(c.stats.domain)));
  shuffle_in_place(c.texts, rng);
  for (auto& t : c.texts) {
    if (c.stats.taken_bytes >= cap) break;
    c.stats.taken_bytes += static_cast<int64_t>(t.size());
    ++c.stats.taken;
    out.push_back(Document{c.stats.domain, std::move(t)});
  }
}

std::vector<Document> collect_all(const CorpusOptions& opt, std::vector<SourceStats>* stats) {
  MOE_CHECK(opt.prose_bytes > 0 && opt.code_bytes > 0 && opt.numbers_bytes > 0,
            "corpus byte caps must be positive");
  MOE_CHECK(opt.code_chunk_bytes > 0, "code_chunk_bytes must be positive");
  std::vector<Document> docs;
  std::vector<SourceStats> all;
  for (const char* lang : kProseDomains) {
    Candidates c = collect_fortunes(lang, opt);
    take_until_cap(c, opt.prose_bytes, opt.seed, docs);
    all.push_back(c.stats);
  }
  {
    Candidates c = collect_code(opt);
    take_until_cap(c, opt.code_bytes, opt.seed, docs);
    all.push_back(c.stats);
  }
  {
    Candidates c = generate_numbers(opt);
    take_until_cap(c, opt.numbers_bytes, opt.seed, docs);
    all.push_back(c.stats);
  }
  Rng rng(mix64(opt.seed));
  shuffle_in_place(docs, rng);
  if (stats) *stats = std::move(all);
  return docs;
}

}  // namespace

std::vector<Document> collect_documents(const CorpusOptions& opt, std::vector<SourceStats>* stats) {
  try {
    return collect_all(opt, stats);
  } catch (const fs::filesystem_error& e) {  // unreadable directory etc.: the message has the path
    throw Error(fmt::format("collect_documents: {}", e.what()));
  }
}

void split_documents(const std::vector<Document>& docs, const CorpusOptions& opt,
                     std::vector<Document>* train, std::vector<Document>* valid) {
  std::map<std::string, uint32_t> index;
  std::vector<uint64_t> h(docs.size());
  std::vector<uint32_t> dom(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    h[i] = document_hash(docs[i].domain, docs[i].text, opt.seed);
    dom[i] = index.emplace(docs[i].domain, static_cast<uint32_t>(index.size())).first->second;
  }
  const std::vector<char> is_valid = validation_flags(h, dom, opt.valid_fraction);
  train->clear();
  valid->clear();
  for (size_t i = 0; i < docs.size(); ++i) (is_valid[i] ? valid : train)->push_back(docs[i]);
}

namespace {

std::string to_jsonl(const std::vector<Document>& docs) {
  std::string out;
  for (const auto& d : docs) {
    out += json{{"domain", d.domain}, {"text", d.text}}.dump();
    out += '\n';
  }
  return out;
}

}  // namespace

json corpus_options_json(const CorpusOptions& opt) {
  return json{{"fortunes_dir", opt.fortunes_dir},
              {"python_dir", opt.python_dir},
              {"seed", opt.seed},
              {"valid_fraction", opt.valid_fraction},
              {"prose_bytes", opt.prose_bytes},
              {"code_bytes", opt.code_bytes},
              {"numbers_bytes", opt.numbers_bytes},
              {"max_record_bytes", opt.max_record_bytes},
              {"code_chunk_bytes", opt.code_chunk_bytes}};
}

void build_corpus(const CorpusOptions& opt, const std::string& out_dir) {
  std::vector<SourceStats> stats;
  const std::vector<Document> docs = collect_documents(opt, &stats);
  std::vector<Document> train, valid;
  split_documents(docs, opt, &train, &valid);
  const fs::path dir(out_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("{}: cannot create directory: {}", out_dir, ec.message()));
  const std::string train_path = (dir / "train.jsonl").string();
  const std::string valid_path = (dir / "valid.jsonl").string();
  if (train.empty()) throw Error(fmt::format("{}: the train split is empty", train_path));
  if (valid.empty()) throw Error(fmt::format("{}: the validation split is empty", valid_path));

  json domains = json::object();
  for (const auto& s : stats)
    domains[s.domain] = {{"source",
                          {{"files", s.files},
                           {"records", s.records},
                           {"invalid_utf8_dropped", s.invalid_utf8},
                           {"empty_dropped", s.empty},
                           {"too_long_dropped", s.too_long},
                           {"duplicates_dropped", s.duplicates},
                           {"available_bytes", s.available_bytes},
                           {"taken_documents", s.taken},
                           {"taken_bytes", s.taken_bytes}}}};
  json manifest = {{"format", "moe-corpus"}, {"version", 1}, {"options", corpus_options_json(opt)}};
  for (const auto& [name, split, path] :
       {std::tuple{"train", &train, &train_path}, std::tuple{"valid", &valid, &valid_path}}) {
    const std::string text = to_jsonl(*split);
    std::map<std::string, std::array<int64_t, 2>> per;  // domain -> {documents, bytes}
    int64_t bytes = 0;
    for (const auto& d : *split) {
      ++per[d.domain][0];
      per[d.domain][1] += static_cast<int64_t>(d.text.size());
      bytes += static_cast<int64_t>(d.text.size());
    }
    for (const auto& [domain, c] : per)
      domains[domain][name] = {{"documents", c[0]}, {"bytes", c[1]}};
    manifest[name] = {{"file", fs::path(*path).filename().string()},
                      {"documents", split->size()},
                      {"text_bytes", bytes},
                      {"digest", fmt::format("fnv1a64:{:016x}", fnv1a64(text))}};
    write_file_atomic(*path, text.data(), text.size());
  }
  manifest["domains"] = std::move(domains);
  const std::string m = manifest.dump(2) + "\n";
  write_file_atomic((dir / "manifest.json").string(), m.data(), m.size());
}

std::vector<Document> read_documents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  std::vector<Document> docs;
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    const auto bad = [&](const std::string& why) {
      return Error(fmt::format("{}:{}: {}", path, lineno, why));
    };
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw bad(fmt::format("not valid JSON ({})", e.what()));
    }
    if (!j.is_object() || !j.contains("domain") || !j["domain"].is_string() ||
        !j.contains("text") || !j["text"].is_string())
      throw bad("expected an object with string fields \"domain\" and \"text\"");
    Document d{j["domain"].get<std::string>(), j["text"].get<std::string>()};
    if (d.domain.empty()) throw bad("empty domain");
    docs.push_back(std::move(d));
  }
  if (in.bad()) throw Error(fmt::format("{}: read failed", path));
  return docs;
}

}  // namespace moe
