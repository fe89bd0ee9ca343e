#include "moe/rope.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "moe/error.h"

namespace moe {

namespace {

constexpr std::pair<const char*, RopeType> kRopeTypes[] = {{"default", RopeType::Default},
                                                           {"linear", RopeType::Linear},
                                                           {"dynamic", RopeType::Dynamic},
                                                           {"yarn", RopeType::Yarn},
                                                           {"llama3", RopeType::Llama3}};

// The rotary dimension (fractional) that turns `rotations` times over `context` positions.
double yarn_correction_dim(double rotations, int dim, double theta, int context) {
  return dim * std::log(context / (rotations * 2 * std::numbers::pi)) / (2 * std::log(theta));
}

}  // namespace

double yarn_mscale(double scale, double m) {
  return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

const char* rope_type_name(RopeType t) {
  for (const auto& [name, type] : kRopeTypes)
    if (type == t) return name;
  return "default";
}

bool rope_type_from_name(const std::string& name, RopeType& out) {
  for (const auto& [n, type] : kRopeTypes)
    if (name == n) {
      out = type;
      return true;
    }
  return false;
}

int RopeScaling::context_length(int max_position_embeddings) const {
  if (!scaled()) return max_position_embeddings;
  const int original = original_max_position_embeddings > 0 ? original_max_position_embeddings
                                                            : max_position_embeddings;
  const double scaled_len = std::ceil(factor * original);
  return scaled_len > max_position_embeddings && scaled_len < (1 << 30)
             ? static_cast<int>(scaled_len)
             : max_position_embeddings;
}

void RopeScaling::validate(const std::string& where) const {
  if (!scaled()) return;
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: rope_scaling.{} {} (rope_type {})", where, key, why,
                            rope_type_name(type)));
  };
  if (!(factor >= 1) || !std::isfinite(factor))
    fail("factor", fmt::format("must be a finite number >= 1, got {}", factor));
  if (original_max_position_embeddings <= 0)
    fail("original_max_position_embeddings",
         fmt::format("must be positive, got {}", original_max_position_embeddings));
  if (type == RopeType::Yarn) {
    if (!(beta_fast > 0) || !std::isfinite(beta_fast))
      fail("beta_fast", fmt::format("must be positive, got {}", beta_fast));
    if (!(beta_slow > 0) || !std::isfinite(beta_slow))
      fail("beta_slow", fmt::format("must be positive, got {}", beta_slow));
    if (!(attention_factor >= 0) || !std::isfinite(attention_factor))
      fail("attention_factor", fmt::format("must be positive, got {}", attention_factor));
    if (!(mscale >= 0) || !std::isfinite(mscale))
      fail("mscale", fmt::format("must be non-negative, got {}", mscale));
    if (!(mscale_all_dim >= 0) || !std::isfinite(mscale_all_dim))
      fail("mscale_all_dim", fmt::format("must be non-negative, got {}", mscale_all_dim));
  }
  if (type == RopeType::Llama3) {
    if (!(low_freq_factor > 0) || !std::isfinite(low_freq_factor))
      fail("low_freq_factor", fmt::format("must be positive, got {}", low_freq_factor));
    if (!(high_freq_factor > low_freq_factor) || !std::isfinite(high_freq_factor))
      fail("high_freq_factor", fmt::format("= {} must be larger than low_freq_factor = {}",
                                           high_freq_factor, low_freq_factor));
  }
}

RopeFrequencies rope_frequencies(int dim, double theta, const RopeScaling& s, int64_t seq_len) {
  MOE_CHECK(dim > 0 && dim % 2 == 0, "rope_frequencies: dim {} must be positive and even", dim);
  const int half = dim / 2;
  RopeFrequencies f;
  f.inv_freq.resize(static_cast<size_t>(half));
  double base = theta;
  if (s.type == RopeType::Dynamic) {
    MOE_CHECK(dim > 2 && s.original_max_position_embeddings > 0,
              "rope_frequencies: dynamic NTK needs more than 2 dimensions and a context");
    const double M = s.original_max_position_embeddings;
    const double L = std::max<double>(static_cast<double>(seq_len), M);
    base =
        theta * std::pow(s.factor * L / M - (s.factor - 1), static_cast<double>(dim) / (dim - 2));
  }
  for (int i = 0; i < half; ++i) f.inv_freq[i] = std::pow(base, -2.0 * i / dim);
  switch (s.type) {
    case RopeType::Default:
    case RopeType::Dynamic:
      break;
    case RopeType::Linear:
      for (double& x : f.inv_freq) x /= s.factor;
      break;
    case RopeType::Yarn: {
      const int original = s.original_max_position_embeddings;
      double low = yarn_correction_dim(s.beta_fast, dim, theta, original);
      double high = yarn_correction_dim(s.beta_slow, dim, theta, original);
      if (s.truncate) low = std::floor(low), high = std::ceil(high);
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;  // no zero-width ramp
      for (int i = 0; i < half; ++i) {
        // ramp 0: extrapolate (the frequency as trained), 1: interpolate (divided by factor).
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        const double x = f.inv_freq[i];
        f.inv_freq[i] = x / s.factor * ramp + x * (1 - ramp);
      }
      if (s.attention_factor > 0)
        f.attention_factor = s.attention_factor;
      else if (s.mscale > 0 && s.mscale_all_dim > 0)
        f.attention_factor =
            yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim);
      else
        f.attention_factor = yarn_mscale(s.factor, 1.0);
      break;
    }
    case RopeType::Llama3: {
      const double original = s.original_max_position_embeddings;
      const double low_wavelen = original / s.low_freq_factor;
      const double high_wavelen = original / s.high_freq_factor;
      for (double& x : f.inv_freq) {
        const double wavelen = 2 * std::numbers::pi / x;
        if (wavelen > low_wavelen) {
          x /= s.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth =
              (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          x = (1 - smooth) * x / s.factor + smooth * x;
        }
      }
      break;
    }
  }
  return f;
}

template <class T>
void rope_table_rows(std::vector<T>& cos, std::vector<T>& sin, const RopeFrequencies& f,
                     int64_t first, int64_t count) {
  const auto half = static_cast<int64_t>(f.inv_freq.size());
  const auto size = static_cast<size_t>((first + count) * half);
  if (cos.size() < size) cos.resize(size), sin.resize(size);
  for (int64_t p = first; p < first + count; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * f.inv_freq[i];
      cos[p * half + i] = static_cast<T>(f.attention_factor * std::cos(angle));
      sin[p * half + i] = static_cast<T>(f.attention_factor * std::sin(angle));
    }
}

template void rope_table_rows<float>(std::vector<float>&, std::vector<float>&,
                                     const RopeFrequencies&, int64_t, int64_t);
template void rope_table_rows<double>(std::vector<double>&, std::vector<double>&,
                                      const RopeFrequencies&, int64_t, int64_t);

}  // namespace moe
