#include "moe/transformer.h"

#include <algorithm>
#include <cmath>

#include "moe/cross_entropy.h"
#include "moe/dense_ffn.h"
#include "moe/embedding.h"
#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/rmsnorm.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

template <class T>
void add_into(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <class T>
bool all_finite(const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

}  // namespace

template <class T>
std::string Transformer<T>::layer_name(int l, const char* what) const {
  return fmt::format("model.layers.{}.{}", l, what);
}

template <class T>
Transformer<T>::Transformer(const ModelConfig& config)
    : cfg_(config), d_(config.hidden_size), V_(config.vocab_size), L_(config.num_hidden_layers) {
  cfg_.sync_moe();
  cfg_.validate("model config");
  base_.declare("model.embed_tokens.weight", {V_, d_});
  for (int l = 0; l < L_; ++l) {
    base_.declare(layer_name(l, "input_layernorm.weight"), {d_});
    base_.declare(layer_name(l, "post_attention_layernorm.weight"), {d_});
  }
  base_.declare("model.norm.weight", {d_});
  if (!cfg_.tie_word_embeddings) base_.declare("lm_head.weight", {V_, d_});
  base_.allocate();

  AttentionConfig ac;
  ac.hidden_size = d_;
  ac.num_heads = cfg_.num_attention_heads;
  ac.num_kv_heads = cfg_.num_key_value_heads;
  ac.head_dim = cfg_.head_size();
  ac.rope_theta = cfg_.rope_theta;
  ac.rope_scaling = cfg_.rope_scaling;
  ac.max_positions = cfg_.context_length();
  ac.qkv_bias = cfg_.attention_bias;
  ac.qk_norm = cfg_.qk_norm;
  ac.norm_eps = cfg_.rms_norm_eps;
  for (int l = 0; l < L_; ++l) {
    attn_.push_back(std::make_unique<Attention<T>>(ac));
    if (cfg_.is_moe_layer(l))
      ffn_.push_back(std::make_unique<MoeLayer<T>>(cfg_.moe));
    else
      ffn_.push_back(std::make_unique<DenseFfn<T>>(d_, cfg_.dense_width(), cfg_.moe.hidden_act));
  }

  auto add = [&](const std::string& prefix, ParamSet<T>& set) {
    for (const auto& s : set.specs())
      params_.push_back(
          {prefix + s.name, set.value(s.name), set.grad(s.name), s.shape, s.shape.ndim >= 2});
  };
  add("", base_);
  for (int l = 0; l < L_; ++l) {
    add(layer_name(l, "self_attn."), attn_[l]->params());
    add(layer_name(l, cfg_.is_moe_layer(l) ? "block_sparse_moe." : "mlp."), ffn_[l]->params());
  }
  for (auto& p : params_)
    p.frozen = !is_trainable(p.name, cfg_.training.trainable, cfg_.tie_word_embeddings);
}

template <class T>
int64_t Transformer<T>::trainable_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_)
    if (!p.frozen) n += p.shape.numel();
  return n;
}

template <class T>
int64_t Transformer<T>::activation_bytes(int B, int S) const {
  // What forward() keeps for backward() of one micro-batch, from the buffers' shapes: the
  // residual stream and normalized inputs per block, each attention's projections and
  // probabilities, each FFN's hidden activations (k assignments per token in an MoE layer),
  // the logits and their gradient.
  const int64_t n = int64_t(B) * S, d = d_, hd = cfg_.head_size();
  const int64_t qd = cfg_.num_attention_heads * hd, kvd = cfg_.num_key_value_heads * hd;
  int64_t values = 2 * n * V_ + 6 * n * d;
  for (int l = 0; l < L_; ++l) {
    values += 4 * n * d;                                      // h, hmid, xa, xm
    values += n * (d + 3 * qd + 4 * kvd);                     // x, q, k, v, o and gradients
    values += int64_t(B) * cfg_.num_attention_heads * S * S;  // probabilities
    if (cfg_.qk_norm != QkNorm::None) values += 2 * n * (qd + kvd);
    const int64_t rows = cfg_.is_moe_layer(l) ? n * cfg_.moe.num_experts_per_tok : n;
    const int64_t width = cfg_.is_moe_layer(l) ? cfg_.intermediate_size : cfg_.dense_width();
    values += rows * (3 * width + 2 * d) + n * 3 * cfg_.moe.shared_hidden();
  }
  return values * static_cast<int64_t>(sizeof(T));
}

