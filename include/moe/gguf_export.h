// GGUF export for llama.cpp: the Mixtral-shaped model becomes llama.cpp's "llama" architecture
// (the one convert_hf_to_gguf.py uses for Mixtral and for dense Llama), so llama.cpp runs what
// `moe train` trained. Names, keys and the Q/K row permutation follow convert_hf_to_gguf.py.
#pragma once

#include <functional>
#include <string>

#include "moe/gguf.h"
#include "moe/model_config.h"
#include "moe/safetensors.h"
#include "moe/transformer.h"

namespace moe {

// Why llama.cpp's "llama" architecture cannot run this config exactly, as one line naming the
// config key (e.g. "n_shared_experts = 2: ..."); empty when it can.
std::string gguf_unsupported_reason(const ModelConfig& c);

// Writes `model` to `out_path` (atomically). `tokenizer_model_path` is the run's sentencepiece
// tokenizer.model, or "" for the byte tokenizer. `dtype` (F32, F16 or BF16) is used for the
// matrices; norms and the router stay F32. Throws moe::Error naming the config key when
// gguf_unsupported_reason() is not empty, and naming the file for tokenizer problems.
void export_gguf(const Transformer<float>& model, const std::string& tokenizer_model_path,
                 const std::string& out_path, DType dtype);

// The same with each tensor's type from `types` (gguf_model.h); `note` gets the writer's notes.
struct TypeScheme;
void export_gguf(const Transformer<float>& model, const std::string& tokenizer_model_path,
                 const std::string& out_path, const TypeScheme& types,
                 const std::function<void(const std::string&)>& note);

// Reorders the rows of a Q or K projection ([n_heads * head_dim, cols], row-major) from the
// Hugging Face rotate_half RoPE layout (pairs i, i + head_dim/2) to the interleaved layout
// llama.cpp's "llama" RoPE rotates (pairs 2i, 2i+1): dst row 2i+j of a head = src row
// i + j*head_dim/2. Attention scores are unchanged because q and k move together.
void permute_rope_rows(const float* src, float* dst, int n_heads, int head_dim, int64_t cols);

}  // namespace moe
