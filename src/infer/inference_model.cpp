#include "moe/inference_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/mapped_file.h"
#include "moe/error.h"
#include "moe/gemm.h"
#include "moe/gguf_model.h"
#include "moe/rmsnorm.h"
#include "moe/router.h"

namespace moe {

namespace fs = std::filesystem;

// The tensors of a model as views (matrices) and fp32 copies (vectors, the router), whatever
// file holds them. Globals are asked for with layer -1 and kind Q (embedding), O (head) or
// InputNorm (final norm).
class InferenceModel::Source {
 public:
  virtual ~Source() = default;
  virtual bool has_head() const = 0;
  virtual WeightView matrix(int layer, HfTensor t, int64_t rows, int64_t cols) = 0;
  // The E experts' matrices [rows, cols] of one kind.
  virtual std::vector<WeightView> experts(int layer, HfTensor t, int E, int64_t rows,
                                          int64_t cols) = 0;
  virtual void vector(int layer, HfTensor t, int64_t n, float* out) = 0;
  // The router [E, d] in fp32.
  virtual void router(int layer, int64_t E, int64_t d, float* out) = 0;
  // A tensor of block `layer` by its name after "model.layers.N." (gpt_oss's sinks and biases),
  // of `shape`, in fp32.
  virtual void named(int layer, const std::string& what, const Shape& shape, float* out) = 0;
  // A matrix of block `layer` by its name after "model.layers.N." (the Gated DeltaNet's), of
  // `shape` (leading dimensions folded into rows), as stored.
  virtual WeightView named_matrix(int layer, const std::string& what,
                                  const std::vector<int64_t>& shape) = 0;
  // Whether block `layer` holds the tensor named() / named_matrix() would read for `what`.
  virtual bool has_named(int layer, const std::string& what) const = 0;
  // Whether zero-centred RMSNorm weights are stored with their 1 added (llama.cpp's files).
  virtual bool norms_hold_one() const { return false; }
  // What the views of experts() may point into besides the file (moved into the model).
  std::deque<std::vector<uint8_t>> owned;
};

class InferenceModel::HfSource : public InferenceModel::Source {
 public:
  HfSource(const ModelConfig& c, const HfWeights& w) : c_(c), w_(w) {}
  bool has_head() const override { return w_.has("lm_head.weight"); }
  WeightView matrix(int layer, HfTensor t, int64_t rows, int64_t cols) override {
    return view(name(layer, t), rows, cols);
  }
  std::vector<WeightView> experts(int layer, HfTensor t, int E, int64_t rows,
                                  int64_t cols) override {
    std::vector<WeightView> out;
    if (c_.model_type == "gpt_oss") return gpt_oss_experts(layer, t, E, rows, cols);
    const std::string fused = hf_fused_experts_in(w_, c_, layer, t != HfTensor::ExpertDown);
    if (!fused.empty()) {
      // One view per expert into the fused tensor, as the GGUF *_exps path: gate_up_proj
      // [E, 2F, d] holds expert e's gate rows at 2e, its up rows at 2e+1 (blocks of F rows);
      // down_proj [E, d, F].
      const bool down = t == HfTensor::ExpertDown;
      const int64_t blocks = down ? 1 : 2, block = t == HfTensor::ExpertUp ? 1 : 0;
      const WeightView all = view(fused, {E, blocks * rows, cols});
      const int64_t stride = rows * row_bytes(all.type, cols);  // one block of rows
      for (int e = 0; e < E; ++e)
        out.push_back({all.data + (e * blocks + block) * stride, all.type, rows, cols});
      return out;
    }
    for (int e = 0; e < E; ++e) out.push_back(view(hf_tensor_name(c_, layer, t, e), rows, cols));
    return out;
  }
  void vector(int layer, HfTensor t, int64_t n, float* out) override {
    const std::string nm = name(layer, t);
    // The shared expert's gate is [1, d] in Hugging Face checkpoints.
    if (t == HfTensor::SharedExpertGate)
      w_.file_of(nm).read_into<float>(nm, Shape{1, n}, out);
    else
      w_.file_of(nm).read_into<float>(nm, Shape{n}, out);
  }
  void router(int layer, int64_t E, int64_t d, float* out) override {
    const std::string nm = name(layer, HfTensor::Router);
    w_.file_of(nm).read_into<float>(nm, Shape{E, d}, out);
  }
  void named(int layer, const std::string& what, const Shape& shape, float* out) override {
    const std::string nm = fmt::format("{}layers.{}.{}", hf_model_prefix(c_), layer, what);
    w_.file_of(nm).read_into<float>(nm, shape, out);
  }
  WeightView named_matrix(int layer, const std::string& what,
                          const std::vector<int64_t>& shape) override {
    return view(fmt::format("{}layers.{}.{}", hf_model_prefix(c_), layer, what), shape);
  }
  bool has_named(int layer, const std::string& what) const override {
    return w_.has(fmt::format("{}layers.{}.{}", hf_model_prefix(c_), layer, what));
  }

