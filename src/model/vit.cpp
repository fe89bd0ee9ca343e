// The ViT-MoE encoder (vit.h): config, forward and backward. The block wiring follows
// transformer.cpp (pre-norm, residual stream h_ saved per block); what differs is the input
// (patch embedding + learned positions), the attention (bidirectional, no RoPE) and the
// output (pooling + classification head).
#include "moe/vit.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/input_file.h"
#include "core/json_keys.h"
#include "moe/cross_entropy.h"
#include "moe/dense_ffn.h"
#include "moe/error.h"
#include "moe/expert_choice.h"
#include "moe/gemm.h"
#include "moe/moe_layer.h"
#include "moe/rmsnorm.h"
#include "moe/safetensors.h"
#include "moe/soft_moe.h"

namespace moe {

TrainConfig VitTrainConfig::as_train_config() const {
  TrainConfig t;
  t.learning_rate = learning_rate;
  t.min_lr_ratio = min_lr_ratio;
  t.warmup_steps = warmup_steps;
  t.max_steps = max_steps;
  t.weight_decay = weight_decay;
  t.adam_beta1 = adam_beta1;
  t.adam_beta2 = adam_beta2;
  t.adam_eps = adam_eps;
  t.grad_clip = grad_clip;
  t.batch_size = batch_size;
  t.seed = seed;
  return t;
}

namespace {

const std::initializer_list<std::pair<const char*, VitRouter>> kRouter = {
    {"top_k", VitRouter::TopK},
    {"soft", VitRouter::Soft},
    {"expert_choice", VitRouter::ExpertChoice},
    {"dense", VitRouter::Dense}};
const std::initializer_list<std::pair<const char*, VitPooling>> kPool = {
    {"cls", VitPooling::Cls}, {"mean", VitPooling::Mean}};

template <class E>
std::string enum_name(E v, const std::initializer_list<std::pair<const char*, E>>& table) {
  for (const auto& [name, value] : table)
    if (value == v) return name;
  return "?";
}

template <class V>
void visit_vit(VitConfig& c, V&& v) {
  v("model_type", c.model_type);
  v("patch_size", c.patch_size);
  v("hidden_size", c.hidden_size);
  v("num_hidden_layers", c.num_hidden_layers);
  v("num_attention_heads", c.num_attention_heads);
  v("intermediate_size", c.intermediate_size);
  v("dense_intermediate_size", c.dense_intermediate_size);
  v("moe_every", c.moe_every);
  v("slots_per_expert", c.slots_per_expert);
  v("rms_norm_eps", c.rms_norm_eps);
  v("initializer_range", c.initializer_range);
}

template <class V>
void visit_train(VitTrainConfig& c, V&& v) {
  visit_optimizer_keys(c, v);
  v("eval_capacity_factors", c.eval_capacity_factors);
}

template <class E>
void read_enum(const nlohmann::json& j, const std::string& where, const char* key, E& out,
               const std::initializer_list<std::pair<const char*, E>>& table) {
  auto it = j.find(key);
  if (it == j.end()) return;
  MOE_REQUIRE(it->is_string(), "{}: {} must be a string, got {}", where, key, it->dump());
  const std::string s = it->get<std::string>();
  std::string names;
  for (const auto& [name, value] : table) {
    if (s == name) {
      out = value;
      return;
    }
    names += fmt::format("{}\"{}\"", names.empty() ? "" : ", ", name);
  }
  throw Error(fmt::format("{}: {} has value \"{}\"; expected one of {}", where, key, s, names));
}

}  // namespace

void VitConfig::validate(const std::string& where) const {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: {} {}", where, key, why));
  };
  if (model_type != "vit_moe")
    fail("model_type", fmt::format("has value \"{}\"; expected \"vit_moe\"", model_type));
  dataset.validate(where);
  if (patch_size <= 0 || dataset.image_size % patch_size != 0)
    fail("patch_size", fmt::format("= {} must be positive and divide dataset.image_size = {}",
                                   patch_size, dataset.image_size));
  if (hidden_size <= 0) fail("hidden_size", fmt::format("must be positive, got {}", hidden_size));
  if (num_hidden_layers <= 0)
    fail("num_hidden_layers", fmt::format("must be positive, got {}", num_hidden_layers));
  if (num_attention_heads <= 0 || hidden_size % num_attention_heads != 0)
    fail("num_attention_heads", fmt::format("= {} must be positive and divide hidden_size = {}",
                                            num_attention_heads, hidden_size));
  if (intermediate_size <= 0)
    fail("intermediate_size", fmt::format("must be positive, got {}", intermediate_size));
  if (dense_intermediate_size < 0)
    fail("dense_intermediate_size", fmt::format("must be >= 0, got {}", dense_intermediate_size));
  if (moe_every <= 0) fail("moe_every", fmt::format("must be positive, got {}", moe_every));
  if (slots_per_expert <= 0)
    fail("slots_per_expert", fmt::format("must be positive, got {}", slots_per_expert));
  if (!(rms_norm_eps > 0)) fail("rms_norm_eps", "must be positive");
  if (!(initializer_range > 0)) fail("initializer_range", "must be positive");
  if (router_type == VitRouter::ExpertChoice && !(moe.capacity_factor > 0))
    fail("capacity_factor",
         "must be positive with router_type \"expert_choice\" (experts per "
         "token)");
  if (router_type != VitRouter::Dense) moe.validate(where);
  const auto& t = training;
  if (!(t.learning_rate > 0)) fail("training.learning_rate", "must be positive");
  if (t.max_steps <= 0) fail("training.max_steps", "must be positive");
  if (t.warmup_steps < 0) fail("training.warmup_steps", "must be >= 0");
  if (t.batch_size <= 0) fail("training.batch_size", "must be positive");
  if (t.eval_every < 0) fail("training.eval_every", "must be >= 0");
  if (!(t.min_lr_ratio >= 0 && t.min_lr_ratio <= 1)) fail("training.min_lr_ratio", "not in [0,1]");
  for (double cf : t.eval_capacity_factors)
    if (!(cf > 0)) fail("training.eval_capacity_factors", "must hold positive values");
}

