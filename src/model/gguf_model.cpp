#include "moe/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "moe/error.h"
#include "moe/gguf_export.h"

namespace moe {

namespace {

// llama.cpp's general.file_type (LlamaFileType) of a scheme.
uint32_t file_type(const TypeScheme& s) {
  switch (s.base) {
    case GgmlType::F16:
      return 1;
    case GgmlType::Q4_0:
      return 2;
    case GgmlType::Q8_0:
      return 7;
    case GgmlType::Q4_K:
      return s.k_mix ? 15 : 14;  // Q4_K_M, Q4_K_S
    case GgmlType::Q5_K:
      return s.k_mix ? 17 : 16;  // Q5_K_M, Q5_K_S
    case GgmlType::Q6_K:
      return 18;
    case GgmlType::BF16:
      return 32;
    case GgmlType::MXFP4:
      return 38;  // MOSTLY_MXFP4_MOE
    default:
      return 0;
  }
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_text(const std::vector<int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

// llama.cpp's rule for the layers whose attn_v / ffn_down get more bits in the _M mixes.
bool use_more_bits(int layer, int n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

// The next type llama.cpp falls back to when a row is not whole blocks of `t`.
GgmlType fallback_of(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_K:
      return GgmlType::Q4_0;  // llama.cpp takes Q5_0, a type this code does not compute with
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return GgmlType::Q8_0;  // llama.cpp: Q5_1 for Q5_K, Q8_0 for Q6_K
    default:
      return GgmlType::F16;
  }
}

}  // namespace

namespace {

// llama.cpp's Gated DeltaNet hybrids: qwen3next and qwen35moe.
bool is_hybrid(const ModelConfig& c) {
  return c.model_type == "qwen3_next" || c.model_type == "qwen3_5_moe";
}

// Reorders the Hv value-head blocks of `block` values in each of `outer` runs (run o at
// x + o * stride) between Hugging Face's grouping (key head kh's r heads together: kh * r + j)
// and llama.cpp's tiling (j * Hk + kh).
void retile(float* x, int64_t outer, int64_t stride, int64_t Hk, int64_t r, int64_t block,
            bool to_tiled) {
  std::vector<float> tmp(static_cast<size_t>(Hk * r * block));
  for (int64_t o = 0; o < outer; ++o) {
    float* run = x + o * stride;
    std::copy_n(run, tmp.size(), tmp.data());
    for (int64_t kh = 0; kh < Hk; ++kh)
      for (int64_t j = 0; j < r; ++j) {
        const int64_t grouped = kh * r + j, tiled = j * Hk + kh;
        std::copy_n(tmp.data() + (to_tiled ? grouped : tiled) * block, block,
                    run + (to_tiled ? tiled : grouped) * block);
      }
  }
}

}  // namespace

std::string gguf_gate_up_exps_name(int layer) {
  return fmt::format("blk.{}.ffn_gate_up_exps.weight", layer);
}

const GgufTensorInfo* gguf_fused_gate_up(const GgufFile& f, int layer, int64_t E, int64_t F,
                                         int64_t d) {
  const std::string name = gguf_gate_up_exps_name(layer);
  if (f.has_tensor(gguf_tensor_name(layer, HfTensor::ExpertGate)) || !f.has_tensor(name))
    return nullptr;
  const GgufTensorInfo& info = f.tensor(name);
  MOE_REQUIRE(info.shape() == (std::vector<int64_t>{E, 2 * F, d}),
              "{}: tensor {} has shape [{}], expected [{}, {}, {}]", f.path(), name,
              fmt::join(info.shape(), ", "), E, 2 * F, d);
  return &info;
}

float a_log_from_ssm_a(float ssm_a, const std::string& file, const std::string& tensor,
                       int64_t index) {
  MOE_REQUIRE(ssm_a < 0, "{}: tensor {} holds {} at {}, expected -exp(A_log) < 0", file, tensor,
              ssm_a, index);
  return static_cast<float>(std::log(-static_cast<double>(ssm_a)));
}

void gguf_hybrid_values(const ModelConfig& c, const GgufModelTensor& t, float* x, bool to_gguf,
                        const std::string& file) {
  if (!is_hybrid(c)) return;
  const int64_t n = numel_of(t.shape);
  auto ends = [&](const char* suffix) { return t.name.ends_with(suffix); };
  // The converter folds the 1 of the zero-centred RMSNorms into the weights (not the gated norm
  // of the DeltaNet, ssm_norm, whose scale is its weight).
  if (t.name == "output_norm.weight" || ends(".attn_norm.weight") ||
      ends(".post_attention_norm.weight") || ends(".attn_q_norm.weight") ||
      ends(".attn_k_norm.weight")) {
    for (int64_t i = 0; i < n; ++i) x[i] = to_gguf ? x[i] + 1.0f : x[i] - 1.0f;
    return;
  }
  if (ends(".ssm_a")) {  // A_log <-> -exp(A_log)
    for (int64_t i = 0; i < n; ++i)
      x[i] = to_gguf ? static_cast<float>(-std::exp(static_cast<double>(x[i])))
                     : a_log_from_ssm_a(x[i], file, t.name, i);
  }
  const LinearAttnConfig& g = c.linear;
  const int64_t Hk = g.num_k_heads, Hv = g.num_v_heads, r = Hk > 0 ? Hv / Hk : 1;
  if (c.model_type != "qwen3_5_moe" || r == 1 || t.layer < 0 || !c.is_linear_layer(t.layer)) return;
  // qwen35moe: every value-head axis tiled (conversion/qwen.py _LinearAttentionVReorderBase).
  const int64_t dv = g.v_head_dim, kd2 = 2 * g.key_dim(), cols = t.shape.back();
  if (ends(".attn_qkv.weight"))
    retile(x + kd2 * cols, 1, 0, Hk, r, dv * cols, to_gguf);
  else if (ends(".attn_gate.weight"))
    retile(x, 1, 0, Hk, r, dv * cols, to_gguf);
  else if (ends(".ssm_beta.weight") || ends(".ssm_alpha.weight"))
    retile(x, 1, 0, Hk, r, cols, to_gguf);
  else if (ends(".ssm_a") || ends(".ssm_dt.bias"))
    retile(x, 1, 0, Hk, r, 1, to_gguf);
  else if (ends(".ssm_conv1d.weight"))
    retile(x + kd2 * cols, 1, 0, Hk, r, dv * cols, to_gguf);
  else if (ends(".ssm_out.weight"))  // the columns
    retile(x, t.shape[0], cols, Hk, r, dv, to_gguf);
}

std::string gguf_arch_of(const ModelConfig& c) {
  // llama.cpp stores Mixtral, Llama and Mistral as its llama architecture.
  if (c.model_type == "mixtral" || c.model_type == "llama" || c.model_type == "mistral")
    return "llama";
  if (c.model_type == "qwen2" || c.model_type == "qwen3") return c.model_type;
  if (c.model_type == "qwen2_moe") return "qwen2moe";
  if (c.model_type == "qwen3_moe") return "qwen3moe";
  if (c.model_type == "olmoe") return "olmoe";
  if (c.model_type == "granitemoe") return "granitemoe";
  if (c.model_type == "gpt_oss") return "gpt-oss";        // llama.cpp's LLM_ARCH_OPENAI_MOE
  if (c.model_type == "qwen3_next") return "qwen3next";   // LLM_ARCH_QWEN3NEXT
  if (c.model_type == "qwen3_5_moe") return "qwen35moe";  // LLM_ARCH_QWEN35MOE
  if (c.is_mla()) return "deepseek2";                     // deepseek_v2, deepseek_v3, kimi_k2
  throw Error(
      fmt::format("model_type \"{}\" has no GGUF architecture here (expected mixtral, "
                  "qwen2_moe, qwen3_moe, olmoe, granitemoe, gpt_oss, deepseek_v2, deepseek_v3, "
                  "qwen3_next, qwen3_5_moe, llama, mistral, qwen2 or qwen3)",
                  c.model_type));
}

bool gguf_rope_interleaved(const ModelConfig& c) {
  // llama.cpp's granite architectures rotate as its llama one (convert_hf_to_gguf permutes).
  const std::string arch = gguf_arch_of(c);
  return arch == "llama" || arch == "granitemoe";
}

void unpermute_rope_rows(const float* src, float* dst, int n_heads, int head_dim, int64_t cols) {
  MOE_CHECK(head_dim % 2 == 0, "unpermute_rope_rows: head_dim {} is odd", head_dim);
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h)
    for (int i = 0; i < half; ++i)
      for (int j = 0; j < 2; ++j) {
        const float* s = src + (static_cast<int64_t>(h) * head_dim + 2 * i + j) * cols;
        std::copy_n(s, cols, dst + (static_cast<int64_t>(h) * head_dim + i + j * half) * cols);
      }
}

std::string gguf_tensor_name(const ModelConfig& c, int layer, HfTensor t) {
  // llama.cpp's gpt-oss, qwen3next and qwen35moe name the FFN's input norm as the attention's
  // post-norm.
  if ((c.model_type == "gpt_oss" || is_hybrid(c)) && t == HfTensor::PostAttentionNorm)
    return fmt::format("blk.{}.post_attention_norm.weight", layer);
  return gguf_tensor_name(layer, t);
}

std::string gguf_tensor_name(int layer, HfTensor t) {
  const char* n = "";
  switch (t) {
    case HfTensor::InputNorm:
      n = "attn_norm.weight";
      break;
    case HfTensor::PostAttentionNorm:
      n = "ffn_norm.weight";
      break;
    case HfTensor::Q:
      n = "attn_q.weight";
      break;
    case HfTensor::K:
      n = "attn_k.weight";
      break;
    case HfTensor::V:
      n = "attn_v.weight";
      break;
    case HfTensor::O:
      n = "attn_output.weight";
      break;
    case HfTensor::QBias:
      n = "attn_q.bias";
      break;
    case HfTensor::KBias:
      n = "attn_k.bias";
      break;
    case HfTensor::VBias:
      n = "attn_v.bias";
      break;
    case HfTensor::QNorm:
      n = "attn_q_norm.weight";
      break;
    case HfTensor::KNorm:
      n = "attn_k_norm.weight";
      break;
    case HfTensor::Router:
      n = "ffn_gate_inp.weight";
      break;
    case HfTensor::ExpertGate:
      n = "ffn_gate_exps.weight";
      break;
    case HfTensor::ExpertUp:
      n = "ffn_up_exps.weight";
      break;
    case HfTensor::ExpertDown:
      n = "ffn_down_exps.weight";
      break;
    case HfTensor::SharedGate:
      n = "ffn_gate_shexp.weight";
      break;
    case HfTensor::SharedUp:
      n = "ffn_up_shexp.weight";
      break;
    case HfTensor::SharedDown:
      n = "ffn_down_shexp.weight";
      break;
    case HfTensor::SharedExpertGate:
      n = "ffn_gate_inp_shexp.weight";
      break;
    case HfTensor::DenseGate:
      n = "ffn_gate.weight";
      break;
    case HfTensor::DenseUp:
      n = "ffn_up.weight";
      break;
    case HfTensor::DenseDown:
      n = "ffn_down.weight";
      break;
    case HfTensor::QA:  // llama.cpp deepseek2
      n = "attn_q_a.weight";
      break;
    case HfTensor::QANorm:
      n = "attn_q_a_norm.weight";
      break;
    case HfTensor::QB:
      n = "attn_q_b.weight";
      break;
    case HfTensor::KvA:
      n = "attn_kv_a_mqa.weight";
      break;
    case HfTensor::KvANorm:
      n = "attn_kv_a_norm.weight";
      break;
    case HfTensor::KvB:
      n = "attn_kv_b.weight";
      break;
    case HfTensor::RouterBias:
      n = "exp_probs_b.bias";
      break;
  }
  return fmt::format("blk.{}.{}", layer, n);
}

// ---- reading the config -----------------------------------------------------------------------

ModelConfig model_config_from_gguf(const GgufFile& f) {
  const std::string& path = f.path();
  const std::string arch = f.string("general.architecture");
  std::string type;
  if (arch == "llama")
    type = "mixtral";
  else if (arch == "qwen2moe")
    type = "qwen2_moe";
  else if (arch == "qwen3moe")
    type = "qwen3_moe";
  else if (arch == "olmoe")
    type = "olmoe";
  else if (arch == "granitemoe")
    type = "granitemoe";
  else if (arch == "qwen2" || arch == "qwen3")  // dense
    type = arch;
  else if (arch == "gpt-oss")
    type = "gpt_oss";
  else if (arch == "qwen3next")
    type = "qwen3_next";
  else if (arch == "qwen35moe")
    type = "qwen3_5_moe";
  else if (arch == "deepseek2")  // V3's sigmoid gating and selection bias, else V2
    type =
        f.has(arch + ".expert_gating_func") && f.value(arch + ".expert_gating_func").as_int() == 2
            ? "deepseek_v3"
            : "deepseek_v2";
  else
    throw Error(
        fmt::format("{}: general.architecture \"{}\" is not supported (expected llama, "
                    "qwen2moe, qwen3moe, olmoe, granitemoe, gpt-oss, deepseek2, qwen3next, "
                    "qwen35moe, qwen2 or qwen3)",
                    path, arch));
  auto key = [&](const char* k) { return arch + "." + k; };
  auto integer = [&](const std::string& k) -> int64_t {
    try {
      return f.value(k).as_int();
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}: {}", path, k, e.what()));
    }
  };
  auto real = [&](const std::string& k) -> double {
    const GgufValue& v = f.value(k);
    if (v.type() == GgufType::F32) return v.as_f32();
    try {
      return static_cast<double>(v.as_int());
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}: {}", path, k, e.what()));
    }
  };
  auto positive = [&](const std::string& k) {
    const int64_t v = integer(k);
    MOE_REQUIRE(v > 0 && v <= (int64_t{1} << 30), "{}: {} = {} is not a positive count", path, k,
                v);
    return static_cast<int>(v);
  };
  // A dimension of a tensor (ggml order), the tensor required.
  auto dim = [&](const std::string& tensor, size_t i) {
    const GgufTensorInfo& t = f.tensor(tensor);
    MOE_REQUIRE(t.dims.size() > i, "{}: tensor {} has {} dims, expected more than {}", path, tensor,
                t.dims.size(), i);
    return t.dims[i];
  };
  // A metadata value must agree with the tensor that has it as a dimension.
  auto agree = [&](const std::string& k, int64_t value, const std::string& tensor, size_t i) {
    const int64_t got = dim(tensor, i);
    MOE_REQUIRE(got == value, "{}: {} = {} contradicts tensor {} of shape {}", path, k, value,
                tensor, shape_text(f.tensor(tensor).shape()));
  };
  for (const char* unsupported : {"attention.sliding_window"}) {
    if (!f.has(key(unsupported)) || type == "gpt_oss") continue;
    const GgufValue& v = f.value(key(unsupported));
    const bool none = v.type() == GgufType::String && v.as_string() == "none";
    MOE_REQUIRE(none, "{}: {} = {} is not supported (plain RoPE, full attention only)", path,
                key(unsupported), v.to_string());
  }

