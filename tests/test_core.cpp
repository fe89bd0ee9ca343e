// Unit tests of the core module: errors, tensors/views, RNG, GEMM, safetensors I/O,
// bf16/f16 conversions, parameter arenas and the thread-count switch.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/parallel.h"
#include "moe/params.h"
#include "moe/rng.h"
#include "moe/safetensors.h"
#include "moe/tensor.h"
#include "moe/utf8.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

// ---------------------------------------------------------------------------------------------
// Helpers

using test::TempDir;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file from a raw header string and data bytes (header length written
// little-endian, as the format requires; the header is not padded).
std::string craft_safetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string float_bytes(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  size_t i = 0;
  for (float x : v) std::memcpy(&s[4 * i++], &x, 4);
  return s;
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(Error, MoeCheckThrowsWithFileLineAndMessage) {
  const int line = __LINE__ + 2;
  try {
    MOE_CHECK(1 + 1 == 3, "value {} is bad: {}", 42, "reason");
    FAIL() << "MOE_CHECK with a false condition did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("test_core.cpp:" + std::to_string(line) + ":"), std::string::npos) << msg;
    EXPECT_NE(msg.find("value 42 is bad: reason"), std::string::npos) << msg;
  }
}

TEST(Error, MoeCheckPassesOnTrueAndIsARuntimeError) {
  EXPECT_NO_THROW(MOE_CHECK(2 > 1, "never {}", 1));
  int evaluated = 0;
  EXPECT_NO_THROW(MOE_CHECK(++evaluated == 1, "side effect"));
  EXPECT_EQ(evaluated, 1);  // the condition is evaluated exactly once
  EXPECT_THROW(MOE_CHECK(false, "x"), std::runtime_error);
  EXPECT_THROW(throw_error("/a/b/src/core/x.cpp", 7, "m"), Error);
  EXPECT_MOE_ERROR(throw_error("/a/b/src/core/x.cpp", 7, "boom"), "src/core/x.cpp:7: boom");
}

// ---------------------------------------------------------------------------------------------
// Shape / View / Tensor

TEST(Shape, NumelStrAndEquality) {
  EXPECT_EQ(Shape({2, 3, 4}).numel(), 24);
  EXPECT_EQ(Shape({7}).numel(), 7);
  EXPECT_EQ(Shape({5, 0, 2}).numel(), 0);
  EXPECT_EQ(Shape().numel(), 1);  // a scalar
  EXPECT_EQ(Shape({2, 3, 4}).str(), "[2,3,4]");
  EXPECT_EQ(Shape({9}).str(), "[9]");
  EXPECT_EQ(Shape().str(), "[]");
  EXPECT_EQ(Shape({2, 3, 4}).ndim, 3);
  EXPECT_EQ(Shape({2, 3, 4})[1], 3);
  EXPECT_TRUE(Shape({2, 3}) == Shape({2, 3}));
  EXPECT_FALSE(Shape({2, 3}) == Shape({3, 2}));
  EXPECT_FALSE(Shape({2, 3}) == Shape({2, 3, 1}));
  EXPECT_TRUE(Shape::from({4, 5}) == Shape({4, 5}));
}

TEST(Shape, InvalidDimensionsThrow) {
  EXPECT_MOE_ERROR(Shape({2, -1}), "negative dimension -1");
  EXPECT_MOE_ERROR(Shape::from({3, -7}), "negative dimension -7");
  EXPECT_MOE_ERROR(Shape({1, 2, 3, 4, 5}), "at most 4");
  EXPECT_MOE_ERROR(Shape::from({1, 2, 3, 4, 5}), "at most 4");
}

TEST(View, SubViewsRowsAndStrides) {
  Tensor<float> t(Shape{2, 3, 4});
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(i);
  View<float> v = t.view();
  EXPECT_EQ(v.data, t.data());
  EXPECT_EQ(v.ndim(), 3);
  EXPECT_EQ(v.stride[0], 12);
  EXPECT_EQ(v.stride[1], 4);
  EXPECT_EQ(v.stride[2], 1);
  EXPECT_TRUE(v.contiguous());
  EXPECT_EQ(v.at(1, 2, 3), 23.0f);
  EXPECT_EQ(v.at(0, 1, 2), 6.0f);

  View<float> s = v[1];
  EXPECT_EQ(s.ndim(), 2);
  EXPECT_TRUE(s.shape == Shape({3, 4}));
  EXPECT_EQ(s.data, t.data() + 12);
  EXPECT_EQ(s.stride[0], 4);
  EXPECT_EQ(s.stride[1], 1);
  EXPECT_EQ(s.at(2, 1), 21.0f);
  View<float> r = s[2];
  EXPECT_TRUE(r.shape == Shape({4}));
  EXPECT_EQ(r.data, t.data() + 20);
  EXPECT_EQ(r.at(3), 23.0f);

  // Writing through a sub-view writes the tensor.
  v[1][0].at(1) = -5.0f;
  EXPECT_EQ(t[13], -5.0f);

  Tensor<double> m(Shape{5, 3});
  for (int64_t i = 0; i < m.numel(); ++i) m[i] = static_cast<double>(i);
  View<double> rows = m.view().rows(1, 4);
  EXPECT_TRUE(rows.shape == Shape({3, 3}));
  EXPECT_EQ(rows.data, m.data() + 3);
  EXPECT_EQ(rows.at(0, 0), 3.0);
  EXPECT_EQ(rows.at(2, 2), 11.0);
  EXPECT_TRUE(rows.contiguous());
  EXPECT_EQ(rows.numel(), 9);
  EXPECT_EQ(m.view().rows(2, 2).numel(), 0);

  View<const double> cv = rows;  // const conversion keeps data, shape and strides
  EXPECT_EQ(cv.data, rows.data);
  EXPECT_TRUE(cv.shape == rows.shape);
  EXPECT_EQ(cv.stride, rows.stride);
  const Tensor<double>& cm = m;
  EXPECT_EQ(cm.view().at(4, 2), 14.0);
}

TEST(View, TransposedAndContiguous) {
  Tensor<float> t(Shape{5, 3});
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(i);
  View<float> v = t.view();
  View<float> tr = v.transposed();
  EXPECT_TRUE(tr.shape == Shape({3, 5}));
  EXPECT_EQ(tr.stride[0], 1);
  EXPECT_EQ(tr.stride[1], 3);
  EXPECT_EQ(tr.data, v.data);
  EXPECT_FALSE(tr.contiguous());
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(tr.at(j, i), v.at(i, j));
  View<float> back = tr.transposed();
  EXPECT_TRUE(back.shape == v.shape);
  EXPECT_EQ(back.stride, v.stride);
  EXPECT_TRUE(back.contiguous());

  EXPECT_MOE_ERROR(Tensor<float>(Shape{2, 3, 4}).view().transposed(), "transposed", "[2,3,4]");

  // A column block of a wider matrix (row stride larger than the row) is not contiguous...
  View<float> block = v;
  block.shape.dims[1] = 2;
  EXPECT_FALSE(block.contiguous());
  // ...but a single row of it is, and so is a view whose only odd stride is on a size-1 dim.
  EXPECT_TRUE(block[0].contiguous());
  EXPECT_TRUE(block.rows(0, 1)[0].contiguous());
  View<float> one = v.rows(2, 3);  // shape [1,3]
  one.stride[0] = 1000;
  EXPECT_TRUE(one.contiguous());
  // A transposed column vector is a contiguous row.
  Tensor<float> col(Shape{4, 1});
  EXPECT_TRUE(col.view().transposed().contiguous());
}

TEST(Tensor, ConstructionAndCheckShape) {
  Tensor<double> t(Shape{2, 3}, 1.5);
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.buffer().size(), 6u);
  EXPECT_TRUE(t.shape() == Shape({2, 3}));
  for (double x : t.buffer()) EXPECT_EQ(x, 1.5);
  Tensor<float> z(Shape{4});
  for (float x : z.buffer()) EXPECT_EQ(x, 0.0f);

  EXPECT_NO_THROW(check_shape(t.view(), Shape{2, 3}, "weights"));
  EXPECT_MOE_ERROR(check_shape(t.view(), Shape{3, 2}, "router.weight"), "router.weight", "[2,3]",
                   "[3,2]");
  EXPECT_MOE_ERROR(check_shape(t.view(), Shape{2, 3, 1}, "x"), "x:", "[2,3]", "[2,3,1]");
  Tensor<double> sq(Shape{3, 3});
  EXPECT_MOE_ERROR(check_shape(sq.view().transposed(), Shape{3, 3}, "square"), "square",
                   "contiguous");
}

// ---------------------------------------------------------------------------------------------
// GEMM

// An independent reference: materializes op(A), op(B) densely, then a long-double triple loop.
template <class T>
std::vector<T> reference_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha,
                              const std::vector<T>& A, int64_t lda, const std::vector<T>& B,
                              int64_t ldb, T beta, const std::vector<T>& C, int64_t ldc) {
  std::vector<long double> opA(static_cast<size_t>(M * K)), opB(static_cast<size_t>(K * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t p = 0; p < K; ++p)
      opA[static_cast<size_t>(i * K + p)] =
          A[static_cast<size_t>(ta == Trans::No ? i * lda + p : p * lda + i)];
  for (int64_t p = 0; p < K; ++p)
    for (int64_t j = 0; j < N; ++j)
      opB[static_cast<size_t>(p * N + j)] =
          B[static_cast<size_t>(tb == Trans::No ? p * ldb + j : j * ldb + p)];
  std::vector<T> out = C;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      long double acc = 0;
      for (int64_t p = 0; p < K; ++p)
        acc += opA[static_cast<size_t>(i * K + p)] * opB[static_cast<size_t>(p * N + j)];
      const size_t c = static_cast<size_t>(i * ldc + j);
      out[c] = static_cast<T>(alpha * acc +
                              (beta == T(0) ? 0.0L : beta * static_cast<long double>(C[c])));
    }
  return out;
}

