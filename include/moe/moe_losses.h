// Router auxiliary losses (docs/moe-layer.md "Auxiliary losses"), each forward beside its
// backward, and the per-call routing metrics. Only valid (non-padding) tokens count.
//   load balance  alpha * E * sum_i f_i P_i   (Switch/GShard; f from primary counts)
//   importance    w * CV(I)^2                (Shazeer 2017; I from primary gates)
//   z-loss        beta * mean_t lse(z_t)^2    (ST-MoE)
// Backward functions accumulate (+=) scaled by `scale` (dL_total / dL_aux, usually 1).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/moe_config.h"
#include "moe/router.h"

namespace moe {

// Routing probabilities p: p = s for softmax, s / sum(s) for sigmoid (so P sums to 1).
template <class T>
void routing_probs(ScoreFunc f, int64_t tokens, int64_t E, const T* s, T* p);
template <class T>
void routing_probs_backward(ScoreFunc f, int64_t tokens, int64_t E, const T* s, const T* p,
                            const T* dp, T* ds);

// counts [E]: primary assignments per expert (before capacity).
void primary_counts(const RoutingPlan& plan, int64_t* counts);

// P [E] is scratch (the mean routing probability per expert).
template <class T>
double load_balance_loss(const MoeConfig& c, const RoutingPlan& plan, const T* p,
                         const int64_t* counts, double* P);
template <class T>
void load_balance_backward(const MoeConfig& c, const RoutingPlan& plan, const int64_t* counts,
                           double scale, T* dp);

// importance [E] is filled (saved for the backward).
template <class T>
double importance_loss(const MoeConfig& c, const RoutingPlan& plan, const T* gate_primary,
                       double* importance);
template <class T>
void importance_backward(const MoeConfig& c, const RoutingPlan& plan, const double* importance,
                         double scale, T* dgate_primary);

template <class T>
double z_loss(const MoeConfig& c, const RoutingPlan& plan, const T* lse);
template <class T>
void z_loss_backward(const MoeConfig& c, const RoutingPlan& plan, const T* z, const T* lse,
                     double scale, T* dz);

// The whole router backward after the combine: from the final-gate gradients dgate [T, k] to
// the logit gradients dz [T, E] (=), through the importance loss (into the primary gates), the
// gates, the load-balance loss (into the probabilities), the scores and the z-loss; the loss
// terms scaled by aux_scale. importance and counts are the forward's. dgate_prim [T, k] and
// ds, dp [T, E] are scratch.
template <class T>
void routing_backward(const MoeConfig& c, const RoutingPlan& plan, const T* z, const T* s,
                      const T* p, const T* norm, const T* lse, const double* importance,
                      const int64_t* counts, const T* dgate, double aux_scale, T* dgate_prim, T* ds,
                      T* dp, T* dz);

template <class T>
void fill_metrics(const MoeConfig& c, const RoutingPlan& plan, const T* p, const int64_t* counts,
                  MoeMetrics& m);

}  // namespace moe