  nlohmann::json j;
  j["model_type"] = type;
  const int L = positive(key("block_count"));
  const int d = positive(key("embedding_length"));
  const int H = positive(key("attention.head_count"));
  j["num_hidden_layers"] = L;
  j["hidden_size"] = d;
  j["num_attention_heads"] = H;
  j["num_key_value_heads"] =
      f.has(key("attention.head_count_kv")) ? positive(key("attention.head_count_kv")) : H;
  const bool mla = arch == "deepseek2";  // key and value lengths differ, partial RoPE
  if (!mla && f.has(key("attention.key_length"))) {
    const int hd = positive(key("attention.key_length"));
    MOE_REQUIRE(
        !f.has(key("attention.value_length")) || integer(key("attention.value_length")) == hd,
        "{}: {} = {} differs from {} = {} (not supported)", path, key("attention.value_length"),
        integer(key("attention.value_length")), key("attention.key_length"), hd);
    j["head_dim"] = hd;
  }
  const bool hybrid = type == "qwen3_next" || type == "qwen3_5_moe";
  if (!mla && !hybrid && f.has(key("rope.dimension_count"))) {
    const int64_t rd = integer(key("rope.dimension_count"));
    const int hd = j.contains("head_dim") ? j["head_dim"].get<int>() : d / H;
    MOE_REQUIRE(rd == hd, "{}: {} = {} is not the head size {} (partial RoPE is not supported)",
                path, key("rope.dimension_count"), rd, hd);
  }
  j["max_position_embeddings"] = positive(key("context_length"));
  j["rope_theta"] = f.has(key("rope.freq_base")) ? real(key("rope.freq_base")) : 10000.0;
  if (f.has(key("rope.scaling.type"))) {
    // llama.cpp's keys, as its converter writes them, back to Hugging Face's rope_scaling.
    const GgufValue& v = f.value(key("rope.scaling.type"));
    const std::string st = v.type() == GgufType::String ? v.as_string() : v.to_string();
    MOE_REQUIRE(st == "none" || st == "linear" || st == "yarn",
                "{}: {} = {} is not supported (none, linear or yarn)", path,
                key("rope.scaling.type"), st);
    if (st != "none") {
      nlohmann::json r = {{"rope_type", st}, {"factor", real(key("rope.scaling.factor"))}};
      if (st == "yarn") {
        if (f.has(key("rope.scaling.original_context_length")))
          r["original_max_position_embeddings"] =
              positive(key("rope.scaling.original_context_length"));
        if (f.has(key("rope.scaling.yarn_beta_fast")))
          r["beta_fast"] = real(key("rope.scaling.yarn_beta_fast"));
        if (f.has(key("rope.scaling.yarn_beta_slow")))
          r["beta_slow"] = real(key("rope.scaling.yarn_beta_slow"));
        // llama.cpp multiplies YaRN's default attention factor by attn_factor.
        if (f.has(key("rope.scaling.attn_factor")) && real(key("rope.scaling.attn_factor")) != 1) {
          RopeScaling plain;
          plain.type = RopeType::Yarn;
          plain.factor = r["factor"].get<double>();
          plain.original_max_position_embeddings = 1;
          r["attention_factor"] = rope_frequencies(2, 10000.0, plain).attention_factor *
                                  real(key("rope.scaling.attn_factor"));
        }
        // DeepSeek's mscale_all_dim (llama.cpp assumes mscale equal to it for deepseek2).
        if (f.has(key("rope.scaling.yarn_log_multiplier")) &&
            real(key("rope.scaling.yarn_log_multiplier")) != 0) {
          r["mscale_all_dim"] = real(key("rope.scaling.yarn_log_multiplier")) / 0.1;
          r["mscale"] = r["mscale_all_dim"];
        }
      }
      j["rope_scaling"] = r;
    }
  }
  // gpt-oss as released: YaRN's correction range not rounded (transformers' truncate = false);
  // llama.cpp's gpt-oss files carry no key for it.
  if (type == "gpt_oss" && j.contains("rope_scaling")) j["rope_scaling"]["truncate"] = false;
  j["rms_norm_eps"] = real(key("attention.layer_norm_rms_epsilon"));
  const int64_t V = dim("token_embd.weight", 1);
  if (f.has(key("vocab_size")))
    agree(key("vocab_size"), integer(key("vocab_size")), "token_embd.weight", 1);
  agree(key("embedding_length"), d, "token_embd.weight", 0);
  j["vocab_size"] = V;
  j["tie_word_embeddings"] = !f.has_tensor("output.weight");