template <class T>
class GemmTest : public ::testing::Test {};
using GemmTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GemmTest, GemmTypes);

struct GemmCase {
  int64_t M, N, K;
  int64_t pad;  // extra elements per stored row of A, B and C
  double alpha, beta;
};

template <class T>
void run_gemm_case(Trans ta, Trans tb, const GemmCase& gc, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "ta=" << (ta == Trans::Yes) << " tb=" << (tb == Trans::Yes)
                                    << " M=" << gc.M << " N=" << gc.N << " K=" << gc.K << " pad="
                                    << gc.pad << " alpha=" << gc.alpha << " beta=" << gc.beta);
  const int64_t M = gc.M, N = gc.N, K = gc.K;
  // Stored shapes (row-major): A is MxK or KxM, B is KxN or NxK, C is MxN.
  const int64_t a_rows = ta == Trans::No ? M : K, a_cols = ta == Trans::No ? K : M;
  const int64_t b_rows = tb == Trans::No ? K : N, b_cols = tb == Trans::No ? N : K;
  const int64_t lda = a_cols + gc.pad, ldb = b_cols + gc.pad, ldc = N + gc.pad;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T sentinel = T(-12345);
  Rng rng(seed);
  // Padding of A and B is NaN: if a backend read it, the result would be NaN.
  std::vector<T> A(static_cast<size_t>(a_rows * lda), nan),
      B(static_cast<size_t>(b_rows * ldb), nan);
  std::vector<T> C(static_cast<size_t>(M * ldc), sentinel);
  for (int64_t r = 0; r < a_rows; ++r)
    for (int64_t c = 0; c < a_cols; ++c)
      A[static_cast<size_t>(r * lda + c)] = static_cast<T>(rng.normal());
  for (int64_t r = 0; r < b_rows; ++r)
    for (int64_t c = 0; c < b_cols; ++c)
      B[static_cast<size_t>(r * ldb + c)] = static_cast<T>(rng.normal());
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < N; ++c)
      C[static_cast<size_t>(r * ldc + c)] = static_cast<T>(rng.normal());

  const T alpha = static_cast<T>(gc.alpha), beta = static_cast<T>(gc.beta);
  const std::vector<T> ref = reference_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  std::vector<T> C_blas = C, C_naive = C;
  gemm<T>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C_blas.data(), ldc);
  gemm_naive<T>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C_naive.data(), ldc);

  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-13;
  double max_err = 0, max_err_naive = 0;
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t c = 0; c < ldc; ++c) {
      const size_t idx = static_cast<size_t>(r * ldc + c);
      if (c >= N) {  // padding of C is never touched
        EXPECT_EQ(C_blas[idx], sentinel) << "gemm wrote C padding at " << r << "," << c;
        EXPECT_EQ(C_naive[idx], sentinel) << "gemm_naive wrote C padding at " << r << "," << c;
        continue;
      }
      const double scale = 1.0 + std::abs(static_cast<double>(ref[idx]));
      ASSERT_TRUE(std::isfinite(static_cast<double>(C_blas[idx]))) << r << "," << c;
      max_err = std::max(max_err, std::abs(static_cast<double>(C_blas[idx]) - ref[idx]) / scale);
      max_err_naive =
          std::max(max_err_naive, std::abs(static_cast<double>(C_naive[idx]) - ref[idx]) / scale);
    }
  }
  EXPECT_LE(max_err, tol * std::sqrt(static_cast<double>(K) + 1));
  EXPECT_LE(max_err_naive, tol);
}

TYPED_TEST(GemmTest, MatchesReferenceForAllTransposesShapesAndStrides) {
  const GemmCase cases[] = {
      {7, 5, 3, 0, 1.0, 0.0},     {7, 5, 3, 0, 0.75, -0.5},     {7, 5, 3, 4, -1.25, 2.0},
      {65, 33, 17, 0, 1.0, 0.0},  {65, 33, 17, 3, 0.5, 1.0},    {65, 33, 17, 11, 2.0, -0.25},
      {1, 1, 1, 0, 3.0, 0.5},     {1, 9, 4, 2, 1.0, 1.0},       {9, 1, 4, 2, 1.0, 1.0},
      {128, 96, 80, 5, 1.0, 0.5}, {1, 300, 128, 3, 0.125, 0.0}, {1, 130, 70, 1, -1.0, 0.5},
  };
  uint64_t seed = 100;
  for (Trans ta : {Trans::No, Trans::Yes})
    for (Trans tb : {Trans::No, Trans::Yes})
      for (const auto& gc : cases) run_gemm_case<TypeParam>(ta, tb, gc, seed++);
}

