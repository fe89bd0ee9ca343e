// CudaMoeLayer (include/moe/cuda_moe_layer.h): the layer's orchestration on the host, compiled by
// the C++ compiler (nvcc cannot compile the fmt-based moe headers, docs/cuda.md); the kernels
// are in router.cu, permute.cu, expert_ffn.cu, shared_experts.cu and losses.cu.
//
// Forward, in the order of MoeLayer::forward:
//   1. logits z = x Wr^T (cuBLAS sgemm, fp32)
//   2. scores, top-k of s + b, gates, probabilities, per-token entropy and lse^2 (router.cu)
//   3. capacity and rows: per-chunk histogram, prefix sums, stable ranks (permute.cu)
//   4. loss sums; counts, offsets and sums to the host (the one synchronization)
//   5. x to bf16, gather rows in expert-major order
//   6. grouped GEMM h = xp W13^T, SwiGLU, grouped GEMM y = a W2^T (expert_ffn.cu)
//   7. shared experts (dense bf16 GEMMs) and their sigmoid gate
//   8. gate-weighted combine of the kept rows plus the shared output
// Backward runs the same steps in reverse and reuses the permutation of the forward.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "cuda/cuda_check.h"
#include "cuda/cuda_resources.h"
#include "cuda/expert_ffn.cuh"
#include "cuda/losses.cuh"
#include "cuda/permute.cuh"
#include "cuda/router.cuh"
#include "cuda/router_params.h"
#include "cuda/routing_math.h"
#include "cuda/shared_experts.cuh"
#include "moe/cuda_moe_layer.h"
#include "moe/grouped_experts.h"
#include "moe/moe_layer.h"
#include "moe/router.h"
#include "moe/shared_experts.h"

namespace moe {

bool cuda_available() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error for later callers
    return false;
  }
  return count > 0;
}

namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using cuda::PinnedBuffer;

void check_same_layout(const ParamSet<float>& have, const ParamSet<float>& want, const char* what) {
  const auto& a = have.specs();
  const auto& b = want.specs();
  MOE_CHECK(a.size() == b.size(), "{}: {} tensors, the CUDA layer has {}", what, a.size(),
            b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    MOE_CHECK(a[i].name == b[i].name, "{}: tensor {} is \"{}\", the CUDA layer expects \"{}\"",
              what, i, a[i].name, b[i].name);
    MOE_CHECK(a[i].shape == b[i].shape, "{}: {} has shape {}, the CUDA layer expects {}", what,
              a[i].name, a[i].shape.str(), b[i].shape.str());
  }
}

}  // namespace

struct CudaMoeLayer::Impl {
  MoeConfig cfg;
  int d = 0, F = 0, E = 0, k = 0, Hs = 0;
  cuda::RouterParams rp;

  ParamSet<float> params;  // host mirror, MoeLayer<float>'s layout
  MoeParamOffsets off;
  std::vector<float> bias;  // [E] selection bias (state, not a parameter)
  bool bias_dirty = true;

  // Owners first, so that they outlive everything that uses them and are released even when
  // the constructor throws half way.
  cuda::StreamOwner stream_owner;
  cuda::BlasOwner blas_owner;
  cudaStream_t stream = nullptr;  // = stream_owner.s
  cublasHandle_t blas = nullptr;  // = blas_owner.h
  cuda::GroupedGemm grouped;
  std::vector<cuda::ExpertProblem> problems;

  // Parameters on the device.
  DeviceBuffer<float> weights, grads;     // fp32 master weights and gradients (arena layout)
  DeviceBuffer<bf16> w13, w2, sw13, sw2;  // bf16 compute copies: [E,2F,d] [E,d,F] [2Hs,d] [d,Hs]
  DeviceBuffer<float> bias_dev;           // [E]