  const int E = f.has(key("expert_count")) ? static_cast<int>(integer(key("expert_count"))) : 0;
  MOE_REQUIRE(E >= 0 && E <= (1 << 16), "{}: {} = {} is out of range", path, key("expert_count"),
              E);
  const bool dense_arch = arch == "qwen2" || arch == "qwen3";
  MOE_REQUIRE(E > 0 || arch == "llama" || dense_arch,
              "{}: {} is missing ({} is a mixture of experts)", path, key("expert_count"), arch);
  MOE_REQUIRE(E == 0 || !dense_arch, "{}: {} = {} in the dense architecture {}", path,
              key("expert_count"), E, arch);
  // A llama file without experts is a dense Llama (or Mistral: llama.cpp stores it as llama).
  if (arch == "llama" && E == 0) j["model_type"] = type = "llama";
  std::vector<int> dense_layers;
  int moe_layer = -1;  // a layer with experts, whose tensors fix the widths
  for (int l = 0; l < L; ++l) {
    if (E > 0 && f.has_tensor(fmt::format("blk.{}.ffn_gate_inp.weight", l)))
      moe_layer = moe_layer < 0 ? l : moe_layer;
    else
      dense_layers.push_back(l);
  }
  MOE_REQUIRE(E == 0 || moe_layer >= 0, "{}: {} = {} but no layer has a router (ffn_gate_inp)",
              path, key("expert_count"), E);
  const int k = E > 0 ? positive(key("expert_used_count")) : 0;
  if (E > 0) {
    j["num_experts_per_tok"] = k;
    agree(key("expert_count"), E, fmt::format("blk.{}.ffn_gate_inp.weight", moe_layer), 1);
  }
  const std::string exps = fmt::format("blk.{}.ffn_gate_exps.weight", moe_layer);
  // The expert width: the metadata's when present (checked against the tensor), else the tensor's.
  // llama.cpp may store gate and up experts as one ffn_gate_up_exps [E, 2F, d] (each expert's
  // F gate rows, then its F up rows; create_tensor_gate_up_exps): the width is half its rows.
  const std::string gate_up = gguf_gate_up_exps_name(moe_layer);
  const bool fused_exps = E > 0 && !f.has_tensor(exps) && f.has_tensor(gate_up);
  auto expert_width = [&](const std::string& k1) -> int64_t {
    if (fused_exps) {
      const int64_t F = dim(gate_up, 1) / 2;
      MOE_REQUIRE(!f.has(k1) || integer(k1) == F,
                  "{}: {} = {} contradicts tensor {} of shape {} (gate and up rows)", path, k1,
                  f.has(k1) ? integer(k1) : 0, gate_up, shape_text(f.tensor(gate_up).shape()));
      return F;
    }
    if (f.has(k1)) {
      agree(k1, integer(k1), exps, 1);
      return integer(k1);
    }
    return dim(exps, 1);
  };
  // The shared expert's width (qwen2moe, qwen3next): its gate tensor's, checked against the
  // metadata when present; 0 without a shared expert.
  auto shared_width = [&](int layer) -> int64_t {
    const std::string sh = fmt::format("blk.{}.ffn_gate_shexp.weight", layer);
    if (!f.has_tensor(sh)) return 0;
    const std::string width_key = key("expert_shared_feed_forward_length");
    if (f.has(width_key)) agree(width_key, integer(width_key), sh, 1);
    return dim(sh, 1);
  };
  const int ff = f.has(key("feed_forward_length")) ? positive(key("feed_forward_length")) : 0;
  if (type == "llama" || dense_arch) {
    MOE_REQUIRE(ff > 0, "{}: {} is missing", path, key("feed_forward_length"));
    agree(key("feed_forward_length"), ff, "blk.0.ffn_gate.weight", 1);
    j["intermediate_size"] = ff;
  } else if (type == "mixtral" || type == "granitemoe") {
    MOE_REQUIRE(ff > 0, "{}: {} is missing", path, key("feed_forward_length"));
    if (E > 0) {
      MOE_REQUIRE(dense_layers.empty(),
                  "{}: layer {} has no router (ffn_gate_inp) though {} = {}: the llama "
                  "architecture has experts in every layer or none",
                  path, dense_layers.front(), key("expert_count"), E);
      agree(key("feed_forward_length"), ff, exps, 1);
    }
    j["intermediate_size"] = ff;
    j["num_local_experts"] = E;
    if (type == "granitemoe") {
      // llama.cpp's granite keys for Granite-MoE's four multipliers.
      for (const auto& [gguf_key, hf_key] :
           {std::pair<const char*, const char*>{"embedding_scale", "embedding_multiplier"},
            {"residual_scale", "residual_multiplier"},
            {"attention.scale", "attention_multiplier"},
            {"logit_scale", "logits_scaling"}})
        if (f.has(key(gguf_key))) j[hf_key] = real(key(gguf_key));
    }
  } else if (type == "gpt_oss") {
    // llama.cpp's gpt-oss: every layer MoE, expert_feed_forward_length the expert width, sliding
    // layers alternating from layer 0 (its swa pattern 2), the clamped SwiGLU's limit fixed at 7
    // (ours: gpt-oss.swiglu_limit when it is not).
    MOE_REQUIRE(dense_layers.empty(), "{}: layer {} has no router (ffn_gate_inp)", path,
                dense_layers.empty() ? 0 : dense_layers.front());
    j["intermediate_size"] = expert_width(key("expert_feed_forward_length"));
    j["num_local_experts"] = E;
    j["sliding_window"] = positive(key("attention.sliding_window"));
    nlohmann::json types = nlohmann::json::array();
    for (int l = 0; l < L; ++l)
      types.push_back(l % 2 == 0 ? "sliding_attention" : "full_attention");
    j["layer_types"] = types;
    j["swiglu_limit"] = f.has(key("swiglu_limit")) ? real(key("swiglu_limit")) : 7.0;
    // No rope.scaling keys: plain RoPE (not GptOssConfig's default YaRN).
    if (!j.contains("rope_scaling")) j["rope_scaling"] = {{"rope_type", "default"}};
    for (const char* t : {"attn_sinks.weight", "attn_output.bias", "ffn_gate_inp.bias",
                          "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias"})
      MOE_REQUIRE(f.has_tensor(fmt::format("blk.0.{}", t)), "{}: tensor blk.0.{} is missing", path,
                  t);
  } else if (mla) {
    // llama.cpp's deepseek2 (convert_hf_to_gguf.py DeepseekV2Model): MLA ranks and head sizes,
    // leading dense layers of feed_forward_length, experts of expert_feed_forward_length,
    // ungated shared experts, the gates' scale, norm and function, expert groups.
    const int rope = positive(key("rope.dimension_count"));
    const int kl = positive(key("attention.key_length"));
    MOE_REQUIRE(kl > rope, "{}: {} = {} leaves no non-rotated part beside {} = {}", path,
                key("attention.key_length"), kl, key("rope.dimension_count"), rope);
    j["qk_rope_head_dim"] = rope;
    j["qk_nope_head_dim"] = kl - rope;
    j["v_head_dim"] = positive(key("attention.value_length"));
    j["kv_lora_rank"] = positive(key("attention.kv_lora_rank"));
    if (f.has(key("attention.q_lora_rank")))
      j["q_lora_rank"] = positive(key("attention.q_lora_rank"));
    else
      j["q_lora_rank"] = nullptr;
    j["rope_interleave"] = true;  // llama.cpp's deepseek2 rotates pairs (2i, 2i+1)
    const int lead = f.has(key("leading_dense_block_count"))
                         ? static_cast<int>(integer(key("leading_dense_block_count")))
                         : 0;
    for (int l = 0; l < L; ++l)
      MOE_REQUIRE((l < lead) == (std::find(dense_layers.begin(), dense_layers.end(), l) !=
                                 dense_layers.end()),
                  "{}: {} = {} but layer {} {} a router (ffn_gate_inp)", path,
                  key("leading_dense_block_count"), lead, l, l < lead ? "has" : "has no");
    j["first_k_dense_replace"] = lead;
    MOE_REQUIRE(ff > 0 || lead == 0, "{}: {} is missing", path, key("feed_forward_length"));
    j["intermediate_size"] = ff > 0 ? ff : 1;
    if (lead > 0) agree(key("feed_forward_length"), ff, "blk.0.ffn_gate.weight", 1);
    j["moe_intermediate_size"] = expert_width(key("expert_feed_forward_length"));
    j["n_routed_experts"] = E;
    j["n_shared_experts"] =
        f.has(key("expert_shared_count")) ? integer(key("expert_shared_count")) : 0;
    j["routed_scaling_factor"] =
        f.has(key("expert_weights_scale")) ? real(key("expert_weights_scale")) : 1.0;
    j["norm_topk_prob"] =
        f.has(key("expert_weights_norm")) ? f.value(key("expert_weights_norm")).as_bool() : false;
    const bool v3 = type == "deepseek_v3";
    j["scoring_func"] = v3 ? "sigmoid" : "softmax";
    const int groups = f.has(key("expert_group_count")) ? positive(key("expert_group_count")) : 1;
    j["n_group"] = groups;
    j["topk_group"] =
        f.has(key("expert_group_used_count")) ? positive(key("expert_group_used_count")) : groups;
    j["topk_method"] = v3 ? "noaux_tc" : groups > 1 ? "group_limited_greedy" : "greedy";
    if (v3 && moe_layer >= 0)
      MOE_REQUIRE(f.has_tensor(fmt::format("blk.{}.exp_probs_b.bias", moe_layer)),
                  "{}: tensor blk.{}.exp_probs_b.bias is missing (sigmoid gating selects with "
                  "it)",
                  path, moe_layer);
  } else if (hybrid) {
    // llama.cpp's qwen3next / qwen35moe (src/models/qwen3next.cpp, qwen35moe.cpp at
    // ggml-org/llama.cpp 02ebd8f7; conversion/qwen.py Qwen3NextModel at 03173d5e): Gated
    // DeltaNet layers sized by the ssm.* keys (state_size the key head size, group_count the
    // key heads, time_step_rank the value heads, inner_size all value channels), every
    // full_attention_interval-th layer gated full attention with partial RoPE
    // (rope.dimension_count), softmax top-k experts renormalized, a sigmoid-gated shared expert.
    const int hd = j.contains("head_dim") ? j["head_dim"].get<int>() : d / H;
    j["head_dim"] = hd;
    const int rd = positive(key("rope.dimension_count"));
    MOE_REQUIRE(rd <= hd && rd % 2 == 0, "{}: {} = {} is not an even count up to the head size {}",
                path, key("rope.dimension_count"), rd, hd);
    j["partial_rotary_factor"] = static_cast<double>(rd) / hd;
    const int K = positive(key("ssm.conv_kernel"));
    const int dk = positive(key("ssm.state_size"));
    const int Hk = positive(key("ssm.group_count"));
    const int Hv = positive(key("ssm.time_step_rank"));
    const int inner = positive(key("ssm.inner_size"));
    MOE_REQUIRE(Hv % Hk == 0, "{}: {} = {} is not a multiple of {} = {}", path,
                key("ssm.time_step_rank"), Hv, key("ssm.group_count"), Hk);
    MOE_REQUIRE(inner % Hv == 0, "{}: {} = {} is not a multiple of {} = {}", path,
                key("ssm.inner_size"), inner, key("ssm.time_step_rank"), Hv);
    const int dv = inner / Hv;
    const int interval = f.has(key("full_attention_interval"))
                             ? positive(key("full_attention_interval"))
                             : 4;  // llama.cpp's default
    nlohmann::json types = nlohmann::json::array();
    int linear = -1;  // a Gated DeltaNet layer, whose tensors are checked against the keys
    for (int l = 0; l < L; ++l) {
      const bool lin = (l + 1) % interval != 0;
      types.push_back(lin ? "linear_attention" : "full_attention");
      if (lin && linear < 0) linear = l;
      const std::string has = fmt::format("blk.{}.{}", l, lin ? "ssm_a" : "attn_q.weight");
      MOE_REQUIRE(f.has_tensor(has), "{}: {} = {} makes layer {} {} but tensor {} is missing", path,
                  key("full_attention_interval"), interval, l,
                  lin ? "Gated DeltaNet" : "full attention", has);
    }
    j["layer_types"] = types;
    j["full_attention_interval"] = interval;
    j["linear_conv_kernel_dim"] = K;
    j["linear_key_head_dim"] = dk;
    j["linear_value_head_dim"] = dv;
    j["linear_num_key_heads"] = Hk;
    j["linear_num_value_heads"] = Hv;
    if (linear >= 0) {
      const std::string p = fmt::format("blk.{}.", linear);
      agree(key("ssm.conv_kernel"), K, p + "ssm_conv1d.weight", 0);
      agree(key("ssm.inner_size"), 2 * Hk * dk + inner, p + "ssm_conv1d.weight", 1);
      agree(key("ssm.time_step_rank"), Hv, p + "ssm_a", 0);
      agree(key("ssm.time_step_rank"), Hv, p + "ssm_dt.bias", 0);
      agree(key("ssm.inner_size"), inner, p + "ssm_out.weight", 0);
      agree(key("ssm.inner_size") + " / " + key("ssm.time_step_rank"), dv, p + "ssm_norm.weight",
            0);
    }
    if (moe_layer >= 0)
      j["moe_intermediate_size"] = expert_width(key("expert_feed_forward_length"));
    j["num_experts"] = E;
    j["shared_expert_intermediate_size"] = shared_width(std::max(moe_layer, 0));
    if (type == "qwen3_next") {
      j["norm_topk_prob"] = true;  // llama.cpp's graph always renormalizes
      j["mlp_only_layers"] = dense_layers;
      j["intermediate_size"] = ff > 0 ? ff : 1;
      if (!dense_layers.empty()) {
        MOE_REQUIRE(ff > 0, "{}: {} is missing (layer {} is dense)", path,
                    key("feed_forward_length"), dense_layers.front());
        agree(key("feed_forward_length"), ff,
              fmt::format("blk.{}.ffn_gate.weight", dense_layers.front()), 1);
      }
    } else {
      MOE_REQUIRE(dense_layers.empty(), "{}: layer {} has no router (ffn_gate_inp)", path,
                  dense_layers.empty() ? 0 : dense_layers.front());
    }
  } else if (type == "olmoe") {
    MOE_REQUIRE(dense_layers.empty(), "{}: layer {} has no router (ffn_gate_inp)", path,
                dense_layers.empty() ? 0 : dense_layers.front());
    j["intermediate_size"] = ff > 0 ? ff : dim(exps, 1);
    if (ff > 0) agree(key("feed_forward_length"), ff, exps, 1);
    j["num_experts"] = E;
    j["norm_topk_prob"] = false;
  } else {
    const int64_t F = expert_width(key("expert_feed_forward_length"));
    j["moe_intermediate_size"] = F;
    j["num_experts"] = E;
    j["intermediate_size"] = ff > 0 ? ff : F;
    if (!dense_layers.empty() && ff > 0)
      agree(key("feed_forward_length"), j["intermediate_size"].get<int64_t>(),
            fmt::format("blk.{}.ffn_gate.weight", dense_layers.front()), 1);
    j["mlp_only_layers"] = dense_layers;
    // llama.cpp: qwen2moe does not renormalize the top-k gates, qwen3moe does.
    j["norm_topk_prob"] = type == "qwen3_moe";
    if (type == "qwen2_moe") {
      j["shared_expert_intermediate_size"] = shared_width(moe_layer);
      j["qkv_bias"] = f.has_tensor("blk.0.attn_q.bias");
    }
  }
  if (type == "qwen3_5_moe") {  // the text model of a Qwen3_5MoeForConditionalGeneration
    nlohmann::json text = j;
    text.erase("model_type");
    nlohmann::json top = {{"model_type", type},
                          {"tie_word_embeddings", j["tie_word_embeddings"]},
                          {"text_config", std::move(text)}};
    j = std::move(top);
  }
  ModelConfig c = model_config_from_hf(j, path + " (GGUF metadata)");
  if (type == "qwen2_moe" && c.moe.n_shared_experts == 0) c.moe.shared_expert_gate = false;
  // llama.cpp's converter stores Qwen3.5's value heads tiled (conversion/qwen.py,
  // _LinearAttentionVReorderBase); qwen3next keeps Hugging Face's grouping.
  if (type == "qwen3_5_moe") c.linear.tiled_heads = true;
  return c;
}

