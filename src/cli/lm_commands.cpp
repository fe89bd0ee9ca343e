// `moe train`, `moe eval`, `moe perplexity`, `moe generate`: the language-model jobs. Parsing
// and printing only; the library (trainer.h, data.h, any_model.h, perplexity.h, generate.h)
// does the work.
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "moe/any_model.h"
#include "moe/communicator.h"
#include "moe/data.h"
#include "moe/dataset.h"
#include "moe/error.h"
#include "moe/generate.h"
#include "moe/inference_model.h"
#include "moe/parallel.h"
#include "moe/perplexity.h"
#include "moe/report.h"
#include "moe/safetensors.h"
#include "moe/trainable_model.h"
#include "moe/trainer.h"
#include "moe/vit.h"
#include "vit_commands.h"
#ifdef MOE_HAVE_CUDA
#include "moe/cuda_transformer.h"
#endif

namespace moe::cli {

namespace {

void log_line(const std::string& s) {
  fmt::print(stderr, "{}\n", s);
}

struct TrainArgs {
  std::string config_path, out = "runs/default", data, data_dir, tokenizer;
  std::string init_from, train_parts;  // fine-tuning: the starting model, the parts that train
  double valid_fraction = 0;           // 0: training.valid_fraction
  std::string device = "cpu";          // where the training steps run: cpu or cuda
  int steps = 0, threads = 0, stop_after = 0;
  bool resume = false, dense = false, match_active = false, no_progress = false;
  bool print_config = false, profile = false;
  int64_t seed = -1;
  int expert_parallel = 0;  // 0: one process, or every rank all experts under mpirun
};

// Whether the config file itself sets training.data_dir (then relative to the file).
bool config_sets_data_dir(const std::string& path) {
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("training") && j["training"].is_object() &&
         j["training"].contains("data_dir");
}

std::string absolute_path(const std::string& p) {
  return std::filesystem::absolute(p).lexically_normal().string();
}

DataOptions data_options(const TrainConfig& t, int vocab_size) {
  DataOptions d;
  d.dir = t.data_dir;
  d.input = t.data;
  d.tokenizer = t.tokenizer;
  d.vocab_size = vocab_size;
  d.valid_fraction = t.valid_fraction;
  return d;
}

int run_train(const TrainArgs& a) {
  if (!a.config_path.empty() && is_vit_config(a.config_path))  // the ViT-MoE image encoder
    return run_vit_train(a.config_path, a.out == "runs/default" ? "runs/vit" : a.out, a.steps,
                         a.seed, a.threads, a.no_progress);
  set_num_threads(a.threads);
#ifndef MOE_HAVE_CUDA
  MOE_REQUIRE(a.device != "cuda",
              "--device cuda: this moe was built without the CUDA backend (configure with "
              "-DMOE_CUDA=ON, docs/cuda.md)");
#endif
  // Fine-tuning: the model's config and weights; --config then adds training and routing keys.
  std::shared_ptr<TrainableModel> init;
  ModelConfig cfg;
  if (!a.init_from.empty()) {
    MOE_REQUIRE(!a.dense, "--dense: a fine-tuned model keeps the experts of --init-from");
    init = std::make_shared<TrainableModel>(load_trainable_model(a.init_from));
    cfg = init->config;
    if (!a.config_path.empty()) cfg = with_training_settings_file(cfg, a.config_path);
    if (a.tokenizer.empty()) {
      MOE_REQUIRE(!init->tokenizer.empty(),
                  "{}: no tokenizer.json or tokenizer.model: give the model's tokenizer with "
                  "--tokenizer",
                  a.init_from);
      cfg.training.tokenizer = init->tokenizer;
    }
  } else if (!a.config_path.empty()) {
    cfg = load_train_config(a.config_path);
  } else {
    cfg.moe.compute_dtype = default_compute_dtype();  // configs/default.json's "auto"
  }
  if (!a.train_parts.empty()) cfg.training.trainable = a.train_parts;
  if (a.resume && a.config_path.empty() &&
      std::filesystem::exists(a.out + "/config.json"))  // resume keeps the run's own config
    cfg = load_model_config(a.out + "/config.json");
  if (a.steps > 0) cfg.training.max_steps = a.steps;
  if (a.seed >= 0) cfg.training.seed = static_cast<uint64_t>(a.seed);
  // A relative data_dir written in a config file is relative to that file; the run records
  // absolute paths, so that resume and `moe eval RUN` find the same data from anywhere.
  if (!a.config_path.empty() && config_sets_data_dir(a.config_path) &&
      std::filesystem::path(cfg.training.data_dir).is_relative())
    cfg.training.data_dir =
        (std::filesystem::path(a.config_path).parent_path() / cfg.training.data_dir).string();
  if (!a.data_dir.empty()) cfg.training.data_dir = a.data_dir;
  if (!a.data.empty()) cfg.training.data = a.data;
  if (a.valid_fraction != 0) cfg.training.valid_fraction = a.valid_fraction;
  if (!a.tokenizer.empty()) cfg.training.tokenizer = a.tokenizer;
  cfg.training.data_dir = absolute_path(cfg.training.data_dir);
  if (!cfg.training.data.empty()) cfg.training.data = absolute_path(cfg.training.data);
  if (cfg.training.tokenizer != "sentencepiece" && cfg.training.tokenizer != "byte")
    cfg.training.tokenizer = absolute_path(cfg.training.tokenizer);
  if (a.match_active) {
    MOE_REQUIRE(a.dense, "--match-active-compute sizes the dense baseline: use it with --dense");
    cfg.dense_intermediate_size = cfg.matched_dense_width();
  }
  if (a.dense) cfg.num_local_experts = 0;
  cfg.sync_moe();
  if (a.print_config) {
    cfg.validate("config");
    fmt::print("{}\n", model_config_to_json(cfg).dump(2));
    return 0;
  }

#ifdef MOE_HAVE_CUDA
  // Refused before the corpus is prepared or anything is written: one line naming the config.
  if (a.device == "cuda") {
    try {
      cuda_transformer_check_supported(cfg);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", a.config_path.empty() ? "default config" : a.config_path,
                              e.what()));
    }
  }
#endif
  // Every refusal of the config before the corpus is read or a tokenizer trained (checked again
  // once the tokenizer has fixed vocab_size).
  cfg.validate(a.config_path.empty() ? "default config" : a.config_path);
  std::unique_ptr<ParallelGroups> par =
      parallel_groups_of_launch(a.expert_parallel, cfg.num_local_experts);
  const int rank = par ? par->layout.rank : 0;
  if (!par) check_run_directory(a.out, a.resume);  // before the corpus is read
  const DataOptions d = data_options(cfg.training, cfg.vocab_size);
  PreparedData data;
  // Under MPI rank 0 builds the corpus and tokenizer; the others read what it wrote.
  const auto prepare = [&](bool log) {
    data = prepare_data(
        d, log ? log_line : [](const std::string&) {});
  };
  if (!par)
    prepare(true);
  else if (!rank0_first(*par->world, prepare))
    return 1;  // rank 0 reports the failure
  if (init) {  // the model's embedding rows stay; the tokenizer must fit in them
    MOE_REQUIRE(data.tokenizer->vocab_size() <= cfg.vocab_size,
                "{}: the tokenizer has {} tokens, more than the model's vocab_size = {}",
                cfg.training.tokenizer, data.tokenizer->vocab_size(), cfg.vocab_size);
  } else if (data.tokenizer->vocab_size() != cfg.vocab_size) {
    log_line(fmt::format("vocab_size {} -> {} to match the {} tokenizer", cfg.vocab_size,
                         data.tokenizer->vocab_size(), cfg.training.tokenizer));
    cfg.vocab_size = data.tokenizer->vocab_size();
  }
  cfg.validate(a.config_path.empty() ? "default config" : a.config_path);

