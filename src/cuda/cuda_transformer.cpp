// CudaTransformer (include/moe/cuda_transformer.h): the LM's training step on the GPU, host
// orchestration compiled by the C++ compiler (nvcc cannot compile the fmt-based moe headers,
// docs/cuda.md); the kernels are in lm_*.cu (lm_kernels.cuh), the MoE layers are CudaMoeLayer.
//
// Streams: everything of the model runs on one stream of its own; each CudaMoeLayer runs on
// its stream. Every hand-over (into and out of a layer's forward and backward, its gradients
// read by AdamW, its weights changed by AdamW before refresh_compute_weights) is ordered by an
// event recorded on one stream and waited on by the other, so no host synchronization is
// added beyond the MoE layers' own one per forward and one per loss read-back.
//
// Matrix products are row-major fp32 cuBLAS calls (sgemm below); attention runs one strided
// batched GEMM per query head over the B sequences, on full S x S score blocks whose masked
// entries are exact zeros after the causal softmax.
#include "moe/cuda_transformer.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "cuda/cuda_check.h"
#include "cuda/cuda_resources.h"
#include "cuda/lm_kernels.cuh"
#include "moe/attention.h"
#include "moe/error.h"
#include "moe/safetensors.h"
#include "moe/transformer.h"

namespace moe {

namespace {

using cuda::DeviceBuffer;

int to_int(int64_t v, const char* what) {
  MOE_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(),
            "CudaTransformer: {} = {} does not fit the int of a cuBLAS call", what, v);
  return static_cast<int>(v);
}

// Row-major C [M, N] = alpha op(A) op(B) + beta C in fp32. ta: A is stored [K, M] (else
// [M, K]); tb: B is stored [N, K] (else [K, N]). Row-major C is column-major C^T =
// op(B)^T op(A)^T, so cuBLAS gets B first (as gemm_bf16 in expert_ffn.cu).
void sgemm(cublasHandle_t h, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  if (M == 0 || N == 0) return;
  MOE_CUBLAS_CHECK(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                               to_int(N, "N"), to_int(M, "M"), to_int(K, "K"), &alpha, B,
                               to_int(ldb, "ldb"), A, to_int(lda, "lda"), &beta, C,
                               to_int(ldc, "ldc")));
}

// batch products C_i = alpha op(A_i) op(B_i) + beta C_i, X_i = X + i * stride_x.
void sgemm_batched(cublasHandle_t h, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb,
                   int64_t stride_b, float beta, float* C, int64_t ldc, int64_t stride_c,
                   int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  MOE_CUBLAS_CHECK(
      cublasSgemmStridedBatched(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                to_int(N, "N"), to_int(M, "M"), to_int(K, "K"), &alpha, B,
                                to_int(ldb, "ldb"), stride_b, A, to_int(lda, "lda"), stride_a,
                                &beta, C, to_int(ldc, "ldc"), stride_c, to_int(batch, "batch")));
}

std::string layer_name(int l, const char* what) {
  return fmt::format("model.layers.{}.{}", l, what);
}

}  // namespace

struct CudaTransformer::Impl {
  ModelConfig cfg;
  int d = 0, V = 0, L = 0, H = 0, G = 0, hd = 0, Fd = 0;
  int64_t qd = 0, kvd = 0;

  // Host mirrors: the non-MoE parameters in one arena (names as in the CPU model), the MoE
  // layers' in their own ParamSets; params lists them all in Transformer<float>'s order.
  ParamSet<float> dense;
  std::vector<ParamRef<float>> params;
  std::vector<std::unique_ptr<CudaMoeLayer>> moe;  // [L], null for dense blocks

  // Where each tensor lives on the device, in params order.
  struct DeviceTensor {
    float* value;
    float* grad;
    float* m;
    float* v;
    int64_t n;
    bool decay;
    int moe_layer;  // -1: the dense arena
  };
  std::vector<DeviceTensor> tensors;
  std::vector<int64_t> norm_partial_offset;  // [tensors + 1] into norm_partial
  int64_t adam_steps = 0;

  cuda::StreamOwner stream_owner;
  cuda::BlasOwner blas_owner;
  cuda::EventOwner main_done, moe_done;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;

  // Device parameters of the dense arena, and the AdamW moments of every tensor.
  DeviceBuffer<float> weights, grads, adam_m, adam_v;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> moe_m, moe_v;  // [L]
  DeviceBuffer<float> rope_cos, rope_sin;                          // [max_positions, hd/2]
  DeviceBuffer<double> norm_partial, norm_sq;

  // Offsets into the dense arena.
  struct LayerOffsets {
    int64_t in_norm, post_norm, wq, wk, wv, wo, w1 = -1, w3 = -1, w2 = -1;
  };
  std::vector<LayerOffsets> lo;
  int64_t off_embed = 0, off_norm = 0, off_head = 0;

  // Activations of the last forward (n = B*S rows).
  int B = 0, S = 0;
  int64_t n = 0, capacity_rows = 0, capacity_scores = 0;
  bool has_targets = false, forward_done = false;
  double ce = 0, aux = 0;
  int64_t counted = 0;
  DeviceBuffer<int32_t> tokens_dev, targets_dev;
  DeviceBuffer<float> h, hmid, xa, xm, rstd_a, rstd_m, hf, rstd_f, tmp;
  DeviceBuffer<float> q, k, v, o, P;  // per layer: [L, n, qd] ... and [L, B, H, S, S]
  DeviceBuffer<float> h1, h3, act;    // per layer [L, n, Fd] (dense blocks only)
  DeviceBuffer<float> logits, dlogits, row_loss;
  DeviceBuffer<float> dh, dtmp, dhf, dq, dk, dv, dout_attn, dS, da, dh1, dh3, rms_partial;
  // Embedding backward: rows grouped by token (built on the host in forward).
  DeviceBuffer<int32_t> emb_unique, emb_start, emb_rows;
  std::vector<int32_t> host_unique, host_start, host_rows, host_count;
  int64_t emb_unique_count = 0;
  std::vector<float> host_row_loss;