// ---- the tensors of a model -------------------------------------------------------------------

std::vector<GgufModelTensor> gguf_model_tensors(const ModelConfig& c) {
  const int64_t d = c.hidden_size, V = c.vocab_size, hd = c.head_size();
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  std::vector<GgufModelTensor> out;
  auto global = [&](const char* name, std::vector<int64_t> shape, GgufRole role) {
    out.push_back({name, std::move(shape), role, -1});
  };
  int l = 0;
  auto add = [&](HfTensor kind, std::vector<int64_t> shape, GgufRole role) {
    out.push_back({gguf_tensor_name(c, l, kind), std::move(shape), role, l, kind});
  };
  // gpt-oss's vectors with no HfTensor: "blk.N.<name>" of kind `of`.
  const bool gpt_oss = c.model_type == "gpt_oss";
  auto extra = [&](const char* name, HfTensor of, std::vector<int64_t> shape) {
    out.push_back({fmt::format("blk.{}.{}", l, name), std::move(shape), GgufRole::Vector, l, of});
  };
  using T = HfTensor;
  global("token_embd.weight", {V, d}, GgufRole::Matrix);
  // qwen3next / qwen35moe's Gated DeltaNet tensors (no HfTensor of their own: kind O, told apart
  // by name), llama.cpp's names and shapes (src/llama-arch.cpp at ggml-org/llama.cpp 02ebd8f7).
  auto gdn = [&](const char* name, std::vector<int64_t> shape, GgufRole role) {
    out.push_back({fmt::format("blk.{}.{}", l, name), std::move(shape), role, l, HfTensor::O});
  };
  for (; l < c.num_hidden_layers; ++l) {
    add(T::InputNorm, {d}, GgufRole::Vector);
    if (c.is_linear_layer(l)) {
      const LinearAttnConfig& g = c.linear;
      const int64_t cd = g.conv_dim(), vd = g.value_dim(), Hv = g.num_v_heads;
      gdn("attn_qkv.weight", {cd, d}, GgufRole::Matrix);   // q, k, v of all heads
      gdn("attn_gate.weight", {vd, d}, GgufRole::Matrix);  // z
      if (c.model_type == "qwen3_next") {
        gdn("ssm_ba.weight", {2 * Hv, d}, GgufRole::Matrix);  // [b (r), a (r)] per key head
      } else {
        gdn("ssm_beta.weight", {Hv, d}, GgufRole::Matrix);
        gdn("ssm_alpha.weight", {Hv, d}, GgufRole::Matrix);
      }
      gdn("ssm_conv1d.weight", {cd, g.conv_kernel}, GgufRole::Vector);
      gdn("ssm_dt.bias", {Hv}, GgufRole::Vector);
      gdn("ssm_a", {Hv}, GgufRole::Vector);  // -exp(A_log)
      gdn("ssm_norm.weight", {g.v_head_dim}, GgufRole::Vector);
      gdn("ssm_out.weight", {d, vd}, GgufRole::Matrix);
    } else if (c.is_mla()) {  // llama.cpp's deepseek2
      const MlaConfig& a = c.mla;
      const int64_t H = c.num_attention_heads, qk = a.qk_head_dim(), r = a.kv_lora_rank;
      if (a.q_lora_rank > 0) {
        add(T::QA, {a.q_lora_rank, d}, GgufRole::Matrix);
        add(T::QANorm, {a.q_lora_rank}, GgufRole::Vector);
        add(T::QB, {H * qk, a.q_lora_rank}, GgufRole::Matrix);
      } else {
        add(T::Q, {H * qk, d}, GgufRole::Matrix);
      }
      add(T::KvA, {r + a.qk_rope_head_dim, d}, GgufRole::Matrix);
      add(T::KvANorm, {r}, GgufRole::Vector);
      add(T::KvB, {H * (a.qk_nope_head_dim + a.v_head_dim), r}, GgufRole::Matrix);
      add(T::O, {d, H * a.v_head_dim}, GgufRole::Matrix);
    } else {
      add(T::Q, {c.attn_output_gate ? 2 * qd : qd, d}, GgufRole::Matrix);  // + the output gate
      add(T::K, {kvd, d}, GgufRole::Matrix);
      add(T::V, {kvd, d}, GgufRole::Matrix);
      add(T::O, {d, qd}, GgufRole::Matrix);
    }
    if (c.attention_bias) {
      add(T::QBias, {qd}, GgufRole::Vector);
      add(T::KBias, {kvd}, GgufRole::Vector);
      add(T::VBias, {kvd}, GgufRole::Vector);
    }
    if (gpt_oss) {
      extra("attn_output.bias", T::O, {d});
      extra("attn_sinks.weight", T::O, {c.num_attention_heads});
    }
    if (c.qk_norm != QkNorm::None && !c.is_linear_layer(l)) {
      const bool full = c.qk_norm == QkNorm::Full;
      add(T::QNorm, {full ? qd : hd}, GgufRole::Vector);
      add(T::KNorm, {full ? kvd : hd}, GgufRole::Vector);
    }
    add(T::PostAttentionNorm, {d}, GgufRole::Vector);
    if (!c.is_moe_layer(l)) {
      const int64_t F = c.dense_width();
      add(T::DenseGate, {F, d}, GgufRole::Matrix);
      add(T::DenseUp, {F, d}, GgufRole::Matrix);
      add(T::DenseDown, {d, F}, GgufRole::Matrix);
      continue;
    }
    const int64_t E = c.num_local_experts, F = c.intermediate_size;
    add(T::Router, {E, d}, GgufRole::Router);
    if (c.moe.use_selection_bias) add(T::RouterBias, {E}, GgufRole::Vector);  // exp_probs_b
    add(T::ExpertGate, {E, F, d}, GgufRole::Experts);
    add(T::ExpertUp, {E, F, d}, GgufRole::Experts);
    add(T::ExpertDown, {E, d, F}, GgufRole::Experts);
    if (gpt_oss) {
      extra("ffn_gate_inp.bias", T::Router, {E});
      extra("ffn_gate_exps.bias", T::ExpertGate, {E, F});
      extra("ffn_up_exps.bias", T::ExpertUp, {E, F});
      extra("ffn_down_exps.bias", T::ExpertDown, {E, d});
    }
    if (c.moe.n_shared_experts > 0) {
      const int64_t S = c.moe.shared_hidden();
      if (c.moe.shared_expert_gate) add(T::SharedExpertGate, {d}, GgufRole::Router);
      add(T::SharedGate, {S, d}, GgufRole::Matrix);
      add(T::SharedUp, {S, d}, GgufRole::Matrix);
      add(T::SharedDown, {d, S}, GgufRole::Matrix);
    }
  }
  global("output_norm.weight", {d}, GgufRole::Vector);
  if (!c.tie_word_embeddings) global("output.weight", {V, d}, GgufRole::Matrix);
  return out;
}

