// The ViT-MoE encoder and its routing variants: Soft MoE, expert choice and batch-priority
// top-k against the independent PyTorch reference (tools/reference/make_vit_fixtures.py:
// outputs, every gradient, routing decisions exactly), finite differences in double for every
// parameter and the input of each layer and for every parameter of the whole encoder, the
// bidirectional attention, the glyph data set, config errors and the kept-vs-dropped export.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "moe/attention.h"
#include "moe/expert_choice.h"
#include "moe/images.h"
#include "moe/moe_layer.h"
#include "moe/safetensors.h"
#include "moe/soft_moe.h"
#include "moe/vit.h"
#include "moe/vit_trainer.h"
#include "test_util.h"

namespace moe {
namespace {

using namespace test;

std::string fixture_path(const std::string& name) {
  return std::string(MOE_FIXTURE_DIR) + "/vit/" + name + ".safetensors";
}

MoeConfig layer_config(const SafeTensorsFile& f) {
  MoeConfig c;
  c.hidden_size = static_cast<int>(f.read<double>("x").shape()[1]);
  const Tensor<double> w1 = f.read<double>("experts.w1");
  c.num_experts = static_cast<int>(w1.shape()[0]);
  c.moe_intermediate_size = static_cast<int>(w1.shape()[1]);
  c.hidden_act = f.metadata("act") == "silu" ? Activation::SwiGLU : Activation::GELU;
  c.router_aux_loss_coef = 0;  // the reference has no auxiliary loss (checked by the layer
  c.router_z_loss_coef = 0;    // fixtures of tests/test_moe_reference.cpp)
  return c;
}

// Compares outputs and every parameter gradient and dx of `layer` (after forward+backward of
// the fixture's x and dout) with the fixture.
template <class T>
void compare_layer(FeedForward<T>& layer, const SafeTensorsFile& f, const Tensor<T>& out,
                   const Tensor<T>& dx, double tol) {
  const Tensor<double> y = f.read<double>("y"), gx = f.read<double>("grad.x");
  expect_close("y", out.data(), y.data(), y.numel(), tol);
  expect_close("dx", dx.data(), gx.data(), gx.numel(), tol);
  int checked = 0;
  for (const auto& s : layer.params().specs()) {
    const Tensor<double> g = f.read<double>("grad." + s.name, s.shape);
    expect_close("grad." + s.name, layer.params().grad(s.name), g.data(), g.numel(), tol);
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

template <class T>
void run_fixture(FeedForward<T>& layer, const SafeTensorsFile& f, Tensor<T>& out, Tensor<T>& dx,
                 const ForwardOptions<T>& opt = {}) {
  load_params(layer.params(), f);
  const Tensor<T> x = f.read<T>("x"), dout = f.read<T>("dout");
  out = Tensor<T>(x.shape());
  dx = Tensor<T>(x.shape());
  layer.params().zero_grad();
  layer.forward(x.view(), out.view(), opt);
  layer.backward(dout.view(), dx.view());
}

template <class T>
void soft_case(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const SafeTensorsFile f = SafeTensorsFile::open(fixture_path(name));
  SoftMoe<T> layer(layer_config(f), std::stoi(f.metadata("slots_per_expert")));
  layer.set_group_size(std::stoi(f.metadata("group")));
  Tensor<T> out, dx;
  run_fixture<T>(layer, f, out, dx);
  compare_layer<T>(layer, f, out, dx, tol);
}

template <class T>
void ec_case(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const SafeTensorsFile f = SafeTensorsFile::open(fixture_path(name));
  MoeConfig c = layer_config(f);
  c.capacity_factor = std::stod(f.metadata("capacity_factor"));
  ExpertChoice<T> layer(c);
  layer.set_group_size(std::stoi(f.metadata("group")));
  Tensor<T> out, dx;
  run_fixture<T>(layer, f, out, dx);
  const Tensor<int64_t> chosen = f.read<int64_t>("chosen");
  ASSERT_EQ(chosen.shape()[2], layer.capacity());
  for (int64_t i = 0; i < chosen.numel(); ++i)
    ASSERT_EQ(layer.chosen()[i], chosen[i]) << "row " << i;
  compare_layer<T>(layer, f, out, dx, tol);
}

MoeConfig bpr_config(const SafeTensorsFile& f) {
  MoeConfig c = layer_config(f);
  c.num_experts_per_tok = std::stoi(f.metadata("k"));
  c.norm_topk_prob = f.metadata("norm_topk_prob") == "true";
  c.capacity_factor = std::stod(f.metadata("capacity_factor"));
  c.drop_policy = DropPolicy::BatchPriority;
  return c;
}

template <class T>
void bpr_case(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const SafeTensorsFile f = SafeTensorsFile::open(fixture_path(name));
  MoeLayer<T> layer(bpr_config(f));
  Tensor<T> out, dx;
  run_fixture<T>(layer, f, out, dx);
  const Tensor<int64_t> expert = f.read<int64_t>("expert");
  ASSERT_EQ(static_cast<int64_t>(layer.plan().expert.size()), expert.numel());
  for (int64_t i = 0; i < expert.numel(); ++i)
    ASSERT_EQ(layer.plan().expert[i], expert[i]) << "slot " << i;
  EXPECT_GT(layer.plan().dropped, 0);
  compare_layer<T>(layer, f, out, dx, tol);
}

const char* kSoft[] = {"soft_moe_swiglu", "soft_moe_gelu"};
const char* kEc[] = {"expert_choice_swiglu", "expert_choice_gelu"};
const char* kBpr[] = {"bpr_top2", "bpr_top1", "bpr_top2_norm"};

TEST(VitReference, SoftMoeMatchesTorch) {
  for (const char* c : kSoft) {
    soft_case<double>(c, 1e-12);
    soft_case<float>(c, 1e-5);
  }
}

TEST(VitReference, ExpertChoiceMatchesTorch) {
  for (const char* c : kEc) {
    ec_case<double>(c, 1e-12);
    ec_case<float>(c, 1e-5);
  }
}

TEST(VitReference, BatchPriorityMatchesTorch) {
  for (const char* c : kBpr) {
    bpr_case<double>(c, 1e-12);
    bpr_case<float>(c, 1e-5);
  }
}

// The fixtures discriminate: routing by position (and, with k = 2, by each assignment's own
// gate) keeps a different set than batch priority.
TEST(VitReference, BatchPriorityDiffersFromPositionAndScore) {
  const SafeTensorsFile f = SafeTensorsFile::open(fixture_path("bpr_top2"));
  const Tensor<double> x = f.read<double>("x");
  const Tensor<int64_t> expert = f.read<int64_t>("expert");
  for (DropPolicy p : {DropPolicy::Position, DropPolicy::Score}) {
    MoeConfig c = bpr_config(f);
    c.drop_policy = p;
    MoeLayer<double> layer(c);
    load_params(layer.params(), f);
    Tensor<double> out(x.shape());
    layer.forward(x.view(), out.view());
    bool differs = false;
    for (int64_t i = 0; i < expert.numel(); ++i) differs |= layer.plan().expert[i] != expert[i];
    EXPECT_TRUE(differs) << "policy " << static_cast<int>(p);
  }
}

// ---- finite differences (double) -----------------------------------------------------------

// Checks every parameter tensor and the input of `layer` on loss = sum(out * dout).
void fd_layer(FeedForward<double>& layer, Tensor<double>& x, const Tensor<double>& dout,
              const ForwardOptions<double>& opt, double eps, double tol) {
  Tensor<double> out(x.shape()), dx(x.shape());
  auto loss = [&] {
    layer.forward(x.view(), out.view(), opt);
    double s = 0;
    for (int64_t i = 0; i < out.numel(); ++i) s += out[i] * dout[i];
    return s;
  };
  layer.params().zero_grad();
  loss();
  layer.backward(dout.view(), dx.view());
  const std::vector<double> grads = layer.params().grads();
  for (const auto& s : layer.params().specs()) {
    const double err = fd_gradient_error(layer.params().value(s.name), grads.data() + s.offset,
                                         s.shape.numel(), loss, 48, eps);
    EXPECT_LT(err, tol) << s.name;
  }
  const std::vector<double> gx(dx.data(), dx.data() + dx.numel());
  EXPECT_LT(fd_gradient_error(x.data(), gx.data(), x.numel(), loss, 48, eps), tol) << "x";
}

TEST(VitGrad, SoftMoeFiniteDifferences) {
  for (const char* name : kSoft) {
    SCOPED_TRACE(name);
    const SafeTensorsFile f = SafeTensorsFile::open(fixture_path(name));
    SoftMoe<double> layer(layer_config(f), std::stoi(f.metadata("slots_per_expert")));
    layer.set_group_size(std::stoi(f.metadata("group")));
    load_params(layer.params(), f);
    Tensor<double> x = f.read<double>("x");
    fd_layer(layer, x, f.read<double>("dout"), {}, 1e-6, 1e-7);
  }
}

TEST(VitGrad, ExpertChoiceFiniteDifferences) {
  for (const char* name : kEc) {
    SCOPED_TRACE(name);
    const SafeTensorsFile f = SafeTensorsFile::open(fixture_path(name));
    MoeConfig c = layer_config(f);
    c.capacity_factor = std::stod(f.metadata("capacity_factor"));
    ExpertChoice<double> layer(c);
    layer.set_group_size(std::stoi(f.metadata("group")));
    load_params(layer.params(), f);
    Tensor<double> x = f.read<double>("x");
    // The fixture's scores are >= 1e-6 apart, so a 1e-8 step never changes a choice.
    fd_layer(layer, x, f.read<double>("dout"), {}, 1e-8, 1e-5);
  }
}

TEST(VitGrad, BatchPriorityFiniteDifferences) {
  for (const char* name : kBpr) {
    SCOPED_TRACE(name);
    const SafeTensorsFile f = SafeTensorsFile::open(fixture_path(name));
    MoeLayer<double> layer(bpr_config(f));
    load_params(layer.params(), f);
    Tensor<double> x = f.read<double>("x");
    Tensor<double> out(x.shape());
    layer.forward(x.view(), out.view());
    const RoutingPlan plan = layer.plan();  // hold the decisions fixed
    ForwardOptions<double> opt;
    opt.replay = &plan;
    fd_layer(layer, x, f.read<double>("dout"), opt, 1e-6, 1e-7);
  }
}

// ---- attention ---------------------------------------------------------------------------

TEST(VitAttention, BidirectionalMatchesNaive) {
  AttentionConfig ac;
  ac.hidden_size = 8;
  ac.num_heads = 2;
  ac.num_kv_heads = 2;
  ac.head_dim = 4;
  ac.max_positions = 5;
  ac.causal = false;
  ac.rope = false;
  Attention<double> att(ac);
  Rng rng(3);
  att.init_weights(rng, 0.5);
  const int B = 2, S = 5, d = 8;
  Tensor<double> x({B * S, d}), out({B * S, d}), ref({B * S, d});
  rng.fill_normal(x.data(), x.numel());
  att.forward(x.view(), B, S, out.view());
  // Naive: full softmax over all S keys of the same image.
  auto& p = att.params();
  auto proj = [&](const char* w, int64_t r, int64_t j) {
    double s = 0;
    for (int64_t i = 0; i < d; ++i) s += x[r * d + i] * p.value(w)[j * d + i];
    return s;
  };
  std::vector<double> o(static_cast<size_t>(B * S * d));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < S; ++s) {
        std::vector<double> w(S);
        double mx = -1e300, sum = 0;
        for (int t = 0; t < S; ++t) {
          double dot = 0;
          for (int j = 0; j < 4; ++j)
            dot += proj("q_proj.weight", b * S + s, h * 4 + j) *
                   proj("k_proj.weight", b * S + t, h * 4 + j);
          w[t] = dot / 2.0;
          mx = std::max(mx, w[t]);
        }
        for (int t = 0; t < S; ++t) sum += (w[t] = std::exp(w[t] - mx));
        for (int j = 0; j < 4; ++j) {
          double v = 0;
          for (int t = 0; t < S; ++t) v += w[t] / sum * proj("v_proj.weight", b * S + t, h * 4 + j);
          o[(b * S + s) * d + h * 4 + j] = v;
        }
      }
  for (int64_t r = 0; r < B * S; ++r)
    for (int64_t i = 0; i < d; ++i) {
      double v = 0;
      for (int64_t j = 0; j < d; ++j) v += o[r * d + j] * p.value("o_proj.weight")[i * d + j];
      ref[r * d + i] = v;
    }
  expect_close("bidirectional attention", out.data(), ref.data(), out.numel(), 1e-12);
}

// ---- the whole encoder -----------------------------------------------------------------------

VitConfig tiny_config(VitRouter r, VitPooling pool) {
  VitConfig c;
  c.dataset.image_size = 8;
  c.dataset.classes = "0123";
  c.patch_size = 4;
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.intermediate_size = 6;
  c.dense_intermediate_size = 5;
  c.moe_every = 1;
  c.router_type = r;
  c.pooling = pool;
  c.slots_per_expert = 2;
  c.initializer_range = 0.5;
  c.moe.num_experts = 3;
  c.moe.num_experts_per_tok = 2;
  c.moe.hidden_act = Activation::SwiGLU;
  c.moe.capacity_factor = r == VitRouter::ExpertChoice ? 1.5 : 0.0;
  c.moe.router_aux_loss_coef = 0.01;
  c.moe.router_z_loss_coef = 1e-3;
  return c;
}

TEST(VitGrad, EncoderFiniteDifferencesEveryParameter) {
  const std::pair<VitRouter, VitPooling> cases[] = {{VitRouter::TopK, VitPooling::Mean},
                                                    {VitRouter::TopK, VitPooling::Cls},
                                                    {VitRouter::Soft, VitPooling::Mean},
                                                    {VitRouter::ExpertChoice, VitPooling::Cls},
                                                    {VitRouter::Dense, VitPooling::Mean}};
  for (const auto& [r, pool] : cases) {
    SCOPED_TRACE(static_cast<int>(r) * 10 + static_cast<int>(pool));
    VitModel<double> m(tiny_config(r, pool));
    Rng rng(11);
    m.init_weights(rng);
    // Perturb the norm weights and biases away from 1 / 0 so their gradients are generic.
    for (auto& p : m.parameters())
      if (p.shape.ndim == 1)
        for (int64_t i = 0; i < p.shape.numel(); ++i) p.value[i] += 0.3 * rng.normal();
    const int B = 3;
    std::vector<float> img(static_cast<size_t>(B * 64));
    for (auto& v : img) v = static_cast<float>(rng.uniform());
    const std::vector<int32_t> labels = {0, 3, 1};
    auto loss = [&] { return m.forward(img.data(), labels.data(), B); };
    m.zero_grad();
    loss();
    m.backward();
    for (auto& p : m.parameters()) {
      std::vector<double> g(p.grad, p.grad + p.shape.numel());
      // Expert choice: a 1e-7 step is far below the score gaps of 4 tokens at this init.
      const double err = fd_gradient_error(p.value, g.data(), p.shape.numel(), loss, 24, 1e-7);
      EXPECT_LT(err, 1e-5) << p.name;
    }
  }
}

// ---- data, config, export ------------------------------------------------------------------

TEST(VitData, DeterministicBalancedAndSeedDependent) {
  ImageDataConfig c;
  c.train_size = 400;
  c.test_size = 100;
  const ImageData a = make_image_data(c), b = make_image_data(c);
  EXPECT_EQ(a.train.pixels, b.train.pixels);
  EXPECT_EQ(a.test.labels, b.test.labels);
  EXPECT_NE(a.train.pixels, std::vector<float>(a.train.image(0), a.train.image(0) + 1));
  c.seed += 1;
  const ImageData other = make_image_data(c);
  EXPECT_NE(a.train.pixels, other.train.pixels);
  std::vector<int> count(c.classes.size(), 0);
  for (int32_t l : a.train.labels) ++count[l];
  for (int n : count) EXPECT_GT(n, 5);
  // Ink is present: the mean pixel is well above the noise-only level of a blank image.
  double ink = 0;
  for (float v : a.train.pixels) ink += v;
  EXPECT_GT(ink / a.train.pixels.size(), 0.08);
  EXPECT_NE(a.train.pixels, a.test.pixels);
}

TEST(VitConfigTest, ErrorsNameTheKey) {
  const auto base = nlohmann::json::parse(R"({"model_type": "vit_moe"})");
  EXPECT_NO_THROW(vit_config_from_json(base, "cfg"));
  auto bad = base;
  bad["pach_size"] = 4;
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"cfg", "pach_size"});
  bad = base;
  bad["router_type"] = "topk";
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"router_type", "topk", "soft"});
  bad = base;
  bad["patch_size"] = 5;
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"patch_size", "28"});
  bad = base;
  bad["training"] = {{"batchsize", 3}};
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"training.batchsize"});
  bad = base;
  bad["dataset"] = {{"noise", 2.0}};
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"dataset.noise"});
  bad = base;
  bad["drop_policy"] = "priority";
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"drop_policy", "batch_priority"});
  // Wrong JSON types name the key (and the element of an array).
  bad = base;
  bad["patch_size"] = "x";
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"patch_size", "\"x\"", "integer"});
  bad = base;
  bad["training"] = {{"eval_capacity_factors", {1.0, "a"}}};
  expect_error([&] { vit_config_from_json(bad, "cfg"); },
               {"training", "eval_capacity_factors[1]", "a number"});
  bad = base;
  bad["training"] = {{"eval_capacity_factors", 1.0}};
  expect_error([&] { vit_config_from_json(bad, "cfg"); }, {"eval_capacity_factors", "an array"});
  // Round trip.
  VitConfig c = vit_config_from_json(base, "cfg");
  c.router_type = VitRouter::Soft;
  c.moe.drop_policy = DropPolicy::BatchPriority;
  const VitConfig back = vit_config_from_json(vit_config_to_json(c), "round trip");
  EXPECT_EQ(back.router_type, VitRouter::Soft);
  EXPECT_EQ(back.moe.drop_policy, DropPolicy::BatchPriority);
}