  explicit Impl(const ModelConfig& config) : cfg(config) {
    cfg.sync_moe();
    cfg.validate("CudaTransformer");
    cuda_transformer_check_supported(cfg);
    MOE_CHECK(cuda_available(), "CudaTransformer: no CUDA device is available");
    d = cfg.hidden_size;
    V = cfg.vocab_size;
    L = cfg.num_hidden_layers;
    H = cfg.num_attention_heads;
    G = cfg.num_key_value_heads;
    hd = cfg.head_size();
    Fd = cfg.dense_width();
    qd = int64_t(H) * hd;
    kvd = int64_t(G) * hd;

    // The CPU model's base_ declarations, then each block's attention and dense FFN.
    dense.declare("model.embed_tokens.weight", {V, d});
    for (int l = 0; l < L; ++l) {
      dense.declare(layer_name(l, "input_layernorm.weight"), {d});
      dense.declare(layer_name(l, "post_attention_layernorm.weight"), {d});
    }
    dense.declare("model.norm.weight", {d});
    if (!cfg.tie_word_embeddings) dense.declare("lm_head.weight", {V, d});
    for (int l = 0; l < L; ++l) {
      dense.declare(layer_name(l, "self_attn.q_proj.weight"), {qd, d});
      dense.declare(layer_name(l, "self_attn.k_proj.weight"), {kvd, d});
      dense.declare(layer_name(l, "self_attn.v_proj.weight"), {kvd, d});
      dense.declare(layer_name(l, "self_attn.o_proj.weight"), {d, qd});
      if (!cfg.is_moe_layer(l)) {
        dense.declare(layer_name(l, "mlp.ffn.w1"), {Fd, d});
        dense.declare(layer_name(l, "mlp.ffn.w3"), {Fd, d});
        dense.declare(layer_name(l, "mlp.ffn.w2"), {d, Fd});
      }
    }
    dense.allocate();
    auto at = [&](const std::string& name) { return dense.spec(name).offset; };
    off_embed = at("model.embed_tokens.weight");
    off_norm = at("model.norm.weight");
    off_head = cfg.tie_word_embeddings ? off_embed : at("lm_head.weight");
    lo.resize(L);
    for (int l = 0; l < L; ++l) {
      LayerOffsets& o_ = lo[l];
      o_.in_norm = at(layer_name(l, "input_layernorm.weight"));
      o_.post_norm = at(layer_name(l, "post_attention_layernorm.weight"));
      o_.wq = at(layer_name(l, "self_attn.q_proj.weight"));
      o_.wk = at(layer_name(l, "self_attn.k_proj.weight"));
      o_.wv = at(layer_name(l, "self_attn.v_proj.weight"));
      o_.wo = at(layer_name(l, "self_attn.o_proj.weight"));
      if (!cfg.is_moe_layer(l)) {
        o_.w1 = at(layer_name(l, "mlp.ffn.w1"));
        o_.w3 = at(layer_name(l, "mlp.ffn.w3"));
        o_.w2 = at(layer_name(l, "mlp.ffn.w2"));
      }
    }

    MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_owner.s, cudaStreamNonBlocking));
    stream = stream_owner.s;
    MOE_CUBLAS_CHECK(cublasCreate(&blas_owner.h));
    blas = blas_owner.h;
    MOE_CUBLAS_CHECK(cublasSetStream(blas, stream));
    MOE_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));  // fp32 stays fp32: no TF32
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&main_done.e, cudaEventDisableTiming));
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&moe_done.e, cudaEventDisableTiming));

    moe.resize(L);
    moe_m.resize(L);
    moe_v.resize(L);
    for (int l = 0; l < L; ++l)
      if (cfg.is_moe_layer(l)) moe[l] = std::make_unique<CudaMoeLayer>(cfg.moe);

    const int64_t dn = dense.numel();
    weights.grow(dn);
    grads.grow(dn);
    adam_m.grow(dn);
    adam_v.grow(dn);
    MOE_CUDA_CHECK(cudaMemsetAsync(adam_m.get(), 0, sizeof(float) * dn, stream));
    MOE_CUDA_CHECK(cudaMemsetAsync(adam_v.get(), 0, sizeof(float) * dn, stream));

    // The parameter list in Transformer<float>'s order: base_, then per block attention and FFN.
    auto add_dense = [&](const std::string& name) {
      const ParamSpec& s = dense.spec(name);
      params.push_back({name, dense.value(name), dense.grad(name), s.shape, s.shape.ndim >= 2});
      tensors.push_back({weights.get() + s.offset, grads.get() + s.offset, adam_m.get() + s.offset,
                         adam_v.get() + s.offset, s.shape.numel(), s.shape.ndim >= 2, -1});
    };
    add_dense("model.embed_tokens.weight");
    for (int l = 0; l < L; ++l) {
      add_dense(layer_name(l, "input_layernorm.weight"));
      add_dense(layer_name(l, "post_attention_layernorm.weight"));
    }
    add_dense("model.norm.weight");
    if (!cfg.tie_word_embeddings) add_dense("lm_head.weight");
    for (int l = 0; l < L; ++l) {
      for (const char* w : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"})
        add_dense(layer_name(l, "self_attn.") + w);
      if (!moe[l]) {
        for (const char* w : {"ffn.w1", "ffn.w3", "ffn.w2"}) add_dense(layer_name(l, "mlp.") + w);
        continue;
      }
      ParamSet<float>& set = moe[l]->params();
      moe_m[l] = std::make_unique<DeviceBuffer<float>>();
      moe_v[l] = std::make_unique<DeviceBuffer<float>>();
      moe_m[l]->grow(set.numel());
      moe_v[l]->grow(set.numel());
      MOE_CUDA_CHECK(cudaMemsetAsync(moe_m[l]->get(), 0, sizeof(float) * set.numel(), stream));
      MOE_CUDA_CHECK(cudaMemsetAsync(moe_v[l]->get(), 0, sizeof(float) * set.numel(), stream));
      for (const auto& s : set.specs()) {
        params.push_back({layer_name(l, "block_sparse_moe.") + s.name, set.value(s.name),
                          set.grad(s.name), s.shape, s.shape.ndim >= 2});
        tensors.push_back({moe[l]->device_weights() + s.offset, moe[l]->device_grads() + s.offset,
                           moe_m[l]->get() + s.offset, moe_v[l]->get() + s.offset, s.shape.numel(),
                           s.shape.ndim >= 2, l});
      }
    }
    norm_partial_offset.assign(tensors.size() + 1, 0);
    for (size_t i = 0; i < tensors.size(); ++i)
      norm_partial_offset[i + 1] = norm_partial_offset[i] + cuda::sum_squares_blocks(tensors[i].n);
    norm_partial.grow(norm_partial_offset.back());
    norm_sq.grow(1);

    // RoPE tables from the CPU attention's own function: the same float values.
    std::vector<float> cos_table, sin_table;
    rope_table_rows(cos_table, sin_table,
                    rope_frequencies(static_cast<int>(hd), cfg.rope_theta, cfg.rope_scaling), 0,
                    cfg.max_position_embeddings);
    rope_cos.grow(static_cast<int64_t>(cos_table.size()));
    rope_sin.grow(static_cast<int64_t>(sin_table.size()));
    MOE_CUDA_CHECK(cudaMemcpyAsync(rope_cos.get(), cos_table.data(),
                                   sizeof(float) * cos_table.size(), cudaMemcpyHostToDevice,
                                   stream));
    MOE_CUDA_CHECK(cudaMemcpyAsync(rope_sin.get(), sin_table.data(),
                                   sizeof(float) * sin_table.size(), cudaMemcpyHostToDevice,
                                   stream));
    host_count.assign(static_cast<size_t>(V), 0);
    upload_params();
    zero_grad();
    sync();
  }

  void sync() const { MOE_CUDA_CHECK(cudaStreamSynchronize(stream)); }

  // Stream hand-overs (see the file comment).
  void moe_waits_for_main(CudaMoeLayer& layer) {
    MOE_CUDA_CHECK(cudaEventRecord(main_done.e, stream));
    MOE_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(layer.stream()), main_done.e, 0));
  }
  void main_waits_for_moe(CudaMoeLayer& layer) {
    MOE_CUDA_CHECK(cudaEventRecord(moe_done.e, static_cast<cudaStream_t>(layer.stream())));
    MOE_CUDA_CHECK(cudaStreamWaitEvent(stream, moe_done.e, 0));
  }
  void main_waits_for_all_moe() {
    for (auto& m : moe)
      if (m) main_waits_for_moe(*m);
  }

  float* w(int64_t offset) const { return weights.get() + offset; }
  float* g(int64_t offset) const { return grads.get() + offset; }

  void upload_params() {
    main_waits_for_all_moe();
    sync();  // nothing may still read or write the device weights
    MOE_CUDA_CHECK(cudaMemcpyAsync(weights.get(), dense.values().data(),
                                   sizeof(float) * dense.numel(), cudaMemcpyHostToDevice, stream));
    for (auto& m : moe)
      if (m) m->upload_params();
    sync();
  }

  void download_params() {
    main_waits_for_all_moe();
    MOE_CUDA_CHECK(cudaMemcpyAsync(dense.values().data(), weights.get(),
                                   sizeof(float) * dense.numel(), cudaMemcpyDeviceToHost, stream));
    for (auto& m : moe)
      if (m)
        MOE_CUDA_CHECK(cudaMemcpyAsync(m->params().values().data(), m->device_weights(),
                                       sizeof(float) * m->params().numel(), cudaMemcpyDeviceToHost,
                                       stream));
    sync();
  }

  void download_grads() {
    main_waits_for_all_moe();
    MOE_CUDA_CHECK(cudaMemcpyAsync(dense.grads().data(), grads.get(), sizeof(float) * dense.numel(),
                                   cudaMemcpyDeviceToHost, stream));
    for (auto& m : moe)
      if (m)
        MOE_CUDA_CHECK(cudaMemcpyAsync(m->params().grads().data(), m->device_grads(),
                                       sizeof(float) * m->params().numel(), cudaMemcpyDeviceToHost,
                                       stream));
    sync();
  }

  void zero_grad() {
    MOE_CUDA_CHECK(cudaMemsetAsync(grads.get(), 0, sizeof(float) * dense.numel(), stream));
    for (auto& m : moe)
      if (m) {
        moe_waits_for_main(*m);  // AdamW may still read its gradients
        m->zero_grad();
      }
  }

  void reserve(int64_t rows, int64_t scores) {
    if (rows > capacity_rows) {
      capacity_rows = rows;
      const int64_t nd = rows * d;
      tokens_dev.grow(rows);
      targets_dev.grow(rows);
      h.grow((L + 1) * nd);
      for (auto* b : {&hmid, &xa, &xm}) b->grow(L * nd);
      for (auto* b : {&rstd_a, &rstd_m}) b->grow(L * rows);
      for (auto* b : {&hf, &tmp, &dh, &dtmp, &dhf}) b->grow(nd);
      rstd_f.grow(rows);
      for (auto* b : {&q, &o}) b->grow(L * rows * qd);
      for (auto* b : {&k, &v}) b->grow(L * rows * kvd);
      for (auto* b : {&h1, &h3, &act}) b->grow(L * rows * Fd);
      for (auto* b : {&logits, &dlogits}) b->grow(rows * V);
      row_loss.grow(rows);
      for (auto* b : {&dq, &dout_attn}) b->grow(rows * qd);
      for (auto* b : {&dk, &dv}) b->grow(rows * kvd);
      for (auto* b : {&da, &dh1, &dh3}) b->grow(rows * Fd);
      rms_partial.grow(cuda::rmsnorm_chunks(rows) * d);
      for (auto* b : {&emb_unique, &emb_start, &emb_rows}) b->grow(rows + 1);
    }
    if (scores > capacity_scores) {
      capacity_scores = scores;
      P.grow(L * scores);
      dS.grow(scores);
    }
  }

  // Rows grouped by token in increasing row order (a counting sort), for the deterministic
  // embedding backward.
  void build_embedding_groups(const int32_t* inputs) {
    host_unique.clear();
    host_start.clear();
    host_rows.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      if (host_count[inputs[i]]++ == 0) host_unique.push_back(inputs[i]);
    int32_t pos = 0;
    for (int32_t t : host_unique) {  // host_count becomes each group's write cursor
      host_start.push_back(pos);
      const int32_t c = host_count[t];
      host_count[t] = pos;
      pos += c;
    }
    host_start.push_back(pos);
    for (int64_t i = 0; i < n; ++i) host_rows[host_count[inputs[i]]++] = static_cast<int32_t>(i);
    for (int32_t t : host_unique) host_count[t] = 0;
    emb_unique_count = static_cast<int64_t>(host_unique.size());
    // From pageable memory cudaMemcpyAsync returns once the source has been staged, so the
    // host vectors may be reused right away.
    MOE_CUDA_CHECK(cudaMemcpyAsync(emb_unique.get(), host_unique.data(),
                                   sizeof(int32_t) * host_unique.size(), cudaMemcpyHostToDevice,
                                   stream));
    MOE_CUDA_CHECK(cudaMemcpyAsync(emb_start.get(), host_start.data(),
                                   sizeof(int32_t) * host_start.size(), cudaMemcpyHostToDevice,
                                   stream));
    MOE_CUDA_CHECK(cudaMemcpyAsync(emb_rows.get(), host_rows.data(), sizeof(int32_t) * n,
                                   cudaMemcpyHostToDevice, stream));
  }

  void attention_forward(int l, const float* x, float* out) {
    const int64_t rep = H / G, SS = int64_t(S) * S, BHSS = int64_t(B) * H * SS;
    float* ql = q.get() + l * n * qd;
    float* kl = k.get() + l * n * kvd;
    float* vl = v.get() + l * n * kvd;
    float* ol = o.get() + l * n * qd;
    float* Pl = P.get() + l * BHSS;
    const LayerOffsets& f = lo[l];
    sgemm(blas, false, true, n, qd, d, 1.0f, x, d, w(f.wq), d, 0.0f, ql, qd);
    sgemm(blas, false, true, n, kvd, d, 1.0f, x, d, w(f.wk), d, 0.0f, kl, kvd);
    sgemm(blas, false, true, n, kvd, d, 1.0f, x, d, w(f.wv), d, 0.0f, vl, kvd);
    cuda::launch_rope(ql, rope_cos.get(), rope_sin.get(), n, H, hd, S, 1.0f, stream);
    cuda::launch_rope(kl, rope_cos.get(), rope_sin.get(), n, G, hd, S, 1.0f, stream);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    // P [B, H, S, S]; head h of sequence b reads kv head h / rep.
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t gg = hh / rep;
      sgemm_batched(blas, false, true, S, S, hd, scale, ql + hh * hd, qd, S * qd, kl + gg * hd, kvd,
                    S * kvd, 0.0f, Pl + hh * SS, S, H * SS, B);
    }
    cuda::launch_causal_softmax(Pl, int64_t(B) * H * S, S, stream);
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t gg = hh / rep;
      sgemm_batched(blas, false, false, S, hd, S, 1.0f, Pl + hh * SS, S, H * SS, vl + gg * hd, kvd,
                    S * kvd, 0.0f, ol + hh * hd, qd, S * qd, B);
    }
    sgemm(blas, false, true, n, d, qd, 1.0f, ol, qd, w(f.wo), qd, 0.0f, out, d);
  }

  // dout [n, d] -> dx [n, d] (=), parameter gradients (+=).
  void attention_backward(int l, const float* x, const float* dout, float* dx) {
    const int64_t rep = H / G, SS = int64_t(S) * S;
    const float* ql = q.get() + l * n * qd;
    const float* kl = k.get() + l * n * kvd;
    const float* vl = v.get() + l * n * kvd;
    const float* ol = o.get() + l * n * qd;
    const float* Pl = P.get() + l * int64_t(B) * H * SS;
    const LayerOffsets& f = lo[l];
    float* dO = dout_attn.get();
    // out = o Wo^T: dWo += dout^T o, do = dout Wo.
    sgemm(blas, true, false, d, qd, n, 1.0f, dout, d, ol, qd, 1.0f, g(f.wo), qd);
    sgemm(blas, false, false, n, qd, d, 1.0f, dout, d, w(f.wo), qd, 0.0f, dO, qd);
    // dP = dO V^T; dV = sum over the group's query heads of P^T dO (first head: beta 0). The
    // heads of a group run one after another on the stream: a fixed summation order.
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t gg = hh / rep;
      const float beta = hh % rep == 0 ? 0.0f : 1.0f;
      sgemm_batched(blas, false, true, S, S, hd, 1.0f, dO + hh * hd, qd, S * qd, vl + gg * hd, kvd,
                    S * kvd, 0.0f, dS.get() + hh * SS, S, H * SS, B);
      sgemm_batched(blas, true, false, S, hd, S, 1.0f, Pl + hh * SS, S, H * SS, dO + hh * hd, qd,
                    S * qd, beta, dv.get() + gg * hd, kvd, S * kvd, B);
    }
    cuda::launch_causal_softmax_backward(Pl, dS.get(), int64_t(B) * H * S, S, stream);
    // scores = scale Q K^T: dQ = scale dS K, dK = sum over the group of scale dS^T Q.
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t gg = hh / rep;
      const float beta = hh % rep == 0 ? 0.0f : 1.0f;
      sgemm_batched(blas, false, false, S, hd, S, scale, dS.get() + hh * SS, S, H * SS,
                    kl + gg * hd, kvd, S * kvd, 0.0f, dq.get() + hh * hd, qd, S * qd, B);
      sgemm_batched(blas, true, false, S, hd, S, scale, dS.get() + hh * SS, S, H * SS, ql + hh * hd,
                    qd, S * qd, beta, dk.get() + gg * hd, kvd, S * kvd, B);
    }
    cuda::launch_rope(dq.get(), rope_cos.get(), rope_sin.get(), n, H, hd, S, -1.0f, stream);
    cuda::launch_rope(dk.get(), rope_cos.get(), rope_sin.get(), n, G, hd, S, -1.0f, stream);
    // q = x Wq^T etc.: dW += d(q|k|v)^T x; dx = dq Wq + dk Wk + dv Wv.
    sgemm(blas, true, false, qd, d, n, 1.0f, dq.get(), qd, x, d, 1.0f, g(f.wq), d);
    sgemm(blas, true, false, kvd, d, n, 1.0f, dk.get(), kvd, x, d, 1.0f, g(f.wk), d);
    sgemm(blas, true, false, kvd, d, n, 1.0f, dv.get(), kvd, x, d, 1.0f, g(f.wv), d);
    sgemm(blas, false, false, n, d, qd, 1.0f, dq.get(), qd, w(f.wq), d, 0.0f, dx, d);
    sgemm(blas, false, false, n, d, kvd, 1.0f, dk.get(), kvd, w(f.wk), d, 1.0f, dx, d);
    sgemm(blas, false, false, n, d, kvd, 1.0f, dv.get(), kvd, w(f.wv), d, 1.0f, dx, d);
  }

  void dense_ffn_forward(int l, const float* x, float* out) {
    const LayerOffsets& f = lo[l];
    float* a1 = h1.get() + l * n * Fd;
    float* a3 = h3.get() + l * n * Fd;
    float* aa = act.get() + l * n * Fd;
    sgemm(blas, false, true, n, Fd, d, 1.0f, x, d, w(f.w1), d, 0.0f, a1, Fd);
    sgemm(blas, false, true, n, Fd, d, 1.0f, x, d, w(f.w3), d, 0.0f, a3, Fd);
    cuda::launch_swiglu_f32_forward(n * Fd, a1, a3, aa, stream);
    sgemm(blas, false, true, n, d, Fd, 1.0f, aa, Fd, w(f.w2), Fd, 0.0f, out, d);
  }

  void dense_ffn_backward(int l, const float* x, const float* dout, float* dx) {
    const LayerOffsets& f = lo[l];
    const float* a1 = h1.get() + l * n * Fd;
    const float* a3 = h3.get() + l * n * Fd;
    const float* aa = act.get() + l * n * Fd;
    // y = a W2^T: da = dy W2, dW2 += dy^T a.
    sgemm(blas, false, false, n, Fd, d, 1.0f, dout, d, w(f.w2), Fd, 0.0f, da.get(), Fd);
    sgemm(blas, true, false, d, Fd, n, 1.0f, dout, d, aa, Fd, 1.0f, g(f.w2), Fd);
    cuda::launch_swiglu_f32_backward(n * Fd, a1, a3, da.get(), dh1.get(), dh3.get(), stream);
    // h1 = x W1^T: dx = dh1 W1 + dh3 W3, dW1 += dh1^T x, dW3 += dh3^T x.
    sgemm(blas, false, false, n, d, Fd, 1.0f, dh1.get(), Fd, w(f.w1), d, 0.0f, dx, d);
    sgemm(blas, true, false, Fd, d, n, 1.0f, dh1.get(), Fd, x, d, 1.0f, g(f.w1), d);
    sgemm(blas, false, false, n, d, Fd, 1.0f, dh3.get(), Fd, w(f.w3), d, 1.0f, dx, d);
    sgemm(blas, true, false, Fd, d, n, 1.0f, dh3.get(), Fd, x, d, 1.0f, g(f.w3), d);
  }

  double forward(const int32_t* inputs, const int32_t* targets, int B_, int S_) {
    MOE_CHECK(B_ > 0 && S_ > 0, "CudaTransformer::forward: B = {} and S = {} must be positive", B_,
              S_);
    MOE_CHECK(S_ <= cfg.max_position_embeddings,
              "CudaTransformer::forward: sequence length {} exceeds max_position_embeddings = {}",
              S_, cfg.max_position_embeddings);
    const int64_t rows = int64_t(B_) * S_;
    for (int64_t i = 0; i < rows; ++i)
      MOE_CHECK(inputs[i] >= 0 && inputs[i] < V,
                "CudaTransformer::forward: token id {} at row {} is outside the vocabulary [0, {})",
                inputs[i], i, V);
    counted = 0;
    if (targets)
      for (int64_t i = 0; i < rows; ++i) {
        MOE_CHECK(targets[i] >= -1 && targets[i] < V,
                  "CudaTransformer::forward: target {} at row {} is outside [-1, {}) (-1 = "
                  "ignored)",
                  targets[i], i, V);
        counted += targets[i] >= 0;
      }
    reserve(rows, int64_t(B_) * H * S_ * S_);
    B = B_;
    S = S_;
    n = rows;
    has_targets = targets != nullptr;
    forward_done = true;
    const int64_t nd = n * d;
    const double eps = cfg.rms_norm_eps;

    MOE_CUDA_CHECK(cudaMemcpyAsync(tokens_dev.get(), inputs, sizeof(int32_t) * n,
                                   cudaMemcpyHostToDevice, stream));
    if (has_targets)
      MOE_CUDA_CHECK(cudaMemcpyAsync(targets_dev.get(), targets, sizeof(int32_t) * n,
                                     cudaMemcpyHostToDevice, stream));
    build_embedding_groups(inputs);

    cuda::launch_embedding_forward(tokens_dev.get(), n, d, w(off_embed), h.get(), stream);
    aux = 0;
    for (int l = 0; l < L; ++l) {
      float* hl = h.get() + l * nd;
      float* xal = xa.get() + l * nd;
      float* hml = hmid.get() + l * nd;
      float* xml = xm.get() + l * nd;
      cuda::launch_rmsnorm_forward(n, d, hl, w(lo[l].in_norm), eps, xal, rstd_a.get() + l * n,
                                   stream);
      attention_forward(l, xal, tmp.get());
      cuda::launch_add(nd, hl, tmp.get(), hml, stream);
      cuda::launch_rmsnorm_forward(n, d, hml, w(lo[l].post_norm), eps, xml, rstd_m.get() + l * n,
                                   stream);
      if (moe[l]) {
        moe_waits_for_main(*moe[l]);
        moe[l]->forward_device(xml, tmp.get(), n);
        main_waits_for_moe(*moe[l]);
        aux += moe[l]->aux_loss();
      } else {
        dense_ffn_forward(l, xml, tmp.get());
      }
      cuda::launch_add(nd, hml, tmp.get(), h.get() + (l + 1) * nd, stream);
    }
    cuda::launch_rmsnorm_forward(n, d, h.get() + L * nd, w(off_norm), eps, hf.get(), rstd_f.get(),
                                 stream);
    sgemm(blas, false, true, n, V, d, 1.0f, hf.get(), d, w(off_head), d, 0.0f, logits.get(), V);

    ce = 0;
    if (!has_targets) {
      aux = 0;
      sync();
      return 0.0;
    }
    cuda::launch_cross_entropy(n, V, logits.get(), targets_dev.get(), 0.0, row_loss.get(), nullptr,
                               stream);
    host_row_loss.resize(static_cast<size_t>(n));
    MOE_CUDA_CHECK(cudaMemcpyAsync(host_row_loss.data(), row_loss.get(), sizeof(float) * n,
                                   cudaMemcpyDeviceToHost, stream));
    sync();
    // Summed on the host in row order, in double, as cross_entropy_forward.
    double sum = 0;
    for (int64_t i = 0; i < n; ++i)
      if (targets[i] >= 0) sum += static_cast<double>(host_row_loss[i]);
    ce = counted > 0 ? sum / static_cast<double>(counted) : 0.0;
    return ce + aux;
  }

  void backward(double ce_scale, double aux_scale) {
    MOE_CHECK(forward_done && has_targets,
              "CudaTransformer::backward: needs a forward with targets");
    const int64_t nd = n * d;
    cuda::launch_cross_entropy(n, V, logits.get(), targets_dev.get(),
                               counted > 0 ? ce_scale / static_cast<double>(counted) : 0.0,
                               row_loss.get(), dlogits.get(), stream);
    // logits = hf head^T: dhead += dlogits^T hf, dhf = dlogits head.
    sgemm(blas, true, false, V, d, n, 1.0f, dlogits.get(), V, hf.get(), d, 1.0f, g(off_head), d);
    sgemm(blas, false, false, n, d, V, 1.0f, dlogits.get(), V, w(off_head), d, 0.0f, dhf.get(), d);
    MOE_CUDA_CHECK(cudaMemsetAsync(dh.get(), 0, sizeof(float) * nd, stream));
    cuda::launch_rmsnorm_backward(n, d, dhf.get(), h.get() + L * nd, w(off_norm), rstd_f.get(),
                                  dh.get(), g(off_norm), rms_partial.get(), stream);
    for (int l = L - 1; l >= 0; --l) {
      // dh is the gradient of the block's output; the residual carries it through unchanged.
      const float* xml = xm.get() + l * nd;
      if (moe[l]) {
        moe_waits_for_main(*moe[l]);
        moe[l]->backward_device(dh.get(), dtmp.get(), aux_scale);
        main_waits_for_moe(*moe[l]);
      } else {
        dense_ffn_backward(l, xml, dh.get(), dtmp.get());
      }
      cuda::launch_rmsnorm_backward(n, d, dtmp.get(), hmid.get() + l * nd, w(lo[l].post_norm),
                                    rstd_m.get() + l * n, dh.get(), g(lo[l].post_norm),
                                    rms_partial.get(), stream);
      attention_backward(l, xa.get() + l * nd, dh.get(), dtmp.get());
      cuda::launch_rmsnorm_backward(n, d, dtmp.get(), h.get() + l * nd, w(lo[l].in_norm),
                                    rstd_a.get() + l * n, dh.get(), g(lo[l].in_norm),
                                    rms_partial.get(), stream);
    }
    cuda::launch_embedding_backward(emb_unique_count, d, emb_unique.get(), emb_start.get(),
                                    emb_rows.get(), dh.get(), g(off_embed), stream);
  }

  double optimizer_step(double lr) {
    main_waits_for_all_moe();  // the MoE gradients are complete
    // Global norm: per tensor partial sums, then one ordered sum over all of them.
    for (size_t i = 0; i < tensors.size(); ++i)
      cuda::launch_sum_squares(tensors[i].grad, tensors[i].n,
                               norm_partial.get() + norm_partial_offset[i], stream);
    cuda::launch_sum_in_order(norm_partial.get(), norm_partial_offset.back(), norm_sq.get(),
                              stream);
    // AdamW<float>::step's constants, computed the same way.
    ++adam_steps;
    const TrainConfig& t = cfg.training;
    const double bc1 = 1.0 - std::pow(t.adam_beta1, static_cast<double>(adam_steps));
    const double bc2_sqrt =
        std::sqrt(1.0 - std::pow(t.adam_beta2, static_cast<double>(adam_steps)));
    cuda::AdamWStep s{};
    s.b1 = static_cast<float>(t.adam_beta1);
    s.b2 = static_cast<float>(t.adam_beta2);
    s.eps = static_cast<float>(t.adam_eps);
    s.step_size = static_cast<float>(lr / bc1);
    s.inv_bc2 = static_cast<float>(1.0 / bc2_sqrt);
    s.max_norm = t.grad_clip;
    for (const DeviceTensor& tt : tensors) {
      s.shrink = static_cast<float>(tt.decay ? 1.0 - lr * t.weight_decay : 1.0);
      cuda::launch_adamw(s, norm_sq.get(), tt.n, tt.grad, tt.value, tt.m, tt.v, stream);
    }
    for (auto& m : moe)
      if (m) {
        moe_waits_for_main(*m);
        m->refresh_compute_weights();
      }
    double host_norm_sq = 0;
    MOE_CUDA_CHECK(cudaMemcpyAsync(&host_norm_sq, norm_sq.get(), sizeof(double),
                                   cudaMemcpyDeviceToHost, stream));
    sync();
    return std::sqrt(host_norm_sq);
  }

  std::vector<ParamRef<float>>::const_iterator find_param(const std::string& name) const {
    return std::find_if(params.begin(), params.end(),
                        [&](const ParamRef<float>& p) { return p.name == name; });
  }
};