  // Forward state (saved for the backward).
  DeviceBuffer<float> x;                                      // [T, d]
  DeviceBuffer<uint8_t> token_mask;                           // [T], when the forward had one
  DeviceBuffer<bf16> x_bf;                                    // [T, d]
  DeviceBuffer<float> z, s, p;                                // [T, E]
  DeviceBuffer<float> lse, norm;                              // [T]
  DeviceBuffer<double> token_entropy, token_lse_sq;           // [T]
  DeviceBuffer<int32_t> primary, expert, slot_row, row_slot;  // [T*k] ([N] for row_slot)
  DeviceBuffer<float> gate_primary, gate;                     // [T*k]
  DeviceBuffer<int32_t> chunk_counts;                         // [chunks, E]
  DeviceBuffer<int64_t> counts_dev, offsets_dev;              // [E], [E+1]
  DeviceBuffer<double> stats_dev;                             // [E+2]
  DeviceBuffer<bf16> xp, h, a, y;                             // [N, d] [N, 2F] [N, F] [N, d]
  DeviceBuffer<bf16> sh, sa, sy;                              // [T, 2Hs] [T, Hs] [T, d]
  DeviceBuffer<float> sgate;                                  // [T]
  // Backward scratch.
  DeviceBuffer<float> dgate, ds, dz, dpre;  // [T*k] [T, E] [T, E] [T]
  DeviceBuffer<bf16> dy, da, dh, dxp;       // [N, d] [N, F] [N, 2F] [N, d]
  DeviceBuffer<bf16> dys, dsa, dsh, dxs;    // [T, d] [T, Hs] [T, 2Hs] [T, d]
  // Host convenience staging.
  DeviceBuffer<float> io_in, io_out;

  PinnedBuffer<int64_t> host_counts, host_offsets;
  PinnedBuffer<double> host_stats;
  std::vector<int64_t> offsets;  // [E+1] of the last forward

  int64_t tokens = 0, valid_tokens = 0, rows = 0, capacity = -1;
  bool masked = false;  // the last forward had padding tokens
  bool forward_done = false;
  MoeMetrics metrics;