 private:
  // gpt_oss stores experts for x @ W: gate_up_proj [E, d, 2F] (gate in the even columns, up in
  // the odd ones) and down_proj [E, F, d]. Each expert's matrix of kind t is transposed to
  // [rows, cols] in the stored type (a copy the model owns). The file's pages of a tensor are
  // dropped once its last copy is made (gate_up after the up rows, the loader's order; down at
  // once): resident memory then holds the copies only, not the file as well.
  std::vector<WeightView> gpt_oss_experts(int layer, HfTensor t, int E, int64_t rows,
                                          int64_t cols) {
    const bool down = t == HfTensor::ExpertDown;
    const std::string nm =
        fmt::format("model.layers.{}.mlp.experts.{}", layer, down ? "down_proj" : "gate_up_proj");
    if (!w_.has(nm) && w_.has(nm + "_blocks")) return mxfp4_experts(nm, t, E, rows, cols);
    // The stored matrix [in, out_stored]: out_stored = 2F (interleaved) or d.
    const int64_t in = cols, out_stored = down ? rows : 2 * rows;
    const WeightView all = view(nm, {E, in, out_stored});
    const int64_t es = dtype_size_of(all.type);
    const int64_t first = t == HfTensor::ExpertUp ? 1 : 0, step = down ? 1 : 2;
    std::vector<uint8_t>& buf = owned.emplace_back(static_cast<size_t>(E * rows * cols * es));
    std::vector<WeightView> views;
    for (int e = 0; e < E; ++e) {
      const uint8_t* src = all.data + e * in * out_stored * es;
      uint8_t* dst = buf.data() + e * rows * cols * es;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < in; ++i)
          std::memcpy(dst + (r * cols + i) * es, src + (i * out_stored + first + step * r) * es,
                      static_cast<size_t>(es));
      views.push_back({dst, all.type, rows, cols});
    }
    if (t != HfTensor::ExpertGate) w_.file_of(nm).release(w_.file_of(nm).entry(nm));
    return views;
  }
  static int64_t dtype_size_of(GgmlType t) { return t == GgmlType::F32 ? 4 : 2; }

  // The released checkpoints' MXFP4 experts (transformers integrations/mxfp4.py): name_blocks
  // [E, R, C/32, 16] uint8, two E2M1 codes per byte (value 2j in the low nibble of byte j, 2j + 1
  // in the high one), and name_scales [E, R, C/32] uint8 E8M0 exponents (2^(s - 127)), already
  // [out, in]: gate_up R = 2F rows with gate and up interleaved, down R = d. Each block is
  // regrouped into ggml's MXFP4 (quant.h: the scale byte first, value j and j + 16 in byte j),
  // the same 17 bytes per 32 values: computed in this format by the int8 kernels, never widened.
  std::vector<WeightView> mxfp4_experts(const std::string& nm, HfTensor t, int E, int64_t rows,
                                        int64_t cols) {
    const bool down = t == HfTensor::ExpertDown;
    const int64_t stored_rows = down ? rows : 2 * rows, nb = cols / kQK;
    MOE_REQUIRE(cols % kQK == 0, "{}: {}_blocks: rows of {} values are not whole MXFP4 blocks",
                w_.dir(), nm, cols);
    auto raw = [&](const std::string& name, const std::vector<int64_t>& shape) {
      const SafeTensorsFile& f = w_.file_of(name);
      const TensorEntry& e = f.entry(name);
      MOE_REQUIRE(e.dtype == DType::U8, "{}: tensor {} has dtype {}, expected U8 (MXFP4)", f.path(),
                  name, dtype_name(e.dtype));
      MOE_REQUIRE(e.shape == shape, "{}: tensor {} has shape [{}], expected [{}]", f.path(), name,
                  fmt::join(e.shape, ", "), fmt::join(shape, ", "));
      return f.raw(e);
    };
    const uint8_t* blocks = raw(nm + "_blocks", {E, stored_rows, nb, kQK / 2});
    const uint8_t* scales = raw(nm + "_scales", {E, stored_rows, nb});
    const int64_t first = t == HfTensor::ExpertUp ? 1 : 0, step = down ? 1 : 2;
    const int64_t rb = row_bytes(GgmlType::MXFP4, cols);
    std::vector<uint8_t>& buf = owned.emplace_back(static_cast<size_t>(E * rows * rb));
    std::vector<WeightView> views;
    for (int e = 0; e < E; ++e) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = e * stored_rows + first + step * r;
        mxfp4_from_hf_row(blocks + src * nb * (kQK / 2), scales + src * nb, nb,
                          reinterpret_cast<BlockMXFP4*>(buf.data() + (e * rows + r) * rb));
      }
      views.push_back({buf.data() + e * rows * rb, GgmlType::MXFP4, rows, cols});
    }
    if (t != HfTensor::ExpertGate)
      for (const std::string& part : {nm + "_blocks", nm + "_scales"})
        w_.file_of(part).release(w_.file_of(part).entry(part));
    return views;
  }
  std::string name(int layer, HfTensor t) const {
    if (layer >= 0) return hf_tensor_name(c_, layer, t);
    return t == HfTensor::Q   ? hf_model_prefix(c_) + "embed_tokens.weight"
           : t == HfTensor::O ? "lm_head.weight"
                              : hf_model_prefix(c_) + "norm.weight";
  }
  WeightView view(const std::string& name, int64_t rows, int64_t cols) const {
    return view(name, {rows, cols});
  }
  // The tensor of `shape` (its leading dimensions folded into rows).
  WeightView view(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafeTensorsFile& f = w_.file_of(name);
    const TensorEntry& e = f.entry(name);
    MOE_REQUIRE(e.dtype == DType::F32 || e.dtype == DType::BF16 || e.dtype == DType::F16,
                "{}: tensor {} has dtype {}, expected F32, BF16 or F16", f.path(), name,
                dtype_name(e.dtype));
    MOE_REQUIRE(e.shape == shape, "{}: tensor {} has shape [{}], expected [{}]", f.path(), name,
                fmt::join(e.shape, ", "), fmt::join(shape, ", "));
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    return WeightView{f.raw(e), ggml_type_of(e.dtype), rows, shape.back()};
  }
  const ModelConfig& c_;
  const HfWeights& w_;
};

