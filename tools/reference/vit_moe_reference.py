#!/usr/bin/python3
"""Independent float64 PyTorch reference of the encoder routing variants of the ViT-MoE
(include/moe/vit.h): Soft MoE, expert-choice routing and top-k routing with V-MoE's
batch-priority capacity.  Written from DESIGN.md and the papers, not from the C++:

* Soft MoE (Puigcerver et al. 2023, Algorithm 1): per example X [m, d], logits L = X Phi
  [m, E*p]; D = softmax over tokens (dim 0), C = softmax over slots (dim 1); slot inputs
  Xs = D^T X; expert e runs slots e*p .. e*p+p-1; Y = C Ys.  No l2 normalization.
* Expert choice (Zhou et al. 2022): S = softmax(X Wr^T) over experts; per group of m tokens
  each expert takes the top C = ceil(cf * m / E) tokens by its score column (ties: lower
  token); Y[t] = sum over experts that took t of S[t, e] * FFN_e(x_t).
* Batch-priority routing (Riquelme et al. 2021, V-MoE, Sec. 4): top-k by softmax score; the
  token's priority is its largest gate; assignments are visited choice by choice (every
  token's first choice, then every second choice), each choice in descending token priority
  (ties: lower token index); an assignment is kept while its expert has fewer than
  C = ceil(cf * T * k / E) kept assignments, else dropped.

Experts: SwiGLU y = W2 (silu(W1 x) * W3 x) or GELU y = W2 gelu(W1 x) (exact erf), weights in
nn.Linear layout stacked [E, out, in].  Discrete choices run under no_grad; every gradient
comes from autograd.
"""

import math

import torch


def ffn(act, x, w1, w3, w2):
    h1 = x @ w1.T
    if act == "silu":
        a = torch.nn.functional.silu(h1) * (x @ w3.T)
    else:
        a = torch.nn.functional.gelu(h1)
    return a @ w2.T


def soft_moe(x, phi, w1, w3, w2, act, slots_per_expert, group):
    """x [G*m, d] -> y [G*m, d]; also returns D and C [G*m, E*p]."""
    E = w1.shape[0]
    p = slots_per_expert
    ys, Ds, Cs = [], [], []
    for g in range(x.shape[0] // group):
        X = x[g * group:(g + 1) * group]
        L = X @ phi
        D = torch.softmax(L, dim=0)
        C = torch.softmax(L, dim=1)
        Xs = D.T @ X
        Ys = torch.cat([ffn(act, Xs[e * p:(e + 1) * p], w1[e], w3[e] if w3 is not None else None, w2[e])
                        for e in range(E)], dim=0)
        ys.append(C @ Ys)
        Ds.append(D)
        Cs.append(C)
    return torch.cat(ys), torch.cat(Ds), torch.cat(Cs)


def expert_choice(x, wr, w1, w3, w2, act, capacity_factor, group):
    """x [G*m, d] -> (y [G*m, d], chosen [E, G, C] token indices (global), scores [T, E])."""
    E = w1.shape[0]
    T = x.shape[0]
    G = T // group
    C = min(max(int(math.ceil(capacity_factor * group / E)), 1), group)
    s = torch.softmax(x @ wr.T, dim=1)
    chosen = torch.zeros(E, G, C, dtype=torch.int64)
    with torch.no_grad():
        for e in range(E):
            for g in range(G):
                col = s[g * group:(g + 1) * group, e].tolist()
                order = sorted(range(group), key=lambda i: (-col[i], i))[:C]
                chosen[e, g] = torch.tensor([g * group + i for i in order])
    y = torch.zeros_like(x)
    for e in range(E):
        idx = chosen[e].reshape(-1)
        out = ffn(act, x[idx], w1[e], w3[e] if w3 is not None else None, w2[e])
        y = y.index_add(0, idx, s[idx, e].unsqueeze(1) * out)
    return y, chosen, s


def top_k_batch_priority(x, wr, w1, w3, w2, act, k, capacity_factor, norm_topk_prob):
    """x [T, d] -> (y [T, d], expert [T, k] final expert per slot, -1 = dropped)."""
    T = x.shape[0]
    E = w1.shape[0]
    s = torch.softmax(x @ wr.T, dim=1)
    with torch.no_grad():
        sel = []
        for t in range(T):
            row = s[t].tolist()
            sel.append(sorted(range(E), key=lambda e: (-row[e], e))[:k])
        sel = torch.tensor(sel, dtype=torch.int64)
    g = torch.gather(s, 1, sel)
    if norm_topk_prob and k > 1:
        g = g / g.sum(dim=1, keepdim=True)
    expert = sel.clone()
    with torch.no_grad():
        C = int(math.ceil(capacity_factor * T * k / E))
        prio = g.max(dim=1).values.tolist()
        load = [0] * E
        for j in range(k):
            for t in sorted(range(T), key=lambda t: (-prio[t], t)):
                e = int(sel[t, j])
                if load[e] < C:
                    load[e] += 1
                else:
                    expert[t, j] = -1
    y = torch.zeros_like(x)
    for t in range(T):
        for j in range(k):
            e = int(expert[t, j])
            if e >= 0:
                y = y.index_add(0, torch.tensor([t]), g[t, j] * ffn(act, x[t:t + 1], w1[e],
                                                                   w3[e] if w3 is not None else None,
                                                                   w2[e]))
    return y, expert
