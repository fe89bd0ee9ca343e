// The Transformer layers around the FFN: embedding, RMSNorm, cross-entropy, grouped-query
// causal attention with RoPE (plus its KV-cached generation path), and token sampling.
// Gradients are checked by central finite differences in double, attention against a naive
// loop implementation of docs/model.md written here, sampling by exact cases and by empirical
// frequencies.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "count_allocations.h"
#include "moe/attention.h"
#include "moe/cross_entropy.h"
#include "moe/embedding.h"
#include "moe/rmsnorm.h"
#include "moe/sampling.h"
#include "test_util.h"

namespace moe {
namespace {

using test::error_of;
using test::fd_gradient_error;
using test::normalized_error;
using test::random_vector;

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// --- RMSNorm ----------------------------------------------------------------------------------

TEST(RmsNorm, GradientsAndAccumulation) {
  const int64_t n = 4, d = 7;
  const double eps = 1e-5;
  Rng rng(1);
  auto x = random_vector<double>(rng, n * d);
  auto w = random_vector<double>(rng, d);
  const auto R = random_vector<double>(rng, n * d);  // loss = sum(out * R)
  std::vector<double> out(n * d), rstd(n);
  auto loss = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), n, d, eps);
    return dot(out, R);
  };
  loss();
  // Start from nonzero gradients: the backward must add to them.
  std::vector<double> dx(n * d, 0.25), dw(d, -0.5);
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), n, d);
  for (auto& v : dx) v -= 0.25;
  for (auto& v : dw) v += 0.5;
  EXPECT_LE(fd_gradient_error(x.data(), dx.data(), n * d, loss), 1e-7);
  EXPECT_LE(fd_gradient_error(w.data(), dw.data(), d, loss), 1e-7);

  // The forward itself, against the formula.
  loss();
  double ms = 0;
  for (int j = 0; j < d; ++j) ms += x[d + j] * x[d + j] / d;
  EXPECT_NEAR(out[d + 3], x[d + 3] * w[3] / std::sqrt(ms + eps), 1e-12);
  EXPECT_NEAR(rstd[1], 1 / std::sqrt(ms + eps), 1e-12);

  // A second backward adds the same again.
  std::vector<double> dx2 = dx, dw2 = dw;
  rmsnorm_backward(dx2.data(), dw2.data(), R.data(), x.data(), w.data(), rstd.data(), n, d);
  for (int64_t i = 0; i < n * d; ++i) EXPECT_NEAR(dx2[i], 2 * dx[i], 1e-12);
  for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(dw2[j], 2 * dw[j], 1e-12);
}

// --- Embedding --------------------------------------------------------------------------------

TEST(Embedding, ForwardBackwardWithRepeatedTokens) {
  const int64_t V = 5, d = 3;
  const std::vector<int32_t> tokens = {1, 3, 1, 1, 0, 3};
  const int64_t n = static_cast<int64_t>(tokens.size());
  Rng rng(2);
  auto table = random_vector<double>(rng, V * d);
  const auto R = random_vector<double>(rng, n * d);
  std::vector<double> out(n * d);
  auto loss = [&] {
    embedding_forward(out.data(), tokens.data(), table.data(), n, V, d);
    return dot(out, R);
  };
  loss();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(out[i * d + j], table[tokens[i] * d + j]);
  std::vector<double> dtable(V * d, 1.0);
  embedding_backward(dtable.data(), R.data(), tokens.data(), n, d);
  for (auto& v : dtable) v -= 1.0;
  EXPECT_LE(fd_gradient_error(table.data(), dtable.data(), V * d, loss), 1e-8);
  // Token 1 appears three times, token 2 never.
  EXPECT_NEAR(dtable[1 * d + 2], R[0 * d + 2] + R[2 * d + 2] + R[3 * d + 2], 1e-12);
  EXPECT_EQ(dtable[2 * d + 0], 0.0);
}

