#include "moe/inference_model.h"

#include <algorithm>
#include <cmath>

#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/rmsnorm.h"
#include "moe/router.h"

namespace moe {

WeightView InferenceModel::matrix(const std::string& name, int64_t rows, int64_t cols) const {
  const SafeTensorsFile& f = weights_.file_of(name);
  const TensorEntry& e = f.entry(name);
  MOE_REQUIRE(e.dtype == DType::F32 || e.dtype == DType::BF16 || e.dtype == DType::F16,
              "{}: tensor {} has dtype {}, expected F32, BF16 or F16", f.path(), name,
              dtype_name(e.dtype));
  MOE_REQUIRE(e.shape == std::vector<int64_t>({rows, cols}),
              "{}: tensor {} has shape {}, expected [{}, {}]", f.path(), name,
              fmt::format("[{}]", fmt::join(e.shape, ", ")), rows, cols);
  return WeightView{f.raw(e), ggml_type_of(e.dtype), rows, cols};
}

const float* InferenceModel::vector(const std::string& name, int64_t size) {
  std::vector<float>& v = fp32_.emplace_back(static_cast<size_t>(size));
  weights_.file_of(name).read_into<float>(name, Shape{size}, v.data());
  return v.data();
}

void InferenceModel::quantize_matrices(GgmlType type) {
  quantize_attention_and_head(type);
  for (Layer& L : layers_) {
    for (FfnViews& f : L.experts)
      for (WeightView* w : {&f.w1, &f.w3, &f.w2}) *w = quantized(*w, type);
    if (L.has_shared)
      for (WeightView* w : {&L.shared.w1, &L.shared.w3, &L.shared.w2}) *w = quantized(*w, type);
  }
  weight_type_ = type;
}

std::unique_ptr<InferenceModel> InferenceModel::load(const std::string& dir, GgmlType quantize) {
  std::unique_ptr<InferenceModel> m(new InferenceModel(load_hf_config(dir + "/config.json")));
  m->weights_ = HfWeights::open(dir);
  const ModelConfig& c = m->cfg_;
  const int64_t d = c.hidden_size, V = c.vocab_size, hd = c.head_size();
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  const int64_t F = c.intermediate_size;

  m->embed_ = m->matrix("model.embed_tokens.weight", V, d);
  m->head_ = c.tie_word_embeddings ? m->embed_ : m->matrix("lm_head.weight", V, d);
  m->final_norm_ = m->vector("model.norm.weight", d);
  m->weight_type_ = m->embed_.type;
  m->layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  m->attn_.resize(m->layers_.size());
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    Layer& L = m->layers_[static_cast<size_t>(l)];
    AttentionWeights& A = m->attn_[static_cast<size_t>(l)];
    auto name = [&](HfTensor t, int e = -1) { return hf_tensor_name(c, l, t, e); };
    A.input_norm = m->vector(name(HfTensor::InputNorm), d);
    A.post_norm = m->vector(name(HfTensor::PostAttentionNorm), d);
    A.q = m->matrix(name(HfTensor::Q), qd, d);
    A.k = m->matrix(name(HfTensor::K), kvd, d);
    A.v = m->matrix(name(HfTensor::V), kvd, d);
    A.o = m->matrix(name(HfTensor::O), d, qd);
    if (c.attention_bias) {
      A.q_bias = m->vector(name(HfTensor::QBias), qd);
      A.k_bias = m->vector(name(HfTensor::KBias), kvd);
      A.v_bias = m->vector(name(HfTensor::VBias), kvd);
    }
    if (c.qk_norm == QkNorm::PerHead) {
      A.q_norm = m->vector(name(HfTensor::QNorm), hd);
      A.k_norm = m->vector(name(HfTensor::KNorm), hd);
    } else if (c.qk_norm == QkNorm::Full) {
      A.q_norm = m->vector(name(HfTensor::QNorm), qd);
      A.k_norm = m->vector(name(HfTensor::KNorm), kvd);
    }
    L.moe = c.is_moe_layer(l);
    if (!L.moe) {
      const int64_t Fd = c.dense_width();
      L.shared = {m->matrix(name(HfTensor::DenseGate), Fd, d),
                  m->matrix(name(HfTensor::DenseUp), Fd, d),
                  m->matrix(name(HfTensor::DenseDown), d, Fd)};
      L.has_shared = true;
      if (!m->dense_) m->dense_.emplace(FfnShape{Activation::SwiGLU, d, Fd}, 1);
      continue;
    }
    const int E = c.num_local_experts;
    if (!m->experts_) m->experts_.emplace(FfnShape{Activation::SwiGLU, d, F}, E);
    const std::string router = name(HfTensor::Router);
    L.router.resize(static_cast<size_t>(E * d));
    m->weights_.file_of(router).read_into<float>(router, Shape{E, d}, L.router.data());
    for (int e = 0; e < E; ++e)
      L.experts.push_back({m->matrix(name(HfTensor::ExpertGate, e), F, d),
                           m->matrix(name(HfTensor::ExpertUp, e), F, d),
                           m->matrix(name(HfTensor::ExpertDown, e), d, F)});
    if (c.moe.n_shared_experts > 0) {
      const int64_t S = c.moe.shared_hidden();
      L.shared = {m->matrix(name(HfTensor::SharedGate), S, d),
                  m->matrix(name(HfTensor::SharedUp), S, d),
                  m->matrix(name(HfTensor::SharedDown), d, S)};
      L.has_shared = true;
      if (!m->shared_) m->shared_.emplace(FfnShape{Activation::SwiGLU, d, S}, 1);
      if (c.moe.shared_expert_gate) {
        const std::string g = name(HfTensor::SharedExpertGate);
        L.shared_gate.resize(static_cast<size_t>(d));
        m->weights_.file_of(g).read_into<float>(g, Shape{1, d}, L.shared_gate.data());
      }
    }
  }
  if (quantize != GgmlType::F32) m->quantize_matrices(quantize);
  return m;
}