class InferenceModel::GgufSource : public InferenceModel::Source {
 public:
  GgufSource(const ModelConfig& c, const GgufFile& f) : c_(c), f_(f) {}
  bool has_head() const override { return f_.has_tensor("output.weight"); }
  WeightView matrix(int layer, HfTensor t, int64_t rows, int64_t cols) override {
    const GgufTensorInfo& info = tensor(layer, t, {cols, rows});
    return WeightView{f_.data(info), type_of(info), rows, cols};
  }
  std::vector<WeightView> experts(int layer, HfTensor t, int E, int64_t rows,
                                  int64_t cols) override {
    const GgufTensorInfo* fused =
        t == HfTensor::ExpertDown ? nullptr : gguf_fused_gate_up(f_, layer, E, rows, cols);
    if (fused != nullptr) {
      const GgmlType type = type_of(*fused);
      const int64_t rb = row_bytes(type, cols);
      std::vector<WeightView> out;
      for (int e = 0; e < E; ++e)
        out.push_back(
            {f_.data(*fused) + gguf_gate_up_first_row(e, rows, t == HfTensor::ExpertUp) * rb, type,
             rows, cols});
      return out;
    }
    const GgufTensorInfo& info = tensor(layer, t, {cols, rows, E});
    const GgmlType type = type_of(info);
    const int64_t stride = rows * row_bytes(type, cols);  // one expert's matrix
    std::vector<WeightView> out;
    for (int e = 0; e < E; ++e) out.push_back({f_.data(info) + e * stride, type, rows, cols});
    return out;
  }
  void vector(int layer, HfTensor t, int64_t n, float* out) override {
    read(tensor(layer, t, {n}), out);
  }
  void router(int layer, int64_t E, int64_t d, float* out) override {
    read(tensor(layer, HfTensor::Router, {d, E}), out);
  }
  // gpt-oss's tensors by their Hugging Face names, from llama.cpp's (gguf_model.h).
  void named(int layer, const std::string& what, const Shape& shape, float* out) override {
    auto of = [&](const char* name, const std::vector<int64_t>& dims) -> const GgufTensorInfo& {
      return with_dims(fmt::format("blk.{}.{}", layer, name), dims);
    };
    const int64_t n0 = shape.ndim > 0 ? shape[0] : 0, n1 = shape.ndim > 1 ? shape[1] : 0;
    if (what == "self_attn.sinks") {
      read(of("attn_sinks.weight", {n0}), out);
    } else if (what == "self_attn.o_proj.bias") {
      read(of("attn_output.bias", {n0}), out);
    } else if (what == "mlp.router.bias") {
      read(of("ffn_gate_inp.bias", {n0}), out);
    } else if (what == "mlp.experts.down_proj_bias") {
      read(of("ffn_down_exps.bias", {n1, n0}), out);
    } else if (what == "mlp.experts.gate_up_proj_bias") {  // [E, 2F] interleaved, as the HF one
      const int64_t F = n1 / 2;
      std::vector<float> gate(static_cast<size_t>(n0 * F)), up(gate.size());
      read(of("ffn_gate_exps.bias", {F, n0}), gate.data());
      read(of("ffn_up_exps.bias", {F, n0}), up.data());
      for (size_t i = 0; i < gate.size(); ++i) {
        out[2 * i] = gate[i];
        out[2 * i + 1] = up[i];
      }
    } else if (what == "linear_attn.conv1d.weight") {  // [cd, 1, K]
      read(of("ssm_conv1d.weight", {shape[2], n0}), out);
    } else if (what == "linear_attn.A_log") {  // stored as -exp(A_log)
      const std::string name = fmt::format("blk.{}.ssm_a", layer);
      read(of("ssm_a", {n0}), out);
      for (int64_t h = 0; h < n0; ++h) out[h] = a_log_from_ssm_a(out[h], f_.path(), name, h);
    } else if (what == "linear_attn.dt_bias") {
      read(of("ssm_dt.bias", {n0}), out);
    } else if (what == "linear_attn.norm.weight") {  // the gated norm: not zero-centred
      read(of("ssm_norm.weight", {n0}), out);
    } else {
      MOE_CHECK(false, "GGUF: no tensor stands for {}", what);
    }
  }
  // The Gated DeltaNet's matrices under llama.cpp's qwen3next / qwen35moe names.
  WeightView named_matrix(int layer, const std::string& what,
                          const std::vector<int64_t>& shape) override {
    const GgufTensorInfo& info = with_dims(fmt::format("blk.{}.{}", layer, gguf_name_of(what)),
                                           {shape.back(), shape.front()});
    return WeightView{f_.data(info), type_of(info), shape.front(), shape.back()};
  }
  bool has_named(int layer, const std::string& what) const override {
    return f_.has_tensor(fmt::format("blk.{}.{}", layer, gguf_name_of(what)));
  }
  bool norms_hold_one() const override {
    return c_.model_type == "qwen3_next" || c_.model_type == "qwen3_5_moe";
  }

