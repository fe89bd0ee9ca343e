// GGUF models of llama.cpp's MoE architectures, both ways. Each maps to one Hugging Face family
// of hf_checkpoint.h and back:
//   llama     (Mixtral)  Q/K rows permuted for llama.cpp's interleaved RoPE, renormalized top-k
//   qwen2moe  q/k/v biases, a sigmoid-gated shared expert (ffn_*_shexp, ffn_gate_inp_shexp)
//   qwen3moe  per-head q/k RMSNorm (attn_q_norm / attn_k_norm [head_dim]), renormalized top-k
//   olmoe     q/k RMSNorm over the whole projection, top-k not renormalized
//   qwen3next (qwen3_next) and qwen35moe (qwen3_5_moe): Gated DeltaNet layers (attn_qkv,
//             attn_gate, ssm_ba | ssm_beta + ssm_alpha, ssm_conv1d, ssm_dt.bias, ssm_a, ssm_norm,
//             ssm_out) and gated full attention (attn_q [2 * H * hd, d]) every
//             full_attention_interval layers, post_attention_norm, a sigmoid-gated shared expert;
//             values as llama.cpp's converter stores them (gguf_hybrid_values)
//   gpt-oss   (gpt_oss) biased attention with per-head sinks (attn_sinks), sliding windows on the
//             even layers, post_attention_norm, a biased router (ffn_gate_inp.bias), biased
//             experts (ffn_{gate,up,down}_exps.bias), MXFP4 experts copied bit for bit
// Tensors are blk.N.<name>.weight with the experts stacked [E, rows, cols] (ffn_gate_exps,
// ffn_up_exps, ffn_down_exps) and the router ffn_gate_inp [E, d]. A dense layer (Qwen's
// mlp_only_layers / decoder_sparse_step) is ffn_gate / ffn_up / ffn_down of width
// feed_forward_length and no router; llama.cpp itself only loads these architectures with every
// layer MoE, so the writer says so when it writes one.
// The writer streams tensor by tensor through GgufWriter; the type of each matrix follows a
// TypeScheme (llama.cpp's --type plus the Q4_K_M / Q5_K_M mixes and the MoE overrides); router,
// norms and biases stay F32.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moe/gguf.h"
#include "moe/hf_checkpoint.h"
#include "moe/model_config.h"
#include "moe/transformer.h"

