#include "moe/routing_stats.h"

#include <algorithm>
#include <cmath>

namespace moe {

double entropy_bits(const double* w, int64_t n) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += w[i];
  if (total <= 0) return 0.0;
  double h = 0;
  for (int64_t i = 0; i < n; ++i)
    if (w[i] > 0) {
      const double q = w[i] / total;
      h -= q * std::log2(q);
    }
  return h;
}

template <class T>
double mean_token_entropy_bits(const T* p, int64_t tokens, int E) {
  if (tokens <= 0) return 0.0;
  double sum = 0;
  std::vector<double> row(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < E; ++e) row[e] = static_cast<double>(p[t * E + e]);
    sum += entropy_bits(row.data(), E);
  }
  return sum / static_cast<double>(tokens);
}

template <class T>
double mean_distribution_entropy_bits(const T* p, int64_t tokens, int E) {
  std::vector<double> mean(static_cast<size_t>(E), 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int e = 0; e < E; ++e) mean[e] += static_cast<double>(p[t * E + e]);
  return entropy_bits(mean.data(), E);
}

double load_cv(const int64_t* load, int E) {
  double mean = 0;
  for (int e = 0; e < E; ++e) mean += static_cast<double>(load[e]);
  mean /= E;
  if (mean <= 0) return 0.0;
  double var = 0;
  for (int e = 0; e < E; ++e) var += (load[e] - mean) * (load[e] - mean);
  return std::sqrt(var / E) / mean;
}

double load_max_over_mean(const int64_t* load, int E) {
  double mean = 0, mx = 0;
  for (int e = 0; e < E; ++e) {
    mean += static_cast<double>(load[e]);
    mx = std::max(mx, static_cast<double>(load[e]));
  }
  mean /= E;
  return mean > 0 ? mx / mean : 0.0;
}

double dropped_fraction(int64_t dropped, int64_t assignments) {
  return assignments > 0 ? static_cast<double>(dropped) / static_cast<double>(assignments) : 0.0;
}

double mutual_information_bits(const std::vector<int64_t>& joint, int E, int D) {
  // I = H(E) + H(D) - H(E, D), each from the same normalized table.
  std::vector<double> pe(static_cast<size_t>(E), 0.0), pd(static_cast<size_t>(D), 0.0);
  std::vector<double> ped(joint.begin(), joint.begin() + static_cast<int64_t>(E) * D);
  for (int e = 0; e < E; ++e)
    for (int d = 0; d < D; ++d) {
      pe[e] += ped[static_cast<size_t>(e) * D + d];
      pd[d] += ped[static_cast<size_t>(e) * D + d];
    }
  const double mi = entropy_bits(pe.data(), E) + entropy_bits(pd.data(), D) -
                    entropy_bits(ped.data(), static_cast<int64_t>(ped.size()));
  return std::max(0.0, mi);  // rounding can leave -1e-16 for independent tables
}

double max_mutual_information_bits(int E, int D) {
  return std::log2(static_cast<double>(std::max(1, std::min(E, D))));
}

void add_coactivation(const int32_t* experts, int64_t tokens, int k, int E, int64_t* counts) {
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t* c = experts + t * k;
    for (int i = 0; i < k; ++i) {
      if (c[i] < 0 || c[i] >= E) continue;
      ++counts[static_cast<int64_t>(c[i]) * E + c[i]];
      for (int j = i + 1; j < k; ++j) {
        if (c[j] < 0 || c[j] >= E || c[j] == c[i]) continue;
        ++counts[static_cast<int64_t>(c[i]) * E + c[j]];
        ++counts[static_cast<int64_t>(c[j]) * E + c[i]];
      }
    }
  }
}

template double mean_token_entropy_bits<float>(const float*, int64_t, int);
template double mean_token_entropy_bits<double>(const double*, int64_t, int);
template double mean_distribution_entropy_bits<float>(const float*, int64_t, int);
template double mean_distribution_entropy_bits<double>(const double*, int64_t, int);

}  // namespace moe