CudaTransformer::CudaTransformer(const ModelConfig& config)
    : impl_(std::make_unique<Impl>(config)) {}
CudaTransformer::~CudaTransformer() = default;
CudaTransformer::CudaTransformer(CudaTransformer&&) noexcept = default;
CudaTransformer& CudaTransformer::operator=(CudaTransformer&&) noexcept = default;

const ModelConfig& CudaTransformer::config() const {
  return impl_->cfg;
}
std::vector<ParamRef<float>>& CudaTransformer::parameters() {
  return impl_->params;
}
void CudaTransformer::upload_params() {
  impl_->upload_params();
}
void CudaTransformer::download_params() {
  impl_->download_params();
}
void CudaTransformer::download_grads() {
  impl_->download_grads();
}

void CudaTransformer::copy_from(Transformer<float>& cpu) {
  Impl& m = *impl_;
  auto& src = cpu.parameters();
  MOE_CHECK(src.size() == m.params.size(),
            "CudaTransformer::copy_from: the CPU model has {} tensors, this one {}", src.size(),
            m.params.size());
  for (size_t i = 0; i < src.size(); ++i) {
    const ParamRef<float>& a = src[i];
    const ParamRef<float>& b = m.params[i];
    MOE_CHECK(a.name == b.name && a.shape == b.shape,
              "CudaTransformer::copy_from: CPU tensor {} is {} {}, expected {} {}", i, a.name,
              a.shape.str(), b.name, b.shape.str());
    std::copy(a.value, a.value + a.shape.numel(), b.value);
  }
  for (int l = 0; l < m.L; ++l)
    if (m.moe[l]) m.moe[l]->set_selection_bias(cpu.moe_layer(l)->selection_bias());
  m.upload_params();
}