VitConfig vit_config_from_json(const nlohmann::json& j, const std::string& where) {
  MOE_REQUIRE(j.is_object(), "{}: a config must be a JSON object", where);
  VitConfig c;
  std::set<std::string> known = {"router_type", "pooling", "dataset", "training"};
  visit_vit(c, JsonKeyCollector{known});
  nlohmann::json moe_keys;
  moe_config_to_json(MoeConfig{}, moe_keys);
  for (auto it = moe_keys.begin(); it != moe_keys.end(); ++it) known.insert(it.key());
  for (auto it = j.begin(); it != j.end(); ++it)
    MOE_REQUIRE(known.count(it.key()), "{}: {} is not a known key of a vit_moe config", where,
                it.key());
  MOE_REQUIRE(!j.contains("moe_intermediate_size"),
              "{}: moe_intermediate_size: a vit_moe config sets the expert width with "
              "intermediate_size",
              where);
  visit_vit(c, JsonKeyReader{j, where});
  read_enum(j, where, "router_type", c.router_type, kRouter);
  read_enum(j, where, "pooling", c.pooling, kPool);
  // The expert shape comes from the ViT keys; MoeConfig reads its routing keys from the same
  // object (and validates them, so it sees the shape too).
  nlohmann::json mj = j;
  mj.erase("dataset");
  mj.erase("training");
  mj["hidden_size"] = c.hidden_size;
  mj["moe_intermediate_size"] = c.intermediate_size;
  c.moe = moe_config_from_json(mj, where);
  if (auto d = j.find("dataset"); d != j.end()) c.dataset = image_data_config_from_json(*d, where);
  if (auto t = j.find("training"); t != j.end()) {
    MOE_REQUIRE(t->is_object(), "{}: training must be a JSON object", where);
    std::set<std::string> tk;
    visit_train(c.training, JsonKeyCollector{tk});
    for (auto it = t->begin(); it != t->end(); ++it)
      MOE_REQUIRE(tk.count(it.key()), "{}: training.{} is not a known key", where, it.key());
    const std::string tw = where + ": training";
    visit_train(c.training, JsonKeyReader{*t, tw});
  }
  c.moe.hidden_size = c.hidden_size;
  c.moe.moe_intermediate_size = c.intermediate_size;
  c.validate(where);
  return c;
}

nlohmann::json vit_config_to_json(const VitConfig& c) {
  nlohmann::json j;
  moe_config_to_json(c.moe, j);
  j.erase("moe_intermediate_size");
  VitConfig copy = c;
  visit_vit(copy, JsonKeyWriter{j});
  j["router_type"] = enum_name(c.router_type, kRouter);
  j["pooling"] = enum_name(c.pooling, kPool);
  j["dataset"] = image_data_config_to_json(c.dataset);
  nlohmann::json t;
  visit_train(copy.training, JsonKeyWriter{t});
  j["training"] = t;
  return j;
}