TEST(Embedding, BadTokenNamesRowAndValue) {
  std::vector<float> table(4 * 2), out(3 * 2);
  const std::vector<int32_t> tokens = {0, 3, 7};
  const std::string e =
      error_of([&] { embedding_forward(out.data(), tokens.data(), table.data(), 3, 4, 2); });
  EXPECT_NE(e.find("token id 7 at row 2"), std::string::npos) << e;
  const std::vector<int32_t> neg = {-1};
  EXPECT_NE(error_of([&] {
              embedding_forward(out.data(), neg.data(), table.data(), 1, 4, 2);
            }).find("row 0"),
            std::string::npos);
}

// --- Cross-entropy ----------------------------------------------------------------------------

TEST(CrossEntropy, LossGradientAndIgnoredRows) {
  const int64_t n = 5, V = 6;
  const std::vector<int32_t> targets = {2, -1, 5, 0, -1};
  Rng rng(3);
  auto logits = random_vector<double>(rng, n * V, 2.0);
  std::vector<double> losses(n);
  int64_t counted = -1;
  auto loss = [&] {
    return cross_entropy_forward(losses.data(), logits.data(), targets.data(), n, V, &counted);
  };
  const double total = loss();
  EXPECT_EQ(counted, 3);
  EXPECT_EQ(losses[1], 0.0);
  EXPECT_EQ(losses[4], 0.0);
  // Row 2 by hand.
  double se = 0;
  for (int j = 0; j < V; ++j) se += std::exp(logits[2 * V + j]);
  EXPECT_NEAR(losses[2], std::log(se) - logits[2 * V + 5], 1e-12);
  EXPECT_NEAR(total, losses[0] + losses[2] + losses[3], 1e-12);

  std::vector<double> dlogits(n * V, 123.0);  // must be overwritten, ignored rows included
  cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), n, V, 1.0);
  for (int j = 0; j < V; ++j) {
    EXPECT_EQ(dlogits[1 * V + j], 0.0);
    EXPECT_EQ(dlogits[4 * V + j], 0.0);
  }
  EXPECT_LE(fd_gradient_error(logits.data(), dlogits.data(), n * V, loss), 1e-8);
  // scale multiplies the gradient (the mean uses 1 / counted).
  std::vector<double> half(n * V);
  cross_entropy_backward(half.data(), logits.data(), targets.data(), n, V, 0.5);
  for (int64_t i = 0; i < n * V; ++i) EXPECT_NEAR(half[i], 0.5 * dlogits[i], 1e-15);
}

// The float path (vectorized exp) against the double path, over a vocabulary that is not a
// multiple of any vector width or chunk.
TEST(CrossEntropy, FloatMatchesDouble) {
  const int64_t n = 6, V = 1237;
  Rng rng(12);
  const auto zd = random_vector<double>(rng, n * V, 4.0);
  const std::vector<float> zf(zd.begin(), zd.end());
  const std::vector<double> zr(zf.begin(), zf.end());  // the same values, in double
  std::vector<int32_t> targets = {0, 1236, -1, 600, 17, 1000};
  std::vector<double> ld(n), gd(n * V);
  std::vector<float> lf(n), gf(n * V);
  int64_t cd = 0, cf = 0;
  const double td = cross_entropy_forward(ld.data(), zr.data(), targets.data(), n, V, &cd);
  const double tf = cross_entropy_forward(lf.data(), zf.data(), targets.data(), n, V, &cf);
  EXPECT_EQ(cd, cf);
  EXPECT_NEAR(tf, td, 1e-6 * std::abs(td));
  EXPECT_LE(normalized_error(lf.data(), ld.data(), n), 1e-6);
  cross_entropy_backward(gd.data(), zr.data(), targets.data(), n, V, 0.2);
  cross_entropy_backward(gf.data(), zf.data(), targets.data(), n, V, 0.2);
  EXPECT_LE(normalized_error(gf.data(), gd.data(), n * V), 1e-6);
}

