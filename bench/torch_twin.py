#!/usr/bin/env python3
"""The PyTorch eager twin of `moe train` (bench/train_vs_torch.sh runs both).

The decoder LM of a moe config.json (Mixtral-shaped: token embedding, pre-norm RMSNorm blocks
with grouped-query causal attention and RoPE, a sparse MoE FFN, final RMSNorm, untied LM head),
written the way Hugging Face's eager Mixtral code runs it: nn.Linear projections, rotate-half
RoPE, repeat_kv, softmax attention with a causal mask; the MoE block as a router Linear,
softmax, top-k, renormalized gates and a loop over experts that index_select's the rows routed
to each expert and index_add's their gated outputs back. The loss is cross-entropy plus the
Switch load-balance loss and the router z-loss with the config's coefficients (moe's loss);
torch.optim.AdamW (decay on matrices only, as moe), clip_grad_norm_, the warm-up + cosine
schedule. Trains on uniform random tokens of the config's batch and sequence length (time does
not depend on token values).

Prints one JSON line: parameters, step times (ms, after warm-up), tokens/s.

Usage: /usr/bin/python3 bench/torch_twin.py --config configs/default.json [--steps 10]
       [--warmup 2] [--threads 2] [--expect-params N] [--bf16]
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.H = c["num_attention_heads"]
        self.G = c["num_key_value_heads"]
        self.hd = c.get("head_dim", 0) or d // self.H
        self.q_proj = nn.Linear(d, self.H * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.G * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.G * self.hd, bias=False)
        self.o_proj = nn.Linear(self.H * self.hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.H, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, S, self.G, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.G, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.H // self.G
        k = k.repeat_interleave(rep, dim=1)  # repeat_kv
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd) + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32)
        o = torch.matmul(probs, v).transpose(1, 2).reshape(B, S, self.H * self.hd)
        return self.o_proj(o)


class Expert(nn.Module):
    """w2(silu(w1 x) * w3 x), HF gate/up/down_proj."""

    def __init__(self, d, f):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoeBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.E, self.k = c["hidden_size"], c["num_local_experts"], c["num_experts_per_tok"]
        self.norm_topk = c.get("norm_topk_prob", True)
        self.gate = nn.Linear(d, self.E, bias=False)
        self.experts = nn.ModuleList(Expert(d, c["intermediate_size"]) for _ in range(self.E))

    def forward(self, x):
        B, S, d = x.shape
        h = x.view(-1, d)
        logits = self.gate(h)
        probs = F.softmax(logits, dim=1, dtype=torch.float)
        weights, selected = torch.topk(probs, self.k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(h)
        # [E, k, T]: which (slot, token) pairs chose each expert.
        mask = F.one_hot(selected, num_classes=self.E).permute(2, 1, 0)
        for e in range(self.E):
            slot, token = torch.where(mask[e])
            if token.numel() == 0:
                continue
            rows = torch.index_select(h, 0, token)
            y = self.experts[e](rows) * weights[token, slot, None]
            out.index_add_(0, token, y)
        # Switch load balance (fraction of the T*k assignments x mean probability) and z-loss.
        f = mask.sum(dim=(1, 2)).float() / selected.numel()
        aux = self.E * torch.sum(f * probs.mean(dim=0))
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return out.view(B, S, d), aux, z


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        eps = c["rms_norm_eps"]
        self.input_layernorm = RMSNorm(c["hidden_size"], eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], eps)
        self.block_sparse_moe = SparseMoeBlock(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        y, aux, z = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + y, aux, z


class MixtralTwin(nn.Module):
    def __init__(self, c):
        super().__init__()
        assert c.get("moe_every", 1) == 1 and c.get("n_shared_experts", 0) == 0, \
            "the twin implements the default layout: every block MoE, no shared experts"
        assert c.get("hidden_act", "silu") == "silu" and not c.get("tie_word_embeddings", False)
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, c["initializer_range"])

    def rope(self, S):
        hd = self.layers[0].self_attn.hd
        inv = 1.0 / (self.c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(S).float(), inv)
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def forward(self, inputs, targets, cos, sin, mask):
        x = self.embed_tokens(inputs)
        aux = z = 0.0
        for layer in self.layers:
            x, a, zz = layer(x, cos, sin, mask)
            aux, z = aux + a, z + zz
        logits = self.lm_head(self.norm(x))
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return ce + self.c["router_aux_loss_coef"] * aux + self.c["router_z_loss_coef"] * z


def learning_rate_at(t, step):
    lr, lr_min = t["learning_rate"], t["learning_rate"] * t["min_lr_ratio"]
    if step < t["warmup_steps"]:
        return lr * (step + 1) / t["warmup_steps"]
    span = max(1, t["max_steps"] - t["warmup_steps"])
    progress = min(1.0, (step - t["warmup_steps"]) / span)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--expect-params", type=int, default=0)
    ap.add_argument("--bf16", action="store_true",
                    help="forward under torch.autocast('cpu', bfloat16): PyTorch's own mixed "
                         "precision, fp32 master weights and optimizer")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(a.config) as f:
        c = json.load(f)
    t = c["training"]
    torch.manual_seed(t["seed"])
    model = MixtralTwin(c)
    params = sum(p.numel() for p in model.parameters())
    if a.expect_params and params != a.expect_params:
        sys.exit(f"torch_twin: {params} parameters, moe has {a.expect_params}: not the same model")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t["learning_rate"], betas=(t["adam_beta1"], t["adam_beta2"]),
                            eps=t["adam_eps"])
    B, S, V = t["batch_size"], t["seq_len"], c["vocab_size"]
    cos, sin = model.rope(S)
    mask = torch.full((S, S), float("-inf")).triu(1)[None, None]
    gen = torch.Generator().manual_seed(t["seed"])
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        window = torch.randint(0, V, (B, S + 1), generator=gen)
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = learning_rate_at(t, step)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(window[:, :-1], window[:, 1:], cos, sin, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"parameters": params, "threads": a.threads, "bf16": a.bf16, "batch": B,
                      "seq_len": S,
                      "step_ms": [round(1e3 * x, 2) for x in times],
                      "median_step_ms": 1e3 * med, "tokens_per_s": B * S / med,
                      "first_loss": losses[0], "last_loss": losses[-1]}))


if __name__ == "__main__":
    main()