// The packed AVX-512 fp32 kernel behind gemm<float>: the same cases, then shapes that cross
// every block boundary (k blocks of 512, row blocks of 192, column blocks of 1024) and rows
// split over threads.
TEST(GemmTest, PackedAvx512KernelMatchesReference) {
  if (!sgemm_avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
  struct Restore {
    ~Restore() { set_sgemm_backend(SgemmBackend::Auto); }
  } restore;
  set_sgemm_backend(SgemmBackend::Avx512);
  const GemmCase cases[] = {
      {7, 5, 3, 0, 1.0, 0.0},        {65, 33, 17, 3, 0.5, 1.0},   {1, 9, 4, 2, 1.0, 1.0},
      {9, 1, 4, 2, 1.0, 1.0},        {128, 96, 80, 5, 1.0, 0.5},  {13, 33, 1030, 1, 1.0, 0.0},
      {200, 40, 530, 0, -0.5, 0.25}, {30, 1060, 70, 2, 1.0, 1.0},
  };
  uint64_t seed = 900;
  for (Trans ta : {Trans::No, Trans::Yes})
    for (Trans tb : {Trans::No, Trans::Yes})
      for (const auto& gc : cases) run_gemm_case<float>(ta, tb, gc, seed++);
}

// Same bits whatever the thread count: each element is summed by one thread in k order.
TEST(GemmTest, PackedAvx512KernelIsThreadCountInvariant) {
  if (!sgemm_avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
  const int64_t M = 150, N = 70, K = 600;
  Rng rng(5);
  std::vector<float> A(M * K), B(K * N), C1(M * N), C2(M * N);
  rng.fill_normal(A.data(), M * K);
  rng.fill_normal(B.data(), K * N);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  sgemm_avx512(Trans::No, Trans::Yes, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, C1.data(), N);
  omp_set_num_threads(std::max(2, threads));
  sgemm_avx512(Trans::No, Trans::Yes, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, C2.data(), N);
  omp_set_num_threads(threads);
  EXPECT_EQ(0, std::memcmp(C1.data(), C2.data(), sizeof(float) * M * N));
}

TYPED_TEST(GemmTest, BetaAccumulatesAcrossCalls) {
  using T = TypeParam;
  const int64_t M = 4, N = 6, K = 5;
  Rng rng(7);
  std::vector<T> A(M * K), B(K * N), C0(M * N);
  rng.fill_normal(A.data(), M * K);
  rng.fill_normal(B.data(), K * N);
  rng.fill_normal(C0.data(), M * N);
  std::vector<T> ab(M * N, T(0));
  gemm_naive<T>(Trans::No, Trans::No, M, N, K, T(1), A.data(), K, B.data(), N, T(0), ab.data(), N);
  for (auto* fn : {&gemm<T>, &gemm_naive<T>}) {
    std::vector<T> C = C0;
    fn(Trans::No, Trans::No, M, N, K, T(1), A.data(), K, B.data(), N, T(1), C.data(), N);
    fn(Trans::No, Trans::No, M, N, K, T(1), A.data(), K, B.data(), N, T(1), C.data(), N);
    for (int64_t i = 0; i < M * N; ++i)
      EXPECT_NEAR(static_cast<double>(C[i]), static_cast<double>(C0[i]) + 2 * ab[i], 1e-5);
  }
}

TYPED_TEST(GemmTest, BetaZeroOverwritesNaN) {
  using T = TypeParam;
  const T A[4] = {1, 2, 3, 4}, B[4] = {5, 6, 7, 8};
  for (auto* fn : {&gemm<T>, &gemm_naive<T>}) {
    T C[4];
    std::fill(C, C + 4, std::numeric_limits<T>::quiet_NaN());
    fn(Trans::No, Trans::No, 2, 2, 2, T(1), A, 2, B, 2, T(0), C, 2);
    EXPECT_EQ(C[0], T(19));
    EXPECT_EQ(C[1], T(22));
    EXPECT_EQ(C[2], T(43));
    EXPECT_EQ(C[3], T(50));
    // One row (the matrix-vector path), both layouts of B.
    std::fill(C, C + 2, std::numeric_limits<T>::quiet_NaN());
    fn(Trans::No, Trans::No, 1, 2, 2, T(1), A, 2, B, 2, T(0), C, 2);
    EXPECT_EQ(C[0], T(19));
    EXPECT_EQ(C[1], T(22));
    std::fill(C, C + 2, std::numeric_limits<T>::quiet_NaN());
    fn(Trans::No, Trans::Yes, 1, 2, 2, T(1), A, 2, B, 2, T(0), C, 2);
    EXPECT_EQ(C[0], T(17));
    EXPECT_EQ(C[1], T(23));
  }
}

TYPED_TEST(GemmTest, EmptySizes) {
  using T = TypeParam;
  const T A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 2, 3, 4, 5, 6};
  for (auto* fn : {&gemm<T>, &gemm_naive<T>}) {
    // M = 0 or N = 0: nothing is written.
    T C[6] = {9, 9, 9, 9, 9, 9};
    fn(Trans::No, Trans::No, 0, 3, 2, T(1), A, 2, B, 3, T(0), C, 3);
    fn(Trans::No, Trans::No, 2, 0, 3, T(1), A, 3, B, 1, T(0), C, 1);
    fn(Trans::Yes, Trans::Yes, 0, 0, 2, T(1), A, 1, B, 2, T(0), C, 1);
    for (T c : C) EXPECT_EQ(c, T(9));
    // K = 0: C = beta * C (the product is empty).
    for (Trans ta : {Trans::No, Trans::Yes})
      for (Trans tb : {Trans::No, Trans::Yes}) {
        T D[4] = {1, 2, 3, 4};
        // Tight leading dimensions: stored A is 2x0 or 0x2, stored B is 0x2 or 2x0.
        const int64_t lda = ta == Trans::No ? 0 : 2, ldb = tb == Trans::No ? 2 : 0;
        fn(ta, tb, 2, 2, 0, T(3), A, lda, B, ldb, T(0.5), D, 2);
        EXPECT_EQ(D[0], T(0.5));
        EXPECT_EQ(D[1], T(1));
        EXPECT_EQ(D[2], T(1.5));
        EXPECT_EQ(D[3], T(2));
      }
  }
}

TYPED_TEST(GemmTest, InvalidArgumentsThrow) {
  using T = TypeParam;
  std::vector<T> A(64, T(1)), B(64, T(1)), C(64, T(0));
  for (auto* fn : {&gemm<T>, &gemm_naive<T>}) {
    EXPECT_MOE_ERROR(
        fn(Trans::No, Trans::No, -1, 2, 2, T(1), A.data(), 2, B.data(), 2, T(0), C.data(), 2),
        "negative size", "M=-1");
    EXPECT_MOE_ERROR(
        fn(Trans::No, Trans::No, 2, -3, 2, T(1), A.data(), 2, B.data(), 2, T(0), C.data(), 2),
        "negative size", "N=-3");
    EXPECT_MOE_ERROR(
        fn(Trans::No, Trans::No, 2, 2, -4, T(1), A.data(), 2, B.data(), 2, T(0), C.data(), 2),
        "negative size", "K=-4");
    // M=3, N=4, K=5. lda: No -> >= K, Yes -> >= M. ldb: No -> >= N, Yes -> >= K. ldc >= N.
    EXPECT_MOE_ERROR(
        fn(Trans::No, Trans::No, 3, 4, 5, T(1), A.data(), 4, B.data(), 4, T(0), C.data(), 4),
        "leading dimension", "lda=4");
    EXPECT_MOE_ERROR(
        fn(Trans::Yes, Trans::No, 3, 4, 5, T(1), A.data(), 2, B.data(), 4, T(0), C.data(), 4),
        "leading dimension", "lda=2");
    EXPECT_MOE_ERROR(
        fn(Trans::No, Trans::No, 3, 4, 5, T(1), A.data(), 5, B.data(), 3, T(0), C.data(), 4),
        "leading dimension", "ldb=3");
    EXPECT_MOE_ERROR(
        fn(Trans::No, Trans::Yes, 3, 4, 5, T(1), A.data(), 5, B.data(), 4, T(0), C.data(), 4),
        "leading dimension", "ldb=4");
    EXPECT_MOE_ERROR(
        fn(Trans::No, Trans::No, 3, 4, 5, T(1), A.data(), 5, B.data(), 4, T(0), C.data(), 3),
        "leading dimension", "ldc=3");
    // The tight leading dimensions of every transpose combination are accepted.
    EXPECT_NO_THROW(
        fn(Trans::No, Trans::No, 3, 4, 5, T(1), A.data(), 5, B.data(), 4, T(0), C.data(), 4));
    EXPECT_NO_THROW(
        fn(Trans::Yes, Trans::Yes, 3, 4, 5, T(1), A.data(), 3, B.data(), 5, T(0), C.data(), 4));
  }
}

TEST(GemmNaive, HandComputed2x2) {
  // A = [[1,2],[3,4]], B = [[5,6],[7,8]], C0 = all ones, alpha = 2, beta = 0.5.
  const double A[4] = {1, 2, 3, 4}, B[4] = {5, 6, 7, 8};
  struct Expect {
    Trans ta, tb;
    double prod[4];
  };
  const Expect cases[] = {
      {Trans::No, Trans::No, {19, 22, 43, 50}},    // A B
      {Trans::Yes, Trans::No, {26, 30, 38, 44}},   // A^T B
      {Trans::No, Trans::Yes, {17, 23, 39, 53}},   // A B^T
      {Trans::Yes, Trans::Yes, {23, 31, 34, 46}},  // A^T B^T
  };
  for (const auto& c : cases) {
    double C[4] = {1, 1, 1, 1};
    gemm_naive<double>(c.ta, c.tb, 2, 2, 2, 2.0, A, 2, B, 2, 0.5, C, 2);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(C[i], 2 * c.prod[i] + 0.5) << "case " << &c - cases;
    float Cf[4] = {1, 1, 1, 1};
    const float Af[4] = {1, 2, 3, 4}, Bf[4] = {5, 6, 7, 8};
    gemm<float>(c.ta, c.tb, 2, 2, 2, 2.0f, Af, 2, Bf, 2, 0.5f, Cf, 2);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(Cf[i], static_cast<float>(2 * c.prod[i] + 0.5));
  }
}

// ---------------------------------------------------------------------------------------------
// Rng

// Independent implementation of splitmix64 seeding + xoshiro256** (Blackman & Vigna), to check
// the library's generator is the published algorithm.
struct RefXoshiro {
  uint64_t s[4];
  explicit RefXoshiro(uint64_t seed) {
    for (auto& w : s) {
      seed += 0x9E3779B97F4A7C15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      w = z ^ (z >> 31);
    }
  }
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t next() {
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
};

TEST(Rng, PinnedValuesForSeed42) {
  // Pinned once from this implementation: if these change, the generator (or its seeding)
  // changed, which silently changes every seeded run, init and fixture. Change deliberately.
  Rng r(42);
  EXPECT_EQ(r.next_u64(), 1546998764402558742ull);
  EXPECT_EQ(r.next_u64(), 6990951692964543102ull);
  Rng u(42);
  EXPECT_DOUBLE_EQ(u.uniform(), 0.083862971059882163);
  Rng n(42);
  EXPECT_NEAR(n.normal(), -1.6132237513849161, 1e-12);  // r cos(theta)
  EXPECT_NEAR(n.normal(), 1.5344873235334195, 1e-12);   // the cached r sin(theta)
  // Known splitmix64 output for seed 0 (the published test value).
  EXPECT_EQ(Rng(0).state().s[0], 0xE220A8397B1DCDAFull);
}

TEST(Rng, MatchesReferenceXoshiro256StarStar) {
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xDEADBEEFull, ~0ull}) {
    Rng r(seed);
    RefXoshiro ref(seed);
    for (int i = 0; i < 1000; ++i)
      ASSERT_EQ(r.next_u64(), ref.next()) << "seed " << seed << " i " << i;
  }
}