namespace moe {

// "llama" (mixtral, and the dense llama and mistral), "qwen2moe", "qwen3moe", "olmoe",
// "granitemoe", "gpt-oss", "deepseek2", "qwen3next" (qwen3_next), "qwen35moe" (qwen3_5_moe), and
// the dense "qwen2", "qwen3" for a config's model_type; an error naming it when there is none. A
// llama file without experts reads back as a dense "llama".
std::string gguf_arch_of(const ModelConfig& c);
// Whether the architecture stores Q/K rows for interleaved RoPE (llama.cpp's "norm" RoPE).
bool gguf_rope_interleaved(const ModelConfig& c);

// The config a GGUF file's metadata describes, checked against the tensors it holds: a missing
// key, a key that contradicts a tensor's shape or an architecture not supported is one
// moe::Error naming the file and the key.
ModelConfig model_config_from_gguf(const GgufFile& f);

// The GGUF name of a block tensor: "blk.N.attn_q.weight", the experts' stacked
// "blk.N.ffn_gate_exps.weight", ...
std::string gguf_tensor_name(int layer, HfTensor t);
// The same in config c's architecture (gpt-oss: "blk.N.post_attention_norm.weight").
std::string gguf_tensor_name(const ModelConfig& c, int layer, HfTensor t);

// llama.cpp's fused gate/up experts, "blk.N.ffn_gate_up_exps.weight" [E, 2F, d]
// (create_tensor_gate_up_exps): expert e's F gate rows, then its F up rows. The first row of
// expert e's gate (up = false) or up matrix.
std::string gguf_gate_up_exps_name(int layer);
constexpr int64_t gguf_gate_up_first_row(int64_t expert, int64_t F, bool up) {
  return (2 * expert + (up ? 1 : 0)) * F;
}
// Layer `layer`'s fused gate/up experts tensor when f stores them so (no separate
// ffn_gate_exps / ffn_up_exps), its shape checked against [E, 2F, d] (one moe::Error naming the
// file and tensor otherwise); null when the file stores them apart or not at all.
const GgufTensorInfo* gguf_fused_gate_up(const GgufFile& f, int layer, int64_t E, int64_t F,
                                         int64_t d);

// A_log from a stored ssm_a = -exp(A_log); a value that is not negative is one moe::Error naming
// the file, the tensor and the index (it would be NaN).
float a_log_from_ssm_a(float ssm_a, const std::string& file, const std::string& tensor,
                       int64_t index);

// What one stored tensor of a model is. Matrices are [rows, cols]; experts [E, rows, cols].
enum class GgufRole { Vector, Router, Matrix, Experts };
struct GgufModelTensor {
  std::string name;  // GGUF name, e.g. "blk.3.ffn_down_exps.weight"
  // Vectors without an HfTensor of their own (gpt-oss's sinks and biases) carry the kind they
  // belong to (O, Router, ExpertGate ...) and are told apart by name.
  std::vector<int64_t> shape;  // row-major
  GgufRole role = GgufRole::Matrix;
  int layer = -1;               // -1: token_embd, output_norm, output
  HfTensor kind = HfTensor::Q;  // what it is in a block (layer >= 0)
};
// Every tensor of config c in the order the writer stores them.
std::vector<GgufModelTensor> gguf_model_tensors(const ModelConfig& c);

// The storage type of every tensor: `--type` and its overrides.
struct TypeScheme {
  GgmlType base = GgmlType::F32;
  // llama.cpp's Q4_K_M / Q5_K_M: output, and attn_v / ffn_down(_exps) of some layers, in Q6_K.
  bool k_mix = false;
  bool has_expert_type = false, has_other_type = false;
  GgmlType expert_type = GgmlType::F32, other_type = GgmlType::F32;
};
// "f32 f16 bf16 q8_0 q4_0 q4_k q5_k q6_k mxfp4 q4_k_m q5_k_m"; false for anything else.
bool parse_type_scheme(const std::string& name, TypeScheme* out);
// The type tensor t of config c gets: the scheme's choice, then, when a row is not whole blocks
// of it, the fallback llama.cpp takes (Q4_K -> Q4_0 ... -> F16; `fallback` says so when it is
// not null).
GgmlType gguf_tensor_type(const ModelConfig& c, const GgufModelTensor& t, const TypeScheme& s,
                          std::string* fallback = nullptr);

// Where the writer's tensor values come from, one tensor at a time.
class GgufModelSource {
 public:
  virtual ~GgufModelSource() = default;
  // The values of t in Hugging Face row order (Q and K not permuted), numel floats.
  virtual void fill(const GgufModelTensor& t, float* out) const = 0;
  // The stored blocks of t when the source holds t as `type` in GGUF layout already (kept
  // byte for byte), else nullptr.
  virtual const uint8_t* raw(const GgufModelTensor& t, GgmlType type) const {
    (void)t;
    (void)type;
    return nullptr;
  }
  // Whether the source writes t's blocks of `type` itself (fill_raw), without floats to round.
  virtual bool fills_raw(const GgufModelTensor& t, GgmlType type) const {
    (void)t;
    (void)type;
    return false;
  }
  virtual void fill_raw(const GgufModelTensor& t, GgmlType type, uint8_t* out) const {
    (void)t;
    (void)type;
    (void)out;
  }
};

struct GgufModelWriteOptions {
  TypeScheme types;
  std::string name;  // general.name
  // Writes the tokenizer.* keys.
  std::function<void(GgufWriter&)> add_tokenizer;
  // Receives one line per note (type fallbacks, layers llama.cpp cannot load).
  std::function<void(const std::string&)> note;
};

// The sources (gguf_model_sources.cpp). Each reads its input only; the input must outlive it.
// A Hugging Face checkpoint (per-expert tensors stacked as they are read).
std::unique_ptr<GgufModelSource> gguf_source_of_hf(const ModelConfig& c, const HfWeights& w);
// A GGUF file of config c (model_config_from_gguf): tensors whose type is kept are copied as
// stored; the others are widened to fp32 (and the llama architecture's Q/K un-permuted).
std::unique_ptr<GgufModelSource> gguf_source_of_gguf(const ModelConfig& c, const GgufFile& f);
// A trained run's fp32 parameters (the Mixtral family; gguf_unsupported_reason() empty).
std::unique_ptr<GgufModelSource> gguf_source_of_run(const Transformer<float>& m);
// Random weights of any shape: matrices, experts, routers and the shared expert's gate
// ~ N(0, 0.02) (a gate of exactly 0 is NaN in llama.cpp, whose sigmoid is silu(x) / x), norms 1,
// biases 0; each tensor's values fixed by the seed and its name. Quantized
// matrices are drawn directly as valid blocks (uniform quants, fixed scales giving a standard
// deviation of about 0.02), which is fast enough for a 30B-parameter model.
std::unique_ptr<GgufModelSource> gguf_source_random(uint64_t seed);

// qwen3next / qwen35moe: tensor t's values from Hugging Face's form into llama.cpp's (to_gguf)
// or back, as its converter (conversion/qwen.py, ggml-org/llama.cpp 03173d5e) changes them: the
// zero-centred RMSNorm weights w stored as 1 + w, A_log as ssm_a = -exp(A_log), and for
// qwen35moe every value-head axis of a DeltaNet layer tiled (grouped head kh * r + j stored at
// j * Hk + kh). Nothing for other architectures. `file` names the source in errors (from_gguf).
void gguf_hybrid_values(const ModelConfig& c, const GgufModelTensor& t, float* x, bool to_gguf,
                        const std::string& file = "");

// Writes config c from `src` to `out_path` (atomically), tensor by tensor.
void write_gguf_model(const ModelConfig& c, const GgufModelSource& src, const std::string& out_path,
                      const GgufModelWriteOptions& opt);

// The inverse of permute_rope_rows (gguf_export.h): llama.cpp's interleaved rows back to the
// rotate_half layout.
void unpermute_rope_rows(const float* src, float* dst, int n_heads, int head_dim, int64_t cols);

}  // namespace moe