bool is_vit_config(const std::string& path) {
  try {
    const nlohmann::json j = read_json_file(path);
    return j.is_object() && j.value("model_type", std::string()) == "vit_moe";
  } catch (const Error&) {
    return false;
  }
}

VitConfig load_vit_config(const std::string& path) {
  return vit_config_from_json(read_json_file(path), path);
}

// ---------------------------------------------------------------------------------------------

template <class T>
VitModel<T>::VitModel(const VitConfig& c) : cfg_(c) {
  cfg_.moe.hidden_size = cfg_.hidden_size;
  cfg_.moe.moe_intermediate_size = cfg_.intermediate_size;
  cfg_.validate("vit config");
  d_ = cfg_.hidden_size;
  L_ = cfg_.num_hidden_layers;
  P_ = cfg_.patch_size;
  N_ = cfg_.num_patches();
  S_ = cfg_.seq_len();
  K_ = cfg_.num_classes();
  pix_ = cfg_.dataset.image_size;
  const bool cls = cfg_.pooling == VitPooling::Cls;
  base_.declare("vit.patch_embed.weight", {d_, P_ * P_});
  base_.declare("vit.patch_embed.bias", {d_});
  base_.declare("vit.pos_embed", {S_, d_});
  if (cls) base_.declare("vit.cls_token", {d_});
  for (int l = 0; l < L_; ++l) {
    base_.declare(fmt::format("vit.layers.{}.norm1.weight", l), {d_});
    base_.declare(fmt::format("vit.layers.{}.norm2.weight", l), {d_});
  }
  base_.declare("vit.norm.weight", {d_});
  base_.declare("vit.head.weight", {K_, d_});
  base_.declare("vit.head.bias", {K_});
  base_.allocate();

  AttentionConfig ac;
  ac.hidden_size = d_;
  ac.num_heads = cfg_.num_attention_heads;
  ac.num_kv_heads = cfg_.num_attention_heads;
  ac.head_dim = d_ / cfg_.num_attention_heads;
  ac.max_positions = S_;
  ac.causal = false;  // an encoder: every patch sees every patch
  ac.rope = false;    // positions come from the learned pos_embed
  for (int l = 0; l < L_; ++l) {
    attn_.push_back(std::make_unique<Attention<T>>(ac));
    if (!cfg_.is_moe_layer(l)) {
      ffn_.push_back(std::make_unique<DenseFfn<T>>(d_, cfg_.dense_width(), cfg_.moe.hidden_act));
    } else if (cfg_.router_type == VitRouter::TopK) {
      ffn_.push_back(std::make_unique<MoeLayer<T>>(cfg_.moe));
    } else if (cfg_.router_type == VitRouter::Soft) {
      auto m = std::make_unique<SoftMoe<T>>(cfg_.moe, cfg_.slots_per_expert);
      m->set_group_size(S_);  // per-image token sets, as in the Soft MoE paper
      ffn_.push_back(std::move(m));
    } else {
      auto m = std::make_unique<ExpertChoice<T>>(cfg_.moe);
      m->set_group_size(S_);  // each expert picks its tokens within each image
      ffn_.push_back(std::move(m));
    }
  }
  auto add = [&](const std::string& prefix, ParamSet<T>& set) {
    for (const auto& s : set.specs())
      params_.push_back(
          {prefix + s.name, set.value(s.name), set.grad(s.name), s.shape, s.shape.ndim >= 2});
  };
  add("", base_);
  for (int l = 0; l < L_; ++l) {
    add(fmt::format("vit.layers.{}.attn.", l), attn_[l]->params());
    add(fmt::format("vit.layers.{}.{}.", l, cfg_.is_moe_layer(l) ? "moe" : "mlp"),
        ffn_[l]->params());
  }
}

template <class T>
void VitModel<T>::init_weights(Rng& rng) {
  const double std = cfg_.initializer_range;
  for (auto& p : params_) {
    const bool norm = p.name.find("norm") != std::string::npos;
    const bool bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    if (norm)
      std::fill(p.value, p.value + p.shape.numel(), T(1));
    else if (bias)
      std::fill(p.value, p.value + p.shape.numel(), T(0));
    else
      rng.fill_normal(p.value, p.shape.numel(), 0.0, std);
  }
}

