#include "moe/upcycle.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "core/input_file.h"
#include "moe/error.h"
#include "moe/hf_checkpoint.h"
#include "moe/hf_tokenizer_export.h"
#include "moe/model_path.h"
#include "moe/rng.h"
#include "moe/safetensors.h"
#include "moe/trainer.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

// The dense model's tensors under their Hugging Face names, in fp32, with the type they are
// stored in (which the copies keep).
class DenseTensors {
 public:
  virtual ~DenseTensors() = default;
  virtual DType dtype(const std::string& name) const = 0;
  virtual std::vector<float> read(const std::string& name, const Shape& shape) const = 0;
};

class HfDenseTensors : public DenseTensors {
 public:
  explicit HfDenseTensors(const std::string& dir) : w_(HfWeights::open(dir)) {}
  DType dtype(const std::string& name) const override {
    const TensorEntry& e = w_.entry(name);
    MOE_REQUIRE(e.dtype == DType::F32 || e.dtype == DType::BF16 || e.dtype == DType::F16,
                "{}: tensor {} has dtype {}, expected F32, BF16 or F16", w_.file_of(name).path(),
                name, dtype_name(e.dtype));
    return e.dtype;
  }
  std::vector<float> read(const std::string& name, const Shape& shape) const override {
    std::vector<float> v(static_cast<size_t>(shape.numel()));
    w_.file_of(name).read_into<float>(name, shape, v.data());
    return v;
  }

 private:
  HfWeights w_;
};

// A dense run's parameters: the Hugging Face names except the MLP's (mlp.ffn.w1/w3/w2).
class RunDenseTensors : public DenseTensors {
 public:
  explicit RunDenseTensors(LoadedRun& run) {
    for (const auto& p : run.model->parameters()) params_[p.name] = &p;
  }
  DType dtype(const std::string&) const override { return DType::F32; }
  std::vector<float> read(const std::string& name, const Shape& shape) const override {
    std::string ours = name;
    for (const auto& [hf, our] : {std::pair{"mlp.gate_proj.weight", "mlp.ffn.w1"},
                                  std::pair{"mlp.up_proj.weight", "mlp.ffn.w3"},
                                  std::pair{"mlp.down_proj.weight", "mlp.ffn.w2"}})
      if (auto pos = ours.find(hf); pos != std::string::npos) ours.replace(pos, strlen(hf), our);
    auto it = params_.find(ours);
    MOE_CHECK(it != params_.end(), "upcycle: the run has no parameter {}", ours);
    MOE_CHECK(it->second->shape == shape, "upcycle: {} has shape {}, expected {}", ours,
              it->second->shape.str(), shape.str());
    return std::vector<float>(it->second->value, it->second->value + shape.numel());
  }

 private:
  std::map<std::string, const ParamRef<float>*> params_;
};

// A dense run described as the Hugging Face llama checkpoint it computes the same function as.
nlohmann::json run_as_llama_config(const ModelConfig& c, const Tokenizer& tok) {
  return {{"model_type", "llama"},
          {"architectures", {"LlamaForCausalLM"}},
          {"torch_dtype", "float32"},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.dense_width()},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"head_dim", c.head_size()},
          {"max_position_embeddings", c.max_position_embeddings},
          {"rope_theta", c.rope_theta},
          {"rope_scaling", rope_scaling_to_json(c.rope_scaling)},
          {"rms_norm_eps", c.rms_norm_eps},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"initializer_range", c.initializer_range},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"attention_dropout", 0.0},
          {"mlp_bias", false},
          {"use_cache", true},
          {"bos_token_id", tok.bos_id() >= 0 ? nlohmann::json(tok.bos_id()) : nlohmann::json()},
          {"eos_token_id", tok.eos_id() >= 0 ? nlohmann::json(tok.eos_id()) : nlohmann::json()}};
}