 private:
  // llama.cpp's name (after "blk.N.") of a DeltaNet matrix named as Hugging Face's; the fused
  // in_proj_qkvz is its legacy ssm_in.
  static std::string gguf_name_of(const std::string& what) {
    static const std::pair<const char*, const char*> names[] = {
        {"linear_attn.in_proj_qkvz.weight", "ssm_in.weight"},
        {"linear_attn.in_proj_qkv.weight", "attn_qkv.weight"},
        {"linear_attn.in_proj_z.weight", "attn_gate.weight"},
        {"linear_attn.in_proj_ba.weight", "ssm_ba.weight"},
        {"linear_attn.in_proj_b.weight", "ssm_beta.weight"},
        {"linear_attn.in_proj_a.weight", "ssm_alpha.weight"},
        {"linear_attn.out_proj.weight", "ssm_out.weight"}};
    for (const auto& [hf, gguf] : names)
      if (what == hf) return gguf;
    MOE_CHECK(false, "GGUF: no tensor stands for {}", what);
    return {};
  }
  const GgufTensorInfo& tensor(int layer, HfTensor t, const std::vector<int64_t>& dims) const {
    const std::string name = layer >= 0         ? gguf_tensor_name(c_, layer, t)
                             : t == HfTensor::Q ? "token_embd.weight"
                             : t == HfTensor::O ? "output.weight"
                                                : "output_norm.weight";
    return with_dims(name, dims);
  }
  // Tensor `name`, which must have `dims` (ggml order) as the metadata sizes it. Trailing
  // dimensions of 1 say nothing in GGUF (llama.cpp's converter stores Qwen's shared-expert gate
  // [1, d] as dims [d, 1]).
  const GgufTensorInfo& with_dims(const std::string& name, const std::vector<int64_t>& dims) const {
    const GgufTensorInfo& info = f_.tensor(name);
    std::vector<int64_t> got = info.dims;
    while (got.size() > dims.size() && got.back() == 1) got.pop_back();
    MOE_REQUIRE(got == dims,
                "{}: tensor {} has dims [{}] (ggml order), but the metadata gives [{}]", f_.path(),
                name, fmt::join(info.dims, ", "), fmt::join(dims, ", "));
    return info;
  }
  GgmlType type_of(const GgufTensorInfo& info) const {
    const auto type = static_cast<GgmlType>(info.type);
    MOE_REQUIRE(ggml_block(info.type).values > 0 && is_weight_type(type),
                "{}: tensor {} has type {}, which is not one of F32 F16 BF16 Q8_0 Q4_0 Q4_K Q5_K "
                "Q6_K MXFP4",
                f_.path(), info.name, ggml_type_name(info.type));
    return type;
  }
  // Any weight type widened to fp32, row by row (norms and routers are small).
  void read(const GgufTensorInfo& info, float* out) const {
    const GgmlType type = type_of(info);
    const int64_t cols = info.dims[0], rows = info.numel() / cols;
    const uint8_t* p = f_.data(info);
    for (int64_t r = 0; r < rows; ++r)
      dequantize_row(type, p + r * row_bytes(type, cols), out + r * cols, cols);
  }
  const ModelConfig& c_;
  const GgufFile& f_;
};