TEST(CrossEntropy, StableForHugeLogitsInFloat) {
  const std::vector<float> logits = {1000.f, 999.f, -1000.f};
  const std::vector<int32_t> target = {1};
  float loss = 0;
  int64_t counted = 0;
  cross_entropy_forward(&loss, logits.data(), target.data(), 1, 3, &counted);
  EXPECT_NEAR(loss, std::log(1 + std::exp(-1.0)) + 1.0, 1e-5);
  std::vector<float> g(3);
  cross_entropy_backward(g.data(), logits.data(), target.data(), 1, 3, 1.0);
  EXPECT_TRUE(std::isfinite(g[0]) && std::isfinite(g[1]) && std::isfinite(g[2]));
}

TEST(CrossEntropy, BadTargetNamesRow) {
  const std::vector<float> logits(2 * 3, 0.f);
  const std::vector<int32_t> targets = {1, 3};
  std::vector<float> losses(2), g(6);
  int64_t counted = 0;
  std::string e = error_of(
      [&] { cross_entropy_forward(losses.data(), logits.data(), targets.data(), 2, 3, &counted); });
  EXPECT_NE(e.find("row 1"), std::string::npos) << e;
  const std::vector<int32_t> neg = {-2, 0};
  e = error_of([&] { cross_entropy_backward(g.data(), logits.data(), neg.data(), 2, 3, 1.0); });
  EXPECT_NE(e.find("row 0"), std::string::npos) << e;
}

// --- Attention: the naive oracle --------------------------------------------------------------

// docs/model.md written as plain loops in double: projections, RoPE with theta_i computed on
// the spot, grouped-query causal softmax attention per sequence, output projection.
std::vector<double> naive_attention(const AttentionConfig& c, const std::vector<double>& x,
                                    const std::vector<double>& wq, const std::vector<double>& wk,
                                    const std::vector<double>& wv, const std::vector<double>& wo,
                                    int B, int S) {
  const int d = c.hidden_size, H = c.num_heads, G = c.num_kv_heads, hd = c.head_dim;
  const int n = B * S, half = hd / 2;
  auto project = [&](const std::vector<double>& w, int out_dim) {
    std::vector<double> y(static_cast<size_t>(n) * out_dim, 0.0);
    for (int r = 0; r < n; ++r)
      for (int o = 0; o < out_dim; ++o)
        for (int i = 0; i < d; ++i) y[r * out_dim + o] += x[r * d + i] * w[o * d + i];
    return y;
  };
  auto q = project(wq, H * hd), k = project(wk, G * hd), v = project(wv, G * hd);
  auto rope = [&](std::vector<double>& t, int heads) {
    for (int r = 0; r < n; ++r) {
      const int p = r % S;
      for (int h = 0; h < heads; ++h) {
        double* y = &t[(r * heads + h) * hd];
        for (int i = 0; i < half; ++i) {
          const double th = std::pow(c.rope_theta, -2.0 * i / hd);
          const double cs = std::cos(p * th), sn = std::sin(p * th);
          const double a = y[i], b = y[i + half];
          y[i] = a * cs - b * sn;
          y[i + half] = b * cs + a * sn;
        }
      }
    }
  };
  rope(q, H);
  rope(k, G);
  std::vector<double> o(static_cast<size_t>(n) * H * hd, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int g = h / (H / G);
      for (int s = 0; s < S; ++s) {
        std::vector<double> sc(s + 1);
        double mx = -1e300;
        for (int t = 0; t <= s; ++t) {
          double acc = 0;
          for (int i = 0; i < hd; ++i)
            acc += q[((b * S + s) * H + h) * hd + i] * k[((b * S + t) * G + g) * hd + i];
          sc[t] = acc / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, sc[t]);
        }
        double z = 0;
        for (auto& e : sc) z += (e = std::exp(e - mx));
        for (int t = 0; t <= s; ++t)
          for (int i = 0; i < hd; ++i)
            o[((b * S + s) * H + h) * hd + i] += sc[t] / z * v[((b * S + t) * G + g) * hd + i];
      }
    }
  std::vector<double> out(static_cast<size_t>(n) * d, 0.0);
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < d; ++j)
      for (int i = 0; i < H * hd; ++i) out[r * d + j] += o[r * H * hd + i] * wo[j * H * hd + i];
  return out;
}

