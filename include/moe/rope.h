// RoPE frequencies and their scalings: the one place that turns a model's rope_theta and its
// config.json rope_scaling into inverse frequencies and the attention factor. The training
// Attention, the Decoder's tables (and the CUDA model) all take their tables from here, so a
// rope-scaled model is trained, fine-tuned and run alike.
// Types (Hugging Face modeling_rope_utils.py semantics; docs/model.md):
//   default  inv_freq_i = theta^(-2i/dim)
//   linear   inv_freq_i / factor (positions interpolated)
//   dynamic  NTK-aware: theta grows with the sequence length L past max_position_embeddings M,
//            theta' = theta * (factor * L / M - (factor - 1))^(dim / (dim - 2))
//   yarn     per frequency a ramp between interpolation (inv_freq / factor) and extrapolation,
//            bounded by the dimensions that turn beta_fast and beta_slow times over the original
//            context; attention factor 0.1 ln(factor) + 1 (or the ratio of the mscale and
//            mscale_all_dim terms, as DeepSeek configs give it, or an explicit attention_factor)
//   llama3   long wavelengths (> original / low_freq_factor) divided by factor, short ones
//            (< original / high_freq_factor) kept, a smooth blend between
// The attention factor multiplies cos and sin (so q.k scales by its square), as Hugging Face
// applies the `attention_factor` its rope init returns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

enum class RopeType { Default, Linear, Dynamic, Yarn, Llama3 };

// config.json "rope_scaling" (or "rope_parameters"); the fields a type does not use are ignored.
struct RopeScaling {
  RopeType type = RopeType::Default;
  double factor = 1.0;
  // The pre-training context. Resolved when the config is read: yarn's defaults to
  // max_position_embeddings, dynamic's is always max_position_embeddings (as Hugging Face
  // computes it), llama3 requires it.
  int original_max_position_embeddings = 0;
  double beta_fast = 32.0, beta_slow = 1.0;   // yarn
  double attention_factor = 0.0;              // yarn; 0: derived from factor and the mscales
  double mscale = 0.0, mscale_all_dim = 0.0;  // yarn (DeepSeek); 0: absent
  bool truncate = true;                       // yarn: floor/ceil the correction range
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3

  bool scaled() const { return type != RopeType::Default; }
  // The positions the scaling serves: max_position_embeddings, or factor times the original
  // context where that is longer (Qwen's YaRN: 4 x 32768 over a max_position_embeddings of
  // 40960; dynamic NTK past max_position_embeddings).
  int context_length(int max_position_embeddings) const;
  // Throws moe::Error "<where>: rope_scaling.<key> ..." for the first bad value.
  void validate(const std::string& where) const;
};

// YaRN's attention temperature term: 1 for scale <= 1, else 0.1 m ln(scale) + 1 (DeepSeek's
// softmax scale takes yarn_mscale(factor, mscale_all_dim)^2 on top of the rotation's factor).
double yarn_mscale(double scale, double m);

// "default", "linear", "dynamic", "yarn", "llama3".
const char* rope_type_name(RopeType t);
// false for a name that is none of them.
bool rope_type_from_name(const std::string& name, RopeType& out);

struct RopeFrequencies {
  std::vector<double> inv_freq;   // [dim/2]
  double attention_factor = 1.0;  // multiplies cos and sin
};

// The frequencies of `dim` rotary dimensions. seq_len: the length the sequence has reached
// (dynamic only; up to original_max_position_embeddings, the model's max_position_embeddings,
// the frequencies are the unscaled ones).
RopeFrequencies rope_frequencies(int dim, double theta, const RopeScaling& s, int64_t seq_len = 0);

// cos, sin [positions, dim/2] rows first..first+count-1 (grown to hold them, rows before
// `first` kept): cos[p, i] = attention_factor * cos(p * inv_freq_i), computed in double.
template <class T>
void rope_table_rows(std::vector<T>& cos, std::vector<T>& sin, const RopeFrequencies& f,
                     int64_t first, int64_t count);

}  // namespace moe
