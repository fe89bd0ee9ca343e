// Token classes for the routing analysis (expert x token class tables): what kind of text a
// vocabulary entry decodes to.
#pragma once

#include <string_view>

namespace moe {

// Token classes, from a token's decoded UTF-8 text:
//   special  decodes to nothing (BOS, EOS, control ids)
//   byte     not valid UTF-8 on its own (a byte-fallback piece or a lone byte of a character),
//            or holding U+FFFD (what sentencepiece decodes such a piece to)
//   letters_latin / letters_cyrillic / letters_han / letters_other  holds letters: the script
//            of most of its letters (ties go to the earlier script in this list)
//   digits   no letters, some digit
//   code     no letters or digits, some of {}[]()<>=+-*/_;:#@$%^&|\~`
//   punct    no letters, digits or code symbols, some other punctuation or symbol
//   space    whitespace only
// The order decides mixed tokens: " the" is letters_latin, " 42" digits, "();" code.
enum class TokenClass {
  Special,
  Byte,
  LettersLatin,
  LettersCyrillic,
  LettersHan,
  LettersOther,
  Digits,
  Code,
  Punct,
  Space,
};
inline constexpr int kNumTokenClasses = 10;
const char* token_class_name(TokenClass c);
TokenClass classify_token_text(std::string_view utf8);

}  // namespace moe
