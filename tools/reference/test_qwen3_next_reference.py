#!/usr/bin/python3
"""Sanity checks of the Qwen3-Next / Qwen3.5-MoE reference (qwen3_next_reference.py) and its
fixtures.

    /usr/bin/python3 tools/reference/test_qwen3_next_reference.py

Independent of the C++ code.  The chunked gated delta rule equals the recurrent one (lengths
below, at and above the chunk of 64, with and without an initial state), the recurrence's state
is a constant size, and each fixture's logits move when a family piece is removed (the
attention output gate, the shared-expert gate, the z gate, beta, the decay).  The fixture files
themselves (layout, keys, expected outputs) are checked by test_hf_reference.py.
"""

import json
import os
import sys
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fixture_io  # noqa: E402
import make_hf_fixtures as mk  # noqa: E402
import qwen3_next_reference as qn  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64
CASES = ("qwen3_next", "qwen3_5_moe_fused")


def _load(name):
    cfg, weights, exp, _ = mk.load_fixture(name)
    return cfg, weights, exp


def _random_inputs(B, S, Hv, dk, dv, seed):
    g = torch.Generator().manual_seed(seed)
    q = qn.l2norm(torch.randn(B, S, Hv, dk, generator=g, dtype=F64)) / dk ** 0.5
    k = qn.l2norm(torch.randn(B, S, Hv, dk, generator=g, dtype=F64))
    v = torch.randn(B, S, Hv, dv, generator=g, dtype=F64)
    gate = -torch.rand(B, S, Hv, generator=g, dtype=F64) * 0.5
    beta = torch.rand(B, S, Hv, generator=g, dtype=F64)
    return q, k, v, gate, beta


class DeltaRule(unittest.TestCase):
    def test_chunked_equals_recurrent(self):
        for S in (1, 5, 63, 64, 65, 150):
            q, k, v, g, beta = _random_inputs(2, S, 3, 8, 6, S)
            o1, s1 = qn.delta_rule_recurrent(q, k, v, g, beta)
            o2, s2 = qn.delta_rule_chunked(q, k, v, g, beta)
            self.assertLess(float((o1 - o2).abs().max()), 1e-5, S)
            self.assertLess(float((s1 - s2).abs().max()), 1e-5, S)
            self.assertEqual(tuple(s1.shape), (2, 3, 8, 6))   # the state does not grow with S

    def test_initial_state_continues(self):
        # Two calls through the state equal one call over the whole sequence (prefill then decode).
        q, k, v, g, beta = _random_inputs(1, 100, 2, 4, 4, 7)
        whole, s_whole = qn.delta_rule_recurrent(q, k, v, g, beta)
        a, s = qn.delta_rule_chunked(q[:, :70], k[:, :70], v[:, :70], g[:, :70], beta[:, :70])
        b, s = qn.delta_rule_chunked(q[:, 70:], k[:, 70:], v[:, 70:], g[:, 70:], beta[:, 70:], s)
        self.assertLess(float((torch.cat([a, b], 1) - whole).abs().max()), 1e-5)
        self.assertLess(float((s - s_whole).abs().max()), 1e-5)

    def test_one_token_by_hand(self):
        # From a zero state: S = beta k v^T, o = S^T q = beta (k . q) v.
        q, k, v, g, beta = _random_inputs(1, 1, 1, 4, 3, 3)
        o, _ = qn.delta_rule_recurrent(q, k, v, g, beta)
        want = beta[0, 0, 0] * (k[0, 0, 0] @ q[0, 0, 0]) * v[0, 0, 0]
        self.assertLess(float((o[0, 0, 0] - want).abs().max()), 1e-12)


class Fixtures(unittest.TestCase):
    def test_forward_forms_agree_and_match_expected(self):
        for name in CASES:
            cfg, w, exp = _load(name)
            ids = exp["input_ids"].long()
            chunked = qn.forward(cfg, w, ids)
            recurrent = qn.forward(cfg, w, ids, form="recurrent")
            self.assertLess(float((chunked - recurrent).abs().max()), 1e-9, name)
            self.assertLess(float((chunked.float() - exp["logits"]).abs().max()), 1e-5, name)

    def test_each_piece_matters(self):
        for name in CASES:
            cfg, w, exp = _load(name)
            ids = exp["input_ids"].long()
            base = qn.forward(cfg, w, ids)
            for switch in ("output_gate", "shared_gate", "z_gate", "beta", "decay"):
                moved = float((qn.forward(cfg, w, ids, **{switch: False}) - base).abs().max())
                self.assertGreater(moved, 1e-3, "%s without %s" % (name, switch))

    def test_vision_and_mtp_tensors_unused(self):
        cfg, w, exp = _load("qwen3_5_moe_fused")
        ids = exp["input_ids"].long()
        base = qn.forward(cfg, w, ids)
        w2 = dict(w)
        for n in list(w2):
            if n.startswith("model.visual.") or n.startswith("mtp."):
                w2[n] = torch.full_like(w2[n], 1e3)
        self.assertEqual(float((qn.forward(cfg, w2, ids) - base).abs().max()), 0.0)


if __name__ == "__main__":
    unittest.main()