template <class T>
void Transformer<T>::init_weights(Rng& rng) {
  const double std = cfg_.initializer_range;
  for (const auto& s : base_.specs()) {
    T* v = base_.value(s.name);
    if (s.shape.ndim == 1)
      std::fill(v, v + s.shape.numel(), T(1));
    else
      rng.fill_normal(v, s.shape.numel(), 0.0, std);
  }
  for (int l = 0; l < L_; ++l) {
    attn_[l]->init_weights(rng, std);
    if (auto* m = moe_layer(l)) {
      m->init_weights(rng, std);
      std::fill(m->selection_bias().begin(), m->selection_bias().end(), T(0));
    } else {
      static_cast<DenseFfn<T>*>(ffn_[l].get())->init_weights(rng, std);
    }
  }
}

template <class T>
MoeLayer<T>* Transformer<T>::moe_layer(int l) {
  if (!cfg_.is_moe_layer(l)) return nullptr;
  return static_cast<MoeLayer<T>*>(groups_ ? full_ffn_[l].get() : ffn_[l].get());
}

template <class T>
const MoeLayer<T>* Transformer<T>::moe_layer(int l) const {
  if (!cfg_.is_moe_layer(l)) return nullptr;
  return static_cast<const MoeLayer<T>*>(groups_ ? full_ffn_[l].get() : ffn_[l].get());
}

template <class T>
const MoeLayer<T>* Transformer<T>::expert_parallel_layer(int l) const {
  if (!groups_ || !cfg_.is_moe_layer(l)) return nullptr;
  return static_cast<const MoeLayer<T>*>(ffn_[l].get());
}

template <class T>
const MoeMetrics* Transformer<T>::moe_metrics(int l) const {
  if (const auto* ep = expert_parallel_layer(l)) return &ep->metrics();
  if (const auto* m = moe_layer(l)) return &m->metrics();
  return nullptr;
}

template <class T>
bool Transformer<T>::is_expert_param(const std::string& name) {
  return name.find(".block_sparse_moe.experts.") != std::string::npos;
}

template <class T>
void Transformer<T>::enable_expert_parallel(ParallelGroups& groups) {
  MOE_CHECK(!groups_, "Transformer: expert parallelism is already enabled");
  groups_ = &groups;
  full_params_ = params_;
  full_ffn_.resize(static_cast<size_t>(L_));
  params_.clear();
  for (const auto& p : full_params_)
    if (p.name.find(".block_sparse_moe.") == std::string::npos) params_.push_back(p);
  for (int l = 0; l < L_; ++l) {
    if (!cfg_.is_moe_layer(l)) continue;
    auto* full = static_cast<MoeLayer<T>*>(ffn_[l].get());
    auto ep = std::make_unique<MoeLayer<T>>(cfg_.moe, &groups);
    ep->copy_from(*full);
    ParamSet<T>& set = ep->params();
    for (const auto& s : set.specs())
      params_.push_back({layer_name(l, "block_sparse_moe.") + s.name, set.value(s.name),
                         set.grad(s.name), s.shape, s.shape.ndim >= 2});
    full_ffn_[l] = std::move(ffn_[l]);
    ffn_[l] = std::move(ep);
  }
  for (auto& p : params_)
    p.frozen = !is_trainable(p.name, cfg_.training.trainable, cfg_.tie_word_embeddings);
}

template <class T>
void Transformer<T>::gather_full_weights() {
  if (!groups_) return;
  for (int l = 0; l < L_; ++l)
    if (cfg_.is_moe_layer(l))
      static_cast<MoeLayer<T>*>(ffn_[l].get())
          ->gather_into(*static_cast<MoeLayer<T>*>(full_ffn_[l].get()));
}

