#include "moe/gated_deltanet.h"

#include <algorithm>
#include <cmath>

#include "core/parallel_for.h"
#include "moe/error.h"
#include "moe/tensor.h"

namespace moe {

namespace {

double silu(double x) {
  return x / (1.0 + std::exp(-x));
}
double softplus(double x) {
  return x > 20 ? x : std::log1p(std::exp(x));
}  // torch's threshold

// The recurrent form for one (sequence, value head): n tokens with strides (in floats) between
// consecutive tokens' q/k (sq), v/o (sv) and g/beta (sg).
void recurrent_head(const float* q, const float* k, const float* v, const float* g,
                    const float* beta, int64_t n, int64_t sq, int64_t sv, int64_t sg, int dk,
                    int dv, float* S, float* o) {
  std::vector<double> kv(static_cast<size_t>(dv));
  for (int64_t t = 0; t < n; ++t) {
    const float *qt = q + t * sq, *kt = k + t * sq, *vt = v + t * sv;
    const auto decay = static_cast<float>(std::exp(static_cast<double>(g[t * sg])));
    const double bt = beta[t * sg];
    for (int64_t i = 0; i < int64_t{dk} * dv; ++i) S[i] *= decay;
    std::fill(kv.begin(), kv.end(), 0.0);
    for (int i = 0; i < dk; ++i)
      for (int e = 0; e < dv; ++e) kv[e] += static_cast<double>(S[i * dv + e]) * kt[i];
    for (int e = 0; e < dv; ++e) kv[e] = bt * (vt[e] - kv[e]);  // delta
    for (int i = 0; i < dk; ++i)
      for (int e = 0; e < dv; ++e) S[i * dv + e] += static_cast<float>(kt[i] * kv[e]);
    float* ot = o + t * sv;
    for (int e = 0; e < dv; ++e) {
      double s = 0;
      for (int i = 0; i < dk; ++i) s += static_cast<double>(S[i * dv + e]) * qt[i];
      ot[e] = static_cast<float>(s);
    }
  }
}

// The chunked form for one (sequence, value head), same arguments. Within a chunk of c tokens
// with cumulative log-decays G: A[i][j] = -beta_i (k_i . k_j) exp(G_i - G_j) (j < i) is
// inverted as T = (I - A)^-1 by forward substitution; U = T (beta v), W = T (beta exp(G) k);
// the corrected values v' = U - W S; o_i = exp(G_i) S^T q_i + sum_{j <= i} (q_i . k_j)
// exp(G_i - G_j) v'_j; S <- exp(G_c) S + sum_j exp(G_c - G_j) k_j v'_j^T.
void chunked_head(const float* q, const float* k, const float* v, const float* g, const float* beta,
                  int64_t n, int64_t sq, int64_t sv, int64_t sg, int dk, int dv, float* S,
                  float* o) {
  const int C = kGdnChunk;
  std::vector<double> G(C), A(static_cast<size_t>(C) * C), U(static_cast<size_t>(C) * dv),
      W(static_cast<size_t>(C) * dk), Vn(static_cast<size_t>(C) * dv), row(C);
  for (int64_t s = 0; s < n; s += C) {
    const int c = static_cast<int>(std::min<int64_t>(C, n - s));
    auto Q = [&](int i) { return q + (s + i) * sq; };
    auto K = [&](int i) { return k + (s + i) * sq; };
    auto V = [&](int i) { return v + (s + i) * sv; };
    double acc = 0;
    for (int i = 0; i < c; ++i) G[i] = acc += g[(s + i) * sg];
    auto dot = [&](const float* x, const float* y) {
      double r = 0;
      for (int a = 0; a < dk; ++a) r += static_cast<double>(x[a]) * y[a];
      return r;
    };
    for (int i = 0; i < c; ++i)
      for (int j = 0; j < c; ++j)
        A[i * C + j] = j < i ? -beta[(s + i) * sg] * dot(K(i), K(j)) * std::exp(G[i] - G[j]) : 0.0;
    for (int i = 1; i < c; ++i) {
      for (int j = 0; j < i; ++j) row[j] = A[i * C + j];
      for (int j = 0; j < i; ++j) {
        double r = row[j];
        for (int m = j + 1; m < i; ++m) r += row[m] * A[m * C + j];
        A[i * C + j] = r;
      }
    }
    for (int i = 0; i < c; ++i) A[i * C + i] = 1.0;  // T = A + I
    for (int i = 0; i < c; ++i) {
      double* u = &U[static_cast<size_t>(i) * dv];
      double* w = &W[static_cast<size_t>(i) * dk];
      std::fill_n(u, dv, 0.0);
      std::fill_n(w, dk, 0.0);
      for (int j = 0; j <= i; ++j) {
        const double t = A[i * C + j] * beta[(s + j) * sg];
        const double te = t * std::exp(G[j]);
        for (int e = 0; e < dv; ++e) u[e] += t * V(j)[e];
        for (int a = 0; a < dk; ++a) w[a] += te * K(j)[a];
      }
      double* vn = &Vn[static_cast<size_t>(i) * dv];
      for (int e = 0; e < dv; ++e) vn[e] = u[e];
      for (int a = 0; a < dk; ++a)
        for (int e = 0; e < dv; ++e) vn[e] -= w[a] * S[a * dv + e];
    }
    for (int i = 0; i < c; ++i) {
      float* oi = o + (s + i) * sv;
      const double eg = std::exp(G[i]);
      for (int e = 0; e < dv; ++e) {
        double r = 0;
        for (int a = 0; a < dk; ++a) r += static_cast<double>(S[a * dv + e]) * Q(i)[a];
        U[e] = eg * r;  // reuse U's first row as the row accumulator
      }
      for (int j = 0; j <= i; ++j) {
        const double p = dot(Q(i), K(j)) * std::exp(G[i] - G[j]);
        for (int e = 0; e < dv; ++e) U[e] += p * Vn[static_cast<size_t>(j) * dv + e];
      }
      for (int e = 0; e < dv; ++e) oi[e] = static_cast<float>(U[e]);
    }
    const double last = G[c - 1], el = std::exp(last);
    for (int64_t i = 0; i < int64_t{dk} * dv; ++i) S[i] = static_cast<float>(S[i] * el);
    for (int j = 0; j < c; ++j) {
      const double f = std::exp(last - G[j]);
      for (int a = 0; a < dk; ++a) {
        const double ka = f * K(j)[a];
        for (int e = 0; e < dv; ++e)
          S[a * dv + e] += static_cast<float>(ka * Vn[static_cast<size_t>(j) * dv + e]);
      }
    }
  }
}

}  // namespace

void reset_gdn_cache(const LinearAttnConfig& c, int batch, int capacity, KvCache<float>& cache) {
  cache.batch = batch;
  cache.capacity = capacity;
  cache.length = 0;
  cache.kv_dim = cache.v_dim = 0;
  cache.window = 0;
  cache.k.clear();
  cache.v.clear();
  cache.conv.assign(static_cast<size_t>(batch) * (c.conv_kernel - 1) * c.conv_dim(), 0.0f);
  cache.ssm.assign(static_cast<size_t>(batch) * c.num_v_heads * c.k_head_dim * c.v_head_dim, 0.0f);
}

GatedDeltaNet::GatedDeltaNet(const LinearAttnConfig& c, int hidden_size, double eps)
    : c_(c), d_(hidden_size), eps_(eps) {}

void GatedDeltaNet::delta_rule(const float* q, const float* k, const float* v, const float* g,
                               const float* beta, int B, int n, int Hv, int dk, int dv, float* S,
                               float* o, GdnMode mode) {
  const bool chunked = mode == GdnMode::Chunked || (mode == GdnMode::Auto && n > 1);
  const int64_t tasks = int64_t{B} * Hv;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / Hv, h = task % Hv;
    const int64_t row0 = b * n;
    const int64_t sq = int64_t{Hv} * dk, sv = int64_t{Hv} * dv;
    const float* qh = q + row0 * sq + h * dk;
    const float* kh = k + row0 * sq + h * dk;
    const float* vh = v + row0 * sv + h * dv;
    const float* gh = g + row0 * Hv + h;
    const float* bh = beta + row0 * Hv + h;
    float* Sh = S + task * dk * dv;
    float* oh = o + row0 * sv + h * dv;
    if (chunked)
      chunked_head(qh, kh, vh, gh, bh, n, sq, sv, Hv, dk, dv, Sh, oh);
    else
      recurrent_head(qh, kh, vh, gh, bh, n, sq, sv, Hv, dk, dv, Sh, oh);
  }
}

