#!/usr/bin/env python3
"""An independent GGUF reader (numpy only), written from the spec (ggml/docs/gguf.md), to
check what src/core/gguf.cpp and src/model/gguf_export.cpp write.

    read_gguf.py FILE.gguf                       # keys, tensor table, bounds and alignment
    read_gguf.py --check-export FILE.gguf RUN    # and compare the tensors with RUN/model.safetensors
    read_gguf.py --check-hybrid FILE.gguf HFDIR  # an f32 qwen3next / qwen35moe file against the
                                                 # Qwen3-Next / Qwen3.5-MoE directory HFDIR

Layout: "GGUF", u32 version, u64 tensor count, u64 key-value count, the key-value pairs
(string key, u32 value type, value), the tensor infos (string name, u32 n_dims, u64 dims in
ggml order, u32 ggml type, u64 offset into the data section), padding to general.alignment
(default 32), the data section. Strings are u64 length + bytes; arrays are u32 element type,
u64 count, elements. Everything little-endian. Exit status 1 on any problem.
"""
import argparse
import json
import struct
import sys

import numpy as np

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32",
              6: "float32", 7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64",
              12: "float64"}
# ggml type -> (name, block elements, block bytes); the float types can be decoded.
GGML = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 2: ("Q4_0", 32, 18),
        3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
        10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
        13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
        26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8)}


class GgufError(Exception):
    pass


class Reader:
    def __init__(self, path, buf):
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, n, field):
        if n > len(self.buf) - self.pos:
            raise GgufError(f"{self.path}: truncated: {field} needs {n} bytes at offset "
                            f"{self.pos}, file has {len(self.buf)}")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, fmt, field):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), field))[0]

    def string(self, field):
        n = self.scalar("<Q", field + " length")
        return self.take(n, field).decode("utf-8", errors="surrogateescape")

    def value(self, t, field):
        if t == 8:
            return self.string(field)
        if t in SCALARS:
            return self.scalar(SCALARS[t], field)
        if t != 9:
            raise GgufError(f"{self.path}: {field} has unknown type {t}")
        et = self.scalar("<I", field + " element type")
        n = self.scalar("<Q", field + " count")
        if et == 8:
            return [self.string(f"{field}[{i}]") for i in range(n)]
        if et not in SCALARS:
            raise GgufError(f"{self.path}: {field} has unsupported element type {et}")
        size = struct.calcsize(SCALARS[et])
        if n * size > len(self.buf) - self.pos:
            raise GgufError(f"{self.path}: truncated: {field} claims {n} elements")
        return list(np.frombuffer(self.take(n * size, field), dtype=SCALARS[et]))