  explicit Impl(const MoeConfig& config) : cfg(config) {
    cfg.validate("CudaMoeLayer");
    cuda_check_supported(cfg, "CudaMoeLayer");
    MOE_CHECK(cuda_available(), "CudaMoeLayer: no CUDA device is available");
    d = cfg.hidden_size;
    F = cfg.moe_intermediate_size;
    E = cfg.num_experts;
    k = cfg.num_experts_per_tok;
    Hs = cfg.shared_hidden();
    rp = cuda::router_params(cfg);
    // The declarations of MoeLayer<float>'s constructor (SwiGLU only), in the same order.
    params.declare("router.weight", {E, d});
    declare_expert_weights(params, E, F, d, Activation::SwiGLU);
    declare_shared_expert_weights(params, cfg);  // SwiGLU: cuda_check_supported
    params.allocate();
    off = MoeParamOffsets::of(params);
    bias.assign(E, 0.0f);
    offsets.assign(E + 1, 0);
    problems.resize(E);

    MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_owner.s, cudaStreamNonBlocking));
    stream = stream_owner.s;
    MOE_CUBLAS_CHECK(cublasCreate(&blas_owner.h));
    blas = blas_owner.h;
    MOE_CUBLAS_CHECK(cublasSetStream(blas, stream));
    // Default math: fp32 GEMMs (the router) stay fp32, no TF32.
    MOE_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));

    weights.grow(params.numel());
    grads.grow(params.numel());
    w13.grow(int64_t(E) * 2 * F * d);
    w2.grow(int64_t(E) * d * F);
    if (Hs > 0) {
      sw13.grow(int64_t(2) * Hs * d);
      sw2.grow(int64_t(d) * Hs);
    }
    bias_dev.grow(E);
    counts_dev.grow(E);
    offsets_dev.grow(E + 1);
    stats_dev.grow(E + 2);
    host_counts.allocate(E);
    host_offsets.allocate(E + 1);
    host_stats.allocate(E + 2);
    upload_params();
    zero_grad();
  }

  void sync() const { MOE_CUDA_CHECK(cudaStreamSynchronize(stream)); }

  void upload_params() {
    MOE_CUDA_CHECK(cudaMemcpyAsync(weights.get(), params.values().data(),
                                   sizeof(float) * params.numel(), cudaMemcpyHostToDevice, stream));
    refresh_compute_weights();
    sync();
  }

  // The one place where the bf16 copies are rounded from the fp32 master weights.
  void refresh_compute_weights() {
    const float* w = weights.get();
    cuda::launch_pack_gate_up(w + off.w1, w + off.w3, E, F, d, w13.get(), stream);
    cuda::launch_to_bf16(w + off.w2, int64_t(E) * d * F, w2.get(), stream);
    if (Hs > 0) {
      cuda::launch_pack_gate_up(w + off.shared_w1, w + off.shared_w3, 1, Hs, d, sw13.get(), stream);
      cuda::launch_to_bf16(w + off.shared_w2, int64_t(d) * Hs, sw2.get(), stream);
    }
  }

  void zero_grad() {
    MOE_CUDA_CHECK(cudaMemsetAsync(grads.get(), 0, sizeof(float) * params.numel(), stream));
  }

  void download_grads(float* dst) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(dst, grads.get(), sizeof(float) * params.numel(),
                                   cudaMemcpyDeviceToHost, stream));
    sync();
  }

  void reserve(int64_t T) {
    const int64_t Tk = T * k, TE = T * E;
    x.grow(T * d);
    x_bf.grow(T * d);
    for (auto* b : {&z, &s, &p, &ds, &dz}) b->grow(TE);
    for (auto* b : {&lse, &norm, &dpre}) b->grow(T);
    token_entropy.grow(T);
    token_lse_sq.grow(T);
    for (auto* b : {&primary, &expert, &slot_row, &row_slot}) b->grow(Tk);
    for (auto* b : {&gate_primary, &gate, &dgate}) b->grow(Tk);
    chunk_counts.grow(std::max<int64_t>(cuda::slot_chunks(Tk), 1) * E);
    // Expert buffers for the dropless worst case, N = T*k rows.
    for (auto* b : {&xp, &y, &dy, &dxp}) b->grow(Tk * d);
    for (auto* b : {&a, &da}) b->grow(Tk * F);
    for (auto* b : {&h, &dh}) b->grow(Tk * 2 * F);
    if (Hs > 0) {
      for (auto* b : {&sy, &dys, &dxs}) b->grow(T * d);
      for (auto* b : {&sa, &dsa}) b->grow(T * Hs);
      for (auto* b : {&sh, &dsh}) b->grow(T * 2 * Hs);
      sgate.grow(T);
    }
  }

  // Forward on x (already in this->x, T rows) into out (device); mask: host [T] or null.
  void forward(int64_t T, float* out, const uint8_t* mask) {
    MOE_CHECK(T * k <= int64_t(INT32_MAX),
              "CudaMoeLayer::forward: {} tokens x {} experts per token exceed the int32 row "
              "indices",
              T, k);
    tokens = T;
    forward_done = true;
    valid_tokens = T;
    if (mask)
      for (int64_t t = 0; t < T; ++t) valid_tokens -= mask[t] == 0;
    masked = valid_tokens < T;
    if (masked) {
      token_mask.grow(T);
      MOE_CUDA_CHECK(cudaMemcpyAsync(token_mask.get(), mask, T, cudaMemcpyHostToDevice, stream));
    }
    const uint8_t* mask_dev = masked ? token_mask.get() : nullptr;
    const float one = 1.0f, zero = 0.0f;
    const float* w = weights.get();
    const int64_t slots = T * k;
    capacity = cuda::expert_capacity(cfg.capacity_factor, valid_tokens, k, E);
    if (T == 0) {
      rows = 0;
      std::fill(offsets.begin(), offsets.end(), 0);
      fill_metrics(std::vector<int64_t>(E, 0).data(), std::vector<double>(E + 2, 0.0).data());
      return;
    }
    if (cfg.use_selection_bias && bias_dirty) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(bias_dev.get(), bias.data(), sizeof(float) * E,
                                     cudaMemcpyHostToDevice, stream));
      bias_dirty = false;
    }

    // 1. Logits (fp32): z [T, E] = x [T, d] Wr [E, d]^T.
    MOE_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, E, static_cast<int>(T), d, &one,
                                 w + off.router, d, x.get(), d, &zero, z.get(), E));
    // 2. Scores, selection, gates, probabilities.
    cuda::launch_router_forward(rp, T, z.get(), cfg.use_selection_bias ? bias_dev.get() : nullptr,
                                mask_dev, s.get(), p.get(), lse.get(), norm.get(), primary.get(),
                                gate_primary.get(), token_entropy.get(), token_lse_sq.get(),
                                stream);
    // 3. Capacity (position priority, drop) and the expert-major rows.
    cuda::launch_route_counts(primary.get(), slots, E, capacity, chunk_counts.get(),
                              counts_dev.get(), offsets_dev.get(), stream);
    cuda::launch_assign_rows(primary.get(), gate_primary.get(), slots, E, capacity,
                             chunk_counts.get(), offsets_dev.get(), slot_row.get(), row_slot.get(),
                             expert.get(), gate.get(), stream);
    // 4. Loss sums, and everything the host needs, in one synchronization.
    cuda::launch_routing_stats(T, E, p.get(), mask_dev, token_entropy.get(), token_lse_sq.get(),
                               stats_dev.get(), stream);
    MOE_CUDA_CHECK(cudaMemcpyAsync(host_counts.get(), counts_dev.get(), sizeof(int64_t) * E,
                                   cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaMemcpyAsync(host_offsets.get(), offsets_dev.get(), sizeof(int64_t) * (E + 1),
                                   cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats.get(), stats_dev.get(), sizeof(double) * (E + 2),
                                   cudaMemcpyDeviceToHost, stream));
    sync();
    std::copy_n(host_offsets.get(), E + 1, offsets.begin());
    rows = offsets[E];
    fill_metrics(host_counts.get(), host_stats.get());

    // 5. Rows in expert-major order, bf16.
    cuda::launch_to_bf16(x.get(), T * d, x_bf.get(), stream);
    cuda::launch_gather_rows(row_slot.get(), k, rows, d, x_bf.get(), xp.get(), stream);
    // 6. Experts: h = xp W13^T (grouped), a = SwiGLU(h), y = a W2^T (grouped).
    for (int e = 0; e < E; ++e)
      problems[e] = {offsets[e + 1] - offsets[e], xp.get() + offsets[e] * d,
                     w13.get() + int64_t(e) * 2 * F * d, h.get() + offsets[e] * 2 * F};
    grouped.run(blas, stream, true, 2 * F, d, problems, d, d, 2 * F);
    cuda::launch_swiglu_forward(rows, F, h.get(), a.get(), stream);
    for (int e = 0; e < E; ++e)
      problems[e] = {offsets[e + 1] - offsets[e], a.get() + offsets[e] * F,
                     w2.get() + int64_t(e) * d * F, y.get() + offsets[e] * d};
    grouped.run(blas, stream, true, d, F, problems, F, F, d);
    // 7. Shared experts on every token, and their gate.
    if (Hs > 0) {
      cuda::gemm_bf16(blas, false, true, T, 2 * Hs, d, x_bf.get(), d, sw13.get(), d, 0.0f, sh.get(),
                      false, 2 * Hs);
      cuda::launch_swiglu_forward(T, Hs, sh.get(), sa.get(), stream);
      cuda::gemm_bf16(blas, false, true, T, d, Hs, sa.get(), Hs, sw2.get(), Hs, 0.0f, sy.get(),
                      false, d);
      if (cfg.shared_expert_gate) {
        // gate logits [T] = x [T, d] wg [d] (fp32), then sigmoid.
        MOE_CUBLAS_CHECK(cublasSgemv(blas, CUBLAS_OP_T, d, static_cast<int>(T), &one, x.get(), d,
                                     w + off.shared_gate, 1, &zero, sgate.get(), 1));
        cuda::launch_sigmoid_inplace(T, sgate.get(), stream);
      }
    }
    // 8. Combine.
    cuda::launch_combine(T, k, d, slot_row.get(), gate.get(), y.get(), Hs > 0 ? sy.get() : nullptr,
                         Hs > 0 && cfg.shared_expert_gate ? sgate.get() : nullptr, out, stream);
  }

  void backward(const float* dout, float* dx, double aux_scale) {
    MOE_CHECK(forward_done, "CudaMoeLayer::backward: no forward to differentiate");
    const int64_t T = tokens;
    if (T == 0) return;
    const float one = 1.0f;
    const float* w = weights.get();
    float* g = grads.get();

    // Combine: dy rows and the final-gate gradients.
    cuda::launch_combine_backward(T, k, d, slot_row.get(), gate.get(), y.get(), dout, dy.get(),
                                  dgate.get(), stream);
    // Experts, reusing the forward's permutation.
    for (int e = 0; e < E; ++e)  // da = dy W2
      problems[e] = {offsets[e + 1] - offsets[e], dy.get() + offsets[e] * d,
                     w2.get() + int64_t(e) * d * F, da.get() + offsets[e] * F};
    grouped.run(blas, stream, false, F, d, problems, d, F, F);
    for (int e = 0; e < E; ++e) {  // dW2 += dy^T a
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n == 0) continue;
      cuda::gemm_bf16(blas, true, false, d, F, n, dy.get() + offsets[e] * d, d,
                      a.get() + offsets[e] * F, F, 1.0f, g + off.w2 + int64_t(e) * d * F, true, F);
    }
    cuda::launch_swiglu_backward(rows, F, h.get(), da.get(), dh.get(), stream);
    for (int e = 0; e < E; ++e)  // dxp = dh W13 (both halves at once)
      problems[e] = {offsets[e + 1] - offsets[e], dh.get() + offsets[e] * 2 * F,
                     w13.get() + int64_t(e) * 2 * F * d, dxp.get() + offsets[e] * d};
    grouped.run(blas, stream, false, d, 2 * F, problems, 2 * F, d, d);
    for (int e = 0; e < E; ++e) {  // dW1 += dh1^T xp, dW3 += dh3^T xp
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n == 0) continue;
      const bf16* dh_e = dh.get() + offsets[e] * 2 * F;
      const bf16* xp_e = xp.get() + offsets[e] * d;
      cuda::gemm_bf16(blas, true, false, F, d, n, dh_e, 2 * F, xp_e, d, 1.0f,
                      g + off.w1 + int64_t(e) * F * d, true, d);
      cuda::gemm_bf16(blas, true, false, F, d, n, dh_e + F, 2 * F, xp_e, d, 1.0f,
                      g + off.w3 + int64_t(e) * F * d, true, d);
    }

    // Shared experts and their gate.
    const bool shared_gate = Hs > 0 && cfg.shared_expert_gate;
    if (Hs > 0) {
      if (shared_gate) {
        cuda::launch_shared_gate_backward(T, d, dout, sy.get(), sgate.get(), dys.get(), dpre.get(),
                                          stream);
        // dwg [d] += x^T dpre
        MOE_CUBLAS_CHECK(cublasSgemv(blas, CUBLAS_OP_N, d, static_cast<int>(T), &one, x.get(), d,
                                     dpre.get(), 1, &one, g + off.shared_gate, 1));
      } else {
        cuda::launch_to_bf16(dout, T * d, dys.get(), stream);
      }
      cuda::gemm_bf16(blas, false, false, T, Hs, d, dys.get(), d, sw2.get(), Hs, 0.0f, dsa.get(),
                      false, Hs);
      cuda::gemm_bf16(blas, true, false, d, Hs, T, dys.get(), d, sa.get(), Hs, 1.0f,
                      g + off.shared_w2, true, Hs);
      cuda::launch_swiglu_backward(T, Hs, sh.get(), dsa.get(), dsh.get(), stream);
      cuda::gemm_bf16(blas, false, false, T, d, 2 * Hs, dsh.get(), 2 * Hs, sw13.get(), d, 0.0f,
                      dxs.get(), false, d);
      cuda::gemm_bf16(blas, true, false, Hs, d, T, dsh.get(), 2 * Hs, x_bf.get(), d, 1.0f,
                      g + off.shared_w1, true, d);
      cuda::gemm_bf16(blas, true, false, Hs, d, T, dsh.get() + Hs, 2 * Hs, x_bf.get(), d, 1.0f,
                      g + off.shared_w3, true, d);
    }
    // dx = rows summed back per token + shared gate term + shared FFN term.
    cuda::launch_gather_rows_backward(
        T, k, d, slot_row.get(), dxp.get(), shared_gate ? dpre.get() : nullptr,
        shared_gate ? w + off.shared_gate : nullptr, Hs > 0 ? dxs.get() : nullptr, dx, stream);

    // Router: gates and losses -> scores -> logits -> weights and x (fp32).
    cuda::launch_router_backward(rp, T, z.get(), masked ? token_mask.get() : nullptr, s.get(),
                                 p.get(), norm.get(), lse.get(), primary.get(), expert.get(),
                                 dgate.get(), counts_dev.get(), valid_tokens, aux_scale, ds.get(),
                                 dz.get(), stream);
    // dWr [E, d] += dz^T x; dx [T, d] += dz Wr.
    MOE_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, d, E, static_cast<int>(T), &one,
                                 x.get(), d, dz.get(), E, &one, g + off.router, d));
    MOE_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, static_cast<int>(T), E, &one,
                                 w + off.router, d, dz.get(), E, &one, dx, d));
  }

  // The metrics of fill_metrics (moe_losses.cpp) from the counts and the routing sums.
  void fill_metrics(const int64_t* counts, const double* stats) {
    MoeMetrics& m = metrics;
    m.primary_per_expert.assign(counts, counts + E);
    m.kept_per_expert.resize(E);
    m.dropped = 0;
    for (int e = 0; e < E; ++e) {
      m.kept_per_expert[e] = offsets[e + 1] - offsets[e];
      m.dropped += counts[e] - m.kept_per_expert[e];
    }
    m.tokens = valid_tokens;
    m.assignments = valid_tokens * k;
    m.rerouted = 0;
    m.capacity = capacity;
    m.dropped_fraction =
        m.assignments ? static_cast<double>(m.dropped) / static_cast<double>(m.assignments) : 0.0;
    m.load_balance_loss = cuda::load_balance_value(rp, counts, stats, valid_tokens);
    m.importance_loss = 0;
    m.z_loss = cuda::z_loss_value(rp, stats[E + 1], valid_tokens);
    m.router_entropy = valid_tokens ? stats[E] / static_cast<double>(valid_tokens) : 0.0;
    m.set_load_spread();
  }

  template <class T>
  std::vector<T> download(const DeviceBuffer<T>& b, int64_t n) const {
    std::vector<T> v(static_cast<size_t>(n));
    if (n > 0) {
      MOE_CUDA_CHECK(
          cudaMemcpyAsync(v.data(), b.get(), sizeof(T) * n, cudaMemcpyDeviceToHost, stream));
      sync();
    }
    return v;
  }
};

