#include "moe/gguf_tokenizer.h"

// Implemented on branch gguf-tokenizer (issue 19).