template <class T>
int64_t VitModel<T>::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.shape.numel();
  return n;
}

template <class T>
void VitModel<T>::zero_grad() {
  for (auto& p : params_) std::fill(p.grad, p.grad + p.shape.numel(), T(0));
}

template <class T>
double VitModel<T>::forward(const float* images, const int32_t* labels, int B, bool training,
                            Rng* rng) {
  MOE_CHECK(B > 0, "VitModel::forward: B must be positive, got {}", B);
  B_ = B;
  const int64_t n = static_cast<int64_t>(B) * S_, nd = n * d_, pp = int64_t{P_} * P_;
  const int64_t np = static_cast<int64_t>(B) * N_, g = pix_ / P_;
  n_ = n;
  grow_to(patches_, np * pp);
  grow_to(h_, (L_ + 1) * nd);
  grow_to(hmid_, L_ * nd);
  grow_to(xa_, L_ * nd);
  grow_to(xm_, L_ * nd);
  grow_to(rstd_a_, L_ * n);
  grow_to(rstd_m_, L_ * n);
  grow_to(hf_, nd);
  grow_to(rstd_f_, n);
  grow_to(tmp_, nd);
  grow_to(pooled_, int64_t{B} * d_);
  grow_to(logits_, int64_t{B} * K_);
  grow_to(row_loss_, B);
  // Patchify: patch (py, px) of image b is row b*N + py*g + px, pixels in raster order.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t py = 0; py < g; ++py)
      for (int64_t px = 0; px < g; ++px) {
        T* dst = patches_.data() + ((b * N_) + py * g + px) * pp;
        const float* img = images + b * pix_ * pix_;
        for (int64_t y = 0; y < P_; ++y)
          for (int64_t x = 0; x < P_; ++x)
            dst[y * P_ + x] = static_cast<T>(img[(py * P_ + y) * pix_ + px * P_ + x]);
      }
  const bool cls = cfg_.pooling == VitPooling::Cls;
  const int off = cls ? 1 : 0;
  gemm<T>(Trans::No, Trans::Yes, np, d_, pp, T(1), patches_.data(), pp,
          base_.value("vit.patch_embed.weight"), pp, T(0), tmp_.data(), d_);
  const T* bias = base_.value("vit.patch_embed.bias");
  const T* pos = base_.value("vit.pos_embed");
  T* h0 = h_.data();
  for (int64_t b = 0; b < B; ++b) {
    if (cls) {
      const T* ct = base_.value("vit.cls_token");
      for (int64_t j = 0; j < d_; ++j) h0[b * S_ * d_ + j] = ct[j] + pos[j];
    }
    for (int64_t i = 0; i < N_; ++i) {
      const int64_t s = i + off;
      T* r = h0 + (b * S_ + s) * d_;
      const T* e = tmp_.data() + (b * N_ + i) * d_;
      for (int64_t j = 0; j < d_; ++j) r[j] = e[j] + bias[j] + pos[s * d_ + j];
    }
  }

  ForwardOptions<T> opt;
  opt.training = training;
  opt.rng = rng;
  const T eps = static_cast<T>(cfg_.rms_norm_eps);
  aux_ = 0;
  for (int l = 0; l < L_; ++l) {
    T* h = h_.data() + l * nd;
    T* hm = hmid_.data() + l * nd;
    T* xa = xa_.data() + l * nd;
    T* xm = xm_.data() + l * nd;
    rmsnorm_forward(xa, rstd_a_.data() + l * n, h,
                    base_.value(fmt::format("vit.layers.{}.norm1.weight", l)), n, d_, eps);
    attn_[l]->forward(View<const T>(xa, {n, d_}), B, S_, View<T>(tmp_.data(), {n, d_}));
    for (int64_t i = 0; i < nd; ++i) hm[i] = h[i] + tmp_[i];
    rmsnorm_forward(xm, rstd_m_.data() + l * n, hm,
                    base_.value(fmt::format("vit.layers.{}.norm2.weight", l)), n, d_, eps);
    ffn_[l]->forward(View<const T>(xm, {n, d_}), View<T>(tmp_.data(), {n, d_}), opt);
    aux_ += ffn_[l]->aux_loss();
    T* hn = h_.data() + (l + 1) * nd;
    for (int64_t i = 0; i < nd; ++i) hn[i] = hm[i] + tmp_[i];
  }
  rmsnorm_forward(hf_.data(), rstd_f_.data(), h_.data() + L_ * nd, base_.value("vit.norm.weight"),
                  n, d_, eps);
  for (int64_t b = 0; b < B; ++b) {
    T* p = pooled_.data() + b * d_;
    if (cls) {
      std::copy_n(hf_.data() + b * S_ * d_, d_, p);
    } else {
      std::fill(p, p + d_, T(0));
      for (int64_t s = 0; s < S_; ++s)
        for (int64_t j = 0; j < d_; ++j) p[j] += hf_[(b * S_ + s) * d_ + j];
      for (int64_t j = 0; j < d_; ++j) p[j] /= static_cast<T>(S_);
    }
  }
  const T* hw = base_.value("vit.head.weight");
  const T* hb = base_.value("vit.head.bias");
  gemm<T>(Trans::No, Trans::Yes, B, K_, d_, T(1), pooled_.data(), d_, hw, d_, T(0), logits_.data(),
          K_);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K_; ++k) logits_[b * K_ + k] += hb[k];
  has_labels_ = labels != nullptr;
  ce_ = 0;
  if (!has_labels_) return 0.0;
  labels_.assign(labels, labels + B);
  int64_t counted = 0;
  ce_ = cross_entropy_forward(row_loss_.data(), logits_.data(), labels_.data(), B, K_, &counted) /
        std::max<int64_t>(counted, 1);
  return ce_ + aux_;
}