void InferenceModel::quantize_matrices(GgmlType type) {
  quantize_attention_and_head(type);
  bytes_of_type_.clear();
  auto count = [&](const WeightView& w) {
    bytes_of_type_[w.type] += w.rows * row_bytes(w.type, w.cols);
  };
  count(embed_);
  count(head_);
  for (AttentionWeights& a : attn_)
    for (const WeightView* w :
         {&a.q, &a.k, &a.v, &a.o, &a.gdn.qkv, &a.gdn.z, &a.gdn.b, &a.gdn.a, &a.gdn.out})
      if (w->data) count(*w);
  if (mla_)
    for (int l = 0; l < mla_->layers(); ++l) {
      const MlaWeights& w = mla_->weights(l);
      for (const WeightView* v : {&w.q, &w.q_a, &w.q_b, &w.kv_a, &w.kv_b, &w.o}) count(*v);
    }
  for (Layer& L : layers_) {
    for (FfnViews& f : L.experts)
      for (WeightView* w : {&f.w1, &f.w3, &f.w2}) count(*w = quantized(*w, type));
    if (L.has_shared)
      for (WeightView* w : {&L.shared.w1, &L.shared.w3, &L.shared.w2})
        count(*w = quantized(*w, type));
  }
  weight_type_ = type;
}

std::unique_ptr<InferenceModel> InferenceModel::load(const std::string& path, GgmlType quantize) {
  std::unique_ptr<InferenceModel> m = open(path);
  if (quantize != GgmlType::F32) m->quantize_matrices(quantize);
  return m;
}

std::unique_ptr<InferenceModel> InferenceModel::open(const std::string& path) {
  if (fs::is_regular_file(path)) {
    GgufFile f = GgufFile::open(path);
    const ModelConfig c = model_config_from_gguf(f);
    GgufSource src(c, f);
    std::unique_ptr<InferenceModel> m = build(c, src);
    m->repacked_ = std::move(src.owned);  // qwen3next's regrouped ssm_ba / ssm_in rows
    m->gguf_.emplace(std::move(f));       // the mapping moves with it: the views stay valid
    m->rope_interleaved_ = gguf_rope_interleaved(c);
    int64_t bytes = 0;
    const uint8_t *lo = nullptr, *hi = nullptr;  // the tensors' bytes in the mapping
    for (const GgufTensorInfo& t : m->gguf_->tensors()) {
      bytes += static_cast<int64_t>(t.nbytes);
      const uint8_t* p = m->gguf_->data(t);
      lo = lo == nullptr ? p : std::min(lo, p);
      hi = std::max(hi, p + t.nbytes);
    }
    m->weight_bytes_ = bytes;
    if (lo != nullptr) populate_pages(lo, static_cast<uint64_t>(hi - lo));
    return m;
  }
  const ModelConfig c = load_hf_config(path + "/config.json");
  HfWeights w = HfWeights::open(path);
  HfSource src(c, w);
  std::unique_ptr<InferenceModel> m = build(c, src);
  m->repacked_ = std::move(src.owned);  // a deque's move keeps every element's data in place
  m->weight_bytes_ = w.data_bytes();
  m->hf_.emplace(std::move(w));
  return m;
}

std::string InferenceModel::weight_types() const {
  std::vector<std::pair<int64_t, GgmlType>> by_size;
  for (const auto& [t, b] : bytes_of_type_) by_size.emplace_back(b, t);
  std::sort(by_size.rbegin(), by_size.rend());
  std::string out;
  for (const auto& [b, t] : by_size)
    out += fmt::format("{}{} {:.1f} MB", out.empty() ? "" : ", ",
                       ggml_type_name(static_cast<uint32_t>(t)), b / 1e6);
  return out;
}

