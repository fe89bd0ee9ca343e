#include "moe/inference_model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/rmsnorm.h"
#include "moe/router.h"
#include "moe/sampling.h"

namespace moe {

namespace {

// Widens n stored values of a 16-bit dtype to fp32. bf16 is the top half of an fp32, so this
// is a shift the compiler vectorizes.
void widen(const uint8_t* src, DType t, int64_t n, float* dst) {
  const auto* h = reinterpret_cast<const uint16_t*>(src);
  if (t == DType::BF16) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t bits = static_cast<uint32_t>(h[i]) << 16;
      std::memcpy(dst + i, &bits, 4);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_float(h[i]);
  }
}

float silu(float v) {
  return v / (1.0f + std::exp(-v));
}

template <class V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Few rows (decoding): one pass over the weights, each weight row dotted with every input row
// while it is in cache. A GEMM would first pack (copy) the whole weight matrix, tripling the
// memory traffic of a step that is bound by it.
template <int kMaxRows>
void linear_few_rows(const float* x, int64_t n, const WeightView& w, float* y, bool accumulate) {
  const int64_t K = w.cols;
#pragma omp parallel for schedule(static) if (w.rows * K > (1 << 15))
  for (int64_t r = 0; r < w.rows; ++r) {
    float acc[kMaxRows] = {};
    if (w.dtype == DType::F32) {
      const float* wr = reinterpret_cast<const float*>(w.data) + r * K;
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * K;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < K; ++j) s += wr[j] * xi[j];
        acc[i] = s;
      }
    } else if (w.dtype == DType::BF16) {
      const uint16_t* wr = reinterpret_cast<const uint16_t*>(w.data) + r * K;
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * K;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < K; ++j) {
          const uint32_t bits = static_cast<uint32_t>(wr[j]) << 16;
          float wv;
          std::memcpy(&wv, &bits, 4);
          s += wv * xi[j];
        }
        acc[i] = s;
      }
    } else {
      float row[1024];  // F16: widen a chunk at a time, then dot
      for (int64_t j0 = 0; j0 < K; j0 += 1024) {
        const int64_t len = std::min<int64_t>(1024, K - j0);
        widen(w.data + (r * K + j0) * 2, w.dtype, len, row);
        for (int64_t i = 0; i < n; ++i) {
          float s = 0;
          for (int64_t j = 0; j < len; ++j) s += row[j] * x[i * K + j0 + j];
          acc[i] += s;
        }
      }
    }
    for (int64_t i = 0; i < n; ++i)
      y[i * w.rows + r] = accumulate ? y[i * w.rows + r] + acc[i] : acc[i];
  }
}

}  // namespace

void linear_forward(const float* x, int64_t n, const WeightView& w, float* y, bool accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  if (n == 0 || w.rows == 0) return;
  constexpr int kFewRows = 4;
  if (n <= kFewRows) {
    linear_few_rows<kFewRows>(x, n, w, y, accumulate);
    return;
  }
  if (w.dtype == DType::F32) {
    gemm<float>(Trans::No, Trans::Yes, n, w.rows, w.cols, 1.0f, x, w.cols,
                reinterpret_cast<const float*>(w.data), w.cols, beta, y, w.rows);
    return;
  }
  // Blocks of rows small enough that the widened tile stays in L2 (~128 KB).
  const int64_t block = std::max<int64_t>(8, (int64_t{32} << 10) / std::max<int64_t>(w.cols, 1));
  const int64_t blocks = (w.rows + block - 1) / block;
  const int64_t esize = dtype_size(w.dtype);
#pragma omp parallel if (blocks > 1 && n * w.rows * w.cols > (1 << 16))
  {
    std::vector<float> tile(static_cast<size_t>(block * w.cols));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * block, rb = std::min(block, w.rows - r0);
      widen(w.data + r0 * w.cols * esize, w.dtype, rb * w.cols, tile.data());
      gemm<float>(Trans::No, Trans::Yes, n, rb, w.cols, 1.0f, x, w.cols, tile.data(), w.cols, beta,
                  y + r0, w.rows);
    }
  }
}