void CudaTransformer::copy_to(Transformer<float>& cpu) {
  Impl& m = *impl_;
  m.download_params();
  auto& dst = cpu.parameters();
  MOE_CHECK(dst.size() == m.params.size(),
            "CudaTransformer::copy_to: the CPU model has {} tensors, this one {}", dst.size(),
            m.params.size());
  for (size_t i = 0; i < dst.size(); ++i) {
    const ParamRef<float>& a = m.params[i];
    const ParamRef<float>& b = dst[i];
    MOE_CHECK(a.name == b.name && a.shape == b.shape,
              "CudaTransformer::copy_to: CPU tensor {} is {} {}, expected {} {}", i, b.name,
              b.shape.str(), a.name, a.shape.str());
    std::copy(a.value, a.value + a.shape.numel(), b.value);
  }
  for (int l = 0; l < m.L; ++l)
    if (m.moe[l]) cpu.moe_layer(l)->selection_bias() = m.moe[l]->selection_bias();
}

void CudaTransformer::load_weights(const SafeTensorsFile& f) {
  Impl& m = *impl_;
  for (const auto& p : m.params) {
    MOE_CHECK(f.has(p.name), "{}: missing tensor {} (shape {})", f.path(), p.name, p.shape.str());
    f.read_into(p.name, p.shape, p.value);
  }
  for (int l = 0; l < m.L; ++l) {
    if (!m.moe[l] || !m.cfg.moe.use_selection_bias) continue;
    const std::string name = fmt::format("state.selection_bias.{}", l);
    if (!f.has(name)) continue;
    std::vector<float> bias(static_cast<size_t>(m.cfg.moe.num_experts));
    f.read_into(name, {static_cast<int64_t>(bias.size())}, bias.data());
    m.moe[l]->set_selection_bias(bias);
  }
  m.upload_params();
}