AttentionConfig attn_config(int d, int H, int G, int hd, int max_positions = 512) {
  AttentionConfig c;
  c.hidden_size = d;
  c.num_heads = H;
  c.num_kv_heads = G;
  c.head_dim = hd;
  c.rope_theta = 100.0;  // small theta: large angles even at the few positions of a test
  c.max_positions = max_positions;
  return c;
}

std::vector<double> param_copy(ParamSet<double>& p, const char* name) {
  const auto n = p.spec(name).shape.numel();
  return std::vector<double>(p.value(name), p.value(name) + n);
}

template <class T>
void check_against_naive(const AttentionConfig& c, int B, int S, double tol) {
  Rng rng(7);
  Attention<double> ref_layer(c);  // holds the weights in double for the oracle
  ref_layer.init_weights(rng, 0.4);
  const int64_t n = static_cast<int64_t>(B) * S, d = c.hidden_size;
  const auto x = random_vector<double>(rng, n * d);
  auto& p = ref_layer.params();
  const auto expected =
      naive_attention(c, x, param_copy(p, "q_proj.weight"), param_copy(p, "k_proj.weight"),
                      param_copy(p, "v_proj.weight"), param_copy(p, "o_proj.weight"), B, S);
  Attention<T> layer(c);
  std::copy(p.values().begin(), p.values().end(), layer.params().values().begin());
  std::vector<T> xt(x.begin(), x.end()), out(n * d);
  layer.forward(View<const T>(xt.data(), {n, d}), B, S, View<T>(out.data(), {n, d}));
  const double err = normalized_error(out.data(), expected.data(), n * d);
  EXPECT_LE(err, tol) << "B=" << B << " S=" << S << " H=" << c.num_heads << " G=" << c.num_kv_heads;
}

TEST(Attention, MatchesNaiveReference) {
  for (auto [H, G, S] : {std::tuple{4, 2, 9}, std::tuple{3, 3, 5}, std::tuple{4, 1, 150}}) {
    const auto c = attn_config(10, H, G, 6);
    check_against_naive<double>(c, 2, S, 1e-12);
    check_against_naive<float>(c, 2, S, 1e-5);
  }
}

// --- Attention: gradients ---------------------------------------------------------------------

void check_attention_gradients(int H, int G, int B, int S) {
  SCOPED_TRACE("H=" + std::to_string(H) + " G=" + std::to_string(G) + " S=" + std::to_string(S));
  const auto c = attn_config(6, H, G, 4);
  Attention<double> layer(c);
  Rng rng(11);
  layer.init_weights(rng, 0.5);
  const int64_t n = static_cast<int64_t>(B) * S, d = c.hidden_size;
  auto x = random_vector<double>(rng, n * d);
  const auto R = random_vector<double>(rng, n * d);
  std::vector<double> out(n * d);
  auto loss = [&] {
    layer.forward(View<const double>(x.data(), {n, d}), B, S, View<double>(out.data(), {n, d}));
    return dot(out, R);
  };
  auto& p = layer.params();
  p.zero_grad();
  loss();
  std::vector<double> dx(n * d, 99.0);  // written, not accumulated
  layer.backward(View<const double>(R.data(), {n, d}), View<double>(dx.data(), {n, d}));
  const std::vector<double> grads = p.grads();
  EXPECT_LE(fd_gradient_error(x.data(), dx.data(), n * d, loss, 96), 1e-7) << "dx";
  for (const auto& spec : p.specs()) {
    const double err = fd_gradient_error(p.value(spec.name), grads.data() + spec.offset,
                                         spec.shape.numel(), loss, 96);
    EXPECT_LE(err, 1e-7) << spec.name;
  }
  // Parameter gradients accumulate: a second backward of the same forward doubles them.
  loss();
  layer.backward(View<const double>(R.data(), {n, d}), View<double>(dx.data(), {n, d}));
  for (size_t i = 0; i < grads.size(); ++i) ASSERT_NEAR(p.grads()[i], 2 * grads[i], 1e-10);
}

