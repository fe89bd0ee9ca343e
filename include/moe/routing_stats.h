// Routing statistics as pure functions over counts and routings, so each one can be checked on
// hand-built routings with known answers (tests/test_analysis.cpp). Everything is in bits. They
// live in nn, below the layers and the trainer that report them; token classes, which only the
// analysis needs, are in token_class.h.
//
// Two router entropies, which answer different questions:
//   mean_token_entropy_bits  mean over tokens of H(p_t): how undecided the router is per token
//                            (the layer's MoeMetrics::router_entropy, which is in nats)
//   mean_distribution_entropy_bits  H(mean over tokens of p_t): how evenly the router spreads
//                            probability over the experts as a whole (log2 E when even)
// A confident router that still balances has low per-token entropy and a high entropy of the
// mean; a collapsed router has both near 0.
//
// Mutual information I(expert; domain) comes from a joint count table n[e][d] that counts each
// of a token's k assignments once (so it sums to T*k): p(e, d) = n[e][d] / sum(n). It is at
// most min(H(expert), H(domain)) <= log2(min(E, D)), reached by a router that sends every
// domain to its own experts (with E >= D and equally frequent domains). With k > 1 a
// deterministic token -> top-k map still gives I = H(domain) when each domain owns its own set
// of experts; log2(min(E, D)) is reported next to it as the scale.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

// Shannon entropy (bits) of the distribution proportional to the non-negative weights w[n].
// 0 when all weights are 0.
double entropy_bits(const double* w, int64_t n);

// p [T, E]: rows are distributions (router probabilities).
template <class T>
double mean_token_entropy_bits(const T* p, int64_t tokens, int E);
template <class T>
double mean_distribution_entropy_bits(const T* p, int64_t tokens, int E);

// Coefficient of variation (population std / mean) and max / mean of per-expert loads; 0 when
// every load is 0. A router that sends all T*k assignments to one of E experts has
// CV = sqrt(E - 1) and max/mean = E; a perfectly balanced one has 0 and 1.
double load_cv(const int64_t* load, int E);
double load_max_over_mean(const int64_t* load, int E);
// dropped / assignments (0 when there are none).
double dropped_fraction(int64_t dropped, int64_t assignments);

// I(expert; group) in bits from a joint count table [E, D] (row-major, expert-major); see above.
double mutual_information_bits(const std::vector<int64_t>& joint, int E, int D);
// log2(min(E, D)): the largest value mutual_information_bits can take for that shape.
double max_mutual_information_bits(int E, int D);

// Co-activation of the experts chosen together: for every token with valid choices
// experts[t*k .. t*k+k) (entries < 0 ignored), adds 1 to counts[a][b] and counts[b][a] for each
// unordered pair a != b, and 1 to counts[a][a] for each chosen expert. counts is [E, E].
void add_coactivation(const int32_t* experts, int64_t tokens, int k, int E, int64_t* counts);

}  // namespace moe