CudaMoeLayer::CudaMoeLayer(const MoeConfig& config) : impl_(std::make_unique<Impl>(config)) {}
CudaMoeLayer::~CudaMoeLayer() = default;
CudaMoeLayer::CudaMoeLayer(CudaMoeLayer&&) noexcept = default;
CudaMoeLayer& CudaMoeLayer::operator=(CudaMoeLayer&&) noexcept = default;

ParamSet<float>& CudaMoeLayer::params() {
  return impl_->params;
}
void CudaMoeLayer::upload_params() {
  impl_->upload_params();
}

void CudaMoeLayer::set_params(const ParamSet<float>& src) {
  check_same_layout(src, impl_->params, "CudaMoeLayer::set_params");
  impl_->params.values() = src.values();
  impl_->upload_params();
}

void CudaMoeLayer::download_grads() {
  impl_->download_grads(impl_->params.grads().data());
}

void CudaMoeLayer::copy_grads_to(ParamSet<float>& dst) {
  check_same_layout(dst, impl_->params, "CudaMoeLayer::copy_grads_to");
  impl_->download_grads(dst.grads().data());
}

void CudaMoeLayer::zero_grad() {
  impl_->zero_grad();
}

void CudaMoeLayer::forward(View<const float> x, View<float> out, const uint8_t* token_mask) {
  Impl& m = *impl_;
  MOE_CHECK(x.ndim() == 2 && x.size(1) == m.d && x.contiguous(),
            "CudaMoeLayer::forward: x has shape {}, expected [T,{}] (hidden_size)", x.shape.str(),
            m.d);
  const int64_t T = x.size(0);
  check_shape(out, {T, m.d}, "CudaMoeLayer::forward: out");
  m.reserve(T);
  m.io_out.grow(std::max<int64_t>(T * m.d, 1));
  if (T > 0)
    MOE_CUDA_CHECK(cudaMemcpyAsync(m.x.get(), x.data, sizeof(float) * T * m.d,
                                   cudaMemcpyHostToDevice, m.stream));
  m.forward(T, m.io_out.get(), token_mask);
  if (T > 0)
    MOE_CUDA_CHECK(cudaMemcpyAsync(out.data, m.io_out.get(), sizeof(float) * T * m.d,
                                   cudaMemcpyDeviceToHost, m.stream));
  m.sync();
}