def read_gguf(path):
    """Returns (version, kvs dict in file order, tensors list, data_offset, buffer)."""
    with open(path, "rb") as f:
        buf = f.read()
    r = Reader(path, buf)
    if r.take(4, "magic") != b"GGUF":
        raise GgufError(f"{path}: not a GGUF file")
    version = r.scalar("<I", "version")
    if version not in (2, 3):
        raise GgufError(f"{path}: unsupported version {version}")
    n_tensors = r.scalar("<Q", "tensor count")
    n_kv = r.scalar("<Q", "key-value count")
    kvs = {}
    for i in range(n_kv):
        key = r.string(f"key {i}")
        t = r.scalar("<I", f"key {key} type")
        if key in kvs:
            raise GgufError(f"{path}: duplicate key {key}")
        kvs[key] = (t, r.value(t, f"key {key}"))
    alignment = 32
    if "general.alignment" in kvs:
        t, alignment = kvs["general.alignment"]
        if t != 4 or alignment == 0 or alignment & (alignment - 1):
            raise GgufError(f"{path}: bad general.alignment {alignment} (type {t})")
    tensors = []
    for i in range(n_tensors):
        name = r.string(f"tensor {i} name")
        nd = r.scalar("<I", f"tensor {name} n_dims")
        if not 1 <= nd <= 4:
            raise GgufError(f"{path}: tensor {name} has {nd} dims")
        dims = [r.scalar("<Q", f"tensor {name} dim {k}") for k in range(nd)]
        gt = r.scalar("<I", f"tensor {name} type")
        offset = r.scalar("<Q", f"tensor {name} offset")
        if gt not in GGML:
            raise GgufError(f"{path}: tensor {name} has unknown ggml type {gt}")
        _, block, block_bytes = GGML[gt]
        numel = int(np.prod(dims))
        if dims[0] % block or numel == 0:
            raise GgufError(f"{path}: tensor {name} dims {dims} do not fit its type")
        tensors.append(dict(name=name, dims=dims, type=gt, offset=offset,
                            nbytes=numel // block * block_bytes))
    data_offset = (r.pos + alignment - 1) // alignment * alignment
    data_size = len(buf) - data_offset
    end = 0
    for t in sorted(tensors, key=lambda t: t["offset"]):
        if t["offset"] % alignment:
            raise GgufError(f"{path}: tensor {t['name']} offset {t['offset']} is not aligned "
                            f"to {alignment}")
        if t["offset"] < end:
            raise GgufError(f"{path}: tensor {t['name']} overlaps the one before it")
        end = t["offset"] + t["nbytes"]
        if end > data_size:
            raise GgufError(f"{path}: truncated: tensor {t['name']} ends at {end} of a "
                            f"{data_size}-byte data section")
    return version, kvs, tensors, data_offset, alignment, buf


def tensor_array(t, data_offset, buf):
    """The tensor as float64 in the row-major shape (ggml dims reversed)."""
    start = data_offset + t["offset"]
    raw = buf[start:start + t["nbytes"]]
    if t["type"] == 0:
        a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif t["type"] == 1:
        a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
    elif t["type"] == 30:
        a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        a = a.astype(np.float64)
    else:
        raise GgufError(f"tensor {t['name']} is {GGML[t['type']][0]}: cannot decode")
    return a.reshape(list(reversed(t["dims"])))


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    dtypes = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = buf[8 + n + b:8 + n + end]
        if e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=dtypes[e["dtype"]])
        out[name] = a.astype(np.float64).reshape(e["shape"])
    return out


def unpermute_rope(w, n_heads):
    """Inverse of the export's Q/K row order: interleaved pairs (2i, 2i+1) back to the
    rotate_half halves (i, i + hd/2)."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def names_and_keys_problems(kvs, tensors, expected, arch, keys):
    """What differs between the file and what it should hold: tensors missing or unexpected
    (against the names of `expected`), general.architecture other than arch, and each of `keys`
    {key: value} absent or with another value."""
    names = {t["name"] for t in tensors}
    problems = [f"missing tensor {n}" for n in sorted(set(expected) - names)]
    problems += [f"unexpected tensor {n}" for n in sorted(names - set(expected))]
    got_arch = kvs.get("general.architecture", (8, None))[1]
    if got_arch != arch:
        problems.append(f"general.architecture is {got_arch!r}, not {arch!r}")
    for key, want in keys.items():
        if kvs.get(key, (None, None))[1] != want:
            problems.append(f"{key} = {kvs.get(key, (None, None))[1]}, expected {want}")
    return problems


def check_export(kvs, tensors, data_offset, buf, run_dir):
    cfg = json.load(open(f"{run_dir}/config.json"))
    params = read_safetensors(f"{run_dir}/model.safetensors")
    H, G = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    expected = {"token_embd.weight": ("model.embed_tokens.weight", None),
                "output_norm.weight": ("model.norm.weight", None)}
    if not cfg.get("tie_word_embeddings", False):
        expected["output.weight"] = ("lm_head.weight", None)
    for l in range(cfg["num_hidden_layers"]):
        b, m = f"blk.{l}.", f"model.layers.{l}."
        expected.update({
            b + "attn_norm.weight": (m + "input_layernorm.weight", None),
            b + "ffn_norm.weight": (m + "post_attention_layernorm.weight", None),
            b + "attn_q.weight": (m + "self_attn.q_proj.weight", H),
            b + "attn_k.weight": (m + "self_attn.k_proj.weight", G),
            b + "attn_v.weight": (m + "self_attn.v_proj.weight", None),
            b + "attn_output.weight": (m + "self_attn.o_proj.weight", None)})
        if cfg.get("num_local_experts", 0) > 0:
            e = m + "block_sparse_moe."
            expected.update({b + "ffn_gate_inp.weight": (e + "router.weight", None),
                             b + "ffn_gate_exps.weight": (e + "experts.w1", None),
                             b + "ffn_up_exps.weight": (e + "experts.w3", None),
                             b + "ffn_down_exps.weight": (e + "experts.w2", None)})
        else:
            expected.update({b + "ffn_gate.weight": (m + "mlp.ffn.w1", None),
                             b + "ffn_up.weight": (m + "mlp.ffn.w3", None),
                             b + "ffn_down.weight": (m + "mlp.ffn.w2", None)})
    problems = names_and_keys_problems(kvs, tensors, expected, "llama", {
        "llama.block_count": cfg["num_hidden_layers"], "llama.embedding_length": cfg["hidden_size"],
        "llama.attention.head_count": H, "llama.attention.head_count_kv": G,
        "llama.vocab_size": cfg["vocab_size"]})
    worst = 0.0
    for t in tensors:
        if t["name"] not in expected:
            continue
        ours, heads = expected[t["name"]]
        got = tensor_array(t, data_offset, buf)
        if heads is not None:
            got = unpermute_rope(got, heads)
        want = params[ours]
        if got.shape != want.shape:
            problems.append(f"{t['name']}: shape {list(got.shape)} vs {ours} {list(want.shape)}")
            continue
        tol = {0: 0.0, 1: 1e-3, 30: 8e-3}[t["type"]]  # rounding of f16 / bf16
        err = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-3)))
        worst = max(worst, err)
        if err > tol:
            problems.append(f"{t['name']}: relative error {err:.3g} vs {ours} (tolerance {tol})")
    return problems, worst, len(expected)


def hybrid_expected(hf_dir):
    """What llama.cpp's converter writes for a Qwen3-Next (qwen3next) or Qwen3.5-MoE text model
    (qwen35moe) directory: {gguf name: row-major float64 array}, and the keys. Facts from
    ggml-org/llama.cpp conversion/qwen.py (Qwen3NextModel, _LinearAttentionVReorderBase,
    _Qwen35MRopeMixin; commit 03173d5e78f8ccd7ccbb385f1f7b4a21266377dc) and src/llama-arch.cpp
    (tensor names, commit 02ebd8f7f24f55935c91a903d211e2ccd2b11582): zero-centred norms stored
    as 1 + w (not linear_attn.norm), A_log as -exp(A_log), conv1d squeezed to [channels, K],
    Qwen3-Next's in_proj_qkvz split per key-head group into attn_qkv [q of all heads, k, v] and
    attn_gate (z), in_proj_ba kept whole as ssm_ba; Qwen3.5's value heads reordered from
    grouped (key head kh's r heads together) to tiled (head j of every key head together)."""
    top = json.load(open(f"{hf_dir}/config.json"))
    q35 = top["model_type"] == "qwen3_5_moe"
    cfg = top["text_config"] if q35 else top
    w = read_safetensors(f"{hf_dir}/model.safetensors")
    pre = "model.language_model." if q35 else "model."
    L, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    Hk, Hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv, K = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"], cfg["linear_conv_kernel_dim"]
    r = Hv // Hk
    hd = cfg.get("head_dim", d // cfg["num_attention_heads"])
    rope = cfg.get("rope_parameters") or {}
    partial = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 0.25))
    types = cfg.get("layer_types") or [
        "full_attention" if (l + 1) % cfg.get("full_attention_interval", 4) == 0
        else "linear_attention" for l in range(L)]
    arch = "qwen35moe" if q35 else "qwen3next"
    interval = types.index("full_attention") + 1

    def tile(a, axis, block):
        """Value heads along `axis` (Hv blocks of `block`) from grouped to tiled order."""
        a = np.moveaxis(a, axis, 0)
        rest = a.shape[1:]
        a = a.reshape(Hk, r, block, *rest).transpose(1, 0, 2, *range(3, 3 + len(rest)))
        return np.moveaxis(a.reshape(Hv * block, *rest), 0, axis)

    out = {"token_embd.weight": w[pre + "embed_tokens.weight"],
           "output_norm.weight": w[pre + "norm.weight"] + 1}
    if "lm_head.weight" in w:
        out["output.weight"] = w["lm_head.weight"]
    for l in range(L):
        b, m = f"blk.{l}.", f"{pre}layers.{l}."
        out[b + "attn_norm.weight"] = w[m + "input_layernorm.weight"] + 1
        out[b + "post_attention_norm.weight"] = w[m + "post_attention_layernorm.weight"] + 1
        if types[l] == "linear_attention":
            a = m + "linear_attn."
            if q35:
                qkv, z = w[a + "in_proj_qkv.weight"], w[a + "in_proj_z.weight"]
                beta, alpha = w[a + "in_proj_b.weight"], w[a + "in_proj_a.weight"]
            else:
                g = w[a + "in_proj_qkvz.weight"].reshape(Hk, 2 * dk + 2 * r * dv, d)
                q, k = g[:, :dk].reshape(-1, d), g[:, dk:2 * dk].reshape(-1, d)
                v = g[:, 2 * dk:2 * dk + r * dv].reshape(-1, d)
                z = g[:, 2 * dk + r * dv:].reshape(-1, d)
                qkv = np.concatenate([q, k, v])
                out[b + "ssm_ba.weight"] = w[a + "in_proj_ba.weight"]
            conv = w[a + "conv1d.weight"].reshape(-1, K)
            A = -np.exp(w[a + "A_log"])
            dt = w[a + "dt_bias"]
            o = w[a + "out_proj.weight"]
            if q35 and r > 1:
                kd2 = 2 * Hk * dk
                qkv = np.concatenate([qkv[:kd2], tile(qkv[kd2:], 0, dv)])
                conv = np.concatenate([conv[:kd2], tile(conv[kd2:], 0, dv)])
                z, beta, alpha = tile(z, 0, dv), tile(beta, 0, 1), tile(alpha, 0, 1)
                A, dt, o = tile(A, 0, 1), tile(dt, 0, 1), tile(o, 1, dv)
            if q35:
                out[b + "ssm_beta.weight"], out[b + "ssm_alpha.weight"] = beta, alpha
            out.update({b + "attn_qkv.weight": qkv, b + "attn_gate.weight": z,
                        b + "ssm_conv1d.weight": conv, b + "ssm_a": A, b + "ssm_dt.bias": dt,
                        b + "ssm_norm.weight": w[a + "norm.weight"], b + "ssm_out.weight": o})
        else:
            s = m + "self_attn."
            for ours, hf in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"),
                             ("attn_output", "o_proj")]:
                out[b + ours + ".weight"] = w[s + hf + ".weight"]
            out[b + "attn_q_norm.weight"] = w[s + "q_norm.weight"] + 1
            out[b + "attn_k_norm.weight"] = w[s + "k_norm.weight"] + 1
        f = m + "mlp."
        if f + "gate.weight" not in w:  # a dense layer (Qwen3-Next's mlp_only_layers)
            for ours, hf in [("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"),
                             ("ffn_down", "down_proj")]:
                out[b + ours + ".weight"] = w[f + hf + ".weight"]
            continue
        out[b + "ffn_gate_inp.weight"] = w[f + "gate.weight"]
        E = w[f + "gate.weight"].shape[0]
        if f + "experts.gate_up_proj" in w:  # transformers v5: [E, 2F, d], gate rows first
            gu = w[f + "experts.gate_up_proj"]
            F = gu.shape[1] // 2
            out[b + "ffn_gate_exps.weight"], out[b + "ffn_up_exps.weight"] = gu[:, :F], gu[:, F:]
            out[b + "ffn_down_exps.weight"] = w[f + "experts.down_proj"]
        else:
            for ours, hf in [("ffn_gate_exps", "gate_proj"), ("ffn_up_exps", "up_proj"),
                             ("ffn_down_exps", "down_proj")]:
                out[b + ours + ".weight"] = np.stack(
                    [w[f"{f}experts.{e}.{hf}.weight"] for e in range(E)])
        for ours, hf in [("ffn_gate_shexp", "gate_proj"), ("ffn_up_shexp", "up_proj"),
                         ("ffn_down_shexp", "down_proj")]:
            out[b + ours + ".weight"] = w[f + "shared_expert." + hf + ".weight"]
        out[b + "ffn_gate_inp_shexp.weight"] = w[f + "shared_expert_gate.weight"].reshape(-1)
    keys = {f"{arch}.block_count": L, f"{arch}.embedding_length": d,
            f"{arch}.ssm.conv_kernel": K, f"{arch}.ssm.state_size": dk,
            f"{arch}.ssm.group_count": Hk, f"{arch}.ssm.time_step_rank": Hv,
            f"{arch}.ssm.inner_size": Hv * dv, f"{arch}.full_attention_interval": interval,
            f"{arch}.rope.dimension_count": int(hd * partial),
            f"{arch}.expert_count": cfg["num_experts"],
            f"{arch}.expert_used_count": cfg["num_experts_per_tok"],
            f"{arch}.expert_feed_forward_length": cfg["moe_intermediate_size"],
            f"{arch}.expert_shared_feed_forward_length": cfg["shared_expert_intermediate_size"]}
    return arch, keys, out