void CudaTransformer::save_weights(SafeTensorsWriter& w, DType dtype) {
  Impl& m = *impl_;
  m.download_params();
  for (const auto& p : m.params) w.add(p.name, p.shape, p.value, dtype);
  for (int l = 0; l < m.L; ++l) {
    if (!m.moe[l] || !m.cfg.moe.use_selection_bias) continue;
    const auto& bias = m.moe[l]->selection_bias();
    w.add(fmt::format("state.selection_bias.{}", l), {static_cast<int64_t>(bias.size())},
          bias.data(), DType::F32);
  }
}

void CudaTransformer::save_optimizer(SafeTensorsWriter& w) {
  Impl& m = *impl_;
  m.main_waits_for_all_moe();
  std::vector<float> host;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto& p = m.params[i];
    const auto& t = m.tensors[i];
    host.resize(static_cast<size_t>(t.n));
    for (const auto& [prefix, src] : {std::pair{"adam.m.", t.m}, std::pair{"adam.v.", t.v}}) {
      MOE_CUDA_CHECK(
          cudaMemcpyAsync(host.data(), src, sizeof(float) * t.n, cudaMemcpyDeviceToHost, m.stream));
      m.sync();
      w.add(prefix + p.name, p.shape, host.data(), DType::F32);
    }
  }
  w.set_metadata("adam.steps", std::to_string(m.adam_steps));
}