TEST(Rng, SameSeedSameSequenceDifferentSeedsDiffer) {
  Rng a(123), b(123), c(124);
  int equal_to_c = 0;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = a.next_u64();
    ASSERT_EQ(x, b.next_u64());
    equal_to_c += x == c.next_u64();
  }
  EXPECT_EQ(equal_to_c, 0);
  Rng d(5), e(5);
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(d.normal(), e.normal());
    ASSERT_EQ(d.uniform(), e.uniform());
    ASSERT_EQ(d.below(17), e.below(17));
  }
  // reseed restarts the sequence and drops a cached normal.
  Rng f(9);
  const double first = f.normal();
  f.reseed(9);
  EXPECT_EQ(f.normal(), first);
  EXPECT_FALSE(Rng(9).state().has_spare);
}

TEST(Rng, UniformIsInUnitIntervalWithRightMoments) {
  Rng r(2024);
  const int n = 100000;
  double lo = 1, hi = 0, sum = 0, sum2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = r.uniform();
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
    sum2 += u * u;
  }
  EXPECT_GE(lo, 0.0);
  EXPECT_LT(hi, 1.0);
  EXPECT_LT(lo, 1e-3);
  EXPECT_GT(hi, 1 - 1e-3);
  const double mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.005);
  EXPECT_NEAR(var, 1.0 / 12, 0.002);

  std::vector<float> buf(1000);
  r.fill_uniform(buf.data(), 1000, -3.0, -1.0);
  for (float x : buf) {
    EXPECT_GE(x, -3.0f);
    EXPECT_LE(x, -1.0f);
  }
}

TEST(Rng, NormalMoments) {
  Rng r(31337);
  const int n = 200000;
  double sum = 0, sum2 = 0, sum4 = 0;
  for (int i = 0; i < n; ++i) {
    const double x = r.normal();
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum2 += x * x;
    sum4 += x * x * x * x;
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_LT(std::abs(mean), 0.01);
  EXPECT_LT(std::abs(var - 1.0), 0.02);
  EXPECT_NEAR(sum4 / n, 3.0, 0.1);  // Gaussian kurtosis

  std::vector<double> buf(100000);
  r.fill_normal(buf.data(), static_cast<int64_t>(buf.size()), 5.0, 0.5);
  double s = 0, s2 = 0;
  for (double x : buf) {
    s += x;
    s2 += x * x;
  }
  const double m = s / buf.size();
  EXPECT_NEAR(m, 5.0, 0.01);
  EXPECT_NEAR(std::sqrt(s2 / buf.size() - m * m), 0.5, 0.01);
}

TEST(Rng, BelowInRangeAndRoughlyUniform) {
  Rng r(77);
  const int n = 100000;
  int counts[10] = {};
  for (int i = 0; i < n; ++i) {
    const uint64_t k = r.below(10);
    ASSERT_LT(k, 10u);
    ++counts[k];
  }
  for (int c : counts) EXPECT_NEAR(c, n / 10, n / 10 * 0.05);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(r.below(1), 0u);
  const uint64_t big = (1ull << 40) + 3;
  uint64_t max_seen = 0;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t k = r.below(big);
    ASSERT_LT(k, big);
    max_seen = std::max(max_seen, k);
  }
  EXPECT_GT(max_seen, big / 2);  // uses the high range too
}

TEST(Rng, StateRoundTripIncludingCachedNormal) {
  Rng r(555);
  for (int i = 0; i < 10; ++i) r.next_u64();
  r.normal();  // leaves a spare normal cached
  ASSERT_TRUE(r.state().has_spare);
  const Rng::State saved = r.state();

  auto draw = [](Rng& g) {
    std::vector<double> out;
    for (int i = 0; i < 50; ++i) {
      out.push_back(g.normal());
      out.push_back(g.uniform());
      out.push_back(static_cast<double>(g.below(1000)));
    }
    return out;
  };
  const std::vector<double> first = draw(r);
  r.set_state(saved);
  EXPECT_EQ(draw(r), first);

  Rng other(1);
  other.set_state(saved);
  EXPECT_EQ(draw(other), first);

  // The very first normal after restoring is the cached spare, not a fresh pair.
  Rng third(2);
  third.set_state(saved);
  EXPECT_EQ(third.normal(), saved.spare_normal);
  EXPECT_EQ(third.state().s, saved.s);  // no generator draw for the spare
}

// ---------------------------------------------------------------------------------------------
// bf16 / f16 conversions

TEST(Bf16, ExactValuesRoundingAndSpecials) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(-2.5f), 0xC020);
  EXPECT_EQ(float_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(bf16_to_float(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xC020), -2.5f);
  for (float x : {1.0f, -2.5f, 0.15625f, 3.0e38f, -1.0e-38f, 256.0f, 0.0078125f}) {
    const float rounded = bf16_to_float(float_to_bf16(x));
    EXPECT_EQ(bf16_to_float(float_to_bf16(rounded)), rounded);  // idempotent
  }
  // Ties to even: 1 + 2^-8 is halfway between 1 (even) and 1 + 2^-7 (odd).
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3F80);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);
  // Just above the tie rounds up, just below rounds down.
  EXPECT_EQ(float_to_bf16(std::nextafter(1.0f + 0x1p-8f, 2.0f)), 0x3F81);
  EXPECT_EQ(float_to_bf16(std::nextafter(1.0f + 3 * 0x1p-8f, 0.0f)), 0x3F81);
  // Specials.
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(float_to_bf16(inf), 0x7F80);
  EXPECT_EQ(float_to_bf16(-inf), 0xFF80);
  EXPECT_EQ(bf16_to_float(0x7F80), inf);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload lives only in the low 16 bits must not become inf.
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(float_of(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(float_of(0xFF800001u)))));
  // Values past the largest bf16 round to inf.
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
}