  TrainOptions opt;
  opt.out_dir = a.out;
  opt.resume = a.resume;
  opt.stop_after = a.stop_after;
  opt.progress = !a.no_progress;
  opt.profile = a.profile;
  opt.parallel = par.get();
#ifdef MOE_HAVE_CUDA
  if (a.device == "cuda")
    opt.device = [](const ModelConfig& c) { return make_cuda_step_device(c); };
#endif
  opt.tokenizer_path = data.tokenizer_file;
  if (init)
    opt.init_weights = [init](Transformer<float>& m) {
      copy_weights(*init->model, m);
      log_line(fmt::format("weights from {}", init->config.model_type));
    };
  if (rank == 0)
    log_line(fmt::format("training {} on {} train / {} validation tokens, {} threads -> {}{}",
                         cfg.num_local_experts > 0 ? "MoE" : "dense", data.train.size(),
                         data.valid.size(), num_threads(), a.out,
                         par ? fmt::format(" ({} processes, expert parallel {})", par->layout.world,
                                           par->layout.expert_parallel)
                             : ""));
  const TrainResult r = train(cfg, data.train, data.valid, opt);
  if (rank != 0) return 0;
  fmt::print("trained {} steps in {:.1f} s ({:.0f} tokens/s); final training loss {:.4f}\n",
             r.steps, r.wall_seconds, r.tokens_per_second, r.final_train_loss);
  if (r.final_eval.tokens > 0)
    fmt::print("validation loss {:.4f} (perplexity {:.1f})\n", r.final_eval.loss,
               std::exp(r.final_eval.loss));
  // Routing analysis on the validation windows the run evaluated on, and report.html.
  const int64_t windows = static_cast<int64_t>(cfg.training.eval_batches) * cfg.training.batch_size;
  analyze_and_report(a.out, data.valid, windows);
  const std::string checkpoint =
      par && par->layout.world > 1
          ? fmt::format("{}/checkpoint-rank*-of-{}.safetensors", a.out, par->layout.world)
          : a.out + "/checkpoint.safetensors";
  fmt::print(
      "checkpoint: {1}  weights: {0}/model.safetensors\n"
      "metrics: {0}/metrics.jsonl  report: {0}/report.md, {0}/report.html, {0}/summary.json\n",
      a.out, checkpoint);
  return 0;
}

