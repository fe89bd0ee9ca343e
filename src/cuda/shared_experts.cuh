// The shared experts' sigmoid gate (Qwen2-MoE) on the GPU (shared_experts.cu); the shared FFN
// itself is dense bf16 GEMMs (gemm_bf16) around the SwiGLU kernels of expert_ffn.cuh, and its
// output is added by the combine kernel. Plain declarations (see router.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda {

using bf16 = __nv_bfloat16;

// gate [T] (in place): logits x . wg -> sigmoid.
void launch_sigmoid_inplace(int64_t n, float* gate, cudaStream_t stream);

// Per token: dy [T, d] = bf16(gate * dout) (the shared FFN's output gradient) and
// dpre [T] = (dout . y) * gate * (1 - gate) (the gate logit's gradient).
void launch_shared_gate_backward(int64_t tokens, int64_t d, const float* dout, const bf16* y,
                                 const float* gate, bf16* dy, float* dpre, cudaStream_t stream);

}  // namespace moe::cuda