// ---- types ------------------------------------------------------------------------------------

bool parse_type_scheme(const std::string& name, TypeScheme* out) {
  TypeScheme s;
  std::string base = name;
  for (auto& ch : base) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (base == "q4_k_m" || base == "q5_k_m") {
    s.k_mix = true;
    base = base.substr(0, 4);
  }
  GgmlType t;
  if (!parse_ggml_type(base, &t) || !is_weight_type(t)) return false;
  s.base = t;
  *out = s;
  return true;
}

GgmlType gguf_tensor_type(const ModelConfig& c, const GgufModelTensor& t, const TypeScheme& s,
                          std::string* fallback) {
  if (t.role == GgufRole::Vector || t.role == GgufRole::Router) return GgmlType::F32;
  const bool expert = t.role == GgufRole::Experts;
  GgmlType type = s.base;
  auto ends_with = [&](const char* suffix) {
    const std::string x = suffix;
    return t.name.size() >= x.size() && t.name.compare(t.name.size() - x.size(), x.size(), x) == 0;
  };
  const bool head = ends_with("output.weight") && t.layer < 0;
  if (s.k_mix) {  // llama.cpp's Q4_K_M / Q5_K_M (llama-quant.cpp)
    const int L = c.num_hidden_layers;
    const bool eight_experts = c.num_local_experts == 8;
    if (head || (c.tie_word_embeddings && t.name == "token_embd.weight"))
      type = GgmlType::Q6_K;
    else if (ends_with("attn_v.weight"))
      type = eight_experts ? GgmlType::Q8_0 : use_more_bits(t.layer, L) ? GgmlType::Q6_K : type;
    else if (ends_with("attn_k.weight") && eight_experts)
      type = GgmlType::Q8_0;
    else if (ends_with("attn_output.weight") && eight_experts && s.base == GgmlType::Q4_K)
      type = GgmlType::Q5_K;
    else if ((ends_with("ffn_down.weight") || ends_with("ffn_down_exps.weight") ||
              ends_with("ffn_down_shexp.weight")) &&
             use_more_bits(t.layer, L))
      type = GgmlType::Q6_K;
  }
  if (expert && s.has_expert_type) type = s.expert_type;
  if (!expert && s.has_other_type) type = s.other_type;
  const int64_t cols = t.shape.back();
  const GgmlType chosen = type;
  while (cols % ggml_block(static_cast<uint32_t>(type)).values != 0) type = fallback_of(type);
  if (type != chosen && fallback)
    *fallback = fmt::format("{}: rows of {} values are not whole {} blocks, stored as {}", t.name,
                            cols, ggml_type_name(static_cast<uint32_t>(chosen)),
                            ggml_type_name(static_cast<uint32_t>(type)));
  return type;
}