// The window length of a model when the user gives none: a run's seq_len, else the model's
// context up to 512.
int default_ctx(const AnyModel& m) {
  return m.run ? m.config.training.seq_len : std::min(m.config.context_length(), 512);
}

// "NAME: loss 2.3456, perplexity 10.44 over N tokens" ("validation loss" for a run's split),
// then a line per domain.
void print_perplexity(const std::string& name, const char* loss, const PerplexityResult& r) {
  fmt::print("{}: {} {:.4f}, perplexity {:.2f} over {} tokens\n", name, loss, r.loss, r.perplexity,
             r.tokens);
  fmt::print("{:<10} {:>8} {:>11} {:>9}\n", "domain", "loss", "perplexity", "tokens");
  for (const DomainLoss& d : r.per_domain)
    fmt::print("{:<10} {:>8.4f} {:>11.2f} {:>9}\n", d.domain, d.loss, std::exp(d.loss), d.tokens);
}

struct EvalArgs {
  std::string model, data_dir, data, quantize;
  int batches = 0, threads = 0, ctx = 0;
};

// `moe eval`: a run's validation split (the data it trained on) in its seq_len windows, or any
// model on --data in disjoint windows of --ctx: perplexity() with stride = ctx.
int run_eval(const EvalArgs& a) {
  set_num_threads(a.threads);
  const GgmlType quantize = quantize_type(a.quantize);
  AnyModel m = load_any_model(a.model, quantize);
  MOE_REQUIRE(m.run || !a.data.empty(),
              "eval: {} is a {}: give --data PATH (its validation split is a run's)", a.model,
              model_format_name(m.format));
  const int ctx = a.ctx > 0 ? a.ctx : default_ctx(m);
  TokenStream stream;
  std::vector<ScoredWindow> windows;
  const int batch = m.run ? m.config.training.batch_size : 4;
  if (a.data.empty()) {
    // The run's own tokenizer on the validation split of the data it trained on (the bundled
    // corpus or the user's text that config.json records); domain indices as in training.
    const TrainConfig& t = m.config.training;
    DataOptions d = data_options(t, m.config.vocab_size);
    if (!a.data_dir.empty()) d.dir = a.data_dir;
    stream = validation_stream(d, m.text_tokenizer(), m.tokenizer_file, log_line);
    const std::vector<int64_t> starts =
        validation_windows(stream, ctx, a.batches > 0 ? int64_t{a.batches} * batch : 0);
    MOE_REQUIRE(!starts.empty(), "eval: the validation split is shorter than one window of {}",
                ctx + 1);
    windows = full_windows(starts, ctx);
  } else {
    stream = read_text_tokens(a.data, m.text_tokenizer(), DataOptions{}.document_bytes, log_line);
    windows = sliding_windows(stream.size(), ctx, ctx);
    if (a.batches > 0 && static_cast<int64_t>(windows.size()) > int64_t{a.batches} * batch)
      windows.resize(static_cast<size_t>(a.batches) * batch);
  }
  PerplexityOptions o;
  o.batch = batch;
  o.progress = window_progress("eval");
  const PerplexityResult r = perplexity(*m.decoder, stream, windows, o);
  print_perplexity(a.model, a.data.empty() ? "validation loss" : "loss", r);
  return 0;
}

