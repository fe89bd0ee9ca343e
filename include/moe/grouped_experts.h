// The expert FFNs of an MoE layer over contiguous expert-major row blocks, and the one FFN
// kernel behind them, the shared experts and the dense baseline:
//   SwiGLU: h1 = x W1^T, h3 = x W3^T, a = silu(h1) * h3, y = a W2^T  (Mixtral w1/w3/w2)
//   GELU:   h1 = x W1^T,               a = gelu(h1),     y = a W2^T  (exact erf GELU)
// Shapes: x [n, d], W1/W3 [F, d], W2 [d, F], h1/h3/a [n, F], y [n, d].
// The forward saves h1, h3 and a for the backward. The backward writes dx (=) and
// accumulates parameter gradients (+=), as in llm.c.
// With ComputeDtype::BFloat16 (float only) every GEMM rounds its operands to bf16 and
// accumulates in fp32 (gemm_bf16.h); h1, h3 and the activation's gradient da stay fp32, and the
// rows only GEMMs read (a; dh1, dh3) are kept as bf16 bits, which the GEMMs would round them to.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "moe/gemm.h"
#include "moe/linear.h"
#include "moe/moe_config.h"
#include "moe/params.h"

namespace moe {

// What one FFN computes: activation, sizes and the GEMMs' dtype.
struct FfnShape {
  Activation act = Activation::SwiGLU;
  int64_t d = 0, F = 0;
  ComputeDtype dtype = ComputeDtype::Float32;
  double limit = 7.0;  // ClampedSwiGLU's clamp
  bool glu() const { return act != Activation::GELU; }
};

// One FFN's weights (P = const T) or their gradients (P = T): w1/w3 [F, d], w2 [d, F];
// w3 null for GELU.
template <class P>
struct FfnWeights {
  P* w1 = nullptr;
  P* w3 = nullptr;
  P* w2 = nullptr;
};

// One SwiGLU FFN's weights in their stored format (a checkpoint's; linear.h), forward only:
// w1 (gate) / w3 (up) [F, d], w2 (down) [d, F]; optional fp32 biases b1/b3 [F], b2 [d] (gpt-oss).
struct FfnViews {
  WeightView w1, w3, w2;
  const float *b1 = nullptr, *b3 = nullptr, *b2 = nullptr;
};

// Row buffers [n, F]: the forward's h1, h3, a; the backward's scratch dh1, dh3, da. With
// ComputeDtype::BFloat16 the rows only GEMMs read are bf16 bits (bf16_bits) in the *_bf16
// fields instead, half the memory and half the bytes for the GEMMs to pack: the forward's a in
// a_bf16, the backward's dh1 and dh3 in h1_bf16 and h3_bf16. FfnRowBuffers holds them.
template <class T>
struct FfnRows {
  T* h1 = nullptr;
  T* h3 = nullptr;
  T* a = nullptr;
  uint16_t* h1_bf16 = nullptr;
  uint16_t* h3_bf16 = nullptr;
  uint16_t* a_bf16 = nullptr;
  FfnRows at(int64_t row, int64_t F) const {
    auto off = [&](auto* p) { return p ? p + row * F : nullptr; };
    return {off(h1), off(h3), off(a), off(h1_bf16), off(h3_bf16), off(a_bf16)};
  }
};

// The storage of one FfnRows, grown on demand (never shrinks), in the fields its use needs:
//   Forward: h1, h3 (inference: the SwiGLU is computed in place in h1)
//   Saved:   h1, h3 and a (a_bf16 with BFloat16), for the backward
//   Scratch: dh1, dh3 (h1_bf16, h3_bf16 with BFloat16) and da, the backward's
// h3 / h3_bf16 only for gated activations; fields a use does not need stay null.
template <class T>
class FfnRowBuffers {
 public:
  enum class Use { Forward, Saved, Scratch };
  FfnRows<T> grow(const FfnShape& f, int64_t rows, Use use);

