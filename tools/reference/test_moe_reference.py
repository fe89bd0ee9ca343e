#!/usr/bin/python3
"""Sanity checks of the PyTorch MoE reference and of the fixtures it writes.

    /usr/bin/python3 tools/reference/test_moe_reference.py        (or -m unittest)

Independent checks: closed forms (one expert == dense FFN, k = E == probability
weighted sum of all experts), hand-worked routing examples (capacity, score
priority, rerouting, held-expert skipping, group limiting), torch.autograd.gradcheck
against finite differences, fixture-file format and invariants.
"""

import json
import math
import os
import struct
import sys
import unittest

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moe_reference as ref  # noqa: E402
import make_layer_fixtures as mk  # noqa: E402
import fixture_io  # noqa: E402

torch.set_num_threads(1)


def _case(name):
    return fixture_io.case_named(mk.CASES, name)


def _forward(cfg, inputs, params, x=None, decisions=None):
    return ref.moe_forward(cfg, params, inputs["noise"], inputs["expert_mask"], inputs["token_mask"],
                           inputs["selection_bias"], inputs["x"] if x is None else x, decisions=decisions)


class ClosedForms(unittest.TestCase):
    def test_one_expert_is_dense_ffn(self):
        name, seed, ov, ex = _case("one_expert_dense")
        cfg, _, inputs, params, r = mk.build_case(name, seed, ov, ex)
        x = inputs["x"]
        w1, w3, w2 = params["experts.w1"][0], params["experts.w3"][0], params["experts.w2"][0]
        a = x @ w1.t()
        dense = (a * torch.sigmoid(a) * (x @ w3.t())) @ w2.t()
        valid = inputs["token_mask"] != 0
        self.assertTrue(torch.allclose(r["out"][valid], dense[valid], rtol=0, atol=1e-13))
        self.assertTrue(torch.all(r["out"][~valid] == 0))
        self.assertTrue(torch.all(r["gate"][valid] == 1.0))
        # gradient of sum(out*dout) w.r.t. x equals the dense FFN's (router gets none: gate == 1)
        xd = x.clone().requires_grad_(True)
        a = xd @ w1.t()
        dense = (a * torch.sigmoid(a) * (xd @ w3.t())) @ w2.t()
        (gx,) = torch.autograd.grad((dense * inputs["dout"] * valid[:, None]).sum(), xd)
        self.assertTrue(torch.allclose(r["grads"]["x"], gx, rtol=0, atol=1e-13))
        self.assertTrue(torch.all(r["grads"]["router.weight"].abs() < 1e-15))

    def test_k_equals_E_is_probability_weighted_sum(self):
        for scoring in ("softmax",):
            cfg = ref.make_config(num_experts=5, num_experts_per_tok=5, norm_topk_prob=False,
                                  scoring_func=scoring, tokens=7, hidden_size=6, moe_intermediate_size=4)
            inputs, params = mk.generate_inputs(cfg, {}, 123)
            r = _forward(cfg, inputs, params)
            x = inputs["x"]
            s = torch.softmax(x @ params["router.weight"].t(), dim=-1)
            want = torch.zeros_like(x)
            for e in range(5):
                a = x @ params["experts.w1"][e].t()
                y = (F.silu(a) * (x @ params["experts.w3"][e].t())) @ params["experts.w2"][e].t()
                want += s[:, e:e + 1] * y
            self.assertTrue(torch.allclose(r["out"], want, rtol=0, atol=1e-13))

    def test_norm_topk_gates_sum_to_rsf(self):
        cfg = ref.make_config(num_experts_per_tok=3, norm_topk_prob=True, routed_scaling_factor=2.5,
                              tokens=9, hidden_size=5, moe_intermediate_size=3)
        inputs, params = mk.generate_inputs(cfg, {}, 7)
        r = _forward(cfg, inputs, params)
        self.assertTrue(torch.allclose(r["gate"].sum(1), torch.full((9,), 2.5, dtype=torch.float64)))

    def test_hf_aux_is_k_times_switch(self):
        name, seed, ov, ex = _case("mixtral_top2")
        cfg, _, inputs, params, r = mk.build_case(name, seed, ov, ex)
        r2 = _forward(dict(cfg, aux_loss_style="hf"), inputs, params)
        self.assertAlmostEqual(float(r2["loss_load_balance"]), 2 * float(r["loss_load_balance"]), places=15)

    def test_switch_perfect_balance_gives_coef(self):
        # s uniform (zero router) and a perfectly balanced assignment -> L_lb == coef
        cfg = ref.make_config(num_experts=4, num_experts_per_tok=1, tokens=8, hidden_size=3,
                              moe_intermediate_size=2, router_aux_loss_coef=0.37)
        inputs, params = mk.generate_inputs(cfg, {}, 1)
        params["router.weight"].zero_()
        dec = {"valid": [True] * 8, "primary": [[t % 4] for t in range(8)], "final": [[t % 4] for t in range(8)],
               "n_primary": [2, 2, 2, 2], "n_kept": [2, 2, 2, 2], "dropped": 0, "rerouted_count": 0,
               "capacity": None}
        r = _forward(cfg, inputs, params, decisions=dec)
        self.assertAlmostEqual(float(r["loss_load_balance"]), 0.37, places=15)