struct PerplexityArgs {
  std::string model, data, json, quantize;
  int ctx = 0, stride = 0, batch = 4, threads = 0;
  bool no_progress = false;
};

int run_perplexity(const PerplexityArgs& a) {
  set_num_threads(a.threads);
  const GgmlType quantize = quantize_type(a.quantize);
  AnyModel m = load_any_model(a.model, quantize);
  const int ctx = a.ctx > 0 ? a.ctx : default_ctx(m);
  const int stride = a.stride > 0 ? a.stride : std::max(1, ctx / 2);
  MOE_REQUIRE(ctx <= m.config.context_length(),
              "--ctx {} exceeds the context of {} (max_position_embeddings = {})", ctx, a.model,
              m.config.context_length());
  const TokenStream stream =
      read_text_tokens(a.data, m.text_tokenizer(), DataOptions{}.document_bytes, log_line);
  const std::vector<ScoredWindow> windows = sliding_windows(stream.size(), ctx, stride);
  log_line(fmt::format("perplexity: {}, {} tokens in {} windows of {} every {} tokens",
                       m.description(), stream.size(), windows.size(), ctx, stride));
  PerplexityOptions o;
  o.batch = a.batch;
  if (!a.no_progress) o.progress = window_progress("perplexity");
  const PerplexityResult r = perplexity(*m.decoder, stream, windows, o);
  print_perplexity(a.data, "loss", r);
  fmt::print("{} windows of {} tokens every {} in {:.1f} s ({:.0f} tokens/s)\n", r.windows, ctx,
             stride, r.seconds, r.windows * static_cast<double>(ctx) / std::max(r.seconds, 1e-9));
  if (!a.json.empty()) {
    nlohmann::json j = perplexity_to_json(r);
    j["model"] = a.model;
    j["data"] = a.data;
    j["ctx"] = ctx;
    j["stride"] = stride;
    const std::string text = j.dump(2) + "\n";
    write_file_atomic(a.json, text.data(), text.size());
    fmt::print("wrote {}\n", a.json);
  }
  return 0;
}

struct GenerateArgs {
  std::string run, model, prompt, prompt_ids, quantize;
  bool ignore_eos = false;
  bool warmup = false;
  int max_new_tokens = 200, threads = 0;
  double temperature = 0.8, top_p = 0.95;
  int top_k = 50;
  uint64_t seed = 1;
};

GenerateOptions generate_options(const GenerateArgs& a) {
  GenerateOptions g;
  g.max_new_tokens = a.max_new_tokens;
  g.sampling.temperature = a.temperature;
  g.sampling.top_k = a.top_k;
  g.sampling.top_p = a.top_p;
  g.seed = a.seed;
  g.stop_at_eos = !a.ignore_eos;
  return g;
}