 private:
  std::vector<T> h1_, h3_, a_;
  std::vector<uint16_t> h1_bf16_, h3_bf16_, a_bf16_;
};

// The one GEMM of layers with a compute dtype (the FFNs, attention projections, LM head):
// gemm<T>, or with BFloat16 gemm_bf16 (operands rounded to bf16 as they are packed, fp32
// accumulation; float only: fp32 master weights stay as they are).
template <class T>
void gemm_in(ComputeDtype dt, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha,
             const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

template <class T>
void ffn_forward(const FfnShape& f, int64_t n, const T* x, const FfnWeights<const T>& w,
                 const FfnRows<T>& saved, T* y);
// dx (=); grad (+=); scratch [n, F] (h3 unused for GELU).
template <class T>
void ffn_backward(const FfnShape& f, int64_t n, const T* x, const FfnWeights<const T>& w,
                  const FfnRows<T>& saved, const T* dy, T* dx, const FfnWeights<T>& grad,
                  const FfnRows<T>& scratch);

// Declares a bank of `experts` expert FFNs in the layout of GroupedExperts.
template <class T>
void declare_expert_weights(ParamSet<T>& params, int64_t experts, int64_t F, int64_t d,
                            Activation act);

// E expert FFNs in the layout every MoE variant shares (Mixtral's, stacked): experts.w1
// [E, F, d], experts.w3 [E, F, d] (SwiGLU only), experts.w2 [E, d, F]. Expert e runs rows
// [offsets[e], offsets[e+1]) of x. Weight offsets are resolved once (bind); the ParamSet is
// passed per call so that a layer holding one stays copyable.
//
// Scheduling: one expert per thread, largest first, each GEMM single-threaded, when enough
// experts are busy to balance the threads; otherwise one after another with each GEMM using
// all threads. Every expert writes only its own rows and weight gradients and its sums run in
// a fixed order, so the schedule does not change results.
template <class T>
class GroupedExperts {
 public:
  GroupedExperts(const FfnShape& shape, int experts);

  // Resolves the weight offsets (after params.allocate()).
  void bind(const ParamSet<T>& params);
  // Grows the saved rows to `rows` and the backward scratch to max(rows * F, scratch_elems).
  void reserve(int64_t rows, int64_t scratch_elems = 0);

  void forward(const ParamSet<T>& params, const int64_t* offsets, const T* x, T* y);
  // The same over weights in their stored format, w[E], for inference: nothing saved, y (=, or
  // += when accumulate). Its SwiGLU is silu(h1) * h3 as h1 / (1 + exp(-h1)) * h3, the
  // checkpoint path's rounding (the training kernel's h1 * sigmoid(h1) differs in the last bit).
  void forward(const FfnViews* w, const int64_t* offsets, const float* x, float* y,
               bool accumulate = false) requires std::is_same_v<T, float>;
  // dx (=) per row; expert weight gradients (+=).
  void backward(ParamSet<T>& params, const int64_t* offsets, const T* x, const T* dy, T* dx);

  // -1 (default) decides per call, 0 one expert after another with threaded GEMMs, 1 experts
  // in parallel. Results are identical either way.
  void set_schedule(int mode) { schedule_ = mode; }
  // Backward scratch of reserve()'s size, free between calls (the shared experts borrow it).
  FfnRows<T> scratch() { return scratch_.grow(shape_, scratch_n_, FfnRowBuffers<T>::Use::Scratch); }
  const FfnShape& shape() const { return shape_; }
  int experts() const { return E_; }

 private:
  bool in_parallel(const int64_t* offsets) const;
  // Calls run(e) for every expert with rows, in the schedule above.
  template <class Fn>
  void for_each_expert(const int64_t* offsets, const Fn& run);

  FfnShape shape_;
  int E_;
  int64_t w1_ = -1, w3_ = -1, w2_ = -1;  // arena offsets
  int schedule_ = -1;
  FfnRowBuffers<T> saved_, scratch_;     // [rows, F] saved for backward; backward scratch
  int64_t saved_n_ = 0, scratch_n_ = 0;  // their rows, as reserved
  std::vector<int> order_;               // [E] experts by descending rows
};

}  // namespace moe
