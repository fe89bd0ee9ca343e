// Helpers shared by the tests: normalized error, random tensors, the finite-difference
// gradient check, checks on moe::Error messages, a temporary directory, and child processes
// (one that has exited, one that stays alive) whose pids name a temporary file's writer.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <vector>

#include "moe/cpu_features.h"
#include "moe/error.h"
#include "moe/linear.h"
#include "moe/rng.h"

namespace moe::test {

// The comparisons with fp32 references run BF16 weights on the exact path (x kept in fp32,
// linear.h); the bf16-GEMM path is tested against its own bound in test_quant_kernels.
struct ExactBf16Path {
  ExactBf16Path() { set_bf16_activations(false); }
  ~ExactBf16Path() { set_bf16_activations(cpu_features().bf16_gemm()); }
};

#ifdef MOE_FIXTURE_DIR
// tests/fixtures: the MOE_FIXTURE_DIR environment variable when set (a test binary run from
// another checkout, as the prebuilt CUDA tests on the GPU machine), else the build's path.
inline std::string fixture_dir() {
  const char* env = std::getenv("MOE_FIXTURE_DIR");
  return env && *env ? env : MOE_FIXTURE_DIR;
}
#endif

// ||a - b|| / ||b|| (absolute ||a - b|| when b is zero).
template <class A, class B>
double normalized_error(const A* a, const B* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <class A, class B>
void expect_close(const std::string& what, const A* a, const B* b, int64_t n, double tol) {
  const double err = normalized_error(a, b, n);
  EXPECT_LE(err, tol) << what << ": normalized error " << err << " over " << n << " values";
}

template <class T>
std::vector<T> random_vector(Rng& rng, int64_t n, double std = 1.0) {
  std::vector<T> v(static_cast<size_t>(n));
  rng.fill_normal(v.data(), n, 0.0, std);
  return v;
}

// Central differences of `loss` with respect to the n values at `p`, checked against the
// analytic gradient `grad`. Checks every coordinate when n <= max_coords, else a fixed random
// subset. Returns the normalized error over the checked coordinates.
inline double fd_gradient_error(double* p, const double* grad, int64_t n,
                                const std::function<double()>& loss, int64_t max_coords = 64,
                                double eps = 1e-6) {
  std::vector<int64_t> idx;
  if (n <= max_coords) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    Rng pick(12345 + static_cast<uint64_t>(n));
    for (int64_t i = 0; i < max_coords; ++i) idx.push_back(static_cast<int64_t>(pick.below(n)));
  }
  std::vector<double> num(idx.size()), ana(idx.size());
  for (size_t j = 0; j < idx.size(); ++j) {
    const int64_t i = idx[j];
    const double saved = p[i];
    p[i] = saved + eps;
    const double lp = loss();
    p[i] = saved - eps;
    const double lm = loss();
    p[i] = saved;
    num[j] = (lp - lm) / (2 * eps);
    ana[j] = grad[i];
  }
  return normalized_error(ana.data(), num.data(), static_cast<int64_t>(idx.size()));
}

// Runs fn, which must throw moe::Error whose message contains every one of `parts`; not
// throwing, throwing anything else, or a missing part is a test failure.
inline void expect_error(const std::function<void()>& fn,
                         std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos)
          << "message \"" << msg << "\" does not contain \"" << p << "\"";
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-moe exception: " << e.what();
    return;
  } catch (...) {
    ADD_FAILURE() << "threw something that is not a std::exception";
    return;
  }
  ADD_FAILURE() << "did not throw";
}

// The message of the moe::Error that fn throws, or "(no error)" when it throws none.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Writes `content` to `path`, creating its directories.
inline void write_file(const std::filesystem::path& path, const std::string& content) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

// A fresh directory under the system temp dir, named `tag`_<pid>_<counter> so it is unique per
// process and instance, and removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "moe_test") {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            (tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// Copies every file of the directory `from` (a fixture checkpoint) into `to`, for a test that
// edits its copy.
inline void copy_dir_files(const std::string& from, const TempDir& to) {
  for (const auto& e : std::filesystem::directory_iterator(from))
    std::filesystem::copy_file(e.path(), to.path() / e.path().filename());
}

// Rewrites dir/config.json through `edit`.
inline void edit_config(const TempDir& dir, const std::function<void(nlohmann::json&)>& edit) {
  std::ifstream in(dir.file("config.json"));
  nlohmann::json j = nlohmann::json::parse(in);
  edit(j);
  std::ofstream(dir.file("config.json")) << j.dump(2);
}

// The pid of a process that has exited and been reaped, as a writer killed mid-write leaves.
inline pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

// A child process that waits until destroyed: a concurrent writer that is still alive.
class LiveChild {
 public:
  LiveChild() : pid_(::fork()) {
    if (pid_ == 0) {
      for (;;) ::pause();
    }
  }
  ~LiveChild() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  LiveChild(const LiveChild&) = delete;
  LiveChild& operator=(const LiveChild&) = delete;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
};

}  // namespace moe::test

// expect_error on one statement, naming the statement in the failure's trace:
// EXPECT_MOE_ERROR(f(x), "part", ...).
#define EXPECT_MOE_ERROR(stmt, ...)                            \
  do {                                                         \
    SCOPED_TRACE(#stmt);                                       \
    ::moe::test::expect_error([&]() { stmt; }, {__VA_ARGS__}); \
  } while (0)