void CudaMoeLayer::backward(View<const float> dout, View<float> dx, double aux_scale) {
  Impl& m = *impl_;
  const int64_t T = m.tokens;
  check_shape(dout, {T, m.d}, "CudaMoeLayer::backward: dout");
  check_shape(dx, {T, m.d}, "CudaMoeLayer::backward: dx");
  m.io_in.grow(std::max<int64_t>(T * m.d, 1));
  m.io_out.grow(std::max<int64_t>(T * m.d, 1));
  if (T > 0)
    MOE_CUDA_CHECK(cudaMemcpyAsync(m.io_in.get(), dout.data, sizeof(float) * T * m.d,
                                   cudaMemcpyHostToDevice, m.stream));
  m.backward(m.io_in.get(), m.io_out.get(), aux_scale);
  if (T > 0)
    MOE_CUDA_CHECK(cudaMemcpyAsync(dx.data, m.io_out.get(), sizeof(float) * T * m.d,
                                   cudaMemcpyDeviceToHost, m.stream));
  m.sync();
}

void CudaMoeLayer::forward_device(const float* x, float* out, int64_t tokens,
                                  const uint8_t* token_mask) {
  Impl& m = *impl_;
  MOE_CHECK(tokens >= 0, "CudaMoeLayer::forward_device: tokens = {} < 0", tokens);
  m.reserve(tokens);
  if (tokens > 0)
    MOE_CUDA_CHECK(cudaMemcpyAsync(m.x.get(), x, sizeof(float) * tokens * m.d,
                                   cudaMemcpyDeviceToDevice, m.stream));
  m.forward(tokens, out, token_mask);
}