WeightView InferenceModel::matrix(const std::string& name, int64_t rows, int64_t cols) const {
  const SafeTensorsFile& f = weights_.file_of(name);
  const TensorEntry& e = f.entry(name);
  MOE_REQUIRE(e.dtype == DType::F32 || e.dtype == DType::BF16 || e.dtype == DType::F16,
              "{}: tensor {} has dtype {}, expected F32, BF16 or F16", f.path(), name,
              dtype_name(e.dtype));
  MOE_REQUIRE(e.shape == std::vector<int64_t>({rows, cols}),
              "{}: tensor {} has shape {}, expected [{}, {}]", f.path(), name,
              fmt::format("[{}]", fmt::join(e.shape, ", ")), rows, cols);
  return WeightView{f.raw(e), e.dtype, rows, cols};
}

std::vector<float> InferenceModel::vector(const std::string& name, int64_t size) const {
  std::vector<float> v(static_cast<size_t>(size));
  weights_.file_of(name).read_into<float>(name, Shape{size}, v.data());
  return v;
}

std::unique_ptr<InferenceModel> InferenceModel::load(const std::string& dir) {
  std::unique_ptr<InferenceModel> m(new InferenceModel());
  m->cfg_ = load_hf_config(dir + "/config.json");
  m->weights_ = HfWeights::open(dir);
  const ModelConfig& c = m->cfg_;
  const int64_t d = c.hidden_size, V = c.vocab_size, hd = c.head_size();
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  const int64_t F = c.intermediate_size;

  m->embed_ = m->matrix("model.embed_tokens.weight", V, d);
  m->head_ = c.tie_word_embeddings ? m->embed_ : m->matrix("lm_head.weight", V, d);
  m->final_norm_ = m->vector("model.norm.weight", d);
  m->dtype_ = m->embed_.dtype;
  m->layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    Layer& L = m->layers_[static_cast<size_t>(l)];
    auto name = [&](HfTensor t, int e = -1) { return hf_tensor_name(c, l, t, e); };
    L.input_norm = m->vector(name(HfTensor::InputNorm), d);
    L.post_norm = m->vector(name(HfTensor::PostAttentionNorm), d);
    L.q = m->matrix(name(HfTensor::Q), qd, d);
    L.k = m->matrix(name(HfTensor::K), kvd, d);
    L.v = m->matrix(name(HfTensor::V), kvd, d);
    L.o = m->matrix(name(HfTensor::O), d, qd);
    if (c.attention_bias) {
      L.q_bias = m->vector(name(HfTensor::QBias), qd);
      L.k_bias = m->vector(name(HfTensor::KBias), kvd);
      L.v_bias = m->vector(name(HfTensor::VBias), kvd);
    }
    if (c.qk_norm == QkNorm::PerHead) {
      L.q_norm = m->vector(name(HfTensor::QNorm), hd);
      L.k_norm = m->vector(name(HfTensor::KNorm), hd);
    } else if (c.qk_norm == QkNorm::Full) {
      L.q_norm = m->vector(name(HfTensor::QNorm), qd);
      L.k_norm = m->vector(name(HfTensor::KNorm), kvd);
    }
    L.moe = c.is_moe_layer(l);
    if (!L.moe) {
      const int64_t Fd = c.dense_width();
      L.shared = {m->matrix(name(HfTensor::DenseGate), Fd, d),
                  m->matrix(name(HfTensor::DenseUp), Fd, d),
                  m->matrix(name(HfTensor::DenseDown), d, Fd)};
      L.has_shared = true;
      continue;
    }
    const int E = c.num_local_experts;
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
      if (c.moe.shared_expert_gate) {
        const std::string g = name(HfTensor::SharedExpertGate);
        L.shared_gate.resize(static_cast<size_t>(d));
        m->weights_.file_of(g).read_into<float>(g, Shape{1, d}, L.shared_gate.data());
      }
    }
  }
  rope_tables(m->cos_, m->sin_, c.max_position_embeddings, static_cast<int>(hd), c.rope_theta);
  return m;
}

std::vector<KvCache<float>> InferenceModel::new_caches(int batch, int capacity) const {
  MOE_REQUIRE(capacity <= cfg_.max_position_embeddings,
              "a KV cache of {} positions exceeds max_position_embeddings = {}", capacity,
              cfg_.max_position_embeddings);
  std::vector<KvCache<float>> caches(static_cast<size_t>(cfg_.num_hidden_layers));
  for (auto& c : caches) c.reset(batch, capacity, cfg_.num_key_value_heads * cfg_.head_size());
  return caches;
}