void CudaTransformer::load_optimizer(const SafeTensorsFile& f) {
  Impl& m = *impl_;
  m.main_waits_for_all_moe();
  m.sync();
  std::vector<float> host;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto& p = m.params[i];
    const auto& t = m.tensors[i];
    host.resize(static_cast<size_t>(t.n));
    for (const auto& [prefix, dst] : {std::pair{"adam.m.", t.m}, std::pair{"adam.v.", t.v}}) {
      f.read_into(prefix + p.name, p.shape, host.data());
      MOE_CUDA_CHECK(
          cudaMemcpyAsync(dst, host.data(), sizeof(float) * t.n, cudaMemcpyHostToDevice, m.stream));
      m.sync();  // host is reused for the next tensor
    }
  }
  const std::string& s = f.metadata("adam.steps");
  try {
    m.adam_steps = std::stoll(s);
  } catch (const std::exception&) {
    throw Error(fmt::format("{}: metadata adam.steps = \"{}\" is not an integer", f.path(), s));
  }
}

void CudaTransformer::copy_optimizer_from(const AdamW<float>& adam) {
  Impl& m = *impl_;
  MOE_CHECK(adam.num_params() == m.params.size(),
            "CudaTransformer::copy_optimizer_from: AdamW over {} tensors, the model has {}",
            adam.num_params(), m.params.size());
  m.main_waits_for_all_moe();
  m.sync();
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto& t = m.tensors[i];
    for (const auto& [src, dst] :
         {std::pair{&adam.first_moment(i), t.m}, std::pair{&adam.second_moment(i), t.v}}) {
      MOE_CHECK(static_cast<int64_t>(src->size()) == t.n,
                "CudaTransformer::copy_optimizer_from: {} has {} moment values, expected {}",
                m.params[i].name, src->size(), t.n);
      MOE_CUDA_CHECK(
          cudaMemcpyAsync(dst, src->data(), sizeof(float) * t.n, cudaMemcpyHostToDevice, m.stream));
    }
  }
  m.sync();
  m.adam_steps = adam.steps_taken();
}