void CudaMoeLayer::backward_device(const float* dout, float* dx, double aux_scale) {
  impl_->backward(dout, dx, aux_scale);
}

float* CudaMoeLayer::device_weights() {
  return impl_->weights.get();
}
float* CudaMoeLayer::device_grads() {
  return impl_->grads.get();
}
void CudaMoeLayer::refresh_compute_weights() {
  impl_->refresh_compute_weights();
}
void* CudaMoeLayer::stream() const {
  return static_cast<void*>(impl_->stream);
}
void CudaMoeLayer::synchronize() const {
  impl_->sync();
}

double CudaMoeLayer::aux_loss() const {
  return impl_->metrics.load_balance_loss + impl_->metrics.z_loss;
}
const MoeMetrics& CudaMoeLayer::metrics() const {
  return impl_->metrics;
}
int64_t CudaMoeLayer::tokens() const {
  return impl_->tokens;
}
int64_t CudaMoeLayer::kept_rows() const {
  return impl_->rows;
}
int64_t CudaMoeLayer::capacity() const {
  return impl_->capacity;
}

std::vector<int32_t> CudaMoeLayer::primary_experts() const {
  return impl_->download(impl_->primary, impl_->tokens * impl_->k);
}
std::vector<int32_t> CudaMoeLayer::final_experts() const {
  return impl_->download(impl_->expert, impl_->tokens * impl_->k);
}
std::vector<float> CudaMoeLayer::gates() const {
  return impl_->download(impl_->gate, impl_->tokens * impl_->k);
}
std::vector<float> CudaMoeLayer::scores() const {
  return impl_->download(impl_->s, impl_->tokens * impl_->E);
}