TEST(Attention, GradientsGroupedQuery) {
  check_attention_gradients(4, 2, 2, 6);
}
TEST(Attention, GradientsMultiHead) {
  check_attention_gradients(3, 3, 2, 5);
}
TEST(Attention, GradientsMultiQueryLongSequence) {
  check_attention_gradients(2, 1, 2, 140);  // several causal row blocks, the last partial
}

// --- Attention: causality and sequence isolation ----------------------------------------------

TEST(Attention, CausalAndSequencesIsolated) {
  const auto c = attn_config(8, 4, 2, 4);
  Attention<double> layer(c);
  Rng rng(5);
  layer.init_weights(rng, 0.5);
  const int B = 3, S = 7;
  const int64_t n = B * S, d = c.hidden_size;
  const auto x = random_vector<double>(rng, n * d);
  auto run = [&](const std::vector<double>& in) {
    std::vector<double> out(n * d);
    layer.forward(View<const double>(in.data(), {n, d}), B, S, View<double>(out.data(), {n, d}));
    return out;
  };
  const auto base = run(x);
  auto row_diff = [&](const std::vector<double>& a, int64_t r) {
    double m = 0;
    for (int64_t j = 0; j < d; ++j) m = std::max(m, std::abs(a[r * d + j] - base[r * d + j]));
    return m;
  };
  // Change token s = 4 of sequence 1: rows s < 4 of it and every other sequence stay put.
  auto x2 = x;
  for (int64_t j = 0; j < d; ++j) x2[(1 * S + 4) * d + j] += 1.0;
  const auto out2 = run(x2);
  for (int b = 0; b < B; ++b)
    for (int s = 0; s < S; ++s) {
      const double diff = row_diff(out2, b * S + s);
      if (b == 1 && s >= 4)
        EXPECT_GT(diff, 1e-6) << "b=" << b << " s=" << s;
      else
        EXPECT_LE(diff, 1e-13) << "b=" << b << " s=" << s;
    }
  // Rewrite all of sequence 0: sequences 1 and 2 unchanged.
  auto x3 = x;
  for (int64_t i = 0; i < S * d; ++i) x3[i] = -x3[i] + 0.3;
  const auto out3 = run(x3);
  for (int64_t r = S; r < n; ++r) EXPECT_LE(row_diff(out3, r), 1e-13) << "row " << r;
  EXPECT_GT(row_diff(out3, 0), 1e-6);
}

// --- Attention: KV-cached generation ----------------------------------------------------------

TEST(Attention, CachedGenerationMatchesFullForward) {
  const auto c = attn_config(16, 4, 2, 8, 64);
  Attention<float> layer(c);
  Rng rng(9);
  layer.init_weights(rng, 0.3);
  const int B = 2, S = 13, prompt = 5;
  const int64_t d = c.hidden_size;
  const auto x = random_vector<float>(rng, B * S * d);
  std::vector<float> full(B * S * d);
  layer.forward(View<const float>(x.data(), {B * S, d}), B, S,
                View<float>(full.data(), {B * S, d}));

  KvCache<float> cache;
  cache.reset(B, S, c.num_kv_heads * c.head_dim);
  std::vector<float> got(B * S * d, 0.f), want(B * S * d, 0.f);
  // Feeds positions [t0, t0 + len) of every sequence, collecting outputs in [B, S, d] order.
  auto feed = [&](int t0, int len) {
    std::vector<float> in(B * len * d), out(B * len * d);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < len; ++t)
        std::copy_n(&x[(b * S + t0 + t) * d], d, &in[(b * len + t) * d]);
    layer.forward_cached(View<const float>(in.data(), {B * len, d}), B, len, cache,
                         View<float>(out.data(), {B * len, d}));
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < len; ++t) {
        std::copy_n(&out[(b * len + t) * d], d, &got[(b * S + t0 + t) * d]);
        std::copy_n(&full[(b * S + t0 + t) * d], d, &want[(b * S + t0 + t) * d]);
      }
    EXPECT_EQ(cache.length, t0 + len);
    return normalized_error(got.data(), want.data(), B * S * d);
  };
  EXPECT_LE(feed(0, prompt), 1e-5) << "prompt";
  for (int t = prompt; t < S; ++t) EXPECT_LE(feed(t, 1), 1e-5) << "position " << t;
  EXPECT_LE(normalized_error(got.data(), full.data(), B * S * d), 1e-5);

  // The cache is full: one more token is an overflow that names the capacity.
  std::vector<float> one(B * d), o1(B * d);
  const std::string e = error_of([&] {
    layer.forward_cached(View<const float>(one.data(), {B, d}), B, 1, cache,
                         View<float>(o1.data(), {B, d}));
  });
  EXPECT_NE(e.find("overflow"), std::string::npos) << e;
  EXPECT_NE(e.find("capacity 13"), std::string::npos) << e;
  EXPECT_EQ(cache.length, S);
  // A cache reset for another batch size is refused.
  cache.reset(1, 4, c.num_kv_heads * c.head_dim);
  EXPECT_NE(error_of([&] {
              layer.forward_cached(View<const float>(one.data(), {B, d}), B, 1, cache,
                                   View<float>(o1.data(), {B, d}));
            }).find("batch"),
            std::string::npos);
}