// Prints a continuation as it is drawn. The whole continuation is decoded each time: a
// multi-byte character can span tokens, so only complete characters are printed.
class StreamPrinter {
 public:
  StreamPrinter(const Tokenizer* tok, size_t prompt_tokens)
      : tok_(tok), prompt_(prompt_tokens), start_(std::chrono::steady_clock::now()) {}
  void add(int32_t id) {
    if (ids_.empty()) first_ = std::chrono::steady_clock::now();
    ids_.push_back(id);
    if (!tok_) {
      fmt::print("{}{}", ids_.size() > 1 ? " " : "", id);
      std::fflush(stdout);
      return;
    }
    const std::string text = tok_->decode(ids_);
    if (text.size() > printed_ && (text.back() & 0xC0) != 0x80) {
      fmt::print("{}", text.substr(printed_));
      std::fflush(stdout);
      printed_ = text.size();
    }
  }
  // Prints what is left, a newline, and the speed on stderr: the prompt's batched prefill
  // (with the first token) apart from the token-by-token decode.
  void finish() {
    const auto end = std::chrono::steady_clock::now();
    if (tok_) {
      const std::string text = tok_->decode(ids_);
      if (text.size() > printed_) fmt::print("{}", text.substr(printed_));
    }
    fmt::print("\n");
    std::fflush(stdout);  // the continuation first, then the timing on stderr
    const double total = std::chrono::duration<double>(end - start_).count();
    if (ids_.empty()) return;
    const double prefill = std::chrono::duration<double>(first_ - start_).count();
    const double decode = total - prefill;
    fmt::print(stderr,
               "{} tokens in {:.2f} s ({:.1f} tokens/s): prompt of {} tokens + first token "
               "{:.3f} s ({:.1f} prompt tokens/s), then {} tokens at {:.1f} tokens/s\n",
               ids_.size(), total, ids_.size() / std::max(total, 1e-9), prompt_, prefill,
               prompt_ / std::max(prefill, 1e-9), ids_.size() - 1,
               (ids_.size() - 1) / std::max(decode, 1e-9));
  }

 private:
  const Tokenizer* tok_;
  size_t prompt_;
  std::chrono::steady_clock::time_point start_, first_;
  std::vector<int32_t> ids_;
  size_t printed_ = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// "12, 7 9" -> {12, 7, 9}; anything else is an error naming the option.
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string item;
  std::stringstream ss(s);
  while (ss >> item) {
    for (auto part = std::stringstream(item); std::getline(part, item, ',');) {
      if (item.empty()) continue;
      size_t used = 0;
      int v = -1;
      try {
        v = std::stoi(item, &used);
      } catch (const std::exception&) {
      }
      MOE_REQUIRE(used == item.size() && v >= 0, "--prompt-ids: \"{}\" is not a token id", item);
      ids.push_back(v);
    }
  }
  return ids;
}

// --prompt-ids parsed and checked against the vocabulary of `model`; empty without the option.
std::vector<int32_t> prompt_ids_of(const GenerateArgs& a, const std::string& model, int vocab) {
  if (a.prompt_ids.empty()) return {};
  std::vector<int32_t> ids = parse_ids(a.prompt_ids);
  MOE_REQUIRE(!ids.empty(), "--prompt-ids: \"{}\" holds no token id", a.prompt_ids);
  for (int32_t id : ids)
    MOE_REQUIRE(id < vocab, "--prompt-ids: {} is outside the vocabulary [0, {}) of {}", id, vocab,
                model);
  return ids;
}

// Says on stderr when the model's context ends before --max-new-tokens (generate stops there).
void note_context_limit(const GenerateArgs& a, size_t prompt_len, int context) {
  const int budget = new_token_budget(static_cast<int>(prompt_len), a.max_new_tokens, context);
  if (budget < a.max_new_tokens)
    fmt::print(stderr,
               "generate: {} new tokens instead of {}: the prompt ({} tokens) and they fill the "
               "context of {} positions\n",
               budget, a.max_new_tokens, prompt_len, context);
}

// 46702792704 -> "46.70B", 6040000 -> "6.04M".
std::string count_text(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1000000) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1000) return fmt::format("{:.1f}K", n / 1e3);
  return fmt::format("{}", n);
}