def check_hybrid(kvs, tensors, data_offset, buf, hf_dir):
    arch, keys, expected = hybrid_expected(hf_dir)
    problems = names_and_keys_problems(kvs, tensors, expected, arch, keys)
    worst = 0.0
    for t in tensors:
        if t["name"] not in expected:
            continue
        if t["type"] != 0:
            problems.append(f"{t['name']} is {GGML[t['type']][0]}, the check reads F32 files")
            continue
        got, want = tensor_array(t, data_offset, buf), expected[t["name"]]
        if got.shape != want.shape:
            problems.append(f"{t['name']}: shape {list(got.shape)}, expected {list(want.shape)}")
            continue
        err = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-3)))
        worst = max(worst, err)
        if err > 1e-6:  # f32 rounding of 1 + w and -exp(A_log)
            problems.append(f"{t['name']}: relative error {err:.3g}")
    return problems, worst, len(expected)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("run", nargs="?", help="run directory (with --check-export)")
    ap.add_argument("--check-export", action="store_true",
                    help="compare the tensors with RUN/model.safetensors and RUN/config.json")
    ap.add_argument("--check-hybrid", action="store_true",
                    help="compare an f32 qwen3next / qwen35moe file with the Hugging Face "
                    "directory given as RUN")
    a = ap.parse_args()
    try:
        version, kvs, tensors, data_offset, alignment, buf = read_gguf(a.gguf)
    except GgufError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{a.gguf}: GGUF v{version}, {len(kvs)} keys, {len(tensors)} tensors, alignment "
          f"{alignment}, data at {data_offset}, {len(buf)} bytes")
    for key, (t, v) in kvs.items():
        if isinstance(v, list):
            shown = ", ".join(repr(x) if isinstance(x, str) else str(x) for x in v[:6])
            text = f"[{shown}{', ...' if len(v) > 6 else ''}] ({len(v)} items)"
        else:
            text = repr(v) if isinstance(v, str) else str(v)
        print(f"  {key} ({TYPE_NAMES[t]}) = {text}")
    print(f"  {'tensor':<28} {'type':>5} {'dims (ggml order)':>20} {'offset':>10} {'bytes':>10}")
    for t in tensors:
        print(f"  {t['name']:<28} {GGML[t['type']][0]:>5} {str(t['dims']):>20} "
              f"{t['offset']:>10} {t['nbytes']:>10}")
    print("all tensor data in bounds, aligned and non-overlapping")
    checks = [(a.check_hybrid, "--check-hybrid", "the Hugging Face directory", check_hybrid,
               "hybrid check: {n} tensors and the keys match {run}"),
              (a.check_export, "--check-export", "the run directory", check_export,
               "export check: {n} tensors match {run}/model.safetensors")]
    for wanted, flag, what, check, ok in checks:
        if not wanted:
            continue
        if not a.run:
            ap.error(f"{flag} needs {what}")
        problems, worst, n = check(kvs, tensors, data_offset, buf, a.run)
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        if problems:
            return 1
        print(ok.format(n=n, run=a.run) + f" (worst relative error {worst:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
