#include "moe/routing_stats.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "moe/utf8.h"

namespace moe {

double entropy_bits(const double* w, int64_t n) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += w[i];
  if (total <= 0) return 0.0;
  double h = 0;
  for (int64_t i = 0; i < n; ++i)
    if (w[i] > 0) {
      const double q = w[i] / total;
      h -= q * std::log2(q);
    }
  return h;
}

template <class T>
double mean_token_entropy_bits(const T* p, int64_t tokens, int E) {
  if (tokens <= 0) return 0.0;
  double sum = 0;
  std::vector<double> row(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < E; ++e) row[e] = static_cast<double>(p[t * E + e]);
    sum += entropy_bits(row.data(), E);
  }
  return sum / static_cast<double>(tokens);
}

template <class T>
double mean_distribution_entropy_bits(const T* p, int64_t tokens, int E) {
  std::vector<double> mean(static_cast<size_t>(E), 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int e = 0; e < E; ++e) mean[e] += static_cast<double>(p[t * E + e]);
  return entropy_bits(mean.data(), E);
}

double load_cv(const int64_t* load, int E) {
  double mean = 0;
  for (int e = 0; e < E; ++e) mean += static_cast<double>(load[e]);
  mean /= E;
  if (mean <= 0) return 0.0;
  double var = 0;
  for (int e = 0; e < E; ++e) var += (load[e] - mean) * (load[e] - mean);
  return std::sqrt(var / E) / mean;
}

double load_max_over_mean(const int64_t* load, int E) {
  double mean = 0, mx = 0;
  for (int e = 0; e < E; ++e) {
    mean += static_cast<double>(load[e]);
    mx = std::max(mx, static_cast<double>(load[e]));
  }
  mean /= E;
  return mean > 0 ? mx / mean : 0.0;
}

double dropped_fraction(int64_t dropped, int64_t assignments) {
  return assignments > 0 ? static_cast<double>(dropped) / static_cast<double>(assignments) : 0.0;
}

double mutual_information_bits(const std::vector<int64_t>& joint, int E, int D) {
  // I = H(E) + H(D) - H(E, D), each from the same normalized table.
  std::vector<double> pe(static_cast<size_t>(E), 0.0), pd(static_cast<size_t>(D), 0.0);
  std::vector<double> ped(joint.begin(), joint.begin() + static_cast<int64_t>(E) * D);
  for (int e = 0; e < E; ++e)
    for (int d = 0; d < D; ++d) {
      pe[e] += ped[static_cast<size_t>(e) * D + d];
      pd[d] += ped[static_cast<size_t>(e) * D + d];
    }
  const double mi = entropy_bits(pe.data(), E) + entropy_bits(pd.data(), D) -
                    entropy_bits(ped.data(), static_cast<int64_t>(ped.size()));
  return std::max(0.0, mi);  // rounding can leave -1e-16 for independent tables
}

double max_mutual_information_bits(int E, int D) {
  return std::log2(static_cast<double>(std::max(1, std::min(E, D))));
}

void add_coactivation(const int32_t* experts, int64_t tokens, int k, int E, int64_t* counts) {
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t* c = experts + t * k;
    for (int i = 0; i < k; ++i) {
      if (c[i] < 0 || c[i] >= E) continue;
      ++counts[static_cast<int64_t>(c[i]) * E + c[i]];
      for (int j = i + 1; j < k; ++j) {
        if (c[j] < 0 || c[j] >= E || c[j] == c[i]) continue;
        ++counts[static_cast<int64_t>(c[i]) * E + c[j]];
        ++counts[static_cast<int64_t>(c[j]) * E + c[i]];
      }
    }
  }
}

const char* token_class_name(TokenClass c) {
  static constexpr std::array<const char*, kNumTokenClasses> names = {
      "special",     "byte",          "letters_latin", "letters_cyrillic",
      "letters_han", "letters_other", "digits",        "code",
      "punct",       "space"};
  return names[static_cast<size_t>(c)];
}

namespace {

// Decodes one code point at s[i] (valid UTF-8 is checked by the caller) and advances i.
uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  int len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  uint32_t cp = len == 1 ? b : len == 2 ? b & 0x1F : len == 3 ? b & 0x0F : b & 0x07;
  for (int j = 1; j < len; ++j) cp = (cp << 6) | (static_cast<unsigned char>(s[i + j]) & 0x3F);
  i += static_cast<size_t>(len);
  return cp;
}

bool is_space(uint32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == 0xA0 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x3000 || c == 0x202F;
}
bool is_digit(uint32_t c) {
  return (c >= '0' && c <= '9') || (c >= 0xFF10 && c <= 0xFF19);
}
bool is_code_symbol(uint32_t c) {
  return c < 0x80 && std::string_view("{}[]()<>=+-*/_;:#@$%^&|\\~`").find(static_cast<char>(c)) !=
                         std::string_view::npos;
}
// The script of a letter, or -1 when c is not a letter (0 Latin, 1 Cyrillic, 2 Han, 3 other).
int letter_script(uint32_t c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) return 0;
  if (c < 0xC0) return -1;  // the rest of ASCII and Latin-1 punctuation and symbols
  if (c <= 0x24F) return c == 0xD7 || c == 0xF7 ? -1 : 0;  // Latin-1 letters, Latin Extended
  if (c >= 0x1E00 && c <= 0x1EFF) return 0;                // Latin Extended Additional
  if (c >= 0xFF21 && c <= 0xFF5A && (c <= 0xFF3A || c >= 0xFF41)) return 0;  // fullwidth A-z
  if (c >= 0x400 && c <= 0x52F) return 1;
  if ((c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
      (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x2FFFF))
    return 2;
  // Punctuation and symbol blocks; everything else above Latin counts as letters of another
  // script (Greek, kana, Hangul, ...), which is what the corpus holds besides these three.
  if ((c >= 0x2000 && c <= 0x2BFF) || (c >= 0x3000 && c <= 0x303F) ||
      (c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFF65) || c >= 0xE000)
    return -1;
  return 3;
}

}  // namespace

TokenClass classify_token_text(std::string_view s) {
  if (s.empty()) return TokenClass::Special;
  if (!is_valid_utf8(s)) return TokenClass::Byte;
  std::array<int, 4> letters{};
  bool digit = false, code = false, punct = false;
  for (size_t i = 0; i < s.size();) {
    const uint32_t c = next_code_point(s, i);
    // sentencepiece decodes a lone byte-fallback piece to U+FFFD: a byte, not punctuation.
    if (c == 0xFFFD) return TokenClass::Byte;
    if (const int script = letter_script(c); script >= 0)
      ++letters[static_cast<size_t>(script)];
    else if (is_digit(c))
      digit = true;
    else if (is_code_symbol(c))
      code = true;
    else if (!is_space(c))
      punct = true;
  }
  const auto most = std::max_element(letters.begin(), letters.end());
  if (*most > 0)
    return static_cast<TokenClass>(static_cast<int>(TokenClass::LettersLatin) +
                                   static_cast<int>(most - letters.begin()));
  if (digit) return TokenClass::Digits;
  if (code) return TokenClass::Code;
  if (punct) return TokenClass::Punct;
  return TokenClass::Space;
}

template double mean_token_entropy_bits<float>(const float*, int64_t, int);
template double mean_token_entropy_bits<double>(const double*, int64_t, int);
template double mean_distribution_entropy_bits<float>(const float*, int64_t, int);
template double mean_distribution_entropy_bits<double>(const double*, int64_t, int);

}  // namespace moe