TEST(Attention, SteadyStateDoesNotAllocate) {
  const auto c = attn_config(32, 4, 2, 8, 64);
  Attention<float> layer(c);
  Rng rng(3);
  layer.init_weights(rng, 0.2);
  const int B = 2, S = 40;
  const int64_t n = B * S, d = c.hidden_size;
  const auto x = random_vector<float>(rng, n * d);
  std::vector<float> out(n * d), dx(n * d);
  auto step = [&] {
    layer.forward(View<const float>(x.data(), {n, d}), B, S, View<float>(out.data(), {n, d}));
    layer.backward(View<const float>(x.data(), {n, d}), View<float>(dx.data(), {n, d}));
  };
  step();  // warm-up grows the workspaces
  long before = test::allocations();
  step();
  step();
  EXPECT_EQ(test::allocations() - before, 0) << "allocations in a steady-state step";

  // Generation: after the prompt, one token at a time allocates nothing.
  KvCache<float> cache;
  cache.reset(B, S, c.num_kv_heads * c.head_dim);
  layer.forward_cached(View<const float>(x.data(), {B * 8, d}), B, 8, cache,
                       View<float>(out.data(), {B * 8, d}));
  before = test::allocations();
  for (int t = 0; t < 10; ++t)
    layer.forward_cached(View<const float>(x.data(), {B, d}), B, 1, cache,
                         View<float>(out.data(), {B, d}));
  EXPECT_EQ(test::allocations() - before, 0) << "allocations while generating";
}

// --- RoPE and configuration errors ------------------------------------------------------------

TEST(Rope, PositionZeroIsIdentityAndBackwardInverts) {
  const int hd = 8, heads = 3, maxp = 16;
  std::vector<double> cs, sn;
  rope_tables(cs, sn, maxp, hd, 10000.0);
  Rng rng(4);
  const auto x = random_vector<double>(rng, 2 * heads * hd);
  auto y = x;
  rope_forward(y.data(), cs.data(), sn.data(), 2, heads, hd, 1, 0);  // both rows at position 0
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], x[i]);
  // At positions 9, 10 it rotates (norm kept per pair) and rope_backward undoes it.
  rope_forward(y.data(), cs.data(), sn.data(), 2, heads, hd, 2, 9);
  EXPECT_GT(normalized_error(y.data(), x.data(), 2 * heads * hd), 1e-3);
  EXPECT_NEAR(x[0] * x[0] + x[4] * x[4], y[0] * y[0] + y[4] * y[4], 1e-12);
  rope_backward(y.data(), cs.data(), sn.data(), 2, heads, hd, 2, 9);
  EXPECT_LE(normalized_error(y.data(), x.data(), 2 * heads * hd), 1e-14);
}