TEST(Bf16, ExhaustiveRoundTripAndTies) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const auto b = static_cast<uint16_t>(h);
    const float f = bf16_to_float(b);
    ASSERT_EQ(bits_of(f), h << 16);
    if (std::isnan(f))
      ASSERT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f)))) << h;
    else
      ASSERT_EQ(float_to_bf16(f), b) << h;
  }
  // Every midpoint between consecutive finite bf16 values rounds to the even neighbour, and
  // its float neighbours round to the nearer one.
  for (uint32_t h = 0; h < 0x7F7F; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const float lo = bf16_to_float(static_cast<uint16_t>(h | sign));
      const float hi = bf16_to_float(static_cast<uint16_t>((h + 1) | sign));
      const float mid = lo / 2 + hi / 2;
      const uint16_t even = static_cast<uint16_t>(((h & 1) ? h + 1 : h) | sign);
      ASSERT_EQ(float_to_bf16(mid), even) << h;
      ASSERT_EQ(float_to_bf16(std::nextafter(mid, lo)), static_cast<uint16_t>(h | sign)) << h;
      ASSERT_EQ(float_to_bf16(std::nextafter(mid, hi)), static_cast<uint16_t>((h + 1) | sign)) << h;
    }
  }
}

TEST(F16, ExactValuesRoundingAndSpecials) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(float_to_f16(-2.5f), 0xC100);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_f16(0.0f), 0x0000);
  EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f16_to_float(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_float(0xC100), -2.5f);
  EXPECT_EQ(f16_to_float(0x7BFF), 65504.0f);
  // Subnormals.
  EXPECT_EQ(float_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(f16_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_float(0x03FF), 1023 * 0x1p-24f);
  EXPECT_EQ(float_to_f16(1023 * 0x1p-24f), 0x03FF);
  EXPECT_EQ(float_to_f16(0x1p-14f), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_f16(-3 * 0x1p-24f), 0x8003);
  // Ties to even, normal range: 1 + 2^-11 is halfway between 1 (even) and 1 + 2^-10.
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f), 0x3C00);
  EXPECT_EQ(float_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(float_to_f16(std::nextafter(1.0f + 0x1p-11f, 2.0f)), 0x3C01);
  // Ties to even, subnormal range: 2^-25 -> 0, 1.5 * 2^-24 -> 2 units, 2.5 * 2^-24 -> 2 units.
  EXPECT_EQ(float_to_f16(0x1p-25f), 0x0000);
  EXPECT_EQ(float_to_f16(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(float_to_f16(1.5f * 0x1p-24f), 0x0002);
  EXPECT_EQ(float_to_f16(2.5f * 0x1p-24f), 0x0002);
  EXPECT_EQ(float_to_f16(1e-10f), 0x0000);
  // Overflow: 65520 is halfway between 65504 (odd) and 65536 (too big) -> inf.
  EXPECT_EQ(float_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7C00);
  EXPECT_EQ(float_to_f16(1e6f), 0x7C00);
  EXPECT_EQ(float_to_f16(-1e6f), 0xFC00);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(float_to_f16(inf), 0x7C00);
  EXPECT_EQ(float_to_f16(-inf), 0xFC00);
  EXPECT_EQ(f16_to_float(0x7C00), inf);
  EXPECT_EQ(f16_to_float(0xFC00), -inf);
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(float_of(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(f16_to_float(0x7C01)));
}

TEST(F16, ExhaustiveRoundTripAndTies) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const auto b = static_cast<uint16_t>(h);
    const float f = f16_to_float(b);
    if (std::isnan(f)) {
      ASSERT_EQ(h & 0x7C00u, 0x7C00u);
      ASSERT_TRUE(std::isnan(f16_to_float(float_to_f16(f)))) << h;
    } else {
      ASSERT_EQ(float_to_f16(f), b) << h;
    }
  }
  // Value check of the decoder against the definition.
  for (uint32_t h = 0; h < 0x7C00u; ++h) {
    const uint32_t e = h >> 10, m = h & 0x3FFu;
    const double want = e == 0 ? std::ldexp(static_cast<double>(m), -24)
                               : std::ldexp(1.0 + m / 1024.0, static_cast<int>(e) - 15);
    ASSERT_EQ(static_cast<double>(f16_to_float(static_cast<uint16_t>(h))), want) << h;
  }
  // Midpoints between consecutive finite f16 values (subnormal and normal) round to even.
  for (uint32_t h = 0; h < 0x7BFF; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const float lo = f16_to_float(static_cast<uint16_t>(h | sign));
      const float hi = f16_to_float(static_cast<uint16_t>((h + 1) | sign));
      const float mid = lo / 2 + hi / 2;  // exact: f16 values have few significant bits
      const uint16_t even = static_cast<uint16_t>(((h & 1) ? h + 1 : h) | sign);
      ASSERT_EQ(float_to_f16(mid), even) << h;
      ASSERT_EQ(float_to_f16(std::nextafter(mid, lo)), static_cast<uint16_t>(h | sign)) << h;
      ASSERT_EQ(float_to_f16(std::nextafter(mid, hi)), static_cast<uint16_t>((h + 1) | sign)) << h;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// write_file_atomic

std::vector<std::string> entries_of(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(WriteFileAtomic, WritesAndOverwrites) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  const std::string first = "hello";
  write_file_atomic(path, first.data(), first.size());
  EXPECT_EQ(read_all(path), first);
  const std::string second("new\0content, longer than before", 31);
  write_file_atomic(path, second.data(), second.size());
  EXPECT_EQ(read_all(path), second);
  write_file_atomic(path, "", 0);
  EXPECT_EQ(read_all(path), "");
  EXPECT_EQ(entries_of(dir.path()), std::vector<std::string>{"out.bin"});  // no *.tmp.* left
}

TEST(WriteFileAtomic, MissingDirectoryThrowsAndLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("no_such_dir/out.bin");
  EXPECT_MOE_ERROR(write_file_atomic(path, "abc", 3), path);
  EXPECT_FALSE(fs::exists(dir.path() / "no_such_dir"));
  EXPECT_TRUE(entries_of(dir.path()).empty());
  SafeTensorsWriter w;
  const float x = 1;
  w.add("x", Shape{1}, &x, DType::F32);
  EXPECT_MOE_ERROR(w.write(path), path);
  EXPECT_TRUE(entries_of(dir.path()).empty());
}

TEST(WriteFileAtomic, RenameOntoADirectoryFailsAndCleansUp) {
  TempDir dir;
  fs::create_directories(dir.path() / "target" / "inner");  // a non-empty directory
  const std::string path = dir.file("target");
  EXPECT_MOE_ERROR(write_file_atomic(path, "abc", 3), path);
  EXPECT_EQ(entries_of(dir.path()), std::vector<std::string>{"target"});  // temp file removed
}

// Temporary files of writes killed before their rename (kill -9 during a checkpoint) are
// removed by the next successful write of the same target, unless their writer is alive.
TEST(WriteFileAtomic, RemovesStaleTempFilesOfDeadWriters) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  const test::LiveChild live;
  const std::string dead = fmt::format("out.bin.tmp.{}.0", test::dead_pid());
  const std::string dead2 = fmt::format("out.bin.tmp.{}.7", test::dead_pid());
  const std::string mine = fmt::format("out.bin.tmp.{}.999", ::getpid());  // not in flight
  const std::string alive = fmt::format("out.bin.tmp.{}.0", live.pid());
  const std::string other_target = fmt::format("other.bin.tmp.{}.0", test::dead_pid());
  // Not temporaries of out.bin: left alone.
  const std::vector<std::string> kept = {"out.bin.tmp.",    "out.bin.tmp.1.x", "out.bin.tmp.x.1",
                                         "out.bin.tmp.0.1", "out.bin.tmp.1",   "out.bin.tmp.1.2.3",
                                         "out.bin.tmpx"};
  for (const auto& name : {dead, dead2, mine, alive, other_target}) {
    write_bytes(dir.file(name), "x");
  }
  for (const auto& name : kept) write_bytes(dir.file(name), "x");
  write_file_atomic(path, "new", 3);
  EXPECT_EQ(read_all(path), "new");
  std::vector<std::string> expected = kept;
  expected.insert(expected.end(), {"out.bin", alive, other_target});
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(entries_of(dir.path()), expected);
  // The same through the safetensors writer.
  write_bytes(dir.file(dead), "x");
  SafeTensorsWriter w;
  const float x = 1;
  w.add("x", Shape{1}, &x, DType::F32);
  w.write(path);
  EXPECT_EQ(entries_of(dir.path()), expected);
}

TEST(WriteFileAtomic, FailedWriteRemovesNoStaleTempFiles) {
  TempDir dir;
  fs::create_directories(dir.path() / "target" / "inner");  // renaming onto it fails
  const std::string dead = fmt::format("target.tmp.{}.0", test::dead_pid());
  write_bytes(dir.file(dead), "x");
  EXPECT_MOE_ERROR(write_file_atomic(dir.file("target"), "abc", 3), "target");
  EXPECT_EQ(entries_of(dir.path()), (std::vector<std::string>{"target", dead}));
}

// ---------------------------------------------------------------------------------------------
// safetensors

class SafeTensorsTest : public ::testing::Test {
 protected:
  TempDir dir_;

  // Writes `bytes` to a file named `name` and returns the path.
  std::string put(const std::string& name, const std::string& bytes) {
    const std::string p = dir_.file(name);
    write_bytes(p, bytes);
    return p;
  }
};

TEST_F(SafeTensorsTest, RoundTripAllDtypesShapesAndMetadata) {
  Rng rng(11);
  std::vector<float> f32(6);
  rng.fill_normal(f32.data(), 6);
  const std::vector<double> f64 = {0.1, -3.141592653589793, 1e-300, 12345.678901234567};
  std::vector<float> bf(6);
  rng.fill_normal(bf.data(), 6, 0.0, 10.0);
  const std::vector<float> f16 = {1.0f, -2.5f, 65504.0f, 0.3f, 0x1p-24f, -1234.567f};
  const std::vector<float> ints = {1, -2, 300000};
  const std::vector<double> empty;

  SafeTensorsWriter w;
  w.add("layer.f32", Shape{2, 3}, f32.data(), DType::F32);
  w.add("layer.f64", Shape{4}, f64.data(), DType::F64);
  w.add("bf16", Shape{3, 1, 2}, bf.data(), DType::BF16);
  w.add("f16", Shape{6}, f16.data(), DType::F16);
  w.add("i32", Shape{3}, ints.data(), DType::I32);
  w.add("empty", Shape{0, 3}, empty.data(), DType::F64);
  w.set_metadata("format", "pt");
  w.set_metadata("config", R"({"a": 1, "b": [2, 3]})");
  const std::string path = dir_.file("model.safetensors");
  w.write(path);

  const SafeTensorsFile f = SafeTensorsFile::open(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.names(),
            (std::vector<std::string>{"bf16", "empty", "f16", "i32", "layer.f32", "layer.f64"}));
  EXPECT_TRUE(f.has("layer.f32"));
  EXPECT_FALSE(f.has("nope"));
  EXPECT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata("format"), "pt");
  EXPECT_EQ(f.metadata("config"), R"({"a": 1, "b": [2, 3]})");

  EXPECT_EQ(f.entry("layer.f32").dtype, DType::F32);
  EXPECT_EQ(f.entry("layer.f32").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.entry("bf16").dtype, DType::BF16);
  EXPECT_EQ(f.entry("bf16").shape, (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(f.entry("f16").dtype, DType::F16);
  EXPECT_EQ(f.entry("layer.f64").dtype, DType::F64);
  EXPECT_EQ(f.entry("empty").shape, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(f.entry("f16").end - f.entry("f16").begin, 12);

  const Tensor<float> t32 = f.read<float>("layer.f32");
  EXPECT_TRUE(t32.shape() == Shape({2, 3}));
  EXPECT_EQ(t32.buffer(), f32);  // exact
  const Tensor<double> t32d = f.read<double>("layer.f32", Shape{2, 3});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t32d[i], static_cast<double>(f32[i]));

  const Tensor<double> t64 = f.read<double>("layer.f64", Shape{4});
  EXPECT_EQ(t64.buffer(), f64);  // exact
  const Tensor<float> t64f = f.read<float>("layer.f64");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(t64f[i], static_cast<float>(f64[i]));

  const Tensor<float> tbf = f.read<float>("bf16");
  EXPECT_TRUE(tbf.shape() == Shape({3, 1, 2}));
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(tbf[i], bf16_to_float(float_to_bf16(bf[i])));
    EXPECT_LE(std::abs(tbf[i] - bf[i]), std::abs(bf[i]) * 0x1p-8f) << i;
  }
  std::vector<double> f16_back(6);
  f.read_into("f16", Shape{6}, f16_back.data());
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(f16_back[i], static_cast<double>(f16_to_float(float_to_f16(f16[i]))));
    EXPECT_LE(std::abs(f16_back[i] - f16[i]), std::abs(f16[i]) * 0x1p-11) << i;
  }
  EXPECT_EQ(f16_back[0], 1.0);
  EXPECT_EQ(f16_back[1], -2.5);
  EXPECT_EQ(f16_back[2], 65504.0);
  EXPECT_EQ(f16_back[4], 0x1p-24);

  const Tensor<double> ti = f.read<double>("i32");
  EXPECT_EQ(ti.buffer(), (std::vector<double>{1, -2, 300000}));
  EXPECT_EQ(f.read<float>("empty").numel(), 0);

  // A copy keeps the mapping alive after the original is gone.
  SafeTensorsFile copy = [&] {
    const SafeTensorsFile tmp = SafeTensorsFile::open(path);
    return tmp;
  }();
  EXPECT_EQ(copy.read<float>("layer.f32").buffer(), f32);
}

TEST_F(SafeTensorsTest, FileLayoutFollowsTheFormat) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f};
  const std::vector<double> b = {0.5, 7.0};
  SafeTensorsWriter w;
  w.add("a", Shape{3}, a.data(), DType::F32);
  w.add("b", Shape{1, 2}, b.data(), DType::F64);
  w.set_metadata("k", "v");
  const std::string path = dir_.file("layout.safetensors");
  w.write(path);

  const std::string bytes = read_all(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ((8 + n) % 8, 0u);  // data is 8-byte aligned
  ASSERT_EQ(bytes.size(), 8 + n + 3 * 4 + 2 * 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["k"], "v");
  EXPECT_EQ(header["a"]["dtype"], "F32");
  EXPECT_EQ(header["a"]["shape"], nlohmann::json::array({3}));
  EXPECT_EQ(header["b"]["dtype"], "F64");
  EXPECT_EQ(header["b"]["shape"], nlohmann::json::array({1, 2}));
  const auto ao = header["a"]["data_offsets"].get<std::vector<uint64_t>>();
  const auto bo = header["b"]["data_offsets"].get<std::vector<uint64_t>>();
  ASSERT_EQ(ao.size(), 2u);
  ASSERT_EQ(bo.size(), 2u);
  EXPECT_EQ(ao[1] - ao[0], 12u);
  EXPECT_EQ(bo[1] - bo[0], 16u);
  // Raw little-endian payloads at the stated offsets.
  const std::string data = bytes.substr(8 + n);
  EXPECT_EQ(data.substr(ao[0], 12), float_bytes({1.5f, -2.0f, 3.25f}));
  double b_read[2];
  std::memcpy(b_read, data.data() + bo[0], 16);
  EXPECT_EQ(b_read[0], 0.5);
  EXPECT_EQ(b_read[1], 7.0);
  // The whole data section is covered, without holes.
  EXPECT_EQ(std::min(ao[0], bo[0]), 0u);
  EXPECT_EQ(std::max(ao[1], bo[1]), data.size());
}