std::unique_ptr<InferenceModel> InferenceModel::build(const ModelConfig& cfg, Source& src) {
  std::unique_ptr<InferenceModel> m(new InferenceModel(cfg));
  const ModelConfig& c = m->cfg_;
  const int64_t d = c.hidden_size, V = c.vocab_size, hd = c.head_size();
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  const int64_t F = c.intermediate_size;
  auto count = [&](const WeightView& w) {
    m->bytes_of_type_[w.type] += w.rows * row_bytes(w.type, w.cols);
    return w;
  };
  auto matrix = [&](int l, HfTensor t, int64_t rows, int64_t cols) {
    return count(src.matrix(l, t, rows, cols));
  };
  auto named = [&](int l, const std::string& what, const Shape& shape) -> const float* {
    std::vector<float>& v = m->fp32_.emplace_back(static_cast<size_t>(shape.numel()));
    src.named(l, what, shape, v.data());
    return v.data();
  };
  auto vector = [&](int l, HfTensor t, int64_t size) -> const float* {
    std::vector<float>& v = m->fp32_.emplace_back(static_cast<size_t>(size));
    src.vector(l, t, size, v.data());
    return v.data();
  };
  // qwen3_next / qwen3_5_moe store their RMSNorm weights zero-centred: the scale is 1 + w
  // (llama.cpp's files hold 1 + w already).
  const bool zero_centred = c.has_linear_layers() && !src.norms_hold_one();
  auto norm = [&](int l, HfTensor t, int64_t size) -> const float* {
    std::vector<float>& v = m->fp32_.emplace_back(static_cast<size_t>(size));
    src.vector(l, t, size, v.data());
    if (zero_centred)
      for (float& x : v) x += 1.0f;
    return v.data();
  };
  // A stored matrix with its rows reordered (row i of the result is row order[i]), in its type,
  // copied into memory the model owns.
  auto reordered = [&](const WeightView& w, const std::vector<int64_t>& order) {
    const int64_t rb = row_bytes(w.type, w.cols);
    std::vector<uint8_t>& buf = src.owned.emplace_back(static_cast<size_t>(w.rows * rb));
    for (size_t i = 0; i < order.size(); ++i)
      std::memcpy(buf.data() + static_cast<int64_t>(i) * rb, w.data + order[i] * rb,
                  static_cast<size_t>(rb));
    return WeightView{buf.data(), w.type, w.rows, w.cols};
  };
  // A Gated DeltaNet layer (gated_deltanet.h). Qwen3-Next's in_proj_qkvz holds per key-head
  // group [q (dk), k (dk), v (r*dv), z (r*dv)] and in_proj_ba per group [b (r), a (r)], r =
  // Hv/Hk (its fix_query_key_value_ordering); the rows are regrouped into Qwen3.5's split
  // layout [q of all heads, k, v] + z and b + a.
  auto gdn_weights = [&](int l) {
    const LinearAttnConfig& g = c.linear;
    const int64_t vd = g.value_dim(), cd = g.conv_dim(), Hv = g.num_v_heads;
    const int64_t Hk = g.num_k_heads, dk = g.k_head_dim, r = Hv / Hk, rdv = r * g.v_head_dim;
    GdnWeights w;
    // Fused as Qwen3-Next stores them (llama.cpp's qwen3next: ssm_ba, and the legacy ssm_in), or
    // split as Qwen3.5 (llama.cpp: attn_qkv + attn_gate, ssm_beta + ssm_alpha).
    const bool fused_qkvz = src.has_named(l, "linear_attn.in_proj_qkvz.weight");
    const bool fused_ba = src.has_named(l, "linear_attn.in_proj_ba.weight");
    if (fused_qkvz) {
      const WeightView qkvz =
          count(src.named_matrix(l, "linear_attn.in_proj_qkvz.weight", {cd + vd, d}));
      const int64_t group = 2 * dk + 2 * rdv;
      std::vector<int64_t> order;
      for (const auto& [offset, width] :
           {std::pair<int64_t, int64_t>{0, dk}, {dk, dk}, {2 * dk, rdv}, {2 * dk + rdv, rdv}})
        for (int64_t h = 0; h < Hk; ++h)
          for (int64_t i = 0; i < width; ++i) order.push_back(h * group + offset + i);
      const WeightView all = reordered(qkvz, order);
      const int64_t rb = row_bytes(all.type, d);
      w.qkv = {all.data, all.type, cd, d};
      w.z = {all.data + cd * rb, all.type, vd, d};
    } else {
      w.qkv = count(src.named_matrix(l, "linear_attn.in_proj_qkv.weight", {cd, d}));
      w.z = count(src.named_matrix(l, "linear_attn.in_proj_z.weight", {vd, d}));
    }
    if (fused_ba) {
      const WeightView ba =
          count(src.named_matrix(l, "linear_attn.in_proj_ba.weight", {2 * Hv, d}));
      std::vector<int64_t> order;
      for (int64_t offset : {int64_t{0}, r})
        for (int64_t h = 0; h < Hk; ++h)
          for (int64_t i = 0; i < r; ++i) order.push_back(h * 2 * r + offset + i);
      const WeightView both = reordered(ba, order);
      w.b = {both.data, both.type, Hv, d};
      w.a = {both.data + Hv * row_bytes(both.type, d), both.type, Hv, d};
    } else {
      w.b = count(src.named_matrix(l, "linear_attn.in_proj_b.weight", {Hv, d}));
      w.a = count(src.named_matrix(l, "linear_attn.in_proj_a.weight", {Hv, d}));
    }
    w.conv = named(l, "linear_attn.conv1d.weight", {cd, 1, g.conv_kernel});
    w.A_log = named(l, "linear_attn.A_log", {Hv});
    w.dt_bias = named(l, "linear_attn.dt_bias", {Hv});
    w.norm = named(l, "linear_attn.norm.weight", {g.v_head_dim});
    w.out = count(src.named_matrix(l, "linear_attn.out_proj.weight", {d, vd}));
    return w;
  };

  // Multi-head Latent Attention (deepseek_v2/v3): its own matrices per layer.
  auto mla_weights = [&](int l) {
    const MlaConfig& a = c.mla;
    const int64_t H = c.num_attention_heads, qr = a.q_lora_rank, r = a.kv_lora_rank;
    const int64_t qdim = H * a.qk_head_dim();
    MlaWeights w;
    if (qr > 0) {
      w.q_a = matrix(l, HfTensor::QA, qr, d);
      w.q_a_norm = vector(l, HfTensor::QANorm, qr);
      w.q_b = matrix(l, HfTensor::QB, qdim, qr);
    } else {
      w.q = matrix(l, HfTensor::Q, qdim, d);
    }
    w.kv_a = matrix(l, HfTensor::KvA, r + a.qk_rope_head_dim, d);
    w.kv_a_norm = vector(l, HfTensor::KvANorm, r);
    w.kv_b = matrix(l, HfTensor::KvB, H * (a.qk_nope_head_dim + a.v_head_dim), r);
    w.o = matrix(l, HfTensor::O, d, H * a.v_head_dim);
    return w;
  };

  m->embed_ = matrix(-1, HfTensor::Q, V, d);
  m->head_ = c.tie_word_embeddings ? m->embed_ : matrix(-1, HfTensor::O, V, d);
  m->final_norm_ = norm(-1, HfTensor::InputNorm, d);
  m->weight_type_ = m->embed_.type;
  m->layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  m->attn_.resize(m->layers_.size());
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    Layer& L = m->layers_[static_cast<size_t>(l)];
    AttentionWeights& A = m->attn_[static_cast<size_t>(l)];
    A.input_norm = norm(l, HfTensor::InputNorm, d);
    A.post_norm = norm(l, HfTensor::PostAttentionNorm, d);
    if (c.is_linear_layer(l)) {
      A.gdn = gdn_weights(l);
    } else if (c.is_mla()) {
      m->mla_->add_layer(mla_weights(l));
    } else {
      A.q = matrix(l, HfTensor::Q, c.attn_output_gate ? 2 * qd : qd, d);  // query + gate
      A.k = matrix(l, HfTensor::K, kvd, d);
      A.v = matrix(l, HfTensor::V, kvd, d);
      A.o = matrix(l, HfTensor::O, d, qd);
      if (c.attention_bias) {
        A.q_bias = vector(l, HfTensor::QBias, qd);
        A.k_bias = vector(l, HfTensor::KBias, kvd);
        A.v_bias = vector(l, HfTensor::VBias, kvd);
      }
      if (c.o_bias) A.o_bias = named(l, "self_attn.o_proj.bias", {d});
      if (c.attention_sinks) A.sinks = named(l, "self_attn.sinks", {c.num_attention_heads});
      A.window = c.window_of(l);
      if (c.qk_norm == QkNorm::PerHead) {
        A.q_norm = norm(l, HfTensor::QNorm, hd);
        A.k_norm = norm(l, HfTensor::KNorm, hd);
      } else if (c.qk_norm == QkNorm::Full) {
        A.q_norm = vector(l, HfTensor::QNorm, qd);
        A.k_norm = vector(l, HfTensor::KNorm, kvd);
      }
    }
    L.index = l;
    L.moe = c.is_moe_layer(l);
    if (!L.moe) {
      const int64_t Fd = c.dense_width();
      L.shared = {matrix(l, HfTensor::DenseGate, Fd, d), matrix(l, HfTensor::DenseUp, Fd, d),
                  matrix(l, HfTensor::DenseDown, d, Fd)};
      L.has_shared = true;
      if (!m->dense_) m->dense_.emplace(FfnShape{Activation::SwiGLU, d, Fd}, 1);
      continue;
    }
    const int E = c.num_local_experts;
    if (!m->experts_)
      m->experts_.emplace(FfnShape{c.moe.hidden_act, d, F, ComputeDtype::Float32, c.swiglu_limit},
                          E);
    L.router.resize(static_cast<size_t>(E * d));
    src.router(l, E, d, L.router.data());
    if (c.moe.use_selection_bias) {  // deepseek_v3's e_score_correction_bias
      L.selection_bias.resize(static_cast<size_t>(E));
      src.vector(l, HfTensor::RouterBias, E, L.selection_bias.data());
    }
    if (c.router_bias) {
      L.router_bias.resize(static_cast<size_t>(E));
      src.named(l, "mlp.router.bias", {E}, L.router_bias.data());
    }
    const auto gate = src.experts(l, HfTensor::ExpertGate, E, F, d);
    const auto up = src.experts(l, HfTensor::ExpertUp, E, F, d);
    const auto down = src.experts(l, HfTensor::ExpertDown, E, d, F);
    for (int e = 0; e < E; ++e) L.experts.push_back({count(gate[e]), count(up[e]), count(down[e])});
    if (c.expert_bias) {
      // gate_up_proj_bias [E, 2F] interleaves gate and up as the matrix's columns do.
      const float* gate_up = named(l, "mlp.experts.gate_up_proj_bias", {E, 2 * F});
      const float* down_bias = named(l, "mlp.experts.down_proj_bias", {E, d});
      std::vector<float>& split = m->fp32_.emplace_back(static_cast<size_t>(2 * E * F));
      for (int64_t i = 0; i < E * F; ++i) {
        split[static_cast<size_t>(i)] = gate_up[2 * i];
        split[static_cast<size_t>(E * F + i)] = gate_up[2 * i + 1];
      }
      for (int e = 0; e < E; ++e) {
        FfnViews& v = L.experts[static_cast<size_t>(e)];
        v.b1 = split.data() + e * F;
        v.b3 = split.data() + E * F + e * F;
        v.b2 = down_bias + e * d;
      }
    }
    m->weight_type_ = gate[0].type;
    if (c.moe.n_shared_experts > 0) {
      const int64_t S = c.moe.shared_hidden();
      L.shared = {matrix(l, HfTensor::SharedGate, S, d), matrix(l, HfTensor::SharedUp, S, d),
                  matrix(l, HfTensor::SharedDown, d, S)};
      L.has_shared = true;
      if (!m->shared_) m->shared_.emplace(FfnShape{Activation::SwiGLU, d, S}, 1);
      if (c.moe.shared_expert_gate) {
        L.shared_gate.resize(static_cast<size_t>(d));
        src.vector(l, HfTensor::SharedExpertGate, d, L.shared_gate.data());
      }
    }
  }
  return m;
}