void GatedDeltaNet::forward(const GdnWeights& w, const float* x, int B, int n, KvCache<float>& st,
                            float* out, GdnMode mode) {
  const LinearAttnConfig& c = c_;
  MOE_CHECK(B > 0 && n > 0, "GatedDeltaNet: B and n must be positive, got B={} n={}", B, n);
  MOE_CHECK(st.batch == B && st.ssm.size() == static_cast<size_t>(B) * c.num_v_heads *
                                                  c.k_head_dim * c.v_head_dim,
            "GatedDeltaNet: state reset for batch {}, the call has batch {}", st.batch, B);
  MOE_CHECK(w.qkv.cols == d_, "GatedDeltaNet: in_proj_qkv has {} columns for hidden_size {}",
            w.qkv.cols, d_);
  const int64_t rows = int64_t{B} * n, Hk = c.num_k_heads, Hv = c.num_v_heads;
  const int dk = c.k_head_dim, dv = c.v_head_dim, K = c.conv_kernel, r = c.num_v_heads / Hk;
  const int64_t kd = c.key_dim(), vd = c.value_dim(), cd = c.conv_dim();
  grow_to(qkv_, rows * cd);
  grow_to(conv_out_, rows * cd);
  grow_to(z_, rows * vd);
  grow_to(b_, rows * Hv);
  grow_to(a_, rows * Hv);
  grow_to(q_, rows * Hv * dk);
  grow_to(k_, rows * Hv * dk);
  grow_to(g_, rows * Hv);
  grow_to(beta_, rows * Hv);
  grow_to(o_, rows * vd);
  linear_forward(x, rows, w.qkv, qkv_.data());
  linear_forward(x, rows, w.z, z_.data());
  linear_forward(x, rows, w.b, b_.data());
  linear_forward(x, rows, w.a, a_.data());

  // The causal depthwise conv over each sequence, continuing from the state's K-1 inputs; the
  // state then keeps the last K-1 inputs.
  for (int64_t b = 0; b < B; ++b) {
    float* state = st.conv.data() + b * (K - 1) * cd;
    const float* in = qkv_.data() + b * n * cd;
    float* y = conv_out_.data() + b * n * cd;
#pragma omp parallel for schedule(static) if (n * cd > kParallelMinValues)
    for (int64_t ch = 0; ch < cd; ++ch) {
      const float* wk = w.conv + ch * K;
      for (int64_t t = 0; t < n; ++t) {
        double s = 0;
        for (int j = 0; j < K; ++j) {
          const int64_t p = t - (K - 1) + j;  // < 0: from the state (row K-1+p)
          const float xin = p >= 0 ? in[p * cd + ch] : state[(K - 1 + p) * cd + ch];
          s += static_cast<double>(wk[j]) * xin;
        }
        y[t * cd + ch] = static_cast<float>(silu(s));
      }
    }
    // New state: the last K-1 of (old state, inputs).
    std::vector<float> tail(static_cast<size_t>((K - 1) * cd));
    for (int i = 0; i < K - 1; ++i) {
      const int64_t p = n - (K - 1) + i;
      const float* src = p >= 0 ? in + p * cd : state + (K - 1 + p) * cd;
      std::copy_n(src, cd, tail.data() + i * cd);
    }
    std::copy(tail.begin(), tail.end(), state);
  }

  // q, k L2-normalized per key head (q also scaled), repeated to the value heads; g, beta.
  const double qscale = 1.0 / std::sqrt(static_cast<double>(dk));
#pragma omp parallel for schedule(static) if (rows * cd > kParallelMinValues)
  for (int64_t t = 0; t < rows; ++t) {
    const float* row = conv_out_.data() + t * cd;
    for (int64_t h = 0; h < Hk; ++h) {
      for (int which = 0; which < 2; ++which) {
        const float* src = row + which * kd + h * dk;
        double ss = 0;
        for (int i = 0; i < dk; ++i) ss += static_cast<double>(src[i]) * src[i];
        double inv = 1.0 / std::sqrt(ss + 1e-6);
        if (which == 0) inv *= qscale;
        float* dst = (which == 0 ? q_ : k_).data() + t * Hv * dk;
        for (int rep = 0; rep < r; ++rep) {
          const int64_t vh = c.tiled_heads ? rep * Hk + h : h * r + rep;
          for (int i = 0; i < dk; ++i) dst[vh * dk + i] = static_cast<float>(src[i] * inv);
        }
      }
    }
    for (int64_t h = 0; h < Hv; ++h) {
      const double bb = b_[t * Hv + h], aa = a_[t * Hv + h];
      beta_[t * Hv + h] = static_cast<float>(1.0 / (1.0 + std::exp(-bb)));
      g_[t * Hv + h] = static_cast<float>(-std::exp(static_cast<double>(w.A_log[h])) *
                                          softplus(aa + w.dt_bias[h]));
    }
  }
  // v: the conv output's last vd channels of each row, packed into qkv_ (no longer needed).
  std::vector<float>& v = qkv_;
  for (int64_t t = 0; t < rows; ++t)
    std::copy_n(conv_out_.data() + t * cd + 2 * kd, vd, v.data() + t * vd);
  delta_rule(q_.data(), k_.data(), v.data(), g_.data(), beta_.data(), B, n, static_cast<int>(Hv),
             dk, dv, st.ssm.data(), o_.data(), mode);
  st.length += n;

  // The gated RMSNorm per value head: norm(o) * weight * silu(z).
#pragma omp parallel for schedule(static) if (rows * vd > kParallelMinValues)
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t h = 0; h < Hv; ++h) {
      float* oh = o_.data() + t * vd + h * dv;
      const float* zh = z_.data() + t * vd + h * dv;
      double ss = 0;
      for (int e = 0; e < dv; ++e) ss += static_cast<double>(oh[e]) * oh[e];
      const double inv = 1.0 / std::sqrt(ss / dv + eps_);
      for (int e = 0; e < dv; ++e)
        oh[e] = static_cast<float>(oh[e] * inv * w.norm[e] * silu(zh[e]));
    }
  linear_forward(o_.data(), rows, w.out, out, /*accumulate=*/true);
}

}  // namespace moe
