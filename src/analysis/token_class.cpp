#include "moe/token_class.h"

#include <algorithm>
#include <array>
#include <cstdint>

#include "moe/utf8.h"

namespace moe {

const char* token_class_name(TokenClass c) {
  static constexpr std::array<const char*, kNumTokenClasses> names = {
      "special",     "byte",          "letters_latin", "letters_cyrillic",
      "letters_han", "letters_other", "digits",        "code",
      "punct",       "space"};
  return names[static_cast<size_t>(c)];
}

namespace {

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
    const uint32_t c = utf8_decode(s, i);
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

}  // namespace moe