template <class T>
int64_t Transformer<T>::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.shape.numel();
  return n;
}

template <class T>
int64_t Transformer<T>::active_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_) {
    const bool expert = p.name.find(".experts.") != std::string::npos;
    n += expert ? p.shape.numel() / cfg_.moe.num_experts * cfg_.moe.num_experts_per_tok
                : p.shape.numel();
  }
  return n;
}

template <class T>
double Transformer<T>::forward_macs_per_token(int S) const {
  const double hd = cfg_.head_size(), H = cfg_.num_attention_heads, G = cfg_.num_key_value_heads;
  double macs = static_cast<double>(d_) * V_;  // LM head
  for (int l = 0; l < L_; ++l) {
    macs += d_ * hd * (2 * H + 2 * G);   // q, k, v, o projections
    macs += H * hd * (S + 1) / 2.0 * 2;  // causal scores and weighted values, on average
    macs += ffn_[l]->active_macs_per_token();
  }
  return macs;
}

template <class T>
void Transformer<T>::zero_grad() {
  base_.zero_grad();
  for (int l = 0; l < L_; ++l) {
    attn_[l]->params().zero_grad();
    ffn_[l]->params().zero_grad();
  }
}

template <class T>
void Transformer<T>::reserve(int64_t rows) {
  if (rows <= capacity_) return;
  capacity_ = rows;
  const int64_t nd = rows * d_;
  inputs_.resize(rows);
  targets_.resize(rows);
  h_.resize((L_ + 1) * nd);
  hmid_.resize(L_ * nd);
  xa_.resize(L_ * nd);
  xm_.resize(L_ * nd);
  rstd_a_.resize(L_ * rows);
  rstd_m_.resize(L_ * rows);
  hf_.resize(nd);
  rstd_f_.resize(rows);
  tmp_.resize(nd);
  logits_.resize(rows * V_);
  dlogits_.resize(rows * V_);
  row_loss_.resize(rows);
  dh_.resize(nd);
  dtmp_.resize(nd);
  dhf_.resize(nd);
}

template <class T>
double Transformer<T>::forward(const int32_t* inputs, const int32_t* targets, int B, int S,
                               bool training, Rng* rng) {
  MOE_CHECK(B > 0 && S > 0, "Transformer::forward: B = {} and S = {} must be positive", B, S);
  MOE_REQUIRE(S <= cfg_.context_length(),
              "Transformer::forward: sequence length {} exceeds the context of {} positions "
              "(max_position_embeddings, rope_scaling)",
              S, cfg_.context_length());
  const int64_t n = static_cast<int64_t>(B) * S, nd = n * d_;
  reserve(n);
  B_ = B;
  S_ = S;
  n_ = n;
  std::copy(inputs, inputs + n, inputs_.begin());
  has_targets_ = targets != nullptr;
  if (has_targets_) std::copy(targets, targets + n, targets_.begin());
  const T eps = static_cast<T>(cfg_.rms_norm_eps);

  embedding_forward(h_.data(), inputs_.data(), base("model.embed_tokens.weight"), n, V_, d_);
  ForwardOptions<T> opt;
  opt.training = training;
  opt.rng = rng;
  for (int l = 0; l < L_; ++l) {
    T* h = h_.data() + l * nd;
    T* xa = xa_.data() + l * nd;
    T* hm = hmid_.data() + l * nd;
    T* xm = xm_.data() + l * nd;
    rmsnorm_forward(xa, rstd_a_.data() + l * n, h, base(layer_name(l, "input_layernorm.weight")), n,
                    d_, eps);
    attn_[l]->forward(View<const T>(xa, {n, d_}), B, S, View<T>(tmp_.data(), {n, d_}));
    add_into(hm, h, tmp_.data(), nd);
    rmsnorm_forward(xm, rstd_m_.data() + l * n, hm,
                    base(layer_name(l, "post_attention_layernorm.weight")), n, d_, eps);
    ffn_[l]->forward(View<const T>(xm, {n, d_}), View<T>(tmp_.data(), {n, d_}), opt);
    add_into(h_.data() + (l + 1) * nd, hm, tmp_.data(), nd);
  }
  rmsnorm_forward(hf_.data(), rstd_f_.data(), h_.data() + L_ * nd, base("model.norm.weight"), n, d_,
                  eps);
  const T* head =
      cfg_.tie_word_embeddings ? base("model.embed_tokens.weight") : base("lm_head.weight");
  gemm<T>(Trans::No, Trans::Yes, n, V_, d_, T(1), hf_.data(), d_, head, d_, T(0), logits_.data(),
          V_);

  ce_ = aux_ = 0;
  counted_ = 0;
  if (!has_targets_) return 0.0;
  const double sum =
      cross_entropy_forward(row_loss_.data(), logits_.data(), targets_.data(), n, V_, &counted_);
  ce_ = counted_ > 0 ? sum / counted_ : 0.0;
  for (int l = 0; l < L_; ++l) aux_ += ffn_[l]->aux_loss();
  return ce_ + aux_;
}

