#!/usr/bin/python3
"""Sanity checks of the PyTorch model reference and of the model fixtures.

    /usr/bin/python3 tools/reference/test_model_reference.py        (or -m unittest)

Independent of the C++ code: autograd vs central finite differences of the float64
model, one-expert MoE == dense SwiGLU, causality, RoPE (rotate_half) == complex
rotation, attention == a naive per-head loop, the LR schedule at hand-computed points,
torch AdamW / clip_grad_norm_ == the docs/model.md formulas, fixture invariants.
"""

import cmath
import json
import math
import os
import sys
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model_reference as mref  # noqa: E402
import make_model_fixtures as mk  # noqa: E402
import fixture_io  # noqa: E402

torch.set_num_threads(1)


def _case(name):
    return fixture_io.case_named(mk.CASES, name)


def _built(name):
    n, seed, cfg, steps, init = _case(name)
    params, windows = mk.generate(cfg, steps, seed, init)
    return cfg, params, windows


class Gradients(unittest.TestCase):
    def _fd_check(self, name):
        cfg, params, windows = _built(name)
        P = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        r = mref.loss_on_window(cfg, P, windows[0])
        grads = dict(zip(P, torch.autograd.grad(r["loss"], list(P.values()))))
        gen = torch.Generator().manual_seed(7)
        h = 1e-5
        checked = 0
        for pname, t in params.items():
            for _ in range(2):
                idx = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in t.shape)
                if pname == "model.embed_tokens.weight" or pname == "lm_head.weight":
                    # pick a row of a token present in the batch so the gradient is nonzero
                    idx = (int(windows[0][0, 1]),) + idx[1:]
                vals = []
                for sgn in (1, -1):
                    Q = {n: v.clone() for n, v in params.items()}
                    Q[pname][idx] += sgn * h
                    vals.append(float(mref.loss_on_window(cfg, Q, windows[0])["loss"]))
                fd = (vals[0] - vals[1]) / (2 * h)
                ag = float(grads[pname][idx])
                self.assertLess(abs(fd - ag), 1e-7 + 1e-5 * abs(ag), "%s%s fd=%g ag=%g" % (pname, idx, fd, ag))
                checked += 1
        self.assertGreater(checked, 20)

    def test_fd_tiny_mixed(self):
        self._fd_check("tiny_mixed")

    def test_fd_tiny_tied_all_moe(self):
        self._fd_check("tiny_tied_all_moe")