TEST_F(SafeTensorsTest, ReadsAHandCraftedFile) {
  // As another producer (e.g. Python) would write it: no padding, keys in any order.
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]},)"
      R"("s":{"data_offsets":[0,8],"shape":[],"dtype":"F64"},"__metadata__":{"step":"3"}})";
  std::string data(8, '\0');
  const double s = -0.125;
  std::memcpy(&data[0], &s, 8);
  data += float_bytes({1, 2, 3, 4});
  const std::string path = put("crafted.safetensors", craft_safetensors(header, data));
  const SafeTensorsFile f = SafeTensorsFile::open(path);
  EXPECT_EQ(f.metadata("step"), "3");
  EXPECT_EQ(f.read<double>("w", Shape{2, 2}).buffer(), (std::vector<double>{1, 2, 3, 4}));
  const Tensor<float> sc = f.read<float>("s");  // a scalar
  EXPECT_EQ(sc.shape().ndim, 0);
  ASSERT_EQ(sc.numel(), 1);
  EXPECT_EQ(sc[0], -0.125f);
}

TEST_F(SafeTensorsTest, WrongExpectedShapeMissingTensorAndMetadata) {
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  SafeTensorsWriter w;
  w.add("experts.0.w1", Shape{2, 3}, a.data(), DType::F32);
  EXPECT_MOE_ERROR(w.add("experts.0.w1", Shape{2, 3}, a.data(), DType::F32), "experts.0.w1",
                   "twice");
  const std::string path = dir_.file("shapes.safetensors");
  w.write(path);
  const SafeTensorsFile f = SafeTensorsFile::open(path);
  std::vector<float> out(6);
  EXPECT_MOE_ERROR(f.read_into("experts.0.w1", Shape{3, 2}, out.data()), path, "'experts.0.w1'",
                   "[2,3]", "[3,2]");
  EXPECT_MOE_ERROR(f.read_into("experts.0.w1", Shape{6}, out.data()), path, "[2,3]", "[6]");
  EXPECT_MOE_ERROR(f.read<double>("experts.0.w1", Shape{2, 3, 1}), path, "[2,3,1]");
  EXPECT_MOE_ERROR(f.read<float>("experts.1.w1"), path, "missing tensor", "'experts.1.w1'");
  EXPECT_MOE_ERROR(f.entry("router.weight"), path, "'router.weight'");
  EXPECT_MOE_ERROR(f.metadata("config"), path, "__metadata__", "'config'");
  EXPECT_MOE_ERROR(SafeTensorsFile::open(dir_.file("absent.safetensors")),
                   dir_.file("absent.safetensors"), "cannot open");
}