template <class T>
void VitModel<T>::backward(double scale) {
  MOE_CHECK(n_ > 0 && has_labels_, "VitModel::backward: needs a forward with labels");
  const int B = B_;
  const int64_t n = n_, nd = n * d_, pp = int64_t{P_} * P_, np = int64_t{B} * N_;
  grow_to(dlogits_, int64_t{B} * K_);
  grow_to(dpooled_, int64_t{B} * d_);
  grow_to(dh_, nd);
  grow_to(dtmp_, nd);
  grow_to(dhf_, nd);
  auto grad = [&](const std::string& name) { return base_.grad(name); };
  cross_entropy_backward(dlogits_.data(), logits_.data(), labels_.data(), B, K_, scale / B);
  gemm<T>(Trans::Yes, Trans::No, K_, d_, B, T(1), dlogits_.data(), K_, pooled_.data(), d_, T(1),
          grad("vit.head.weight"), d_);
  T* dhb = grad("vit.head.bias");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K_; ++k) dhb[k] += dlogits_[b * K_ + k];
  gemm<T>(Trans::No, Trans::No, B, d_, K_, T(1), dlogits_.data(), K_,
          base_.value("vit.head.weight"), d_, T(0), dpooled_.data(), d_);
  const bool cls = cfg_.pooling == VitPooling::Cls;
  std::fill(dhf_.begin(), dhf_.begin() + nd, T(0));
  for (int64_t b = 0; b < B; ++b) {
    const T* dp = dpooled_.data() + b * d_;
    if (cls) {
      std::copy_n(dp, d_, dhf_.data() + b * S_ * d_);
    } else {
      for (int64_t s = 0; s < S_; ++s)
        for (int64_t j = 0; j < d_; ++j) dhf_[(b * S_ + s) * d_ + j] = dp[j] / static_cast<T>(S_);
    }
  }
  std::fill(dh_.begin(), dh_.begin() + nd, T(0));
  rmsnorm_backward(dh_.data(), grad("vit.norm.weight"), dhf_.data(), h_.data() + L_ * nd,
                   base_.value("vit.norm.weight"), rstd_f_.data(), n, d_);
  for (int l = L_ - 1; l >= 0; --l) {
    // dh is the gradient of the block's output; the residual carries it through unchanged.
    ffn_[l]->backward(View<const T>(dh_.data(), {n, d_}), View<T>(dtmp_.data(), {n, d_}), scale);
    const std::string n2 = fmt::format("vit.layers.{}.norm2.weight", l);
    rmsnorm_backward(dh_.data(), grad(n2), dtmp_.data(), hmid_.data() + l * nd, base_.value(n2),
                     rstd_m_.data() + l * n, n, d_);
    attn_[l]->backward(View<const T>(dh_.data(), {n, d_}), View<T>(dtmp_.data(), {n, d_}));
    const std::string n1 = fmt::format("vit.layers.{}.norm1.weight", l);
    rmsnorm_backward(dh_.data(), grad(n1), dtmp_.data(), h_.data() + l * nd, base_.value(n1),
                     rstd_a_.data() + l * n, n, d_);
  }
  // Embedding: h0 = patches W^T + bias + pos (and cls + pos[0]).
  const int off = cls ? 1 : 0;
  T* dpos = grad("vit.pos_embed");
  T* dbias = grad("vit.patch_embed.bias");
  for (int64_t b = 0; b < B; ++b) {
    if (cls) {
      T* dct = grad("vit.cls_token");
      for (int64_t j = 0; j < d_; ++j) {
        dct[j] += dh_[b * S_ * d_ + j];
        dpos[j] += dh_[b * S_ * d_ + j];
      }
    }
    for (int64_t i = 0; i < N_; ++i) {
      const int64_t s = i + off;
      const T* r = dh_.data() + (b * S_ + s) * d_;
      for (int64_t j = 0; j < d_; ++j) {
        dpos[s * d_ + j] += r[j];
        dbias[j] += r[j];
      }
      std::copy_n(r, d_, dtmp_.data() + (b * N_ + i) * d_);
    }
  }
  gemm<T>(Trans::Yes, Trans::No, d_, pp, np, T(1), dtmp_.data(), d_, patches_.data(), pp, T(1),
          grad("vit.patch_embed.weight"), pp);
}

