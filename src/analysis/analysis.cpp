#include "moe/analysis.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>

#include "moe/corpus.h"
#include "moe/error.h"
#include "moe/moe_losses.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

// A token's text as shown in files: the UTF-8 itself, or <0xNN> per byte when it is not valid
// UTF-8 alone (JSON must hold valid UTF-8; a lone byte of a character is not).
std::string display_text(const std::string& s) {
  if (is_valid_utf8(s)) return s;
  std::string out;
  for (unsigned char c : s) out += fmt::format("<0x{:02X}>", c);
  return out;
}

// Fills the two per-expert rankings from counts [E, V].
void rank_tokens(const std::vector<int64_t>& counts, int E, int V, int k,
                 const std::vector<std::string>& texts, const AnalysisOptions& opt,
                 LayerAnalysis& la) {
  std::vector<int64_t> token_total(static_cast<size_t>(V), 0);
  for (int e = 0; e < E; ++e)
    for (int v = 0; v < V; ++v) token_total[v] += counts[static_cast<size_t>(e) * V + v];
  la.top_tokens.assign(E, {});
  la.distinctive_tokens.assign(E, {});
  std::vector<int> ids(static_cast<size_t>(V));
  for (int e = 0; e < E; ++e) {
    const int64_t* c = counts.data() + static_cast<size_t>(e) * V;
    auto make = [&](int v) {
      // token_total counts k assignments per occurrence: the share is of occurrences.
      return TopToken{v, texts[v], c[v], static_cast<double>(c[v]) * k / token_total[v]};
    };
    std::iota(ids.begin(), ids.end(), 0);
    // Most frequent: ties by id so the order is deterministic.
    std::sort(ids.begin(), ids.end(),
              [&](int a, int b) { return c[a] != c[b] ? c[a] > c[b] : a < b; });
    for (int i = 0; i < V && static_cast<int>(la.top_tokens[e].size()) < opt.top_tokens; ++i)
      if (c[ids[i]] > 0) la.top_tokens[e].push_back(make(ids[i]));
    // Most distinctive: the largest share of the token's assignments, among frequent tokens.
    std::vector<int> freq;
    for (int v = 0; v < V; ++v)
      if (c[v] > 0 && token_total[v] >= opt.min_token_count) freq.push_back(v);
    std::sort(freq.begin(), freq.end(), [&](int a, int b) {
      const double sa = static_cast<double>(c[a]) / token_total[a];
      const double sb = static_cast<double>(c[b]) / token_total[b];
      return sa != sb ? sa > sb : c[a] != c[b] ? c[a] > c[b] : a < b;
    });
    for (size_t i = 0; i < freq.size() && static_cast<int>(i) < opt.top_tokens; ++i)
      la.distinctive_tokens[e].push_back(make(freq[i]));
  }
}

nlohmann::json tokens_json(const std::vector<TopToken>& list) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& t : list)
    a.push_back({{"id", t.id}, {"text", t.text}, {"count", t.count}, {"share", t.expert_share}});
  return a;
}

// RFC 4180 quoting: every text field is quoted, quotes doubled.
std::string csv_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

