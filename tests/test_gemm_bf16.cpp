// The bf16 GEMM against its oracle (bf16-rounded inputs, exact products summed in double), on
// odd shapes and every transpose combination, with both kernels; and the MoE layer in bf16
// against the same layer in fp32.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "core/bf16_pack.h"
#include "moe/cpu_features.h"
#include "moe/gemm_bf16.h"
#include "moe/moe_layer.h"
#include "moe/parallel.h"
#include "test_util.h"

namespace moe {
namespace {

// Restores the automatic kernel choice whatever a test forced.
struct KernelGuard {
  ~KernelGuard() { set_bf16_kernel(Bf16Kernel::Auto); }
};

TEST(Bf16Round, NearestEvenNanAndDenormals) {
  EXPECT_EQ(bf16_bits(1.0f), 0x3F80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(bf16_bits(1.0f + 0x1p-8f), 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
  EXPECT_EQ(bf16_bits(1.0f + 3 * 0x1p-8f), 0x3F82);
  EXPECT_EQ(bf16_bits(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // above halfway rounds up
  EXPECT_EQ(bf16_bits(-2.0f), 0xC000);
  EXPECT_TRUE(std::isnan(round_bf16(std::nanf(""))));
  EXPECT_EQ(round_bf16(1e-40f), 0.0f);  // denormal flushes, as vdpbf16ps treats inputs
  EXPECT_TRUE(std::isinf(round_bf16(INFINITY)));
  EXPECT_EQ(round_bf16(3.4e38f), INFINITY);  // rounds past the largest bf16 (3.39e38)
}

// Random values with the cases rounding must get right sprinkled in: ties to even, denormals,
// values that round past the largest bf16, infinities and NaNs of both signs.
std::vector<float> awkward_values(Rng& rng, int64_t n) {
  const float special[] = {0.f,
                           -0.f,
                           1e-40f,
                           -1e-40f,
                           3.4e38f,
                           -3.4e38f,
                           INFINITY,
                           -INFINITY,
                           std::nanf(""),
                           -std::nanf(""),
                           1 + 0x1p-8f,
                           1 + 3 * 0x1p-8f,
                           1.17549435e-38f,
                           0x1.fffffep127f};
  auto v = test::random_vector<float>(rng, n);
  for (int64_t i = 0; i < n; i += 7) v[i] = special[(i / 7) % std::size(special)];
  return v;
}

// round_to_bf16 (vcvtneps2bf16 where the CPU has it) gives bf16_bits, over every tail length.
TEST(Bf16Round, RoundToBf16GivesBf16Bits) {
  Rng rng(13);
  const auto v = awkward_values(rng, 100);
  for (int64_t n = 0; n <= 100; ++n) {
    std::vector<uint16_t> got(static_cast<size_t>(n) + 1, 0xBEEF);
    round_to_bf16(v.data(), n, got.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], bf16_bits(v[i])) << "n=" << n << " i=" << i;
    ASSERT_EQ(got[n], 0xBEEF) << "wrote past n=" << n;
  }
}

// Packs the same operand two ways, pack(which, contiguous?, rows or cols, width, k0, kc, dst)
// with which = 0 or 1, over every layout case, and requires the same bits: row counts below
// and at the panel width, k ranges with and without full 32-wide chunks, odd kc (zero
// partner), an offset k0.
template <class Pack>
void expect_same_packing(const Pack& pack, const std::string& what) {
  for (int width : {12, 32})
    for (int rows : {1, 5, 12, 16, 17, 32})
      for (int64_t kc : {1, 31, 32, 33, 64, 1023, 1024})
        for (int64_t k0 : {0, 3}) {
          if (rows > width) continue;
          const int64_t n = (kc + 1) / 2 * width;
          std::vector<uint32_t> a(n, 0xDEADBEEF), b(n, 0xDEADBEEF);
          pack(0, true, rows, width, k0, kc, a.data());
          pack(1, true, rows, width, k0, kc, b.data());
          ASSERT_EQ(a, b) << what << " k_contiguous width=" << width << " rows=" << rows
                          << " kc=" << kc << " k0=" << k0;
        }
  for (int width : {12, 32})
    for (int64_t cols : {1, 12, 15, 16, 33, 100, 1000, 1024})
      for (int64_t kc : {1, 2, 7, 64}) {
        const int64_t panels = (cols + width - 1) / width;
        const int64_t n = panels * (kc + 1) / 2 * width;
        std::vector<uint32_t> a(n, 0xDEADBEEF), b(n, 0xDEADBEEF);
        pack(0, false, cols, width, 1, kc, a.data());
        pack(1, false, cols, width, 1, kc, b.data());
        ASSERT_EQ(a, b) << what << " k_strided width=" << width << " cols=" << cols << " kc=" << kc;
      }
}

TEST(Bf16Pack, Avx512PackersGiveTheScalarBits) {
  if (!cpu_features().bf16_gemm()) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  Rng rng(11);
  const int64_t ld = 1100;
  const auto src = awkward_values(rng, 70 * ld);
  expect_same_packing(
      [&](int which, bool contiguous, int64_t n, int width, int64_t k0, int64_t kc, uint32_t* dst) {
        const bool simd = which == 1;
        if (contiguous)
          pack_k_contiguous(simd, src.data(), ld, static_cast<int>(n), width, k0, kc, dst);
        else
          pack_k_strided(simd, src.data(), ld, n, width, k0, kc, dst);
      },
      "scalar vs avx512");
  // And the scalar packer is the definition: pair = bf16_bits(x[k]) | bf16_bits(x[k+1]) << 16.
  std::vector<uint32_t> p(static_cast<size_t>(32 * 8));
  pack_k_contiguous(false, src.data(), ld, 32, 32, 0, 16, p.data());
  for (int64_t kp = 0; kp < 8; ++kp)
    for (int r = 0; r < 32; ++r)
      ASSERT_EQ(p[kp * 32 + r], bf16_bits(src[r * ld + 2 * kp]) |
                                    uint32_t(bf16_bits(src[r * ld + 2 * kp + 1])) << 16);
}

// bf16 bits of awkward values, and the fp32 values they stand for.
std::pair<std::vector<uint16_t>, std::vector<float>> bf16_operand(Rng& rng, int64_t n) {
  const auto v = awkward_values(rng, n);
  std::vector<uint16_t> bits(v.size());
  std::vector<float> wide(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    bits[i] = bf16_bits(v[i]);
    wide[i] = bf16_value(bits[i]);
  }
  return {bits, wide};
}

// Packing bf16 bits gives the bits packing their fp32 values gives, with either packer.
TEST(Bf16Pack, Bf16SourcesPackAsTheirFp32Values) {
  Rng rng(12);
  const int64_t ld = 1100;
  const auto operand = bf16_operand(rng, 70 * ld);  // no structured binding: clang 14 cannot
  const auto& bits = operand.first;                 // capture one in a lambda
  const auto& wide = operand.second;
  std::vector<bool> simds = {false};
  if (cpu_features().bf16_gemm()) simds.push_back(true);
  for (bool simd : simds)
    expect_same_packing(
        [&](int which, bool contiguous, int64_t n, int width, int64_t k0, int64_t kc,
            uint32_t* dst) {
          auto run = [&](const auto* src) {
            if (contiguous)
              pack_k_contiguous(simd, src, ld, static_cast<int>(n), width, k0, kc, dst);
            else
              pack_k_strided(simd, src, ld, n, width, k0, kc, dst);
          };
          if (which == 0)
            run(wide.data());
          else
            run(bits.data());
        },
        simd ? "fp32 vs bf16 source, avx512" : "fp32 vs bf16 source, scalar");
}

struct Case {
  Trans ta, tb;
  int64_t M, N, K;
  float alpha, beta;
};

void check_case(const Case& c, Bf16Kernel kernel, int seed) {
  Rng rng(static_cast<uint64_t>(seed));
  const int64_t lda = (c.ta == Trans::No ? c.K : c.M) + 3;  // padded strides
  const int64_t ldb = (c.tb == Trans::No ? c.N : c.K) + 5;
  const int64_t ldc = c.N + 2;
  const int64_t a_rows = c.ta == Trans::No ? c.M : c.K, b_rows = c.tb == Trans::No ? c.K : c.N;
  const auto A = test::random_vector<float>(rng, a_rows * lda);
  const auto B = test::random_vector<float>(rng, b_rows * ldb);
  auto C = test::random_vector<float>(rng, c.M * ldc);
  auto ref = C;
  set_bf16_kernel(kernel);
  gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, C.data(),
            ldc);
  gemm_bf16_naive(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta,
                  ref.data(), ldc);
  // fp32 sums of K exact products: error grows like sqrt(K) * 2^-24.
  test::expect_close(std::string(bf16_kernel_name(kernel)) + " M=" + std::to_string(c.M) +
                         " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
                         " ta=" + std::to_string(int(c.ta)) + " tb=" + std::to_string(int(c.tb)),
                     C.data(), ref.data(), c.M * ldc, 2e-6);
}

std::vector<Bf16Kernel> kernels() {
  std::vector<Bf16Kernel> k = {Bf16Kernel::Portable};
  if (cpu_features().bf16_gemm()) k.push_back(Bf16Kernel::Avx512);
  return k;
}

TEST(GemmBf16, MatchesOracleOnOddShapesAndTransposes) {
  KernelGuard guard;
  int seed = 1;
  // Tails of every block size: MR = 12 rows, NR = 32 columns, KC = 1024 (odd K too), MC = 192,
  // NC = 1536.
  const int64_t shapes[][3] = {{1, 1, 1},      {13, 33, 7},    {12, 32, 1024},
                               {25, 65, 1025}, {193, 31, 513}, {100, 1030, 3},
                               {3, 5, 2100},   {130, 47, 129}, {14, 1600, 5}};
  for (Bf16Kernel kernel : kernels())
    for (const auto& s : shapes)
      for (Trans ta : {Trans::No, Trans::Yes})
        for (Trans tb : {Trans::No, Trans::Yes})
          check_case({ta, tb, s[0], s[1], s[2], 1.f, 0.f}, kernel, seed++);
}

// An operand given as bf16 bits gives bit for bit the result of its fp32 values, through every
// block tail and transpose.
TEST(GemmBf16, Bf16OperandsGiveTheResultOfTheirValues) {
  KernelGuard guard;
  int seed = 200;
  const int64_t shapes[][3] = {{13, 33, 7}, {25, 65, 1025}, {193, 31, 513}, {14, 1600, 5}};
  for (Bf16Kernel kernel : kernels()) {
    set_bf16_kernel(kernel);
    for (const auto& s : shapes)
      for (Trans ta : {Trans::No, Trans::Yes})
        for (Trans tb : {Trans::No, Trans::Yes}) {
          const int64_t M = s[0], N = s[1], K = s[2];
          const int64_t lda = (ta == Trans::No ? K : M) + 3, ldb = (tb == Trans::No ? N : K) + 1;
          Rng rng(static_cast<uint64_t>(seed++));
          const auto [a_bits, a] = bf16_operand(rng, (ta == Trans::No ? M : K) * lda);
          const auto [b_bits, b] = bf16_operand(rng, (tb == Trans::No ? K : N) * ldb);
          // Finite values only: a NaN or infinity would make the sums NaN and EXPECT_EQ fail on
          // NaN != NaN, though the bits agree.
          auto finite = [](std::vector<uint16_t> v) {
            for (auto& h : v)
              if ((h & 0x7F80u) == 0x7F80u) h = 0x3F80;  // 1.0
            return v;
          };
          const auto ab = finite(a_bits), bb = finite(b_bits);
          std::vector<float> af(ab.size()), bf(bb.size());
          for (size_t i = 0; i < ab.size(); ++i) af[i] = bf16_value(ab[i]);
          for (size_t i = 0; i < bb.size(); ++i) bf[i] = bf16_value(bb[i]);
          const auto C0 = test::random_vector<float>(rng, M * N);
          auto ref = C0, c1 = C0, c2 = C0;
          gemm_bf16(ta, tb, M, N, K, 0.5f, af.data(), lda, bf.data(), ldb, 1.f, ref.data(), N);
          gemm_bf16(ta, tb, M, N, K, 0.5f, ab.data(), lda, bf.data(), ldb, 1.f, c1.data(), N);
          gemm_bf16(ta, tb, M, N, K, 0.5f, af.data(), lda, bb.data(), ldb, 1.f, c2.data(), N);
          const std::string what = std::string(bf16_kernel_name(kernel)) +
                                   " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                   " K=" + std::to_string(K) + " ta=" + std::to_string(int(ta)) +
                                   " tb=" + std::to_string(int(tb));
          ASSERT_EQ(c1, ref) << "bf16 A, " << what;
          ASSERT_EQ(c2, ref) << "bf16 B, " << what;
        }
  }
}

TEST(GemmBf16, AlphaBetaAndAccumulate) {
  KernelGuard guard;
  for (Bf16Kernel kernel : kernels()) {
    check_case({Trans::No, Trans::Yes, 40, 70, 300, 0.5f, 1.f}, kernel, 100);
    check_case({Trans::Yes, Trans::No, 40, 70, 1100, 1.f, -2.f}, kernel, 101);
  }
}

TEST(GemmBf16, BetaZeroIgnoresNanAndKZeroScales) {
  KernelGuard guard;
  for (Bf16Kernel kernel : kernels()) {
    set_bf16_kernel(kernel);
    std::vector<float> A(6, 1.f), B(6, 1.f), C(4, std::nanf(""));
    gemm_bf16(Trans::No, Trans::No, 2, 2, 3, 1.f, A.data(), 3, B.data(), 2, 0.f, C.data(), 2);
    for (float v : C) EXPECT_EQ(v, 3.f);
    gemm_bf16(Trans::No, Trans::No, 2, 2, 0, 1.f, A.data(), 3, B.data(), 2, 0.5f, C.data(), 2);
    for (float v : C) EXPECT_EQ(v, 1.5f);
  }
}

TEST(GemmBf16, KernelsAgreeAndThreadsDoNotChangeResults) {
  KernelGuard guard;
  Rng rng(7);
  const int64_t M = 300, N = 200, K = 700;
  const auto A = test::random_vector<float>(rng, M * K);
  const auto B = test::random_vector<float>(rng, N * K);
  auto run = [&](Bf16Kernel kernel, int threads) {
    set_bf16_kernel(kernel);
    const int saved = num_threads();
    set_num_threads(threads);
    std::vector<float> C(static_cast<size_t>(M * N));
    gemm_bf16(Trans::No, Trans::Yes, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, C.data(), N);
    set_num_threads(saved);
    return C;
  };
  const auto p1 = run(Bf16Kernel::Portable, 1), p2 = run(Bf16Kernel::Portable, 2);
  EXPECT_EQ(p1, p2) << "thread count changed the portable kernel's result";
  if (cpu_features().bf16_gemm()) {
    const auto v1 = run(Bf16Kernel::Avx512, 1), v2 = run(Bf16Kernel::Avx512, 2);
    EXPECT_EQ(v1, v2) << "thread count changed the AVX-512 kernel's result";
    // Same bf16 products and summation order: equal up to the last bit of a few sums.
    test::expect_close("avx512 vs portable", v1.data(), p1.data(), M * N, 1e-7);
  } else {
    EXPECT_THROW(set_bf16_kernel(Bf16Kernel::Avx512), Error);
  }
}

MoeConfig layer_config(ComputeDtype dt, Activation act = Activation::SwiGLU) {
  MoeConfig c;
  c.hidden_act = act;
  c.hidden_size = 64;
  c.moe_intermediate_size = 96;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.shared_expert_gate = true;
  c.compute_dtype = dt;
  return c;
}

// Both activations: their passes keep different bf16 rows (a and dh1, dh3; GELU has no h3).
void check_layer(Bf16Kernel kernel, Activation act) {
  KernelGuard guard;
  set_bf16_kernel(kernel);
  MoeLayer<float> f32(layer_config(ComputeDtype::Float32, act));
  MoeLayer<float> b16(layer_config(ComputeDtype::BFloat16, act));
  Rng rng(5);
  f32.init_weights(rng, 0.1);
  b16.params().values() = f32.params().values();
  const int64_t T = 200, d = 64;
  const auto x = test::random_vector<float>(rng, T * d);
  const auto dout = test::random_vector<float>(rng, T * d);
  Tensor<float> y32({T, d}), y16({T, d}), dx32({T, d}), dx16({T, d});
  ForwardOptions<float> opt;
  opt.training = true;
  for (auto [layer, y, dx] : {std::tuple{&f32, &y32, &dx32}, std::tuple{&b16, &y16, &dx16}}) {
    layer->forward(View<const float>(x.data(), {T, d}), y->view(), opt);
    layer->backward(View<const float>(dout.data(), {T, d}), dx->view());
  }
  // Routing is fp32 in both, so the same experts run; only GEMM rounding differs.
  EXPECT_EQ(f32.plan().expert, b16.plan().expert);
  test::expect_close("forward out", y16.data(), y32.data(), T * d, 1e-2);
  test::expect_close("backward dx", dx16.data(), dx32.data(), T * d, 3e-2);
  for (const char* name : {"router.weight", "experts.w1", "experts.w3", "experts.w2", "shared.w1",
                           "shared.w2", "shared.gate"}) {
    const ParamSpec* spec = f32.params().find(name);
    if (spec == nullptr && act == Activation::GELU) continue;  // experts.w3: SwiGLU only
    ASSERT_NE(spec, nullptr) << name;
    test::expect_close(std::string("grad ") + name, b16.params().grads().data() + spec->offset,
                       f32.params().grads().data() + spec->offset, spec->shape.numel(), 3e-2);
  }
}

TEST(MoeLayerBf16, CloseToFp32Portable) {
  check_layer(Bf16Kernel::Portable, Activation::SwiGLU);
  check_layer(Bf16Kernel::Portable, Activation::GELU);
}

TEST(MoeLayerBf16, CloseToFp32Avx512) {
  if (!cpu_features().bf16_gemm()) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  check_layer(Bf16Kernel::Avx512, Activation::SwiGLU);
  check_layer(Bf16Kernel::Avx512, Activation::GELU);
}

TEST(MoeLayerBf16, ExpertScheduleDoesNotChangeResults) {
  MoeLayer<float> a(layer_config(ComputeDtype::BFloat16)), b(layer_config(ComputeDtype::BFloat16));
  Rng rng(9);
  a.init_weights(rng, 0.1);
  b.params().values() = a.params().values();
  a.set_expert_schedule(0);
  b.set_expert_schedule(1);
  const int64_t T = 150, d = 64;
  const auto x = test::random_vector<float>(rng, T * d);
  Tensor<float> ya({T, d}), yb({T, d}), dxa({T, d}), dxb({T, d});
  a.forward(View<const float>(x.data(), {T, d}), ya.view());
  b.forward(View<const float>(x.data(), {T, d}), yb.view());
  a.backward(View<const float>(x.data(), {T, d}), dxa.view());
  b.backward(View<const float>(x.data(), {T, d}), dxb.view());
  EXPECT_EQ(ya.buffer(), yb.buffer());
  EXPECT_EQ(dxa.buffer(), dxb.buffer());
  EXPECT_EQ(a.params().grads(), b.params().grads());
}

TEST(MoeLayerBf16, ConfigKeyAndDoubleRejected) {
  nlohmann::json j = {
      {"hidden_size", 8}, {"moe_intermediate_size", 8}, {"compute_dtype", "bfloat16"}};
  EXPECT_EQ(moe_config_from_json(j).compute_dtype, ComputeDtype::BFloat16);
  nlohmann::json out;
  moe_config_to_json(moe_config_from_json(j), out);
  EXPECT_EQ(out["compute_dtype"], "bfloat16");
  j["compute_dtype"] = "float16";
  try {
    moe_config_from_json(j, "my.json");
    FAIL() << "float16 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("compute_dtype"), std::string::npos) << e.what();
  }
  EXPECT_THROW(MoeLayer<double>(layer_config(ComputeDtype::BFloat16)), Error);
}

}  // namespace
}  // namespace moe