void InferenceModel::swiglu(const Expert& e, const float* x, int64_t rows, float* y,
                            bool accumulate) {
  const int64_t F = e.gate.rows;
  grow(h1_, static_cast<size_t>(rows * F));
  grow(h3_, static_cast<size_t>(rows * F));
  linear_forward(x, rows, e.gate, h1_.data());
  linear_forward(x, rows, e.up, h3_.data());
  const int64_t n = rows * F;
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) h1_[i] = silu(h1_[i]) * h3_[i];
  linear_forward(h1_.data(), rows, e.down, y, accumulate);
}

void InferenceModel::attention(const Layer& L, int B, int n, KvCache<float>& cache) {
  const ModelConfig& c = cfg_;
  const int64_t rows = static_cast<int64_t>(B) * n, hd = c.head_size();
  const int H = c.num_attention_heads, G = c.num_key_value_heads;
  const int64_t qd = H * hd, kvd = G * hd, start = cache.length;
  MOE_REQUIRE(start + n <= c.max_position_embeddings,
              "position {} is beyond max_position_embeddings = {}", start + n - 1,
              c.max_position_embeddings);
  grow(q_, static_cast<size_t>(rows * qd));
  grow(k_, static_cast<size_t>(rows * kvd));
  grow(v_, static_cast<size_t>(rows * kvd));
  grow(o_, static_cast<size_t>(rows * qd));
  grow(rstd_, static_cast<size_t>(rows * H));
  linear_forward(x_.data(), rows, L.q, q_.data());
  linear_forward(x_.data(), rows, L.k, k_.data());
  linear_forward(x_.data(), rows, L.v, v_.data());
  if (!L.q_bias.empty())
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < qd; ++j) q_[r * qd + j] += L.q_bias[j];
      for (int64_t j = 0; j < kvd; ++j) {
        k_[r * kvd + j] += L.k_bias[j];
        v_[r * kvd + j] += L.v_bias[j];
      }
    }
  const double eps = c.rms_norm_eps;
  if (c.qk_norm == QkNorm::PerHead) {  // every head row [hd] normalized with one weight
    rmsnorm_forward(q_.data(), rstd_.data(), q_.data(), L.q_norm.data(), rows * H, hd, eps);
    rmsnorm_forward(k_.data(), rstd_.data(), k_.data(), L.k_norm.data(), rows * G, hd, eps);
  } else if (c.qk_norm == QkNorm::Full) {  // the whole projection of a token at once
    rmsnorm_forward(q_.data(), rstd_.data(), q_.data(), L.q_norm.data(), rows, qd, eps);
    rmsnorm_forward(k_.data(), rstd_.data(), k_.data(), L.k_norm.data(), rows, kvd, eps);
  }
  rope_forward(q_.data(), cos_.data(), sin_.data(), rows, H, static_cast<int>(hd), n, start);
  rope_forward(k_.data(), cos_.data(), sin_.data(), rows, G, static_cast<int>(hd), n, start);
  cached_attention(q_.data(), k_.data(), v_.data(), B, n, H, G, static_cast<int>(hd), cache,
                   o_.data(), scores_);
  linear_forward(o_.data(), rows, L.o, h_.data(), /*accumulate=*/true);
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
  grow(xp_, static_cast<size_t>(N * d));
  grow(yp_, static_cast<size_t>(N * d));
  gather_rows<float>(perm_, k, d, x_.data(), xp_.data());
  for (int e = 0; e < E; ++e) {
    const int64_t r0 = perm_.offsets[e], n = perm_.rows_of(e);
    if (n > 0) swiglu(L.experts[e], xp_.data() + r0 * d, n, yp_.data() + r0 * d, false);
  }
  grow(tmp_, static_cast<size_t>(rows * d));
  scatter_gated<float>(perm_, rows, k, d, yp_.data(), gate.data(), tmp_.data());
  for (int64_t i = 0; i < rows * d; ++i) h_[i] += tmp_[i];

  if (!L.has_shared) return;
  swiglu(L.shared, x_.data(), rows, tmp_.data(), false);
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