TEST_F(SafeTensorsTest, EmptyAndShortFiles) {
  const std::string empty = put("empty.safetensors", "");
  EXPECT_MOE_ERROR(SafeTensorsFile::open(empty), empty, "truncated", "0 bytes");
  const std::string shortf = put("short.safetensors", std::string("\x05\0\0\0\0", 5));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(shortf), shortf, "truncated", "5 bytes");
}

TEST_F(SafeTensorsTest, HeaderLengthPastTheEnd) {
  std::string bytes = craft_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                        float_bytes({1}));
  // Claim a header longer than the rest of the file.
  const uint64_t bogus = bytes.size();  // > size - 8
  for (int i = 0; i < 8; ++i)
    bytes[static_cast<size_t>(i)] = static_cast<char>((bogus >> (8 * i)) & 0xff);
  const std::string p = put("hlen.safetensors", bytes);
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p), p, "truncated", "header length");
  // An absurd length (would overflow 8 + N) is rejected the same way.
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>(0xff);
  const std::string p2 = put("hlen2.safetensors", bytes);
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p2), p2, "truncated", "header length");
}

TEST_F(SafeTensorsTest, HeaderNotJsonOrNotAnObject) {
  const std::string p = put("nojson.safetensors", craft_safetensors("{\"a\": [1, 2", ""));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p), p, "JSON");
  const std::string p2 = put("array.safetensors", craft_safetensors("[1, 2, 3]", ""));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p2), p2, "not a JSON object");
  const std::string p3 = put("zerolen.safetensors", craft_safetensors("", "abc"));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p3), p3, "JSON");
}

TEST_F(SafeTensorsTest, TruncatedData) {
  const std::vector<float> a = {1, 2, 3}, b = {4, 5};
  SafeTensorsWriter w;
  w.add("first", Shape{3}, a.data(), DType::F32);
  w.add("second", Shape{2}, b.data(), DType::F32);
  const std::string path = dir_.file("trunc.safetensors");
  w.write(path);
  ASSERT_NO_THROW(SafeTensorsFile::open(path));
  const std::string bytes = read_all(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 3));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(path), path, "'second'", "past the end", "truncated");
}

TEST_F(SafeTensorsTest, BadEntries) {
  const std::string data = float_bytes({1, 2, 3, 4});
  struct Bad {
    const char* name;
    std::string header;
    std::vector<std::string> parts;
  };
  const Bad bad[] = {
      {"dtype", R"({"q":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})", {"'q'", "Q4"}},
      {"dtype_type", R"({"q":{"dtype":4,"shape":[4],"data_offsets":[0,16]}})", {"'q'", "dtype"}},
      {"size",
       R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})",
       {"'w'", "16 bytes", "needs 12"}},
      {"size_f16",
       R"({"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,16]}})",
       {"'w'", "needs 8"}},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       {"'b'", "overlaps"}},
      {"missing_field", R"({"w":{"dtype":"F32","shape":[4]}})", {"'w'", "data_offsets"}},
      {"not_object", R"({"w":[1,2]})", {"'w'"}},
      {"negative_dim",
       R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})",
       {"'w'", "shape"}},
      {"float_dim",
       R"({"w":{"dtype":"F32","shape":[4.0],"data_offsets":[0,16]}})",
       {"'w'", "shape"}},
      {"shape_not_array",
       R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})",
       {"'w'", "shape"}},
      {"reversed",
       R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
       {"'w'", "reversed"}},
      {"negative_offset",
       R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
       {"'w'", "data_offsets"}},
      {"three_offsets",
       R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})",
       {"'w'", "data_offsets"}},
      {"past_end",
       R"({"w":{"dtype":"F32","shape":[5],"data_offsets":[0,20]}})",
       {"'w'", "past the end"}},
      {"metadata_not_string", R"({"__metadata__":{"step":3}})", {"__metadata__", "step"}},
      {"metadata_not_object", R"({"__metadata__":[1]})", {"__metadata__"}},
  };
  for (const auto& b : bad) {
    SCOPED_TRACE(b.name);
    const std::string p =
        put(std::string(b.name) + ".safetensors", craft_safetensors(b.header, data));
    try {
      SafeTensorsFile::open(p);
      ADD_FAILURE() << "opened a bad file";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p), std::string::npos) << msg;
      for (const auto& part : b.parts)
        EXPECT_NE(msg.find(part), std::string::npos) << "'" << msg << "' lacks '" << part << "'";
    } catch (const std::exception& e) {
      ADD_FAILURE() << "non-moe exception: " << e.what();
    }
  }
}

TEST_F(SafeTensorsTest, OverlapDetectedWhateverTheOrder) {
  const std::string data = float_bytes({1, 2, 3, 4, 5, 6});
  // Identical spans, and one span inside another.
  const std::string h1 = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("y":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string h2 = R"({"big":{"dtype":"F32","shape":[6],"data_offsets":[0,24]},)"
                         R"("small":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  const std::string p1 = put("ov1.safetensors", craft_safetensors(h1, data));
  const std::string p2 = put("ov2.safetensors", craft_safetensors(h2, data));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p1), p1, "overlaps");
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p2), p2, "overlaps");
  // Adjacent spans are fine.
  const std::string h3 = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                         R"("y":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_NO_THROW(SafeTensorsFile::open(
      put("ok.safetensors", craft_safetensors(h3, float_bytes({1, 2, 3, 4})))));
  // The format requires the tensors to tile the data section: holes and trailing bytes fail.
  const std::string hole = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("y":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})";
  const std::string p4 = put("hole.safetensors", craft_safetensors(hole, data));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p4), p4, "'y'");
  const std::string p5 = put("tail.safetensors", craft_safetensors(h3, data));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p5), p5, "after the last tensor");
}

// Regression (was a bug in SafeTensorsFile::open, the data_offsets checks): offsets were read as
// uint64 and then converted to int64_t, so an offset >= 2^63 becomes negative. With data_offsets
// [2^64-4, 4] the begin is -4, "begin > end" is false, end <= data size, and end - begin == 8 == 2
// x F32, so the file is accepted and raw() points 4 bytes before the data section (a larger wrap
// reads arbitrarily far out of the mapping). open() must reject it: begin is now checked as uint64.
TEST_F(SafeTensorsTest, HugeDataOffsetIsRejected) {
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551612,4]}})";
  const std::string p = put("wrap.safetensors", craft_safetensors(header, float_bytes({1, 2})));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p), p, "'w'");
}

