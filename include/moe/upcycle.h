// Sparse upcycling (Komatsuzaki et al. 2022): a dense model becomes a Mixture of Experts whose
// experts start as copies of its MLP, ready to train on (`moe train --init-from`).
//
// The dense model is a Hugging Face checkpoint of a dense family or a dense run of ours
// (num_local_experts = 0); the result is a checkpoint directory of the matching MoE family:
//   llama, mistral, a dense run  ->  mixtral      qwen2 -> qwen2_moe      qwen3 -> qwen3_moe
// Attention, norms, biases, q/k norms, embeddings and the LM head are copied as stored; every
// layer's MLP becomes an MoE block of E experts, top-K, gates renormalized over the K
// (norm_topk_prob true: the only gating under which the dense function can be kept exactly).
//
// Granularity G (fine-grained upcycling; He et al. 2024, "Upcycling Large Language Models into
// Mixture of Experts", virtual groups and weight scaling): the MLP's intermediate dimension I is
// cut into G slices of width I/G, and the E experts form E/G virtual groups of G experts, expert
// e = g*G + s holding slice s (rows s*I/G.. of gate_proj and up_proj, the same columns of
// down_proj). The dense MLP is the sum of its slices, so
//   - the router rows of a group are one draw from N(0, initializer_range), shared by its G
//     experts: their logits tie, and top-K with K a multiple of G selects whole groups, i.e.
//     K/G complete copies of the MLP;
//   - each selected expert's renormalized gate is then p_g / (G * sum of the selected groups'
//     p), so the selected slices add up to MLP(x) / G: down_proj is scaled by G to undo it.
// With K a multiple of G (G = 1: every K) the upcycled model computes the dense model's
// function exactly (up to float rounding); otherwise each token sees K of the G slices, scaled
// by G, an unbiased estimate of the MLP over a uniform choice of slices, and the result says
// that it does not start from the dense function.
//
// qwen2_moe always has a sigmoid-gated shared expert: it gets the experts' width, gate_proj and
// up_proj drawn from N(0, initializer_range), down_proj and the gate zero. It then adds
// nothing (0 * sigmoid(0)), so identity holds, while its down_proj's gradient is not zero, so
// training can grow it; an all-zero shared expert would stay zero forever.
//
// The aux-loss coefficient written is moe's default alpha 0.01 (DESIGN.md) in Hugging Face's
// convention (0.01 / K). The output is written into a temporary sibling directory renamed to
// `out` at the end: nothing is left behind on failure, and `out` must not exist. The dense model
// is only read (mapped, one layer's MLP in fp32 at a time); the weights are written in shards
// (model.safetensors, or model-0000i-of-0000n.safetensors and the index, as save_pretrained).
#pragma once

#include <cstdint>
#include <string>

namespace moe {

struct UpcycleOptions {
  int experts = 8;      // E
  int top_k = 2;        // K, at most E
  int granularity = 1;  // G, dividing E and the MLP width
  uint64_t seed = 0;    // the routers' draw
  // Weights in shards of about this size (save_pretrained's default max_shard_size, 5 GB), cut
  // between layers; what is written is held in memory up to one shard.
  int64_t max_shard_bytes = 5'000'000'000;
};

struct UpcycleResult {
  std::string source;         // "llama", "mistral", "qwen2", "qwen3" or "run"
  std::string family;         // the model_type written
  int expert_width = 0;       // I / G
  bool starts_dense = false;  // K is a multiple of G: the dense function, exactly
  int64_t total_parameters = 0, active_parameters = 0;
};

// Classifies `dense` with model_format_of; a GGUF file, an MoE model, or options that do not
// fit (E not a multiple of G, K > E, the width not divisible by G, `out` existing) are one
// error line each.
UpcycleResult upcycle(const std::string& dense, const std::string& out, const UpcycleOptions& opt);

// The MoE family a dense one upcycles to ("run" -> "mixtral"); an error for any other.
std::string upcycled_family(const std::string& dense_family);

}  // namespace moe