void CudaTransformer::copy_optimizer_to(AdamW<float>& adam) {
  Impl& m = *impl_;
  MOE_CHECK(adam.num_params() == m.params.size(),
            "CudaTransformer::copy_optimizer_to: AdamW over {} tensors, the model has {}",
            adam.num_params(), m.params.size());
  m.main_waits_for_all_moe();
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto& t = m.tensors[i];
    for (const auto& [dst, src] :
         {std::pair{&adam.first_moment(i), t.m}, std::pair{&adam.second_moment(i), t.v}}) {
      dst->resize(static_cast<size_t>(t.n));
      MOE_CUDA_CHECK(
          cudaMemcpyAsync(dst->data(), src, sizeof(float) * t.n, cudaMemcpyDeviceToHost, m.stream));
    }
  }
  m.sync();
  adam.set_steps_taken(m.adam_steps);
}

int64_t CudaTransformer::optimizer_steps() const {
  return impl_->adam_steps;
}

void CudaTransformer::zero_grad() {
  impl_->zero_grad();
}

double CudaTransformer::forward(const int32_t* inputs, const int32_t* targets, int B, int S) {
  return impl_->forward(inputs, targets, B, S);
}

void CudaTransformer::backward(double ce_scale, double aux_scale) {
  impl_->backward(ce_scale, aux_scale);
}