template <class T>
void VitModel<T>::token_routing(int l, std::vector<int>& kept, std::vector<int>& expert) const {
  const int64_t n = n_;
  kept.assign(static_cast<size_t>(n), -1);
  expert.assign(static_cast<size_t>(n), -1);
  if (!cfg_.is_moe_layer(l)) return;
  const FeedForward<T>* f = ffn_[l].get();
  if (const auto* m = dynamic_cast<const MoeLayer<T>*>(f)) {
    const auto& plan = m->plan();
    const int k = plan.k;
    for (int64_t t = 0; t < n; ++t) {
      int c = 0;
      for (int j = 0; j < k; ++j) c += plan.expert[t * k + j] >= 0;
      kept[t] = c;
      expert[t] = plan.primary[t * k];
    }
  } else if (const auto* ec = dynamic_cast<const ExpertChoice<T>*>(f)) {
    const int E = cfg_.moe.num_experts;
    const int64_t per_expert = (n / S_) * ec->capacity();
    std::vector<T> best(static_cast<size_t>(n), T(-1));
    for (int64_t t = 0; t < n; ++t) kept[t] = ec->experts_per_token()[t];
    for (int64_t r = 0; r < E * per_expert; ++r) {
      const int32_t t = ec->chosen()[r];
      if (ec->gates()[r] > best[t]) {
        best[t] = ec->gates()[r];
        expert[t] = static_cast<int>(r / per_expert);
      }
    }
  } else if (const auto* sm = dynamic_cast<const SoftMoe<T>*>(f)) {
    const int64_t S = int64_t{cfg_.moe.num_experts} * sm->slots_per_expert();
    for (int64_t t = 0; t < n; ++t) {
      const T* c = sm->combine().data() + t * S;
      expert[t] = static_cast<int>((std::max_element(c, c + S) - c) / sm->slots_per_expert());
    }
  }
}

template <class T>
double VitModel<T>::dropped_fraction() const {
  int64_t dropped = 0, total = 0;
  for (int l = 0; l < L_; ++l) {
    if (!cfg_.is_moe_layer(l)) continue;
    if (const auto* m = dynamic_cast<const MoeLayer<T>*>(ffn_[l].get())) {
      dropped += m->metrics().dropped;
      total += m->metrics().assignments;
    } else if (const auto* ec = dynamic_cast<const ExpertChoice<T>*>(ffn_[l].get())) {
      // Expert choice drops no assignment; a token no expert took is its "dropped" token.
      for (int64_t t = 0; t < n_; ++t) dropped += ec->experts_per_token()[t] == 0;
      total += n_;
    }
  }
  return total > 0 ? static_cast<double>(dropped) / total : 0.0;
}

template <class T>
void VitModel<T>::save_weights(SafeTensorsWriter& w) const {
  for (const auto& p : params_) w.add(p.name, p.shape, p.value, DType::F32);
}

template <class T>
void VitModel<T>::load_weights(const SafeTensorsFile& f) {
  for (const auto& p : params_) {
    MOE_REQUIRE(f.has(p.name), "{}: missing tensor {} (shape {})", f.path(), p.name, p.shape.str());
    f.read_into(p.name, p.shape, p.value);
  }
}

template class VitModel<float>;
template class VitModel<double>;

}  // namespace moe