class Identities(unittest.TestCase):
    def test_one_expert_moe_is_dense_swiglu(self):
        base = mk._config(num_local_experts=1, num_experts_per_tok=1, moe_every=1,
                          intermediate_size=12, router_aux_loss_coef=0.0, router_z_loss_coef=0.0)
        dense = dict(base, moe_every=3, dense_intermediate_size=12)   # layers 0, 1 dense
        params, windows = mk.generate(base, 1, 5, dict(embed_std=1.0, final_norm=1.0))
        dparams = {}
        for n, t in params.items():
            if ".block_sparse_moe.experts." in n:
                l = n.split(".")[2]
                dparams["model.layers.%s.mlp.ffn.%s" % (l, n.rsplit(".", 1)[1])] = t[0].clone()
            elif ".block_sparse_moe.router." not in n:
                dparams[n] = t
        self.assertEqual(set(dparams), set(mref.param_shapes(dense)))
        a = mref.loss_on_window(base, params, windows[0])
        b = mref.loss_on_window(dense, dparams, windows[0])
        self.assertTrue(torch.allclose(a["logits"], b["logits"], rtol=0, atol=1e-12))
        self.assertAlmostEqual(float(a["loss"]), float(b["loss"]), delta=1e-12)

    def test_causal_and_sequence_independent(self):
        for name in ("tiny_mixed", "tiny_tied_all_moe"):
            cfg, params, windows = _built(name)
            tok = windows[0][:, :-1].clone()
            S = tok.shape[1]
            base = mref.forward(cfg, params, tok)["logits"].view(2, S, -1)
            for s in (0, 3, S - 1):
                t2 = tok.clone()
                t2[0, s] = (t2[0, s] + 1) % cfg["vocab_size"]
                got = mref.forward(cfg, params, t2)["logits"].view(2, S, -1)
                self.assertTrue(torch.allclose(got[0, :s], base[0, :s], rtol=0, atol=1e-14), (name, s))
                self.assertFalse(torch.allclose(got[0, s], base[0, s]))
                self.assertTrue(torch.allclose(got[1], base[1], rtol=0, atol=1e-14))

    def test_rope_is_complex_rotation(self):
        hd, S, theta = 8, 6, 10000.0
        x = torch.randn(S, hd, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        cos, sin = mref.rope_cos_sin(S, hd, theta, torch.float64)
        y = mref.apply_rope(x, cos, sin)
        for p in range(S):
            for i in range(hd // 2):
                zc = complex(float(x[p, i]), float(x[p, i + hd // 2])) * cmath.exp(1j * p * theta ** (-2 * i / hd))
                self.assertAlmostEqual(float(y[p, i]), zc.real, delta=1e-14)
                self.assertAlmostEqual(float(y[p, i + hd // 2]), zc.imag, delta=1e-14)

    def test_attention_matches_naive_loop(self):
        for name in ("tiny_mixed", "tiny_tied_all_moe"):
            cfg, params, _ = _built(name)
            B, S, d = 2, 5, cfg["hidden_size"]
            H, G, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], mref.head_size(cfg)
            a = torch.randn(B * S, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
            pre = "model.layers.0."
            got = mref.attention(cfg, params, pre, a, B, S)
            Wq, Wk, Wv, Wo = (params[pre + "self_attn.%s_proj.weight" % c] for c in "qkvo")
            q, k, v = a @ Wq.t(), a @ Wk.t(), a @ Wv.t()

            def rot(vec, p):
                out = vec.clone()
                for i in range(hd // 2):
                    ang = p * cfg["rope_theta"] ** (-2.0 * i / hd)
                    c, s = math.cos(ang), math.sin(ang)
                    out[i] = vec[i] * c - vec[i + hd // 2] * s
                    out[i + hd // 2] = vec[i + hd // 2] * c + vec[i] * s
                return out

            o = torch.zeros(B * S, H * hd, dtype=torch.float64)
            for b in range(B):
                for sq in range(S):
                    for j in range(H):
                        g = j // (H // G)
                        qv = rot(q[b * S + sq, j * hd:(j + 1) * hd], sq)
                        sc = torch.tensor([float(qv @ rot(k[b * S + sk, g * hd:(g + 1) * hd], sk)) / math.sqrt(hd)
                                           for sk in range(sq + 1)], dtype=torch.float64)
                        pr = torch.softmax(sc, 0)
                        for sk in range(sq + 1):
                            o[b * S + sq, j * hd:(j + 1) * hd] += pr[sk] * v[b * S + sk, g * hd:(g + 1) * hd]
            self.assertTrue(torch.allclose(got, o @ Wo.t(), rtol=0, atol=1e-13), name)


class Schedule(unittest.TestCase):
    def test_lr_points(self):
        tr = dict(learning_rate=1e-2, min_lr_ratio=0.1, warmup_steps=3, max_steps=11)
        lr, lmin = 1e-2, 1e-3
        self.assertAlmostEqual(mref.lr_at(tr, 0), lr / 3, delta=1e-17)
        self.assertAlmostEqual(mref.lr_at(tr, 2), lr, delta=1e-17)
        self.assertAlmostEqual(mref.lr_at(tr, 3), lr, delta=1e-17)           # cos(0) = 1
        self.assertAlmostEqual(mref.lr_at(tr, 7), (lr + lmin) / 2, delta=1e-17)  # halfway: cos(pi/2)
        self.assertAlmostEqual(mref.lr_at(tr, 5), lmin + 0.5 * (lr - lmin) * (1 + math.cos(math.pi / 4)), delta=1e-17)
        self.assertAlmostEqual(mref.lr_at(tr, 11), lmin, delta=1e-17)
        self.assertAlmostEqual(mref.lr_at(tr, 50), lmin, delta=1e-17)
        # T == W: max(1, T - W) guards the division
        tr2 = dict(tr, max_steps=3)
        self.assertAlmostEqual(mref.lr_at(tr2, 3), lr, delta=1e-17)
        self.assertAlmostEqual(mref.lr_at(tr2, 4), lmin, delta=1e-17)

    def test_adamw_and_clip_follow_docs(self):
        cfg, params, windows = _built("tiny_mixed")
        final, log = mref.train(cfg, params, windows[:2])
        # replay the two steps with the docs/model.md formulas written out by hand
        tr = cfg["training"]
        b1, b2, eps, wd, clip = (tr[k] for k in ("adam_beta1", "adam_beta2", "adam_eps", "weight_decay", "grad_clip"))
        P = {n: t.clone() for n, t in params.items()}
        m = {n: torch.zeros_like(t) for n, t in P.items()}
        v = {n: torch.zeros_like(t) for n, t in P.items()}
        for t in range(2):
            Q = {n: x.clone().requires_grad_(True) for n, x in P.items()}
            L = mref.loss_on_window(cfg, Q, windows[t])["loss"]
            g = dict(zip(Q, torch.autograd.grad(L, list(Q.values()))))
            N = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
            self.assertAlmostEqual(N, log[t]["grad_norm"], delta=1e-12 * N)
            c = clip / (N + 1e-6)
            if c < 1:
                g = {n: x * c for n, x in g.items()}
            lr = mref.lr_at(tr, t)
            tp = t + 1
            for n in P:
                if P[n].dim() >= 2:
                    P[n] = P[n] * (1 - lr * wd)
                m[n] = b1 * m[n] + (1 - b1) * g[n]
                v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
                P[n] = P[n] - (lr / (1 - b1 ** tp)) * m[n] / (v[n].sqrt() / math.sqrt(1 - b2 ** tp) + eps)
        for n in P:
            self.assertTrue(torch.allclose(P[n], final[n], rtol=0, atol=1e-14), n)


class Fixtures(unittest.TestCase):
    def test_fixture_files(self):
        for name, seed, cfg, steps, init in mk.CASES:
            path = os.path.join(mk.FIXTURE_DIR, name + ".safetensors")
            if not os.path.exists(path):
                self.skipTest("fixtures not generated")
            with open(path, "rb") as fh:
                blob = fh.read()
            self.assertLess(len(blob), 300 * 1024)
            self.assertEqual(len(blob[8:8 + int.from_bytes(blob[:8], "little")]) % 8, 0)
            T, meta = mk.decode_safetensors(blob)
            c = json.loads(meta["config"])
            self.assertEqual(c, cfg)
            self.assertEqual(int(meta["steps"]), steps)
            B, S = c["training"]["batch_size"], c["training"]["seq_len"]
            self.assertEqual(T["tokens"].dtype, torch.int64)
            self.assertEqual(list(T["trajectory.tokens"].shape), [steps, B, S + 1])
            self.assertTrue(torch.equal(T["tokens"], T["trajectory.tokens"][0]))
            self.assertEqual(float(T["loss"]), float(T["trajectory.loss"][0]))
            self.assertAlmostEqual(float(T["loss"]), float(T["ce"] + T["aux"]), delta=1e-15)
            shapes = mref.param_shapes(c)
            for n, s in shapes.items():
                for pre in ("param.", "grad.", "final."):
                    self.assertEqual(list(T[pre + n].shape), s, pre + n)
            self.assertEqual(len([k for k in T if k.startswith("param.")]), len(shapes))
            # the stored logits/loss are the reference's at the stored weights
            P = {n[len("param."):]: t for n, t in T.items() if n.startswith("param.")}
            r = mref.loss_on_window(c, P, T["tokens"])
            # (bit-identical on the machine that wrote them; elsewhere to float64 rounding)
            self.assertIsNone(fixture_io.compare_tensor(T["logits"], r["logits"])[0])
            if c["tie_word_embeddings"]:
                self.assertNotIn("param.lm_head.weight", T)


if __name__ == "__main__":
    unittest.main(verbosity=2)