void InferenceModel::ffn(int l, int64_t rows) {
  const Layer& L = layers_[static_cast<size_t>(l)];
  const int64_t all_rows[2] = {0, rows};  // the dense layer as a group of one
  if (L.moe)
    moe_block(L, rows);
  else
    dense_->forward(&L.shared, all_rows, x_.data(), h_.data(), /*accumulate=*/true);
}

void InferenceModel::moe_block(const Layer& L, int64_t rows) {
  const MoeConfig& mc = cfg_.moe;
  const int64_t d = cfg_.hidden_size, E = cfg_.num_local_experts;
  const int k = mc.num_experts_per_tok;
  if (!router_) router_.emplace(mc);
  gemm<float>(Trans::No, Trans::Yes, rows, E, d, 1.0f, x_.data(), d, L.router.data(), d, 0.0f,
              router_->logits(rows), E);
  router_->forward(rows);  // dropless: keeps every slot
  std::vector<float>& gate = router_->gates();
  // Hugging Face renormalizes a single gate to 1 as well; our k = 1 gate is the raw score.
  if (mc.norm_topk_prob && k == 1) std::fill_n(gate.data(), rows, 1.0f);

  build_permutation(router_->plan(), perm_);
  const int64_t N = perm_.rows();
  grow_to(xp_, N * d);
  grow_to(yp_, N * d);
  gather_rows<float>(perm_, k, d, x_.data(), xp_.data());
  experts_->forward(L.experts.data(), perm_.offsets.data(), xp_.data(), yp_.data());
  grow_to(tmp_, rows * d);
  scatter_gated<float>(perm_, rows, k, d, yp_.data(), gate.data(), tmp_.data());
  for (int64_t i = 0; i < rows * d; ++i) h_[i] += tmp_[i];

  if (!L.has_shared) return;
  // The gate's dot product in double: SharedExperts (fp32 parameters, saved for the backward)
  // takes it in float.
  const int64_t all_rows[2] = {0, rows};
  shared_->forward(&L.shared, all_rows, x_.data(), tmp_.data());
  for (int64_t r = 0; r < rows; ++r) {
    float g = 1.0f;
    if (!L.shared_gate.empty()) {
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(x_[r * d + j]) * L.shared_gate[j];
      g = static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
    }
    for (int64_t j = 0; j < d; ++j) h_[r * d + j] += g * tmp_[r * d + j];
  }
}

}  // namespace moe