bool CudaMoeLayer::uses_grouped_gemm() const {
  return impl_->grouped.grouped();
}

double CudaMoeLayer::last_forward_macs() const {
  const Impl& m = *impl_;
  const double T = static_cast<double>(m.tokens), kept = static_cast<double>(m.rows);
  return T * m.d * m.E + 3.0 * m.d * (kept * m.F + T * m.Hs);
}

void CudaMoeLayer::update_selection_bias() {
  Impl& m = *impl_;
  if (!m.cfg.use_selection_bias) return;
  moe::update_selection_bias<float>(m.E, m.cfg.bias_update_rate,
                                    m.metrics.primary_per_expert.data(), m.valid_tokens, m.k,
                                    m.bias.data());
  m.bias_dirty = true;
}

const std::vector<float>& CudaMoeLayer::selection_bias() const {
  return impl_->bias;
}

void CudaMoeLayer::set_selection_bias(const std::vector<float>& bias) {
  MOE_CHECK(static_cast<int>(bias.size()) == impl_->E,
            "CudaMoeLayer::set_selection_bias: {} values for {} experts", bias.size(), impl_->E);
  impl_->bias = bias;
  impl_->bias_dirty = true;
}

const MoeConfig& CudaMoeLayer::config() const {
  return impl_->cfg;
}

}  // namespace moe