class HandRouting(unittest.TestCase):
    """route() on hand-written score matrices with answers worked out by hand."""

    def _route(self, s_rows, bias=None, emask=None, tmask=None, **cfg_over):
        s = torch.tensor(s_rows, dtype=torch.float64)
        T, E = s.shape
        cfg = ref.make_config(num_experts=E, tokens=T, **cfg_over)
        bias = torch.zeros(E, dtype=torch.float64) if bias is None else torch.tensor(bias, dtype=torch.float64)
        emask = torch.ones(E, dtype=torch.float64) if emask is None else torch.tensor(emask, dtype=torch.float64)
        tmask = torch.ones(T, dtype=torch.float64) if tmask is None else torch.tensor(tmask, dtype=torch.float64)
        return ref.route(cfg, s, bias, emask, tmask)

    def test_position_capacity_drop(self):
        # E=3, k=1, T=4 -> C = ceil(4/3) = 2. Tokens 0,1,2 want expert 0: token 2 drops.
        rows = [[.6, .3, .1], [.5, .3, .2], [.7, .2, .1], [.1, .8, .1]]
        d = self._route(rows, num_experts_per_tok=1, norm_topk_prob=False, capacity_factor=1.0)
        self.assertEqual(d["capacity"], 2)
        self.assertEqual(d["final"], [[0], [0], [-1], [1]])
        self.assertEqual((d["dropped"], d["rerouted_count"]), (1, 0))
        self.assertEqual(d["n_primary"], [3, 1, 0])
        self.assertEqual(d["n_kept"], [2, 1, 0])

    def test_padding_takes_no_capacity(self):
        rows = [[.6, .3, .1], [.5, .3, .2], [.7, .2, .1], [.1, .8, .1]]
        d = self._route(rows, tmask=[0, 1, 1, 1], num_experts_per_tok=1, norm_topk_prob=False,
                        capacity_factor=1.0)
        self.assertEqual(d["capacity"], 1)  # ceil(3/3)
        self.assertEqual(d["primary"][0], [-1])
        self.assertEqual(d["final"], [[-1], [0], [-1], [1]])
        self.assertEqual(d["dropped"], 1)

    def test_score_priority_and_reroute(self):
        # Score policy: token 2 (0.7) and token 0 (0.6) keep expert 0, token 1 (0.5) overflows
        # and is rerouted to its next best expert with room: expert 1 (u .3) -> load 2 = C, ok.
        rows = [[.6, .3, .1], [.5, .3, .2], [.7, .2, .1], [.1, .8, .1]]
        d = self._route(rows, num_experts_per_tok=1, norm_topk_prob=False, capacity_factor=1.0,
                        drop_policy="score", overflow="reroute")
        self.assertEqual(d["final"], [[0], [1], [0], [1]])
        self.assertEqual((d["dropped"], d["rerouted_count"]), (0, 1))
        self.assertEqual(d["n_kept"], [2, 2, 0])

    def test_reroute_skips_full_and_held(self):
        # E=3, k=2, T=3, cf=1 -> C = ceil(6/3) = 2. Every token picks experts {0,1};
        # token 2 (last by position) overflows on both; expert 2 has room: slot 0 reroutes
        # there, slot 1 then finds expert 2 held by the token itself -> dropped.
        rows = [[.5, .4, .1], [.45, .35, .2], [.6, .3, .1]]
        d = self._route(rows, num_experts_per_tok=2, norm_topk_prob=True, capacity_factor=1.0,
                        drop_policy="position", overflow="reroute")
        self.assertEqual(d["capacity"], 2)
        self.assertEqual(d["final"], [[0, 1], [0, 1], [2, -1]])
        self.assertEqual((d["dropped"], d["rerouted_count"]), (1, 1))

    def test_expert_mask_and_bias(self):
        rows = [[.5, .3, .15, .05]]
        d = self._route(rows, emask=[0, 1, 1, 1], num_experts_per_tok=2)
        self.assertEqual(d["primary"], [[1, 2]])
        d = self._route(rows, bias=[0, 0, 0, .3], num_experts_per_tok=2)
        self.assertEqual(d["primary"], [[0, 3]])   # u = .5 .3 .15 .35

    def test_group_limited(self):
        # 4 groups of 2. u:        g0: .9 .0  g1: .5 .5  g2: .45 .44  g3: .1 .1
        # group scores .9, 1.0, .89, .2 -> topk_group=2 takes g1 then g0.
        # top-2 among {0,1,2,3}: expert 0 (.9), then 2 (.5, lower index than 3).
        rows = [[.9, 0., .5, .5, .45, .44, .1, .1]]
        d = self._route(rows, num_experts_per_tok=2, n_group=4, topk_group=2, scoring_func="sigmoid")
        self.assertEqual(d["primary"], [[0, 2]])
        self.assertEqual(d["group_scores"][0], [.9, 1.0, .45 + .44, .2])
        # topk_group=1 would take only g1; k=2 experts are there -> stop.
        d = self._route(rows, num_experts_per_tok=2, n_group=4, topk_group=1, scoring_func="sigmoid")
        self.assertEqual(d["primary"], [[2, 3]])
        # k=3, topk_group=1: g1 holds only 2 experts, so g0 is taken too.
        d = self._route(rows, num_experts_per_tok=3, n_group=4, topk_group=1, scoring_func="sigmoid")
        self.assertEqual(d["primary"], [[0, 2, 3]])
        # a group with one available expert scores that expert alone; masked-out group never taken
        d = self._route(rows, emask=[1, 1, 0, 0, 1, 0, 1, 1], num_experts_per_tok=2, n_group=4,
                        topk_group=2, scoring_func="sigmoid")
        self.assertEqual(d["group_scores"][0], [.9, None, .45, .2])
        self.assertEqual(d["primary"], [[0, 4]])