// The MoE family's config.json: the dense config's keys (ids, RoPE, norms, ...) with the
// family's model type, expert keys and renormalized top-k.
nlohmann::json upcycled_config(const nlohmann::json& dense, const ModelConfig& dc,
                               const std::string& family, const UpcycleOptions& opt,
                               int expert_width) {
  nlohmann::json j = dense;
  // The shape and numerics explicitly: a key the dense config leaves out takes the dense
  // class's default, which the MoE class may not share (llama's rope_theta 1e4 and
  // num_key_value_heads = num_attention_heads against Mixtral's 1e6 and 8, ...).
  put_hf_shape_keys(j, dc);
  // Keys of the dense config classes that the MoE ones do not have (all at values that change
  // nothing: model_config_from_hf refused the others).
  for (const char* key : {"mlp_bias", "pretraining_tp", "layer_types", "_name_or_path"})
    j.erase(key);
  j["model_type"] = family;
  j["num_experts_per_tok"] = opt.top_k;
  j["router_aux_loss_coef"] = 0.01 / opt.top_k;  // DESIGN.md's alpha in Hugging Face's convention
  j["output_router_logits"] = false;
  if (family == "mixtral") {
    j["architectures"] = {"MixtralForCausalLM"};
    j.erase("attention_bias");  // false (refused otherwise); Mixtral has no such key
    j["intermediate_size"] = expert_width;
    j["num_local_experts"] = opt.experts;
    j["router_jitter_noise"] = 0.0;
    if (!j.contains("sliding_window")) j["sliding_window"] = nullptr;
    return j;
  }
  j["architectures"] = {family == "qwen2_moe" ? "Qwen2MoeForCausalLM" : "Qwen3MoeForCausalLM"};
  j["moe_intermediate_size"] = expert_width;  // intermediate_size stays: the (absent) dense layers
  j["num_experts"] = opt.experts;
  j["norm_topk_prob"] = true;
  j["decoder_sparse_step"] = 1;
  j["mlp_only_layers"] = nlohmann::json::array();
  if (family == "qwen2_moe") {
    j["shared_expert_intermediate_size"] = expert_width;
    j["qkv_bias"] = true;
  }
  return j;
}

// Removes a directory being written unless it was renamed into place.
struct TempDirGuard {
  fs::path path;
  bool done = false;
  ~TempDirGuard() {
    std::error_code ec;
    if (!done) fs::remove_all(path, ec);
  }
};

// The weights as save_pretrained shards them: tensors collect in memory and go to a shard file
// once a layer ends past max_bytes, so memory holds about one shard, not the whole model. One
// shard is model.safetensors; more are model-0000i-of-0000n.safetensors and
// model.safetensors.index.json (their number is known at the end, so they are renamed then).
class ShardedWriter {
 public:
  ShardedWriter(fs::path dir, int64_t max_bytes, std::map<std::string, std::string> metadata)
      : dir_(std::move(dir)), max_bytes_(max_bytes), metadata_(std::move(metadata)) {
    start();
  }
  template <class T>
  void add(const std::string& name, const Shape& shape, const T* data, DType stored) {
    w_->add(name, shape, data, stored);
    bytes_ += shape.numel() * dtype_size(stored);
    total_ += shape.numel() * dtype_size(stored);
    names_.push_back(name);
  }
  // Shards are cut between layers, never inside one.
  void end_layer() {
    if (bytes_ >= max_bytes_) flush();
  }
  void finish() {
    if (!names_.empty() || shards_.empty()) flush();
    const int n = static_cast<int>(shards_.size());
    if (n == 1) {
      fs::rename(dir_ / "shard-1", dir_ / "model.safetensors");
      return;
    }
    nlohmann::json map = nlohmann::json::object();
    for (int i = 0; i < n; ++i) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
      fs::rename(dir_ / fmt::format("shard-{}", i + 1), dir_ / file);
      for (const std::string& name : shards_[i]) map[name] = file;
    }
    const nlohmann::json index = {{"metadata", {{"total_size", total_}}}, {"weight_map", map}};
    const std::string text = index.dump(2) + "\n";
    write_file_atomic((dir_ / "model.safetensors.index.json").string(), text.data(), text.size());
  }

 private:
  void start() {
    w_.emplace();
    for (const auto& [k, v] : metadata_) w_->set_metadata(k, v);
    bytes_ = 0;
    names_.clear();
  }
  void flush() {
    shards_.push_back(names_);
    w_->write((dir_ / fmt::format("shard-{}", shards_.size())).string());
    start();
  }

  fs::path dir_;
  int64_t max_bytes_;
  std::map<std::string, std::string> metadata_;
  std::optional<SafeTensorsWriter> w_;
  int64_t bytes_ = 0, total_ = 0;
  std::vector<std::string> names_;
  std::vector<std::vector<std::string>> shards_;  // the tensors of each written shard
};

// Copies the dense model's layer tensors that keep their name, in their stored type.
void copy_tensor(const DenseTensors& src, ShardedWriter& w, const std::string& name,
                 const Shape& shape) {
  const std::vector<float> v = src.read(name, shape);
  w.add(name, shape, v.data(), src.dtype(name));
}

// The tokenizer and generation files of a Hugging Face directory, copied as they are.
void copy_tokenizer_files(const std::string& from, const fs::path& to) {
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                        "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                        "generation_config.json", "chat_template.jinja"})
    if (fs::is_regular_file(fs::path(from) / f)) fs::copy_file(fs::path(from) / f, to / f);
}

}  // namespace

std::string upcycled_family(const std::string& dense_family) {
  if (dense_family == "llama" || dense_family == "mistral" || dense_family == "run")
    return "mixtral";
  if (dense_family == "qwen2") return "qwen2_moe";
  if (dense_family == "qwen3") return "qwen3_moe";
  throw Error(fmt::format("upcycle: no MoE family for model_type {}", dense_family));
}