TEST(AttentionConfig, ErrorsNameTheKey) {
  auto bad = [](auto edit) {
    AttentionConfig c = attn_config(8, 4, 2, 4);
    edit(c);
    return error_of([&] { Attention<float> a(c); });
  };
  EXPECT_NE(bad([](AttentionConfig& c) { c.num_kv_heads = 3; }).find("num_key_value_heads"),
            std::string::npos);
  EXPECT_NE(bad([](AttentionConfig& c) { c.num_kv_heads = 0; }).find("num_key_value_heads"),
            std::string::npos);
  EXPECT_NE(bad([](AttentionConfig& c) { c.num_heads = 0; }).find("num_attention_heads"),
            std::string::npos);
  EXPECT_NE(bad([](AttentionConfig& c) { c.head_dim = 5; }).find("head_dim"), std::string::npos);
  EXPECT_NE(bad([](AttentionConfig& c) { c.hidden_size = -1; }).find("hidden_size"),
            std::string::npos);
  EXPECT_NE(bad([](AttentionConfig& c) { c.rope_theta = 0; }).find("rope_theta"),
            std::string::npos);
  EXPECT_NE(bad([](AttentionConfig& c) { c.max_positions = 0; }).find("max_position_embeddings"),
            std::string::npos);
  EXPECT_EQ(bad([](AttentionConfig&) {}), "(no error)");

  // A sequence longer than the RoPE table.
  Attention<float> a(attn_config(8, 4, 2, 4, 6));
  std::vector<float> x(7 * 8), out(7 * 8);
  const std::string e = error_of([&] {
    a.forward(View<const float>(x.data(), {7, 8}), 1, 7, View<float>(out.data(), {7, 8}));
  });
  EXPECT_NE(e.find("max_position_embeddings"), std::string::npos) << e;
}

// --- Sampling ---------------------------------------------------------------------------------

std::vector<double> softmax(const std::vector<float>& z, double temperature) {
  double mx = *std::max_element(z.begin(), z.end());
  std::vector<double> p(z.size());
  double s = 0;
  for (size_t i = 0; i < z.size(); ++i) s += (p[i] = std::exp((z[i] - mx) / temperature));
  for (auto& v : p) v /= s;
  return p;
}

std::vector<double> frequencies(const std::vector<float>& z, const SamplingOptions& opt, int draws,
                                uint64_t seed) {
  Rng rng(seed);
  std::vector<float> scratch;
  std::vector<double> f(z.size(), 0.0);
  for (int i = 0; i < draws; ++i)
    f[sample_token(z.data(), static_cast<int64_t>(z.size()), opt, rng, scratch)] += 1.0 / draws;
  return f;
}

TEST(Sampling, GreedyCases) {
  const std::vector<float> z = {0.1f, 2.5f, -1.f, 2.5f, 0.f};  // tie between ids 1 and 3
  std::vector<float> scratch;
  Rng rng(1);
  const Rng::State before = rng.state();
  EXPECT_EQ(sample_token(z.data(), 5, {.temperature = 0}, rng, scratch), 1);
  EXPECT_EQ(rng.state().s, before.s);  // greedy draws nothing
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(sample_token(z.data(), 5, {.temperature = 1.5, .top_k = 1}, rng, scratch), 1);
    EXPECT_EQ(sample_token(z.data(), 5, {.temperature = 1.0, .top_p = 1e-9}, rng, scratch), 1);
  }
  // A unique maximum elsewhere.
  const std::vector<float> z2 = {0.f, 1.f, 3.f, -2.f};
  EXPECT_EQ(sample_token(z2.data(), 4, {.temperature = 0}, rng, scratch), 2);
  EXPECT_EQ(sample_token(z2.data(), 4, {.top_k = 1}, rng, scratch), 2);
  EXPECT_EQ(sample_token(z2.data(), 4, {.top_p = 0.01}, rng, scratch), 2);
}

