// Expert specialization of any model (a Decoder: a run, a Hugging Face checkpoint, a GGUF file)
// over windows of a token stream (`moe analyze`): for every MoE layer, which experts the router
// picks for which domains (from the corpus's tags), token classes (routing_stats.h) and tokens,
// which experts are picked together, and how much the choice says about the domain (mutual
// information, bits).
//
// The choices come from the Decoder's routing observer, which every MoE layer of both decoders
// calls in each forward (TransformerLm: MoeLayer's plan; InferenceModel: its Router's plan), so
// every family's routing is what is counted: softmax or sigmoid scores, renormalized or not;
// shared experts run on every token and are not routed, so they are not counted.
// Counting: every one of a token's k router choices (plan.primary: the router's
// top-k before capacity, so what the router wants even where capacity later drops it) counts
// once, so each matrix sums to tokens * k. A token's domain is the tag of the input position
// (BOS and EOS belong to their document). Dropped assignments are counted apart.
//
// Files (each written atomically):
//   analysis.json              everything below, read back by `moe report`
//   analysis_domains.csv       layer,expert,domain,count,share   (share of the domain's
//   analysis_classes.csv       layer,expert,class,count,share     assignments to that expert)
//   analysis_coactivation.csv  layer,expert_a,expert_b,count      (tokens that chose both)
//   analysis_top_tokens.csv    layer,expert,ranking,rank,token_id,text,count,expert_share
//                              (ranking "frequent" or "distinctive", see LayerAnalysis)
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "moe/dataset.h"
#include "moe/routing_stats.h"
#include "moe/token_class.h"
#include "moe/tokenizer.h"
#include "moe/transformer.h"

namespace moe {

struct AnalysisOptions {
  int batch = 8;
  int seq_len = 256;
  int64_t max_windows = 0;  // validation windows to run (<= 0: the whole split)
  int top_tokens = 12;      // per expert, in each of the two rankings
  // A token needs this many occurrences to be ranked by expert_share (rare tokens would
  // otherwise fill the list with 1-of-1 shares).
  int64_t min_token_count = 20;
  WindowProgress progress;  // after each batch of windows (may be empty)
};

struct TopToken {
  int32_t id = 0;
  std::string text;   // decoded UTF-8 (may be a lone byte: escaped in JSON/CSV)
  int64_t count = 0;  // assignments of this token to the expert
  // Share of the token's occurrences whose top-k holds this expert (1 = every occurrence; a
  // token's shares over the experts sum to k).
  double expert_share = 0;
};

struct LayerAnalysis {
  int layer = 0;                       // block index in the model
  std::vector<int64_t> load;           // [E] assignments per expert
  std::vector<int64_t> domain_counts;  // [E, D]
  std::vector<int64_t> class_counts;   // [E, C] C = kNumTokenClasses
  std::vector<int64_t> coactivation;   // [E, E] add_coactivation over the primary choices
  std::vector<std::vector<TopToken>> top_tokens;          // [E] most frequent
  std::vector<std::vector<TopToken>> distinctive_tokens;  // [E] highest expert_share
  int64_t dropped = 0, assignments = 0;
  double mi_domain_bits = 0;  // I(expert; domain)
  double mi_class_bits = 0;   // I(expert; token class)
  double load_cv = 0, load_max_over_mean = 0, dropped_fraction = 0;
  double token_entropy_bits = 0;         // mean per-token router entropy
  double distribution_entropy_bits = 0;  // entropy of the mean routing distribution
};

struct RoutingAnalysis {
  std::string label;  // e.g. "runs/default" or "runs/default (untrained)"
  int num_experts = 0, k = 0;
  int64_t tokens = 0;
  std::vector<std::string> domains;    // D names (the stream's domain_names)
  std::vector<std::string> classes;    // C names (token_class_name)
  std::vector<int64_t> domain_tokens;  // [D] tokens per domain
  std::vector<LayerAnalysis> layers;   // one per MoE layer
  double max_mi_domain_bits = 0;       // log2(min(E, D))
  double max_mi_class_bits = 0;        // log2(min(E, C))
};

// Runs `model` over windows of seq_len tokens of `valid` (validation_windows) and fills the
// matrices. The model's routing observer is set during the call and cleared after it.
RoutingAnalysis analyze_routing(Decoder& model, const Tokenizer& tok, const TokenStream& valid,
                                const AnalysisOptions& opt);
// The same through a TransformerLm over a run's model.
RoutingAnalysis analyze_routing(Transformer<float>& model, const Tokenizer& tok,
                                const TokenStream& valid, const AnalysisOptions& opt);

nlohmann::json analysis_to_json(const RoutingAnalysis& a);
// <prefix>.json and the four CSV files <prefix>_*.csv in dir.
void write_analysis(const RoutingAnalysis& a, const std::string& dir,
                    const std::string& prefix = "analysis");

}  // namespace moe