// ---- writing ----------------------------------------------------------------------------------

void write_gguf_model(const ModelConfig& c, const GgufModelSource& src, const std::string& out_path,
                      const GgufModelWriteOptions& opt) {
  const std::string arch = gguf_arch_of(c);
  const bool moe = c.num_local_experts > 0;
  auto note = [&](const std::string& line) {
    if (opt.note) opt.note(line);
  };
  const int d = c.hidden_size, H = c.num_attention_heads, G = c.num_key_value_heads;
  const int hd = c.head_size(), L = c.num_hidden_layers;
  int dense_layers = 0;
  for (int l = 0; l < L; ++l) dense_layers += c.is_moe_layer(l) ? 0 : 1;
  if (moe && dense_layers > 0 && arch != "deepseek2")  // deepseek2: leading_dense_block_count
    note(
        fmt::format("{}: {} of {} layers are dense: moe reads them, llama.cpp's {} "
                    "architecture does not (it expects experts in every layer)",
                    out_path, dense_layers, L, arch));

  GgufWriter w;
  auto key = [&](const char* k) { return arch + "." + k; };
  auto u32 = [](int64_t v) { return GgufValue::u32(static_cast<uint32_t>(v)); };
  w.set("general.architecture", GgufValue::string(arch));
  w.set("general.name", GgufValue::string(opt.name));
  w.set("general.file_type", GgufValue::u32(file_type(opt.types)));
  w.set(key("vocab_size"), u32(c.vocab_size));
  w.set(key("context_length"), u32(c.max_position_embeddings));
  w.set(key("embedding_length"), u32(d));
  w.set(key("block_count"), u32(L));
  // llama and olmoe: the expert width (a dense llama: its FFN width); qwen: the dense width.
  const bool qwen = arch == "qwen2moe" || arch == "qwen3moe";
  const bool mla = arch == "deepseek2";
  const bool hybrid = is_hybrid(c);
  if (arch != "qwen35moe")  // Qwen3.5-MoE has no dense width
    w.set(key("feed_forward_length"),
          u32(qwen || mla || hybrid || !moe ? c.dense_width() : c.intermediate_size));
  const bool gpt_oss = arch == "gpt-oss";
  if (gpt_oss) {
    // llama.cpp's gpt-oss: sliding windows on layers 0, 2, 4, ... (its swa pattern 2).
    for (int l = 0; l < L; ++l)
      MOE_REQUIRE(c.window_of(l) == (l % 2 == 0 ? c.sliding_window : 0),
                  "{}: layer_types[{}] = {}: GGUF's gpt-oss has sliding layers at the even "
                  "indices only",
                  out_path, l, c.window_of(l) > 0 ? "sliding_attention" : "full_attention");
    w.set(key("attention.sliding_window"), u32(c.sliding_window));
    if (c.swiglu_limit != 7.0) {
      note(
          fmt::format("{}: swiglu_limit = {} stored as gpt-oss.swiglu_limit, a key of this code "
                      "(llama.cpp's gpt-oss clamps at 7)",
                      out_path, c.swiglu_limit));
      w.set(key("swiglu_limit"), GgufValue::f32(static_cast<float>(c.swiglu_limit)));
    }
  }
  w.set(key("attention.head_count"), u32(H));
  w.set(key("attention.head_count_kv"), u32(G));
  if (mla) {
    const MlaConfig& a = c.mla;
    MOE_REQUIRE(a.rope_interleave,
                "{}: rope_interleave = false: llama.cpp's deepseek2 rotates the pairs (2i, 2i+1) "
                "as DeepSeek stores them",
                out_path);
    w.set(key("attention.key_length"), u32(a.qk_head_dim()));
    w.set(key("attention.value_length"), u32(a.v_head_dim));
    w.set(key("rope.dimension_count"), u32(a.qk_rope_head_dim));
    w.set(key("attention.kv_lora_rank"), u32(a.kv_lora_rank));
    if (a.q_lora_rank > 0) w.set(key("attention.q_lora_rank"), u32(a.q_lora_rank));
    int lead = 0;
    while (lead < L && !c.is_moe_layer(lead)) ++lead;
    for (int l = lead; l < L; ++l)
      MOE_REQUIRE(c.is_moe_layer(l),
                  "{}: layer {} is dense after MoE layers: llama.cpp's deepseek2 has dense "
                  "layers first only (leading_dense_block_count)",
                  out_path, l);
    w.set(key("leading_dense_block_count"), u32(lead));
    const MoeConfig& m = c.moe;
    w.set(key("expert_shared_count"), u32(m.n_shared_experts));
    w.set(key("expert_weights_scale"), GgufValue::f32(static_cast<float>(m.routed_scaling_factor)));
    w.set(key("expert_weights_norm"), GgufValue::boolean(m.norm_topk_prob));
    w.set(key("expert_gating_func"), u32(m.scoring_func == ScoreFunc::Sigmoid ? 2 : 1));
    w.set(key("expert_group_count"), u32(std::max(1, m.n_group)));
    w.set(key("expert_group_used_count"), u32(std::max(1, m.topk_group)));
  } else {
    // llama.cpp assumes head_dim = hidden_size / heads unless told.
    w.set(key("attention.key_length"), u32(hd));
    w.set(key("attention.value_length"), u32(hd));
    w.set(key("rope.dimension_count"), u32(c.rotary_dim()));  // partial in the hybrids
  }
  if (hybrid) {
    // conversion/qwen.py Qwen3NextModel.set_gguf_parameters (ggml-org/llama.cpp 03173d5e).
    const LinearAttnConfig& g = c.linear;
    int interval = 0;
    while (interval < L && c.is_linear_layer(interval)) ++interval;
    ++interval;
    for (int l = 0; l < L; ++l)
      MOE_REQUIRE(c.is_linear_layer(l) == ((l + 1) % interval != 0),
                  "{}: layer_types[{}] = {}: GGUF's {} has a full-attention layer every "
                  "full_attention_interval layers only (here {})",
                  out_path, l, c.is_linear_layer(l) ? "linear_attention" : "full_attention", arch,
                  interval);
    if (g.k_head_dim != g.v_head_dim)
      note(fmt::format(
          "{}: linear_key_head_dim {} differs from linear_value_head_dim {}: moe "
          "reads it (ssm.inner_size / ssm.time_step_rank), llama.cpp assumes them equal",
          out_path, g.k_head_dim, g.v_head_dim));
    w.set(key("ssm.conv_kernel"), u32(g.conv_kernel));
    w.set(key("ssm.state_size"), u32(g.k_head_dim));
    w.set(key("ssm.group_count"), u32(g.num_k_heads));
    w.set(key("ssm.time_step_rank"), u32(g.num_v_heads));
    w.set(key("ssm.inner_size"), u32(g.value_dim()));
    w.set(key("full_attention_interval"), u32(interval));
    if (arch == "qwen35moe") {
      // Qwen3.5's interleaved M-RoPE sections (text positions rotate the same in all three);
      // llama.cpp requires the key. Split as Qwen's default [11, 11, 10] is for 32 pairs.
      const int half = c.rotary_dim() / 2;
      w.set(key("rope.dimension_sections"),
            GgufValue::i32s({(half + 2) / 3, (half + 1) / 3, half / 3, 0}));
    }
  }
  w.set(key("rope.freq_base"), GgufValue::f32(static_cast<float>(c.rope_theta)));
  if (arch == "granitemoe") {
    w.set(key("embedding_scale"), GgufValue::f32(static_cast<float>(c.embedding_multiplier)));
    w.set(key("residual_scale"), GgufValue::f32(static_cast<float>(c.residual_multiplier)));
    // 0 (our "1/sqrt(head_dim)") is llama.cpp's default too.
    w.set(key("attention.scale"), GgufValue::f32(static_cast<float>(c.attention_multiplier)));
    w.set(key("logit_scale"), GgufValue::f32(static_cast<float>(c.logits_scaling)));
  } else {
    MOE_REQUIRE(!c.has_multipliers(),
                "{}: embedding/residual/attention/logits multipliers exist in GGUF's granitemoe "
                "architecture only (model_type {})",
                out_path, c.model_type);
  }
  if (const RopeScaling& rs = c.rope_scaling; rs.scaled()) {
    MOE_REQUIRE(rs.type == RopeType::Linear || rs.type == RopeType::Yarn,
                "{}: rope_scaling rope_type {} has no GGUF form here (llama.cpp keeps llama3 "
                "as a rope_freqs tensor and has no dynamic NTK); export a Hugging Face checkpoint",
                out_path, rope_type_name(rs.type));
    w.set(key("rope.scaling.type"), GgufValue::string(rope_type_name(rs.type)));
    w.set(key("rope.scaling.factor"), GgufValue::f32(static_cast<float>(rs.factor)));
    if (rs.type == RopeType::Yarn) {
      // gpt-oss files are read with truncate = false (as released); other architectures true.
      MOE_REQUIRE(rs.truncate != gpt_oss,
                  "{}: rope_scaling.truncate = {} has no GGUF key in llama.cpp (the {} "
                  "architecture is read with {})",
                  out_path, rs.truncate, arch, !rs.truncate);
      w.set(key("rope.scaling.original_context_length"), u32(rs.original_max_position_embeddings));
      if (rs.beta_fast != 32.0)
        w.set(key("rope.scaling.yarn_beta_fast"), GgufValue::f32(static_cast<float>(rs.beta_fast)));
      if (rs.beta_slow != 1.0)
        w.set(key("rope.scaling.yarn_beta_slow"), GgufValue::f32(static_cast<float>(rs.beta_slow)));
      // llama.cpp multiplies YaRN's default attention factor by attn_factor.
      RopeScaling plain = rs;
      plain.attention_factor = plain.mscale = plain.mscale_all_dim = 0;
      const double ours = rope_frequencies(hd, c.rope_theta, rs).attention_factor;
      const double deflt = rope_frequencies(hd, c.rope_theta, plain).attention_factor;
      if (ours != deflt)
        w.set(key("rope.scaling.attn_factor"), GgufValue::f32(static_cast<float>(ours / deflt)));
      // DeepSeek's softmax scale (mscale_all_dim): llama.cpp's yarn_log_multiplier.
      if (mla && rs.mscale_all_dim > 0)
        w.set(key("rope.scaling.yarn_log_multiplier"),
              GgufValue::f32(static_cast<float>(0.1 * rs.mscale_all_dim)));
    }
  }
  w.set(key("attention.layer_norm_rms_epsilon"),
        GgufValue::f32(static_cast<float>(c.rms_norm_eps)));
  if (moe) {
    w.set(key("expert_count"), u32(c.num_local_experts));
    w.set(key("expert_used_count"), u32(c.moe.num_experts_per_tok));
    if (qwen || gpt_oss || mla || hybrid)
      w.set(key("expert_feed_forward_length"), u32(c.intermediate_size));
    if ((arch == "qwen2moe" || hybrid) && c.moe.n_shared_experts > 0)
      w.set(key("expert_shared_feed_forward_length"), u32(c.moe.shared_hidden()));
  }
  if (opt.add_tokenizer) opt.add_tokenizer(w);

  const bool permute = gguf_rope_interleaved(c);
  for (const GgufModelTensor& t : gguf_model_tensors(c)) {
    std::string why;
    const GgmlType type = gguf_tensor_type(c, t, opt.types, &why);
    if (!why.empty()) note(why);
    if (const uint8_t* raw = src.raw(t, type)) {
      const int64_t bytes = t.shape.back() == 0 ? 0
                                                : row_bytes(type, t.shape.back()) *
                                                      (numel_of(t.shape) / t.shape.back());
      w.add_raw_tensor(t.name, t.shape, type,
                       [raw, bytes](uint8_t* out) { std::copy_n(raw, bytes, out); });
      continue;
    }
    const GgufModelSource* s = &src;
    if (src.fills_raw(t, type)) {
      w.add_raw_tensor(t.name, t.shape, type,
                       [s, t, type](uint8_t* out) { s->fill_raw(t, type, out); });
      continue;
    }
    const bool q = t.name.ends_with("attn_q.weight"), k = t.name.ends_with("attn_k.weight");
    if (permute && (q || k)) {
      const int heads = q ? H : G;
      w.add_tensor(t.name, t.shape, type, [s, t, heads, hd, d](float* out) {
        std::vector<float> hf(static_cast<size_t>(t.shape[0] * t.shape[1]));
        s->fill(t, hf.data());
        permute_rope_rows(hf.data(), out, heads, hd, d);
      });
    } else if (hybrid) {
      w.add_tensor(t.name, t.shape, type, [s, t, &c](float* out) {
        s->fill(t, out);
        gguf_hybrid_values(c, t, out, /*to_gguf=*/true);
      });
    } else {
      w.add_tensor(t.name, t.shape, type, [s, t](float* out) { s->fill(t, out); });
    }
  }
  w.write(out_path);
}

}  // namespace moe