void InferenceModel::forward(const int32_t* tokens, int B, int n,
                             std::vector<KvCache<float>>& caches, float* logits, bool all_logits) {
  const ModelConfig& c = cfg_;
  MOE_CHECK(B > 0 && n > 0, "InferenceModel::forward: B and n must be positive, got B={} n={}", B,
            n);
  MOE_CHECK(caches.size() == layers_.size(), "InferenceModel::forward: {} caches for {} layers",
            caches.size(), layers_.size());
  const int64_t rows = static_cast<int64_t>(B) * n, d = c.hidden_size, V = c.vocab_size;
  grow(h_, static_cast<size_t>(rows * d));
  grow(x_, static_cast<size_t>(rows * d));
  grow(rstd_, static_cast<size_t>(rows));
  const int64_t esize = dtype_size(embed_.dtype);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = tokens[r];
    MOE_REQUIRE(t >= 0 && t < V, "token id {} is outside the vocabulary [0, {})", t, V);
    const uint8_t* src = embed_.data + t * d * esize;
    if (embed_.dtype == DType::F32)
      std::memcpy(h_.data() + r * d, src, static_cast<size_t>(d) * 4);
    else
      widen(src, embed_.dtype, d, h_.data() + r * d);
  }
  const double eps = c.rms_norm_eps;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    rmsnorm_forward(x_.data(), rstd_.data(), h_.data(), L.input_norm.data(), rows, d, eps);
    attention(L, B, n, caches[l]);
    grow(rstd_, static_cast<size_t>(rows));
    rmsnorm_forward(x_.data(), rstd_.data(), h_.data(), L.post_norm.data(), rows, d, eps);
    if (L.moe)
      moe_block(L, rows);
    else
      swiglu(L.shared, x_.data(), rows, h_.data(), /*accumulate=*/true);
  }
  // The head runs on the rows whose logits are wanted only.
  const int64_t out_rows = all_logits ? rows : B;
  for (int64_t r = 0; r < out_rows; ++r) {
    const int64_t src = all_logits ? r : r * n + (n - 1);
    std::copy_n(h_.data() + src * d, d, x_.data() + r * d);
  }
  rmsnorm_forward(x_.data(), rstd_.data(), x_.data(), final_norm_.data(), out_rows, d, eps);
  linear_forward(x_.data(), out_rows, head_, logits);
}

std::vector<std::vector<int32_t>> generate(InferenceModel& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt, int32_t eos_id,
                                           const std::function<void(int, int32_t)>& on_token) {
  MOE_REQUIRE(!prompts.empty() && !prompts[0].empty(), "generate: needs a non-empty prompt");
  const int B = static_cast<int>(prompts.size());
  const int n = static_cast<int>(prompts[0].size());
  for (const auto& p : prompts)
    MOE_REQUIRE(static_cast<int>(p.size()) == n,
                "generate: batched prompts must have the same length ({} and {} tokens)", n,
                p.size());
  const int budget =
      new_token_budget(n, opt.max_new_tokens, model.config().max_position_embeddings);
  const int64_t V = model.config().vocab_size;
  auto caches = model.new_caches(B, n + std::max(budget, 1));
  std::vector<int32_t> flat;
  for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
  std::vector<float> logits(static_cast<size_t>(B * V)), scratch;
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  std::vector<uint8_t> done(static_cast<size_t>(B), 0);
  Rng rng(opt.seed);
  model.forward(flat.data(), B, n, caches, logits.data());
  std::vector<int32_t> next(static_cast<size_t>(B));
  for (int step = 0; step < budget; ++step) {
    bool all_done = true;
    for (int b = 0; b < B; ++b) {
      if (done[b]) {
        next[b] = std::max(eos_id, 0);  // keeps the batch in step; never reported
        continue;
      }
      next[b] = sample_token(logits.data() + b * V, V, opt.sampling, rng, scratch);
      out[b].push_back(next[b]);
      if (on_token) on_token(b, next[b]);
      if (opt.stop_at_eos && eos_id >= 0 && next[b] == eos_id) done[b] = 1;
      all_done = all_done && done[b];
    }
    if (all_done || step + 1 == budget) break;
    model.forward(next.data(), B, 1, caches, logits.data());
  }
  return out;
}

}  // namespace moe
