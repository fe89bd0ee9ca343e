// `moe train`, `moe eval`, `moe generate`: the language-model jobs. Parsing and printing only;
// the library (trainer.h, data.h, generate.h, inference_model.h) does the work.
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "moe/communicator.h"
#include "moe/data.h"
#include "moe/dataset.h"
#include "moe/error.h"
#include "moe/generate.h"
#include "moe/gguf_tokenizer.h"
#include "moe/hf_tokenizer.h"
#include "moe/inference_model.h"
#include "moe/parallel.h"
#include "moe/report.h"
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
  bool print_config = false;
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

// The run's copy of its tokenizer (what validation_stream keys token caches by).
std::string run_tokenizer_file(const std::string& run, const TrainConfig& t) {
  if (t.tokenizer == "byte") return "";
  const std::string json = run + "/tokenizer.json";
  if (t.tokenizer != "sentencepiece" && std::filesystem::exists(json)) return json;
  return run + "/tokenizer.model";
}

struct EvalArgs {
  std::string run, data_dir;
  int batches = 0, threads = 0;
};

int run_eval(const EvalArgs& a) {
  set_num_threads(a.threads);
  LoadedRun run = load_run(a.run);
  const TrainConfig& t = run.config.training;
  // The run's own tokenizer on the validation split of the data it trained on (the bundled
  // corpus or the user's text that config.json records); domain indices as in training.
  DataOptions d = data_options(t, run.config.vocab_size);
  if (!a.data_dir.empty()) d.dir = a.data_dir;
  const TokenStream valid =
      validation_stream(d, *run.tokenizer, run_tokenizer_file(a.run, t), log_line);
  const EvalResult e = evaluate(*run.model, valid, t.batch_size, t.seq_len,
                                a.batches > 0 ? static_cast<int64_t>(a.batches) * t.batch_size : 0,
                                window_progress("eval"));
  fmt::print("{}: validation loss {:.4f}, perplexity {:.2f} over {} tokens\n", a.run, e.loss,
             std::exp(e.loss), e.tokens);
  fmt::print("{:<10} {:>8} {:>11} {:>9}\n", "domain", "loss", "perplexity", "tokens");
  for (const auto& [name, v] : e.per_domain)
    fmt::print("{:<10} {:>8.4f} {:>11.2f} {:>9}\n", name, v.first, std::exp(v.first), v.second);
  return 0;
}

