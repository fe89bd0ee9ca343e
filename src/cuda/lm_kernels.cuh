// Kernels of the decoder LM's training step on the GPU (CudaTransformer, docs/cuda.md), one
// concern per file: lm_embedding.cu, lm_rmsnorm.cu, lm_attention.cu (RoPE, masked softmax),
// lm_swiglu.cu (dense FFN activation and residual adds), lm_cross_entropy.cu, lm_adamw.cu
// (global gradient norm and AdamW). Everything is fp32 with the CPU float model's formulas
// (src/nn/*.cpp, src/model/optimizer.cpp); the reductions the CPU does in double are done in
// double here too, each over a fixed tree (no atomics), so results are deterministic.
//
// Plain declarations without device code, so the host orchestration (cuda_transformer.cpp,
// compiled by the C++ compiler) can include it (see router.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda {

// ---- lm_embedding.cu ----
// out [n, d] = table[tokens[i]] (ids already validated on the host).
void launch_embedding_forward(const int32_t* tokens, int64_t n, int64_t d, const float* table,
                              float* out, cudaStream_t stream);
// dtable[token] += sum of dout rows of that token, rows summed in increasing row order (the
// CPU's order). The rows are given grouped by token (a CSR built on the host): unique_tokens
// [u], row_start [u+1] into rows_by_token [n].
void launch_embedding_backward(int64_t unique, int64_t d, const int32_t* unique_tokens,
                               const int32_t* row_start, const int32_t* rows_by_token,
                               const float* dout, float* dtable, cudaStream_t stream);

// ---- lm_rmsnorm.cu ----
// out = x * rstd * w, rstd [n] = 1 / sqrt(mean(x^2) + eps) with the mean square in double.
void launch_rmsnorm_forward(int64_t n, int64_t d, const float* x, const float* w, double eps,
                            float* out, float* rstd, cudaStream_t stream);
// dx [n, d] += r w g - (r^3 / d) x sum_k g_k w_k x_k (dot in double); dw [d] += sum_i g x r.
// dw goes through partial [chunks(n), d], summed per column in chunk order (deterministic).
void launch_rmsnorm_backward(int64_t n, int64_t d, const float* dout, const float* x,
                             const float* w, const float* rstd, float* dx, float* dw,
                             float* partial, cudaStream_t stream);
// Rows per chunk of the dw partial sums, and the chunks n rows need.
constexpr int64_t kRmsnormRowsPerChunk = 64;
inline int64_t rmsnorm_chunks(int64_t n) {
  return (n + kRmsnormRowsPerChunk - 1) / kRmsnormRowsPerChunk;
}

// ---- lm_attention.cu ----
// Rotates every head of x [n, heads * head_dim] at position r % seq_len, in the Hugging Face
// rotate_half layout, by +angle (sign = 1, forward) or -angle (sign = -1, the transpose: the
// backward). cos_table, sin_table [max_positions, head_dim / 2] (moe::rope_tables).
void launch_rope(float* x, const float* cos_table, const float* sin_table, int64_t n, int heads,
                 int head_dim, int64_t seq_len, float sign, cudaStream_t stream);
// P [rows, S] holds raw scores of query position rows % S (rows = B*H*S, the scores of one
// (sequence, head) are S consecutive rows): softmax over keys 0..pos in place, 0 beyond
// (causal mask). Max in float, sum of exps in double, as masked_softmax_row.
void launch_causal_softmax(float* P, int64_t rows, int64_t S, cudaStream_t stream);
// dS = P * (dP - sum_j P dP) in place of dP (dot in double), 0 above the diagonal.
void launch_causal_softmax_backward(const float* P, float* dS, int64_t rows, int64_t S,
                                    cudaStream_t stream);

// ---- lm_swiglu.cu ----
// a = silu(h1) * h3 (fp32; h1, h3, a [n]).
void launch_swiglu_f32_forward(int64_t n, const float* h1, const float* h3, float* a,
                               cudaStream_t stream);
// dh3 = da silu(h1), dh1 = da h3 s (1 + h1 (1 - s)), s = sigmoid(h1).
void launch_swiglu_f32_backward(int64_t n, const float* h1, const float* h3, const float* da,
                                float* dh1, float* dh3, cudaStream_t stream);
// out = a + b (out may alias a or b).
void launch_add(int64_t n, const float* a, const float* b, float* out, cudaStream_t stream);

// ---- lm_cross_entropy.cu ----
// Per row with target >= 0: row_loss = log(sum exp(z - max)) + max - z[target] (sum in double)
// and dlogits = scale * softmax(z), minus scale at the target; rows with target -1: loss 0,
// dlogits 0. dlogits may be null (forward only).
void launch_cross_entropy(int64_t n, int64_t V, const float* logits, const int32_t* targets,
                          double scale, float* row_loss, float* dlogits, cudaStream_t stream);

// ---- lm_adamw.cu ----
// Blocks of the squared-norm partial sums for a tensor of n values.
int64_t sum_squares_blocks(int64_t n);
// partial [sum_squares_blocks(n)] (=) = per block sum of g^2 (double).
void launch_sum_squares(const float* g, int64_t n, double* partial, cudaStream_t stream);
// out [1] (=) = sum of partial [count], in index order (one thread: deterministic).
void launch_sum_in_order(const double* partial, int64_t count, double* out, cudaStream_t stream);
// torch AdamW on one tensor, after clip_grad_norm_: when max_norm > 0 and
// c = max_norm / (sqrt(*norm_sq) + 1e-6) < 1 the gradient is used as float(g * float(c)) (the
// stored gradient is left unclipped). Then, in float with no contraction (as the CPU):
// p *= shrink; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= step_size * m / (sqrt(v) * inv_bc2 + eps).
struct AdamWStep {
  float shrink, b1, b2, eps, step_size, inv_bc2;
  double max_norm;  // <= 0: no clipping
};
void launch_adamw(const AdamWStep& s, const double* norm_sq, int64_t n, const float* g, float* p,
                  float* m, float* v, cudaStream_t stream);

}  // namespace moe::cuda