TEST(VitExport, KeptVersusDroppedPatchesSvg) {
  VitConfig c = tiny_config(VitRouter::TopK, VitPooling::Mean);
  c.dataset.image_size = 16;
  c.dataset.classes = "0123456789";
  c.dataset.train_size = 10;
  c.dataset.test_size = 16;
  c.moe.capacity_factor = 0.5;
  c.moe.drop_policy = DropPolicy::BatchPriority;
  c.moe.norm_topk_prob = false;
  const ImageData data = make_image_data(c.dataset);
  VitModel<float> m(c);
  Rng rng(5);
  m.init_weights(rng);
  const std::string path = testing::TempDir() + "/vit_patches.svg";
  const int dropped = write_patch_svg(m, data.test, 0, 4, 16, path, "test");
  // The same forward again: the count of fully dropped patches of the first 4 images.
  std::vector<int> kept, expert;
  m.token_routing(0, kept, expert);
  int expected = 0;
  for (int i = 0; i < 4; ++i)  // images 0, 4, 8, 12 of the batch of 16
    for (int t = 0; t < c.seq_len(); ++t) expected += kept[(i * 4) * c.seq_len() + t] == 0;
  EXPECT_EQ(dropped, expected);
  EXPECT_GT(dropped, 0);  // capacity 0.5 with k = 2 must drop whole patches
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string svg = ss.str();
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  size_t red = 0;
  for (size_t pos = 0; (pos = svg.find("stroke=\"#e22\"", pos)) != std::string::npos; ++pos) ++red;
  EXPECT_EQ(static_cast<int>(red), dropped);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}

}  // namespace
}  // namespace moe