def _tiny(name, **more):
    _, _, ov, ex = _case(name)
    ov = dict(ov)
    ov.update(tokens=10, hidden_size=4, moe_intermediate_size=3)
    if ov.get("n_shared_experts", 0) > 0:
        ov["shared_expert_intermediate_size"] = 3
    ov.update(more)
    ex = dict(ex)
    ex["padding"] = [p for p in ex.get("padding", []) if p < 10]
    return ref.make_config(**ov), ex


class Gradients(unittest.TestCase):
    def _fixed_decision_gradcheck(self, cfg, inputs, params, dec):
        names = list(params)

        def fn(x, *ps):
            r = _forward(cfg, inputs, dict(zip(names, ps)), x=x, decisions=dec)
            return r["out"], r["loss_load_balance"], r["loss_importance"], r["loss_z"]

        args = [inputs["x"].clone().requires_grad_(True)] + [params[n].clone().requires_grad_(True)
                                                             for n in names]
        self.assertTrue(torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_gradcheck_fixed_decisions_every_case(self):
        for name, _, _, _ in mk.CASES:
            with self.subTest(case=name):
                cfg, ex = _tiny(name)
                if name == "score_reroute":
                    cfg = dict(cfg, capacity_factor=0.75)  # make overflow certain at T=10
                inputs, params = mk.generate_inputs(cfg, ex, 11)
                if name in ("noisy_top2", "mixtral_top2", "sigmoid_bias_group_shared"):
                    # importance loss coverage everywhere gates are normalised
                    cfg = dict(cfg, router_importance_coef=0.1)
                r = _forward(cfg, inputs, params)
                self._fixed_decision_gradcheck(cfg, inputs, params, r["decisions"])

    def test_gradcheck_reroute_case_x_and_router_full_size(self):
        # Full-size fixture case (with its drops and reroutes), only the cheap inputs vary.
        name, seed, ov, ex = _case("score_reroute")
        cfg, _, inputs, params, r = mk.build_case(name, seed, ov, ex)
        dec = r["decisions"]
        self.assertGreater(dec["dropped"], 0)
        self.assertGreater(dec["rerouted_count"], 0)
        cfg = dict(cfg, router_importance_coef=0.1, router_z_loss_coef=1e-3, router_aux_loss_coef=0.01)

        def fn(x, wr):
            p = dict(params, **{"router.weight": wr})
            rr = _forward(cfg, inputs, p, x=x, decisions=dec)
            return ref.total_loss(rr, inputs["dout"])

        args = [inputs["x"].clone().requires_grad_(True), params["router.weight"].clone().requires_grad_(True)]
        self.assertTrue(torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_gradcheck_decisions_recomputed(self):
        # Without fixing decisions: finite differences re-run selection/capacity/rerouting,
        # which must not flip for eps = 1e-6 (gaps are far larger here).
        cfg, ex = _tiny("score_reroute", capacity_factor=0.75, noisy_gating=True,
                        router_importance_coef=0.1, router_z_loss_coef=1e-3, router_aux_loss_coef=0.01)
        inputs, params = mk.generate_inputs(cfg, ex, 5)
        r = _forward(cfg, inputs, params)
        self.assertGreater(r["dropped"] + r["rerouted"], 0)
        self.assertEqual(mk.tie_problems(cfg, r), [])
        names = list(params)

        def fn(x, *ps):
            rr = _forward(cfg, inputs, dict(zip(names, ps)), x=x)
            return ref.total_loss(rr, inputs["dout"])

        args = [inputs["x"].clone().requires_grad_(True)] + [params[n].clone().requires_grad_(True)
                                                             for n in names]
        self.assertTrue(torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5))


class Fixtures(unittest.TestCase):
    def _load(self, name):
        path = os.path.join(mk.FIXTURE_DIR, name + ".safetensors")
        with open(path, "rb") as fh:
            blob = fh.read()
        return blob, mk.decode_safetensors(blob)

    def test_format_and_invariants(self):
        for name, _, _, _ in mk.CASES:
            with self.subTest(case=name):
                blob, (t, meta) = self._load(name)
                (n,) = struct.unpack("<Q", blob[:8])
                self.assertEqual((8 + n) % 8, 0)
                header = json.loads(blob[8:8 + n])
                offs = [v["data_offsets"] for k, v in header.items() if k != "__metadata__"]
                self.assertEqual(offs[0][0], 0)
                for (a, b), (c, _) in zip(offs, offs[1:]):
                    self.assertEqual(b, c)
                self.assertEqual(offs[-1][1], len(blob) - 8 - n)
                self.assertEqual(meta["case"], name)
                cfg = json.loads(meta["config"])
                self.assertEqual(set(cfg), set(ref.CONFIG_KEYS))
                for pname in ref.param_shapes(cfg):
                    self.assertIn(pname, t)
                    self.assertIn("grad." + pname, t)
                T, E, k = cfg["tokens"], cfg["num_experts"], cfg["num_experts_per_tok"]
                valid = t["token_mask"] != 0
                T_valid = int(valid.sum())
                fe, pe, g = t["routing.expert"], t["routing.primary_expert"], t["routing.gate"]
                self.assertTrue(torch.all(fe[~valid] == -1) and torch.all(pe[~valid] == -1))
                self.assertTrue(torch.all(g[fe == -1] == 0))
                self.assertTrue(torch.all(g[fe != -1] > 0))
                self.assertEqual(int(t["counts.primary"].sum()), T_valid * k)
                self.assertEqual(int(t["counts.kept"].sum()) + int(t["stats.dropped"]), T_valid * k)
                masked = (t["expert_mask"] == 0).nonzero().flatten().tolist()
                for e in masked:
                    self.assertFalse(bool((fe == e).any()) or bool((pe == e).any()))
                if cfg["capacity_factor"] > 0:
                    C = math.ceil(cfg["capacity_factor"] * T_valid * k / E)
                    self.assertTrue(torch.all(t["counts.kept"] <= C))
                else:
                    self.assertTrue(torch.equal(fe, pe))
                n_rer = 0
                for tt in range(T):
                    for j in range(k):
                        e = int(fe[tt, j])
                        if e >= 0 and e != int(pe[tt, j]):
                            n_rer += 1
                            self.assertNotIn(e, pe[tt].tolist())
                    kept = [int(e) for e in fe[tt] if e >= 0]
                    self.assertEqual(len(kept), len(set(kept)))
                self.assertEqual(n_rer, int(t["stats.rerouted"]))

    def test_recompute_from_fixture(self):
        # A second, per-token formulation of steps 1, 2, 5, 6, 8, 9 and the losses,
        # applied to the fixture's own inputs and routing.
        for name, _, _, _ in mk.CASES:
            with self.subTest(case=name):
                _, (t, meta) = self._load(name)
                cfg = json.loads(meta["config"])
                T, E, k = cfg["tokens"], cfg["num_experts"], cfg["num_experts_per_tok"]
                rsf = cfg["routed_scaling_factor"]
                x = t["x"]
                z = x @ t["router.weight"].t()
                if cfg["noisy_gating"]:
                    z = z + t["noise"] * torch.log1p(torch.exp(x @ t["router.noise_weight"].t()))
                s = torch.softmax(z, -1) if cfg["scoring_func"] == "softmax" else torch.sigmoid(z)
                valid = t["token_mask"] != 0
                u = s + t["selection_bias"]
                u[:, t["expert_mask"] == 0] = -math.inf
                act = (lambda a: a * torch.sigmoid(a)) if cfg["hidden_act"] == "silu" else \
                    (lambda a: 0.5 * a * (1 + torch.erf(a / math.sqrt(2))))

                def ffn(prefix, xt, e=None):
                    w1 = t[prefix + ".w1"] if e is None else t[prefix + ".w1"][e]
                    w2 = t[prefix + ".w2"] if e is None else t[prefix + ".w2"][e]
                    h = act(w1 @ xt)
                    if cfg["hidden_act"] == "silu":
                        h = h * ((t[prefix + ".w3"] if e is None else t[prefix + ".w3"][e]) @ xt)
                    return w2 @ h

                for tt in range(T):
                    out = torch.zeros(cfg["hidden_size"], dtype=torch.float64)
                    if valid[tt]:
                        prim = [int(e) for e in t["routing.primary_expert"][tt]]
                        if cfg["n_group"] == 1:
                            self.assertEqual(prim, torch.topk(u[tt], k).indices.tolist())
                        S = float(s[tt, prim].sum()) if (cfg["norm_topk_prob"] and k > 1) else 1.0
                        for j in range(k):
                            e = int(t["routing.expert"][tt, j])
                            if e < 0:
                                continue
                            gate = rsf * float(s[tt, e]) / S
                            self.assertAlmostEqual(float(t["routing.gate"][tt, j]), gate, places=14)
                            out = out + gate * ffn("experts", x[tt], e)
                    if cfg["n_shared_experts"] > 0:
                        ys = ffn("shared", x[tt])
                        if cfg["shared_expert_gate"]:
                            ys = ys * torch.sigmoid(t["shared.gate"][0] @ x[tt])
                        out = out + ys
                    self.assertTrue(torch.allclose(out, t["out"][tt], rtol=0, atol=1e-13), (name, tt))
                # losses
                Tv = int(valid.sum())
                p = s if cfg["scoring_func"] == "softmax" else s / s.sum(-1, keepdim=True)
                f = t["counts.primary"] / (Tv * k if cfg["aux_loss_style"] == "switch" else Tv)
                lb = cfg["router_aux_loss_coef"] * E * float((f * p[valid].mean(0)).sum())
                self.assertAlmostEqual(float(t["loss.load_balance"]), lb, places=14)
                lz = cfg["router_z_loss_coef"] * float((torch.logsumexp(z[valid], -1) ** 2).mean())
                self.assertAlmostEqual(float(t["loss.z"]), lz, places=14)
                I = torch.zeros(E, dtype=torch.float64)
                for tt in range(T):
                    if valid[tt]:
                        prim = [int(e) for e in t["routing.primary_expert"][tt]]
                        S = float(s[tt, prim].sum()) if (cfg["norm_topk_prob"] and k > 1) else 1.0
                        for e in prim:
                            I[e] += rsf * s[tt, e] / S
                li = cfg["router_importance_coef"] * float(I.var(unbiased=False) / (I.mean() ** 2 + 1e-10))
                self.assertAlmostEqual(float(t["loss.importance"]), li, places=14)
                H = float((-(p[valid] * torch.log(p[valid])).sum(-1)).mean())
                self.assertAlmostEqual(float(t["stats.entropy"]), H, places=13)
                mean_load = Tv * k / E
                b = t["selection_bias"] + cfg["bias_update_rate"] * torch.sign(mean_load - t["counts.primary"])
                self.assertTrue(torch.equal(b, t["bias_after_update"]))

    def test_fixtures_reproduce(self):
        # The committed files equal a fresh recomputation: the same bytes on the machine that
        # wrote them, elsewhere the same decisions and values to float64 rounding (the
        # comparison of make_layer_fixtures.py --check, fixture_io.compare_blobs).
        for name, seed, ov, ex in mk.CASES:
            with self.subTest(case=name):
                blob, _ = self._load(name)
                cfg, _, inputs, params, r = mk.build_case(name, seed, ov, ex)
                meta = {"config": json.dumps(cfg, separators=(",", ":")), "case": name}
                fresh = mk.encode_safetensors(mk.fixture_tensors(cfg, inputs, params, r), meta)
                if blob != fresh:
                    problems, _, _ = fixture_io.compare_blobs(blob, fresh)
                    self.assertEqual(problems, [])


if __name__ == "__main__":
    unittest.main()