UpcycleResult upcycle(const std::string& dense, const std::string& out, const UpcycleOptions& opt) {
  const int E = opt.experts, K = opt.top_k, G = opt.granularity;
  MOE_REQUIRE(E >= 1, "upcycle: --experts must be at least 1, got {}", E);
  MOE_REQUIRE(K >= 1 && K <= E, "upcycle: --top-k = {} must be in [1, --experts = {}]", K, E);
  MOE_REQUIRE(G >= 1 && E % G == 0,
              "upcycle: --experts = {} must be a multiple of --granularity = {} (E/G groups of the "
              "G slices)",
              E, G);
  MOE_REQUIRE(!fs::exists(fs::symlink_status(out)),
              "{}: already exists; upcycle writes a new directory (remove it or pick another "
              "--out)",
              out);

  // The dense model: its config.json (Hugging Face form) and its tensors.
  UpcycleResult r;
  nlohmann::json dense_json;
  std::unique_ptr<DenseTensors> src;
  std::optional<LoadedRun> run;
  const ModelFormat format = model_format_of(dense);
  MOE_REQUIRE(format != ModelFormat::Gguf,
              "{}: a GGUF file; upcycle takes a dense run or Hugging Face checkpoint directory",
              dense);
  if (format == ModelFormat::Run) {
    const ModelConfig rc = load_model_config(dense + "/config.json");
    MOE_REQUIRE(rc.num_local_experts == 0,
                "{}/config.json: num_local_experts = {}: an MoE run already; upcycle takes a "
                "dense run (num_local_experts 0)",
                dense, rc.num_local_experts);
    // Biases and q/k norms of a run would need their family's names and checks here.
    MOE_REQUIRE(!rc.attention_bias && rc.qk_norm == QkNorm::None,
                "{}/config.json: a dense run with q/k/v biases or q/k norms cannot be upcycled "
                "yet (save it with `moe convert --to hf` first)",
                dense);
    run.emplace(load_run(dense));
    dense_json = run_as_llama_config(run->config, *run->tokenizer);
    src = std::make_unique<RunDenseTensors>(*run);
    r.source = "run";
  } else {
    dense_json = read_json_file(dense + "/config.json");
    const ModelConfig hc = model_config_from_hf(dense_json, dense + "/config.json");
    MOE_REQUIRE(is_dense_hf_family(hc.model_type),
                "{}/config.json: model_type {} is a Mixture of Experts already ({} experts); "
                "upcycle takes a dense model (llama, mistral, qwen2, qwen3 or a dense run)",
                dense, hc.model_type, hc.num_local_experts);
    src = std::make_unique<HfDenseTensors>(dense);
    r.source = hc.model_type;
  }
  const ModelConfig dc = model_config_from_hf(dense_json, dense + "/config.json");
  const int64_t d = dc.hidden_size, I = dc.dense_width();
  MOE_REQUIRE(I % G == 0,
              "upcycle: --granularity = {} does not divide the MLP width intermediate_size = {} "
              "of {}",
              G, I, dense);
  const int64_t W = I / G;
  r.family = upcycled_family(r.source);
  r.expert_width = static_cast<int>(W);
  r.starts_dense = K % G == 0;

  const nlohmann::json out_json = upcycled_config(dense_json, dc, r.family, opt, r.expert_width);
  const ModelConfig oc = model_config_from_hf(out_json, out + "/config.json");
  const ParameterCount n = count_parameters(oc);
  r.total_parameters = n.total;
  r.active_parameters = n.active;

  // Everything goes into a temporary sibling directory, renamed into place at the end.
  fs::path target = fs::absolute(out).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();  // "DIR/"
  fs::create_directories(target.parent_path());
  TempDirGuard tmp{target.parent_path() /
                   fmt::format(".{}.upcycle-{}", target.filename().string(), getpid())};
  fs::remove_all(tmp.path);
  fs::create_directory(tmp.path);

  // The tensors: what keeps its name, then each layer's MoE block.
  ShardedWriter w(
      tmp.path, opt.max_shard_bytes,
      {{"format", "pt"},
       {"upcycled_from", fs::absolute(dense).string()},
       {"upcycle", fmt::format("experts={} top_k={} granularity={} seed={}", E, K, G, opt.seed)}});
  const int64_t V = dc.vocab_size, hd = dc.head_size();
  const int64_t qd = dc.num_attention_heads * hd, kvd = dc.num_key_value_heads * hd;
  copy_tensor(*src, w, "model.embed_tokens.weight", {V, d});
  copy_tensor(*src, w, "model.norm.weight", {d});
  if (!dc.tie_word_embeddings) copy_tensor(*src, w, "lm_head.weight", {V, d});
  Rng rng(opt.seed);
  const float std_dev = static_cast<float>(oc.initializer_range);
  std::vector<float> router(static_cast<size_t>(E * d)), slice(static_cast<size_t>(W * d));
  std::vector<float> shared_gate, shared_up, zeros;
  for (int l = 0; l < dc.num_hidden_layers; ++l) {
    auto copy = [&](HfTensor t, const Shape& s) {
      MOE_CHECK(hf_tensor_name(dc, l, t) == hf_tensor_name(oc, l, t), "upcycle: renamed tensor");
      copy_tensor(*src, w, hf_tensor_name(dc, l, t), s);
    };
    copy(HfTensor::InputNorm, {d});
    copy(HfTensor::PostAttentionNorm, {d});
    copy(HfTensor::Q, {qd, d});
    copy(HfTensor::K, {kvd, d});
    copy(HfTensor::V, {kvd, d});
    copy(HfTensor::O, {d, qd});
    if (dc.attention_bias) {
      copy(HfTensor::QBias, {qd});
      copy(HfTensor::KBias, {kvd});
      copy(HfTensor::VBias, {kvd});
    }
    if (dc.qk_norm == QkNorm::PerHead) {
      copy(HfTensor::QNorm, {hd});
      copy(HfTensor::KNorm, {hd});
    }

    // The router: one N(0, initializer_range) row per virtual group, shared by its G experts.
    for (int g = 0; g < E / G; ++g) {
      rng.fill_normal(router.data() + g * G * d, d, 0.0, std_dev);
      for (int s = 1; s < G; ++s)
        std::copy_n(router.data() + g * G * d, d, router.data() + (g * G + s) * d);
    }
    w.add(hf_tensor_name(oc, l, HfTensor::Router), {E, d}, router.data(), DType::F32);

    // Expert e = g*G + s: slice s of gate_proj and up_proj (rows), of down_proj (columns) x G.
    const std::string gate_name = hf_tensor_name(dc, l, HfTensor::DenseGate);
    const std::string up_name = hf_tensor_name(dc, l, HfTensor::DenseUp);
    const std::string down_name = hf_tensor_name(dc, l, HfTensor::DenseDown);
    const std::vector<float> gate = src->read(gate_name, {I, d});
    const std::vector<float> up = src->read(up_name, {I, d});
    const std::vector<float> down = src->read(down_name, {d, I});
    for (int e = 0; e < E; ++e) {
      const int64_t s = e % G;
      w.add(hf_tensor_name(oc, l, HfTensor::ExpertGate, e), {W, d}, gate.data() + s * W * d,
            src->dtype(gate_name));
      w.add(hf_tensor_name(oc, l, HfTensor::ExpertUp, e), {W, d}, up.data() + s * W * d,
            src->dtype(up_name));
      for (int64_t row = 0; row < d; ++row)
        for (int64_t c = 0; c < W; ++c)
          slice[row * W + c] = static_cast<float>(G) * down[row * I + s * W + c];
      w.add(hf_tensor_name(oc, l, HfTensor::ExpertDown, e), {d, W}, slice.data(),
            src->dtype(down_name));
    }
    if (oc.moe.n_shared_experts > 0) {  // qwen2_moe: a shared expert that adds zero
      shared_gate.resize(static_cast<size_t>(W * d));
      shared_up.resize(shared_gate.size());
      zeros.assign(static_cast<size_t>(W * d), 0.0f);
      rng.fill_normal(shared_gate.data(), W * d, 0.0, std_dev);
      rng.fill_normal(shared_up.data(), W * d, 0.0, std_dev);
      const DType t = src->dtype(gate_name);
      w.add(hf_tensor_name(oc, l, HfTensor::SharedGate), {W, d}, shared_gate.data(), t);
      w.add(hf_tensor_name(oc, l, HfTensor::SharedUp), {W, d}, shared_up.data(), t);
      w.add(hf_tensor_name(oc, l, HfTensor::SharedDown), {d, W}, zeros.data(), t);
      w.add(hf_tensor_name(oc, l, HfTensor::SharedExpertGate), {1, d}, zeros.data(), DType::F32);
    }
    w.end_layer();
  }
  w.finish();
  const std::string text = out_json.dump(2) + "\n";
  write_file_atomic((tmp.path / "config.json").string(), text.data(), text.size());
  if (run)
    write_run_tokenizer_files(dense, run->config.training, tmp.path.string());
  else
    copy_tokenizer_files(dense, tmp.path);
  MOE_REQUIRE(!fs::exists(fs::symlink_status(target)), "{}: appeared while upcycling; not replaced",
              out);
  fs::rename(tmp.path, target);
  tmp.done = true;
  return r;
}

}  // namespace moe