template <class T>
void Transformer<T>::backward(double scale, double aux_scale) {
  MOE_CHECK(n_ > 0 && has_targets_, "Transformer::backward: needs a forward with targets");
  const int64_t n = n_, nd = n * d_;
  const bool tied = cfg_.tie_word_embeddings;
  const T* head = tied ? base("model.embed_tokens.weight") : base("lm_head.weight");
  T* dhead = tied ? base_grad("model.embed_tokens.weight") : base_grad("lm_head.weight");

  // A frozen head or embedding (training.trainable) skips its weight-gradient work.
  const std::string& parts = cfg_.training.trainable;
  const bool embed_trains = is_trainable("model.embed_tokens.weight", parts, tied);
  const bool head_trains = tied ? embed_trains : is_trainable("lm_head.weight", parts, tied);
  cross_entropy_backward(dlogits_.data(), logits_.data(), targets_.data(), n, V_,
                         counted_ > 0 ? scale / counted_ : 0.0);
  if (head_trains)
    gemm<T>(Trans::Yes, Trans::No, V_, d_, n, T(1), dlogits_.data(), V_, hf_.data(), d_, T(1),
            dhead, d_);
  gemm<T>(Trans::No, Trans::No, n, d_, V_, T(1), dlogits_.data(), V_, head, d_, T(0), dhf_.data(),
          d_);
  std::fill(dh_.begin(), dh_.begin() + nd, T(0));
  rmsnorm_backward(dh_.data(), base_grad("model.norm.weight"), dhf_.data(), h_.data() + L_ * nd,
                   base("model.norm.weight"), rstd_f_.data(), n, d_);
  for (int l = L_ - 1; l >= 0; --l) {
    // dh is the gradient of the block's output; the residual carries it through unchanged.
    ffn_[l]->backward(View<const T>(dh_.data(), {n, d_}), View<T>(dtmp_.data(), {n, d_}),
                      aux_scale);
    const std::string post = layer_name(l, "post_attention_layernorm.weight");
    rmsnorm_backward(dh_.data(), base_grad(post), dtmp_.data(), hmid_.data() + l * nd, base(post),
                     rstd_m_.data() + l * n, n, d_);
    attn_[l]->backward(View<const T>(dh_.data(), {n, d_}), View<T>(dtmp_.data(), {n, d_}));
    const std::string in = layer_name(l, "input_layernorm.weight");
    rmsnorm_backward(dh_.data(), base_grad(in), dtmp_.data(), h_.data() + l * nd, base(in),
                     rstd_a_.data() + l * n, n, d_);
  }
  if (embed_trains)
    embedding_backward(base_grad("model.embed_tokens.weight"), dh_.data(), inputs_.data(), n, d_);
}

template <class T>
std::string Transformer<T>::first_nonfinite_activation() const {
  const int64_t nd = n_ * d_;
  if (!all_finite(h_.data(), nd)) return "model.embed_tokens output";
  for (int l = 0; l < L_; ++l) {
    // hmid = h + attention and h' = hmid + ffn: the first non-finite one names the sub-layer.
    if (!all_finite(hmid_.data() + l * nd, nd)) return layer_name(l, "self_attn output");
    if (!all_finite(h_.data() + (l + 1) * nd, nd))
      return layer_name(l, cfg_.is_moe_layer(l) ? "block_sparse_moe output" : "mlp output");
  }
  if (!all_finite(logits_.data(), n_ * V_)) return "logits";
  return "none (the loss itself overflowed)";
}