struct GenerateArgs {
  std::string run, model, prompt, prompt_ids, quantize;
  bool ignore_eos = false;
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

// --quantize's type (F32 without it: the weights as stored).
GgmlType quantize_type(const GenerateArgs& a) {
  if (a.quantize.empty()) return GgmlType::F32;
  GgmlType t = GgmlType::F32;
  MOE_REQUIRE(parse_ggml_type(a.quantize, &t) && is_weight_type(t),
              "--quantize: \"{}\" is not a weight type (f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, "
              "q6_k)",
              a.quantize);
  return t;
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

// `moe generate --model DIR|FILE.gguf`: a Hugging Face checkpoint or a GGUF file through the
// inference model; the tokenizer is the directory's or the GGUF metadata's.
int run_generate_checkpoint(const GenerateArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  auto model = InferenceModel::load(a.model, quantize_type(a));
  const ModelConfig& c = model->config();
  const ParameterCount n = model->parameters();
  const double load_s = seconds_since(t0);
  const GgufFile* gguf = model->gguf();
  const std::string format =
      gguf ? fmt::format("GGUF {}", gguf->string("general.architecture")) : "Hugging Face";
  // With --quantize the weights computed with are the quantized copies.
  const int64_t weight_bytes =
      model->quantized_bytes() > 0 ? model->quantized_bytes() : model->weight_bytes();
  fmt::print(stderr,
             "{}: {} ({}) with {} layers, {} experts (top-{}); parameters {} total, {} active per "
             "token; weights {} ({:.1f} MB: {}), loaded in {:.2f} s\n",
             a.model, c.model_type, format, c.num_hidden_layers, c.num_local_experts,
             c.moe.num_experts_per_tok, count_text(n.total), count_text(n.active),
             ggml_type_name(static_cast<uint32_t>(model->weight_type())), weight_bytes / 1e6,
             model->weight_types(), load_s);
  std::unique_ptr<Tokenizer> tok;
  std::vector<int32_t> prompt = prompt_ids_of(a, a.model, c.vocab_size);
  if (a.prompt_ids.empty()) {
    tok = gguf ? load_gguf_tokenizer(*gguf) : load_tokenizer_dir(a.model);
    if (gguf ? gguf_adds_bos(*gguf, *tok) : checkpoint_adds_bos(a.model, *tok))
      prompt.push_back(tok->bos_id());
    const auto ids = tok->encode(a.prompt);
    prompt.insert(prompt.end(), ids.begin(), ids.end());
  }
  MOE_REQUIRE(!prompt.empty(), "{}: the prompt is empty (give --prompt or --prompt-ids)", a.model);
  note_context_limit(a, prompt.size(), c.max_position_embeddings);
  if (tok) fmt::print("{}", a.prompt);
  StreamPrinter printer(tok.get(), prompt.size());
  generate(*model, {prompt}, generate_options(a), tok ? tok->eos_id() : -1,
           [&](int, int32_t id) { printer.add(id); });
  printer.finish();
  fmt::print(stderr, "peak resident memory {:.1f} MB (weights {:.1f} MB)\n",
             peak_resident_bytes() / 1e6, model->weight_bytes() / 1e6);
  return 0;
}

int run_generate(const GenerateArgs& a) {
  set_num_threads(a.threads);
  MOE_REQUIRE(a.run.empty() != a.model.empty(),
              "generate: give either a run directory or --model DIR|FILE.gguf, not {}",
              a.run.empty() ? "neither" : "both");
  MOE_REQUIRE(a.prompt.empty() || a.prompt_ids.empty(),
              "generate: give --prompt or --prompt-ids, not both");
  const GgmlType quantize = quantize_type(a);  // checked before anything loads
  if (!a.model.empty()) return run_generate_checkpoint(a);
  LoadedRun run = load_run(a.run);
  const Tokenizer* tok = a.prompt_ids.empty() ? run.tokenizer.get() : nullptr;
  std::vector<int32_t> prompt = prompt_ids_of(a, a.run, run.config.vocab_size);
  if (tok) {  // a document starts as in training: BOS, or EOS for a tokenizer without one
    prompt.push_back(document_frame(*tok).first);
    const auto ids = tok->encode(a.prompt);
    prompt.insert(prompt.end(), ids.begin(), ids.end());
    fmt::print("{}", a.prompt);
  }
  MOE_REQUIRE(!prompt.empty(), "{}: the prompt is empty (give --prompt or --prompt-ids)", a.run);
  note_context_limit(a, prompt.size(), run.config.max_position_embeddings);
  const GenerateOptions opt = generate_options(a);
  const int32_t eos = run.tokenizer->eos_id();
  TransformerLm lm(*run.model, quantize);
  if (quantize != GgmlType::F32)
    fmt::print(stderr, "{}: matrices quantized to {} at load ({:.1f} MB)\n", a.run,
               ggml_type_name(static_cast<uint32_t>(quantize)), lm.quantized_bytes() / 1e6);
  StreamPrinter printer(tok, prompt.size());  // after the load: the prompt time is the prompt's
  generate(lm, {prompt}, opt, eos, [&](int, int32_t id) {
    if (!opt.stop_at_eos || id != eos) printer.add(id);  // a run's continuation ends before eos
  });
  printer.finish();
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
                "fine-tune MODEL: a run or a Hugging Face checkpoint directory (its config, "
                "weights and tokenizer; --config then holds training and routing keys only)");
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

std::function<int()> add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* c = app.add_subcommand("eval", "Validation loss and perplexity of a run, per domain");
  c->add_option("run", a->run, "run directory")->required();
  c->add_option("--data-dir", a->data_dir,
                "moe's data cache (default: the run's training.data_dir); the data is the run's");
  c->add_option("--batches", a->batches, "validation batches (0: the whole split)")
      ->check(CLI::NonNegativeNumber);
  add_threads_option(c, a->threads);
  return [a] { return run_eval(*a); };
}

std::function<int()> add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* c = app.add_subcommand(
      "generate", "Sample text from a trained run or a Hugging Face checkpoint (--model)");
  c->add_option("run", a->run, "run directory");
  c->add_option(
      "--model", a->model,
      "a Hugging Face checkpoint directory (mixtral, qwen2_moe, qwen3_moe, olmoe) or a GGUF "
      "file (llama, qwen2moe, qwen3moe, olmoe)");
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
  add_threads_option(c, a->threads);
  return [a] { return run_generate(*a); };
}

}  // namespace moe::cli