// `moe generate MODEL`: a run, a Hugging Face checkpoint or a GGUF file through the one loader;
// the tokenizer is the run's, the directory's or the GGUF metadata's.
int run_generate(const GenerateArgs& a) {
  set_num_threads(a.threads);
  MOE_REQUIRE(a.run.empty() != a.model.empty(),
              "generate: give a model (a run directory, a Hugging Face checkpoint directory or a "
              "GGUF file) or --model, not {}",
              a.run.empty() ? "neither" : "both");
  MOE_REQUIRE(a.prompt.empty() || a.prompt_ids.empty(),
              "generate: give --prompt or --prompt-ids, not both");
  const GgmlType quantize = quantize_type(a.quantize);  // checked before anything loads
  const std::string& path = a.model.empty() ? a.run : a.model;
  const auto t0 = std::chrono::steady_clock::now();
  AnyModel m = load_any_model(path, quantize);
  const ModelConfig& c = m.config;
  if (const InferenceModel* im = m.checkpoint) {
    const ParameterCount n = im->parameters();
    const GgufFile* gguf = im->gguf();
    const std::string format =
        gguf ? fmt::format("GGUF {}", gguf->string("general.architecture")) : "Hugging Face";
    // With --quantize the weights computed with are the quantized copies.
    const int64_t weight_bytes =
        im->quantized_bytes() > 0 ? im->quantized_bytes() : im->weight_bytes();
    fmt::print(stderr,
               "{}: {} ({}) with {} layers, {} experts (top-{}); parameters {} total, {} active "
               "per token; weights {} ({:.1f} MB: {}), loaded in {:.2f} s\n",
               path, c.model_type, format, c.num_hidden_layers, c.num_local_experts,
               c.moe.num_experts_per_tok, count_text(n.total), count_text(n.active),
               ggml_type_name(static_cast<uint32_t>(im->weight_type())), weight_bytes / 1e6,
               im->weight_types(), seconds_since(t0));
  } else if (quantize != GgmlType::F32) {
    fmt::print(stderr, "{}: matrices quantized to {} at load ({:.1f} MB)\n", path,
               ggml_type_name(static_cast<uint32_t>(quantize)), m.decoder->quantized_bytes() / 1e6);
  }
  const Tokenizer* tok = a.prompt_ids.empty() ? &m.text_tokenizer() : nullptr;
  std::vector<int32_t> prompt = prompt_ids_of(a, path, c.vocab_size);
  if (tok) {  // a text starts as the model's documents do (BOS, or EOS for a run without BOS)
    if (m.start_token >= 0) prompt.push_back(m.start_token);
    const auto ids = tok->encode(a.prompt);
    prompt.insert(prompt.end(), ids.begin(), ids.end());
  }
  MOE_REQUIRE(!prompt.empty(), "{}: the prompt is empty (give --prompt or --prompt-ids)", path);
  note_context_limit(a, prompt.size(), c.context_length());
  if (tok) fmt::print("{}", a.prompt);
  const GenerateOptions opt = generate_options(a);
  // A checkpoint's eos without a tokenizer (--prompt-ids) is unknown: generation runs on.
  const int32_t eos = tok || m.run ? m.tokenizer->eos_id() : -1;
  if (a.warmup) {
    const auto t1 = std::chrono::steady_clock::now();
    warm_up(*m.decoder, prompt);
    fmt::print(stderr, "warm-up (the prompt's prefill and one step, untimed below) {:.3f} s\n",
               seconds_since(t1));
  }
  StreamPrinter printer(tok, prompt.size());  // after the load: the prompt time is the prompt's
  generate(*m.decoder, {prompt}, opt, eos, [&](int, int32_t id) {
    if (!opt.stop_at_eos || id != eos) printer.add(id);  // the continuation ends before eos
  });
  printer.finish();
  if (m.checkpoint)
    fmt::print(stderr, "peak resident memory {:.1f} MB (weights {:.1f} MB)\n",
               peak_resident_bytes() / 1e6, m.checkpoint->weight_bytes() / 1e6);
  // Hybrids (qwen3_next, qwen3_5_moe): the Gated DeltaNet layers' state does not grow.
  if (const int64_t state = m.decoder->cache_state_bytes(); state > 0)
    fmt::print(stderr,
               "cache per sequence: {:.1f} KB per position (full-attention layers) + {:.1f} KB "
               "whatever the length (Gated DeltaNet states)\n",
               m.decoder->cache_bytes_per_token() / 1e3, state / 1e3);
  return 0;
}

}  // namespace