double CudaTransformer::optimizer_step(double lr) {
  return impl_->optimizer_step(lr);
}

void CudaTransformer::update_selection_bias() {
  for (auto& m : impl_->moe)
    if (m) m->update_selection_bias();
}

CudaStepStats CudaTransformer::train_step(const int32_t* inputs, const int32_t* targets, int B,
                                          int S, int step) {
  const TrainConfig& t = impl_->cfg.training;
  const int A = t.grad_accum_steps;
  MOE_CHECK(A >= 1, "CudaTransformer::train_step: training.grad_accum_steps = {} < 1", A);
  const int64_t per = int64_t(B) * S;
  CudaStepStats st;
  zero_grad();
  for (int a = 0; a < A; ++a) {
    const double l = forward(inputs + a * per, targets + a * per, B, S);
    backward(1.0 / A, 1.0 / A);
    st.loss += l / A;
    st.ce += ce_loss() / A;
    st.aux += aux_loss() / A;
  }
  st.lr = learning_rate_at(t, step);
  st.grad_norm = optimizer_step(st.lr);
  update_selection_bias();
  return st;
}

double CudaTransformer::ce_loss() const {
  return impl_->ce;
}
double CudaTransformer::aux_loss() const {
  return impl_->aux;
}
int64_t CudaTransformer::counted_targets() const {
  return impl_->counted;
}

std::vector<float> CudaTransformer::logits() const {
  const Impl& m = *impl_;
  std::vector<float> out(static_cast<size_t>(m.n * m.V));
  if (!out.empty()) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(out.data(), m.logits.get(), sizeof(float) * out.size(),
                                   cudaMemcpyDeviceToHost, m.stream));
    m.sync();
  }
  return out;
}

int CudaTransformer::num_layers() const {
  return impl_->L;
}
CudaMoeLayer* CudaTransformer::moe_layer(int l) {
  return impl_->moe.at(static_cast<size_t>(l)).get();
}
const MoeMetrics* CudaTransformer::moe_metrics(int l) const {
  const auto& m = impl_->moe.at(static_cast<size_t>(l));
  return m ? &m->metrics() : nullptr;
}

}  // namespace moe
