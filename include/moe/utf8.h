// UTF-8 and GPT-2's byte alphabet, shared by the corpus, the tokenizers, the exporters and the
// routing statistics (one copy of each; they were written three times).
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

namespace moe {

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool is_valid_utf8(std::string_view s);

// Length of the well-formed UTF-8 sequence starting at s[i], else 0.
size_t utf8_sequence_length(std::string_view s, size_t i);

// The code point at s[i], advancing i past it; an ill-formed byte gives U+FFFD and advances
// by one.
char32_t utf8_decode(std::string_view s, size_t& i);

// The UTF-8 bytes of one code point (at most U+10FFFF).
std::string utf8_encode(char32_t cp);

// GPT-2's bytes_to_unicode, the alphabet of byte-level BPE: printable bytes stand for
// themselves, the other 68 get code points 256 + n in byte order, so every byte has a visible,
// non-space stand-in.
const std::array<char32_t, 256>& gpt2_byte_chars();

}  // namespace moe