void write_text(const std::string& path, const std::string& text) {
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace

RoutingAnalysis analyze_routing(Decoder& model, const Tokenizer& tok, const TokenStream& valid,
                                const AnalysisOptions& opt) {
  const ModelConfig& cfg = model.config();
  MOE_REQUIRE(cfg.num_local_experts > 0, "analyze: the model is dense (no experts to analyze)");
  const int E = cfg.num_local_experts, k = cfg.moe.num_experts_per_tok;
  const int D = static_cast<int>(valid.domain_names.size()), C = kNumTokenClasses;
  const int V = cfg.vocab_size, S = opt.seq_len;
  MOE_REQUIRE(S <= cfg.context_length(),
              "analyze: windows of {} tokens exceed the model's context "
              "(max_position_embeddings = {})",
              S, cfg.context_length());
  const std::vector<int64_t> starts = validation_windows(valid, S, opt.max_windows);
  MOE_REQUIRE(!starts.empty(), "analyze: the text is shorter than one window of {} tokens", S + 1);

  RoutingAnalysis a;
  a.num_experts = E;
  a.k = k;
  a.domains = valid.domain_names;
  for (int c = 0; c < C; ++c) a.classes.push_back(token_class_name(static_cast<TokenClass>(c)));
  a.domain_tokens.assign(D, 0);
  a.max_mi_domain_bits = max_mutual_information_bits(E, D);
  a.max_mi_class_bits = max_mutual_information_bits(E, C);

  // Class and display text of every id, decoded once.
  std::vector<uint8_t> token_class(static_cast<size_t>(V));
  std::vector<std::string> texts(static_cast<size_t>(V));
  for (int v = 0; v < V; ++v) {
    const std::string s = v < tok.vocab_size() ? tok.decode({v}) : std::string();
    token_class[v] = static_cast<uint8_t>(classify_token_text(s));
    texts[v] = display_text(s);
  }

  std::vector<int> slot_of_layer(static_cast<size_t>(cfg.num_hidden_layers), -1);
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    if (cfg.is_moe_layer(l)) {
      slot_of_layer[l] = static_cast<int>(a.layers.size());
      a.layers.emplace_back().layer = l;
    }
  const size_t L = a.layers.size();
  std::vector<std::vector<int64_t>> token_counts(L, std::vector<int64_t>(size_t(E) * V, 0));
  std::vector<double> token_entropy(L, 0.0);
  std::vector<std::vector<double>> prob_sum(L, std::vector<double>(E, 0.0));
  for (LayerAnalysis& la : a.layers) {
    la.load.assign(E, 0);
    la.domain_counts.assign(size_t(E) * D, 0);
    la.class_counts.assign(size_t(E) * C, 0);
    la.coactivation.assign(size_t(E) * E, 0);
  }

  const int B = std::max(1, opt.batch);
  std::vector<int32_t> inputs(static_cast<size_t>(B) * S);
  std::vector<uint8_t> domains(inputs.size());  // [B, S] domain of each input token
  std::vector<float> p, logits(static_cast<size_t>(B) * V);
  // Every MoE layer of the forward hands its choices here: counted as they are made.
  model.set_routing_observer([&](const RoutingChoice& rc) {
    MOE_CHECK(rc.layer >= 0 && rc.layer < cfg.num_hidden_layers && slot_of_layer[rc.layer] >= 0,
              "analyze: routing of layer {}, not an MoE layer", rc.layer);
    MOE_CHECK(rc.k == k && rc.num_experts == E, "analyze: layer {} routes top-{} of {}", rc.layer,
              rc.k, rc.num_experts);
    const size_t i = static_cast<size_t>(slot_of_layer[rc.layer]);
    LayerAnalysis& la = a.layers[i];
    const int64_t T = rc.rows;
    for (int64_t t = 0; t < T; ++t) {
      const int32_t v = inputs[t];
      const int d = domains[t];
      for (int j = 0; j < k; ++j) {
        const int e = rc.experts[t * k + j];
        if (e < 0) continue;
        ++la.load[e];
        ++la.domain_counts[size_t(e) * D + d];
        ++la.class_counts[size_t(e) * C + token_class[v]];
        ++token_counts[i][size_t(e) * V + v];
      }
    }
    add_coactivation(rc.experts, T, k, E, la.coactivation.data());
    la.dropped += rc.dropped;
    la.assignments += T * k;
    // Router probabilities (softmax scores, or sigmoid scores normalized per token).
    p.resize(static_cast<size_t>(T) * E);
    routing_probs<float>(rc.scoring, T, E, rc.scores, p.data());
    token_entropy[i] += mean_token_entropy_bits(p.data(), T, E) * static_cast<double>(T);
    for (int64_t t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e) prob_sum[i][e] += p[size_t(t) * E + e];
  });
  struct Detach {  // the observer captures locals: never let it outlive them
    Decoder& m;
    ~Detach() { m.set_routing_observer({}); }
  } detach{model};
  for (size_t w0 = 0; w0 < starts.size(); w0 += B) {
    const int nb = static_cast<int>(std::min<size_t>(B, starts.size() - w0));
    for (int b = 0; b < nb; ++b)
      valid.read(starts[w0 + b], S, inputs.data() + size_t(b) * S, domains.data() + size_t(b) * S);
    auto caches = model.new_caches(nb, S);
    model.forward(inputs.data(), nb, S, caches, logits.data());
    if (opt.progress)
      opt.progress(static_cast<int64_t>(w0 + nb), static_cast<int64_t>(starts.size()));
    a.tokens += int64_t(nb) * S;
    for (int b = 0; b < nb; ++b)
      for (int s = 0; s < S; ++s) ++a.domain_tokens[domains[size_t(b) * S + s]];
  }
  for (size_t i = 0; i < L; ++i) {
    LayerAnalysis& la = a.layers[i];
    la.mi_domain_bits = mutual_information_bits(la.domain_counts, E, D);
    la.mi_class_bits = mutual_information_bits(la.class_counts, E, C);
    la.load_cv = load_cv(la.load.data(), E);
    la.load_max_over_mean = load_max_over_mean(la.load.data(), E);
    la.dropped_fraction = dropped_fraction(la.dropped, la.assignments);
    la.token_entropy_bits = token_entropy[i] / static_cast<double>(a.tokens);
    la.distribution_entropy_bits = entropy_bits(prob_sum[i].data(), E);
    rank_tokens(token_counts[i], E, V, k, texts, opt, la);
  }
  return a;
}

RoutingAnalysis analyze_routing(Transformer<float>& model, const Tokenizer& tok,
                                const TokenStream& valid, const AnalysisOptions& opt) {
  TransformerLm lm(model);
  return analyze_routing(lm, tok, valid, opt);
}

nlohmann::json analysis_to_json(const RoutingAnalysis& a) {
  nlohmann::json layers = nlohmann::json::array();
  const int E = a.num_experts, D = static_cast<int>(a.domains.size());
  const int C = static_cast<int>(a.classes.size());
  auto matrix = [E](const std::vector<int64_t>& m, int cols) {
    nlohmann::json rows = nlohmann::json::array();
    for (int e = 0; e < E; ++e)
      rows.push_back(
          std::vector<int64_t>(m.begin() + int64_t(e) * cols, m.begin() + int64_t(e + 1) * cols));
    return rows;
  };
  for (const auto& la : a.layers) {
    nlohmann::json top = nlohmann::json::array(), distinct = nlohmann::json::array();
    for (int e = 0; e < E; ++e) {
      top.push_back(tokens_json(la.top_tokens[e]));
      distinct.push_back(tokens_json(la.distinctive_tokens[e]));
    }
    layers.push_back({{"layer", la.layer},
                      {"load", la.load},
                      {"domain_counts", matrix(la.domain_counts, D)},
                      {"class_counts", matrix(la.class_counts, C)},
                      {"coactivation", matrix(la.coactivation, E)},
                      {"top_tokens", top},
                      {"distinctive_tokens", distinct},
                      {"mi_domain_bits", la.mi_domain_bits},
                      {"mi_class_bits", la.mi_class_bits},
                      {"load_cv", la.load_cv},
                      {"load_max_over_mean", la.load_max_over_mean},
                      {"dropped", la.dropped},
                      {"assignments", la.assignments},
                      {"dropped_fraction", la.dropped_fraction},
                      {"token_entropy_bits", la.token_entropy_bits},
                      {"distribution_entropy_bits", la.distribution_entropy_bits}});
  }
  return {{"format", "moe-analysis"},
          {"version", 1},
          {"label", a.label},
          {"num_experts", E},
          {"k", a.k},
          {"tokens", a.tokens},
          {"domains", a.domains},
          {"domain_tokens", a.domain_tokens},
          {"classes", a.classes},
          {"max_mi_domain_bits", a.max_mi_domain_bits},
          {"max_mi_class_bits", a.max_mi_class_bits},
          {"counting",
           "each of a token's k router choices (top-k before capacity) counts once; "
           "share = count / all assignments of that domain or class; MI in bits"},
          {"layers", layers}};
}

void write_analysis(const RoutingAnalysis& a, const std::string& dir, const std::string& prefix) {
  write_text(dir + "/" + prefix + ".json", analysis_to_json(a).dump(1) + "\n");
  const int E = a.num_experts;
  auto share_csv = [&](const std::vector<std::string>& names, const char* column, auto counts_of) {
    const int n = static_cast<int>(names.size());
    std::string out = fmt::format("layer,expert,{},count,share\n", column);
    for (const auto& la : a.layers) {
      const std::vector<int64_t>& m = counts_of(la);
      for (int c = 0; c < n; ++c) {
        int64_t col = 0;
        for (int e = 0; e < E; ++e) col += m[size_t(e) * n + c];
        for (int e = 0; e < E; ++e) {
          const int64_t v = m[size_t(e) * n + c];
          out += fmt::format("{},{},{},{},{:.6f}\n", la.layer, e, names[c], v,
                             col > 0 ? static_cast<double>(v) / col : 0.0);
        }
      }
    }
    return out;
  };
  write_text(
      dir + "/" + prefix + "_domains.csv",
      share_csv(a.domains, "domain", [](const LayerAnalysis& la) -> const std::vector<int64_t>& {
        return la.domain_counts;
      }));
  write_text(
      dir + "/" + prefix + "_classes.csv",
      share_csv(a.classes, "class", [](const LayerAnalysis& la) -> const std::vector<int64_t>& {
        return la.class_counts;
      }));
  std::string co = "layer,expert_a,expert_b,count\n";
  for (const auto& la : a.layers)
    for (int x = 0; x < E; ++x)
      for (int y = 0; y < E; ++y)
        co += fmt::format("{},{},{},{}\n", la.layer, x, y, la.coactivation[size_t(x) * E + y]);
  write_text(dir + "/" + prefix + "_coactivation.csv", co);
  std::string top = "layer,expert,ranking,rank,token_id,text,count,expert_share\n";
  for (const auto& la : a.layers)
    for (int e = 0; e < E; ++e)
      for (int r = 0; r < 2; ++r) {
        const auto& list = r == 0 ? la.top_tokens[e] : la.distinctive_tokens[e];
        for (size_t i = 0; i < list.size(); ++i)
          top += fmt::format("{},{},{},{},{},{},{},{:.6f}\n", la.layer, e,
                             r == 0 ? "frequent" : "distinctive", i + 1, list[i].id,
                             csv_quote(list[i].text), list[i].count, list[i].expert_share);
      }
  write_text(dir + "/" + prefix + "_top_tokens.csv", top);
}

}  // namespace moe