TEST(Sampling, SameSeedSameDraws) {
  Rng rng(3);
  const auto z = random_vector<float>(rng, 100, 2.0);
  const SamplingOptions opt{.temperature = 0.8, .top_k = 20, .top_p = 0.9};
  Rng a(42), b(42), c(43);
  std::vector<float> sa, sb, sc;
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 300; ++i) {
    da.push_back(sample_token(z.data(), 100, opt, a, sa));
    db.push_back(sample_token(z.data(), 100, opt, b, sb));
    dc.push_back(sample_token(z.data(), 100, opt, c, sc));
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(Sampling, FrequenciesMatchSoftmax) {
  const std::vector<float> z = {0.5f, -1.f, 2.f, 0.f, 1.f};
  const int N = 20000;
  const double temperature = 1.3;
  const auto p = softmax(z, temperature);
  const auto f = frequencies(z, {.temperature = temperature}, N, 5);
  for (size_t i = 0; i < z.size(); ++i)
    EXPECT_NEAR(f[i], p[i], 4 * std::sqrt(p[i] * (1 - p[i]) / N) + 1e-3) << "token " << i;
}

TEST(Sampling, TopKExcludesTheRest) {
  const std::vector<float> z = {0.5f, -1.f, 2.f, 0.f, 1.f};
  const int N = 20000;
  // The two largest are ids 2 and 4; renormalized over them.
  const auto f = frequencies(z, {.temperature = 1.0, .top_k = 2}, N, 6);
  const double p2 = 1 / (1 + std::exp(-1.0));
  EXPECT_EQ(f[0] + f[1] + f[3], 0.0);
  EXPECT_NEAR(f[2], p2, 4 * std::sqrt(p2 * (1 - p2) / N) + 1e-3);
  // Ties at the cut keep the lower ids.
  const std::vector<float> t = {1.f, 1.f, 1.f, 0.f};
  const auto ft = frequencies(t, {.top_k = 2}, 2000, 7);
  EXPECT_EQ(ft[2] + ft[3], 0.0);
  EXPECT_NEAR(ft[0], 0.5, 0.06);
}

TEST(Sampling, TopPKeepsTheSmallestSufficientPrefix) {
  const std::vector<float> z = {0.5f, -1.f, 2.f, 0.f, 1.f};
  const auto p = softmax(z, 1.0);                 // descending order: 2, 4, 0, 3, 1
  const double top_p = p[2] + p[4] + 0.5 * p[0];  // needs ids 2, 4 and 0
  const int N = 20000;
  const auto f = frequencies(z, {.top_p = top_p}, N, 8);
  EXPECT_EQ(f[1] + f[3], 0.0);
  const double mass = p[2] + p[4] + p[0];
  for (int i : {2, 4, 0}) {
    const double q = p[i] / mass;
    EXPECT_NEAR(f[i], q, 4 * std::sqrt(q * (1 - q) / N) + 1e-3) << "token " << i;
  }
  // Exactly reaching the mass of ids 2 and 4 keeps only them.
  const auto f2 = frequencies(z, {.top_p = (p[2] + p[4]) * (1 - 1e-9)}, 2000, 9);
  EXPECT_EQ(f2[0] + f2[1] + f2[3], 0.0);
}

TEST(Sampling, InvalidOptionsAndLogits) {
  const std::vector<float> z = {0.f, 1.f};
  std::vector<float> scratch;
  Rng rng(1);
  auto err = [&](const SamplingOptions& o) {
    return error_of([&] { sample_token(z.data(), 2, o, rng, scratch); });
  };
  EXPECT_NE(err({.temperature = -1}).find("temperature"), std::string::npos);
  EXPECT_NE(err({.top_k = -2}).find("top_k"), std::string::npos);
  EXPECT_NE(err({.top_p = 0}).find("top_p"), std::string::npos);
  EXPECT_NE(err({.top_p = 1.5}).find("top_p"), std::string::npos);
  const std::vector<float> bad = {0.f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_NE(error_of([&] { sample_token(bad.data(), 2, {}, rng, scratch); }).find("token 1"),
            std::string::npos);
  // -inf is a masked token: never drawn.
  const std::vector<float> masked = {-std::numeric_limits<float>::infinity(), 0.f, 0.f};
  for (int i = 0; i < 100; ++i) EXPECT_NE(sample_token(masked.data(), 3, {}, rng, scratch), 0);
}

}  // namespace
}  // namespace moe