template <class T>
void Transformer<T>::update_selection_bias() {
  for (int l = 0; l < L_; ++l) {
    // The layer in use: the shard under expert parallelism.
    if (cfg_.is_moe_layer(l)) static_cast<MoeLayer<T>*>(ffn_[l].get())->update_selection_bias();
  }
}

template <class T>
void Transformer<T>::save_weights(SafeTensorsWriter& w, DType dtype) const {
  // Under expert parallelism the full list, filled by gather_full_weights().
  for (const auto& p : groups_ ? full_params_ : params_) w.add(p.name, p.shape, p.value, dtype);
  for (int l = 0; l < L_; ++l) {
    if (const auto* m = moe_layer(l); m && m->config().use_selection_bias) {
      const auto& bias = m->selection_bias();
      w.add(fmt::format("state.selection_bias.{}", l), {static_cast<int64_t>(bias.size())},
            bias.data(), DType::F32);
    }
  }
}

template <class T>
void Transformer<T>::load_weights(const SafeTensorsFile& f) {
  for (const auto& p : groups_ ? full_params_ : params_) {
    MOE_REQUIRE(f.has(p.name), "{}: missing tensor {} (shape {})", f.path(), p.name, p.shape.str());
    f.read_into(p.name, p.shape, p.value);
  }
  for (int l = 0; l < L_; ++l) {
    auto* m = moe_layer(l);
    if (!m || !m->config().use_selection_bias) continue;
    const std::string name = fmt::format("state.selection_bias.{}", l);
    if (f.has(name))
      f.read_into(name, {static_cast<int64_t>(m->selection_bias().size())},
                  m->selection_bias().data());
  }
  if (groups_)
    for (int l = 0; l < L_; ++l)
      if (cfg_.is_moe_layer(l)) static_cast<MoeLayer<T>*>(ffn_[l].get())->copy_from(*moe_layer(l));
}

template class Transformer<float>;
template class Transformer<double>;

TransformerLm::TransformerLm(Transformer<float>& model, GgmlType quantize)
    : Decoder(model.config()), model_(model) {
  auto view = [](ParamSet<float>& set, const std::string& name) {  // a matrix [out, in]
    const Shape& s = set.spec(name).shape;
    return WeightView{reinterpret_cast<const uint8_t*>(set.value(name)), GgmlType::F32, s[0], s[1]};
  };
  ParamSet<float>& base = model.base_;
  embed_ = view(base, "model.embed_tokens.weight");
  head_ = cfg_.tie_word_embeddings ? embed_ : view(base, "lm_head.weight");
  final_norm_ = base.value("model.norm.weight");
  for (int l = 0; l < model.L_; ++l) {
    ParamSet<float>& a = model.attn_[l]->params();
    AttentionWeights w{base.value(model.layer_name(l, "input_layernorm.weight")),
                       base.value(model.layer_name(l, "post_attention_layernorm.weight")),
                       view(a, "q_proj.weight"),
                       view(a, "k_proj.weight"),
                       view(a, "v_proj.weight"),
                       view(a, "o_proj.weight")};
    if (cfg_.attention_bias) {
      w.q_bias = a.value("q_proj.bias");
      w.k_bias = a.value("k_proj.bias");
      w.v_bias = a.value("v_proj.bias");
    }
    if (cfg_.qk_norm != QkNorm::None) {
      w.q_norm = a.value("q_norm.weight");
      w.k_norm = a.value("k_norm.weight");
    }
    attn_.push_back(w);
  }
  if (quantize != GgmlType::F32) {
    quantize_attention_and_head(quantize);
    quantize_ffns(quantize);
  }
}

