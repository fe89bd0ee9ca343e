// Reductions behind the router losses and metrics (losses.cu), deterministic (fixed-order
// block sums, no atomics). The loss values themselves are computed on the host from these
// sums with load_balance_value / z_loss_value (routing_math.h), in double as on the CPU.
// The loss gradients are part of the router backward (token_routing_backward).
// Plain declarations (see router.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda {

// stats [E + 2] (=): sum over the real tokens (token_mask [T] nonzero, or all when null) of
// p[:, e] for each expert (the load-balance loss's P times T), then the sums of
// token_entropy [T] and token_lse_sq [T] (zero for padding).
void launch_routing_stats(int64_t tokens, int E, const float* p, const uint8_t* token_mask,
                          const double* token_entropy, const double* token_lse_sq, double* stats,
                          cudaStream_t stream);

}  // namespace moe::cuda