std::function<int()> add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* c = app.add_subcommand(
      "train", "Train the MoE language model (the default small MoE on the bundled corpus)");
  c->add_option("--config", a->config_path, "config.json (Hugging Face style + \"training\")")
      ->check(CLI::ExistingFile);
  c->add_option("--out", a->out, "run directory")->capture_default_str();
  c->add_option("--init-from", a->init_from,
                "fine-tune MODEL: a run, a Hugging Face checkpoint directory or a GGUF file (its "
                "config, weights and tokenizer; --config then holds training and routing keys "
                "only)");
  c->add_option("--train", a->train_parts,
                "parts that train, comma list of routers, experts, shared, dense, attention, "
                "embeddings, norms, head, all (default all); the others are frozen");
  c->add_option("--steps", a->steps, "optimizer steps (overrides training.max_steps)")
      ->check(CLI::PositiveNumber);
  c->add_flag("--resume", a->resume, "continue the run in --out from its checkpoint");
  c->add_option("--stop-after", a->stop_after,
                "stop with a checkpoint once this many steps are done, keeping the schedule of "
                "training.max_steps (resume later with --resume)")
      ->check(CLI::PositiveNumber);
  c->add_flag("--profile", a->profile,
              "time the parts of every step (embedding, attention, router, dispatch, experts, "
              "combine, head and loss, their backwards, optimizer, data); print the table at the "
              "end and write profile.json into the run");
  c->add_flag("--dense", a->dense, "the dense baseline: same config with zero experts");
  c->add_flag("--match-active-compute", a->match_active,
              "with --dense: FFN width = k * expert width (+ shared), the MoE's active compute");
  c->add_option("--data", a->data,
                "your text: a .txt/.md file, a .jsonl file ({\"text\", \"domain\"} per line) "
                "or a directory of them (subfolder = domain); read-only (training.data; default: "
                "the bundled corpus)");
  c->add_option("--data-dir", a->data_dir,
                "moe's data cache: corpus, tokenizers, token files (training.data_dir)");
  c->add_option("--valid-fraction", a->valid_fraction,
                "held-out share of your documents (training.valid_fraction, default 0.05)")
      ->check(CLI::Range(0.0, 1.0));
  c->add_option("--tokenizer", a->tokenizer,
                "sentencepiece (trained on the train split), byte, or a tokenizer file: a "
                "sentencepiece .model or a Hugging Face tokenizer.json (training.tokenizer)");
  c->add_option("--seed", a->seed, "overrides training.seed")->check(CLI::NonNegativeNumber);
  add_threads_option(c, a->threads);
  c->add_option("--device", a->device,
                "where the training steps run: cpu, or cuda (a build with -DMOE_CUDA=ON; "
                "evaluation and checkpoints stay on the CPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  c->add_flag("--no-progress", a->no_progress, "no progress bar");
  c->add_flag("--print-config", a->print_config,
              "print the effective config.json (defaults, file and flags applied) and exit");
  c->add_option("--expert-parallel", a->expert_parallel,
                "under mpirun -np W: experts split over groups of P ranks (P divides W and E)")
      ->check(CLI::NonNegativeNumber);
  return [a] { return run_train(*a); };
}

// The MODEL argument of every command that takes one.
constexpr const char* kModelHelp =
    "a run directory, a Hugging Face checkpoint directory (mixtral, qwen2_moe, qwen3_moe, olmoe, "
    "granitemoe, deepseek_v2/v3, kimi_k2, gpt_oss, qwen3_next, qwen3_5_moe; dense llama, mistral, "
    "qwen2, qwen3) or a GGUF file (llama, qwen2moe, qwen3moe, olmoe, granitemoe, deepseek2, "
    "gpt-oss, qwen3next, qwen35moe; dense qwen2, qwen3)";