void TransformerLm::quantize_ffns(GgmlType type) {
  // w[e] of a stacked [E, rows, cols] parameter as a quantized matrix.
  auto matrix = [&](ParamSet<float>& set, const std::string& name, int64_t e = 0) {
    const Shape& s = set.spec(name).shape;
    const int64_t rows = s[s.ndim - 2], cols = s[s.ndim - 1];
    const float* w = set.value(name) + e * rows * cols;
    return quantized(WeightView{reinterpret_cast<const uint8_t*>(w), GgmlType::F32, rows, cols},
                     type);
  };
  auto ffn_views = [&](ParamSet<float>& set, const std::string& prefix, int64_t e = 0) {
    return FfnViews{matrix(set, prefix + ".w1", e), matrix(set, prefix + ".w3", e),
                    matrix(set, prefix + ".w2", e)};
  };
  qffn_.resize(static_cast<size_t>(model_.L_));
  for (int l = 0; l < model_.L_; ++l) {
    QuantizedFfn& q = qffn_[static_cast<size_t>(l)];
    FeedForward<float>* f = model_.ffn_[l].get();
    if (auto* moe = dynamic_cast<MoeLayer<float>*>(f)) {
      const MoeConfig& mc = moe->config();
      MOE_REQUIRE(mc.hidden_act == Activation::SwiGLU && !moe->expert_parallel(),
                  "--quantize: layer {} has GELU experts or is expert parallel (SwiGLU only)", l);
      for (int e = 0; e < moe->local_experts(); ++e)
        q.experts.push_back(ffn_views(moe->params(), "experts", e));
      q.has_shared = mc.n_shared_experts > 0;
      if (q.has_shared) q.shared = ffn_views(moe->params(), "shared");
    } else if (auto* dense = dynamic_cast<DenseFfn<float>*>(f)) {
      MOE_REQUIRE(dense->params().offset_or_none("ffn.w3") >= 0,
                  "--quantize: layer {} is a GELU FFN (SwiGLU only)", l);
      q.shared = ffn_views(dense->params(), "ffn");
      q.has_shared = true;
      const Shape& s = dense->params().spec("ffn.w1").shape;
      if (!dense_) dense_.emplace(FfnShape{Activation::SwiGLU, cfg_.hidden_size, s[0]}, 1);
    } else {
      MOE_REQUIRE(false, "--quantize: layer {} is neither an MoE layer nor a dense FFN", l);
    }
  }
}

void TransformerLm::ffn(int l, int64_t rows) {
  const int64_t d = cfg_.hidden_size, nd = rows * d;
  if (y_.size() < static_cast<size_t>(nd)) y_.resize(static_cast<size_t>(nd));
  ForwardOptions<float> opt;
  if (!qffn_.empty()) {
    const QuantizedFfn& q = qffn_[static_cast<size_t>(l)];
    if (q.experts.empty()) {  // a dense layer: one FFN over all rows
      const int64_t all_rows[2] = {0, rows};
      dense_->forward(&q.shared, all_rows, x_.data(), h_.data(), /*accumulate=*/true);
      return;
    }
    opt.expert_views = q.experts.data();
    if (q.has_shared) opt.shared_views = &q.shared;
  }
  model_.ffn_[l]->forward(View<const float>(x_.data(), {rows, d}),
                          View<float>(y_.data(), {rows, d}), opt);
  add_into(h_.data(), h_.data(), y_.data(), nd);
  if (!cfg_.is_moe_layer(l)) return;
  // The layer that ran (under expert parallelism the shard, whose plan is the global batch's).
  const auto* moe = static_cast<const MoeLayer<float>*>(model_.ffn_[l].get());
  observe_routing(l, moe->plan(), moe->gates().data(), moe->scores().data(),
                  moe->config().scoring_func);
}

void TransformerLm::randomize_routers(Rng& rng, double std) {
  for (int l = 0; l < model_.L_; ++l)
    if (MoeLayer<float>* moe = model_.moe_layer(l)) {
      ParamSet<float>& p = moe->params();
      const Shape& s = p.spec("router.weight").shape;
      rng.fill_normal(p.value("router.weight"), s[0] * s[1], 0.0, std);
    }
}

}  // namespace moe