void InferenceModel::randomize_routers(Rng& rng, double std) {
  for (Layer& L : layers_)
    if (L.moe) rng.fill_normal(L.router.data(), static_cast<int64_t>(L.router.size()), 0.0, std);
}

void InferenceModel::ffn(int l, int64_t rows) {
  const Layer& L = layers_[static_cast<size_t>(l)];
  const int64_t all_rows[2] = {0, rows};  // the dense layer as a group of one
  if (L.moe)
    moe_block(L, rows);
  else
    dense_->forward(&L.shared, all_rows, x_.data(), h_.data(), /*accumulate=*/true);
}

void InferenceModel::moe_block(const Layer& L, int64_t rows) {
  const MoeConfig& mc = cfg_.moe;
  const int64_t d = cfg_.hidden_size, E = cfg_.num_local_experts;
  const int k = mc.num_experts_per_tok;
  if (!router_) router_.emplace(mc);
  if (mc.use_selection_bias) router_->selection_bias() = L.selection_bias;
  gemm<float>(Trans::No, Trans::Yes, rows, E, d, 1.0f, x_.data(), d, L.router.data(), d, 0.0f,
              router_->logits(rows), E);
  if (!L.router_bias.empty()) {
    float* z = router_->logits(rows);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t e = 0; e < E; ++e) z[r * E + e] += L.router_bias[static_cast<size_t>(e)];
  }
  router_->forward(rows);  // dropless: keeps every slot
  std::vector<float>& gate = router_->gates();
  // Hugging Face renormalizes a single gate to 1 as well (then scales it, DeepSeek-V3); our
  // k = 1 gate is the raw score.
  if (mc.norm_topk_prob && k == 1)
    std::fill_n(gate.data(), rows, static_cast<float>(mc.routed_scaling_factor));
  observe_routing(L.index, router_->plan(), gate.data(), router_->scores().data(), mc.scoring_func);

  build_permutation(router_->plan(), perm_);
  const int64_t N = perm_.rows();
  grow_to(xp_, N * d);
  grow_to(yp_, N * d);
  gather_rows<float>(perm_, k, d, x_.data(), xp_.data());
  experts_->forward(L.experts.data(), perm_.offsets.data(), xp_.data(), yp_.data());
  grow_to(tmp_, rows * d);
  scatter_gated<float>(perm_, rows, k, d, yp_.data(), gate.data(), tmp_.data());
  for (int64_t i = 0; i < rows * d; ++i) h_[i] += tmp_[i];

  if (!L.has_shared) return;
  // The gate's dot product in double: SharedExperts (fp32 parameters, saved for the backward)
  // takes it in float.
  const int64_t all_rows[2] = {0, rows};
  shared_->forward(&L.shared, all_rows, x_.data(), tmp_.data());
  for (int64_t r = 0; r < rows; ++r) {
    float g = 1.0f;
    if (!L.shared_gate.empty()) {
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(x_[r * d + j]) * L.shared_gate[j];
      g = static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
    }
    for (int64_t j = 0; j < d; ++j) h_[r * d + j] += g * tmp_[r * d + j];
  }
}

}  // namespace moe