std::function<int()> add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* c = app.add_subcommand(
      "eval",
      "Loss and perplexity per domain: a run on its validation split, or any model on --data");
  c->add_option("model", a->model, kModelHelp)->required();
  c->add_option("--data-dir", a->data_dir,
                "moe's data cache (default: the run's training.data_dir); the data is the run's");
  c->add_option("--data", a->data,
                "your text instead (a file, a directory or JSONL), in disjoint windows of --ctx");
  c->add_option("--ctx", a->ctx, "window length (default: a run's seq_len, else up to 512)")
      ->check(CLI::PositiveNumber);
  c->add_option("--batches", a->batches, "batches of windows (0: all)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--quantize", a->quantize, "quantize every matrix at load (as generate)");
  add_threads_option(c, a->threads);
  return [a] { return run_eval(*a); };
}

std::function<int()> add_perplexity_command(CLI::App& app) {
  auto a = std::make_shared<PerplexityArgs>();
  auto* c = app.add_subcommand("perplexity",
                               "Sliding-window perplexity of any model on your text, per domain");
  c->add_option("model", a->model, kModelHelp)->required();
  c->add_option("--data", a->data,
                "your text: a .txt/.md file, a .jsonl file ({\"text\", \"domain\"} per line) or "
                "a directory of them (subfolder = domain); read-only")
      ->required();
  c->add_option("--ctx", a->ctx,
                "tokens of context per window (default: a run's seq_len, else the model's "
                "context up to 512)")
      ->check(CLI::PositiveNumber);
  c->add_option("--stride", a->stride,
                "a window every S tokens, each token scored once by the window that gives it "
                "the most context (default ctx/2; = ctx: disjoint windows)")
      ->check(CLI::PositiveNumber);
  c->add_option("--batch", a->batch, "windows per forward")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--json", a->json, "also write the result as JSON to this file");
  c->add_option("--quantize", a->quantize, "quantize every matrix at load (as generate)");
  c->add_flag("--no-progress", a->no_progress, "no progress bar");
  add_threads_option(c, a->threads);
  return [a] { return run_perplexity(*a); };
}

std::function<int()> add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* c = app.add_subcommand("generate",
                               "Sample text from a run, a Hugging Face checkpoint or a GGUF file");
  c->add_option("model", a->run, kModelHelp);
  c->add_option("--model", a->model, "the model, as the positional argument");
  c->add_option("--prompt", a->prompt, "text to continue");
  c->add_option("--prompt-ids", a->prompt_ids,
                "token ids to continue instead of --prompt (e.g. \"1,15,7\"; a run's prompt gets "
                "no BOS added)");
  c->add_option("--max-new-tokens", a->max_new_tokens,
                "tokens to generate (fewer when the model's context ends first)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--temperature", a->temperature, "0: greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--top-k", a->top_k, "0: off")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--top-p", a->top_p, "in (0, 1]; 1: off")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            char* end = nullptr;
            const double v = std::strtod(s.c_str(), &end);
            const bool ok = end != s.c_str() && *end == '\0' && v > 0 && v <= 1;
            return ok ? "" : fmt::format("{} is not in (0, 1]", s);
          },
          "(0, 1]"));
  c->add_option("--seed", a->seed, "sampling seed")->capture_default_str();
  c->add_option("--quantize", a->quantize,
                "quantize every matrix at load (q8_0, q4_0, q4_k, q5_k, q6_k, bf16, f16); the "
                "router, norms and embedding table stay as stored");
  c->add_flag("--ignore-eos", a->ignore_eos,
              "keep generating after the end-of-text token (for timing)");
  c->add_flag("--warmup", a->warmup,
              "before the timed run, run the prompt's prefill and one step untimed, as "
              "llama-bench warms up (for timing: first-touch costs then fall outside the prompt)");
  add_threads_option(c, a->threads);
  return [a] { return run_generate(*a); };
}

}  // namespace moe::cli
