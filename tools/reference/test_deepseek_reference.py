#!/usr/bin/python3
"""Sanity checks of the DeepSeek-V2/V3 reference (deepseek_reference.py) and its fixtures.

    /usr/bin/python3 tools/reference/test_deepseek_reference.py

Independent of the C++ code.  Identities that pin the formulas (the absorbed MLA of the
DeepSeek-V2 paper equals the expanded one of the modeling files; V2's complex RoPE and V3's
de-interleaved rotate_half are the same rotation; hand-worked routing cases), and that each
fixture fails when a family piece is removed (no correction bias, no routed scaling, no group
limit, no interleaved RoPE, no kv_a_layernorm, no YaRN mscale in the softmax scale).  The fixture files themselves (layout, keys,
expected outputs) are checked by test_hf_reference.py with the other families.
"""

import json
import math
import os
import sys
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deepseek_reference as ds  # noqa: E402
import fixture_io  # noqa: E402
import make_hf_fixtures as mk  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64
CASES = ("deepseek_v2", "deepseek_v3")


def _load(name):
    cfg, weights, exp, _ = mk.load_fixture(name)
    return cfg, weights, exp


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


class Pieces(unittest.TestCase):
    def test_absorbed_equals_expanded(self):
        for name in CASES:
            cfg, w, _ = _load(name)
            torch.manual_seed(0)
            x = torch.randn(2, 6, cfg["hidden_size"], dtype=F64)
            for layer in range(cfg["num_hidden_layers"]):
                self.assertLess(_rel(ds.mla_attention(cfg, w, layer, x),
                                     ds.mla_attention_absorbed(cfg, w, layer, x)), 1e-12, name)

    def test_v2_complex_rope_is_v3_interleaved_rope(self):
        _, _, _ = _load("deepseek_v2")
        torch.manual_seed(1)
        x = torch.randn(3, 5, 8, dtype=F64)
        ang = ds._angles(5, 8, 10000.0)
        v2 = ds.rope_pairs({"model_type": "deepseek_v2"}, x, ang)
        v3 = ds.rope_pairs({"model_type": "deepseek_v3", "rope_interleave": True}, x, ang)
        # V3 leaves the rotated pairs in rotate_half order: (y0, y2, .., y1, y3, ..).
        self.assertLess(float((v3 - torch.cat([v2[..., 0::2], v2[..., 1::2]], -1)).abs().max()), 1e-14)
        # and pair i at position p turns by p * theta^(-2i/d)
        p, i = 3, 1
        a = p * 10000.0 ** (-2 * i / 8)
        z = complex(x[0, p, 2 * i], x[0, p, 2 * i + 1]) * complex(math.cos(a), math.sin(a))
        self.assertAlmostEqual(float(v2[0, p, 2 * i]), z.real, places=12)
        self.assertAlmostEqual(float(v2[0, p, 2 * i + 1]), z.imag, places=12)

    def test_v2_group_limited_greedy(self):
        cfg = {"model_type": "deepseek_v2", "num_experts_per_tok": 2, "topk_method": "group_limited_greedy",
               "n_group": 2, "topk_group": 1, "routed_scaling_factor": 3.0}
        # softmax scores [0.5, 0.05, 0.25, 0.2]: group 0's best (0.5) beats group 1's (0.25), so
        # both experts come from group 0 although expert 2 outscores expert 1.
        s = torch.tensor([[0.5, 0.05, 0.25, 0.2]], dtype=F64)
        gates, ids = ds.route(cfg, s.log())
        self.assertEqual(sorted(ids[0].tolist()), [0, 1])
        self.assertAlmostEqual(float(gates.sum()), 3.0 * 0.55, places=12)   # scaled, not renormalised

    def test_v3_noaux_tc(self):
        cfg = {"model_type": "deepseek_v3", "num_experts_per_tok": 1, "n_group": 2, "topk_group": 1,
               "norm_topk_prob": True, "routed_scaling_factor": 2.5}
        # sigmoid scores [0.9, 0.1 | 0.6, 0.55]: group sums of the best two keys 1.0 | 1.15 keep
        # group 1 although expert 0 has the best score; the bias then moves the choice to 3.
        s = torch.tensor([[0.9, 0.1, 0.6, 0.55]], dtype=F64)
        z = torch.log(s / (1 - s))
        gates, ids = ds.route(cfg, z)
        self.assertEqual(ids.tolist(), [[2]])
        self.assertAlmostEqual(float(gates[0, 0]), 2.5, places=12)       # k = 1, renormalised, scaled
        gates, ids = ds.route(cfg, z, torch.tensor([0.0, 0.0, 0.0, 0.1], dtype=F64))
        self.assertEqual(ids.tolist(), [[3]])
        cfg["norm_topk_prob"] = False
        gates, _ = ds.route(cfg, z, torch.tensor([0.0, 0.0, 0.0, 0.1], dtype=F64))
        self.assertAlmostEqual(float(gates[0, 0]), 2.5 * 0.55, places=12)  # the unbiased score

    def test_dense_and_moe_layers(self):
        cfg = {"n_routed_experts": 4, "first_k_dense_replace": 2, "moe_layer_freq": 2}
        self.assertEqual([ds.layer_is_sparse(cfg, l) for l in range(6)], [False, False, True, False, True, False])


class Sensitivity(unittest.TestCase):
    """Each fixture fails when a family piece is removed: its logits move by > 1e-3."""

    def _moves(self, name, ablate):
        cfg, w, exp = _load(name)
        base = ds.forward(cfg, w, exp["input_ids"])
        self.assertLess(_rel(base.to(torch.float32), exp["logits"]), 1e-6, name)
        change = _rel(base, ds.forward(cfg, w, exp["input_ids"], ablate={ablate}))
        self.assertGreater(change, 1e-3, "%s without %s" % (name, ablate))

    def test_pieces_matter(self):
        for name in CASES:
            for piece in ("routed_scaling", "group_limit", "interleave", "kv_norm", "mscale"):
                self._moves(name, piece)
        self._moves("deepseek_v3", "correction_bias")


if __name__ == "__main__":
    unittest.main(verbosity=2)