// Regression (was a bug in SafeTensorsFile::open's byte-size check): numel() * dtype_size() was
// computed in int64_t without an overflow
// check. Shape [2^62] of F32 needs 2^64 bytes, which wraps (signed overflow, UB) to 0, so a
// tensor with data_offsets [0, 0] is accepted; read_into() then copies 2^62 elements from an
// empty span. open() must reject it: the size arithmetic is now overflow-checked.
TEST_F(SafeTensorsTest, ShapeWhoseByteSizeOverflowsIsRejected) {
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})";
  const std::string p = put("ovf.safetensors", craft_safetensors(header, ""));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p), p, "'w'");
  const std::string header2 =
      R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})";
  const std::string p2 = put("ovf2.safetensors", craft_safetensors(header2, ""));
  EXPECT_MOE_ERROR(SafeTensorsFile::open(p2), p2, "'w'");
}

// Regression (was a diagnostics bug): open() accepted a 5-d tensor, and reading it threw
// "src/core/tensor.cpp:N: Shape: at most 4 dimensions, got 5" from Shape::from, which names
// neither the file nor the tensor, against the header's promise that every problem is an
// error naming both. open() now rejects it naming file and tensor.
TEST_F(SafeTensorsTest, TooManyDimensionsNamesFileAndTensor) {
  const std::string header = R"({"conv":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[0,8]}})";
  const std::string p = put("5d.safetensors", craft_safetensors(header, float_bytes({1, 2})));
  EXPECT_MOE_ERROR(
      {
        const SafeTensorsFile f = SafeTensorsFile::open(p);
        f.read<float>("conv");
      },
      p, "'conv'");
}

// ---------------------------------------------------------------------------------------------
// ParamSet

template <class T>
class ParamSetTest : public ::testing::Test {};
using ParamTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ParamSetTest, ParamTypes);

TYPED_TEST(ParamSetTest, ContiguousOffsetsPointersAndZeroGrad) {
  using T = TypeParam;
  ParamSet<T> ps;
  ps.declare("router.weight", Shape{2, 3});
  ps.declare("experts.0.w1", Shape{3});
  ps.declare("experts.0.w2", Shape{3, 2});
  ps.declare("scalar", Shape{});
  EXPECT_MOE_ERROR(ps.declare("experts.0.w1", Shape{1}), "'experts.0.w1'", "twice");
  ps.allocate();
  EXPECT_EQ(ps.numel(), 6 + 3 + 6 + 1);
  ASSERT_EQ(ps.specs().size(), 4u);
  const int64_t want_off[] = {0, 6, 9, 15};
  const char* want_name[] = {"router.weight", "experts.0.w1", "experts.0.w2", "scalar"};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(ps.specs()[i].name, want_name[i]);
    EXPECT_EQ(ps.specs()[i].offset, want_off[i]);
  }
  EXPECT_TRUE(ps.spec("experts.0.w2").shape == Shape({3, 2}));
  EXPECT_TRUE(ps.has("scalar"));
  EXPECT_FALSE(ps.has("nope"));
  EXPECT_EQ(ps.find("nope"), nullptr);
  EXPECT_EQ(ps.offset_or_none("experts.0.w2"), 9);
  EXPECT_EQ(ps.offset_or_none("nope"), -1);
  EXPECT_EQ(ps.value("router.weight"), ps.values().data());
  EXPECT_EQ(ps.value("experts.0.w1"), ps.values().data() + 6);
  EXPECT_EQ(ps.grad("experts.0.w2"), ps.grads().data() + 9);
  EXPECT_EQ(ps.grad("scalar"), ps.grads().data() + 15);
  const ParamSet<T>& cps = ps;
  EXPECT_EQ(cps.grad("experts.0.w2"), ps.grads().data() + 9);
  EXPECT_NE(ps.values().data(), ps.grads().data());
  for (T v : ps.values()) EXPECT_EQ(v, T(0));
  for (T g : ps.grads()) EXPECT_EQ(g, T(0));

  View<T> wv = ps.value_view("experts.0.w2");
  EXPECT_TRUE(wv.shape == Shape({3, 2}));
  EXPECT_TRUE(wv.contiguous());
  wv.at(2, 1) = T(7);
  EXPECT_EQ(ps.values()[9 + 5], T(7));
  View<T> gv = ps.grad_view("router.weight");
  EXPECT_TRUE(gv.shape == Shape({2, 3}));
  gv.at(1, 0) = T(3);
  EXPECT_EQ(ps.grads()[3], T(3));
  for (auto& g : ps.grads()) g = T(1.5);
  ps.zero_grad();
  for (T g : ps.grads()) EXPECT_EQ(g, T(0));
  EXPECT_EQ(ps.values()[14], T(7));  // values untouched

  EXPECT_MOE_ERROR(ps.value("router.bias"), "'router.bias'");
  EXPECT_MOE_ERROR(ps.grad("w3"), "'w3'");
  EXPECT_MOE_ERROR(ps.spec("w4"), "'w4'");
  EXPECT_MOE_ERROR(ps.declare("late", Shape{2}), "'late'", "after allocate");
}

// ---------------------------------------------------------------------------------------------
// Threads

TEST(Parallel, SetNumThreads) {
  const int saved = num_threads();
  ASSERT_GE(saved, 1);
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  int team = 0;
#pragma omp parallel
  {
#pragma omp single
    team = omp_get_num_threads();
  }
  EXPECT_EQ(team, 1);
  set_num_threads(0);  // <= 0 leaves the setting alone
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(-3);
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(3);
  EXPECT_EQ(num_threads(), 3);
  // GEMM still agrees with the oracle after the thread count changed.
  std::vector<double> A(40 * 30), B(30 * 20), C1(40 * 20), C2(40 * 20);
  Rng rng(3);
  rng.fill_normal(A.data(), 40 * 30);
  rng.fill_normal(B.data(), 30 * 20);
  gemm<double>(Trans::No, Trans::No, 40, 20, 30, 1.0, A.data(), 30, B.data(), 20, 0.0, C1.data(),
               20);
  gemm_naive<double>(Trans::No, Trans::No, 40, 20, 30, 1.0, A.data(), 30, B.data(), 20, 0.0,
                     C2.data(), 20);
  for (size_t i = 0; i < C1.size(); ++i) EXPECT_NEAR(C1[i], C2[i], 1e-12);
  set_num_threads(saved);
  EXPECT_EQ(num_threads(), saved);
}

}  // namespace
}  // namespace moe

// One UTF-8 encoder and one GPT-2 byte alphabet for the tokenizers and exporters.
TEST(Utf8, EncodeAndGpt2ByteAlphabet) {
  EXPECT_EQ(moe::utf8_encode(U'A'), "A");
  EXPECT_EQ(moe::utf8_encode(U'\u0120'), "\xC4\xA0");
  EXPECT_EQ(moe::utf8_encode(U'\u2581'), "\xE2\x96\x81");
  EXPECT_EQ(moe::utf8_encode(U'\U0001F600'), "\xF0\x9F\x98\x80");
  for (char32_t cp :
       {U'\x7F', U'\x80', U'\u07FF', U'\u0800', U'\uFFFF', U'\U00010000', U'\U0010FFFF'}) {
    const std::string s = moe::utf8_encode(cp);
    EXPECT_TRUE(moe::is_valid_utf8(s)) << static_cast<uint32_t>(cp);
    EXPECT_EQ(moe::utf8_sequence_length(s, 0), s.size());
  }
  const auto& t = moe::gpt2_byte_chars();
  EXPECT_EQ(t['!'], U'!');
  EXPECT_EQ(t[0xFF], U'\u00FF');
  EXPECT_EQ(t[0x00], U'\u0100');  // the first non-printable byte
  EXPECT_EQ(t[' '], U'\u0120');   // GPT-2's "Ġ"
  EXPECT_EQ(t['\n'], U'\u010A');  // "Ċ"
  EXPECT_EQ(t[0xAD], U'\u0143');  // the last of the 68 stand-ins
}
